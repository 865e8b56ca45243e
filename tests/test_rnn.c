/* test_rnn.c: the recurrent op and the FFNN, Elman and LSTM language models
 * on the CPU backends.
 *  - rnn_forward/rnn_backward (Elman and LSTM) against central finite
 *    differences in fp64, with a nonzero initial state, the final state as an
 *    output and resets inside the sequence; backward must ADD (gradient
 *    buffers start random)
 *  - the fp32 op against the fp64 one
 *  - tiny FFNN, RNN and LSTM models: every parameter's gradient against
 *    finite differences (fp64), fp32 against fp64
 *  - the carried state: two batches of T with the state carried give the
 *    outputs of one batch of 2T; a reset starts a stream afresh
 * Inputs are fresh random numbers; the seed is printed, ANATOMY_TEST_SEED
 * replays a run. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../data/errbuf.h"
#include "../data/rng.h"
#include "../data/shard.h"
#include "../host/family.h"
#include "../host/models/ffnn.h"
#include "../host/models/rnn.h"
#include "../kernels/ops.h"
#include "gradcheck.h"

static uint64_t base_seed;
#define SEED(k) (base_seed + (uint64_t)(k))

static rng_state rs;

static double *rand_vec(size_t n, double scale)
{
    double *x = malloc((n ? n : 1) * sizeof *x);
    ck_assert_ptr_nonnull(x);
    for (size_t i = 0; i < n; i++)
        x[i] = scale * rng_normal(&rs);
    return x;
}

static double rel_l2(const double *a, const double *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        ck_assert_msg(!isnan(a[i]), "NaN at %zu", i);
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

static backend *mk(int fp64)
{
    char err[ERRBUF] = "";
    backend *be = fp64 ? backend_cpu64_create(1, err) : backend_cpu_create(2, err);
    ck_assert_msg(be != NULL, "backend: %s", err);
    return be;
}

static void *up(backend *be, const double *h, size_t n)
{
    void *d = be->alloc(be, (n ? n : 1) * dtype_size(be->act));
    ck_assert_ptr_nonnull(d);
    be->upload(be, d, be->act, h, DT_F64, n);
    return d;
}

static void *poisoned(backend *be, size_t n)
{
    void *d = be->alloc(be, (n ? n : 1) * dtype_size(be->act));
    ck_assert_ptr_nonnull(d);
    be->fill(be, d, be->act, NAN, n);
    return d;
}

static void down(backend *be, double *h, const void *d, size_t n)
{
    be->download(be, h, DT_F64, d, be->act, n);
}

/* ---- the op ---------------------------------------------------------------- */

enum { IN_X, IN_H0, IN_C0, IN_WIH, IN_WHH, IN_BIH, IN_BHH, NIN };

typedef struct {
    int cell, B, T, D, H;
    size_t n[NIN];
    double *in[NIN];
    int32_t *reset; /* host [B,T] */
    double *ry, *rh, *rc; /* objective weights for y, hT, cT */
} op_case;

static void op_case_init(op_case *c, int cell, int B, int T, int D, int H)
{
    int G = cell == RNN_CELL_LSTM ? 4 : 1;
    c->cell = cell;
    c->B = B;
    c->T = T;
    c->D = D;
    c->H = H;
    size_t n[NIN] = { (size_t)B * T * D, (size_t)B * H, (size_t)B * H, (size_t)G * H * D,
                      (size_t)G * H * H, (size_t)G * H, (size_t)G * H };
    for (int k = 0; k < NIN; k++) {
        c->n[k] = n[k];
        c->in[k] = rand_vec(n[k], k >= IN_WIH ? 0.5 : 0.8);
    }
    c->reset = malloc((size_t)B * T * sizeof *c->reset);
    for (int i = 0; i < B * T; i++)
        c->reset[i] = rng_below(&rs, 6) == 0;
    c->reset[0] = 0; /* row 0 reads h0 at t = 0 */
    if (B > 1)
        c->reset[T] = 1; /* row 1 does not */
    c->ry = rand_vec((size_t)B * T * H, 1);
    c->rh = rand_vec((size_t)B * H, 1);
    c->rc = rand_vec((size_t)B * H, 1);
}

static void op_case_free(op_case *c)
{
    for (int k = 0; k < NIN; k++)
        free(c->in[k]);
    free(c->reset);
    free(c->ry);
    free(c->rh);
    free(c->rc);
}

/* Runs forward (and with grads != NULL, backward with dy = ry, dhT = rh, dcT =
 * rc into gradient buffers pre-filled with pre[k]; grads[k] gets what is
 * there after). Returns the objective sum(y ry) + sum(hT rh) + sum(cT rc) and
 * fills y, hT, cT when given. */
static double op_run(backend *be, const op_case *c, double **grads, double **pre, double *y,
                     double *hT, double *cT)
{
    int lstm = c->cell == RNN_CELL_LSTM;
    size_t BTH = (size_t)c->B * c->T * c->H, BH = (size_t)c->B * c->H;
    void *d[NIN], *dg[NIN];
    for (int k = 0; k < NIN; k++)
        d[k] = up(be, c->in[k], c->n[k]);
    int32_t *reset = be->alloc(be, (size_t)c->B * c->T * 4);
    be->upload(be, reset, DT_I32, c->reset, DT_I32, (size_t)c->B * c->T);
    void *dy = poisoned(be, BTH), *dh = poisoned(be, BH), *dc = poisoned(be, BH);
    size_t wb = be->rnn_work_bytes(be, c->cell, c->B, c->T, c->D, c->H);
    void *work = be->alloc(be, wb ? wb : 1);
    be->rnn_forward(be, c->cell, dy, dh, lstm ? dc : NULL, work, d[IN_X], d[IN_H0],
                    lstm ? d[IN_C0] : NULL, reset, d[IN_WIH], d[IN_WHH], d[IN_BIH], d[IN_BHH],
                    c->B, c->T, c->D, c->H);
    double *hy = malloc(BTH * sizeof *hy), *hh = malloc(BH * sizeof *hh), *hc = malloc(BH * sizeof *hc);
    down(be, hy, dy, BTH);
    down(be, hh, dh, BH);
    down(be, hc, dc, BH);
    double obj = dotv(hy, c->ry, BTH) + dotv(hh, c->rh, BH) + (lstm ? dotv(hc, c->rc, BH) : 0);
    if (y)
        memcpy(y, hy, BTH * sizeof *y);
    if (hT)
        memcpy(hT, hh, BH * sizeof *hT);
    if (cT && lstm)
        memcpy(cT, hc, BH * sizeof *cT);
    if (grads) {
        void *gy = up(be, c->ry, BTH), *gh = up(be, c->rh, BH), *gc = up(be, c->rc, BH);
        for (int k = 0; k < NIN; k++)
            dg[k] = up(be, pre[k], c->n[k]);
        be->rnn_backward(be, c->cell, dg[IN_X], dg[IN_H0], lstm ? dg[IN_C0] : NULL, dg[IN_WIH],
                         dg[IN_WHH], dg[IN_BIH], dg[IN_BHH], gy, gh, lstm ? gc : NULL, work,
                         d[IN_X], dy, d[IN_H0], lstm ? d[IN_C0] : NULL, reset, d[IN_WIH],
                         d[IN_WHH], c->B, c->T, c->D, c->H);
        for (int k = 0; k < NIN; k++) {
            down(be, grads[k], dg[k], c->n[k]);
            be->free(be, dg[k]);
        }
        be->free(be, gy);
        be->free(be, gh);
        be->free(be, gc);
    }
    for (int k = 0; k < NIN; k++)
        be->free(be, d[k]);
    be->free(be, reset);
    be->free(be, dy);
    be->free(be, dh);
    be->free(be, dc);
    be->free(be, work);
    free(hy);
    free(hh);
    free(hc);
    return obj;
}

/* fd_gradient's view of op_run: the objective at the case's inputs as they stand */
typedef struct { backend *be; const op_case *c; } op_at;
static double op_loss_at(void *ctx)
{
    op_at *a = ctx;
    return op_run(a->be, a->c, NULL, NULL, NULL, NULL, NULL);
}

static const char *in_names[NIN] = { "x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh" };

/* loop index: bit 0 = LSTM, bit 1 = no reset mask */
START_TEST(test_op_gradcheck)
{
    int cell = _i & 1 ? RNN_CELL_LSTM : RNN_CELL_TANH;
    rng_seed(&rs, SEED(100 + _i));
    op_case c;
    op_case_init(&c, cell, 3, 5, 4, 3);
    if (_i & 2) {
        free(c.reset);
        c.reset = calloc((size_t)c.B * c.T, sizeof *c.reset);
    }
    backend *be = mk(1);
    double *pre[NIN], *got[NIN];
    for (int k = 0; k < NIN; k++) {
        pre[k] = rand_vec(c.n[k], 1);
        got[k] = malloc(c.n[k] * sizeof(double));
    }
    op_run(be, &c, got, pre, NULL, NULL, NULL);
    const double h = 1e-6;
    for (int k = 0; k < NIN; k++) {
        if (k == IN_C0 && cell != RNN_CELL_LSTM)
            continue;
        double *fd = malloc(c.n[k] * sizeof *fd), *an = malloc(c.n[k] * sizeof *an);
        fd_gradient(fd, c.in[k], c.n[k], h, op_loss_at, &(op_at){ be, &c });
        for (size_t i = 0; i < c.n[k]; i++)
            an[i] = got[k][i] - pre[k][i]; /* what backward added */
        double e = rel_l2(an, fd, c.n[k]);
        ck_assert_msg(e < 1e-6, "%s d%s vs finite differences: rel L2 %g",
                      cell == RNN_CELL_LSTM ? "lstm" : "elman", in_names[k], e);
        free(fd);
        free(an);
    }
    for (int k = 0; k < NIN; k++) {
        free(pre[k]);
        free(got[k]);
    }
    op_case_free(&c);
    be->destroy(be);
}
END_TEST

/* fp32 against fp64 on float-exact inputs: outputs, final state, gradients */
START_TEST(test_op_fp32_vs_fp64)
{
    int cell = _i ? RNN_CELL_LSTM : RNN_CELL_TANH;
    rng_seed(&rs, SEED(200 + _i));
    op_case c;
    op_case_init(&c, cell, 4, 9, 24, 16);
    for (int k = 0; k < NIN; k++)
        for (size_t i = 0; i < c.n[k]; i++)
            c.in[k][i] = (float)c.in[k][i];
    backend *b64 = mk(1), *b32 = mk(0);
    size_t BTH = (size_t)c.B * c.T * c.H, BH = (size_t)c.B * c.H;
    double *y[2], *hT[2], *cT[2], *g[2][NIN], *pre[NIN];
    for (int k = 0; k < NIN; k++) {
        pre[k] = rand_vec(c.n[k], 1);
        for (size_t i = 0; i < c.n[k]; i++)
            pre[k][i] = (float)pre[k][i];
    }
    for (int v = 0; v < 2; v++) {
        y[v] = malloc(BTH * sizeof(double));
        hT[v] = malloc(BH * sizeof(double));
        cT[v] = calloc(BH, sizeof(double));
        for (int k = 0; k < NIN; k++)
            g[v][k] = malloc(c.n[k] * sizeof(double));
        op_run(v ? b32 : b64, &c, g[v], pre, y[v], hT[v], cT[v]);
    }
    ck_assert_double_lt(rel_l2(y[1], y[0], BTH), 1e-5);
    ck_assert_double_lt(rel_l2(hT[1], hT[0], BH), 1e-5);
    if (cell == RNN_CELL_LSTM)
        ck_assert_double_lt(rel_l2(cT[1], cT[0], BH), 1e-5);
    for (int k = 0; k < NIN; k++) {
        if (k == IN_C0 && cell != RNN_CELL_LSTM)
            continue;
        double e = rel_l2(g[1][k], g[0][k], c.n[k]);
        ck_assert_msg(e < 1e-5, "fp32 d%s: rel L2 %g", in_names[k], e);
    }
    for (int v = 0; v < 2; v++) {
        free(y[v]);
        free(hT[v]);
        free(cT[v]);
        for (int k = 0; k < NIN; k++)
            free(g[v][k]);
    }
    for (int k = 0; k < NIN; k++)
        free(pre[k]);
    op_case_free(&c);
    b64->destroy(b64);
    b32->destroy(b32);
}
END_TEST

/* Running T steps, then T more from the final state, equals 2T steps at once. */
START_TEST(test_op_state_chains)
{
    int cell = _i ? RNN_CELL_LSTM : RNN_CELL_TANH, lstm = _i;
    rng_seed(&rs, SEED(300 + _i));
    int B = 3, T = 4, D = 5, H = 6;
    op_case whole, a, b;
    op_case_init(&whole, cell, B, 2 * T, D, H);
    op_case_init(&a, cell, B, T, D, H);
    op_case_init(&b, cell, B, T, D, H);
    for (int k = IN_WIH; k < NIN; k++) {
        memcpy(a.in[k], whole.in[k], whole.n[k] * sizeof(double));
        memcpy(b.in[k], whole.in[k], whole.n[k] * sizeof(double));
    }
    memcpy(a.in[IN_H0], whole.in[IN_H0], (size_t)B * H * sizeof(double));
    memcpy(a.in[IN_C0], whole.in[IN_C0], (size_t)B * H * sizeof(double));
    for (int r = 0; r < B; r++)
        for (int t = 0; t < 2 * T; t++) {
            double *dst = (t < T ? a.in[IN_X] : b.in[IN_X]) + ((size_t)r * T + t % T) * D;
            memcpy(dst, whole.in[IN_X] + ((size_t)r * 2 * T + t) * D, (size_t)D * sizeof(double));
            (t < T ? a.reset : b.reset)[r * T + t % T] = whole.reset[r * 2 * T + t];
        }
    backend *be = mk(1);
    double *yw = malloc((size_t)B * 2 * T * H * sizeof(double));
    double *ya = malloc((size_t)B * T * H * sizeof(double)), *yb = malloc((size_t)B * T * H * sizeof(double));
    op_run(be, &whole, NULL, NULL, yw, NULL, NULL);
    op_run(be, &a, NULL, NULL, ya, b.in[IN_H0], lstm ? b.in[IN_C0] : NULL);
    op_run(be, &b, NULL, NULL, yb, NULL, NULL);
    for (int r = 0; r < B; r++)
        for (int t = 0; t < 2 * T; t++)
            for (int j = 0; j < H; j++) {
                double got = (t < T ? ya : yb)[((size_t)r * T + t % T) * H + j];
                double want = yw[((size_t)r * 2 * T + t) * H + j];
                ck_assert_msg(fabs(got - want) <= 1e-12 * (1 + fabs(want)),
                              "row %d step %d: %g vs %g", r, t, got, want);
            }
    free(yw);
    free(ya);
    free(yb);
    op_case_free(&whole);
    op_case_free(&a);
    op_case_free(&b);
    be->destroy(be);
}
END_TEST

/* ---- the models ------------------------------------------------------------ */

static const ffnn_config tiny_ffnn = { .V = 11, .n = 3, .C = 4, .H = 5, .direct = 1 };
static const rnn_config tiny_rnn = { .V = 11, .C = 4, .H = 5, .L = 2, .eot = 10 };

/* family k: 0 ffnn, 1 rnn, 2 lstm */
static const model_family *fam_of(int k)
{
    return k == 0 ? &ffnn_family : k == 1 ? &rnn_family : &lstm_family;
}

static model *mk_model(backend *be, int k, int B, int T)
{
    char err[ERRBUF] = "";
    const int *v = k == 0 ? (const int *)&tiny_ffnn : (const int *)&tiny_rnn;
    model_config mc = { fam_of(k), { 0 } };
    memcpy(mc.v, v, (k == 0 ? sizeof tiny_ffnn : sizeof tiny_rnn));
    ck_assert_msg(family_check(&mc, err) == 0, "%s", err);
    model *m = fam_of(k)->create(be, v, err);
    ck_assert_msg(m != NULL, "%s", err);
    ck_assert_msg(m->plan(m, B, T, err) == 0, "%s", err);
    return m;
}

static void random_tokens(int32_t *in, int32_t *tg, int n, int V, int eot)
{
    for (int i = 0; i < n; i++) {
        in[i] = (int32_t)rng_below(&rs, (uint64_t)V);
        if (eot >= 0 && in[i] == eot && rng_below(&rs, 2))
            in[i] = 0; /* some end-of-text tokens, not too many */
        tg[i] = rng_below(&rs, 6) == 0 ? -1 : (int32_t)rng_below(&rs, (uint64_t)V);
    }
    tg[0] = 1;
}

/* every parameter's gradient against central differences, fp64; the batch
 * resets every row (the carried state is the op test's) and holds
 * end-of-text tokens, where the recurrent models reset inside the rows.
 * _i = family (0 ffnn, 1 rnn, 2 lstm), + 3: with dropout 0.3 (one fixed
 * mask, so the loss is still a smooth function of the parameters) */
START_TEST(test_model_gradcheck)
{
    int k = _i % 3;
    rng_seed(&rs, SEED(400 + _i));
    backend *be = mk(1);
    int B = 2, T = 6;
    model *m = mk_model(be, k, B, T);
    size_t n = m->nparams;
    double *p = rand_vec(n, 0.5), *g = malloc(n * sizeof *g), *fd = malloc(n * sizeof *fd);
    int32_t in[12], tg[12];
    uint8_t resets[2] = { 1, 1 };
    random_tokens(in, tg, B * T, 11, 10);
    in[3] = 10;
    model_batch b = { .tokens = in, .targets = tg, .resets = resets };
    if (_i >= 3) {
        double plain = model_loss_grad(m, p, &b, NULL);
        m->dropout = 0.3f;
        m->dropout_seed = SEED(410 + _i);
        ck_assert_msg(fabs(model_loss_grad(m, p, &b, NULL) - plain) > 1e-6,
                      "%s: dropout 0.3 leaves the loss at %.9f", fam_of(k)->name, plain);
    }
    model_loss_grad(m, p, &b, g);
    const double h = 1e-5;
    model_fd_gradient(fd, m, p, &b, h);
    double e = rel_l2(g, fd, n);
    ck_assert_msg(e < 1e-7, "%s%s gradient vs finite differences: rel L2 %g", fam_of(k)->name,
                  _i >= 3 ? " with dropout" : "", e);
    /* padded output rows get exactly zero gradient */
    const param_view *out = &m->views[m->nviews - (k == 0 ? 3 : 2)];
    for (int r = 11; r < out->shape[0]; r++)
        for (int c = 0; c < out->shape[1]; c++)
            ck_assert(g[out->offset + (size_t)r * out->shape[1] + c] == 0.0);
    free(p);
    free(g);
    free(fd);
    m->destroy(m);
    be->destroy(be);
}
END_TEST

/* the fp32 backend against the fp64 one: loss and gradients, two micro-batches
 * of one stream (the second starts from the first's state) */
START_TEST(test_model_fp32_vs_fp64)
{
    rng_seed(&rs, SEED(500 + _i));
    backend *b64 = mk(1), *b32 = mk(0);
    int B = 3, T = 7;
    model *m64 = mk_model(b64, _i, B, T), *m32 = mk_model(b32, _i, B, T);
    size_t n = m64->nparams;
    double *p = rand_vec(n, 0.5), *g64 = malloc(n * sizeof *g64), *g32 = malloc(n * sizeof *g32);
    for (size_t i = 0; i < n; i++)
        p[i] = (float)p[i];
    int32_t in[2][21], tg[2][21];
    uint8_t resets[2][3] = { { 1, 1, 1 }, { 0, 1, 0 } };
    for (int k = 0; k < 2; k++)
        random_tokens(in[k], tg[k], B * T, 11, 10);
    double l64 = 0, l32 = 0;
    uint8_t src_resets[3]; /* one source: one resets buffer */
    for (int k = 0; k < 2; k++) {
        memcpy(src_resets, resets[k], sizeof src_resets);
        model_batch b = { .tokens = in[k], .targets = tg[k], .resets = src_resets };
        l64 = model_loss_grad(m64, p, &b, g64);
        l32 = model_loss_grad(m32, p, &b, g32);
    }
    ck_assert_msg(fabs(l32 - l64) <= 1e-5 * fabs(l64), "loss %.9g vs %.9g", l32, l64);
    double e = rel_l2(g32, g64, n);
    ck_assert_msg(e < 1e-5, "%s fp32 gradients: rel L2 %g", fam_of(_i)->name, e);
    free(p);
    free(g64);
    free(g32);
    m64->destroy(m64);
    m32->destroy(m32);
    b64->destroy(b64);
    b32->destroy(b32);
}
END_TEST

/* All logits of the last forward, [B,T,V]. */
static void all_logits(model *m, double *out)
{
    float row[16];
    for (int b = 0; b < m->B; b++)
        for (int t = 0; t < m->T; t++) {
            m->logits(m, b, t, row);
            for (int v = 0; v < m->V; v++)
                out[((size_t)b * m->T + t) * m->V + v] = row[v];
        }
}

/* The carried state: two micro-batches of T, the second continuing the
 * first's streams, give the logits of one micro-batch of 2T; a row marked in
 * resets starts afresh (as a sequence alone would), and so does the position
 * of an end-of-text token. */
START_TEST(test_state_carried)
{
    rng_seed(&rs, SEED(600 + _i));
    int k = 1 + _i, B = 3, T = 5, V = 11;
    backend *be = mk(1);
    model *whole = mk_model(be, k, B, 2 * T), *half = mk_model(be, k, B, T);
    model *alone = mk_model(be, k, 1, T);
    size_t n = whole->nparams;
    double *p = rand_vec(n, 0.5);
    be->upload(be, whole->params, be->act, p, DT_F64, n);
    be->upload(be, half->params, be->act, p, DT_F64, n);
    be->upload(be, alone->params, be->act, p, DT_F64, n);
    int32_t in[30], tg[30], part[2][15], tgp[2][15];
    random_tokens(in, tg, B * 2 * T, V, -1);
    for (int i = 0; i < B * 2 * T; i++)
        in[i] = in[i] == 10 ? 9 : in[i]; /* no end-of-text token yet */
    in[2 * T + T + 2] = 10; /* row 1, step T+2 of 2T: a document starts there */
    for (int r = 0; r < B; r++)
        for (int t = 0; t < 2 * T; t++) {
            part[t / T][r * T + t % T] = in[r * 2 * T + t];
            tgp[t / T][r * T + t % T] = tg[r * 2 * T + t];
        }
    size_t NW = (size_t)B * 2 * T * V, NH = (size_t)B * T * V;
    double *lw = malloc(NW * sizeof *lw), *lh[2], *la = malloc((size_t)T * V * sizeof *la);
    uint8_t rw[3] = { 1, 1, 1 }, r0[3] = { 1, 1, 1 }, r1[3] = { 0, 0, 1 };
    model_batch bw = { .tokens = in, .targets = tg, .resets = rw };
    whole->forward(whole, &bw, 0.0f);
    all_logits(whole, lw);
    uint8_t *rh[2] = { r0, r1 }, src_resets[3]; /* one source: one resets buffer */
    for (int j = 0; j < 2; j++) {
        lh[j] = malloc(NH * sizeof(double));
        memcpy(src_resets, rh[j], sizeof src_resets);
        model_batch bh = { .tokens = part[j], .targets = tgp[j], .resets = src_resets };
        half->forward(half, &bh, 0.0f);
        all_logits(half, lh[j]);
    }
    /* rows 0 and 1 continue; row 2 was reset at the second micro-batch */
    for (int r = 0; r < 2; r++)
        for (int t = 0; t < 2 * T; t++)
            for (int v = 0; v < V; v++) {
                double got = lh[t / T][((size_t)r * T + t % T) * V + v];
                double want = lw[((size_t)r * 2 * T + t) * V + v];
                ck_assert_msg(fabs(got - want) <= 1e-9 * (1 + fabs(want)),
                              "row %d step %d: %.12g vs %.12g", r, t, got, want);
            }
    /* row 2 of the second micro-batch = its tokens alone */
    uint8_t one = 1;
    model_batch ba = { .tokens = part[1] + 2 * T, .targets = tgp[1] + 2 * T, .resets = &one };
    alone->forward(alone, &ba, 0.0f);
    all_logits(alone, la);
    for (size_t i = 0; i < (size_t)T * V; i++)
        ck_assert(fabs(la[i] - lh[1][2 * (size_t)T * V + i]) <= 1e-9 * (1 + fabs(la[i])));
    /* and that differs from the carried row (the state mattered) */
    double diff = 0;
    for (int t = T; t < 2 * T; t++)
        for (int v = 0; v < V; v++)
            diff += fabs(lw[((size_t)2 * 2 * T + t) * V + v] - la[(size_t)(t - T) * V + v]);
    ck_assert_msg(diff > 1e-6, "the carried state made no difference");
    /* from the end-of-text token on, row 1 is its document alone */
    int32_t doc[5];
    for (int t = 0; t < T; t++)
        doc[t] = in[2 * T + T + 2 + (t < T - 2 ? t : T - 3)];
    model_batch bd = { .tokens = doc, .targets = NULL, .resets = &one };
    alone->forward(alone, &bd, 0.0f);
    all_logits(alone, la);
    for (int t = 0; t < T - 2; t++)
        for (int v = 0; v < V; v++) {
            double want = la[(size_t)t * V + v];
            double got = lw[((size_t)1 * 2 * T + T + 2 + t) * V + v];
            ck_assert_msg(fabs(got - want) <= 1e-9 * (1 + fabs(want)),
                          "after end of text, step %d: %.12g vs %.12g", t, got, want);
        }
    free(p);
    free(lw);
    free(lh[0]);
    free(lh[1]);
    free(la);
    whole->destroy(whole);
    half->destroy(half);
    alone->destroy(alone);
    be->destroy(be);
}
END_TEST

/* The FFNN's window: a token outside it changes nothing, one inside does. */
START_TEST(test_ffnn_window)
{
    rng_seed(&rs, SEED(700));
    backend *be = mk(1);
    int T = 8, V = 11, n = tiny_ffnn.n;
    model *m = mk_model(be, 0, 1, T);
    double *p = rand_vec(m->nparams, 0.5);
    be->upload(be, m->params, be->act, p, DT_F64, m->nparams);
    int32_t in[8], tg[8];
    random_tokens(in, tg, T, V, -1);
    double *a = malloc((size_t)T * V * sizeof *a), *b = malloc((size_t)T * V * sizeof *b);
    model_batch mb = { .tokens = in };
    m->forward(m, &mb, 0.0f);
    all_logits(m, a);
    in[2] = (in[2] + 1) % V; /* seen by positions 2 .. 2+n-1 only */
    m->forward(m, &mb, 0.0f);
    all_logits(m, b);
    for (int t = 0; t < T; t++) {
        double d = 0;
        for (int v = 0; v < V; v++)
            d += fabs(a[t * V + v] - b[t * V + v]);
        if (t >= 2 && t < 2 + n)
            ck_assert_msg(d > 0, "position %d does not see token 2", t);
        else
            ck_assert_msg(d == 0, "position %d sees token 2, outside its window", t);
    }
    free(p);
    free(a);
    free(b);
    m->destroy(m);
    be->destroy(be);
}
END_TEST

/* Config errors name the option. */
START_TEST(test_bad_config)
{
    char err[ERRBUF] = "";
    rnn_config c = tiny_rnn;
    c.eot = 11;
    model_config mc = { &lstm_family, { 0 } };
    memcpy(mc.v, &c, sizeof c);
    ck_assert_int_eq(family_check(&mc, err), -1);
    ck_assert_ptr_nonnull(strstr(err, "--eot"));
    ffnn_config f = tiny_ffnn;
    f.n = 0;
    model_config mf = { &ffnn_family, { 0 } };
    memcpy(mf.v, &f, sizeof f);
    ck_assert_int_eq(family_check(&mf, err), -1);
    ck_assert_ptr_nonnull(strstr(err, "--window"));
    int v[FAMILY_MAXFIELDS];
    ck_assert_int_eq(lstm_family.preset("lstm-nope", v, err), -1);
    ck_assert_ptr_nonnull(strstr(err, "--preset"));
    ck_assert_int_eq(ffnn_family.preset("ffnn-small", v, err), 0);
    ck_assert_int_eq(rnn_family.preset("rnn-small", v, err), 0);
}
END_TEST

/* The recurrent families' batch source: B streams per rank; row b of
 * micro-batch j+1 continues row b of micro-batch j; all rows reset at the
 * start of an epoch of K micro-batches and after a seek; seek reproduces;
 * ranks read disjoint streams; too little data is a clear error. */
START_TEST(test_stream_source)
{
    char err[ERRBUF] = "", path[] = "/tmp/anatomy_test_rnn_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    rng_seed(&rs, SEED(800));
    size_t N = 1000;
    uint16_t *tok = malloc(N * sizeof *tok);
    for (size_t i = 0; i < N; i++)
        tok[i] = (uint16_t)rng_below(&rs, 11);
    ck_assert_msg(shard_write(path, tok, N, err) == 0, "%s", err);
    backend *be = mk(1);
    int B = 3, T = 7, world = 2;
    model *m = mk_model(be, 2, B, T);
    uint64_t K = (N - 1) / T / ((uint64_t)B * world);
    batch_source *src[2];
    for (int r = 0; r < world; r++) {
        data_spec ds = { path, B, T, r, world, 1, 5, SPLIT_TRAIN, 0, 0, 0, 0, 0 };
        src[r] = rnn_family.open_data(m, &ds, err);
        ck_assert_msg(src[r] != NULL, "%s", err);
        ck_assert_uint_eq(src[r]->epoch_batches(src[r]), K);
    }
    int32_t *keep = malloc((size_t)B * T * sizeof *keep);
    for (uint64_t j = 0; j < K + 2; j++)
        for (int r = 0; r < world; r++) {
            batch_source *s = src[r];
            ck_assert_int_eq(s->next(s, err), 0);
            const model_batch *b = &s->batch;
            for (int row = 0; row < B; row++) {
                uint64_t stream = (uint64_t)r * B + row, k = j % K;
                size_t start = (size_t)((stream * K + k) * T);
                ck_assert_int_eq(b->resets[row], k == 0);
                for (int t = 0; t < T; t++) {
                    ck_assert_int_eq(b->tokens[row * T + t], tok[start + t]);
                    ck_assert_int_eq(b->targets[row * T + t], tok[start + t + 1]);
                }
            }
            if (r == 0 && j == 3)
                memcpy(keep, b->tokens, (size_t)B * T * sizeof *keep);
        }
    ck_assert_uint_eq(src[0]->position(src[0]), K + 2);
    src[0]->seek(src[0], 3);
    ck_assert_int_eq(src[0]->next(src[0], err), 0);
    ck_assert(memcmp(keep, src[0]->batch.tokens, (size_t)B * T * sizeof *keep) == 0);
    for (int row = 0; row < B; row++)
        ck_assert_int_eq(src[0]->batch.resets[row], 1); /* the state was not saved */
    ck_assert_int_eq(src[0]->next(src[0], err), 0);
    ck_assert_int_eq(src[0]->batch.resets[0], 0);
    for (int r = 0; r < world; r++)
        src[r]->close(src[r]);
    data_spec big = { path, 100, 50, 0, 1, 0, 0, SPLIT_VAL, 0, 0, 0, 0, 0 };
    ck_assert_ptr_null(rnn_family.open_data(m, &big, err));
    ck_assert_ptr_nonnull(strstr(err, "too few"));
    ck_assert_ptr_nonnull(strstr(err, path));
    unlink(path);
    free(tok);
    free(keep);
    m->destroy(m);
    be->destroy(be);
}
END_TEST

/* Sampling's one-token steps (decode_step) give the logits of a forward over
 * the whole sequence, end-of-text resets included, and a new sequence at
 * position 0 starts from a zero state. */
START_TEST(test_decode_equals_forward)
{
    rng_seed(&rs, SEED(900 + _i));
    int k = 1 + _i, T = 9, V = 11;
    char err[ERRBUF] = "";
    backend *be = mk(1);
    model *m = mk_model(be, k, 1, T);
    double *p = rand_vec(m->nparams, 0.5);
    be->upload(be, m->params, be->act, p, DT_F64, m->nparams);
    int32_t in[9], tg[9];
    random_tokens(in, tg, T, V, -1);
    in[4] = 10; /* end of text: the state restarts there */
    double *want = malloc((size_t)T * V * sizeof *want);
    model_batch b = { .tokens = in };
    m->forward(m, &b, 0.0f);
    all_logits(m, want);
    ck_assert_msg(m->decode_plan(m, 4, err) == 0, "%s", err);
    float row[16];
    for (int rep = 0; rep < 2; rep++) /* the second pass starts again at position 0 */
        for (int t = 0; t < T; t++) {
            m->decode_step(m, in[t], t, row);
            for (int v = 0; v < V; v++) {
                double w = want[(size_t)t * V + v];
                ck_assert_msg(fabs(row[v] - w) <= 1e-6 * (1 + fabs(w)),
                              "%s step %d: %.9g vs %.9g", fam_of(k)->name, t, row[v], w);
            }
        }
    free(p);
    free(want);
    m->destroy(m);
    be->destroy(be);
}
END_TEST

static Suite *rnn_suite(void)
{
    Suite *s = suite_create("rnn");
    TCase *tc = tcase_create("op");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_op_gradcheck, 0, 4);
    tcase_add_loop_test(tc, test_op_fp32_vs_fp64, 0, 2);
    tcase_add_loop_test(tc, test_op_state_chains, 0, 2);
    suite_add_tcase(s, tc);
    TCase *tm = tcase_create("model");
    tcase_set_timeout(tm, 120);
    tcase_add_loop_test(tm, test_model_gradcheck, 0, 6);
    tcase_add_loop_test(tm, test_model_fp32_vs_fp64, 0, 3);
    tcase_add_loop_test(tm, test_state_carried, 0, 2);
    tcase_add_test(tm, test_ffnn_window);
    tcase_add_test(tm, test_bad_config);
    tcase_add_test(tm, test_stream_source);
    tcase_add_loop_test(tm, test_decode_equals_forward, 0, 2);
    suite_add_tcase(s, tm);
    return s;
}

int main(void)
{
    const char *env = getenv("ANATOMY_TEST_SEED");
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    base_seed = env ? strtoull(env, NULL, 0) : (uint64_t)ts.tv_sec * 1000003u + (uint64_t)ts.tv_nsec;
    printf("test_rnn: seed %llu (ANATOMY_TEST_SEED to replay)\n", (unsigned long long)base_seed);
    fflush(stdout);
    SRunner *sr = srunner_create(rnn_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
