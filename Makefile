# anatomy: build, test, demo. `make help` lists the targets.
#
# Sources are found by directory, so adding a file needs no edit here:
#   kernels/cpu/*.c   CPU backend, compiled twice: fp32 (the backend) and fp64
#                     (the oracle the gradient checks run against)
#   data/*.c host/*.c host/models/*.c   the library and the command line
#   tests/test_*.c    one Check suite each -> build/tests/test_*
# mk/*.mk extend the build (CUDA, the device emulator, the tokenizer, fuzzers).

CC       ?= gcc
ifeq ($(origin CC),default)
CC := gcc
endif
OPT      ?= -O3 -march=native
CFLAGS   += -std=c11 -D_GNU_SOURCE -g $(OPT) -fno-math-errno -Wall -Wextra -fopenmp -MMD -MP
LDLIBS   += -lm -lpthread   # the BLAS: mk/blas.mk
# Model families are found through weak references (host/family.c), which
# would not pull their objects out of libanatomy.a: name each one to the linker.
FAMILIES := gpt2 bert vit ffnn rnn lstm patchts tsgpt
LDFLAGS  += $(foreach f,$(FAMILIES),-Wl,-u,$(f)_family)
BUILD    ?= build
PYTHON   ?= python3
SHARED   ?= ../shared
export PYTHON

CHECK_CFLAGS := $(shell pkg-config --cflags check 2>/dev/null)
CHECK_LIBS   := $(shell pkg-config --libs check 2>/dev/null || echo -lcheck -lsubunit -lrt -lm)

CPU_SRCS  := $(wildcard kernels/cpu/*.c)
LIB_SRCS  := $(wildcard data/*.c) $(filter-out host/main.c,$(wildcard host/*.c)) $(wildcard host/models/*.c)
TEST_SRCS := $(wildcard tests/test_*.c)

CPU_OBJS  := $(CPU_SRCS:%.c=$(BUILD)/obj/%.o) $(CPU_SRCS:%.c=$(BUILD)/obj/%.f64.o)
LIB_OBJS  := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o) $(CPU_OBJS)
TEST_BINS := $(TEST_SRCS:tests/%.c=$(BUILD)/tests/%)

.PHONY: all deps test test-c test-py demo bench asan clean help
.SECONDARY: # keep the test objects make would otherwise delete as intermediates
all: $(BUILD)/anatomy

-include mk/*.mk

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/obj/%.f64.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DCPU_REAL_DOUBLE -c $< -o $@

$(BUILD)/libanatomy.a: $(LIB_OBJS) $(EXTRA_LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/anatomy: $(BUILD)/obj/host/main.o $(BUILD)/libanatomy.a
	$(CC) $(CFLAGS) $^ -o $@ $(LDFLAGS) $(LDLIBS) $(EXTRA_LDLIBS)

$(BUILD)/obj/tests/%.o: tests/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(CHECK_CFLAGS) -c $< -o $@

$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(BUILD)/libanatomy.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $^ -o $@ $(LDFLAGS) $(CHECK_LIBS) $(LDLIBS) $(EXTRA_LDLIBS)

# Installs what the project needs (apt: Check, OpenBLAS, OpenMPI, PCRE2;
# pip: torch, transformers, safetensors, tiktoken, tokenizers). As root it
# installs; otherwise it prints the commands. A stamp skips a second run.
deps: $(BUILD)/.deps
$(BUILD)/.deps: scripts/deps.sh
	@mkdir -p $(BUILD)
	sh scripts/deps.sh
	@touch $@

# The test ladder: C suites (op gradient checks, model checks, behaviour,
# bad input) then the references (PyTorch, Hugging Face transformers), then
# the rest (mk/*.mk); -k: a failing part does not hide the parts after it.
test: deps
	$(MAKE) -k test-c test-py $(EXTRA_TESTS)

test-c: $(BUILD)/anatomy $(TEST_BINS)
	@sh tests/run_c_tests.sh $(BUILD) $(TEST_BINS)

# Behaviour of the command line, then parity with PyTorch, transformers, tiktoken.
test-py: $(BUILD)/anatomy
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/cli tests/ref

# Trains a small GPT-2 on tinyshakespeare on the CPU and prints samples.
demo: deps $(BUILD)/anatomy
	sh scripts/demo.sh $(BUILD)/anatomy

bench: deps $(BUILD)/anatomy
	sh bench/bench_cpu.sh $(BUILD)/anatomy

# AddressSanitizer + UndefinedBehaviorSanitizer build of the CPU side and its test suite.
asan:
	$(MAKE) BUILD=build-asan OPT="-O1 -fno-omit-frame-pointer -fsanitize=address,undefined" \
		LDFLAGS="-fsanitize=address,undefined" test-c

clean:
	rm -rf build build-asan

help:
	@echo "make            build build/anatomy"
	@echo "make deps       install dependencies (root) or print the commands"
	@echo "make test       build and run every test (C suites, then PyTorch/HF references)"
	@echo "make demo       train a small GPT-2 on tinyshakespeare on the CPU, print samples"
	@echo "make bench      d12 training steps beside llm.c's PyTorch trainer on the CPU"
	@echo "make asan       run the C suites under ASan + UBSan"
	@echo "make test-kernels / test-cuda / test-dist / test-fuzz / test-gpu-bundle   one part of make test"
	@echo "make emu        build/anatomy-emu: the CUDA backend on the device emulator"
	@echo "make cuda       build/anatomy-cuda with nvcc (sm_80, sm_90)"
	@echo "make gpu-bundle build/gpu: everything a GPU lease runs (then build/gpu/run.sh there)"
	@echo "make gpu-check  on a GPU machine that builds: the bundle and both of its calls"
	@echo "make profile    Nsight Systems and Nsight Compute on a few training steps"
	@echo "make bench-tokenizer  our BPE beside tiktoken and HF tokenizers"

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
