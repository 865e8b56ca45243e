build-asan/obj/host/ckpt.o: host/ckpt.c host/ckpt.h host/model.h \
 host/../kernels/ops.h host/models/gpt2.h host/models/../model.h \
 host/../data/errbuf.h host/../data/json.h host/safetensors.h
host/ckpt.h:
host/model.h:
host/../kernels/ops.h:
host/models/gpt2.h:
host/models/../model.h:
host/../data/errbuf.h:
host/../data/json.h:
host/safetensors.h:
