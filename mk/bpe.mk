# mk/bpe.mk: the GPT-2 tokenizer's build extras.
#   gpt2-vocab      fills $(BUILD)/.cache/gpt2 (encoder.json, vocab.bpe) from
#                   $(SHARED)/data/gpt2 or the public source, sha256 checked;
#                   tokenizer_open("gpt2", NULL) looks there by default
#   test-fuzz       libFuzzer (clang) targets for the tokenizer and the shard
#                   reader, FUZZ_TIME seconds each; part of `make test`
#   test-tokenizer  the tokenizer's C suite and its tiktoken parity test alone
#   bench-tokenizer encode throughput beside tiktoken and HF tokenizers

GPT2_CACHE := $(BUILD)/.cache/gpt2
FUZZ_CC    ?= clang
FUZZ_TIME  ?= 20
FUZZ_FLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer \
              -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
FUZZ_DIR   := $(BUILD)/fuzz

.PHONY: gpt2-vocab test-fuzz test-tokenizer bench-tokenizer
EXTRA_TESTS += test-fuzz

all: gpt2-vocab
test-c test-py: gpt2-vocab
# the demo tokenizes tinyshakespeare and prints samples in GPT-2 tokens, and
# may be the first command on a fresh machine (tests/cli/test_make.py)
demo: gpt2-vocab

# The tokenizer test checks the hand-written pre-tokenizer against PCRE2.
$(BUILD)/tests/test_bpe: EXTRA_LDLIBS += -lpcre2-8

gpt2-vocab:
	@sh data/recipes/gpt2_vocab.sh $(GPT2_CACHE) $(SHARED)/data/gpt2

FUZZ_HAVE_CC = @command -v $(FUZZ_CC) >/dev/null 2>&1 || { echo "test-fuzz: $(FUZZ_CC) not \
	found: the fuzz targets need clang with libFuzzer (apt-get install clang libclang-rt-dev)"; exit 1; }

$(FUZZ_DIR)/fuzz_bpe: tests/fuzz/fuzz_bpe.c data/bpe.c data/tokenizer.c data/bpe.h \
		data/bpe_unicode.h data/tokenizer.h data/errbuf.h
	$(FUZZ_HAVE_CC)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) tests/fuzz/fuzz_bpe.c data/bpe.c data/tokenizer.c -o $@ -lpthread

$(FUZZ_DIR)/fuzz_shard: tests/fuzz/fuzz_shard.c data/shard.c data/fsutil.c data/shard.h data/rng.h \
		data/errbuf.h data/readat.h data/fsutil.h
	$(FUZZ_HAVE_CC)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) tests/fuzz/fuzz_shard.c data/shard.c data/fsutil.c -o $@ -lm

# Each target runs FUZZ_TIME seconds from its corpus of earlier runs (kept in
# $(FUZZ_DIR)); a crash leaves the input as $(FUZZ_DIR)/crash-* and fails.
test-fuzz: $(FUZZ_DIR)/fuzz_bpe $(FUZZ_DIR)/fuzz_shard gpt2-vocab
	@mkdir -p $(FUZZ_DIR)/corpus_bpe $(FUZZ_DIR)/corpus_shard
	@cp tests/ref/tokenizer_corpus.txt $(FUZZ_DIR)/corpus_bpe/seed_corpus
	@for t in bpe shard; do \
		echo "== fuzz_$$t: $(FUZZ_TIME) s (log: $(FUZZ_DIR)/fuzz_$$t.log)"; \
		( cd $(FUZZ_DIR) && ANATOMY_GPT2_DIR=$(abspath $(GPT2_CACHE)) ./fuzz_$$t \
			-max_total_time=$(FUZZ_TIME) -timeout=20 -rss_limit_mb=4096 -max_len=8192 \
			corpus_$$t > fuzz_$$t.log 2>&1 ) || { tail -n 40 $(FUZZ_DIR)/fuzz_$$t.log; exit 1; }; \
		grep -E '^#[0-9]+[[:space:]]+DONE' $(FUZZ_DIR)/fuzz_$$t.log | tail -n 1; \
	done

test-tokenizer: $(BUILD)/tests/test_bpe $(BUILD)/anatomy gpt2-vocab
	@sh tests/run_c_tests.sh $(BUILD) $(BUILD)/tests/test_bpe
	$(PYTHON) -m pytest -q tests/ref/test_tokenizer.py

bench-tokenizer: $(BUILD)/anatomy gpt2-vocab
	sh bench/bench_tokenizer.sh $(BUILD)/anatomy
