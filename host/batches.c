/* batches.c: the token-shard batch source of the language models. */
#include "batches.h"

#include <stdlib.h>

#include "../data/errbuf.h"
#include "../data/shard.h"

typedef struct {
    batch_source src; /* first: a batch_source * is an lm_source * */
    loader *ld;
    int32_t *in, *tg;
    uint64_t per_epoch;
} lm_source;

static int lm_next(batch_source *s, char *err)
{
    lm_source *l = (lm_source *)s;
    return loader_next(l->ld, l->in, l->tg, err);
}

static uint64_t lm_position(const batch_source *s)
{
    return loader_position(((const lm_source *)s)->ld);
}

static void lm_seek(batch_source *s, uint64_t pos)
{
    loader_seek(((lm_source *)s)->ld, pos);
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
    if (!l->in || !l->tg) {
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
    l->src.batch.tokens = l->in;
    l->src.batch.targets = l->tg;
    l->src.next = lm_next;
    l->src.position = lm_position;
    l->src.seek = lm_seek;
    l->src.epoch_batches = lm_epoch;
    l->src.close = lm_close;
    return &l->src;
}
