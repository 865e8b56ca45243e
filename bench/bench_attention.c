/* bench_attention.c: times the CUDA backend's attention ops (the fused
 * kernels of kernels/cuda/attention.cu) through the op table, bf16.
 *
 * usage: bench_attention [--bh N] [--iters N] [--T "1024 4096"] [--hs "64 128"]
 * One line per (hs, T, mask, pass), the same format bench/torch_sdpa.py prints:
 *   ours <fwd|bwd|fwdbwd> hs=<hs> T=<T> causal=<0|1> ms=<ms> tflops=<TFLOP/s>
 * FLOPs are the algorithm's, as FlashAttention counts them: forward
 * 4 * BH * T^2 * hs (two matmuls), backward 2.5x that (five matmuls, whatever
 * the kernel recomputes), both halved when causal. B * NH = BH with NH = 12
 * heads when BH allows (else one head per batch row). Inputs are random
 * normal values; the timing is the mean of --iters runs after 3 warm-ups,
 * between backend syncs. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../kernels/ops.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* n normal values (Box-Muller over a fixed-seed LCG: timing needs no fresh seed) */
static double *randn(size_t n, unsigned long long *st)
{
    double *x = malloc(n * sizeof *x);
    if (!x)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        double u[2];
        for (int k = 0; k < 2; k++) {
            *st = *st * 6364136223846793005ull + 1442695040888963407ull;
            u[k] = ((*st >> 11) + 0.5) / 9007199254740992.0;
        }
        x[i] = sqrt(-2 * log(u[0])) * cos(6.283185307179586 * u[1]);
    }
    return x;
}

static void *dev_rand(backend *be, size_t n, unsigned long long *st)
{
    double *h = randn(n, st);
    void *d = h ? be->alloc(be, n * dtype_size(be->act)) : NULL;
    if (!d) {
        fprintf(stderr, "bench_attention: out of memory (%zu elements)\n", n);
        exit(1);
    }
    be->upload(be, d, be->act, h, DT_F64, n);
    free(h);
    return d;
}

static int parse_list(const char *s, int *v, int max)
{
    int n = 0;
    char *end;
    while (*s && n < max) {
        long x = strtol(s, &end, 10);
        if (end == s)
            break;
        v[n++] = (int)x;
        s = end;
    }
    return n;
}

int main(int argc, char **argv)
{
    int bh = 192, iters = 20, Ts[8] = {1024, 4096}, nT = 2, hss[8] = {64, 128}, nhs = 2;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--bh"))
            bh = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--iters"))
            iters = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--T"))
            nT = parse_list(argv[i + 1], Ts, 8);
        else if (!strcmp(argv[i], "--hs"))
            nhs = parse_list(argv[i + 1], hss, 8);
        else {
            fprintf(stderr, "anatomy: error: %s: unknown option (--bh --iters --T --hs)\n", argv[i]);
            return 2;
        }
    }
    if (bh <= 0 || iters <= 0 || !nT || !nhs) {
        fprintf(stderr, "anatomy: error: --bh/--iters/--T/--hs: need positive values\n");
        return 2;
    }
    char err[512] = "";
    if (!backend_cuda_create) {
        fprintf(stderr, "anatomy: error: bench_attention: linked without the CUDA backend\n");
        return 1;
    }
    backend *be = backend_cuda_create(0, DT_BF16, err);
    if (!be) {
        fprintf(stderr, "anatomy: error: cuda: %s\n", err);
        return 1;
    }
    int NH = bh % 12 == 0 ? 12 : 1, B = bh / NH;
    unsigned long long st = 12345;
    for (int a = 0; a < nhs; a++) {
        for (int t = 0; t < nT; t++) {
            int hs = hss[a], T = Ts[t], C = NH * hs;
            size_t n3 = (size_t)B * T * 3 * C, n1 = (size_t)B * T * C, nl = (size_t)B * NH * T;
            void *qkv = dev_rand(be, n3, &st), *dout = dev_rand(be, n1, &st), *dqkv = dev_rand(be, n3, &st);
            void *out = be->alloc(be, n1 * dtype_size(be->act)), *lse = be->alloc(be, nl * sizeof(float));
            if (!out || !lse) {
                fprintf(stderr, "bench_attention: out of memory at hs %d T %d\n", hs, T);
                return 1;
            }
            if (be->plan && be->plan(be, B, T, C, NH, 50304, err)) {
                fprintf(stderr, "anatomy: error: plan: %s\n", err);
                return 1;
            }
            for (int causal = 0; causal < 2; causal++) {
                double fl = 4.0 * bh * (double)T * T * hs * (causal ? 0.5 : 1.0);
                double ms[3];
                for (int pass = 0; pass < 3; pass++) {	/* fwd, bwd, fwd+bwd */
                    for (int it = -3; it < iters; it++) {
                        if (it == 0) {
                            be->sync(be);
                            ms[pass] = now_s();
                        }
                        if (pass != 1)
                            be->attention_forward(be, out, lse, qkv, B, T, C, NH, causal);
                        else if (it == -3)	/* out and lse for the backward */
                            be->attention_forward(be, out, lse, qkv, B, T, C, NH, causal);
                        if (pass != 0)
                            be->attention_backward(be, dqkv, dout, qkv, out, lse, B, T, C, NH, causal);
                    }
                    be->sync(be);
                    ms[pass] = (now_s() - ms[pass]) * 1e3 / iters;
                }
                static const char *names[3] = {"fwd", "bwd", "fwdbwd"};
                static const double mult[3] = {1.0, 2.5, 3.5};
                for (int pass = 0; pass < 3; pass++)
                    printf("ours %s hs=%d T=%d causal=%d ms=%.4f tflops=%.1f\n", names[pass], hs, T, causal,
                           ms[pass], fl * mult[pass] / (ms[pass] * 1e-3) / 1e12);
                fflush(stdout);
            }
            be->free(be, qkv), be->free(be, dout), be->free(be, dqkv), be->free(be, out), be->free(be, lse);
        }
    }
    be->destroy(be);
    return 0;
}
