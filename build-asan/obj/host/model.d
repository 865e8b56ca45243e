build-asan/obj/host/model.o: host/model.c host/model.h \
 host/../kernels/ops.h host/../data/errbuf.h
host/model.h:
host/../kernels/ops.h:
host/../data/errbuf.h:
