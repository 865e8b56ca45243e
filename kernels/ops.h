/* ops.h: the op table. A backend is a struct of function pointers plus a
 * context; model code calls only these entries and never touches tensor memory.
 *
 * Conventions shared by every op:
 *  - Buffers are opaque device pointers. Their element type is one of the
 *    backend's three dtypes: `act` (parameters as used by forward, gradients,
 *    activations), `stat` (layernorm mean/rstd, attention log-sum-exp,
 *    per-position losses) and `opt` (master weights, AdamW moments).
 *    The CPU backend uses one real type for all three (fp32, or fp64 for the
 *    gradient checks); the CUDA backend uses bf16 or fp32 for `act` and fp32
 *    for the others.
 *  - Token ids and targets are int32 device buffers.
 *  - Every backward op ACCUMULATES (+=) into every gradient it writes, inputs
 *    and parameters alike, so residual branches and micro-batches simply add;
 *    except where an op takes a grad_mode (below) or says "written".
 *  - Row-major shapes; [N, C] means N rows of C contiguous elements.
 *  - Ops are asynchronous with respect to the host where the backend allows;
 *    `download` and the scalar-returning ops synchronise.
 */
#ifndef ANATOMY_OPS_H
#define ANATOMY_OPS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" { /* the CUDA backend (kernels/cuda/) is C++ */
#endif

typedef enum { DT_F32 = 0, DT_F64 = 1, DT_BF16 = 2, DT_I32 = 3 } dtype;

static inline size_t dtype_size(dtype t)
{
    switch (t) {
    case DT_F64: return 8;
    case DT_BF16: return 2;
    default: return 4;
    }
}

static inline const char *dtype_name(dtype t)
{
    switch (t) {
    case DT_F32: return "fp32";
    case DT_F64: return "fp64";
    case DT_BF16: return "bf16";
    default: return "int32";
    }
}

/* Byte address of element `i` of a buffer of type `t`; the only pointer
 * arithmetic model code does on device buffers. */
static inline void *buf_at(void *base, size_t i, dtype t)
{
    return base ? (char *)base + i * dtype_size(t) : NULL;
}

/* A contiguous run of parameters that share AdamW's weight-decay setting. */
typedef struct {
    size_t offset, count;
    int decay; /* 1: decoupled weight decay applies (tensors of 2+ dims) */
} param_segment;

typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
    int step;          /* 1-based, for bias correction */
    float grad_scale;  /* gradients are multiplied by this first (clipping) */
    uint32_t seed;     /* random bits for stochastic rounding of bf16 params
                        * (CUDA, with master weights); hashed with step and
                        * element index; ignored by the CPU backend */
    size_t state_offset; /* master, m and v hold the state of the parameters from
                          * this element on: parameter i's is their element
                          * i - state_offset (0: all of it; ZeRO stage 1: the
                          * first element of this rank's shard). Segments lie
                          * at or after it. */
} adamw_params;

/* How a backward op writes an input gradient of which it is the first
 * writer. GRAD_ADD: += (the rule above). GRAD_SET: = , for a scratch buffer
 * whose old contents are garbage: the caller skips zero-filling it, and the
 * op does not read it (the CUDA backend's matmul runs with beta = 0, which
 * neither reads the zeros nor needs them written first). */
typedef enum { GRAD_ADD = 0, GRAD_SET = 1 } grad_mode;

/* The regression_loss op's kinds (its comment has their math). */
typedef enum { LOSS_MSE = 0, LOSS_MAE = 1, LOSS_HUBER = 2 } regression_loss_kind;

typedef struct backend backend;
struct backend {
    const char *name;   /* "cpu", "cpu-fp64", "cuda" */
    dtype act, stat, opt;
    void *ctx;

    /* ---- memory ---- */
    /* Returns NULL when `bytes` cannot be allocated. Memory is uninitialised. */
    void *(*alloc)(backend *be, size_t bytes);
    void (*free)(backend *be, void *p);
    /* Copies n elements host -> device / device -> host, converting between
     * the host type `ht` and the device type `dt` (int32 only to int32). */
    void (*upload)(backend *be, void *dst, dtype dt, const void *src, dtype ht, size_t n);
    void (*download)(backend *be, void *dst, dtype ht, const void *src, dtype dt, size_t n);
    /* dst[i] = value for n elements of type t. */
    void (*fill)(backend *be, void *dst, dtype t, double value, size_t n);
    /* Waits for all queued work. */
    void (*sync)(backend *be);
    void (*destroy)(backend *be);
    /* Optional (NULL: nothing to do, as on the CPU). Called by a model's plan
     * with its largest shapes (batch B, sequence T, width C, NH heads,
     * vocabulary V) before the first step, so that the backend can reserve
     * the scratch its ops need (CUDA: attention backward's row dot products
     * [B,NH,T], column-sum partials, encoder buckets) and nothing
     * allocates during training. Returns -1 and fills err (ERRBUF bytes),
     * naming the memory needed, when it does not fit. */
    int (*plan)(backend *be, int B, int T, int C, int NH, int V, char *err);
    /* Optional (NULL on the CPU): opens (push 1) or closes (push 0, name
     * unused) a named profiler range; CUDA: NVTX, for Nsight Systems. Model
     * and trainer code bracket each phase ("forward", "backward",
     * "optimizer") and each layer in it ("layer 3 forward"); ranges nest
     * and every push is matched by a pop. The name is copied at the push. */
    void (*range)(backend *be, const char *name, int push);
    /* Optional (NULL on the CPU): the native stream the ops are queued on
     * (CUDA: a cudaStream_t), for libraries that must queue on it too (NCCL). */
    void *(*stream)(backend *be);
    /* Optional (NULL on the CPU): the device's free and total memory in bytes
     * (CUDA: cudaMemGetInfo), for the trainer's memory plan and its check. */
    int (*mem_info)(backend *be, size_t *free_bytes, size_t *total_bytes);
    /* Optional (NULL: the backend holds no device memory of its own): the
     * bytes of device memory the backend holds for itself (fixed buffers such
     * as the matmul library's workspace, plus the scratch `plan` reserves)
     * once plan(B, T, C, NH, V) has run; B = 0: what it holds now. The memory
     * plan (host/memplan.c) asks before allocating anything. */
    size_t (*workspace_bytes)(backend *be, int B, int T, int C, int NH, int V);

    /* ---- ops (types: act unless stated) ---- */

    /* encoder: out[b,t,:] = wte[tok[b,t],:] + wpe[t,:].
     * out: [B,T,C]; tok: int32 [B,T]; wte: [Vp,C]; wpe: [maxT,C]. Saves nothing. */
    void (*encoder_forward)(backend *be, void *out, const int32_t *tok, const void *wte,
                            const void *wpe, int B, int T, int C);
    /* dwte[tok[b,t],:] += dout[b,t,:];  dwpe[t,:] += sum_b dout[b,t,:]. */
    void (*encoder_backward)(backend *be, void *dwte, void *dwpe, const void *dout,
                             const int32_t *tok, int B, int T, int C);

    /* layernorm: y[i,:] = (x[i,:] - mean_i) * rstd_i * g + b, rstd_i = 1/sqrt(var_i + 1e-5)
     * (biased variance); bias may be NULL (b = 0: no bias; layernorm_backward then
     * gets a NULL dbias). x, y: [N,C]. Saves mean, rstd: stat [N]. */
    void (*layernorm_forward)(backend *be, void *out, void *mean, void *rstd, const void *inp,
                              const void *weight, const void *bias, int N, int C);
    /* xhat = (x-mean)*rstd;  dg += sum_i dy*xhat;  db += sum_i dy;
     * dx += rstd * (dy*g - mean_c(dy*g) - xhat * mean_c(dy*g*xhat)). */
    void (*layernorm_backward)(backend *be, void *dinp, void *dweight, void *dbias,
                               const void *dout, const void *inp, const void *weight,
                               const void *mean, const void *rstd, int N, int C);

    /* residual + layernorm: res_out = a + b, then ln_out = layernorm(res_out) as
     * above, saving mean, rstd: stat [N]. a, b, res_out, ln_out: [N,C]. Equal to
     * residual_forward then layernorm_forward (LN sees res_out as stored), but
     * one pass on CUDA: saves re-reading res_out, N*C act elements per call.
     * Backward: layernorm_backward (input res_out) and then the residual's
     * gradient, which the caller accumulates into both branches. */
    void (*residual_layernorm_forward)(backend *be, void *res_out, void *ln_out, void *mean,
                                       void *rstd, const void *a, const void *b,
                                       const void *weight, const void *bias, int N, int C);

    /* batchnorm (torch.nn.BatchNorm1d over C features, the N rows its batch): per
     * column c, y[i,c] = (x[i,c] - mean_c) * rstd_c * g[c] + b[c], rstd_c = 1/sqrt(var_c + 1e-5);
     * bias may be NULL (b = 0). x, y: [N,C]; running_mean, running_var: stat [C].
     *  train = 1: mean_c, var_c are column c's mean and biased variance over the N rows;
     *    saves mean, rstd: stat [C] for the backward, and updates the running estimates
     *    as torch does: running_mean = (1 - momentum) running_mean + momentum mean_c,
     *    running_var = (1 - momentum) running_var + momentum var_c N / (N - 1) (unbiased;
     *    the biased variance when N = 1).
     *  train = 0 (evaluation): mean_c, var_c are running_mean, running_var, left unchanged;
     *    mean and rstd (may be NULL) get what was used. */
    void (*batchnorm_forward)(backend *be, void *out, void *mean, void *rstd,
                              void *running_mean, void *running_var, const void *inp,
                              const void *weight, const void *bias, float momentum, int train,
                              int N, int C);
    /* residual + batchnorm: res_out = a + b, then out = batchnorm(res_out) as above.
     * a, b, res_out, out: [N,C]. Equal to residual_forward then batchnorm_forward
     * (the post-norm blocks' order, as residual_layernorm_forward). */
    void (*residual_batchnorm_forward)(backend *be, void *res_out, void *out, void *mean,
                                       void *rstd, void *running_mean, void *running_var,
                                       const void *a, const void *b, const void *weight,
                                       const void *bias, float momentum, int train, int N,
                                       int C);
    /* From the forward's saved mean, rstd: xhat = (x - mean_c) rstd_c;
     * dg[c] += sum_i dy xhat;  db[c] += sum_i dy (dinp and db may be NULL: not wanted);
     *  train = 1 (through the batch statistics):
     *    dx += rstd_c g[c] (dy - mean_i(dy) - xhat mean_i(dy xhat)), means over the N rows;
     *  train = 0 (the statistics were constants):  dx += rstd_c g[c] dy. */
    void (*batchnorm_backward)(backend *be, void *dinp, void *dweight, void *dbias,
                               const void *dout, const void *inp, const void *weight,
                               const void *mean, const void *rstd, int train, int N, int C);

    /* matmul: out[N,OC] = inp[N,IC] @ weight[OC,IC]^T + bias[OC] (bias may be NULL).
     * Saves nothing (backward needs inp and weight). */
    void (*matmul_forward)(backend *be, void *out, const void *inp, const void *weight,
                           const void *bias, int N, int IC, int OC);
    /* dinp += dout @ weight (dinp_mode GRAD_ADD) or dinp = dout @ weight (GRAD_SET);
     * dweight += dout^T @ inp;  dbias += sum_n dout.
     * dinp or dbias may be NULL when not wanted. */
    void (*matmul_backward)(backend *be, void *dinp, void *dweight, void *dbias,
                            const void *dout, const void *inp, const void *weight,
                            int N, int IC, int OC, grad_mode dinp_mode);

    /* matmul + gelu: pre[N,OC] = inp[N,IC] @ weight[OC,IC]^T + bias[OC] (bias may be
     * NULL), out[N,OC] = gelu(pre) (gelu as below). Writes both: pre is what
     * gelu_backward needs. Equal to matmul_forward then gelu_forward, but the
     * CUDA backend does it in the matmul's epilogue (cuBLASLt GELU_AUX_BIAS),
     * saving gelu_forward's re-read of pre: N*OC act elements per call.
     * Backward: gelu_backward into dpre, then matmul_backward. */
    void (*matmul_gelu_forward)(backend *be, void *pre, void *out, const void *inp,
                                const void *weight, const void *bias, int N, int IC, int OC);
    /* matmul backward through the GELU that made its input: the forward was
     * out[N,OC] = inp @ weight^T + bias with inp = gelu(pre), pre and inp: [N,IC].
     * dpre = (dout @ weight) * gelu'(pre), WRITTEN (GRAD_SET: dpre is scratch);
     * dweight += dout^T @ inp;  dbias += sum_n dout (dbias may be NULL).
     * Equal to matmul_backward (GRAD_SET) into a buffer d, then gelu_backward
     * from d into a zeroed dpre, but on CUDA (bf16) one cuBLASLt call with the
     * DGELU epilogue: no write and re-read of d, no GELU-backward pass. */
    void (*matmul_gelu_backward)(backend *be, void *dpre, void *dweight, void *dbias,
                                 const void *dout, const void *inp, const void *pre,
                                 const void *weight, int N, int IC, int OC);

    /* attention: multi-head scaled dot-product attention.
     * qkv: [B,T,3C] holding q, k, v for NH heads of size hs = C/NH each
     * (q of head h at columns [h*hs, (h+1)*hs), k at C + that, v at 2C + that).
     * s_ij = q_i.k_j / sqrt(hs) (j <= i when causal); p = softmax_j(s);
     * out[b,i,h*hs:] = sum_j p_ij v_j.  out: [B,T,C].
     * Saves lse: stat [B,NH,T], the log-sum-exp of each score row, so the
     * backward recomputes p without storing the [T,T] matrix. */
    void (*attention_forward)(backend *be, void *out, void *lse, const void *qkv,
                              int B, int T, int C, int NH, int causal);
    /* D_i = dout_i.out_i;  dp_ij = dout_i.v_j;  ds_ij = p_ij (dp_ij - D_i);
     * dq_i += sum_j ds_ij k_j / sqrt(hs);  dk_j += sum_i ds_ij q_i / sqrt(hs);
     * dv_j += sum_i p_ij dout_i.  dqkv: [B,T,3C]. */
    void (*attention_backward)(backend *be, void *dqkv, const void *dout, const void *qkv,
                               const void *out, const void *lse, int B, int T, int C, int NH,
                               int causal);

    /* attention for one new position of B sequences (incremental decoding
     * with a key/value cache): qkv: [B, 3C], the new position pos of each
     * sequence in attention_forward's layout. A sequence's cached k and v
     * (a row of 2C per position) lie in two places: its positions below
     * prefix_len in a shared prefix, prefix: [prefix_rows, prefix_len, 2C],
     * sequence b's being prefix row b % prefix_rows (sampled paths that
     * continue one prompt read its rows once, not a copy each); its positions
     * prefix_len..pos in its own cache, kv: [B, maxlen, 2C], position j in
     * row j - prefix_len (prefix_len <= pos < prefix_len + maxlen).
     * prefix_len 0: no prefix (prefix, prefix_rows unused), kv holds all.
     * Writes each sequence's new k, v into its row pos - prefix_len of kv,
     * then out: [B, C], the causal attention of its q over its positions
     * 0..pos (the row pos of attention_forward's output for T = pos + 1).
     * Sequence-major, so that the rows one query reads are contiguous; the
     * sequences of one prefix row run together, so that its rows are read
     * from cache after the first. No backward. */
    void (*attention_decode)(backend *be, void *out, void *kv, const void *qkv, int B, int pos,
                             int maxlen, const void *prefix, int prefix_rows, int prefix_len,
                             int C, int NH);

    /* gelu (tanh approximation, as GPT-2):
     * y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).  x, y: [N]. */
    void (*gelu_forward)(backend *be, void *out, const void *inp, size_t N);
    /* dx += dy * gelu'(x). */
    void (*gelu_backward)(backend *be, void *dinp, const void *inp, const void *dout, size_t N);

    /* residual: out = a + b, [N]. Its backward is `accumulate` into each input. */
    void (*residual_forward)(backend *be, void *out, const void *a, const void *b, size_t N);
    /* dst += src, [N]. */
    void (*accumulate)(backend *be, void *dst, const void *src, size_t N);

    /* crossentropy: fused softmax + cross-entropy over the first V of Vp columns.
     * logits: [N,Vp]; targets: int32 [N], -1 means "ignore this position".
     * losses[n] (stat) = logsumexp(logits[n,:V]) - logits[n,target] (0 if ignored).
     * If dlogits is not NULL: dlogits[n,v] = scale * (softmax(logits[n,:V])_v - [v == target])
     * for v < V, 0 for padded columns and ignored rows. dlogits may alias logits
     * (the usual case: the logits are overwritten by their gradient). */
    void (*crossentropy)(backend *be, void *losses, void *dlogits, const void *logits,
                         const int32_t *targets, int N, int V, int Vp, float scale);

    /* ---- ops shared by the other model families (BERT, ViT, FFNN, RNN, patch models) ---- */

    /* embedding: out[n,:] = table[ids[n],:] (accumulate 0) or out[n,:] += table[ids[n],:]
     * (accumulate 1); a negative id reads a zero row. out: [N,C]; ids: int32 [N];
     * table: [rows,C]. Saves nothing. (FFNN: the window's ids laid out [B,T,n] give
     * the concatenated window embeddings [B*T, n*C]; BERT: segment embeddings.) */
    void (*embedding_forward)(backend *be, void *out, const int32_t *ids, const void *table,
                              int N, int C, int accumulate);
    /* dtable[ids[n],:] += dout[n,:] for ids >= 0. */
    void (*embedding_backward)(backend *be, void *dtable, const void *dout, const int32_t *ids,
                               int N, int C);

    /* sequence embedding: out[b,t,:] = x[b,t-k,:] + pos[t,:] for t >= k, and, with
     * first not NULL (k = 1), out[b,0,:] = first[:] + pos[0,:]; k = 0 without first.
     * out: [B,T,C]; x: [B,T-k,C]; first: [C]; pos: [>=T,C]. Saves nothing.
     * (ViT: the [CLS] row before the patch embeddings; patch models: positions only.) */
    void (*sequence_embed_forward)(backend *be, void *out, const void *x, const void *first,
                                   const void *pos, int B, int T, int C);
    /* dx[b,t-k,:] += dout[b,t,:];  dfirst += sum_b dout[b,0,:];  dpos[t,:] += sum_b dout[b,t,:].
     * dfirst is NULL exactly when the forward's first was (k = 0: it says k);
     * dx may be NULL when not wanted. */
    void (*sequence_embed_backward)(backend *be, void *dx, void *dfirst, void *dpos,
                                    const void *dout, int B, int T, int C);

    /* row mean over a range: out[b,:] = (1/n) sum_{i<n} x[b,t+i,:], rows t..t+n-1 of every
     * sequence (0 <= t, n >= 1, t + n <= T). out: [B,C]; x: [B,T,C]. Saves nothing.
     * n = 1 selects one row exactly ([CLS] pooling); ViT's mean pooling takes the
     * patch rows 1..N. Backward: dx[b,t+i,:] += dout[b,:] / n. */
    void (*rows_mean_forward)(backend *be, void *out, const void *x, int B, int T, int C, int t,
                              int n);
    void (*rows_mean_backward)(backend *be, void *dx, const void *dout, int B, int T, int C,
                               int t, int n);

    /* tanh: y = tanh(x), [N].  Backward: dx += dy * (1 - y^2) (from the output y). */
    void (*tanh_forward)(backend *be, void *out, const void *inp, size_t N);
    void (*tanh_backward)(backend *be, void *dinp, const void *out, const void *dout, size_t N);

    /* regression loss: per row n, the error e = pred[n,c] - target[n,c] in units of
     * unit[n] > 0 (stat [N]; NULL: all 1), i.e. the error u = unit[n] * e in the data's
     * units, scored by l(u) of `kind` (regression_loss_kind) and given back in the row's
     * units squared, l(u) / unit^2 (MSE's is e^2 whatever the unit), so that a caller
     * whose rows were normalised by unit multiplies losses and gradients by unit^2 to
     * get the data's (patchts: RevIN's sd, in double on the host). With d = delta / unit:
     *              l(u)                          per element, returned    dpred / scale
     *   LOSS_MSE    u^2                           e^2                      2e
     *   LOSS_MAE    |u|                           |e| / unit               sign(e) / unit
     *   LOSS_HUBER  u^2/2 if |u| < delta,         e^2/2 if |e| < d,        clamp(e, -d, d)
     *               delta (|u| - delta/2) else    d (|e| - d/2) else
     * (PyTorch's mse_loss, l1_loss, huber_loss; sign(0) = 0 as l1_loss's gradient; delta > 0,
     * read by LOSS_HUBER only). losses[n] (stat) = sum_c of the per-element loss over C
     * columns; target: act [N,C]. If dpred is not NULL: dpred[n,c] = scale times the last
     * column (written, not accumulated: like crossentropy's dlogits, it starts the
     * backward). dpred may alias pred. */
    void (*regression_loss)(backend *be, void *losses, void *dpred, const void *pred,
                            const void *target, const void *unit, int N, int C, int kind,
                            float delta, float scale);

    /* dropout (training only; models skip it at p = 0):
     *   out[i] = inp[i] * keep(i) / (1 - p),  keep(i) = dropout_keep(seed, i, dropout_threshold(p))
     * for 0 <= i < N, 0 <= p < 1. The mask is a function of (seed, i) alone
     * (kernels/dropout_mask.h), so every backend drops the same elements and
     * nothing is saved. out may alias inp. The op is its own backward: its
     * Jacobian is the diagonal keep(i) / (1 - p), so d inp = dropout_forward
     * of d out with the same p and seed (written, not accumulated: callers
     * run it in place on a gradient they own, or into a scratch buffer). */
    void (*dropout_forward)(backend *be, void *out, const void *inp, size_t N, float p,
                            uint64_t seed);

    /* ---- recurrent ops (issue 9 adds them here) ---- */

    /* rnn: one recurrent layer run over T steps for B streams (batch first).
     *   RNN_CELL_TANH (Elman, G = 1):  h_t = tanh(W_ih x_t + b_ih + W_hh h'_{t-1} + b_hh)
     *   RNN_CELL_LSTM (G = 4, gate rows in the order i, f, g, o):
     *     [a_i a_f a_g a_o] = W_ih x_t + b_ih + W_hh h'_{t-1} + b_hh
     *     i, f, o = sigmoid(a_.), g = tanh(a_g);  c_t = f c'_{t-1} + i g;  h_t = o tanh(c_t)
     * where the state entering step t, h'_{t-1} (and c'_{t-1}), is the previous step's
     * (h0, c0 at t = 0), or zero where reset[b,t] != 0 (a document starts at t).
     * x: [B,T,D]; y: [B,T,H] (every h_t); h0, c0: [B,H] initial state (NULL: zero; c
     * only for LSTM); hT, cT: [B,H] final state (NULL: not wanted; may not alias h0,
     * c0); w_ih: [G*H,D], w_hh: [G*H,H], b_ih, b_hh: [G*H], PyTorch's nn.RNN/nn.LSTM
     * layout, so checkpoints mean the same on every backend; reset: int32 [B,T] or NULL.
     * Saves what backward needs in work (rnn_work_bytes, backend-defined: gate values
     * and cell states on the CPU, cuDNN's reserve space on CUDA); backward may also use
     * it as scratch, so each forward is followed by at most one backward. */
#define RNN_CELL_TANH 0
#define RNN_CELL_LSTM 1
    size_t (*rnn_work_bytes)(backend *be, int cell, int B, int T, int D, int H);
    void (*rnn_forward)(backend *be, int cell, void *y, void *hT, void *cT, void *work,
                        const void *x, const void *h0, const void *c0, const int32_t *reset,
                        const void *w_ih, const void *w_hh, const void *b_ih, const void *b_hh,
                        int B, int T, int D, int H);
    /* Back-propagation through the T steps of the last rnn_forward on these buffers:
     * from dy [B,T,H] and dhT, dcT [B,H] (the final state's gradient; NULL: zero)
     * accumulates dx [B,T,D], dh0, dc0 [B,H] (each may be NULL: not wanted) and the
     * weight gradients dw_ih, dw_hh, db_ih, db_hh. No gradient crosses a reset. */
    void (*rnn_backward)(backend *be, int cell, void *dx, void *dh0, void *dc0, void *dw_ih,
                         void *dw_hh, void *db_ih, void *db_hh, const void *dy, const void *dhT,
                         const void *dcT, const void *work, const void *x, const void *y,
                         const void *h0, const void *c0, const int32_t *reset,
                         const void *w_ih, const void *w_hh, int B, int T, int D, int H);

    /* Sum of squares of n gradient elements, as a host double (synchronises). */
    double (*sumsq)(backend *be, const void *grads, size_t n);

    /* AdamW (decoupled weight decay, as torch.optim.AdamW), per element in each segment:
     *   g = grad_scale * grad;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
     *   w -= lr * (wd*decay * w + (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)).
     * w is `master` (opt) when not NULL, and `params` (act) is then set from it
     * (bf16: rounded stochastically, unbiased, bits from hp->seed, step, index);
     * with master NULL the update happens in `params` directly (act == opt).
     * m, v, master: opt, indexed from hp->state_offset (ZeRO: shard-sized). */
    void (*adamw)(backend *be, void *params, void *master, const void *grads, void *m, void *v,
                  const param_segment *segs, int nsegs, const adamw_params *hp);
    /* Optional (NULL: the backend keeps no master weights): params (act) set
     * from master (opt) in each segment exactly as adamw's step hp->step left
     * them (bf16: the same stochastic rounding, bits from hp->seed, step and
     * index; master indexed from hp->state_offset); nothing with master NULL.
     * A resumed run starts from it, so that it continues bit for bit. */
    void (*params_from_master)(backend *be, void *params, const void *master,
                               const param_segment *segs, int nsegs, const adamw_params *hp);
};

/* Backends. Each returns NULL and fills err (ERRBUF bytes) when unavailable. */
backend *backend_cpu_create(int threads, char *err);
backend *backend_cpu64_create(int threads, char *err); /* fp64 oracle for the gradient checks */
/* The CPU backend with bf16 matmuls on AMX tiles, "cpu-bf16" (backend_cpu.c);
 * NULL with err on a CPU without AMX-BF16. */
backend *backend_cpu_bf16_create(int threads, char *err);
/* The CPU backend's BLAS (kernels/cpu/blas_info.c), as this process loaded it.
 * blas_describe: one line naming the library, its version, the kernel it chose
 * for this CPU and the threads (threads <= 0: OpenMP's default), in buf.
 * blas_kernel: the kernel's name ("SkylakeX", "Haswell", "Prescott", ...).
 * blas_kernel_mismatch: NULL, or what is wrong when that kernel is a generic
 * fallback on a CPU with AVX2 or AVX-512. blas_library_path: the file loaded. */
const char *blas_describe(int threads, char *buf, size_t n);
const char *blas_kernel(void);
const char *blas_kernel_mismatch(void);
const char *blas_library_path(void);
/* The CUDA backend (kernels/cuda/), linked only into builds that have it: its
 * symbol is weak here so that callers can test for it (NULL: not built in).
 * device: GPU index; act: DT_BF16 (mixed precision) or DT_F32 (verification). */
__attribute__((weak)) backend *backend_cuda_create(int device, dtype act, char *err);
/* A fatal CUDA error in the CUDA backend first asks `cause` (when set)
 * whether something outside the backend explains it, and reports that
 * first: a synchronisation that fails because a queued NCCL collective's
 * peer died says more as NCCL's error than as the CUDA one. cause writes one
 * line into buf and returns 1, or returns 0. The NCCL layer sets it while
 * its communicator lives, and clears it (NULL) when it closes. Weak like
 * backend_cuda_create. */
__attribute__((weak)) void backend_cuda_set_failure_cause(int (*cause)(void *ctx, char *buf,
                                                                       size_t n),
                                                          void *ctx);
/* The CUDA backend's cuBLASLt matmuls since it was created, counted by the
 * epilogue each ran with (CUDA_MM_*), so that a test can tell a fused path
 * from its fallback. Weak like backend_cuda_create. */
enum {
    CUDA_MM_PLAIN,         /* no epilogue */
    CUDA_MM_BIAS,          /* + bias */
    CUDA_MM_GELU_AUX,      /* GELU, pre-activation kept (+ bias or not) */
    CUDA_MM_DGELU,         /* times GELU'(aux): matmul_gelu_backward's dpre */
    CUDA_MM_BGRADB,        /* bias gradient: column sums of op(B) over k */
    CUDA_MM_EPILOGUES
};
__attribute__((weak)) unsigned long backend_cuda_matmul_count(backend *be, int epilogue);

#ifdef __cplusplus
}
#endif

#endif
