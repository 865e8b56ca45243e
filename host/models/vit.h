/* vit.h: the Vision Transformer family (Dosovitskiy et al. 2021): an image
 * cut into P x P patches is a sequence of N = (image/P)^2 tokens, each a
 * linear map of its ch*P*P pixel values, led by a learned [CLS] token; the
 * shared pre-LN transformer stack reads all N+1 positions at once
 * (bidirectional attention) and a linear head on [CLS] (or on the mean of
 * the patch positions) scores the classes. */
#ifndef ANATOMY_VIT_H
#define ANATOMY_VIT_H

#include "../family.h"
#include "../model.h"

typedef struct {
    int image;    /* height = width in pixels */
    int channels; /* 1 (grey) or 3 (RGB) */
    int patch;    /* P: patch side in pixels, divides image */
    int classes;
    int L, NH, C; /* blocks, heads, width */
    int nobias;   /* 1: no biases: patch embedding, stack and head weights only */
    int pool;     /* VIT_POOL_CLS or VIT_POOL_MEAN: what the class head reads */
} vit_config;

/* vit_config.pool: the head reads the [CLS] row of the final layernorm's
 * output, or the mean of its N patch rows (global average pooling). The
 * [CLS] token stays in the sequence either way, so the parameters are the
 * same. The values are the indices of the pool field's choices ("cls mean"). */
enum { VIT_POOL_CLS, VIT_POOL_MEAN };

/* Patches per image and their length: N = (image/P)^2, ch*P*P values. */
static inline int vit_patches(const vit_config *c)
{
    return (c->image / c->patch) * (c->image / c->patch);
}
static inline int vit_patch_dim(const vit_config *c)
{
    return c->channels * c->patch * c->patch;
}

/* Cuts channel-major images x [B, ch*H*W] into patch rows [B*N, ch*P*P]:
 * patch n = (py0, px0) in row-major patch order; each row in (c, py, px)
 * order, the order of a Conv2d weight [C, ch, P, P] flattened. */
void vit_patchify(const vit_config *c, const float *x, int B, float *out);

extern const model_family vit_family;

#endif
