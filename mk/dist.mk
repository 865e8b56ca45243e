# mk/dist.mk: multi-process training (host/dist.c) over MPI.
#
# OpenMPI is optional: found through `mpicc --showme`, else pkg-config ompi-c.
# Without it (or with DIST_MPI=0) host/dist.c builds with one process only and
# a world > 1 environment is refused with a clear error.
#
#   make test-dist   the multi-rank tests (tests/dist/, mpirun -np 2 and 4 on
#                    the CPU); part of `make test` through EXTRA_TESTS.

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

EXTRA_TESTS += test-dist
.PHONY: test-dist

test-dist: $(BUILD)/anatomy
	ANATOMY_BIN=$(BUILD)/anatomy $(PYTHON) -m pytest -q -p no:cacheprovider tests/dist
