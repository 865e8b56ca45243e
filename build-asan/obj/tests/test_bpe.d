build-asan/obj/tests/test_bpe.o: tests/test_bpe.c tests/../data/bpe.h \
 tests/../data/errbuf.h tests/../data/rng.h tests/../data/tokenizer.h
tests/../data/bpe.h:
tests/../data/errbuf.h:
tests/../data/rng.h:
tests/../data/tokenizer.h:
