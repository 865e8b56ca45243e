/* bert.h: the BERT family (bidirectional transformer encoder pretrained by
 * masked-LM, optionally with next-sentence prediction), on the shared
 * post-LN transformer stack (transformer.h).
 *
 * The model vocabulary V is the tokenizer's ids followed by four specials
 * (data/mlm.h): [CLS] = V-4, [SEP] = V-3, [MASK] = V-2, [PAD] = V-1. With
 * bytes V = 260, with GPT-2's BPE V = 50261 (the presets' default). */
#ifndef ANATOMY_BERT_H
#define ANATOMY_BERT_H

#include "../family.h"

/* The config, as the family's fields in order (model_config.v). */
typedef struct {
    int V;     /* model vocabulary, the four specials included */
    int maxT;  /* longest sequence (learned positions) */
    int L;     /* post-LN blocks */
    int NH;    /* heads */
    int C;     /* width */
    int nsp;   /* 1: pooler and next-sentence head, [CLS] A [SEP] B [SEP] pairs */
    int nobias; /* 1: no bias in any linear layer or layernorm, the heads' included */
} bert_config;

/* Word-embedding rows (and output-bias entries) as stored: V rounded up to a
 * multiple of 128 for aligned decoder matmuls; the padding is zero, never
 * trained, and not counted in the published parameter count. */
static inline int bert_padded_vocab(int V) { return (V + 127) / 128 * 128; }

extern const model_family bert_family;

#endif
