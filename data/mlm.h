/* mlm.h: the data side of masked-LM pretraining (BERT), with no knowledge of
 * models: a random-access token stream over shards, sequence pairs
 * [CLS] A [SEP] (B [SEP]) with segment ids and next-sentence labels, and the
 * masking of BERT's paper (15% of the maskable positions chosen; of those
 * 80% become [MASK], 10% a random token, 10% stay as they are).
 *
 * Special tokens. A model vocabulary of V ids is the tokenizer's V - 4 ids
 * followed by four specials (a RoBERTa-style BPE BERT):
 *     [CLS] = V-4   [SEP] = V-3   [MASK] = V-2   [PAD] = V-1
 * so bytes (256 ids) give V = 260 and GPT-2's BPE (50257 ids) V = 50261.
 * Sequences are always full (T tokens), so [PAD] is reserved but not emitted.
 *
 * Everything random is a pure function of (seed, global micro-batch index):
 * which window a sequence reads (with shuffling), where A ends, whether B is
 * the true continuation, and the masks. Reading micro-batch g again gives the
 * same batch, so a resumed run (seek) sees exactly what it would have. */
#ifndef ANATOMY_MLM_H
#define ANATOMY_MLM_H

#include <stdint.h>

#define MLM_SPECIALS 4

typedef struct {
    int vocab;                /* tokenizer ids [0, vocab); the specials follow */
    int cls, sep, mask, pad;
} mlm_vocab;

/* The specials of a model vocabulary of V ids (V > MLM_SPECIALS). */
static inline mlm_vocab mlm_vocab_of(int V)
{
    mlm_vocab v = { V - MLM_SPECIALS, V - 4, V - 3, V - 2, V - 1 };
    return v;
}

/* Fractions of BERT's masking. */
#define MLM_RATE 0.15      /* of the maskable positions, chosen for prediction */
#define MLM_P_MASK 0.8     /* of the chosen: replaced by [MASK] */
#define MLM_P_RANDOM 0.1   /* of the chosen: replaced by a random tokenizer id */
                           /* the remaining 0.1 keep their token */

/* Masks `rows` sequences of T tokens in place, drawing from (seed, index)
 * alone. In each row the maskable positions are those holding a tokenizer
 * id (not [CLS], [SEP], [MASK], [PAD]); floor(0.15 n + u) of its n maskable
 * positions are chosen (u uniform in [0,1): 15% in expectation, exactly),
 * each replaced by [MASK] with probability 0.8, by a uniform tokenizer id
 * with 0.1, kept with 0.1. targets[i] is the original token at chosen
 * positions and -1 elsewhere. */
void mlm_mask(const mlm_vocab *voc, uint64_t seed, uint64_t index, int32_t *tokens,
              int32_t *targets, int rows, int T);

/* ---- batches of sequence pairs from token shards ---- */

typedef struct mlm_batcher mlm_batcher;

typedef struct {
    const char *path;   /* glob of token shards (data/shard.h layout) */
    int B, T;           /* sequences per micro-batch, tokens per sequence */
    int nsp;            /* 1: [CLS] A [SEP] B [SEP], B the true continuation of A
                         * half the time (label 1), a random span otherwise
                         * (label 0); 0: [CLS] A [SEP], one segment, labels -1 */
    int shuffle;        /* windows visited in a per-epoch permutation from seed */
    int mask;           /* 1: apply mlm_mask (0: targets all -1, tokens as read) */
    uint64_t seed;
    mlm_vocab voc;
} mlm_spec;

/* Opens the shards (validated like shard.h's loader: magic, version, sizes).
 * The stream is cut into windows of the sequence's content length (T-2, or
 * T-3 with nsp); it must hold at least one window plus one token. Tokens are
 * checked against voc.vocab as read. NULL with err on failure. */
mlm_batcher *mlm_open(const mlm_spec *spec, char *err);
/* Builds global micro-batch g: tokens, segments, targets [B*T], labels [B].
 * Sequence b reads window (g*B + b) of the stream (wrapping at its end;
 * permuted per epoch with shuffle). -1 with err naming the shard and offset
 * of a token that is not a tokenizer id. */
int mlm_batch(mlm_batcher *mb, uint64_t g, int32_t *tokens, int32_t *segments,
              int32_t *targets, int32_t *labels, char *err);
/* Windows in one pass over the stream (sequences per epoch). */
uint64_t mlm_windows(const mlm_batcher *mb);
/* Tokens in the stream. */
uint64_t mlm_tokens(const mlm_batcher *mb);
void mlm_close(mlm_batcher *mb);

#endif
