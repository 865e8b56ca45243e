build-asan/obj/host/safetensors.o: host/safetensors.c host/safetensors.h \
 host/../data/errbuf.h host/../data/json.h
host/safetensors.h:
host/../data/errbuf.h:
host/../data/json.h:
