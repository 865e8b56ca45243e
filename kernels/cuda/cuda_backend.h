/* cuda_backend.h: private to kernels/cuda/. The CUDA backend's context, its
 * error policy, the device helpers every op file shares (dtype conversion,
 * 16-byte vector access, warp and block reductions), and the op entry points
 * that backend_cuda.cu puts into the op table. Model code never sees this.
 *
 * Every .cu file here builds two ways from the same source: nvcc for the GPU,
 * and g++ -x c++ -DANATOMY_EMU for the device emulator (emu/), which is how
 * the kernels are proven correct on machines without a GPU.
 *
 * Error policy: a failed CUDA call, launch or cuBLASLt call prints
 *   anatomy: error: cuda: <file>:<line>: <what>: <error string>
 * and exits with status 1. A GPU fault leaves the context unusable, so there
 * is nothing a caller could do with an error code; the op table's entries
 * return void for the same reason. Running out of memory in alloc is not a
 * fault: alloc returns NULL and the caller names the memory it needed. */
#ifndef ANATOMY_CUDA_BACKEND_H
#define ANATOMY_CUDA_BACKEND_H

#include "cuda_compat.cuh"

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "../ops.h"

#include "matmul.h"

/* ---- errors ---- */

__attribute__((noreturn, format(printf, 3, 4))) void cuda_die(const char *file, int line,
							       const char *fmt, ...);
void cuda_check_at(cudaError_t e, const char *what, const char *file, int line);
#define CUDA_CHECK(call) cuda_check_at((call), #call, __FILE__, __LINE__)
/* After every launch: catches bad configurations at once (and, under the
 * emulator, which runs the launch to completion, every kernel-side fault). */
#define LAUNCH_CHECK() cuda_check_at(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

/* Loop unrolling hint: nvcc's pragma, GCC's spelling in the emulated build. */
#ifdef ANATOMY_EMU
#define UNROLL _Pragma("GCC unroll 16")
#else
#define UNROLL _Pragma("unroll")
#endif

/* ---- NVTX ranges: one per op, named as in ops.h, for Nsight Systems ---- */
#if defined(ANATOMY_EMU) || defined(ANATOMY_NO_NVTX)
struct nvtx_scope {
	explicit nvtx_scope(const char *) {}
};
#else
#include <nvtx3/nvToolsExt.h>
struct nvtx_scope {
	explicit nvtx_scope(const char *name) { nvtxRangePushA(name); }
	~nvtx_scope() { nvtxRangePop(); }
};
#endif
#define NVTX_CAT2(a, b) a##b
#define NVTX_CAT(a, b) NVTX_CAT2(a, b)
#define NVTX_RANGE(name) nvtx_scope NVTX_CAT(nvtx_scope_, __LINE__)(name)

/* ---- the context ---- */

/* Device scratch buffers, one per use, reserved for the model's shapes by the
 * plan entry (before the first step) and grown on need otherwise: during
 * training nothing allocates. */
enum {
	SCR_ATT,	/* attention backward: D_i = dO_i . O_i, fp32 [B, NH, T] */
	SCR_COLSUM,	/* per-row-chunk partial column sums (dbias, layernorm dw/db, batchnorm's
			 * statistics and gradients); BGRADB's dbias vector */
	SCR_ENC,	/* encoder backward: positions sorted by token, buckets */
	SCR_NORM,	/* sumsq partial sums */
	SCR_ADAMW,	/* AdamW segment table */
	SCR_COUNT
};

#define CUDA_NSHADOW 4

/* A host copy of an int32 buffer uploaded to the device (token ids), kept so
 * that encoder_backward can bucket positions by token without reading the
 * device. Invalidated by any other write to that memory through the backend. */
struct tok_shadow {
	const void *dev;
	size_t n, cap;
	int32_t *host;
	uint64_t used;		/* LRU stamp */
};

struct cuda_backend {
	backend be;		/* first: a backend * is a cuda_backend * */
	int device, sms;
	char devname[256];
	cudaStream_t stream;
	mm_ctx *mm;
	struct {
		void *p;
		size_t cap;
	} scr[SCR_COUNT];
	void *stage;		/* pinned host staging for transfers */
	size_t stage_cap;
	void *enc_stage;	/* pinned: encoder buckets in flight to the device */
	size_t enc_stage_cap;
	cudaEvent_t enc_done;	/* the last copy out of enc_stage */
	struct tok_shadow shadow[CUDA_NSHADOW];
	uint64_t shadow_clock;
	/* layernorm_backward: how many blocks have written their column sums (the
	 * last one adds them up and sets it back to 0) */
	unsigned *ln_done;
	/* AdamW: the segment table last uploaded, to skip identical uploads */
	void *adamw_host;
	size_t adamw_bytes;
};

static inline cuda_backend *cuda_of(backend *be) { return (cuda_backend *)be; }

/* Grow-only device scratch of at least `bytes`; dies naming the size when the
 * device has no room. */
void *cuda_scratch(cuda_backend *cb, int slot, size_t bytes);
/* As cuda_scratch, but returns NULL (nothing freed) when the device has no room. */
void *cuda_scratch_try(cuda_backend *cb, int slot, size_t bytes);
/* Scratch each op needs at a shape (bytes), for the plan entry to reserve. */
size_t cuda_attention_scratch_bytes(size_t es, int B, int T, int C, int NH);
size_t cuda_layernorm_scratch_bytes(int N, int C);
size_t cuda_batchnorm_scratch_bytes(int N, int C);
size_t cuda_colsum_scratch_bytes(int N, int C);
static inline size_t cuda_encoder_scratch_bytes(int BT) { return (size_t)BT * 4 * sizeof(int32_t); }
/* The host int32 copy of the device buffer `dev` holding at least n ids, or NULL. */
const int32_t *cuda_shadow_find(cuda_backend *cb, const void *dev, size_t n);

static inline unsigned cdiv(size_t a, size_t b) { return (unsigned)((a + b - 1) / b); }

/* True when p is 16-byte aligned (NULL counts as aligned). */
static inline int aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

/* ---- device helpers ---- */

static __device__ __forceinline__ float to_f(float x) { return x; }
static __device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x)
{
	return __float2bfloat16(x);	/* round to nearest even */
}

/* 16 bytes of T: one vector load or store. */
template <class T> struct __align__(16) pack16 {
	T v[16 / sizeof(T)];
};

/* Widest access for T: elements per 16 bytes. */
template <class T> struct vec_of {
	static const int n = 16 / sizeof(T);
};

/* V consecutive elements at p as floats: one 16-byte load when V fills it
 * (p must then be 16-byte aligned), else V scalar loads. */
template <class T, int V> __device__ __forceinline__ void load_f(float (&f)[V], const T *p)
{
	if constexpr (V * sizeof(T) == 16) {
		pack16<T> q = *(const pack16<T> *)p;
UNROLL
		for (int i = 0; i < V; i++)
			f[i] = to_f(q.v[i]);
	} else {
UNROLL
		for (int i = 0; i < V; i++)
			f[i] = to_f(p[i]);
	}
}

template <class T, int V> __device__ __forceinline__ void store_f(T *p, const float (&f)[V])
{
	if constexpr (V * sizeof(T) == 16) {
		pack16<T> q;
UNROLL
		for (int i = 0; i < V; i++)
			q.v[i] = from_f<T>(f[i]);
		*(pack16<T> *)p = q;
	} else {
UNROLL
		for (int i = 0; i < V; i++)
			p[i] = from_f<T>(f[i]);
	}
}

static __device__ __forceinline__ float warp_sum(float v)
{
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

static __device__ __forceinline__ double warp_sum_d(double v)
{
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

static __device__ __forceinline__ float warp_max(float v)
{
	for (int o = 16; o > 0; o >>= 1)
		v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
	return v;
}

/* Sum over the block (blockDim.x a multiple of 32, every thread calling);
 * every thread gets the total. sh: 32 floats of shared memory, free again
 * when this returns. The order of additions is fixed: deterministic. */
static __device__ __forceinline__ float block_sum(float v, float *sh)
{
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
	v = warp_sum(v);
	if (lane == 0)
		sh[warp] = v;
	__syncthreads();
	v = lane < nw ? sh[lane] : 0.0f;
	v = warp_sum(v);
	__syncthreads();
	return v;
}

static __device__ __forceinline__ double block_sum_d(double v, double *sh)
{
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
	v = warp_sum_d(v);
	if (lane == 0)
		sh[warp] = v;
	__syncthreads();
	v = lane < nw ? sh[lane] : 0.0;
	v = warp_sum_d(v);
	__syncthreads();
	return v;
}

/* ---- elementwise ops: out[i] = Op::apply(out[i], a[i], b[i]) ----
 * Op has `static const int nin` (1: b unused), `static const bool reads_out`
 * and `static __device__ float apply(float o, float a, float b)`. V elements
 * per thread with 16-byte accesses when every pointer is 16-byte aligned; the
 * last thread finishes a ragged tail one element at a time. */
template <class T, int V, class Op> __global__ void ew_kernel(T *out, const T *a, const T *b, size_t N)
{
	size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * V;
	if (i >= N)
		return;
	if (i + V <= N) {
		float o[V], x[V], y[V];
		if constexpr (Op::reads_out)
			load_f<T, V>(o, out + i);
		load_f<T, V>(x, a + i);
		if constexpr (Op::nin == 2)
			load_f<T, V>(y, b + i);
UNROLL
		for (int k = 0; k < V; k++)
			o[k] = Op::apply(Op::reads_out ? o[k] : 0.0f, x[k], Op::nin == 2 ? y[k] : 0.0f);
		store_f<T, V>(out + i, o);
		return;
	}
	for (; i < N; i++) {
		float o = Op::reads_out ? to_f(out[i]) : 0.0f;
		out[i] = from_f<T>(Op::apply(o, to_f(a[i]), Op::nin == 2 ? to_f(b[i]) : 0.0f));
	}
}

#define EW_THREADS 256

template <class T, int V, class Op>
static void ew_launch_t(cuda_backend *cb, void *out, const void *a, const void *b, size_t N)
{
	CUDA_LAUNCH(cdiv(N, (size_t)V * EW_THREADS), EW_THREADS, 0, cb->stream, ew_kernel<T, V, Op>)(
		(T *)out, (const T *)a, (const T *)b, N);
	LAUNCH_CHECK();
}

template <class Op> static void ew_launch(backend *be, void *out, const void *a, const void *b, size_t N)
{
	cuda_backend *cb = cuda_of(be);
	if (!N)
		return;
	int al = aligned16(out) && aligned16(a) && aligned16(b);
	if (be->act == DT_BF16) {
		if (al)
			ew_launch_t<__nv_bfloat16, 8, Op>(cb, out, a, b, N);
		else
			ew_launch_t<__nv_bfloat16, 1, Op>(cb, out, a, b, N);
	} else {
		if (al)
			ew_launch_t<float, 4, Op>(cb, out, a, b, N);
		else
			ew_launch_t<float, 1, Op>(cb, out, a, b, N);
	}
}

/* ---- op entry points (one file per op kind) ---- */

/* backend_cuda.cu: reserves every scratch buffer for these shapes. */
int cuda_plan(backend *be, int B, int T, int C, int NH, int V, char *err);

/* encoder.cu */
void cuda_encoder_forward(backend *be, void *out, const int32_t *tok, const void *wte,
			  const void *wpe, int B, int T, int C);
void cuda_encoder_backward(backend *be, void *dwte, void *dwpe, const void *dout,
			   const int32_t *tok, int B, int T, int C);
/* dtable[ids[n],:] += dout[n,:] (ids >= 0), the bucketed sum of encoder_backward */
void cuda_embedding_backward(backend *be, void *dtable, const void *dout, const int32_t *ids, int N, int C);
/* batchnorm.cu */
void cuda_batchnorm_forward(backend *be, void *out, void *mean, void *rstd, void *running_mean,
			    void *running_var, const void *inp, const void *weight, const void *bias, float momentum,
			    int train, int N, int C);
void cuda_residual_batchnorm_forward(backend *be, void *res_out, void *out, void *mean, void *rstd,
				     void *running_mean, void *running_var, const void *a, const void *b,
				     const void *weight, const void *bias, float momentum, int train, int N, int C);
void cuda_batchnorm_backward(backend *be, void *dinp, void *dweight, void *dbias, const void *dout,
			     const void *inp, const void *weight, const void *mean, const void *rstd, int train, int N,
			     int C);
/* layernorm.cu */
void cuda_layernorm_forward(backend *be, void *out, void *mean, void *rstd, const void *inp,
			    const void *weight, const void *bias, int N, int C);
void cuda_layernorm_backward(backend *be, void *dinp, void *dweight, void *dbias,
			     const void *dout, const void *inp, const void *weight,
			     const void *mean, const void *rstd, int N, int C);
void cuda_residual_layernorm_forward(backend *be, void *res_out, void *ln_out, void *mean, void *rstd,
				     const void *a, const void *b, const void *weight, const void *bias, int N,
				     int C);
/* matmul.cu */
void cuda_matmul_forward(backend *be, void *out, const void *inp, const void *weight,
			 const void *bias, int N, int IC, int OC);
void cuda_matmul_backward(backend *be, void *dinp, void *dweight, void *dbias,
			  const void *dout, const void *inp, const void *weight, int N, int IC,
			  int OC, grad_mode dinp_mode);
void cuda_matmul_gelu_forward(backend *be, void *out_pre, void *out_gelu, const void *inp,
			      const void *weight, const void *bias, int N, int IC, int OC);
void cuda_matmul_gelu_backward(backend *be, void *dpre, void *dweight, void *dbias, const void *dout,
			       const void *inp, const void *pre, const void *weight, int N, int IC, int OC);
/* attention.cu */
void cuda_attention_forward(backend *be, void *out, void *lse, const void *qkv, int B, int T,
			    int C, int NH, int causal);
void cuda_attention_backward(backend *be, void *dqkv, const void *dout, const void *qkv,
			     const void *out, const void *lse, int B, int T, int C, int NH,
			     int causal);
/* gelu.cu */
void cuda_gelu_forward(backend *be, void *out, const void *inp, size_t N);
void cuda_gelu_backward(backend *be, void *dinp, const void *inp, const void *dout, size_t N);
/* dinp = dinp * gelu'(inp), in place: the GELU backward of a gradient
 * already written into dinp (matmul_gelu_backward's fallback) */
void cuda_gelu_backward_scale(backend *be, void *dinp, const void *inp, size_t N);
/* residual.cu */
void cuda_residual_forward(backend *be, void *out, const void *a, const void *b, size_t N);
void cuda_accumulate(backend *be, void *dst, const void *src, size_t N);
/* classifier.cu */
void cuda_crossentropy(backend *be, void *losses, void *dlogits, const void *logits,
		       const int32_t *targets, int N, int V, int Vp, float scale);
/* norm.cu */
double cuda_sumsq(backend *be, const void *grads, size_t n);
/* adamw.cu */
void cuda_adamw(backend *be, void *params, void *master, const void *grads, void *m, void *v,
		const param_segment *segs, int nsegs, const adamw_params *hp);
void cuda_params_from_master(backend *be, void *params, const void *master, const param_segment *segs,
			     int nsegs, const adamw_params *hp);
/* decode.cu */
void cuda_attention_decode(backend *be, void *out, void *kv, const void *qkv, int B, int pos,
			   int maxlen, const void *prefix, int prefix_rows, int prefix_len, int C, int NH);
/* seq.cu: puts embedding, sequence_embed, rows_mean, tanh, regression_loss and dropout into be. */
void cuda_seq_install(backend *be);
/* rnn.cu: puts rnn_work_bytes, rnn_forward and rnn_backward (cuDNN) into be. */
void cuda_rnn_install(backend *be);

#endif
