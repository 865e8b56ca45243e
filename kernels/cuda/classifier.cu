/* classifier.cu: the fused softmax + cross-entropy (+ dlogits) over the first
 * V of Vp columns.
 *
 *   losses[n]   = logsumexp(logits[n, :V]) - logits[n, target]   (0 if target == -1)
 *   dlogits[n,v] = scale * (softmax_v - [v == target]) for v < V; 0 for v >= V
 *                  and for ignored rows (target -1; another bad id: NaN loss).
 *
 * One block per row, two passes over it: an online max-and-sum (each
 * element's exp once), then the gradient written over the logits. The
 * probabilities are never stored, and dlogits may alias logits: each element
 * is read and then written by the same thread, and every thread has read the
 * target's logit before the reduction's barriers let anyone write. */
#include "cuda_backend.h"

#define XENT_THREADS 256

/* (m, s) <- the pair describing the union of two sets of exponents: max and
 * sum of exp(x - max). An empty set is (-inf, 0). */
static __device__ __forceinline__ void lse_merge(float &m, float &s, float m2, float s2)
{
	float M = fmaxf(m, m2);
	if (M == -INFINITY)
		return;
	s = s * expf(m - M) + s2 * expf(m2 - M);
	m = M;
}

static __device__ __forceinline__ void warp_lse(float &m, float &s)
{
	for (int o = 16; o > 0; o >>= 1) {
		float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
		lse_merge(m, s, m2, s2);
	}
}

template <class T, int V>
__global__ void crossentropy_kernel(float *losses, T *dlogits, const T *logits, const int32_t *targets,
				    int Vn, int Vp, float scale)
{
	__shared__ float shm[32], shs[32];
	int n = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
	const T *x = logits + (size_t)n * Vp;
	T *dx = dlogits ? dlogits + (size_t)n * Vp : NULL;
	int tg = targets[n];
	if (tg < 0 || tg >= Vn) {
		if (threadIdx.x == 0)
			losses[n] = tg == -1 ? 0.0f : NAN;
		float z[V];
UNROLL
		for (int k = 0; k < V; k++)
			z[k] = 0.0f;
		for (int v = threadIdx.x * V; dx && v < Vp; v += blockDim.x * V)
			store_f<T, V>(dx + v, z);
		return;
	}
	float xt = to_f(x[tg]), m = -INFINITY, s = 0.0f, f[V];
	for (int v = threadIdx.x * V; v < Vn; v += blockDim.x * V) {
		load_f<T, V>(f, x + v);
UNROLL
		for (int k = 0; k < V; k++) {
			if (v + k >= Vn)
				break;
			if (f[k] > m) {
				s *= expf(m - f[k]);
				m = f[k];
			}
			s += expf(f[k] - m);
		}
	}
	warp_lse(m, s);
	if (lane == 0) {
		shm[warp] = m;
		shs[warp] = s;
	}
	__syncthreads();
	m = lane < nw ? shm[lane] : -INFINITY;
	s = lane < nw ? shs[lane] : 0.0f;
	warp_lse(m, s);
	float lse = m + logf(s);
	if (threadIdx.x == 0)
		losses[n] = lse - xt;
	if (!dx)
		return;
	for (int v = threadIdx.x * V; v < Vp; v += blockDim.x * V) {
		load_f<T, V>(f, x + v);
UNROLL
		for (int k = 0; k < V; k++) {
			int c = v + k;
			f[k] = c < Vn ? scale * (expf(f[k] - lse) - (c == tg ? 1.0f : 0.0f)) : 0.0f;
		}
		store_f<T, V>(dx + v, f);
	}
}

template <class T, int V>
static void crossentropy_launch(cuda_backend *cb, void *losses, void *dlogits, const void *logits,
				const int32_t *targets, int N, int Vn, int Vp, float scale)
{
	CUDA_LAUNCH(N, XENT_THREADS, 0, cb->stream, crossentropy_kernel<T, V>)(
		(float *)losses, (T *)dlogits, (const T *)logits, targets, Vn, Vp, scale);
	LAUNCH_CHECK();
}

void cuda_crossentropy(backend *be, void *losses, void *dlogits, const void *logits, const int32_t *targets,
		       int N, int V, int Vp, float scale)
{
	NVTX_RANGE("crossentropy");
	cuda_backend *cb = cuda_of(be);
	if (N <= 0)
		return;
	if (V < 1 || V > Vp)
		cuda_die(__FILE__, __LINE__, "crossentropy: V = %d must lie in [1, Vp = %d]", V, Vp);
	int al = aligned16(logits) && aligned16(dlogits);
	if (be->act == DT_BF16) {
		if (al && Vp % 8 == 0)
			crossentropy_launch<__nv_bfloat16, 8>(cb, losses, dlogits, logits, targets, N, V, Vp, scale);
		else
			crossentropy_launch<__nv_bfloat16, 1>(cb, losses, dlogits, logits, targets, N, V, Vp, scale);
	} else {
		if (al && Vp % 4 == 0)
			crossentropy_launch<float, 4>(cb, losses, dlogits, logits, targets, N, V, Vp, scale);
		else
			crossentropy_launch<float, 1>(cb, losses, dlogits, logits, targets, N, V, Vp, scale);
	}
}
