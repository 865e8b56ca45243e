build-asan/obj/host/train.o: host/train.c host/train.h host/../data/rng.h \
 host/../data/tokenizer.h host/ckpt.h host/model.h host/../kernels/ops.h \
 host/models/gpt2.h host/models/../model.h host/../data/errbuf.h \
 host/../data/shard.h host/setup.h
host/train.h:
host/../data/rng.h:
host/../data/tokenizer.h:
host/ckpt.h:
host/model.h:
host/../kernels/ops.h:
host/models/gpt2.h:
host/models/../model.h:
host/../data/errbuf.h:
host/../data/shard.h:
host/setup.h:
