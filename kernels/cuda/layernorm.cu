/* layernorm.cu: layer normalisation over the last dimension, forward and backward.
 *
 *   forward:  y = (x - mean) * rstd * g + b,  rstd = 1/sqrt(var + 1e-5), biased var;
 *             saves mean, rstd (fp32, [N]).
 *   residual_layernorm_forward: x = a + b stored as the residual stream, and
 *             the forward above on it, in one kernel: the separate residual
 *             kernel's write of x and LN's first read of it become one write.
 *   backward: xhat = (x - mean) * rstd
 *             dx += rstd * (dy*g - mean_c(dy*g) - xhat * mean_c(dy*g*xhat))
 *             dg += sum_rows dy*xhat;  db += sum_rows dy
 *
 * One warp per row for the row-wise parts (the row stays in L1 between its
 * passes; shuffles reduce). The mean and variance take two passes, as the CPU
 * reference does, so a row with a large mean loses nothing to cancellation.
 *
 * The backward is one kernel (as llm.c's): each warp takes rows in a fixed
 * stride, writes dx and adds dy*xhat and dy into its own column sums in
 * shared memory, so dout and inp are read once for all three gradients.
 * The block adds its warps' sums in warp order into its row of a scratch
 * [blocks, 2C]; the last block to finish (a counter elects it) adds those rows
 * in block order into dg and db. The only atomic is the counter: the sums
 * have a fixed order, so the same bits every run. */
#include "cuda_backend.h"

#define LN_THREADS 256	/* 8 rows per block */
#define LN_BWD_BLOCKS 512	/* at most; a fixed cap, so the sums' order depends on N and C alone */

/* FUSE: x = inp + add, rounded to T and stored to res on the first pass (the
 * residual add); the later passes read x back from res, which the same
 * thread has just written, so LN sees exactly the stored residual stream. */
template <class T, int V, bool FUSE>
__global__ void layernorm_forward_kernel(T *out, float *mean, float *rstd, const T *inp, const T *w,
					 const T *b, int N, int C, T *res, const T *add)
{
	int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
	if (row >= N)
		return;		/* whole warps leave together */
	const T *x = inp + (size_t)row * C;
	float f[V], s = 0.0f;
	for (int c = lane * V; c < C; c += 32 * V) {
		load_f<T, V>(f, x + c);
		if constexpr (FUSE) {
			float a2[V];
			load_f<T, V>(a2, add + (size_t)row * C + c);
UNROLL
			for (int k = 0; k < V; k++)
				f[k] = to_f(from_f<T>(f[k] + a2[k]));
			store_f<T, V>(res + (size_t)row * C + c, f);
		}
UNROLL
		for (int k = 0; k < V; k++)
			s += f[k];
	}
	if constexpr (FUSE)
		x = res + (size_t)row * C;
	float m = warp_sum(s) / C, v = 0.0f;
	for (int c = lane * V; c < C; c += 32 * V) {
		load_f<T, V>(f, x + c);
UNROLL
		for (int k = 0; k < V; k++)
			v += (f[k] - m) * (f[k] - m);
	}
	float r = 1.0f / sqrtf(warp_sum(v) / C + 1e-5f);
	T *y = out + (size_t)row * C;
	for (int c = lane * V; c < C; c += 32 * V) {
		float g[V], bb[V];
		load_f<T, V>(f, x + c);
		load_f<T, V>(g, w + c);
		if (b) {
			load_f<T, V>(bb, b + c);
		} else { /* no bias (nanoGPT's bias=False) */
UNROLL
			for (int k = 0; k < V; k++)
				bb[k] = 0.0f;
		}
UNROLL
		for (int k = 0; k < V; k++)
			f[k] = (f[k] - m) * r * g[k] + bb[k];
		store_f<T, V>(y + c, f);
	}
	if (lane == 0) {
		if (mean)
			mean[row] = m;
		if (rstd)
			rstd[row] = r;
	}
}

/* Warps per block of the backward: each holds 2C fp32 column sums in shared
 * memory; up to 8 within 48 KiB, else 1 (with the opt-in past 48 KiB). */
static inline int ln_bwd_warps(int C)
{
	int w = (48 * 1024 - 64) / (8 * C);
	return w > 8 ? 8 : w < 1 ? 1 : w;
}

static inline unsigned ln_bwd_blocks(int N, int C)
{
	size_t b = cdiv((size_t)N, (size_t)ln_bwd_warps(C));
	return (unsigned)(b < LN_BWD_BLOCKS ? b : LN_BWD_BLOCKS);
}

template <class T, int V>
__global__ void layernorm_backward_kernel(T *dinp, T *dw, T *db, const T *dout, const T *inp, const T *w,
					  const float *mean, const float *rstd, int N, int C, float *part,
					  unsigned *done)
{
	DYNAMIC_SHARED(float, sums);	/* [warps][2C]: dg sums, then db sums */
	__shared__ int last;
	int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
	float *sw = sums + (size_t)warp * 2 * C, *sb = sw + C;
	/* each lane owns the same columns in every row: no two lanes share a sum */
	for (int c = lane * V; c < C; c += 32 * V)
UNROLL
		for (int k = 0; k < V; k++)
			sw[c + k] = sb[c + k] = 0.0f;
	for (int row = blockIdx.x * nw + warp; row < N; row += gridDim.x * nw) {
		size_t off = (size_t)row * C;
		float m = mean[row], r = rstd[row], a = 0.0f, g = 0.0f;
		float dy[V], x[V], wg[V];
		for (int c = lane * V; c < C; c += 32 * V) {
			load_f<T, V>(dy, dout + off + c);
			load_f<T, V>(x, inp + off + c);
			load_f<T, V>(wg, w + c);
UNROLL
			for (int k = 0; k < V; k++) {
				float dyw = dy[k] * wg[k], xh = (x[k] - m) * r;
				a += dyw;
				g += dyw * xh;
				sw[c + k] += dy[k] * xh;
				sb[c + k] += dy[k];
			}
		}
		if (!dinp)
			continue;
		a = warp_sum(a) / C;
		g = warp_sum(g) / C;
		for (int c = lane * V; c < C; c += 32 * V) {
			float dx[V];
			load_f<T, V>(dy, dout + off + c);
			load_f<T, V>(x, inp + off + c);
			load_f<T, V>(wg, w + c);
			load_f<T, V>(dx, dinp + off + c);
UNROLL
			for (int k = 0; k < V; k++)
				dx[k] += r * (dy[k] * wg[k] - a - (x[k] - m) * r * g);
			store_f<T, V>(dinp + off + c, dx);
		}
	}
	__syncthreads();
	float *mine = part + (size_t)blockIdx.x * 2 * C;
	for (int c = threadIdx.x; c < 2 * C; c += blockDim.x) {
		float s = 0.0f;
		for (int k = 0; k < nw; k++)
			s += sums[(size_t)k * 2 * C + c];
		mine[c] = s;
	}
	__threadfence();	/* this block's row is visible before the count says so */
	__syncthreads();
	if (threadIdx.x == 0)
		last = atomicAdd(done, 1u) == gridDim.x - 1;
	__syncthreads();
	if (!last)
		return;
	__threadfence();
	for (int c = threadIdx.x; c < C; c += blockDim.x) {
		float s = 0.0f, t = 0.0f;
		for (unsigned b = 0; b < gridDim.x; b++) {
			s += part[(size_t)b * 2 * C + c];
			t += part[(size_t)b * 2 * C + C + c];
		}
		if (dw)
			dw[c] = from_f<T>(to_f(dw[c]) + s);
		if (db)
			db[c] = from_f<T>(to_f(db[c]) + t);
	}
	if (threadIdx.x == 0)
		*done = 0;
}

/* ---- host side ---- */

template <class T, int V>
static void layernorm_forward_launch(cuda_backend *cb, void *out, void *mean, void *rstd, const void *inp,
				     const void *w, const void *b, int N, int C, void *res, const void *add)
{
	unsigned blocks = cdiv((size_t)N * 32, LN_THREADS);
	if (add)
		CUDA_LAUNCH(blocks, LN_THREADS, 0, cb->stream, layernorm_forward_kernel<T, V, true>)(
			(T *)out, (float *)mean, (float *)rstd, (const T *)inp, (const T *)w, (const T *)b, N, C,
			(T *)res, (const T *)add);
	else
		CUDA_LAUNCH(blocks, LN_THREADS, 0, cb->stream, layernorm_forward_kernel<T, V, false>)(
			(T *)out, (float *)mean, (float *)rstd, (const T *)inp, (const T *)w, (const T *)b, N, C,
			(T *)NULL, (const T *)NULL);
	LAUNCH_CHECK();
}

/* layernorm_forward, or with add != NULL the fused residual_layernorm_forward. */
static void layernorm_forward_any(backend *be, void *out, void *mean, void *rstd, const void *inp,
				  const void *weight, const void *bias, int N, int C, void *res, const void *add)
{
	cuda_backend *cb = cuda_of(be);
	if (N <= 0 || C <= 0)
		return;
	int al = aligned16(out) && aligned16(inp) && aligned16(weight) && aligned16(bias) && aligned16(res) &&
		 aligned16(add);
	if (be->act == DT_BF16) {
		if (al && C % 8 == 0)
			layernorm_forward_launch<__nv_bfloat16, 8>(cb, out, mean, rstd, inp, weight, bias, N, C, res, add);
		else
			layernorm_forward_launch<__nv_bfloat16, 1>(cb, out, mean, rstd, inp, weight, bias, N, C, res, add);
	} else {
		if (al && C % 4 == 0)
			layernorm_forward_launch<float, 4>(cb, out, mean, rstd, inp, weight, bias, N, C, res, add);
		else
			layernorm_forward_launch<float, 1>(cb, out, mean, rstd, inp, weight, bias, N, C, res, add);
	}
}

void cuda_layernorm_forward(backend *be, void *out, void *mean, void *rstd, const void *inp,
			    const void *weight, const void *bias, int N, int C)
{
	NVTX_RANGE("layernorm_forward");
	layernorm_forward_any(be, out, mean, rstd, inp, weight, bias, N, C, NULL, NULL);
}

void cuda_residual_layernorm_forward(backend *be, void *res_out, void *ln_out, void *mean, void *rstd,
				     const void *a, const void *b, const void *weight, const void *bias, int N,
				     int C)
{
	NVTX_RANGE("residual_layernorm_forward");
	layernorm_forward_any(be, ln_out, mean, rstd, a, weight, bias, N, C, res_out, b);
}

size_t cuda_layernorm_scratch_bytes(int N, int C)
{
	return (size_t)ln_bwd_blocks(N, C) * 2 * C * sizeof(float);
}

template <class T, int V>
static void layernorm_backward_launch(cuda_backend *cb, void *dinp, void *dw, void *db, const void *dout,
				      const void *inp, const void *w, const void *mean, const void *rstd, int N,
				      int C)
{
	int warps = ln_bwd_warps(C);
	unsigned blocks = ln_bwd_blocks(N, C);
	size_t smem = (size_t)warps * 2 * C * sizeof(float);
	float *part = (float *)cuda_scratch(cb, SCR_COLSUM, cuda_layernorm_scratch_bytes(N, C));
	if (smem > 48 * 1024 - 64)	/* one warp of sums past 48 KiB: C > 6136 */
		CUDA_CHECK(cudaFuncSetAttribute(layernorm_backward_kernel<T, V>,
						cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
	CUDA_LAUNCH(blocks, warps * 32, smem, cb->stream, layernorm_backward_kernel<T, V>)(
		(T *)dinp, (T *)dw, (T *)db, (const T *)dout, (const T *)inp, (const T *)w, (const float *)mean,
		(const float *)rstd, N, C, part, cb->ln_done);
	LAUNCH_CHECK();
}

void cuda_layernorm_backward(backend *be, void *dinp, void *dweight, void *dbias, const void *dout,
			     const void *inp, const void *weight, const void *mean, const void *rstd, int N,
			     int C)
{
	NVTX_RANGE("layernorm_backward");
	cuda_backend *cb = cuda_of(be);
	if (N <= 0 || C <= 0 || (!dinp && !dweight && !dbias))
		return;
	int al = aligned16(dinp) && aligned16(dout) && aligned16(inp) && aligned16(weight);
	if (be->act == DT_BF16) {
		if (al && C % 8 == 0)
			layernorm_backward_launch<__nv_bfloat16, 8>(cb, dinp, dweight, dbias, dout, inp, weight, mean,
								    rstd, N, C);
		else
			layernorm_backward_launch<__nv_bfloat16, 1>(cb, dinp, dweight, dbias, dout, inp, weight, mean,
								    rstd, N, C);
	} else {
		if (al && C % 4 == 0)
			layernorm_backward_launch<float, 4>(cb, dinp, dweight, dbias, dout, inp, weight, mean, rstd, N,
							    C);
		else
			layernorm_backward_launch<float, 1>(cb, dinp, dweight, dbias, dout, inp, weight, mean, rstd, N,
							    C);
	}
}
