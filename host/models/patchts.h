/* patchts.h: transformers for time series (issue 9, the paper's last
 * section). Two families over the same CSV series (data/series.h):
 *
 *   patchts  PatchTST-style regression: each channel's look-back window, cut
 *            into patches, embedded linearly, run through the shared
 *            transformer encoder and mapped by a linear head to the next H
 *            values; mean squared error.
 *   tsgpt    the language-model route: values scaled by the window's mean
 *            absolute value and quantised into bins, a GPT-2 decoder over the
 *            bin tokens trained by cross-entropy, forecasts sampled.
 *
 * Both read series windows through series_source_open: model_batch.x is
 * [B, channels, lookback] and y [B, channels, horizon], normalised with the
 * training split's per-channel statistics. Evaluation splits pad their last
 * micro-batch with rows whose y is NaN: models skip those rows in the loss
 * and the metrics, so every window of a split counts exactly once. */
#ifndef ANATOMY_PATCHTS_H
#define ANATOMY_PATCHTS_H

#include <stdint.h>
#include <stdio.h>

#include "../batches.h"
#include "../family.h"
#include "../model.h"

typedef struct {
    int channels;  /* numeric columns of the CSV */
    int lookback;  /* input steps per channel */
    int horizon;   /* steps forecast */
    int patch;     /* patch length P */
    int stride;    /* patch stride S */
    int pad;       /* 1: extend the window by S copies of its last value (one more patch) */
    int L, NH, C;  /* transformer: blocks, heads, width */
    int post_ln;   /* 1: post-LN blocks (PatchTST's order); 0: pre-LN with a final layernorm */
    int norm;      /* the post-LN blocks' norm: TSTACK_NORM_LAYER or TSTACK_NORM_BATCH
                    * (PatchTST's BatchNorm1d; transformer.h) */
    int nobias;    /* 1: no biases: patch embedding, stack and head weights only */
} patchts_config;

typedef struct {
    int channels, lookback, horizon;
    int bins;      /* token vocabulary: quantisation bins */
    int samples;   /* sample paths per forecast (median, 10% and 90% quantiles) */
    int L, NH, C;
    int nobias;    /* 1: no biases in the stack's linear layers and layernorms */
} tsgpt_config;

extern const model_family patchts_family;
extern const model_family tsgpt_family;

/* Patches per channel of a config (the encoder's sequence length). */
int patchts_patches(const patchts_config *c);

/* The series windows of spec->split of the CSV file spec->path for a model
 * of `channels` channels (checked against the file's columns). */
batch_source *series_source_open(const data_spec *spec, int channels, int lookback,
                                 int horizon, char *err);

/* tsgpt's tokenizer: the scale of a window (its mean |x|; 1 for a window of
 * zeros), the bin of a scaled value (bins equal bins over [-8, 8], values
 * beyond in the end bins) and back (the bin's centre). */
double tsgpt_scale(const float *x, int n);
int tsgpt_bin(double scaled, int bins);
double tsgpt_unbin(int bin, int bins);

/* tsgpt's forecast of a micro-batch x [B, channels, lookback] of the current
 * plan's B: `samples` sampled paths per row; their median, 10% and 90%
 * quantiles and mean into fc [B * channels, 4, horizon] (NULL: kept for
 * tsgpt_write_forecast only). cached 1: incremental decoding, every row and
 * path in one batch, one step per new value; 0: a full forward of each path
 * per new value (the reference). Both draw the same numbers (from seed), so
 * they agree but for rounding. -1 with err filled when the decoding cache
 * cannot be allocated. */
int tsgpt_forecast(model *m, const float *x, int cached, uint64_t seed, float *fc, char *err);

/* The forecast of tsgpt's last evaluated micro-batch (after its metrics):
 * one CSV line per row and step, "row,step,median,q10,q90,mean,target", padding
 * rows left out. -1 when there is none. For `anatomy eval` to offer. */
int tsgpt_write_forecast(model *m, FILE *out);
/* patchts's: "row,step,forecast,target" lines, the same way. */
int patchts_write_forecast(model *m, FILE *out);

#endif
