build-asan/obj/host/cli.o: host/cli.c host/cli.h
host/cli.h:
