/* model.h: what the training loop sees of any model family. A model owns one
 * contiguous parameter buffer described by named views, gradients and AdamW
 * state that mirror it, and activations planned once per (B, T). Families
 * (one file each under host/models/) fill in the function pointers. */
#ifndef ANATOMY_MODEL_H
#define ANATOMY_MODEL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "../kernels/ops.h"

#define MODEL_MAXDIM 4

typedef struct {
    char name[64];          /* Hugging Face style: "h.0.attn.c_attn.weight" */
    int ndim, shape[MODEL_MAXDIM];
    size_t offset, count;   /* in elements of the parameter buffer */
    int decay;              /* weight decay applies (2+ dims) */
} param_view;

/* One micro-batch on the host, as a family's batch source makes it. Each
 * family reads the members it needs; the rest are NULL. */
typedef struct {
    const int32_t *tokens;   /* [B,T] token ids (language models, BERT) */
    const int32_t *targets;  /* class targets, -1 = ignore: [B,T] per position (next
                              * token, masked token) or [B] per sequence (ViT);
                              * NULL: no loss (forward only) */
    const int32_t *segments; /* [B,T] segment ids (BERT: 0 for A, 1 for B) */
    const int32_t *labels;   /* [B] sequence labels (BERT next-sentence: 1 when B
                              * follows A in the text, 0 when random), -1 = none */
    const float *x;          /* real inputs: images [B, channels*H*W] (channel-major,
                              * values as the family's source scales them), series
                              * windows [B, channels, lookback] */
    const float *y;          /* real targets: series forecasts [B, channels, horizon] */
    const uint8_t *resets;   /* [B] 1: row b starts a new stream (recurrent models
                              * reset their carried state) */
} model_batch;

#define MODEL_MAXMETRICS 4
#define MODEL_MAXLOSS 2

typedef struct model model;
struct model {
    const char *family;     /* "gpt2" */
    backend *be;
    int V;                  /* classes the loss sees (vocabulary size) */
    int maxT;               /* longest sequence the model accepts */
    param_view *views;
    int nviews;
    size_t nparams;         /* elements per buffer, padding included */
    size_t nparams_real;    /* published parameter count, padding excluded */
    param_segment *segs;    /* views merged into runs of equal decay, for AdamW */
    int nsegs;
    /* device buffers: params/grads in be->act; master (NULL when act == opt), m, v in be->opt */
    void *params, *grads, *master, *m, *v;
    /* The optimizer state (master, m, v) holds parameter elements [state_lo,
     * state_hi): all of them after model_alloc, this rank's shard after
     * model_shard_state (ZeRO stage 1). */
    size_t state_lo, state_hi;
    /* Model state that is not trained (batchnorm's running statistics; PyTorch's
     * buffers): nstate elements in their own device buffer `state` (stat dtype:
     * fp32 on CUDA), described by state_views (offsets into it), outside the
     * parameter buffer so that no optimizer step writes it. Checkpoints save it
     * under the views' names beside the parameters. nstate 0: none (NULL). */
    param_view *state_views;
    int nstate_views;
    size_t nstate;
    void *state;
    /* Device bytes each buffer took as the backend's memory report saw them
     * (be->mem_info; all 0 without it): the memory plan's check. The state
     * counts with the parameters. */
    size_t used_params, used_grads, used_master, used_moments;
    int B, T;               /* planned micro-batch (0 before plan) */
    int recompute;          /* set before plan: keep no per-layer copy of activations that
                               are cheap to recompute (layernorm and GELU outputs); the
                               backward pass recomputes them (same values, less memory) */
    void *priv;             /* the family's own state */
    /* Dropout, set by the trainer for each training forward and reset to 0
     * for everything else (validation, evaluation, sampling): the drop
     * probability and the seed of this micro-batch's masks, drawn from the
     * run's seed and the global micro-batch index, so a resumed run drops
     * what an uninterrupted one would. Families apply it through
     * model_dropout at the sites they list in has_dropout; the backward reads
     * the same two fields, so they must not change between the two. */
    float dropout;
    uint64_t dropout_seed;
    /* 1 during a training micro-batch's forward and backward, set and reset
     * by the trainer with dropout; 0 for every other forward (validation,
     * evaluation, forecasts, sampling). Batchnorm reads it: a training forward
     * normalises with the batch's statistics and updates the running ones, any
     * other with the running statistics. */
    int training;
    const char *has_dropout; /* where the family drops, for --help and info (NULL:
                                nowhere; the trainer refuses --dropout) */
    /* Label smoothing of the class targets, set by the trainer for each
     * training forward like dropout (0 for everything else); only families
     * with has_label_smoothing read it (the trainer refuses it for others). */
    float label_smoothing;
    int has_label_smoothing;
    /* The regression loss of every forward with targets, training and
     * validation alike (ops.h regression_loss: LOSS_MSE, LOSS_MAE or
     * LOSS_HUBER with huber_delta > 0), set by the command that builds the
     * model (train: --loss, --huber-delta; eval: the checkpoint's); only
     * families with has_loss_kind read it (the trainer refuses it for
     * others). Starts as LOSS_MSE, delta 1. */
    int loss_kind;
    double huber_delta;
    int has_loss_kind;
    /* Optional, set by the trainer: backward calls it as soon as the
     * gradients [offset, offset+count) of the parameter buffer are final for
     * this micro-batch (a layer's, while backward goes on below it), so that
     * their all-reduce can overlap the rest of backward. Ranges come in
     * decreasing offset order, never overlap, and together cover the buffer
     * by the end of backward. NULL: not called. */
    void (*grads_ready)(void *ctx, size_t offset, size_t count);
    void *grads_ready_ctx;

    /* Plans activations for micro-batches of B x T (frees an earlier plan). */
    int (*plan)(model *m, int B, int T, char *err);
    /* Runs forward on a host micro-batch of the planned shape. With targets
     * returns the batch's loss (the mean over its non-ignored targets; 0 when
     * there are none) and, when grad_scale > 0, prepares backward to produce
     * the gradient of grad_scale * loss. Without targets returns 0 and leaves
     * the outputs (logits) for `logits`. */
    double (*forward)(model *m, const model_batch *b, float grad_scale);
    /* The last forward's loss (with targets) as parts: loss = sum over k of
     * loss_sum[k] / loss_count[k], a part being the summed losses of the
     * items it scores and their count (tokens, masked tokens, examples,
     * series elements); BERT adds a next-sentence part. Set by the forward
     * through model_loss. Evaluation over several micro-batches adds sums and
     * counts (model_loss_add), so its loss is the mean over every scored
     * item, as PyTorch's over the whole set, a last partial batch included. */
    int nloss;
    double loss_sum[MODEL_MAXLOSS], loss_count[MODEL_MAXLOSS];
    /* Accumulates parameter gradients of the last forward into m->grads. */
    void (*backward)(model *m);
    /* Copies the V logits at (b, t) of the last forward to host floats (t = 0
     * for per-sequence classifiers). NULL for models without class scores. */
    void (*logits)(model *m, int b, int t, float *out);
    /* Optional: the host copy of the per-position losses [B*T] of the last
     * forward with targets (0 at ignored positions), valid until the next
     * forward. Language models have it; HellaSwag scoring needs it. */
    const double *(*position_losses)(model *m);
    /* Optional (generative families): incremental decoding of one sequence
     * with a cache of every layer's keys and values, so that each new token
     * costs O(position) instead of a forward over the whole context.
     * decode_plan reserves the cache for up to maxlen positions (beside, and
     * independent of, the training plan); decode_step runs token tok at
     * position pos (pos = 0 starts a new sequence; otherwise positions
     * 0..pos-1 ran since) and copies its V logits to out. */
    int (*decode_plan)(model *m, int maxlen, char *err);
    void (*decode_step)(model *m, int32_t tok, int pos, float *logits);
    /* Optional: evaluation figures of the last forward with targets, added
     * into sums[k] and counts[k] for k < nmetrics (e.g. "accuracy": correct
     * predictions and predictions; "mae": absolute errors and elements). */
    void (*metrics)(model *m, const model_batch *b, double *sums, double *counts);
    int nmetrics;
    const char *metric_names[MODEL_MAXMETRICS];
    /* Optional (forecasters): the forecast of the last micro-batch whose
     * metrics were taken, as CSV lines "row,step,..." (header: forecast_header);
     * -1 when there is none. `eval --forecast FILE` writes them. */
    int (*write_forecast)(model *m, FILE *out);
    const char *forecast_header;
    /* Optional (recurrent families): the state that the streams read through
     * one batch source carry from a micro-batch to the next (rnn.c keys it by
     * the source's batch.resets buffer), as carried_count(m) host floats for
     * the planned batch (0: none). Checkpoints save the training source's, so
     * that a resumed run continues its streams where they were.
     * get_carried copies it out (zeros for a source not seen yet);
     * set_carried replaces it, for that source's next forward. */
    size_t (*carried_count)(const model *m);
    void (*get_carried)(model *m, const void *key, float *out);
    void (*set_carried)(model *m, const void *key, const float *in);
    /* The config the model was built with (its family's fields, in order). */
    const struct model_family *fam;
    int config[16];
    void (*destroy)(model *m);
};

/* Shared helpers (host/model.c). */
/* A model of family fam with its config (fam's fields, copied) and a zeroed
 * family state of priv_size bytes in m->priv; NULL with err when out of
 * memory. The family fills in the rest. */
model *model_new(backend *be, const struct model_family *fam, const int *config,
                 size_t priv_size, char *err);
/* Frees what model_new and model_alloc made: the buffers, views, segments,
 * m->priv (whose own contents the family has freed) and m. NULL is fine. */
void model_delete(model *m);
/* Allocates params, grads, master, m, v for m->nparams elements and builds
 * m->segs from m->views; zeroes grads, m and v. */
int model_alloc(model *m, char *err);
void model_free_buffers(model *m);
void model_zero_grad(model *m);
/* Keeps only elements [lo, hi) of the optimizer state (master, m, v): new
 * buffers of hi - lo elements get that part of the old ones, which are
 * freed (ZeRO stage 1: each rank's shard). -1 with err when out of memory
 * (the model is then unchanged). */
int model_shard_state(model *m, size_t lo, size_t hi, char *err);
/* Host fp32 copy of all parameters [nparams] <-> device (and master). With a
 * sharded master, get reads the shard from it and the rest from params (the
 * act-typed copy); set writes only the shard of master. */
void model_set_params(model *m, const float *host);
void model_get_params(model *m, float *host);
/* AdamW moments as host fp32 [nparams] each; only [state_lo, state_hi) is
 * read or written (the rest of the host arrays is left alone). */
void model_set_moments(model *m, const float *mh, const float *vh);
void model_get_moments(model *m, float *mh, float *vh);
/* The state (m->state, nstate elements) as host fp32 <-> device. */
void model_set_state(model *m, const float *host);
void model_get_state(model *m, float *host);
const param_view *model_find_view(const model *m, const char *name);
/* The names of the regression losses ("mse", "mae", "huber"), for options
 * and checkpoint metadata: model_loss_kind returns the kind of a name, or
 * -1; model_loss_name the name of a kind. MODEL_LOSS_NAMES lists them. */
#define MODEL_LOSS_NAMES "mse, mae or huber"
int model_loss_kind(const char *name);
const char *model_loss_name(int kind);

/* For a family's forward: records the loss's first part (sum of the scored
 * items' losses, their count) and returns its mean (0 with no items);
 * model_loss_part adds a further part. */
double model_loss(model *m, double sum, double count);
void model_loss_part(model *m, double sum, double count);
/* Evaluation: acc[2 * MODEL_MAXLOSS] holds each part's summed losses, then
 * counts, over micro-batches; add the last forward's; the mean of them all. */
void model_loss_add(const model *m, double *acc);
double model_loss_mean(const double *acc);

/* Appends a view (1-D [d0] or 2-D [d0, d1], ndim 1 or 2) at buffer offset
 * *off and advances it; 2-D views decay. Families build layouts with it. */
void model_add_view(param_view *v, int *n, size_t *off, const char *name, int ndim, int d0,
                    int d1);
/* Dropout at a site of the model, in place on n elements of x when
 * m->dropout > 0 (otherwise nothing). Each site (a small number the family
 * chooses, e.g. DROPOUT_SITE_BLOCK for the stack's) has its own mask, a
 * function of (m->dropout_seed, site). The backward is the same call on the
 * gradient of x (ops.h: dropout is its own backward). model_dropout_to
 * writes the masked copy into out and returns out, or, with dropout off,
 * writes nothing and returns x: either way the result is the masked x. */
void model_dropout(model *m, void *x, size_t n, unsigned site);
const void *model_dropout_to(model *m, void *out, const void *x, size_t n, unsigned site);
/* Where model_dropout_to(m, out, x, ...) left the masked x: out, or x itself
 * with dropout off (for a backward that reads what the forward produced). */
static inline void *model_dropped(const model *m, void *out, void *x)
{
    return m->dropout > 0 ? out : x;
}
/* Sites: the embeddings' output, a family's head, and two per transformer
 * block (after the attention projection, k = 0, and after the MLP, k = 1). */
#define DROPOUT_SITE_EMBED 0u
#define DROPOUT_SITE_HEAD 1u
#define DROPOUT_SITE_BLOCK(l, k) (16u + 2u * (unsigned)(l) + (unsigned)(k))
/* Calls m->grads_ready (when set) for the buffer range of views first..last. */
void model_views_ready(model *m, int first, int last);
/* Activation planning: carves named tensors out of one buffer. The first
 * pass (base NULL) only counts elements; the second, over an allocation of
 * used * esize bytes, assigns addresses in the same order. */
typedef struct { char *base; size_t used; size_t esize; } carver;
void *carve(carver *cv, size_t n);
/* The device address of a view in a parameter-sized buffer (params or grads). */
void *model_view_at(const model *m, void *base, int view);

#endif
