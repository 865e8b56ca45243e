/* attention.cu: multi-head scaled dot-product attention, fused (the
 * flash-attention algorithm): the [T, T] scores are never stored.
 *
 * forward, per (b, h), with q, k, v the head's [T, hs] slices of qkv:
 *   S = q k^T / sqrt(hs);  lse_i = logsumexp_{j <= i if causal} S_ij
 *   P = exp(S - lse), 0 where masked;  O = P v
 * computed a tile of query rows at a time: key/value tiles stream through
 * shared memory, the row max and sum are kept online (in fp32) and the
 * output is rescaled as the max grows, so O is written once. lse is saved.
 * backward recomputes P tile by tile from q, k and the saved lse:
 *   D_i = dO_i . O_i;  dP = dO v^T;  dS = P (dP - D) / sqrt(hs)
 *   dq = dS k;  dk = dS^T q;  dv = P^T dO;  then dqkv += (dq, dk, dv)
 * Every sum is taken in a fixed order (bit-identical from run to run, no
 * floating-point atomics), in one of two ways:
 *  - fused (the default): one kernel per key tile loops over the query
 *    tiles, computes P and dS once and does all 5 tile matmuls (S, dP, dV,
 *    dK, dQ). Its dQ part goes into an fp32 buffer in key-tile order: key
 *    tile j adds into query tile i's rows after key tile j - 1 did, behind a
 *    per-query-tile counter in global memory (ptx.cuh's flag_wait_geq /
 *    flag_release_add); a last pass adds the buffer into dqkv. Scratch: that
 *    buffer, fp32 [B, NH, T, hs].
 *  - split: two kernels, so that every gradient element has one writer: one
 *    owns a key tile and loops over the query tiles (dk, dv), the other owns
 *    a query tile and loops over the key tiles (dq). The price is
 *    recomputing S and dP in both: 7 tile matmuls per tile pair instead of 5.
 * cuda_attention_set_backward (attention.h; ANATOMY_ATTN_BWD=split|fused)
 * chooses; the SIMT path below is always split.
 *
 * Two implementations of the same algorithm:
 *  - bf16 with head size 32, 64 or 128 (the mixed-precision mode): tensor
 *    cores, mma.sync m16n8k16 bf16 with fp32 accumulation (ptx.cuh), tiles
 *    loaded with cp.async, fragments with ldmatrix. P and dS are rounded to
 *    bf16 for their matmuls, as every flash kernel does; the softmax
 *    statistics stay fp32.
 *  - everything else (fp32 verification mode, other head sizes, unaligned
 *    buffers): SIMT kernels in fp32 arithmetic, one warp per query row
 *    (forward, dq) or per key row (dk, dv), same online softmax, no [T, T]
 *    buffer either. Their fp32 results meet the fp32 tolerance (1e-5).
 *
 * Both read q, k, v straight from the [B, T, 3C] layout of the fused QKV
 * projection and write [B, T, C] (and += into [B, T, 3C]): no permutes. The
 * only scratch is D, fp32 [B, NH, T]. */
#include "attention.h"
#include "cuda_backend.h"
#include "ptx.cuh"

typedef __nv_bfloat16 bf16;

/* Full unrolling keeps the fragment arrays in registers on the GPU. The
 * emulated build leaves the loops rolled: unrolled, g++ with AddressSanitizer
 * takes many minutes over these kernels and the emulator gains nothing. */
#ifdef ANATOMY_EMU
#define FA_UNROLL
#else
#define FA_UNROLL _Pragma("unroll")
#endif

/* ---------------------------------------------------------------- scratch */

/* The backward variant: -1 not yet chosen (ANATOMY_ATTN_BWD decides), 0
 * fused, 1 split. */
static int g_att_split = -1;

extern "C" int cuda_attention_set_backward(const char *name)
{
	if (!name || !strcmp(name, "fused"))
		g_att_split = 0;
	else if (!strcmp(name, "split"))
		g_att_split = 1;
	else
		return -1;
	return 0;
}

static int att_split(void)
{
	if (g_att_split < 0) {
		const char *e = getenv("ANATOMY_ATTN_BWD");
		if (e && *e && cuda_attention_set_backward(e) != 0)
			cuda_die(__FILE__, __LINE__, "ANATOMY_ATTN_BWD=%s: expected fused or split", e);
		if (g_att_split < 0)
			g_att_split = 0;
	}
	return g_att_split;
}

/* The fused backward's dQ buffer, fp32 [B, NH, T, hs], and its counters, one
 * per (b, h, query tile of at least 32 rows), plus the block ticket. */
static size_t att_dq_bytes(int B, int T, int C) { return ((size_t)B * T * C * sizeof(float) + 255) & ~(size_t)255; }
static size_t att_sem_count(int B, int T, int NH) { return (size_t)B * NH * ((T + 31) / 32) + 1; }

size_t cuda_attention_scratch_bytes(size_t es, int B, int T, int C, int NH)
{
	size_t d = ((size_t)B * NH * T * sizeof(float) + 255) & ~(size_t)255;	/* D */
	int split = att_split();	/* here, at the plan: a bad ANATOMY_ATTN_BWD stops the run before it starts */
	if (es == 2 && !split)	/* bf16: the flash kernels' fused backward */
		d += att_dq_bytes(B, T, C) + att_sem_count(B, T, NH) * sizeof(int);
	return d;
}

/* D[bh, t] = dO[b, t, h, :] . O[b, t, h, :] in fp32: one warp per row. */
template <class T>
__global__ void att_rowdot_kernel(float *D, const T *dout, const T *out, int B, int T_, int C, int NH)
{
	int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
	if (row >= B * NH * T_)
		return;
	int bh = row / T_, t = row % T_, b = bh / NH, h = bh % NH, hs = C / NH;
	size_t o = ((size_t)b * T_ + t) * C + (size_t)h * hs;
	float d = 0.0f;
	for (int k = lane; k < hs; k += 32)
		d += to_f(dout[o + k]) * to_f(out[o + k]);
	d = warp_sum(d);
	if (lane == 0)
		D[row] = d;
}

/* ================================================ tensor-core (bf16) path */

#define FA_THREADS 128	/* 4 warps, 16 rows of the block's tile each */
#define FA_ROWS 64	/* rows a block owns: queries (forward, dq) or keys (dk, dv) */

/* Shared-memory rows are padded by 8 elements (16 bytes): the 8 rows an
 * ldmatrix reads then fall in different bank groups. */
template <int HS> struct fa_cfg {
	static const int lds = HS + 8;
	/* tile of the inner loop: the streamed rows (keys in the forward and
	 * dq, queries in dk/dv); 32 at hs 128 keeps the backward's
	 * accumulators in registers */
	static const int bn_fwd = 64;
	static const int bn_bwd = HS == 128 ? 32 : 64;
	/* the fused backward's dS^T tile: 64 keys x bn_bwd queries, padded */
	static const int ld_ds = bn_bwd + 8;
	static size_t fwd_smem() { return (size_t)(FA_ROWS + 2 * bn_fwd) * lds * sizeof(bf16); }
	/* backward: the block's own two tiles, the two streamed tiles twice
	 * (double-buffered), and the query tiles' lse and D twice (dk/dv) */
	static size_t bwd_smem() { return (size_t)(2 * FA_ROWS + 4 * bn_bwd) * lds * sizeof(bf16) + 4 * bn_bwd * sizeof(float); }
	/* fused: the same, the dS^T tile and the block's ticket */
	static size_t fused_smem() { return bwd_smem() + (size_t)FA_ROWS * ld_ds * sizeof(bf16) + 16; }
};

/* rows x HS bf16 from global (row stride ld elements, rows >= nvalid
 * zero-filled) into shared memory (row stride HS + 8), by cp.async, all
 * FA_THREADS threads taking part. The caller commits and waits. */
template <int HS, int ROWS>
static __device__ __forceinline__ void fa_load_tile(bf16 *dst, const bf16 *src, size_t ld, int nvalid)
{
	const int chunks = HS / 8;	/* 16-byte pieces of a row */
	for (int c = threadIdx.x; c < ROWS * chunks; c += FA_THREADS) {
		int r = c / chunks, k = c % chunks, ok = r < nvalid;
		/* a row past the end reads nothing, from a valid address */
		cp_async_16_zfill(dst + r * fa_cfg<HS>::lds + k * 8, src + (ok ? (size_t)r * ld : 0) + k * 8,
				  ok ? 16 : 0);
	}
}

/* A fragments (16 x 16 each) of the 16 x K tile at shared rows [row0,
 * row0 + 16), columns [0, K): a[kk] covers columns 16kk.. 16kk+15. */
template <int K>
static __device__ __forceinline__ void fa_load_a(uint32_t (&a)[K / 16][4], const bf16 *s, int lds, int row0)
{
	int lane = threadIdx.x & 31;
	const bf16 *p = s + (row0 + (lane & 15)) * lds + (lane >> 4) * 8;
	FA_UNROLL
	for (int kk = 0; kk < K / 16; kk++)
		ldmatrix_x4(a[kk], p + kk * 16);
}

/* A fragments of the 16 x K tile A whose transpose is stored: A[m][k] =
 * s[k * ld + m0 + m], k in [0, K). .trans ldmatrix on the stored rows (k)
 * hands each lane A's (row g, columns 2t, 2t+1) as the plain form does. */
template <int K>
static __device__ __forceinline__ void fa_load_a_trans(uint32_t (&a)[K / 16][4], const bf16 *s, int ld, int m0)
{
	int lane = threadIdx.x & 31;
	/* matrices: (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15) */
	const bf16 *p = s + ((lane >> 4) * 8 + (lane & 7)) * ld + m0 + ((lane >> 3) & 1) * 8;
	FA_UNROLL
	for (int kk = 0; kk < K / 16; kk++)
		ldmatrix_x4_trans(a[kk], p + kk * 16 * ld);
}

/* acc[N/8] (16 x N) += A (16 x K, fragments) * Bm^T, where Bm is N x K
 * row-major in shared memory from row brow0: B[k][n] = Bm[n][k]. Plain
 * ldmatrix: lane l of an 8x8 matrix gets row l/4, which is column n = l/4 of
 * B, as the mma's B fragment wants. */
template <int K, int N>
static __device__ __forceinline__ void fa_mma_abt(float (&acc)[N / 8][4], const uint32_t (&a)[K / 16][4],
						  const bf16 *s, int lds, int brow0)
{
	int lane = threadIdx.x & 31;
	/* matrices: (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15) */
	const bf16 *p = s + (brow0 + ((lane >> 4) << 3) + (lane & 7)) * lds + ((lane >> 3) & 1) * 8;
	FA_UNROLL
	for (int kk = 0; kk < K / 16; kk++) {
		FA_UNROLL
		for (int np = 0; np < N / 16; np++) {
			uint32_t b[4];
			ldmatrix_x4(b, p + np * 16 * lds + kk * 16);
			mma_m16n8k16_bf16(acc[2 * np], a[kk], b, acc[2 * np]);
			mma_m16n8k16_bf16(acc[2 * np + 1], a[kk], b + 2, acc[2 * np + 1]);
		}
	}
}

/* acc[N/8] (16 x N) += A (16 x K, fragments) * Bm, where Bm is K x N
 * row-major in shared memory from row brow0 (K rows, N columns). .trans
 * ldmatrix turns its rows (k) into the fragment's columns. */
template <int K, int N>
static __device__ __forceinline__ void fa_mma_ab(float (&acc)[N / 8][4], const uint32_t (&a)[K / 16][4],
						 const bf16 *s, int lds, int brow0)
{
	int lane = threadIdx.x & 31;
	/* matrices: (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15) */
	const bf16 *p = s + (brow0 + ((lane >> 3) & 1) * 8 + (lane & 7)) * lds + (lane >> 4) * 8;
	FA_UNROLL
	for (int kk = 0; kk < K / 16; kk++) {
		FA_UNROLL
		for (int np = 0; np < N / 16; np++) {
			uint32_t b[4];
			ldmatrix_x4_trans(b, p + kk * 16 * lds + np * 16);
			mma_m16n8k16_bf16(acc[2 * np], a[kk], b, acc[2 * np]);
			mma_m16n8k16_bf16(acc[2 * np + 1], a[kk], b + 2, acc[2 * np + 1]);
		}
	}
}

/* An accumulator tile (16 x N, fp32) as bf16 A fragments of a following
 * mma (its columns become the k dimension): the C layout of n-tiles 2kk and
 * 2kk+1 is exactly the A layout of k-step kk. */
template <int N>
static __device__ __forceinline__ void fa_acc_to_a(uint32_t (&a)[N / 16][4], const float (&c)[N / 8][4])
{
	FA_UNROLL
	for (int kk = 0; kk < N / 16; kk++) {
		a[kk][0] = pack_bf16x2(__float2bfloat16(c[2 * kk][0]), __float2bfloat16(c[2 * kk][1]));
		a[kk][1] = pack_bf16x2(__float2bfloat16(c[2 * kk][2]), __float2bfloat16(c[2 * kk][3]));
		a[kk][2] = pack_bf16x2(__float2bfloat16(c[2 * kk + 1][0]), __float2bfloat16(c[2 * kk + 1][1]));
		a[kk][3] = pack_bf16x2(__float2bfloat16(c[2 * kk + 1][2]), __float2bfloat16(c[2 * kk + 1][3]));
	}
}

template <int N> static __device__ __forceinline__ void fa_zero(float (&c)[N / 8][4])
{
	FA_UNROLL
	for (int i = 0; i < N / 8; i++)
		c[i][0] = c[i][1] = c[i][2] = c[i][3] = 0.0f;
}

/* dst[row, 2 columns] (bf16) += scale * (x, y), or = when !ADD. */
template <bool ADD>
static __device__ __forceinline__ void fa_store2(bf16 *dst, float x, float y)
{
	if (ADD) {
		__nv_bfloat162 o = *(const __nv_bfloat162 *)dst;
		x += __low2float(o);
		y += __high2float(o);
	}
	*(uint32_t *)dst = pack_bf16x2(__float2bfloat16(x), __float2bfloat16(y));
}

/* Writes (or adds) the warp's 16 x HS accumulator, times mul, to rows
 * [row0, row0 + 16) of a [.., ld] bf16 matrix at base, rows < T only. */
template <int HS, bool ADD>
static __device__ __forceinline__ void fa_write_rows(bf16 *base, size_t ld, int row0, int T, const float (&c)[HS / 8][4],
						     float mul0, float mul1)
{
	int lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
	int r0 = row0 + g, r1 = r0 + 8;
	FA_UNROLL
	for (int nt = 0; nt < HS / 8; nt++) {
		int col = nt * 8 + 2 * t4;
		if (r0 < T)
			fa_store2<ADD>(base + (size_t)r0 * ld + col, c[nt][0] * mul0, c[nt][1] * mul0);
		if (r1 < T)
			fa_store2<ADD>(base + (size_t)r1 * ld + col, c[nt][2] * mul1, c[nt][3] * mul1);
	}
}

/* Forward. Block: 64 query rows of one (b, h), 4 warps x 16 rows; key and
 * value tiles of 64 rows stream through shared memory, the next K tile
 * loading while P V is computed and the V tile while Q K^T is. Scores are
 * kept in log2 units (scaled by log2(e) / sqrt(hs)) so exp is one exp2. */
template <int HS>
__global__ void __launch_bounds__(FA_THREADS) flash_fwd_kernel(bf16 *out, float *lse, const bf16 *qkv, int T, int C,
							     int NH, int causal, float scale_log2)
{
	typedef fa_cfg<HS> cfg;
	const int BN = cfg::bn_fwd, lds = cfg::lds;
	DYNAMIC_SHARED(bf16, smem);
	bf16 *sQ = smem, *sK = sQ + FA_ROWS * lds, *sV = sK + BN * lds;
	int m0 = blockIdx.x * FA_ROWS, bh = blockIdx.y, b = bh / NH, h = bh % NH;
	int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
	size_t ld = (size_t)3 * C;
	const bf16 *gq = qkv + (size_t)b * T * ld + (size_t)h * HS, *gk = gq + C, *gv = gq + 2 * C;
	int nkv = causal ? min(T, m0 + FA_ROWS) : T, ntiles = (nkv + BN - 1) / BN;
	int row0 = m0 + warp * 16 + g, row1 = row0 + 8;	/* this lane's two rows */

	fa_load_tile<HS, FA_ROWS>(sQ, gq + (size_t)m0 * ld, ld, T - m0);
	fa_load_tile<HS, BN>(sK, gk, ld, T);
	cp_async_commit();

	uint32_t qa[HS / 16][4];
	float o[HS / 8][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
	fa_zero<HS>(o);
	for (int j = 0; j < ntiles; j++) {
		int n0 = j * BN;
		cp_async_wait<0>();
		__syncthreads();	/* K_j in; every warp is done with V_{j-1} */
		fa_load_tile<HS, BN>(sV, gv + (size_t)n0 * ld, ld, T - n0);
		cp_async_commit();
		if (j == 0)
			fa_load_a<HS>(qa, sQ, lds, warp * 16);

		float s[BN / 8][4];
		fa_zero<BN>(s);
		fa_mma_abt<HS, BN>(s, qa, sK, lds, 0);

		/* mask only the tiles that cross the end or the diagonal */
		int need = n0 + BN > T || (causal && n0 + BN - 1 > m0 + warp * 16);
		float mx[2] = {-INFINITY, -INFINITY};
		FA_UNROLL
		for (int nt = 0; nt < BN / 8; nt++) {
			FA_UNROLL
			for (int e = 0; e < 4; e++) {
				float x = s[nt][e] * scale_log2;
				if (need) {
					int col = n0 + nt * 8 + 2 * t4 + (e & 1), row = e < 2 ? row0 : row1;
					if (col >= T || (causal && col > row))
						x = -INFINITY;
				}
				s[nt][e] = x;
				mx[e >> 1] = fmaxf(mx[e >> 1], x);
			}
		}
		float sub[2], alpha[2];
		FA_UNROLL
		for (int r = 0; r < 2; r++) {	/* the 4 lanes of a quad share a row */
			mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
			mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
			float mn = fmaxf(m[r], mx[r]);
			sub[r] = mn == -INFINITY ? 0.0f : mn;	/* a row with nothing unmasked yet */
			alpha[r] = exp2f(m[r] - sub[r]);
			m[r] = mn;
			l[r] *= alpha[r];
		}
		FA_UNROLL
		for (int nt = 0; nt < BN / 8; nt++) {
			FA_UNROLL
			for (int e = 0; e < 4; e++) {
				float p = exp2f(s[nt][e] - sub[e >> 1]);
				s[nt][e] = p;
				l[e >> 1] += p;	/* this lane's part; the quad sums at the end */
			}
		}
		FA_UNROLL
		for (int nt = 0; nt < HS / 8; nt++) {
			o[nt][0] *= alpha[0], o[nt][1] *= alpha[0];
			o[nt][2] *= alpha[1], o[nt][3] *= alpha[1];
		}
		uint32_t pa[BN / 16][4];
		fa_acc_to_a<BN>(pa, s);

		cp_async_wait<0>();
		__syncthreads();	/* V_j in; every warp is done with K_j */
		if (j + 1 < ntiles) {
			fa_load_tile<HS, BN>(sK, gk + (size_t)(n0 + BN) * ld, ld, T - n0 - BN);
			cp_async_commit();
		}
		fa_mma_ab<BN, HS>(o, pa, sV, lds, 0);
	}

	float inv[2];
	FA_UNROLL
	for (int r = 0; r < 2; r++) {
		l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
		l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
		inv[r] = 1.0f / l[r];
	}
	if (t4 == 0) {	/* natural log: lse = ln 2 * (m + log2 l) */
		if (row0 < T)
			lse[(size_t)bh * T + row0] = 0.69314718056f * (m[0] + log2f(l[0]));
		if (row1 < T)
			lse[(size_t)bh * T + row1] = 0.69314718056f * (m[1] + log2f(l[1]));
	}
	fa_write_rows<HS, false>(out + (size_t)b * T * C + (size_t)h * HS, C, m0 + warp * 16, T, o, inv[0], inv[1]);
}

/* Backward, dk and dv. Block: 64 key rows of one (b, h), 4 warps x 16; the
 * query tiles (BM rows of q, dO, lse, D) stream through shared memory, two
 * buffers deep: the next tile's cp.async is issued right after the barrier
 * that makes the current one visible, so its load overlaps this tile's seven
 * matmuls instead of waiting at the top of the next iteration (one barrier
 * per tile: the barrier also tells that every warp is done with the buffer
 * the load overwrites). In transposed form, per warp: S^T = K Q^T,
 * P^T = exp(S^T - lse), dP^T = V dO^T, dS^T = P^T (dP^T - D), dv += P^T dO,
 * dk += dS^T Q. */
template <int HS>
__global__ void __launch_bounds__(FA_THREADS) flash_bwd_dkdv_kernel(bf16 *dqkv, const bf16 *dout, const bf16 *qkv,
								  const float *lse, const float *Dv, int T, int C,
								  int NH, int causal, float scale_log2, float scale)
{
	typedef fa_cfg<HS> cfg;
	const int BM = cfg::bn_bwd, lds = cfg::lds;
	DYNAMIC_SHARED(bf16, smem);
	/* buffer j of the streamed tiles: sQ0 + j * 2 * BM * lds (q) and + BM * lds
	 * (dO); their lse and D: sL0 + j * 2 * BM and + BM */
	bf16 *sK = smem, *sV = sK + FA_ROWS * lds, *sQ0 = sV + FA_ROWS * lds;
	float *sL0 = (float *)(sQ0 + 4 * BM * lds);
	int n0 = blockIdx.x * FA_ROWS, bh = blockIdx.y, b = bh / NH, h = bh % NH;
	int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
	size_t ld = (size_t)3 * C;
	const bf16 *gq = qkv + (size_t)b * T * ld + (size_t)h * HS, *gk = gq + C, *gv = gq + 2 * C;
	const bf16 *gdo = dout + (size_t)b * T * C + (size_t)h * HS;
	const float *gl = lse + (size_t)bh * T, *gd = Dv + (size_t)bh * T;
	int key0 = n0 + warp * 16 + g, key1 = key0 + 8;	/* this lane's two key rows */
	/* causal: queries before the block's first key see none of its keys */
	int i_start = causal ? n0 / BM * BM : 0;

	fa_load_tile<HS, FA_ROWS>(sK, gk + (size_t)n0 * ld, ld, T - n0);
	fa_load_tile<HS, FA_ROWS>(sV, gv + (size_t)n0 * ld, ld, T - n0);
	fa_load_tile<HS, BM>(sQ0, gq + (size_t)i_start * ld, ld, T - i_start);
	fa_load_tile<HS, BM>(sQ0 + BM * lds, gdo + (size_t)i_start * C, C, T - i_start);
	cp_async_commit();
	for (int r = threadIdx.x; r < BM; r += FA_THREADS) {	/* lse in log2 units; +inf: p = 0 */
		int i = i_start + r;
		sL0[r] = i < T ? gl[i] * 1.44269504089f : INFINITY;
		sL0[BM + r] = i < T ? gd[i] : 0.0f;
	}

	float dk[HS / 8][4], dv[HS / 8][4];
	fa_zero<HS>(dk);
	fa_zero<HS>(dv);
	for (int i0 = i_start, buf = 0; i0 < T; i0 += BM, buf ^= 1) {
		cp_async_wait<0>();
		__syncthreads();	/* this query tile is in; every warp is done with the other buffer */
		const bf16 *sQ = sQ0 + buf * 2 * BM * lds, *sO = sQ + BM * lds;
		const float *sL = sL0 + buf * 2 * BM, *sD = sL + BM;
		int i1 = i0 + BM;
		if (i1 < T) {	/* the next query tile into the other buffer, while this one is used */
			bf16 *nQ = sQ0 + (buf ^ 1) * 2 * BM * lds;
			float *nL = sL0 + (buf ^ 1) * 2 * BM;
			fa_load_tile<HS, BM>(nQ, gq + (size_t)i1 * ld, ld, T - i1);
			fa_load_tile<HS, BM>(nQ + BM * lds, gdo + (size_t)i1 * C, C, T - i1);
			cp_async_commit();
			for (int r = threadIdx.x; r < BM; r += FA_THREADS) {
				int i = i1 + r;
				nL[r] = i < T ? gl[i] * 1.44269504089f : INFINITY;
				nL[BM + r] = i < T ? gd[i] : 0.0f;
			}
		}
		uint32_t a[HS / 16][4];
		float st[BM / 8][4], dpt[BM / 8][4];
		fa_load_a<HS>(a, sK, lds, warp * 16);
		fa_zero<BM>(st);
		fa_mma_abt<HS, BM>(st, a, sQ, lds, 0);
		fa_load_a<HS>(a, sV, lds, warp * 16);
		fa_zero<BM>(dpt);
		fa_mma_abt<HS, BM>(dpt, a, sO, lds, 0);

		/* keys past the end (their rows are never written, but keep them
		 * finite) and causal queries before the key */
		int need = n0 + FA_ROWS > T || (causal && i0 < n0 + warp * 16 + 15);
		FA_UNROLL
		for (int nt = 0; nt < BM / 8; nt++) {
			FA_UNROLL
			for (int e = 0; e < 4; e++) {
				int c = nt * 8 + 2 * t4 + (e & 1), key = e < 2 ? key0 : key1;
				float p = exp2f(st[nt][e] * scale_log2 - sL[c]);
				if (need && (key >= T || (causal && i0 + c < key)))
					p = 0.0f;
				st[nt][e] = p;
				dpt[nt][e] = p * (dpt[nt][e] - sD[c]);
			}
		}
		uint32_t pa[BM / 16][4], da[BM / 16][4];
		fa_acc_to_a<BM>(pa, st);
		fa_acc_to_a<BM>(da, dpt);
		fa_mma_ab<BM, HS>(dv, pa, sO, lds, 0);
		fa_mma_ab<BM, HS>(dk, da, sQ, lds, 0);
	}
	bf16 *base = dqkv + (size_t)b * T * ld + (size_t)h * HS;
	fa_write_rows<HS, true>(base + C, ld, n0 + warp * 16, T, dk, scale, scale);
	fa_write_rows<HS, true>(base + 2 * C, ld, n0 + warp * 16, T, dv, 1.0f, 1.0f);
}

/* Backward, fused: dk, dv and dq with 5 tile matmuls per tile pair. As the
 * dk/dv kernel (64 key rows per block, query tiles of BM rows streamed
 * through two buffers), plus, per query tile: dS^T goes to shared memory
 * (the bf16 values dk uses), and the block computes its share of that query
 * tile's dQ, dS K_j (warp (wm, wn) of WM x WN: query rows 16 wm.., columns
 * DN wn..), which it adds into dqacc (fp32 [bh, T, HS]) in key-tile order:
 * key tile j waits until the tile's counter says the j key tiles before it
 * have added theirs (key tile 0 stores), adds, and releases the counter. Key
 * tiles 0 .. j all touch the query tiles key tile j touches (causal: every
 * tile from its diagonal on), so the counter is the number of contributions
 * so far and the sum order is the same in every run.
 *
 * Hangs are impossible on a GPU: a block's (key tile, head) comes from a
 * ticket it takes when it starts (atomicAdd), key tiles of one head in
 * increasing order, so it only waits on blocks that took smaller tickets,
 * i.e. started before it; the unfinished block with the smallest ticket waits
 * on nothing unfinished and runs on (CUDA keeps started blocks running), and
 * so on (ptx.cuh, "ordering between blocks"). */
template <int HS>
__global__ void __launch_bounds__(FA_THREADS) flash_bwd_kernel(bf16 *dqkv, float *dqacc, int *sem, int *ticket,
							     const bf16 *dout, const bf16 *qkv, const float *lse,
							     const float *Dv, int T, int C, int NH, int causal,
							     float scale_log2, float scale)
{
	typedef fa_cfg<HS> cfg;
	const int BM = cfg::bn_bwd, lds = cfg::lds, ldd = cfg::ld_ds;
	const int WM = BM / 16, WN = 4 / WM, DN = HS / WN;	/* the dQ tile's warp grid */
	DYNAMIC_SHARED(bf16, smem);
	bf16 *sK = smem, *sV = sK + FA_ROWS * lds, *sQ0 = sV + FA_ROWS * lds;
	float *sL0 = (float *)(sQ0 + 4 * BM * lds);
	bf16 *sdS = (bf16 *)(sL0 + 4 * BM);	/* dS^T: [64 keys][BM queries] */
	int *sTicket = (int *)(sdS + FA_ROWS * ldd);
	if (threadIdx.x == 0)
		*sTicket = atomicAdd(ticket, 1);
	__syncthreads();
	int nkb = (T + FA_ROWS - 1) / FA_ROWS, nqt = (T + BM - 1) / BM;
	int kb = *sTicket % nkb, bh = *sTicket / nkb;
	int n0 = kb * FA_ROWS, b = bh / NH, h = bh % NH;
	int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
	int wm = warp % WM, wn = warp / WM;
	size_t ld = (size_t)3 * C;
	const bf16 *gq = qkv + (size_t)b * T * ld + (size_t)h * HS, *gk = gq + C, *gv = gq + 2 * C;
	const bf16 *gdo = dout + (size_t)b * T * C + (size_t)h * HS;
	const float *gl = lse + (size_t)bh * T, *gd = Dv + (size_t)bh * T;
	int key0 = n0 + warp * 16 + g, key1 = key0 + 8;
	int i_start = causal ? n0 / BM * BM : 0;

	fa_load_tile<HS, FA_ROWS>(sK, gk + (size_t)n0 * ld, ld, T - n0);
	fa_load_tile<HS, FA_ROWS>(sV, gv + (size_t)n0 * ld, ld, T - n0);
	fa_load_tile<HS, BM>(sQ0, gq + (size_t)i_start * ld, ld, T - i_start);
	fa_load_tile<HS, BM>(sQ0 + BM * lds, gdo + (size_t)i_start * C, C, T - i_start);
	cp_async_commit();
	for (int r = threadIdx.x; r < BM; r += FA_THREADS) {
		int i = i_start + r;
		sL0[r] = i < T ? gl[i] * 1.44269504089f : INFINITY;
		sL0[BM + r] = i < T ? gd[i] : 0.0f;
	}

	float dk[HS / 8][4], dv[HS / 8][4];
	fa_zero<HS>(dk);
	fa_zero<HS>(dv);
	for (int i0 = i_start, buf = 0; i0 < T; i0 += BM, buf ^= 1) {
		cp_async_wait<0>();
		__syncthreads();	/* this query tile is in; every warp is done with the other buffer */
		const bf16 *sQ = sQ0 + buf * 2 * BM * lds, *sO = sQ + BM * lds;
		const float *sL = sL0 + buf * 2 * BM, *sD = sL + BM;
		int i1 = i0 + BM;
		if (i1 < T) {
			bf16 *nQ = sQ0 + (buf ^ 1) * 2 * BM * lds;
			float *nL = sL0 + (buf ^ 1) * 2 * BM;
			fa_load_tile<HS, BM>(nQ, gq + (size_t)i1 * ld, ld, T - i1);
			fa_load_tile<HS, BM>(nQ + BM * lds, gdo + (size_t)i1 * C, C, T - i1);
			cp_async_commit();
			for (int r = threadIdx.x; r < BM; r += FA_THREADS) {
				int i = i1 + r;
				nL[r] = i < T ? gl[i] * 1.44269504089f : INFINITY;
				nL[BM + r] = i < T ? gd[i] : 0.0f;
			}
		}
		uint32_t a[HS / 16][4];
		float st[BM / 8][4], dpt[BM / 8][4];
		fa_load_a<HS>(a, sK, lds, warp * 16);
		fa_zero<BM>(st);
		fa_mma_abt<HS, BM>(st, a, sQ, lds, 0);
		fa_load_a<HS>(a, sV, lds, warp * 16);
		fa_zero<BM>(dpt);
		fa_mma_abt<HS, BM>(dpt, a, sO, lds, 0);

		int need = n0 + FA_ROWS > T || (causal && i0 < n0 + warp * 16 + 15);
		FA_UNROLL
		for (int nt = 0; nt < BM / 8; nt++) {
			FA_UNROLL
			for (int e = 0; e < 4; e++) {
				int c = nt * 8 + 2 * t4 + (e & 1), key = e < 2 ? key0 : key1;
				float p = exp2f(st[nt][e] * scale_log2 - sL[c]);
				if (need && (key >= T || (causal && i0 + c < key)))
					p = 0.0f;
				st[nt][e] = p;
				dpt[nt][e] = p * (dpt[nt][e] - sD[c]);
			}
		}
		uint32_t pa[BM / 16][4], da[BM / 16][4];
		fa_acc_to_a<BM>(pa, st);
		fa_acc_to_a<BM>(da, dpt);
		/* the warp's 16 rows of dS^T, as rounded for dk: n-tile 2kk + x of
		 * the accumulator is da[kk][2x] (row g) and da[kk][2x + 1] (g + 8) */
		bf16 *w0 = sdS + (warp * 16 + g) * ldd + 2 * t4;
		FA_UNROLL
		for (int nt = 0; nt < BM / 8; nt++) {
			*(uint32_t *)(w0 + nt * 8) = da[nt >> 1][2 * (nt & 1)];
			*(uint32_t *)(w0 + 8 * ldd + nt * 8) = da[nt >> 1][2 * (nt & 1) + 1];
		}
		fa_mma_ab<BM, HS>(dv, pa, sO, lds, 0);
		fa_mma_ab<BM, HS>(dk, da, sQ, lds, 0);
		__syncthreads();	/* dS^T complete */

		/* dQ of the tile, this key tile's part: dS (BM x 64) K_j (64 x HS) */
		uint32_t sa[FA_ROWS / 16][4];
		float dq[DN / 8][4];
		fa_load_a_trans<FA_ROWS>(sa, sdS, ldd, wm * 16);
		fa_zero<DN>(dq);
		fa_mma_ab<FA_ROWS, DN>(dq, sa, sK + wn * DN, lds, 0);
		int *flag = sem + (size_t)bh * nqt + i0 / BM;
		if (threadIdx.x == 0)
			flag_wait_geq(flag, kb);	/* key tiles 0 .. kb - 1 have added theirs */
		__syncthreads();
		int r0 = i0 + wm * 16 + g, r1 = r0 + 8;
		float *q0 = dqacc + ((size_t)bh * T + r0) * HS + wn * DN + 2 * t4, *q1 = q0 + 8 * HS;
		FA_UNROLL
		for (int nt = 0; nt < DN / 8; nt++) {
			float2 x0 = make_float2(dq[nt][0], dq[nt][1]), x1 = make_float2(dq[nt][2], dq[nt][3]);
			if (kb) {	/* key tile 0 stores: no zeroing pass */
				if (r0 < T) {
					float2 o = *(float2 *)(q0 + nt * 8);
					x0.x += o.x, x0.y += o.y;
				}
				if (r1 < T) {
					float2 o = *(float2 *)(q1 + nt * 8);
					x1.x += o.x, x1.y += o.y;
				}
			}
			if (r0 < T)
				*(float2 *)(q0 + nt * 8) = x0;
			if (r1 < T)
				*(float2 *)(q1 + nt * 8) = x1;
		}
		__syncthreads();	/* every thread's adds precede the release */
		if (threadIdx.x == 0)
			flag_release_add(flag, 1);
	}
	bf16 *base = dqkv + (size_t)b * T * ld + (size_t)h * HS;
	fa_write_rows<HS, true>(base + C, ld, n0 + warp * 16, T, dk, scale, scale);
	fa_write_rows<HS, true>(base + 2 * C, ld, n0 + warp * 16, T, dv, 1.0f, 1.0f);
}

/* dqkv's q part += scale * dqacc (the fused backward's fp32 dQ, [bh, T, HS]),
 * two columns a thread. */
template <int HS>
__global__ void att_dq_add_kernel(bf16 *dqkv, const float *dqacc, int B, int T, int C, int NH, float scale)
{
	size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 2, n = (size_t)B * T * C;
	if (i >= n)
		return;
	size_t bt = i / C;
	int c = (int)(i % C), h = c / HS, d = c % HS, b = (int)(bt / T), t = (int)(bt % T);
	float2 x = *(const float2 *)(dqacc + (((size_t)b * NH + h) * T + t) * HS + d);
	bf16 *o = dqkv + bt * 3 * C + c;
	fa_store2<true>(o, x.x * scale, x.y * scale);
}

/* Backward, dq. Block: 64 query rows of one (b, h), 4 warps x 16; key and
 * value tiles of BN rows stream through shared memory, two buffers deep as in
 * dk/dv. Per warp: S = Q K^T, P = exp(S - lse), dP = dO V^T, dS = P (dP - D),
 * dq += dS K. */
template <int HS>
__global__ void __launch_bounds__(FA_THREADS) flash_bwd_dq_kernel(bf16 *dqkv, const bf16 *dout, const bf16 *qkv,
								const float *lse, const float *Dv, int T, int C,
								int NH, int causal, float scale_log2, float scale)
{
	typedef fa_cfg<HS> cfg;
	const int BN = cfg::bn_bwd, lds = cfg::lds;
	DYNAMIC_SHARED(bf16, smem);
	/* buffer j of the streamed tiles: sK0 + j * 2 * BN * lds (k) and + BN * lds (v) */
	bf16 *sQ = smem, *sO = sQ + FA_ROWS * lds, *sK0 = sO + FA_ROWS * lds;
	int m0 = blockIdx.x * FA_ROWS, bh = blockIdx.y, b = bh / NH, h = bh % NH;
	int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
	size_t ld = (size_t)3 * C;
	const bf16 *gq = qkv + (size_t)b * T * ld + (size_t)h * HS, *gk = gq + C, *gv = gq + 2 * C;
	const bf16 *gdo = dout + (size_t)b * T * C + (size_t)h * HS;
	int row0 = m0 + warp * 16 + g, row1 = row0 + 8;
	int nkv = causal ? min(T, m0 + FA_ROWS) : T;
	/* this lane's rows' lse (log2 units; +inf past the end: p = 0) and D */
	float L[2], D[2];
	L[0] = row0 < T ? lse[(size_t)bh * T + row0] * 1.44269504089f : INFINITY;
	L[1] = row1 < T ? lse[(size_t)bh * T + row1] * 1.44269504089f : INFINITY;
	D[0] = row0 < T ? Dv[(size_t)bh * T + row0] : 0.0f;
	D[1] = row1 < T ? Dv[(size_t)bh * T + row1] : 0.0f;

	fa_load_tile<HS, FA_ROWS>(sQ, gq + (size_t)m0 * ld, ld, T - m0);
	fa_load_tile<HS, FA_ROWS>(sO, gdo + (size_t)m0 * C, C, T - m0);
	fa_load_tile<HS, BN>(sK0, gk, ld, T);
	fa_load_tile<HS, BN>(sK0 + BN * lds, gv, ld, T);
	cp_async_commit();

	float dq[HS / 8][4];
	fa_zero<HS>(dq);
	for (int n0 = 0, buf = 0; n0 < nkv; n0 += BN, buf ^= 1) {
		cp_async_wait<0>();
		__syncthreads();	/* this key tile is in; every warp is done with the other buffer */
		const bf16 *sK = sK0 + buf * 2 * BN * lds, *sV = sK + BN * lds;
		int n1 = n0 + BN;
		if (n1 < nkv) {	/* the next key tile into the other buffer, while this one is used */
			bf16 *nK = sK0 + (buf ^ 1) * 2 * BN * lds;
			fa_load_tile<HS, BN>(nK, gk + (size_t)n1 * ld, ld, T - n1);
			fa_load_tile<HS, BN>(nK + BN * lds, gv + (size_t)n1 * ld, ld, T - n1);
			cp_async_commit();
		}
		uint32_t a[HS / 16][4];
		float s[BN / 8][4], dp[BN / 8][4];
		fa_load_a<HS>(a, sQ, lds, warp * 16);
		fa_zero<BN>(s);
		fa_mma_abt<HS, BN>(s, a, sK, lds, 0);
		fa_load_a<HS>(a, sO, lds, warp * 16);
		fa_zero<BN>(dp);
		fa_mma_abt<HS, BN>(dp, a, sV, lds, 0);

		int need = n0 + BN > T || (causal && n0 + BN - 1 > m0 + warp * 16);
		FA_UNROLL
		for (int nt = 0; nt < BN / 8; nt++) {
			FA_UNROLL
			for (int e = 0; e < 4; e++) {
				int col = n0 + nt * 8 + 2 * t4 + (e & 1), r = e >> 1;
				float p = exp2f(s[nt][e] * scale_log2 - L[r]);
				if (need && (col >= T || (causal && col > (r ? row1 : row0))))
					p = 0.0f;
				dp[nt][e] = p * (dp[nt][e] - D[r]);
			}
		}
		uint32_t da[BN / 16][4];
		fa_acc_to_a<BN>(da, dp);
		fa_mma_ab<BN, HS>(dq, da, sK, lds, 0);
	}
	fa_write_rows<HS, true>(dqkv + (size_t)b * T * ld + (size_t)h * HS, ld, m0 + warp * 16, T, dq, scale, scale);
}

/* ===================================================== SIMT (fp32 math) path */

/* One warp per block: the lanes exchange each chunk's p (or dS) through
 * shared memory, ordered by __syncthreads, which rows of different lengths
 * (causal) could not share within a bigger block. (A __syncwarp would do on
 * the GPU, but the emulator's race detector flags a write after many
 * readers unless a block barrier lies between.) */
#define SA_WARPS 1
#define SA_MAXHS 256	/* head sizes up to 32 * 8 */

/* Forward: one warp per query row i. Lanes take 32 keys at a time (each a
 * full dot product against q in shared memory), the chunk's max and sum are
 * folded into the running ones, then the lanes, each owning hs/32 output
 * columns, add the chunk's p_j v_j. */
template <class T, int DPL>
__global__ void __launch_bounds__(32 * SA_WARPS) att_simt_fwd_kernel(T *out, float *lse, const T *qkv, int T_, int C,
								   int NH, int causal, float scale)
{
	__shared__ float sq[SA_WARPS][SA_MAXHS], sp[SA_WARPS][32];
	int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
	int i = blockIdx.x * SA_WARPS + warp, bh = blockIdx.y, b = bh / NH, h = bh % NH, hs = C / NH;
	if (i >= T_)
		return;
	size_t ld = (size_t)3 * C;
	const T *q = qkv + ((size_t)b * T_ + i) * ld + (size_t)h * hs;
	const T *kb = qkv + (size_t)b * T_ * ld + C + (size_t)h * hs, *vb = kb + C;
	float *s_q = sq[warp];
	for (int d = lane; d < hs; d += 32)
		s_q[d] = to_f(q[d]) * scale;
	__syncthreads();
	float o[DPL], m = -INFINITY, l = 0.0f;
	UNROLL
	for (int k = 0; k < DPL; k++)
		o[k] = 0.0f;
	int n = causal ? i + 1 : T_;
	for (int j0 = 0; j0 < n; j0 += 32) {
		int j = j0 + lane, cnt = min(32, n - j0);
		float s = -INFINITY;
		if (j < n) {
			const T *kj = kb + (size_t)j * ld;
			float acc = 0.0f;
			for (int d = 0; d < hs; d++)
				acc += s_q[d] * to_f(kj[d]);
			s = acc;
		}
		float mn = fmaxf(m, warp_max(s));	/* finite: lane 0's key is unmasked */
		float alpha = expf(m - mn), p = expf(s - mn);
		l = l * alpha + warp_sum(p);
		m = mn;
		UNROLL
		for (int k = 0; k < DPL; k++)
			o[k] *= alpha;
		sp[warp][lane] = p;	/* shared, not 32 shuffles: one exchange */
		__syncthreads();
		for (int jj = 0; jj < cnt; jj++) {
			float pj = sp[warp][jj];
			const T *vj = vb + (size_t)(j0 + jj) * ld;
			UNROLL
			for (int k = 0; k < DPL; k++) {
				int d = lane + 32 * k;
				if (d < hs)
					o[k] += pj * to_f(vj[d]);
			}
		}
		__syncthreads();	/* sp is read before the next chunk writes it */
	}
	T *y = out + ((size_t)b * T_ + i) * C + (size_t)h * hs;
	UNROLL
	for (int k = 0; k < DPL; k++) {
		int d = lane + 32 * k;
		if (d < hs)
			y[d] = from_f<T>(o[k] / l);
	}
	if (lane == 0)
		lse[(size_t)bh * T_ + i] = m + logf(l);
}

/* Backward, dq: one warp per query row i; lanes take 32 keys at a time,
 * dS_ij = p_ij (dO_i . v_j - D_i), then dq_i += sum_j dS_ij k_j. */
template <class T, int DPL>
__global__ void __launch_bounds__(32 * SA_WARPS) att_simt_dq_kernel(T *dqkv, const T *dout, const T *qkv,
								  const float *lse, const float *Dv, int T_, int C,
								  int NH, int causal, float scale)
{
	__shared__ float sq[SA_WARPS][SA_MAXHS], sdo[SA_WARPS][SA_MAXHS], sds[SA_WARPS][32];
	int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
	int i = blockIdx.x * SA_WARPS + warp, bh = blockIdx.y, b = bh / NH, h = bh % NH, hs = C / NH;
	if (i >= T_)
		return;
	size_t ld = (size_t)3 * C;
	const T *q = qkv + ((size_t)b * T_ + i) * ld + (size_t)h * hs;
	const T *dy = dout + ((size_t)b * T_ + i) * C + (size_t)h * hs;
	const T *kb = qkv + (size_t)b * T_ * ld + C + (size_t)h * hs, *vb = kb + C;
	float *s_q = sq[warp], *s_do = sdo[warp];
	for (int d = lane; d < hs; d += 32) {
		s_q[d] = to_f(q[d]) * scale;
		s_do[d] = to_f(dy[d]);
	}
	__syncthreads();
	float L = lse[(size_t)bh * T_ + i], Di = Dv[(size_t)bh * T_ + i], g[DPL];
	UNROLL
	for (int k = 0; k < DPL; k++)
		g[k] = 0.0f;
	int n = causal ? i + 1 : T_;
	for (int j0 = 0; j0 < n; j0 += 32) {
		int j = j0 + lane, cnt = min(32, n - j0);
		float ds = 0.0f;
		if (j < n) {
			const T *kj = kb + (size_t)j * ld, *vj = vb + (size_t)j * ld;
			float s = 0.0f, dp = 0.0f;
			for (int d = 0; d < hs; d++) {
				s += s_q[d] * to_f(kj[d]);
				dp += s_do[d] * to_f(vj[d]);
			}
			ds = expf(s - L) * (dp - Di);
		}
		sds[warp][lane] = ds;
		__syncthreads();
		for (int jj = 0; jj < cnt; jj++) {
			float dsj = sds[warp][jj];
			const T *kj = kb + (size_t)(j0 + jj) * ld;
			UNROLL
			for (int k = 0; k < DPL; k++) {
				int d = lane + 32 * k;
				if (d < hs)
					g[k] += dsj * to_f(kj[d]);
			}
		}
		__syncthreads();
	}
	T *dq = dqkv + ((size_t)b * T_ + i) * ld + (size_t)h * hs;
	UNROLL
	for (int k = 0; k < DPL; k++) {
		int d = lane + 32 * k;
		if (d < hs)
			dq[d] = from_f<T>(to_f(dq[d]) + g[k] * scale);
	}
}

/* Backward, dk and dv: one warp per key row j; lanes take 32 queries at a
 * time, p_ij and dS_ij as above, then dv_j += sum_i p_ij dO_i and
 * dk_j += sum_i dS_ij q_i. */
template <class T, int DPL>
__global__ void __launch_bounds__(32 * SA_WARPS) att_simt_dkdv_kernel(T *dqkv, const T *dout, const T *qkv,
								    const float *lse, const float *Dv, int T_, int C,
								    int NH, int causal, float scale)
{
	__shared__ float sk[SA_WARPS][SA_MAXHS], sv[SA_WARPS][SA_MAXHS], sp[SA_WARPS][32], sds[SA_WARPS][32];
	int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
	int j = blockIdx.x * SA_WARPS + warp, bh = blockIdx.y, b = bh / NH, h = bh % NH, hs = C / NH;
	if (j >= T_)
		return;
	size_t ld = (size_t)3 * C;
	const T *qb = qkv + (size_t)b * T_ * ld + (size_t)h * hs;
	const T *dyb = dout + (size_t)b * T_ * C + (size_t)h * hs;
	const T *k_ = qb + (size_t)j * ld + C, *v_ = k_ + C;
	float *s_k = sk[warp], *s_v = sv[warp];
	for (int d = lane; d < hs; d += 32) {
		s_k[d] = to_f(k_[d]) * scale;
		s_v[d] = to_f(v_[d]);
	}
	__syncthreads();
	const float *L = lse + (size_t)bh * T_, *Db = Dv + (size_t)bh * T_;
	float gk[DPL], gv[DPL];
	UNROLL
	for (int k = 0; k < DPL; k++)
		gk[k] = gv[k] = 0.0f;
	for (int i0 = causal ? j : 0; i0 < T_; i0 += 32) {
		int i = i0 + lane, cnt = min(32, T_ - i0);
		float p = 0.0f, ds = 0.0f;
		if (i < T_) {
			const T *qi = qb + (size_t)i * ld, *dyi = dyb + (size_t)i * C;
			float s = 0.0f, dp = 0.0f;
			for (int d = 0; d < hs; d++) {
				s += to_f(qi[d]) * s_k[d];
				dp += to_f(dyi[d]) * s_v[d];
			}
			p = expf(s - L[i]);
			ds = p * (dp - Db[i]);
		}
		sp[warp][lane] = p;
		sds[warp][lane] = ds;
		__syncthreads();
		for (int ii = 0; ii < cnt; ii++) {
			float pi = sp[warp][ii], dsi = sds[warp][ii];
			const T *qi = qb + (size_t)(i0 + ii) * ld, *dyi = dyb + (size_t)(i0 + ii) * C;
			UNROLL
			for (int k = 0; k < DPL; k++) {
				int d = lane + 32 * k;
				if (d < hs) {
					gv[k] += pi * to_f(dyi[d]);
					gk[k] += dsi * to_f(qi[d]);
				}
			}
		}
		__syncthreads();
	}
	T *dk = dqkv + ((size_t)b * T_ + j) * ld + C + (size_t)h * hs, *dv = dk + C;
	UNROLL
	for (int k = 0; k < DPL; k++) {
		int d = lane + 32 * k;
		if (d < hs) {
			dk[d] = from_f<T>(to_f(dk[d]) + gk[k] * scale);
			dv[d] = from_f<T>(to_f(dv[d]) + gv[k]);
		}
	}
}

/* ---------------------------------------------------------------- host side */

/* The tensor-core kernels take bf16 with hs 32, 64 or 128 and 16-byte
 * aligned tensors (cp.async rows; 3C and C are then multiples of 8). */
static int flash_ok(backend *be, int hs, const void *a, const void *b, const void *c, const void *d)
{
	return be->act == DT_BF16 && (hs == 32 || hs == 64 || hs == 128) && aligned16(a) && aligned16(b) &&
	       aligned16(c) && aligned16(d);
}

/* Kernels above 48 KiB of dynamic shared memory must say so first. */
template <class K> static void fa_smem_attr(K kernel, size_t bytes)
{
	if (bytes > 48 * 1024)
		CUDA_CHECK(cudaFuncSetAttribute((const void *)kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
						(int)bytes));
}

template <int HS>
static void flash_forward(cuda_backend *cb, bf16 *out, float *lse, const bf16 *qkv, int B, int T, int C, int NH,
			  int causal)
{
	size_t smem = fa_cfg<HS>::fwd_smem();
	fa_smem_attr(flash_fwd_kernel<HS>, smem);
	dim3 grid(cdiv(T, FA_ROWS), B * NH);
	float scale_log2 = (float)(1.4426950408889634 / sqrt((double)HS));
	CUDA_LAUNCH(grid, FA_THREADS, smem, cb->stream, flash_fwd_kernel<HS>)(out, lse, qkv, T, C, NH, causal,
									     scale_log2);
	LAUNCH_CHECK();
}

template <int HS>
static void flash_backward(cuda_backend *cb, bf16 *dqkv, const bf16 *dout, const bf16 *qkv, const float *lse,
			   const float *D, int B, int T, int C, int NH, int causal)
{
	size_t smem = fa_cfg<HS>::bwd_smem();
	fa_smem_attr(flash_bwd_dkdv_kernel<HS>, smem);
	fa_smem_attr(flash_bwd_dq_kernel<HS>, smem);
	dim3 grid(cdiv(T, FA_ROWS), B * NH);
	float scale = (float)(1.0 / sqrt((double)HS)), scale_log2 = (float)(1.4426950408889634 / sqrt((double)HS));
	CUDA_LAUNCH(grid, FA_THREADS, smem, cb->stream, flash_bwd_dkdv_kernel<HS>)(dqkv, dout, qkv, lse, D, T, C, NH,
										  causal, scale_log2, scale);
	LAUNCH_CHECK();
	CUDA_LAUNCH(grid, FA_THREADS, smem, cb->stream, flash_bwd_dq_kernel<HS>)(dqkv, dout, qkv, lse, D, T, C, NH,
										causal, scale_log2, scale);
	LAUNCH_CHECK();
}

/* The fused backward; scratch holds D, then the dQ buffer and counters. */
template <int HS>
static void flash_backward_fused(cuda_backend *cb, bf16 *dqkv, const bf16 *dout, const bf16 *qkv, const float *lse,
				 const float *D, int B, int T, int C, int NH, int causal)
{
	size_t smem = fa_cfg<HS>::fused_smem();
	fa_smem_attr(flash_bwd_kernel<HS>, smem);
	char *scr = (char *)D + (((size_t)B * NH * T * sizeof(float) + 255) & ~(size_t)255);
	float *dqacc = (float *)scr;
	int *sem = (int *)(scr + att_dq_bytes(B, T, C));
	size_t nsem = att_sem_count(B, T, NH);	/* the counters, the ticket last */
	CUDA_CHECK(cudaMemsetAsync(sem, 0, nsem * sizeof(int), cb->stream));
	unsigned blocks = (unsigned)(cdiv(T, FA_ROWS) * B * NH);
	float scale = (float)(1.0 / sqrt((double)HS)), scale_log2 = (float)(1.4426950408889634 / sqrt((double)HS));
	CUDA_LAUNCH(blocks, FA_THREADS, smem, cb->stream, flash_bwd_kernel<HS>)(dqkv, dqacc, sem, sem + nsem - 1, dout,
										  qkv, lse, D, T, C, NH, causal,
										  scale_log2, scale);
	LAUNCH_CHECK();
	size_t n2 = (size_t)B * T * C / 2;
	CUDA_LAUNCH((unsigned)cdiv(n2, 256), 256, 0, cb->stream, att_dq_add_kernel<HS>)(dqkv, dqacc, B, T, C, NH,
											  scale);
	LAUNCH_CHECK();
}

template <int HS> static int flash_occupancy(int which, const char **name)
{
	static const char *names[4] = { "flash_fwd_kernel", "flash_bwd_dkdv_kernel", "flash_bwd_dq_kernel",
					 "flash_bwd_kernel" };
	static char buf[4][48];
	size_t smem = which == 0 ? fa_cfg<HS>::fwd_smem() : which == 3 ? fa_cfg<HS>::fused_smem() : fa_cfg<HS>::bwd_smem();
	const void *k;
	if (which == 3) {
		fa_smem_attr(flash_bwd_kernel<HS>, smem);
		k = (const void *)flash_bwd_kernel<HS>;
	} else if (which == 0) {
		fa_smem_attr(flash_fwd_kernel<HS>, smem);
		k = (const void *)flash_fwd_kernel<HS>;
	} else if (which == 1) {
		fa_smem_attr(flash_bwd_dkdv_kernel<HS>, smem);
		k = (const void *)flash_bwd_dkdv_kernel<HS>;
	} else {
		fa_smem_attr(flash_bwd_dq_kernel<HS>, smem);
		k = (const void *)flash_bwd_dq_kernel<HS>;
	}
	snprintf(buf[which], sizeof buf[which], "%s<%d>", names[which], HS);
	*name = buf[which];
	int n = 0;
	if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k, FA_THREADS, smem) != cudaSuccess) {
		cudaGetLastError();
		return -1;
	}
	return n;
}

extern "C" int cuda_flash_occupancy(int hs, int which, const char **name)
{
	*name = "";
	if (which < 0 || which > 3)
		return -1;
	switch (hs) {
	case 32: return flash_occupancy<32>(which, name);
	case 64: return flash_occupancy<64>(which, name);
	case 128: return flash_occupancy<128>(which, name);
	}
	return -1;
}

/* Output columns per lane of the SIMT kernels: the smallest of 1, 2, 4, 8
 * covering hs. */
static int simt_dpl(int hs)
{
	if (hs > SA_MAXHS)
		cuda_die(__FILE__, __LINE__, "attention: head size %d exceeds %d", hs, SA_MAXHS);
	return hs <= 32 ? 1 : hs <= 64 ? 2 : hs <= 128 ? 4 : 8;
}

#define SIMT_DISPATCH(dpl, LAUNCH) \
	do { \
		switch (dpl) { \
		case 1: LAUNCH(1); break; \
		case 2: LAUNCH(2); break; \
		case 4: LAUNCH(4); break; \
		default: LAUNCH(8); break; \
		} \
	} while (0)

template <class T>
static void simt_forward(cuda_backend *cb, T *out, float *lse, const T *qkv, int B, int T_, int C, int NH, int causal)
{
	dim3 grid(cdiv(T_, SA_WARPS), B * NH);
	float scale = (float)(1.0 / sqrt((double)(C / NH)));
#define FWD(D) \
	CUDA_LAUNCH(grid, 32 * SA_WARPS, 0, cb->stream, att_simt_fwd_kernel<T, D>)(out, lse, qkv, T_, C, NH, causal, scale)
	SIMT_DISPATCH(simt_dpl(C / NH), FWD);
#undef FWD
	LAUNCH_CHECK();
}

template <class T>
static void simt_backward(cuda_backend *cb, T *dqkv, const T *dout, const T *qkv, const float *lse, const float *D,
			  int B, int T_, int C, int NH, int causal)
{
	dim3 grid(cdiv(T_, SA_WARPS), B * NH);
	float scale = (float)(1.0 / sqrt((double)(C / NH)));
	int dpl = simt_dpl(C / NH);
#define DKDV(P) \
	CUDA_LAUNCH(grid, 32 * SA_WARPS, 0, cb->stream, att_simt_dkdv_kernel<T, P>)(dqkv, dout, qkv, lse, D, T_, C, NH, \
										   causal, scale)
#define DQ(P) \
	CUDA_LAUNCH(grid, 32 * SA_WARPS, 0, cb->stream, att_simt_dq_kernel<T, P>)(dqkv, dout, qkv, lse, D, T_, C, NH, \
										 causal, scale)
	SIMT_DISPATCH(dpl, DKDV);
	LAUNCH_CHECK();
	SIMT_DISPATCH(dpl, DQ);
	LAUNCH_CHECK();
#undef DKDV
#undef DQ
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
	int hs = C / NH;
	if (flash_ok(be, hs, out, qkv, NULL, NULL)) {
		bf16 *o = (bf16 *)out;
		const bf16 *x = (const bf16 *)qkv;
		if (hs == 32)
			flash_forward<32>(cb, o, (float *)lse, x, B, T, C, NH, causal);
		else if (hs == 64)
			flash_forward<64>(cb, o, (float *)lse, x, B, T, C, NH, causal);
		else
			flash_forward<128>(cb, o, (float *)lse, x, B, T, C, NH, causal);
	} else if (be->act == DT_BF16) {
		simt_forward(cb, (bf16 *)out, (float *)lse, (const bf16 *)qkv, B, T, C, NH, causal);
	} else {
		simt_forward(cb, (float *)out, (float *)lse, (const float *)qkv, B, T, C, NH, causal);
	}
}

void cuda_attention_backward(backend *be, void *dqkv, const void *dout, const void *qkv, const void *out,
			     const void *lse, int B, int T, int C, int NH, int causal)
{
	NVTX_RANGE("attention_backward");
	cuda_backend *cb = cuda_of(be);
	if (!att_shape_ok(B, T, C, NH))
		return;
	int hs = C / NH, rows = B * NH * T;
	float *D = (float *)cuda_scratch(cb, SCR_ATT, cuda_attention_scratch_bytes(dtype_size(be->act), B, T, C, NH));
	unsigned blocks = cdiv((size_t)rows * 32, 256);
	if (be->act == DT_BF16)
		CUDA_LAUNCH(blocks, 256, 0, cb->stream, att_rowdot_kernel<bf16>)(D, (const bf16 *)dout, (const bf16 *)out, B,
									   T, C, NH);
	else
		CUDA_LAUNCH(blocks, 256, 0, cb->stream, att_rowdot_kernel<float>)(D, (const float *)dout,
									    (const float *)out, B, T, C, NH);
	LAUNCH_CHECK();
	const float *L = (const float *)lse;
	if (flash_ok(be, hs, dqkv, dout, qkv, NULL)) {
		bf16 *g = (bf16 *)dqkv;
		const bf16 *dy = (const bf16 *)dout, *x = (const bf16 *)qkv;
		if (att_split()) {
			if (hs == 32)
				flash_backward<32>(cb, g, dy, x, L, D, B, T, C, NH, causal);
			else if (hs == 64)
				flash_backward<64>(cb, g, dy, x, L, D, B, T, C, NH, causal);
			else
				flash_backward<128>(cb, g, dy, x, L, D, B, T, C, NH, causal);
		} else if (hs == 32) {
			flash_backward_fused<32>(cb, g, dy, x, L, D, B, T, C, NH, causal);
		} else if (hs == 64) {
			flash_backward_fused<64>(cb, g, dy, x, L, D, B, T, C, NH, causal);
		} else {
			flash_backward_fused<128>(cb, g, dy, x, L, D, B, T, C, NH, causal);
		}
	} else if (be->act == DT_BF16) {
		simt_backward(cb, (bf16 *)dqkv, (const bf16 *)dout, (const bf16 *)qkv, L, D, B, T, C, NH, causal);
	} else {
		simt_backward(cb, (float *)dqkv, (const float *)dout, (const float *)qkv, L, D, B, T, C, NH, causal);
	}
}
