/* rnn.h: the recurrent language models, Elman (tanh) and LSTM: token
 * embeddings, L recurrent layers, a softmax over the vocabulary, trained by
 * truncated back-propagation through time with the state carried from one
 * micro-batch to the next of the same stream. */
#ifndef ANATOMY_RNN_H
#define ANATOMY_RNN_H

#include "../family.h"

/* The config, as the family's fields in order (model_config.v); the same for
 * both families (the cell is the family's). */
typedef struct {
    int V;   /* vocabulary */
    int C;   /* embedding width (the first layer's input) */
    int H;   /* hidden (state) width of every layer */
    int L;   /* recurrent layers */
    int eot; /* the token that starts a document (the state is reset there); -1: none;
              * -2: GPT-2's end-of-text (50256) when V is GPT-2's 50257, else none */
} rnn_config;

/* Output rows as stored: V rounded up to a multiple of 128 (aligned output
 * matmul); the padding is zero, never trained, and not counted. */
static inline int rnn_padded_vocab(int V) { return (V + 127) / 128 * 128; }

extern const model_family rnn_family, lstm_family;

#endif
