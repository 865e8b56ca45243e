build-asan/obj/host/cmd_tokenize.o: host/cmd_tokenize.c host/cli.h \
 host/../data/errbuf.h host/../data/tokenizer.h
host/cli.h:
host/../data/errbuf.h:
host/../data/tokenizer.h:
