build-asan/obj/data/shard.o: data/shard.c data/shard.h data/errbuf.h \
 data/rng.h
data/shard.h:
data/errbuf.h:
data/rng.h:
