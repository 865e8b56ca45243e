/* test_ops_norm.c: the first rung of the test ladder for batch normalisation
 * (ops.h batchnorm_forward, residual_batchnorm_forward, batchnorm_backward)
 * on the CPU: the forward in training and in evaluation mode, the saved
 * statistics and the running estimates against a plain double reference;
 * the backward of both modes against central differences in double
 * precision (the fp64 build); the fp32 build against the fp64 one; the
 * fused residual form against the two steps; results independent of the
 * thread count. (PyTorch's own BatchNorm1d is the reference of
 * tests/ref/test_batchnorm_vs_torch.py.)
 *
 * Gradient checks: objective L = sum(out * R) for a random R, which is also
 * the dout given to the backward. Gradient buffers start from random values
 * and what the backward ADDED is compared, so += is checked, not assumed;
 * outputs start as NaN, so every element must be written. Inputs are fresh
 * random numbers every run (a random per-column offset and scale, so that
 * the statistics matter); the seed is printed and ANATOMY_TEST_SEED=<n>
 * replays it. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../kernels/ops.h"
#include "gradcheck.h"
#include "testrand.h"

#define FD_H 1e-6
#define GRAD_TOL 1e-6 /* relative L2, analytical vs central difference, fp64 */
#define F32_TOL 1e-5  /* relative L2, fp32 backend vs fp64 backend */
#define REF_TOL 1e-12 /* relative L2, fp64 backend vs the reference here */
#define MOMENTUM 0.1f

static double rel_l2(const double *a, const double *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (a[i] != a[i] || ref[i] != ref[i])
            return INFINITY; /* NaN never passes */
        num += (a[i] - ref[i]) * (a[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void expect_close(const char *what, const double *got, const double *ref, size_t n,
                         double limit)
{
    double e = rel_l2(got, ref, n);
    ck_assert_msg(e <= limit, "%s: relative L2 error %.3g exceeds %.0e", what, e, limit);
}

static backend *mk(int fp64, int threads)
{
    char err[256] = "";
    backend *be = fp64 ? backend_cpu64_create(threads, err) : backend_cpu_create(threads, err);
    ck_assert_msg(be != NULL, "backend: %s", err);
    return be;
}

static void *up(backend *be, dtype t, const double *h, size_t n)
{
    void *d = be->alloc(be, (n ? n : 1) * dtype_size(t));
    ck_assert_ptr_nonnull(d);
    if (h)
        be->upload(be, d, t, h, DT_F64, n);
    else
        be->fill(be, d, t, NAN, n);
    return d;
}

static void down(backend *be, const void *d, dtype t, size_t n, double *out)
{
    be->download(be, out, DT_F64, d, t, n);
}

/* One case: x [N,C] (each column with its own offset and scale), gain,
 * bias (NULL: none), running estimates, the objective's weights R. All
 * rounded to float so that both CPU builds see the same numbers. */
typedef struct {
    int N, C, train, nobias;
    double *x, *w, *b, *rm, *rv, *R;
} bn_case;

static double rf(double v) { return (float)v; }

static bn_case make_case(int N, int C, int train, int nobias)
{
    bn_case c = { N, C, train, nobias, NULL, NULL, NULL, NULL, NULL, NULL };
    size_t n = (size_t)N * C;
    c.x = xmalloc(n * sizeof *c.x);
    c.R = xmalloc(n * sizeof *c.R);
    c.w = xmalloc((size_t)C * sizeof *c.w);
    c.b = nobias ? NULL : xmalloc((size_t)C * sizeof *c.b);
    c.rm = xmalloc((size_t)C * sizeof *c.rm);
    c.rv = xmalloc((size_t)C * sizeof *c.rv);
    for (int j = 0; j < C; j++) {
        double off = 3 * nrand(), sc = 0.2 + 2 * urand();
        for (int i = 0; i < N; i++)
            c.x[(size_t)i * C + j] = rf(off + sc * nrand());
        c.w[j] = rf(1 + 0.5 * nrand());
        if (c.b)
            c.b[j] = rf(0.5 * nrand());
        c.rm[j] = rf(off + 0.3 * nrand()); /* near, not at, the batch's statistics */
        c.rv[j] = rf(sc * sc * (0.5 + urand()));
    }
    for (size_t i = 0; i < n; i++)
        c.R[i] = rf(nrand());
    return c;
}

static void free_case(bn_case *c)
{
    free(c->x);
    free(c->R);
    free(c->w);
    free(c->b);
    free(c->rm);
    free(c->rv);
}

/* The reference: out, mean, rstd and the running estimates after the forward. */
static void ref_forward(const bn_case *c, double *out, double *mean, double *rstd, double *rm,
                        double *rv)
{
    int N = c->N, C = c->C;
    double mom = MOMENTUM;
    for (int j = 0; j < C; j++) {
        double m = 0, v = 0;
        if (c->train) {
            for (int i = 0; i < N; i++)
                m += c->x[(size_t)i * C + j];
            m /= N;
            for (int i = 0; i < N; i++)
                v += (c->x[(size_t)i * C + j] - m) * (c->x[(size_t)i * C + j] - m);
            v /= N;
            rm[j] = (1 - mom) * c->rm[j] + mom * m;
            rv[j] = (1 - mom) * c->rv[j] + mom * v * N / (N - 1);
        } else {
            m = c->rm[j];
            v = c->rv[j];
            rm[j] = c->rm[j];
            rv[j] = c->rv[j];
        }
        mean[j] = m;
        rstd[j] = 1 / sqrt(v + 1e-5);
        for (int i = 0; i < N; i++) {
            size_t k = (size_t)i * C + j;
            out[k] = (c->x[k] - m) * rstd[j] * c->w[j] + (c->b ? c->b[j] : 0);
        }
    }
}

/* Runs the forward on be (fused: as residual_batchnorm_forward of x split
 * into two random parts) into out [N*C], mean, rstd, rm, rv [C]; with dx,
 * dw, db not NULL, the backward from R too, giving what it added to random
 * prior gradients. */
static void run(backend *be, const bn_case *c, int fused, double *out, double *mean,
                double *rstd, double *rm, double *rv, double *dx, double *dw, double *db)
{
    dtype t = be->act, st = be->stat;
    size_t n = (size_t)c->N * c->C, C = (size_t)c->C;
    void *x = up(be, t, c->x, n), *w = up(be, t, c->w, C);
    void *b = c->b ? up(be, t, c->b, C) : NULL;
    void *drm = up(be, st, c->rm, C), *drv = up(be, st, c->rv, C);
    void *y = up(be, t, NULL, n), *dm = up(be, st, NULL, C), *ds = up(be, st, NULL, C);
    void *res = NULL, *pa = NULL, *pb = NULL;
    if (fused) {
        double *a = xmalloc(n * sizeof *a), *bb = xmalloc(n * sizeof *bb);
        for (size_t i = 0; i < n; i++) {
            /* a within [x/2, x]: b = x - a is exact (Sterbenz), so a + b = x in
             * float as in double */
            a[i] = rf(c->x[i] * (0.5 + 0.5 * urand()));
            bb[i] = c->x[i] - a[i];
        }
        pa = up(be, t, a, n);
        pb = up(be, t, bb, n);
        res = up(be, t, NULL, n);
        free(a);
        free(bb);
        be->residual_batchnorm_forward(be, res, y, dm, ds, drm, drv, pa, pb, w, b, MOMENTUM,
                                       c->train, c->N, c->C);
        double *r = xmalloc(n * sizeof *r);
        down(be, res, t, n, r);
        double *xs = xmalloc(n * sizeof *xs);
        down(be, x, t, n, xs);
        for (size_t i = 0; i < n; i++)
            ck_assert_msg(r[i] == xs[i], "res_out[%zu] = %g, a + b = %g", i, r[i], xs[i]);
        free(r);
        free(xs);
    } else {
        be->batchnorm_forward(be, y, dm, ds, drm, drv, x, w, b, MOMENTUM, c->train, c->N,
                              c->C);
    }
    down(be, y, t, n, out);
    down(be, dm, st, C, mean);
    down(be, ds, st, C, rstd);
    down(be, drm, st, C, rm);
    down(be, drv, st, C, rv);
    if (dx) {
        double *px = xmalloc(n * sizeof *px), *pw = xmalloc(C * sizeof *pw),
               *pbias = xmalloc(C * sizeof *pbias);
        for (size_t i = 0; i < n; i++)
            px[i] = rf(nrand());
        for (size_t i = 0; i < C; i++) {
            pw[i] = rf(nrand());
            pbias[i] = rf(nrand());
        }
        void *gx = up(be, t, px, n), *gw = up(be, t, pw, C);
        void *gb = c->b ? up(be, t, pbias, C) : NULL, *dy = up(be, t, c->R, n);
        be->batchnorm_backward(be, gx, gw, gb, dy, fused ? res : x, w, dm, ds, c->train, c->N,
                               c->C);
        down(be, gx, t, n, dx);
        down(be, gw, t, C, dw);
        for (size_t i = 0; i < n; i++)
            dx[i] -= px[i];
        for (size_t i = 0; i < C; i++)
            dw[i] -= pw[i];
        if (gb) {
            down(be, gb, t, C, db);
            for (size_t i = 0; i < C; i++)
                db[i] -= pbias[i];
            be->free(be, gb);
        }
        be->free(be, gx);
        be->free(be, gw);
        be->free(be, dy);
        free(px);
        free(pw);
        free(pbias);
    }
    void *bufs[] = { x, w, b, drm, drv, y, dm, ds, res, pa, pb };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i])
            be->free(be, bufs[i]);
}

static double objective(backend *be, const bn_case *c)
{
    size_t n = (size_t)c->N * c->C, C = (size_t)c->C;
    double *out = xmalloc(n * sizeof *out), *s = xmalloc(4 * C * sizeof *s), L = 0;
    run(be, c, 0, out, s, s + C, s + 2 * C, s + 3 * C, NULL, NULL, NULL);
    for (size_t i = 0; i < n; i++)
        L += out[i] * c->R[i];
    free(out);
    free(s);
    return L;
}

/* fd_gradient's view of objective: at the case's inputs as they stand */
typedef struct { backend *be; const bn_case *c; } case_at;
static double objective_at(void *ctx)
{
    case_at *a = ctx;
    return objective(a->be, a->c);
}

static const struct { int N, C; } shapes[] = { { 2, 3 }, { 7, 5 }, { 33, 70 }, { 130, 9 } };

/* _i: shape (4) x mode (train, eval) x bias (with, without). */
START_TEST(test_forward_reference)
{
    seed("forward", _i);
    int N = shapes[_i % 4].N, C = shapes[_i % 4].C, train = (_i / 4) % 2 == 0,
        nobias = _i >= 8;
    bn_case c = make_case(N, C, train, nobias);
    size_t n = (size_t)N * C;
    double *ref = xmalloc((n + 4 * (size_t)C) * sizeof *ref);
    double *got = xmalloc((n + 4 * (size_t)C) * sizeof *got);
    ref_forward(&c, ref, ref + n, ref + n + C, ref + n + 2 * C, ref + n + 3 * C);
    for (int fp64 = 1; fp64 >= 0; fp64--)
        for (int fused = 0; fused < 2; fused++) {
            backend *be = mk(fp64, 0);
            run(be, &c, fused, got, got + n, got + n + C, got + n + 2 * C, got + n + 3 * C,
                NULL, NULL, NULL);
            double tol = fp64 ? REF_TOL : F32_TOL;
            expect_close("out", got, ref, n, tol);
            expect_close("mean", got + n, ref + n, C, tol);
            expect_close("rstd", got + n + C, ref + n + C, C, tol);
            expect_close("running_mean", got + n + 2 * C, ref + n + 2 * C, C, tol);
            expect_close("running_var", got + n + 3 * C, ref + n + 3 * C, C, tol);
            if (!train) /* evaluation leaves the running estimates exactly as they were */
                for (int j = 0; j < C; j++)
                    ck_assert(got[n + 2 * C + j] == c.rm[j] && got[n + 3 * C + j] == c.rv[j]);
            be->destroy(be);
        }
    free(ref);
    free(got);
    free_case(&c);
}
END_TEST

/* The backward against central differences of L = sum(out * R) in fp64, in
 * both modes (training: through the batch statistics), with and without
 * bias; then the fp32 build against the fp64 one. */
START_TEST(test_backward_gradcheck)
{
    seed("backward", _i);
    int N = shapes[_i % 2].N + 3, C = shapes[_i % 2].C, train = (_i / 2) % 2 == 0,
        nobias = _i >= 4;
    bn_case c = make_case(N, C, train, nobias);
    size_t n = (size_t)N * C;
    double *out = xmalloc(n * sizeof *out), *s = xmalloc(4 * (size_t)C * sizeof *s);
    double *dx = xmalloc(n * sizeof *dx), *dw = xmalloc((size_t)C * sizeof *dw),
           *db = xmalloc((size_t)C * sizeof *db);
    double *fx = xmalloc(n * sizeof *fx), *fw = xmalloc((size_t)C * sizeof *fw),
           *fb = xmalloc((size_t)C * sizeof *fb);
    backend *be = mk(1, 1);
    run(be, &c, 0, out, s, s + C, s + 2 * C, s + 3 * C, dx, dw, db);
    double *vars[3] = { c.x, c.w, c.b }, *fds[3] = { fx, fw, fb };
    size_t lens[3] = { n, (size_t)C, (size_t)C };
    for (int k = 0; k < (nobias ? 2 : 3); k++)
        fd_gradient(fds[k], vars[k], lens[k], FD_H, objective_at, &(case_at){ be, &c });
    expect_close("dx", dx, fx, n, GRAD_TOL);
    expect_close("dweight", dw, fw, C, GRAD_TOL);
    if (!nobias)
        expect_close("dbias", db, fb, C, GRAD_TOL);
    be->destroy(be);
    /* fp32 against fp64, the fused forward's saved statistics included */
    double *dx32 = xmalloc(n * sizeof *dx32), *dw32 = xmalloc((size_t)C * sizeof *dw32),
           *db32 = xmalloc((size_t)C * sizeof *db32);
    rng_state keep_rng = test_rng;
    be = mk(1, 0);
    run(be, &c, 1, out, s, s + C, s + 2 * C, s + 3 * C, dx, dw, db);
    be->destroy(be);
    test_rng = keep_rng; /* the same split and prior gradients */
    be = mk(0, 0);
    run(be, &c, 1, out, s, s + C, s + 2 * C, s + 3 * C, dx32, dw32, db32);
    be->destroy(be);
    expect_close("dx fp32", dx32, dx, n, F32_TOL);
    expect_close("dweight fp32", dw32, dw, C, F32_TOL);
    if (!nobias)
        expect_close("dbias fp32", db32, db, C, F32_TOL);
    free(dx32);
    free(dw32);
    free(db32);
    free(out);
    free(s);
    free(dx);
    free(dw);
    free(db);
    free(fx);
    free(fw);
    free(fb);
    free_case(&c);
}
END_TEST

/* Bit-identical results whatever the thread count, run to run. */
START_TEST(test_threads)
{
    seed("threads", 0);
    bn_case c = make_case(257, 150, 1, 0);
    size_t n = (size_t)c.N * c.C, C = (size_t)c.C, all = 2 * n + 6 * C;
    double *r[2];
    for (int k = 0; k < 2; k++) {
        rng_state keep_rng = test_rng;
        backend *be = mk(0, k ? 4 : 1);
        r[k] = xmalloc(all * sizeof *r[k]);
        double *o = r[k];
        run(be, &c, 0, o, o + n, o + n + C, o + n + 2 * C, o + n + 3 * C, o + n + 4 * C,
            o + 2 * n + 4 * C, o + 2 * n + 5 * C);
        be->destroy(be);
        if (!k)
            test_rng = keep_rng;
    }
    ck_assert_msg(memcmp(r[0], r[1], all * sizeof *r[0]) == 0,
                  "batchnorm differs between 1 and 4 threads");
    free(r[0]);
    free(r[1]);
    free_case(&c);
}
END_TEST

static Suite *norm_suite(void)
{
    Suite *s = suite_create("ops_norm");
    TCase *tc = tcase_create("batchnorm");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_forward_reference, 0, 16);
    tcase_add_loop_test(tc, test_backward_gradcheck, 0, 8);
    tcase_add_test(tc, test_threads);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    test_seed_init("test_ops_norm");
    SRunner *sr = srunner_create(norm_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
