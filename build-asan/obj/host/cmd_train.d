build-asan/obj/host/cmd_train.o: host/cmd_train.c host/../data/errbuf.h \
 host/cli.h host/setup.h host/ckpt.h host/model.h host/../kernels/ops.h \
 host/models/gpt2.h host/models/../model.h host/train.h \
 host/../data/rng.h host/../data/tokenizer.h
host/../data/errbuf.h:
host/cli.h:
host/setup.h:
host/ckpt.h:
host/model.h:
host/../kernels/ops.h:
host/models/gpt2.h:
host/models/../model.h:
host/train.h:
host/../data/rng.h:
host/../data/tokenizer.h:
