build-asan/obj/host/main.o: host/main.c host/cli.h
host/cli.h:
