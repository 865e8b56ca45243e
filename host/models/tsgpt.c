/* tsgpt.c: a time series read as a language (patchts.h). The paper's point
 * that the machinery of a language model serves another domain unchanged:
 *
 *   scale   s = mean |x| over the window's look-back values (per channel)
 *   tokens  k_i = bin(v_i / s): B equal bins over [-R, R], clamped
 *   model   GPT-2: wte[k] + wpe[i], the causal pre-LN stack, logits = LN_f(.) wte^T
 *   loss    cross-entropy of the next bin, every position of look-back + horizon
 *   forecast  sample the horizon token by token, `samples` paths; each value
 *           is its bin's centre times s; the median path is the forecast, the
 *           10% and 90% quantiles its band; mse and mae of the median. The
 *           paths' mean is reported beside it (the squared error's optimal
 *           point forecast, where the median is the absolute error's).
 *           Incremental decoding (tstack_decode_*): the look-back of every
 *           row runs once, into a key/value cache that its paths share (the
 *           decoding cache's prefix), and every path of every row advances
 *           together, one batched step per new value, each path caching only
 *           its own horizon. The full forward per value and path stays as the
 *           reference the test compares with.
 *
 * The parameter names are GPT-2's (wte.weight, wpe.weight, h.N.*, ln_f.*), so
 * a GPT-2 reference reads the checkpoint as it is. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../data/errbuf.h"
#include "../../data/rng.h"
#include "patchts.h"
#include "transformer.h"

#define TSGPT_RANGE 8.0 /* scaled values beyond +-R fall in the end bins */
#define FC_STATS 4       /* per row and step: median, q10, q90, mean of the paths */

double tsgpt_scale(const float *x, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++)
        s += fabs(x[i]);
    s /= n > 0 ? n : 1;
    return s > 1e-6 ? s : 1.0; /* a window of zeros keeps its values */
}

int tsgpt_bin(double scaled, int bins)
{
    double u = (scaled + TSGPT_RANGE) / (2 * TSGPT_RANGE) * bins;
    if (!(u > 0)) /* NaN too */
        return 0;
    return u >= bins ? bins - 1 : (int)u;
}

double tsgpt_unbin(int bin, int bins)
{
    return -TSGPT_RANGE + (bin + 0.5) * (2 * TSGPT_RANGE) / bins;
}

static const family_field tsgpt_fields[] = {
    { "channels", "channels", "series channels (numeric CSV columns)", 1, 4096, 0, NULL },
    { "lookback", "lookback", "input steps per channel", 1, 1 << 14, 0, NULL },
    { "horizon", "horizon", "steps forecast", 1, 1 << 14, 0, NULL },
    { "bins", "bins", "quantisation bins (the token vocabulary)", 2, 1 << 16, 0, NULL },
    { "samples", "samples", "sample paths per forecast", 1, 1000, 0, NULL },
    { "L", "layers", "transformer blocks", 1, 256, 0, NULL },
    { "NH", "heads", "attention heads", 1, 256, 0, NULL },
    { "C", "width", "model width", 1, 1 << 14, 0, NULL },
    /* optional: checkpoints from before the switch have biases */
    { "nobias", "no-bias", "no biases in linear layers and layernorms (nanoGPT's bias=False)",
      0, 1, FIELD_SWITCH | FIELD_OPTIONAL, NULL },
};

static const char *const tsgpt_preset_names = "tsgpt-etth1 tsgpt-tiny";

static int tsgpt_preset(const char *name, int *v, char *err)
{
    static const struct { const char *name; tsgpt_config c; } p[] = {
        { "tsgpt-etth1", { 7, 96, 24, 256, 20, 2, 4, 64, 0 } },
        { "tsgpt-tiny", { 7, 24, 8, 64, 5, 1, 2, 16, 0 } },
    };
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
        if (strcmp(name, p[i].name) == 0) {
            memcpy(v, &p[i].c, sizeof p[i].c);
            return 0;
        }
    return errf(err, "--preset: unknown preset '%s' (known: %s)", name, tsgpt_preset_names);
}

static int tsgpt_check(const int *v, char *err)
{
    const tsgpt_config *c = (const tsgpt_config *)v;
    if (c->C % c->NH)
        return errf(err, "--heads %d does not divide --width %d (the width is split evenly among "
                         "the heads)", c->NH, c->C);
    if (c->lookback + c->horizon - 1 > 1 << 14)
        return errf(err, "--lookback: %d + %d steps make too long a sequence", c->lookback,
                    c->horizon);
    return 0;
}

/* The token sequence is the look-back and the horizon; the model reads all
 * but the last token. */
static int seq_len(const tsgpt_config *c) { return c->lookback + c->horizon - 1; }
static int padded_bins(int bins) { return (bins + 127) / 128 * 128; }

static tstack_config stack_of(const tsgpt_config *c)
{
    return (tstack_config){ .L = c->L, .NH = c->NH, .C = c->C, .causal = 1, .post_ln = 0,
                            .nobias = c->nobias };
}

static void add_view(param_view *v, int *n, size_t *off, const char *name, int d0, int d1)
{
    param_view *p = &v[(*n)++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = 2;
    p->shape[0] = d0;
    p->shape[1] = d1;
    p->count = (size_t)d0 * d1;
    p->offset = *off;
    p->decay = 1;
    *off += p->count;
}

#define TSG_STACK_FIRST 2

static size_t tsgpt_layout(const int *v, param_view **views, int *nviews)
{
    const tsgpt_config *c = (const tsgpt_config *)v;
    tstack_config tc = stack_of(c);
    int n = 0;
    size_t off = 0;
    param_view *pv = calloc((size_t)tstack_nviews(&tc) + 2, sizeof *pv);
    if (!pv) {
        *views = NULL;
        *nviews = 0;
        return 0;
    }
    add_view(pv, &n, &off, "wte.weight", padded_bins(c->bins), c->C);
    add_view(pv, &n, &off, "wpe.weight", seq_len(c), c->C);
    tstack_layout(&tc, "h", "ln_f", pv, &n, &off);
    *views = pv;
    *nviews = n;
    return off;
}

static size_t tsgpt_real_params(const int *v)
{
    const tsgpt_config *c = (const tsgpt_config *)v;
    param_view *views;
    int n;
    size_t total = tsgpt_layout(v, &views, &n);
    free(views);
    return total - (size_t)(padded_bins(c->bins) - c->bins) * c->C;
}

/* GPT-2's initialisation; padded vocabulary rows stay zero. */
static void tsgpt_init(const int *v, float *host, uint64_t seed)
{
    const tsgpt_config *c = (const tsgpt_config *)v;
    tstack_config tc = stack_of(c);
    param_view *views;
    int n;
    size_t total = tsgpt_layout(v, &views, &n);
    rng_state r;
    rng_seed(&r, seed);
    memset(host, 0, total * sizeof *host);
    for (size_t i = 0; i < (size_t)c->bins * c->C; i++)
        host[views[0].offset + i] = (float)(0.02 * rng_normal(&r));
    for (size_t i = 0; i < views[1].count; i++)
        host[views[1].offset + i] = (float)(0.02 * rng_normal(&r));
    tstack_init(&tc, views + TSG_STACK_FIRST, host, &r);
    free(views);
}

static void tsgpt_describe(const int *v, FILE *out)
{
    const tsgpt_config *c = (const tsgpt_config *)v;
    fprintf(out, "context: %d past steps of one channel at a time (of %d), as %d tokens: "
                 "values / mean|look-back|, in %d bins over [-%g, %g]\n",
            c->lookback, c->channels, c->lookback, c->bins, TSGPT_RANGE, TSGPT_RANGE);
    fprintf(out, "training: next-bin cross-entropy over %d + %d tokens (causal); "
                 "forecast: %d sampled paths of %d steps, median and 10/90%% quantiles, mean\n",
            c->lookback, c->horizon, c->samples, c->horizon);
}

/* ---- the model on a backend ---- */

typedef struct {
    tsgpt_config cfg;
    int T, Vp, rows;
    tstack *stack;
    void *wte, *wpe, *dwte, *dwpe;
    void *act_buf, *stat_buf, *id_buf;
    void *x0, *z, *logits, *dz, *losses;
    int32_t *tokens, *targets;           /* device */
    int32_t *htok, *htgt;                /* host [rows*T] */
    double *scale, *hloss;               /* [rows], [rows*T] */
    float *hlog;                         /* [Vp] one row of logits */
    float *paths;                        /* [samples, rows, horizon] sampled values */
    float *fc;                           /* [rows, FC_STATS, horizon]: median, q10, q90, mean */
    unsigned char *valid;
    uint64_t draws;                      /* metrics calls, for the sampling seed */
    /* incremental decoding of rows * samples paths (planned on first use) */
    int dec_rows;                        /* rows the decoding buffers hold; 0: none */
    void *dec_buf;                       /* tokens [n] | x [n, C] | logits [n, Vp] */
    int32_t *dec_tok, *hdec_tok;         /* device, host [n] */
    void *dec_x, *dec_logits;
    float *hdec_logits;                  /* host [n, Vp] */
    int have_grad, have_target;
    const float *last_y;
} tsg_state;

static void free_decode(model *m)
{
    tsg_state *s = m->priv;
    if (s->dec_buf)
        m->be->free(m->be, s->dec_buf);
    free(s->hdec_tok);
    free(s->hdec_logits);
    s->dec_buf = NULL;
    s->hdec_tok = NULL;
    s->hdec_logits = NULL;
    s->dec_rows = 0;
}

static void tsg_free_plan(model *m)
{
    tsg_state *s = m->priv;
    backend *be = m->be;
    if (s->act_buf) be->free(be, s->act_buf);
    if (s->stat_buf) be->free(be, s->stat_buf);
    if (s->id_buf) be->free(be, s->id_buf);
    free(s->htok);
    free(s->htgt);
    free(s->scale);
    free(s->hloss);
    free(s->hlog);
    free(s->paths);
    free(s->fc);
    free(s->valid);
    free_decode(m);
    s->act_buf = s->stat_buf = s->id_buf = NULL;
    s->htok = s->htgt = NULL;
    s->scale = s->hloss = NULL;
    s->hlog = s->paths = s->fc = NULL;
    s->valid = NULL;
    m->B = m->T = 0;
}

static int tsg_plan(model *m, int B, int T, char *err)
{
    tsg_state *s = m->priv;
    backend *be = m->be;
    const tsgpt_config *c = &s->cfg;
    (void)T; /* the sequence is the config's look-back + horizon */
    if (B < 1)
        return errf(err, "--batch: must be positive (got %d)", B);
    tsg_free_plan(m);
    size_t rows = (size_t)B * c->channels, N = rows * s->T, C = (size_t)c->C;
    size_t n_act = 2 * N * C + N * s->Vp;
    s->act_buf = be->alloc(be, n_act * dtype_size(be->act));
    s->stat_buf = be->alloc(be, N * dtype_size(be->stat));
    s->id_buf = be->alloc(be, 2 * N * sizeof(int32_t));
    s->htok = malloc(N * sizeof *s->htok);
    s->htgt = malloc(N * sizeof *s->htgt);
    s->scale = malloc(rows * sizeof *s->scale);
    s->hloss = malloc(N * sizeof *s->hloss);
    s->hlog = malloc(2 * (size_t)s->Vp * sizeof *s->hlog); /* a row of logits, scratch */
    s->paths = malloc((size_t)c->samples * rows * c->horizon * sizeof *s->paths);
    s->fc = malloc(rows * FC_STATS * c->horizon * sizeof *s->fc);
    s->valid = malloc(rows);
    if (!s->act_buf || !s->stat_buf || !s->id_buf || !s->htok || !s->htgt || !s->scale ||
        !s->hloss || !s->hlog || !s->paths || !s->fc || !s->valid) {
        double mib = (double)n_act * dtype_size(be->act) / (1 << 20);
        tsg_free_plan(m);
        return errf(err, "--batch: activations for %d windows need %.1f MiB on %s, which "
                         "could not be allocated", B, mib, be->name);
    }
    s->x0 = s->act_buf;
    s->dz = buf_at(s->act_buf, N * C, be->act);
    s->logits = buf_at(s->act_buf, 2 * N * C, be->act);
    s->losses = s->stat_buf;
    s->tokens = s->id_buf;
    s->targets = (int32_t *)s->id_buf + N;
    if (tstack_plan(s->stack, (int)rows, s->T, c->bins, err)) {
        tsg_free_plan(m);
        return -1;
    }
    s->rows = (int)rows;
    m->B = B;
    m->T = s->T;
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

/* Runs the decoder on s->htok (uploaded) and leaves the logits. */
static void tsg_run(model *m)
{
    tsg_state *s = m->priv;
    backend *be = m->be;
    int N = s->rows * s->T, C = s->cfg.C;
    be->upload(be, s->tokens, DT_I32, s->htok, DT_I32, (size_t)N);
    be->encoder_forward(be, s->x0, s->tokens, s->wte, s->wpe, s->rows, s->T, C);
    model_dropout(m, s->x0, (size_t)N * C, DROPOUT_SITE_EMBED);
    s->z = tstack_forward(s->stack, s->x0);
    be->matmul_forward(be, s->logits, s->z, s->wte, NULL, N, C, s->Vp);
}

/* Tokens of the look-back (scaled by each row's mean |x|) into htok. */
static void tsg_tokenize_inputs(tsg_state *s, const float *x)
{
    const tsgpt_config *c = &s->cfg;
    for (int r = 0; r < s->rows; r++) {
        const float *xr = x + (size_t)r * c->lookback;
        int32_t *tk = s->htok + (size_t)r * s->T;
        s->scale[r] = tsgpt_scale(xr, c->lookback);
        for (int i = 0; i < c->lookback; i++)
            tk[i] = tsgpt_bin(xr[i] / s->scale[r], c->bins);
        for (int i = c->lookback; i < s->T; i++)
            tk[i] = 0;
    }
}

static double tsg_forward(model *m, const model_batch *b, float grad_scale)
{
    tsg_state *s = m->priv;
    backend *be = m->be;
    const tsgpt_config *c = &s->cfg;
    int T = s->T, N = s->rows * T, Lb = c->lookback, H = c->horizon;

    if (be->range)
        be->range(be, "forward", 1);
    tsg_tokenize_inputs(s, b->x);
    s->have_grad = s->have_target = 0;
    int valid = 0;
    if (b->y) {
        /* input i predicts token i+1 of look-back ++ horizon; padding rows
         * (y NaN) are ignored */
        for (int r = 0; r < s->rows; r++) {
            const float *yr = b->y + (size_t)r * H;
            int32_t *tk = s->htok + (size_t)r * T, *tg = s->htgt + (size_t)r * T;
            s->valid[r] = isfinite(yr[0]) != 0;
            for (int j = 0; j + 1 < H; j++)
                tk[Lb + j] = tsgpt_bin(yr[j] / s->scale[r], c->bins);
            for (int i = 0; i < T; i++)
                tg[i] = !s->valid[r] ? -1 : i + 1 < Lb ? tk[i + 1]
                                                       : tsgpt_bin(yr[i + 1 - Lb] / s->scale[r],
                                                                   c->bins);
            valid += s->valid[r] ? T : 0;
        }
    }
    tsg_run(m);
    if (!b->y) {
        if (be->range)
            be->range(be, "forward", 0);
        return 0.0;
    }
    float scale = grad_scale > 0 && valid ? grad_scale / valid : 0.0f;
    be->upload(be, s->targets, DT_I32, s->htgt, DT_I32, (size_t)N);
    be->crossentropy(be, s->losses, scale > 0 ? s->logits : NULL, s->logits, s->targets, N,
                     c->bins, s->Vp, scale);
    be->download(be, s->hloss, DT_F64, s->losses, be->stat, (size_t)N);
    s->have_grad = scale > 0;
    s->have_target = 1;
    s->last_y = b->y;
    double sum = 0;
    for (int i = 0; i < N; i++)
        if (s->htgt[i] >= 0)
            sum += s->hloss[i];
    if (be->range)
        be->range(be, "forward", 0);
    return model_loss(m, sum, valid);
}

static void tsg_backward(model *m)
{
    tsg_state *s = m->priv;
    backend *be = m->be;
    int N = s->rows * s->T, C = s->cfg.C;
    if (!s->have_grad)
        return;
    if (be->range)
        be->range(be, "backward", 1);
    /* logits = z wte^T: the logits buffer holds dlogits now */
    be->matmul_backward(be, s->dz, s->dwte, NULL, s->logits, s->z, s->wte, N, C, s->Vp, GRAD_SET);
    void *dx = tstack_backward(s->stack, s->dz);
    model_dropout(m, dx, (size_t)N * C, DROPOUT_SITE_EMBED);
    be->encoder_backward(be, s->dwte, s->dwpe, dx, s->tokens, s->rows, s->T, C);
    views_ready(m, 0, 1); /* wte (classifier and embedding), wpe */
    s->have_grad = 0;
    if (be->range)
        be->range(be, "backward", 0);
}

static void tsg_logits(model *m, int b, int t, float *out)
{
    tsg_state *s = m->priv;
    size_t row = ((size_t)b * s->T + t) * s->Vp;
    m->be->download(m->be, out, DT_F32, buf_at(s->logits, row, m->be->act), m->be->act,
                    (size_t)s->cfg.bins);
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Quantile q of sorted v[0..n) by linear interpolation (numpy's default). */
static float quantile(const float *v, int n, double q)
{
    double pos = q * (n - 1);
    int lo = (int)pos;
    int hi = lo + 1 < n ? lo + 1 : lo;
    return (float)(v[lo] + (pos - lo) * (v[hi] - v[lo]));
}

/* The uniform draw of path p, row r, step j of a forecast: a hash of the
 * forecast's seed and the three indices, so the draws do not depend on the
 * order the paths are generated in (batched and cached, or one by one). */
static double draw(uint64_t seed, int p, int r, int j)
{
    uint64_t x = seed ^ ((uint64_t)p << 44) ^ ((uint64_t)r << 16) ^ (uint64_t)j;
    x = rng_splitmix(&x) ^ seed;
    return (double)(rng_splitmix(&x) >> 11) * (1.0 / 9007199254740992.0);
}

/* A bin drawn from softmax(logits[0..bins)) by the uniform u; e: scratch [bins]. */
static int sample_bin(const float *logits, int bins, double u, float *e)
{
    float mx = logits[0];
    for (int v = 1; v < bins; v++)
        mx = logits[v] > mx ? logits[v] : mx;
    double z = 0;
    for (int v = 0; v < bins; v++)
        z += e[v] = expf(logits[v] - mx);
    double t = u * z, acc = 0;
    for (int v = 0; v < bins; v++) {
        acc += e[v];
        if (t < acc)
            return v;
    }
    return bins - 1;
}

static void keep_path(tsg_state *s, int p, int row, int j, int k)
{
    s->paths[((size_t)p * s->rows + row) * s->cfg.horizon + j] =
        (float)(tsgpt_unbin(k, s->cfg.bins) * s->scale[row]);
}

/* The reference: every path one at a time, a full forward per new value. */
static void sample_uncached(model *m, uint64_t seed)
{
    tsg_state *s = m->priv;
    const tsgpt_config *c = &s->cfg;
    int Lb = c->lookback, H = c->horizon, T = s->T;
    for (int p = 0; p < c->samples; p++)
        for (int j = 0; j < H; j++) {
            tsg_run(m); /* causal: positions past Lb-1+j do not matter */
            for (int row = 0; row < s->rows; row++) {
                tsg_logits(m, row, Lb - 1 + j, s->hlog);
                int k = sample_bin(s->hlog, c->bins, draw(seed, p, row, j), s->hlog + s->Vp);
                if (Lb + j < T)
                    s->htok[(size_t)row * T + Lb + j] = k;
                keep_path(s, p, row, j, k);
            }
        }
}

/* The decoding cache for rows * samples paths and its one-step buffers: the
 * look-back's positions once per row (the prefix its paths share), the
 * horizon's after them once per path. */
static int decode_ready(model *m, char *err)
{
    tsg_state *s = m->priv;
    backend *be = m->be;
    size_t n = (size_t)s->rows * s->cfg.samples, C = (size_t)s->cfg.C, es = dtype_size(be->act);
    size_t xoff = (n * sizeof(int32_t) + 255) / 256 * 256, loff = xoff + (n * C * es + 255) / 256 * 256;
    if (s->dec_rows == s->rows)
        return 0;
    free_decode(m);
    if (n > 1 << 30)
        return errf(err, "--samples: %zu paths in one batch are too many", n);
    s->dec_buf = be->alloc(be, loff + n * s->Vp * es);
    s->hdec_tok = malloc(n * sizeof *s->hdec_tok);
    s->hdec_logits = malloc(n * s->Vp * sizeof *s->hdec_logits);
    if (!s->dec_buf || !s->hdec_tok || !s->hdec_logits)
        return errf(err, "out of memory for decoding %zu forecast paths", n);
    s->dec_tok = s->dec_buf;
    s->dec_x = (char *)s->dec_buf + xoff;
    s->dec_logits = (char *)s->dec_buf + loff;
    if (tstack_decode_plan(s->stack, (int)n, s->T - s->cfg.lookback, s->rows, s->cfg.lookback,
                           err))
        return -1;
    s->dec_rows = s->rows;
    return 0;
}

/* Runs tokens hdec_tok[0..n) at position pos through the decoder and leaves
 * their logits in hdec_logits [n, Vp]. Path p of row r is sequence
 * p * rows + r. */
static void decode_step(model *m, int n, int pos)
{
    tsg_state *s = m->priv;
    backend *be = m->be;
    int C = s->cfg.C;
    be->upload(be, s->dec_tok, DT_I32, s->hdec_tok, DT_I32, (size_t)n);
    be->encoder_forward(be, s->dec_x, s->dec_tok, s->wte, buf_at(s->wpe, (size_t)pos * C, be->act),
                        n, 1, C);
    void *out = tstack_decode_step(s->stack, s->dec_x, n, pos);
    be->matmul_forward(be, s->dec_logits, out, s->wte, NULL, n, C, s->Vp);
    be->download(be, s->hdec_logits, DT_F32, s->dec_logits, be->act, (size_t)n * s->Vp);
}

/* Every path of every row at once: the look-back of the rows once, into the
 * cache's prefix (path p of row r, sequence p * rows + r, reads prefix row
 * r), then one step of all rows * samples paths per new value. */
static int sample_cached(model *m, uint64_t seed, char *err)
{
    tsg_state *s = m->priv;
    const tsgpt_config *c = &s->cfg;
    int Lb = c->lookback, H = c->horizon, T = s->T, R = s->rows, S = c->samples;
    if (decode_ready(m, err))
        return -1;
    for (int pos = 0; pos < Lb; pos++) {
        for (int r = 0; r < R; r++)
            s->hdec_tok[r] = s->htok[(size_t)r * T + pos];
        decode_step(m, R, pos);
    }
    for (int j = 0; j < H; j++) {
        for (int p = 0; p < S; p++)
            for (int r = 0; r < R; r++) {
                /* the first value's logits are the look-back's, the same for every path */
                const float *lg = s->hdec_logits + (size_t)(j ? p * R + r : r) * s->Vp;
                int k = sample_bin(lg, c->bins, draw(seed, p, r, j), s->hlog);
                keep_path(s, p, r, j, k);
                s->hdec_tok[(size_t)p * R + r] = k;
            }
        if (j + 1 < H)
            decode_step(m, R * S, Lb + j);
    }
    return 0;
}

/* The median, 10/90% quantiles and mean of the sampled paths into s->fc. */
static void summarise_paths(tsg_state *s)
{
    int H = s->cfg.horizon, S = s->cfg.samples;
    float *buf = malloc((size_t)S * sizeof *buf);
    for (int row = 0; row < s->rows; row++)
        for (int j = 0; j < H; j++) {
            for (int p = 0; p < S; p++)
                buf[p] = s->paths[((size_t)p * s->rows + row) * H + j];
            qsort(buf, (size_t)S, sizeof *buf, cmp_float);
            float *f = s->fc + (size_t)row * FC_STATS * H;
            double sum = 0;
            for (int p = 0; p < S; p++) /* ascending, so the sum is the same whatever the order */
                sum += buf[p];
            f[j] = quantile(buf, S, 0.5);
            f[H + j] = quantile(buf, S, 0.1);
            f[2 * H + j] = quantile(buf, S, 0.9);
            f[3 * H + j] = (float)(sum / S);
        }
    free(buf);
}

static int forecast(model *m, const float *x, int cached, uint64_t seed, char *err)
{
    tsg_state *s = m->priv;
    tsg_tokenize_inputs(s, x);
    s->have_grad = 0; /* the sampling passes overwrite the activations */
    if (cached) {
        if (sample_cached(m, seed, err))
            return -1;
    } else {
        sample_uncached(m, seed);
    }
    summarise_paths(s);
    return 0;
}

int tsgpt_forecast(model *m, const float *x, int cached, uint64_t seed, float *fc, char *err)
{
    tsg_state *s = m->priv;
    if (!s->rows)
        return errf(err, "tsgpt forecast before a plan");
    if (forecast(m, x, cached, seed, err))
        return -1;
    if (fc)
        memcpy(fc, s->fc, (size_t)s->rows * FC_STATS * s->cfg.horizon * sizeof *fc);
    return 0;
}

/* mse and mae of the median sampled forecast (normalised space). */
static void tsg_metrics(model *m, const model_batch *b, double *sums, double *counts)
{
    tsg_state *s = m->priv;
    int H = s->cfg.horizon;
    char err[ERRBUF];
    if (!s->have_target || !b->y)
        return;
    uint64_t seed = 0x7453475054ULL + s->draws++; /* the same forecast for the same eval */
    int cached = m->be->attention_decode != NULL;
    if (cached && forecast(m, b->x, 1, seed, err)) {
        /* no room for the cache: the full forwards give the same forecast, slowly */
        fprintf(stderr, "anatomy: warning: tsgpt forecast without a decoding cache: %s\n", err);
        cached = 0;
    }
    if (!cached)
        forecast(m, b->x, 0, seed, err);
    for (int r = 0; r < s->rows; r++) {
        if (!s->valid[r])
            continue;
        for (int j = 0; j < H; j++) {
            double e = s->fc[(size_t)r * FC_STATS * H + j] - b->y[(size_t)r * H + j];
            sums[0] += e * e;
            sums[1] += fabs(e);
        }
        counts[0] += H;
        counts[1] += H;
    }
}

static void tsg_destroy(model *m)
{
    tsg_state *s;
    if (!m)
        return;
    s = m->priv;
    if (s) {
        tsg_free_plan(m);
        if (s->stack)
            tstack_destroy(s->stack);
    }
    model_delete(m);
}

static model *tsgpt_create(backend *be, const int *v, char *err)
{
    const tsgpt_config *c = (const tsgpt_config *)v;
    model *m;
    tsg_state *s;

    if (tsgpt_check(v, err))
        return NULL;
    m = model_new(be, &tsgpt_family, (const int *)v, sizeof *s, err);
    if (!m)
        return NULL;
    s = m->priv;
    s->cfg = *c;
    s->T = seq_len(c);
    s->Vp = padded_bins(c->bins);
    m->V = c->bins;
    m->maxT = s->T;
    m->plan = tsg_plan;
    m->forward = tsg_forward;
    m->backward = tsg_backward;
    m->logits = tsg_logits;
    m->metrics = tsg_metrics;
    m->write_forecast = tsgpt_write_forecast;
    m->forecast_header = "row,step,median,q10,q90,mean,target";
    m->nmetrics = 2;
    m->metric_names[0] = "mse";
    m->metric_names[1] = "mae";
    m->destroy = tsg_destroy;
    m->has_dropout = TSTACK_DROPOUT_SITES;
    m->nparams = tsgpt_layout(v, &m->views, &m->nviews);
    m->nparams_real = tsgpt_real_params(v);
    if (!m->views) {
        errf(err, "out of memory");
        goto fail;
    }
    if (model_alloc(m, err))
        goto fail;
    tstack_config tc = stack_of(c);
    s->stack = tstack_create(m, &tc, TSG_STACK_FIRST, 0, err);
    if (!s->stack)
        goto fail;
    s->wte = buf_at(m->params, m->views[0].offset, be->act);
    s->wpe = buf_at(m->params, m->views[1].offset, be->act);
    s->dwte = buf_at(m->grads, m->views[0].offset, be->act);
    s->dwpe = buf_at(m->grads, m->views[1].offset, be->act);
    return m;
fail:
    tsg_destroy(m);
    return NULL;
}

static batch_source *tsgpt_open_data(const model *m, const data_spec *spec, char *err)
{
    const tsgpt_config *c = &((const tsg_state *)m->priv)->cfg;
    return series_source_open(spec, c->channels, c->lookback, c->horizon, err);
}

/* The last forecast (after metrics) as CSV rows: row,step,median,q10,q90,mean,y. */
int tsgpt_write_forecast(model *m, FILE *out)
{
    tsg_state *s = m->priv;
    int H = s->cfg.horizon;
    if (!s->have_target)
        return -1;
    for (int r = 0; r < s->rows; r++) {
        if (!s->valid[r])
            continue;
        const float *f = s->fc + (size_t)r * FC_STATS * H;
        for (int j = 0; j < H; j++)
            fprintf(out, "%d,%d,%.6g,%.6g,%.6g,%.6g,%.6g\n", r, j, f[j], f[H + j], f[2 * H + j],
                    f[3 * H + j], s->last_y ? s->last_y[(size_t)r * H + j] : NAN);
    }
    return 0;
}

const model_family tsgpt_family = {
    .name = "tsgpt",
    .summary = "time series as tokens: mean-scaled, binned values, a GPT-2 decoder, "
               "sampled forecasts (CSV series)",
    .presets = "tsgpt-etth1 tsgpt-tiny",
    .fields = tsgpt_fields,
    .nfields = (int)(sizeof tsgpt_fields / sizeof tsgpt_fields[0]),
    .preset = tsgpt_preset,
    .check = tsgpt_check,
    .layout = tsgpt_layout,
    .real_params = tsgpt_real_params,
    .init = tsgpt_init,
    .create = tsgpt_create,
    .describe = tsgpt_describe,
    .open_data = tsgpt_open_data,
};
