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
 * The parameter gradients are column sums: partial sums over chunks of rows,
 * then one ordered sum per column; no atomics, so the same bits every run. */
#include "cuda_backend.h"

#define LN_THREADS 256	/* 8 rows per block */
#define LN_ROWS 128	/* rows per partial column sum */
#define LN_COLS 256	/* columns per block in the column sums */

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

template <class T, int V>
__global__ void layernorm_dx_kernel(T *dinp, const T *dout, const T *inp, const T *w, const float *mean,
				    const float *rstd, int N, int C)
{
	int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
	if (row >= N)
		return;
	size_t off = (size_t)row * C;
	float m = mean[row], r = rstd[row], a = 0.0f, g = 0.0f;
	float dy[V], x[V], wg[V];
	for (int c = lane * V; c < C; c += 32 * V) {
		load_f<T, V>(dy, dout + off + c);
		load_f<T, V>(x, inp + off + c);
		load_f<T, V>(wg, w + c);
UNROLL
		for (int k = 0; k < V; k++) {
			float dyw = dy[k] * wg[k];
			a += dyw;
			g += dyw * ((x[k] - m) * r);
		}
	}
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

/* pw[y, c] = sum of dy*xhat, pb[y, c] = sum of dy over row chunk y, in row order. */
template <class T>
__global__ void layernorm_dparam_partial_kernel(float *pw, float *pb, const T *dout, const T *inp,
						const float *mean, const float *rstd, int N, int C)
{
	int c = blockIdx.x * blockDim.x + threadIdx.x;
	int r0 = blockIdx.y * LN_ROWS, r1 = min(r0 + LN_ROWS, N);
	if (c >= C)
		return;
	float sw = 0.0f, sb = 0.0f;
	for (int r = r0; r < r1; r++) {
		size_t i = (size_t)r * C + c;
		float dy = to_f(dout[i]);
		sw += dy * ((to_f(inp[i]) - mean[r]) * rstd[r]);
		sb += dy;
	}
	pw[(size_t)blockIdx.y * C + c] = sw;
	pb[(size_t)blockIdx.y * C + c] = sb;
}

template <class T>
__global__ void layernorm_dparam_finish_kernel(T *dw, T *db, const float *pw, const float *pb, int R, int C)
{
	int c = blockIdx.x * blockDim.x + threadIdx.x;
	if (c >= C)
		return;
	float sw = 0.0f, sb = 0.0f;
	for (int y = 0; y < R; y++) {
		sw += pw[(size_t)y * C + c];
		sb += pb[(size_t)y * C + c];
	}
	if (dw)
		dw[c] = from_f<T>(to_f(dw[c]) + sw);
	if (db)
		db[c] = from_f<T>(to_f(db[c]) + sb);
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

template <class T, int V>
static void layernorm_dx_launch(cuda_backend *cb, void *dinp, const void *dout, const void *inp, const void *w,
				const void *mean, const void *rstd, int N, int C)
{
	unsigned blocks = cdiv((size_t)N * 32, LN_THREADS);
	CUDA_LAUNCH(blocks, LN_THREADS, 0, cb->stream, layernorm_dx_kernel<T, V>)(
		(T *)dinp, (const T *)dout, (const T *)inp, (const T *)w, (const float *)mean, (const float *)rstd,
		N, C);
	LAUNCH_CHECK();
}

size_t cuda_layernorm_scratch_bytes(int N, int C)
{
	return 2 * (size_t)cdiv((size_t)N, LN_ROWS) * C * sizeof(float);
}

template <class T>
static void layernorm_dparam_launch(cuda_backend *cb, void *dw, void *db, const void *dout, const void *inp,
				    const void *mean, const void *rstd, int N, int C)
{
	int R = (int)cdiv((size_t)N, LN_ROWS);
	if (R > 65535)
		cuda_die(__FILE__, __LINE__, "layernorm_backward: %d rows is more than %d", N, 65535 * LN_ROWS);
	float *pw = (float *)cuda_scratch(cb, SCR_COLSUM, cuda_layernorm_scratch_bytes(N, C));
	float *pb = pw + (size_t)R * C;
	dim3 grid(cdiv((size_t)C, LN_COLS), (unsigned)R);
	CUDA_LAUNCH(grid, LN_COLS, 0, cb->stream, layernorm_dparam_partial_kernel<T>)(
		pw, pb, (const T *)dout, (const T *)inp, (const float *)mean, (const float *)rstd, N, C);
	LAUNCH_CHECK();
	CUDA_LAUNCH(cdiv((size_t)C, LN_COLS), LN_COLS, 0, cb->stream, layernorm_dparam_finish_kernel<T>)(
		(T *)dw, (T *)db, pw, pb, R, C);
	LAUNCH_CHECK();
}

void cuda_layernorm_backward(backend *be, void *dinp, void *dweight, void *dbias, const void *dout,
			     const void *inp, const void *weight, const void *mean, const void *rstd, int N,
			     int C)
{
	NVTX_RANGE("layernorm_backward");
	cuda_backend *cb = cuda_of(be);
	if (N <= 0 || C <= 0)
		return;
	int al = aligned16(dinp) && aligned16(dout) && aligned16(inp) && aligned16(weight);
	int bf = be->act == DT_BF16;
	if (dinp) {
		if (bf && al && C % 8 == 0)
			layernorm_dx_launch<__nv_bfloat16, 8>(cb, dinp, dout, inp, weight, mean, rstd, N, C);
		else if (bf)
			layernorm_dx_launch<__nv_bfloat16, 1>(cb, dinp, dout, inp, weight, mean, rstd, N, C);
		else if (al && C % 4 == 0)
			layernorm_dx_launch<float, 4>(cb, dinp, dout, inp, weight, mean, rstd, N, C);
		else
			layernorm_dx_launch<float, 1>(cb, dinp, dout, inp, weight, mean, rstd, N, C);
	}
	if (dweight || dbias) {
		if (bf)
			layernorm_dparam_launch<__nv_bfloat16>(cb, dweight, dbias, dout, inp, mean, rstd, N, C);
		else
			layernorm_dparam_launch<float>(cb, dweight, dbias, dout, inp, mean, rstd, N, C);
	}
}
