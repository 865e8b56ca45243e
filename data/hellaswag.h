/* hellaswag.h: the HellaSwag validation set (JSON Lines, one example a line
 * with "ctx", "endings" (4 strings) and "label" (0..3)), read and tokenized
 * for completion-style scoring. */
#ifndef ANATOMY_HELLASWAG_H
#define ANATOMY_HELLASWAG_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

#define HELLASWAG_ENDINGS 4

typedef struct {
    int32_t *ctx;                       /* context ids (at least one) */
    int nctx;
    int32_t *end[HELLASWAG_ENDINGS];    /* ids of " " + ending (at least one) */
    int nend[HELLASWAG_ENDINGS];
    int label;                          /* index of the right ending */
    long line;                          /* 1-based line in the file */
} hellaswag_example;

typedef struct {
    hellaswag_example *ex;
    size_t n;
} hellaswag_set;

/* Reads and tokenizes path (blank lines are skipped), at most limit examples
 * when limit > 0. Returns NULL with err "PATH:LINE: what is wrong" for a line
 * that is not a JSON object, lacks a field, has other than 4 string endings,
 * a label outside 0..3, or a context with no tokens; "PATH: ..." when the
 * file cannot be read or holds no example. */
hellaswag_set *hellaswag_load(const char *path, tokenizer *tk, long limit, char *err);
void hellaswag_free(hellaswag_set *s);

#endif
