# mk/blas.mk: the BLAS the CPU backend's matmuls run on, chosen here.
#
# First choice: the OpenBLAS that PyPI's scipy-openblas32 wheel ships (make
# deps installs it). It is a current OpenBLAS built with DYNAMIC_ARCH, which
# picks its kernel from the CPU's features (AVX-512, AVX2, NEON/SVE), so a CPU
# newer than the library still gets the kernel of its vector units. Debian 12's
# libopenblas 0.3.21 picks by CPU model and falls back to its SSE3 "Prescott"
# kernel on models it does not know (5x slower at GPT-2's shapes; measured in
# bench/NOTES.md). The wheel's symbols carry a scipy_ prefix: its pkg-config
# flags define BLAS_SYMBOL_PREFIX, and kernels/cpu/blas.h maps the names.
# Linked with an rpath to the wheel's directory: no LD_LIBRARY_PATH needed.
#
# Fallback, when the wheel is not installed: Debian's libopenblas, as before.
# Either way `anatomy info` and train's start-up line name the library, its
# version, the kernel it chose and the threads, and tests/cli/test_blas.py
# fails when that kernel is a generic fallback on a CPU with AVX2/AVX-512.
#
#   make BLAS=openblas   force Debian's libopenblas (to compare)
#   make blas-info       print which BLAS this build links
#   make bench-sgemm     build/sgemm_bench: SGEMM GFLOP/s at GPT-2's shapes for
#                        every candidate library found (bench/sgemm_bench.sh)

BLAS ?= auto
SCIPY_OPENBLAS_DIR := $(if $(filter auto scipy-openblas,$(BLAS)),$(shell $(PYTHON) -c \
	'import scipy_openblas32 as s; print(s.get_lib_dir())' 2>/dev/null))
ifneq ($(wildcard $(SCIPY_OPENBLAS_DIR)/libscipy_openblas.so),)
BLAS_NAME    := scipy-openblas32
BLAS_CFLAGS  := -I$(SCIPY_OPENBLAS_DIR)/../include -DBLAS_SYMBOL_PREFIX=scipy_
BLAS_LIBS    := -L$(SCIPY_OPENBLAS_DIR) -Wl,-rpath,$(SCIPY_OPENBLAS_DIR) -lscipy_openblas
else ifeq ($(BLAS),scipy-openblas)
$(error BLAS=scipy-openblas: the scipy-openblas32 wheel is not installed for $(PYTHON) (make deps))
else
BLAS_NAME    := libopenblas
BLAS_CFLAGS  := $(shell pkg-config --cflags openblas 2>/dev/null)
BLAS_LIBS    := -lopenblas
endif
CFLAGS += $(BLAS_CFLAGS) -DANATOMY_BLAS_BUILD='"$(BLAS_NAME)"'
LDLIBS += $(BLAS_LIBS)
# The device emulator's matmul (kernels/cuda/matmul.cu) calls sgemm too; mk/cuda.mk
# sets its flags after this file is read, so they are added per target.
$(BUILD)/cuda-emu/kernels/cuda/matmul.o: CUDA_EMU_FLAGS += $(BLAS_CFLAGS)

# The objects that include the BLAS headers follow a change of library (a
# build made before `make deps` installed the wheel is rebuilt with it): the
# stamp holds the library's name and is rewritten only when that changes, as
# mk/dist.mk's (a stamp with no prerequisite would be an intermediate file
# under the Makefile's .SECONDARY, never made when missing).
$(BUILD)/.blas: FORCE
	@mkdir -p $(BUILD)
	@echo '$(BLAS_NAME)' | cmp -s - $@ 2>/dev/null || echo '$(BLAS_NAME)' > $@
$(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard kernels/cpu/*.c)) \
$(patsubst %.c,$(BUILD)/obj/%.f64.o,$(wildcard kernels/cpu/*.c)): $(BUILD)/.blas

.PHONY: blas-info bench-sgemm
blas-info:
	@echo "BLAS: $(BLAS_NAME)"
	@echo "  CFLAGS: $(BLAS_CFLAGS)"
	@echo "  LIBS:   $(BLAS_LIBS)"

$(BUILD)/sgemm_bench: bench/sgemm_bench.c kernels/cpu/gemm_bf16.c kernels/cpu/gemm_bf16.h
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -D_GNU_SOURCE -O2 -fopenmp -Wall -Wextra bench/sgemm_bench.c kernels/cpu/gemm_bf16.c -o $@ -ldl

bench-sgemm: $(BUILD)/sgemm_bench
	sh bench/sgemm_bench.sh $(BUILD)/sgemm_bench
