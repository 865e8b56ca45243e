/* model.h: what the training loop sees of any model family. A model owns one
 * contiguous parameter buffer described by named views, gradients and AdamW
 * state that mirror it, and activations planned once per (B, T). Families
 * (one file each under host/models/) fill in the function pointers. */
#ifndef ANATOMY_MODEL_H
#define ANATOMY_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "../kernels/ops.h"

#define MODEL_MAXDIM 4

typedef struct {
    char name[64];          /* Hugging Face style: "h.0.attn.c_attn.weight" */
    int ndim, shape[MODEL_MAXDIM];
    size_t offset, count;   /* in elements of the parameter buffer */
    int decay;              /* weight decay applies (2+ dims) */
} param_view;

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
    int B, T;               /* planned micro-batch (0 before plan) */
    int recompute;          /* set before plan: keep no per-layer copy of activations that
                               are cheap to recompute (layernorm and GELU outputs); the
                               backward pass recomputes them (same values, less memory) */
    void *priv;             /* the family's own state */
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
    /* Runs forward on host int32 inputs [B,T]. With targets (host int32 [B,T],
     * -1 = ignore) returns the mean loss over the non-ignored positions and,
     * when loss_scale > 0, leaves dlogits = loss_scale * dloss/dlogits ready for
     * backward. Without targets returns 0 and leaves the logits. */
    double (*forward)(model *m, const int32_t *inputs, const int32_t *targets, float loss_scale);
    /* Accumulates parameter gradients of the last forward into m->grads. */
    void (*backward)(model *m);
    /* Copies the V logits at (b, t) of the last target-less forward to host floats. */
    void (*logits)(model *m, int b, int t, float *out);
    void (*destroy)(model *m);
};

/* Shared helpers (host/model.c). */
/* Allocates params, grads, master, m, v for m->nparams elements and builds
 * m->segs from m->views; zeroes grads, m and v. */
int model_alloc(model *m, char *err);
void model_free_buffers(model *m);
void model_zero_grad(model *m);
/* Host fp32 copy of all parameters [nparams] <-> device (and master). */
void model_set_params(model *m, const float *host);
void model_get_params(model *m, float *host);
/* AdamW moments as host fp32 [nparams] each. */
void model_set_moments(model *m, const float *mh, const float *vh);
void model_get_moments(model *m, float *mh, float *vh);
const param_view *model_find_view(const model *m, const char *name);

#endif
