# mk/attention.mk: the fused attention's static check and its benchmark.
#
#   make test-attention-sass   the SASS of kernels/cuda/attention.cu for sm_90
#                              (the nvcc object test-cuda builds) must show
#                              tensor-core instructions (HMMA or HGMMA) in every
#                              flash_* kernel; fails otherwise. Per-kernel counts
#                              and ptxas registers/spills in build/attention/.
#                              Part of `make test`; says so and passes where
#                              there is no nvcc (nothing to check).
#   make bench-attention       build/bench_attention (nvcc-built backend), then
#                              bench/bench_attention.sh: ours beside PyTorch SDPA
#                              (flash and cuDNN backends), on the GPU machine.
#
# This file is read before mk/cuda.mk (mk/*.mk in name order): the variables
# cuda.mk defines (CUDA_NVCC, CUDA_OBJS, CUDA_LIBS) are used only in recipes,
# which make expands when it runs them.

ATT_DIR := $(BUILD)/attention
ATT_OBJ := $(BUILD)/cuda/obj/kernels/cuda/attention.o
# cuobjdump: beside nvcc, else on PATH, else the copy PyTorch's triton ships
# (this machine's toolkit has none of its own).
CUOBJDUMP ?=
ATT_CUOBJDUMP = $(firstword $(CUOBJDUMP) $(wildcard $(dir $(CUDA_NVCC))cuobjdump) \
	$(shell command -v cuobjdump 2>/dev/null) \
	$(shell $(PYTHON) -c 'import os, triton; p = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump"); print(p if os.path.exists(p) else "")' 2>/dev/null))

EXTRA_TESTS += test-attention-sass
.PHONY: test-attention-sass bench-attention

test-attention-sass:
	@if [ -z "$(CUDA_NVCC)" ]; then echo "test-attention-sass: nvcc not found: no SASS to check"; exit 0; fi; \
	$(MAKE) --no-print-directory $(ATT_OBJ) || exit 1; \
	mkdir -p $(ATT_DIR); \
	cuobjdump=$(ATT_CUOBJDUMP); \
	[ -n "$$cuobjdump" ] || { echo "test-attention-sass: FAILED: no cuobjdump (beside nvcc, on PATH or in triton; set CUOBJDUMP=)"; exit 1; }; \
	$$cuobjdump -arch sm_90 -sass $(ATT_OBJ) > $(ATT_DIR)/attention.sm_90.sass || exit 1; \
	awk '/Compiling entry function/ { k = $$7; gsub(/\047/, "", k); a = $$NF; gsub(/\047/, "", a) } \
	     /Used [0-9]+ registers/ && a == "sm_90" && k ~ /flash/ { print k, $$0 }' $(ATT_OBJ:.o=.ptxas) | \
	  c++filt | sed 's/ptxas info *: //' > $(ATT_DIR)/ptxas.sm_90.txt; \
	awk '/Function :/ { f = $$3; n[f] += 0 } /HMMA|HGMMA/ { n[f]++ } \
	     END { bad = 0; k = 0; for (f in n) if (f ~ /flash_/) { k++; printf "%6d tensor-core instructions  %s\n", n[f], f; if (!n[f]) bad++ } \
	           if (!k) { print "no flash_* kernel in the SASS"; exit 1 } exit bad ? 1 : 0 }' \
	  $(ATT_DIR)/attention.sm_90.sass > $(ATT_DIR)/sass-check.raw; rc=$$?; \
	c++filt < $(ATT_DIR)/sass-check.raw > $(ATT_DIR)/sass-check.txt; cat $(ATT_DIR)/sass-check.txt; \
	if [ $$rc -ne 0 ]; then echo "test-attention-sass: FAILED: a flash kernel has no HMMA/HGMMA in its sm_90 SASS"; exit 1; fi; \
	awk '/Function :/ { if (f ~ /flash_bwd_/) { k++; if (!ok) bad = bad " " f } f = $$3; bar = 0; ok = 0; done = 0 } \
	     /BAR\.SYNC/ { bar = 1; ldg = 0 } /LDGSTS/ && bar { ldg = 1 } \
	     /HMMA|HGMMA/ && bar && !done { done = 1; ok = ldg } \
	     END { if (f ~ /flash_bwd_/) { k++; if (!ok) bad = bad " " f } \
	           if (!k) { print "no flash_bwd_* kernel in the SASS"; exit 1 } \
	           if (bad != "") { print "the next tile'\''s cp.async (LDGSTS) is not issued before the matmuls (HMMA) in:" bad; exit 1 } \
	           printf "%d backward kernels issue the next tile'\''s loads before their matmuls\n", k }' \
	  $(ATT_DIR)/attention.sm_90.sass > $(ATT_DIR)/pipeline-check.raw; rc=$$?; \
	c++filt < $(ATT_DIR)/pipeline-check.raw > $(ATT_DIR)/pipeline-check.txt; cat $(ATT_DIR)/pipeline-check.txt; \
	if [ $$rc -ne 0 ]; then echo "test-attention-sass: FAILED: a backward kernel's double buffering did not survive compilation"; exit 1; fi; \
	echo "test-attention-sass: every flash kernel uses tensor cores, the backward kernels overlap loads with matmuls (sm_90 SASS, $(ATT_DIR))"

# The harness: the backend's attention ops timed through the op table. It is
# relinked every time (cheap) because cuda.mk's object list is not known here.
.PHONY: bench-attention-build
bench-attention-build:
	@test -n "$(CUDA_NVCC)" || { echo "bench-attention: nvcc not found"; exit 1; }
	@$(MAKE) --no-print-directory $(CUDA_OBJS) $(BUILD)/obj/bench/bench_attention.o $(BUILD)/libanatomy.a
	$(CC) $(CFLAGS) $(BUILD)/obj/bench/bench_attention.o $(CUDA_OBJS) $(BUILD)/libanatomy.a -o $(BUILD)/bench_attention \
		$(LDFLAGS) $(LDLIBS) $(CUDA_LIBS)

bench-attention: bench-attention-build
	sh bench/bench_attention.sh $(BUILD)/bench_attention
