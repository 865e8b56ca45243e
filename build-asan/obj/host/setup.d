build-asan/obj/host/setup.o: host/setup.c host/setup.h host/ckpt.h \
 host/model.h host/../kernels/ops.h host/models/gpt2.h \
 host/models/../model.h host/../data/errbuf.h host/cli.h
host/setup.h:
host/ckpt.h:
host/model.h:
host/../kernels/ops.h:
host/models/gpt2.h:
host/models/../model.h:
host/../data/errbuf.h:
host/cli.h:
