build-asan/obj/host/models/gpt2.o: host/models/gpt2.c host/models/gpt2.h \
 host/models/../model.h host/models/../../kernels/ops.h \
 host/models/../../data/errbuf.h host/models/../../data/rng.h
host/models/gpt2.h:
host/models/../model.h:
host/models/../../kernels/ops.h:
host/models/../../data/errbuf.h:
host/models/../../data/rng.h:
