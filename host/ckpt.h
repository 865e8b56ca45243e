/* ckpt.h: model files in and out.
 *
 * Our checkpoint IS a safetensors file (readable by any safetensors library):
 *   tensors  "<view name>"            fp32 parameters, one per param_view, our shapes
 *            "adamw.m.<view name>"    fp32 first moments   (optional: weights-only files)
 *            "adamw.v.<view name>"    fp32 second moments  (optional)
 *            "<state view name>"      fp32 model state that is not trained (running
 *                                     statistics: model.h state_views), no moments
 *            "train.<name>"           fp32 training state beside the weights
 *                                     (optional: a recurrent model's carried state)
 *   __metadata__ (string -> string)
 *            "format": "anatomy-ckpt", "version": "1", "family": "gpt2",
 *            the family's config ("V", "maxT", "L", "NH", "C"), and the training
 *            state the loop puts there (step, data position, RNG state, ...).
 * Written atomically: temporary file in the same folder, fsync, rename, fsync dir.
 * Padded vocabulary rows are stored as in memory (Vp rows), so a resume is exact.
 *
 * Hugging Face GPT-2 directories: config.json + model.safetensors with HF names
 * (wte.weight [V,C], h.N.attn.c_attn.weight [C,3C] stored [in,out], ...),
 * with or without a "transformer." prefix; buffers like "h.N.attn.bias" and
 * "lm_head.weight" (tied) are ignored on import. fp32/fp16/bf16 accepted.
 *
 * llm.c model files: gpt2_124M.bin style (256 int32 header, magic 20240326,
 * version 3 fp32 or 5 bf16; tensors grouped by kind across layers, Vp rows).
 */
#ifndef ANATOMY_CKPT_H
#define ANATOMY_CKPT_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "models/gpt2.h"

/* Checkpoint metadata: any number of entries, keys and values of any length
 * (malloc'd). `ckpt_meta md = { 0 };` is empty; ckpt_meta_free releases the
 * entries and leaves it empty. */
typedef struct {
    int n, cap;
    char **key, **val;
    int failed;             /* an entry could not be stored (out of memory):
                             * ckpt_save refuses to write the set */
} ckpt_meta;

/* Metadata helpers: set replaces an existing key; get returns NULL if absent. */
void ckpt_meta_set(ckpt_meta *md, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
const char *ckpt_meta_get(const ckpt_meta *md, const char *key);
void ckpt_meta_free(ckpt_meta *md);

/* Saves parameters (and moments when mom_m and mom_v are not NULL) of a model
 * laid out by `views` (host fp32 arrays of `total` elements) with metadata. */
int ckpt_save(const char *path, const param_view *views, int nviews, size_t total,
              const float *params, const float *mom_m, const float *mom_v,
              const ckpt_meta *md, char *err);
/* A tensor of training state beside the model's (fp32), saved under a name
 * starting "train." (the loop's, e.g. a recurrent model's carried state);
 * ckpt_load ignores such tensors. */
#define CKPT_TRAIN_PREFIX "train."
typedef struct {
    const char *name;       /* "train.carried" */
    int ndim;
    int64_t shape[MODEL_MAXDIM];
    const float *data;
} ckpt_extra;

/* A model's state that is not trained (model.h state_views), laid out by its
 * views over a host array `data` of `total` elements. */
typedef struct {
    const param_view *views;
    int nviews;
    size_t total;
    float *data;
} ckpt_state;

/* ckpt_save, plus the model's state (NULL or no views: none) and nextra
 * training-state tensors. */
int ckpt_save_extra(const char *path, const param_view *views, int nviews, size_t total,
                    const float *params, const float *mom_m, const float *mom_v,
                    const ckpt_meta *md, const ckpt_state *state, const ckpt_extra *extra,
                    int nextra, char *err);
/* Reads training-state tensor `name` (F32) of a checkpoint: *data (malloc'd,
 * the caller frees it) and its shape, or *data = NULL when the file has none. */
int ckpt_load_extra(const char *path, const char *name, float **data, int64_t *shape,
                    int *ndim, char *err);
/* Reads only the metadata of a checkpoint (validating the whole file) into
 * md, which it starts empty (pass a new or freed one; free it after). */
int ckpt_read_meta(const char *path, ckpt_meta *md, char *err);
/* Loads tensors into host arrays laid out by `views`. Every view must be
 * present with exactly its shape (err names the first mismatch). mom_m/mom_v
 * may be NULL; when not NULL and the file has no moments, *has_moments = 0. */
int ckpt_load(const char *path, const param_view *views, int nviews, size_t total,
              float *params, float *mom_m, float *mom_v, int *has_moments, char *err);
/* ckpt_load of a model with state: every state view must be present too,
 * with exactly its shape, and is read into state->data (state NULL or no
 * views: as ckpt_load). */
int ckpt_load_model(const char *path, const param_view *views, int nviews, size_t total,
                    float *params, float *mom_m, float *mom_v, int *has_moments,
                    const ckpt_state *state, char *err);

/* Hugging Face GPT-2 directory -> config and host params (malloc'd, gpt2_layout order). */
int hf_gpt2_import(const char *dir, gpt2_config *cfg, float **params, char *err);
/* Writes config.json + model.safetensors (fp32, HF names and shapes, V rows). */
int hf_gpt2_export(const char *dir, const gpt2_config *cfg, const float *params, char *err);
/* llm.c GPT-2 model file -> config and host params (malloc'd, gpt2_layout order). */
int llmc_gpt2_import(const char *path, gpt2_config *cfg, float **params, char *err);

#endif
