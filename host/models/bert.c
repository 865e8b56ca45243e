/* bert.c: the BERT family, composed from the op table as its equations read.
 *
 *   x0 = LN_e(wte[tokens] + wpe[positions] + wtt[segments])      (embedding)
 *   h  = post-LN transformer stack, bidirectional (x0)            (transformer.h)
 *   masked LM:  logits = LN_m(gelu(h W_t + b_t)) @ wte^T + b_o     (decoder tied)
 *               loss_mlm = cross-entropy at the masked positions (targets -1 elsewhere)
 *   next sentence (--nsp):  p = tanh(h[:,0] W_p + b_p)  (pooler on [CLS])
 *               loss_nsp = cross-entropy(p W_n + b_n, label)
 *   loss = mean loss_mlm (+ mean loss_nsp)
 *
 * Parameters carry Hugging Face BertForPreTraining's names where the stack
 * does not name them ("bert.embeddings.word_embeddings.weight", ...,
 * "cls.seq_relationship.bias"); the blocks are "bert.encoder.layer.N.<leaf>"
 * with the stack's GPT-2 leaves (attn.c_attn: query, key and value stacked).
 * Batches come from data/mlm.h: [CLS] A [SEP] (B [SEP]) pairs, masked. */
#include "bert.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../data/errbuf.h"
#include "../../data/mlm.h"
#include "../../data/rng.h"
#include "transformer.h"

/* Embedding views before the stack: three tables and the layernorm's gain
 * and bias (no bias with nobias). */
static int nemb(const bert_config *c)
{
    return c->nobias ? 4 : 5;
}

/* Masks of the validation and test splits come from this seed, not the run's,
 * so that evaluations of different runs see the same masked positions. */
#define BERT_EVAL_SEED 0x6265727465766131ULL

static const family_field bert_fields[] = {
    { "V", "vocab-size", "model vocabulary: tokenizer ids + [CLS] [SEP] [MASK] [PAD]", 5,
      1 << 24, 0, NULL },
    { "maxT", "max-seq", "longest sequence (learned positions)", 3, 1 << 20, 0, NULL },
    { "L", "layers", "post-LN transformer blocks", 1, 1024, 0, NULL },
    { "NH", "heads", "attention heads", 1, 1024, 0, NULL },
    { "C", "width", "model width", 1, 1 << 16, 0, NULL },
    { "nsp", "nsp", "next-sentence prediction: sentence pairs, pooler and 2-way head", 0, 1,
      FIELD_SWITCH, NULL },
    /* optional: checkpoints from before the switch have biases */
    { "nobias", "no-bias", "no biases in linear layers and layernorms (nanoGPT's bias=False)",
      0, 1, FIELD_SWITCH | FIELD_OPTIONAL, NULL },
};

#define BERT_PRESETS "bert-tiny bert-mini bert-small bert-medium bert-base bert-large"

static int bert_preset(const char *name, int *v, char *err)
{
    static const struct { const char *name; int L, NH, C; } p[] = {
        { "bert-tiny", 2, 2, 128 },   { "bert-mini", 4, 4, 256 },
        { "bert-small", 4, 8, 512 },  { "bert-medium", 8, 8, 512 },
        { "bert-base", 12, 12, 768 }, { "bert-large", 24, 16, 1024 },
    };
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) {
        if (strcmp(name, p[i].name) == 0) {
            /* GPT-2's BPE and the four specials; --vocab-size 260 for bytes */
            bert_config c = { 50257 + MLM_SPECIALS, 512, p[i].L, p[i].NH, p[i].C, 0, 0 };
            memcpy(v, &c, sizeof c);
            return 0;
        }
    }
    return errf(err, "--preset: unknown preset '%s' (known: %s)", name, BERT_PRESETS);
}

static int bert_check(const int *v, char *err)
{
    const bert_config *c = (const bert_config *)v;
    if (c->C % c->NH != 0)
        return errf(err, "--heads %d does not divide --width %d (the width is split evenly among "
                         "the heads)", c->NH, c->C);
    if (c->V - MLM_SPECIALS > 65536)
        return errf(err, "--vocab-size: %d: token shards hold at most 65536 tokenizer ids "
                         "(+%d specials)", c->V, MLM_SPECIALS);
    if (c->nsp && c->maxT < 5)
        return errf(err, "--max-seq: %d: [CLS] A [SEP] B [SEP] needs at least 5", c->maxT);
    return 0;
}

static tstack_config stack_config(const bert_config *c)
{
    tstack_config t = { .L = c->L, .NH = c->NH, .C = c->C, .causal = 0,
                        .post_ln = 1, .nobias = c->nobias }; /* bidirectional, post-LN */
    return t;
}

static size_t bert_layout(const int *cv, param_view **views, int *nviews)
{
    const bert_config *c = (const bert_config *)cv;
    tstack_config tc = stack_config(c);
    int C = c->C, Vp = bert_padded_vocab(c->V), n = 0;
    size_t off = 0;
    param_view *v = calloc((size_t)nemb(c) + tstack_nviews(&tc) + 9, sizeof *v);
    int bias = !c->nobias;

    *views = v;
    *nviews = 0;
    if (!v)
        return 0;
    model_add_view(v, &n, &off, "bert.embeddings.word_embeddings.weight", 2, Vp, C);
    model_add_view(v, &n, &off, "bert.embeddings.position_embeddings.weight", 2, c->maxT, C);
    model_add_view(v, &n, &off, "bert.embeddings.token_type_embeddings.weight", 2, 2, C);
    model_add_view(v, &n, &off, "bert.embeddings.LayerNorm.weight", 1, C, 0);
    if (bias)
        model_add_view(v, &n, &off, "bert.embeddings.LayerNorm.bias", 1, C, 0);
    tstack_layout(&tc, "bert.encoder.layer", NULL, v, &n, &off);
    if (c->nsp) {
        model_add_view(v, &n, &off, "bert.pooler.dense.weight", 2, C, C);
        if (bias)
            model_add_view(v, &n, &off, "bert.pooler.dense.bias", 1, C, 0);
    }
    model_add_view(v, &n, &off, "cls.predictions.transform.dense.weight", 2, C, C);
    if (bias)
        model_add_view(v, &n, &off, "cls.predictions.transform.dense.bias", 1, C, 0);
    model_add_view(v, &n, &off, "cls.predictions.transform.LayerNorm.weight", 1, C, 0);
    if (bias) {
        model_add_view(v, &n, &off, "cls.predictions.transform.LayerNorm.bias", 1, C, 0);
        model_add_view(v, &n, &off, "cls.predictions.bias", 1, Vp, 0);
    }
    if (c->nsp) {
        model_add_view(v, &n, &off, "cls.seq_relationship.weight", 2, 2, C);
        if (bias)
            model_add_view(v, &n, &off, "cls.seq_relationship.bias", 1, 2, 0);
    }
    *nviews = n;
    return off;
}

static size_t bert_real_params(const int *cv)
{
    const bert_config *c = (const bert_config *)cv;
    param_view *v;
    int n;
    size_t total = bert_layout(cv, &v, &n);
    free(v);
    /* padded word-embedding rows and output-bias entries */
    return total - (size_t)(bert_padded_vocab(c->V) - c->V) * (size_t)(c->C + !c->nobias);
}

/* BERT's initialisation: N(0, 0.02) matrices and embeddings, zero biases,
 * unit layernorm gains (the stack's own rule inside it); padding zero. */
static void bert_init(const int *cv, float *host, uint64_t seed)
{
    const bert_config *c = (const bert_config *)cv;
    tstack_config tc = stack_config(c);
    param_view *views;
    int n;
    size_t total = bert_layout(cv, &views, &n);
    int ne = nemb(c), first_head = ne + tstack_nviews(&tc);
    rng_state r;

    rng_seed(&r, seed);
    memset(host, 0, total * sizeof *host);
    for (int i = 0; i < n; i++) {
        const param_view *p = &views[i];
        float *w = host + p->offset;
        if (i == ne) {
            tstack_init(&tc, views + ne, host, &r);
            i = first_head - 1;
            continue;
        }
        if (p->ndim == 1) {
            float val = strstr(p->name, "LayerNorm.weight") ? 1.0f : 0.0f;
            for (size_t k = 0; k < p->count; k++)
                w[k] = val;
            continue;
        }
        size_t count = p->count;
        if (i == 0)
            count = (size_t)c->V * c->C; /* padded rows stay zero */
        for (size_t k = 0; k < count; k++)
            w[k] = (float)(0.02 * rng_normal(&r));
    }
    free(views);
}

static void bert_describe(const int *cv, FILE *out)
{
    const bert_config *c = (const bert_config *)cv;
    mlm_vocab voc = mlm_vocab_of(c->V);
    fprintf(out, "context: up to %d tokens, bidirectional: every position attends to every "
                 "position of its sequence, left and right\n", c->maxT);
    fprintf(out, "vocabulary: %d tokenizer ids + [CLS]=%d [SEP]=%d [MASK]=%d [PAD]=%d "
                 "(decoder rows padded to %d)\n", voc.vocab, voc.cls, voc.sep, voc.mask,
            voc.pad, bert_padded_vocab(c->V));
    fprintf(out, "objective: masked LM: %.0f%% of positions predicted, of those %.0f%% shown "
                 "as [MASK], %.0f%% as a random token, %.0f%% unchanged\n", 100 * MLM_RATE,
            100 * MLM_P_MASK, 100 * MLM_P_RANDOM, 100 * (1 - MLM_P_MASK - MLM_P_RANDOM));
    if (c->nsp)
        fprintf(out, "objective: next sentence: [CLS] A [SEP] B [SEP], B the true "
                     "continuation half the time (label 1), pooler on [CLS]\n");
    else
        fprintf(out, "input: [CLS] A [SEP], one segment of consecutive tokens\n");
}

/* ---- the model on a backend ---- */

typedef struct {
    void *wte, *wpe, *wtt, *elnw, *elnb;        /* embeddings */
    void *poolw, *poolb;                        /* pooler (nsp) */
    void *tw, *tb, *tlnw, *tlnb, *obias;        /* masked-LM head */
    void *nspw, *nspb;                          /* next-sentence head (nsp) */
} bert_ptrs;

typedef struct {
    bert_config cfg;
    int Vp, first_head; /* view index of the first view after the stack */
    tstack *stack;
    bert_ptrs p, g;     /* parameters, gradients */
    /* activations, planned per (B, T) */
    void *act_buf, *stat_buf, *int_buf;
    void *emb, *x0, *emb_mean, *emb_rstd;        /* embeddings, layernormed (stack input) */
    void *h;                                     /* the stack's output (owned by it) */
    void *tpre, *tgel, *tln, *tln_mean, *tln_rstd, *logits, *losses;
    void *cls, *ppre, *pooled, *nlogits, *dnlogits, *nlosses;
    void *d1, *d2, *dh, *dcls, *dpooled, *dppre; /* backward scratch */
    int32_t *tokens, *segments, *targets, *labels;
    int32_t *zeros;      /* host [B*T]: segment ids when the batch has none */
    double *host_losses; /* [B*T] */
    double *host_nlosses; /* [B] */
    float *host_row;     /* [Vp]: one row of logits for the metrics */
    int have_grad;       /* a backward is pending */
    int have_nsp;        /* the last forward computed the next-sentence loss */
    int dlogits;         /* the logits buffer holds d loss / d logits (metrics) */
    float ce_scale;      /* crossentropy's scale in the last forward (metrics) */
    double mlm_sum, nsp_sum;
    int mlm_count, nsp_count;
} bert_state;

static void resolve(model *m, void *base, bert_ptrs *q)
{
    bert_state *s = m->priv;
    dtype t = m->be->act;
    int i = s->first_head, bias = !s->cfg.nobias;
#define AT(k) buf_at(base, m->views[k].offset, t)
/* the next view if this model has biases, else NULL (the ops' "no bias") */
#define BIAS(k) (bias ? AT(k++) : NULL)
    memset(q, 0, sizeof *q);
    q->wte = AT(0);
    q->wpe = AT(1);
    q->wtt = AT(2);
    q->elnw = AT(3);
    q->elnb = bias ? AT(4) : NULL;
    if (s->cfg.nsp) {
        q->poolw = AT(i++);
        q->poolb = BIAS(i);
    }
    q->tw = AT(i++);
    q->tb = BIAS(i);
    q->tlnw = AT(i++);
    q->tlnb = BIAS(i);
    q->obias = BIAS(i);
    if (s->cfg.nsp) {
        q->nspw = AT(i++);
        q->nspb = BIAS(i);
    }
#undef BIAS
#undef AT
}

static void free_plan(model *m)
{
    bert_state *s = m->priv;
    backend *be = m->be;
    if (s->act_buf) be->free(be, s->act_buf);
    if (s->stat_buf) be->free(be, s->stat_buf);
    if (s->int_buf) be->free(be, s->int_buf);
    free(s->zeros);
    free(s->host_losses);
    free(s->host_nlosses);
    free(s->host_row);
    s->act_buf = s->stat_buf = s->int_buf = NULL;
    s->zeros = NULL;
    s->host_losses = s->host_nlosses = NULL;
    s->host_row = NULL;
    m->B = m->T = 0;
}

static void carve_all(bert_state *s, carver *a, carver *st, int B, int T)
{
    size_t BT = (size_t)B * T, C = (size_t)s->cfg.C;
    s->emb = carve(a, BT * C);
    s->x0 = carve(a, BT * C);
    s->emb_mean = carve(st, BT);
    s->emb_rstd = carve(st, BT);
    s->tpre = carve(a, BT * C);
    s->tgel = carve(a, BT * C);
    s->tln = carve(a, BT * C);
    s->tln_mean = carve(st, BT);
    s->tln_rstd = carve(st, BT);
    s->logits = carve(a, BT * (size_t)s->Vp);
    s->losses = carve(st, BT);
    s->cls = carve(a, (size_t)B * C);
    s->ppre = carve(a, (size_t)B * C);
    s->pooled = carve(a, (size_t)B * C);
    s->nlogits = carve(a, (size_t)B * 2);
    s->dnlogits = carve(a, (size_t)B * 2);
    s->nlosses = carve(st, (size_t)B);
    s->d1 = carve(a, BT * C);
    s->d2 = carve(a, BT * C);
    s->dh = carve(a, BT * C);
    s->dcls = carve(a, (size_t)B * C);
    s->dpooled = carve(a, (size_t)B * C);
    s->dppre = carve(a, (size_t)B * C);
}

static int bert_plan(model *m, int B, int T, char *err)
{
    bert_state *s = m->priv;
    backend *be = m->be;
    carver a = { NULL, 0, dtype_size(be->act) }, st = { NULL, 0, dtype_size(be->stat) };
    size_t BT = (size_t)B * T;

    if (B < 1 || T < 1)
        return errf(err, "--batch/--seq: must be positive (got %d x %d)", B, T);
    if (T > s->cfg.maxT)
        return errf(err, "--seq: %d is longer than the model's %d positions (--max-seq)", T,
                    s->cfg.maxT);
    free_plan(m);
    carve_all(s, &a, &st, B, T);
    s->act_buf = be->alloc(be, a.used * a.esize);
    s->stat_buf = be->alloc(be, st.used * st.esize);
    s->int_buf = be->alloc(be, (3 * BT + (size_t)B) * sizeof(int32_t));
    s->zeros = calloc(BT, sizeof *s->zeros);
    s->host_losses = malloc(BT * sizeof *s->host_losses);
    s->host_nlosses = malloc((size_t)B * sizeof *s->host_nlosses);
    s->host_row = malloc((size_t)s->Vp * sizeof *s->host_row);
    if (!s->act_buf || !s->stat_buf || !s->int_buf || !s->zeros || !s->host_losses ||
        !s->host_nlosses || !s->host_row) {
        double gib = ((double)a.used * a.esize + (double)st.used * st.esize) / (1 << 30);
        free_plan(m);
        return errf(err, "--batch/--seq: activations for %d x %d need %.2f GiB on %s, "
                         "which could not be allocated", B, T, gib, be->name);
    }
    a.base = s->act_buf;
    st.base = s->stat_buf;
    a.used = st.used = 0;
    carve_all(s, &a, &st, B, T);
    s->tokens = s->int_buf;
    s->segments = s->tokens + BT;
    s->targets = s->segments + BT;
    s->labels = s->targets + BT;
    /* the stack plans its own activations and the backend's scratch */
    if (tstack_plan(s->stack, B, T, s->Vp, err)) {
        free_plan(m);
        return -1;
    }
    m->B = B;
    m->T = T;
    s->have_grad = s->have_nsp = 0;
    return 0;
}

static void range(backend *be, const char *name, int push)
{
    if (be->range)
        be->range(be, name, push);
}

/* Mean loss over the non-ignored entries of host_losses[0..n) (targets -1
 * ignored); *valid gets their count. */
static double mean_loss(const double *losses, const int32_t *targets, int n, int *valid,
                        double *sum_out)
{
    double sum = 0;
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (targets[i] < 0)
            continue;
        sum += losses[i];
        v++;
    }
    *valid = v;
    *sum_out = sum;
    return v ? sum / v : 0.0;
}

static int count_valid(const int32_t *t, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++)
        v += t[i] >= 0;
    return v;
}

static double bert_forward(model *m, const model_batch *b, float grad_scale)
{
    bert_state *s = m->priv;
    backend *be = m->be;
    const bert_config *c = &s->cfg;
    const bert_ptrs *p = &s->p;
    int B = m->B, T = m->T, C = c->C, BT = B * T;

    range(be, "forward", 1);
    s->have_grad = s->have_nsp = s->dlogits = 0;
    s->mlm_count = s->nsp_count = 0;
    be->upload(be, s->tokens, DT_I32, b->tokens, DT_I32, (size_t)BT);
    be->upload(be, s->segments, DT_I32, b->segments ? b->segments : s->zeros, DT_I32,
               (size_t)BT);
    be->encoder_forward(be, s->emb, s->tokens, p->wte, p->wpe, B, T, C);
    be->embedding_forward(be, s->emb, s->segments, p->wtt, BT, C, 1);
    be->layernorm_forward(be, s->x0, s->emb_mean, s->emb_rstd, s->emb, p->elnw, p->elnb, BT, C);
    model_dropout(m, s->x0, (size_t)BT * C, DROPOUT_SITE_EMBED);
    s->h = tstack_forward(s->stack, s->x0);
    /* masked-LM head on every position: the loss picks the masked ones */
    be->matmul_gelu_forward(be, s->tpre, s->tgel, s->h, p->tw, p->tb, BT, C, C);
    be->layernorm_forward(be, s->tln, s->tln_mean, s->tln_rstd, s->tgel, p->tlnw, p->tlnb, BT,
                          C);
    be->matmul_forward(be, s->logits, s->tln, p->wte, p->obias, BT, C, s->Vp);
    if (c->nsp) {
        be->rows_mean_forward(be, s->cls, s->h, B, T, C, 0, 1);
        be->matmul_forward(be, s->ppre, s->cls, p->poolw, p->poolb, B, C, C);
        be->tanh_forward(be, s->pooled, s->ppre, (size_t)B * C);
        be->matmul_forward(be, s->nlogits, s->pooled, p->nspw, p->nspb, B, C, 2);
    }
    if (!b->targets) {
        range(be, "forward", 0);
        return 0.0;
    }

    int valid = count_valid(b->targets, BT);
    int grad = grad_scale > 0;
    s->ce_scale = grad && valid ? grad_scale / (float)valid : 0.0f;
    be->upload(be, s->targets, DT_I32, b->targets, DT_I32, (size_t)BT);
    /* with a gradient the logits are overwritten by d loss / d logits */
    be->crossentropy(be, s->losses, grad ? s->logits : NULL, s->logits, s->targets, BT, c->V,
                     s->Vp, s->ce_scale);
    be->download(be, s->host_losses, DT_F64, s->losses, be->stat, (size_t)BT);
    double loss = mean_loss(s->host_losses, b->targets, BT, &s->mlm_count, &s->mlm_sum);
    model_loss(m, s->mlm_sum, s->mlm_count);
    s->have_grad = s->dlogits = grad;
    if (c->nsp && b->labels) {
        int nv = count_valid(b->labels, B);
        float scale = grad && nv ? grad_scale / (float)nv : 0.0f;
        be->upload(be, s->labels, DT_I32, b->labels, DT_I32, (size_t)B);
        be->crossentropy(be, s->nlosses, grad ? s->dnlogits : NULL, s->nlogits, s->labels, B,
                         2, 2, scale);
        be->download(be, s->host_nlosses, DT_F64, s->nlosses, be->stat, (size_t)B);
        loss += mean_loss(s->host_nlosses, b->labels, B, &s->nsp_count, &s->nsp_sum);
        model_loss_part(m, s->nsp_sum, s->nsp_count);
        s->have_nsp = 1;
    }
    range(be, "forward", 0);
    return loss;
}

static void bert_backward(model *m)
{
    bert_state *s = m->priv;
    backend *be = m->be;
    const bert_config *c = &s->cfg;
    const bert_ptrs *p = &s->p, *g = &s->g;
    int B = m->B, T = m->T, C = c->C, BT = B * T;
    size_t btc = (size_t)BT * C, bc = (size_t)B * C;
    dtype t = be->act;

    if (!s->have_grad)
        return; /* forward ran without a loss to differentiate */
    range(be, "backward", 1);
    /* masked-LM head, from d logits (in the logits buffer) down to dh */
    be->matmul_backward(be, s->d1, g->wte, g->obias, s->logits, s->tln, p->wte, BT, C, s->Vp,
                        GRAD_SET);
    be->fill(be, s->d2, t, 0.0, btc);
    be->layernorm_backward(be, s->d2, g->tlnw, g->tlnb, s->d1, s->tgel, p->tlnw, s->tln_mean,
                           s->tln_rstd, BT, C);
    be->fill(be, s->d1, t, 0.0, btc);
    be->gelu_backward(be, s->d1, s->tpre, s->d2, btc);
    be->matmul_backward(be, s->dh, g->tw, g->tb, s->d1, s->h, p->tw, BT, C, C, GRAD_SET);
    /* next-sentence head and pooler, into dh at [CLS] */
    if (c->nsp && s->have_nsp) {
        be->matmul_backward(be, s->dpooled, g->nspw, g->nspb, s->dnlogits, s->pooled, p->nspw,
                            B, C, 2, GRAD_SET);
        be->fill(be, s->dppre, t, 0.0, bc);
        be->tanh_backward(be, s->dppre, s->pooled, s->dpooled, bc);
        be->matmul_backward(be, s->dcls, g->poolw, g->poolb, s->dppre, s->cls, p->poolw, B, C,
                            C, GRAD_SET);
        be->rows_mean_backward(be, s->dh, s->dcls, B, T, C, 0, 1);
    }
    model_views_ready(m, s->first_head, m->nviews - 1); /* heads (but the tied decoder) */
    void *dx0 = tstack_backward(s->stack, s->dh);
    model_dropout(m, dx0, btc, DROPOUT_SITE_EMBED);
    be->fill(be, s->d1, t, 0.0, btc);
    be->layernorm_backward(be, s->d1, g->elnw, g->elnb, dx0, s->emb, p->elnw, s->emb_mean,
                           s->emb_rstd, BT, C);
    be->encoder_backward(be, g->wte, g->wpe, s->d1, s->tokens, B, T, C);
    be->embedding_backward(be, g->wtt, s->d1, s->segments, BT, C);
    model_views_ready(m, 0, nemb(&s->cfg) - 1); /* embeddings, the decoder's share of wte too */
    s->have_grad = 0;
    range(be, "backward", 0);
}

static void bert_logits(model *m, int b, int t, float *out)
{
    bert_state *s = m->priv;
    size_t row = ((size_t)b * m->T + t) * s->Vp;
    m->be->download(m->be, out, DT_F32, buf_at(s->logits, row, m->be->act), m->be->act,
                    (size_t)s->cfg.V);
}

/* Metrics of the last forward with targets: mlm_accuracy (argmax at masked
 * positions) and, with nsp, nsp_accuracy, then the two losses apart.
 * After a forward with a gradient the logits buffer holds
 * scale * (softmax - onehot(target)), so softmax = d/scale + onehot: its
 * argmax is the prediction without a second copy of the logits. */
static void bert_metrics(model *m, const model_batch *b, double *sums, double *counts)
{
    bert_state *s = m->priv;
    backend *be = m->be;
    int V = s->cfg.V, BT = m->B * m->T;
    int grad_held = s->dlogits && s->ce_scale > 0;

    if (!b->targets)
        return;
    for (int i = 0; i < BT; i++) {
        int tg = b->targets[i];
        if (tg < 0)
            continue;
        be->download(be, s->host_row, DT_F32, buf_at(s->logits, (size_t)i * s->Vp, be->act),
                     be->act, (size_t)V);
        if (grad_held) {
            for (int v = 0; v < V; v++)
                s->host_row[v] /= s->ce_scale;
            s->host_row[tg] += 1.0f;
        }
        int best = 0;
        for (int v = 1; v < V; v++)
            if (s->host_row[v] > s->host_row[best])
                best = v;
        sums[0] += best == tg;
        counts[0] += 1;
    }
    if (!s->cfg.nsp)
        return;
    if (s->have_nsp) {
        float nl[2];
        for (int i = 0; i < m->B; i++) {
            if (b->labels[i] < 0)
                continue;
            be->download(be, nl, DT_F32, buf_at(s->nlogits, (size_t)i * 2, be->act), be->act,
                         2);
            sums[1] += (nl[1] > nl[0]) == (b->labels[i] == 1);
            counts[1] += 1;
        }
    }
    sums[2] += s->mlm_sum;
    counts[2] += s->mlm_count;
    sums[3] += s->nsp_sum;
    counts[3] += s->nsp_count;
}

static void bert_destroy(model *m)
{
    if (!m)
        return;
    bert_state *s = m->priv;
    if (s) {
        free_plan(m);
        tstack_destroy(s->stack);
    }
    model_delete(m);
}

static model *bert_create(backend *be, const int *cv, char *err)
{
    const bert_config *c = (const bert_config *)cv;
    tstack_config tc = stack_config(c);
    model *m = model_new(be, &bert_family, (const int *)cv, sizeof(bert_state), err);
    if (!m)
        return NULL;
    bert_state *s = m->priv;
    m->V = c->V;
    m->maxT = c->maxT;
    m->plan = bert_plan;
    m->forward = bert_forward;
    m->backward = bert_backward;
    m->logits = bert_logits;
    m->metrics = bert_metrics;
    m->destroy = bert_destroy;
    m->has_dropout = TSTACK_DROPOUT_SITES;
    m->metric_names[0] = "mlm_accuracy";
    m->nmetrics = 1;
    if (c->nsp) {
        m->metric_names[1] = "nsp_accuracy";
        m->metric_names[2] = "mlm_loss";
        m->metric_names[3] = "nsp_loss";
        m->nmetrics = 4;
    }
    s->cfg = *c;
    s->Vp = bert_padded_vocab(c->V);
    s->first_head = nemb(c) + tstack_nviews(&tc);
    m->nparams = bert_layout(cv, &m->views, &m->nviews);
    m->nparams_real = bert_real_params(cv);
    if (!m->views) {
        errf(err, "out of memory");
        goto fail;
    }
    if (model_alloc(m, err))
        goto fail;
    resolve(m, m->params, &s->p);
    resolve(m, m->grads, &s->g);
    s->stack = tstack_create(m, &tc, nemb(c), 0, err);
    if (!s->stack)
        goto fail;
    return m;
fail:
    bert_destroy(m);
    return NULL;
}

/* ---- batches: masked sequence pairs from token shards (data/mlm.h) ---- */

typedef struct {
    batch_source src;
    mlm_batcher *mb;
    int rank, world, B;
    uint64_t pos;
    int32_t *tokens, *segments, *targets, *labels;
} bert_source;

static int src_next(batch_source *bs, char *err)
{
    bert_source *s = (bert_source *)bs;
    uint64_t g = s->pos * (uint64_t)s->world + (uint64_t)s->rank;
    if (mlm_batch(s->mb, g, s->tokens, s->segments, s->targets, s->labels, err))
        return -1;
    s->pos++;
    return 0;
}

static uint64_t src_position(const batch_source *bs)
{
    return ((const bert_source *)bs)->pos;
}

static void src_seek(batch_source *bs, uint64_t pos)
{
    ((bert_source *)bs)->pos = pos;
}

static uint64_t src_epoch_batches(const batch_source *bs)
{
    const bert_source *s = (const bert_source *)bs;
    return mlm_windows(s->mb) / ((uint64_t)s->world * (uint64_t)s->B);
}

static void src_close(batch_source *bs)
{
    bert_source *s = (bert_source *)bs;
    if (!s)
        return;
    mlm_close(s->mb);
    free(s->tokens);
    free(s);
}

static batch_source *bert_open_data(const model *m, const data_spec *spec, char *err)
{
    const bert_config *c = (const bert_config *)m->config;
    int train = spec->split == SPLIT_TRAIN;
    mlm_spec ms = {
        .path = spec->path, .B = spec->B, .T = spec->T, .nsp = c->nsp,
        .shuffle = train && spec->shuffle, .mask = 1,
        .seed = train ? spec->seed : BERT_EVAL_SEED, .voc = mlm_vocab_of(c->V),
    };
    if (spec->world < 1 || spec->rank < 0 || spec->rank >= spec->world) {
        errf(err, "rank %d of world %d", spec->rank, spec->world);
        return NULL;
    }
    if (spec->T > c->maxT) {
        errf(err, "--seq: %d is longer than the model's %d positions (--max-seq)", spec->T,
             c->maxT);
        return NULL;
    }
    bert_source *s = calloc(1, sizeof *s);
    size_t BT = (size_t)spec->B * spec->T;
    if (!s || !(s->tokens = malloc((3 * BT + (size_t)spec->B) * sizeof(int32_t)))) {
        free(s);
        errf(err, "%s: out of memory", spec->path);
        return NULL;
    }
    s->segments = s->tokens + BT;
    s->targets = s->segments + BT;
    s->labels = s->targets + BT;
    s->mb = mlm_open(&ms, err);
    if (!s->mb) {
        src_close(&s->src);
        return NULL;
    }
    s->rank = spec->rank;
    s->world = spec->world;
    s->B = spec->B;
    s->src.batch.tokens = s->tokens;
    s->src.batch.segments = s->segments;
    s->src.batch.targets = s->targets;
    s->src.batch.labels = c->nsp ? s->labels : NULL;
    s->src.next = src_next;
    s->src.position = src_position;
    s->src.seek = src_seek;
    s->src.epoch_batches = src_epoch_batches;
    s->src.close = src_close;
    return &s->src;
}

const model_family bert_family = {
    .name = "bert",
    .summary = "BERT: bidirectional post-LN transformer encoder, masked-LM pretraining "
               "(--nsp: next-sentence prediction too)",
    .presets = BERT_PRESETS,
    .fields = bert_fields,
    .nfields = (int)(sizeof bert_fields / sizeof bert_fields[0]),
    .preset = bert_preset,
    .check = bert_check,
    .layout = bert_layout,
    .real_params = bert_real_params,
    .init = bert_init,
    .create = bert_create,
    .describe = bert_describe,
    .open_data = bert_open_data,
};
