/* test_cuda_seq_ops.c: backend parity for the ops shared by the model
 * families other than GPT-2 (kernels/cuda/seq.cu): embedding,
 * sequence_embed, rows_mean, tanh, regression_loss, dropout and batchnorm of the CUDA backend
 * against the CPU backend's fp64 build, in both CUDA modes: fp32 to 1e-5 relative L2,
 * bf16 to 1e-2 (the losses, fp32 statistics, to 1e-5 in both).
 *
 * As test_cuda_ops.c: fresh random inputs (the seed is printed;
 * ANATOMY_TEST_SEED=<n> repeats a run), made representable in the mode's
 * type first, so the comparison measures the op; outputs poisoned with NaN;
 * gradient buffers start from random values and what the op added is
 * compared. Shapes cover the 16-byte vector path (C a multiple of 8) and the
 * scalar one (odd C, a row wider than a block), ids with repeats and
 * negatives, more positions than a block scans at once, t = 0 and t = T-1,
 * rows_mean over one row (exact: a copy) and over ranges up to every row,
 * sequence_embed with and without a first row and without dx, each regression
 * loss (squared, absolute, Huber) with and without row units, with dpred
 * aliasing pred and without dpred. Dropout: the same elements dropped as on
 * the CPU (the mask is a function of seed and index), the kept ones within
 * the tolerance, in place and out of place, on the vector path and the
 * scalar one (a buffer 1 element off alignment, an odd length).
 *
 * Linked with the emulated kernels (mk/seqops.mk) it runs on the CPU; linked
 * with the nvcc-built ones, on a GPU. ANATOMY_TEST_VERBOSE=1 prints every
 * measured error. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../kernels/ops.h"
#include "cuda_parity.h"

static void expect_close(const char *name, const char *what, dtype act, const double *got, const double *ref,
                         size_t n, double limit)
{
    double e = rel_l2(got, ref, n);
    if (getenv("ANATOMY_TEST_VERBOSE"))
        printf("  %-5s %-44s %-18s rel L2 %.3g (limit %.0e)\n", dtype_name(act), name, what, e, limit);
    ck_assert_msg(e <= limit, "%s: %s (%s): relative L2 error %.3g exceeds %.0e", name, what, dtype_name(act),
                  e, limit);
}

/* ---- cases ----
 * in[k]: inputs; pre[k]: prior contents of in[k]'s gradient buffer (NULL:
 * not asked for); dout: the backward's incoming gradient; aux: tanh's y for
 * the backward (the oracle's forward, in the mode's type, fed to both, so the
 * backward is measured alone) or the loss's target. All in the mode's type;
 * the loss's row units in fp32 (the stat type). */

enum { OP_EMB, OP_SEQ, OP_ROWS, OP_TANH, OP_LOSS };

typedef struct {
    char name[96];
    int op;
    int B, T, C, N, rows, t, first, acc, alias, no_dpred;
    int span; /* rows_mean's n */
    float scale, delta;
    int kind;
    int32_t *ids;
    int nin;
    double *in[3], *pre[3];
    size_t len[3];
    double *aux, *prior, *dout, *unit;
    size_t nout;
} sq_case;

/* Gradient priors about a quarter of what the ops add (rows of dout ~ 1,
 * summed over a few repeats): a lost += shows, bf16's rounding of the sum
 * stays small next to the part under test. */
static void add_input(sq_case *c, size_t n, dtype t, int grad)
{
    int k = c->nin++;
    c->len[k] = n;
    c->in[k] = rnd(n, 1, t);
    c->pre[k] = grad ? rnd(n, 0.25, t) : NULL;
}

static void set_out(sq_case *c, size_t nout, dtype t)
{
    c->nout = nout;
    c->dout = rnd(nout, 1, t);
}

static sq_case emb_case(int N, int C, int rows, int acc, dtype t)
{
    sq_case c = { .op = OP_EMB, .N = N, .C = C, .rows = rows, .acc = acc };
    snprintf(c.name, sizeof c.name, "embedding N%d C%d rows%d%s", N, C, rows, acc ? " accumulate" : "");
    c.ids = xmalloc((size_t)N * sizeof(int32_t));
    for (int i = 0; i < N; i++) /* repeats, so rows of dtable sum; some -1, some other negative */
        c.ids[i] = irand(6) == 0 ? -1 - irand(3) : irand(3) ? irand(rows < 5 ? rows : 5) : irand(rows);
    c.ids[0] = rows - 1, c.ids[N - 1] = -1, c.ids[N / 2] = c.ids[1];
    add_input(&c, (size_t)rows * C, t, 1);
    set_out(&c, (size_t)N * C, t);
    if (acc)
        c.prior = rnd(c.nout, 1, t);
    return c;
}

static sq_case seq_case(int B, int T, int C, int maxT, int first, int no_dx, dtype t)
{
    sq_case c = { .op = OP_SEQ, .B = B, .T = T, .C = C, .first = first };
    snprintf(c.name, sizeof c.name, "sequence_embed B%d T%d C%d%s%s", B, T, C, first ? " first" : "",
             no_dx ? " no dx" : "");
    add_input(&c, (size_t)B * (T - first) * C, t, !no_dx);
    add_input(&c, (size_t)maxT * C, t, 1);
    if (first)
        add_input(&c, (size_t)C, t, 1);
    set_out(&c, (size_t)B * T * C, t);
    return c;
}

static sq_case rows_case(int B, int T, int C, int tsel, int span, dtype t)
{
    sq_case c = { .op = OP_ROWS, .B = B, .T = T, .C = C, .t = tsel, .span = span };
    snprintf(c.name, sizeof c.name, "rows_mean B%d T%d C%d t%d n%d", B, T, C, tsel, span);
    add_input(&c, (size_t)B * T * C, t, 1);
    free(c.pre[0]); /* the op adds dout / n: priors a quarter of that */
    c.pre[0] = rnd((size_t)B * T * C, 0.25 / span, t);
    set_out(&c, (size_t)B * C, t);
    return c;
}

static sq_case tanh_case(int N, dtype t)
{
    sq_case c = { .op = OP_TANH, .N = N };
    snprintf(c.name, sizeof c.name, "tanh N%d", N);
    add_input(&c, (size_t)N, t, 1);
    for (int i = 0; i < N; i++)
        c.in[0][i] = in_type(1.5 * c.in[0][i], t);
    c.aux = xmalloc((size_t)N * sizeof(double));
    for (int i = 0; i < N; i++)
        c.aux[i] = in_type(tanh(c.in[0][i]), t);
    set_out(&c, (size_t)N, t);
    return c;
}

/* Units in [0.5, 2] (or none) and delta in [0.5, 1]: Huber's errors lie on
 * both sides of delta; every 7th target equals its prediction (MAE's
 * gradient there is sign(0) = 0 on both backends). */
static sq_case loss_case(int N, int C, int alias, int no_dpred, int kind, int with_unit, dtype t)
{
    static const char *names[] = { "mse", "mae", "huber" };
    sq_case c = { .op = OP_LOSS, .N = N, .C = C, .alias = alias, .no_dpred = no_dpred, .kind = kind };
    snprintf(c.name, sizeof c.name, "regression_loss %s N%d C%d%s%s%s", names[kind], N, C,
             with_unit ? " units" : "", alias ? " aliased" : "", no_dpred ? " no dpred" : "");
    c.scale = (float)(0.25 + urand());
    c.delta = (float)(0.5 + 0.5 * urand());
    add_input(&c, (size_t)N * C, t, 0);
    c.aux = rnd((size_t)N * C, 1, t);
    for (size_t i = 0; i < (size_t)N * C; i += 7)
        c.aux[i] = c.in[0][i];
    if (with_unit) {
        c.unit = xmalloc((size_t)N * sizeof(double));
        for (int n = 0; n < N; n++)
            c.unit[n] = in_type(0.5 + 1.5 * urand(), DT_F32);
    }
    c.nout = (size_t)N;
    return c;
}

static void free_case(sq_case *c)
{
    for (int k = 0; k < c->nin; k++)
        free(c->in[k]), free(c->pre[k]);
    free(c->ids), free(c->aux), free(c->prior), free(c->dout), free(c->unit);
}

/* Forward into out[nout]; backward: what it added to each wanted gradient
 * into g[k] (regression_loss: dpred into g[0], which it writes). */
static void run(backend *be, const sq_case *c, double *out, double **g)
{
    dtype a = be->act;
    void *in[3] = { NULL, NULL, NULL }, *gr[3] = { NULL, NULL, NULL };
    for (int k = 0; k < c->nin; k++) {
        in[k] = up(be, a, c->in[k], c->len[k]);
        if (c->pre[k])
            gr[k] = up(be, a, c->pre[k], c->len[k]);
    }
    void *dout = c->dout ? up(be, a, c->dout, c->nout) : NULL, *ids = NULL, *aux = NULL, *o;
    void *unit = NULL;
    switch (c->op) {
    case OP_EMB:
        ids = up_i32(be, c->ids, (size_t)c->N);
        o = c->acc ? up(be, a, c->prior, c->nout) : poisoned(be, a, c->nout);
        be->embedding_forward(be, o, ids, in[0], c->N, c->C, c->acc);
        be->embedding_backward(be, gr[0], dout, ids, c->N, c->C);
        break;
    case OP_SEQ:
        o = poisoned(be, a, c->nout);
        be->sequence_embed_forward(be, o, in[0], c->first ? in[2] : NULL, in[1], c->B, c->T, c->C);
        be->sequence_embed_backward(be, gr[0], c->first ? gr[2] : NULL, gr[1], dout, c->B, c->T, c->C);
        break;
    case OP_ROWS:
        o = poisoned(be, a, c->nout);
        be->rows_mean_forward(be, o, in[0], c->B, c->T, c->C, c->t, c->span);
        be->rows_mean_backward(be, gr[0], dout, c->B, c->T, c->C, c->t, c->span);
        break;
    case OP_TANH:
        o = poisoned(be, a, c->nout);
        aux = up(be, a, c->aux, (size_t)c->N);
        be->tanh_forward(be, o, in[0], (size_t)c->N);
        be->tanh_backward(be, gr[0], aux, dout, (size_t)c->N);
        break;
    default: { /* OP_LOSS */
        size_t nc = (size_t)c->N * c->C;
        aux = up(be, a, c->aux, nc);
        unit = c->unit ? up(be, be->stat, c->unit, (size_t)c->N) : NULL;
        o = poisoned(be, be->stat, c->nout);
        void *d = c->no_dpred ? NULL : c->alias ? in[0] : poisoned(be, a, nc);
        be->regression_loss(be, o, d, in[0], aux, unit, c->N, c->C, c->kind, c->delta, c->scale);
        if (d)
            take(be, d, a, NULL, nc, g[0]);
        if (d == in[0])
            in[0] = NULL; /* freed by take */
        take(be, o, be->stat, NULL, c->nout, out);
        o = NULL;
        break;
    }
    }
    if (o)
        take(be, o, a, NULL, c->nout, out);
    for (int k = 0; k < c->nin; k++) {
        if (gr[k])
            take(be, gr[k], a, c->pre[k], c->len[k], g[k]);
        if (in[k])
            be->free(be, in[k]);
    }
    if (dout)
        be->free(be, dout);
    if (ids)
        be->free(be, ids);
    if (aux)
        be->free(be, aux);
    if (unit)
        be->free(be, unit);
}

/* Runs c on the oracle and on the CUDA backend and compares everything. */
static void parity(sq_case *c, backend *r, backend *g, dtype act)
{
    double *out[2], *gr[2][3] = { { NULL } };
    int has_g[3] = { 0, 0, 0 };
    for (int k = 0; k < c->nin; k++)
        has_g[k] = c->pre[k] != NULL || (k == 0 && c->op == OP_LOSS && !c->no_dpred);
    for (int b = 0; b < 2; b++) {
        out[b] = xmalloc(c->nout * sizeof(double));
        for (int k = 0; k < c->nin; k++)
            gr[b][k] = xmalloc(c->len[k] * sizeof(double));
        run(b ? g : r, c, out[b], gr[b]);
    }
    double ftol = c->op == OP_LOSS ? TOL_F32 : tol(act); /* the losses: fp32 stat */
    if (c->op == OP_ROWS && c->span == 1)
        ftol = 0; /* one row is a copy of inputs the mode's type holds exactly */
    expect_close(c->name, c->op == OP_LOSS ? "losses" : "forward", act, out[1], out[0], c->nout, ftol);
    for (int k = 0; k < c->nin; k++) {
        if (has_g[k]) {
            char what[32];
            snprintf(what, sizeof what, c->op == OP_LOSS ? "dpred" : "gradient %d", k);
            expect_close(c->name, what, act, gr[1][k], gr[0][k], c->len[k], tol(act));
        }
        free(gr[0][k]), free(gr[1][k]);
    }
    free(out[0]), free(out[1]);
    free_case(c);
}

START_TEST(test_embedding)
{
    dtype act = mode(_i);
    backend *r = oracle(), *g = gpu(act);
    seed("embedding", _i);
    /* N C rows; ids of 65536 and more take the bucketing's second radix pass */
    static const int shapes[][3] = { { 37, 32, 11 }, { 300, 7, 6 }, { 9, 301, 4 }, { 257, 8, 70001 } };
    for (int s = 0; s < 4; s++)
        for (int acc = 0; acc < 2; acc++) {
            sq_case c = emb_case(shapes[s][0], shapes[s][1], shapes[s][2], acc, act);
            parity(&c, r, g, act);
        }
    r->destroy(r);
    g->destroy(g);
}
END_TEST

/* embedding_backward's cost is linear in the positions: 8x the positions,
 * every id distinct (the worst case for any scheme that looks for earlier
 * occurrences), must cost well under the 64x a quadratic scheme would (the
 * bound, 24x, leaves 3x either way for noise; each time is the best of 3).
 * The result is also identical bit for bit when repeated. */
static double emb_backward_seconds(backend *g, int N, int C, int32_t *ids_dev, void *dout, void *dtable,
                                   double *bits_out)
{
    double best = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        g->fill(g, dtable, g->act, 0.0, (size_t)N * C);
        g->sync(g);
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        g->embedding_backward(g, dtable, dout, ids_dev, N, C);
        g->sync(g);
        clock_gettime(CLOCK_MONOTONIC, &b);
        double t = (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
        best = t < best ? t : best;
        double *h = xmalloc((size_t)N * C * sizeof *h);
        g->download(g, h, DT_F64, dtable, g->act, (size_t)N * C);
        if (rep == 0)
            memcpy(bits_out, h, (size_t)N * C * sizeof *h);
        else
            ck_assert_msg(!memcmp(bits_out, h, (size_t)N * C * sizeof *h),
                          "embedding_backward N%d: run %d differs from run 1", N, rep + 1);
        free(h);
    }
    return best;
}

START_TEST(test_embedding_backward_linear)
{
    backend *g = gpu(DT_F32);
    seed("embedding_backward_linear", 0);
    const int C = 8, Ns[2] = { 1024, 8192 };
    double t[2];
    for (int k = 0; k < 2; k++) {
        int N = Ns[k];
        int32_t *ids = xmalloc((size_t)N * sizeof *ids);
        for (int i = 0; i < N; i++)
            ids[i] = i;
        for (int i = N - 1; i > 0; i--) { /* a random permutation: every id distinct */
            int j = irand(i + 1), x = ids[i];
            ids[i] = ids[j], ids[j] = x;
        }
        double *dout = rnd((size_t)N * C, 1, DT_F32), *bits = xmalloc((size_t)N * C * sizeof *bits);
        int32_t *ids_dev = g->alloc(g, (size_t)N * sizeof *ids);
        void *dout_dev = g->alloc(g, (size_t)N * C * sizeof(float)), *dtable = g->alloc(g, (size_t)N * C * sizeof(float));
        g->upload(g, ids_dev, DT_I32, ids, DT_I32, (size_t)N);
        g->upload(g, dout_dev, DT_F32, dout, DT_F64, (size_t)N * C);
        t[k] = emb_backward_seconds(g, N, C, ids_dev, dout_dev, dtable, bits);
        for (int i = 0; i < N; i++) /* distinct ids: each table row is its one dout row */
            for (int c = 0; c < C; c++)
                ck_assert_msg(bits[(size_t)ids[i] * C + c] == (double)(float)dout[(size_t)i * C + c],
                              "embedding_backward N%d: row %d", N, ids[i]);
        g->free(g, ids_dev), g->free(g, dout_dev), g->free(g, dtable);
        free(ids), free(dout), free(bits);
    }
    double ratio = t[1] / t[0];
    if (getenv("ANATOMY_TEST_VERBOSE"))
        printf("  embedding_backward N %d: %.4f s, N %d: %.4f s, ratio %.1f\n", Ns[0], t[0], Ns[1], t[1], ratio);
    ck_assert_msg(ratio < 24.0, "embedding_backward: 8x the positions took %.1fx the time (%.4f s -> %.4f s): "
                  "not linear", ratio, t[0], t[1]);
    g->destroy(g);
}
END_TEST

START_TEST(test_sequence_embed)
{
    dtype act = mode(_i);
    backend *r = oracle(), *g = gpu(act);
    seed("sequence_embed", _i);
    for (int first = 0; first < 2; first++) {
        sq_case c = seq_case(3, 5, 32, 8, first, 0, act);
        parity(&c, r, g, act);
        c = seq_case(2, 7, 20, 7, first, 0, act); /* bf16: scalar path */
        parity(&c, r, g, act);
        c = seq_case(4, 1 + first, 13, 3, first, 0, act);
        parity(&c, r, g, act);
        c = seq_case(2, 6, 16, 6, first, 1, act); /* dx NULL */
        parity(&c, r, g, act);
    }
    r->destroy(r);
    g->destroy(g);
}
END_TEST

/* n = 1 at the first row, the last and one between; then ranges: every row,
 * all but the first (ViT's patch rows), a random one. C: the vector path,
 * the scalar one, a row wider than a block. */
START_TEST(test_rows_mean)
{
    dtype act = mode(_i);
    backend *r = oracle(), *g = gpu(act);
    seed("rows_mean", _i);
    static const int Cs[] = { 32, 20, 9, 264 };
    for (int j = 0; j < 4; j++) {
        int T = 5 + irand(4), ts[3] = { 0, T - 1, 1 + irand(T - 2) };
        for (int q = 0; q < 3; q++) {
            sq_case c = rows_case(3, T, Cs[j], ts[q], 1, act);
            parity(&c, r, g, act);
        }
        int t = irand(T - 1);
        int ranges[3][2] = { { 0, T }, { 1, T - 1 }, { t, 2 + irand(T - t - 1) } };
        for (int q = 0; q < 3; q++) {
            sq_case c = rows_case(3, T, Cs[j], ranges[q][0], ranges[q][1], act);
            parity(&c, r, g, act);
        }
    }
    sq_case c = rows_case(2, 50, 64, 1, 49, act); /* vit-mnist-p4's 49 patch rows */
    parity(&c, r, g, act);
    r->destroy(r);
    g->destroy(g);
}
END_TEST

START_TEST(test_tanh)
{
    dtype act = mode(_i);
    backend *r = oracle(), *g = gpu(act);
    seed("tanh", _i);
    static const int Ns[] = { 4096, 1001 }; /* aligned; ragged tail */
    for (int j = 0; j < 2; j++) {
        sq_case c = tanh_case(Ns[j], act);
        parity(&c, r, g, act);
    }
    r->destroy(r);
    g->destroy(g);
}
END_TEST

START_TEST(test_regression_loss)
{
    dtype act = mode(_i);
    backend *r = oracle(), *g = gpu(act);
    seed("regression_loss", _i);
    static const int shapes[][2] = { { 19, 32 }, { 10, 70 }, { 5, 1 }, { 3, 300 } }; /* N C */
    for (int kind = LOSS_MSE; kind <= LOSS_HUBER; kind++)
        for (int s = 0; s < 4; s++)
            for (int v = 0; v < 3; v++) { /* separate dpred; aliasing pred; none */
                sq_case c = loss_case(shapes[s][0], shapes[s][1], v == 1, v == 2, kind,
                                      (s + v) % 2, act);
                parity(&c, r, g, act);
            }
    r->destroy(r);
    g->destroy(g);
}
END_TEST

START_TEST(test_dropout)
{
    dtype act = mode(_i);
    seed("dropout", _i);
    backend *r = oracle(), *g = gpu(act);
    const size_t Ns[3] = { 4096, 1001, 37 };
    const float ps[3] = { 0.1f, 0.5f, 0.0f };
    for (int j = 0; j < 3; j++)
        for (int in_place = 0; in_place < 2; in_place++) {
            size_t N = Ns[j], off = j == 1; /* j = 1: one element off 16-byte alignment */
            float p = ps[j];
            uint64_t sd = rnext();
            double *x = rnd(N + off, 1, act), *want = xmalloc(N * sizeof *want),
                   *got = xmalloc(N * sizeof *got);
            for (size_t i = 0; i < N + off; i++)
                if (x[i] == 0)
                    x[i] = 1; /* so that 0 out means dropped */
            void *rx = up(r, DT_F64, x + off, N), *ry = poisoned(r, DT_F64, N);
            r->dropout_forward(r, ry, rx, N, p, sd);
            take(r, ry, DT_F64, NULL, N, want);
            r->free(r, rx);
            void *gx = up(g, act, x, N + off), *gin = buf_at(gx, off, act);
            void *gy = in_place ? gin : poisoned(g, act, N);
            g->dropout_forward(g, gy, gin, N, p, sd);
            g->download(g, got, DT_F64, gy, act, N);
            if (!in_place)
                g->free(g, gy);
            g->free(g, gx);
            char name[64];
            snprintf(name, sizeof name, "dropout N%zu p%g%s%s", N, p, off ? " unaligned" : "",
                     in_place ? " in place" : "");
            size_t dropped = 0;
            for (size_t i = 0; i < N; i++) {
                ck_assert_msg((got[i] == 0) == (want[i] == 0), "%s: element %zu is %g on %s, %g on the CPU",
                              name, i, got[i], g->name, want[i]);
                dropped += want[i] == 0;
            }
            ck_assert_msg(p == 0 ? dropped == 0 : dropped > 0, "%s: %zu dropped", name, dropped);
            expect_close(name, "out", act, got, want, N, tol(act));
            free(x);
            free(want);
            free(got);
        }
    g->destroy(g);
    r->destroy(r);
}
END_TEST

/* batchnorm (batchnorm.cu): forward in training (batch statistics, the
 * running estimates updated) and evaluation (running statistics; mean and
 * rstd not asked for in one case), plain and with the residual add, then
 * the backward from the GPU's own saved statistics, against the fp64 CPU
 * oracle run on the same inputs. Shapes: several row chunks (N > 256), more
 * than one block of 32 columns with a ragged edge, a few rows, no bias. The
 * oracle normalises the residual sum as the mode's type stores it; the
 * statistics (fp32) to 1e-5 in both modes. */
static void bn_parity(backend *r, backend *g, dtype act, int N, int C, int train, int fused, int nobias,
                      int no_stats)
{
    char name[96];
    snprintf(name, sizeof name, "batchnorm N%d C%d %s%s%s%s", N, C, train ? "train" : "eval",
             fused ? " residual" : "", nobias ? " no bias" : "", no_stats ? " no mean/rstd" : "");
    size_t n = (size_t)N * C;
    double *x = xmalloc(n * sizeof *x), *a = rnd(n, 1, act), *b = rnd(n, 1, act);
    double *w = rnd((size_t)C, 0.5, act), *bias = rnd((size_t)C, 0.5, act);
    double *rm = xmalloc((size_t)C * sizeof *rm), *rv = xmalloc((size_t)C * sizeof *rv);
    double *dy = rnd(n, 1, act), *px = rnd(n, 0.25, act), *pw = rnd((size_t)C, 0.25, act),
           *pb = rnd((size_t)C, 0.25, act);
    for (int j = 0; j < C; j++) { /* columns with their own offset and scale */
        double off = 3 * nrand(), sc = 0.3 + 2 * urand();
        for (int i = 0; i < N; i++) {
            size_t k = (size_t)i * C + j;
            a[k] = in_type(off + sc * a[k], act);
            x[k] = fused ? in_type(a[k] + b[k], act) : a[k]; /* the oracle's input: the stored sum */
        }
        w[j] = in_type(1 + w[j], act);
        rm[j] = (float)(off + 0.3 * nrand());
        rv[j] = (float)(sc * sc * (0.5 + urand()));
    }
    double *want = xmalloc(6 * n * sizeof *want), *got = xmalloc(6 * n * sizeof *got);
    /* [0, n): out; [n, 2n): dx; then per column: mean, rstd, rm, rv, dw, db */
    for (int k = 0; k < 2; k++) {
        backend *be = k ? g : r;
        dtype t = k ? act : DT_F64, st = be->stat;
        double *o = k ? got : want, *cols = o + 2 * n;
        void *dm = no_stats && k ? NULL : poisoned(be, st, (size_t)C);
        void *ds = no_stats && k ? NULL : poisoned(be, st, (size_t)C);
        void *drm = up(be, st, rm, (size_t)C), *drv = up(be, st, rv, (size_t)C);
        void *dw_ = up(be, t, w, (size_t)C), *db_ = nobias ? NULL : up(be, t, bias, (size_t)C);
        void *y = poisoned(be, t, n), *res = NULL, *in;
        if (fused && k) {
            void *da = up(be, t, a, n), *dbb = up(be, t, b, n);
            res = poisoned(be, t, n);
            be->residual_batchnorm_forward(be, res, y, dm, ds, drm, drv, da, dbb, dw_, db_, 0.1f, train, N,
                                           C);
            be->free(be, da);
            be->free(be, dbb);
            in = res;
        } else {
            in = up(be, t, x, n);
            be->batchnorm_forward(be, y, dm, ds, drm, drv, in, dw_, db_, 0.1f, train, N, C);
        }
        if (fused && k) { /* the stored residual stream is a + b in the mode's type */
            double *rs = xmalloc(n * sizeof *rs);
            be->download(be, rs, DT_F64, res, t, n);
            for (size_t i = 0; i < n; i++)
                rs[i] -= in_type(x[i], act);
            for (size_t i = 0; i < n; i++)
                ck_assert_msg(rs[i] == 0, "%s: res_out[%zu] is not a + b", name, i);
            free(rs);
        }
        take(be, y, t, NULL, n, o);
        take(be, drm, st, NULL, (size_t)C, cols + 2 * C);
        take(be, drv, st, NULL, (size_t)C, cols + 3 * C);
        void *gx = up(be, t, px, n), *gw = up(be, t, pw, (size_t)C);
        void *gb = nobias ? NULL : up(be, t, pb, (size_t)C), *ddy = up(be, t, dy, n);
        if (!no_stats || !k) {
            be->batchnorm_backward(be, gx, gw, gb, ddy, in, dw_, dm, ds, train, N, C);
            take(be, dm, st, NULL, (size_t)C, cols);
            take(be, ds, st, NULL, (size_t)C, cols + C);
        }
        take(be, gx, t, px, n, o + n);
        take(be, gw, t, pw, (size_t)C, cols + 4 * C);
        if (gb)
            take(be, gb, t, pb, (size_t)C, cols + 5 * C);
        be->free(be, ddy);
        be->free(be, in);
        be->free(be, dw_);
        if (db_)
            be->free(be, db_);
    }
    double tl = tol(act), ts = TOL_F32;
    double *wc = want + 2 * n, *gc = got + 2 * n;
    expect_close(name, "out", act, got, want, n, tl);
    expect_close(name, "running_mean", act, gc + 2 * C, wc + 2 * C, (size_t)C, ts);
    expect_close(name, "running_var", act, gc + 3 * C, wc + 3 * C, (size_t)C, ts);
    if (!no_stats) {
        expect_close(name, "mean", act, gc, wc, (size_t)C, ts);
        expect_close(name, "rstd", act, gc + C, wc + C, (size_t)C, ts);
        expect_close(name, "dx", act, got + n, want + n, n, tl);
        expect_close(name, "dweight", act, gc + 4 * C, wc + 4 * C, (size_t)C, tl);
        if (!nobias)
            expect_close(name, "dbias", act, gc + 5 * C, wc + 5 * C, (size_t)C, tl);
    }
    free(x), free(a), free(b), free(w), free(bias), free(rm), free(rv);
    free(dy), free(px), free(pw), free(pb), free(want), free(got);
}

START_TEST(test_batchnorm)
{
    dtype act = mode(_i);
    seed("batchnorm", _i);
    backend *r = oracle(), *g = gpu(act);
    static const int shapes[][2] = { { 300, 16 }, { 37, 70 }, { 600, 5 }, { 9, 8 } }; /* N C */
    for (int s = 0; s < 4; s++)
        for (int train = 1; train >= 0; train--)
            for (int fused = 0; fused < 2; fused++)
                bn_parity(r, g, act, shapes[s][0], shapes[s][1], train, fused, s == 2, !train && s == 1);
    r->destroy(r);
    g->destroy(g);
}
END_TEST

static Suite *seq_suite(void)
{
    Suite *s = suite_create("cuda_seq_ops");
    TCase *tc = tcase_create("parity");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_embedding, 0, 2);
    tcase_add_test(tc, test_embedding_backward_linear);
    tcase_add_loop_test(tc, test_sequence_embed, 0, 2);
    tcase_add_loop_test(tc, test_rows_mean, 0, 2);
    tcase_add_loop_test(tc, test_tanh, 0, 2);
    tcase_add_loop_test(tc, test_regression_loss, 0, 2);
    tcase_add_loop_test(tc, test_dropout, 0, 2);
    tcase_add_loop_test(tc, test_batchnorm, 0, 2);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    test_seed_init("test_cuda_seq_ops");
    SRunner *sr = srunner_create(seq_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
