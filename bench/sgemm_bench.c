/* sgemm_bench.c: SGEMM GFLOP/s of one BLAS library at GPT-2's matmul shapes,
 * the way the CPU backend calls it and the way the library would thread it.
 *
 *   sgemm_bench LIBRARY [PREFIX] [THREADS]
 *
 * LIBRARY is loaded with dlopen (libopenblas.so.0, libscipy_openblas.so,
 * libblis.so.4, ...) and its cblas_sgemm found under PREFIX ("" or
 * "scipy_"), so one binary compares them all in one run. Per shape it prints
 *   split: THREADS OpenMP threads, each one single-threaded sgemm call on a
 *          contiguous block of the larger of M and N (backend_cpu.c's gemm());
 *   lib:   one sgemm call with the library's own THREADS threads.
 * Row-major, alpha 1, beta 1 (the backend's ops accumulate). Shapes: d12's
 * forward matmuls (C = A B^T, weights [N, K]), the logits' backward
 * (dX = dY W: NN, dW = dY^T X: TN) at BT = 256 (B 4, T 64) and 2048 (B 8,
 * T 256); with SHAPES=vit instead the twelve products of a block of the
 * Fashion-MNIST ViT recipe (width 128, BT = 6,400). Best of REPS timed calls
 * after a warm-up; the last line sums the shapes' best times.
 *
 * LIBRARY "bf16" times the CPU backend's own bf16 matmul instead
 * (kernels/cpu/gemm_bf16.c: inputs rounded to bf16, fp32 sums, on the kernel
 * it picks for this CPU, AMX tiles or AVX512-BF16 vectors; --precision bf16;
 * ANATOMY_NO_AMX=1 times the vector kernel on a CPU with AMX), split the
 * same way; it has no threads of its own, so its lib column is one thread. */
#include <dlfcn.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../kernels/cpu/gemm_bf16.h"

enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 }; /* CBLAS's enum values */
typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *,
                         int, float, float *, int);
typedef void (*set_threads_fn)(int);
typedef char *(*corename_fn)(void);

static sgemm_fn sgemm;
static set_threads_fn set_threads;

/* "bf16": bf16_gemm behind cblas_sgemm's signature, alpha 1 only, with each
 * thread's scratch grown on demand (a thread touches only its own). */
static bf16_kernel kernel;
static void *bf16_bufs[1024];
static size_t bf16_caps[1024];

static void bf16_sgemm(int order, int ta, int tb, int M, int N, int K, float alpha, const float *A,
                      int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    (void)order, (void)alpha;
    int t = omp_get_thread_num();
    size_t need = (bf16_gemm_scratch(M, N, K) + 63) / 64 * 64;
    if (need > bf16_caps[t]) {
        free(bf16_bufs[t]);
        bf16_bufs[t] = aligned_alloc(64, need);
        bf16_caps[t] = bf16_bufs[t] ? need : 0;
        if (!bf16_bufs[t]) {
            fprintf(stderr, "sgemm_bench: out of memory\n");
            exit(1);
        }
    }
    bf16_gemm(kernel, ta == TRANS, tb == TRANS, M, N, K, A, lda, B, ldb, beta, C, ldc, bf16_bufs[t],
              NULL, NULL);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void *sym(void *h, const char *prefix, const char *name)
{
    char buf[128];
    snprintf(buf, sizeof buf, "%s%s", prefix, name);
    return dlsym(h, buf);
}

/* C[M,N] += op(A) op(B), split over `parts` OpenMP threads as the backend does. */
static void gemm_split(int parts, int ta, int tb, int M, int N, int K, const float *A, int lda,
                       const float *B, int ldb, float *C, int ldc)
{
    int split_m = M >= N, dim = split_m ? M : N, unit = 16;
    int units = (dim + unit - 1) / unit;
    if (parts > units)
        parts = units;
#pragma omp parallel for schedule(static) num_threads(parts)
    for (int p = 0; p < parts; p++) {
        int q = units / parts, r = units % parts;
        int lo = p * q + (p < r ? p : r), hi = lo + q + (p < r);
        int a = lo * unit, b = hi * unit < dim ? hi * unit : dim;
        if (b <= a)
            continue;
        const float *Ab = A, *Bb = B;
        float *Cb;
        if (split_m) {
            Ab = ta ? A + a : A + (size_t)a * lda;
            Cb = C + (size_t)a * ldc;
        } else {
            Bb = tb ? B + (size_t)a * ldb : B + a;
            Cb = C + a;
        }
        sgemm(ROW_MAJOR, ta ? TRANS : NO_TRANS, tb ? TRANS : NO_TRANS, split_m ? b - a : M,
              split_m ? N : b - a, K, 1.0f, Ab, lda, Bb, ldb, 1.0f, Cb, ldc);
    }
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: sgemm_bench LIBRARY [PREFIX] [THREADS]\n");
        return 2;
    }
    const char *prefix = argc > 2 ? argv[2] : "";
    int threads = argc > 3 ? atoi(argv[3]) : omp_get_max_threads();
    int reps = getenv("REPS") ? atoi(getenv("REPS")) : 3;
    if (strcmp(argv[1], "bf16") == 0) {
        char why[402];
        kernel = bf16_gemm_pick(why, sizeof why);
        if (kernel == BF16_NONE) {
            fprintf(stderr, "sgemm_bench: bf16: %s\n", why);
            return 1;
        }
        sgemm = bf16_sgemm;
        printf("library bf16: the CPU backend's bf16 matmul on %s (fp32 sums)\n",
               bf16_kernel_name(kernel));
    }
    void *h = sgemm ? NULL : dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!sgemm && !h) {
        fprintf(stderr, "sgemm_bench: %s\n", dlerror());
        return 1;
    }
    if (h)
        sgemm = (sgemm_fn)sym(h, prefix, "cblas_sgemm");
    if (!sgemm) {
        fprintf(stderr, "sgemm_bench: %s: no %scblas_sgemm\n", argv[1], prefix);
        return 1;
    }
    /* OpenBLAS, else BLIS */
    set_threads = h ? (set_threads_fn)sym(h, prefix, "openblas_set_num_threads") : NULL;
    if (h && !set_threads)
        set_threads = (set_threads_fn)sym(h, prefix, "bli_thread_set_num_threads");
    corename_fn core = h ? (corename_fn)sym(h, prefix, "openblas_get_corename") : NULL;
    corename_fn config = h ? (corename_fn)sym(h, prefix, "openblas_get_config") : NULL;
    if (!h) {
        /* bf16: named above */
    } else if (!core) { /* BLIS: bli_arch_string(bli_arch_query_id()) */
        int (*qid)(void) = (int (*)(void))sym(h, prefix, "bli_arch_query_id");
        const char *(*astr)(int) = (const char *(*)(int))sym(h, prefix, "bli_arch_string");
        const char *(*ver)(void) = (const char *(*)(void))sym(h, prefix, "bli_info_get_version_str");
        printf("library %s: BLIS %s, kernel %s\n", argv[1], ver ? ver() : "?",
               qid && astr ? astr(qid()) : "?");
    } else {
        printf("library %s: %s, kernel %s\n", argv[1], config ? config() : "?", core());
    }

    typedef struct { const char *what; int ta, tb, m, n, k; } shape;
    /* m, n, k with BT substituted where -1 */
    static const int d12_bt[] = { 256, 2048, 0 };
    static const shape d12[] = {
        { "qkv      x W^T", 0, 1, -1, 2304, 768 },
        { "attproj  x W^T", 0, 1, -1, 768, 768 },
        { "fc       x W^T", 0, 1, -1, 3072, 768 },
        { "fcproj   x W^T", 0, 1, -1, 768, 3072 },
        { "logits   x W^T", 0, 1, -1, 50304, 768 },
        { "dlogits  dY W", 0, 0, -1, 768, 50304 },
        { "dwte     dY^T X", 1, 0, 50304, 768, -1 },
        { NULL, 0, 0, 0, 0, 0 },
    };
    /* SHAPES=vit: a block of the Fashion-MNIST ViT recipe (vit-mnist-p4
     * --width 128, batch 128 x 50 tokens), its products forward and back */
    static const int vit_bt[] = { 6400, 0 };
    static const shape vit[] = {
        { "qkv      x W^T", 0, 1, -1, 384, 128 },
        { "attproj  x W^T", 0, 1, -1, 128, 128 },
        { "fc       x W^T", 0, 1, -1, 512, 128 },
        { "fcproj   x W^T", 0, 1, -1, 128, 512 },
        { "dqkv     dY W", 0, 0, -1, 128, 384 },
        { "dattproj dY W", 0, 0, -1, 128, 128 },
        { "dfc      dY W", 0, 0, -1, 128, 512 },
        { "dfcproj  dY W", 0, 0, -1, 512, 128 },
        { "dWqkv    dY^T X", 1, 0, 384, 128, -1 },
        { "dWattprj dY^T X", 1, 0, 128, 128, -1 },
        { "dWfc     dY^T X", 1, 0, 512, 128, -1 },
        { "dWfcproj dY^T X", 1, 0, 128, 512, -1 },
        { NULL, 0, 0, 0, 0, 0 },
    };
    const char *set = getenv("SHAPES") ? getenv("SHAPES") : "d12";
    int is_vit = strcmp(set, "vit") == 0;
    if (!is_vit && strcmp(set, "d12") != 0) {
        fprintf(stderr, "sgemm_bench: SHAPES must be d12 or vit, got '%s'\n", set);
        return 2;
    }
    const int *BT = is_vit ? vit_bt : d12_bt;
    const shape *shapes = is_vit ? vit : d12;
    { /* warm-up, untimed: the threads' first BLAS calls set up their buffers */
        int M = 512, N = 2304, K = 768;
        float *A = calloc((size_t)M * K, 4), *B = calloc((size_t)N * K, 4), *C = calloc((size_t)M * N, 4);
        for (int r = 0; r < 10; r++) {
            if (set_threads)
                set_threads(r & 1 ? threads : 1);
            if (r & 1)
                sgemm(ROW_MAJOR, NO_TRANS, TRANS, M, N, K, 1.0f, A, K, B, K, 1.0f, C, N);
            else
                gemm_split(threads, 0, 1, M, N, K, A, K, B, K, C, N);
        }
        free(A), free(B), free(C);
    }
    printf("%-6s %-16s %6s %6s %6s %12s %12s\n", "BT", "matmul", "M", "N", "K", "split GF/s",
           "lib GF/s");
    double total[2] = { 0, 0 }; /* seconds, summed over the shapes */
    for (size_t b = 0; BT[b]; b++) {
        for (size_t s = 0; shapes[s].what; s++) {
            int M = shapes[s].m < 0 ? BT[b] : shapes[s].m, N = shapes[s].n;
            int K = shapes[s].k < 0 ? BT[b] : shapes[s].k, ta = shapes[s].ta, tb = shapes[s].tb;
            size_t na = (size_t)M * K, nb = (size_t)K * N, nc = (size_t)M * N;
            float *A = malloc(na * 4), *B = malloc(nb * 4), *C = malloc(nc * 4);
            for (size_t i = 0; i < na; i++)
                A[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
            for (size_t i = 0; i < nb; i++)
                B[i] = (float)((i * 40503u) % 1000) * 1e-3f - 0.5f;
            memset(C, 0, nc * 4);
            int lda = ta ? M : K, ldb = tb ? K : N;
            double flops = 2.0 * M * N * K, best[2] = { 1e30, 1e30 };
            for (int mode = 0; mode < 2; mode++) {
                if (set_threads)
                    set_threads(mode == 0 ? 1 : threads);
                for (int r = 0; r <= reps; r++) {
                    double t0 = now();
                    if (mode == 0)
                        gemm_split(threads, ta, tb, M, N, K, A, lda, B, ldb, C, N);
                    else
                        sgemm(ROW_MAJOR, ta ? TRANS : NO_TRANS, tb ? TRANS : NO_TRANS, M, N, K,
                              1.0f, A, lda, B, ldb, 1.0f, C, N);
                    double t = now() - t0;
                    if (r > 0 && t < best[mode])
                        best[mode] = t;
                }
            }
            printf("%-6d %-16s %6d %6d %6d %12.1f %12.1f\n", BT[b], shapes[s].what, M, N, K,
                   flops / best[0] * 1e-9, flops / best[1] * 1e-9);
            total[0] += best[0], total[1] += best[1];
            fflush(stdout);
            free(A);
            free(B);
            free(C);
        }
    }
    printf("all shapes: split %.2f ms, lib %.2f ms\n", total[0] * 1e3, total[1] * 1e3);
    return 0;
}
