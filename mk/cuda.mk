# mk/cuda.mk: the CUDA backend (kernels/cuda/*.cu), built two ways from one source.
#
#   make emu         build/anatomy-emu: the program with the CUDA backend running on
#                    the device emulator (g++ -DANATOMY_EMU, kernels/cuda/emu/), so
#                    `build/anatomy-emu train --device cuda ...` runs the whole CUDA
#                    code path on the CPU. Needs no nvcc and no GPU.
#   make cuda        build/anatomy-cuda: the program with the nvcc-built backend
#                    (sm_80 and sm_90). `make CUDA=1` links it into build/anatomy
#                    instead. Builds without a GPU; runs with one.
#   make test-cuda   the backend parity suite (tests/test_cuda_ops.c) emulated, and
#                    natively when `nvidia-smi -L` finds a GPU; with nvcc present,
#                    every kernels/cuda/*.cu compiled for sm_80 and sm_90, register
#                    and spill counts in build/cuda/ptxas.txt. Part of `make test`.
#   make cuda-sass   the SASS of every kernel, build/cuda/sass.txt (cuobjdump).
#   make gpu-check   on a GPU machine that builds: make gpu-bundle, then its two calls
#                    (scripts/gpu-check.sh; mk/gpu-bundle.mk).
#   make profile     a few GPT-2 124M steps under Nsight Systems and Nsight Compute
#                    (bench/profile_gpu.sh; reports in build/profile/).
#
# The default `make` builds none of this: it stays CPU-only and needs no nvcc.
# tests/test_cuda_ops is left out of test-c (it is test-cuda's) and, when the
# Makefile builds it, it is linked with the emulated backend.

CUDA_HOME ?= /usr/local/cuda
CUDA_NVCC ?= $(firstword $(shell command -v nvcc 2>/dev/null) $(wildcard $(CUDA_HOME)/bin/nvcc))
CUDA_CXX  ?= g++

CUDA_SRCS := $(sort $(wildcard kernels/cuda/*.cu))
CUDA_HDRS := kernels/ops.h $(wildcard kernels/cuda/*.h kernels/cuda/*.cuh kernels/cuda/emu/*.h)

# ---- emulated build: the same flags as the emulator's own kernel tests ----
# (ASan carries its race and bounds checks; -O1 and no sibling calls keep the
# kernel lines its reports name.)
CUDA_EMU_DIR   := $(BUILD)/cuda-emu
CUDA_EMU_FLAGS := -std=c++17 -g -O1 -DANATOMY_EMU -Ikernels/cuda -Wall -Wextra \
	-fno-omit-frame-pointer -fno-optimize-sibling-calls \
	-fsanitize=address -fsanitize-recover=address -fsanitize=alignment \
	-fno-sanitize-recover=alignment --param asan-instrumentation-with-call-threshold=1000000
CUDA_EMU_RT    := $(patsubst kernels/cuda/emu/%.cpp,$(CUDA_EMU_DIR)/rt/%.o,$(wildcard kernels/cuda/emu/*.cpp))
CUDA_EMU_OBJS  := $(CUDA_SRCS:%.cu=$(CUDA_EMU_DIR)/%.o) $(CUDA_EMU_RT)
CUDA_EMU_LIBS  := -fsanitize=address -fsanitize=alignment -lstdc++ -ldl -lpthread

$(CUDA_EMU_DIR)/%.o: %.cu $(CUDA_HDRS)
	@mkdir -p $(dir $@)
	$(CUDA_CXX) $(CUDA_EMU_FLAGS) -x c++ -c $< -o $@

$(CUDA_EMU_DIR)/rt/%.o: kernels/cuda/emu/%.cpp $(CUDA_HDRS)
	@mkdir -p $(dir $@)
	$(CUDA_CXX) -std=c++17 -g -O2 -Wall -Wextra -fno-omit-frame-pointer -Ikernels/cuda -c $< -o $@

# The backend's constructor is a weak reference in the library, which would
# not pull it out of an archive: its objects are linked directly.
# The library comes again after the CUDA objects: the emulated recurrent op
# (rnn.cu) serves cuDNN's part from the CPU backend, which is in it.
$(BUILD)/anatomy-emu: $(BUILD)/obj/host/main.o $(BUILD)/libanatomy.a $(CUDA_EMU_OBJS)
	$(CC) $(CFLAGS) $^ $(BUILD)/libanatomy.a -o $@ $(LDFLAGS) $(LDLIBS) $(EXTRA_LDLIBS) \
		$(CUDA_EMU_LIBS)

$(BUILD)/tests/test_cuda_ops: $(CUDA_EMU_OBJS)
$(BUILD)/tests/test_cuda_ops: EXTRA_LDLIBS += $(BUILD)/libanatomy.a $(LDLIBS) $(CUDA_EMU_LIBS)
TEST_BINS := $(filter-out $(BUILD)/tests/test_cuda_ops,$(TEST_BINS))

# ---- native build (nvcc) ----
CUDA_DIR    := $(BUILD)/cuda
CUDA_ARCHS  := -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
# host-compiler flags through nvcc (the GPU bundle adds -fPIC: its objects go into a shared library)
CUDA_XCOMPILER ?= -Wall,-Wextra
CUDA_NVFLAGS := -std=c++17 -O3 -lineinfo -Ikernels/cuda $(CUDA_ARCHS) -Xptxas -v \
	-Xcompiler $(CUDA_XCOMPILER)
CUDA_OBJS   := $(CUDA_SRCS:%.cu=$(CUDA_DIR)/obj/%.o)
CUDA_LIBS   := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcudnn -lcudart -lstdc++ -ldl \
	-lpthread

# ptxas -v goes beside each object (.ptxas); the log is shown only on failure.
$(CUDA_DIR)/obj/%.o: %.cu $(CUDA_HDRS)
	@mkdir -p $(dir $@)
	@echo "nvcc $< (sm_80, sm_90)"
	@$(CUDA_NVCC) $(CUDA_NVFLAGS) -c $< -o $@ >$(@:.o=.ptxas) 2>&1 || { cat $(@:.o=.ptxas); exit 1; }

# One line per kernel and target: registers, shared memory, stack, spills.
$(CUDA_DIR)/ptxas.txt: $(CUDA_OBJS)
	@for f in $(CUDA_OBJS:.o=.ptxas); do awk -v f=$$(basename $$f .ptxas) ' \
		/Compiling entry function/ { k = $$7; gsub(/\047/, "", k); arch = $$NF; gsub(/\047/, "", arch) } \
		/bytes stack frame/ { st = $$1; ss = $$5; sl = $$9 } \
		/Used [0-9]+ registers/ { sm = "0"; for (i = 1; i < NF; i++) if ($$(i + 1) == "bytes" && $$(i + 2) ~ /smem/) sm = $$i; \
			printf "%-11s %-6s regs %3s smem %5s stack %3s spill-st %3s spill-ld %3s  %s\n", \
			f, arch, $$5, sm, st, ss, sl, k }' $$f; done | c++filt > $@
	@echo "ptxas: $$(wc -l < $@) kernel builds, $$(grep -cv 'spill-st   0 spill-ld   0' $@) with spills ($@)"

$(BUILD)/anatomy-cuda: $(BUILD)/obj/host/main.o $(BUILD)/libanatomy.a $(CUDA_OBJS)
	$(CC) $(CFLAGS) $^ -o $@ $(LDFLAGS) $(LDLIBS) $(EXTRA_LDLIBS) $(CUDA_LIBS) $(DIST_NCCL_LIBS)

$(CUDA_DIR)/tests/test_cuda_ops: $(BUILD)/obj/tests/test_cuda_ops.o $(BUILD)/libanatomy.a $(CUDA_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $^ -o $@ $(LDFLAGS) $(CHECK_LIBS) $(LDLIBS) $(CUDA_LIBS)

ifeq ($(CUDA),1)
$(BUILD)/anatomy: $(CUDA_OBJS)
$(BUILD)/anatomy: EXTRA_LDLIBS += $(CUDA_LIBS)
endif

CUDA_NEED_NVCC = @test -n "$(CUDA_NVCC)" || { echo "$@: nvcc not found (set CUDA_HOME or CUDA_NVCC)"; exit 1; }

.PHONY: emu cuda cuda-sass test-cuda gpu-check profile
emu: $(BUILD)/anatomy-emu

cuda:
	$(CUDA_NEED_NVCC)
	@$(MAKE) --no-print-directory $(BUILD)/anatomy-cuda $(CUDA_DIR)/ptxas.txt

cuda-sass: $(CUDA_OBJS)
	@for o in $(CUDA_OBJS); do echo "==== $$o"; $(CUDA_HOME)/bin/cuobjdump -sass $$o; done > $(CUDA_DIR)/sass.txt
	@echo "SASS of $(words $(CUDA_OBJS)) objects in $(CUDA_DIR)/sass.txt"

# Emulated always; natively too when a GPU answers. One summary line. With
# nvcc, the emulated launches are held to each kernel's ptxas register count
# (ANATOMY_EMU_PTXAS): a block that needs more than an SM's registers fails
# there as it would on the GPU.
CUDA_EMU_PTXAS = $(if $(CUDA_NVCC),$(CUDA_DIR)/ptxas.txt)
EXTRA_TESTS += test-cuda
test-cuda: $(BUILD)/tests/test_cuda_ops $(BUILD)/anatomy $(BUILD)/anatomy-emu $(if $(CUDA_NVCC),$(CUDA_DIR)/ptxas.txt $(CUDA_DIR)/tests/test_cuda_ops)
	@bins=$(BUILD)/tests/test_cuda_ops; \
	if [ -z "$(CUDA_NVCC)" ]; then echo "nvcc not found: no sm_80/sm_90 compile check, no native run"; \
	elif nvidia-smi -L >/dev/null 2>&1; then bins="$$bins $(CUDA_DIR)/tests/test_cuda_ops"; \
	else echo "no GPU (nvidia-smi -L fails): the parity suite runs on the emulator only"; fi; \
	ASAN_OPTIONS=$${ASAN_OPTIONS:-detect_leaks=0:detect_stack_use_after_return=0} \
	ANATOMY_EMU_PTXAS=$(CUDA_EMU_PTXAS) sh tests/run_c_tests.sh $(BUILD) $$bins
	ANATOMY_EMU_PTXAS=$(CUDA_EMU_PTXAS) $(PYTHON) -m pytest -q -p no:cacheprovider tests/cuda

gpu-check:
	$(CUDA_NEED_NVCC)
	@MAKE="$(MAKE)" sh scripts/gpu-check.sh

profile: $(BUILD)/anatomy-cuda
	@sh bench/profile_gpu.sh $(BUILD)/anatomy-cuda
