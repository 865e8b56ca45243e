build-asan/obj/data/tokenizer.o: data/tokenizer.c data/tokenizer.h \
 data/bpe.h data/errbuf.h
data/tokenizer.h:
data/bpe.h:
data/errbuf.h:
