# mk/gpu-bundle.mk: everything one short GPU lease runs, built on this machine
# (no GPU needed) into one folder that travels with the call.
#
#   make gpu-bundle        build/gpu/ (kept well under 40 MiB):
#       bin/   anatomy-cuda, test_cuda_ops, test_cuda_seq_ops (native parity
#              suites), bench_attention, bench_ops, allreduce_bench, and
#              llmc_train_gpt2cu (llm.c's CUDA trainer, cuDNN attention, from
#              ../shared/anchors), all for sm_90, host code for x86-64-v3
#       lib/   libanatomy_gpu.so: the library and the CUDA backend, once
#       lib.tar.xz   the shared libraries the GPU image lacks (OpenBLAS and
#              its runtime, OpenMP), unpacked by run.sh; Check is static
#       native/  tests/emu's kernel tests built natively, emu-out/ the
#              emulator's digests of the same tests with the same seed
#       py/    the PyTorch references; data/ tinyshakespeare's GPT-2 tokens;
#              run.sh; BUILD_INFO (commit, date)
#   build/gpu-fmnist/  Fashion-MNIST's four files, beside the bundle: only the
#              ViT call (run.sh --vit) carries them (30 MiB)
#   build/gpu/run.sh       on the GPU machine: every figure of one lease, in
#                          one results file under $OUT (scripts/gpu_run.sh)
#   build/gpu/run.sh --rehearse   here: the same script end to end, with the
#                          emulated builds standing in for the device
#   make test-gpu-bundle   builds the bundle and rehearses it (tests/bundle/);
#                          part of `make test`. Also checks that every native
#                          binary of the normal build links and loads.
#
# The bundle's objects are built by a second make into build/gpu-obj with
# position-independent code, no MPI (the device image has no OpenMPI) and
# sm_90 only; the normal build's objects are not touched.

GPU_BUNDLE   := $(BUILD)/gpu
GPU_OBJ      := $(BUILD)/gpu-obj
GPU_SUBMAKE  := $(MAKE) --no-print-directory BUILD=$(GPU_OBJ) DIST_MPI=0 \
	OPT="-O3 -march=x86-64-v3 -fPIC" CUDA_XCOMPILER=-Wall,-Wextra,-fPIC \
	CUDA_ARCHS="-gencode arch=compute_90,code=sm_90"
GPU_BUNDLE_SEED := 12345
GPU_FMNIST   := $(BUILD)/gpu-fmnist
FMNIST_DIR   ?= /usr/share/datasets/fashion-mnist
LLMC_SRC     := $(SHARED)/anchors/llm.c
LLMC_FRONTEND := $(SHARED)/anchors/cudnn-frontend

# In any BUILD: the library and the CUDA backend as one shared object, so
# that the bundle's binaries carry the kernels once. cudart is static; the
# other CUDA libraries are found on the device (run.sh), the rest beside it.
$(BUILD)/libanatomy_gpu.so: $(LIB_OBJS) $(CUDA_OBJS) $(DIST_NCCL_OBJ)
	$(CC) -shared -fopenmp -o $@ $^ -Wl,-soname,libanatomy_gpu.so -Wl,-rpath,'$$ORIGIN' \
		$(LDLIBS) -L$(CUDA_HOME)/lib64 -lcublasLt -lcudnn -lnccl -lcudart_static -lstdc++ -ldl -lrt -lpthread

# The emulated counterparts of the bundle's benchmarks, for the rehearsal.
GPU_REHEARSE_BINS := $(BUILD)/bench-emu/bench_attention $(BUILD)/bench-emu/bench_ops
$(BUILD)/bench-emu/%: $(BUILD)/obj/bench/%.o $(BUILD)/libanatomy.a $(CUDA_EMU_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $^ $(BUILD)/libanatomy.a -o $@ $(LDFLAGS) $(LDLIBS) $(EXTRA_LDLIBS) $(CUDA_EMU_LIBS)

GPU_STATIC_CHECK := -Wl,-Bstatic -lcheck -lsubunit -Wl,-Bdynamic -lrt -lm
GPU_EXE_LINK := -L$(GPU_BUNDLE)/lib -lanatomy_gpu -Wl,-rpath,'$$ORIGIN/../lib' -fopenmp -lm

.PHONY: gpu-bundle test-gpu-bundle test-native-link
gpu-bundle: $(BUILD)/anatomy gpt2-vocab
	@test -n "$(CUDA_NVCC)" || { echo "gpu-bundle: nvcc not found (set CUDA_HOME or CUDA_NVCC)"; exit 1; }
	@test -d "$(LLMC_SRC)" || { echo "gpu-bundle: $(LLMC_SRC): not found (llm.c's trainer, ../shared/anchors)"; exit 1; }
	$(GPU_SUBMAKE) $(GPU_OBJ)/libanatomy_gpu.so $(GPU_OBJ)/obj/host/main.o \
		$(GPU_OBJ)/obj/tests/test_cuda_ops.o $(GPU_OBJ)/obj/tests/test_cuda_seq_ops.o \
		$(GPU_OBJ)/obj/bench/bench_attention.o $(GPU_OBJ)/obj/bench/bench_ops.o
	@rm -rf $(GPU_BUNDLE) && mkdir -p $(GPU_BUNDLE)/bin $(GPU_BUNDLE)/lib $(GPU_BUNDLE)/native \
		$(GPU_BUNDLE)/emu-out $(GPU_BUNDLE)/py
	cp $(GPU_OBJ)/libanatomy_gpu.so $(GPU_BUNDLE)/lib/ && strip --strip-unneeded $(GPU_BUNDLE)/lib/libanatomy_gpu.so
	$(CC) $(GPU_OBJ)/obj/host/main.o -o $(GPU_BUNDLE)/bin/anatomy-cuda $(GPU_EXE_LINK)
	$(CC) $(GPU_OBJ)/obj/tests/test_cuda_ops.o -o $(GPU_BUNDLE)/bin/test_cuda_ops $(GPU_EXE_LINK) $(GPU_STATIC_CHECK)
	$(CC) $(GPU_OBJ)/obj/tests/test_cuda_seq_ops.o -o $(GPU_BUNDLE)/bin/test_cuda_seq_ops $(GPU_EXE_LINK) $(GPU_STATIC_CHECK)
	$(CC) $(GPU_OBJ)/obj/bench/bench_attention.o -o $(GPU_BUNDLE)/bin/bench_attention $(GPU_EXE_LINK)
	$(CC) $(GPU_OBJ)/obj/bench/bench_ops.o -o $(GPU_BUNDLE)/bin/bench_ops $(GPU_EXE_LINK)
	$(CC) -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -I$(NCCL_HOME)/include -I$(CUDA_HOME)/include \
		bench/allreduce_bench.c -o $(GPU_BUNDLE)/bin/allreduce_bench -L$(CUDA_HOME)/lib64 -L$(NCCL_HOME)/lib \
		-lnccl -lcudart_static -ldl -lrt -lpthread
	@# tests/emu natively, and the emulator's digests of the same tests with the same seed
	@for t in $(EMU_TEST_CU); do n=$$(basename $$t .cu); \
		echo "nvcc $$t (native, sm_90)"; \
		$(NVCC) $(NVCC_FLAGS) -arch=sm_90 $$t -o $(GPU_BUNDLE)/native/$$n \
			-Xlinker -Bstatic -lcheck -lsubunit -Xlinker -Bdynamic -lrt -lm || exit 1; done
	$(MAKE) --no-print-directory $(EMU_TEST_BINS)
	@for t in $(EMU_TEST_BINS); do echo "emulated $$t (TEST_SEED=$(GPU_BUNDLE_SEED))"; \
		TEST_SEED=$(GPU_BUNDLE_SEED) ANATOMY_EMU_SEED=1 \
		ASAN_OPTIONS=detect_leaks=0:detect_stack_use_after_return=0 \
		$$t > $(GPU_BUNDLE)/emu-out/$$(basename $$t).out 2>&1 || \
		{ echo "gpu-bundle: $$t failed on the emulator"; tail -5 $(GPU_BUNDLE)/emu-out/$$(basename $$t).out; exit 1; }; done
	@# llm.c's CUDA trainer with cuDNN attention, in a copy of its tree (the anchors are read-only).
	@# NVML: no driver here, so a stub stands in at link time; llm.c calls NVML only where nvml.h
	@# was found at compile time (it is not here), and --as-needed drops the stub from the binary.
	@rm -rf $(GPU_OBJ)/llm.c && cp -r $(LLMC_SRC) $(GPU_OBJ)/llm.c && chmod -R u+w $(GPU_OBJ)/llm.c
	@ln -sfn $(abspath $(LLMC_FRONTEND)) $(GPU_OBJ)/llm.c/cudnn-frontend
	@mkdir -p $(GPU_OBJ)/llm.c/nvml-stub && echo 'void anatomy_nvml_stub(void) {}' > $(GPU_OBJ)/llm.c/nvml-stub/stub.c
	$(CC) -shared -fPIC -Wl,-soname,libnvidia-ml.so.1 $(GPU_OBJ)/llm.c/nvml-stub/stub.c -o $(GPU_OBJ)/llm.c/nvml-stub/libnvidia-ml.so
	@echo "llm.c: train_gpt2cu (cuDNN attention, sm_90); log in $(GPU_OBJ)/llm.c/build.log"
	@$(MAKE) --no-print-directory -C $(GPU_OBJ)/llm.c train_gpt2cu USE_CUDNN=1 NO_MULTI_GPU=1 GPU_COMPUTE_CAPABILITY=90 \
		NVCC=$(CUDA_NVCC) NVCC_LDLIBS="-L$(abspath $(GPU_OBJ))/llm.c/nvml-stub -Xlinker --as-needed -lnvrtc" \
		> $(GPU_OBJ)/llm.c/build.log 2>&1 || { tail -20 $(GPU_OBJ)/llm.c/build.log; exit 1; }
	cp $(GPU_OBJ)/llm.c/train_gpt2cu $(GPU_BUNDLE)/bin/llmc_train_gpt2cu
	strip $(GPU_BUNDLE)/bin/* $(GPU_BUNDLE)/native/*
	@# the libraries the binaries need beyond glibc, libstdc++ and CUDA's own, compressed
	sh scripts/gpu_bundle_libs.sh $(GPU_BUNDLE)
	cp bench/torch_gpt2_gpu.py bench/torch_sdpa.py $(GPU_BUNDLE)/py/
	@# tinyshakespeare as GPT-2 tokens, for the second call's loss-curve parity (the device has no network)
	ANATOMY=$(BUILD)/anatomy sh data/recipes/tinyshakespeare.sh $(GPU_BUNDLE)/data >/dev/null
	cp scripts/gpu_run.sh $(GPU_BUNDLE)/run.sh && chmod +x $(GPU_BUNDLE)/run.sh
	@rm -rf $(GPU_FMNIST) && mkdir -p $(GPU_FMNIST)
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then cp $(FMNIST_DIR)/*-ubyte.gz $(GPU_FMNIST)/; \
	else echo "gpu-bundle: $(FMNIST_DIR): no Fashion-MNIST (make deps installs it): run.sh --vit will say so"; fi
	@printf 'commit %s\nbuilt %s on %s\nnvcc %s\n' "$$(git rev-parse --short HEAD 2>/dev/null || echo '?')$$(git diff --quiet HEAD 2>/dev/null || echo ' (uncommitted changes)')" \
		"$$(date -u +%FT%TZ)" "$$(hostname)" "$$($(CUDA_NVCC) --version | sed -n 's/.*release //p')" > $(GPU_BUNDLE)/BUILD_INFO
	@echo "gpu-bundle: $(GPU_BUNDLE) $$(du -sh $(GPU_BUNDLE) | cut -f1): run build/gpu/run.sh on the GPU machine (carry build/gpu)"

# Every native binary of the normal build links (CI has nvcc but no GPU).
GPU_NATIVE_BINS := $(BUILD)/anatomy-cuda $(CUDA_DIR)/tests/test_cuda_ops $(CUDA_DIR)/tests/test_cuda_seq_ops
test-native-link:
	@test -n "$(CUDA_NVCC)" || { echo "test-native-link: nvcc not found: nothing native to link"; exit 0; }
	$(MAKE) --no-print-directory $(GPU_NATIVE_BINS) bench-attention-build

EXTRA_TESTS += test-gpu-bundle
test-gpu-bundle: test-native-link $(BUILD)/anatomy $(BUILD)/anatomy-emu $(BUILD)/tests/test_cuda_ops \
		$(BUILD)/tests/test_cuda_seq_ops $(GPU_REHEARSE_BINS)
	@if [ -n "$(CUDA_NVCC)" ]; then $(MAKE) --no-print-directory gpu-bundle; fi
	ANATOMY_BUILD=$(BUILD) ANATOMY_NVCC="$(CUDA_NVCC)" $(PYTHON) -m pytest -q -p no:cacheprovider tests/bundle
