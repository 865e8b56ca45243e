/* bench_ops.c: times the CUDA backend's memory-bound ops through the op table
 * (bf16 activations, fp32 statistics and optimizer state) at the shapes of
 * one GPT-2 124M micro-batch, and reports each one's bandwidth.
 *
 * usage: bench_ops [--N rows] [--C width] [--V vocab] [--params P] [--iters N]
 *   defaults: N = 16384 (B 16 x T 1024), C = 768, V = 50257 (padded to a
 *   multiple of 128), P = 124439808 (GPT-2 124M), iters 20.
 * One line per op:
 *   ours <op> ms=<ms> gbps=<GB/s> bytes=<bytes per call>
 * The bytes are the least traffic the op's math needs (every input read
 * once, every output written once; a backward's accumulate reads its target
 * too); a fused kernel cannot move less, so GB/s over the card's measured
 * copy bandwidth is the fraction of the memory ceiling it reaches. The time
 * is the mean of --iters calls after 3 warm-ups, between backend syncs.
 * The ceiling itself comes from the same run: bench/torch_gpt2_gpu.py
 * --ceilings (device-to-device copy, bytes read + written).
 * Two rows time the MLP's c_proj backward (a matmul of N x 4C x C, so
 * compute-bound: compare their ms, not their GB/s): "fused" as the model
 * runs it (matmul_gelu_backward: cuBLASLt DGELU, BGRADB) and "unfused" as it
 * ran before (zero-fill, matmul_backward, zero-fill, gelu_backward).
 * ANATOMY_LT_REFUSE=DGELU,BGRADB makes both take the fallbacks. */
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

static backend *be;

/* n elements of type t, filled with values in [-1, 1) (a fixed LCG: timing
 * needs no fresh seed, only finite, varied data) */
static void *dev_buf(dtype t, size_t n, unsigned long long *st)
{
    void *d = be->alloc(be, n * dtype_size(t));
    float *h = malloc(n * sizeof *h);
    if (!d || !h) {
        fprintf(stderr, "anatomy: error: bench_ops: out of memory (%zu elements of %s)\n", n, dtype_name(t));
        exit(1);
    }
    for (size_t i = 0; i < n; i++) {
        *st = *st * 6364136223846793005ull + 1442695040888963407ull;
        h[i] = (float)((*st >> 40) * (2.0 / 16777216.0) - 1.0);
    }
    be->upload(be, d, t, h, DT_F32, n);
    free(h);
    return d;
}

typedef void (*op_fn)(void *arg);

/* Mean milliseconds of one call of fn(arg), after 3 warm-ups. */
static double time_op(op_fn fn, void *arg, int iters)
{
    for (int i = 0; i < 3; i++)
        fn(arg);
    be->sync(be);
    double t0 = now_s();
    for (int i = 0; i < iters; i++)
        fn(arg);
    be->sync(be);
    return (now_s() - t0) * 1e3 / iters;
}

typedef struct {
    int N, C, V, Vp;
    size_t P;
    void *x, *y, *res, *dy, *dx, *g, *b, *dg, *db, *mean, *rstd;
    void *logits, *losses;
    int32_t *targets;
    void *params, *master, *grads, *m, *v;
    void *pre, *h, *d4, *d4b, *w4, *dw4; /* the MLP's [N,4C] tensors, c_proj's [C,4C] weight */
    param_segment seg[2];
    adamw_params hp;
} shapes;

static void ln_fwd(void *a)
{
    shapes *s = a;
    be->layernorm_forward(be, s->y, s->mean, s->rstd, s->x, s->g, s->b, s->N, s->C);
}

static void ln_bwd(void *a)
{
    shapes *s = a;
    be->layernorm_backward(be, s->dx, s->dg, s->db, s->dy, s->x, s->g, s->mean, s->rstd, s->N, s->C);
}

static void resln_fwd(void *a)
{
    shapes *s = a;
    be->residual_layernorm_forward(be, s->res, s->y, s->mean, s->rstd, s->x, s->dy, s->g, s->b, s->N, s->C);
}

static void gelu_fwd(void *a)
{
    shapes *s = a;
    be->gelu_forward(be, s->y, s->x, (size_t)s->N * s->C);
}

static void gelu_bwd(void *a)
{
    shapes *s = a;
    be->gelu_backward(be, s->dx, s->x, s->dy, (size_t)s->N * s->C);
}

static void mlp_proj_bwd_fused(void *a)
{
    shapes *s = a;
    be->matmul_gelu_backward(be, s->d4, s->dw4, s->db, s->dy, s->h, s->pre, s->w4, s->N, 4 * s->C, s->C);
}

static void mlp_proj_bwd_unfused(void *a)
{
    shapes *s = a;
    size_t n4 = (size_t)s->N * 4 * s->C;
    be->fill(be, s->d4, be->act, 0.0, n4);
    be->matmul_backward(be, s->d4, s->dw4, s->db, s->dy, s->h, s->w4, s->N, 4 * s->C, s->C, GRAD_ADD);
    be->fill(be, s->d4b, be->act, 0.0, n4);
    be->gelu_backward(be, s->d4b, s->pre, s->d4, n4);
}

/* forward and gradient in one call, in place over the logits, as training does */
static void xent(void *a)
{
    shapes *s = a;
    be->crossentropy(be, s->losses, s->logits, s->logits, s->targets, s->N, s->V, s->Vp, 1.0f / s->N);
}

static void adamw(void *a)
{
    shapes *s = a;
    s->hp.step++;
    be->adamw(be, s->params, s->master, s->grads, s->m, s->v, s->seg, 2, &s->hp);
}

static int parse_int(const char *opt, const char *v, long lo, long hi, long *out)
{
    char *end;
    long x = strtol(v, &end, 10);
    if (end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "anatomy: error: %s: '%s' is not an integer in [%ld, %ld]\n", opt, v, lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

int main(int argc, char **argv)
{
    long N = 16384, C = 768, V = 50257, P = 124439808, iters = 20;
    for (int i = 1; i < argc; i += 2) {
        long *dst = !strcmp(argv[i], "--N") ? &N : !strcmp(argv[i], "--C") ? &C : !strcmp(argv[i], "--V") ? &V
                  : !strcmp(argv[i], "--params") ? &P : !strcmp(argv[i], "--iters") ? &iters : NULL;
        if (!dst) {
            fprintf(stderr, "anatomy: error: %s: unknown option (--N --C --V --params --iters)\n", argv[i]);
            return 2;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "anatomy: error: %s: needs a value\n", argv[i]);
            return 2;
        }
        if (parse_int(argv[i], argv[i + 1], 1, 1L << 40, dst))
            return 2;
    }
    if (!backend_cuda_create) {
        fprintf(stderr, "anatomy: error: bench_ops: linked without the CUDA backend\n");
        return 1;
    }
    char err[512] = "";
    be = backend_cuda_create(0, DT_BF16, err);
    if (!be) {
        fprintf(stderr, "anatomy: error: cuda: %s\n", err);
        return 1;
    }
    shapes s = {.N = (int)N, .C = (int)C, .V = (int)V, .Vp = (int)((V + 127) / 128 * 128), .P = (size_t)P};
    if (be->plan && be->plan(be, 1, s.N, s.C, 1, s.Vp, err)) {
        fprintf(stderr, "anatomy: error: plan: %s\n", err);
        return 1;
    }
    unsigned long long st = 12345;
    size_t nc = (size_t)s.N * s.C, a = dtype_size(be->act), f = dtype_size(be->stat), o = dtype_size(be->opt);
    s.x = dev_buf(be->act, nc, &st), s.y = dev_buf(be->act, nc, &st), s.res = dev_buf(be->act, nc, &st);
    s.dy = dev_buf(be->act, nc, &st), s.dx = dev_buf(be->act, nc, &st);
    s.g = dev_buf(be->act, s.C, &st), s.b = dev_buf(be->act, s.C, &st);
    s.dg = dev_buf(be->act, s.C, &st), s.db = dev_buf(be->act, s.C, &st);
    s.mean = dev_buf(be->stat, s.N, &st), s.rstd = dev_buf(be->stat, s.N, &st);
    s.losses = dev_buf(be->stat, s.N, &st);
    s.pre = dev_buf(be->act, 4 * nc, &st), s.h = dev_buf(be->act, 4 * nc, &st);
    s.d4 = dev_buf(be->act, 4 * nc, &st), s.d4b = dev_buf(be->act, 4 * nc, &st);
    s.w4 = dev_buf(be->act, 4 * (size_t)s.C * s.C, &st), s.dw4 = dev_buf(be->act, 4 * (size_t)s.C * s.C, &st);
    s.logits = dev_buf(be->act, (size_t)s.N * s.Vp, &st);
    int32_t *tg = malloc(s.N * sizeof *tg);
    s.targets = be->alloc(be, s.N * sizeof *tg);
    if (!tg || !s.targets) {
        fprintf(stderr, "anatomy: error: bench_ops: out of memory (targets)\n");
        return 1;
    }
    for (int i = 0; i < s.N; i++)
        tg[i] = (int32_t)((i * 2654435761u) % (unsigned)s.V);
    be->upload(be, s.targets, DT_I32, tg, DT_I32, s.N);
    free(tg);
    s.params = dev_buf(be->act, s.P, &st), s.grads = dev_buf(be->act, s.P, &st);
    s.master = dev_buf(be->opt, s.P, &st), s.m = dev_buf(be->opt, s.P, &st);
    s.v = dev_buf(be->opt, s.P, &st);
    be->fill(be, s.v, be->opt, 0.0, s.P); /* v >= 0, as AdamW keeps it */
    s.seg[0] = (param_segment){0, s.P / 2, 1};
    s.seg[1] = (param_segment){s.P / 2, s.P - s.P / 2, 0};
    s.hp = (adamw_params){.lr = 1e-4f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f,
                          .step = 0, .grad_scale = 1.0f, .seed = 7};

    struct {
        const char *name;
        op_fn fn;
        double bytes;
    } ops[] = {
        /* x, g, b in; y, mean, rstd out */
        {"layernorm_fwd", ln_fwd, 2.0 * nc * a + 2.0 * s.N * f},
        /* dy, x, mean, rstd in; dx read and written; dg, db accumulated (C-sized, negligible) */
        {"layernorm_bwd", ln_bwd, 4.0 * nc * a + 2.0 * s.N * f},
        /* a, b in; res and y out; mean, rstd out */
        {"residual_layernorm_fwd", resln_fwd, 4.0 * nc * a + 2.0 * s.N * f},
        {"gelu_fwd", gelu_fwd, 2.0 * nc * a},
        /* x, dy in; dx read and written */
        {"gelu_bwd", gelu_bwd, 4.0 * nc * a},
        /* logits read, their gradient written in place, losses out */
        {"crossentropy_fwdbwd", xent, 2.0 * s.N * (double)s.Vp * a + s.N * (f + 4.0)},
        /* dy, pre, gelu(pre), weight in; dpre written; dweight read and written */
        {"mlp_proj_bwd_fused", mlp_proj_bwd_fused, (nc + 3.0 * 4 * nc + 3.0 * 4 * s.C * s.C) * a},
        {"mlp_proj_bwd_unfused", mlp_proj_bwd_unfused, (nc + 3.0 * 4 * nc + 3.0 * 4 * s.C * s.C) * a},
        /* grads, params(act) in; master, m, v read and written; params written */
        {"adamw", adamw, (double)s.P * (a + 6.0 * o + a)},
    };
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        double ms = time_op(ops[i].fn, &s, (int)iters);
        printf("ours %s ms=%.4f gbps=%.1f bytes=%.0f\n", ops[i].name, ms, ops[i].bytes / (ms * 1e-3) / 1e9,
               ops[i].bytes);
        fflush(stdout);
    }
    printf("shapes: N=%d C=%d V=%d Vp=%d params=%zu act=%s\n", s.N, s.C, s.V, s.Vp, s.P, dtype_name(be->act));
    be->destroy(be);
    return 0;
}
