/* tokenizer.h: text <-> token ids. Two kinds: "bytes" (V = 256, id = byte value)
 * and "gpt2" (GPT-2's byte-level BPE, V = 50257). */
#ifndef ANATOMY_TOKENIZER_H
#define ANATOMY_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct tokenizer tokenizer;

/* kind: "bytes" or "gpt2". vocab_dir: folder with encoder.json + vocab.bpe (or
 * vocab.json + merges.txt) for gpt2; NULL means the default cache folder.
 * Returns NULL and fills err (ERRBUF bytes) on failure. */
tokenizer *tokenizer_open(const char *kind, const char *vocab_dir, char *err);
void tokenizer_close(tokenizer *tk);
int tokenizer_vocab_size(const tokenizer *tk);
/* The end-of-text id (50256 for gpt2), or -1 when the kind has none. */
int tokenizer_eot(const tokenizer *tk);
/* Appends the ids of text[0..len) to *ids (realloc'd; *n and *cap updated).
 * allow_special: recognise "<|endoftext|>" as the special token.
 * Returns 0, or -1 with err filled (out of memory). */
int tokenizer_encode(tokenizer *tk, const char *text, size_t len, int allow_special,
                     int32_t **ids, size_t *n, size_t *cap, char *err);
/* The bytes of one token; *len set. NULL for an id out of range. */
const char *tokenizer_decode(const tokenizer *tk, int32_t id, size_t *len);

#endif
