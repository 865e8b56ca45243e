build-asan/obj/data/json.o: data/json.c data/json.h data/errbuf.h
data/json.h:
data/errbuf.h:
