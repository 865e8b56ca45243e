/* test_cuda_ops.c: backend parity, the second rung of the test ladder.
 *
 * Every op of the CUDA backend against the CPU backend's fp64 build (the
 * oracle), on fresh random inputs, in both of the backend's modes: fp32 (the
 * verification mode, no TF32) to 1e-5 relative L2, bf16 to 1e-2. Outputs are
 * poisoned with NaN first, so every element must be written; gradient
 * buffers start from random values, so += is checked (what the op added is
 * compared); inputs are made representable in the mode's type first, so the
 * comparison measures the op and not the rounding of its inputs. Then the
 * whole GPT-2: loss, every parameter's gradient, and 10 AdamW steps.
 *
 * One source, two builds: linked with the kernels compiled by g++
 * -DANATOMY_EMU it runs on the device emulator anywhere (small shapes, thread
 * order shuffled, shared-memory races and out-of-bounds accesses reported);
 * linked with the nvcc-built kernels it runs on a GPU (mk/cuda.mk).
 * ANATOMY_TEST_SEED=<n> repeats a run's inputs (the seed is printed);
 * ANATOMY_TEST_VERBOSE=1 prints every measured error. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../host/model.h"
#include "../host/models/gpt2.h"
#include "../kernels/cuda/attention.h"
#include "../kernels/ops.h"
#include "cuda_parity.h"

/* ---- bf16 ---- */

/* The spacing of bf16 values at |x| (8 significant bits), for normal x. */
static double bf16_ulp(double x)
{
    int e;
    frexp(x, &e);
    return ldexp(1.0, e - 8);
}

/* ---- backends and buffers ---- */

/* A gradient buffer starting at prefill (zeros when NULL). */
static void *grad_buf(backend *be, const double *prefill, size_t n)
{
    if (prefill)
        return up(be, be->act, prefill, n);
    void *d = dalloc(be, be->act, n);
    be->fill(be, d, be->act, 0.0, n);
    return d;
}

/* Random starting values for a gradient, about a quarter the size of what
 * the op adds (ref), so that bf16's rounding of the sum stays small next to
 * the part under test while a lost += still shows. */
static double *prefill_for(const double *ref, size_t n, dtype act)
{
    double ss = 0;
    for (size_t i = 0; i < n; i++)
        ss += ref[i] * ref[i];
    return rnd(n, 0.25 * sqrt(ss / (n ? n : 1)) + 1e-3, act);
}

static void expect_close(const char *what, dtype act, const double *got, const double *ref, size_t n,
                         double limit)
{
    double e = rel_l2(got, ref, n);
    if (getenv("ANATOMY_TEST_VERBOSE"))
        printf("  %-5s %-36s rel L2 %.3g (limit %.0e)\n", dtype_name(act), what, e, limit);
    ck_assert_msg(e <= limit, "%s (%s): relative L2 error %.3g exceeds %.0e", what, dtype_name(act), e,
                  limit);
}

/* ---- memory and conversions ---- */

START_TEST(test_transfers)
{
    dtype act = mode(_i);
    backend *g = gpu(act);
    seed("transfers", _i);
    size_t n = 1000 + (size_t)irand(100);
    /* doubles: bf16 needs one correct rounding, fp32 a float cast */
    double *h = xmalloc(n * sizeof(double)), *back = xmalloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++)
        h[i] = nrand() * pow(2.0, irand(40) - 20);
    h[0] = 1.0 + 0x1.0p-8;                  /* halfway between two bf16: to even (1.0) */
    h[1] = 1.0 + 0x1.0p-8 + 0x1.0p-40;      /* just above halfway: up */
    h[2] = -(1.0 + 3 * 0x1.0p-8);           /* halfway, odd below: away to even */
    void *d = up(g, act, h, n);
    g->download(g, back, DT_F64, d, act, n);
    for (size_t i = 0; i < n; i++) {
        double want;
        if (act == DT_F32) {
            want = (float)h[i];
        } else { /* the nearest of the two neighbouring bf16 values, ties to even */
            int e;
            frexp(h[i], &e);
            double ulp = ldexp(1.0, e - 8), lo = floor(h[i] / ulp) * ulp, hi = lo + ulp;
            double dl = h[i] - lo, dh = hi - h[i];
            want = dl < dh ? lo : dh < dl ? hi : (fmod(lo / ulp, 2.0) == 0 ? lo : hi);
        }
        ck_assert_msg(back[i] == want, "element %zu: %.17g became %.17g, want %.17g", i, h[i],
                      back[i], want);
    }
    /* floats through the staging buffer, beyond one staging chunk for int32 */
    size_t big = (9u << 20) / 4 + 7;
    int32_t *ih = xmalloc(big * sizeof(int32_t)), *ib = xmalloc(big * sizeof(int32_t));
    for (size_t i = 0; i < big; i++)
        ih[i] = (int32_t)rnext();
    void *di = up_i32(g, ih, big);
    g->download(g, ib, DT_I32, di, DT_I32, big);
    ck_assert_int_eq(memcmp(ih, ib, big * sizeof(int32_t)), 0);
    /* fill: every element, in every type the backend stores */
    double v = (float)nrand(); /* a float: one rounding to bf16, the same in every spelling */
    g->fill(g, d, act, v, n);
    g->download(g, back, DT_F64, d, act, n);
    double want = act == DT_BF16 ? bf16_round(v) : (float)v;
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(back[i] == want, "fill: element %zu is %g, want %g", i, back[i], want);
    g->fill(g, di, DT_I32, -7.0, 33);
    g->download(g, ib, DT_I32, di, DT_I32, 34);
    for (int i = 0; i < 33; i++)
        ck_assert_int_eq(ib[i], -7);
    ck_assert_int_eq(ib[33], ih[33]);
    g->free(g, d);
    g->free(g, di);
    free(h), free(back), free(ih), free(ib);
    g->destroy(g);
}
END_TEST

/* ---- encoder ---- */

static void enc_run(backend *be, int B, int T, int C, int Vp, int maxT, const int32_t *tok,
                    const double *wte, const double *wpe, const double *dout, const double *pw,
                    const double *pp, double *out, double *dwte, double *dwpe)
{
    dtype a = be->act;
    size_t btc = (size_t)B * T * C;
    void *dte = up(be, a, wte, (size_t)Vp * C), *dpe = up(be, a, wpe, (size_t)maxT * C);
    void *dtok = up_i32(be, tok, (size_t)B * T), *o = poisoned(be, a, btc);
    be->encoder_forward(be, o, dtok, dte, dpe, B, T, C);
    take(be, o, a, NULL, btc, out);
    void *dy = up(be, a, dout, btc), *gw = grad_buf(be, pw, (size_t)Vp * C);
    void *gp = grad_buf(be, pp, (size_t)maxT * C);
    be->encoder_backward(be, gw, gp, dy, dtok, B, T, C);
    take(be, gw, a, pw, (size_t)Vp * C, dwte);
    take(be, gp, a, pp, (size_t)maxT * C, dwpe);
    be->free(be, dte), be->free(be, dpe), be->free(be, dtok), be->free(be, dy);
}

START_TEST(test_encoder)
{
    dtype act = mode(_i);
    backend *r = oracle(), *g = gpu(act);
    static const int shapes[][3] = { { 2, 7, 32 }, { 3, 5, 20 } }; /* B, T, C (20: unaligned rows) */
    seed("encoder", _i);
    for (int s = 0; s < 2; s++) {
        int B = shapes[s][0], T = shapes[s][1], C = shapes[s][2], Vp = 24, maxT = T + 3;
        size_t btc = (size_t)B * T * C, nte = (size_t)Vp * C, npe = (size_t)maxT * C;
        int32_t tok[64];
        for (int i = 0; i < B * T; i++)
            tok[i] = irand(6) ? irand(8) : irand(Vp); /* repeats, so rows of dwte sum */
        tok[3] = -1;                                  /* no wte row */
        double *wte = rnd(nte, 1, act), *wpe = rnd(npe, 1, act), *dout = rnd(btc, 1, act);
        double *o[2], *dw[2], *dp[2];
        for (int k = 0; k < 2; k++) {
            o[k] = xmalloc(btc * sizeof(double));
            dw[k] = xmalloc(nte * sizeof(double));
            dp[k] = xmalloc(npe * sizeof(double));
        }
        enc_run(r, B, T, C, Vp, maxT, tok, wte, wpe, dout, NULL, NULL, o[0], dw[0], dp[0]);
        double *pw = prefill_for(dw[0], nte, act), *pp = prefill_for(dp[0], npe, act);
        enc_run(g, B, T, C, Vp, maxT, tok, wte, wpe, dout, pw, pp, o[1], dw[1], dp[1]);
        expect_close("encoder_forward out", act, o[1], o[0], btc, tol(act));
        expect_close("encoder_backward dwte", act, dw[1], dw[0], nte, tol(act));
        expect_close("encoder_backward dwpe", act, dp[1], dp[0], npe, tol(act));
        for (int k = 0; k < 2; k++)
            free(o[k]), free(dw[k]), free(dp[k]);
        free(wte), free(wpe), free(dout), free(pw), free(pp);
    }
    r->destroy(r);
    g->destroy(g);
}
END_TEST

/* ---- layernorm ---- */

typedef struct {
    int N, C;
    double *x, *w, *b, *dy, *mean, *rstd; /* mean, rstd: the oracle's, fed to both backwards */
} ln_case;

/* Forward (y, mean, rstd) and, with dx/dw/db not NULL, backward from the
 * case's saved statistics; prefills p[0..2] for dx, dw, db. */
static void ln_run(backend *be, const ln_case *c, int stats, double *y, double *mean, double *rstd,
                   double *dx, double *dw, double *db, double *const *p)
{
    dtype a = be->act, st = be->stat;
    size_t nc = (size_t)c->N * c->C;
    void *x = up(be, a, c->x, nc), *w = up(be, a, c->w, c->C);
    void *b = c->b ? up(be, a, c->b, c->C) : NULL; /* NULL: no bias (--no-bias) */
    void *o = poisoned(be, a, nc), *m = poisoned(be, st, c->N), *s = poisoned(be, st, c->N);
    be->layernorm_forward(be, o, stats ? m : NULL, stats ? s : NULL, x, w, b, c->N, c->C);
    take(be, o, a, NULL, nc, y);
    take(be, m, st, NULL, c->N, mean);
    take(be, s, st, NULL, c->N, rstd);
    if (dx || dw || db) {
        void *dy = up(be, a, c->dy, nc), *sm = up(be, st, c->mean, c->N), *sr = up(be, st, c->rstd, c->N);
        void *gx = dx ? grad_buf(be, p[0], nc) : NULL, *gw = dw ? grad_buf(be, p[1], c->C) : NULL;
        void *gb = db ? grad_buf(be, p[2], c->C) : NULL;
        be->layernorm_backward(be, gx, gw, gb, dy, x, w, sm, sr, c->N, c->C);
        if (gx)
            take(be, gx, a, p[0], nc, dx);
        if (gw)
            take(be, gw, a, p[1], c->C, dw);
        if (gb)
            take(be, gb, a, p[2], c->C, db);
        be->free(be, dy), be->free(be, sm), be->free(be, sr);
    }
    be->free(be, x), be->free(be, w);
    if (b)
        be->free(be, b);
}

START_TEST(test_layernorm)
{
    dtype act = mode(_i);
    backend *r = oracle(), *g = gpu(act);
    /* N, C; 5000 rows: more than the backward's blocks x warps, so warps take several rows */
    static const int shapes[][2] = { { 37, 64 }, { 9, 44 }, { 300, 24 }, { 5000, 16 } };
    seed("layernorm", _i);
    for (int s = 0; s < 4; s++) {
        ln_case c = { .N = shapes[s][0], .C = shapes[s][1] };
        size_t nc = (size_t)c.N * c.C;
        c.x = rnd(nc, 1, act);
        for (size_t i = 0; i < nc; i++) /* rows with a large mean: no cancellation allowed */
            c.x[i] = act == DT_BF16 ? bf16_round(c.x[i] + 3.0 * (i / c.C % 3)) : c.x[i] + 3.0 * (i / c.C % 3);
        c.w = rnd(c.C, 1, act), c.b = rnd(c.C, 1, act), c.dy = rnd(nc, 1, act);
        double *y[2], *mean[2], *rstd[2], *dx[2], *dw[2], *db[2];
        for (int k = 0; k < 2; k++) {
            y[k] = xmalloc(nc * 8), dx[k] = xmalloc(nc * 8);
            mean[k] = xmalloc(c.N * 8), rstd[k] = xmalloc(c.N * 8);
            dw[k] = xmalloc(c.C * 8), db[k] = xmalloc(c.C * 8);
        }
        double *none[3] = { NULL, NULL, NULL };
        c.mean = mean[0], c.rstd = rstd[0];
        ln_run(r, &c, 1, y[0], mean[0], rstd[0], NULL, NULL, NULL, none);
        ln_run(r, &c, 1, y[0], mean[0], rstd[0], dx[0], dw[0], db[0], none);
        double *p[3] = { prefill_for(dx[0], nc, act), prefill_for(dw[0], c.C, act),
                         prefill_for(db[0], c.C, act) };
        ln_run(g, &c, 1, y[1], mean[1], rstd[1], dx[1], dw[1], db[1], p);
        expect_close("layernorm_forward out", act, y[1], y[0], nc, tol(act));
        expect_close("layernorm_forward mean", act, mean[1], mean[0], c.N, TOL_F32);
        expect_close("layernorm_forward rstd", act, rstd[1], rstd[0], c.N, TOL_F32);
        expect_close("layernorm_backward dinp", act, dx[1], dx[0], nc, tol(act));
        expect_close("layernorm_backward dweight", act, dw[1], dw[0], c.C, tol(act));
        expect_close("layernorm_backward dbias", act, db[1], db[0], c.C, tol(act));
        /* optional outputs: no statistics saved; only dinp; only the parameters */
        ln_run(g, &c, 0, y[1], mean[1], rstd[1], dx[1], NULL, NULL, p);
        expect_close("layernorm_forward out (no stats)", act, y[1], y[0], nc, tol(act));
        expect_close("layernorm_backward dinp alone", act, dx[1], dx[0], nc, tol(act));
        for (int i = 0; i < c.N; i++)
            ck_assert_msg(isnan(mean[1][i]) && isnan(rstd[1][i]), "stats written though NULL was passed");
        ln_run(g, &c, 1, y[1], mean[1], rstd[1], NULL, dw[1], db[1], p);
        expect_close("layernorm_backward dweight alone", act, dw[1], dw[0], c.C, tol(act));
        expect_close("layernorm_backward dbias alone", act, db[1], db[0], c.C, tol(act));
        /* the parameter gradients are sums in a fixed order: the same bits again */
        double *dw2 = xmalloc(c.C * 8), *db2 = xmalloc(c.C * 8);
        ln_run(g, &c, 1, y[1], mean[1], rstd[1], NULL, dw2, db2, p);
        ck_assert_msg(!memcmp(dw2, dw[1], c.C * 8) && !memcmp(db2, db[1], c.C * 8),
                      "layernorm_backward N%d C%d: dweight/dbias differ between two runs", c.N, c.C);
        free(dw2), free(db2);
        /* without bias (a --no-bias model): b = NULL means b = 0, and the
         * backward gets no dbias; dinp and dweight do not depend on b */
        double *b_kept = c.b;
        c.b = NULL;
        ln_run(r, &c, 1, y[0], mean[0], rstd[0], NULL, NULL, NULL, none);
        ln_run(g, &c, 1, y[1], mean[1], rstd[1], dx[1], dw[1], NULL, p);
        expect_close("layernorm_forward out (no bias)", act, y[1], y[0], nc, tol(act));
        expect_close("layernorm_backward dinp (no bias)", act, dx[1], dx[0], nc, tol(act));
        expect_close("layernorm_backward dweight (no bias)", act, dw[1], dw[0], c.C, tol(act));
        c.b = b_kept;
        for (int k = 0; k < 2; k++)
            free(y[k]), free(dx[k]), free(mean[k]), free(rstd[k]), free(dw[k]), free(db[k]);
        for (int k = 0; k < 3; k++)
            free(p[k]);
        free(c.x), free(c.w), free(c.b), free(c.dy);
    }
    r->destroy(r);
    g->destroy(g);
}
END_TEST

/* ---- matmul ---- */

typedef struct {
    int N, IC, OC, bias, dinp, dbias, offset; /* offset: elements, to misalign every buffer */
    int set;                                  /* dinp GRAD_SET (into NaN) instead of += */
    double *inp, *w, *b, *dout;
} mm_case;

/* The CUDA backend's count of matmuls run with a cuBLASLt epilogue. */
static unsigned long mm_count(backend *be, int epi)
{
    ck_assert_msg(backend_cuda_matmul_count != NULL, "linked without the CUDA backend");
    return backend_cuda_matmul_count(be, epi);
}

/* Defined only by the device emulator's runtime: lets the one test source
 * pick emulator-sized or GPU-sized shapes. */
extern uint64_t emu_get_seed(void) __attribute__((weak));
extern void emu_set_seed(uint64_t seed) __attribute__((weak));
extern void emu_set_resident_blocks(int n) __attribute__((weak));
static int native_gpu(void) { return emu_get_seed == NULL; }

/* That a fused epilogue ran `runs` times where `want` were expected. The
 * emulator's heuristic offers every documented epilogue, so there a miss is
 * a failure; a GPU's cuBLASLt may offer no algorithm (the op then falls back
 * correctly), which is printed, not failed, so that the first GPU run says so. */
static void fused_check(const char *what, const char *epi, unsigned long runs, unsigned long want)
{
    if (native_gpu() && runs < want) {
        printf("note: %s: cuBLASLt ran %lu of %lu %s epilogues (no algorithm: the fallback ran)\n", what, runs,
               want, epi);
        return;
    }
    ck_assert_msg(runs == want, "%s: %lu %s epilogue calls, expected %lu", what, runs, epi, want);
}

static void *up_off(backend *be, dtype t, const double *h, size_t n, int off, void **base)
{
    *base = dalloc(be, t, n + off);
    void *d = buf_at(*base, off, t);
    be->upload(be, d, t, h, DT_F64, n);
    return d;
}

static void mm_run(backend *be, const mm_case *c, double *out, double *dx, double *dw, double *db,
                   double *const *p)
{
    dtype a = be->act;
    size_t ni = (size_t)c->N * c->IC, nw = (size_t)c->OC * c->IC, no = (size_t)c->N * c->OC;
    void *bi, *bw, *bb, *bo, *bd, *bgx, *bgw, *bgb;
    void *inp = up_off(be, a, c->inp, ni, c->offset, &bi), *w = up_off(be, a, c->w, nw, c->offset, &bw);
    void *b = up_off(be, a, c->b, c->OC, c->offset, &bb), *dy = up_off(be, a, c->dout, no, c->offset, &bd);
    bo = poisoned(be, a, no + c->offset);
    be->matmul_forward(be, buf_at(bo, c->offset, a), inp, w, c->bias ? b : NULL, c->N, c->IC, c->OC);
    be->download(be, out, DT_F64, buf_at(bo, c->offset, a), a, no);
    bgx = grad_buf(be, NULL, ni + c->offset), bgw = grad_buf(be, NULL, nw + c->offset);
    bgb = grad_buf(be, NULL, c->OC + c->offset);
    void *gx = buf_at(bgx, c->offset, a), *gw = buf_at(bgw, c->offset, a), *gb = buf_at(bgb, c->offset, a);
    if (c->set && c->dinp && p[0])
        be->fill(be, gx, a, NAN, ni); /* GRAD_SET must not read it */
    else if (p[0])
        be->upload(be, gx, a, p[0], DT_F64, ni);
    if (p[0]) {
        be->upload(be, gw, a, p[1], DT_F64, nw);
        be->upload(be, gb, a, p[2], DT_F64, c->OC);
    }
    be->matmul_backward(be, c->dinp ? gx : NULL, gw, c->dbias ? gb : NULL, dy, inp, w, c->N, c->IC, c->OC,
                        c->set ? GRAD_SET : GRAD_ADD);
    be->download(be, dx, DT_F64, gx, a, ni);
    be->download(be, dw, DT_F64, gw, a, nw);
    be->download(be, db, DT_F64, gb, a, c->OC);
    for (size_t i = 0; p[0] && !c->set && i < ni; i++)
        dx[i] -= p[0][i];
    for (size_t i = 0; p[0] && i < nw; i++)
        dw[i] -= p[1][i];
    for (size_t i = 0; p[0] && i < (size_t)c->OC; i++)
        db[i] -= p[2][i];
    void *bufs[] = { bi, bw, bb, bd, bo, bgx, bgw, bgb };
    for (int i = 0; i < 8; i++)
        be->free(be, bufs[i]);
}

START_TEST(test_matmul)
{
    dtype act = mode(_i);
    backend *r = oracle(), *g = gpu(act);
    /* N, IC, OC, bias, dinp, dbias, offset, dinp GRAD_SET */
    static const int cases[][8] = {
        { 64, 64, 96, 1, 1, 1, 0, 0 }, { 37, 24, 40, 0, 1, 1, 0, 0 }, { 33, 40, 20, 1, 0, 1, 1, 0 },
        { 130, 16, 48, 1, 1, 0, 0, 0 }, { 5, 200, 8, 1, 1, 1, 3, 0 }, { 37, 21, 13, 1, 1, 1, 0, 1 },
        { 16, 40, 24, 0, 1, 0, 1, 1 },
    };
    seed("matmul", _i);
    for (int s = 0; s < 7; s++) {
        mm_case c = { cases[s][0], cases[s][1], cases[s][2], cases[s][3], cases[s][4], cases[s][5],
                      cases[s][6], cases[s][7], NULL, NULL, NULL, NULL };
        unsigned long bgrad0 = mm_count(g, CUDA_MM_BGRADB);
        size_t ni = (size_t)c.N * c.IC, nw = (size_t)c.OC * c.IC, no = (size_t)c.N * c.OC;
        c.inp = rnd(ni, 1, act), c.w = rnd(nw, 1, act), c.b = rnd(c.OC, 1, act), c.dout = rnd(no, 1, act);
        double *o[2], *dx[2], *dw[2], *db[2], *none[3] = { NULL, NULL, NULL };
        for (int k = 0; k < 2; k++)
            o[k] = xmalloc(no * 8), dx[k] = xmalloc(ni * 8), dw[k] = xmalloc(nw * 8), db[k] = xmalloc(c.OC * 8);
        mm_run(r, &c, o[0], dx[0], dw[0], db[0], none);
        double *p[3] = { prefill_for(dx[0], ni, act), prefill_for(dw[0], nw, act),
                         prefill_for(db[0], c.OC, act) };
        mm_run(g, &c, o[1], dx[1], dw[1], db[1], p);
        char what[96];
        snprintf(what, sizeof what, "matmul %dx%dx%d%s out", c.N, c.IC, c.OC, c.offset ? " unaligned" : "");
        expect_close(what, act, o[1], o[0], no, tol(act));
        snprintf(what, sizeof what, "matmul %dx%dx%d dweight", c.N, c.IC, c.OC);
        expect_close(what, act, dw[1], dw[0], nw, tol(act));
        if (c.dinp) {
            snprintf(what, sizeof what, "matmul %dx%dx%d dinp%s", c.N, c.IC, c.OC, c.set ? " (set)" : "");
            expect_close(what, act, dx[1], dx[0], ni, tol(act));
        } else {
            for (size_t i = 0; i < ni; i++)
                ck_assert_msg(dx[1][i] == 0.0, "dinp changed though NULL was passed");
        }
        if (c.dbias) {
            snprintf(what, sizeof what, "matmul %dx%dx%d dbias", c.N, c.IC, c.OC);
            expect_close(what, act, db[1], db[0], c.OC, tol(act));
            /* the bias gradient came from the dweight product's BGRADB epilogue */
            fused_check(what, "BGRADB", mm_count(g, CUDA_MM_BGRADB) - bgrad0, 1);
        } else {
            for (int i = 0; i < c.OC; i++)
                ck_assert_msg(db[1][i] == 0.0, "dbias changed though NULL was passed");
        }
        for (int k = 0; k < 2; k++)
            free(o[k]), free(dx[k]), free(dw[k]), free(db[k]);
        for (int k = 0; k < 3; k++)
            free(p[k]);
        free(c.inp), free(c.w), free(c.b), free(c.dout);
    }
    r->destroy(r);
    g->destroy(g);
}
END_TEST

/* ---- residual + layernorm ---- */

/* The fused op against the oracle (all four outputs, every element written)
 * and against the backend's own residual_forward + layernorm_forward, which
 * it must equal bit for bit: LN reads the residual stream as stored. */
START_TEST(test_residual_layernorm)
{
    dtype act = mode(_i);
    backend *r = oracle(), *g = gpu(act);
    static const int cases[][3] = { { 37, 64, 0 }, { 5, 70, 0 }, { 16, 256, 1 }, { 130, 8, 0 } };
    seed("residual_layernorm", _i);
    for (int s = 0; s < 4; s++) {
        int N = cases[s][0], C = cases[s][1], off = cases[s][2];
        size_t n = (size_t)N * C;
        double *a = rnd(n, 1, act), *b = rnd(n, 1, act), *w = rnd(C, 1, act), *bi = rnd(C, 1, act);
        double *got[3][4];
        for (int k = 0; k < 3; k++) { /* 0: oracle; 1: fused; 2: unfused, on the GPU backend */
            backend *e = k ? g : r;
            dtype t = e->act, st = e->stat;
            int o = k ? off : 0;
            void *ba, *bb, *bw, *bbi;
            void *da = up_off(e, t, a, n, o, &ba), *db = up_off(e, t, b, n, o, &bb);
            void *dw = up_off(e, t, w, C, o, &bw), *dbi = up_off(e, t, bi, C, o, &bbi);
            void *res = poisoned(e, t, n + o), *ln = poisoned(e, t, n + o), *sts = poisoned(e, st, 2 * (size_t)N);
            void *ro = buf_at(res, o, t), *lo = buf_at(ln, o, t), *rs = buf_at(sts, N, st);
            if (k < 2) {
                e->residual_layernorm_forward(e, ro, lo, sts, rs, da, db, dw, dbi, N, C);
            } else {
                e->residual_forward(e, ro, da, db, n);
                e->layernorm_forward(e, lo, sts, rs, ro, dw, dbi, N, C);
            }
            for (int j = 0; j < 4; j++)
                got[k][j] = xmalloc((j < 2 ? n : (size_t)N) * 8);
            e->download(e, got[k][0], DT_F64, ro, t, n);
            e->download(e, got[k][1], DT_F64, lo, t, n);
            e->download(e, got[k][2], DT_F64, sts, st, N);
            e->download(e, got[k][3], DT_F64, rs, st, N);
            void *bufs[] = { ba, bb, bw, bbi, res, ln, sts };
            for (int i = 0; i < 7; i++)
                e->free(e, bufs[i]);
        }
        static const char *names[4] = { "res", "ln", "mean", "rstd" };
        for (int j = 0; j < 4; j++) {
            char what[96];
            size_t m = j < 2 ? n : (size_t)N;
            snprintf(what, sizeof what, "residual_layernorm %dx%d%s %s", N, C, off ? " unaligned" : "", names[j]);
            expect_close(what, act, got[1][j], got[0][j], m, tol(act));
            for (size_t i = 0; i < m; i++)
                ck_assert_msg(got[1][j][i] == got[2][j][i], "%s[%zu]: fused %.9g, unfused %.9g", what, i,
                              got[1][j][i], got[2][j][i]);
        }
        for (int k = 0; k < 3; k++)
            for (int j = 0; j < 4; j++)
                free(got[k][j]);
        free(a), free(b), free(w), free(bi);
    }
    r->destroy(r);
    g->destroy(g);
}
END_TEST

/* ---- matmul + gelu ---- */

/* Both outputs (pre-activation and GELU) against the oracle, through the
 * cuBLASLt epilogue (OC % 8 == 0, 16-byte aligned) and through the fallback
 * (OC % 8 != 0, or buffers misaligned by `offset` elements). */
/* A bias whose alignment alone differs from an earlier call of the same
 * shape (packed parameters put biases at any element offset when C % 8 != 0):
 * cuBLASLt's heuristic reads the bias pointer's alignment, so the plan must
 * not be reused; the emulated plan cache dies if it is. Each result against
 * the CPU. */
START_TEST(test_matmul_bias_alignment)
{
    dtype act = mode(_i);
    backend *r = oracle(), *g = gpu(act);
    seed("matmul_bias_alignment", _i);
    /* matmul with OC 20 (C % 8 != 0), then matmul + GELU with OC 24 (the bf16
     * epilogue needs OC % 8 == 0): each with the bias at offsets 0, 1, 3 */
    for (int k = 0; k < 2; k++) {
        const int N = 16, IC = 24, OC = k ? 24 : 20;
        size_t ni = (size_t)N * IC, nw = (size_t)OC * IC, no = (size_t)N * OC;
        double *inp = rnd(ni, 1, act), *w = rnd(nw, 1, act), *b = rnd(OC, 1, act);
        double *want = xmalloc(no * 8), *got = xmalloc(no * 8);
        void *ri = up(r, DT_F64, inp, ni), *rw = up(r, DT_F64, w, nw), *rb = up(r, DT_F64, b, OC);
        void *ro = dalloc(r, DT_F64, no);
        r->matmul_forward(r, ro, ri, rw, rb, N, IC, OC);
        take(r, ro, DT_F64, NULL, no, want);
        void *gi = up(g, act, inp, ni), *gw = up(g, act, w, nw);
        for (int off = 0; off < 4; off += 1 + (off == 1)) {
            void *base, *gb = up_off(g, act, b, OC, off, &base), *go = poisoned(g, act, no), *gp = poisoned(g, act, no);
            if (k == 0)
                g->matmul_forward(g, go, gi, gw, gb, N, IC, OC);
            else
                g->matmul_gelu_forward(g, gp, go, gi, gw, gb, N, IC, OC);
            take(g, k ? gp : go, act, NULL, no, got);
            char what[96];
            snprintf(what, sizeof what, "matmul%s %dx%dx%d bias at element offset %d", k ? "_gelu pre" : "", N, IC,
                     OC, off);
            expect_close(what, act, got, want, no, tol(act));
            g->free(g, base);
            g->free(g, k ? go : gp);
        }
        g->free(g, gi), g->free(g, gw);
        r->free(r, ri), r->free(r, rw), r->free(r, rb);
        free(inp), free(w), free(b), free(want), free(got);
    }
    r->destroy(r);
    g->destroy(g);
}
END_TEST

START_TEST(test_matmul_gelu)
{
    dtype act = mode(_i);
    backend *r = oracle(), *g = gpu(act);
    /* N, IC, OC, bias, offset */
    static const int cases[][5] = {
        { 64, 64, 96, 1, 0 }, { 37, 24, 40, 0, 0 }, { 33, 40, 20, 1, 1 }, { 5, 200, 8, 1, 3 }, { 130, 16, 256, 1, 0 },
    };
    seed("matmul_gelu", _i);
    for (int s = 0; s < 5; s++) {
        int N = cases[s][0], IC = cases[s][1], OC = cases[s][2], bias = cases[s][3], off = cases[s][4];
        size_t ni = (size_t)N * IC, nw = (size_t)OC * IC, no = (size_t)N * OC;
        double *inp = rnd(ni, 1, act), *w = rnd(nw, 0.5, act), *b = rnd(OC, 1, act);
        double *pre[2], *out[2];
        backend *be[2] = { r, g };
        for (int k = 0; k < 2; k++) {
            backend *e = be[k];
            dtype a = e->act;
            int o = k ? off : 0;
            void *bi, *bw, *bb;
            void *di = up_off(e, a, inp, ni, o, &bi), *dw = up_off(e, a, w, nw, o, &bw);
            void *db = up_off(e, a, b, OC, o, &bb);
            void *bp = poisoned(e, a, no + o), *bo = poisoned(e, a, no + o);
            e->matmul_gelu_forward(e, buf_at(bp, o, a), buf_at(bo, o, a), di, dw, bias ? db : NULL, N, IC, OC);
            pre[k] = xmalloc(no * 8), out[k] = xmalloc(no * 8);
            e->download(e, pre[k], DT_F64, buf_at(bp, o, a), a, no);
            e->download(e, out[k], DT_F64, buf_at(bo, o, a), a, no);
            void *bufs[] = { bi, bw, bb, bp, bo };
            for (int i = 0; i < 5; i++)
                e->free(e, bufs[i]);
        }
        char what[96];
        snprintf(what, sizeof what, "matmul_gelu %dx%dx%d%s pre", N, IC, OC, off ? " unaligned" : "");
        expect_close(what, act, pre[1], pre[0], no, tol(act));
        snprintf(what, sizeof what, "matmul_gelu %dx%dx%d%s gelu", N, IC, OC, off ? " unaligned" : "");
        expect_close(what, act, out[1], out[0], no, tol(act));
        for (int k = 0; k < 2; k++)
            free(pre[k]), free(out[k]);
        free(inp), free(w), free(b);
    }
    r->destroy(r);
    g->destroy(g);
}
END_TEST

/* ---- matmul backward through GELU ---- */

/* matmul_gelu_backward against the oracle: dpre written over NaN, dweight
 * and dbias added to a prefill. inp = gelu(pre) is computed here and
 * uploaded to both, so the op is compared, not the forward's rounding. bf16
 * takes cuBLASLt's DGELU epilogue when IC % 8 == 0 and pre is 16-byte
 * aligned (counted), else the matmul and gelu.cu's in-place kernel; fp32
 * always the latter. A second pass makes the plans refuse DGELU and BGRADB
 * (ANATOMY_LT_REFUSE): the fallbacks in bf16 too. */
START_TEST(test_matmul_gelu_backward)
{
    dtype act = mode(_i);
    backend *r = oracle();
    /* N, IC, OC, bias, offset */
    static const int cases[][5] = {
        { 64, 64, 96, 1, 0 }, { 37, 40, 13, 1, 0 }, { 33, 20, 24, 1, 0 }, { 5, 24, 13, 0, 3 },
        { 130, 16, 8, 1, 8 }, { 7, 13, 5, 1, 0 },
    };
    seed("matmul_gelu_backward", _i);
    for (int refuse = 0; refuse < 2; refuse++) {
        if (refuse)
            setenv("ANATOMY_LT_REFUSE", "DGELU,BGRADB", 1);
        backend *g = gpu(act);
        unsetenv("ANATOMY_LT_REFUSE");
        for (int s = 0; s < 6; s++) {
            int N = cases[s][0], IC = cases[s][1], OC = cases[s][2], bias = cases[s][3], off = cases[s][4];
            size_t ni = (size_t)N * IC, nw = (size_t)OC * IC, no = (size_t)N * OC;
            double *pre = rnd(ni, 1.5, act), *w = rnd(nw, 1, act), *dout = rnd(no, 1, act), *h = xmalloc(ni * 8);
            for (size_t i = 0; i < ni; i++) {
                double x = pre[i];
                h[i] = in_type(0.5 * x * (1 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))), act);
            }
            double *got[2][3];
            double *p[3] = { NULL, NULL, NULL };
            unsigned long dgelu0 = mm_count(g, CUDA_MM_DGELU), bgrad0 = mm_count(g, CUDA_MM_BGRADB);
            for (int k = 0; k < 2; k++) {
                backend *e = k ? g : r;
                dtype a = e->act;
                int o = k ? off : 0;
                void *bp, *bh, *bw, *bd;
                void *dp = up_off(e, a, pre, ni, o, &bp), *dh = up_off(e, a, h, ni, o, &bh);
                void *dw = up_off(e, a, w, nw, o, &bw), *dd = up_off(e, a, dout, no, o, &bd);
                void *bdpre = poisoned(e, a, ni + o), *bgw = grad_buf(e, NULL, nw + o), *bgb = grad_buf(e, NULL, OC + o);
                void *gp = buf_at(bdpre, o, a), *gw = buf_at(bgw, o, a), *gb = buf_at(bgb, o, a);
                if (k) {
                    e->upload(e, gw, a, p[1], DT_F64, nw);
                    e->upload(e, gb, a, p[2], DT_F64, OC);
                }
                e->matmul_gelu_backward(e, gp, gw, bias ? gb : NULL, dd, dh, dp, dw, N, IC, OC);
                for (int j = 0; j < 3; j++)
                    got[k][j] = xmalloc((j == 0 ? ni : j == 1 ? nw : (size_t)OC) * 8);
                e->download(e, got[k][0], DT_F64, gp, a, ni);
                e->download(e, got[k][1], DT_F64, gw, a, nw);
                e->download(e, got[k][2], DT_F64, gb, a, OC);
                for (size_t i = 0; k && i < nw; i++)
                    got[k][1][i] -= p[1][i];
                for (int i = 0; k && i < OC; i++)
                    got[k][2][i] -= p[2][i];
                void *bufs[] = { bp, bh, bw, bd, bdpre, bgw, bgb };
                for (int i = 0; i < 7; i++)
                    e->free(e, bufs[i]);
                if (!k) {
                    p[0] = NULL;
                    p[1] = prefill_for(got[0][1], nw, act);
                    p[2] = prefill_for(got[0][2], OC, act);
                }
            }
            char what[112];
            const char *tag = off ? " unaligned" : refuse ? " (refused)" : "";
            snprintf(what, sizeof what, "matmul_gelu_backward %dx%dx%d%s dpre", N, IC, OC, tag);
            expect_close(what, act, got[1][0], got[0][0], ni, tol(act));
            int fused = !refuse && act == DT_BF16 && IC % 8 == 0 && (off * 2) % 16 == 0;
            fused_check(what, "DGELU", mm_count(g, CUDA_MM_DGELU) - dgelu0, fused);
            snprintf(what, sizeof what, "matmul_gelu_backward %dx%dx%d%s dweight", N, IC, OC, tag);
            expect_close(what, act, got[1][1], got[0][1], nw, tol(act));
            snprintf(what, sizeof what, "matmul_gelu_backward %dx%dx%d%s dbias", N, IC, OC, tag);
            if (bias)
                expect_close(what, act, got[1][2], got[0][2], OC, tol(act));
            for (int i = 0; !bias && i < OC; i++)
                ck_assert_msg(got[1][2][i] == 0.0, "dbias changed though NULL was passed");
            fused_check(what, "BGRADB", mm_count(g, CUDA_MM_BGRADB) - bgrad0, bias && !refuse);
            for (int k = 0; k < 2; k++)
                for (int j = 0; j < 3; j++)
                    free(got[k][j]);
            free(p[1]), free(p[2]), free(pre), free(w), free(dout), free(h);
        }
        g->destroy(g);
    }
    r->destroy(r);
}
END_TEST

/* ---- attention ---- */

static void att_run(backend *be, int B, int T, int C, int NH, int causal, const double *qkv,
                    const double *dout, const double *out_ref, const double *lse_ref, const double *p,
                    double *out, double *lse, double *dqkv)
{
    dtype a = be->act, st = be->stat;
    size_t n3 = (size_t)B * T * 3 * C, n1 = (size_t)B * T * C, nl = (size_t)B * NH * T;
    void *dq = up(be, a, qkv, n3), *o = poisoned(be, a, n1), *l = poisoned(be, st, nl);
    be->attention_forward(be, o, l, dq, B, T, C, NH, causal);
    take(be, o, a, NULL, n1, out);
    take(be, l, st, NULL, nl, lse);
    if (dqkv) { /* backward from the oracle's out and lse, so both see the same inputs */
        void *dy = up(be, a, dout, n1), *so = up(be, a, out_ref, n1), *sl = up(be, st, lse_ref, nl);
        void *gq = grad_buf(be, p, n3);
        be->attention_backward(be, gq, dy, dq, so, sl, B, T, C, NH, causal);
        take(be, gq, a, p, n3, dqkv);
        be->free(be, dy), be->free(be, so), be->free(be, sl);
    }
    be->free(be, dq);
}

/* One attention case: the CUDA backend's forward (out, lse) and backward (the
 * dqkv it adds) against the fp64 CPU oracle, on fresh random inputs. */
static void att_case(backend *r, backend *g, dtype act, int B, int T, int C, int NH, int causal)
{
    size_t n3 = (size_t)B * T * 3 * C, n1 = (size_t)B * T * C, nl = (size_t)B * NH * T;
    double *qkv = rnd(n3, 1, act), *dout = rnd(n1, 1, act);
    double *o[2], *l[2], *dq[2];
    for (int k = 0; k < 2; k++)
        o[k] = xmalloc(n1 * 8), l[k] = xmalloc(nl * 8), dq[k] = xmalloc(n3 * 8);
    att_run(r, B, T, C, NH, causal, qkv, dout, NULL, NULL, NULL, o[0], l[0], NULL);
    double *oref = xmalloc(n1 * 8);
    for (size_t i = 0; i < n1; i++) /* out as the act-typed tensor a backward is given */
        oref[i] = act == DT_BF16 ? bf16_round(o[0][i]) : (float)o[0][i];
    att_run(r, B, T, C, NH, causal, qkv, dout, oref, l[0], NULL, o[0], l[0], dq[0]);
    double *p = prefill_for(dq[0], n3, act);
    att_run(g, B, T, C, NH, causal, qkv, dout, oref, l[0], p, o[1], l[1], dq[1]);
    char what[96];
    const char *kind = causal ? "causal" : "full";
    snprintf(what, sizeof what, "attention %s B%d T%d C%d NH%d out", kind, B, T, C, NH);
    expect_close(what, act, o[1], o[0], n1, tol(act));
    snprintf(what, sizeof what, "attention %s B%d T%d C%d NH%d lse", kind, B, T, C, NH);
    expect_close(what, act, l[1], l[0], nl, tol(act));
    snprintf(what, sizeof what, "attention %s B%d T%d C%d NH%d dqkv", kind, B, T, C, NH);
    expect_close(what, act, dq[1], dq[0], n3, tol(act));
    for (int k = 0; k < 2; k++)
        free(o[k]), free(l[k]), free(dq[k]);
    free(qkv), free(dout), free(oref), free(p);
}

/* Head sizes other than 32/64/128 (and fp32 mode throughout) take the SIMT
 * kernels; bf16 with hs 32, 64, 128 the tensor-core (flash) kernels. */
START_TEST(test_attention)
{
    dtype act = mode(_i);
    backend *r = oracle(), *g = gpu(act);
    /* B T C NH: head sizes 16 and 8 (SIMT kernels in both modes), T under,
     * across and well past the SIMT kernels' 32-row chunks */
    static const int shapes[][4] = { { 2, 13, 32, 2 }, { 1, 33, 24, 3 }, { 2, 8, 64, 4 },
                                     { 1, 100, 16, 2 }, { 1, 161, 8, 1 } };
    seed("attention", _i);
    for (int s = 0; s < 5; s++)
        for (int causal = 0; causal < 2; causal++)
            att_case(r, g, act, shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], causal);
    /* the flash kernels' head sizes: T of one row, under a tile (17), across
     * tiles with a ragged end (100), and long rows: 1024 and 2048. The
     * emulator (minutes per long case) runs the long rows only as bf16,
     * T 1024, hs 32, causal, and fp32 mode (SIMT, covered at T 100 and 161
     * above) only up to T 17; a GPU runs every case. */
    /* bf16: both flash backwards (fused, then split), the emulator's long
     * rows with the fused one only */
    static const int hss[] = { 32, 64, 128 }, Ts[] = { 1, 17, 100, 1024, 2048 };
    static const char *const variants[] = { "fused", "split" };
    for (int v = 0; v < (act == DT_BF16 ? 2 : 1); v++) {
        ck_assert_int_eq(cuda_attention_set_backward(variants[v]), 0);
        backend *gv = v ? gpu(act) : g; /* a backend planned with the variant in force */
        for (int t = 0; t < 5; t++) {
            for (int k = 0; k < 3; k++) {
                for (int causal = 0; causal < 2; causal++) {
                    int T = Ts[t], hs = hss[k];
                    int emu_ok = act == DT_BF16 ? T < 1024 || (T == 1024 && hs == 32 && causal && !v) : T < 100;
                    if (!native_gpu() && !emu_ok)
                        continue;
                    int B = T >= 1024 ? 1 : 2, NH = T >= 1024 ? 1 + native_gpu() : 1 + (k & 1);
                    att_case(r, gv, act, B, T, NH * hs, NH, causal);
                }
            }
        }
        if (v)
            gv->destroy(gv);
    }
    cuda_attention_set_backward("fused");
    r->destroy(r);
    g->destroy(g);
}
END_TEST

/* The fused flash backward adds each key tile's dQ in a fixed order, so its
 * dqkv is the same bits in every run: on the emulator, across seeds (other
 * block start orders, thread orders and 1-4 blocks started at once, where
 * blocks really wait for each other) and with every block resident; on a GPU,
 * across repeated runs. hs 64 and 128 (query tiles of 64 and 32 rows). */
START_TEST(test_attention_deterministic)
{
    backend *r = oracle(), *g = gpu(DT_BF16);
    ck_assert_int_eq(cuda_attention_set_backward("fused"), 0);
    ck_assert_int_eq(cuda_attention_set_backward("fastest"), -1);
    seed("attention_deterministic", 0);
    static const int hss[] = { 64, 128 };
    for (int k = 0; k < 2; k++) {
        for (int causal = 0; causal < 2; causal++) {
            int B = 2, T = 150, NH = 2, C = NH * hss[k];
            size_t n3 = (size_t)B * T * 3 * C, n1 = (size_t)B * T * C, nl = (size_t)B * NH * T;
            double *qkv = rnd(n3, 1, DT_BF16), *dout = rnd(n1, 1, DT_BF16);
            double *o = xmalloc(n1 * 8), *l = xmalloc(nl * 8), *first = xmalloc(n3 * 8), *dq = xmalloc(n3 * 8);
            double *o2 = xmalloc(n1 * 8), *l2 = xmalloc(nl * 8), *pre = rnd(n3, 0.1, DT_BF16);
            att_run(r, B, T, C, NH, causal, qkv, dout, NULL, NULL, NULL, o, l, NULL);
            for (size_t i = 0; i < n1; i++) /* out as the bf16 tensor a backward is given */
                o[i] = bf16_round(o[i]);
            int runs = native_gpu() ? 4 : 5;
            for (int run = 0; run < runs; run++) {
                if (!native_gpu()) {
                    emu_set_seed(run == 0 ? 0 : (uint64_t)run * 7919);
                    emu_set_resident_blocks(run == runs - 1 ? 1 << 20 : 0); /* last: every block at once */
                }
                att_run(g, B, T, C, NH, causal, qkv, dout, o, l, pre, o2, l2, run ? dq : first);
                if (run)
                    ck_assert_msg(!memcmp(first, dq, n3 * 8),
                                  "fused backward hs %d %s: run %d differs from run 0 (not deterministic)",
                                  hss[k], causal ? "causal" : "full", run);
            }
            if (!native_gpu()) {
                emu_set_seed(1);
                emu_set_resident_blocks(0);
            }
            free(qkv), free(dout), free(o), free(l), free(first), free(dq), free(o2), free(l2), free(pre);
        }
    }
    printf("  fused flash backward: dqkv bit-identical across %s\n",
           native_gpu() ? "4 runs" : "5 emulator seeds and resident counts");
    r->destroy(r);
    g->destroy(g);
}
END_TEST

/* The flash kernels keep at least two blocks resident per SM at head sizes
 * 64 and 128 (an sm_90 SM: 64K registers, 228 KiB of shared memory), so that
 * one block's loads and barriers hide behind another's matmuls. Emulated,
 * from ptxas's register counts (make test-cuda passes build/cuda/ptxas.txt;
 * without nvcc there are none and the check says so); on a GPU, the
 * driver's occupancy calculator. */
START_TEST(test_flash_occupancy)
{
    backend *g = gpu(DT_BF16); /* the device, initialised */
    static const int hss[] = { 64, 128 };
    int unknown = 0;
    for (int k = 0; k < 2; k++) {
        for (int which = 0; which < 4; which++) {
            const char *name;
            int n = cuda_flash_occupancy(hss[k], which, &name);
            if (n < 0) {
                unknown++;
                continue;
            }
            printf("  %-26s %d resident blocks per SM\n", name, n);
            ck_assert_msg(n >= 2, "%s: %d resident block(s) per SM; registers x threads or shared memory "
                          "leave no room for a second", name, n);
        }
    }
    if (unknown) {
        const char *ptxas = getenv("ANATOMY_EMU_PTXAS");
        ck_assert_msg(!native_gpu() && !(ptxas && *ptxas),
                      "%d flash kernels have no occupancy figure (ANATOMY_EMU_PTXAS=%s)", unknown,
                      ptxas ? ptxas : "");
        printf("  flash occupancy: not checked, no ptxas register counts (nvcc not found)\n");
    }
    g->destroy(g);
}
END_TEST

/* ---- elementwise: gelu, residual, accumulate ---- */

/* op 0: gelu forward, 1: gelu backward, 2: residual, 3: accumulate; at
 * element offset off (1: every pointer 2 or 4 bytes off 16-byte alignment). */
static void ew_run(backend *be, int op, size_t n, int off, const double *x, const double *y,
                   const double *p, double *out)
{
    dtype a = be->act;
    void *bx, *by, *bo;
    void *dx = up_off(be, a, x, n, off, &bx), *dy = up_off(be, a, y, n, off, &by);
    int acc = op == 1 || op == 3;
    bo = acc ? grad_buf(be, NULL, n + off) : poisoned(be, a, n + off); /* += ops: from 0 or p */
    void *o = buf_at(bo, off, a);
    if (p)
        be->upload(be, o, a, p, DT_F64, n);
    switch (op) {
    case 0: be->gelu_forward(be, o, dx, n); break;
    case 1: be->gelu_backward(be, o, dx, dy, n); break;
    case 2: be->residual_forward(be, o, dx, dy, n); break;
    default: be->accumulate(be, o, dx, n);
    }
    be->download(be, out, DT_F64, o, a, n);
    for (size_t i = 0; p && i < n; i++)
        out[i] -= p[i];
    be->free(be, bx), be->free(be, by), be->free(be, bo);
}

START_TEST(test_elementwise)
{
    dtype act = mode(_i);
    backend *r = oracle(), *g = gpu(act);
    static const char *names[] = { "gelu_forward", "gelu_backward", "residual_forward", "accumulate" };
    seed("elementwise", _i);
    for (int op = 0; op < 4; op++) {
        for (int v = 0; v < 3; v++) {
            size_t n = v == 0 ? 4096 : v == 1 ? 1001 : 515; /* aligned; ragged tail; misaligned */
            int off = v == 2;
            double *x = rnd(n, 2, act), *y = rnd(n, 1, act), *o[2];
            o[0] = xmalloc(n * 8), o[1] = xmalloc(n * 8);
            int acc = op == 1 || op == 3;
            ew_run(r, op, n, off, x, y, NULL, o[0]);
            double *p = acc ? prefill_for(o[0], n, act) : NULL;
            ew_run(g, op, n, off, x, y, p, o[1]);
            char what[96];
            snprintf(what, sizeof what, "%s n=%zu%s", names[op], n, off ? " unaligned" : "");
            expect_close(what, act, o[1], o[0], n, tol(act));
            free(x), free(y), free(o[0]), free(o[1]), free(p);
        }
    }
    r->destroy(r);
    g->destroy(g);
}
END_TEST

/* ---- crossentropy ---- */

static void xent_run(backend *be, int N, int V, int Vp, float scale, int alias, int grad,
                     const double *logits, const int32_t *tg, double *loss, double *dl)
{
    dtype a = be->act;
    size_t nl = (size_t)N * Vp;
    void *x = up(be, a, logits, nl), *t = up_i32(be, tg, N), *l = poisoned(be, be->stat, N);
    void *d = grad ? (alias ? x : poisoned(be, a, nl)) : NULL;
    be->crossentropy(be, l, d, x, t, N, V, Vp, scale);
    take(be, l, be->stat, NULL, N, loss);
    if (d)
        be->download(be, dl, DT_F64, d, a, nl);
    if (d && d != x)
        be->free(be, d);
    be->free(be, x), be->free(be, t);
}

START_TEST(test_crossentropy)
{
    dtype act = mode(_i);
    backend *r = oracle(), *g = gpu(act);
    static const int shapes[][3] = { { 9, 50, 64 }, { 6, 37, 37 }, { 4, 300, 301 } }; /* N V Vp */
    seed("crossentropy", _i);
    for (int s = 0; s < 3; s++) {
        for (int alias = 0; alias < 2; alias++) {
            int N = shapes[s][0], V = shapes[s][1], Vp = shapes[s][2];
            size_t nl = (size_t)N * Vp;
            double *x = rnd(nl, 3, act), *l[2], *d[2];
            int32_t tg[16];
            for (int i = 0; i < N; i++)
                tg[i] = irand(4) ? irand(V) : -1;
            tg[0] = V - 1, tg[1] = -1;
            float scale = (float)(0.5 + urand());
            for (int k = 0; k < 2; k++)
                l[k] = xmalloc(N * 8), d[k] = xmalloc(nl * 8);
            xent_run(r, N, V, Vp, scale, alias, 1, x, tg, l[0], d[0]);
            xent_run(g, N, V, Vp, scale, alias, 1, x, tg, l[1], d[1]);
            char what[96];
            snprintf(what, sizeof what, "crossentropy N%d V%d Vp%d%s losses", N, V, Vp, alias ? " aliased" : "");
            expect_close(what, act, l[1], l[0], N, TOL_F32);
            snprintf(what, sizeof what, "crossentropy N%d V%d Vp%d%s dlogits", N, V, Vp, alias ? " aliased" : "");
            expect_close(what, act, d[1], d[0], nl, tol(act));
            for (int i = 0; i < N; i++) {
                for (int v = 0; v < Vp; v++)
                    if (v >= V || tg[i] < 0)
                        ck_assert_msg(d[1][(size_t)i * Vp + v] == 0.0, "dlogits[%d,%d] = %g, want 0", i, v,
                                      d[1][(size_t)i * Vp + v]);
                if (tg[i] < 0)
                    ck_assert_msg(l[1][i] == 0.0, "loss of ignored row %d is %g", i, l[1][i]);
            }
            /* losses alone: logits untouched */
            xent_run(g, N, V, Vp, scale, 0, 0, x, tg, l[1], NULL);
            expect_close("crossentropy losses without dlogits", act, l[1], l[0], N, TOL_F32);
            for (int k = 0; k < 2; k++)
                free(l[k]), free(d[k]);
            free(x);
        }
    }
    r->destroy(r);
    g->destroy(g);
}
END_TEST

/* ---- offsets past 2^31 elements ----
 * GPT-2 124M at B 64, T 1024 has 3.3e9 logits (B*T*Vp), more than a 32-bit
 * index reaches: every op must form row offsets in 64 bits. These cases put
 * the rows an op reads or writes past element 2^31 of its buffer with few
 * rows (the classifier: 514 rows of ~4.2M classes, only the last scored;
 * the encoder: a table of ~2^31 elements, tokens at its far end), at the odd
 * sizes too (an unpadded odd vocabulary, C not a multiple of 8: the scalar
 * paths). The buffers are mostly never touched (the host's zero pages; the
 * emulator leaves allocations of 1 GiB and more unfilled), so this costs
 * little memory; an offset that wraps reads or writes outside the buffer,
 * which the emulator reports and the CPU faults on. */

/* Only the last of N rows (at element (N-1)*Vp > 2^31) has a target. */
static void large_xent(backend *be, int V, int Vp)
{
    dtype a = be->act;
    int N = (int)(((size_t)1 << 31) / (size_t)Vp) + 2;
    size_t last = (size_t)(N - 1) * Vp;
    ck_assert(last > ((size_t)1 << 31));
    void *x = dalloc(be, a, (size_t)N * Vp);
    double *row = rnd((size_t)Vp, 3, a), *loss = xmalloc((size_t)N * sizeof(double));
    be->upload(be, buf_at(x, last, a), a, row, DT_F64, (size_t)Vp);
    int32_t *tg = xmalloc((size_t)N * sizeof *tg);
    for (int i = 0; i < N; i++)
        tg[i] = -1;
    tg[N - 1] = V - 1 - irand(7);
    void *t = up_i32(be, tg, (size_t)N), *l = poisoned(be, be->stat, (size_t)N);
    be->crossentropy(be, l, NULL, x, t, N, V, Vp, 1.0f);
    take(be, l, be->stat, NULL, (size_t)N, loss);
    double m = -INFINITY, sum = 0;
    for (int v = 0; v < V; v++)
        m = row[v] > m ? row[v] : m;
    for (int v = 0; v < V; v++)
        sum += exp(row[v] - m);
    double want = m + log(sum) - row[tg[N - 1]];
    ck_assert_msg(fabs(loss[N - 1] - want) <= 2e-3, "%s %s crossentropy V %d Vp %d, row %d at "
                  "element %zu: loss %.6f, want %.6f", be->name, dtype_name(a), V, Vp, N - 1, last,
                  loss[N - 1], want);
    for (int i = 0; i < N - 1; i++)
        ck_assert_msg(loss[i] == 0.0, "ignored row %d: loss %g", i, loss[i]);
    be->free(be, x), be->free(be, t);
    free(row), free(loss), free(tg);
}

/* A table of Vp rows of C, Vp * C > 2^31: tokens at its far end, forward
 * (out = wte[tok] + wpe[t]) and backward (dwte[tok] += dout). */
static void large_encoder(backend *be, int C)
{
    enum { B = 2, T = 3 };
    dtype a = be->act;
    int Vp = (int)(((size_t)1 << 31) / (size_t)C) + 64;
    int32_t tok[B * T] = { Vp - 1, 5, Vp - 2, Vp - 1, Vp - 40, 0 };
    size_t btc = (size_t)B * T * C;
    void *wte = dalloc(be, a, (size_t)Vp * C), *dwte = dalloc(be, a, (size_t)Vp * C);
    double *rows = rnd((size_t)B * T * C, 1, a), *wpe = rnd((size_t)T * C, 1, a);
    double *dout = rnd(btc, 1, a), *out = xmalloc(btc * sizeof(double));
    double *got = xmalloc((size_t)C * sizeof(double));
    for (int i = 0; i < B * T; i++) { /* a repeated token gets the later row; both see it */
        be->upload(be, buf_at(wte, (size_t)tok[i] * C, a), a, rows + (size_t)i * C, DT_F64,
                   (size_t)C);
        be->fill(be, buf_at(dwte, (size_t)tok[i] * C, a), a, 0.0, (size_t)C);
    }
    void *dpe = up(be, a, wpe, (size_t)T * C), *dtok = up_i32(be, tok, B * T);
    void *o = poisoned(be, a, btc);
    be->encoder_forward(be, o, dtok, wte, dpe, B, T, C);
    take(be, o, a, NULL, btc, out);
    for (int i = 0; i < B * T; i++) {
        int src = i; /* the row last uploaded for this token */
        for (int j = 0; j < B * T; j++)
            if (tok[j] == tok[i])
                src = j;
        for (int c = 0; c < C; c++) {
            double want = rows[(size_t)src * C + c] + wpe[(size_t)(i % T) * C + c];
            ck_assert_msg(fabs(out[(size_t)i * C + c] - want) <= 1e-2 * fabs(want) + 1e-6,
                          "%s %s encoder_forward C %d, token %d (row at element %zu): out[%d] "
                          "%g, want %g", be->name, dtype_name(a), C, tok[i], (size_t)tok[i] * C,
                          c, out[(size_t)i * C + c], want);
        }
    }
    void *dy = up(be, a, dout, btc), *dpe_g = dalloc(be, a, (size_t)T * C);
    be->fill(be, dpe_g, a, 0.0, (size_t)T * C);
    be->encoder_backward(be, dwte, dpe_g, dy, dtok, B, T, C);
    for (int i = 0; i < B * T; i++) {
        be->download(be, got, DT_F64, buf_at(dwte, (size_t)tok[i] * C, a), a, (size_t)C);
        for (int c = 0; c < C; c++) {
            double want = 0;
            for (int j = 0; j < B * T; j++)
                if (tok[j] == tok[i])
                    want += dout[(size_t)j * C + c];
            ck_assert_msg(fabs(got[c] - want) <= 1e-2 * fabs(want) + 1e-6,
                          "%s %s encoder_backward C %d, token %d: dwte[%d] %g, want %g",
                          be->name, dtype_name(a), C, tok[i], c, got[c], want);
        }
    }
    be->free(be, wte), be->free(be, dwte), be->free(be, dpe), be->free(be, dtok);
    be->free(be, dy), be->free(be, dpe_g);
    free(rows), free(wpe), free(dout), free(out), free(got);
}

START_TEST(test_large_offsets)
{
    dtype act = mode(_i);
    char err[512] = "";
    backend *bes[2] = { gpu(act), act == DT_F32 ? backend_cpu_create(0, err) : NULL };
    seed("large offsets", _i);
    for (int k = 0; k < 2 && bes[k]; k++) {
        /* odd and unpadded (scalar path); padded to a multiple of 8 (vector path) */
        large_xent(bes[k], (1 << 22) + 1, (1 << 22) + 1);
        large_xent(bes[k], (1 << 22) - 47, 1 << 22);
        large_encoder(bes[k], 12); /* C % 8 != 0 */
        large_encoder(bes[k], 16);
        bes[k]->destroy(bes[k]);
    }
}
END_TEST

/* ---- attention_decode ---- */

/* One new position of B sequences over caches of pos + 1 keys (the new k, v
 * written into each sequence's own cache first), against the CPU op: the
 * outputs and both caches, at short caches and at long ones whose scores
 * pass 48 KiB of shared memory with the kernel's static reduction array
 * (12,257 keys and more: such a launch needs the opt-in, and fails without it
 * on the hardware and on the emulator); with no prefix (GPT-2's sampling)
 * and with the first positions in a prefix shared by the sequences b of one
 * b % prefix_rows (tsgpt's paths), B a multiple of the prefix rows or not. */
START_TEST(test_attention_decode)
{
    dtype act = mode(_i);
    backend *r = oracle(), *g = gpu(act);
    seed("attention_decode", _i);
    static const int cases[][7] = { /* pos, C, NH, B, maxlen, prefix_rows, prefix_len */
        { 0, 16, 2, 1, 1, 0, 0 }, { 37, 64, 4, 3, 40, 0, 0 }, { 300, 24, 3, 2, 301, 0, 0 },
        { 12287, 8, 2, 1, 12290, 0, 0 }, { 20000, 8, 1, 1, 20001, 0, 0 },
        { 37, 64, 4, 7, 10, 3, 30 }, { 30, 64, 4, 6, 10, 3, 30 }, { 300, 24, 3, 4, 7, 2, 296 },
        { 12287, 8, 2, 3, 9, 2, 12280 } };
    for (int k = 0; k < (int)(sizeof cases / sizeof cases[0]); k++) {
        int pos = cases[k][0], C = cases[k][1], NH = cases[k][2], B = cases[k][3], maxlen = cases[k][4];
        int prows = cases[k][5], plen = cases[k][6];
        size_t nkv = (size_t)B * maxlen * 2 * C, nq = (size_t)B * 3 * C, no = (size_t)B * C;
        size_t npre = (size_t)prows * plen * 2 * C, nall = no + nkv + npre;
        double *kv = rnd(nkv, 1, act), *qkv = rnd(nq, 1, act), *pre = rnd(npre ? npre : 1, 1, act);
        double *want = xmalloc(nall * sizeof *want), *got = xmalloc(nall * sizeof *got);
        void *rk = up(r, DT_F64, kv, nkv), *rq = up(r, DT_F64, qkv, nq), *ro = dalloc(r, DT_F64, no);
        void *rp = plen ? up(r, DT_F64, pre, npre) : NULL;
        r->attention_decode(r, ro, rk, rq, B, pos, maxlen, rp, prows, plen, C, NH);
        take(r, ro, DT_F64, NULL, no, want);
        take(r, rk, DT_F64, NULL, nkv, want + no); /* take frees */
        if (rp)
            take(r, rp, DT_F64, NULL, npre, want + no + nkv);
        r->free(r, rq);
        void *gk = up(g, act, kv, nkv), *gq = up(g, act, qkv, nq), *go = poisoned(g, act, no);
        void *gp = plen ? up(g, act, pre, npre) : NULL;
        g->attention_decode(g, go, gk, gq, B, pos, maxlen, gp, prows, plen, C, NH);
        take(g, go, act, NULL, no, got);
        take(g, gk, act, NULL, nkv, got + no);
        if (gp)
            take(g, gp, act, NULL, npre, got + no + nkv);
        g->free(g, gq);
        double e = rel_l2(got, want, no), ek = rel_l2(got + no, want + no, nkv + npre);
        if (getenv("ANATOMY_TEST_VERBOSE"))
            printf("  %-5s attention_decode pos %d C %d NH %d B %d prefix %d x %d rel L2 %.3g, caches %.3g\n",
                   dtype_name(act), pos, C, NH, B, prows, plen, e, ek);
        ck_assert_msg(e <= tol(act), "attention_decode pos %d C %d NH %d B %d prefix %d x %d (%s): relative L2 "
                      "error %.3g", pos, C, NH, B, prows, plen, dtype_name(act), e);
        ck_assert_msg(ek <= tol(act), "attention_decode pos %d B %d prefix %d x %d (%s): the caches' relative L2 "
                      "error %.3g", pos, B, prows, plen, dtype_name(act), ek);
        free(kv), free(qkv), free(pre), free(want), free(got);
    }
    r->destroy(r);
    g->destroy(g);
}
END_TEST

/* ---- sumsq ---- */

START_TEST(test_sumsq)
{
    dtype act = mode(_i);
    backend *g = gpu(act);
    seed("sumsq", _i);
    static const size_t sizes[] = { 1, 31, 1000, 100003, 3000000 };
    for (int s = 0; s < 5; s++) {
        for (int off = 0; off < 2; off++) {
            size_t n = sizes[s];
            double *x = rnd(n, 1, act), want = 0;
            for (size_t i = 0; i < n; i++)
                want += x[i] * x[i];
            void *base;
            void *d = up_off(g, act, x, n, off, &base);
            double got = g->sumsq(g, d, n), again = g->sumsq(g, d, n);
            double e = fabs(got - want) / want;
            if (getenv("ANATOMY_TEST_VERBOSE"))
                printf("  %-5s sumsq n=%zu off=%d rel err %.3g\n", dtype_name(act), n, off, e);
            ck_assert_msg(e <= TOL_F32, "sumsq n=%zu: %.17g, want %.17g (rel %.3g)", n, got, want, e);
            ck_assert_msg(got == again, "sumsq is not deterministic: %.17g then %.17g", got, again);
            g->free(g, base);
            free(x);
        }
    }
    g->destroy(g);
}
END_TEST

/* ---- adamw ---- */

START_TEST(test_adamw)
{
    dtype act = mode(_i);
    backend *r = oracle(), *g = gpu(act);
    seed("adamw", _i);
    const size_t n = 3000;
    /* gaps at [700,750), [1950,2000), [2900,3000) must stay untouched */
    const param_segment segs[] = { { 0, 700, 1 }, { 750, 1200, 0 }, { 2000, 900, 1 }, { 2900, 0, 1 } };
    double *w0 = rnd(n, 1, DT_F32), *m0 = rnd(n, 0.01, DT_F32), *v0 = xmalloc(n * 8);
    for (size_t i = 0; i < n; i++)
        v0[i] = (float)(1e-4 * urand());
    int master = act != g->opt;
    void *rp = up(r, r->act, w0, n), *rm = up(r, r->opt, m0, n), *rv = up(r, r->opt, v0, n);
    void *gp = up(g, act, w0, n), *gw = master ? up(g, g->opt, w0, n) : NULL;
    void *gm = up(g, g->opt, m0, n), *gv = up(g, g->opt, v0, n);
    for (int step = 1; step <= 4; step++) {
        double *gr = rnd(n, 0.1 * step, act);
        for (int k = 0; k < 50; k++) /* some exact zeros */
            gr[irand((int)n)] = 0.0;
        adamw_params hp = { 1e-2f * step, 0.9f, 0.95f, 1e-8f, 0.1f, step, 0.7f, (uint32_t)rnext(), 0 };
        void *rg = up(r, r->act, gr, n), *gg = up(g, act, gr, n);
        r->adamw(r, rp, NULL, rg, rm, rv, segs, 4, &hp);
        g->adamw(g, gp, gw, gg, gm, gv, segs, 4, &hp);
        r->free(r, rg), g->free(g, gg);
        free(gr);
    }
    double *h[2][4];
    for (int k = 0; k < 2; k++)
        for (int j = 0; j < 4; j++)
            h[k][j] = xmalloc(n * 8);
    r->download(r, h[0][0], DT_F64, rp, r->act, n);
    r->download(r, h[0][2], DT_F64, rm, r->opt, n);
    r->download(r, h[0][3], DT_F64, rv, r->opt, n);
    g->download(g, h[1][0], DT_F64, master ? gw : gp, g->opt, n);
    g->download(g, h[1][1], DT_F64, gp, act, n);
    g->download(g, h[1][2], DT_F64, gm, g->opt, n);
    g->download(g, h[1][3], DT_F64, gv, g->opt, n);
    expect_close("adamw weights (fp32 master)", act, h[1][0], h[0][0], n, TOL_F32);
    expect_close("adamw params", act, h[1][1], h[0][0], n, tol(act));
    expect_close("adamw m", act, h[1][2], h[0][2], n, TOL_F32);
    expect_close("adamw v", act, h[1][3], h[0][3], n, TOL_F32);
    for (size_t i = 0; i < n; i++) {
        if ((i >= 700 && i < 750) || (i >= 1950 && i < 2000) || i >= 2900) {
            double want_p = act == DT_BF16 ? bf16_round(w0[i]) : w0[i];
            ck_assert_msg(h[1][0][i] == w0[i] && h[1][1][i] == want_p && h[1][2][i] == m0[i] &&
                              h[1][3][i] == v0[i],
                          "element %zu outside every segment was changed", i);
        } else if (act == DT_BF16) { /* params: master rounded down or up to bf16 */
            double p = h[1][1][i], w = h[1][0][i];
            ck_assert_msg(bf16_round(p) == p && fabs(p - w) < bf16_ulp(w),
                          "params[%zu] = %.9g is not a bf16 neighbour of %.9g", i, p, w);
        }
    }
    for (int k = 0; k < 2; k++)
        for (int j = 0; j < 4; j++)
            free(h[k][j]);
    r->free(r, rp), r->free(r, rm), r->free(r, rv);
    g->free(g, gp), g->free(g, gm), g->free(g, gv);
    if (gw)
        g->free(g, gw);
    free(w0), free(m0), free(v0);
    r->destroy(r);
    g->destroy(g);
}
END_TEST

/* Stochastic rounding of the bf16 params (master weights present): with
 * lr = 0 the master weights stay w, and the params must be a bf16 neighbour of
 * w whose mean over many elements is w (round-to-nearest would be off by the
 * fraction f of an ulp, hundreds of standard errors); the same seed gives the
 * same bits, another seed other bits. In fp32 the seed changes nothing. */
START_TEST(test_adamw_rounding)
{
    dtype act = mode(_i);
    backend *g = gpu(act);
    seed("adamw_rounding", _i);
    const size_t n = 1 << 15, groups = 4, per = n / groups;
    const param_segment segs[] = { { 0, n, 1 } };
    double *w = xmalloc(n * 8), *zero = xmalloc(n * 8), *out[3];
    double base[4], frac[4];
    for (size_t k = 0; k < groups; k++) { /* a bf16 value plus a random fraction of its ulp */
        base[k] = bf16_round((k & 1 ? -1 : 1) * (0.5 + urand()) * ldexp(1.0, irand(9) - 4));
        frac[k] = 0.1 + 0.8 * urand();
        double x = (float)(base[k] + (base[k] < 0 ? -1 : 1) * frac[k] * bf16_ulp(base[k]));
        for (size_t i = 0; i < per; i++)
            w[k * per + i] = x, zero[k * per + i] = 0;
    }
    uint32_t seeds[3] = { (uint32_t)rnext(), 0, 0 };
    seeds[1] = seeds[0], seeds[2] = seeds[0] ^ 0x5bd1e995u;
    for (int run = 0; run < 3; run++) {
        void *gp = up(g, act, w, n), *gw = act != g->opt ? up(g, g->opt, w, n) : NULL;
        void *gm = up(g, g->opt, zero, n), *gv = up(g, g->opt, zero, n), *gg = up(g, act, zero, n);
        adamw_params hp = { 0.0f, 0.9f, 0.95f, 1e-8f, 0.1f, 3, 1.0f, seeds[run], 0 };
        g->adamw(g, gp, gw, gg, gm, gv, segs, 1, &hp);
        out[run] = xmalloc(n * 8);
        g->download(g, out[run], DT_F64, gp, act, n);
        g->free(g, gp), g->free(g, gm), g->free(g, gv), g->free(g, gg);
        if (gw)
            g->free(g, gw);
    }
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(out[0][i] == out[1][i], "params[%zu]: %.9g then %.9g with the same seed", i, out[0][i],
                      out[1][i]);
    size_t differ = 0;
    for (size_t i = 0; i < n; i++)
        differ += out[0][i] != out[2][i];
    if (act == DT_F32) {
        for (size_t i = 0; i < n; i++)
            ck_assert_msg(out[0][i] == w[i] && out[2][i] == w[i], "fp32 params[%zu] = %.9g, want %.9g", i,
                          out[0][i], w[i]);
    } else {
        ck_assert_msg(differ > n / 10, "another seed changed only %zu of %zu roundings", differ, n);
        for (size_t k = 0; k < groups; k++) {
            double ulp = bf16_ulp(base[k]), x = w[k * per], mean = 0;
            for (size_t i = k * per; i < (k + 1) * per; i++) {
                ck_assert_msg(bf16_round(out[0][i]) == out[0][i] && fabs(out[0][i] - x) < ulp,
                              "params[%zu] = %.9g is not a bf16 neighbour of %.9g", i, out[0][i], x);
                mean += out[0][i];
            }
            mean /= (double)per;
            double se = ulp * sqrt(frac[k] * (1 - frac[k]) / (double)per);
            if (getenv("ANATOMY_TEST_VERBOSE"))
                printf("  bf16 stochastic rounding of %.9g: mean off by %.3g ulp (%.2f s.e.)\n", x,
                       (mean - x) / ulp, fabs(mean - x) / se);
            ck_assert_msg(fabs(mean - x) <= 5 * se, "rounding %.9g: mean %.9g is %.1f standard errors off", x,
                          mean, fabs(mean - x) / se);
        }
    }
    for (int run = 0; run < 3; run++)
        free(out[run]);
    free(w), free(zero);
    g->destroy(g);
}
END_TEST

/* params_from_master, a resumed run's start: after some AdamW steps the
 * params are overwritten, and the op must rebuild them from the master
 * weights bit for bit as the last step left them (its stochastic rounding),
 * inside the segments only, from a ZeRO shard's master too; without master
 * weights (fp32) it leaves the params alone. */
START_TEST(test_params_from_master)
{
    dtype act = mode(_i);
    backend *g = gpu(act);
    seed("params_from_master", _i);
    const size_t n = 5000, lo = 1200;
    const param_segment segs[] = { { 0, 700, 1 }, { 750, 1200, 0 }, { 2000, 2900, 1 } };
    const param_segment cut[] = { { lo, 750, 0 }, { 2000, 2900, 1 } }; /* from lo on */
    ck_assert_ptr_nonnull(g->params_from_master);
    double *w0 = rnd(n, 1, DT_F32), *zero = xmalloc(n * 8), *want = xmalloc(n * 8);
    double *got = xmalloc(n * 8), *w = xmalloc(n * 8);
    for (size_t i = 0; i < n; i++)
        zero[i] = 0;
    int master = act != g->opt;
    void *gp = up(g, act, w0, n), *gw = master ? up(g, g->opt, w0, n) : NULL;
    void *gm = up(g, g->opt, zero, n), *gv = up(g, g->opt, zero, n);
    uint32_t sd = (uint32_t)rnext();
    int steps = 1 + irand(4);
    for (int step = 1; step <= steps; step++) {
        double *gr = rnd(n, 0.1, act);
        adamw_params hp = { 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, step, 1.0f, sd, 0 };
        void *gg = up(g, act, gr, n);
        g->adamw(g, gp, gw, gg, gm, gv, segs, 3, &hp);
        g->free(g, gg);
        free(gr);
    }
    g->download(g, want, DT_F64, gp, act, n);
    if (master)
        g->download(g, w, DT_F64, gw, g->opt, n);
    adamw_params hp = { .step = steps, .seed = sd };
    for (int shard = 0; shard < 2; shard++) {
        g->fill(g, gp, act, -3.0, n);
        if (!shard) {
            g->params_from_master(g, gp, gw, segs, 3, &hp);
        } else { /* the master of elements [lo, n) only */
            void *sw = master ? up(g, g->opt, w + lo, n - lo) : NULL;
            hp.state_offset = lo;
            g->params_from_master(g, gp, sw, cut, 2, &hp);
            if (sw)
                g->free(g, sw);
        }
        g->download(g, got, DT_F64, gp, act, n);
        for (size_t i = 0; i < n; i++) {
            int in = (i < 700 || (i >= 750 && i < 1950) || (i >= 2000 && i < 4900)) && (!shard || i >= lo);
            double exp = master && in ? want[i] : -3.0;
            ck_assert_msg(got[i] == exp, "params_from_master (shard %d) params[%zu] = %.9g, want %.9g", shard,
                          i, got[i], exp);
        }
    }
    /* another step's rounding is another: the step is in the bits */
    if (master) {
        hp = (adamw_params){ .step = steps + 1, .seed = sd };
        g->params_from_master(g, gp, gw, segs, 3, &hp);
        g->download(g, got, DT_F64, gp, act, n);
        size_t differ = 0;
        for (size_t i = 0; i < n; i++)
            differ += got[i] != want[i];
        ck_assert_msg(differ > n / 10, "the rounding of step %d equals step %d's in all but %zu", steps + 1,
                      steps, differ);
    }
    g->free(g, gp), g->free(g, gm), g->free(g, gv);
    if (gw)
        g->free(g, gw);
    free(w0), free(zero), free(want), free(got), free(w);
    g->destroy(g);
}
END_TEST

/* ---- plan: scratch reserved before the first step ---- */

/* The plan entry reserves scratch for real shapes and refuses impossible
 * ones with an error naming the memory, leaving the backend usable. */
START_TEST(test_plan)
{
    dtype act = mode(_i);
    backend *g = gpu(act);
    seed("plan", _i);
    char err[512] = "";
    ck_assert_ptr_nonnull(g->plan);
    int B = 1 + irand(4), T = 8 * (1 + irand(8));
    ck_assert_msg(g->plan(g, B, T, 64, 4, 100, err) == 0, "plan %d x %d: %s", B, T, err);
    ck_assert_msg(g->plan(g, 1 << 15, 1 << 15, 64, 64, 100, err) == -1, "a 2^30-token plan succeeded");
    ck_assert_msg(strstr(err, "GiB") && strstr(err, "--batch"), "plan error does not name the memory: %s", err);
    double *x = rnd(100, 1, act);
    void *d = up(g, act, x, 100);
    ck_assert(g->sumsq(g, d, 100) > 0);
    g->free(g, d);
    free(x);
    g->destroy(g);
}
END_TEST

/* ---- the whole GPT-2 ---- */

static const gpt2_config tiny = { .V = 100, .maxT = 16, .L = 2, .NH = 2, .C = 32 };

static model *make_model(backend *be, const float *params)
{
    char err[512] = "";
    model *m = gpt2_create(be, &tiny, err);
    ck_assert_msg(m != NULL, "gpt2_create on %s: %s", be->name, err);
    ck_assert_msg(m->plan(m, 2, 16, err) == 0, "plan on %s: %s", be->name, err);
    model_set_params(m, params);
    return m;
}

static void batch(int32_t *in, int32_t *tg, int n)
{
    for (int i = 0; i < n; i++) {
        in[i] = irand(tiny.V);
        tg[i] = irand(6) ? irand(tiny.V) : -1;
    }
    tg[0] = 1;
}

/* One training step as host/train.c takes it (clip at norm 1). Returns the loss. */
static double train_step(model *m, const int32_t *in, const int32_t *tg, int step)
{
    backend *be = m->be;
    model_zero_grad(m);
    double loss = m->forward(m, &(model_batch){ .tokens = in, .targets = tg }, 1.0f);
    m->backward(m);
    double norm = sqrt(be->sumsq(be, m->grads, m->nparams));
    adamw_params hp = { 3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, step, norm > 1.0 ? (float)(1.0 / norm) : 1.0f, 7, 0 };
    be->adamw(be, m->params, m->master, m->grads, m->m, m->v, m->segs, m->nsegs, &hp);
    be->sync(be);
    return loss;
}

/* ---- profiler ranges ---- */

static struct {
    void (*inner)(backend *be, const char *name, int push);
    int depth, max_depth, pushes, pops, bad;
    char names[64][48];
} rg;

/* Counts pushes and pops (and checks nesting) on the way to the backend's hook. */
static void counting_range(backend *be, const char *name, int push)
{
    if (push) {
        if (rg.pushes < 64)
            snprintf(rg.names[rg.pushes], sizeof rg.names[0], "%s", name);
        rg.pushes++;
        if (++rg.depth > rg.max_depth)
            rg.max_depth = rg.depth;
    } else {
        rg.pops++;
        rg.bad += --rg.depth < 0;
    }
    rg.inner(be, name, push);
}

/* A forward and backward of the model push one range per phase and one per
 * layer in each, all nested two deep and all closed; the CUDA hook takes them. */
START_TEST(test_ranges)
{
    dtype act = mode(_i);
    backend *g = gpu(act);
    seed("ranges", _i);
    ck_assert_ptr_nonnull(g->range);
    memset(&rg, 0, sizeof rg);
    rg.inner = g->range;
    g->range = counting_range;
    param_view *views;
    int nviews;
    size_t np = gpt2_layout(&tiny, &views, &nviews);
    float *p0 = xmalloc(np * sizeof(float));
    gpt2_init_params(&tiny, p0, rnext());
    model *m = make_model(g, p0);
    int32_t in[32], tg[32];
    batch(in, tg, 32);
    model_zero_grad(m);
    m->forward(m, &(model_batch){ .tokens = in, .targets = tg }, 1.0f);
    m->backward(m);
    g->sync(g);
    ck_assert_int_eq(rg.pushes, 2 * (1 + tiny.L));
    ck_assert_int_eq(rg.pops, rg.pushes);
    ck_assert_int_eq(rg.depth, 0);
    ck_assert_int_eq(rg.bad, 0);
    ck_assert_int_eq(rg.max_depth, 2);
    ck_assert_str_eq(rg.names[0], "forward");
    ck_assert_str_eq(rg.names[1], "layer 0 forward");
    ck_assert_str_eq(rg.names[1 + tiny.L], "backward");
    ck_assert_str_eq(rg.names[2 + tiny.L], "layer 1 backward");
    m->destroy(m);
    free(p0), free(views);
    g->destroy(g);
}
END_TEST

START_TEST(test_gpt2)
{
    dtype act = mode(_i);
    backend *r = oracle(), *g = gpu(act);
    seed("gpt2", _i);
    double tol_loss = act == DT_BF16 ? 1e-2 : 1e-5, tol_grad = act == DT_BF16 ? 5e-2 : 1e-4;
    param_view *views;
    int nviews, n = 2 * 16;
    size_t np = gpt2_layout(&tiny, &views, &nviews);
    float *p0 = xmalloc(np * sizeof(float));
    gpt2_init_params(&tiny, p0, rnext());
    model *mr = make_model(r, p0), *mg = make_model(g, p0);
    ck_assert_int_eq((int)mr->nparams, (int)np);
    int32_t in[32], tg[32];
    batch(in, tg, n);

    /* loss and every gradient */
    model_zero_grad(mr), model_zero_grad(mg);
    double lr_ = mr->forward(mr, &(model_batch){ .tokens = in, .targets = tg }, 1.0f), lg = mg->forward(mg, &(model_batch){ .tokens = in, .targets = tg }, 1.0f);
    unsigned long dgelu0 = mm_count(g, CUDA_MM_DGELU), bgrad0 = mm_count(g, CUDA_MM_BGRADB);
    mr->backward(mr), mg->backward(mg);
    /* the model's backward takes the fused paths: GELU' in the fc-proj
     * matmul of each layer (bf16), every biased matmul's dbias by BGRADB */
    fused_check("gpt2 backward", "DGELU", mm_count(g, CUDA_MM_DGELU) - dgelu0,
                act == DT_BF16 ? (unsigned long)tiny.L : 0);
    fused_check("gpt2 backward", "BGRADB", mm_count(g, CUDA_MM_BGRADB) - bgrad0, 4ul * tiny.L);
    double e = fabs(lg - lr_) / fabs(lr_);
    if (getenv("ANATOMY_TEST_VERBOSE"))
        printf("  %-5s gpt2 loss %.9g vs %.9g: rel %.3g\n", dtype_name(act), lg, lr_, e);
    ck_assert_msg(e <= tol_loss, "gpt2 loss %.9g, oracle %.9g (rel %.3g)", lg, lr_, e);
    double *gr = xmalloc(np * 8), *gg = xmalloc(np * 8);
    r->download(r, gr, DT_F64, mr->grads, r->act, np);
    g->download(g, gg, DT_F64, mg->grads, act, np);
    for (int v = 0; v < nviews; v++) {
        const param_view *pv = &views[v];
        if (strcmp(pv->name, "wte.weight") == 0) { /* padded rows: gradient exactly 0 */
            size_t real = (size_t)tiny.V * tiny.C;
            for (size_t i = real; i < pv->count; i++)
                ck_assert_msg(gg[pv->offset + i] == 0.0, "padded wte row has gradient %g", gg[pv->offset + i]);
        }
        char what[96];
        snprintf(what, sizeof what, "gpt2 grad %s", pv->name);
        expect_close(what, act, gg + pv->offset, gr + pv->offset, pv->count, tol_grad);
    }
    expect_close("gpt2 all gradients", act, gg, gr, np, tol_grad);

    /* 10 AdamW steps on fresh batches: losses along the way, weights at the end */
    for (int step = 1; step <= 10; step++) {
        batch(in, tg, n);
        double a = train_step(mr, in, tg, step), b = train_step(mg, in, tg, step);
        double el = fabs(b - a) / fabs(a);
        if (getenv("ANATOMY_TEST_VERBOSE"))
            printf("  %-5s gpt2 step %d loss %.9g vs %.9g: rel %.3g\n", dtype_name(act), step, b, a, el);
        ck_assert_msg(el <= tol_loss, "step %d: loss %.9g, oracle %.9g (rel %.3g)", step, b, a, el);
    }
    float *wr = xmalloc(np * sizeof(float)), *wg = xmalloc(np * sizeof(float));
    model_get_params(mr, wr);
    model_get_params(mg, wg);
    for (size_t i = 0; i < np; i++) { /* what the steps changed */
        gr[i] = (double)wr[i] - p0[i];
        gg[i] = (double)wg[i] - p0[i];
    }
    expect_close("gpt2 weight change over 10 AdamW steps", act, gg, gr, np, act == DT_BF16 ? 0.1 : 1e-3);
    free(wr), free(wg), free(gr), free(gg), free(p0), free(views);
    mr->destroy(mr), mg->destroy(mg);
    r->destroy(r);
    g->destroy(g);
}
END_TEST

/* Three cases, so that one can be chosen with CK_RUN_CASE (build/gpu/run.sh
 * runs "ops" under compute-sanitizer): every op but attention; the fused
 * attention; whole GPT-2 models against the CPU. */
static Suite *cuda_suite(void)
{
    Suite *s = suite_create("cuda_ops");
    TCase *ops = tcase_create("ops"), *att = tcase_create("attention"), *model = tcase_create("gpt2");
    tcase_set_timeout(ops, 300);
    tcase_set_timeout(att, 300);
    tcase_set_timeout(model, 300);
    tcase_add_loop_test(ops, test_transfers, 0, 2);
    tcase_add_loop_test(ops, test_encoder, 0, 2);
    tcase_add_loop_test(ops, test_layernorm, 0, 2);
    tcase_add_loop_test(ops, test_residual_layernorm, 0, 2);
    tcase_add_loop_test(ops, test_matmul, 0, 2);
    tcase_add_loop_test(ops, test_matmul_gelu, 0, 2);
    tcase_add_loop_test(ops, test_matmul_gelu_backward, 0, 2);
    tcase_add_loop_test(ops, test_matmul_bias_alignment, 0, 2);
    tcase_add_loop_test(att, test_attention, 0, 2);
    tcase_add_loop_test(att, test_attention_decode, 0, 2);
    tcase_add_test(att, test_flash_occupancy);
    tcase_add_test(att, test_attention_deterministic);
    tcase_add_loop_test(ops, test_elementwise, 0, 2);
    tcase_add_loop_test(ops, test_crossentropy, 0, 2);
    tcase_add_loop_test(ops, test_large_offsets, 0, 2);
    tcase_add_loop_test(ops, test_sumsq, 0, 2);
    tcase_add_loop_test(ops, test_adamw, 0, 2);
    tcase_add_loop_test(ops, test_adamw_rounding, 0, 2);
    tcase_add_loop_test(ops, test_params_from_master, 0, 2);
    tcase_add_loop_test(ops, test_plan, 0, 2);
    tcase_add_loop_test(model, test_gpt2, 0, 2);
    tcase_add_loop_test(ops, test_ranges, 0, 2);
    suite_add_tcase(s, ops);
    suite_add_tcase(s, att);
    suite_add_tcase(s, model);
    return s;
}

int main(void)
{
    test_seed_init("test_cuda_ops");
    SRunner *sr = srunner_create(cuda_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
