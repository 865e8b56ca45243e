/* transformer.c: the transformer block stack shared by GPT-2, BERT, ViT and
 * the patch models (host/models/transformer.h has the equations). Only ops
 * are called; activations live in one buffer planned per (B, T). */
#include "transformer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../data/errbuf.h"

/* Block parameter order in the buffer (TSTACK_VIEWS_PER_BLOCK views). */
enum { P_LN1W, P_LN1B, P_QKVW, P_QKVB, P_PROJW, P_PROJB, P_LN2W, P_LN2B, P_FCW, P_FCB,
       P_FCPROJW, P_FCPROJB };

/* The two norms of a batchnorm stack's block, named in place of ln_1 and ln_2:
 * bn_K.weight and bn_K.bias among the parameters, bn_K.running_mean and
 * bn_K.running_var in the model's state (PyTorch's BatchNorm1d names). */
static const char *const bn_name[2] = { "bn_1", "bn_2" };

static const struct { const char *leaf; int ndim, rows, cols; } block_views[] = {
    /* rows/cols in units of C (0: none) */
    { "ln_1.weight", 1, 1, 0 },        { "ln_1.bias", 1, 1, 0 },
    { "attn.c_attn.weight", 2, 3, 1 }, { "attn.c_attn.bias", 1, 3, 0 },
    { "attn.c_proj.weight", 2, 1, 1 }, { "attn.c_proj.bias", 1, 1, 0 },
    { "ln_2.weight", 1, 1, 0 },        { "ln_2.bias", 1, 1, 0 },
    { "mlp.c_fc.weight", 2, 4, 1 },    { "mlp.c_fc.bias", 1, 4, 0 },
    { "mlp.c_proj.weight", 2, 1, 4 },  { "mlp.c_proj.bias", 1, 1, 0 },
};

/* The stack's parameters are addressed by slot: TSTACK_VIEWS_PER_BLOCK per
 * block in block_views order, then the final layernorm's weight and bias.
 * Every bias sits at an odd slot (the enum above alternates weight, bias),
 * which is what a stack without biases leaves out of its views. */
static int nslots(const tstack_config *c)
{
    return TSTACK_VIEWS_PER_BLOCK * c->L + (c->post_ln ? 0 : 2);
}

static int slot_present(const tstack_config *c, int slot)
{
    return !c->nobias || slot % 2 == 0;
}

int tstack_nviews(const tstack_config *c)
{
    return c->nobias ? nslots(c) / 2 : nslots(c);
}

void tstack_layout(const tstack_config *c, const char *block_prefix, const char *final_ln,
                   param_view *v, int *n, size_t *off)
{
    char name[64];
    for (int l = 0; l < c->L; l++) {
        for (int k = 0; k < TSTACK_VIEWS_PER_BLOCK; k++) {
            if (!slot_present(c, k))
                continue;
            if (c->norm == TSTACK_NORM_BATCH && (k == P_LN1W || k == P_LN1B || k == P_LN2W ||
                                                  k == P_LN2B))
                snprintf(name, sizeof name, "%s.%d.%s.%s", block_prefix, l,
                         bn_name[k >= P_LN2W], k % 2 ? "bias" : "weight");
            else
                snprintf(name, sizeof name, "%s.%d.%s", block_prefix, l, block_views[k].leaf);
            model_add_view(v, n, off, name, block_views[k].ndim, block_views[k].rows * c->C,
                           block_views[k].cols * c->C);
        }
    }
    if (!c->post_ln) {
        snprintf(name, sizeof name, "%s.weight", final_ln);
        model_add_view(v, n, off, name, 1, c->C, 0);
        if (!c->nobias) {
            snprintf(name, sizeof name, "%s.bias", final_ln);
            model_add_view(v, n, off, name, 1, c->C, 0);
        }
    }
}

int tstack_nstate_views(const tstack_config *c)
{
    return c->norm == TSTACK_NORM_BATCH ? 4 * c->L : 0;
}

void tstack_state_layout(const tstack_config *c, const char *block_prefix, param_view *v,
                         int *n, size_t *off)
{
    static const char *const stat[2] = { "running_mean", "running_var" };
    char name[64];
    if (c->norm != TSTACK_NORM_BATCH)
        return;
    for (int l = 0; l < c->L; l++)
        for (int k = 0; k < 4; k++) {
            snprintf(name, sizeof name, "%s.%d.%s.%s", block_prefix, l, bn_name[k / 2],
                     stat[k % 2]);
            model_add_view(v, n, off, name, 1, c->C, 0);
            v[*n - 1].decay = 0;
        }
}

void tstack_state_init(const tstack_config *c, const param_view *views, float *host)
{
    for (int i = 0; i < tstack_nstate_views(c); i++)
        for (size_t j = 0; j < views[i].count; j++)
            host[views[i].offset + j] = i % 2 ? 1.0f : 0.0f; /* torch's: mean 0, var 1 */
}

void tstack_init(const tstack_config *c, const param_view *views, float *host, rng_state *r)
{
    float proj_std = 0.02f / sqrtf(2.0f * (float)c->L);
    int ns = nslots(c), i = 0;
    for (int slot = 0; slot < ns; slot++) {
        if (!slot_present(c, slot))
            continue;
        const param_view *p = &views[i++];
        float *w = host + p->offset;
        int k = slot < TSTACK_VIEWS_PER_BLOCK * c->L ? slot % TSTACK_VIEWS_PER_BLOCK : P_LN1W;
        if (p->ndim == 1) {
            /* LN gains 1 (the final LN's weight too), every bias 0 */
            int gain = k == P_LN1W || k == P_LN2W ||
                       (slot >= TSTACK_VIEWS_PER_BLOCK * c->L && slot == ns - 2);
            for (size_t j = 0; j < p->count; j++)
                w[j] = gain ? 1.0f : 0.0f;
            continue;
        }
        /* residual projections get the 1/sqrt(2L) scaling (GPT-2 paper, sec. 2.3) */
        float std = k == P_PROJW || k == P_FCPROJW ? proj_std : 0.02f;
        for (size_t j = 0; j < p->count; j++)
            w[j] = (float)(std * rng_normal(r));
    }
}

/* Saved activations of one block (act unless noted). */
typedef struct {
    void *ln1, *ln1_mean, *ln1_rstd; /* pre-LN: LN1(x), the attention's input;
                                        post-LN: LN1(x + attn), the block's midpoint */
    void *qkv, *atty, *lse;          /* lse: stat [B,NH,T] */
    void *res2;                      /* x + attention branch */
    void *ln2, *ln2_mean, *ln2_rstd; /* pre-LN: LN2(res2), the MLP's input;
                                        post-LN: the block's output */
    void *fch, *fch_gelu;            /* [B,T,4C] before / after GELU */
    void *res3;                      /* pre-LN: the block's output; post-LN: ln1 + MLP */
} blk_acts;

struct tstack {
    model *m;
    tstack_config c;
    int first_view;
    void **p, **g; /* [L * 12 + 2] parameter and gradient addresses by slot
                    * (NULL: a bias the stack does not have) */
    void **rs;     /* batchnorm: [L * 4] running mean, var of bn_1, then of bn_2 */
    int bn_train;  /* batchnorm: the last forward was a training one */
    void *act_buf, *stat_buf;
    blk_acts *la;
    const void *x;                 /* the input of the last forward */
    void *lnf, *lnf_mean, *lnf_rstd; /* pre-LN: the final LN's output */
    void *scratch;                 /* a branch's output before its residual add */
    void *d0, *d1, *d2;            /* [B,T,C] gradients of the residual stream */
    void *d4a;                     /* [B,T,4C]: dqkv, then the MLP's dpre */
    void *d4b;                     /* [B,T,C]: a branch's gradient through its dropout */
    int B, T;
    /* incremental decoding: per block, the shared prefix's cached k, v rows
     * [dec_pre_rows, dec_pre_len, 2C] (dec_pre) and each sequence's rows after
     * it [dec_B, dec_max, 2C] (dec_kv); dec_B-row buffers */
    void *dec_buf, *dec_stat, **dec_kv, **dec_pre;
    void *dec_qkv, *dec_ln, *dec_att, *dec_scratch, *dec_res2, *dec_res[2], *dec_fch, *dec_gelu, *dec_out;
    int dec_max, dec_B, dec_pre_rows, dec_pre_len;
};

#define PV(s, l, k) ((s)->p[(l) * TSTACK_VIEWS_PER_BLOCK + (k)])
#define GV(s, l, k) ((s)->g[(l) * TSTACK_VIEWS_PER_BLOCK + (k)])
#define LNF_W(s, a) ((a)[(s)->c.L * TSTACK_VIEWS_PER_BLOCK])
#define LNF_B(s, a) ((a)[(s)->c.L * TSTACK_VIEWS_PER_BLOCK + 1])

tstack *tstack_create(model *m, const tstack_config *c, int first_view, int first_state,
                      char *err)
{
    tstack *s = calloc(1, sizeof *s);
    int ns = nslots(c), view = first_view, nst = tstack_nstate_views(c);
    if (!s || !(s->p = calloc((size_t)ns, sizeof *s->p)) ||
        !(s->g = calloc((size_t)ns, sizeof *s->g)) ||
        !(s->rs = calloc((size_t)nst + 1, sizeof *s->rs))) {
        tstack_destroy(s);
        errf(err, "out of memory");
        return NULL;
    }
    if (c->C % c->NH) {
        tstack_destroy(s);
        errf(err, "--heads %d does not divide --width %d (the width is split evenly among "
                  "the heads)", c->NH, c->C);
        return NULL;
    }
    if (c->norm == TSTACK_NORM_BATCH && !c->post_ln) {
        tstack_destroy(s);
        errf(err, "--norm batch: only with post-norm blocks (--post-ln 1)");
        return NULL;
    }
    if (nst && (!m->be->batchnorm_forward || !m->be->residual_batchnorm_forward ||
                !m->be->batchnorm_backward)) {
        tstack_destroy(s);
        errf(err, "--norm batch: the %s backend has no batchnorm ops", m->be->name);
        return NULL;
    }
    if (first_state + nst > m->nstate_views) {
        tstack_destroy(s);
        errf(err, "the model lays out %d state views, the stack needs %d from view %d",
             m->nstate_views, nst, first_state);
        return NULL;
    }
    s->m = m;
    s->c = *c;
    s->first_view = first_view;
    /* the running statistics start as torch's (mean 0, var 1) until the model's
     * state is set from a checkpoint or an initialisation */
    for (int i = 0; i < nst; i++) {
        const param_view *v = &m->state_views[first_state + i];
        s->rs[i] = buf_at(m->state, v->offset, m->be->stat);
        m->be->fill(m->be, s->rs[i], m->be->stat, i % 2 ? 1.0 : 0.0, v->count);
    }
    for (int i = 0; i < ns; i++) {
        if (!slot_present(c, i))
            continue; /* p[i], g[i] stay NULL: the ops take a NULL bias as none */
        s->p[i] = model_view_at(m, m->params, view);
        s->g[i] = model_view_at(m, m->grads, view++);
    }
    return s;
}

static void free_plan(tstack *s)
{
    backend *be = s->m->be;
    if (s->act_buf)
        be->free(be, s->act_buf);
    if (s->stat_buf)
        be->free(be, s->stat_buf);
    free(s->la);
    s->act_buf = s->stat_buf = NULL;
    s->la = NULL;
    s->B = s->T = 0;
}

static void free_decode(tstack *s)
{
    backend *be = s->m->be;
    if (s->dec_buf)
        be->free(be, s->dec_buf);
    if (s->dec_stat)
        be->free(be, s->dec_stat);
    free(s->dec_kv); /* dec_pre points into it */
    s->dec_buf = s->dec_stat = NULL;
    s->dec_kv = s->dec_pre = NULL;
    s->dec_max = s->dec_B = s->dec_pre_rows = s->dec_pre_len = 0;
}

void tstack_destroy(tstack *s)
{
    if (!s)
        return;
    if (s->m) {
        free_plan(s);
        free_decode(s);
    }
    free(s->p);
    free(s->g);
    free(s->rs);
    free(s);
}

static void carve_all(tstack *s, carver *a, carver *st, int B, int T, int recompute)
{
    size_t BT = (size_t)B * T, C = s->c.C, L = s->c.L;
    /* a norm's saved statistics: per row (layernorm) or per feature (batchnorm) */
    size_t NS = s->c.norm == TSTACK_NORM_BATCH ? C : BT;
    /* with recompute, every pre-LN block's LN1/LN2 outputs share one buffer
     * and every block's GELU outputs another: forward consumes each right
     * after writing it, and backward writes it again just before its one
     * use. (Post-LN layernorm outputs are the residual stream: kept.) */
    int share_ln = recompute && !s->c.post_ln;
    void *ln_shared = share_ln ? carve(a, BT * C) : NULL;
    void *gelu_shared = recompute ? carve(a, BT * 4 * C) : NULL;
    for (size_t l = 0; l < L; l++) {
        blk_acts *x = &s->la[l];
        x->ln1 = share_ln ? ln_shared : carve(a, BT * C);
        x->ln1_mean = carve(st, NS);
        x->ln1_rstd = carve(st, NS);
        x->qkv = carve(a, BT * 3 * C);
        x->atty = carve(a, BT * C);
        x->lse = carve(st, BT * s->c.NH);
        x->res2 = carve(a, BT * C);
        x->ln2 = share_ln ? ln_shared : carve(a, BT * C);
        x->ln2_mean = carve(st, NS);
        x->ln2_rstd = carve(st, NS);
        x->fch = carve(a, BT * 4 * C);
        x->fch_gelu = recompute ? gelu_shared : carve(a, BT * 4 * C);
        x->res3 = carve(a, BT * C);
    }
    if (!s->c.post_ln) {
        s->lnf = carve(a, BT * C);
        s->lnf_mean = carve(st, BT);
        s->lnf_rstd = carve(st, BT);
    }
    s->scratch = carve(a, BT * C);
    s->d0 = carve(a, BT * C);
    s->d1 = carve(a, BT * C);
    s->d2 = carve(a, BT * C);
    s->d4a = carve(a, BT * 4 * C);
    s->d4b = carve(a, BT * C);
}

int tstack_plan(tstack *s, int B, int T, int V, char *err)
{
    backend *be = s->m->be;
    carver a = { NULL, 0, dtype_size(be->act) }, st = { NULL, 0, dtype_size(be->stat) };

    free_plan(s);
    s->la = calloc((size_t)s->c.L + 1, sizeof *s->la);
    if (!s->la)
        goto oom;
    carve_all(s, &a, &st, B, T, s->m->recompute);
    s->act_buf = be->alloc(be, a.used * a.esize);
    s->stat_buf = be->alloc(be, st.used * st.esize);
    if (!s->act_buf || !s->stat_buf)
        goto oom;
    a.base = s->act_buf;
    st.base = s->stat_buf;
    a.used = st.used = 0;
    carve_all(s, &a, &st, B, T, s->m->recompute);
    /* the backend's own scratch (attention), also before the first step */
    if (be->plan && be->plan(be, B, T, s->c.C, s->c.NH, V, err)) {
        free_plan(s);
        return -1;
    }
    s->B = B;
    s->T = T;
    return 0;
oom:
    {
        double gib = ((double)a.used * a.esize + (double)st.used * st.esize) / (1 << 30);
        free_plan(s);
        return errf(err, "--batch/--seq: transformer activations for %d x %d need %.2f GiB "
                         "on %s, which could not be allocated", B, T, gib, be->name);
    }
}

/* Opens (push) or closes a profiler range "layer <l> <what>". */
static void layer_range(backend *be, int l, const char *what, int push)
{
    char name[48];
    if (!be->range)
        return;
    snprintf(name, sizeof name, "layer %d %s", l, what);
    be->range(be, name, push);
}

/* Pre-LN: each residual add is fused with the layernorm that reads it: res2
 * with LN2, res3 with the next block's LN1 (LN_f after the last block). */
static void *forward_pre(tstack *s, const void *x)
{
    backend *be = s->m->be;
    int B = s->B, T = s->T, C = s->c.C, NH = s->c.NH, BT = B * T, L = s->c.L;
    const void *res = x;

    if (L)
        be->layernorm_forward(be, s->la[0].ln1, s->la[0].ln1_mean, s->la[0].ln1_rstd, res,
                              PV(s, 0, P_LN1W), PV(s, 0, P_LN1B), BT, C);
    else
        be->layernorm_forward(be, s->lnf, s->lnf_mean, s->lnf_rstd, res, LNF_W(s, s->p),
                              LNF_B(s, s->p), BT, C);
    for (int l = 0; l < L; l++) {
        blk_acts *a = &s->la[l];
        layer_range(be, l, "forward", 1);
        be->matmul_forward(be, a->qkv, a->ln1, PV(s, l, P_QKVW), PV(s, l, P_QKVB), BT, C, 3 * C);
        be->attention_forward(be, a->atty, a->lse, a->qkv, B, T, C, NH, s->c.causal);
        be->matmul_forward(be, s->scratch, a->atty, PV(s, l, P_PROJW), PV(s, l, P_PROJB), BT, C,
                           C);
        model_dropout(s->m, s->scratch, (size_t)BT * C, DROPOUT_SITE_BLOCK(l, 0));
        be->residual_layernorm_forward(be, a->res2, a->ln2, a->ln2_mean, a->ln2_rstd, res,
                                       s->scratch, PV(s, l, P_LN2W), PV(s, l, P_LN2B), BT, C);
        be->matmul_gelu_forward(be, a->fch, a->fch_gelu, a->ln2, PV(s, l, P_FCW),
                                PV(s, l, P_FCB), BT, C, 4 * C);
        be->matmul_forward(be, s->scratch, a->fch_gelu, PV(s, l, P_FCPROJW),
                           PV(s, l, P_FCPROJB), BT, 4 * C, C);
        model_dropout(s->m, s->scratch, (size_t)BT * C, DROPOUT_SITE_BLOCK(l, 1));
        if (l + 1 < L) {
            blk_acts *n = &s->la[l + 1];
            be->residual_layernorm_forward(be, a->res3, n->ln1, n->ln1_mean, n->ln1_rstd,
                                           a->res2, s->scratch, PV(s, l + 1, P_LN1W),
                                           PV(s, l + 1, P_LN1B), BT, C);
        } else {
            be->residual_layernorm_forward(be, a->res3, s->lnf, s->lnf_mean, s->lnf_rstd,
                                           a->res2, s->scratch, LNF_W(s, s->p), LNF_B(s, s->p),
                                           BT, C);
        }
        res = a->res3;
        layer_range(be, l, "forward", 0);
    }
    return s->lnf;
}

/* Post-norm block l's norm k (0: after the attention, 1: after the MLP):
 * res_out = a + b, out = norm(res_out), saving mean and rstd. Layernorm, or
 * batchnorm: batch statistics in a training forward (the running ones
 * updated), the running statistics otherwise. */
static void post_norm_forward(tstack *s, int l, int k, void *res_out, void *out, void *mean,
                              void *rstd, const void *a, const void *b)
{
    backend *be = s->m->be;
    int BT = s->B * s->T, C = s->c.C;
    void *w = PV(s, l, k ? P_LN2W : P_LN1W), *bias = PV(s, l, k ? P_LN2B : P_LN1B);
    if (s->c.norm == TSTACK_NORM_BATCH)
        be->residual_batchnorm_forward(be, res_out, out, mean, rstd, s->rs[4 * l + 2 * k],
                                       s->rs[4 * l + 2 * k + 1], a, b, w, bias,
                                       TSTACK_BN_MOMENTUM, s->bn_train, BT, C);
    else
        be->residual_layernorm_forward(be, res_out, out, mean, rstd, a, b, w, bias, BT, C);
}

/* The backward of post_norm_forward into dinp (accumulated), from dout at
 * its output, inp being its res_out. */
static void post_norm_backward(tstack *s, int l, int k, void *dinp, const void *dout,
                               const void *inp, const void *mean, const void *rstd)
{
    backend *be = s->m->be;
    int BT = s->B * s->T, C = s->c.C;
    int wk = k ? P_LN2W : P_LN1W, bk = k ? P_LN2B : P_LN1B;
    if (s->c.norm == TSTACK_NORM_BATCH)
        be->batchnorm_backward(be, dinp, GV(s, l, wk), GV(s, l, bk), dout, inp, PV(s, l, wk),
                               mean, rstd, s->bn_train, BT, C);
    else
        be->layernorm_backward(be, dinp, GV(s, l, wk), GV(s, l, bk), dout, inp, PV(s, l, wk),
                               mean, rstd, BT, C);
}

/* Post-LN: a = LN1(x + attn(x)), x' = LN2(a + mlp(a)). */
static void *forward_post(tstack *s, const void *x)
{
    backend *be = s->m->be;
    int B = s->B, T = s->T, C = s->c.C, NH = s->c.NH, BT = B * T, L = s->c.L;
    const void *in = x;

    for (int l = 0; l < L; l++) {
        blk_acts *a = &s->la[l];
        layer_range(be, l, "forward", 1);
        be->matmul_forward(be, a->qkv, in, PV(s, l, P_QKVW), PV(s, l, P_QKVB), BT, C, 3 * C);
        be->attention_forward(be, a->atty, a->lse, a->qkv, B, T, C, NH, s->c.causal);
        be->matmul_forward(be, s->scratch, a->atty, PV(s, l, P_PROJW), PV(s, l, P_PROJB), BT, C,
                           C);
        model_dropout(s->m, s->scratch, (size_t)BT * C, DROPOUT_SITE_BLOCK(l, 0));
        post_norm_forward(s, l, 0, a->res2, a->ln1, a->ln1_mean, a->ln1_rstd, in, s->scratch);
        be->matmul_gelu_forward(be, a->fch, a->fch_gelu, a->ln1, PV(s, l, P_FCW),
                                PV(s, l, P_FCB), BT, C, 4 * C);
        be->matmul_forward(be, s->scratch, a->fch_gelu, PV(s, l, P_FCPROJW),
                           PV(s, l, P_FCPROJB), BT, 4 * C, C);
        model_dropout(s->m, s->scratch, (size_t)BT * C, DROPOUT_SITE_BLOCK(l, 1));
        post_norm_forward(s, l, 1, a->res3, a->ln2, a->ln2_mean, a->ln2_rstd, a->ln1, s->scratch);
        in = a->ln2;
        layer_range(be, l, "forward", 0);
    }
    return (void *)in;
}

void *tstack_forward(tstack *s, const void *x)
{
    s->x = x;
    s->bn_train = s->m->training;
    return s->c.post_ln ? forward_post(s, x) : forward_pre(s, x);
}

/* The attention sublayer's backward, shared by both block kinds: from dres2
 * (the gradient at the residual add after attention, read only) through the
 * projection and attention into d4a (dqkv), then through the qkv matmul
 * whose input was `qkv_in`, into dqkv_in: accumulated (GRAD_ADD) or
 * written (GRAD_SET, when dqkv_in holds nothing yet). */
static void attention_branch_backward(tstack *s, int l, const void *dres2, const void *qkv_in,
                                      void *dqkv_in, grad_mode mode)
{
    backend *be = s->m->be;
    blk_acts *a = &s->la[l];
    int B = s->B, T = s->T, C = s->c.C, NH = s->c.NH, BT = B * T;
    size_t btc = (size_t)BT * C;
    dtype t = be->act;
    void *datty = s->scratch;
    /* the gradient of the projection's output: dres2 through the dropout
     * (into d4a, free until the attention's gradient below) */
    const void *dproj = model_dropout_to(s->m, s->d4a, dres2, btc, DROPOUT_SITE_BLOCK(l, 0));

    be->matmul_backward(be, datty, GV(s, l, P_PROJW), GV(s, l, P_PROJB), dproj, a->atty,
                        PV(s, l, P_PROJW), BT, C, C, GRAD_SET);
    be->fill(be, s->d4a, t, 0.0, btc * 3);
    be->attention_backward(be, s->d4a, datty, a->qkv, a->atty, a->lse, B, T, C, NH,
                           s->c.causal);
    be->matmul_backward(be, dqkv_in, GV(s, l, P_QKVW), GV(s, l, P_QKVB), s->d4a, qkv_in,
                        PV(s, l, P_QKVW), BT, C, 3 * C, mode);
}

/* The MLP sublayer's backward: from dres3 (read only) through fc_proj, GELU
 * and fc, whose input was mlp_in, into dmlp_in (mode as above). */
static void mlp_branch_backward(tstack *s, int l, const void *dres3, const void *mlp_in,
                                void *dmlp_in, grad_mode mode)
{
    backend *be = s->m->be;
    blk_acts *a = &s->la[l];
    int BT = s->B * s->T, C = s->c.C;
    size_t btc = (size_t)BT * C;

    if (s->m->recompute)
        be->gelu_forward(be, a->fch_gelu, a->fch, btc * 4);
    /* dres3 through the dropout (into d4b, free: GELU's gradient goes to d4a) */
    const void *dfcproj = model_dropout_to(s->m, s->d4b, dres3, btc, DROPOUT_SITE_BLOCK(l, 1));
    be->matmul_gelu_backward(be, s->d4a, GV(s, l, P_FCPROJW), GV(s, l, P_FCPROJB), dfcproj,
                             a->fch_gelu, a->fch, PV(s, l, P_FCPROJW), BT, 4 * C, C);
    be->matmul_backward(be, dmlp_in, GV(s, l, P_FCW), GV(s, l, P_FCB), s->d4a, mlp_in,
                        PV(s, l, P_FCW), BT, C, 4 * C, mode);
}

static void block_ready(tstack *s, int l)
{
    int per = s->c.nobias ? TSTACK_VIEWS_PER_BLOCK / 2 : TSTACK_VIEWS_PER_BLOCK;
    int v = s->first_view + l * per;
    model_views_ready(s->m, v, v + per - 1);
}

/* Pre-LN: dres (d0) is the gradient of the residual stream, walked down. */
static void *backward_pre(tstack *s, const void *dout)
{
    backend *be = s->m->be;
    int BT = s->B * s->T, C = s->c.C, L = s->c.L;
    size_t btc = (size_t)BT * C;
    dtype t = be->act;
    void *dres = s->d0, *dln = s->d1;
    const void *res_last = L ? s->la[L - 1].res3 : s->x;

    be->fill(be, dres, t, 0.0, btc);
    be->layernorm_backward(be, dres, LNF_W(s, s->g), LNF_B(s, s->g), dout, res_last,
                           LNF_W(s, s->p), s->lnf_mean, s->lnf_rstd, BT, C);
    {
        int v = s->first_view + tstack_nviews(&s->c) - (s->c.nobias ? 1 : 2);
        model_views_ready(s->m, v, v + (s->c.nobias ? 0 : 1));
    }
    for (int l = L - 1; l >= 0; l--) {
        blk_acts *a = &s->la[l];
        const void *res = l ? s->la[l - 1].res3 : s->x;
        layer_range(be, l, "backward", 1);
        /* MLP: res3 = res2 + fcproj(gelu(fc(LN2(res2)))) */
        if (s->m->recompute)
            be->layernorm_forward(be, a->ln2, a->ln2_mean, a->ln2_rstd, a->res2,
                                  PV(s, l, P_LN2W), PV(s, l, P_LN2B), BT, C);
        mlp_branch_backward(s, l, dres, a->ln2, dln, GRAD_SET);
        be->layernorm_backward(be, dres, GV(s, l, P_LN2W), GV(s, l, P_LN2B), dln, a->res2,
                               PV(s, l, P_LN2W), a->ln2_mean, a->ln2_rstd, BT, C);
        /* attention: res2 = res + attproj(attn(qkv(LN1(res)))) */
        if (s->m->recompute)
            be->layernorm_forward(be, a->ln1, a->ln1_mean, a->ln1_rstd, res, PV(s, l, P_LN1W),
                                  PV(s, l, P_LN1B), BT, C);
        attention_branch_backward(s, l, dres, a->ln1, dln, GRAD_SET);
        be->layernorm_backward(be, dres, GV(s, l, P_LN1W), GV(s, l, P_LN1B), dln, res,
                               PV(s, l, P_LN1W), a->ln1_mean, a->ln1_rstd, BT, C);
        layer_range(be, l, "backward", 0);
        block_ready(s, l);
    }
    return dres;
}

/* Post-LN: dcur is the gradient of a block's output. d0 holds the
 * gradient of res3 and then of res2, d1 that of ln1, d2 that of the block's
 * input, which is the next block's dcur (read only before d2 is reset). */
static void *backward_post(tstack *s, const void *dout)
{
    backend *be = s->m->be;
    int BT = s->B * s->T, C = s->c.C, L = s->c.L;
    size_t btc = (size_t)BT * C;
    dtype t = be->act;
    const void *dcur = dout;
    void *dres = s->d0, *dln1 = s->d1, *din = s->d2;

    if (!L) { /* the output is the input */
        be->fill(be, din, t, 0.0, btc);
        be->accumulate(be, din, dout, btc);
        return din;
    }
    for (int l = L - 1; l >= 0; l--) {
        blk_acts *a = &s->la[l];
        const void *in = l ? s->la[l - 1].ln2 : s->x;
        layer_range(be, l, "backward", 1);
        /* out = LN2(res3), res3 = ln1 + mlp(ln1) */
        be->fill(be, dres, t, 0.0, btc);
        post_norm_backward(s, l, 1, dres, dcur, a->res3, a->ln2_mean, a->ln2_rstd);
        be->fill(be, dln1, t, 0.0, btc);
        be->accumulate(be, dln1, dres, btc); /* the residual path */
        mlp_branch_backward(s, l, dres, a->ln1, dln1, GRAD_ADD);
        /* ln1 = LN1(res2), res2 = in + attn(in) */
        be->fill(be, dres, t, 0.0, btc);
        post_norm_backward(s, l, 0, dres, dln1, a->res2, a->ln1_mean, a->ln1_rstd);
        be->fill(be, din, t, 0.0, btc); /* dcur (== din below the top) is consumed */
        be->accumulate(be, din, dres, btc);
        attention_branch_backward(s, l, dres, in, din, GRAD_ADD);
        dcur = din;
        layer_range(be, l, "backward", 0);
        block_ready(s, l);
    }
    return din;
}

void *tstack_backward(tstack *s, const void *dout)
{
    return s->c.post_ln ? backward_post(s, dout) : backward_pre(s, dout);
}

/* ---- incremental decoding ---- */

static void carve_decode(tstack *s, carver *a)
{
    size_t C = s->c.C, BC = (size_t)s->dec_B * C;
    for (int l = 0; l < s->c.L; l++) {
        s->dec_pre[l] = carve(a, (size_t)s->dec_pre_rows * s->dec_pre_len * 2 * C);
        s->dec_kv[l] = carve(a, (size_t)s->dec_B * s->dec_max * 2 * C);
    }
    s->dec_qkv = carve(a, 3 * BC);
    s->dec_ln = carve(a, BC);
    s->dec_att = carve(a, BC);
    s->dec_scratch = carve(a, BC);
    s->dec_res2 = carve(a, BC);
    s->dec_res[0] = carve(a, BC);
    s->dec_res[1] = carve(a, BC);
    s->dec_fch = carve(a, 4 * BC);
    s->dec_gelu = carve(a, 4 * BC);
    s->dec_out = carve(a, BC);
}

int tstack_decode_plan(tstack *s, int B, int maxlen, int prefix_rows, int prefix_len, char *err)
{
    backend *be = s->m->be;
    carver a = { NULL, 0, dtype_size(be->act) };
    if (s->c.post_ln || !s->c.causal)
        return errf(err, "incremental decoding needs a causal pre-LN stack");
    if (!be->attention_decode)
        return errf(err, "the %s backend has no attention_decode op", be->name);
    if (prefix_len < 0 || (prefix_len && (prefix_rows < 1 || prefix_rows > B)))
        return errf(err, "a shared prefix of %d positions in %d rows for %d sequences: the rows "
                         "must be 1 to %d", prefix_len, prefix_rows, B, B);
    if (B < 1 || maxlen < 0 || prefix_len + maxlen < 1)
        return errf(err, "decoding %d sequences of %d positions: both must be positive", B,
                    prefix_len + maxlen);
    free_decode(s);
    s->dec_kv = calloc(2 * (size_t)s->c.L + 1, sizeof *s->dec_kv);
    if (!s->dec_kv)
        return errf(err, "out of memory for the decoding cache");
    s->dec_pre = s->dec_kv + s->c.L;
    s->dec_max = maxlen;
    s->dec_B = B;
    s->dec_pre_rows = prefix_len ? prefix_rows : 0;
    s->dec_pre_len = prefix_len;
    carve_decode(s, &a);
    s->dec_buf = be->alloc(be, a.used * a.esize);
    s->dec_stat = be->alloc(be, 2 * (size_t)B * dtype_size(be->stat)); /* mean, rstd per row */
    if (!s->dec_buf || !s->dec_stat) {
        double mib = (double)a.used * a.esize / (1 << 20);
        free_decode(s);
        return errf(err, "the decoding cache for %d sequences of %d positions needs %.1f MiB "
                         "on %s, which could not be allocated", B, prefix_len + maxlen, mib,
                    be->name);
    }
    a.base = s->dec_buf;
    a.used = 0;
    carve_decode(s, &a);
    return 0;
}

/* A position below the prefix's length is a step of the prefix rows, cached
 * in the prefix (a cache of its own, with no prefix before it); a later one
 * is a step of the sequences, cached in their own rows, each reading its
 * prefix row before them. */
void *tstack_decode_step(tstack *s, const void *x, int n, int pos)
{
    backend *be = s->m->be;
    int C = s->c.C, L = s->c.L, B = s->dec_B, in_prefix = pos < s->dec_pre_len;
    void *mean = s->dec_stat, *rstd = buf_at(s->dec_stat, (size_t)B, be->stat);
    const void *res = x;

    if (pos < 0 || pos >= s->dec_pre_len + s->dec_max || n < 1 ||
        n > (in_prefix ? s->dec_pre_rows : B))
        return NULL;
    if (!L) {
        be->layernorm_forward(be, s->dec_out, mean, rstd, x, LNF_W(s, s->p), LNF_B(s, s->p), n,
                              C);
        return s->dec_out;
    }
    be->layernorm_forward(be, s->dec_ln, mean, rstd, x, PV(s, 0, P_LN1W), PV(s, 0, P_LN1B), n,
                          C);
    for (int l = 0; l < L; l++) {
        void *res3 = s->dec_res[l & 1];
        be->matmul_forward(be, s->dec_qkv, s->dec_ln, PV(s, l, P_QKVW), PV(s, l, P_QKVB), n, C,
                           3 * C);
        if (in_prefix)
            be->attention_decode(be, s->dec_att, s->dec_pre[l], s->dec_qkv, n, pos,
                                 s->dec_pre_len, NULL, 0, 0, C, s->c.NH);
        else
            be->attention_decode(be, s->dec_att, s->dec_kv[l], s->dec_qkv, n, pos, s->dec_max,
                                 s->dec_pre[l], s->dec_pre_rows, s->dec_pre_len, C, s->c.NH);
        be->matmul_forward(be, s->dec_scratch, s->dec_att, PV(s, l, P_PROJW), PV(s, l, P_PROJB),
                           n, C, C);
        be->residual_layernorm_forward(be, s->dec_res2, s->dec_ln, mean, rstd, res,
                                       s->dec_scratch, PV(s, l, P_LN2W), PV(s, l, P_LN2B), n, C);
        be->matmul_gelu_forward(be, s->dec_fch, s->dec_gelu, s->dec_ln, PV(s, l, P_FCW),
                                PV(s, l, P_FCB), n, C, 4 * C);
        be->matmul_forward(be, s->dec_scratch, s->dec_gelu, PV(s, l, P_FCPROJW),
                           PV(s, l, P_FCPROJB), n, 4 * C, C);
        if (l + 1 < L)
            be->residual_layernorm_forward(be, res3, s->dec_ln, mean, rstd, s->dec_res2,
                                           s->dec_scratch, PV(s, l + 1, P_LN1W),
                                           PV(s, l + 1, P_LN1B), n, C);
        else
            be->residual_layernorm_forward(be, res3, s->dec_out, mean, rstd, s->dec_res2,
                                           s->dec_scratch, LNF_W(s, s->p), LNF_B(s, s->p), n, C);
        res = res3;
    }
    return s->dec_out;
}
