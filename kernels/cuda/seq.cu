/* seq.cu: the ops shared by the model families other than GPT-2 (ops.h, "ops
 * shared by the other model families"), forward and backward:
 *
 *   embedding:      out[n,:] (+)= table[ids[n],:]  (a negative id reads zeros)
 *                   dtable[ids[n],:] += dout[n,:]
 *   sequence_embed: out[b,t,:] = x[b,t-k,:] + pos[t,:] (t >= k), first + pos[0] (t < k)
 *                   dx += dout rows;  dfirst, dpos += sums over b
 *   rows_mean:      out[b,:] = (1/n) sum_{i<n} x[b,t+i,:];  dx[b,t+i,:] += dout[b,:] / n
 *   tanh:           y = tanh(x);  dx += dy (1 - y^2)
 *   regression_loss: losses[n] = sum_c l(pred - target) (squared, absolute or Huber,
 *                   in the row's units);  dpred = scale l'(pred - target)
 *   dropout:        y = x keep(i) / (1 - p)  (also its own backward, on dy)
 *                   (keep: the counter-based mask of kernels/dropout_mask.h)
 *
 * All memory-bound: 16-byte accesses where the rows allow (C a multiple of
 * the vector width, pointers 16-byte aligned), math in fp32 whatever the
 * storage type. No atomics anywhere: every sum (a table row's gradient, dpos,
 * dfirst, a row's loss) is made by one thread or one warp in a fixed order,
 * so results are identical run to run.
 *
 * embedding_backward is the encoder's bucketed table gradient
 * (cuda_embedding_backward in encoder.cu): positions sorted by id on the
 * host in linear time, one thread per (id, column chunk) summing its rows in
 * position order, deterministic and without atomics. */
#include "cuda_backend.h"
/* after cuda_backend.h: under the emulator that defines __host__ __device__ */
#include "../dropout_mask.h"

#define SEQ_THREADS 256

/* Act-dtype dispatch: vector width 8 (bf16) or 4 (fp32) when `vec`, else 1. */
#define SEQ_DISPATCH(be, vec, fn, ...)                                  \
	do {                                                            \
		if ((be)->act == DT_BF16) {                             \
			if (vec)                                        \
				fn<__nv_bfloat16, 8>(__VA_ARGS__);      \
			else                                            \
				fn<__nv_bfloat16, 1>(__VA_ARGS__);      \
		} else {                                                \
			if (vec)                                        \
				fn<float, 4>(__VA_ARGS__);              \
			else                                            \
				fn<float, 1>(__VA_ARGS__);              \
		}                                                       \
	} while (0)

/* Rows of C elements can be read 16 bytes at a time: C a multiple of the
 * vector width and every base pointer 16-byte aligned (NULL counts). */
static int seq_vec(const backend *be, int C, const void *a, const void *b, const void *c, const void *d)
{
	int w = be->act == DT_BF16 ? 8 : 4;
	return C % w == 0 && aligned16(a) && aligned16(b) && aligned16(c) && aligned16(d);
}

/* ---- embedding ---- */

template <class T, int V>
__global__ void embedding_forward_kernel(T *out, const int32_t *ids, const T *table, int N, int C, int acc)
{
	size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * V;
	if (i >= (size_t)N * C)
		return;
	size_t n = i / C, c = i % C;
	int id = ids[n];
	float o[V], e[V];
	if (acc) {
		load_f<T, V>(o, out + i);
	} else {
UNROLL
		for (int k = 0; k < V; k++)
			o[k] = 0.0f;
	}
	if (id >= 0) {
		load_f<T, V>(e, table + (size_t)id * C + c);
UNROLL
		for (int k = 0; k < V; k++)
			o[k] += e[k];
	}
	store_f<T, V>(out + i, o);
}

template <class T, int V>
static void embedding_forward_launch(cuda_backend *cb, void *out, const int32_t *ids, const void *table,
				     int N, int C, int acc)
{
	size_t n = (size_t)N * C / V;
	CUDA_LAUNCH(cdiv(n, SEQ_THREADS), SEQ_THREADS, 0, cb->stream, embedding_forward_kernel<T, V>)(
		(T *)out, ids, (const T *)table, N, C, acc);
	LAUNCH_CHECK();
}

static void cuda_embedding_forward(backend *be, void *out, const int32_t *ids, const void *table, int N, int C,
			    int accumulate)
{
	NVTX_RANGE("embedding_forward");
	cuda_backend *cb = cuda_of(be);
	if (N <= 0 || C <= 0)
		return;
	int vec = seq_vec(be, C, out, table, NULL, NULL);
	SEQ_DISPATCH(be, vec, embedding_forward_launch, cb, out, ids, table, N, C, accumulate);
}

/* ---- sequence embedding ---- */

/* k = 1 when first is given: row 0 of each sequence is first + pos[0]. */
template <class T, int V>
__global__ void sequence_embed_forward_kernel(T *out, const T *x, const T *first, const T *pos, int B, int T_,
					      int C)
{
	size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * V;
	if (i >= (size_t)B * T_ * C)
		return;
	int k = first ? 1 : 0;
	size_t bt = i / C, c = i % C, b = bt / T_;
	int t = (int)(bt % T_);
	const T *src = t >= k ? x + (b * (T_ - k) + (t - k)) * C + c : first + c;
	float o[V], p[V];
	load_f<T, V>(o, src);
	load_f<T, V>(p, pos + (size_t)t * C + c);
UNROLL
	for (int j = 0; j < V; j++)
		o[j] += p[j];
	store_f<T, V>(out + i, o);
}

/* One thread per (t, V columns): walks b in order, adding each dout row into
 * dx and into its sum, then adds the sum to dpos (and, at t = 0 with a first
 * row, to dfirst). k = 1 exactly when dfirst is given (see the CPU op). */
template <class T, int V>
__global__ void sequence_embed_backward_kernel(T *dx, T *dfirst, T *dpos, const T *dout, int B, int T_, int C)
{
	size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * V;
	if (i >= (size_t)T_ * C)
		return;
	int k = dfirst ? 1 : 0, t = (int)(i / C);
	size_t c = i % C;
	float s[V], g[V], d[V];
UNROLL
	for (int j = 0; j < V; j++)
		s[j] = 0.0f;
	for (int b = 0; b < B; b++) {
		load_f<T, V>(g, dout + ((size_t)b * T_ + t) * C + c);
UNROLL
		for (int j = 0; j < V; j++)
			s[j] += g[j];
		if (dx && t >= k) {
			T *p = dx + ((size_t)b * (T_ - k) + (t - k)) * C + c;
			load_f<T, V>(d, p);
UNROLL
			for (int j = 0; j < V; j++)
				d[j] += g[j];
			store_f<T, V>(p, d);
		}
	}
	if (dpos) {
		load_f<T, V>(d, dpos + i);
UNROLL
		for (int j = 0; j < V; j++)
			d[j] += s[j];
		store_f<T, V>(dpos + i, d);
	}
	if (t == 0 && dfirst) {
		load_f<T, V>(d, dfirst + c);
UNROLL
		for (int j = 0; j < V; j++)
			d[j] += s[j];
		store_f<T, V>(dfirst + c, d);
	}
}

template <class T, int V>
static void sequence_embed_forward_launch(cuda_backend *cb, void *out, const void *x, const void *first,
					  const void *pos, int B, int T_, int C)
{
	size_t n = (size_t)B * T_ * C / V;
	CUDA_LAUNCH(cdiv(n, SEQ_THREADS), SEQ_THREADS, 0, cb->stream, sequence_embed_forward_kernel<T, V>)(
		(T *)out, (const T *)x, (const T *)first, (const T *)pos, B, T_, C);
	LAUNCH_CHECK();
}

template <class T, int V>
static void sequence_embed_backward_launch(cuda_backend *cb, void *dx, void *dfirst, void *dpos,
					   const void *dout, int B, int T_, int C)
{
	size_t n = (size_t)T_ * C / V;
	CUDA_LAUNCH(cdiv(n, SEQ_THREADS), SEQ_THREADS, 0, cb->stream, sequence_embed_backward_kernel<T, V>)(
		(T *)dx, (T *)dfirst, (T *)dpos, (const T *)dout, B, T_, C);
	LAUNCH_CHECK();
}

static void cuda_sequence_embed_forward(backend *be, void *out, const void *x, const void *first, const void *pos,
				 int B, int T, int C)
{
	NVTX_RANGE("sequence_embed_forward");
	cuda_backend *cb = cuda_of(be);
	if (B <= 0 || T <= 0 || C <= 0)
		return;
	int vec = seq_vec(be, C, out, x, first, pos);
	SEQ_DISPATCH(be, vec, sequence_embed_forward_launch, cb, out, x, first, pos, B, T, C);
}

static void cuda_sequence_embed_backward(backend *be, void *dx, void *dfirst, void *dpos, const void *dout, int B,
				  int T, int C)
{
	NVTX_RANGE("sequence_embed_backward");
	cuda_backend *cb = cuda_of(be);
	if (B <= 0 || T <= 0 || C <= 0)
		return;
	int vec = seq_vec(be, C, dx, dfirst, dpos, dout);
	SEQ_DISPATCH(be, vec, sequence_embed_backward_launch, cb, dx, dfirst, dpos, dout, B, T, C);
}

/* ---- row mean ---- */

/* One thread per V columns of one sequence b: it walks the n rows in order,
 * so each output (forward) or each dx element (backward) has one writer and
 * the sum is made in the same order as the CPU's. The first row starts the
 * sum and inv = 1/n scales it, so n = 1 copies the row exactly. */
template <class T, int V>
__global__ void rows_mean_kernel(T *out, const T *x, int B, int T_, int C, int t, int n, float inv,
				 int backward)
{
	size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * V;
	if (i >= (size_t)B * C)
		return;
	size_t b = i / C, c = i % C, j = (b * T_ + t) * C + c;
	float v[V], d[V];
	if (!backward) {
		load_f<T, V>(v, x + j);
		for (int r = 1; r < n; r++) {
			load_f<T, V>(d, x + j + (size_t)r * C);
UNROLL
			for (int k = 0; k < V; k++)
				v[k] += d[k];
		}
UNROLL
		for (int k = 0; k < V; k++)
			v[k] *= inv;
		store_f<T, V>(out + i, v);
		return;
	}
	/* backward: out is dx [B,T,C], x is dout [B,C] */
	load_f<T, V>(v, x + i);
UNROLL
	for (int k = 0; k < V; k++)
		v[k] *= inv;
	for (int r = 0; r < n; r++) {
		T *row = out + j + (size_t)r * C;
		load_f<T, V>(d, row);
UNROLL
		for (int k = 0; k < V; k++)
			d[k] += v[k];
		store_f<T, V>(row, d);
	}
}

template <class T, int V>
static void rows_mean_launch(cuda_backend *cb, void *out, const void *x, int B, int T_, int C, int t,
			     int n, int backward)
{
	size_t threads = (size_t)B * C / V;
	CUDA_LAUNCH(cdiv(threads, SEQ_THREADS), SEQ_THREADS, 0, cb->stream, rows_mean_kernel<T, V>)(
		(T *)out, (const T *)x, B, T_, C, t, n, 1.0f / (float)n, backward);
	LAUNCH_CHECK();
}

static void rows_mean_check(int T, int t, int n)
{
	if (t < 0 || n < 1 || (long long)t + n > T)
		cuda_die(__FILE__, __LINE__, "rows_mean: rows [%d, %d + %d) outside [0, T = %d)", t, t,
			 n, T);
}

static void cuda_rows_mean_forward(backend *be, void *out, const void *x, int B, int T, int C, int t,
				   int n)
{
	NVTX_RANGE("rows_mean_forward");
	if (B <= 0 || C <= 0)
		return;
	rows_mean_check(T, t, n);
	int vec = seq_vec(be, C, out, x, NULL, NULL);
	SEQ_DISPATCH(be, vec, rows_mean_launch, cuda_of(be), out, x, B, T, C, t, n, 0);
}

static void cuda_rows_mean_backward(backend *be, void *dx, const void *dout, int B, int T, int C, int t,
				    int n)
{
	NVTX_RANGE("rows_mean_backward");
	if (B <= 0 || C <= 0)
		return;
	rows_mean_check(T, t, n);
	int vec = seq_vec(be, C, dx, dout, NULL, NULL);
	SEQ_DISPATCH(be, vec, rows_mean_launch, cuda_of(be), dx, dout, B, T, C, t, n, 1);
}

/* ---- tanh ---- */

struct tanh_fwd_op {
	static const int nin = 1;
	static const bool reads_out = false;
	static __device__ __forceinline__ float apply(float, float x, float) { return tanhf(x); }
};

struct tanh_bwd_op {	/* a = y (the forward's output), b = dy */
	static const int nin = 2;
	static const bool reads_out = true;
	static __device__ __forceinline__ float apply(float dx, float y, float dy)
	{
		return dx + dy * (1.0f - y * y);
	}
};

static void cuda_tanh_forward(backend *be, void *out, const void *inp, size_t N)
{
	NVTX_RANGE("tanh_forward");
	ew_launch<tanh_fwd_op>(be, out, inp, NULL, N);
}

static void cuda_tanh_backward(backend *be, void *dinp, const void *out, const void *dout, size_t N)
{
	NVTX_RANGE("tanh_backward");
	ew_launch<tanh_bwd_op>(be, dinp, out, dout, N);
}

/* ---- regression loss ---- */

#define LOSS_WARPS 8

/* One per-element loss of regression_loss (ops.h) in the row's units: e =
 * pred - target, inv = 1 / unit, dl = delta / unit; *g gets the gradient
 * factor that scale multiplies (MSE's 2 is in its scale). KIND is a template
 * argument, so each kind's loop holds only its own arithmetic. */
template <int KIND>
__device__ __forceinline__ float loss_elem(float e, float inv, float dl, float *g)
{
	if (KIND == LOSS_MAE) {
		float sg = e > 0.0f ? 1.0f : e < 0.0f ? -1.0f : 0.0f;	/* sign(0) = 0 */
		*g = sg * inv;
		return sg * e * inv;
	}
	if (KIND == LOSS_HUBER) {
		float a = fabsf(e);
		*g = fminf(fmaxf(e, -dl), dl);
		return a < dl ? 0.5f * e * e : dl * (a - 0.5f * dl);
	}
	*g = e;
	return e * e;
}

/* One warp per row. Each element of pred is read, then its dpred slot
 * written, by the same lane, so dpred may alias pred. */
template <class T, int V, int KIND>
__global__ void regression_loss_kernel(float *losses, T *dpred, const T *pred, const T *target,
				       const float *unit, int N, int C, float delta, float f)
{
	int lane = threadIdx.x & 31, n = blockIdx.x * LOSS_WARPS + (threadIdx.x >> 5);
	if (n >= N)
		return;	/* uniform over the warp */
	const T *p = pred + (size_t)n * C, *y = target + (size_t)n * C;
	T *d = dpred ? dpred + (size_t)n * C : NULL;
	float inv = unit ? 1.0f / unit[n] : 1.0f, dl = delta * inv, s = 0.0f;
	for (int c = lane * V; c < C; c += 32 * V) {
		float a[V], b[V];
		load_f<T, V>(a, p + c);
		load_f<T, V>(b, y + c);
UNROLL
		for (int k = 0; k < V; k++) {
			float g;
			s += loss_elem<KIND>(a[k] - b[k], inv, dl, &g);
			a[k] = f * g;
		}
		if (d)
			store_f<T, V>(d + c, a);
	}
	s = warp_sum(s);
	if (lane == 0)
		losses[n] = s;
}

template <class T, int V>
static void regression_loss_launch(cuda_backend *cb, void *losses, void *dpred, const void *pred,
				   const void *target, const void *unit, int N, int C, int kind,
				   float delta, float scale)
{
	dim3 grid((unsigned)cdiv((size_t)N, LOSS_WARPS));
	float f = kind == LOSS_MSE ? 2.0f * scale : scale;
#define LOSS_ARGS (float *)losses, (T *)dpred, (const T *)pred, (const T *)target, \
		  (const float *)unit, N, C, delta, f
	if (kind == LOSS_MAE)
		CUDA_LAUNCH(grid, 32 * LOSS_WARPS, 0, cb->stream, regression_loss_kernel<T, V, LOSS_MAE>)(LOSS_ARGS);
	else if (kind == LOSS_HUBER)
		CUDA_LAUNCH(grid, 32 * LOSS_WARPS, 0, cb->stream, regression_loss_kernel<T, V, LOSS_HUBER>)(LOSS_ARGS);
	else
		CUDA_LAUNCH(grid, 32 * LOSS_WARPS, 0, cb->stream, regression_loss_kernel<T, V, LOSS_MSE>)(LOSS_ARGS);
#undef LOSS_ARGS
	LAUNCH_CHECK();
}

static void cuda_regression_loss(backend *be, void *losses, void *dpred, const void *pred,
				 const void *target, const void *unit, int N, int C, int kind,
				 float delta, float scale)
{
	NVTX_RANGE("regression_loss");
	if (N <= 0)
		return;
	int vec = C > 0 && seq_vec(be, C, dpred, pred, target, NULL);
	SEQ_DISPATCH(be, vec, regression_loss_launch, cuda_of(be), losses, dpred, pred, target, unit,
		     N, C, kind, delta, scale);
}

/* ---- dropout ---- */

/* V consecutive elements per thread (16-byte accesses when aligned); each
 * element's mask is recomputed from (seed, i), so the backward (this kernel
 * on the gradient) needs no mask buffer. out may alias x: each element is
 * read, then written, by the same thread. */
template <class T, int V>
__global__ void dropout_kernel(T *out, const T *x, size_t N, uint32_t th, float scale,
			       unsigned long long seed)
{
	size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * V;
	if (i >= N)
		return;
	if (i + V <= N) {
		float a[V];
		load_f<T, V>(a, x + i);
UNROLL
		for (int k = 0; k < V; k++)
			a[k] = dropout_keep(seed, i + k, th) ? a[k] * scale : 0.0f;
		store_f<T, V>(out + i, a);
		return;
	}
	for (; i < N; i++)
		out[i] = from_f<T>(dropout_keep(seed, i, th) ? to_f(x[i]) * scale : 0.0f);
}

template <class T, int V>
static void dropout_launch(cuda_backend *cb, void *out, const void *x, size_t N, float p,
			   uint64_t seed)
{
	CUDA_LAUNCH(cdiv(N, (size_t)V * EW_THREADS), EW_THREADS, 0, cb->stream, dropout_kernel<T, V>)(
		(T *)out, (const T *)x, N, dropout_threshold(p), 1.0f / (1.0f - p),
		(unsigned long long)seed);
	LAUNCH_CHECK();
}

static void cuda_dropout_forward(backend *be, void *out, const void *inp, size_t N, float p,
				 uint64_t seed)
{
	NVTX_RANGE("dropout_forward");
	cuda_backend *cb = cuda_of(be);
	if (!N)
		return;
	int vec = aligned16(out) && aligned16(inp);
	SEQ_DISPATCH(be, vec, dropout_launch, cb, out, inp, N, p, seed);
}

/* ---- install ---- */

void cuda_seq_install(backend *be)
{
	be->embedding_forward = cuda_embedding_forward;
	be->embedding_backward = cuda_embedding_backward;
	be->sequence_embed_forward = cuda_sequence_embed_forward;
	be->sequence_embed_backward = cuda_sequence_embed_backward;
	be->rows_mean_forward = cuda_rows_mean_forward;
	be->rows_mean_backward = cuda_rows_mean_backward;
	be->tanh_forward = cuda_tanh_forward;
	be->tanh_backward = cuda_tanh_backward;
	be->regression_loss = cuda_regression_loss;
	be->dropout_forward = cuda_dropout_forward;
}
