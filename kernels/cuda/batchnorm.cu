/* batchnorm.cu: batch normalisation over the rows of [N, C] (ops.h
 * batchnorm_forward, residual_batchnorm_forward, batchnorm_backward; torch's
 * BatchNorm1d over C features): statistics per column, across every row.
 *
 *   training forward: mean_c, var_c (biased) over the N rows; saves mean,
 *             rstd [C] (fp32); running_mean/var += momentum (batch - running),
 *             the variance unbiased (N / (N - 1));
 *   evaluation forward: the running statistics, unchanged;
 *   residual form: x = a + b rounded to T and stored as the residual stream,
 *             then the forward on that stored x;
 *   backward: xhat = (x - mean) rstd;  dg += sum_rows dy xhat;  db += sum_rows dy;
 *             dx += rstd g (dy - sum dy / N - xhat sum(dy xhat) / N) in training,
 *             dx += rstd g dy in evaluation.
 *
 * A column reduction in three kernels, deterministic without atomics:
 *  1. partials: a block of 32 x BN_ROWS threads takes 32 adjacent columns
 *     (a warp reads 32 contiguous elements of a row: coalesced) and a chunk
 *     of BN_CHUNK rows; each thread walks its column down the chunk with a
 *     stride of BN_ROWS rows, then the block merges its BN_ROWS partials
 *     per column in a fixed order in shared memory, into row `chunk` of a
 *     scratch [chunks, 2C]. The forward keeps (mean, M2) per partial
 *     (Welford's update per element, Chan's merge per partial: no
 *     cancellation for columns with a large mean, as the CPU's two passes);
 *     the backward plain sums of dy and dy xhat.
 *  2. finalise: one thread per column merges the chunks in chunk order, and
 *     writes the statistics (and the running estimates), or dg, db and the
 *     two coefficients dx needs.
 *  3. an elementwise pass over [N, C]: y, or dx (16-byte vectors when the
 *     rows hold whole ones).
 * The chunks depend on N alone, every sum has a fixed order: the same bits
 * on every run. Accumulation in fp32 whatever T. */
#include "cuda_backend.h"

#define BN_ROWS 8	/* threads per column in a block: blockDim = (32, BN_ROWS) */
#define BN_CHUNK 256	/* rows per block of the partials, at least */
#define BN_MAX_CHUNKS 1024
#define BN_EPS 1e-5f
#define BN_EW_THREADS 256

/* Rows per chunk: BN_CHUNK, more when N would need over BN_MAX_CHUNKS. */
static inline int bn_chunk_rows(int N)
{
	int r = BN_CHUNK;
	while ((size_t)r * BN_MAX_CHUNKS < (size_t)N)
		r *= 2;
	return r;
}

static inline int bn_chunks(int N) { return (int)cdiv((size_t)N, (size_t)bn_chunk_rows(N)); }

/* Scratch: the statistics or coefficients [2C], then the partials [chunks, 2C]. */
size_t cuda_batchnorm_scratch_bytes(int N, int C)
{
	return ((size_t)bn_chunks(N) + 1) * 2 * C * sizeof(float);
}

/* Chan's merge of (nb, mb, m2b) into (na, ma, m2a). */
static __device__ __forceinline__ void chan_merge(float &na, float &ma, float &m2a, float nb, float mb,
						  float m2b)
{
	float n = na + nb;
	if (nb == 0.0f)
		return;
	float d = mb - ma, f = nb / n;
	ma += d * f;
	m2a += m2b + d * d * na * f;
	na = n;
}

/* Forward partials: (mean, M2) of each column over the block's chunk; with
 * add (the residual form) x = inp + add is stored into res first. */
template <class T, bool FUSE>
__global__ void bn_stats_kernel(float *part, const T *inp, const T *add, T *res, int N, int C, int rows)
{
	__shared__ float sm[BN_ROWS][32], s2[BN_ROWS][32];
	int c = blockIdx.x * 32 + threadIdx.x, r0 = blockIdx.y * rows, r1 = min(N, r0 + rows);
	float n = 0.0f, m = 0.0f, m2 = 0.0f;
	if (c < C) {
		for (int r = r0 + threadIdx.y; r < r1; r += BN_ROWS) {
			size_t i = (size_t)r * C + c;
			float x = to_f(inp[i]);
			if constexpr (FUSE) {
				T s = from_f<T>(x + to_f(add[i]));
				res[i] = s;
				x = to_f(s);
			}
			n += 1.0f;
			float d = x - m;
			m += d / n;
			m2 += d * (x - m);
		}
	}
	sm[threadIdx.y][threadIdx.x] = m;
	s2[threadIdx.y][threadIdx.x] = m2;
	__syncthreads();
	if (threadIdx.y != 0 || c >= C)
		return;
	/* thread (x, y) saw rows r0 + y, r0 + y + BN_ROWS, ...: its count follows */
	float na = 0.0f, ma = 0.0f, m2a = 0.0f;
	for (int y = 0; y < BN_ROWS; y++) {
		int first = r0 + y;
		float nb = first < r1 ? (float)((r1 - first + BN_ROWS - 1) / BN_ROWS) : 0.0f;
		chan_merge(na, ma, m2a, nb, sm[y][threadIdx.x], s2[y][threadIdx.x]);
	}
	float *p = part + (size_t)blockIdx.y * 2 * C;
	p[c] = ma;
	p[C + c] = m2a;
}

/* Forward finalise, one thread per column: the batch's statistics from the
 * partials (train) or the running ones, into mean/rstd (the caller's, or
 * scratch); the running estimates updated in training. */
__global__ void bn_stats_final_kernel(float *mean, float *rstd, float *rmean, float *rvar, const float *part,
				      int chunks, int rows, int N, int C, float momentum, int train)
{
	int c = blockIdx.x * blockDim.x + threadIdx.x;
	if (c >= C)
		return;
	float m, v;
	if (train) {
		float na = 0.0f, m2 = 0.0f;
		m = 0.0f;
		for (int k = 0; k < chunks; k++) {
			float nb = (float)(min(N, (k + 1) * rows) - k * rows);
			chan_merge(na, m, m2, nb, part[(size_t)k * 2 * C + c], part[(size_t)k * 2 * C + C + c]);
		}
		v = m2 / (float)N;
		float unbiased = N > 1 ? m2 / (float)(N - 1) : v;
		rmean[c] = (1.0f - momentum) * rmean[c] + momentum * m;
		rvar[c] = (1.0f - momentum) * rvar[c] + momentum * unbiased;
	} else {
		m = rmean[c];
		v = rvar[c];
	}
	mean[c] = m;
	rstd[c] = 1.0f / sqrtf(v + BN_EPS);
}

/* y = (x - mean) rstd g + b over [N, C], V elements of one row per thread
 * (16-byte accesses when V > 1: C % V == 0 and every pointer aligned). */
template <class T, int V>
__global__ void bn_apply_kernel(T *out, const T *inp, const float *mean, const float *rstd, const T *w,
				const T *b, int N, int C)
{
	size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * V;
	if (i >= (size_t)N * C)
		return;
	int c = (int)(i % (size_t)C);
	float x[V], g[V], bb[V];
	load_f<T, V>(x, inp + i);
	load_f<T, V>(g, w + c);
	if (b) {
		load_f<T, V>(bb, b + c);
	} else {
UNROLL
		for (int k = 0; k < V; k++)
			bb[k] = 0.0f;
	}
UNROLL
	for (int k = 0; k < V; k++)
		x[k] = (x[k] - mean[c + k]) * rstd[c + k] * g[k] + bb[k];
	store_f<T, V>(out + i, x);
}

/* Backward partials: sum dy and sum dy xhat of each column over the chunk. */
template <class T>
__global__ void bn_grad_sums_kernel(float *part, const T *dout, const T *inp, const float *mean,
				    const float *rstd, int N, int C, int rows)
{
	__shared__ float sa[BN_ROWS][32], sg[BN_ROWS][32];
	int c = blockIdx.x * 32 + threadIdx.x, r0 = blockIdx.y * rows, r1 = min(N, r0 + rows);
	float a = 0.0f, g = 0.0f;
	if (c < C) {
		float m = mean[c], s = rstd[c];
		for (int r = r0 + threadIdx.y; r < r1; r += BN_ROWS) {
			size_t i = (size_t)r * C + c;
			float dy = to_f(dout[i]);
			a += dy;
			g += dy * ((to_f(inp[i]) - m) * s);
		}
	}
	sa[threadIdx.y][threadIdx.x] = a;
	sg[threadIdx.y][threadIdx.x] = g;
	__syncthreads();
	if (threadIdx.y != 0 || c >= C)
		return;
	a = g = 0.0f;
	for (int y = 0; y < BN_ROWS; y++) {
		a += sa[y][threadIdx.x];
		g += sg[y][threadIdx.x];
	}
	float *p = part + (size_t)blockIdx.y * 2 * C;
	p[c] = a;
	p[C + c] = g;
}

/* Backward finalise: dg += sum dy xhat, db += sum dy, and dx's coefficients
 * coef[c] = sum dy / N, coef[C + c] = sum dy xhat / N (0 in evaluation). */
template <class T>
__global__ void bn_grad_final_kernel(float *coef, T *dw, T *db, const float *part, int chunks, int N, int C,
				     int train)
{
	int c = blockIdx.x * blockDim.x + threadIdx.x;
	if (c >= C)
		return;
	float a = 0.0f, g = 0.0f;
	for (int k = 0; k < chunks; k++) {
		a += part[(size_t)k * 2 * C + c];
		g += part[(size_t)k * 2 * C + C + c];
	}
	if (dw)
		dw[c] = from_f<T>(to_f(dw[c]) + g);
	if (db)
		db[c] = from_f<T>(to_f(db[c]) + a);
	coef[c] = train ? a / (float)N : 0.0f;
	coef[C + c] = train ? g / (float)N : 0.0f;
}

/* dx += rstd g (dy - coef_a - xhat coef_g), V elements of one row per thread
 * (as bn_apply_kernel). */
template <class T, int V>
__global__ void bn_dx_kernel(T *dinp, const T *dout, const T *inp, const T *w, const float *mean,
			     const float *rstd, const float *coef, int N, int C)
{
	size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * V;
	if (i >= (size_t)N * C)
		return;
	int c = (int)(i % (size_t)C);
	float dx[V], dy[V], x[V], g[V];
	load_f<T, V>(dx, dinp + i);
	load_f<T, V>(dy, dout + i);
	load_f<T, V>(x, inp + i);
	load_f<T, V>(g, w + c);
UNROLL
	for (int k = 0; k < V; k++) {
		float s = rstd[c + k], xh = (x[k] - mean[c + k]) * s;
		dx[k] += s * g[k] * (dy[k] - coef[c + k] - xh * coef[C + c + k]);
	}
	store_f<T, V>(dinp + i, dx);
}

/* Elements per thread of the elementwise passes: a 16-byte vector of T when
 * rows hold whole vectors and every pointer is aligned, else 1. */
template <class T> static inline int bn_vec(int C, const void *a, const void *b, const void *c, const void *d,
					    const void *e)
{
	int v = vec_of<T>::n;
	return C % v == 0 && aligned16(a) && aligned16(b) && aligned16(c) && aligned16(d) && aligned16(e) ? v : 1;
}

/* ---- host side ---- */

template <class T>
static void bn_forward_t(cuda_backend *cb, void *out, float *mean, float *rstd, float *rmean, float *rvar,
			 const void *inp, const void *w, const void *b, float momentum, int train, int N, int C,
			 void *res, const void *add, float *scr)
{
	int rows = bn_chunk_rows(N), chunks = bn_chunks(N);
	float *part = scr + 2 * (size_t)C;
	const T *x = (const T *)inp;
	if (train) {
		dim3 grid(cdiv((size_t)C, 32), (unsigned)chunks), block(32, BN_ROWS);
		if (add)
			CUDA_LAUNCH(grid, block, 0, cb->stream, bn_stats_kernel<T, true>)(
				part, (const T *)inp, (const T *)add, (T *)res, N, C, rows);
		else
			CUDA_LAUNCH(grid, block, 0, cb->stream, bn_stats_kernel<T, false>)(
				part, (const T *)inp, (const T *)NULL, (T *)NULL, N, C, rows);
		LAUNCH_CHECK();
	}
	if (add)
		x = (const T *)res;
	CUDA_LAUNCH(cdiv((size_t)C, 128), 128, 0, cb->stream, bn_stats_final_kernel)(
		mean, rstd, rmean, rvar, part, chunks, rows, N, C, momentum, train);
	LAUNCH_CHECK();
	constexpr int VV = vec_of<T>::n;
	if (bn_vec<T>(C, out, x, w, b, NULL) > 1)
		CUDA_LAUNCH(cdiv((size_t)N * C, (size_t)VV * BN_EW_THREADS), BN_EW_THREADS, 0, cb->stream,
			    bn_apply_kernel<T, VV>)((T *)out, x, mean, rstd, (const T *)w, (const T *)b, N, C);
	else
		CUDA_LAUNCH(cdiv((size_t)N * C, BN_EW_THREADS), BN_EW_THREADS, 0, cb->stream, bn_apply_kernel<T, 1>)(
			(T *)out, x, mean, rstd, (const T *)w, (const T *)b, N, C);
	LAUNCH_CHECK();
}

static void bn_forward_any(backend *be, void *out, void *mean, void *rstd, void *rmean, void *rvar,
			   const void *inp, const void *w, const void *b, float momentum, int train, int N, int C,
			   void *res, const void *add)
{
	cuda_backend *cb = cuda_of(be);
	if (N <= 0 || C <= 0)
		return;
	float *scr = (float *)cuda_scratch(cb, SCR_COLSUM, cuda_batchnorm_scratch_bytes(N, C));
	float *m = mean ? (float *)mean : scr, *r = rstd ? (float *)rstd : scr + C;
	if (add && !train)	/* no statistics to gather: the sum alone, as residual_forward */
		cuda_residual_forward(be, res, inp, add, (size_t)N * C);
	if (be->act == DT_BF16)
		bn_forward_t<__nv_bfloat16>(cb, out, m, r, (float *)rmean, (float *)rvar, inp, w, b, momentum, train,
					    N, C, res, add, scr);
	else
		bn_forward_t<float>(cb, out, m, r, (float *)rmean, (float *)rvar, inp, w, b, momentum, train, N, C,
				    res, add, scr);
}

void cuda_batchnorm_forward(backend *be, void *out, void *mean, void *rstd, void *running_mean,
			    void *running_var, const void *inp, const void *weight, const void *bias, float momentum,
			    int train, int N, int C)
{
	NVTX_RANGE("batchnorm_forward");
	bn_forward_any(be, out, mean, rstd, running_mean, running_var, inp, weight, bias, momentum, train, N, C,
		       NULL, NULL);
}

void cuda_residual_batchnorm_forward(backend *be, void *res_out, void *out, void *mean, void *rstd,
				     void *running_mean, void *running_var, const void *a, const void *b,
				     const void *weight, const void *bias, float momentum, int train, int N, int C)
{
	NVTX_RANGE("residual_batchnorm_forward");
	bn_forward_any(be, out, mean, rstd, running_mean, running_var, a, weight, bias, momentum, train, N, C,
		       res_out, b);
}

template <class T>
static void bn_backward_t(cuda_backend *cb, void *dinp, void *dw, void *db, const void *dout, const void *inp,
			  const void *w, const float *mean, const float *rstd, int train, int N, int C, float *scr)
{
	int rows = bn_chunk_rows(N), chunks = bn_chunks(N);
	float *coef = scr, *part = scr + 2 * (size_t)C;
	dim3 grid(cdiv((size_t)C, 32), (unsigned)chunks), block(32, BN_ROWS);
	CUDA_LAUNCH(grid, block, 0, cb->stream, bn_grad_sums_kernel<T>)(part, (const T *)dout, (const T *)inp,
									 mean, rstd, N, C, rows);
	LAUNCH_CHECK();
	CUDA_LAUNCH(cdiv((size_t)C, 128), 128, 0, cb->stream, bn_grad_final_kernel<T>)(
		coef, (T *)dw, (T *)db, part, chunks, N, C, train);
	LAUNCH_CHECK();
	if (!dinp)
		return;
	constexpr int VV = vec_of<T>::n;
	if (bn_vec<T>(C, dinp, dout, inp, w, NULL) > 1)
		CUDA_LAUNCH(cdiv((size_t)N * C, (size_t)VV * BN_EW_THREADS), BN_EW_THREADS, 0, cb->stream,
			    bn_dx_kernel<T, VV>)((T *)dinp, (const T *)dout, (const T *)inp, (const T *)w, mean, rstd,
						 coef, N, C);
	else
		CUDA_LAUNCH(cdiv((size_t)N * C, BN_EW_THREADS), BN_EW_THREADS, 0, cb->stream, bn_dx_kernel<T, 1>)(
			(T *)dinp, (const T *)dout, (const T *)inp, (const T *)w, mean, rstd, coef, N, C);
	LAUNCH_CHECK();
}

void cuda_batchnorm_backward(backend *be, void *dinp, void *dweight, void *dbias, const void *dout,
			     const void *inp, const void *weight, const void *mean, const void *rstd, int train, int N,
			     int C)
{
	NVTX_RANGE("batchnorm_backward");
	cuda_backend *cb = cuda_of(be);
	if (N <= 0 || C <= 0 || (!dinp && !dweight && !dbias))
		return;
	float *scr = (float *)cuda_scratch(cb, SCR_COLSUM, cuda_batchnorm_scratch_bytes(N, C));
	if (be->act == DT_BF16)
		bn_backward_t<__nv_bfloat16>(cb, dinp, dweight, dbias, dout, inp, weight, (const float *)mean,
					     (const float *)rstd, train, N, C, scr);
	else
		bn_backward_t<float>(cb, dinp, dweight, dbias, dout, inp, weight, (const float *)mean,
				     (const float *)rstd, train, N, C, scr);
}
