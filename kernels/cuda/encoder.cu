/* encoder.cu: token + position embedding, forward and backward.
 *
 *   forward:  out[b,t,:] = wte[tok[b,t],:] + wpe[t,:]   (a negative id adds no wte row)
 *   backward: dwte[tok,:] += sum of dout over the positions holding tok
 *             dwpe[t,:]   += sum_b dout[b,t,:]
 *
 * The dwte sum is deterministic without atomics: positions are bucketed by
 * token on the host (a stable radix sort, linear in B*T: each bucket lists
 * its positions in order), and one thread per (bucket, column) adds its
 * bucket's rows in that order. The host knows the token ids because they
 * came through upload, which keeps a copy (cuda_shadow_find); otherwise they
 * are read back, which waits for the stream once. The same bucketed sum is
 * the other families' embedding_backward (cuda_embedding_backward, used by
 * seq.cu's op table entries): dtable[ids[n],:] += dout[n,:]. */
#include "cuda_backend.h"

#include <stdlib.h>
#include <string.h>

#define ENC_THREADS 256

template <class T, int V>
__global__ void encoder_forward_kernel(T *out, const int32_t *tok, const T *wte, const T *wpe, int BT,
				       int T_, int C)
{
	size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * V;
	if (i >= (size_t)BT * C)
		return;
	int bt = (int)(i / C), c = (int)(i % C), t = bt % T_, id = tok[bt];
	float p[V], e[V];
	load_f<T, V>(p, wpe + (size_t)t * C + c);
	if (id >= 0) {
		load_f<T, V>(e, wte + (size_t)id * C + c);
UNROLL
		for (int k = 0; k < V; k++)
			p[k] += e[k];
	}
	store_f<T, V>(out + i, p);
}

/* One thread per (bucket, V columns): the bucket's rows of dout in position
 * order, then one read-modify-write of its dwte row. bk[3*j] = token,
 * bk[3*j+1] = first index into pos, bk[3*j+2] = count. */
template <class T, int V>
__global__ void encoder_dwte_kernel(T *dwte, const T *dout, const int32_t *pos, const int32_t *bk, int C)
{
	int c = (blockIdx.x * blockDim.x + threadIdx.x) * V;
	if (c >= C)
		return;
	const int32_t *b = bk + 3 * (size_t)blockIdx.y;
	float acc[V] = {0}, x[V];
	for (int j = b[1]; j < b[1] + b[2]; j++) {
		load_f<T, V>(x, dout + (size_t)pos[j] * C + c);
UNROLL
		for (int k = 0; k < V; k++)
			acc[k] += x[k];
	}
	T *w = dwte + (size_t)b[0] * C + c;
	load_f<T, V>(x, w);
UNROLL
	for (int k = 0; k < V; k++)
		x[k] += acc[k];
	store_f<T, V>(w, x);
}

template <class T, int V>
__global__ void encoder_dwpe_kernel(T *dwpe, const T *dout, int B, int T_, int C)
{
	size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * V;
	if (i >= (size_t)T_ * C)
		return;
	float acc[V] = {0}, x[V];
	for (int b = 0; b < B; b++) {
		load_f<T, V>(x, dout + (size_t)b * T_ * C + i);
UNROLL
		for (int k = 0; k < V; k++)
			acc[k] += x[k];
	}
	load_f<T, V>(x, dwpe + i);
UNROLL
	for (int k = 0; k < V; k++)
		x[k] += acc[k];
	store_f<T, V>(dwpe + i, x);
}

template <class T, int V>
static void encoder_forward_launch(cuda_backend *cb, void *out, const int32_t *tok, const void *wte,
				   const void *wpe, int B, int T_, int C)
{
	size_t n = (size_t)B * T_ * C / V;
	CUDA_LAUNCH(cdiv(n, ENC_THREADS), ENC_THREADS, 0, cb->stream, encoder_forward_kernel<T, V>)(
		(T *)out, tok, (const T *)wte, (const T *)wpe, B * T_, T_, C);
	LAUNCH_CHECK();
}

void cuda_encoder_forward(backend *be, void *out, const int32_t *tok, const void *wte, const void *wpe,
			  int B, int T, int C)
{
	NVTX_RANGE("encoder_forward");
	cuda_backend *cb = cuda_of(be);
	if (B <= 0 || T <= 0 || C <= 0)
		return;
	int vec = C % 8 == 0 && aligned16(out) && aligned16(wte) && aligned16(wpe);
	if (be->act == DT_BF16) {
		if (vec)
			encoder_forward_launch<__nv_bfloat16, 8>(cb, out, tok, wte, wpe, B, T, C);
		else
			encoder_forward_launch<__nv_bfloat16, 1>(cb, out, tok, wte, wpe, B, T, C);
	} else {
		if (vec && C % 4 == 0)
			encoder_forward_launch<float, 4>(cb, out, tok, wte, wpe, B, T, C);
		else
			encoder_forward_launch<float, 1>(cb, out, tok, wte, wpe, B, T, C);
	}
}

/* ---- backward ---- */

/* Sorts the positions of the non-negative ids by (id, position) into
 * cb->enc_stage as
 *   pos[N] | buckets[3 * nb] | keys[N] | keys2[N] (uint64) | hist[65536]
 * and returns the number of buckets; *npos gets the positions kept. A
 * stable least-significant-digit radix sort on 16-bit digits of the id (a
 * second pass only when some id is 65536 or more): O(N + 65536) per pass,
 * so the whole backward is linear in the batch's positions, and stable, so
 * each bucket lists its positions in increasing order. */
static int id_buckets(cuda_backend *cb, const int32_t *ids, int N, int *npos)
{
	size_t need = (size_t)N * (4 * sizeof(int32_t) + 2 * sizeof(uint64_t)) + 65536 * sizeof(int32_t);
	if (need > cb->enc_stage_cap) {
		if (cb->enc_stage) {
			CUDA_CHECK(cudaEventSynchronize(cb->enc_done));
			CUDA_CHECK(cudaFreeHost(cb->enc_stage));
			cb->enc_stage = NULL;
		}
		CUDA_CHECK(cudaMallocHost(&cb->enc_stage, need));
		cb->enc_stage_cap = need;
	} else {
		/* the previous backward's copy out of this buffer must be done */
		CUDA_CHECK(cudaEventSynchronize(cb->enc_done));
	}
	int32_t *pos = (int32_t *)cb->enc_stage, *bk = pos + N;
	uint64_t *key = (uint64_t *)(bk + 3 * (size_t)N), *tmp = key + N;
	int32_t *hist = (int32_t *)(tmp + N);
	int n = 0;
	uint32_t maxid = 0;
	for (int i = 0; i < N; i++)
		if (ids[i] >= 0) {
			key[n++] = ((uint64_t)(uint32_t)ids[i] << 32) | (uint32_t)i;
			maxid = (uint32_t)ids[i] > maxid ? (uint32_t)ids[i] : maxid;
		}
	for (int shift = 32; shift < 64 && (shift == 32 || (maxid >> 16)); shift += 16) {
		memset(hist, 0, 65536 * sizeof *hist);
		for (int i = 0; i < n; i++)
			hist[(key[i] >> shift) & 0xffff]++;
		for (int d = 0, at = 0; d < 65536; d++) {
			int c = hist[d];
			hist[d] = at;
			at += c;
		}
		for (int i = 0; i < n; i++)
			tmp[hist[(key[i] >> shift) & 0xffff]++] = key[i];
		uint64_t *t = key;
		key = tmp;
		tmp = t;
	}
	int nb = 0;
	for (int i = 0; i < n; i++) {
		int32_t t = (int32_t)(key[i] >> 32);
		pos[i] = (int32_t)(key[i] & 0xffffffffu);
		if (nb == 0 || bk[3 * (nb - 1)] != t) {
			bk[3 * nb] = t;
			bk[3 * nb + 1] = i;
			bk[3 * nb + 2] = 0;
			nb++;
		}
		bk[3 * (nb - 1) + 2]++;
	}
	*npos = n;
	return nb;
}

/* One thread per (bucket, V columns) for the table gradient, then (wpe given)
 * the position gradient. */
template <class T, int V>
static void table_backward_launch(cuda_backend *cb, void *dtable, void *dwpe, const void *dout,
				  const int32_t *pos, const int32_t *bk, int nb, int B, int T_, int C)
{
	/* a bucket's row is C/V threads wide: no more threads than that per block */
	unsigned tpb = (unsigned)(C / V < ENC_THREADS ? (C / V + 31) / 32 * 32 : ENC_THREADS);
	unsigned cx = cdiv((size_t)C / V, tpb);
	if (dtable && nb > 0) {
		for (int b0 = 0; b0 < nb; b0 += 65535) {	/* grid.y limit */
			int nbk = nb - b0 < 65535 ? nb - b0 : 65535;
			dim3 grid(cx, (unsigned)nbk);
			CUDA_LAUNCH(grid, tpb, 0, cb->stream, encoder_dwte_kernel<T, V>)(
				(T *)dtable, (const T *)dout, pos, bk + 3 * (size_t)b0, C);
			LAUNCH_CHECK();
		}
	}
	if (dwpe) {
		size_t n = (size_t)T_ * C / V;
		CUDA_LAUNCH(cdiv(n, ENC_THREADS), ENC_THREADS, 0, cb->stream, encoder_dwpe_kernel<T, V>)(
			(T *)dwpe, (const T *)dout, B, T_, C);
		LAUNCH_CHECK();
	}
}

/* dtable[ids[n],:] += dout[n,:] over n < B*T (ids >= 0), each row summed in
 * position order; dwpe[t,:] += sum_b dout[b,t,:] when dwpe is given. */
static void table_backward(backend *be, void *dtable, void *dwpe, const void *dout, const int32_t *ids,
			   int B, int T, int C)
{
	cuda_backend *cb = cuda_of(be);
	int N = B * T, nb = 0, npos = 0;
	if (B <= 0 || T <= 0 || C <= 0)
		return;
	int32_t *pos = NULL, *bk = NULL;
	if (dtable) {
		const int32_t *host = cuda_shadow_find(cb, ids, (size_t)N);
		int32_t *copy = NULL;
		if (!host) {
			copy = (int32_t *)malloc((size_t)N * sizeof(int32_t));
			if (!copy)
				cuda_die(__FILE__, __LINE__, "embedding backward: out of host memory");
			CUDA_CHECK(cudaMemcpyAsync(copy, ids, (size_t)N * sizeof(int32_t), cudaMemcpyDeviceToHost,
						   cb->stream));
			CUDA_CHECK(cudaStreamSynchronize(cb->stream));
			host = copy;
		}
		nb = id_buckets(cb, host, N, &npos);
		free(copy);
		/* device copy: pos[N] then the buckets */
		size_t bytes = ((size_t)N + 3 * (size_t)nb) * sizeof(int32_t);
		pos = (int32_t *)cuda_scratch(cb, SCR_ENC, cuda_encoder_scratch_bytes(N));
		bk = pos + N;
		CUDA_CHECK(cudaMemcpyAsync(pos, cb->enc_stage, bytes, cudaMemcpyHostToDevice, cb->stream));
		CUDA_CHECK(cudaEventRecord(cb->enc_done, cb->stream));
	}
	int vec = C % 8 == 0 && aligned16(dtable) && aligned16(dwpe) && aligned16(dout);
	if (be->act == DT_BF16) {
		if (vec)
			table_backward_launch<__nv_bfloat16, 8>(cb, dtable, dwpe, dout, pos, bk, nb, B, T, C);
		else
			table_backward_launch<__nv_bfloat16, 1>(cb, dtable, dwpe, dout, pos, bk, nb, B, T, C);
	} else {
		if (vec)
			table_backward_launch<float, 4>(cb, dtable, dwpe, dout, pos, bk, nb, B, T, C);
		else
			table_backward_launch<float, 1>(cb, dtable, dwpe, dout, pos, bk, nb, B, T, C);
	}
}

void cuda_encoder_backward(backend *be, void *dwte, void *dwpe, const void *dout, const int32_t *tok,
			   int B, int T, int C)
{
	NVTX_RANGE("encoder_backward");
	table_backward(be, dwte, dwpe, dout, tok, B, T, C);
}

void cuda_embedding_backward(backend *be, void *dtable, const void *dout, const int32_t *ids, int N, int C)
{
	NVTX_RANGE("embedding_backward");
	if (N > 0 && C > 0 && dtable)
		table_backward(be, dtable, NULL, dout, ids, 1, N, C);
}
