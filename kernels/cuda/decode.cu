/* decode.cu: attention for one new position over a key/value cache
 * (kernels/ops.h, attention_decode): the step of incremental sampling.
 *
 *   s_j = q_pos . k_j / sqrt(hs)  (j = 0..pos);  p = softmax(s);  out = sum_j p_j v_j
 *
 * One block per (sequence, head); it first stores its head's new k and v in
 * the sequence's own cache. Positions below prefix_len are read from the
 * sequence's prefix row, shared by the sequences b with the same
 * b % prefix_rows, whose blocks run next to each other. The pos + 1 scores
 * sit in dynamic shared memory (4 bytes each, up to DECODE_MAX_KEYS keys);
 * a block-wide max and sum, then each thread accumulates output elements
 * over j, reading the v rows coalesced. Work per step is O(pos * C):
 * generation is linear in length per token. Past 48 KiB of shared memory in
 * all (the scores and the kernel's static reduction array) a launch needs the
 * opt-in attribute, which is set then: without it such a launch fails on the
 * hardware. */
#include "cuda_backend.h"

#define DECODE_THREADS 128
#define DECODE_MAX_KEYS 32768 /* 128 KiB of fp32 scores: within sm_80's and sm_90's opt-in */
#define DECODE_SMEM_DEFAULT (48 * 1024 - 32 * (int)sizeof(float)) /* 48 KiB less `red` */

/* Block-wide reduction of one float (max or sum) through shared memory. */
template <bool MAX> static __device__ float block_reduce(float x, float *red)
{
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
	for (int o = 16; o > 0; o >>= 1) {
		float y = __shfl_xor_sync(0xffffffffu, x, o);
		x = MAX ? fmaxf(x, y) : x + y;
	}
	if (lane == 0)
		red[warp] = x;
	__syncthreads();
	x = lane < nw ? red[lane] : (MAX ? -INFINITY : 0.0f);
	for (int o = 16; o > 0; o >>= 1) {
		float y = __shfl_xor_sync(0xffffffffu, x, o);
		x = MAX ? fmaxf(x, y) : x + y;
	}
	__syncthreads(); /* red is reused by the next reduction */
	return x;
}

/* The t-th sequence of B in the order the blocks run: the sequences of
 * prefix row 0 (b = 0, rows, 2 rows, ...), then those of row 1, and so on
 * (rows r < B % rows have one more), as the CPU op orders its work: blocks
 * start roughly in index order, so the blocks reading one prefix row run
 * close together and find its rows in L2. */
static __device__ int decode_order(int t, int B, int rows)
{
	int q = B / rows, m = B % rows, r, k;
	if (t < m * (q + 1)) {
		r = t / (q + 1), k = t % (q + 1);
	} else {
		t -= m * (q + 1);
		r = m + t / q, k = t % q;
	}
	return r + k * rows;
}

template <class T>
__global__ void attention_decode_kernel(T *out, T *kv, const T *qkv, int B, int pos, int maxlen,
					const T *prefix, int prefix_rows, int prefix_len, int C,
					int hs, float scale)
{
	DYNAMIC_SHARED(float, s);
	__shared__ float red[32];
	int h = blockIdx.x, n = pos + 1, own = pos + 1 - prefix_len;
	int b = prefix_len ? decode_order((int)blockIdx.y, B, prefix_rows) : (int)blockIdx.y;
	const T *q = qkv + (size_t)b * 3 * C + h * hs;
	/* positions below prefix_len in the prefix row, the others in this sequence's own rows */
	const T *pre = prefix_len ? prefix + (size_t)(b % prefix_rows) * prefix_len * 2 * C : kv;
	kv += (size_t)b * maxlen * 2 * C;
	out += (size_t)b * C;
	/* the new k and v of this head: only this block reads or writes them */
	for (int i = threadIdx.x; i < hs; i += blockDim.x) {
		kv[(size_t)(own - 1) * 2 * C + h * hs + i] = q[C + i];
		kv[(size_t)(own - 1) * 2 * C + C + h * hs + i] = q[2 * C + i];
	}
	__syncthreads();
	float mx = -INFINITY;
	for (int j = threadIdx.x; j < n; j += blockDim.x) {
		const T *k = (j < prefix_len ? pre + (size_t)j * 2 * C : kv + (size_t)(j - prefix_len) * 2 * C) +
			     h * hs;
		float d = 0.0f;
		for (int i = 0; i < hs; i++)
			d += to_f(q[i]) * to_f(k[i]);
		s[j] = d * scale;
		mx = fmaxf(mx, s[j]);
	}
	mx = block_reduce<true>(mx, red);
	float sum = 0.0f;
	for (int j = threadIdx.x; j < n; j += blockDim.x) {
		s[j] = expf(s[j] - mx);
		sum += s[j];
	}
	sum = block_reduce<false>(sum, red); /* its barriers also publish s[] */
	for (int i = threadIdx.x; i < hs; i += blockDim.x) {
		float acc = 0.0f;
		const T *pv = pre + C + h * hs + i, *ov = kv + C + h * hs + i;
		for (int j = 0; j < prefix_len; j++) /* the same sum, in the same order, as one loop */
			acc += s[j] * to_f(pv[(size_t)j * 2 * C]);
		for (int j = prefix_len; j < n; j++)
			acc += s[j] * to_f(ov[(size_t)(j - prefix_len) * 2 * C]);
		out[h * hs + i] = from_f<T>(acc / sum);
	}
}

void cuda_attention_decode(backend *be, void *out, void *kv, const void *qkv, int B, int pos,
			   int maxlen, const void *prefix, int prefix_rows, int prefix_len, int C, int NH)
{
	NVTX_RANGE("attention_decode");
	cuda_backend *cb = cuda_of(be);
	int hs = C / NH;
	if (pos + 1 > DECODE_MAX_KEYS)
		cuda_die(__FILE__, __LINE__, "attention_decode: %d cached positions exceed the %d "
			 "this kernel holds in shared memory", pos + 1, DECODE_MAX_KEYS);
	if (B > 65535)
		cuda_die(__FILE__, __LINE__, "attention_decode: %d sequences exceed the grid's 65535 "
			 "blocks in y", B);
	if (prefix_len < 0 || pos < prefix_len || pos - prefix_len >= maxlen ||
	    (prefix_len && prefix_rows < 1))
		cuda_die(__FILE__, __LINE__, "attention_decode: position %d is outside a prefix of %d "
			 "positions (%d rows) and %d positions after it", pos, prefix_len, prefix_rows,
			 maxlen);
	size_t smem = (size_t)(pos + 1) * sizeof(float);
	dim3 grid((unsigned)NH, (unsigned)B);
	float scale = 1.0f / sqrtf((float)hs);
	int optin = smem > (size_t)DECODE_SMEM_DEFAULT ? (int)smem : 0;
	if (be->act == DT_BF16) {
		if (optin)
			CUDA_CHECK(cudaFuncSetAttribute(attention_decode_kernel<__nv_bfloat16>,
							cudaFuncAttributeMaxDynamicSharedMemorySize, optin));
		CUDA_LAUNCH(grid, DECODE_THREADS, smem, cb->stream, attention_decode_kernel<__nv_bfloat16>)(
			(__nv_bfloat16 *)out, (__nv_bfloat16 *)kv, (const __nv_bfloat16 *)qkv, B, pos, maxlen,
			(const __nv_bfloat16 *)prefix, prefix_rows, prefix_len, C, hs, scale);
	} else {
		if (optin)
			CUDA_CHECK(cudaFuncSetAttribute(attention_decode_kernel<float>,
							cudaFuncAttributeMaxDynamicSharedMemorySize, optin));
		CUDA_LAUNCH(grid, DECODE_THREADS, smem, cb->stream, attention_decode_kernel<float>)(
			(float *)out, (float *)kv, (const float *)qkv, B, pos, maxlen, (const float *)prefix,
			prefix_rows, prefix_len, C, hs, scale);
	}
	LAUNCH_CHECK();
}
