/* attention.cu: multi-head scaled dot-product attention through batched
 * cuBLASLt matmuls and row-wise softmax kernels (the first attention; the
 * fused kernel that never stores the [T, T] scores is its own issue).
 *
 * forward, per (b, h), with q, k, v the head's [T, hs] slices of qkv:
 *   S = q k^T / sqrt(hs)
 *   lse_i = logsumexp_{j <= i if causal} S_ij;  P = exp(S - lse), 0 where masked
 *   O = P v
 * backward recomputes S and P from q, k and the saved lse:
 *   dv = P^T dO;  dP = dO v^T;  D_i = dO_i . O_i;  dS = P (dP - D) / sqrt(hs)
 *   dq = dS k;  dk = dS^T q;  then dqkv += (dq, dk, dv)
 *
 * The [T, T] tensors (S, P, dP, dS) are stored in act's type, computed in
 * fp32: in bf16 mode the scores are rounded to bf16 before the softmax, as
 * llm.c's attention does. They are the bulk of this file's memory traffic
 * (bench/NOTES.md), and halving it is worth that rounding until the fused
 * kernel keeps them in registers. fp32 mode stores them in fp32.
 *
 * q, k, v, dO are first copied into head-major [B, NH, T, hs] buffers so that
 * each batched matmul has contiguous, equally strided matrices; the results
 * are copied (or added) back into the [B, T, 3C] layout. The scratch for all
 * of it is sized for the backward, by the backend's plan entry before the
 * first step (or, without a plan, on first use), and kept. */
#include "cuda_backend.h"

#define ATT_THREADS 256	/* 8 rows per block in the row kernels */

/* Scratch layout: 7 head-major [BH, T, hs] buffers (q k v o/dO dq dk dv) and
 * two [BH, T, T]: S, overwritten in place by P and then by dS; and dP. */
struct att_bufs {
	void *q, *k, *v, *o, *dq, *dk, *dv;
	void *S, *dP;
};

static size_t round256(size_t x) { return (x + 255) / 256 * 256; }

size_t cuda_attention_scratch_bytes(size_t es, int B, int T, int C, int NH)
{
	size_t btc = (size_t)B * T * C * es, tt = (size_t)B * NH * T * T;
	return round256(7 * btc) + round256(tt * es) + tt * es;
}

static att_bufs att_scratch(cuda_backend *cb, size_t es, int B, int T, int C, int NH)
{
	/* the seven are back to back, unpadded: (un)permute treats q|k|v and
	 * dq|dk|dv as one [3, B, NH, T, hs] tensor each */
	size_t btc = (size_t)B * T * C * es, tt = (size_t)B * NH * T * T;
	size_t soff = round256(7 * btc), poff = soff + round256(tt * es);
	char *p = (char *)cuda_scratch(cb, SCR_ATT, cuda_attention_scratch_bytes(es, B, T, C, NH));
	att_bufs a;
	void **seven[7] = {&a.q, &a.k, &a.v, &a.o, &a.dq, &a.dk, &a.dv};
	for (int i = 0; i < 7; i++)
		*seven[i] = p + i * btc;
	a.S = p + soff;
	a.dP = p + poff;
	return a;
}

/* [B, T, ns*C] (ns = 3: q|k|v; 1: one tensor) <-> ns head-major buffers
 * [B, NH, T, hs], dst[s] at hm + s*B*T*C. V elements per thread: hs % V == 0
 * keeps a vector inside one head. */
template <class T, int V>
__global__ void att_permute_kernel(T *hm, const T *x, int B, int T_, int C, int NH, int ns)
{
	size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * V, W = (size_t)ns * C;
	if (i >= (size_t)B * T_ * W)
		return;
	int hs = C / NH;
	size_t bt = i / W, col = i % W;
	int b = (int)(bt / T_), t = (int)(bt % T_), s = (int)(col / C), h = (int)(col % C) / hs,
	    d = (int)(col % C) % hs;
	T *dst = hm + (size_t)s * B * T_ * C + (((size_t)b * NH + h) * T_ + t) * hs + d;
	float f[V];
	load_f<T, V>(f, x + i);
	store_f<T, V>(dst, f);
}

/* The inverse: x[B, T, ns*C] = (or +=, when ADD) the head-major buffers. */
template <class T, int V, bool ADD>
__global__ void att_unpermute_kernel(T *x, const T *hm, int B, int T_, int C, int NH, int ns)
{
	size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * V, W = (size_t)ns * C;
	if (i >= (size_t)B * T_ * W)
		return;
	int hs = C / NH;
	size_t bt = i / W, col = i % W;
	int b = (int)(bt / T_), t = (int)(bt % T_), s = (int)(col / C), h = (int)(col % C) / hs,
	    d = (int)(col % C) % hs;
	const T *src = hm + (size_t)s * B * T_ * C + (((size_t)b * NH + h) * T_ + t) * hs + d;
	float f[V];
	load_f<T, V>(f, src);
	if (ADD) {
		float g[V];
		load_f<T, V>(g, x + i);
UNROLL
		for (int k = 0; k < V; k++)
			f[k] += g[k];
	}
	store_f<T, V>(x + i, f);
}

/* One warp per score row (bh, i). With HAVE_LSE the row's lse is given
 * (backward); else it is computed and saved. P = exp(S - lse) for the
 * unmasked j, 0 for the rest. K > 0: the row (T <= 32 K) is read once into
 * registers, K values per lane, only its unmasked part; K = 0: any T, in
 * three passes over memory. P may be S: each lane writes only the elements
 * it has read. */
template <class T, bool HAVE_LSE, int K>
__global__ void att_softmax_kernel(T *P, float *lse, const T *S, int rows, int T_, int causal)
{
	int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
	if (row >= rows)
		return;
	int i = row % T_, n = causal ? i + 1 : T_;
	const T *s = S + (size_t)row * T_;
	T *p = P + (size_t)row * T_;
	float L;
	if constexpr (K > 0) {
		float x[K];
		UNROLL
		for (int k = 0; k < K; k++) {
			int j = lane + 32 * k;
			x[k] = j < n ? to_f(s[j]) : -INFINITY;
		}
		if (HAVE_LSE) {
			L = lse[row];
		} else {
			float m = -INFINITY, l = 0.0f;
			UNROLL
			for (int k = 0; k < K; k++)
				m = fmaxf(m, x[k]);
			m = warp_max(m);
			UNROLL
			for (int k = 0; k < K; k++)
				l += expf(x[k] - m);	/* exp(-inf) = 0 for the masked */
			L = m + logf(warp_sum(l));
			if (lane == 0)
				lse[row] = L;
		}
		UNROLL
		for (int k = 0; k < K; k++) {
			int j = lane + 32 * k;
			if (j < T_)
				p[j] = from_f<T>(j < n ? expf(x[k] - L) : 0.0f);
		}
	} else {
		if (HAVE_LSE) {
			L = lse[row];
		} else {
			float m = -INFINITY, l = 0.0f;
			for (int j = lane; j < n; j += 32)
				m = fmaxf(m, to_f(s[j]));
			m = warp_max(m);
			for (int j = lane; j < n; j += 32)
				l += expf(to_f(s[j]) - m);
			L = m + logf(warp_sum(l));
			if (lane == 0)
				lse[row] = L;
		}
		for (int j = lane; j < T_; j += 32)
			p[j] = from_f<T>(j < n ? expf(to_f(s[j]) - L) : 0.0f);
	}
}

template <class T, bool HAVE_LSE>
static void softmax(cuda_backend *cb, T *P, float *lse, const T *S, int rows, int T_, int causal)
{
	unsigned blocks = cdiv((size_t)rows * 32, ATT_THREADS);
	if (T_ <= 128)
		CUDA_LAUNCH(blocks, ATT_THREADS, 0, cb->stream, att_softmax_kernel<T, HAVE_LSE, 4>)(P, lse, S, rows,
												    T_, causal);
	else if (T_ <= 1024)
		CUDA_LAUNCH(blocks, ATT_THREADS, 0, cb->stream, att_softmax_kernel<T, HAVE_LSE, 32>)(P, lse, S, rows,
												     T_, causal);
	else
		CUDA_LAUNCH(blocks, ATT_THREADS, 0, cb->stream, att_softmax_kernel<T, HAVE_LSE, 0>)(P, lse, S, rows,
												    T_, causal);
	LAUNCH_CHECK();
}

/* One warp per row (bh, i): D = dO_i . O_i from the [B, T, C] tensors, then
 * dS = P (dP - D) * scale over P in place. */
template <class T>
__global__ void att_dscores_kernel(T *P, const T *dP, const T *dout, const T *out, int rows, int NH,
				   int T_, int C, int causal, float scale)
{
	int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
	if (row >= rows)
		return;
	int bh = row / T_, i = row % T_, b = bh / NH, h = bh % NH, hs = C / NH;
	size_t o = ((size_t)b * T_ + i) * C + (size_t)h * hs;
	float D = 0.0f;
	for (int d = lane; d < hs; d += 32)
		D += to_f(dout[o + d]) * to_f(out[o + d]);
	D = warp_sum(D);
	int n = causal ? i + 1 : T_;
	T *p = P + (size_t)row * T_;
	const T *dp = dP + (size_t)row * T_;
	for (int j = lane; j < n; j += 32)	/* masked entries are 0 already, in P */
		p[j] = from_f<T>(to_f(p[j]) * (to_f(dp[j]) - D) * scale);
}

/* ---- host side ---- */

template <class T>
static void permute(cuda_backend *cb, T *hm, const T *x, int B, int T_, int C, int NH, int ns)
{
	int hs = C / NH, V = 16 / sizeof(T);
	size_t n = (size_t)B * T_ * ns * C;
	if (hs % V == 0 && aligned16(hm) && aligned16(x)) {
		CUDA_LAUNCH(cdiv(n / V, ATT_THREADS), ATT_THREADS, 0, cb->stream,
			    att_permute_kernel<T, 16 / sizeof(T)>)(hm, x, B, T_, C, NH, ns);
	} else {
		CUDA_LAUNCH(cdiv(n, ATT_THREADS), ATT_THREADS, 0, cb->stream, att_permute_kernel<T, 1>)(
			hm, x, B, T_, C, NH, ns);
	}
	LAUNCH_CHECK();
}

template <class T, bool ADD>
static void unpermute(cuda_backend *cb, T *x, const T *hm, int B, int T_, int C, int NH, int ns)
{
	int hs = C / NH, V = 16 / sizeof(T);
	size_t n = (size_t)B * T_ * ns * C;
	if (hs % V == 0 && aligned16(hm) && aligned16(x)) {
		CUDA_LAUNCH(cdiv(n / V, ATT_THREADS), ATT_THREADS, 0, cb->stream,
			    att_unpermute_kernel<T, 16 / sizeof(T), ADD>)(x, hm, B, T_, C, NH, ns);
	} else {
		CUDA_LAUNCH(cdiv(n, ATT_THREADS), ATT_THREADS, 0, cb->stream, att_unpermute_kernel<T, 1, ADD>)(
			x, hm, B, T_, C, NH, ns);
	}
	LAUNCH_CHECK();
}

template <class T>
static void attention_forward_t(cuda_backend *cb, dtype act, T *out, float *lse, const T *qkv, int B, int T_,
				int C, int NH, int causal)
{
	int hs = C / NH, BH = B * NH, rows = BH * T_;
	long long sm = (long long)T_ * hs, ss = (long long)T_ * T_;
	float scale = (float)(1.0 / sqrt((double)hs));
	att_bufs a = att_scratch(cb, sizeof(T), B, T_, C, NH);
	permute(cb, (T *)a.q, qkv, B, T_, C, NH, 3);	/* q, k, v are consecutive */
	/* S^T-view [Tk x Tq] = k^T-view^T q-view: S[i, j] = scale * q_i . k_j */
	mm_gemm(cb->mm, 1, 0, T_, T_, hs, act, a.k, hs, sm, a.q, hs, sm, act, a.S, T_, ss, BH, scale, 0.0f, NULL);
	softmax<T, false>(cb, (T *)a.S, lse, (const T *)a.S, rows, T_, causal);	/* P over S */
	/* O [T x hs] = P [Tq x Tk] v [Tk x hs] */
	mm_gemm(cb->mm, 0, 0, hs, T_, T_, act, a.v, hs, sm, a.S, T_, ss, act, a.o, hs, sm, BH, 1.0f, 0.0f, NULL);
	unpermute<T, false>(cb, out, (const T *)a.o, B, T_, C, NH, 1);
}

template <class T>
static void attention_backward_t(cuda_backend *cb, dtype act, T *dqkv, const T *dout, const T *qkv,
				 const T *out, const float *lse, int B, int T_, int C, int NH, int causal)
{
	int hs = C / NH, BH = B * NH, rows = BH * T_;
	long long sm = (long long)T_ * hs, ss = (long long)T_ * T_;
	float scale = (float)(1.0 / sqrt((double)hs));
	att_bufs a = att_scratch(cb, sizeof(T), B, T_, C, NH);
	void *dO = a.o;
	permute(cb, (T *)a.q, qkv, B, T_, C, NH, 3);
	permute(cb, (T *)dO, dout, B, T_, C, NH, 1);
	/* P from the saved lse */
	mm_gemm(cb->mm, 1, 0, T_, T_, hs, act, a.k, hs, sm, a.q, hs, sm, act, a.S, T_, ss, BH, scale, 0.0f, NULL);
	softmax<T, true>(cb, (T *)a.S, (float *)lse, (const T *)a.S, rows, T_, causal);	/* P over S */
	/* dv [Tk x hs] = P^T [Tk x Tq] dO [Tq x hs] */
	mm_gemm(cb->mm, 0, 1, hs, T_, T_, act, dO, hs, sm, a.S, T_, ss, act, a.dv, hs, sm, BH, 1.0f, 0.0f, NULL);
	/* dP [Tq x Tk] = dO [Tq x hs] v^T [hs x Tk] */
	mm_gemm(cb->mm, 1, 0, T_, T_, hs, act, a.v, hs, sm, dO, hs, sm, act, a.dP, T_, ss, BH, 1.0f, 0.0f, NULL);
	CUDA_LAUNCH(cdiv((size_t)rows * 32, ATT_THREADS), ATT_THREADS, 0, cb->stream, att_dscores_kernel<T>)(
		(T *)a.S, (const T *)a.dP, dout, out, rows, NH, T_, C, causal, scale);	/* dS over P */
	LAUNCH_CHECK();
	/* dq [Tq x hs] = dS [Tq x Tk] k [Tk x hs];  dk [Tk x hs] = dS^T q */
	mm_gemm(cb->mm, 0, 0, hs, T_, T_, act, a.k, hs, sm, a.S, T_, ss, act, a.dq, hs, sm, BH, 1.0f, 0.0f, NULL);
	mm_gemm(cb->mm, 0, 1, hs, T_, T_, act, a.q, hs, sm, a.S, T_, ss, act, a.dk, hs, sm, BH, 1.0f, 0.0f, NULL);
	unpermute<T, true>(cb, dqkv, (const T *)a.dq, B, T_, C, NH, 3);	/* dq, dk, dv are consecutive */
}

static int att_shape_ok(int B, int T, int C, int NH)
{
	if (B <= 0 || T <= 0 || C <= 0)
		return 0;
	if (NH <= 0 || C % NH)
		cuda_die(__FILE__, __LINE__, "attention: %d heads do not divide the width %d", NH, C);
	return 1;
}

void cuda_attention_forward(backend *be, void *out, void *lse, const void *qkv, int B, int T, int C, int NH,
			    int causal)
{
	NVTX_RANGE("attention_forward");
	cuda_backend *cb = cuda_of(be);
	if (!att_shape_ok(B, T, C, NH))
		return;
	if (be->act == DT_BF16)
		attention_forward_t(cb, be->act, (__nv_bfloat16 *)out, (float *)lse, (const __nv_bfloat16 *)qkv, B,
				    T, C, NH, causal);
	else
		attention_forward_t(cb, be->act, (float *)out, (float *)lse, (const float *)qkv, B, T, C, NH,
				    causal);
}

void cuda_attention_backward(backend *be, void *dqkv, const void *dout, const void *qkv, const void *out,
			     const void *lse, int B, int T, int C, int NH, int causal)
{
	NVTX_RANGE("attention_backward");
	cuda_backend *cb = cuda_of(be);
	if (!att_shape_ok(B, T, C, NH))
		return;
	if (be->act == DT_BF16)
		attention_backward_t(cb, be->act, (__nv_bfloat16 *)dqkv, (const __nv_bfloat16 *)dout,
				     (const __nv_bfloat16 *)qkv, (const __nv_bfloat16 *)out, (const float *)lse, B,
				     T, C, NH, causal);
	else
		attention_backward_t(cb, be->act, (float *)dqkv, (const float *)dout, (const float *)qkv,
				     (const float *)out, (const float *)lse, B, T, C, NH, causal);
}
