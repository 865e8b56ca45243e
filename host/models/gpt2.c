/* gpt2.c: the GPT-2 family, written as the paper's equations compose the ops.
 *
 *   x0 = wte[tokens] + wpe[positions]                         (embedding)
 *   for each layer l:  a = x + attn(LN1(x)),  x' = a + mlp(LN2(a))  (pre-LN blocks)
 *   logits = LN_f(x_L) @ wte^T                                 (tied classifier)
 *   loss = cross-entropy(softmax(logits), next token)
 *
 * Forward saves what backward needs in one activation buffer planned per
 * (B, T); backward walks the same list in reverse. Only ops are called. */
#include "gpt2.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../data/errbuf.h"
#include "../../data/rng.h"
#include "../family.h"
#include "transformer.h"

const char *const gpt2_presets =
    "gpt2-124m gpt2-350m gpt2-774m gpt2-1558m d2 d4 d6 d12";

int gpt2_preset(const char *name, gpt2_config *cfg, char *err)
{
    static const struct { const char *name; int L, NH, C; } p[] = {
        { "gpt2-124m", 12, 12, 768 },  { "gpt2-350m", 24, 16, 1024 },
        { "gpt2-774m", 36, 20, 1280 }, { "gpt2-1558m", 48, 25, 1600 },
        { "d2", 2, 2, 128 },           { "d4", 4, 4, 256 },
        { "d6", 6, 6, 384 },           { "d12", 12, 12, 768 },
    };
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) {
        if (strcmp(name, p[i].name) == 0) {
            cfg->V = 50257;
            cfg->maxT = 1024;
            cfg->L = p[i].L;
            cfg->NH = p[i].NH;
            cfg->C = p[i].C;
            cfg->nobias = 0;
            return 0;
        }
    }
    return errf(err, "--preset: unknown preset '%s' (known: %s)", name, gpt2_presets);
}

int gpt2_check_config(const gpt2_config *c, char *err)
{
    if (c->V < 2 || c->V > 1 << 24)
        return errf(err, "vocabulary size %d out of range [2, 16777216]", c->V);
    if (c->maxT < 1 || c->maxT > 1 << 20)
        return errf(err, "context length %d out of range [1, 1048576]", c->maxT);
    if (c->L < 1 || c->L > 1024)
        return errf(err, "layer count %d out of range [1, 1024]", c->L);
    if (c->C < 1 || c->C > 1 << 16)
        return errf(err, "width %d out of range [1, 65536]", c->C);
    if (c->NH < 1 || c->C % c->NH != 0)
        return errf(err, "--heads %d does not divide --width %d (the width is split evenly among "
                         "the heads)", c->NH, c->C);
    return 0;
}

static tstack_config stack_config(const gpt2_config *c)
{
    return (tstack_config){ .L = c->L, .NH = c->NH, .C = c->C, .causal = 1, .post_ln = 0,
                            .nobias = c->nobias };
}

size_t gpt2_layout(const gpt2_config *c, param_view **views, int *nviews)
{
    tstack_config sc = stack_config(c);
    int n = 0;
    size_t off = 0;
    param_view *v = calloc((size_t)2 + tstack_nviews(&sc), sizeof *v);

    if (!v) {
        *views = NULL;
        *nviews = 0;
        return 0;
    }
    model_add_view(v, &n, &off, "wte.weight", 2, gpt2_padded_vocab(c->V), c->C);
    model_add_view(v, &n, &off, "wpe.weight", 2, c->maxT, c->C);
    tstack_layout(&sc, "h", "ln_f", v, &n, &off);
    *views = v;
    *nviews = n;
    return off;
}

void gpt2_init_params(const gpt2_config *c, float *host, uint64_t seed)
{
    param_view *views;
    int n;
    size_t total = gpt2_layout(c, &views, &n);
    tstack_config sc = stack_config(c);
    rng_state r;

    rng_seed(&r, seed);
    memset(host, 0, total * sizeof *host);
    /* wte's padded rows stay zero */
    for (size_t k = 0; k < (size_t)c->V * c->C; k++)
        host[views[0].offset + k] = (float)(0.02 * rng_normal(&r));
    for (size_t k = 0; k < views[1].count; k++)
        host[views[1].offset + k] = (float)(0.02 * rng_normal(&r));
    tstack_init(&sc, views + 2, host, &r);
    free(views);
}

/* ---- the model on a backend ---- */

typedef struct {
    gpt2_config cfg;
    int Vp;
    tstack *stack;
    void *wte, *wpe, *dwte, *dwpe;
    /* activations, planned per (B, T) */
    void *act_buf, *stat_buf, *tok_buf;
    void *encoded, *logits, *losses, *dln;
    const void *out; /* the stack's output of the last forward */
    int32_t *tokens, *targets; /* device int32 [B*T] */
    double *host_losses;       /* [B*T] */
    int have_dlogits;
    /* incremental decoding: the token, its embedding row, its logits */
    void *dec_buf;
    int32_t *dec_tok;
    void *dec_x, *dec_logits;
} gpt2_state;

const gpt2_config *gpt2_config_of(const model *m)
{
    return &((const gpt2_state *)m->priv)->cfg;
}

static void free_plan(model *m)
{
    gpt2_state *s = m->priv;
    backend *be = m->be;
    if (s->act_buf) be->free(be, s->act_buf);
    if (s->stat_buf) be->free(be, s->stat_buf);
    if (s->tok_buf) be->free(be, s->tok_buf);
    free(s->host_losses);
    s->act_buf = s->stat_buf = s->tok_buf = NULL;
    s->host_losses = NULL;
    m->B = m->T = 0;
}

static void carve_all(gpt2_state *s, carver *a, carver *st, int B, int T)
{
    size_t BT = (size_t)B * T, C = s->cfg.C;
    s->encoded = carve(a, BT * C);
    s->logits = carve(a, BT * s->Vp);
    s->dln = carve(a, BT * C);
    s->losses = carve(st, BT);
}

static int gpt2_plan(model *m, int B, int T, char *err)
{
    gpt2_state *s = m->priv;
    backend *be = m->be;
    carver a = { NULL, 0, dtype_size(be->act) }, st = { NULL, 0, dtype_size(be->stat) };

    if (B < 1 || T < 1)
        return errf(err, "--batch/--seq: must be positive (got %d x %d)", B, T);
    if (T > s->cfg.maxT)
        return errf(err, "--seq: %d is longer than the model's context length %d", T,
                    s->cfg.maxT);
    free_plan(m);
    s->host_losses = malloc((size_t)B * T * sizeof *s->host_losses);
    if (!s->host_losses)
        goto oom;
    carve_all(s, &a, &st, B, T);
    s->act_buf = be->alloc(be, a.used * a.esize);
    s->stat_buf = be->alloc(be, st.used * st.esize);
    s->tok_buf = be->alloc(be, 2 * (size_t)B * T * sizeof(int32_t));
    if (!s->act_buf || !s->stat_buf || !s->tok_buf)
        goto oom;
    a.base = s->act_buf;
    st.base = s->stat_buf;
    a.used = st.used = 0;
    carve_all(s, &a, &st, B, T);
    if (tstack_plan(s->stack, B, T, s->cfg.V, err)) {
        free_plan(m);
        return -1;
    }
    s->tokens = s->tok_buf;
    s->targets = (int32_t *)s->tok_buf + (size_t)B * T;
    m->B = B;
    m->T = T;
    s->have_dlogits = 0;
    return 0;
oom:
    {
        double gib = ((double)a.used * a.esize + (double)st.used * st.esize) / (1 << 30);
        free_plan(m);
        return errf(err, "--batch/--seq: activations for %d x %d need %.2f GiB on %s, "
                         "which could not be allocated", B, T, gib, be->name);
    }
}

static void range(backend *be, const char *what, int push)
{
    if (be->range)
        be->range(be, what, push);
}

static double gpt2_forward(model *m, const model_batch *b, float grad_scale)
{
    gpt2_state *s = m->priv;
    backend *be = m->be;
    const gpt2_config *c = &s->cfg;
    int B = m->B, T = m->T, C = c->C, BT = B * T;

    range(be, "forward", 1);
    be->upload(be, s->tokens, DT_I32, b->tokens, DT_I32, (size_t)BT);
    be->encoder_forward(be, s->encoded, s->tokens, s->wte, s->wpe, B, T, C);
    model_dropout(m, s->encoded, (size_t)BT * C, DROPOUT_SITE_EMBED);
    s->out = tstack_forward(s->stack, s->encoded);
    be->matmul_forward(be, s->logits, s->out, s->wte, NULL, BT, C, s->Vp);
    s->have_dlogits = 0;
    if (!b->targets) {
        range(be, "forward", 0);
        return 0.0;
    }
    int valid = 0;
    for (int i = 0; i < BT; i++)
        valid += b->targets[i] >= 0;
    float scale = grad_scale > 0 && valid ? grad_scale / (float)valid : 0.0f;
    be->upload(be, s->targets, DT_I32, b->targets, DT_I32, (size_t)BT);
    be->crossentropy(be, s->losses, scale > 0 ? s->logits : NULL, s->logits, s->targets, BT,
                     c->V, s->Vp, scale);
    s->have_dlogits = scale > 0;
    be->download(be, s->host_losses, DT_F64, s->losses, be->stat, (size_t)BT);
    range(be, "forward", 0);
    double sum = 0.0;
    for (int i = 0; i < BT; i++)
        if (b->targets[i] >= 0)
            sum += s->host_losses[i];
    return model_loss(m, sum, valid);
}

static void gpt2_backward(model *m)
{
    gpt2_state *s = m->priv;
    backend *be = m->be;
    const gpt2_config *c = &s->cfg;
    int B = m->B, T = m->T, C = c->C, BT = B * T;

    if (!s->have_dlogits)
        return; /* forward ran without a loss to differentiate */
    range(be, "backward", 1);
    /* classifier: logits = out @ wte^T (the logits buffer now holds dlogits) */
    be->matmul_backward(be, s->dln, s->dwte, NULL, s->logits, s->out, s->wte, BT, C, s->Vp,
                        GRAD_SET);
    void *dx = tstack_backward(s->stack, s->dln);
    model_dropout(m, dx, (size_t)BT * C, DROPOUT_SITE_EMBED);
    be->encoder_backward(be, s->dwte, s->dwpe, dx, s->tokens, B, T, C);
    model_views_ready(m, 0, 1); /* wte (classifier and embedding), wpe */
    s->have_dlogits = 0;
    range(be, "backward", 0);
}

static void gpt2_logits(model *m, int b, int t, float *out)
{
    gpt2_state *s = m->priv;
    size_t row = ((size_t)b * m->T + t) * s->Vp;
    m->be->download(m->be, out, DT_F32, buf_at(s->logits, row, m->be->act), m->be->act,
                    (size_t)s->cfg.V);
}

static int gpt2_decode_plan(model *m, int maxlen, char *err)
{
    gpt2_state *s = m->priv;
    backend *be = m->be;
    size_t es = dtype_size(be->act), xoff = 256, loff = xoff + ((size_t)s->cfg.C * es + 255) / 256 * 256;
    if (maxlen < 1 || maxlen > s->cfg.maxT)
        return errf(err, "decoding length %d outside [1, %d] (the context)", maxlen, s->cfg.maxT);
    if (s->dec_buf)
        be->free(be, s->dec_buf);
    /* [int32 token | 256-byte gap] [x: C] [logits: Vp] */
    s->dec_buf = be->alloc(be, loff + (size_t)s->Vp * es);
    if (!s->dec_buf)
        return errf(err, "out of memory for decoding");
    s->dec_tok = s->dec_buf;
    s->dec_x = (char *)s->dec_buf + xoff;
    s->dec_logits = (char *)s->dec_buf + loff;
    return tstack_decode_plan(s->stack, 1, maxlen, 0, 0, err);
}

static void gpt2_decode_step(model *m, int32_t tok, int pos, float *logits)
{
    gpt2_state *s = m->priv;
    backend *be = m->be;
    int C = s->cfg.C;
    be->upload(be, s->dec_tok, DT_I32, &tok, DT_I32, 1);
    /* one token at position pos: the positions table from row pos on */
    be->encoder_forward(be, s->dec_x, s->dec_tok, s->wte, buf_at(s->wpe, (size_t)pos * C, be->act),
                        1, 1, C);
    void *out = tstack_decode_step(s->stack, s->dec_x, 1, pos);
    be->matmul_forward(be, s->dec_logits, out, s->wte, NULL, 1, C, s->Vp);
    be->download(be, logits, DT_F32, s->dec_logits, be->act, (size_t)s->cfg.V);
}

static const double *gpt2_position_losses(model *m)
{
    return ((gpt2_state *)m->priv)->host_losses;
}

static void gpt2_destroy(model *m)
{
    gpt2_state *s;
    if (!m)
        return;
    s = m->priv;
    if (s) {
        free_plan(m);
        if (s->dec_buf)
            m->be->free(m->be, s->dec_buf);
        tstack_destroy(s->stack);
    }
    model_delete(m);
}

model *gpt2_create(backend *be, const gpt2_config *cfg, char *err)
{
    model *m;
    gpt2_state *s;
    tstack_config sc = stack_config(cfg);

    if (gpt2_check_config(cfg, err))
        return NULL;
    m = model_new(be, &gpt2_family, (const int *)cfg, sizeof *s, err);
    if (!m)
        return NULL;
    s = m->priv;
    m->V = cfg->V;
    m->maxT = cfg->maxT;
    m->plan = gpt2_plan;
    m->forward = gpt2_forward;
    m->backward = gpt2_backward;
    m->logits = gpt2_logits;
    m->position_losses = gpt2_position_losses;
    m->decode_plan = gpt2_decode_plan;
    m->decode_step = gpt2_decode_step;
    m->destroy = gpt2_destroy;
    m->has_dropout = TSTACK_DROPOUT_SITES;
    s->cfg = *cfg;
    s->Vp = gpt2_padded_vocab(cfg->V);
    m->nparams = gpt2_layout(cfg, &m->views, &m->nviews);
    m->nparams_real = m->nparams - (size_t)(s->Vp - cfg->V) * cfg->C;
    if (!m->views) {
        errf(err, "out of memory");
        goto fail;
    }
    if (model_alloc(m, err))
        goto fail;
    s->stack = tstack_create(m, &sc, 2, 0, err);
    if (!s->stack)
        goto fail;
    s->wte = model_view_at(m, m->params, 0);
    s->wpe = model_view_at(m, m->params, 1);
    s->dwte = model_view_at(m, m->grads, 0);
    s->dwpe = model_view_at(m, m->grads, 1);
    return m;
fail:
    gpt2_destroy(m);
    return NULL;
}

/* ---- the family table entry ---- */

static const family_field gpt2_fields[] = {
    { "V", "vocab-size", "vocabulary size (50257: GPT-2's BPE; 256: bytes)", 2, 1 << 24, 0, NULL },
    { "maxT", "max-seq", "context length (learned positions)", 1, 1 << 20, 0, NULL },
    { "L", "layers", "transformer blocks", 1, 1024, 0, NULL },
    { "NH", "heads", "attention heads", 1, 1 << 16, 0, NULL },
    { "C", "width", "model width", 1, 1 << 16, 0, NULL },
    /* optional: checkpoints from before the switch have biases */
    { "nobias", "no-bias", "no biases in linear layers and layernorms (nanoGPT's bias=False)",
      0, 1, FIELD_SWITCH | FIELD_OPTIONAL, NULL },
};

static int fam_preset(const char *name, int *v, char *err)
{
    return gpt2_preset(name, (gpt2_config *)v, err);
}

static int fam_check(const int *v, char *err)
{
    return gpt2_check_config((const gpt2_config *)v, err);
}

static size_t fam_layout(const int *v, param_view **views, int *nviews)
{
    return gpt2_layout((const gpt2_config *)v, views, nviews);
}

static size_t fam_real_params(const int *v)
{
    const gpt2_config *c = (const gpt2_config *)v;
    param_view *views;
    int n;
    size_t total = gpt2_layout(c, &views, &n);
    free(views);
    return total - (size_t)(gpt2_padded_vocab(c->V) - c->V) * c->C;
}

static void fam_init(const int *v, float *host, uint64_t seed)
{
    gpt2_init_params((const gpt2_config *)v, host, seed);
}

static model *fam_create(backend *be, const int *v, char *err)
{
    return gpt2_create(be, (const gpt2_config *)v, err);
}

static void fam_describe(const int *v, FILE *out)
{
    const gpt2_config *c = (const gpt2_config *)v;
    fprintf(out, "vocab        %d (padded to %d)\n", c->V, gpt2_padded_vocab(c->V));
    fprintf(out, "layers       %d\nheads        %d\nwidth        %d\n", c->L, c->NH, c->C);
    fprintf(out, "biases       %s\n", c->nobias ? "none (--no-bias)" : "in every linear layer "
                 "and layernorm");
    fprintf(out, "context      %d tokens: causal attention sees every earlier position of "
                 "the sequence, up to T = --seq (at most %d, the learned positions)\n",
            c->maxT, c->maxT);
    fprintf(out, "data         token shards (anatomy prep); next-token targets\n");
}

static batch_source *fam_open_data(const model *m, const data_spec *spec, char *err)
{
    return lm_source_open(spec, m->V, err);
}

const model_family gpt2_family = {
    .name = "gpt2",
    .summary = "GPT-2: decoder-only transformer LM (pre-LN, causal, tied embeddings)",
    .presets = "gpt2-124m gpt2-350m gpt2-774m gpt2-1558m d2 d4 d6 d12",
    .generative = 1,
    .random_rows = 1,
    .fields = gpt2_fields,
    .nfields = (int)(sizeof gpt2_fields / sizeof gpt2_fields[0]),
    .preset = fam_preset,
    .check = fam_check,
    .layout = fam_layout,
    .real_params = fam_real_params,
    .init = fam_init,
    .create = fam_create,
    .describe = fam_describe,
    .open_data = fam_open_data,
};
