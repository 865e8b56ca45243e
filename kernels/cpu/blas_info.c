/* blas_info.c: which BLAS the CPU backend's matmuls run on, as the running
 * process found it: library, version, the kernel it chose for this CPU, and
 * the threads. `anatomy info` and train's start-up line print it.
 *
 * OpenBLAS picks its kernel at load time. An OpenBLAS older than the CPU may
 * not recognise it and fall back to a generic SSE kernel, several times
 * slower, without a word (Debian 12's 0.3.21 does so on Intel family 6
 * model 207). blas_kernel_mismatch() says when the kernel in use is such a
 * fallback on a CPU that has AVX2 or AVX-512.
 *
 * Compiled once: the Makefile builds kernels/cpu/ twice (fp32 and fp64),
 * and only the fp32 object defines these. */
#ifndef CPU_REAL_DOUBLE

#include <dlfcn.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "../blas.h"
#include "../ops.h"

#ifndef ANATOMY_BLAS_BUILD
#define ANATOMY_BLAS_BUILD "libopenblas"
#endif

/* OpenBLAS's x86 kernels that have no AVX2 (their names as
 * openblas_get_corename() returns them, compared case-insensitively). */
static const char *const pre_avx2[] = {
    "prescott", "core2",    "penryn",   "dunnington", "nehalem", "sandybridge", "atom",
    "katmai",   "coppermine", "northwood", "banias",   "athlon",  "opteron",     "opteron_sse3",
    "barcelona", "bobcat",  "bulldozer", "piledriver", "steamroller", "nano",    "generic",
    "unknown",
};

const char *blas_kernel(void)
{
    const char *k = openblas_get_corename();
    return k && *k ? k : "unknown";
}

const char *blas_kernel_mismatch(void)
{
#if defined(__x86_64__) || defined(__i386__)
    const char *k = blas_kernel();
    int avx512 = __builtin_cpu_supports("avx512f"), avx2 = __builtin_cpu_supports("avx2");
    if (!avx2 && !avx512)
        return NULL;
    for (size_t i = 0; i < sizeof pre_avx2 / sizeof *pre_avx2; i++)
        if (strcasecmp(k, pre_avx2[i]) == 0)
            return avx512 ? "a kernel without AVX2 on a CPU with AVX-512"
                          : "a kernel without AVX2 on a CPU with AVX2";
    /* An Intel CPU with AVX-512 on the AVX2 kernel: the library took the
     * newest core it knew, not this one's (AMD's Zen kernels are native). */
    if (avx512 && strcasecmp(k, "haswell") == 0 && __builtin_cpu_is("intel"))
        return "the AVX2 kernel on a CPU with AVX-512";
#endif
    return NULL;
}

/* "OpenBLAS 0.3.34.481.3 (scipy-openblas32), kernel SkylakeX, 2 threads
 * (OpenMP, one single-threaded BLAS call per thread)": the backend's
 * policy (backend_cpu.c's gemm()). The version is the second word of
 * openblas_get_config(). threads: the backend's, <= 0 for OpenMP's default. */
const char *blas_describe(int threads, char *buf, size_t n)
{
    const char *cfg = openblas_get_config(), *v = cfg ? strchr(cfg, ' ') : NULL;
    int vlen = 0;
    if (v) {
        v++;
        vlen = (int)strcspn(v, " ");
    }
    if (threads <= 0)
        threads = omp_get_max_threads();
    const char *bad = blas_kernel_mismatch();
    snprintf(buf, n,
             "OpenBLAS %.*s (%s), kernel %s, %d thread%s (OpenMP, one single-threaded BLAS "
             "call per thread)%s%s",
             vlen, v ? v : "?", ANATOMY_BLAS_BUILD, blas_kernel(), threads, threads == 1 ? "" : "s",
             bad ? "; WARNING, generic fallback: " : "", bad ? bad : "");
    return buf;
}

/* The file the BLAS was loaded from (dladdr on its sgemm), or "?". */
const char *blas_library_path(void)
{
    Dl_info di;
    if (dladdr((void *)cblas_sgemm, &di) && di.dli_fname)
        return di.dli_fname;
    return "?";
}

#endif
