/* setup.h: what the subcommands share between parsing options and running:
 * picking a backend and building a model from a preset, initial weights or a
 * checkpoint. */
#ifndef ANATOMY_SETUP_H
#define ANATOMY_SETUP_H

#include <stdint.h>
#include <stdio.h>

#include "ckpt.h"
#include "model.h"
#include "family.h"
#include "models/gpt2.h"

/* Where a model comes from. Exactly one of preset / init is set, or only
 * model (its family's first preset). */
#define SETUP_MAXSET 16
typedef struct {
    const char *model;    /* --model: family name ("gpt2", "bert", ...) */
    const char *preset;   /* "d4", "gpt2-124m", "bert-base", ... (random init from seed) */
    const char *init;     /* HF directory, llm.c .bin, or our checkpoint file */
    uint64_t seed;        /* with preset: initialisation seed */
    /* with preset: config fields set by their options (--vocab-size 256 ...) */
    int nset;
    const char *set_opt[SETUP_MAXSET];
    int set_val[SETUP_MAXSET];
} model_source;

/* The long options of every family's config fields ("vocab-size", "nsp",
 * ...), appended to a command's own table (which ends with a zero entry):
 * returns a malloc'd table. Their codes are SETUP_OPT_BASE + k. */
#define SETUP_OPT_BASE 1000
struct option;
struct option *setup_longopts(const struct option *base);
/* Records a field option seen by getopt_long (code c, argument arg): 1 when
 * c was one, 0 otherwise. Dies on a malformed value. */
int setup_take_option(model_source *src, int c, const char *arg);
/* Help lines for the model options (--model, the field options). */
void setup_print_model_help(FILE *out);
/* One line "settings --layers 4 --heads 4 ...": every field option of the
 * config with its value (switches only when on), as `info` shows a model:
 * with the preset, the options that rebuild this shape. */
void setup_print_settings(const model_config *c, FILE *out);

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

/* Resolves the source into a config and a host fp32 snapshot of the model
 * (malloc'd): its parameters in the family's layout order, then its state
 * (family.h state_layout; nothing for most families). When the source is our checkpoint, its
 * metadata is copied to *md (if md is not NULL); otherwise md->n = 0. */
int setup_load(const model_source *src, model_config *cfg, float **params, ckpt_meta *md,
               char *err);

/* The config of --model / --preset with the field options applied (no
 * parameters made). */
int setup_preset_config(const model_source *src, model_config *cfg, char *err);

/* Builds the model on the backend with the parameters uploaded. Dies on error. */
model *setup_model(backend *be, const model_source *src, ckpt_meta *md);
/* The same from what setup_load gave (params is freed), for a command that
 * looks at the config before anything is allocated (train's memory plan). */
model *setup_model_from(backend *be, const model_source *src, const model_config *cfg,
                        float *params);

/* The config a model was built with. */
model_config setup_config_of(const model *m);
/* Writes the family and its config fields into checkpoint metadata and reads
 * them back (err names the file and the key). */
void setup_meta_put_config(ckpt_meta *md, const model_config *cfg);
int setup_meta_get_config(const ckpt_meta *md, const char *path, model_config *cfg, char *err);
/* The regression loss a model trains with (model.h loss_kind, huber_delta),
 * as checkpoint metadata "regression_loss" (mse, mae, huber) and
 * "huber_delta": put writes them for families that have a loss kind; get
 * reads them (a checkpoint without them: mse, delta 1, what every earlier
 * run trained with), err naming the file and the key. */
void setup_meta_put_loss(ckpt_meta *md, const model *m);
int setup_meta_get_loss(const ckpt_meta *md, const char *path, int *kind, double *delta,
                        char *err);

#endif
