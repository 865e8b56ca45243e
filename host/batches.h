/* batches.h: batch sources, what the training loop and `eval` read
 * micro-batches from. A family's open_data (host/family.h) returns one for
 * its kind of data: token shards for the language models (lm_source_open,
 * here), masked token shards for BERT, image files for ViT, CSV series for
 * the patch models. data/ holds the file readers; a source adapts one to
 * model_batch.
 *
 * Positions are counted in micro-batches read by this rank. A source
 * opened for rank r of world w reads global micro-batches r, r+w, r+2w, ...
 * of its stream, so w ranks together read what one rank would. Whatever is
 * random in a batch (shuffled order, masks, augmentation) is a function of
 * the seed and the global micro-batch index, so seek() reproduces it exactly
 * (resume is bit for bit). */
#ifndef ANATOMY_BATCHES_H
#define ANATOMY_BATCHES_H

#include <stdint.h>

#include "model.h"

typedef enum { SPLIT_TRAIN = 0, SPLIT_VAL = 1, SPLIT_TEST = 2 } data_split;

typedef struct {
    const char *path;   /* glob of shards, or a file (images, CSV) */
    int B, T;           /* micro-batch (T: tokens; families without a sequence
                         * ignore it) */
    int rank, world;
    int shuffle;        /* training order shuffled (per epoch) by seed */
    uint64_t seed;
    data_split split;   /* SPLIT_TRAIN draws masks and augmentation; the
                         * others are deterministic and unaugmented. Sources
                         * that hold every split in one file (ETT CSV) pick
                         * the split's rows by it. */
    int random_rows;    /* SPLIT_TRAIN of lm_source_open (--rows random): each
                         * of the B rows is T+1 tokens from an independent
                         * random offset, as nanoGPT's get_batch; only
                         * families with model_family.random_rows take it */
    int augment;        /* 0: the family's default augmentation of SPLIT_TRAIN;
                         * 1: crop_pad and flip below instead (images) */
    int crop_pad;       /* random crops of the image padded by this many pixels */
    int flip;           /* 1: horizontal flips with probability 1/2 */
    double erase;       /* images, SPLIT_TRAIN: the probability that an image has
                         * one random rectangle set to the pixel scale's middle
                         * (random erasing); on top of either augmentation */
} data_spec;

typedef struct batch_source batch_source;
struct batch_source {
    model_batch batch;    /* what next() fills (buffers owned by the source) */
    /* Reads the next micro-batch of this rank into batch. -1 with err on a
     * read error. Streams wrap around at their end (epochs). */
    int (*next)(batch_source *s, char *err);
    /* Micro-batches this rank has read; seek(position) restores a stream. */
    uint64_t (*position)(const batch_source *s);
    void (*seek)(batch_source *s, uint64_t pos);
    /* Optional (sources of carried streams, rnn.c): a seek restarts every
     * stream's carried state unless this follows it: the trainer calls it
     * after restoring the state a checkpoint carried, so that the next
     * micro-batch continues the streams. */
    void (*keep_state)(batch_source *s);
    /* Micro-batches of this rank in one pass over the data (0: unknown). */
    uint64_t (*epoch_batches)(const batch_source *s);
    void (*close)(batch_source *s);
};

/* Token shards for next-token prediction (GPT-2, FFNN): tokens are B*T
 * consecutive tokens, targets the same shifted by one (data/shard.h); or,
 * with spec->random_rows in training, B rows of T tokens each from its own
 * offset o = lm_row_offset(seed, g, b, n) (g: the global micro-batch, b:
 * the row, n: the offsets a row can start at), a pure function, so a seek
 * reproduces them and resume stays bit for bit.
 * vocab: ids must be below it (checked as read). */
batch_source *lm_source_open(const data_spec *spec, int vocab, char *err);
/* The start of row b of global micro-batch g in random-row mode, below n. */
uint64_t lm_row_offset(uint64_t seed, uint64_t g, int b, uint64_t n);

#endif
