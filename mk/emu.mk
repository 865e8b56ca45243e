# mk/emu.mk: the CUDA kernel tests, run on the device emulator and, where a
# GPU is present, natively too (kernels/cuda/emu/README.md).
#
#   make test-kernels   build every .cu under kernels/cuda/ and tests/emu/ with
#                       the host C++ compiler against the emulator (ASan on),
#                       run the tests/emu suites; compile every .cu with nvcc
#                       for sm_80 and sm_90 when nvcc exists; build and run
#                       the suites natively when nvidia-smi finds a GPU, and
#                       compare their digests with the emulator's.
#
# Part of `make test` through EXTRA_TESTS.

CXX_EMU  ?= g++
NVCC     ?= $(firstword $(shell command -v nvcc 2>/dev/null) $(wildcard /usr/local/cuda/bin/nvcc))
EMU_DIR  := $(BUILD)/emu
HAVE_GPU := $(shell nvidia-smi >/dev/null 2>&1 && echo 1)

# Tail calls would hide the kernel line a barrier or shuffle was called from;
# CUDA's #pragma unroll means nothing to g++.
EMU_CXXFLAGS := -std=c++17 -g -O1 -DANATOMY_EMU -Ikernels/cuda -Itests/emu -Wall -Wextra \
	-Wno-unknown-pragmas -fno-omit-frame-pointer -fno-optimize-sibling-calls
# Recoverable ASan reports are how shared-memory accesses reach the race
# detector (emu.cpp); misaligned vector loads abort as they would on a GPU.
EMU_SAN := -fsanitize=address -fsanitize-recover=address -fsanitize=alignment \
	-fno-sanitize-recover=alignment --param asan-instrumentation-with-call-threshold=1000000
EMU_RT_FLAGS := -std=c++17 -g -O2 -Wall -Wextra -fno-omit-frame-pointer -Ikernels/cuda
NVCC_FLAGS := -std=c++17 -Ikernels/cuda -Itests/emu
NVCC_ARCHS := -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90

EMU_HDRS        := $(wildcard kernels/cuda/*.cuh kernels/cuda/emu/*.h tests/emu/*.h)
EMU_KERNEL_CU   := $(shell find kernels/cuda -name '*.cu' 2>/dev/null | sort)
EMU_TEST_CU     := $(sort $(wildcard tests/emu/*.cu))
EMU_RT_OBJ      := $(EMU_DIR)/rt/emu.o
# the emulated NCCL, for the stream tests' collective on a second stream
EMU_NCCL_OBJ    := $(EMU_DIR)/rt/nccl_emu.o
EMU_KERNEL_OBJS := $(EMU_KERNEL_CU:%.cu=$(EMU_DIR)/obj/%.o)
EMU_TEST_BINS   := $(EMU_TEST_CU:tests/emu/%.cu=$(EMU_DIR)/tests/%)
EMU_NVCC_OBJS   := $(if $(NVCC),$(EMU_KERNEL_CU:%.cu=$(EMU_DIR)/nvcc/%.o) $(EMU_TEST_CU:%.cu=$(EMU_DIR)/nvcc/%.o))
EMU_NATIVE_BINS := $(if $(and $(NVCC),$(HAVE_GPU)),$(EMU_TEST_CU:tests/emu/%.cu=$(EMU_DIR)/native/%))

EXTRA_TESTS += test-kernels
.PHONY: test-kernels

$(EMU_RT_OBJ): kernels/cuda/emu/emu.cpp $(EMU_HDRS)
	@mkdir -p $(dir $@)
	$(CXX_EMU) $(EMU_RT_FLAGS) -c $< -o $@

$(EMU_NCCL_OBJ): kernels/cuda/emu/nccl_emu.cpp $(EMU_HDRS)
	@mkdir -p $(dir $@)
	$(CXX_EMU) $(EMU_RT_FLAGS) -c $< -o $@

$(EMU_DIR)/obj/%.o: %.cu $(EMU_HDRS)
	@mkdir -p $(dir $@)
	$(CXX_EMU) $(EMU_CXXFLAGS) $(EMU_SAN) $(CHECK_CFLAGS) -x c++ -c $< -o $@

$(EMU_DIR)/tests/%: $(EMU_DIR)/obj/tests/emu/%.o $(EMU_RT_OBJ) $(EMU_NCCL_OBJ)
	@mkdir -p $(dir $@)
	$(CXX_EMU) -fsanitize=address -fsanitize=alignment $^ -o $@ $(CHECK_LIBS) -ldl -lpthread -lrt

$(EMU_DIR)/nvcc/%.o: %.cu $(EMU_HDRS)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCC_FLAGS) $(NVCC_ARCHS) -c $< -o $@

$(EMU_DIR)/native/%: tests/emu/%.cu $(EMU_HDRS)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCC_FLAGS) -arch=sm_90 $< -o $@ $(CHECK_LIBS)

test-kernels:
	@MAKE="$(MAKE)" NVCC="$(NVCC)" HAVE_GPU="$(HAVE_GPU)" EMU_HDRS="$(EMU_HDRS)" \
	EMU_KERNEL_OBJS="$(EMU_KERNEL_OBJS)" EMU_TEST_BINS="$(EMU_TEST_BINS)" \
	EMU_NVCC_OBJS="$(EMU_NVCC_OBJS)" EMU_NATIVE_BINS="$(EMU_NATIVE_BINS)" \
	sh tests/emu/run_kernel_tests.sh $(EMU_DIR)
