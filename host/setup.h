/* setup.h: what the subcommands share between parsing options and running:
 * picking a backend and building a model from a preset, initial weights or a
 * checkpoint. */
#ifndef ANATOMY_SETUP_H
#define ANATOMY_SETUP_H

#include <stdint.h>

#include "ckpt.h"
#include "model.h"
#include "models/gpt2.h"

/* Where a model comes from. Exactly one of preset / init is set. */
typedef struct {
    const char *preset;   /* "d4", "gpt2-124m", ... (random init from seed) */
    const char *init;     /* HF directory, llm.c .bin, or our checkpoint file */
    int vocab_size;       /* with preset: overrides V when > 0 */
    int max_seq;          /* with preset: overrides maxT when > 0 */
    uint64_t seed;        /* with preset: initialisation seed */
} model_source;

/* device "cpu", "cuda", or NULL: cuda when the build has it and a device
 * starts, else cpu; threads <= 0: all cores; precision "fp32" or "bf16"
 * (CUDA only), NULL: bf16 on CUDA, fp32 on the CPU. Dies with a one-line error. */
backend *setup_backend(const char *device, int threads, const char *precision);

/* Kinds of file --init accepts. */
typedef enum { SRC_HF_DIR, SRC_LLMC, SRC_CKPT } source_kind;
/* Classifies a path by its contents; -1 with err when it is none of them. */
int setup_source_kind(const char *path, source_kind *kind, char *err);

/* A run directory (train --out) names its latest step_NNNNNN.safetensors;
 * any other path names itself. Returns a malloc'd path, or NULL with err
 * (starting ": ...") when a directory has neither checkpoints nor config.json. */
char *setup_latest_checkpoint(const char *path, char *err);

/* Resolves the source into a config and host fp32 parameters (malloc'd,
 * gpt2_layout order). When the source is our checkpoint, its metadata is
 * copied to *md (if md is not NULL); otherwise md->n = 0. */
int setup_load(const model_source *src, gpt2_config *cfg, float **params, ckpt_meta *md,
               char *err);

/* Builds the model on the backend with the parameters uploaded. Dies on error. */
model *setup_model(backend *be, const model_source *src, ckpt_meta *md);

/* Writes the GPT-2 config into checkpoint metadata and reads it back. */
void setup_meta_put_config(ckpt_meta *md, const gpt2_config *cfg);
int setup_meta_get_config(const ckpt_meta *md, const char *path, gpt2_config *cfg, char *err);

#endif
