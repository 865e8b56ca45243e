/* rnn.c: the recurrent language models, Elman (family "rnn") and LSTM
 * ("lstm"), as the paper's equations compose the ops.
 *
 *   x_t = E[token_t]                                   (embedding)
 *   h^l_t = cell(h^{l-1}_t, h^l_{t-1})  for l = 1..L   (rnn_forward, one op per layer)
 *   logits_t = W_o h^L_t + b_o;  loss = cross-entropy(softmax(logits_t), token_{t+1})
 *
 * Context: the state h_t summarises everything before t, without bound; the
 * gradient, though, is truncated at the micro-batch's T steps (truncated
 * BPTT, T = --seq): the state that enters a micro-batch is carried over from
 * the previous micro-batch of the same stream as a constant.
 *
 * Streams. The family's batch source (below) cuts the token shards into B
 * parallel streams per rank, like torch's batchify: row b of micro-batch k+1
 * continues row b of micro-batch k. It marks a row that starts its stream
 * in model_batch.resets. The model keeps the final state of each micro-batch
 * per source (keyed by the source's resets buffer, so that validation
 * batches, read in between, carry their own state and leave the training
 * streams' alone) and starts the next one from it. The state is zeroed where
 * a row starts its stream and where a document starts (at the end-of-text
 * token, config "eot"), and no gradient crosses such a reset. A batch
 * without resets (the sampler's, hand-made ones) is a set of independent
 * sequences: its state starts at zero and is not kept. Checkpoints carry the
 * training streams' state (get_carried/set_carried, train.c), so a resumed
 * run continues them bit for bit.
 *
 * Sampling (decode_plan/decode_step) runs one step of every layer per new
 * token from the carried state: each token costs the same, at any position,
 * and nothing before it is forgotten (no window).
 *
 * Parameter names are those of PyTorch's word_language_model
 * (encoder.weight, rnn.weight_ih_l0, ..., decoder.weight), and the recurrent
 * weights are laid out as torch.nn.RNN / torch.nn.LSTM store them, so the
 * checkpoints load into either. */
#include "rnn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../data/errbuf.h"
#include "../../data/rng.h"
#include "../../data/shard.h"

#define GPT2_EOT 50256
#define EOT_AUTO (-2) /* config "eot": GPT-2's end-of-text with its vocabulary, else none */

/* The end-of-text token a config means, or -1. */
static int eot_of(const rnn_config *c)
{
    if (c->eot == EOT_AUTO)
        return c->V == GPT2_EOT + 1 ? GPT2_EOT : -1;
    return c->eot;
}

static const family_field rnn_fields[] = {
    { "V", "vocab-size", "vocabulary size (token ids below it)", 2, 1 << 24, 0, NULL },
    { "C", NULL, "embedding width (the first layer's input)", 1, 1 << 16, 0, NULL },
    { "H", "width", "state width of each recurrent layer (--hidden: the same)", 1, 1 << 16, 0,
      NULL },
    { "L", "layers", "recurrent layers", 1, 64, 0, NULL },
    { "eot", "eot", "end-of-text token: the state is reset where a document starts there "
                    "(-1: none; -2: GPT-2's 50256 with its 50257 tokens, else none)", -2,
      (1 << 24) - 1, 0, NULL },
};

#define RNN_PRESETS "rnn-small rnn-tiny rnn-medium"
#define LSTM_PRESETS "lstm-small lstm-tiny lstm-medium lstm-large"

typedef struct { const char *name; int C, H, L; } rnn_preset_row;

static int preset_of(const rnn_preset_row *p, size_t n, const char *all, const char *name,
                     int *v, char *err)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(name, p[i].name) == 0) {
            rnn_config c = { GPT2_EOT + 1, p[i].C, p[i].H, p[i].L, EOT_AUTO };
            memcpy(v, &c, sizeof c);
            return 0;
        }
    }
    return errf(err, "--preset: unknown preset '%s' (known: %s)", name, all);
}

static int rnn_preset(const char *name, int *v, char *err)
{
    static const rnn_preset_row p[] = {
        { "rnn-small", 128, 512, 1 }, { "rnn-tiny", 16, 32, 1 }, { "rnn-medium", 256, 1024, 2 },
    };
    return preset_of(p, sizeof p / sizeof p[0], RNN_PRESETS, name, v, err);
}

/* lstm-medium and lstm-large are Zaremba et al. (2014)'s PTB models' sizes */
static int lstm_preset(const char *name, int *v, char *err)
{
    static const rnn_preset_row p[] = {
        { "lstm-small", 128, 512, 1 }, { "lstm-tiny", 16, 32, 1 },
        { "lstm-medium", 650, 650, 2 }, { "lstm-large", 1500, 1500, 2 },
    };
    return preset_of(p, sizeof p / sizeof p[0], LSTM_PRESETS, name, v, err);
}

static int rnn_check(const int *v, char *err)
{
    const rnn_config *c = (const rnn_config *)v;
    if (eot_of(c) >= c->V)
        return errf(err, "--eot: %d is not below --vocab-size %d (-1: no end-of-text token)",
                    c->eot, c->V);
    return 0;
}

static int gates(int cell) { return cell == RNN_CELL_LSTM ? 4 : 1; }

/* Views: encoder.weight, then per layer weight_ih, weight_hh, bias_ih,
 * bias_hh (4 each), then decoder.weight, decoder.bias. */
#define VIEW_LAYER(l) (1 + 4 * (l))

static size_t layout_cell(int cell, const int *cv, param_view **views, int *nviews)
{
    const rnn_config *c = (const rnn_config *)cv;
    int G = gates(cell), n = 0;
    size_t off = 0;
    param_view *v = calloc((size_t)3 + 4 * (size_t)c->L, sizeof *v);
    char name[64];

    *views = v;
    *nviews = 0;
    if (!v)
        return 0;
    model_add_view(v, &n, &off, "encoder.weight", 2, c->V, c->C);
    for (int l = 0; l < c->L; l++) {
        int in = l ? c->H : c->C;
        snprintf(name, sizeof name, "rnn.weight_ih_l%d", l);
        model_add_view(v, &n, &off, name, 2, G * c->H, in);
        snprintf(name, sizeof name, "rnn.weight_hh_l%d", l);
        model_add_view(v, &n, &off, name, 2, G * c->H, c->H);
        snprintf(name, sizeof name, "rnn.bias_ih_l%d", l);
        model_add_view(v, &n, &off, name, 1, G * c->H, 0);
        snprintf(name, sizeof name, "rnn.bias_hh_l%d", l);
        model_add_view(v, &n, &off, name, 1, G * c->H, 0);
    }
    model_add_view(v, &n, &off, "decoder.weight", 2, rnn_padded_vocab(c->V), c->H);
    model_add_view(v, &n, &off, "decoder.bias", 1, rnn_padded_vocab(c->V), 0);
    *nviews = n;
    return off;
}

static size_t rnn_layout(const int *cv, param_view **v, int *n)
{
    return layout_cell(RNN_CELL_TANH, cv, v, n);
}

static size_t lstm_layout(const int *cv, param_view **v, int *n)
{
    return layout_cell(RNN_CELL_LSTM, cv, v, n);
}

static size_t real_params_cell(int cell, const int *cv)
{
    const rnn_config *c = (const rnn_config *)cv;
    param_view *v;
    int n;
    size_t total = layout_cell(cell, cv, &v, &n);
    free(v);
    return total - (size_t)(rnn_padded_vocab(c->V) - c->V) * (size_t)(c->H + 1);
}

static size_t rnn_real_params(const int *cv) { return real_params_cell(RNN_CELL_TANH, cv); }
static size_t lstm_real_params(const int *cv) { return real_params_cell(RNN_CELL_LSTM, cv); }

/* PyTorch's initialisation: every recurrent weight and bias U(-k, k), k =
 * 1/sqrt(H) (torch.nn.RNN/LSTM); encoder and decoder U(-0.1, 0.1), decoder
 * bias zero (word_language_model); padded decoder rows zero. */
static void init_cell(int cell, const int *cv, float *host, uint64_t seed)
{
    const rnn_config *c = (const rnn_config *)cv;
    param_view *views;
    int n;
    size_t total = layout_cell(cell, cv, &views, &n);
    rng_state r;

    rng_seed(&r, seed);
    memset(host, 0, total * sizeof *host);
    for (int i = 0; i < n; i++) {
        const param_view *p = &views[i];
        float *w = host + p->offset;
        size_t count = p->count;
        double k = 1.0 / sqrt((double)c->H);
        if (i == 0 || i == n - 2) {
            k = 0.1;
            if (i == n - 2)
                count = (size_t)c->V * c->H;
        } else if (i == n - 1) {
            continue;
        }
        for (size_t e = 0; e < count; e++)
            w[e] = (float)(k * (2 * rng_uniform(&r) - 1));
    }
    free(views);
}

static void rnn_init(const int *cv, float *h, uint64_t s) { init_cell(RNN_CELL_TANH, cv, h, s); }
static void lstm_init(const int *cv, float *h, uint64_t s) { init_cell(RNN_CELL_LSTM, cv, h, s); }

static void describe_cell(int cell, const int *cv, FILE *out)
{
    const rnn_config *c = (const rnn_config *)cv;
    fprintf(out, "context: unbounded: the state (%d x %d%s) carries everything before a "
                 "position, across micro-batches of a stream; gradients are truncated at the "
                 "BPTT length, --seq tokens\n", c->L, c->H, cell == RNN_CELL_LSTM ? ", and as "
                 "many cell values" : "");
    fprintf(out, "layers: embedding %d, %d %s layer%s of %d, softmax over %d tokens\n", c->C,
            c->L, cell == RNN_CELL_LSTM ? "LSTM" : "Elman (tanh)", c->L == 1 ? "" : "s", c->H,
            c->V);
    if (eot_of(c) >= 0)
        fprintf(out, "data: B parallel streams per rank over the token shards; the state is "
                     "reset where a stream starts and at token %d (end of text)\n", eot_of(c));
    else
        fprintf(out, "data: B parallel streams per rank over the token shards; the state is "
                     "reset where a stream starts\n");
}

static void rnn_describe(const int *cv, FILE *out) { describe_cell(RNN_CELL_TANH, cv, out); }
static void lstm_describe(const int *cv, FILE *out) { describe_cell(RNN_CELL_LSTM, cv, out); }

/* ---- the model on a backend ---- */

/* Carried state of one source: two [L,B,H] buffers each for h (and c), the
 * one read by the current forward and the one it writes. */
#define RNN_SLOTS 4

typedef struct {
    const void *key; /* the source's resets buffer; NULL: free */
    uint64_t used;   /* LRU stamp */
    int cur;         /* h[cur], c[cur]: the state entering the next forward */
    void *h[2], *c[2];
} rnn_slot;

typedef struct {
    void *wih, *whh, *bih, *bhh;
} rnn_layer_ptrs;

typedef struct {
    rnn_config cfg;
    int cell, Vp;
    void *wte, *dwte, *dec_w, *dec_b, *ddec_w, *ddec_b;
    rnn_layer_ptrs *lp, *lg; /* per layer: params, grads */
    /* activations, planned per (B, T) */
    void *act_buf, *stat_buf, *int_buf, *work_buf;
    size_t work_stride;      /* bytes of work per layer */
    void *emb, **y, *logits, *losses, *d1, *d2;
    void **yd;               /* [L]: y[l] after dropout, what layer l + 1 (or the decoder)
                                reads when the model drops (training only) */
    rnn_slot slots[RNN_SLOTS];
    uint64_t clock;
    const void *h0, *c0;     /* the state the last forward started from ([L,B,H] or NULL) */
    int32_t *tokens, *targets, *reset;  /* device [B,T] each */
    int32_t *host_reset;                /* [B,T] */
    double *host_losses;                /* [B,T] */
    int have_grad;
    /* decoding (sampling), one token at a time: its own buffers, beside the plan's */
    struct {
        void *act, *work;   /* act: emb [C], y [L][H], h, c [2][L*H], logits [Vp] */
        int32_t *ids;       /* device: token, reset */
        void *emb, **y, *h[2], *c[2], *logits;
        size_t work_stride;
        int cur;
    } dec;
} rnn_state;

static void resolve(model *m)
{
    rnn_state *s = m->priv;
    int L = s->cfg.L;
    s->wte = model_view_at(m, m->params, 0);
    s->dwte = model_view_at(m, m->grads, 0);
    for (int l = 0; l < L; l++) {
        int v = VIEW_LAYER(l);
        s->lp[l] = (rnn_layer_ptrs){ model_view_at(m, m->params, v),
                                     model_view_at(m, m->params, v + 1),
                                     model_view_at(m, m->params, v + 2),
                                     model_view_at(m, m->params, v + 3) };
        s->lg[l] = (rnn_layer_ptrs){ model_view_at(m, m->grads, v),
                                     model_view_at(m, m->grads, v + 1),
                                     model_view_at(m, m->grads, v + 2),
                                     model_view_at(m, m->grads, v + 3) };
    }
    s->dec_w = model_view_at(m, m->params, m->nviews - 2);
    s->dec_b = model_view_at(m, m->params, m->nviews - 1);
    s->ddec_w = model_view_at(m, m->grads, m->nviews - 2);
    s->ddec_b = model_view_at(m, m->grads, m->nviews - 1);
}

static void free_plan(model *m)
{
    rnn_state *s = m->priv;
    backend *be = m->be;
    if (s->act_buf) be->free(be, s->act_buf);
    if (s->stat_buf) be->free(be, s->stat_buf);
    if (s->int_buf) be->free(be, s->int_buf);
    if (s->work_buf) be->free(be, s->work_buf);
    free(s->y);
    free(s->host_reset);
    free(s->host_losses);
    s->act_buf = s->stat_buf = s->int_buf = s->work_buf = NULL;
    s->y = s->yd = NULL;
    s->host_reset = NULL;
    s->host_losses = NULL;
    memset(s->slots, 0, sizeof s->slots);
    m->B = m->T = 0;
}

static void carve_all(rnn_state *s, carver *a, carver *st, int B, int T)
{
    size_t BT = (size_t)B * T, H = (size_t)s->cfg.H, C = (size_t)s->cfg.C;
    size_t LBH = (size_t)s->cfg.L * B * H, wide = H > C ? H : C;
    int lstm = s->cell == RNN_CELL_LSTM;
    s->emb = carve(a, BT * C);
    for (int l = 0; l < s->cfg.L; l++) {
        s->y[l] = carve(a, BT * H);
        s->yd[l] = carve(a, BT * H);
    }
    s->logits = carve(a, BT * (size_t)s->Vp);
    s->losses = carve(st, BT);
    s->d1 = carve(a, BT * wide);
    s->d2 = carve(a, BT * wide);
    for (int k = 0; k < RNN_SLOTS; k++)
        for (int j = 0; j < 2; j++) {
            s->slots[k].h[j] = carve(a, LBH);
            s->slots[k].c[j] = lstm ? carve(a, LBH) : NULL;
        }
}

static int rnn_plan(model *m, int B, int T, char *err)
{
    rnn_state *s = m->priv;
    backend *be = m->be;
    carver a = { NULL, 0, dtype_size(be->act) }, st = { NULL, 0, dtype_size(be->stat) };
    size_t BT = (size_t)B * T;
    int L = s->cfg.L;

    if (B < 1 || T < 1)
        return errf(err, "--batch/--seq: must be positive (got %d x %d)", B, T);
    free_plan(m);
    s->y = calloc(2 * (size_t)L, sizeof *s->y); /* y, then yd */
    if (!s->y)
        return errf(err, "out of memory");
    s->yd = s->y + L;
    carve_all(s, &a, &st, B, T);
    /* each layer's saved state for backward, as the backend sizes it */
    s->work_stride = 0;
    for (int l = 0; l < L; l++) {
        size_t wb = be->rnn_work_bytes(be, s->cell, B, T, l ? s->cfg.H : s->cfg.C, s->cfg.H);
        wb = (wb + 255) / 256 * 256;
        if (wb > s->work_stride)
            s->work_stride = wb;
    }
    s->act_buf = be->alloc(be, a.used * a.esize);
    s->stat_buf = be->alloc(be, st.used * st.esize);
    s->int_buf = be->alloc(be, 3 * BT * sizeof(int32_t));
    s->work_buf = be->alloc(be, s->work_stride * (size_t)L + 1);
    s->host_reset = malloc(BT * sizeof *s->host_reset);
    s->host_losses = malloc(BT * sizeof *s->host_losses);
    if (!s->act_buf || !s->stat_buf || !s->int_buf || !s->work_buf || !s->host_reset ||
        !s->host_losses) {
        double gib = ((double)a.used * a.esize + (double)st.used * st.esize +
                      (double)s->work_stride * L) / (1 << 30);
        free_plan(m);
        return errf(err, "--batch/--seq: activations for %d x %d need %.2f GiB on %s, "
                         "which could not be allocated", B, T, gib, be->name);
    }
    a.base = s->act_buf;
    st.base = s->stat_buf;
    a.used = st.used = 0;
    carve_all(s, &a, &st, B, T);
    s->tokens = s->int_buf;
    s->targets = s->tokens + BT;
    s->reset = s->targets + BT;
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

/* The carried state of the source whose resets buffer is key: its slot, or
 * the least recently used one, zeroed, for a source not seen before. */
static rnn_slot *slot_of(model *m, const void *key)
{
    rnn_state *s = m->priv;
    backend *be = m->be;
    rnn_slot *lru = &s->slots[0];
    size_t LBH = (size_t)s->cfg.L * m->B * s->cfg.H;
    s->clock++;
    for (int k = 0; k < RNN_SLOTS; k++) {
        if (s->slots[k].key == key) {
            s->slots[k].used = s->clock;
            return &s->slots[k];
        }
        if (s->slots[k].used < lru->used)
            lru = &s->slots[k];
    }
    lru->key = key;
    lru->used = s->clock;
    lru->cur = 0;
    be->fill(be, lru->h[0], be->act, 0.0, LBH);
    if (lru->c[0])
        be->fill(be, lru->c[0], be->act, 0.0, LBH);
    return lru;
}

/* The carried state of the source key as host floats: h [L,B,H], then (LSTM)
 * c [L,B,H]. get leaves the LRU order alone and gives zeros for a source
 * without a slot; set takes (or makes) its slot. */
static size_t rnn_carried_count(const model *m)
{
    const rnn_state *s = m->priv;
    size_t LBH = (size_t)s->cfg.L * m->B * s->cfg.H;
    return s->cell == RNN_CELL_LSTM ? 2 * LBH : LBH;
}

static void rnn_get_carried(model *m, const void *key, float *out)
{
    rnn_state *s = m->priv;
    backend *be = m->be;
    size_t LBH = (size_t)s->cfg.L * m->B * s->cfg.H, n = rnn_carried_count(m);
    for (int k = 0; k < RNN_SLOTS; k++) {
        rnn_slot *sl = &s->slots[k];
        if (!key || sl->key != key)
            continue;
        be->download(be, out, DT_F32, sl->h[sl->cur], be->act, LBH);
        if (sl->c[sl->cur])
            be->download(be, out + LBH, DT_F32, sl->c[sl->cur], be->act, LBH);
        return;
    }
    memset(out, 0, n * sizeof *out);
}

static void rnn_set_carried(model *m, const void *key, const float *in)
{
    rnn_state *s = m->priv;
    backend *be = m->be;
    size_t LBH = (size_t)s->cfg.L * m->B * s->cfg.H;
    rnn_slot *sl = slot_of(m, key);
    be->upload(be, sl->h[sl->cur], be->act, in, DT_F32, LBH);
    if (sl->c[sl->cur])
        be->upload(be, sl->c[sl->cur], be->act, in + LBH, DT_F32, LBH);
}

/* Dropout (Zaremba et al. 2014: on the non-recurrent connections only, so
 * the carried state is never dropped): the embeddings' output, each layer's
 * output before the next layer, the last layer's before the decoder. The
 * dropout site of the connection out of layer l. */
static unsigned out_site(const rnn_config *c, int l)
{
    return l == c->L - 1 ? DROPOUT_SITE_HEAD : DROPOUT_SITE_BLOCK(l, 0);
}

/* What reads layer l's output reads: y[l], or its dropped copy yd[l]. */
static void *layer_out(const model *m, int l)
{
    const rnn_state *s = m->priv;
    return model_dropped(m, s->yd[l], s->y[l]);
}

static double rnn_forward(model *m, const model_batch *b, float grad_scale)
{
    rnn_state *s = m->priv;
    backend *be = m->be;
    const rnn_config *c = &s->cfg;
    int B = m->B, T = m->T, H = c->H, BT = B * T, lstm = s->cell == RNN_CELL_LSTM;
    size_t BH = (size_t)B * H;
    dtype t = be->act;
    void *hT = NULL, *cT = NULL;
    int eot = eot_of(c);

    range(be, "forward", 1);
    s->have_grad = 0;
    /* where the state restarts: a row's stream start, a document's start */
    for (int r = 0; r < B; r++)
        for (int k = 0; k < T; k++) {
            size_t i = (size_t)r * T + k;
            s->host_reset[i] = (k == 0 && b->resets && b->resets[r]) ||
                               (eot >= 0 && b->tokens[i] == eot);
        }
    s->h0 = s->c0 = NULL;
    if (b->resets) {
        rnn_slot *sl = slot_of(m, b->resets);
        s->h0 = sl->h[sl->cur];
        s->c0 = sl->c[sl->cur];
        hT = sl->h[!sl->cur];
        cT = sl->c[!sl->cur];
        sl->cur = !sl->cur; /* what this forward writes is the next one's start */
    }
    be->upload(be, s->tokens, DT_I32, b->tokens, DT_I32, (size_t)BT);
    be->upload(be, s->reset, DT_I32, s->host_reset, DT_I32, (size_t)BT);
    be->embedding_forward(be, s->emb, s->tokens, s->wte, BT, c->C, 0);
    model_dropout(m, s->emb, (size_t)BT * c->C, DROPOUT_SITE_EMBED);
    for (int l = 0; l < c->L; l++) {
        const rnn_layer_ptrs *p = &s->lp[l];
        size_t o = (size_t)l * BH;
        be->rnn_forward(be, s->cell, s->y[l], buf_at(hT, o, t), lstm ? buf_at(cT, o, t) : NULL,
                        (char *)s->work_buf + (size_t)l * s->work_stride,
                        l ? layer_out(m, l - 1) : s->emb, buf_at((void *)s->h0, o, t),
                        lstm ? buf_at((void *)s->c0, o, t) : NULL, s->reset, p->wih, p->whh,
                        p->bih, p->bhh, B, T, l ? H : c->C, H);
        model_dropout_to(m, s->yd[l], s->y[l], BH * T, out_site(c, l));
    }
    be->matmul_forward(be, s->logits, layer_out(m, c->L - 1), s->dec_w, s->dec_b, BT, H, s->Vp);
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

/* Truncated BPTT: the carried state entered as a constant, so the gradient
 * stops at the micro-batch's first step (no dh0, dc0). */
static void rnn_backward(model *m)
{
    rnn_state *s = m->priv;
    backend *be = m->be;
    const rnn_config *c = &s->cfg;
    int B = m->B, T = m->T, H = c->H, BT = B * T, lstm = s->cell == RNN_CELL_LSTM;
    size_t BH = (size_t)B * H;
    dtype t = be->act;
    void *dy = s->d1, *dx = s->d2;

    if (!s->have_grad)
        return;
    range(be, "backward", 1);
    be->matmul_backward(be, dy, s->ddec_w, s->ddec_b, s->logits, layer_out(m, c->L - 1),
                        s->dec_w, BT, H, s->Vp, GRAD_SET);
    model_views_ready(m, m->nviews - 2, m->nviews - 1);
    for (int l = c->L - 1; l >= 0; l--) {
        const rnn_layer_ptrs *p = &s->lp[l], *g = &s->lg[l];
        int D = l ? H : c->C;
        size_t o = (size_t)l * BH;
        model_dropout(m, dy, BH * T, out_site(c, l)); /* d yd[l] -> d y[l] */
        be->fill(be, dx, t, 0.0, (size_t)BT * D);
        be->rnn_backward(be, s->cell, dx, NULL, NULL, g->wih, g->whh, g->bih, g->bhh, dy, NULL,
                         NULL, (char *)s->work_buf + (size_t)l * s->work_stride,
                         l ? layer_out(m, l - 1) : s->emb, s->y[l], buf_at((void *)s->h0, o, t),
                         lstm ? buf_at((void *)s->c0, o, t) : NULL, s->reset, p->wih, p->whh,
                         B, T, D, H);
        model_views_ready(m, VIEW_LAYER(l), VIEW_LAYER(l) + 3);
        void *tmp = dy;
        dy = dx;
        dx = tmp;
    }
    model_dropout(m, dy, (size_t)BT * c->C, DROPOUT_SITE_EMBED);
    be->embedding_backward(be, s->dwte, dy, s->tokens, BT, c->C);
    model_views_ready(m, 0, 0);
    s->have_grad = 0;
    range(be, "backward", 0);
}

/* ---- decoding: the state carries the whole history, so each new token is
 * one step of every layer, whatever the position (no window, no cache to
 * outgrow) ---- */

static void decode_free(model *m)
{
    rnn_state *s = m->priv;
    backend *be = m->be;
    if (s->dec.act) be->free(be, s->dec.act);
    if (s->dec.work) be->free(be, s->dec.work);
    if (s->dec.ids) be->free(be, s->dec.ids);
    free(s->dec.y);
    memset(&s->dec, 0, sizeof s->dec);
}

static int rnn_decode_plan(model *m, int maxlen, char *err)
{
    rnn_state *s = m->priv;
    backend *be = m->be;
    const rnn_config *c = &s->cfg;
    int L = c->L, lstm = s->cell == RNN_CELL_LSTM;
    size_t H = (size_t)c->H, C = (size_t)c->C, es = dtype_size(be->act);
    (void)maxlen; /* any length: the state is all the model keeps */
    decode_free(m);
    s->dec.work_stride = 0;
    for (int l = 0; l < L; l++) {
        size_t wb = be->rnn_work_bytes(be, s->cell, 1, 1, l ? c->H : c->C, c->H);
        wb = (wb + 255) / 256 * 256;
        if (wb > s->dec.work_stride)
            s->dec.work_stride = wb;
    }
    s->dec.y = calloc((size_t)L, sizeof *s->dec.y);
    carver a = { NULL, 0, es };
    /* the first pass counts (base NULL), the second assigns */
    for (int pass = 0; pass < 2 && s->dec.y; pass++) {
        if (pass) {
            if (!(s->dec.act = be->alloc(be, a.used * es)))
                break;
            a.base = s->dec.act;
            a.used = 0;
        }
        s->dec.emb = carve(&a, C);
        for (int l = 0; l < L; l++)
            s->dec.y[l] = carve(&a, H);
        for (int j = 0; j < 2; j++) {
            s->dec.h[j] = carve(&a, (size_t)L * H);
            s->dec.c[j] = lstm ? carve(&a, (size_t)L * H) : NULL;
        }
        s->dec.logits = carve(&a, (size_t)s->Vp);
    }
    s->dec.work = s->dec.act ? be->alloc(be, s->dec.work_stride * L + 1) : NULL;
    s->dec.ids = s->dec.work ? be->alloc(be, 2 * sizeof(int32_t)) : NULL;
    if (!s->dec.ids) {
        decode_free(m);
        return errf(err, "sampling: out of memory on %s", be->name);
    }
    s->dec.cur = 0;
    return 0;
}

static void rnn_decode_step(model *m, int32_t tok, int pos, float *logits)
{
    rnn_state *s = m->priv;
    backend *be = m->be;
    const rnn_config *c = &s->cfg;
    int H = c->H, lstm = s->cell == RNN_CELL_LSTM, cur = s->dec.cur;
    dtype t = be->act;
    int32_t ids[2] = { tok, eot_of(c) >= 0 && tok == eot_of(c) };

    if (pos == 0) { /* a new sequence */
        be->fill(be, s->dec.h[cur], t, 0.0, (size_t)c->L * H);
        if (lstm)
            be->fill(be, s->dec.c[cur], t, 0.0, (size_t)c->L * H);
    }
    /* two uploads: the CUDA backend keeps a host copy of each, and finds the
     * reset mask's by its address */
    be->upload(be, s->dec.ids, DT_I32, ids, DT_I32, 1);
    be->upload(be, s->dec.ids + 1, DT_I32, ids + 1, DT_I32, 1);
    be->embedding_forward(be, s->dec.emb, s->dec.ids, s->wte, 1, c->C, 0);
    for (int l = 0; l < c->L; l++) {
        const rnn_layer_ptrs *p = &s->lp[l];
        size_t o = (size_t)l * H;
        be->rnn_forward(be, s->cell, s->dec.y[l], buf_at(s->dec.h[!cur], o, t),
                        lstm ? buf_at(s->dec.c[!cur], o, t) : NULL,
                        (char *)s->dec.work + (size_t)l * s->dec.work_stride,
                        l ? s->dec.y[l - 1] : s->dec.emb, buf_at(s->dec.h[cur], o, t),
                        lstm ? buf_at(s->dec.c[cur], o, t) : NULL, s->dec.ids + 1, p->wih,
                        p->whh, p->bih, p->bhh, 1, 1, l ? H : c->C, H);
    }
    s->dec.cur = !cur;
    be->matmul_forward(be, s->dec.logits, s->dec.y[c->L - 1], s->dec_w, s->dec_b, 1, H, s->Vp);
    be->download(be, logits, DT_F32, s->dec.logits, t, (size_t)c->V);
}

static const double *rnn_position_losses(model *m)
{
    return ((rnn_state *)m->priv)->host_losses;
}

static void rnn_logits(model *m, int b, int t, float *out)
{
    rnn_state *s = m->priv;
    size_t row = ((size_t)b * m->T + t) * s->Vp;
    m->be->download(m->be, out, DT_F32, buf_at(s->logits, row, m->be->act), m->be->act,
                    (size_t)s->cfg.V);
}

static void rnn_destroy(model *m)
{
    rnn_state *s;
    if (!m)
        return;
    s = m->priv;
    if (s) {
        free_plan(m);
        decode_free(m);
        free(s->lp);
        free(s->lg);
    }
    model_delete(m);
}

static model *create_cell(int cell, const model_family *fam, backend *be, const int *cv,
                          char *err)
{
    const rnn_config *c = (const rnn_config *)cv;
    model *m = model_new(be, fam, (const int *)cv, sizeof(rnn_state), err);
    if (!m)
        return NULL;
    rnn_state *s = m->priv;
    if (!be->rnn_forward) {
        model_delete(m);
        errf(err, "--device: the %s backend has no recurrent op", be->name);
        return NULL;
    }
    m->V = c->V;
    m->maxT = 1 << 20; /* any BPTT length */
    m->plan = rnn_plan;
    m->forward = rnn_forward;
    m->backward = rnn_backward;
    m->logits = rnn_logits;
    m->position_losses = rnn_position_losses;
    m->decode_plan = rnn_decode_plan;
    m->decode_step = rnn_decode_step;
    m->carried_count = rnn_carried_count;
    m->get_carried = rnn_get_carried;
    m->set_carried = rnn_set_carried;
    m->destroy = rnn_destroy;
    m->has_dropout = "the embeddings' output and each layer's output (never the carried state)";
    s->cfg = *c;
    s->cell = cell;
    s->Vp = rnn_padded_vocab(c->V);
    m->nparams = layout_cell(cell, cv, &m->views, &m->nviews);
    m->nparams_real = real_params_cell(cell, cv);
    s->lp = calloc((size_t)c->L, sizeof *s->lp);
    s->lg = calloc((size_t)c->L, sizeof *s->lg);
    if (!m->views || !s->lp || !s->lg) {
        errf(err, "out of memory");
        goto fail;
    }
    if (model_alloc(m, err))
        goto fail;
    resolve(m);
    return m;
fail:
    rnn_destroy(m);
    return NULL;
}

static model *rnn_create(backend *be, const int *cv, char *err)
{
    return create_cell(RNN_CELL_TANH, &rnn_family, be, cv, err);
}

static model *lstm_create(backend *be, const int *cv, char *err)
{
    return create_cell(RNN_CELL_LSTM, &lstm_family, be, cv, err);
}

/* ---- batches: B parallel streams per rank ----
 *
 * The token stream (the shards concatenated) is cut into B*world streams of
 * K chunks of T tokens (K = floor((tokens - 1) / (T * B * world)); the
 * remainder is not read); rank r owns streams r*B .. r*B+B-1, and row b of
 * its micro-batch j holds chunk j mod K of stream r*B+b, targets one token
 * ahead. So row b of micro-batch j+1 continues row b of micro-batch j, and
 * every K micro-batches all streams start again from their beginnings (an
 * epoch), marked in resets. Training order is not shuffled: the streams'
 * order is the point. A seek (validation) also resets every row of the next
 * micro-batch, unless keep_state follows it: a resume whose checkpoint
 * carried the state (train.c) continues the streams from it. */

typedef struct {
    batch_source src;
    loader *ld;
    int B, T, rank;
    uint64_t K, pos;
    int fresh;
    int32_t *tokens, *targets;
    uint8_t *resets;
} stream_source;

static int stream_next(batch_source *bs, char *err)
{
    stream_source *s = (stream_source *)bs;
    uint64_t k = s->pos % s->K;
    for (int b = 0; b < s->B; b++) {
        uint64_t stream = (uint64_t)s->rank * s->B + b;
        loader_seek(s->ld, stream * s->K + k);
        if (loader_next(s->ld, s->tokens + (size_t)b * s->T, s->targets + (size_t)b * s->T, err))
            return -1;
        s->resets[b] = k == 0 || s->fresh;
    }
    s->fresh = 0;
    s->pos++;
    return 0;
}

static uint64_t stream_position(const batch_source *bs)
{
    return ((const stream_source *)bs)->pos;
}

static void stream_seek(batch_source *bs, uint64_t pos)
{
    stream_source *s = (stream_source *)bs;
    s->pos = pos;
    s->fresh = 1;
}

static void stream_keep_state(batch_source *bs)
{
    ((stream_source *)bs)->fresh = 0;
}

static uint64_t stream_epoch_batches(const batch_source *bs)
{
    return ((const stream_source *)bs)->K;
}

static void stream_close(batch_source *bs)
{
    stream_source *s = (stream_source *)bs;
    if (!s)
        return;
    if (s->ld)
        loader_close(s->ld);
    free(s->tokens);
    free(s->resets);
    free(s);
}

static batch_source *rnn_open_data(const model *m, const data_spec *spec, char *err)
{
    if (spec->world < 1 || spec->rank < 0 || spec->rank >= spec->world) {
        errf(err, "rank %d of world %d", spec->rank, spec->world);
        return NULL;
    }
    stream_source *s = calloc(1, sizeof *s);
    size_t BT = (size_t)spec->B * spec->T;
    if (!s || !(s->tokens = malloc(2 * BT * sizeof(int32_t))) ||
        !(s->resets = malloc((size_t)spec->B))) {
        if (s)
            free(s->tokens);
        free(s);
        errf(err, "%s: out of memory", spec->path);
        return NULL;
    }
    s->targets = s->tokens + BT;
    /* one chunk of T (+1) tokens per read: chunk i starts at token i*T */
    s->ld = loader_open(spec->path, 1, spec->T, 0, 1, 0, 0, m->V, err);
    if (!s->ld) {
        stream_close(&s->src);
        return NULL;
    }
    uint64_t tokens = loader_tokens(s->ld), streams = (uint64_t)spec->B * spec->world;
    s->K = tokens > 0 ? (tokens - 1) / spec->T / streams : 0;
    if (s->K < 1) {
        errf(err, "%s: %llu tokens are too few for %llu streams (--batch %d x %d ranks) of "
                  "--seq %d tokens", spec->path, (unsigned long long)tokens,
             (unsigned long long)streams, spec->B, spec->world, spec->T);
        stream_close(&s->src);
        return NULL;
    }
    s->B = spec->B;
    s->T = spec->T;
    s->rank = spec->rank;
    s->fresh = 1;
    s->src.batch.tokens = s->tokens;
    s->src.batch.targets = s->targets;
    s->src.batch.resets = s->resets;
    s->src.next = stream_next;
    s->src.position = stream_position;
    s->src.seek = stream_seek;
    s->src.keep_state = stream_keep_state;
    s->src.epoch_batches = stream_epoch_batches;
    s->src.close = stream_close;
    return &s->src;
}

const model_family rnn_family = {
    .name = "rnn",
    .summary = "Elman recurrent LM: embedding, tanh recurrent layers, softmax; truncated "
               "BPTT over --seq with the state carried across micro-batches",
    .presets = RNN_PRESETS,
    .generative = 1,
    .fields = rnn_fields,
    .nfields = (int)(sizeof rnn_fields / sizeof rnn_fields[0]),
    .preset = rnn_preset,
    .check = rnn_check,
    .layout = rnn_layout,
    .real_params = rnn_real_params,
    .init = rnn_init,
    .create = rnn_create,
    .describe = rnn_describe,
    .open_data = rnn_open_data,
};

const model_family lstm_family = {
    .name = "lstm",
    .summary = "LSTM recurrent LM: embedding, LSTM layers, softmax; truncated BPTT over "
               "--seq with the state carried across micro-batches",
    .presets = LSTM_PRESETS,
    .generative = 1,
    .fields = rnn_fields,
    .nfields = (int)(sizeof rnn_fields / sizeof rnn_fields[0]),
    .preset = lstm_preset,
    .check = rnn_check,
    .layout = lstm_layout,
    .real_params = lstm_real_params,
    .init = lstm_init,
    .create = lstm_create,
    .describe = lstm_describe,
    .open_data = rnn_open_data,
};
