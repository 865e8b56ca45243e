/* bpe.h: GPT-2's byte-level BPE. Loads the vocabulary (OpenAI encoder.json +
 * vocab.bpe, or Hugging Face vocab.json + merges.txt), pre-tokenizes with the
 * GPT-2 pattern, maps bytes through GPT-2's byte-to-unicode table and merges
 * by rank. Any byte string encodes; decoding the ids gives the bytes back.
 *
 * A loaded bpe is read-only; bpe_encode may be called from many threads on
 * the same bpe at once (each call borrows one of a pool of piece caches). */
#ifndef ANATOMY_BPE_H
#define ANATOMY_BPE_H

#include <stddef.h>
#include <stdint.h>

#define BPE_EOT_TEXT "<|endoftext|>"

typedef struct bpe bpe;

/* Loads dir/encoder.json + dir/vocab.bpe, or failing those dir/vocab.json +
 * dir/merges.txt. Every merge must name two tokens and produce a third of the
 * vocabulary; the 256 byte tokens must all be present. NULL + err on failure. */
bpe *bpe_load(const char *dir, char *err);
/* Same, from explicit paths: the JSON vocabulary and the merges list. */
bpe *bpe_load_files(const char *vocab_path, const char *merges_path, char *err);
void bpe_free(bpe *b);
int bpe_vocab_size(const bpe *b);
/* The id of "<|endoftext|>" in the vocabulary, or -1. */
int bpe_eot(const bpe *b);
/* The number of merges read. */
int bpe_merges(const bpe *b);
/* A 64-bit digest of the vocabulary's content (tokens' bytes in id order, then
 * the merges as id pairs), the same for both file layouts: tells whether two
 * folders hold the same vocabulary. Not cryptographic. */
uint64_t bpe_fingerprint(const bpe *b);
/* Appends the ids of text[0..len) to *ids (grown with realloc). allow_special:
 * "<|endoftext|>" becomes bpe_eot(); otherwise it is ordinary text. Returns 0,
 * or -1 with err filled (out of memory). */
int bpe_encode(bpe *b, const char *text, size_t len, int allow_special,
               int32_t **ids, size_t *n, size_t *cap, char *err);
/* The bytes of token id; NULL when id is out of range. */
const char *bpe_token(const bpe *b, int32_t id, size_t *len);

/* Splits text[0..len) into GPT-2 pre-tokenizer pieces: calls fn(piece, n, ctx)
 * for each, in order; their concatenation is the input. Stops and returns the
 * first nonzero value fn returns. Exposed for the tests. */
int bpe_split(const char *text, size_t len,
              int (*fn)(const char *piece, size_t n, void *ctx), void *ctx);

#endif
