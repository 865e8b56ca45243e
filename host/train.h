/* train.h: the one training loop, for every model family. */
#ifndef ANATOMY_TRAIN_H
#define ANATOMY_TRAIN_H

#include <stdint.h>

#include "../data/rng.h"
#include "../data/hellaswag.h"
#include "../data/tokenizer.h"
#include "ckpt.h"
#include "dist.h"
#include "model.h"

typedef struct {
    const char *data;       /* glob of training shards */
    const char *val_data;   /* glob of validation shards, or NULL */
    int B, T;               /* micro-batch */
    long long total_batch;  /* tokens per optimizer step (multiple of B*T*world) */
    int steps;              /* optimizer steps in all (a resumed run counts from 0) */
    double lr, lr_min_frac; /* peak rate; cosine decays to lr * lr_min_frac */
    int warmup;             /* linear warmup steps */
    int constant;           /* --schedule constant: lr throughout (after warmup) */
    double weight_decay, grad_clip;
    double beta1, beta2, eps; /* AdamW's moment decays and denominator term
                             * (checkpoints carry them; a resume keeps them) */
    double dropout;         /* drop probability of training forwards (model.h's dropout);
                             * 0: none. Validation and sampling never drop. */
    double label_smoothing; /* --label-smoothing (model.h's); 0: none */
    int loss_kind;          /* --loss: LOSS_MSE (default), LOSS_MAE, LOSS_HUBER (model.h's,
                             * for every forward; checkpoints carry it) */
    double huber_delta;     /* --huber-delta (> 0; LOSS_HUBER's delta, default 1) */
    int val_every, val_batches;
    int sample_every, sample_tokens;
    int ckpt_every;
    const char *out;        /* run directory: log.jsonl, step_NNNNNN.safetensors */
    int overwrite;          /* --overwrite: a fresh run may replace the checkpoints in out */
    uint64_t seed;
    int shuffle;
    int random_rows;        /* --rows random: each row at its own random offset */
    int augment, crop_pad, flip; /* --crop-pad, --flip (data_spec's; augment 0: defaults) */
    double erase;           /* --erase: data_spec's erase */
    int rank, world;        /* from dist (0 and 1 when dist is NULL) */
    dist *dist;             /* the communicator; NULL: one process */
    int zero;               /* 1: ZeRO stage 1 (sharded AdamW state) when world > 1 */
    const hellaswag_set *hellaswag; /* scored every hellaswag_every steps and at the end
                             * (with the training plan: B / 4 examples a forward),
                             * or NULL */
    const char *hellaswag_path;
    int hellaswag_every;
    tokenizer *tok;         /* for samples; NULL prints token ids */
    const char *tokenizer_kind;
} train_opts;

/* Training state that a checkpoint carries beside the weights. */
typedef struct {
    int step;               /* optimizer steps done */
    uint64_t data_pos;      /* loader position (micro-batches consumed by this rank;
                             * every rank consumes the same number, so it is the
                             * same on every rank) */
    rng_state rng;          /* sampling */
    /* A recurrent model's carried state (model.h, carried_count): rank r's at
     * carried + r * carried_n, for carried_world ranks; NULL: none. Saved as
     * the checkpoint tensor "train.carried" [carried_world, carried_n];
     * train_restore reads it (malloc'd) and train_run hands it to the model
     * and frees it. */
    float *carried;
    size_t carried_n;
    int carried_world;
    /* Where the run stands, for `anatomy info`: the last step's training loss
     * and the last validation loss with its step (val_step 0: none yet). */
    double loss, val_loss;
    int val_step;
} train_state;

/* Learning rate at 0-based step `step`. */
double train_lr(const train_opts *o, int step);

/* Runs steps st->step .. o->steps-1. Returns 0, TRAIN_STOPPED (below), or -1
 * with err filled.
 * With o->dist of world > 1 (data parallelism): every rank runs this with the
 * same options; rank r reads global micro-batches j*world + r; gradients are
 * averaged across ranks after the accumulation loop and the loss for the log
 * too, so all ranks take the same AdamW step. Rank 0 alone prints, logs,
 * samples and writes checkpoints (under ZeRO the optimizer state is first
 * gathered, so the file is the same single file); validation is shared (rank r evaluates
 * validation micro-batches r, r+world, ...) and reduced. Every rank performs
 * the same collectives in the same order, errors included (a diverged loss
 * is seen by all ranks at once, after its reduction). */
int train_run(model *m, const train_opts *o, train_state *st, char *err);
/* train_run's return when SIGINT, SIGTERM or SIGUSR1 stopped the run after a
 * step (on every rank the same step), with its checkpoint written when there
 * is an --out: the command exits with RUNDIR_STOP_STATUS (rundir.h). */
#define TRAIN_STOPPED 1

/* Writes <out>/step_NNNNNN.safetensors with parameters, moments and state:
 * rank 0 writes; with the optimizer state sharded (ZeRO stage 1) every rank
 * must call it, as it gathers the shards. */
int train_save(model *m, const train_opts *o, const train_state *st, const char *path,
               char *err);
/* Restores moments and state from a checkpoint written by train_save (the
 * parameters were loaded when the model was built). */
int train_restore(model *m, const char *path, const ckpt_meta *md, train_state *st,
                  char *err);
/* Metadata value `key` of the checkpoint at path as a number; -1 with err
 * naming the file and key when it is missing or not a number. */
int train_meta_double(const ckpt_meta *md, const char *path, const char *key, double *v,
                      char *err);

/* Sampling from a generative model: buffers allocated once, so that
 * generating inside the training loop allocates nothing. With the model's
 * incremental decoding (decode_step) each token costs one step over the
 * cache; the context is the sequence since its start, and when it would
 * exceed the model's context length the cache restarts from the last half
 * of that length (re-run, one step per token). Without it, each token runs
 * a forward of row 0 of the model's current plan over the last T tokens.
 * Successive sampler_next calls must extend one sequence; sampler_reset
 * starts another, and must follow any change of the weights. */
typedef struct {
    model *m;
    int32_t *ctx;  /* [B*T] host inputs (without decoding) */
    float *probs;  /* [V] */
    int cached;    /* decoding: positions in the cache */
    int base;      /* decoding: index in the sequence of cache position 0 */
    int maxlen;    /* decoding: cache length (0: not decoding) */
} sampler;

/* maxlen: the longest context to cache (<= the model's), or 0 for all of
 * it; models without decoding use their plan instead. */
int sampler_init(sampler *s, model *m, int maxlen, char *err);
void sampler_free(sampler *s);
void sampler_reset(sampler *s);
/* Appends one token drawn from softmax(logits / temperature) over the top_k
 * most likely (0: all; temperature 0: the most likely) after tokens[0..len).
 * Returns the token. */
int32_t sampler_next(sampler *s, const int32_t *tokens, int len, double temperature, int top_k,
                     rng_state *rng);

#endif
