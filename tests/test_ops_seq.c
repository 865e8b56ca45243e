/* test_ops_seq.c: the first rung of the test ladder for the ops shared by the
 * model families other than GPT-2 (embedding, sequence_embed, rows_mean,
 * tanh, regression_loss, dropout): each forward against a plain double reference, each backward
 * against central differences in double precision (the fp64 build of the CPU
 * backend), the fp32 build against the fp64 one, and run-to-run / thread-count
 * determinism of the sums.
 *
 * Gradient checks: objective L = sum(out * R) for a random R (regression_loss:
 * L = scale * sum(losses), whose gradient is what it writes into dpred). Gradient
 * buffers start from random values and what the backward ADDED is compared,
 * so += is checked, not assumed; outputs start as NaN, so every element must
 * be written. Inputs are fresh random numbers every run; the seed is printed
 * and ANATOMY_TEST_SEED=<n> replays it. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../kernels/dropout_mask.h"
#include "../kernels/ops.h"
#include "gradcheck.h"
#include "testrand.h"

#define FD_H 1e-6
#define GRAD_TOL 1e-6 /* relative L2, analytical vs central difference, fp64 */
#define F32_TOL 1e-5  /* relative L2, fp32 backend vs fp64 backend */

/* n normal values times scale, rounded to float so that both CPU builds see
 * the same numbers. */
static double *rnd(size_t n, double scale)
{
    double *x = xmalloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(scale * nrand());
    return x;
}

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

static void expect_close(const char *name, const char *what, const double *got, const double *ref, size_t n,
                         double limit)
{
    double e = rel_l2(got, ref, n);
    if (getenv("ANATOMY_TEST_VERBOSE"))
        fprintf(stderr, "  %-28s %-22s rel L2 %.3g\n", name, what, e);
    ck_assert_msg(e <= limit, "%s: %s: relative L2 error %.3g exceeds %.0e", name, what, e, limit);
}

/* ---- backends and buffers ---- */

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
    be->upload(be, d, t, h, DT_F64, n);
    return d;
}

static void *up_i32(backend *be, const int32_t *h, size_t n)
{
    void *d = be->alloc(be, (n ? n : 1) * sizeof(int32_t));
    ck_assert_ptr_nonnull(d);
    be->upload(be, d, DT_I32, h, DT_I32, n);
    return d;
}

static void *poisoned(backend *be, dtype t, size_t n)
{
    void *d = be->alloc(be, (n ? n : 1) * dtype_size(t));
    ck_assert_ptr_nonnull(d);
    be->fill(be, d, t, NAN, n);
    return d;
}

/* out = contents of d minus prefill (when given); frees d. */
static void take(backend *be, void *d, dtype t, const double *prefill, size_t n, double *out)
{
    be->download(be, out, DT_F64, d, t, n);
    for (size_t i = 0; prefill && i < n; i++)
        out[i] -= prefill[i];
    be->free(be, d);
}

/* ---- cases ----
 * in[k]: the differentiable inputs; pre[k]: the random prior contents of
 * their gradient buffers (NULL: that gradient is not asked for); R: the
 * objective's weights, also the dout given to the backward. */

enum { OP_EMB, OP_SEQ, OP_ROWS, OP_TANH, OP_LOSS };

typedef struct {
    const char *name;
    int op;
    int B, T, C, N, rows, maxT, t, first, acc, alias;
    int span; /* rows_mean's n: rows t..t+span-1 */
    float scale, delta;
    int kind;      /* regression_loss's */
    int32_t *ids;
    int nin;
    double *in[3], *pre[3];
    size_t len[3];
    double *target, *unit; /* regression_loss's target and row units (unit NULL: none) */
    double *prior;         /* embedding's accumulate prior */
    size_t nout;
    double *R;
} sq_case;

static void add_input(sq_case *c, size_t n, double scale, int grad)
{
    int k = c->nin++;
    c->len[k] = n;
    c->in[k] = rnd(n, scale);
    c->pre[k] = grad ? rnd(n, 0.5) : NULL;
}

static void set_out(sq_case *c, size_t nout)
{
    c->nout = nout;
    c->R = rnd(nout, 1);
}

/* ids in [-1, rows) with repeats: mostly from a few rows, some anywhere. */
static int32_t *rand_ids(int N, int rows)
{
    int32_t *ids = xmalloc((size_t)N * sizeof(int32_t));
    for (int i = 0; i < N; i++)
        ids[i] = irand(5) == 0 ? -1 : irand(3) ? irand(rows < 4 ? rows : 4) : irand(rows);
    ids[0] = rows - 1;
    if (N > 2)
        ids[N - 1] = ids[1] = -1;
    return ids;
}

static sq_case emb_case(int N, int C, int rows, int acc)
{
    sq_case c = { .name = "embedding", .op = OP_EMB, .N = N, .C = C, .rows = rows, .acc = acc };
    c.ids = rand_ids(N, rows);
    add_input(&c, (size_t)rows * C, 1, 1);
    set_out(&c, (size_t)N * C);
    if (acc)
        c.prior = rnd(c.nout, 1);
    return c;
}

/* in[0] = x [B,T-k,C], in[1] = pos [maxT,C], in[2] = first [C] (k = 1) */
static sq_case seq_case(int B, int T, int C, int maxT, int first, int no_dx)
{
    sq_case c = { .name = first ? "sequence_embed first" : "sequence_embed", .op = OP_SEQ,
                  .B = B, .T = T, .C = C, .maxT = maxT, .first = first };
    add_input(&c, (size_t)B * (T - first) * C, 1, !no_dx);
    add_input(&c, (size_t)maxT * C, 1, 1);
    if (first)
        add_input(&c, (size_t)C, 1, 1);
    set_out(&c, (size_t)B * T * C);
    return c;
}

static sq_case rows_case(int B, int T, int C, int t, int span)
{
    sq_case c = { .name = span == 1 ? "rows_mean n=1" : "rows_mean", .op = OP_ROWS, .B = B,
                  .T = T, .C = C, .t = t, .span = span };
    add_input(&c, (size_t)B * T * C, 1, 1);
    set_out(&c, (size_t)B * C);
    return c;
}

static sq_case tanh_case(int N)
{
    sq_case c = { .name = "tanh", .op = OP_TANH, .N = N };
    add_input(&c, (size_t)N, 1.5, 1);
    set_out(&c, (size_t)N);
    return c;
}

/* R is scale everywhere: L = scale * sum(losses), dL/dpred = what the op
 * writes. Units in [0.5, 2] (or none), delta in [0.5, 1]: errors of either
 * side of Huber's delta; every 5th target equals its prediction, where MAE's
 * gradient is sign(0) = 0 (and central differences of |x| at 0 give 0 too). */
static sq_case loss_case(int N, int C, int alias, int kind, int with_unit)
{
    static const char *names[] = { "regression_loss mse", "regression_loss mae",
                                   "regression_loss huber" };
    sq_case c = { .name = names[kind], .op = OP_LOSS, .N = N, .C = C, .alias = alias,
                  .kind = kind };
    c.scale = (float)(0.25 + urand());
    c.delta = (float)(0.5 + 0.5 * urand());
    add_input(&c, (size_t)N * C, 1, 1);
    c.target = rnd((size_t)N * C, 1);
    for (size_t i = 0; i < (size_t)N * C; i += 5)
        c.target[i] = c.in[0][i];
    if (with_unit) {
        c.unit = xmalloc((size_t)N * sizeof(double));
        for (int n = 0; n < N; n++)
            c.unit[n] = 0.5 + 1.5 * urand();
    }
    set_out(&c, (size_t)N);
    for (int n = 0; n < N; n++)
        c.R[n] = c.scale;
    return c;
}

static void free_case(sq_case *c)
{
    for (int k = 0; k < c->nin; k++)
        free(c->in[k]), free(c->pre[k]);
    free(c->R), free(c->ids), free(c->target), free(c->unit), free(c->prior);
}

/* Runs the forward into out (nout values) and, when g is not NULL, the
 * backward, storing in g[k] what it added to the gradient of in[k] (g[k] must
 * hold len[k] values; left alone when pre[k] is NULL). */
static void run(backend *be, sq_case *c, double *out, double **g)
{
    dtype a = be->act;
    void *in[3] = { NULL, NULL, NULL }, *gr[3] = { NULL, NULL, NULL };
    for (int k = 0; k < c->nin; k++) {
        in[k] = up(be, a, c->in[k], c->len[k]);
        if (g && c->pre[k] && c->op != OP_LOSS) /* the loss writes dpred: no prior */
            gr[k] = up(be, a, c->pre[k], c->len[k]);
    }
    void *dout = up(be, a, c->R, c->nout), *ids = NULL, *tg = NULL, *un = NULL, *o;
    switch (c->op) {
    case OP_EMB:
        ids = up_i32(be, c->ids, (size_t)c->N);
        o = c->acc ? up(be, a, c->prior, c->nout) : poisoned(be, a, c->nout);
        be->embedding_forward(be, o, ids, in[0], c->N, c->C, c->acc);
        take(be, o, a, NULL, c->nout, out);
        if (g)
            be->embedding_backward(be, gr[0], dout, ids, c->N, c->C);
        break;
    case OP_SEQ:
        o = poisoned(be, a, c->nout);
        be->sequence_embed_forward(be, o, in[0], c->first ? in[2] : NULL, in[1], c->B, c->T, c->C);
        take(be, o, a, NULL, c->nout, out);
        if (g)
            be->sequence_embed_backward(be, gr[0], c->first ? gr[2] : NULL, gr[1], dout, c->B, c->T, c->C);
        break;
    case OP_ROWS:
        o = poisoned(be, a, c->nout);
        be->rows_mean_forward(be, o, in[0], c->B, c->T, c->C, c->t, c->span);
        take(be, o, a, NULL, c->nout, out);
        if (g)
            be->rows_mean_backward(be, gr[0], dout, c->B, c->T, c->C, c->t, c->span);
        break;
    case OP_TANH:
        o = poisoned(be, a, c->nout);
        be->tanh_forward(be, o, in[0], (size_t)c->N);
        if (g)
            be->tanh_backward(be, gr[0], o, dout, (size_t)c->N);
        take(be, o, a, NULL, c->nout, out);
        break;
    default: /* OP_LOSS: losses alone, then losses with dpred (written, not added) */
        tg = up(be, a, c->target, (size_t)c->N * c->C);
        un = c->unit ? up(be, be->stat, c->unit, (size_t)c->N) : NULL;
        o = poisoned(be, be->stat, c->nout);
        be->regression_loss(be, o, NULL, in[0], tg, un, c->N, c->C, c->kind, c->delta, c->scale);
        take(be, o, be->stat, NULL, c->nout, out);
        if (g) {
            void *l = poisoned(be, be->stat, c->nout);
            void *d = c->alias ? in[0] : poisoned(be, a, c->len[0]);
            be->regression_loss(be, l, d, in[0], tg, un, c->N, c->C, c->kind, c->delta, c->scale);
            double *l2 = xmalloc(c->nout * sizeof(double));
            take(be, l, be->stat, NULL, c->nout, l2);
            for (size_t i = 0; i < c->nout; i++) /* with or without dpred: the same losses */
                ck_assert_msg(l2[i] == out[i], "%s: loss %zu is %g with dpred, %g without", c->name, i,
                              l2[i], out[i]);
            free(l2);
            be->download(be, g[0], DT_F64, d, a, c->len[0]);
            if (d != in[0])
                be->free(be, d);
        }
        break;
    }
    for (int k = 0; k < c->nin; k++) {
        if (gr[k])
            take(be, gr[k], a, c->pre[k], c->len[k], g[k]);
        be->free(be, in[k]);
    }
    be->free(be, dout);
    if (ids)
        be->free(be, ids);
    if (tg)
        be->free(be, tg);
    if (un)
        be->free(be, un);
}

/* ---- plain double references of the forwards ---- */

static void ref_forward(const sq_case *c, double *out)
{
    switch (c->op) {
    case OP_EMB:
        for (int n = 0; n < c->N; n++)
            for (int j = 0; j < c->C; j++) {
                size_t i = (size_t)n * c->C + j;
                double e = c->ids[n] < 0 ? 0 : c->in[0][(size_t)c->ids[n] * c->C + j];
                out[i] = (c->acc ? c->prior[i] : 0) + e;
            }
        break;
    case OP_SEQ:
        for (int b = 0; b < c->B; b++)
            for (int t = 0; t < c->T; t++)
                for (int j = 0; j < c->C; j++) {
                    int k = c->first;
                    double v = t < k ? c->in[2][j] : c->in[0][((size_t)b * (c->T - k) + t - k) * c->C + j];
                    out[((size_t)b * c->T + t) * c->C + j] = v + c->in[1][(size_t)t * c->C + j];
                }
        break;
    case OP_ROWS:
        for (int b = 0; b < c->B; b++)
            for (int j = 0; j < c->C; j++) {
                double s = 0;
                for (int i = 0; i < c->span; i++)
                    s += c->in[0][((size_t)b * c->T + c->t + i) * c->C + j];
                out[(size_t)b * c->C + j] = s / c->span;
            }
        break;
    case OP_TANH:
        for (int n = 0; n < c->N; n++)
            out[n] = tanh(c->in[0][n]);
        break;
    default: /* as ops.h defines it: l(u) of the data's error u = unit * e, over unit^2 */
        for (int n = 0; n < c->N; n++) {
            double s = 0, w = c->unit ? c->unit[n] : 1;
            for (int j = 0; j < c->C; j++) {
                double u = w * (c->in[0][(size_t)n * c->C + j] - c->target[(size_t)n * c->C + j]);
                double l = c->kind == LOSS_MSE ? u * u
                         : c->kind == LOSS_MAE ? fabs(u)
                         : fabs(u) < c->delta ? u * u / 2 : c->delta * (fabs(u) - c->delta / 2);
                s += l / (w * w);
            }
            out[n] = s;
        }
    }
}

/* ---- the checks ---- */

static double objective(backend *be, sq_case *c, double *out)
{
    run(be, c, out, NULL);
    double s = 0;
    for (size_t i = 0; i < c->nout; i++)
        s += out[i] * c->R[i];
    return s;
}

/* fd_gradient_at's view of objective: at the case's inputs as they stand */
typedef struct { backend *be; sq_case *c; double *out; } case_at;
static double objective_at(void *ctx)
{
    case_at *a = ctx;
    return objective(a->be, a->c, a->out);
}

/* The fp64 forward against the reference, then central differences on at
 * most maxidx random elements of each input against its backward. */
static void gradcheck(sq_case *c, size_t maxidx)
{
    backend *be = mk(1, 1); /* thousands of tiny calls: threads only cost */
    double *out = xmalloc(c->nout * sizeof(double)), *ref = xmalloc(c->nout * sizeof(double));
    double *g[3] = { NULL, NULL, NULL };
    for (int k = 0; k < c->nin; k++)
        g[k] = xmalloc(c->len[k] * sizeof(double));
    run(be, c, out, g);
    ref_forward(c, ref);
    expect_close(c->name, "fp64 forward vs reference", out, ref, c->nout,
                 c->op == OP_ROWS && c->span == 1 ? 0.0 : 1e-12);
    int checked = 0;
    for (int k = 0; k < c->nin; k++) {
        if (!c->pre[k])
            continue;
        size_t n = c->len[k], m = n < maxidx ? n : maxidx;
        double *num = xmalloc(m * sizeof(double)), *ana = xmalloc(m * sizeof(double));
        size_t *idx = xmalloc(m * sizeof *idx);
        for (size_t s = 0; s < m; s++) {
            idx[s] = m == n ? s : (size_t)irand((int)n);
            ana[s] = g[k][idx[s]];
        }
        fd_gradient_at(num, c->in[k], idx, m, FD_H, objective_at, &(case_at){ be, c, out });
        free(idx);
        char what[64];
        snprintf(what, sizeof what, "gradient of input %d", k);
        expect_close(c->name, what, ana, num, m, GRAD_TOL);
        checked++;
        free(num), free(ana);
    }
    ck_assert_int_gt(checked, 0);
    for (int k = 0; k < c->nin; k++)
        free(g[k]);
    free(out), free(ref);
    be->destroy(be);
}

/* The fp32 build against the fp64 one, forward and every gradient. */
static void parity(sq_case *c)
{
    backend *be[2] = { mk(0, 2), mk(1, 2) };
    double *out[2], *g[2][3] = { { NULL } };
    for (int b = 0; b < 2; b++) {
        out[b] = xmalloc(c->nout * sizeof(double));
        for (int k = 0; k < c->nin; k++)
            g[b][k] = xmalloc(c->len[k] * sizeof(double));
        run(be[b], c, out[b], g[b]);
    }
    /* one row is a copy: the float inputs come through both builds exactly */
    expect_close(c->name, "fp32 forward vs fp64", out[0], out[1], c->nout,
                 c->op == OP_ROWS && c->span == 1 ? 0.0 : F32_TOL);
    for (int k = 0; k < c->nin; k++) {
        if (c->pre[k]) {
            char what[64];
            snprintf(what, sizeof what, "fp32 gradient %d vs fp64", k);
            expect_close(c->name, what, g[0][k], g[1][k], c->len[k], F32_TOL);
        }
        free(g[0][k]), free(g[1][k]);
    }
    for (int b = 0; b < 2; b++) {
        free(out[b]);
        be[b]->destroy(be[b]);
    }
}

/* _i: 0 gradient check (fp64), 1 fp32 vs fp64 */
static void check_case(sq_case *c, size_t maxidx, int mode)
{
    if (mode == 0)
        gradcheck(c, maxidx);
    else
        parity(c);
    free_case(c);
}

START_TEST(test_embedding)
{
    seed("embedding", _i);
    for (int acc = 0; acc < 2; acc++) {
        sq_case c = emb_case(13, 7, 6, acc);
        check_case(&c, 500, _i);
        c = emb_case(40, 66, 9, acc); /* many repeats per row */
        check_case(&c, 300, _i);
    }
}
END_TEST

START_TEST(test_sequence_embed)
{
    seed("sequence_embed", _i);
    for (int first = 0; first < 2; first++) {
        sq_case c = seq_case(3, 5, 7, 8, first, 0); /* maxT > T: pos rows past T get nothing */
        check_case(&c, 500, _i);
        c = seq_case(2, 1 + first, 33, 4, first, 0); /* T = 1 (with first: x has one row per b) */
        check_case(&c, 300, _i);
        c = seq_case(4, 6, 10, 6, first, 1); /* dx not wanted (NULL) */
        check_case(&c, 300, _i);
    }
}
END_TEST

/* n = 1 (a select: the first row, the last, one between), then means over
 * ranges: every row, all but the first (ViT's patch rows), and a random one. */
START_TEST(test_rows_mean)
{
    seed("rows_mean", _i);
    int T = 6;
    int ts[3] = { 0, T - 1, 1 + irand(T - 2) };
    for (int j = 0; j < 3; j++) {
        sq_case c = rows_case(4, T, 9, ts[j], 1);
        check_case(&c, 500, _i);
    }
    int t = irand(T - 1);
    int ranges[3][2] = { { 0, T }, { 1, T - 1 }, { t, 2 + irand(T - t - 1) } };
    for (int j = 0; j < 3; j++) {
        sq_case c = rows_case(3, T, 11, ranges[j][0], ranges[j][1]);
        check_case(&c, 500, _i);
    }
    sq_case c = rows_case(2, 50, 16, 1, 49); /* vit-mnist's 49 patch rows */
    check_case(&c, 400, _i);
}
END_TEST

START_TEST(test_tanh)
{
    seed("tanh", _i);
    sq_case c = tanh_case(257);
    check_case(&c, 300, _i);
}
END_TEST

/* Huber's case holds errors on both sides of delta, so that both branches
 * are measured. */
static void expect_both_huber_sides(const sq_case *c)
{
    int below = 0, above = 0;
    for (int n = 0; n < c->N; n++)
        for (int j = 0; j < c->C; j++) {
            size_t i = (size_t)n * c->C + j;
            double u = (c->unit ? c->unit[n] : 1) * fabs(c->in[0][i] - c->target[i]);
            below += u > 0 && u < c->delta;
            above += u > c->delta;
        }
    ck_assert_msg(below > 0 && above > 0, "huber case: %d errors below delta %g, %d above", below,
                  c->delta, above);
}

START_TEST(test_regression_loss)
{
    seed("regression_loss", _i);
    for (int kind = LOSS_MSE; kind <= LOSS_HUBER; kind++)
        for (int alias = 0; alias < 2; alias++)
            for (int with_unit = 0; with_unit < 2; with_unit++) {
                sq_case c = loss_case(7, 13, alias, kind, with_unit);
                if (kind == LOSS_HUBER)
                    expect_both_huber_sides(&c);
                check_case(&c, 300, _i);
                c = loss_case(3, 1, alias, kind, with_unit); /* one column (a scalar regression) */
                check_case(&c, 300, _i);
            }
}
END_TEST

/* MAE's gradient at a zero error is 0 (sign(0), as PyTorch's l1_loss), and
 * each kind's value and gradient at a few hand-checked points, unit 2,
 * delta 1 (data errors u = 2e): e = 0.25 (u 0.5, inside delta), -1 (u -2,
 * beyond), 0. */
START_TEST(test_regression_loss_points)
{
    backend *be = mk(_i, 1);
    dtype a = be->act;
    double pred[3] = { 0.25, -1, 3 }, target[3] = { 0, 0, 3 }, unit = 2;
    /* per element l(u) / unit^2 and dpred / scale (scale 1) */
    static const double want_l[3][3] = { { 0.0625, 1, 0 }, { 0.125, 0.5, 0 },
                                         { 0.03125, 0.375, 0 } };
    static const double want_g[3][3] = { { 0.5, -2, 0 }, { 0.5, -0.5, 0 }, { 0.25, -0.5, 0 } };
    for (int kind = LOSS_MSE; kind <= LOSS_HUBER; kind++)
        for (int j = 0; j < 3; j++) {
            void *p = up(be, a, &pred[j], 1), *t = up(be, a, &target[j], 1);
            void *u = up(be, be->stat, &unit, 1), *l = poisoned(be, be->stat, 1),
                 *d = poisoned(be, a, 1);
            double hl, hg;
            be->regression_loss(be, l, d, p, t, u, 1, 1, kind, 1.0f, 1.0f);
            be->download(be, &hl, DT_F64, l, be->stat, 1);
            be->download(be, &hg, DT_F64, d, a, 1);
            ck_assert_msg(hl == want_l[kind][j] && hg == want_g[kind][j],
                          "kind %d, e %g: loss %g gradient %g, expected %g and %g", kind,
                          pred[j] - target[j], hl, hg, want_l[kind][j], want_g[kind][j]);
            be->free(be, p), be->free(be, t), be->free(be, u), be->free(be, l), be->free(be, d);
        }
    be->destroy(be);
}
END_TEST

/* The row sums (dtable, dpos, dfirst) give the same bits with 1 and 3
 * threads, and run to run: shapes large enough for the ops to use threads. */
START_TEST(test_determinism)
{
    seed("determinism", 0);
    sq_case cs[2] = { emb_case(3000, 24, 37, 0), seq_case(16, 65, 32, 65, 1, 0) };
    for (int j = 0; j < 2; j++) {
        sq_case *c = &cs[j];
        double *g[3][3] = { { NULL } }, *out = xmalloc(c->nout * sizeof(double));
        int threads[3] = { 1, 3, 3 };
        for (int r = 0; r < 3; r++) {
            backend *be = mk(0, threads[r]);
            for (int k = 0; k < c->nin; k++)
                g[r][k] = xmalloc(c->len[k] * sizeof(double));
            run(be, c, out, g[r]);
            be->destroy(be);
        }
        for (int k = 0; k < c->nin; k++) {
            if (c->pre[k])
                for (int r = 1; r < 3; r++)
                    ck_assert_msg(memcmp(g[0][k], g[r][k], c->len[k] * sizeof(double)) == 0,
                                  "%s: gradient %d differs between runs (%d vs %d threads)", c->name, k,
                                  threads[0], threads[r]);
            for (int r = 0; r < 3; r++)
                free(g[r][k]);
        }
        free(out);
        free_case(c);
    }
}
END_TEST

/* dropout on backend fp64 (_i = 0) or fp32 (_i = 1): every output is the
 * input times 1/(1-p) or exactly 0; the dropped fraction is p within 5
 * standard errors, and so is the fraction of adjacent pairs both dropped
 * (p^2: neighbouring draws are independent); another seed drops other
 * elements; in place equals out of place; thread counts change no bit;
 * and the op applied to a gradient R is the gradient of sum(R * dropout(x))
 * (central differences, fp64): it is its own backward. */
START_TEST(test_dropout)
{
    seed("dropout", _i);
    const size_t N = 200003; /* odd: no vector width divides it */
    const float ps[4] = { 0.0f, 0.1f, 0.5f, 0.9f };
    dtype t = _i ? DT_F32 : DT_F64;
    backend *be = mk(!_i, 3), *be1 = mk(!_i, 1);
    double *x = rnd(N, 1.0), *y = xmalloc(N * sizeof *y), *y2 = xmalloc(N * sizeof *y2);
    for (size_t i = 0; i < N; i++)
        if (x[i] == 0)
            x[i] = 1; /* a kept element is then never 0 */
    for (int k = 0; k < 4; k++) {
        float p = ps[k];
        uint64_t sd = rnext();
        void *dx = up(be, t, x, N), *dy = be->alloc(be, N * dtype_size(t));
        be->fill(be, dy, t, NAN, N);
        be->dropout_forward(be, dy, dx, N, p, sd);
        be->download(be, y, DT_F64, dy, t, N);
        size_t dropped = 0, pairs = 0;
        double want_scale = _i ? (double)(1.0f / (1.0f - p)) : 1.0 / (1.0 - (double)p);
        for (size_t i = 0; i < N; i++) {
            if (y[i] == 0) {
                dropped++;
                pairs += i + 1 < N && dropout_keep(sd, i + 1, dropout_threshold(p)) == 0;
                continue;
            }
            double want = _i ? (double)((float)x[i] * (float)want_scale) : x[i] * want_scale;
            ck_assert_msg(fabs(y[i] - want) <= 1e-15 * fabs(want) + (_i ? 1e-7 * fabs(want) : 0),
                          "p %g: element %zu is %.17g, want %.17g", p, i, y[i], want);
        }
        double se = sqrt(p * (1 - p) / N) + 1e-12, frac = (double)dropped / N;
        ck_assert_msg(fabs(frac - p) < 5 * se, "p %g: dropped fraction %g", p, frac);
        double pp = (double)p * p, se2 = sqrt(pp * (1 - pp) / N) + 1e-12;
        ck_assert_msg(fabs((double)pairs / N - pp) < 5 * se2,
                      "p %g: adjacent pairs both dropped %g, want %g", p, (double)pairs / N, pp);
        /* the mask belongs to the seed */
        if (p == 0.5f) {
            be->dropout_forward(be, dy, dx, N, p, sd + 1);
            be->download(be, y2, DT_F64, dy, t, N);
            size_t same = 0;
            for (size_t i = 0; i < N; i++)
                same += (y[i] == 0) == (y2[i] == 0);
            ck_assert_msg(fabs((double)same / N - 0.5) < 5 * sqrt(0.25 / N),
                          "seeds s and s+1 agree on %zu of %zu elements", same, N);
        }
        /* in place, and on one thread: the same bits */
        be->dropout_forward(be, dx, dx, N, p, sd);
        be->download(be, y2, DT_F64, dx, t, N);
        ck_assert(memcmp(y, y2, N * sizeof *y) == 0);
        void *ex = up(be1, t, x, N), *ey = be1->alloc(be1, N * dtype_size(t));
        be1->dropout_forward(be1, ey, ex, N, p, sd);
        be1->download(be1, y2, DT_F64, ey, t, N);
        ck_assert(memcmp(y, y2, N * sizeof *y) == 0);
        be1->free(be1, ex);
        be1->free(be1, ey);
        be->free(be, dx);
        be->free(be, dy);
    }
    if (!_i) { /* its own backward: d/dx_i sum(R * dropout(x)) = dropout(R)_i */
        const size_t n = 301;
        const float p = 0.3f;
        uint64_t sd = rnext();
        double *r = rnd(n, 1.0), *g = xmalloc(n * sizeof *g), *o = xmalloc(n * sizeof *o);
        void *dx = up(be, t, x, n), *dr = up(be, t, r, n), *dy = be->alloc(be, n * sizeof(double));
        be->dropout_forward(be, dr, dr, n, p, sd);
        be->download(be, g, DT_F64, dr, t, n);
        for (size_t i = 0; i < n; i++) {
            double v[2];
            for (int sgn = 0; sgn < 2; sgn++) {
                double keep = x[i];
                x[i] = keep + (sgn ? -FD_H : FD_H);
                be->upload(be, dx, t, x, DT_F64, n);
                x[i] = keep;
                be->dropout_forward(be, dy, dx, n, p, sd);
                be->download(be, o, DT_F64, dy, t, n);
                v[sgn] = 0;
                for (size_t j = 0; j < n; j++)
                    v[sgn] += r[j] * o[j];
            }
            double fd = (v[0] - v[1]) / (2 * FD_H);
            ck_assert_msg(fabs(fd - g[i]) < 1e-8 * (1 + fabs(g[i])),
                          "element %zu: gradient %g, finite difference %g", i, g[i], fd);
        }
        be->free(be, dx);
        be->free(be, dr);
        be->free(be, dy);
        free(r);
        free(g);
        free(o);
    }
    free(x);
    free(y);
    free(y2);
    be->destroy(be);
    be1->destroy(be1);
}
END_TEST

static Suite *seq_suite(void)
{
    Suite *s = suite_create("ops_seq");
    TCase *tc = tcase_create("ops");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_embedding, 0, 2);
    tcase_add_loop_test(tc, test_sequence_embed, 0, 2);
    tcase_add_loop_test(tc, test_rows_mean, 0, 2);
    tcase_add_loop_test(tc, test_tanh, 0, 2);
    tcase_add_loop_test(tc, test_regression_loss, 0, 2);
    tcase_add_loop_test(tc, test_regression_loss_points, 0, 2);
    tcase_add_loop_test(tc, test_dropout, 0, 2);
    tcase_add_test(tc, test_determinism);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    test_seed_init("test_ops_seq");
    SRunner *sr = srunner_create(seq_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
