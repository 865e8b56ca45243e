/* batches.c: the token-shard batch source of the language models. */
#include "batches.h"

#include <stdlib.h>
#include <string.h>

#include "../data/errbuf.h"
#include "../data/rng.h"
#include "../data/shard.h"

typedef struct {
    batch_source src; /* first: a batch_source * is an lm_source * */
    loader *ld;
    int32_t *in, *tg;
    uint64_t per_epoch;
    /* random rows: the position is ours (the loader's is unused) */
    int random_rows, B, T, rank, world;
    uint64_t seed, pos, starts; /* starts: offsets a row may begin at */
    int32_t *row;               /* T+1 tokens */
} lm_source;

/* Keeps the row stream apart from every other use of the seed (init,
 * shuffle, dropout): the same --seed gives unrelated draws. */
#define ROWS_STREAM 0x726f77735f726e64ULL /* "rows_rnd" */

uint64_t lm_row_offset(uint64_t seed, uint64_t g, int b, uint64_t n)
{
    uint64_t x = seed ^ ROWS_STREAM;
    uint64_t h = rng_splitmix(&x) ^ g;
    uint64_t k = rng_splitmix(&h) ^ (uint64_t)b;
    rng_state r;
    rng_seed(&r, rng_splitmix(&k));
    return rng_below(&r, n);
}

/* B rows, each T+1 tokens from its own offset: inputs the first T, targets
 * the last T. Global micro-batch g = pos * world + rank, as the loader's. */
static int lm_next_random(lm_source *l, char *err)
{
    uint64_t g = l->pos * (uint64_t)l->world + (uint64_t)l->rank;
    for (int b = 0; b < l->B; b++) {
        uint64_t o = lm_row_offset(l->seed, g, b, l->starts);
        if (loader_read_at(l->ld, o, (uint64_t)l->T + 1, l->row, err) < 0)
            return -1;
        memcpy(l->in + (size_t)b * l->T, l->row, (size_t)l->T * sizeof *l->row);
        memcpy(l->tg + (size_t)b * l->T, l->row + 1, (size_t)l->T * sizeof *l->row);
    }
    l->pos++;
    return 0;
}

static int lm_next(batch_source *s, char *err)
{
    lm_source *l = (lm_source *)s;
    if (l->random_rows)
        return lm_next_random(l, err);
    return loader_next(l->ld, l->in, l->tg, err);
}

static uint64_t lm_position(const batch_source *s)
{
    const lm_source *l = (const lm_source *)s;
    return l->random_rows ? l->pos : loader_position(l->ld);
}

static void lm_seek(batch_source *s, uint64_t pos)
{
    lm_source *l = (lm_source *)s;
    if (l->random_rows)
        l->pos = pos;
    else
        loader_seek(l->ld, pos);
}

static uint64_t lm_epoch(const batch_source *s)
{
    return ((const lm_source *)s)->per_epoch;
}

static void lm_close(batch_source *s)
{
    lm_source *l = (lm_source *)s;
    if (!l)
        return;
    if (l->ld)
        loader_close(l->ld);
    free(l->in);
    free(l->tg);
    free(l->row);
    free(l);
}

batch_source *lm_source_open(const data_spec *spec, int vocab, char *err)
{
    lm_source *l = calloc(1, sizeof *l);
    size_t n = (size_t)spec->B * spec->T;
    if (!l) {
        errf(err, "out of memory");
        return NULL;
    }
    l->in = malloc(n * sizeof *l->in);
    l->tg = malloc(n * sizeof *l->tg);
    l->row = malloc(((size_t)spec->T + 1) * sizeof *l->row);
    if (!l->in || !l->tg || !l->row) {
        lm_close(&l->src);
        errf(err, "out of memory");
        return NULL;
    }
    l->ld = loader_open(spec->path, spec->B, spec->T, spec->rank, spec->world,
                        spec->split == SPLIT_TRAIN && spec->shuffle, spec->seed, vocab, err);
    if (!l->ld) {
        lm_close(&l->src);
        return NULL;
    }
    /* global micro-batches in one pass (each needs n + 1 tokens: the
     * targets run one ahead), then this rank's share */
    uint64_t tok = loader_tokens(l->ld), global = tok > 0 ? (tok - 1) / n : 0;
    l->per_epoch = global / (uint64_t)spec->world;
    if (spec->split == SPLIT_TRAIN && spec->random_rows) {
        /* a row needs T+1 tokens, so it starts at 0 .. tok-T-1, as nanoGPT's
         * torch.randint(len(data) - block_size); the loader checked tok > B*T */
        l->random_rows = 1;
        l->B = spec->B;
        l->T = spec->T;
        l->rank = spec->rank;
        l->world = spec->world;
        l->seed = spec->seed;
        l->starts = tok - (uint64_t)spec->T;
    }
    l->src.batch.tokens = l->in;
    l->src.batch.targets = l->tg;
    l->src.next = lm_next;
    l->src.position = lm_position;
    l->src.seek = lm_seek;
    l->src.epoch_batches = lm_epoch;
    l->src.close = lm_close;
    return &l->src;
}
