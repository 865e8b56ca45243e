/* hellaswag_eval.h: HellaSwag scoring with a language model, shared by
 * `anatomy eval --hellaswag` and the training loop (train --hellaswag).
 * Completion style: for each of an example's four endings, the mean loss of
 * the ending's tokens given the context; the lowest wins. */
#ifndef ANATOMY_HELLASWAG_EVAL_H
#define ANATOMY_HELLASWAG_EVAL_H

#include <stddef.h>
#include <stdint.h>

#include "../data/hellaswag.h"
#include "model.h"

/* Scores examples first, first + stride, ... of set with the model's current
 * plan (B rows of T tokens): B / 4 examples per forward, a row per ending,
 * the context losing its start when a row is longer than T. in, tg: host
 * scratch of B*T ids each. Adds the examples scored and those right to
 * *count and *correct. Returns 0, or -1 with err ("PATH:LINE: ...") for an
 * ending longer than T or a plan of fewer than 4 rows. */
int hellaswag_score(model *m, const hellaswag_set *set, const char *path, size_t first,
                    size_t stride, int32_t *in, int32_t *tg, size_t *correct, size_t *count,
                    char *err);

/* Rows (4 per example) and the longest row (context + ending - 1, the
 * inputs) that scoring the whole set untruncated needs. */
int hellaswag_max_len(const hellaswag_set *set);

#endif
