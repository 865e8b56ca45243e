build-asan/obj/kernels/cpu/backend_cpu.o: kernels/cpu/backend_cpu.c \
 /usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h \
 /usr/include/x86_64-linux-gnu/openblas-pthread/openblas_config.h \
 kernels/cpu/../ops.h
/usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h:
/usr/include/x86_64-linux-gnu/openblas-pthread/openblas_config.h:
kernels/cpu/../ops.h:
