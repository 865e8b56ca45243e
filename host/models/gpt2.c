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
        return errf(err, "heads %d do not divide the width %d", c->NH, c->C);
    return 0;
}

static void add_view(param_view *v, int *n, size_t *off, const char *name, int decay,
                     int ndim, int d0, int d1)
{
    param_view *p = &v[(*n)++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = ndim;
    p->shape[0] = d0;
    p->shape[1] = ndim > 1 ? d1 : 0;
    p->count = (size_t)d0 * (ndim > 1 ? (size_t)d1 : 1);
    p->offset = *off;
    p->decay = decay;
    *off += p->count;
}

size_t gpt2_layout(const gpt2_config *c, param_view **views, int *nviews)
{
    int C = c->C, n = 0;
    size_t off = 0;
    param_view *v = calloc((size_t)4 + 12 * (size_t)c->L, sizeof *v);
    char name[64];

    if (!v) {
        *views = NULL;
        *nviews = 0;
        return 0;
    }
    add_view(v, &n, &off, "wte.weight", 1, 2, gpt2_padded_vocab(c->V), C);
    add_view(v, &n, &off, "wpe.weight", 1, 2, c->maxT, C);
    for (int l = 0; l < c->L; l++) {
#define V1(suffix, d0) (snprintf(name, sizeof name, "h.%d.%s", l, suffix), \
                        add_view(v, &n, &off, name, 0, 1, d0, 0))
#define V2(suffix, d0, d1) (snprintf(name, sizeof name, "h.%d.%s", l, suffix), \
                            add_view(v, &n, &off, name, 1, 2, d0, d1))
        V1("ln_1.weight", C);
        V1("ln_1.bias", C);
        V2("attn.c_attn.weight", 3 * C, C);
        V1("attn.c_attn.bias", 3 * C);
        V2("attn.c_proj.weight", C, C);
        V1("attn.c_proj.bias", C);
        V1("ln_2.weight", C);
        V1("ln_2.bias", C);
        V2("mlp.c_fc.weight", 4 * C, C);
        V1("mlp.c_fc.bias", 4 * C);
        V2("mlp.c_proj.weight", C, 4 * C);
        V1("mlp.c_proj.bias", C);
#undef V1
#undef V2
    }
    add_view(v, &n, &off, "ln_f.weight", 0, 1, C, 0);
    add_view(v, &n, &off, "ln_f.bias", 0, 1, C, 0);
    *views = v;
    *nviews = n;
    return off;
}

void gpt2_init_params(const gpt2_config *c, float *host, uint64_t seed)
{
    param_view *views;
    int n;
    size_t total = gpt2_layout(c, &views, &n);
    rng_state r;
    float proj_std = 0.02f / sqrtf(2.0f * (float)c->L);

    rng_seed(&r, seed);
    memset(host, 0, total * sizeof *host);
    for (int i = 0; i < n; i++) {
        const param_view *p = &views[i];
        float *w = host + p->offset;
        size_t count = p->count;
        const char *leaf = strrchr(p->name, '.');
        if (p->ndim == 1) {
            /* LN gains 1, every bias 0 */
            float val = strstr(p->name, "ln_") && strcmp(leaf, ".weight") == 0 ? 1.0f : 0.0f;
            for (size_t k = 0; k < count; k++)
                w[k] = val;
            continue;
        }
        /* residual projections get the 1/sqrt(2L) scaling (GPT-2 paper, sec. 2.3) */
        float std = strstr(p->name, "c_proj.weight") ? proj_std : 0.02f;
        if (strcmp(p->name, "wte.weight") == 0)
            count = (size_t)c->V * c->C; /* padded rows stay zero */
        for (size_t k = 0; k < count; k++)
            w[k] = (float)(std * rng_normal(&r));
    }
    free(views);
}

/* ---- the model on a backend ---- */

/* Saved activations of one layer (act unless noted). */
typedef struct {
    void *ln1, *ln1_mean, *ln1_rstd; /* stats: stat dtype */
    void *qkv, *atty, *lse;          /* lse: stat [B,NH,T] */
    void *res2;                      /* x + attn(LN1(x)) */
    void *ln2, *ln2_mean, *ln2_rstd;
    void *fch, *fch_gelu;            /* [B,T,4C] before / after GELU */
    void *res3;                      /* the layer's output */
} gpt2_layer_acts;

typedef struct {
    gpt2_config cfg;
    int Vp;
    /* parameter pointers per layer, resolved once */
    void *wte, *wpe, *lnfw, *lnfb, *dwte, *dwpe, *dlnfw, *dlnfb;
    struct gpt2_layer_params {
        void *ln1w, *ln1b, *qkvw, *qkvb, *attprojw, *attprojb;
        void *ln2w, *ln2b, *fcw, *fcb, *fcprojw, *fcprojb;
    } *lp, *lg; /* params, grads */
    /* activations, planned per (B, T) */
    void *act_buf, *stat_buf, *tok_buf;
    void *encoded, *lnf, *lnf_mean, *lnf_rstd, *logits, *losses, *scratch;
    gpt2_layer_acts *la;
    int32_t *tokens, *targets; /* device int32 [B*T] */
    /* backward scratch */
    void *dres, *dln, *datty, *d4a, *d4b;
    double *host_losses; /* [B*T] */
    int have_dlogits;
} gpt2_state;

const gpt2_config *gpt2_config_of(const model *m)
{
    return &((const gpt2_state *)m->priv)->cfg;
}

static void resolve_params(model *m, void *base, void **wte, void **wpe, void **lnfw,
                           void **lnfb, struct gpt2_layer_params *lp)
{
    dtype t = m->be->act;
    int L = ((gpt2_state *)m->priv)->cfg.L;
    /* views are in gpt2_layout order: wte, wpe, 12 per layer, ln_f.weight, ln_f.bias */
#define AT(i) buf_at(base, m->views[i].offset, t)
    *wte = AT(0);
    *wpe = AT(1);
    for (int l = 0; l < L; l++) {
        int b = 2 + 12 * l;
        lp[l] = (struct gpt2_layer_params){ AT(b), AT(b + 1), AT(b + 2), AT(b + 3),
                                            AT(b + 4), AT(b + 5), AT(b + 6), AT(b + 7),
                                            AT(b + 8), AT(b + 9), AT(b + 10), AT(b + 11) };
    }
    *lnfw = AT(2 + 12 * L);
    *lnfb = AT(3 + 12 * L);
#undef AT
}

static void free_plan(model *m)
{
    gpt2_state *s = m->priv;
    backend *be = m->be;
    if (s->act_buf) be->free(be, s->act_buf);
    if (s->stat_buf) be->free(be, s->stat_buf);
    if (s->tok_buf) be->free(be, s->tok_buf);
    free(s->la);
    free(s->host_losses);
    s->act_buf = s->stat_buf = s->tok_buf = NULL;
    s->la = NULL;
    s->host_losses = NULL;
    m->B = m->T = 0;
}

/* Carves named tensors out of one buffer: the first pass (base NULL) only
 * counts, the second assigns addresses. */
typedef struct { char *base; size_t used; size_t esize; } carver;

static void *carve(carver *cv, size_t n)
{
    void *p = cv->base ? cv->base + cv->used * cv->esize : NULL;
    cv->used += (n + 31) / 32 * 32; /* 128-byte alignment for fp32 */
    return p;
}

static void carve_all(gpt2_state *s, carver *a, carver *st, int B, int T, int recompute)
{
    size_t BT = (size_t)B * T, C = s->cfg.C, L = s->cfg.L;
    /* with recompute, every layer's LN1/LN2 outputs share one buffer and its
     * GELU outputs another: forward consumes each right after writing it, and
     * backward writes it again just before its one use */
    void *ln_shared = recompute ? carve(a, BT * C) : NULL;
    void *gelu_shared = recompute ? carve(a, BT * 4 * C) : NULL;
    s->encoded = carve(a, BT * C);
    for (size_t l = 0; l < L; l++) {
        gpt2_layer_acts *x = &s->la[l];
        x->ln1 = recompute ? ln_shared : carve(a, BT * C);
        x->ln1_mean = carve(st, BT);
        x->ln1_rstd = carve(st, BT);
        x->qkv = carve(a, BT * 3 * C);
        x->atty = carve(a, BT * C);
        x->lse = carve(st, BT * s->cfg.NH);
        x->res2 = carve(a, BT * C);
        x->ln2 = recompute ? ln_shared : carve(a, BT * C);
        x->ln2_mean = carve(st, BT);
        x->ln2_rstd = carve(st, BT);
        x->fch = carve(a, BT * 4 * C);
        x->fch_gelu = recompute ? gelu_shared : carve(a, BT * 4 * C);
        x->res3 = carve(a, BT * C);
    }
    s->lnf = carve(a, BT * C);
    s->lnf_mean = carve(st, BT);
    s->lnf_rstd = carve(st, BT);
    s->logits = carve(a, BT * s->Vp);
    s->losses = carve(st, BT);
    s->scratch = carve(a, BT * C);
    s->dres = carve(a, BT * C);
    s->dln = carve(a, BT * C);
    s->datty = carve(a, BT * C);
    s->d4a = carve(a, BT * 4 * C);
    s->d4b = carve(a, BT * 4 * C);
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
    s->la = calloc((size_t)s->cfg.L, sizeof *s->la);
    s->host_losses = malloc((size_t)B * T * sizeof *s->host_losses);
    if (!s->la || !s->host_losses)
        goto oom;
    carve_all(s, &a, &st, B, T, m->recompute);
    s->act_buf = be->alloc(be, a.used * a.esize);
    s->stat_buf = be->alloc(be, st.used * st.esize);
    s->tok_buf = be->alloc(be, 2 * (size_t)B * T * sizeof(int32_t));
    if (!s->act_buf || !s->stat_buf || !s->tok_buf)
        goto oom;
    a.base = s->act_buf;
    st.base = s->stat_buf;
    a.used = st.used = 0;
    carve_all(s, &a, &st, B, T, m->recompute);
    /* the backend's own scratch, also before the first step */
    if (be->plan && be->plan(be, B, T, s->cfg.C, s->cfg.NH, s->cfg.V, err)) {
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

/* Opens (push) or closes a profiler range "<what>" or "layer <l> <what>"
 * (l >= 0) when the backend has the hook. */
static void gpt2_range(backend *be, int l, const char *what, int push)
{
    char name[48];
    if (!be->range)
        return;
    if (l >= 0)
        snprintf(name, sizeof name, "layer %d %s", l, what);
    else
        snprintf(name, sizeof name, "%s", what);
    be->range(be, name, push);
}

static double gpt2_forward(model *m, const int32_t *inputs, const int32_t *targets,
                           float loss_scale)
{
    gpt2_state *s = m->priv;
    backend *be = m->be;
    const gpt2_config *c = &s->cfg;
    int B = m->B, T = m->T, C = c->C, NH = c->NH, BT = B * T;
    void *res = s->encoded;

    gpt2_range(be, -1, "forward", 1);
    be->upload(be, s->tokens, DT_I32, inputs, DT_I32, (size_t)BT);
    be->encoder_forward(be, s->encoded, s->tokens, s->wte, s->wpe, B, T, C);
    if (c->L)
        be->layernorm_forward(be, s->la[0].ln1, s->la[0].ln1_mean, s->la[0].ln1_rstd, res,
                              s->lp[0].ln1w, s->lp[0].ln1b, BT, C);
    else
        be->layernorm_forward(be, s->lnf, s->lnf_mean, s->lnf_rstd, res, s->lnfw, s->lnfb, BT, C);
    /* each residual add is fused with the layernorm that reads it: res2 with
     * LN2, res3 with the next layer's LN1 (LN_f after the last layer) */
    for (int l = 0; l < c->L; l++) {
        gpt2_layer_acts *x = &s->la[l];
        struct gpt2_layer_params *p = &s->lp[l];
        gpt2_range(be, l, "forward", 1);
        be->matmul_forward(be, x->qkv, x->ln1, p->qkvw, p->qkvb, BT, C, 3 * C);
        be->attention_forward(be, x->atty, x->lse, x->qkv, B, T, C, NH, 1);
        be->matmul_forward(be, s->scratch, x->atty, p->attprojw, p->attprojb, BT, C, C);
        be->residual_layernorm_forward(be, x->res2, x->ln2, x->ln2_mean, x->ln2_rstd, res,
                                       s->scratch, p->ln2w, p->ln2b, BT, C);
        be->matmul_gelu_forward(be, x->fch, x->fch_gelu, x->ln2, p->fcw, p->fcb, BT, C, 4 * C);
        be->matmul_forward(be, s->scratch, x->fch_gelu, p->fcprojw, p->fcprojb, BT, 4 * C, C);
        if (l + 1 < c->L) {
            gpt2_layer_acts *nx = &s->la[l + 1];
            be->residual_layernorm_forward(be, x->res3, nx->ln1, nx->ln1_mean, nx->ln1_rstd,
                                           x->res2, s->scratch, s->lp[l + 1].ln1w,
                                           s->lp[l + 1].ln1b, BT, C);
        } else {
            be->residual_layernorm_forward(be, x->res3, s->lnf, s->lnf_mean, s->lnf_rstd,
                                           x->res2, s->scratch, s->lnfw, s->lnfb, BT, C);
        }
        res = x->res3;
        gpt2_range(be, l, "forward", 0);
    }
    be->matmul_forward(be, s->logits, s->lnf, s->wte, NULL, BT, C, s->Vp);
    s->have_dlogits = 0;
    if (!targets) {
        gpt2_range(be, -1, "forward", 0);
        return 0.0;
    }

    be->upload(be, s->targets, DT_I32, targets, DT_I32, (size_t)BT);
    be->crossentropy(be, s->losses, loss_scale > 0 ? s->logits : NULL, s->logits, s->targets,
                     BT, c->V, s->Vp, loss_scale);
    s->have_dlogits = loss_scale > 0;
    be->download(be, s->host_losses, DT_F64, s->losses, be->stat, (size_t)BT);
    gpt2_range(be, -1, "forward", 0);
    double sum = 0.0;
    int valid = 0;
    for (int i = 0; i < BT; i++) {
        if (targets[i] < 0)
            continue;
        sum += s->host_losses[i];
        valid++;
    }
    return valid ? sum / valid : 0.0;
}

/* Tells the trainer (m->grads_ready) that views [first, last] have their final
 * gradients for this micro-batch. */
static void views_ready(model *m, int first, int last)
{
    if (m->grads_ready) {
        size_t lo = m->views[first].offset;
        size_t hi = m->views[last].offset + m->views[last].count;
        m->grads_ready(m->grads_ready_ctx, lo, hi - lo);
    }
}

static void gpt2_backward(model *m)
{
    gpt2_state *s = m->priv;
    backend *be = m->be;
    const gpt2_config *c = &s->cfg;
    int B = m->B, T = m->T, C = c->C, NH = c->NH, BT = B * T;
    size_t btc = (size_t)BT * C;
    dtype t = be->act;

    if (!s->have_dlogits)
        return; /* forward ran without a loss to differentiate */
    gpt2_range(be, -1, "backward", 1);
    /* classifier: logits = lnf @ wte^T (the logits buffer now holds dlogits) */
    be->fill(be, s->dln, t, 0.0, btc);
    be->matmul_backward(be, s->dln, s->dwte, NULL, s->logits, s->lnf, s->wte, BT, C, s->Vp);
    be->fill(be, s->dres, t, 0.0, btc);
    void *res_last = c->L ? s->la[c->L - 1].res3 : s->encoded;
    be->layernorm_backward(be, s->dres, s->dlnfw, s->dlnfb, s->dln, res_last, s->lnfw,
                           s->lnf_mean, s->lnf_rstd, BT, C);
    views_ready(m, 2 + 12 * c->L, 3 + 12 * c->L); /* ln_f */
    /* dres is the gradient of the residual stream, walked down the layers */
    for (int l = c->L - 1; l >= 0; l--) {
        gpt2_layer_acts *x = &s->la[l];
        struct gpt2_layer_params *p = &s->lp[l], *g = &s->lg[l];
        void *res = l ? s->la[l - 1].res3 : s->encoded;
        gpt2_range(be, l, "backward", 1);
        /* MLP: res3 = res2 + fcproj(gelu(fc(LN2(res2)))) */
        if (m->recompute)
            be->gelu_forward(be, x->fch_gelu, x->fch, btc * 4);
        be->fill(be, s->d4a, t, 0.0, btc * 4);
        be->matmul_backward(be, s->d4a, g->fcprojw, g->fcprojb, s->dres, x->fch_gelu,
                            p->fcprojw, BT, 4 * C, C);
        be->fill(be, s->d4b, t, 0.0, btc * 4);
        be->gelu_backward(be, s->d4b, x->fch, s->d4a, btc * 4);
        if (m->recompute)
            be->layernorm_forward(be, x->ln2, x->ln2_mean, x->ln2_rstd, x->res2, p->ln2w,
                                  p->ln2b, BT, C);
        be->fill(be, s->dln, t, 0.0, btc);
        be->matmul_backward(be, s->dln, g->fcw, g->fcb, s->d4b, x->ln2, p->fcw, BT, C, 4 * C);
        be->layernorm_backward(be, s->dres, g->ln2w, g->ln2b, s->dln, x->res2, p->ln2w,
                               x->ln2_mean, x->ln2_rstd, BT, C);
        /* attention: res2 = res + attproj(attn(qkv(LN1(res)))) */
        be->fill(be, s->datty, t, 0.0, btc);
        be->matmul_backward(be, s->datty, g->attprojw, g->attprojb, s->dres, x->atty,
                            p->attprojw, BT, C, C);
        be->fill(be, s->d4a, t, 0.0, btc * 3);
        be->attention_backward(be, s->d4a, s->datty, x->qkv, x->atty, x->lse, B, T, C, NH, 1);
        if (m->recompute)
            be->layernorm_forward(be, x->ln1, x->ln1_mean, x->ln1_rstd, res, p->ln1w, p->ln1b,
                                  BT, C);
        be->fill(be, s->dln, t, 0.0, btc);
        be->matmul_backward(be, s->dln, g->qkvw, g->qkvb, s->d4a, x->ln1, p->qkvw, BT, C, 3 * C);
        be->layernorm_backward(be, s->dres, g->ln1w, g->ln1b, s->dln, res, p->ln1w,
                               x->ln1_mean, x->ln1_rstd, BT, C);
        gpt2_range(be, l, "backward", 0);
        views_ready(m, 2 + 12 * l, 13 + 12 * l);
    }
    be->encoder_backward(be, s->dwte, s->dwpe, s->dres, s->tokens, B, T, C);
    views_ready(m, 0, 1); /* wte (classifier and embedding), wpe */
    s->have_dlogits = 0;
    gpt2_range(be, -1, "backward", 0);
}

static void gpt2_logits(model *m, int b, int t, float *out)
{
    gpt2_state *s = m->priv;
    size_t row = ((size_t)b * m->T + t) * s->Vp;
    m->be->download(m->be, out, DT_F32, buf_at(s->logits, row, m->be->act), m->be->act,
                    (size_t)s->cfg.V);
}

static void gpt2_destroy(model *m)
{
    gpt2_state *s;
    if (!m)
        return;
    s = m->priv;
    if (s) {
        free_plan(m);
        free(s->lp);
        free(s->lg);
        free(s);
    }
    model_free_buffers(m);
    free(m->views);
    free(m->segs);
    free(m);
}

model *gpt2_create(backend *be, const gpt2_config *cfg, char *err)
{
    model *m;
    gpt2_state *s;

    if (gpt2_check_config(cfg, err))
        return NULL;
    m = calloc(1, sizeof *m);
    s = calloc(1, sizeof *s);
    if (!m || !s) {
        free(m);
        free(s);
        errf(err, "out of memory");
        return NULL;
    }
    m->family = "gpt2";
    m->be = be;
    m->priv = s;
    m->V = cfg->V;
    m->maxT = cfg->maxT;
    m->plan = gpt2_plan;
    m->forward = gpt2_forward;
    m->backward = gpt2_backward;
    m->logits = gpt2_logits;
    m->destroy = gpt2_destroy;
    s->cfg = *cfg;
    s->Vp = gpt2_padded_vocab(cfg->V);
    m->nparams = gpt2_layout(cfg, &m->views, &m->nviews);
    m->nparams_real = m->nparams - (size_t)(s->Vp - cfg->V) * cfg->C;
    s->lp = calloc((size_t)cfg->L, sizeof *s->lp);
    s->lg = calloc((size_t)cfg->L, sizeof *s->lg);
    if (!m->views || !s->lp || !s->lg) {
        errf(err, "out of memory");
        goto fail;
    }
    if (model_alloc(m, err))
        goto fail;
    resolve_params(m, m->params, &s->wte, &s->wpe, &s->lnfw, &s->lnfb, s->lp);
    resolve_params(m, m->grads, &s->dwte, &s->dwpe, &s->dlnfw, &s->dlnfb, s->lg);
    return m;
fail:
    gpt2_destroy(m);
    return NULL;
}
