/* ffnn.c: the feed-forward language model (Bengio et al. 2003), as the
 * paper's equations compose the ops.
 *
 *   e_t = [E[x_{t-n+1}], ..., E[x_t]]             (window embeddings, concatenated)
 *   h_t = tanh(W_h e_t + b_h)                     (hidden layer)
 *   logits_t = W_o h_t + b_o  (+ W_d e_t with direct connections)
 *   loss = cross-entropy(softmax(logits_t), x_{t+1})
 *
 * Every position of a [B,T] batch is predicted at once: the windows' token
 * ids are laid out [B,T,n] (positions before the sequence's start are -1 and
 * read zero rows), so one embedding lookup and three matmuls of B*T rows do
 * the whole batch. The model sees exactly n tokens of context, however long
 * the sequence; that fixed window is what the recurrent and attention models
 * remove. Parameter names: embed.weight [V,C], hidden.weight [H,n*C],
 * hidden.bias, out.weight [Vp,H], out.bias [Vp], direct.weight [Vp,n*C]. */
#include "ffnn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../data/errbuf.h"
#include "../../data/rng.h"

static const family_field ffnn_fields[] = {
    { "V", "vocab-size", "vocabulary size (token ids below it)", 2, 1 << 24, 0, NULL },
    { "n", "window", "context window: the previous n tokens predict the next", 1, 1024, 0, NULL },
    { "C", NULL, "embedding width per token", 1, 1 << 16, 0, NULL },
    { "H", "width", "hidden (tanh) layer width (--hidden: the same)", 1, 1 << 16, 0, NULL },
    { "direct", "direct", "direct connections from the embeddings to the output", 0, 1,
      FIELD_SWITCH, NULL },
};

#define FFNN_PRESETS "ffnn-small ffnn-tiny ffnn-bengio ffnn-medium"

static int ffnn_preset(const char *name, int *v, char *err)
{
    static const struct { const char *name; int n, C, H, direct; } p[] = {
        { "ffnn-small", 8, 64, 512, 0 },
        { "ffnn-tiny", 4, 16, 64, 0 },
        /* Bengio et al. 2003's AP News model: 5 words of context, 100 features
         * per word, 60 hidden units, direct connections */
        { "ffnn-bengio", 5, 100, 60, 1 },
        { "ffnn-medium", 16, 128, 1024, 0 },
    };
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) {
        if (strcmp(name, p[i].name) == 0) {
            ffnn_config c = { 50257, p[i].n, p[i].C, p[i].H, p[i].direct };
            memcpy(v, &c, sizeof c);
            return 0;
        }
    }
    return errf(err, "--preset: unknown preset '%s' (known: %s)", name, FFNN_PRESETS);
}

static int ffnn_check(const int *v, char *err)
{
    const ffnn_config *c = (const ffnn_config *)v;
    if ((long)c->n * c->C > 1 << 20)
        return errf(err, "--window: %d tokens of width %d: the concatenated input is too wide",
                    c->n, c->C);
    return 0;
}

static size_t ffnn_layout(const int *cv, param_view **views, int *nviews)
{
    const ffnn_config *c = (const ffnn_config *)cv;
    int Vp = ffnn_padded_vocab(c->V), nC = c->n * c->C, n = 0;
    size_t off = 0;
    param_view *v = calloc(6, sizeof *v);

    *views = v;
    *nviews = 0;
    if (!v)
        return 0;
    model_add_view(v, &n, &off, "embed.weight", 2, c->V, c->C);
    model_add_view(v, &n, &off, "hidden.weight", 2, c->H, nC);
    model_add_view(v, &n, &off, "hidden.bias", 1, c->H, 0);
    model_add_view(v, &n, &off, "out.weight", 2, Vp, c->H);
    model_add_view(v, &n, &off, "out.bias", 1, Vp, 0);
    if (c->direct)
        model_add_view(v, &n, &off, "direct.weight", 2, Vp, nC);
    *nviews = n;
    return off;
}

static size_t ffnn_real_params(const int *cv)
{
    const ffnn_config *c = (const ffnn_config *)cv;
    param_view *v;
    int n;
    size_t total = ffnn_layout(cv, &v, &n);
    free(v);
    size_t pad = (size_t)(ffnn_padded_vocab(c->V) - c->V);
    return total - pad * (size_t)(c->H + 1 + (c->direct ? c->n * c->C : 0));
}

/* Embeddings U(-0.1, 0.1); each matmul weight U(-k, k) with k = 1/sqrt(fan_in)
 * (torch.nn.Linear's bound), biases zero; padded output rows zero. */
static void ffnn_init(const int *cv, float *host, uint64_t seed)
{
    const ffnn_config *c = (const ffnn_config *)cv;
    param_view *views;
    int n;
    size_t total = ffnn_layout(cv, &views, &n);
    rng_state r;

    rng_seed(&r, seed);
    memset(host, 0, total * sizeof *host);
    for (int i = 0; i < n; i++) {
        const param_view *p = &views[i];
        if (p->ndim == 1)
            continue;
        double k = i == 0 ? 0.1 : 1.0 / sqrt((double)p->shape[1]);
        size_t rows = i >= 3 ? (size_t)c->V : (size_t)p->shape[0]; /* output padding stays 0 */
        for (size_t e = 0; e < rows * (size_t)p->shape[1]; e++)
            host[p->offset + e] = (float)(k * (2 * rng_uniform(&r) - 1));
    }
    free(views);
}

static void ffnn_describe(const int *cv, FILE *out)
{
    const ffnn_config *c = (const ffnn_config *)cv;
    fprintf(out, "context: a fixed window of the previous %d token%s (the %d embeddings "
                 "concatenated, %d wide); nothing earlier reaches the prediction, however "
                 "long the sequence\n", c->n, c->n == 1 ? "" : "s", c->n, c->n * c->C);
    fprintf(out, "layers: tanh hidden layer of %d, softmax over %d tokens%s\n", c->H, c->V,
            c->direct ? ", direct connections embeddings -> output" : "");
}

/* ---- the model on a backend ---- */

typedef struct {
    void *wte, *hw, *hb, *ow, *ob, *dw;
} ffnn_ptrs;

typedef struct {
    ffnn_config cfg;
    int Vp;
    ffnn_ptrs p, g;
    void *act_buf, *stat_buf, *int_buf;
    void *e, *a, *h, *logits, *dlog, *losses, *de, *dh, *da;
    void *hd;                /* tanh's output after dropout (training with dropout only) */
    int32_t *ids, *targets;  /* device: [B,T,n] window ids, [B,T] targets */
    int32_t *host_ids;       /* [B,T,n] */
    double *host_losses;     /* [B,T] */
    int have_grad;
} ffnn_state;

static void resolve(model *m, void *base, ffnn_ptrs *q)
{
    const ffnn_state *s = m->priv;
    q->wte = model_view_at(m, base, 0);
    q->hw = model_view_at(m, base, 1);
    q->hb = model_view_at(m, base, 2);
    q->ow = model_view_at(m, base, 3);
    q->ob = model_view_at(m, base, 4);
    q->dw = s->cfg.direct ? model_view_at(m, base, 5) : NULL;
}

static void free_plan(model *m)
{
    ffnn_state *s = m->priv;
    backend *be = m->be;
    if (s->act_buf) be->free(be, s->act_buf);
    if (s->stat_buf) be->free(be, s->stat_buf);
    if (s->int_buf) be->free(be, s->int_buf);
    free(s->host_ids);
    free(s->host_losses);
    s->act_buf = s->stat_buf = s->int_buf = NULL;
    s->host_ids = NULL;
    s->host_losses = NULL;
    m->B = m->T = 0;
}

static void carve_all(ffnn_state *s, carver *a, carver *st, int B, int T)
{
    size_t BT = (size_t)B * T, nC = (size_t)s->cfg.n * s->cfg.C, H = (size_t)s->cfg.H;
    s->e = carve(a, BT * nC);
    s->a = carve(a, BT * H);
    s->h = carve(a, BT * H);
    s->hd = carve(a, BT * H);
    s->logits = carve(a, BT * (size_t)s->Vp);
    s->dlog = s->cfg.direct ? carve(a, BT * (size_t)s->Vp) : NULL;
    s->losses = carve(st, BT);
    s->de = carve(a, BT * nC);
    s->dh = carve(a, BT * H);
    s->da = carve(a, BT * H);
}

static int ffnn_plan(model *m, int B, int T, char *err)
{
    ffnn_state *s = m->priv;
    backend *be = m->be;
    carver a = { NULL, 0, dtype_size(be->act) }, st = { NULL, 0, dtype_size(be->stat) };
    size_t BT = (size_t)B * T, n = (size_t)s->cfg.n;

    if (B < 1 || T < 1)
        return errf(err, "--batch/--seq: must be positive (got %d x %d)", B, T);
    free_plan(m);
    carve_all(s, &a, &st, B, T);
    s->act_buf = be->alloc(be, a.used * a.esize);
    s->stat_buf = be->alloc(be, st.used * st.esize);
    s->int_buf = be->alloc(be, BT * (n + 1) * sizeof(int32_t));
    s->host_ids = malloc(BT * n * sizeof *s->host_ids);
    s->host_losses = malloc(BT * sizeof *s->host_losses);
    if (!s->act_buf || !s->stat_buf || !s->int_buf || !s->host_ids || !s->host_losses) {
        double gib = ((double)a.used * a.esize + (double)st.used * st.esize) / (1 << 30);
        free_plan(m);
        return errf(err, "--batch/--seq: activations for %d x %d need %.2f GiB on %s, "
                         "which could not be allocated", B, T, gib, be->name);
    }
    a.base = s->act_buf;
    st.base = s->stat_buf;
    a.used = st.used = 0;
    carve_all(s, &a, &st, B, T);
    s->ids = s->int_buf;
    s->targets = s->ids + BT * n;
    /* the backend's scratch; its column sums are sized by 4C: the widest bias is out.bias */
    int wide = s->cfg.H > (s->Vp + 3) / 4 ? s->cfg.H : (s->Vp + 3) / 4;
    if (be->plan && be->plan(be, B, T, wide, 1, s->cfg.V, err)) {
        free_plan(m);
        return -1;
    }
    m->B = B;
    m->T = T;
    s->have_grad = 0;
    return 0;
}

static void range(backend *be, const char *name, int push)
{
    if (be->range)
        be->range(be, name, push);
}

static double ffnn_forward(model *m, const model_batch *b, float grad_scale)
{
    ffnn_state *s = m->priv;
    backend *be = m->be;
    const ffnn_config *c = &s->cfg;
    const ffnn_ptrs *p = &s->p;
    int B = m->B, T = m->T, n = c->n, nC = c->n * c->C, BT = B * T;

    range(be, "forward", 1);
    s->have_grad = 0;
    /* window k of position t holds x_{t-n+1+k}: oldest first, as concatenated */
    for (int r = 0; r < B; r++)
        for (int t = 0; t < T; t++)
            for (int k = 0; k < n; k++) {
                int src = t - n + 1 + k;
                s->host_ids[((size_t)r * T + t) * n + k] =
                    src >= 0 ? b->tokens[(size_t)r * T + src] : -1;
            }
    be->upload(be, s->ids, DT_I32, s->host_ids, DT_I32, (size_t)BT * n);
    be->embedding_forward(be, s->e, s->ids, p->wte, BT * n, c->C, 0);
    be->matmul_forward(be, s->a, s->e, p->hw, p->hb, BT, nC, c->H);
    be->tanh_forward(be, s->h, s->a, (size_t)BT * c->H);
    /* dropout on the hidden layer only: tanh's backward needs h undropped */
    const void *hout = model_dropout_to(m, s->hd, s->h, (size_t)BT * c->H, DROPOUT_SITE_HEAD);
    be->matmul_forward(be, s->logits, hout, p->ow, p->ob, BT, c->H, s->Vp);
    if (c->direct) {
        be->matmul_forward(be, s->dlog, s->e, p->dw, NULL, BT, nC, s->Vp);
        be->accumulate(be, s->logits, s->dlog, (size_t)BT * s->Vp);
    }
    if (!b->targets) {
        range(be, "forward", 0);
        return 0.0;
    }
    int valid = 0;
    for (int i = 0; i < BT; i++)
        valid += b->targets[i] >= 0;
    int grad = grad_scale > 0;
    float scale = grad && valid ? grad_scale / (float)valid : 0.0f;
    be->upload(be, s->targets, DT_I32, b->targets, DT_I32, (size_t)BT);
    /* with a gradient the logits are overwritten by d loss / d logits */
    be->crossentropy(be, s->losses, grad ? s->logits : NULL, s->logits, s->targets, BT, c->V,
                     s->Vp, scale);
    be->download(be, s->host_losses, DT_F64, s->losses, be->stat, (size_t)BT);
    s->have_grad = grad;
    range(be, "forward", 0);
    double sum = 0;
    for (int i = 0; i < BT; i++)
        if (b->targets[i] >= 0)
            sum += s->host_losses[i];
    return model_loss(m, sum, valid);
}

static void ffnn_backward(model *m)
{
    ffnn_state *s = m->priv;
    backend *be = m->be;
    const ffnn_config *c = &s->cfg;
    const ffnn_ptrs *p = &s->p, *g = &s->g;
    int BT = m->B * m->T, nC = c->n * c->C;
    dtype t = be->act;

    if (!s->have_grad)
        return;
    range(be, "backward", 1);
    be->matmul_backward(be, s->dh, g->ow, g->ob, s->logits, model_dropped(m, s->hd, s->h), p->ow,
                        BT, c->H, s->Vp, GRAD_SET);
    model_dropout(m, s->dh, (size_t)BT * c->H, DROPOUT_SITE_HEAD);
    if (c->direct)
        be->matmul_backward(be, s->de, g->dw, NULL, s->logits, s->e, p->dw, BT, nC, s->Vp,
                            GRAD_SET);
    model_views_ready(m, 3, m->nviews - 1); /* out (and direct) */
    be->fill(be, s->da, t, 0.0, (size_t)BT * c->H);
    be->tanh_backward(be, s->da, s->h, s->dh, (size_t)BT * c->H);
    be->matmul_backward(be, s->de, g->hw, g->hb, s->da, s->e, p->hw, BT, nC, c->H,
                        c->direct ? GRAD_ADD : GRAD_SET); /* de's first writer sets it */
    model_views_ready(m, 1, 2);
    be->embedding_backward(be, g->wte, s->de, s->ids, BT * c->n, c->C);
    model_views_ready(m, 0, 0);
    s->have_grad = 0;
    range(be, "backward", 0);
}

static const double *ffnn_position_losses(model *m)
{
    return ((ffnn_state *)m->priv)->host_losses;
}

static void ffnn_logits(model *m, int b, int t, float *out)
{
    ffnn_state *s = m->priv;
    size_t row = ((size_t)b * m->T + t) * s->Vp;
    m->be->download(m->be, out, DT_F32, buf_at(s->logits, row, m->be->act), m->be->act,
                    (size_t)s->cfg.V);
}

static void ffnn_destroy(model *m)
{
    if (!m)
        return;
    if (m->priv)
        free_plan(m);
    model_delete(m);
}

static model *ffnn_create(backend *be, const int *cv, char *err)
{
    const ffnn_config *c = (const ffnn_config *)cv;
    model *m = model_new(be, &ffnn_family, (const int *)cv, sizeof(ffnn_state), err);
    if (!m)
        return NULL;
    ffnn_state *s = m->priv;
    m->V = c->V;
    m->maxT = 1 << 20; /* any length: each position sees its window only */
    m->plan = ffnn_plan;
    m->forward = ffnn_forward;
    m->backward = ffnn_backward;
    m->logits = ffnn_logits;
    m->position_losses = ffnn_position_losses;
    m->destroy = ffnn_destroy;
    m->has_dropout = "the hidden layer's output (after tanh)";
    s->cfg = *c;
    s->Vp = ffnn_padded_vocab(c->V);
    m->nparams = ffnn_layout(cv, &m->views, &m->nviews);
    m->nparams_real = ffnn_real_params(cv);
    if (!m->views) {
        errf(err, "out of memory");
        goto fail;
    }
    if (model_alloc(m, err))
        goto fail;
    resolve(m, m->params, &s->p);
    resolve(m, m->grads, &s->g);
    return m;
fail:
    ffnn_destroy(m);
    return NULL;
}

static batch_source *ffnn_open_data(const model *m, const data_spec *spec, char *err)
{
    return lm_source_open(spec, m->V, err);
}

const model_family ffnn_family = {
    .name = "ffnn",
    .summary = "feed-forward LM (Bengio et al. 2003): a window of n token embeddings, tanh "
               "hidden layer, softmax (--direct: direct connections)",
    .presets = FFNN_PRESETS,
    .generative = 1,
    .random_rows = 1,
    .fields = ffnn_fields,
    .nfields = (int)(sizeof ffnn_fields / sizeof ffnn_fields[0]),
    .preset = ffnn_preset,
    .check = ffnn_check,
    .layout = ffnn_layout,
    .real_params = ffnn_real_params,
    .init = ffnn_init,
    .create = ffnn_create,
    .describe = ffnn_describe,
    .open_data = ffnn_open_data,
};
