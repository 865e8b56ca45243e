/* family.h: the registry of model families. A family is one file under
 * host/models/ (gpt2.c, bert.c, vit.c, ...) that exports one model_family:
 * its presets, its config fields, its parameter layout and initialisation,
 * its constructor on a backend and the batch source its data needs. The
 * command line, checkpoints and the training loop go through this table
 * only, so adding a family touches no shared code but the table in
 * family.c.
 *
 * A config is up to FAMILY_MAXFIELDS named integers (model_config.v), in the
 * order of the family's field table; a family casts v to its own struct of
 * ints (gpt2_config is {V, maxT, L, NH, C}). Checkpoints store every field
 * under its key in the metadata, beside "family". */
#ifndef ANATOMY_FAMILY_H
#define ANATOMY_FAMILY_H

#include <stdint.h>
#include <stdio.h>

#include "batches.h"
#include "model.h"

#define FAMILY_MAXFIELDS 16

typedef struct {
    const char *key;    /* metadata key, and the name in error messages: "V", "L" */
    const char *option; /* the long option that overrides it with --preset
                         * ("vocab-size"), or NULL: presets alone set it */
    const char *help;   /* one line for --help and info */
    int lo, hi;         /* accepted range */
    int flags;          /* FIELD_SWITCH | FIELD_OPTIONAL, or 0 */
    const char *choices; /* NULL: the option takes a number; else its value is a
                          * name of this space-separated list ("layer batch"),
                          * the field holding its index (lo 0, hi the count - 1):
                          * the option, --help, the settings line and the
                          * checkpoint metadata all use the name */
} family_field;

/* family_field.flags */
#define FIELD_SWITCH 1   /* the option takes no value and sets 1 (--nsp) */
#define FIELD_OPTIONAL 2 /* a checkpoint without this key reads lo: a field added
                          * after such checkpoints were written, lo being what
                          * they were trained with */

typedef struct model_family model_family;

typedef struct {
    const model_family *family;
    int v[FAMILY_MAXFIELDS];
} model_config;

struct model_family {
    const char *name;     /* --model NAME; checkpoint metadata "family" */
    const char *summary;  /* one line for --help and info */
    const char *presets;  /* space-separated names for --preset; the first is
                           * the default when only --model is given */
    int generative;       /* 1: a next-token LM over tokens with per-position
                           * logits: sampling (train --sample-every, sample)
                           * applies */
    int random_rows;      /* 1: its data source draws rows at random offsets
                           * when asked (data_spec.random_rows, --rows random) */
    const family_field *fields;
    int nfields;
    /* Fills v from a preset name; -1 with err ("--preset: ...") if unknown. */
    int (*preset)(const char *name, int *v, char *err);
    /* Validates v beyond the per-field ranges; err names the field. */
    int (*check)(const int *v, char *err);
    /* The parameter table (malloc'd views in buffer order); returns the
     * buffer's element count (padding included). */
    size_t (*layout)(const int *v, param_view **views, int *nviews);
    /* Parameters as published (padding excluded), for info and logs. */
    size_t (*real_params)(const int *v);
    /* Optional (NULL: none): the table of the model's state that is not
     * trained (model.h state_views; offsets into a state buffer), malloc'd;
     * returns the state's element count (0: none, *views NULL). */
    size_t (*state_layout)(const int *v, param_view **views, int *nviews);
    /* Initial parameters into a host buffer laid out by layout, followed, when
     * the family has state, by the initial state laid out by state_layout
     * (a host snapshot of a model is its parameters, then its state). */
    void (*init)(const int *v, float *host, uint64_t seed);
    /* The model on a backend, buffers allocated, parameters uninitialised. */
    model *(*create)(backend *be, const int *v, char *err);
    /* Lines for `anatomy info` after the parameter count: the context the
     * model sees (the paper's point about context length), data it reads. */
    void (*describe)(const int *v, FILE *out);
    /* The batch source for this model's data (host/batches.h). */
    batch_source *(*open_data)(const model *m, const data_spec *spec, char *err);
};

/* Iterates over the families linked in, in --help order: start with
 * *i = 0; returns NULL after the last. */
const model_family *family_next(int *i);

/* By name (--model, checkpoint metadata); NULL if none. */
const model_family *family_find(const char *name);
/* The family with a preset of this name (presets are unique across
 * families); NULL if none. */
const model_family *family_of_preset(const char *preset);
/* The field index of key in fam, or -1. */
int family_field_index(const model_family *fam, const char *key);
/* The state's element count and views of config v (0 and NULL when the
 * family has none; views malloc'd, may be NULL for the caller). */
size_t family_state_layout(const model_family *fam, const int *v, param_view **views,
                           int *nviews);
/* A field with choices (family_field.choices): the name of value `value`
 * into buf of size n, or NULL when out of range; family_choice_index: the
 * index of name, or -1; family_choice_list: the choices as --help, the
 * settings and the errors show them ("layer|batch") into buf. */
const char *family_choice_name(const family_field *fd, int value, char *buf, size_t n);
int family_choice_index(const family_field *fd, const char *name);
const char *family_choice_list(const family_field *fd, char *buf, size_t n);
/* Range checks of every field, then fam->check. err names the field. */
int family_check(const model_config *c, char *err);
/* Space-separated list of every family's presets, for error messages. */
const char *family_all_presets(void);

#endif
