/* test_ops.c: the first rung of the test ladder. Every op of the CPU backend
 * against finite differences in double precision (the fp64 build of the
 * backend), the fp32 build against the fp64 one, AdamW against torch's
 * formula, the crossentropy ignore/padding rules, memory conversions and
 * run-to-run determinism.
 *
 * Gradient checks: objective L = sum(out * R) for a random R; the numerical
 * gradient is a central difference with h = 1e-6; the analytical one is what
 * the backward op ADDS to gradient buffers pre-filled with random values
 * (so += semantics are checked, not assumed). Inputs are fresh seeded random
 * numbers; set ANATOMY_TEST_SEED to vary them.
 */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/ops.h"
#include "alloc_fault.h"
#include "gradcheck.h"

#define FD_H 1e-6
#define GRAD_TOL 1e-6 /* relative L2, analytical vs central difference, fp64 */
#define F32_TOL 1e-5  /* relative L2, fp32 backend vs fp64 backend */

/* ---- random numbers (splitmix64) ---- */

static uint64_t rng_state;

static void seed(uint64_t s)
{
    const char *e = getenv("ANATOMY_TEST_SEED");
    rng_state = s ^ (e ? strtoull(e, NULL, 0) * 0x9e3779b97f4a7c15ull : 0x5eedull);
}

static uint64_t rnext(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double urand(void) { return (double)(rnext() >> 11) * 0x1.0p-53; }

static int irand(int n) { return (int)(rnext() % (uint64_t)n); }

static double nrand(void)
{
    double u = urand(), v = urand();
    return sqrt(-2 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}

static double *rand_vec(size_t n, double scale)
{
    double *x = malloc((n ? n : 1) * sizeof(double));
    ck_assert_ptr_nonnull(x);
    for (size_t i = 0; i < n; i++)
        x[i] = scale * nrand();
    return x;
}

/* Makes every value exactly representable in float, so that both backends
 * see the same numbers and a parity test measures the op, not the input. */
static void round_f32(double *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)x[i];
}

/* ANATOMY_TEST_VERBOSE=1 prints every measured error. */
static void report(const char *what, const char *name, int k, double err)
{
    if (getenv("ANATOMY_TEST_VERBOSE"))
        fprintf(stderr, "%-12s %-20s %d  %.3g\n", what, name, k, err);
}

static double rel_l2(const double *a, const double *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += (a[i] - ref[i]) * (a[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static double dotv(const double *a, const double *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* ---- device helpers ---- */

static backend *mk(int fp64, int threads)
{
    char err[256] = "";
    backend *be = fp64 ? backend_cpu64_create(threads, err) : backend_cpu_create(threads, err);
    ck_assert_msg(be != NULL, "backend: %s", err);
    return be;
}

static void *dalloc(backend *be, dtype t, size_t n)
{
    void *d = be->alloc(be, (n ? n : 1) * dtype_size(t));
    ck_assert_ptr_nonnull(d);
    return d;
}

/* A device buffer of type t holding h (n doubles). */
static void *dup_to(backend *be, dtype t, const double *h, size_t n)
{
    void *d = dalloc(be, t, n);
    be->upload(be, d, t, h, DT_F64, n);
    return d;
}

/* A device buffer of type t of n NaNs: whatever an op fails to write shows. */
static void *poisoned(backend *be, dtype t, size_t n)
{
    void *d = dalloc(be, t, n);
    be->fill(be, d, t, NAN, n);
    return d;
}

static void *dup_i32(backend *be, const int32_t *h, size_t n)
{
    void *d = dalloc(be, DT_I32, n);
    be->upload(be, d, DT_I32, h, DT_I32, n);
    return d;
}

static void get(backend *be, double *h, const void *d, dtype t, size_t n)
{
    be->download(be, h, DT_F64, d, t, n);
}

/* ---- op cases ----
 * A case holds the shapes, the differentiable inputs in[k] (host doubles),
 * fixed non-differentiable data, and two functions: fwd writes the output
 * (nout values; aux gets the saved statistics when not NULL) and bwd writes
 * into g[k] what the backward op added to the gradient of in[k], or leaves
 * g[k] NULL when that gradient is not computed. */

typedef struct op_case op_case;
struct op_case {
    const char *name;
    int B, T, C, NH, causal, N, IC, OC, V, Vp, maxT;
    int no_bias, no_dinp, no_dbias;
    int set_dinp; /* matmul: dinp written (GRAD_SET) into a NaN buffer, not added */
    float scale;
    int32_t *ints; /* tokens or targets */
    int nin;
    double *in[3];
    size_t len[3];
    size_t nout, naux;
    double *R; /* objective weights, nout */
    void (*fwd)(backend *be, op_case *c, double *out, double *aux);
    void (*bwd)(backend *be, op_case *c, double **g);
    void (*ref)(const op_case *c, double *out, double *aux); /* plain double forward */
};

/* Uploads random values as a gradient buffer's prior content. */
static void *prefilled(backend *be, size_t n, double **g0)
{
    *g0 = rand_vec(n, 0.5);
    if (be->act == DT_F32)
        round_f32(*g0, n);
    return dup_to(be, be->act, *g0, n);
}

/* g = device buffer content - g0: what the op added. Frees both. */
static double *added(backend *be, void *d, double *g0, size_t n)
{
    double *g = malloc((n ? n : 1) * sizeof(double));
    ck_assert_ptr_nonnull(g);
    get(be, g, d, be->act, n);
    for (size_t i = 0; i < n; i++)
        g[i] -= g0[i];
    free(g0);
    be->free(be, d);
    return g;
}

/* encoder: in = wte [Vp,C], wpe [maxT,C]; ints = tokens [B,T] */
static void enc_fwd(backend *be, op_case *c, double *out, double *aux)
{
    (void)aux;
    void *wte = dup_to(be, be->act, c->in[0], c->len[0]);
    void *wpe = dup_to(be, be->act, c->in[1], c->len[1]);
    void *tok = dup_i32(be, c->ints, (size_t)c->B * c->T);
    void *o = poisoned(be, be->act, c->nout);
    be->encoder_forward(be, o, tok, wte, wpe, c->B, c->T, c->C);
    get(be, out, o, be->act, c->nout);
    be->free(be, wte), be->free(be, wpe), be->free(be, tok), be->free(be, o);
}

static void enc_bwd(backend *be, op_case *c, double **g)
{
    double *g0[2];
    void *dwte = prefilled(be, c->len[0], &g0[0]);
    void *dwpe = prefilled(be, c->len[1], &g0[1]);
    void *tok = dup_i32(be, c->ints, (size_t)c->B * c->T);
    void *dout = dup_to(be, be->act, c->R, c->nout);
    be->encoder_backward(be, dwte, dwpe, dout, tok, c->B, c->T, c->C);
    g[0] = added(be, dwte, g0[0], c->len[0]);
    g[1] = added(be, dwpe, g0[1], c->len[1]);
    be->free(be, tok), be->free(be, dout);
}

/* layernorm: in = x [N,C], weight [C], bias [C]; aux = mean, rstd */
static void ln_fwd(backend *be, op_case *c, double *out, double *aux)
{
    void *x = dup_to(be, be->act, c->in[0], c->len[0]);
    void *w = dup_to(be, be->act, c->in[1], c->len[1]);
    void *b = dup_to(be, be->act, c->in[2], c->len[2]);
    void *o = poisoned(be, be->act, c->nout);
    void *st = poisoned(be, be->stat, 2 * (size_t)c->N);
    be->layernorm_forward(be, o, st, buf_at(st, c->N, be->stat), x, w, b, c->N, c->C);
    get(be, out, o, be->act, c->nout);
    if (aux)
        get(be, aux, st, be->stat, 2 * (size_t)c->N);
    be->free(be, x), be->free(be, w), be->free(be, b), be->free(be, o), be->free(be, st);
}

static void ln_bwd(backend *be, op_case *c, double **g)
{
    void *x = dup_to(be, be->act, c->in[0], c->len[0]);
    void *w = dup_to(be, be->act, c->in[1], c->len[1]);
    void *b = dup_to(be, be->act, c->in[2], c->len[2]);
    void *o = poisoned(be, be->act, c->nout);
    void *st = poisoned(be, be->stat, 2 * (size_t)c->N);
    void *mean = st, *rstd = buf_at(st, c->N, be->stat);
    be->layernorm_forward(be, o, mean, rstd, x, w, b, c->N, c->C);
    double *g0[3];
    void *dx = prefilled(be, c->len[0], &g0[0]);
    void *dw = prefilled(be, c->len[1], &g0[1]);
    void *db = prefilled(be, c->len[2], &g0[2]);
    void *dout = dup_to(be, be->act, c->R, c->nout);
    be->layernorm_backward(be, dx, dw, db, dout, x, w, mean, rstd, c->N, c->C);
    g[0] = added(be, dx, g0[0], c->len[0]);
    g[1] = added(be, dw, g0[1], c->len[1]);
    g[2] = added(be, db, g0[2], c->len[2]);
    be->free(be, x), be->free(be, w), be->free(be, b), be->free(be, o), be->free(be, st);
    be->free(be, dout);
}

/* matmul: in = x [N,IC], weight [OC,IC], bias [OC] (ignored when no_bias) */
static void mm_fwd(backend *be, op_case *c, double *out, double *aux)
{
    (void)aux;
    void *x = dup_to(be, be->act, c->in[0], c->len[0]);
    void *w = dup_to(be, be->act, c->in[1], c->len[1]);
    void *b = c->no_bias ? NULL : dup_to(be, be->act, c->in[2], c->len[2]);
    void *o = poisoned(be, be->act, c->nout);
    be->matmul_forward(be, o, x, w, b, c->N, c->IC, c->OC);
    get(be, out, o, be->act, c->nout);
    be->free(be, x), be->free(be, w), be->free(be, o);
    if (b)
        be->free(be, b);
}

static void mm_bwd(backend *be, op_case *c, double **g)
{
    void *x = dup_to(be, be->act, c->in[0], c->len[0]);
    void *w = dup_to(be, be->act, c->in[1], c->len[1]);
    double *g0[3] = { NULL };
    void *dx = c->no_dinp ? NULL
               : c->set_dinp ? poisoned(be, be->act, c->len[0])
                             : prefilled(be, c->len[0], &g0[0]);
    void *dw = prefilled(be, c->len[1], &g0[1]);
    void *db = c->no_dbias ? NULL : prefilled(be, c->len[2], &g0[2]);
    void *dout = dup_to(be, be->act, c->R, c->nout);
    be->matmul_backward(be, dx, dw, db, dout, x, w, c->N, c->IC, c->OC,
                        c->set_dinp ? GRAD_SET : GRAD_ADD);
    if (dx && c->set_dinp)
        g0[0] = calloc(c->len[0], sizeof(double)); /* nothing to take off */
    g[0] = dx ? added(be, dx, g0[0], c->len[0]) : NULL;
    g[1] = added(be, dw, g0[1], c->len[1]);
    g[2] = db ? added(be, db, g0[2], c->len[2]) : NULL;
    be->free(be, x), be->free(be, w), be->free(be, dout);
}

/* matmul + gelu: in as matmul; out = gelu(pre); aux = pre [N,OC] */
static void mmg_fwd(backend *be, op_case *c, double *out, double *aux)
{
    void *x = dup_to(be, be->act, c->in[0], c->len[0]);
    void *w = dup_to(be, be->act, c->in[1], c->len[1]);
    void *b = c->no_bias ? NULL : dup_to(be, be->act, c->in[2], c->len[2]);
    void *pre = poisoned(be, be->act, c->nout), *o = poisoned(be, be->act, c->nout);
    be->matmul_gelu_forward(be, pre, o, x, w, b, c->N, c->IC, c->OC);
    get(be, out, o, be->act, c->nout);
    if (aux)
        get(be, aux, pre, be->act, c->nout);
    be->free(be, x), be->free(be, w), be->free(be, o), be->free(be, pre);
    if (b)
        be->free(be, b);
}

/* Its backward as the model takes it: gelu_backward into a zeroed dpre, then
 * matmul_backward from dpre. */
static void mmg_bwd(backend *be, op_case *c, double **g)
{
    void *x = dup_to(be, be->act, c->in[0], c->len[0]);
    void *w = dup_to(be, be->act, c->in[1], c->len[1]);
    void *b = c->no_bias ? NULL : dup_to(be, be->act, c->in[2], c->len[2]);
    void *pre = poisoned(be, be->act, c->nout), *o = poisoned(be, be->act, c->nout);
    be->matmul_gelu_forward(be, pre, o, x, w, b, c->N, c->IC, c->OC);
    void *dpre = dalloc(be, be->act, c->nout);
    be->fill(be, dpre, be->act, 0.0, c->nout);
    void *dout = dup_to(be, be->act, c->R, c->nout);
    be->gelu_backward(be, dpre, pre, dout, c->nout);
    double *g0[3];
    void *dx = prefilled(be, c->len[0], &g0[0]);
    void *dw = prefilled(be, c->len[1], &g0[1]);
    void *db = c->no_bias ? NULL : prefilled(be, c->len[2], &g0[2]);
    be->matmul_backward(be, dx, dw, db, dpre, x, w, c->N, c->IC, c->OC, GRAD_ADD);
    g[0] = added(be, dx, g0[0], c->len[0]);
    g[1] = added(be, dw, g0[1], c->len[1]);
    g[2] = db ? added(be, db, g0[2], c->len[2]) : NULL;
    be->free(be, x), be->free(be, w), be->free(be, o), be->free(be, pre);
    be->free(be, dpre), be->free(be, dout);
    if (b)
        be->free(be, b);
}

/* gelu then matmul (an MLP's second half): in = pre [N,IC], weight [OC,IC],
 * bias [OC]; out = gelu(pre) @ weight^T + bias. Its backward is
 * matmul_gelu_backward, whose dpre is written: into a NaN buffer, taken as is. */
static void gm_fwd(backend *be, op_case *c, double *out, double *aux)
{
    (void)aux;
    void *pre = dup_to(be, be->act, c->in[0], c->len[0]);
    void *w = dup_to(be, be->act, c->in[1], c->len[1]);
    void *b = c->no_bias ? NULL : dup_to(be, be->act, c->in[2], c->len[2]);
    void *h = poisoned(be, be->act, c->len[0]), *o = poisoned(be, be->act, c->nout);
    be->gelu_forward(be, h, pre, c->len[0]);
    be->matmul_forward(be, o, h, w, b, c->N, c->IC, c->OC);
    get(be, out, o, be->act, c->nout);
    be->free(be, pre), be->free(be, w), be->free(be, h), be->free(be, o);
    if (b)
        be->free(be, b);
}

static void gm_bwd(backend *be, op_case *c, double **g)
{
    void *pre = dup_to(be, be->act, c->in[0], c->len[0]);
    void *w = dup_to(be, be->act, c->in[1], c->len[1]);
    void *h = poisoned(be, be->act, c->len[0]);
    be->gelu_forward(be, h, pre, c->len[0]);
    double *g0[3];
    void *dpre = poisoned(be, be->act, c->len[0]);
    void *dw = prefilled(be, c->len[1], &g0[1]);
    void *db = c->no_bias ? NULL : prefilled(be, c->len[2], &g0[2]);
    void *dout = dup_to(be, be->act, c->R, c->nout);
    be->matmul_gelu_backward(be, dpre, dw, db, dout, h, pre, w, c->N, c->IC, c->OC);
    g[0] = added(be, dpre, calloc(c->len[0], sizeof(double)), c->len[0]);
    g[1] = added(be, dw, g0[1], c->len[1]);
    g[2] = db ? added(be, db, g0[2], c->len[2]) : NULL;
    be->free(be, pre), be->free(be, w), be->free(be, h), be->free(be, dout);
}

/* attention: in = qkv [B,T,3C]; aux = lse [B,NH,T] */
static void att_fwd(backend *be, op_case *c, double *out, double *aux)
{
    size_t nl = (size_t)c->B * c->NH * c->T;
    void *qkv = dup_to(be, be->act, c->in[0], c->len[0]);
    void *o = poisoned(be, be->act, c->nout);
    void *lse = poisoned(be, be->stat, nl);
    be->attention_forward(be, o, lse, qkv, c->B, c->T, c->C, c->NH, c->causal);
    get(be, out, o, be->act, c->nout);
    if (aux)
        get(be, aux, lse, be->stat, nl);
    be->free(be, qkv), be->free(be, o), be->free(be, lse);
}

static void att_bwd(backend *be, op_case *c, double **g)
{
    size_t nl = (size_t)c->B * c->NH * c->T;
    void *qkv = dup_to(be, be->act, c->in[0], c->len[0]);
    void *o = poisoned(be, be->act, c->nout);
    void *lse = poisoned(be, be->stat, nl);
    be->attention_forward(be, o, lse, qkv, c->B, c->T, c->C, c->NH, c->causal);
    double *g0;
    void *dqkv = prefilled(be, c->len[0], &g0);
    void *dout = dup_to(be, be->act, c->R, c->nout);
    be->attention_backward(be, dqkv, dout, qkv, o, lse, c->B, c->T, c->C, c->NH, c->causal);
    g[0] = added(be, dqkv, g0, c->len[0]);
    be->free(be, qkv), be->free(be, o), be->free(be, lse), be->free(be, dout);
}

/* gelu: in = x [N] */
static void gelu_fwd(backend *be, op_case *c, double *out, double *aux)
{
    (void)aux;
    void *x = dup_to(be, be->act, c->in[0], c->len[0]);
    void *o = poisoned(be, be->act, c->nout);
    be->gelu_forward(be, o, x, c->nout);
    get(be, out, o, be->act, c->nout);
    be->free(be, x), be->free(be, o);
}

static void gelu_bwd(backend *be, op_case *c, double **g)
{
    void *x = dup_to(be, be->act, c->in[0], c->len[0]);
    double *g0;
    void *dx = prefilled(be, c->len[0], &g0);
    void *dout = dup_to(be, be->act, c->R, c->nout);
    be->gelu_backward(be, dx, x, dout, c->nout);
    g[0] = added(be, dx, g0, c->len[0]);
    be->free(be, x), be->free(be, dout);
}

/* residual: in = a, b [N]; its backward is accumulate into each input */
static void res_fwd(backend *be, op_case *c, double *out, double *aux)
{
    (void)aux;
    void *a = dup_to(be, be->act, c->in[0], c->len[0]);
    void *b = dup_to(be, be->act, c->in[1], c->len[1]);
    void *o = poisoned(be, be->act, c->nout);
    be->residual_forward(be, o, a, b, c->nout);
    get(be, out, o, be->act, c->nout);
    be->free(be, a), be->free(be, b), be->free(be, o);
}

static void res_bwd(backend *be, op_case *c, double **g)
{
    void *dout = dup_to(be, be->act, c->R, c->nout);
    for (int k = 0; k < 2; k++) {
        double *g0;
        void *d = prefilled(be, c->len[k], &g0);
        be->accumulate(be, d, dout, c->nout);
        g[k] = added(be, d, g0, c->len[k]);
    }
    be->free(be, dout);
}

/* crossentropy: in = logits [N,Vp]; ints = targets [N]; out = losses [N].
 * R is all `scale`, so L = scale * sum(losses), whose gradient is dlogits.
 * The forward runs with dlogits NULL (the forward-only path); the backward
 * writes (does not add) dlogits into a NaN-poisoned buffer. */
static void ce_fwd(backend *be, op_case *c, double *out, double *aux)
{
    (void)aux;
    void *lg = dup_to(be, be->act, c->in[0], c->len[0]);
    void *tg = dup_i32(be, c->ints, (size_t)c->N);
    void *loss = poisoned(be, be->stat, (size_t)c->N);
    be->crossentropy(be, loss, NULL, lg, tg, c->N, c->V, c->Vp, c->scale);
    get(be, out, loss, be->stat, (size_t)c->N);
    be->free(be, lg), be->free(be, tg), be->free(be, loss);
}

static void ce_bwd(backend *be, op_case *c, double **g)
{
    void *lg = dup_to(be, be->act, c->in[0], c->len[0]);
    void *tg = dup_i32(be, c->ints, (size_t)c->N);
    void *loss = poisoned(be, be->stat, (size_t)c->N);
    void *dl = poisoned(be, be->act, c->len[0]);
    be->crossentropy(be, loss, dl, lg, tg, c->N, c->V, c->Vp, c->scale);
    g[0] = malloc(c->len[0] * sizeof(double));
    ck_assert_ptr_nonnull(g[0]);
    get(be, g[0], dl, be->act, c->len[0]);
    be->free(be, lg), be->free(be, tg), be->free(be, loss), be->free(be, dl);
}

/* ---- reference forwards: the ops' comments in ops.h, written plainly ---- */

static void enc_ref(const op_case *c, double *out, double *aux)
{
    (void)aux;
    for (int b = 0; b < c->B; b++)
        for (int t = 0; t < c->T; t++)
            for (int i = 0; i < c->C; i++)
                out[((size_t)b * c->T + t) * c->C + i] =
                    c->in[0][(size_t)c->ints[b * c->T + t] * c->C + i] +
                    c->in[1][(size_t)t * c->C + i];
}

static void ln_ref(const op_case *c, double *out, double *aux)
{
    for (int n = 0; n < c->N; n++) {
        const double *x = c->in[0] + (size_t)n * c->C;
        double m = 0, v = 0;
        for (int i = 0; i < c->C; i++)
            m += x[i] / c->C;
        for (int i = 0; i < c->C; i++)
            v += (x[i] - m) * (x[i] - m) / c->C;
        double r = 1 / sqrt(v + 1e-5);
        for (int i = 0; i < c->C; i++)
            out[(size_t)n * c->C + i] = (x[i] - m) * r * c->in[1][i] + c->in[2][i];
        aux[n] = m;
        aux[c->N + n] = r;
    }
}

static void mm_ref(const op_case *c, double *out, double *aux)
{
    (void)aux;
    for (int n = 0; n < c->N; n++)
        for (int o = 0; o < c->OC; o++) {
            double s = c->no_bias ? 0 : c->in[2][o];
            for (int i = 0; i < c->IC; i++)
                s += c->in[0][(size_t)n * c->IC + i] * c->in[1][(size_t)o * c->IC + i];
            out[(size_t)n * c->OC + o] = s;
        }
}

static void mmg_ref(const op_case *c, double *out, double *aux)
{
    mm_ref(c, aux, NULL);
    for (size_t i = 0; i < c->nout; i++) {
        double x = aux[i];
        out[i] = 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    }
}

static void gm_ref(const op_case *c, double *out, double *aux)
{
    (void)aux;
    for (int n = 0; n < c->N; n++)
        for (int o = 0; o < c->OC; o++) {
            double s = c->no_bias ? 0 : c->in[2][o];
            for (int i = 0; i < c->IC; i++) {
                double x = c->in[0][(size_t)n * c->IC + i];
                double h = 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
                s += h * c->in[1][(size_t)o * c->IC + i];
            }
            out[(size_t)n * c->OC + o] = s;
        }
}

static void att_ref(const op_case *c, double *out, double *aux)
{
    int T = c->T, C = c->C, NH = c->NH, hs = C / NH;
    double *p = malloc((size_t)T * sizeof(double));
    ck_assert_ptr_nonnull(p);
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < T; i++) {
                const double *q = c->in[0] + ((size_t)b * T + i) * 3 * C + h * hs;
                int nj = c->causal ? i + 1 : T;
                double m = -INFINITY, z = 0;
                for (int j = 0; j < nj; j++) {
                    const double *k = c->in[0] + ((size_t)b * T + j) * 3 * C + C + h * hs;
                    p[j] = dotv(q, k, hs) / sqrt(hs);
                    m = p[j] > m ? p[j] : m;
                }
                for (int j = 0; j < nj; j++)
                    z += exp(p[j] - m);
                aux[((size_t)b * NH + h) * T + i] = m + log(z);
                double *o = out + ((size_t)b * T + i) * C + h * hs;
                for (int d = 0; d < hs; d++) {
                    double s = 0;
                    for (int j = 0; j < nj; j++)
                        s += exp(p[j] - m) / z *
                             c->in[0][((size_t)b * T + j) * 3 * C + 2 * C + h * hs + d];
                    o[d] = s;
                }
            }
    free(p);
}

static void gelu_ref(const op_case *c, double *out, double *aux)
{
    (void)aux;
    for (size_t i = 0; i < c->nout; i++) {
        double x = c->in[0][i];
        out[i] = 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    }
}

static void res_ref(const op_case *c, double *out, double *aux)
{
    (void)aux;
    for (size_t i = 0; i < c->nout; i++)
        out[i] = c->in[0][i] + c->in[1][i];
}

static void ce_ref(const op_case *c, double *out, double *aux)
{
    (void)aux;
    for (int n = 0; n < c->N; n++) {
        const double *x = c->in[0] + (size_t)n * c->Vp;
        double m = -INFINITY, z = 0;
        if (c->ints[n] < 0) {
            out[n] = 0;
            continue;
        }
        for (int v = 0; v < c->V; v++)
            m = x[v] > m ? x[v] : m;
        for (int v = 0; v < c->V; v++)
            z += exp(x[v] - m);
        out[n] = m + log(z) - x[c->ints[n]];
    }
}

/* ---- building cases ---- */

static void add_input(op_case *c, size_t n, double scale)
{
    c->len[c->nin] = n;
    c->in[c->nin++] = rand_vec(n, scale);
}

static void set_out(op_case *c, size_t nout, size_t naux)
{
    c->nout = nout;
    c->naux = naux;
    c->R = rand_vec(nout, 1.0);
}

static op_case enc_case(int B, int T, int C, int Vp, int maxT)
{
    op_case c = { .name = "encoder", .B = B, .T = T, .C = C, .Vp = Vp, .maxT = maxT,
                  .fwd = enc_fwd, .bwd = enc_bwd, .ref = enc_ref };
    add_input(&c, (size_t)Vp * C, 1.0);
    add_input(&c, (size_t)maxT * C, 1.0);
    c.ints = malloc((size_t)B * T * sizeof(int32_t));
    ck_assert_ptr_nonnull(c.ints);
    for (int i = 0; i < B * T; i++)
        c.ints[i] = irand(Vp);
    if (B * T >= 4)
        c.ints[3] = c.ints[1]; /* a repeated token: its row must sum both */
    set_out(&c, (size_t)B * T * C, 0);
    return c;
}

static op_case ln_case(int N, int C)
{
    op_case c = { .name = "layernorm", .N = N, .C = C, .fwd = ln_fwd, .bwd = ln_bwd,
                  .ref = ln_ref };
    add_input(&c, (size_t)N * C, 1.0);
    for (size_t i = 0; i < (size_t)N * C; i++)
        c.in[0][i] += 0.5 * (i / C % 3); /* rows with different means */
    add_input(&c, (size_t)C, 1.0);
    add_input(&c, (size_t)C, 1.0);
    set_out(&c, (size_t)N * C, 2 * (size_t)N);
    return c;
}

static op_case mm_case(int N, int IC, int OC, int no_bias, int no_dinp, int no_dbias)
{
    op_case c = { .name = "matmul", .N = N, .IC = IC, .OC = OC, .no_bias = no_bias,
                  .no_dinp = no_dinp, .no_dbias = no_dbias, .fwd = mm_fwd, .bwd = mm_bwd,
                  .ref = mm_ref };
    add_input(&c, (size_t)N * IC, 1.0);
    add_input(&c, (size_t)OC * IC, 1.0);
    add_input(&c, (size_t)OC, 1.0);
    set_out(&c, (size_t)N * OC, 0);
    return c;
}

static op_case mmg_case(int N, int IC, int OC, int no_bias)
{
    op_case c = { .name = "matmul_gelu", .N = N, .IC = IC, .OC = OC, .no_bias = no_bias,
                  .fwd = mmg_fwd, .bwd = mmg_bwd, .ref = mmg_ref };
    add_input(&c, (size_t)N * IC, 1.0);
    add_input(&c, (size_t)OC * IC, 1.0);
    add_input(&c, (size_t)OC, 1.0);
    set_out(&c, (size_t)N * OC, (size_t)N * OC);
    return c;
}

static op_case gm_case(int N, int IC, int OC, int no_bias)
{
    op_case c = { .name = "gelu_matmul", .N = N, .IC = IC, .OC = OC, .no_bias = no_bias,
                  .fwd = gm_fwd, .bwd = gm_bwd, .ref = gm_ref };
    add_input(&c, (size_t)N * IC, 1.5);
    add_input(&c, (size_t)OC * IC, 1.0);
    add_input(&c, (size_t)OC, 1.0);
    set_out(&c, (size_t)N * OC, 0);
    return c;
}

static op_case att_case(int B, int T, int C, int NH, int causal)
{
    op_case c = { .name = causal ? "attention (causal)" : "attention", .B = B, .T = T, .C = C,
                  .NH = NH, .causal = causal, .fwd = att_fwd, .bwd = att_bwd,
                  .ref = att_ref };
    add_input(&c, (size_t)B * T * 3 * C, 1.0);
    set_out(&c, (size_t)B * T * C, (size_t)B * NH * T);
    return c;
}

static op_case gelu_case(size_t N)
{
    op_case c = { .name = "gelu", .fwd = gelu_fwd, .bwd = gelu_bwd, .ref = gelu_ref };
    add_input(&c, N, 2.5);
    set_out(&c, N, 0);
    return c;
}

static op_case res_case(size_t N)
{
    op_case c = { .name = "residual", .fwd = res_fwd, .bwd = res_bwd, .ref = res_ref };
    add_input(&c, N, 1.0);
    add_input(&c, N, 1.0);
    set_out(&c, N, 0);
    return c;
}

/* Targets: random in [0, V), with rows 1 and N-2 ignored (-1) and one row
 * aimed at the last real column. */
static op_case ce_case(int N, int V, int Vp, float scale)
{
    op_case c = { .name = "crossentropy", .N = N, .V = V, .Vp = Vp, .scale = scale,
                  .fwd = ce_fwd, .bwd = ce_bwd, .ref = ce_ref };
    add_input(&c, (size_t)N * Vp, 2.0);
    c.ints = malloc((size_t)N * sizeof(int32_t));
    ck_assert_ptr_nonnull(c.ints);
    for (int n = 0; n < N; n++)
        c.ints[n] = irand(V);
    c.ints[0] = V - 1;
    c.ints[1] = -1;
    c.ints[N - 2] = -1;
    set_out(&c, (size_t)N, 0);
    for (int n = 0; n < N; n++)
        c.R[n] = scale;
    return c;
}

static void free_case(op_case *c)
{
    for (int k = 0; k < c->nin; k++)
        free(c->in[k]);
    free(c->R);
    free(c->ints);
}

/* ---- the gradient check ---- */

static double objective(backend *be, op_case *c, double *out)
{
    c->fwd(be, c, out, NULL);
    return dotv(out, c->R, c->nout);
}

/* fd_gradient_at's view of objective: at the case's inputs as they stand */
typedef struct { backend *be; op_case *c; double *out; } case_at;
static double objective_at(void *ctx)
{
    case_at *a = ctx;
    return objective(a->be, a->c, a->out);
}

/* Central differences on at most `maxidx` random elements of each input
 * (all of them when the input is that small), against the backward op. */
static void gradcheck(op_case *c, size_t maxidx)
{
    backend *be = mk(1, 1); /* tiny shapes, thousands of calls: threads only cost here */
    double *out = malloc(c->nout * sizeof(double));
    double *g[3] = { NULL, NULL, NULL };
    ck_assert_ptr_nonnull(out);
    c->bwd(be, c, g);
    int checked = 0;
    for (int k = 0; k < c->nin; k++) {
        if (!g[k])
            continue;
        size_t n = c->len[k], m = n < maxidx ? n : maxidx;
        double *num = malloc(m * sizeof(double)), *ana = malloc(m * sizeof(double));
        size_t *idx = malloc(m * sizeof *idx);
        ck_assert(num && ana && idx);
        for (size_t s = 0; s < m; s++) {
            idx[s] = m == n ? s : (size_t)(rnext() % n);
            ana[s] = g[k][idx[s]];
        }
        fd_gradient_at(num, c->in[k], idx, m, FD_H, objective_at, &(case_at){ be, c, out });
        free(idx);
        double err = rel_l2(ana, num, m);
        report("gradcheck", c->name, k, err);
        ck_assert_msg(err < GRAD_TOL, "%s: gradient of input %d: rel L2 %.3g (B=%d T=%d C=%d N=%d)",
                      c->name, k, err, c->B, c->T, c->C, c->N);
        checked++;
        free(num), free(ana), free(g[k]);
    }
    ck_assert_int_gt(checked, 0);
    free(out);
    be->destroy(be);
}

START_TEST(test_grad_encoder)
{
    seed(101);
    op_case c = enc_case(2, 5, 7, 11, 8); /* maxT > T: unused wpe rows get 0 */
    gradcheck(&c, 1000);
    free_case(&c);
    c = enc_case(3, 4, 66, 5, 4);
    gradcheck(&c, 200);
    free_case(&c);
}
END_TEST

START_TEST(test_grad_layernorm)
{
    seed(102);
    op_case c = ln_case(5, 13);
    gradcheck(&c, 1000);
    free_case(&c);
    c = ln_case(3, 70); /* C spans two column blocks */
    gradcheck(&c, 300);
    free_case(&c);
}
END_TEST

START_TEST(test_grad_matmul)
{
    seed(103);
    op_case c = mm_case(6, 9, 7, 0, 0, 0);
    gradcheck(&c, 1000);
    free_case(&c);
    c = mm_case(5, 3, 70, 1, 1, 1); /* no bias, dinp and dbias NULL */
    gradcheck(&c, 300);
    free_case(&c);
    c = mm_case(1, 17, 67, 0, 0, 0); /* one row, dbias over two column blocks */
    gradcheck(&c, 300);
    free_case(&c);
    c = mm_case(7, 13, 5, 0, 0, 0); /* dinp written (GRAD_SET) over NaN */
    c.set_dinp = 1;
    gradcheck(&c, 1000);
    free_case(&c);
}
END_TEST

/* matmul_gelu_backward: dpre written over NaN, dweight and dbias added. */
START_TEST(test_grad_gelu_matmul)
{
    seed(109);
    op_case c = gm_case(6, 9, 7, 0);
    gradcheck(&c, 1000);
    free_case(&c);
    c = gm_case(3, 20, 5, 1); /* no bias */
    gradcheck(&c, 300);
    free_case(&c);
}
END_TEST

START_TEST(test_grad_matmul_gelu)
{
    seed(108);
    op_case c = mmg_case(6, 9, 7, 0);
    gradcheck(&c, 1000);
    free_case(&c);
    c = mmg_case(3, 5, 16, 1); /* no bias */
    gradcheck(&c, 300);
    free_case(&c);
}
END_TEST

START_TEST(test_grad_attention)
{
    seed(104);
    for (int causal = 0; causal < 2; causal++) {
        op_case c = att_case(2, 7, 12, 3, causal);
        gradcheck(&c, 1000);
        free_case(&c);
        c = att_case(2, 9, 22, 2, causal); /* hs = 11: every vector path and a tail */
        gradcheck(&c, 500);
        free_case(&c);
        c = att_case(1, 1, 6, 2, causal); /* T = 1 */
        gradcheck(&c, 1000);
        free_case(&c);
        c = att_case(1, 131, 4, 2, causal); /* T over one softmax tile of keys */
        gradcheck(&c, 250);
        free_case(&c);
        /* 8 T C doubles over the backend's ATT_GATHER_BYTES: heads read in
         * place, not copied per sequence as in the cases above */
        c = att_case(1, 129, 64, 2, causal);
        gradcheck(&c, 250);
        free_case(&c);
    }
}
END_TEST

START_TEST(test_grad_gelu)
{
    seed(105);
    op_case c = gelu_case(101);
    c.in[0][0] = 0;
    c.in[0][1] = 9.5; /* past the tanh clamp of the fp32 build */
    c.in[0][2] = -9.5;
    gradcheck(&c, 1000);
    free_case(&c);
}
END_TEST

START_TEST(test_grad_residual)
{
    seed(106);
    op_case c = res_case(33);
    gradcheck(&c, 1000);
    free_case(&c);
}
END_TEST

START_TEST(test_grad_crossentropy)
{
    seed(107);
    op_case c = ce_case(7, 13, 16, 0.2f);
    gradcheck(&c, 1000);
    free_case(&c);
    c = ce_case(4, 70, 72, 1.0f);
    gradcheck(&c, 1000);
    free_case(&c);
}
END_TEST

/* ---- forward against the plain reference ---- */

static void forward_ref(op_case *c)
{
    backend *be = mk(1, 2);
    double *out = malloc(c->nout * sizeof(double)), *want = malloc(c->nout * sizeof(double));
    double *aux = malloc((c->naux + 1) * sizeof(double));
    double *waux = malloc((c->naux + 1) * sizeof(double));
    ck_assert(out && want && aux && waux);
    c->fwd(be, c, out, c->naux ? aux : NULL);
    c->ref(c, want, waux);
    double e = rel_l2(out, want, c->nout);
    report("reference", c->name, 0, e);
    ck_assert_msg(e < 1e-12, "%s: forward vs reference: rel L2 %.3g", c->name, e);
    if (c->naux) {
        e = rel_l2(aux, waux, c->naux);
        report("reference", c->name, 1, e);
        ck_assert_msg(e < 1e-12, "%s: saved stats vs reference: rel L2 %.3g", c->name, e);
    }
    free(out), free(want), free(aux), free(waux);
    be->destroy(be);
}

START_TEST(test_forward_reference)
{
    seed(150);
    op_case cs[] = { enc_case(2, 9, 13, 10, 12), ln_case(9, 75), mm_case(7, 19, 70, 0, 0, 0),
                     mm_case(4, 5, 3, 1, 0, 0), mmg_case(7, 19, 72, 0), mmg_case(5, 6, 9, 1),
                     gm_case(5, 6, 9, 0),
                     att_case(2, 9, 12, 3, 0),
                     att_case(2, 9, 12, 3, 1), att_case(1, 140, 8, 2, 1), att_case(1, 70, 40, 2, 0),
                     gelu_case(301),
                     res_case(77), ce_case(11, 29, 32, 0.5f) };
    for (size_t i = 0; i < sizeof(cs) / sizeof(cs[0]); i++) {
        forward_ref(&cs[i]);
        free_case(&cs[i]);
    }
}
END_TEST

/* ---- residual + layernorm ---- */

/* The fused op equals residual_forward then layernorm_forward, bit for bit,
 * in both builds (its backward is theirs, gradient-checked above), with every
 * output written (poisoned first), for a few shapes. */
START_TEST(test_residual_layernorm)
{
    seed(160);
    static const int shapes[][2] = { { 9, 75 }, { 1, 8 }, { 33, 256 } };
    for (int fp64 = 0; fp64 < 2; fp64++) {
        backend *be = mk(fp64, 2);
        dtype t = be->act, st = be->stat;
        for (int k = 0; k < 3; k++) {
            int N = shapes[k][0], C = shapes[k][1];
            size_t n = (size_t)N * C;
            double *ha = rand_vec(n, 1.0), *hb = rand_vec(n, 1.0), *hw = rand_vec(C, 1.0);
            double *hbias = rand_vec(C, 1.0);
            void *a = dup_to(be, t, ha, n), *b = dup_to(be, t, hb, n);
            void *w = dup_to(be, t, hw, C), *bias = dup_to(be, t, hbias, C);
            void *res[2], *ln[2], *sts[2];
            for (int f = 0; f < 2; f++) {
                res[f] = poisoned(be, t, n), ln[f] = poisoned(be, t, n), sts[f] = poisoned(be, st, 2 * (size_t)N);
            }
            be->residual_forward(be, res[0], a, b, n);
            be->layernorm_forward(be, ln[0], sts[0], buf_at(sts[0], N, st), res[0], w, bias, N, C);
            be->residual_layernorm_forward(be, res[1], ln[1], sts[1], buf_at(sts[1], N, st), a, b, w,
                                           bias, N, C);
            double *got[2][3];
            for (int f = 0; f < 2; f++) {
                got[f][0] = malloc(n * sizeof(double)), got[f][1] = malloc(n * sizeof(double));
                got[f][2] = malloc(2 * (size_t)N * sizeof(double));
                ck_assert(got[f][0] && got[f][1] && got[f][2]);
                get(be, got[f][0], res[f], t, n);
                get(be, got[f][1], ln[f], t, n);
                get(be, got[f][2], sts[f], st, 2 * (size_t)N);
            }
            for (size_t i = 0; i < n; i++) {
                ck_assert_msg(!isnan(got[1][1][i]) && got[1][0][i] == got[0][0][i] &&
                                  got[1][1][i] == got[0][1][i],
                              "%s N=%d C=%d: element %zu differs from residual + layernorm",
                              be->name, N, C, i);
                ck_assert(got[1][0][i] == ha[i] + hb[i] || t == DT_F32);
            }
            for (size_t i = 0; i < 2 * (size_t)N; i++)
                ck_assert_msg(got[1][2][i] == got[0][2][i], "%s: statistic %zu differs", be->name, i);
            for (int f = 0; f < 2; f++) {
                for (int j = 0; j < 3; j++)
                    free(got[f][j]);
                be->free(be, res[f]), be->free(be, ln[f]), be->free(be, sts[f]);
            }
            be->free(be, a), be->free(be, b), be->free(be, w), be->free(be, bias);
            free(ha), free(hb), free(hw), free(hbias);
        }
        be->destroy(be);
    }
}
END_TEST

/* ---- attention_decode ---- */

/* Sequence b's k (v: + C) row of position j, as the op's contract places it:
 * below plen in prefix row b % prows, then its own rows. */
static const double *decode_key(const double *kv, const double *pre, int b, int j, int maxlen,
                                int prows, int plen, int C)
{
    if (j < plen)
        return pre + ((size_t)(b % prows) * plen + j) * 2 * C;
    return kv + ((size_t)b * maxlen + (j - plen)) * 2 * C;
}

/* attention_decode with and without a shared prefix, in both builds, against
 * a direct softmax in double over each sequence's keys gathered where the
 * contract puts them: the output, the new k, v written to the sequence's own
 * row pos - prefix_len and nothing else of either cache changed. Then the
 * same sequences with their prefixes copied into full caches (prefix_len 0,
 * as sequences with no shared prefix): the same output bit for bit (the
 * same arithmetic in the same order wherever a row lies). Shapes: B a
 * multiple of the prefix rows and not (the order of work groups a row's
 * sequences), more rows than sequences, the first position after the prefix,
 * more sequences per row than the CPU op takes together (16), and one large
 * enough to run on both threads. */
START_TEST(test_attention_decode)
{
    seed(170);
    static const int cases[][7] = { /* B, prefix_rows, prefix_len, pos, maxlen, C, NH */
                                    { 3, 0, 0, 9, 12, 12, 3 },  { 6, 3, 5, 9, 6, 12, 3 },
                                    { 7, 3, 5, 9, 6, 12, 3 },   { 4, 2, 6, 6, 3, 8, 2 },
                                    { 2, 5, 4, 6, 3, 8, 1 },    { 1, 1, 1, 1, 1, 4, 1 },
                                    { 37, 2, 20, 25, 8, 16, 2 }, { 40, 8, 96, 120, 30, 64, 4 } };
    for (int fp64 = 0; fp64 < 2; fp64++) {
        backend *be = mk(fp64, 2);
        dtype t = be->act;
        for (int k = 0; k < (int)(sizeof cases / sizeof cases[0]); k++) {
            int B = cases[k][0], prows = cases[k][1], plen = cases[k][2], pos = cases[k][3];
            int maxlen = cases[k][4], C = cases[k][5], NH = cases[k][6], hs = C / NH;
            size_t nkv = (size_t)B * maxlen * 2 * C, npre = (size_t)prows * plen * 2 * C;
            size_t nq = (size_t)B * 3 * C, no = (size_t)B * C;
            double *kv = rand_vec(nkv, 1.0), *pre = rand_vec(npre, 1.0), *qkv = rand_vec(nq, 1.0);
            round_f32(kv, nkv), round_f32(pre, npre), round_f32(qkv, nq);
            double *want = malloc(no * sizeof *want), *wkv = malloc(nkv * sizeof *wkv);
            ck_assert(want && wkv);
            /* the reference: the new row in place, then a softmax per head */
            memcpy(wkv, kv, nkv * sizeof *wkv);
            for (int b = 0; b < B; b++)
                memcpy(wkv + ((size_t)b * maxlen + pos - plen) * 2 * C, qkv + (size_t)b * 3 * C + C,
                       2 * C * sizeof *wkv);
            for (int b = 0; b < B; b++)
                for (int h = 0; h < NH; h++) {
                    const double *q = qkv + (size_t)b * 3 * C + h * hs;
                    double *sc = malloc((size_t)(pos + 1) * sizeof *sc), mx = -INFINITY, sum = 0;
                    for (int j = 0; j <= pos; j++) {
                        const double *kj = decode_key(wkv, pre, b, j, maxlen, prows, plen, C);
                        sc[j] = dotv(q, kj + h * hs, hs) / sqrt((double)hs);
                        mx = fmax(mx, sc[j]);
                    }
                    for (int j = 0; j <= pos; j++)
                        sum += sc[j] = exp(sc[j] - mx);
                    for (int i = 0; i < hs; i++) {
                        double acc = 0;
                        for (int j = 0; j <= pos; j++)
                            acc += sc[j] * decode_key(wkv, pre, b, j, maxlen, prows, plen,
                                                      C)[C + h * hs + i];
                        want[(size_t)b * C + h * hs + i] = acc / sum;
                    }
                    free(sc);
                }
            void *dkv = dup_to(be, t, kv, nkv), *dpre = dup_to(be, t, pre, npre);
            void *dq = dup_to(be, t, qkv, nq), *dout = poisoned(be, t, no);
            be->attention_decode(be, dout, dkv, dq, B, pos, maxlen, plen ? dpre : NULL, prows, plen,
                                 C, NH);
            double *got = malloc(no * sizeof *got), *gkv = malloc(nkv * sizeof *gkv);
            double *gpre = malloc((npre ? npre : 1) * sizeof *gpre);
            ck_assert(got && gkv && gpre);
            get(be, got, dout, t, no);
            get(be, gkv, dkv, t, nkv);
            get(be, gpre, dpre, t, npre);
            double e = rel_l2(got, want, no);
            report("decode", be->name, k, e);
            ck_assert_msg(e < (fp64 ? 1e-13 : F32_TOL),
                          "%s attention_decode case %d: rel L2 %.3g against the direct softmax",
                          be->name, k, e);
            for (size_t i = 0; i < no; i++)
                ck_assert_msg(!isnan(got[i]), "%s case %d: output %zu not written", be->name, k, i);
            ck_assert_msg(memcmp(gkv, wkv, nkv * sizeof *gkv) == 0,
                          "%s case %d: the own cache is not the old one with the new row",
                          be->name, k);
            ck_assert_msg(memcmp(gpre, pre, npre * sizeof *gpre) == 0,
                          "%s case %d: the prefix changed", be->name, k);
            if (plen) { /* the same sequences, every position in their own cache */
                int full = plen + maxlen;
                size_t nfull = (size_t)B * full * 2 * C;
                double *fkv = malloc(nfull * sizeof *fkv), *fgot = malloc(no * sizeof *fgot);
                ck_assert(fkv && fgot);
                for (int b = 0; b < B; b++)
                    for (int j = 0; j < full; j++)
                        memcpy(fkv + ((size_t)b * full + j) * 2 * C,
                               decode_key(kv, pre, b, j, maxlen, prows, plen, C),
                               2 * C * sizeof *fkv);
                void *dfull = dup_to(be, t, fkv, nfull), *dfout = poisoned(be, t, no);
                be->attention_decode(be, dfout, dfull, dq, B, pos, full, NULL, 0, 0, C, NH);
                get(be, fgot, dfout, t, no);
                ck_assert_msg(memcmp(fgot, got, no * sizeof *got) == 0,
                              "%s case %d: a shared prefix changes the output", be->name, k);
                be->free(be, dfull), be->free(be, dfout);
                free(fkv), free(fgot);
            }
            be->free(be, dkv), be->free(be, dpre), be->free(be, dq), be->free(be, dout);
            free(kv), free(pre), free(qkv), free(want), free(wkv), free(got), free(gkv), free(gpre);
        }
        be->destroy(be);
    }
}
END_TEST

/* ---- fp32 against fp64 ---- */

/* Runs forward and backward on both builds with the same (float-exact)
 * inputs and compares outputs, saved statistics and gradients. */
static void parity(op_case *c, double tol)
{
    for (int k = 0; k < c->nin; k++)
        round_f32(c->in[k], c->len[k]);
    round_f32(c->R, c->nout);
    backend *be[2] = { mk(0, 2), mk(1, 2) };
    double *out[2], *aux[2], *g[2][3] = { { NULL } };
    for (int b = 0; b < 2; b++) {
        out[b] = malloc(c->nout * sizeof(double));
        aux[b] = c->naux ? malloc(c->naux * sizeof(double)) : NULL;
        ck_assert_ptr_nonnull(out[b]);
        uint64_t saved = rng_state; /* the same gradient pre-fill for both */
        c->fwd(be[b], c, out[b], aux[b]);
        c->bwd(be[b], c, g[b]);
        if (b == 0)
            rng_state = saved;
    }
    double e = rel_l2(out[0], out[1], c->nout);
    report("fp32 fwd", c->name, 0, e);
    ck_assert_msg(e < tol, "%s: fp32 forward vs fp64: rel L2 %.3g", c->name, e);
    if (c->naux) {
        e = rel_l2(aux[0], aux[1], c->naux);
        report("fp32 stats", c->name, 0, e);
        ck_assert_msg(e < tol, "%s: fp32 saved stats vs fp64: rel L2 %.3g", c->name, e);
    }
    for (int k = 0; k < c->nin; k++) {
        if (!g[1][k])
            continue;
        e = rel_l2(g[0][k], g[1][k], c->len[k]);
        report("fp32 grad", c->name, k, e);
        ck_assert_msg(e < tol, "%s: fp32 gradient %d vs fp64: rel L2 %.3g", c->name, k, e);
        free(g[0][k]), free(g[1][k]);
    }
    for (int b = 0; b < 2; b++) {
        free(out[b]), free(aux[b]);
        be[b]->destroy(be[b]);
    }
}

START_TEST(test_f32_parity)
{
    seed(201);
    op_case c = enc_case(3, 17, 40, 50, 20);
    parity(&c, F32_TOL);
    free_case(&c);
    c = ln_case(33, 203);
    parity(&c, F32_TOL);
    free_case(&c);
    c = mm_case(37, 131, 67, 0, 0, 0);
    parity(&c, F32_TOL);
    free_case(&c);
    c = mmg_case(37, 131, 64, 0);
    parity(&c, F32_TOL);
    free_case(&c);
    c = gm_case(37, 131, 67, 0);
    parity(&c, F32_TOL);
    free_case(&c);
    /* T = 150 spans two key tiles; sums of 150 exps and 16-term dots in
     * fp32 still land well inside 1e-5. */
    for (int causal = 0; causal < 2; causal++) {
        c = att_case(2, 150, 48, 3, causal);
        parity(&c, F32_TOL);
        free_case(&c);
        c = att_case(1, 140, 128, 4, causal); /* heads read in place (ATT_GATHER_BYTES) */
        parity(&c, F32_TOL);
        free_case(&c);
    }
    c = gelu_case(10007);
    parity(&c, F32_TOL);
    free_case(&c);
    c = res_case(1001);
    parity(&c, F32_TOL);
    free_case(&c);
    c = ce_case(20, 1001, 1024, 0.05f);
    parity(&c, F32_TOL);
    free_case(&c);
}
END_TEST

/* ---- crossentropy semantics ---- */

START_TEST(test_crossentropy_rules)
{
    seed(301);
    const int N = 9, V = 37, Vp = 40;
    const float scale = 0.25f;
    for (int fp64 = 0; fp64 < 2; fp64++) {
        backend *be = mk(fp64, 2);
        double *lg = rand_vec((size_t)N * Vp, 3.0);
        round_f32(lg, (size_t)N * Vp); /* the reference sees what fp32 sees */
        for (int n = 0; n < N; n++) {
            for (int v = V; v < Vp; v++)
                lg[(size_t)n * Vp + v] = v == V ? NAN : 1e30; /* never read */
        }
        for (int v = 0; v < V; v++)
            lg[(size_t)2 * Vp + v] += 1000; /* large logits: needs the max shift */
        int32_t tg[9];
        for (int n = 0; n < N; n++)
            tg[n] = irand(V);
        tg[1] = -1, tg[5] = -1, tg[2] = V - 1, tg[3] = 0;
        void *dlg = dup_to(be, be->act, lg, (size_t)N * Vp);
        void *alias = dup_to(be, be->act, lg, (size_t)N * Vp);
        void *dtg = dup_i32(be, tg, N);
        void *l1 = poisoned(be, be->stat, N), *l2 = poisoned(be, be->stat, N);
        void *l3 = poisoned(be, be->stat, N), *dl = poisoned(be, be->act, (size_t)N * Vp);
        be->crossentropy(be, l1, dl, dlg, dtg, N, V, Vp, scale);
        be->crossentropy(be, l2, alias, alias, dtg, N, V, Vp, scale); /* in place */
        be->crossentropy(be, l3, NULL, dlg, dtg, N, V, Vp, scale);
        size_t es = dtype_size(be->act), ss = dtype_size(be->stat);
        char *h1 = malloc((size_t)N * Vp * es), *h2 = malloc((size_t)N * Vp * es);
        char *hl[3] = { malloc(N * ss), malloc(N * ss), malloc(N * ss) };
        be->download(be, h1, be->act, dl, be->act, (size_t)N * Vp);
        be->download(be, h2, be->act, alias, be->act, (size_t)N * Vp);
        be->download(be, hl[0], be->stat, l1, be->stat, N);
        be->download(be, hl[1], be->stat, l2, be->stat, N);
        be->download(be, hl[2], be->stat, l3, be->stat, N);
        ck_assert_msg(!memcmp(h1, h2, (size_t)N * Vp * es), "in-place dlogits differ");
        ck_assert_msg(!memcmp(hl[0], hl[1], N * ss), "in-place losses differ");
        ck_assert_msg(!memcmp(hl[0], hl[2], N * ss), "forward-only losses differ");
        double loss[9], *d = malloc((size_t)N * Vp * sizeof(double));
        get(be, loss, l1, be->stat, N);
        get(be, d, dl, be->act, (size_t)N * Vp);
        for (int n = 0; n < N; n++) {
            const double *x = lg + (size_t)n * Vp, *dx = d + (size_t)n * Vp;
            for (int v = V; v < Vp; v++)
                ck_assert_msg(dx[v] == 0 && !signbit(dx[v]), "padded dlogits[%d,%d] = %g", n,
                              v, dx[v]);
            if (tg[n] < 0) {
                ck_assert_msg(loss[n] == 0, "ignored row %d: loss %g", n, loss[n]);
                for (int v = 0; v < V; v++)
                    ck_assert_msg(dx[v] == 0, "ignored row %d: dlogits %g", n, dx[v]);
                continue;
            }
            double m = -INFINITY, s = 0, sd = 0;
            for (int v = 0; v < V; v++)
                m = x[v] > m ? x[v] : m;
            for (int v = 0; v < V; v++)
                s += exp(x[v] - m);
            double ref = m + log(s) - x[tg[n]], tol = fp64 ? 1e-12 : 1e-5;
            ck_assert_msg(isfinite(loss[n]) && fabs(loss[n] - ref) <= tol * (1 + fabs(ref)),
                          "row %d: loss %.17g, want %.17g", n, loss[n], ref);
            for (int v = 0; v < V; v++) {
                double want = scale * (exp(x[v] - m) / s - (v == tg[n]));
                ck_assert_msg(fabs(dx[v] - want) <= tol * scale, "row %d col %d: %g want %g",
                              n, v, dx[v], want);
                sd += dx[v];
            }
            ck_assert_msg(fabs(sd) < tol * scale * 10, "row %d: dlogits sum to %g", n, sd);
        }
        /* A target outside [0, V) that is not -1 is a bug made visible: NaN
         * loss, zero gradient row, and no access outside the row. */
        tg[4] = V;
        tg[6] = -7;
        be->upload(be, dtg, DT_I32, tg, DT_I32, N);
        be->crossentropy(be, l1, dl, dlg, dtg, N, V, Vp, scale);
        get(be, loss, l1, be->stat, N);
        get(be, d, dl, be->act, (size_t)N * Vp);
        ck_assert(isnan(loss[4]) && isnan(loss[6]) && loss[5] == 0);
        for (int v = 0; v < Vp; v++)
            ck_assert(d[(size_t)4 * Vp + v] == 0 && d[(size_t)6 * Vp + v] == 0);
        free(lg), free(d), free(h1), free(h2);
        for (int k = 0; k < 3; k++)
            free(hl[k]);
        be->free(be, dlg), be->free(be, alias), be->free(be, dtg), be->free(be, l1);
        be->free(be, l2), be->free(be, l3), be->free(be, dl);
        be->destroy(be);
    }
}
END_TEST

/* A NaN anywhere in a row's real logits must surface in its loss. */
START_TEST(test_crossentropy_nan)
{
    seed(302);
    for (int fp64 = 0; fp64 < 2; fp64++) {
        backend *be = mk(fp64, 1);
        double *lg = rand_vec(2 * 10, 1.0), loss[2];
        lg[3] = NAN;
        int32_t tg[2] = { 5, 5 };
        void *d = dup_to(be, be->act, lg, 20), *t = dup_i32(be, tg, 2);
        void *l = poisoned(be, be->stat, 2);
        be->fill(be, l, be->stat, 0.0, 2);
        be->crossentropy(be, l, NULL, d, t, 2, 10, 10, 1.0f);
        get(be, loss, l, be->stat, 2);
        ck_assert_msg(isnan(loss[0]) && isfinite(loss[1]), "losses %g %g", loss[0], loss[1]);
        free(lg);
        be->free(be, d), be->free(be, t), be->free(be, l);
        be->destroy(be);
    }
}
END_TEST

/* ---- AdamW ---- */

/* torch.optim.AdamW, written out in double. */
static void adamw_ref(double *w, double *m, double *v, const double *grad,
                      const param_segment *segs, int nsegs, const adamw_params *hp)
{
    double b1 = hp->beta1, b2 = hp->beta2, lr = hp->lr, wd = hp->weight_decay;
    double bc1 = 1 - pow(b1, hp->step), bc2 = 1 - pow(b2, hp->step);
    for (int k = 0; k < nsegs; k++) {
        for (size_t i = segs[k].offset; i < segs[k].offset + segs[k].count; i++) {
            double g = (double)hp->grad_scale * grad[i];
            if (segs[k].decay)
                w[i] *= 1 - lr * wd;
            m[i] = b1 * m[i] + (1 - b1) * g;
            v[i] = b2 * v[i] + (1 - b2) * g * g;
            double denom = sqrt(v[i]) / sqrt(bc2) + hp->eps;
            w[i] -= lr / bc1 * m[i] / denom;
        }
    }
}

/* Six steps over three segments (decay, no decay, decay) with a gap the
 * optimiser must leave alone, with and without master weights. */
static void adamw_run(int fp64, int with_master)
{
    enum { n = 1000, steps = 6 };
    const param_segment segs[3] = { { 0, 300, 1 }, { 300, 50, 0 }, { 360, 640, 1 } };
    backend *be = mk(fp64, 3);
    dtype t = be->act;
    double *w = rand_vec(n, 1.0), *w0 = malloc(n * sizeof(double));
    double m[n] = { 0 }, v[n] = { 0 }, got[n];
    round_f32(w, n);
    memcpy(w0, w, n * sizeof(double));
    void *dw = dup_to(be, t, w, n), *dm = dalloc(be, t, n), *dv = dalloc(be, t, n);
    void *master = with_master ? dup_to(be, t, w, n) : NULL;
    if (with_master)
        be->fill(be, dw, t, -3.0, n); /* must be overwritten from master */
    be->fill(be, dm, t, 0.0, n);
    be->fill(be, dv, t, 0.0, n);
    for (int s = 1; s <= steps; s++) {
        adamw_params hp = { .lr = 0.05f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f,
                            .weight_decay = 0.1f, .step = s, .grad_scale = 0.7f };
        double *g = rand_vec(n, 1.0);
        round_f32(g, n);
        for (int i = 0; i < 20; i++)
            g[irand(n)] = 0; /* zero gradients: no NaN from 0/0 */
        void *dg = dup_to(be, t, g, n);
        be->adamw(be, dw, master, dg, dm, dv, segs, 3, &hp);
        adamw_ref(w, m, v, g, segs, 3, &hp);
        be->free(be, dg);
        free(g);
    }
    /* fp32: w is rounded to float at each step (6e-8 relative) while the
     * whole update is about 0.3, so 1e-5 of the update is ample. */
    double tol = fp64 ? 1e-12 : 1e-5;
    double dref[n], dgot[n];
    get(be, got, with_master ? master : dw, t, n);
    for (int i = 0; i < n; i++)
        dref[i] = w[i] - w0[i], dgot[i] = got[i] - w0[i];
    double e = rel_l2(dgot, dref, n);
    report("adamw", be->name, with_master, e);
    ck_assert_msg(e < tol, "adamw %s master=%d: update rel L2 %.3g", be->name, with_master, e);
    for (int i = 350; i < 360; i++)
        ck_assert_msg(got[i] == w0[i], "adamw touched element %d outside every segment", i);
    if (with_master) {
        double p[n];
        get(be, p, dw, t, n);
        for (int i = 0; i < n; i++)
            ck_assert_msg(p[i] == (i >= 350 && i < 360 ? -3.0 : got[i]), "params[%d] != master", i);
    }
    get(be, got, dm, t, n);
    e = rel_l2(got, m, n);
    ck_assert_msg(e < tol, "adamw m: rel L2 %.3g", e);
    get(be, got, dv, t, n);
    e = rel_l2(got, v, n);
    ck_assert_msg(e < tol, "adamw v: rel L2 %.3g", e);
    free(w), free(w0);
    be->free(be, dw), be->free(be, dm), be->free(be, dv);
    if (master)
        be->free(be, master);
    be->destroy(be);
}

/* ZeRO stage 1's update: the state (m, v, master) of elements [lo, hi) only,
 * in buffers of hi - lo elements (hp.state_offset = lo), with the segments
 * cut to the shard. The shard's parameters and state must be the whole
 * update's bit for bit, and nothing outside the shard may change. */
static void adamw_shard_run(int fp64, int with_master)
{
    enum { n = 1000, lo = 200, hi = 700, steps = 4 };
    const param_segment segs[3] = { { 0, 300, 1 }, { 300, 50, 0 }, { 360, 640, 1 } };
    const param_segment cut[3] = { { lo, 100, 1 }, { 300, 50, 0 }, { 360, hi - 360, 1 } };
    backend *be = mk(fp64, 3);
    dtype t = be->act;
    double *w = rand_vec(n, 1.0), a[n], b[n];
    round_f32(w, n);
    void *pw = dup_to(be, t, w, n), *sw = dup_to(be, t, w, n);
    void *pm = dalloc(be, t, n), *pv = dalloc(be, t, n), *sm = dalloc(be, t, hi - lo);
    void *sv = dalloc(be, t, hi - lo);
    void *pmaster = with_master ? dup_to(be, t, w, n) : NULL;
    void *smaster = with_master ? dup_to(be, t, w + lo, hi - lo) : NULL;
    be->fill(be, pm, t, 0.0, n), be->fill(be, pv, t, 0.0, n);
    be->fill(be, sm, t, 0.0, hi - lo), be->fill(be, sv, t, 0.0, hi - lo);
    for (int s = 1; s <= steps; s++) {
        adamw_params hp = { .lr = 0.05f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f,
                            .weight_decay = 0.1f, .step = s, .grad_scale = 0.7f };
        double *g = rand_vec(n, 1.0);
        void *dg = dup_to(be, t, g, n);
        be->adamw(be, pw, pmaster, dg, pm, pv, segs, 3, &hp);
        hp.state_offset = lo;
        be->adamw(be, sw, smaster, dg, sm, sv, cut, 3, &hp);
        be->free(be, dg);
        free(g);
    }
    get(be, a, pw, t, n);
    get(be, b, sw, t, n);
    for (int i = 0; i < n; i++)
        ck_assert_msg(i >= lo && i < hi ? a[i] == b[i] : b[i] == w[i],
                      "adamw shard %s master=%d: params[%d] %.17g, whole update %.17g (start %.17g)",
                      be->name, with_master, i, b[i], a[i], w[i]);
    void *whole[3] = { pm, pv, pmaster }, *part[3] = { sm, sv, smaster };
    for (int k = 0; k < (with_master ? 3 : 2); k++) {
        get(be, a, whole[k], t, n);
        get(be, b, part[k], t, hi - lo);
        for (int i = lo; i < hi; i++)
            ck_assert_msg(a[i] == b[i - lo], "adamw shard %s: state %d element %d differs",
                          be->name, k, i);
        be->free(be, whole[k]), be->free(be, part[k]);
    }
    be->free(be, pw), be->free(be, sw);
    free(w);
    be->destroy(be);
}

START_TEST(test_adamw)
{
    seed(401);
    for (int fp64 = 0; fp64 < 2; fp64++)
        for (int wm = 0; wm < 2; wm++) {
            adamw_run(fp64, wm);
            adamw_shard_run(fp64, wm);
        }
}
END_TEST

/* ---- sumsq ---- */

START_TEST(test_sumsq)
{
    seed(501);
    const size_t sizes[] = { 0, 1, 7, 1000, 100003 };
    for (int fp64 = 0; fp64 < 2; fp64++) {
        for (int threads = 1; threads <= 3; threads++) {
            backend *be = mk(fp64, threads);
            for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
                size_t n = sizes[s];
                double *x = rand_vec(n, 3.0);
                if (!fp64)
                    round_f32(x, n);
                long double ref = 0;
                for (size_t i = 0; i < n; i++)
                    ref += (long double)x[i] * x[i];
                void *d = dup_to(be, be->act, x, n);
                double got = be->sumsq(be, d, n), again = be->sumsq(be, d, n);
                ck_assert_msg(fabs(got - (double)ref) <= 1e-12 * (double)ref,
                              "sumsq n=%zu threads=%d: %.17g want %.17Lg", n, threads, got, ref);
                ck_assert_msg(memcmp(&got, &again, sizeof(got)) == 0, "sumsq not deterministic");
                be->free(be, d);
                free(x);
            }
            be->destroy(be);
        }
    }
}
END_TEST

/* ---- memory: upload, download, fill ---- */

START_TEST(test_memory)
{
    seed(601);
    enum { n = 1037 };
    double *x = rand_vec(n, 100.0), y[n];
    float xf[n], yf[n];
    int32_t xi[n], yi[n];
    for (int i = 0; i < n; i++) {
        xf[i] = (float)x[i];
        xi[i] = (int32_t)(rnext() >> 32);
    }
    xi[0] = INT32_MIN, xi[1] = INT32_MAX, xi[2] = -1;
    for (int fp64 = 0; fp64 < 2; fp64++) {
        backend *be = mk(fp64, 3);
        ck_assert_str_eq(be->name, fp64 ? "cpu-fp64" : "cpu");
        dtype t = fp64 ? DT_F64 : DT_F32;
        ck_assert(be->act == t && be->stat == t && be->opt == t);
        void *d = dalloc(be, t, n);
        ck_assert_int_eq((uintptr_t)d % 64, 0);
        /* f64 -> device -> f64: exact in fp64, rounded once to float in fp32 */
        be->upload(be, d, t, x, DT_F64, n);
        be->download(be, y, DT_F64, d, t, n);
        for (int i = 0; i < n; i++)
            ck_assert(y[i] == (fp64 ? x[i] : (double)xf[i]));
        /* f32 -> device -> f32: exact both ways */
        be->upload(be, d, t, xf, DT_F32, n);
        be->download(be, yf, DT_F32, d, t, n);
        ck_assert(!memcmp(xf, yf, sizeof(xf)));
        be->download(be, y, DT_F64, d, t, n);
        for (int i = 0; i < n; i++)
            ck_assert(y[i] == (double)xf[i]);
        /* bf16 download: round to nearest, ties to even */
        const float bv[5] = { 1.0f, 1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, -2.5f, NAN };
        const uint16_t want[4] = { 0x3f80, 0x3f80, 0x3f82, 0xc020 };
        uint16_t bh[5], bback[5];
        be->upload(be, d, t, bv, DT_F32, 5);
        be->download(be, bh, DT_BF16, d, t, 5);
        for (int i = 0; i < 4; i++)
            ck_assert_msg(bh[i] == want[i], "bf16 of %a: %#x", bv[i], bh[i]);
        ck_assert((bh[4] & 0x7f80) == 0x7f80 && (bh[4] & 0x7f));
        be->upload(be, d, t, bh, DT_BF16, 5);
        be->download(be, bback, DT_BF16, d, t, 5);
        ck_assert(!memcmp(bh, bback, sizeof(bh)));
        be->free(be, d);
        /* int32 -> device -> int32: bit exact */
        void *di = dalloc(be, DT_I32, n);
        be->upload(be, di, DT_I32, xi, DT_I32, n);
        be->download(be, yi, DT_I32, di, DT_I32, n);
        ck_assert(!memcmp(xi, yi, sizeof(xi)));
        /* fill every type with a value and check each element */
        be->fill(be, di, DT_I32, -7.0, n);
        be->download(be, yi, DT_I32, di, DT_I32, n);
        for (int i = 0; i < n; i++)
            ck_assert_int_eq(yi[i], -7);
        be->free(be, di);
        const dtype types[3] = { DT_F32, DT_F64, DT_BF16 };
        for (int k = 0; k < 3; k++) {
            void *f = dalloc(be, types[k], n);
            double val = k == 2 ? -2.5 : 0.1 * (k + 1);
            be->fill(be, f, types[k], val, n);
            be->download(be, y, DT_F64, f, types[k], n);
            double want_v = types[k] == DT_F32 ? (double)(float)val : val;
            for (int i = 0; i < n; i++)
                ck_assert_msg(y[i] == want_v, "fill %s: [%d] = %g", dtype_name(types[k]), i, y[i]);
            be->fill(be, f, types[k], 0.0, n);
            be->download(be, y, DT_F64, f, types[k], n);
            for (int i = 0; i < n; i++)
                ck_assert(y[i] == 0 && !signbit(y[i]));
            be->free(be, f);
        }
        /* above the one-thread threshold: the zeroing and same-type copies
         * split across the threads in page blocks, with an odd tail */
        {
            size_t nb = 3 * 16384 + 1037;
            float *src = malloc(nb * sizeof *src), *back = malloc(nb * sizeof *back);
            ck_assert(src && back);
            for (size_t i = 0; i < nb; i++)
                src[i] = (float)x[i % n] + (float)i;
            void *big = dalloc(be, t, nb);
            be->upload(be, big, t, src, DT_F32, nb);
            be->download(be, back, DT_F32, big, t, nb);
            ck_assert(!memcmp(src, back, nb * sizeof *src));
            be->fill(be, big, t, 0.0, nb - 5); /* the last 5 stay */
            be->download(be, back, DT_F32, big, t, nb);
            for (size_t i = 0; i < nb; i++)
                ck_assert_msg(back[i] == (i < nb - 5 ? 0.0f : src[i]) && !signbit(back[i]),
                              "zero fill: [%zu] = %g", i, back[i]);
            be->free(be, big);
            free(src), free(back);
        }
        /* a zero-byte allocation is still a pointer that can be freed */
        void *z = be->alloc(be, 0);
        ck_assert_ptr_nonnull(z);
        be->free(be, z);
        be->sync(be);
        be->destroy(be);
    }
    free(x);
}
END_TEST

/* ---- determinism ---- */

/* Runs fwd and bwd of a case on `be` and returns all results as raw bytes
 * (as doubles, which hold the act values exactly). */
static double *run_bits(backend *be, op_case *c, size_t *len)
{
    size_t n = c->nout + c->naux;
    for (int k = 0; k < c->nin; k++)
        n += c->len[k];
    double *r = malloc(n * sizeof(double)), *g[3] = { NULL };
    ck_assert_ptr_nonnull(r);
    uint64_t saved = rng_state; /* the same gradient pre-fill every run */
    c->fwd(be, c, r, c->naux ? r + c->nout : NULL);
    c->bwd(be, c, g);
    rng_state = saved;
    size_t o = c->nout + c->naux;
    for (int k = 0; k < c->nin; k++) {
        if (g[k])
            memcpy(r + o, g[k], c->len[k] * sizeof(double));
        else
            memset(r + o, 0, c->len[k] * sizeof(double));
        o += c->len[k];
        free(g[k]);
    }
    *len = n;
    return r;
}

/* Same call twice: bit-identical. Ops other than matmul and sumsq split
 * their sums by column, owner or head, so 1 and 3 threads agree too. */
static void same_bits(op_case *c, int across_threads)
{
    backend *b3 = mk(0, 3);
    size_t n1, n2;
    double *r1 = run_bits(b3, c, &n1), *r2 = run_bits(b3, c, &n2);
    ck_assert_msg(n1 == n2 && !memcmp(r1, r2, n1 * sizeof(double)), "%s: two runs differ",
                  c->name);
    b3->destroy(b3);
    if (across_threads) {
        backend *b1 = mk(0, 1);
        double *r3 = run_bits(b1, c, &n2);
        ck_assert_msg(!memcmp(r1, r3, n1 * sizeof(double)), "%s: 1 and 3 threads differ",
                      c->name);
        free(r3);
        b1->destroy(b1);
    }
    free(r1), free(r2);
}

/* ---- attention where its scratch cannot be had ----
 * With the allocator failing (alloc_fault.h) the attention ops run their
 * tiled code, which needs only the stack; its results must be the scratch
 * paths'. */

/* out, lse and dqkv (added to a random prefill) of one forward and backward
 * on a fresh backend, its allocations failing during the two ops (starve) */
static void att_run(int fp64, const op_case *c, int starve, double *out, double *lse,
                    double *dqkv)
{
    backend *be = mk(fp64, 2);
    size_t nl = (size_t)c->B * c->NH * c->T;
    double *g0;
    void *qkv = dup_to(be, be->act, c->in[0], c->len[0]);
    void *o = poisoned(be, be->act, c->nout), *l = poisoned(be, be->stat, nl);
    void *dq = prefilled(be, c->len[0], &g0), *dout = dup_to(be, be->act, c->R, c->nout);
    alloc_fails = starve, alloc_refused = 0;
    be->attention_forward(be, o, l, qkv, c->B, c->T, c->C, c->NH, c->causal);
    be->attention_backward(be, dq, dout, qkv, o, l, c->B, c->T, c->C, c->NH, c->causal);
    alloc_fails = 0;
    ck_assert_msg(!starve || alloc_refused > 0, "the ops asked for no scratch: no fallback ran");
    get(be, out, o, be->act, c->nout);
    get(be, lse, l, be->stat, nl);
    double *g = added(be, dq, g0, c->len[0]);
    memcpy(dqkv, g, c->len[0] * sizeof(double));
    free(g);
    be->free(be, qkv), be->free(be, o), be->free(be, l), be->free(be, dout);
    be->destroy(be);
}

START_TEST(test_attention_without_scratch)
{
    seed(108);
    /* one key tile, hs 32 as the ViT's, and three key tiles */
    static const int shapes[][4] = { { 2, 9, 12, 3 }, { 3, 50, 128, 4 }, { 1, 131, 8, 2 } };
    for (int fp64 = 0; fp64 < 2; fp64++)
        for (int k = 0; k < 3; k++)
            for (int causal = 0; causal < 2; causal++) {
                const int *sh = shapes[k];
                op_case c = att_case(sh[0], sh[1], sh[2], sh[3], causal);
                size_t nl = (size_t)sh[0] * sh[3] * sh[1];
                double *r[6];
                for (int i = 0; i < 6; i++) {
                    r[i] = malloc((i % 3 == 0 ? c.nout : i % 3 == 1 ? nl : c.len[0]) * sizeof(double));
                    ck_assert_ptr_nonnull(r[i]);
                }
                att_run(fp64, &c, 0, r[0], r[1], r[2]);
                att_run(fp64, &c, 1, r[3], r[4], r[5]);
                double tol = fp64 ? 1e-12 : F32_TOL;
                static const char *what[3] = { "out", "lse", "dqkv" };
                size_t len[3] = { c.nout, nl, c.len[0] };
                for (int i = 0; i < 3; i++) {
                    double e = rel_l2(r[3 + i], r[i], len[i]);
                    report(fp64 ? "no scratch 64" : "no scratch 32", c.name, i, e);
                    ck_assert_msg(e < tol, "%s B %d T %d C %d NH %d (%s): %s without scratch: rel L2 %.3g",
                                  c.name, sh[0], sh[1], sh[2], sh[3], fp64 ? "fp64" : "fp32", what[i], e);
                }
                for (int i = 0; i < 6; i++)
                    free(r[i]);
                free_case(&c);
            }
}
END_TEST

START_TEST(test_determinism)
{
    seed(701);
    /* shapes above the backend's one-thread threshold (16384 elements) */
    op_case c = enc_case(4, 64, 72, 7, 70); /* few tokens: many repeats */
    same_bits(&c, 1);
    free_case(&c);
    c = ln_case(67, 300);
    same_bits(&c, 1);
    free_case(&c);
    c = mm_case(165, 70, 130, 0, 0, 0);
    same_bits(&c, 0);
    free_case(&c);
    c = att_case(2, 70, 32, 4, 1);
    same_bits(&c, 1);
    free_case(&c);
    c = gelu_case(50001);
    same_bits(&c, 1);
    free_case(&c);
    c = ce_case(31, 1001, 1024, 0.1f);
    same_bits(&c, 1);
    free_case(&c);
}
END_TEST

static Suite *ops_suite(void)
{
    Suite *s = suite_create("ops");
    TCase *g = tcase_create("gradcheck");
    tcase_set_timeout(g, 60);
    tcase_add_test(g, test_grad_encoder);
    tcase_add_test(g, test_grad_layernorm);
    tcase_add_test(g, test_grad_matmul);
    tcase_add_test(g, test_grad_attention);
    tcase_add_test(g, test_grad_gelu);
    tcase_add_test(g, test_grad_matmul_gelu);
    tcase_add_test(g, test_grad_gelu_matmul);
    tcase_add_test(g, test_grad_residual);
    tcase_add_test(g, test_grad_crossentropy);
    suite_add_tcase(s, g);
    TCase *p = tcase_create("fp32");
    tcase_set_timeout(p, 60);
    tcase_add_test(p, test_forward_reference);
    tcase_add_test(p, test_f32_parity);
    suite_add_tcase(s, p);
    TCase *r = tcase_create("rules");
    tcase_set_timeout(r, 60);
    tcase_add_test(r, test_crossentropy_rules);
    tcase_add_test(r, test_crossentropy_nan);
    tcase_add_test(r, test_adamw);
    tcase_add_test(r, test_residual_layernorm);
    tcase_add_test(r, test_attention_decode);
    tcase_add_test(r, test_sumsq);
    tcase_add_test(r, test_memory);
    tcase_add_test(r, test_determinism);
    tcase_add_test(r, test_attention_without_scratch);
    suite_add_tcase(s, r);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(ops_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
