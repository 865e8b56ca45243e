# mk/dist.mk: multi-process training (host/dist.c) over MPI, and over NCCL
# where the CUDA backend is (host/dist_nccl.c).
#
# OpenMPI is optional: found through `mpicc --showme`, else pkg-config ompi-c.
# Without it (or with DIST_MPI=0) host/dist.c runs world > 1 only over NCCL
# (the CUDA backend; the id travels by --dist-init tcp or file:PATH), and the
# CPU backend refuses a world > 1 environment with a clear error.
#
# host/dist_nccl.c is left out of the library (the plain CPU build needs no
# CUDA or NCCL headers) and compiled twice: against <nccl.h> for
# build/anatomy-cuda (linked with -lnccl) and against the emulator's NCCL
# (kernels/cuda/emu/nccl_emu.cpp, part of the emulated runtime) for
# build/anatomy-emu. dist.c refers to it weakly.
#
#   make test-dist   the multi-rank tests (tests/dist/, mpirun -np 2 and 4 on
#                    the CPU, and the NCCL path on build/anatomy-emu); part of
#                    `make test` through EXTRA_TESTS.

DIST_MPI ?= 1
ifeq ($(DIST_MPI),1)
MPI_CFLAGS := $(shell mpicc --showme:compile 2>/dev/null || pkg-config --cflags ompi-c 2>/dev/null)
MPI_LIBS   := $(shell mpicc --showme:link 2>/dev/null || pkg-config --libs ompi-c 2>/dev/null)
endif

ifneq ($(strip $(MPI_LIBS)),)
# only dist.c sees mpi.h; everything links the library
$(BUILD)/obj/host/dist.o: CFLAGS += $(MPI_CFLAGS) -DDIST_HAVE_MPI
EXTRA_LDLIBS += $(MPI_LIBS)
endif

# dist.o is rebuilt when what was found changes (an object compiled before
# `make deps` installed OpenMPI would otherwise stay the MPI-less one): the
# stamp holds the finding and is rewritten only when it differs.
DIST_MPI_FOUND := $(if $(strip $(MPI_LIBS)),mpi $(MPI_CFLAGS),none)
$(BUILD)/.dist-mpi: FORCE
	@mkdir -p $(BUILD)
	@echo '$(DIST_MPI_FOUND)' | cmp -s - $@ 2>/dev/null || echo '$(DIST_MPI_FOUND)' > $@
$(BUILD)/obj/host/dist.o: $(BUILD)/.dist-mpi
.PHONY: FORCE
FORCE:

# ---- the NCCL transport ----
NCCL_HOME ?= $(CUDA_HOME)
LIB_OBJS := $(filter-out $(BUILD)/obj/host/dist_nccl.o,$(LIB_OBJS))
DIST_NCCL_HDRS := host/dist_nccl.h host/dist.h kernels/ops.h data/errbuf.h
DIST_NCCL_OBJ := $(BUILD)/cuda/obj/host/dist_nccl.o
DIST_NCCL_EMU_OBJ := $(BUILD)/cuda-emu/host/dist_nccl.o
# (the -L/-rpath pair is a variable of its own: the commas of -Wl,-rpath,DIR
# written inside $(if ...) would split its arguments and pick the else branch)
DIST_NCCL_PATH := -L$(NCCL_HOME)/lib -Wl,-rpath,$(NCCL_HOME)/lib
DIST_NCCL_LIBS := $(if $(filter-out $(CUDA_HOME),$(NCCL_HOME)),$(DIST_NCCL_PATH)) -lnccl

$(DIST_NCCL_EMU_OBJ): host/dist_nccl.c $(DIST_NCCL_HDRS) kernels/cuda/emu/nccl_emu.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DDIST_NCCL -DANATOMY_EMU -c $< -o $@

$(DIST_NCCL_OBJ): host/dist_nccl.c $(DIST_NCCL_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DDIST_NCCL -I$(NCCL_HOME)/include -I$(CUDA_HOME)/include -c $< -o $@

$(BUILD)/anatomy-emu: $(DIST_NCCL_EMU_OBJ)
$(BUILD)/anatomy-cuda: $(DIST_NCCL_OBJ)
ifeq ($(CUDA),1)
$(BUILD)/anatomy: $(DIST_NCCL_OBJ)
$(BUILD)/anatomy: EXTRA_LDLIBS += $(DIST_NCCL_LIBS)
endif

EXTRA_TESTS += test-dist
.PHONY: test-dist bench-allreduce

test-dist: $(BUILD)/anatomy $(BUILD)/anatomy-emu
	ANATOMY_BIN=$(BUILD)/anatomy ANATOMY_EMU_BIN=$(BUILD)/anatomy-emu \
		$(PYTHON) -m pytest -q -p no:cacheprovider tests/dist

# One all-reduce of GPT-2 124M's gradient (bf16) over NCCL, timed (GPU).
bench-allreduce: $(BUILD)/anatomy-cuda
	sh bench/bench_allreduce.sh $(BUILD)/anatomy-cuda
