build-asan/obj/data/bpe.o: data/bpe.c data/bpe.h data/bpe_unicode.h \
 data/errbuf.h
data/bpe.h:
data/bpe_unicode.h:
data/errbuf.h:
