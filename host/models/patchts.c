/* patchts.c: the PatchTST-style forecaster (patchts.h) and the series batch
 * source both time-series families read.
 *
 * For each window b and channel c separately (channel independence):
 *   RevIN:  xn = (x - mu) / sd     mu, sd: the window's own mean and std (host)
 *   patches p_n = xn[n*S : n*S + P]  (the end padded by S copies of the last value)
 *   e_n = W_P p_n + b_P + pos_n      (one matmul, then sequence_embed with positions)
 *   z   = transformer(e)             (the shared stack, bidirectional: pre-LN, or
 *                                     post-LN in PatchTST's order with post_ln)
 *   f   = W_H flatten(z) + b_H       (the next H values, in RevIN units)
 *   forecast = f * sd + mu
 *   loss = mean over elements of l(forecast - y)  (l: m->loss_kind, squared error
 *                                                  by default; absolute, Huber)
 *        = mean of sd^2 l_sd(f - (y - mu)/sd)
 * The last line is how the loss is computed: the regression_loss op compares
 * f with the target (y - mu)/sd (uploaded, the batch is host data) in each
 * row's unit sd (ops.h: l_sd(e) = l(sd e) / sd^2, e^2 for the squared error),
 * and the host weights each row's loss and gradient by sd^2 in double. So the
 * loss, its gradient and the metrics (mse and mae, whatever the loss) are
 * those of the de-normalised forecast in the training-normalised space, as
 * PatchTST trains and reports them. */
#include "patchts.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../data/errbuf.h"
#include "../../data/rng.h"
#include "../../data/series.h"
#include "transformer.h"

#define REVIN_EPS 1e-5

/* ---- config ---- */

static const family_field patchts_fields[] = {
    { "channels", "channels", "series channels (numeric CSV columns)", 1, 4096, 0, NULL },
    { "lookback", "lookback", "input steps per channel", 1, 1 << 16, 0, NULL },
    { "horizon", "horizon", "steps forecast", 1, 1 << 16, 0, NULL },
    { "patch", "patch", "patch length", 1, 4096, 0, NULL },
    { "stride", "stride", "patch stride", 1, 4096, 0, NULL },
    { "pad", NULL, "1: pad the window's end by one stride (one more patch)", 0, 1, 0, NULL },
    { "L", "layers", "transformer blocks", 1, 256, 0, NULL },
    { "NH", "heads", "attention heads", 1, 256, 0, NULL },
    { "C", "width", "model width", 1, 1 << 14, 0, NULL },
    { "post_ln", "post-ln", "1: post-LN blocks, a layernorm after each residual add (PatchTST's "
      "order); 0: pre-LN", 0, 1, FIELD_OPTIONAL, NULL },
    /* optional: checkpoints from before the choice are layernorm ones */
    { "norm", "norm", "the post-LN blocks' norm: layer (layernorm over each token's features) "
      "or batch (PatchTST's BatchNorm1d over the batch's tokens, running statistics for "
      "evaluation)", 0, 1, FIELD_OPTIONAL, "layer batch" },
    /* optional: checkpoints from before the switch have biases */
    { "nobias", "no-bias", "no biases in linear layers and layernorms (nanoGPT's bias=False)",
      0, 1, FIELD_SWITCH | FIELD_OPTIONAL, NULL },
};

static const char *const patchts_preset_names = "patchts-etth1 patchts-small patchts-tiny";

static int patchts_preset(const char *name, int *v, char *err)
{
    /* patchts-etth1: PatchTST's ETTh1 setting (look-back 336, P 16, S 8, end
     * padding: 42 patches; 3 post-LN layers, 4 heads, width 16). */
    static const struct { const char *name; patchts_config c; } p[] = {
        { "patchts-etth1", { 7, 336, 96, 16, 8, 1, 3, 4, 16, 1, TSTACK_NORM_LAYER, 0 } },
        { "patchts-small", { 7, 336, 96, 16, 8, 1, 2, 4, 32, 0, TSTACK_NORM_LAYER, 0 } },
        { "patchts-tiny", { 7, 48, 24, 8, 4, 1, 1, 2, 8, 0, TSTACK_NORM_LAYER, 0 } },
    };
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
        if (strcmp(name, p[i].name) == 0) {
            memcpy(v, &p[i].c, sizeof p[i].c);
            return 0;
        }
    return errf(err, "--preset: unknown preset '%s' (known: %s)", name, patchts_preset_names);
}

int patchts_patches(const patchts_config *c)
{
    return series_patch_count(c->lookback, c->patch, c->stride, c->pad);
}

static int patchts_check(const int *v, char *err)
{
    const patchts_config *c = (const patchts_config *)v;
    if (c->patch > c->lookback)
        return errf(err, "--patch: %d is longer than the look-back window %d", c->patch,
                    c->lookback);
    if (c->C % c->NH)
        return errf(err, "--heads %d does not divide --width %d (the width is split evenly among "
                         "the heads)", c->NH, c->C);
    if (c->norm == TSTACK_NORM_BATCH && !c->post_ln)
        return errf(err, "--norm batch: only with post-LN blocks (--post-ln 1), where PatchTST "
                         "has it");
    if ((long)patchts_patches(c) * c->C > 1 << 24)
        return errf(err, "--lookback: %d patches of width %d make a head too large",
                    patchts_patches(c), c->C);
    return 0;
}

static tstack_config stack_of(const patchts_config *c)
{
    return (tstack_config){ .L = c->L, .NH = c->NH, .C = c->C, .causal = 0,
                           .post_ln = c->post_ln, .nobias = c->nobias, .norm = c->norm };
}

static void add_view(param_view *v, int *n, size_t *off, const char *name, int ndim, int d0,
                     int d1)
{
    param_view *p = &v[(*n)++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = ndim;
    p->shape[0] = d0;
    p->shape[1] = ndim > 1 ? d1 : 0;
    p->count = (size_t)d0 * (ndim > 1 ? (size_t)d1 : 1);
    p->offset = *off;
    p->decay = ndim > 1;
    *off += p->count;
}

/* Views: patch_embed.{weight [C,P], bias [C]}, pos_embed [NP,C], the stack
 * ("h.N.*", then "ln_f.*" when pre-LN), head.{weight [H, NP*C], bias [H]};
 * without biases (nobias) the two .bias views are left out too. */
static int stack_first(const patchts_config *c)
{
    return c->nobias ? 2 : 3;
}

static size_t patchts_layout(const int *v, param_view **views, int *nviews)
{
    const patchts_config *c = (const patchts_config *)v;
    tstack_config tc = stack_of(c);
    int NP = patchts_patches(c), n = 0;
    size_t off = 0;
    param_view *pv = calloc((size_t)tstack_nviews(&tc) + 5, sizeof *pv);
    if (!pv) {
        *views = NULL;
        *nviews = 0;
        return 0;
    }
    add_view(pv, &n, &off, "patch_embed.weight", 2, c->C, c->patch);
    if (!c->nobias)
        add_view(pv, &n, &off, "patch_embed.bias", 1, c->C, 0);
    add_view(pv, &n, &off, "pos_embed", 2, NP, c->C);
    tstack_layout(&tc, "h", "ln_f", pv, &n, &off);
    add_view(pv, &n, &off, "head.weight", 2, c->horizon, NP * c->C);
    if (!c->nobias)
        add_view(pv, &n, &off, "head.bias", 1, c->horizon, 0);
    *views = pv;
    *nviews = n;
    return off;
}

/* The state: the stack's running statistics (batchnorm), "h.N.bn_K.*". */
static size_t patchts_state_layout(const int *v, param_view **views, int *nviews)
{
    tstack_config tc = stack_of((const patchts_config *)v);
    int n = 0, nv = tstack_nstate_views(&tc);
    size_t off = 0;
    *views = NULL;
    *nviews = 0;
    if (!nv)
        return 0;
    param_view *pv = calloc((size_t)nv, sizeof *pv);
    if (!pv)
        return 0;
    tstack_state_layout(&tc, "h", pv, &n, &off);
    *views = pv;
    *nviews = n;
    return off;
}

static size_t patchts_real_params(const int *v)
{
    param_view *views;
    int n;
    size_t total = patchts_layout(v, &views, &n);
    free(views);
    return total;
}

static void fill_uniform(float *w, size_t n, double bound, rng_state *r)
{
    for (size_t i = 0; i < n; i++)
        w[i] = (float)(bound * (2.0 * rng_uniform(r) - 1.0));
}

/* The linear layers as torch.nn.Linear initialises them (uniform within
 * 1/sqrt(fan_in), biases too), positions N(0, 0.02), the stack GPT-2's. */
static void patchts_init(const int *v, float *host, uint64_t seed)
{
    const patchts_config *c = (const patchts_config *)v;
    tstack_config tc = stack_of(c);
    param_view *views;
    int n;
    size_t total = patchts_layout(v, &views, &n);
    rng_state r;
    int NP = patchts_patches(c), first = stack_first(c);
    int head = n - (c->nobias ? 1 : 2); /* head.weight, then its bias if any */

    rng_seed(&r, seed);
    memset(host, 0, total * sizeof *host);
    /* patch_embed.weight and .bias (views 0 .. first-2), then pos_embed */
    for (int k = 0; k < first - 1; k++)
        fill_uniform(host + views[k].offset, views[k].count, 1.0 / sqrt(c->patch), &r);
    for (size_t i = 0; i < views[first - 1].count; i++)
        host[views[first - 1].offset + i] = (float)(0.02 * rng_normal(&r));
    tstack_init(&tc, views + first, host, &r);
    for (int k = head; k < n; k++)
        fill_uniform(host + views[k].offset, views[k].count, 1.0 / sqrt((double)NP * c->C),
                     &r);
    free(views);
    /* the state after the parameters (family.h) */
    if (patchts_state_layout(v, &views, &n) && views)
        tstack_state_init(&tc, views, host + total);
    free(views);
}

static void patchts_describe(const int *v, FILE *out)
{
    const patchts_config *c = (const patchts_config *)v;
    int NP = patchts_patches(c);
    fprintf(out, "context: %d past steps of each of %d channels, seen one channel at a time "
                 "as %d patches of %d (stride %d%s): the encoder attends over %d tokens\n",
            c->lookback, c->channels, NP, c->patch, c->stride, c->pad ? ", end padded" : "",
            NP);
    fprintf(out, "encoder: %d %s blocks, %d heads, width %d, bidirectional\n", c->L,
            !c->post_ln ? "pre-LN" : c->norm == TSTACK_NORM_BATCH ? "post-norm (batchnorm)"
                                                                 : "post-LN", c->NH, c->C);
    fprintf(out, "forecast: the next %d steps per channel from a linear head over all %d "
                 "patch outputs; loss MSE after RevIN de-normalisation\n",
            c->horizon, NP);
    fprintf(out, "data: CSV (date column, then %d numeric columns), training-split "
                 "normalisation; ETTh*: 12/4/4 months train/val/test\n",
            c->channels);
}

/* ---- the model on a backend ---- */

typedef struct {
    patchts_config cfg;
    int NP, rows; /* patches per channel; rows = B * channels of the plan */
    tstack *stack;
    void *pe_w, *pe_b, *pos, *head_w, *head_b;       /* params */
    void *dpe_w, *dpe_b, *dpos, *dhead_w, *dhead_b;  /* grads */
    /* planned activations */
    void *act_buf, *stat_buf;
    void *patches, *emb, *x0, *z, *pred, *target, *dpred, *dflat, *losses, *unit;
    /* host side: RevIN statistics per row, staging in double (exact on the
     * fp64 oracle backend) */
    double *hbuf, *hpred, *mu, *sd, *hloss;
    unsigned char *valid; /* [rows] */
    int nvalid, have_grad, have_target;
} pts_state;

static void pts_free_plan(model *m)
{
    pts_state *s = m->priv;
    backend *be = m->be;
    if (s->act_buf) be->free(be, s->act_buf);
    if (s->stat_buf) be->free(be, s->stat_buf);
    free(s->hbuf);
    free(s->hpred);
    free(s->mu);
    free(s->sd);
    free(s->hloss);
    free(s->valid);
    s->act_buf = s->stat_buf = NULL;
    s->hbuf = s->hpred = s->mu = s->sd = s->hloss = NULL;
    s->valid = NULL;
    m->B = m->T = 0;
}

static int pts_plan(model *m, int B, int T, char *err)
{
    pts_state *s = m->priv;
    backend *be = m->be;
    const patchts_config *c = &s->cfg;
    (void)T; /* the sequence is the config's patches */
    if (B < 1)
        return errf(err, "--batch: must be positive (got %d)", B);
    pts_free_plan(m);
    size_t rows = (size_t)B * c->channels, NP = (size_t)s->NP, C = (size_t)c->C;
    size_t H = (size_t)c->horizon, P = (size_t)c->patch;
    size_t n_act = rows * NP * P + 3 * rows * NP * C + 3 * rows * H;
    if (rows > (1u << 30) / (NP * (C > P ? C : P)))
        return errf(err, "--batch: %d windows are too many", B);
    s->act_buf = be->alloc(be, n_act * dtype_size(be->act));
    s->stat_buf = be->alloc(be, 2 * rows * dtype_size(be->stat));
    size_t hn = rows * (NP * P > H ? NP * P : H);
    s->hbuf = malloc(hn * sizeof *s->hbuf);
    s->hpred = malloc(rows * H * sizeof *s->hpred);
    s->mu = malloc(rows * sizeof *s->mu);
    s->sd = malloc(rows * sizeof *s->sd);
    s->hloss = malloc(rows * sizeof *s->hloss);
    s->valid = malloc(rows);
    if (!s->act_buf || !s->stat_buf || !s->hbuf || !s->hpred || !s->mu || !s->sd || !s->hloss ||
        !s->valid) {
        double mib = (double)n_act * dtype_size(be->act) / (1 << 20);
        pts_free_plan(m);
        return errf(err, "--batch: activations for %d windows need %.1f MiB on %s, which "
                         "could not be allocated", B, mib, be->name);
    }
    dtype t = be->act;
    size_t o = 0;
#define CARVE(p, n) (p = buf_at(s->act_buf, o, t), o += (n))
    CARVE(s->patches, rows * NP * P);
    CARVE(s->emb, rows * NP * C);
    CARVE(s->x0, rows * NP * C);
    CARVE(s->dflat, rows * NP * C);
    CARVE(s->pred, rows * H);
    CARVE(s->target, rows * H);
    CARVE(s->dpred, rows * H);
#undef CARVE
    s->losses = s->stat_buf;
    s->unit = buf_at(s->stat_buf, rows, be->stat);
    if (tstack_plan(s->stack, (int)rows, s->NP, c->horizon, err)) {
        pts_free_plan(m);
        return -1;
    }
    s->rows = (int)rows;
    m->B = B;
    m->T = s->NP;
    s->have_grad = s->have_target = 0;
    return 0;
}

static void views_ready(model *m, int first, int last)
{
    if (m->grads_ready) {
        size_t lo = m->views[first].offset;
        size_t hi = m->views[last].offset + m->views[last].count;
        m->grads_ready(m->grads_ready_ctx, lo, hi - lo);
    }
}

/* RevIN statistics of every row and the normalised, patched windows into
 * s->hbuf [rows, NP, P]. */
static void pts_prepare_inputs(pts_state *s, const float *x)
{
    const patchts_config *c = &s->cfg;
    int Lb = c->lookback, P = c->patch, NP = s->NP;
    for (int r = 0; r < s->rows; r++) {
        const float *xr = x + (size_t)r * Lb;
        double sum = 0, ss = 0;
        for (int i = 0; i < Lb; i++)
            sum += xr[i];
        double mu = sum / Lb;
        for (int i = 0; i < Lb; i++)
            ss += (xr[i] - mu) * (xr[i] - mu);
        double sd = sqrt(ss / Lb + REVIN_EPS);
        s->mu[r] = mu;
        s->sd[r] = sd;
        /* patch in double: series_patch's float copy would round on the fp64
         * oracle, so the padding rule is applied here directly */
        for (int p = 0; p < NP; p++)
            for (int k = 0; k < P; k++) {
                int i = p * c->stride + k;
                s->hbuf[((size_t)r * NP + p) * P + k] = (xr[i < Lb ? i : Lb - 1] - mu) / sd;
            }
    }
}

static double pts_forward(model *m, const model_batch *b, float grad_scale)
{
    pts_state *s = m->priv;
    backend *be = m->be;
    const patchts_config *c = &s->cfg;
    int rows = s->rows, NP = s->NP, C = c->C, P = c->patch, H = c->horizon;

    if (be->range)
        be->range(be, "forward", 1);
    pts_prepare_inputs(s, b->x);
    be->upload(be, s->patches, be->act, s->hbuf, DT_F64, (size_t)rows * NP * P);
    be->matmul_forward(be, s->emb, s->patches, s->pe_w, s->pe_b, rows * NP, P, C);
    be->sequence_embed_forward(be, s->x0, s->emb, NULL, s->pos, rows, NP, C);
    model_dropout(m, s->x0, (size_t)rows * NP * C, DROPOUT_SITE_EMBED);
    s->z = tstack_forward(s->stack, s->x0);
    be->matmul_forward(be, s->pred, s->z, s->head_w, s->head_b, rows, NP * C, H);
    s->have_grad = s->have_target = 0;
    if (!b->y) {
        if (be->range)
            be->range(be, "forward", 0);
        return 0.0;
    }
    /* targets in each row's RevIN units; padding rows (y NaN) get 0 and are
     * left out below */
    s->nvalid = 0;
    for (int r = 0; r < rows; r++) {
        const float *yr = b->y + (size_t)r * H;
        s->valid[r] = isfinite(yr[0]) != 0;
        s->nvalid += s->valid[r];
        for (int j = 0; j < H; j++)
            s->hbuf[(size_t)r * H + j] = s->valid[r] ? (yr[j] - s->mu[r]) / s->sd[r] : 0.0;
    }
    be->upload(be, s->target, be->act, s->hbuf, DT_F64, (size_t)rows * H);
    be->upload(be, s->unit, be->stat, s->sd, DT_F64, (size_t)rows);
    double count = (double)s->nvalid * H;
    float scale = grad_scale > 0 && count > 0 ? (float)(grad_scale / count) : 0.0f;
    be->regression_loss(be, s->losses, scale > 0 ? s->dpred : NULL, s->pred, s->target, s->unit,
                        rows, H, m->loss_kind, (float)m->huber_delta, scale);
    be->download(be, s->hloss, DT_F64, s->losses, be->stat, (size_t)rows);
    if (scale > 0) {
        /* the RevIN weight sd^2 of each row's gradient (0 for padding rows) */
        be->download(be, s->hbuf, DT_F64, s->dpred, be->act, (size_t)rows * H);
        for (int r = 0; r < rows; r++) {
            double w = s->valid[r] ? s->sd[r] * s->sd[r] : 0.0;
            for (int j = 0; j < H; j++)
                s->hbuf[(size_t)r * H + j] *= w;
        }
        be->upload(be, s->dpred, be->act, s->hbuf, DT_F64, (size_t)rows * H);
        s->have_grad = 1;
    }
    s->have_target = 1;
    double sum = 0;
    for (int r = 0; r < rows; r++)
        if (s->valid[r])
            sum += s->sd[r] * s->sd[r] * s->hloss[r];
    if (be->range)
        be->range(be, "forward", 0);
    return model_loss(m, sum, count);
}

static void pts_backward(model *m)
{
    pts_state *s = m->priv;
    backend *be = m->be;
    const patchts_config *c = &s->cfg;
    int rows = s->rows, NP = s->NP, C = c->C, P = c->patch, H = c->horizon;

    if (!s->have_grad)
        return;
    if (be->range)
        be->range(be, "backward", 1);
    be->matmul_backward(be, s->dflat, s->dhead_w, s->dhead_b, s->dpred, s->z, s->head_w, rows,
                        NP * C, H, GRAD_SET);
    views_ready(m, m->nviews - (s->cfg.nobias ? 1 : 2), m->nviews - 1);
    void *dx = tstack_backward(s->stack, s->dflat);
    model_dropout(m, dx, (size_t)rows * NP * C, DROPOUT_SITE_EMBED);
    /* x0 = emb + pos: emb's gradient is dx itself */
    be->sequence_embed_backward(be, NULL, NULL, s->dpos, dx, rows, NP, C);
    be->matmul_backward(be, NULL, s->dpe_w, s->dpe_b, dx, s->patches, s->pe_w, rows * NP, P, C,
                        GRAD_ADD);
    views_ready(m, 0, stack_first(&s->cfg) - 1);
    s->have_grad = 0;
    if (be->range)
        be->range(be, "backward", 0);
}

/* mse and mae of the de-normalised forecast against y (normalised space). */
static void pts_metrics(model *m, const model_batch *b, double *sums, double *counts)
{
    pts_state *s = m->priv;
    backend *be = m->be;
    int H = s->cfg.horizon;
    (void)b;
    if (!s->have_target)
        return;
    be->download(be, s->hpred, DT_F64, s->pred, be->act, (size_t)s->rows * H);
    be->download(be, s->hbuf, DT_F64, s->target, be->act, (size_t)s->rows * H);
    for (int r = 0; r < s->rows; r++) {
        if (!s->valid[r])
            continue;
        for (int j = 0; j < H; j++) {
            size_t i = (size_t)r * H + j;
            double e = s->sd[r] * (s->hpred[i] - s->hbuf[i]);
            sums[0] += e * e;
            sums[1] += fabs(e);
        }
        counts[0] += H;
        counts[1] += H;
    }
}

/* The last forecast with targets as CSV lines "row,step,forecast,target"
 * (de-normalised from RevIN, in the training split's normalised units);
 * padding rows left out. -1 when the last forward had no targets. */
int patchts_write_forecast(model *m, FILE *out)
{
    pts_state *s = m->priv;
    int H = s->cfg.horizon;
    if (!s->have_target)
        return -1;
    m->be->download(m->be, s->hpred, DT_F64, s->pred, m->be->act, (size_t)s->rows * H);
    m->be->download(m->be, s->hbuf, DT_F64, s->target, m->be->act, (size_t)s->rows * H);
    for (int r = 0; r < s->rows; r++) {
        if (!s->valid[r])
            continue;
        for (int j = 0; j < H; j++) {
            size_t i = (size_t)r * H + j;
            fprintf(out, "%d,%d,%.6g,%.6g\n", r, j, s->hpred[i] * s->sd[r] + s->mu[r],
                    s->hbuf[i] * s->sd[r] + s->mu[r]);
        }
    }
    return 0;
}

static void pts_destroy(model *m)
{
    pts_state *s;
    if (!m)
        return;
    s = m->priv;
    if (s) {
        pts_free_plan(m);
        if (s->stack)
            tstack_destroy(s->stack);
    }
    model_delete(m);
}

static model *patchts_create(backend *be, const int *v, char *err)
{
    const patchts_config *c = (const patchts_config *)v;
    model *m;
    pts_state *s;

    if (patchts_check(v, err))
        return NULL;
    m = model_new(be, &patchts_family, (const int *)v, sizeof *s, err);
    if (!m)
        return NULL;
    s = m->priv;
    s->cfg = *c;
    s->NP = patchts_patches(c);
    m->V = 0;
    m->maxT = s->NP;
    m->plan = pts_plan;
    m->forward = pts_forward;
    m->backward = pts_backward;
    m->logits = NULL;
    m->metrics = pts_metrics;
    m->write_forecast = patchts_write_forecast;
    m->forecast_header = "row,step,forecast,target";
    m->nmetrics = 2;
    m->metric_names[0] = "mse";
    m->metric_names[1] = "mae";
    m->destroy = pts_destroy;
    m->has_dropout = TSTACK_DROPOUT_SITES;
    m->has_loss_kind = 1;
    m->nparams = patchts_layout(v, &m->views, &m->nviews);
    m->nparams_real = m->nparams;
    m->nstate = patchts_state_layout(v, &m->state_views, &m->nstate_views);
    if (!m->views || (m->nstate && !m->state_views)) {
        errf(err, "out of memory");
        goto fail;
    }
    if (model_alloc(m, err))
        goto fail;
    tstack_config tc = stack_of(c);
    s->stack = tstack_create(m, &tc, stack_first(c), 0, err);
    if (!s->stack)
        goto fail;
    dtype t = be->act;
    int n = m->nviews, nb = c->nobias;
#define P_(i) buf_at(m->params, m->views[i].offset, t)
#define G_(i) buf_at(m->grads, m->views[i].offset, t)
    /* without biases pe_b, head_b and their gradients stay NULL: the matmuls
     * take a NULL bias as none */
    s->pe_w = P_(0), s->dpe_w = G_(0);
    s->pos = P_(nb ? 1 : 2), s->dpos = G_(nb ? 1 : 2);
    s->head_w = P_(nb ? n - 1 : n - 2), s->dhead_w = G_(nb ? n - 1 : n - 2);
    if (!nb) {
        s->pe_b = P_(1), s->dpe_b = G_(1);
        s->head_b = P_(n - 1), s->dhead_b = G_(n - 1);
    }
#undef P_
#undef G_
    return m;
fail:
    pts_destroy(m);
    return NULL;
}

static batch_source *patchts_open_data(const model *m, const data_spec *spec, char *err)
{
    const patchts_config *c = &((const pts_state *)m->priv)->cfg;
    return series_source_open(spec, c->channels, c->lookback, c->horizon, err);
}

const model_family patchts_family = {
    .name = "patchts",
    .summary = "PatchTST-style forecaster: patches of each channel, transformer encoder, "
               "linear head, MSE, MAE or Huber loss (--loss) (CSV series)",
    .presets = "patchts-etth1 patchts-small patchts-tiny",
    .fields = patchts_fields,
    .nfields = (int)(sizeof patchts_fields / sizeof patchts_fields[0]),
    .preset = patchts_preset,
    .check = patchts_check,
    .layout = patchts_layout,
    .state_layout = patchts_state_layout,
    .real_params = patchts_real_params,
    .init = patchts_init,
    .create = patchts_create,
    .describe = patchts_describe,
    .open_data = patchts_open_data,
};

/* ---- the series batch source ---- */

typedef struct {
    batch_source base;
    series_table tab;
    int first, count;        /* the split's windows */
    int B, lookback, horizon, channels;
    int rank, world, shuffle, train;
    uint64_t seed, pos;
    int *perm;               /* [count], the order of epoch perm_epoch */
    int64_t perm_epoch;
    float *x, *y;
} series_source;

/* The window order of one training epoch: a permutation drawn from (seed,
 * epoch) only, so any position can be sought. */
static void make_perm(series_source *q, int64_t epoch)
{
    rng_state r;
    for (int i = 0; i < q->count; i++)
        q->perm[i] = i;
    if (q->shuffle) {
        rng_seed(&r, q->seed * 0x9e3779b97f4a7c15ULL + (uint64_t)epoch + 1);
        for (int i = q->count - 1; i > 0; i--) {
            int j = (int)rng_below(&r, (uint64_t)i + 1), t = q->perm[i];
            q->perm[i] = q->perm[j];
            q->perm[j] = t;
        }
    }
    q->perm_epoch = epoch;
}

static uint64_t eval_batches(const series_source *q)
{
    return ((uint64_t)q->count + q->B - 1) / q->B;
}

static int src_next(batch_source *bs, char *err)
{
    series_source *q = (series_source *)bs;
    uint64_t g = q->pos * (uint64_t)q->world + (uint64_t)q->rank;
    size_t xn = (size_t)q->channels * q->lookback, yn = (size_t)q->channels * q->horizon;
    (void)err;
    for (int i = 0; i < q->B; i++) {
        int w;
        if (q->train) {
            /* training: one stream of windows across epochs, each epoch a
             * permutation; micro-batches may straddle epochs */
            uint64_t p = g * (uint64_t)q->B + (uint64_t)i;
            int64_t e = (int64_t)(p / (uint64_t)q->count);
            if (e != q->perm_epoch)
                make_perm(q, e);
            w = q->perm[p % (uint64_t)q->count];
        } else {
            /* evaluation: windows in order; the last micro-batch of a pass is
             * padded with rows the models skip (y NaN) */
            uint64_t p = (g % eval_batches(q)) * (uint64_t)q->B + (uint64_t)i;
            w = p < (uint64_t)q->count ? (int)p : -1;
        }
        float *x = q->x + (size_t)i * xn, *y = q->y + (size_t)i * yn;
        series_window(&q->tab, q->first + (w < 0 ? 0 : w), q->lookback, q->horizon, x, y);
        if (w < 0)
            for (size_t k = 0; k < yn; k++)
                y[k] = NAN;
    }
    q->pos++;
    return 0;
}

static uint64_t src_position(const batch_source *bs)
{
    return ((const series_source *)bs)->pos;
}

static void src_seek(batch_source *bs, uint64_t pos)
{
    ((series_source *)bs)->pos = pos;
}

static uint64_t src_epoch_batches(const batch_source *bs)
{
    const series_source *q = (const series_source *)bs;
    uint64_t total = q->train ? ((uint64_t)q->count + q->B - 1) / q->B : eval_batches(q);
    /* this rank's share of the global micro-batches 0 .. total-1 */
    return total > (uint64_t)q->rank ? (total - q->rank + q->world - 1) / q->world : 0;
}

static void src_close(batch_source *bs)
{
    series_source *q = (series_source *)bs;
    if (!q)
        return;
    series_free(&q->tab);
    free(q->perm);
    free(q->x);
    free(q->y);
    free(q);
}

batch_source *series_source_open(const data_spec *spec, int channels, int lookback,
                                 int horizon, char *err)
{
    series_source *q = calloc(1, sizeof *q);
    int border[4];
    if (!q) {
        errf(err, "out of memory");
        return NULL;
    }
    if (series_read_csv(spec->path, &q->tab, err))
        goto fail;
    if (q->tab.channels != channels) {
        errf(err, "%s: %d numeric columns, the model has %d channels (--channels)", spec->path,
             q->tab.channels, channels);
        goto fail;
    }
    if (series_borders(spec->path, q->tab.rows, border, err) ||
        series_split(spec->path, q->tab.rows, (int)spec->split, lookback, horizon, &q->first,
                     &q->count, err))
        goto fail;
    {
        double *mean = malloc((size_t)channels * sizeof *mean);
        double *sd = malloc((size_t)channels * sizeof *sd);
        if (!mean || !sd) {
            free(mean);
            free(sd);
            errf(err, "out of memory");
            goto fail;
        }
        /* the training split's statistics, whatever split is read */
        series_stats(&q->tab, border[1], mean, sd);
        series_normalise(&q->tab, mean, sd);
        free(mean);
        free(sd);
    }
    q->B = spec->B > 0 ? spec->B : 1;
    q->lookback = lookback;
    q->horizon = horizon;
    q->channels = channels;
    q->rank = spec->rank;
    q->world = spec->world > 0 ? spec->world : 1;
    q->shuffle = spec->shuffle;
    q->train = spec->split == SPLIT_TRAIN;
    q->seed = spec->seed;
    q->perm_epoch = -1;
    q->perm = malloc((size_t)q->count * sizeof *q->perm);
    q->x = malloc((size_t)q->B * channels * lookback * sizeof *q->x);
    q->y = malloc((size_t)q->B * channels * horizon * sizeof *q->y);
    if (!q->perm || !q->x || !q->y) {
        errf(err, "out of memory");
        goto fail;
    }
    q->base.batch.x = q->x;
    q->base.batch.y = q->y;
    q->base.next = src_next;
    q->base.position = src_position;
    q->base.seek = src_seek;
    q->base.epoch_batches = src_epoch_batches;
    q->base.close = src_close;
    return &q->base;
fail:
    src_close(&q->base);
    return NULL;
}
