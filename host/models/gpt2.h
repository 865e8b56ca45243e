/* gpt2.h: the GPT-2 family (decoder-only transformer LM, pre-layernorm,
 * tied input and output embeddings). */
#ifndef ANATOMY_GPT2_H
#define ANATOMY_GPT2_H

#include <stdint.h>

#include "../family.h"
#include "../model.h"

typedef struct {
    int V;     /* vocabulary size (50257 for GPT-2); padded to Vp inside */
    int maxT;  /* context length (positions) */
    int L;     /* layers */
    int NH;    /* heads */
    int C;     /* width */
    int nobias; /* 1: no biases in linear layers and layernorms (nanoGPT's
                 * bias=False); Hugging Face and llm.c files always have them */
} gpt2_config;

/* Vocabulary rows as stored: V rounded up to a multiple of 128, so that the
 * classifier matmul has aligned shapes; padded rows are zero and never trained. */
static inline int gpt2_padded_vocab(int V) { return (V + 127) / 128 * 128; }

/* Presets: gpt2-124m gpt2-350m gpt2-774m gpt2-1558m d2 d4 d6 d12. */
int gpt2_preset(const char *name, gpt2_config *cfg, char *err);
/* Validates a config (positive sizes, NH divides C, ...); err names the field. */
int gpt2_check_config(const gpt2_config *cfg, char *err);
/* The parameter table: views in buffer order, with Hugging Face names
 * (wte.weight, wpe.weight, h.N.ln_1.weight, ..., ln_f.bias). Matmul weights
 * are stored [out, in]. *views is malloc'd. Returns total elements. */
size_t gpt2_layout(const gpt2_config *cfg, param_view **views, int *nviews);
/* Creates the model on a backend with its buffers allocated (parameters uninitialised). */
model *gpt2_create(backend *be, const gpt2_config *cfg, char *err);
/* GPT-2 initialisation into a host buffer laid out by gpt2_layout: N(0, 0.02),
 * residual projections N(0, 0.02/sqrt(2L)), zero biases, unit LN gains,
 * padded vocabulary rows zero. */
void gpt2_init_params(const gpt2_config *cfg, float *host, uint64_t seed);
/* The family table entry (host/family.h). */
extern const model_family gpt2_family;
/* The config a GPT-2 model was created with. */
const gpt2_config *gpt2_config_of(const model *m);

#endif
