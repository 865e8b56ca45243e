/* transformer.h: the transformer block stack that GPT-2, BERT, ViT and the
 * patch models share. One implementation, parameterised:
 *
 *   pre-LN  (GPT-2, ViT, patch models), L blocks then a final layernorm:
 *       a = x + proj(attn(qkv(LN1(x))));   x' = a + fc2(gelu(fc1(LN2(a))))
 *       out = LN_f(x_L)
 *   post-LN (BERT, as the original), no final layernorm:
 *       a = LN1(x + proj(attn(qkv(x))));   x' = LN2(a + fc2(gelu(fc1(a))))
 *       out = x_L
 * with causal or bidirectional attention over NH heads of width C/NH and an
 * MLP of width 4C. Each residual add is fused with the norm that reads it
 * (residual_layernorm_forward, residual_batchnorm_forward). In training with dropout (model.h), each
 * branch's output, proj(...) and fc2(...), is dropped before its residual
 * add (GPT-2's and BERT's residual dropout, sites DROPOUT_SITE_BLOCK(l, 0|1));
 * attention probabilities are not dropped: the fused attention never forms
 * them.
 *
 * Parameters per block, in buffer order, with Hugging Face GPT-2 names under
 * the caller's prefix ("h.N." for GPT-2): ln_1.{weight,bias},
 * attn.c_attn.{weight [3C,C], bias}, attn.c_proj.{weight [C,C], bias},
 * ln_2.{weight,bias}, mlp.c_fc.{weight [4C,C], bias},
 * mlp.c_proj.{weight [C,4C], bias} (matmul weights [out, in]); in post-LN
 * blocks ln_1 and ln_2 are the layernorms after the attention and after the
 * MLP, or, with norm TSTACK_NORM_BATCH, the batchnorms bn_1 and bn_2 (below).
 * A pre-LN stack ends with one more layernorm, named by the caller.
 * Without biases (nobias) every *.bias view is left out, the order of the
 * others unchanged. */
#ifndef ANATOMY_TRANSFORMER_H
#define ANATOMY_TRANSFORMER_H

#include <stdint.h>

#include "../../data/rng.h"
#include "../model.h"

#define TSTACK_VIEWS_PER_BLOCK 12
/* model.h's has_dropout of the families built on the stack: they drop their
 * embeddings' output (DROPOUT_SITE_EMBED) and the stack drops the rest. */
#define TSTACK_DROPOUT_SITES                                                               \
    "the embeddings' output and each block's attention and MLP outputs before their "     \
    "residual adds"

typedef struct {
    int L, NH, C;
    int causal;   /* 1: position i attends to j <= i */
    int post_ln;  /* 1: post-LN blocks (BERT), no final layernorm */
    int nobias;   /* 1: no bias vectors at all, in the linear layers or the
                   * layernorms (nanoGPT's bias=False): the views list the
                   * weights only, and the ops get NULL biases */
    int norm;     /* TSTACK_NORM_LAYER, or TSTACK_NORM_BATCH (post-LN only) */
} tstack_config;

/* The norm of post-norm blocks. Layernorm normalises each token's row over its
 * C features. Batchnorm (PatchTST's, torch.nn.BatchNorm1d over the C features)
 * normalises each feature over every row of the batch in a training forward
 * (model.h m->training), updating running estimates (momentum
 * TSTACK_BN_MOMENTUM), and with those estimates in any other forward. Its
 * parameters are named bn_1.{weight,bias}, bn_2.* in place of ln_1, ln_2, and
 * its running statistics, model state that is not trained, are the views
 * tstack_state_layout gives: bn_1.running_mean, bn_1.running_var, then bn_2's,
 * per block [C]. */
#define TSTACK_NORM_LAYER 0
#define TSTACK_NORM_BATCH 1
#define TSTACK_BN_MOMENTUM 0.1f

/* Appends the stack's views to v (room for tstack_nviews) at *n, from
 * buffer offset *off: L blocks named "<block_prefix>.N.<leaf>" (e.g. "h"),
 * then, pre-LN only, "<final_ln>.weight" and "<final_ln>.bias". Matmul
 * weights decay; vectors do not. */
void tstack_layout(const tstack_config *c, const char *block_prefix, const char *final_ln,
                   param_view *v, int *n, size_t *off);
int tstack_nviews(const tstack_config *c);
/* The stack's state views (batchnorm's running statistics; none for
 * layernorm): tstack_nstate_views of them, appended to v at *n from state
 * buffer offset *off, "<block_prefix>.N.bn_K.running_{mean,var}" [C]. */
int tstack_nstate_views(const tstack_config *c);
void tstack_state_layout(const tstack_config *c, const char *block_prefix, param_view *v,
                         int *n, size_t *off);
/* Their initial values in a host buffer laid out by tstack_state_layout
 * (torch's: running mean 0, running variance 1). */
void tstack_state_init(const tstack_config *c, const param_view *views, float *host);
/* Initialisation of the stack's views in a host buffer (GPT-2's: N(0, 0.02),
 * residual projections N(0, 0.02/sqrt(2L)), zero biases, unit LN gains),
 * drawing from r in view order. */
void tstack_init(const tstack_config *c, const param_view *views, float *host, rng_state *r);

typedef struct tstack tstack;

/* The stack of model m whose first view is m->views[first_view] (laid out
 * by tstack_layout) and whose first state view is m->state_views[first_state]
 * (laid out by tstack_state_layout; any index when it has none). Resolves
 * parameter, gradient and state addresses once, and sets the running
 * statistics to their initial values. */
tstack *tstack_create(model *m, const tstack_config *c, int first_view, int first_state,
                      char *err);
void tstack_destroy(tstack *s);
/* Plans the activations for B x T (frees an earlier plan); honours
 * m->recompute (layernorm and GELU outputs recomputed in backward) and
 * reserves the backend's scratch (be->plan, with vocab V for its sizing). */
int tstack_plan(tstack *s, int B, int T, int V, char *err);
/* Forward from x [B,T,C] (kept: backward reads it); returns the output
 * [B,T,C] (owned by the stack, valid until the next forward). */
void *tstack_forward(tstack *s, const void *x);
/* Backward from dout [B,T,C], the gradient of the output (read only):
 * accumulates the parameter gradients and returns d loss / d x [B,T,C]
 * (owned by the stack, valid until the next backward). Calls m->grads_ready
 * for the final layernorm's and each block's views as they are done. */
void *tstack_backward(tstack *s, const void *dout);

/* Incremental decoding (pre-LN, causal stacks) of up to B sequences at once,
 * whose first prefix_len positions may be shared: sequence b's are those of
 * prefix row b % prefix_rows (1 <= prefix_rows <= B; e.g. the paths sampled
 * from one prompt), cached once for all the sequences that continue them.
 * decode_plan reserves every block's k, v rows for the prefix_rows prefixes
 * and for each sequence's maxlen positions after them (prefix_len 0: no
 * prefix, B sequences of maxlen positions) and B-row buffers. decode_step
 * runs the input rows x [n, C] at position pos through the stack and returns
 * the output rows [n, C] (owned by the stack), or NULL where pos or n is out
 * of range: below prefix_len, the rows are prefix rows 0..n-1 (n <=
 * prefix_rows); from prefix_len on, sequences 0..n-1 (n <= B), which read
 * their prefix row's cached positions (all prefix_len of them: the prefix is
 * decoded first) and their own positions prefix_len..pos-1 cached by earlier
 * steps. The same math as tstack_forward's row pos of each sequence. */
int tstack_decode_plan(tstack *s, int B, int maxlen, int prefix_rows, int prefix_len, char *err);
void *tstack_decode_step(tstack *s, const void *x, int n, int pos);

#endif
