/* adamw.cu: AdamW over every parameter segment in one launch.
 *
 * Per element of each segment (torch.optim.AdamW's order of operations):
 *   g = grad_scale * grad;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
 *   w = w * (1 - lr*wd*decay) - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
 * w is the fp32 master copy when there is one, and the act-typed params are
 * then w rounded stochastically to bf16 (below) or w itself (fp32). Elements
 * outside the segments are not touched.
 *
 * Stochastic rounding: bf16 keeps the top 16 bits of an fp32. Adding 16
 * random bits to the 16 that are dropped and then truncating rounds the
 * magnitude up with probability (dropped bits)/2^16, i.e. by exactly the
 * fraction of a bf16 ulp that w lies past the value below it, so E[params] = w:
 * updates smaller than half an ulp are not lost on average, as they are with
 * round-to-nearest. The random bits are a hash of (hp->seed, element index),
 * so a run is deterministic and ZeRO shards round as one process would.
 *
 * The state (master, m, v) may be a ZeRO shard: parameter element i's is
 * element i - hp->state_offset of it; the rounding bits still hash i.
 *
 * Launch: a grid of blocks of ADAMW_EPB elements, each block inside one
 * segment; the segment table (offset, count, decay, first block) lives on the
 * device and is uploaded only when it changes, i.e. once per model. A block
 * finds its segment by binary search over first blocks. Memory-bound: per
 * element it reads grad, m, v, w and writes m, v, w, params. */
#include "cuda_backend.h"

#include <stdlib.h>
#include <string.h>

#define ADAMW_THREADS 256
#define ADAMW_EPB (ADAMW_THREADS * 4)

struct adamw_seg {
	unsigned long long offset, count;
	unsigned first_block;
	int decay;
};

struct adamw_consts {
	float b1, b2, eps, gs, step, bc2s, keep;
};

/* 32 well-mixed bits from (seed, i): a murmur3-style finaliser over both. */
static __device__ __forceinline__ unsigned adamw_hash(unsigned seed, unsigned long long i)
{
	unsigned h = seed ^ (unsigned)i * 0x9e3779b1u ^ (unsigned)(i >> 32) * 0x85ebca77u;
	h ^= h >> 16;
	h *= 0x7feb352du;
	h ^= h >> 15;
	h *= 0x846ca68bu;
	h ^= h >> 16;
	return h;
}

/* The act-typed copy of master weight w: w itself (fp32), or w rounded
 * stochastically to bf16 with random bits r (see the top of the file).
 * Inf and NaN go through round-to-nearest so that they stay what they are. */
template <class T> __device__ __forceinline__ T adamw_round(float w, unsigned r);
template <> __device__ __forceinline__ float adamw_round<float>(float w, unsigned) { return w; }
template <> __device__ __forceinline__ __nv_bfloat16 adamw_round<__nv_bfloat16>(float w, unsigned r)
{
	if (!isfinite(w))
		return __float2bfloat16(w);
	return __float2bfloat16_rz(__uint_as_float(__float_as_uint(w) + (r & 0xffffu)));
}

/* The segment block b lies in: binary search over the first blocks. */
static __device__ __forceinline__ adamw_seg adamw_block_seg(const adamw_seg *segs, int nsegs, unsigned b)
{
	int lo = 0, hi = nsegs - 1;
	while (lo < hi) {
		int mid = (lo + hi + 1) >> 1;
		if (segs[mid].first_block <= b)
			lo = mid;
		else
			hi = mid - 1;
	}
	return segs[lo];
}

template <class T>
__global__ void adamw_kernel(T *params, float *master, const T *grads, float *m, float *v,
			     const adamw_seg *segs, int nsegs, adamw_consts on, adamw_consts off,
			     unsigned seed, unsigned long long so)
{
	unsigned b = blockIdx.x;
	const adamw_seg s = adamw_block_seg(segs, nsegs, b);
	const adamw_consts k = s.decay ? on : off;
	size_t start = (size_t)(b - s.first_block) * ADAMW_EPB;
	for (int e = threadIdx.x; e < ADAMW_EPB; e += blockDim.x) {
		size_t j = start + e;
		if (j >= s.count)
			break;
		size_t i = s.offset + j, q = i - so;	/* q: the element of the state */
		float g = k.gs * to_f(grads[i]);
		float mi = k.b1 * m[q] + (1.0f - k.b1) * g;
		float vi = k.b2 * v[q] + (1.0f - k.b2) * g * g;
		float w = master ? master[q] : to_f(params[i]);
		w = w * k.keep - k.step * (mi / (sqrtf(vi) / k.bc2s + k.eps));
		m[q] = mi;
		v[q] = vi;
		if (master)
			master[q] = w;
		params[i] = master ? adamw_round<T>(w, adamw_hash(seed, i)) : from_f<T>(w);
	}
}

/* params_from_master's kernel: adamw_kernel's last line alone. */
template <class T>
__global__ void params_round_kernel(T *params, const float *master, const adamw_seg *segs, int nsegs,
				    unsigned seed, unsigned long long so)
{
	const adamw_seg s = adamw_block_seg(segs, nsegs, blockIdx.x);
	size_t start = (size_t)(blockIdx.x - s.first_block) * ADAMW_EPB;
	for (int e = threadIdx.x; e < ADAMW_EPB; e += blockDim.x) {
		size_t j = start + e;
		if (j >= s.count)
			break;
		size_t i = s.offset + j;
		params[i] = adamw_round<T>(master[i - so], adamw_hash(seed, i));
	}
}

/* The device segment table for segs (empty segments dropped), uploaded only
 * when it differs from the last one. Returns the number of blocks; *n gets
 * the number of table entries. */
static unsigned adamw_table(cuda_backend *cb, const param_segment *segs, int nsegs, adamw_seg **dev, int *n)
{
	size_t bytes = (size_t)nsegs * sizeof(adamw_seg);
	adamw_seg *t = (adamw_seg *)cb->stage;	/* staging is idle between calls */
	if (bytes > cb->stage_cap)
		cuda_die(__FILE__, __LINE__, "adamw: %d segments do not fit the staging buffer", nsegs);
	memset(t, 0, bytes);
	unsigned long long blocks = 0;
	int k = 0;
	for (int i = 0; i < nsegs; i++) {
		if (!segs[i].count)
			continue;
		t[k].offset = segs[i].offset;
		t[k].count = segs[i].count;
		t[k].decay = segs[i].decay != 0;
		t[k].first_block = (unsigned)blocks;
		blocks += (segs[i].count + ADAMW_EPB - 1) / ADAMW_EPB;
		k++;
	}
	if (blocks > 0x7fffffffull)
		cuda_die(__FILE__, __LINE__, "adamw: %llu blocks exceed the grid", blocks);
	bytes = (size_t)k * sizeof(adamw_seg);
	*dev = (adamw_seg *)cuda_scratch(cb, SCR_ADAMW, bytes ? bytes : sizeof(adamw_seg));
	*n = k;
	/* the scratch only moves when it grows, and then the size differs too */
	if (bytes != cb->adamw_bytes || !cb->adamw_host || memcmp(cb->adamw_host, t, bytes) != 0) {
		void *h = realloc(cb->adamw_host, bytes ? bytes : 1);
		if (!h)
			cuda_die(__FILE__, __LINE__, "adamw: out of host memory");
		memcpy(h, t, bytes);
		cb->adamw_host = h;
		cb->adamw_bytes = bytes;
		CUDA_CHECK(cudaMemcpyAsync(*dev, t, bytes, cudaMemcpyHostToDevice, cb->stream));
		CUDA_CHECK(cudaStreamSynchronize(cb->stream));
	}
	return (unsigned)blocks;
}

/* The rounding bits' seed of step hp->step: the step goes into the bits too,
 * so a caller that leaves seed at 0 still gets fresh rounding every step. */
static unsigned adamw_seed(const adamw_params *hp)
{
	int t = hp->step < 1 ? 1 : hp->step;
	return hp->seed * 0x27d4eb2fu ^ (unsigned)t * 0x165667b1u;
}

void cuda_adamw(backend *be, void *params, void *master, const void *grads, void *m, void *v,
		const param_segment *segs, int nsegs, const adamw_params *hp)
{
	NVTX_RANGE("adamw");
	cuda_backend *cb = cuda_of(be);
	if (nsegs <= 0)
		return;
	int t = hp->step < 1 ? 1 : hp->step;
	double bc1 = 1.0 - pow(hp->beta1, t), bc2 = 1.0 - pow(hp->beta2, t);
	adamw_consts on = {hp->beta1, hp->beta2, hp->eps, hp->grad_scale, (float)(hp->lr / bc1),
			   (float)sqrt(bc2), (float)(1.0 - (double)hp->lr * hp->weight_decay)};
	adamw_consts off = on;
	off.keep = 1.0f;
	adamw_seg *table;
	int n;
	unsigned blocks = adamw_table(cb, segs, nsegs, &table, &n);
	if (!blocks)
		return;
	unsigned seed = adamw_seed(hp);
	if (be->act == DT_BF16)
		CUDA_LAUNCH(blocks, ADAMW_THREADS, 0, cb->stream, adamw_kernel<__nv_bfloat16>)(
			(__nv_bfloat16 *)params, (float *)master, (const __nv_bfloat16 *)grads, (float *)m, (float *)v,
			table, n, on, off, seed, hp->state_offset);
	else
		CUDA_LAUNCH(blocks, ADAMW_THREADS, 0, cb->stream, adamw_kernel<float>)(
			(float *)params, (float *)master, (const float *)grads, (float *)m, (float *)v, table, n, on,
			off, seed, hp->state_offset);
	LAUNCH_CHECK();
}

void cuda_params_from_master(backend *be, void *params, const void *master, const param_segment *segs,
			     int nsegs, const adamw_params *hp)
{
	NVTX_RANGE("params_from_master");
	cuda_backend *cb = cuda_of(be);
	if (nsegs <= 0 || !master || be->act != DT_BF16)
		return;	/* without master weights the params are the weights */
	adamw_seg *table;
	int n;
	unsigned blocks = adamw_table(cb, segs, nsegs, &table, &n);
	if (!blocks)
		return;
	CUDA_LAUNCH(blocks, ADAMW_THREADS, 0, cb->stream, params_round_kernel<__nv_bfloat16>)(
		(__nv_bfloat16 *)params, (const float *)master, table, n, adamw_seed(hp), hp->state_offset);
	LAUNCH_CHECK();
}
