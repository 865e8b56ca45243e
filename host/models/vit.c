/* vit.c: the Vision Transformer family, as the paper composes the ops.
 *
 *   patches = patchify(image)                    [B*N, ch*P*P]   (host)
 *   e = patches @ W_pe^T + b_pe                  [B*N, C]        (one matmul)
 *   x0[b] = ([CLS]; e[b,0..N-1]) + pos           [B, N+1, C]     (sequence_embed)
 *   h = LN_f(blocks(x0))                         pre-LN, bidirectional (tstack)
 *   pooled = h[:,0,:], or mean_{n=1..N} h[:,n,:]  [B, C]        (rows_mean: --pool)
 *   logits = pooled @ W_head^T + b_head          [B, classes]
 *   loss = cross-entropy(softmax(logits), label)
 *
 * The patch embedding is the Conv2d(kernel = stride = P) of the reference
 * implementations written as the matmul it is. The stack's final layernorm is
 * the ViT's final norm. The batch source for image files (open_data) is at
 * the end of the file. */
#include "vit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../data/errbuf.h"
#include "../../data/images.h"
#include "../../data/rng.h"
#include "transformer.h"

/* ---- config ---- */

#define NFIELDS 9

static const family_field vit_fields[NFIELDS] = {
    { "image", "image-size", "image height and width in pixels", 1, 4096, 0, NULL },
    { "channels", "channels", "image channels (1 grey, 3 RGB)", 1, 64, 0, NULL },
    { "patch", "patch", "patch side P in pixels (divides the image size)", 1, 4096, 0, NULL },
    { "classes", "classes", "classes the head scores", 2, 1 << 20, 0, NULL },
    { "L", "layers", "transformer blocks", 1, 1024, 0, NULL },
    { "NH", "heads", "attention heads", 1, 1024, 0, NULL },
    { "C", "width", "model width", 1, 65536, 0, NULL },
    /* optional: checkpoints from before the switch have biases */
    { "nobias", "no-bias", "no biases in linear layers and layernorms (nanoGPT's bias=False)",
      0, 1, FIELD_SWITCH | FIELD_OPTIONAL, NULL },
    /* optional: checkpoints from before the choice pool [CLS] */
    { "pool", "pool", "what the class head reads: cls (the [CLS] row) or mean (the mean of "
      "the patch rows, global average pooling)",
      VIT_POOL_CLS, VIT_POOL_MEAN, FIELD_OPTIONAL, "cls mean" },
};

static const struct {
    const char *name;
    vit_config c;
} vit_preset_table[] = {
    /* ViT-Ti/16, ViT-S/16, ViT-B/16 on ImageNet-sized inputs */
    { "vit-tiny", { 224, 3, 16, 1000, 12, 3, 192, 0, VIT_POOL_CLS } },
    { "vit-small", { 224, 3, 16, 1000, 12, 6, 384, 0, VIT_POOL_CLS } },
    { "vit-base", { 224, 3, 16, 1000, 12, 12, 768, 0, VIT_POOL_CLS } },
    /* 28 x 28 grey (MNIST, Fashion-MNIST): 7 x 7 patches of 4 x 4, 50 positions */
    { "vit-mnist", { 28, 1, 4, 10, 6, 4, 128, 0, VIT_POOL_CLS } },
    /* the same, 16 patches of 7 x 7: a third of the positions, for CPU runs
     * (bench/vit_fashion_mnist.sh), and a tiny one for tests */
    { "vit-mnist-p7", { 28, 1, 7, 10, 6, 4, 64, 0, VIT_POOL_CLS } },
    /* vit-mnist-p7's width on vit-mnist's 4 x 4 patches: three times the
     * positions for the recipe that goes past 92% (bench/vit_fmnist_recipe.sh) */
    { "vit-mnist-p4", { 28, 1, 4, 10, 6, 4, 64, 0, VIT_POOL_CLS } },
    { "vit-mnist-tiny", { 28, 1, 7, 10, 2, 2, 32, 0, VIT_POOL_CLS } },
    /* 32 x 32 RGB (CIFAR-10): 8 x 8 patches of 4 x 4, 65 positions */
    { "vit-cifar", { 32, 3, 4, 10, 6, 6, 192, 0, VIT_POOL_CLS } },
};

#define NPRESETS ((int)(sizeof vit_preset_table / sizeof vit_preset_table[0]))

static int vit_preset(const char *name, int *v, char *err)
{
    for (int i = 0; i < NPRESETS; i++)
        if (strcmp(name, vit_preset_table[i].name) == 0) {
            memcpy(v, &vit_preset_table[i].c, sizeof(vit_config));
            return 0;
        }
    return errf(err, "--preset: unknown ViT preset '%s' (known: %s)", name, vit_family.presets);
}

static int vit_check(const int *v, char *err)
{
    const vit_config *c = (const vit_config *)v;
    if (c->image % c->patch)
        return errf(err, "--patch: %d does not divide the image size %d", c->patch, c->image);
    if (c->C % c->NH)
        return errf(err, "--heads %d does not divide --width %d (the width is split evenly among "
                         "the heads)", c->NH, c->C);
    if ((long long)vit_patches(c) + 1 > 1 << 20)
        return errf(err, "--patch: %d patches per image is too many", vit_patches(c));
    return 0;
}

/* ---- parameters ---- */

/* Views before the stack, in buffer order. */
enum { V_PE_W, V_PE_B, V_CLS, V_POS, V_STACK };

/* The view index of one of the above: without biases V_PE_B is left out and
 * the later ones move up by one. */
static int vidx(const vit_config *c, int slot)
{
    return c->nobias && slot > V_PE_B ? slot - 1 : slot;
}

static tstack_config stack_config(const vit_config *c)
{
    return (tstack_config){ .L = c->L, .NH = c->NH, .C = c->C, .causal = 0, .post_ln = 0,
                            .nobias = c->nobias };
}

/* patch_embed.{weight [C, ch*P*P], bias}, cls_token [C], pos_embed [N+1, C],
 * the stack (h.N.*, ln_f.*), head.{weight [classes, C], bias}. The [CLS]
 * token and positions are embeddings, not matmul weights: no weight decay
 * (as in the reference implementations). */
static size_t vit_layout(const int *cv, param_view **views, int *nviews)
{
    const vit_config *c = (const vit_config *)cv;
    tstack_config sc = stack_config(c);
    int n = 0, total = vidx(c, V_STACK) + tstack_nviews(&sc) + 2;
    size_t off = 0;
    param_view *v = calloc((size_t)total, sizeof *v);

    *views = v;
    *nviews = 0;
    if (!v)
        return 0;
    model_add_view(v, &n, &off, "patch_embed.weight", 2, c->C, vit_patch_dim(c));
    if (!c->nobias)
        model_add_view(v, &n, &off, "patch_embed.bias", 1, c->C, 0);
    model_add_view(v, &n, &off, "cls_token", 1, c->C, 0);
    model_add_view(v, &n, &off, "pos_embed", 2, vit_patches(c) + 1, c->C);
    v[n - 1].decay = 0;
    tstack_layout(&sc, "h", "ln_f", v, &n, &off);
    model_add_view(v, &n, &off, "head.weight", 2, c->classes, c->C);
    if (!c->nobias)
        model_add_view(v, &n, &off, "head.bias", 1, c->classes, 0);
    *nviews = n;
    return off;
}

static size_t vit_real_params(const int *v)
{
    param_view *views;
    int n;
    size_t total = vit_layout(v, &views, &n);
    free(views);
    return total;
}

/* Patch embedding N(0, 1/fan_in) (LeCun, as the JAX ViT), so that the patch
 * tokens start at unit scale; [CLS] and positions N(0, 0.02); the stack as
 * GPT-2's; the head zero (the ViT paper's choice: every class starts equal,
 * loss ln(classes)). */
static void vit_init(const int *cv, float *host, uint64_t seed)
{
    const vit_config *c = (const vit_config *)cv;
    tstack_config sc = stack_config(c);
    param_view *views;
    int n;
    size_t total = vit_layout(cv, &views, &n);
    rng_state r;
    double pe_std = 1.0 / sqrt((double)vit_patch_dim(c));

    if (!views)
        return;
    rng_seed(&r, seed);
    memset(host, 0, total * sizeof *host);
    for (size_t k = 0; k < views[V_PE_W].count; k++)
        host[views[V_PE_W].offset + k] = (float)(pe_std * rng_normal(&r));
    for (int i = vidx(c, V_CLS); i <= vidx(c, V_POS); i++)
        for (size_t k = 0; k < views[i].count; k++)
            host[views[i].offset + k] = (float)(0.02 * rng_normal(&r));
    tstack_init(&sc, &views[vidx(c, V_STACK)], host, &r);
    /* head.weight and head.bias stay zero */
    free(views);
}

void vit_patchify(const vit_config *c, const float *x, int B, float *out)
{
    int P = c->patch, H = c->image, G = H / P, ch = c->channels;
    size_t img = (size_t)ch * H * H;
    for (int b = 0; b < B; b++)
        for (int gy = 0; gy < G; gy++)
            for (int gx = 0; gx < G; gx++) {
                float *o = out + (((size_t)b * G + gy) * G + gx) * (size_t)ch * P * P;
                for (int k = 0; k < ch; k++)
                    for (int py = 0; py < P; py++) {
                        const float *row = x + b * img + ((size_t)k * H + gy * P + py) * H + gx * P;
                        memcpy(o, row, (size_t)P * sizeof *o);
                        o += P;
                    }
            }
}

/* ---- the model on a backend ---- */

typedef struct {
    vit_config cfg;
    tstack *stack;
    int N, T, D; /* patches, positions (N+1), patch length */
    int pool_first, pool_rows; /* the rows the head reads: [CLS] (0, 1) or the patches (1, N) */
    void *pe_w, *pe_b, *cls, *pos, *head_w, *head_b;       /* params */
    void *dpe_w, *dpe_b, *dcls, *dpos, *dhead_w, *dhead_b; /* grads */
    /* planned per B */
    void *act_buf, *stat_buf;
    void *patches, *emb, *x0, *pooled, *logits, *dlogits, *dpooled, *dout, *demb, *losses;
    void *smooth;                    /* [B, K] label smoothing's gradient term */
    int32_t *targets;
    float *host_patches, *host_logits;
    double *host_losses;
    double *host_smooth;             /* [B, K]: logits, then smoothing's gradient term */
    int have_grad;
} vit_state;

static void free_plan(model *m)
{
    vit_state *s = m->priv;
    backend *be = m->be;
    if (s->act_buf)
        be->free(be, s->act_buf);
    if (s->stat_buf)
        be->free(be, s->stat_buf);
    if (s->targets)
        be->free(be, s->targets);
    free(s->host_patches);
    free(s->host_logits);
    free(s->host_losses);
    free(s->host_smooth);
    s->act_buf = s->stat_buf = NULL;
    s->targets = NULL;
    s->host_patches = s->host_logits = NULL;
    s->host_losses = NULL;
    s->host_smooth = NULL;
    m->B = 0;
}

static void carve_all(vit_state *s, carver *a, carver *st, int B)
{
    size_t BN = (size_t)B * s->N, C = s->cfg.C, K = s->cfg.classes;
    s->patches = carve(a, BN * s->D);
    s->emb = carve(a, BN * C);
    s->x0 = carve(a, (size_t)B * s->T * C);
    s->pooled = carve(a, (size_t)B * C);
    s->logits = carve(a, (size_t)B * K);
    s->dlogits = carve(a, (size_t)B * K);
    s->smooth = carve(a, (size_t)B * K);
    s->dpooled = carve(a, (size_t)B * C);
    s->dout = carve(a, (size_t)B * s->T * C);
    s->demb = carve(a, BN * C);
    s->losses = carve(st, (size_t)B);
}

/* Plans for micro-batches of B images. T is ignored: the sequence is always
 * the N+1 positions of one image. */
static int vit_plan(model *m, int B, int T, char *err)
{
    vit_state *s = m->priv;
    backend *be = m->be;
    carver a = { NULL, 0, dtype_size(be->act) }, st = { NULL, 0, dtype_size(be->stat) };

    (void)T;
    if (B < 1)
        return errf(err, "--batch: must be positive (got %d)", B);
    free_plan(m);
    carve_all(s, &a, &st, B);
    s->act_buf = be->alloc(be, a.used * a.esize);
    s->stat_buf = be->alloc(be, st.used * st.esize);
    s->targets = be->alloc(be, (size_t)B * sizeof(int32_t));
    s->host_patches = malloc((size_t)B * s->N * s->D * sizeof(float));
    s->host_logits = malloc((size_t)B * s->cfg.classes * sizeof(float));
    s->host_losses = malloc((size_t)B * sizeof(double));
    s->host_smooth = malloc((size_t)B * s->cfg.classes * sizeof(double));
    if (!s->act_buf || !s->stat_buf || !s->targets || !s->host_patches || !s->host_logits ||
        !s->host_losses || !s->host_smooth) {
        double gib = ((double)a.used * a.esize + (double)st.used * st.esize) / (1 << 30);
        free_plan(m);
        return errf(err, "--batch: activations for %d images need %.2f GiB on %s, which could "
                         "not be allocated", B, gib, be->name);
    }
    a.base = s->act_buf;
    st.base = s->stat_buf;
    a.used = st.used = 0;
    carve_all(s, &a, &st, B);
    if (tstack_plan(s->stack, B, s->T, s->cfg.classes, err)) {
        free_plan(m);
        return -1;
    }
    m->B = B;
    m->T = s->T;
    s->have_grad = 0;
    return 0;
}

static void range(backend *be, const char *name, int push)
{
    if (be->range)
        be->range(be, name, push);
}

/* Label smoothing e (training forwards, m->label_smoothing): the target is
 * (1 - e) onehot(y) + e/K, so a row's loss is
 *   -(1-e) log p_y - (e/K) sum_k log p_k = CE_y + e (z_y - mean_k z_k)
 * (log p_k = z_k - lse) and its gradient the plain one plus
 * scale e (onehot(y) - 1/K). Both from the crossentropy op's figures: the
 * row losses (host_losses) get the second term, dlogits the extra gradient. */
static void smooth_labels(model *m, const int32_t *targets, float scale)
{
    vit_state *s = m->priv;
    backend *be = m->be;
    int B = m->B, K = s->cfg.classes;
    double e = m->label_smoothing;
    double *z = s->host_smooth; /* double: the fp64 backend's gradient check sees it */
    be->download(be, z, DT_F64, s->logits, be->act, (size_t)B * K);
    for (int i = 0; i < B; i++) {
        if (targets[i] < 0)
            continue;
        double mean = 0;
        for (int k = 0; k < K; k++)
            mean += z[(size_t)i * K + k];
        s->host_losses[i] += e * (z[(size_t)i * K + targets[i]] - mean / K);
    }
    if (!(scale > 0))
        return;
    for (int i = 0; i < B; i++)
        for (int k = 0; k < K; k++)
            z[(size_t)i * K + k] = targets[i] < 0 ? 0.0 : scale * e * ((k == targets[i]) - 1.0 / K);
    be->upload(be, s->smooth, be->act, z, DT_F64, (size_t)B * K);
    be->accumulate(be, s->dlogits, s->smooth, (size_t)B * K);
}

static double vit_forward(model *m, const model_batch *b, float grad_scale)
{
    vit_state *s = m->priv;
    backend *be = m->be;
    const vit_config *c = &s->cfg;
    int B = m->B, C = c->C, K = c->classes, BN = B * s->N;

    range(be, "forward", 1);
    vit_patchify(c, b->x, B, s->host_patches);
    be->upload(be, s->patches, be->act, s->host_patches, DT_F32, (size_t)BN * s->D);
    be->matmul_forward(be, s->emb, s->patches, s->pe_w, s->pe_b, BN, s->D, C);
    be->sequence_embed_forward(be, s->x0, s->emb, s->cls, s->pos, B, s->T, C);
    model_dropout(m, s->x0, (size_t)B * s->T * C, DROPOUT_SITE_EMBED);
    void *h = tstack_forward(s->stack, s->x0);
    be->rows_mean_forward(be, s->pooled, h, B, s->T, C, s->pool_first, s->pool_rows);
    be->matmul_forward(be, s->logits, s->pooled, s->head_w, s->head_b, B, C, K);
    s->have_grad = 0;
    if (!b->targets) {
        range(be, "forward", 0);
        return 0.0;
    }
    int valid = 0;
    for (int i = 0; i < B; i++)
        valid += b->targets[i] >= 0;
    be->upload(be, s->targets, DT_I32, b->targets, DT_I32, (size_t)B);
    /* the gradient goes to its own buffer: the logits stay for metrics */
    int want = grad_scale > 0 && valid > 0;
    be->crossentropy(be, s->losses, want ? s->dlogits : NULL, s->logits, s->targets, B, K, K,
                     want ? grad_scale / (float)valid : 0.0f);
    s->have_grad = want;
    be->download(be, s->host_losses, DT_F64, s->losses, be->stat, (size_t)B);
    if (m->label_smoothing > 0 && valid > 0)
        smooth_labels(m, b->targets, want ? grad_scale / (float)valid : 0.0f);
    range(be, "forward", 0);
    double sum = 0.0;
    for (int i = 0; i < B; i++)
        if (b->targets[i] >= 0)
            sum += s->host_losses[i];
    return model_loss(m, sum, valid);
}

static void vit_backward(model *m)
{
    vit_state *s = m->priv;
    backend *be = m->be;
    const vit_config *c = &s->cfg;
    int B = m->B, C = c->C, K = c->classes, BN = B * s->N;
    dtype t = be->act;

    if (!s->have_grad)
        return;
    range(be, "backward", 1);
    be->matmul_backward(be, s->dpooled, s->dhead_w, s->dhead_b, s->dlogits, s->pooled,
                        s->head_w, B, C, K, GRAD_SET);
    model_views_ready(m, m->nviews - (s->cfg.nobias ? 1 : 2), m->nviews - 1); /* head */
    be->fill(be, s->dout, t, 0.0, (size_t)B * s->T * C);
    be->rows_mean_backward(be, s->dout, s->dpooled, B, s->T, C, s->pool_first, s->pool_rows);
    void *dx0 = tstack_backward(s->stack, s->dout); /* reports the stack's views */
    model_dropout(m, dx0, (size_t)B * s->T * C, DROPOUT_SITE_EMBED);
    be->fill(be, s->demb, t, 0.0, (size_t)BN * C);
    be->sequence_embed_backward(be, s->demb, s->dcls, s->dpos, dx0, B, s->T, C);
    /* the patches are data: no gradient for them */
    be->matmul_backward(be, NULL, s->dpe_w, s->dpe_b, s->demb, s->patches, s->pe_w, BN, s->D, C,
                        GRAD_ADD);
    model_views_ready(m, V_PE_W, vidx(&s->cfg, V_POS));
    s->have_grad = 0;
    range(be, "backward", 0);
}

static void vit_logits(model *m, int b, int t, float *out)
{
    vit_state *s = m->priv;
    int K = s->cfg.classes;
    (void)t;
    m->be->download(m->be, out, DT_F32, buf_at(s->logits, (size_t)b * K, m->be->act),
                    m->be->act, (size_t)K);
}

/* Top-1 accuracy: the class of the largest logit against the label. */
static void vit_metrics(model *m, const model_batch *b, double *sums, double *counts)
{
    vit_state *s = m->priv;
    int B = m->B, K = s->cfg.classes;
    if (!b->targets)
        return;
    m->be->download(m->be, s->host_logits, DT_F32, s->logits, m->be->act, (size_t)B * K);
    for (int i = 0; i < B; i++) {
        if (b->targets[i] < 0)
            continue;
        const float *l = s->host_logits + (size_t)i * K;
        int best = 0;
        for (int k = 1; k < K; k++)
            if (l[k] > l[best])
                best = k;
        sums[0] += best == b->targets[i];
        counts[0] += 1;
    }
}

static void vit_destroy(model *m)
{
    if (!m)
        return;
    vit_state *s = m->priv;
    if (s) {
        free_plan(m);
        tstack_destroy(s->stack);
    }
    model_delete(m);
}

static model *vit_create(backend *be, const int *v, char *err)
{
    const vit_config *c = (const vit_config *)v;
    tstack_config sc = stack_config(c);
    model *m = model_new(be, &vit_family, (const int *)v, sizeof(vit_state), err);
    if (!m)
        return NULL;
    vit_state *s = m->priv;
    m->V = c->classes;
    s->cfg = *c;
    s->N = vit_patches(c);
    s->T = s->N + 1;
    s->D = vit_patch_dim(c);
    s->pool_first = c->pool == VIT_POOL_MEAN ? 1 : 0;
    s->pool_rows = c->pool == VIT_POOL_MEAN ? s->N : 1;
    m->maxT = s->T;
    m->plan = vit_plan;
    m->forward = vit_forward;
    m->backward = vit_backward;
    m->logits = vit_logits;
    m->metrics = vit_metrics;
    m->nmetrics = 1;
    m->metric_names[0] = "accuracy";
    m->destroy = vit_destroy;
    m->has_dropout = TSTACK_DROPOUT_SITES;
    m->has_label_smoothing = 1;
    if (vit_check(v, err))
        goto fail;
    m->nparams = m->nparams_real = vit_layout(v, &m->views, &m->nviews);
    if (!m->views) {
        errf(err, "out of memory");
        goto fail;
    }
    if (model_alloc(m, err))
        goto fail;
    s->stack = tstack_create(m, &sc, vidx(c, V_STACK), 0, err);
    if (!s->stack)
        goto fail;
    int head = m->nviews - (c->nobias ? 1 : 2);
#define P(i) model_view_at(m, m->params, i)
#define G(i) model_view_at(m, m->grads, i)
    s->pe_w = P(V_PE_W), s->dpe_w = G(V_PE_W);
    s->cls = P(vidx(c, V_CLS)), s->dcls = G(vidx(c, V_CLS));
    s->pos = P(vidx(c, V_POS)), s->dpos = G(vidx(c, V_POS));
    s->head_w = P(head), s->dhead_w = G(head);
    if (!c->nobias) { /* else NULL: the matmuls take a NULL bias as none */
        s->pe_b = P(V_PE_B), s->dpe_b = G(V_PE_B);
        s->head_b = P(head + 1), s->dhead_b = G(head + 1);
    }
#undef P
#undef G
    return m;
fail:
    vit_destroy(m);
    return NULL;
}

static void vit_describe(const int *v, FILE *out)
{
    const vit_config *c = (const vit_config *)v;
    int G = c->image / c->patch;
    fprintf(out, "context: %d positions, [CLS] + %d x %d patches of %d x %d x %d = %d values, "
                 "all seen at once (bidirectional attention)\n",
            vit_patches(c) + 1, G, G, c->patch, c->patch, c->channels, vit_patch_dim(c));
    if (c->pool == VIT_POOL_MEAN)
        fprintf(out, "output: %d class scores from the mean of the %d patch positions "
                     "(--pool mean)\n", c->classes, vit_patches(c));
    else
        fprintf(out, "output: %d class scores from the [CLS] position\n", c->classes);
    fprintf(out, "data: --data an IDX images file (*images-idx3*, MNIST/Fashion-MNIST, .gz "
                 "too), a CIFAR-10 .bin batch, or a directory of the standard files "
                 "(training split: train-*/data_batch_*; val and test: t10k-*/test_batch)\n");
}

/* ---- the batch source over image files ----
 *
 * Training (SPLIT_TRAIN): epochs of floor(n/B) micro-batches; with shuffle,
 * epoch e visits the images in a permutation drawn from (seed, e). RGB
 * training images (CIFAR-10) are augmented, with draws from (seed, global
 * micro-batch, row): a random crop of the image padded by 4 pixels of black
 * on each side, and a horizontal flip with probability 1/2. Grey images
 * (Fashion-MNIST) are not: its items are centred and size-normalised by
 * construction and share an orientation (shoes point left) that the test
 * images keep, so flips add images the test never shows; and random
 * shifts of 2 pixels, tried, slowed a 7 x 7-patch ViT's learning in the
 * short CPU runs this serves (validation accuracy after 2 epochs 77% with
 * them, 84% without; that run was not taken further): a shift moves content
 * across the coarse patch grid, which the model must first learn to ignore.
 * --crop-pad N and --flip 0|1 (data_spec.augment) replace these defaults for
 * either kind, e.g. for the recipes that find shifts and flips worth it on
 * Fashion-MNIST with finer patches (bench/vit_fmnist_recipe.sh). --erase P
 * adds random erasing (erase_rect below) on top of either.
 * Val and test: the images in file order, ceil(n/B) micro-batches, the last
 * one's missing rows padded with ignored targets (-1), so a pass counts every
 * image exactly once. Pixels are scaled to [-1, 1] (x/255 - 0.5) / 0.5, the
 * same fixed constants for every split (as Hugging Face's ViT image
 * processor): a checkpoint evaluates later without training-set statistics. */

/* crop padding of RGB training images */
#define CROP_PAD_RGB 4

typedef struct {
    batch_source base;
    image_set set;
    int B, rank, world, train, shuffle, augment;
    int pad, flip;                 /* augmentation: crop padding, flips */
    double erase;                  /* probability of random erasing (--erase) */
    uint64_t seed, pos, epoch_len; /* epoch_len in global micro-batches */
    int *perm;
    int64_t perm_epoch;
    size_t img;                    /* values per image */
    float *x;
    int32_t *targets;
} image_source;

static uint64_t mix(uint64_t a, uint64_t b)
{
    uint64_t x = a ^ (b * 0x9e3779b97f4a7c15ULL);
    return rng_splitmix(&x);
}

static void make_perm(image_source *s, uint64_t epoch)
{
    rng_state r;
    for (int i = 0; i < s->set.n; i++)
        s->perm[i] = i;
    if (s->shuffle) {
        rng_seed(&r, mix(s->seed, epoch));
        for (int i = s->set.n - 1; i > 0; i--) {
            int j = (int)rng_below(&r, (uint64_t)i + 1);
            int tmp = s->perm[i];
            s->perm[i] = s->perm[j];
            s->perm[j] = tmp;
        }
    }
    s->perm_epoch = (int64_t)epoch;
}

/* One image into out (scaled), cropped at (dy, dx) from the image padded by
 * s->pad and flipped when asked; dy = dx = s->pad, flip 0 is the image itself. */
static void put_image(const image_source *s, const uint8_t *px, int dy, int dx, int flip,
                      float *out)
{
    int ch = s->set.channels, H = s->set.height, W = s->set.width;
    for (int k = 0; k < ch; k++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                int sy = y + dy - s->pad, sx = (flip ? W - 1 - x : x) + dx - s->pad;
                float v = -1.0f; /* a padded (black) pixel */
                if (sy >= 0 && sy < H && sx >= 0 && sx < W)
                    v = px[((size_t)k * H + sy) * W + sx] * (1.0f / 127.5f) - 1.0f;
                out[((size_t)k * H + y) * W + x] = v;
            }
}

/* Random erasing (--erase; Zhong et al. 2017, as torchvision's RandomErasing
 * with its defaults): up to 10 tries to draw a rectangle of 2-33% of the
 * image's area with aspect (height / width) log-uniform in [0.3, 3.3] that
 * fits inside it; the first that fits is set to 0, the middle of the pixel
 * scale, in every channel. Draws come from the row's own generator after its
 * crop and flip, so P = 0 draws nothing and leaves every run as it was. */
static void erase_rect(const image_source *s, rng_state *r, float *out)
{
    int ch = s->set.channels, H = s->set.height, W = s->set.width;
    if (rng_uniform(r) >= s->erase)
        return;
    for (int attempt = 0; attempt < 10; attempt++) {
        double area = (0.02 + rng_uniform(r) * (0.33 - 0.02)) * H * W;
        double aspect = exp(log(0.3) + rng_uniform(r) * (log(1 / 0.3) - log(0.3)));
        int h = (int)lround(sqrt(area * aspect)), w = (int)lround(sqrt(area / aspect));
        if (h < 1 || w < 1 || h >= H || w >= W)
            continue;
        int y0 = (int)rng_below(r, (uint64_t)(H - h + 1)), x0 = (int)rng_below(r, (uint64_t)(W - w + 1));
        for (int k = 0; k < ch; k++)
            for (int y = y0; y < y0 + h; y++)
                for (int x = x0; x < x0 + w; x++)
                    out[((size_t)k * H + y) * W + x] = 0.0f;
        return;
    }
}

static int source_next(batch_source *bs, char *err)
{
    image_source *s = (image_source *)bs;
    uint64_t g = s->pos * (uint64_t)s->world + (uint64_t)s->rank;
    uint64_t epoch = g / s->epoch_len, j = g % s->epoch_len;
    (void)err;
    if (s->train && (int64_t)epoch != s->perm_epoch)
        make_perm(s, epoch);
    for (int i = 0; i < s->B; i++) {
        uint64_t k = j * (uint64_t)s->B + (uint64_t)i;
        float *out = s->x + (size_t)i * s->img;
        if (k >= (uint64_t)s->set.n) { /* val/test: past the last image */
            for (size_t q = 0; q < s->img; q++)
                out[q] = 0.0f;
            s->targets[i] = -1;
            continue;
        }
        int idx = s->train ? s->perm[k] : (int)k;
        int dy = s->pad, dx = s->pad, flip = 0;
        rng_state r;
        if (s->augment || s->erase > 0) {
            rng_seed(&r, mix(mix(s->seed, g), (uint64_t)i + 1));
            dy = (int)rng_below(&r, 2 * (uint64_t)s->pad + 1);
            dx = (int)rng_below(&r, 2 * (uint64_t)s->pad + 1);
            flip = s->flip && rng_below(&r, 2);
        }
        put_image(s, s->set.pixels + (size_t)idx * s->img, dy, dx, flip, out);
        if (s->erase > 0)
            erase_rect(s, &r, out);
        s->targets[i] = s->set.labels[idx];
    }
    s->pos++;
    return 0;
}

static uint64_t source_position(const batch_source *bs)
{
    return ((const image_source *)bs)->pos;
}

static void source_seek(batch_source *bs, uint64_t pos)
{
    ((image_source *)bs)->pos = pos;
}

static uint64_t source_epoch_batches(const batch_source *bs)
{
    const image_source *s = (const image_source *)bs;
    uint64_t w = (uint64_t)s->world, r = (uint64_t)s->rank;
    return s->epoch_len > r ? (s->epoch_len - r + w - 1) / w : 0;
}

static void source_close(batch_source *bs)
{
    image_source *s = (image_source *)bs;
    if (!s)
        return;
    images_free(&s->set);
    free(s->perm);
    free(s->x);
    free(s->targets);
    free(s);
}

static batch_source *vit_open_data(const model *m, const data_spec *spec, char *err)
{
    const vit_config *c = (const vit_config *)m->config;
    image_source *s = calloc(1, sizeof *s);

    if (!s) {
        errf(err, "out of memory");
        return NULL;
    }
    if (!spec->path || !*spec->path) {
        errf(err, "--data: the ViT needs an images file or directory");
        goto fail;
    }
    if (images_open(&s->set, spec->path, spec->split != SPLIT_TRAIN, c->classes, err))
        goto fail;
    if (s->set.channels != c->channels || s->set.height != c->image ||
        s->set.width != c->image) {
        errf(err, "%s: images are %d x %d x %d (channels x height x width) but the model "
                  "takes %d x %d x %d (--channels, --image-size)", spec->path, s->set.channels,
             s->set.height, s->set.width, c->channels, c->image, c->image);
        goto fail;
    }
    s->B = spec->B;
    s->rank = spec->rank;
    s->world = spec->world > 0 ? spec->world : 1;
    s->seed = spec->seed;
    s->train = spec->split == SPLIT_TRAIN;
    s->shuffle = s->train && spec->shuffle;
    if (spec->augment) { /* --crop-pad, --flip */
        s->pad = s->train ? spec->crop_pad : 0;
        s->flip = s->train && spec->flip;
    } else {
        s->pad = s->train && s->set.channels == 3 ? CROP_PAD_RGB : 0;
        s->flip = s->train && s->set.channels == 3;
    }
    s->augment = s->pad > 0 || s->flip;
    s->erase = s->train ? spec->erase : 0;
    s->img = (size_t)s->set.channels * s->set.height * s->set.width;
    if (s->B < 1) {
        errf(err, "--batch: must be positive (got %d)", s->B);
        goto fail;
    }
    if (s->train && s->set.n < s->B) {
        errf(err, "%s: %d images, fewer than one micro-batch of %d", spec->path, s->set.n, s->B);
        goto fail;
    }
    s->epoch_len = s->train ? (uint64_t)(s->set.n / s->B)
                            : ((uint64_t)s->set.n + (uint64_t)s->B - 1) / (uint64_t)s->B;
    s->perm_epoch = -1;
    s->perm = s->train ? malloc((size_t)s->set.n * sizeof *s->perm) : NULL;
    s->x = malloc((size_t)s->B * s->img * sizeof *s->x);
    s->targets = malloc((size_t)s->B * sizeof *s->targets);
    if ((s->train && !s->perm) || !s->x || !s->targets) {
        errf(err, "%s: out of memory", spec->path);
        goto fail;
    }
    s->base.batch.x = s->x;
    s->base.batch.targets = s->targets;
    s->base.next = source_next;
    s->base.position = source_position;
    s->base.seek = source_seek;
    s->base.epoch_batches = source_epoch_batches;
    s->base.close = source_close;
    return &s->base;
fail:
    source_close(&s->base);
    return NULL;
}

const model_family vit_family = {
    .name = "vit",
    .summary = "Vision Transformer: image patches + [CLS], pre-LN encoder, class head",
    .presets = "vit-mnist vit-mnist-p7 vit-mnist-p4 vit-mnist-tiny vit-cifar vit-tiny vit-small vit-base",
    .fields = vit_fields,
    .nfields = NFIELDS,
    .preset = vit_preset,
    .check = vit_check,
    .layout = vit_layout,
    .real_params = vit_real_params,
    .init = vit_init,
    .create = vit_create,
    .describe = vit_describe,
    .open_data = vit_open_data,
};
