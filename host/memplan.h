/* memplan.h: the device memory a training process will hold, by category,
 * worked out before anything is allocated: the one account that the trainer
 * prints at start-up, checks against the device (or --memory-limit) and
 * compares with what the backend then reports in use, and that `anatomy
 * info --batch` prints. */
#ifndef ANATOMY_MEMPLAN_H
#define ANATOMY_MEMPLAN_H

#include <stddef.h>

#include "family.h"

/* Bytes per category. params, grads: the act-typed parameter buffer and its
 * gradient; master: the fp32 copy of the weights (mixed precision only);
 * moments: AdamW's m and v; activations: everything the model plans for a
 * micro-batch (layer outputs, logits, per-position statistics, token ids);
 * workspace: what the backend holds for its own use (matmul workspace, the
 * ops' scratch). Under ZeRO stage 1 master and moments are one shard's. */
typedef struct {
    size_t params, grads, master, moments, activations, workspace;
} mem_plan;

/* What the plan is for: a micro-batch of B x T, --recompute, and the ranks
 * (world) with ZeRO stage 1 on or off; under ZeRO the figures are those of
 * the rank with the largest shard (rank 0). */
typedef struct {
    int B, T, recompute, world, zero;
} mem_shape;

size_t mem_plan_total(const mem_plan *p);

/* The plan for a model of config cfg trained on backend be (its dtypes; its
 * workspace_bytes, when it has one): the model is built and planned for
 * B x T on a stand-in backend that hands out addresses and counts bytes but
 * touches no memory, so the plan is what the real build will ask for. -1
 * with err when the model cannot be built (a bad config or shape). */
int mem_plan_compute(const model_config *cfg, backend *be, const mem_shape *s, mem_plan *out,
                     char *err);

/* The model's longest sequence (model.maxT) without allocating it; -1 with
 * err when it cannot be built. */
int mem_plan_max_seq(const model_config *cfg, backend *be, char *err);

/* The largest micro-batch B' <= s->B (same T) whose plan fits in `limit`
 * bytes; 0 when not even B' = 1 does. */
int mem_plan_largest_batch(const model_config *cfg, backend *be, const mem_shape *s,
                           size_t limit);

/* One line, "params N B | grads N B | ... | total N B (x.xx GiB)", into buf. */
const char *mem_plan_format(const mem_plan *p, char *buf, size_t n);

/* Bytes of device memory in use now, as the backend reports it (be->mem_info:
 * the device's total less its free memory); 0 without a report. */
size_t mem_in_use(backend *be);

/* "12.34 GiB", or "56.7 MiB" below a GiB, into buf. */
const char *mem_human(size_t bytes, char *buf, size_t n);

/* Parses a byte count with an optional K, M, G or T suffix (powers of 1024):
 * "80G", "512M", "1048576". -1 when malformed or zero. */
int mem_parse_bytes(const char *s, size_t *out);

#endif
