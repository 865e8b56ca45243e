/* ffnn.h: the feed-forward language model of Bengio et al. (2003): the
 * previous n tokens' embeddings concatenated, a tanh hidden layer, softmax
 * over the vocabulary, optionally with direct connections from the
 * embeddings to the output. */
#ifndef ANATOMY_FFNN_H
#define ANATOMY_FFNN_H

#include "../family.h"

/* The config, as the family's fields in order (model_config.v). */
typedef struct {
    int V;      /* vocabulary */
    int n;      /* window: the tokens t-n+1 .. t predict token t+1 */
    int C;      /* embedding width per token */
    int H;      /* hidden width */
    int direct; /* 1: direct connections, embeddings -> output */
} ffnn_config;

/* Output rows as stored: V rounded up to a multiple of 128 (aligned output
 * matmul); the padding is zero, never trained, and not counted. */
static inline int ffnn_padded_vocab(int V) { return (V + 127) / 128 * 128; }

extern const model_family ffnn_family;

#endif
