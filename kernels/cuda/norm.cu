/* norm.cu: the sum of squares of the gradients (for the global norm that
 * gradient clipping divides by), returned to the host as a double.
 *
 * Deterministic in two passes, no atomics: a grid whose size depends only on
 * n has each thread sum a fixed, strided set of elements in double, each
 * block reduce its threads in a fixed tree into one partial; the host adds
 * the partials in block order. The same n gives the same bits on every run
 * and every card. Reads each element once: 2 or 4 bytes and 2 flops each. */
#include "cuda_backend.h"

#define NORM_THREADS 256
#define NORM_MAX_BLOCKS 1024

template <class T, int V> __global__ void sumsq_kernel(double *part, const T *g, size_t n)
{
	__shared__ double sh[32];
	double acc = 0.0;
	size_t stride = (size_t)gridDim.x * blockDim.x * V;
	for (size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * V; i < n; i += stride) {
		float f[V];
		if (i + V <= n) {
			load_f<T, V>(f, g + i);
		} else {
UNROLL
			for (int k = 0; k < V; k++)
				f[k] = i + k < n ? to_f(g[i + k]) : 0.0f;
		}
UNROLL
		for (int k = 0; k < V; k++)
			acc = fma((double)f[k], (double)f[k], acc);
	}
	acc = block_sum_d(acc, sh);
	if (threadIdx.x == 0)
		part[blockIdx.x] = acc;
}

template <class T, int V> static double sumsq_t(cuda_backend *cb, const void *g, size_t n)
{
	size_t per_block = (size_t)NORM_THREADS * V * 4;	/* at least 4 vectors per thread */
	unsigned blocks = (unsigned)((n + per_block - 1) / per_block);
	blocks = blocks < 1 ? 1 : (blocks > NORM_MAX_BLOCKS ? NORM_MAX_BLOCKS : blocks);
	double *part = (double *)cuda_scratch(cb, SCR_NORM, NORM_MAX_BLOCKS * sizeof(double));
	CUDA_LAUNCH(blocks, NORM_THREADS, 0, cb->stream, sumsq_kernel<T, V>)(part, (const T *)g, n);
	LAUNCH_CHECK();
	double *host = (double *)cb->stage;
	CUDA_CHECK(cudaMemcpyAsync(host, part, blocks * sizeof(double), cudaMemcpyDeviceToHost, cb->stream));
	CUDA_CHECK(cudaStreamSynchronize(cb->stream));
	double s = 0.0;
	for (unsigned b = 0; b < blocks; b++)
		s += host[b];
	return s;
}

double cuda_sumsq(backend *be, const void *grads, size_t n)
{
	NVTX_RANGE("sumsq");
	cuda_backend *cb = cuda_of(be);
	if (!n || !grads)
		return 0.0;
	int al = aligned16(grads);
	if (be->act == DT_BF16)
		return al ? sumsq_t<__nv_bfloat16, 8>(cb, grads, n) : sumsq_t<__nv_bfloat16, 1>(cb, grads, n);
	return al ? sumsq_t<float, 4>(cb, grads, n) : sumsq_t<float, 1>(cb, grads, n);
}
