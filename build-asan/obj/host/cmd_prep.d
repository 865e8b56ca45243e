build-asan/obj/host/cmd_prep.o: host/cmd_prep.c host/cli.h \
 host/../data/errbuf.h host/../data/json.h host/../data/shard.h \
 host/../data/tokenizer.h
host/cli.h:
host/../data/errbuf.h:
host/../data/json.h:
host/../data/shard.h:
host/../data/tokenizer.h:
