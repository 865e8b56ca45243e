# mk/seqops.mk: the parity suite of the CUDA ops shared by the model families
# other than GPT-2 (kernels/cuda/seq.cu), tests/test_cuda_seq_ops.c, built and
# run as mk/cuda.mk does tests/test_cuda_ops.c (this file is read after it):
#
#   make test-cuda-seq   the suite linked with the emulated backend and run on
#                        the CPU; also natively when nvcc exists and
#                        `nvidia-smi -L` finds a GPU. Part of `make test`.
#
# Left out of test-c: without the CUDA backend linked in it can only fail.

$(BUILD)/tests/test_cuda_seq_ops: $(CUDA_EMU_OBJS)
# The archive again after the emulated objects: some of them (rnn.cu's
# emulated path) call into the CPU backend, which this test alone would not
# have pulled out of the archive where the link line first names it.
$(BUILD)/tests/test_cuda_seq_ops: EXTRA_LDLIBS += $(BUILD)/libanatomy.a $(LDLIBS) $(CUDA_EMU_LIBS)
TEST_BINS := $(filter-out $(BUILD)/tests/test_cuda_seq_ops,$(TEST_BINS))

$(CUDA_DIR)/tests/test_cuda_seq_ops: $(BUILD)/obj/tests/test_cuda_seq_ops.o $(BUILD)/libanatomy.a $(CUDA_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $^ -o $@ $(LDFLAGS) $(CHECK_LIBS) $(LDLIBS) $(CUDA_LIBS)

.PHONY: test-cuda-seq
EXTRA_TESTS += test-cuda-seq
test-cuda-seq: $(BUILD)/tests/test_cuda_seq_ops $(if $(CUDA_NVCC),$(CUDA_DIR)/tests/test_cuda_seq_ops $(CUDA_DIR)/ptxas.txt)
	@bins=$(BUILD)/tests/test_cuda_seq_ops; \
	if [ -n "$(CUDA_NVCC)" ] && nvidia-smi -L >/dev/null 2>&1; then bins="$$bins $(CUDA_DIR)/tests/test_cuda_seq_ops"; fi; \
	ASAN_OPTIONS=$${ASAN_OPTIONS:-detect_leaks=0:detect_stack_use_after_return=0} \
	ANATOMY_EMU_PTXAS=$(CUDA_EMU_PTXAS) sh tests/run_c_tests.sh $(BUILD) $$bins
