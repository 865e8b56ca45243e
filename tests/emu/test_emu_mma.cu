/* tests/emu/test_emu_mma.cu: the tensor-core instructions of ptx.cuh.
 *
 * mma.sync m16n8k16 (bf16 and f16) on worked examples whose answer is known
 * in closed form, with fragments filled by the PTX ISA's layout formulas
 * written out here; shfl.sync in every mode and width against the ISA's
 * pseudocode;
 * ldmatrix x1/x2/x4 with and without .trans against the ISA's description;
 * cp.async with zero fill; and a tiled bf16 matmul (cp.async double
 * buffering, ldmatrix, mma.sync) against a CPU reference. Natively the same
 * tests check the hardware against the same formulas. */
#include "emu_test.h"
#include "ptx.cuh"

/* ---- mma.sync with fragments from the ISA's formulas ---- */
/* A 16x16 row-major, B 16x8 row-major ([k][n]), C and D 16x8 row-major. */
__global__ void k_mma(const __nv_bfloat16 *A, const __nv_bfloat16 *B, const float *C, float *D)
{
	int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
	uint32_t a[4], b[2];
	float c[4], d[4];
	/* a_i: row g for i in {0,1,4,5} else g+8; col 2t+(i&1), +8 for i>=4 */
	for (int r = 0; r < 4; r++) {
		int i = 2 * r, row = (i == 0 || i == 4) ? g : g + 8, col = 2 * t + (i >= 4 ? 8 : 0);
		a[r] = pack_bf16x2(A[row * 16 + col], A[row * 16 + col + 1]);
	}
	/* b_i: row 2t+(i&1), +8 for i>=2; col g */
	for (int r = 0; r < 2; r++) {
		int k = 2 * t + (r ? 8 : 0);
		b[r] = pack_bf16x2(B[k * 8 + g], B[(k + 1) * 8 + g]);
	}
	/* c_i: row g for i<2 else g+8; col 2t+(i&1) */
	for (int i = 0; i < 4; i++)
		c[i] = C[(i < 2 ? g : g + 8) * 8 + 2 * t + (i & 1)];
	mma_m16n8k16_bf16(d, a, b, c);
	for (int i = 0; i < 4; i++)
		D[(i < 2 ? g : g + 8) * 8 + 2 * t + (i & 1)] = d[i];
}

/* below, beside k_mma_f16 */
static void run_mma_any(const float *hA, const float *hB, const float *hC, float *hD, int f16);

START_TEST(test_mma_identity)
{
	/* A = I: D = B + C exactly (small integers are exact in bf16) */
	float A[256] = {0}, B[128], C[128], D[128];
	for (int i = 0; i < 16; i++)
		A[i * 16 + i] = 1.0f;
	for (int i = 0; i < 128; i++) {
		B[i] = (float)(i + 1);
		C[i] = 0.5f * (float)(i % 7);
	}
	run_mma_any(A, B, C, D, 0);
	for (int m = 0; m < 16; m++)
		for (int n = 0; n < 8; n++)
			ck_assert_msg(D[m * 8 + n] == B[m * 8 + n] + C[m * 8 + n], "D[%d][%d] = %g", m, n, D[m * 8 + n]);
}
END_TEST


/* ---- mma.sync f16: the ISA's fragment tables typed per register ----
 * Written out again, one row per register (PTX ISA, "Matrix Fragments for
 * mma.m16n8k16 with floating point type", .f16 and .bf16 share them), rather
 * than derived from k_mma's formulas: a0/a1 (g, 2t|2t+1), a2/a3 (g+8, ...),
 * a4/a5 (g, 2t+8|2t+9), a6/a7 (g+8, 2t+8|2t+9); b0/b1 (2t|2t+1, g), b2/b3
 * (2t+8|2t+9, g); c0/c1 (g, 2t|2t+1), c2/c3 (g+8, 2t|2t+1). Raw 16-bit
 * elements, packed low element first. */
__global__ void k_mma_f16(const unsigned short *A, const unsigned short *B, const float *C, float *D)
{
	static const int arow[8] = {0, 0, 8, 8, 0, 0, 8, 8}, acol[8] = {0, 1, 0, 1, 8, 9, 8, 9};
	static const int brow[4] = {0, 1, 8, 9}, crow[4] = {0, 0, 8, 8}, ccol[4] = {0, 1, 0, 1};
	int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
	uint32_t a[4], b[2];
	float c[4], d[4];
	for (int r = 0; r < 4; r++) {
		int i = 2 * r, j = 2 * r + 1;
		a[r] = (uint32_t)A[(g + arow[i]) * 16 + 2 * t + acol[i]] | ((uint32_t)A[(g + arow[j]) * 16 + 2 * t + acol[j]] << 16);
	}
	for (int r = 0; r < 2; r++)
		b[r] = (uint32_t)B[(2 * t + brow[2 * r]) * 8 + g] | ((uint32_t)B[(2 * t + brow[2 * r + 1]) * 8 + g] << 16);
	for (int i = 0; i < 4; i++)
		c[i] = C[(g + crow[i]) * 8 + 2 * t + ccol[i]];
	mma_m16n8k16_f16(d, a, b, c);
	for (int i = 0; i < 4; i++)
		D[(g + crow[i]) * 8 + 2 * t + ccol[i]] = d[i];
}

/* Uploads A, B (rounded to bf16, or to fp16 when f16) and C, runs one
 * m16n8k16 through k_mma (bf16) or k_mma_f16, and downloads D. */
static void run_mma_any(const float *hA, const float *hB, const float *hC, float *hD, int f16)
{
	unsigned short a[256], b[128];
	for (int i = 0; i < 384; i++) {
		float x = i < 256 ? hA[i] : hB[i - 256];
		unsigned short bits = f16 ? __half_as_ushort(__float2half(x)) : __bfloat16_as_ushort(__float2bfloat16(x));
		if (i < 256)
			a[i] = bits;
		else
			b[i - 256] = bits;
	}
	unsigned short *dA, *dB;
	float *dC, *dD;
	CUDA_OK(cudaMalloc(&dA, sizeof(a)));
	CUDA_OK(cudaMalloc(&dB, sizeof(b)));
	CUDA_OK(cudaMalloc(&dC, 128 * sizeof(float)));
	CUDA_OK(cudaMalloc(&dD, 128 * sizeof(float)));
	CUDA_OK(cudaMemcpy(dA, a, sizeof(a), cudaMemcpyHostToDevice));
	CUDA_OK(cudaMemcpy(dB, b, sizeof(b), cudaMemcpyHostToDevice));
	CUDA_OK(cudaMemcpy(dC, hC, 128 * sizeof(float), cudaMemcpyHostToDevice));
	if (f16)
		CUDA_LAUNCH(1, 32, 0, 0, k_mma_f16)(dA, dB, dC, dD);
	else
		CUDA_LAUNCH(1, 32, 0, 0, k_mma)((const __nv_bfloat16 *)dA, (const __nv_bfloat16 *)dB, dC, dD);
	CUDA_OK(cudaGetLastError());
	CUDA_OK(cudaMemcpy(hD, dD, 128 * sizeof(float), cudaMemcpyDeviceToHost));
	cudaFree(dA);
	cudaFree(dB);
	cudaFree(dC);
	cudaFree(dD);
}

/* The value a bf16 (_i 0) or fp16 (_i 1) operand register holds for x. */
static float round16(float x, int f16)
{
	return f16 ? __half2float(__float2half(x)) : __bfloat162float(__float2bfloat16(x));
}

START_TEST(test_mma_single_entry)
{
	/* A = e_i e_j^T: row i of D is that multiple of row j of B, every other
	 * row is C. fp16's multiple, 1 + 2^-9, is one bf16 cannot hold. */
	int f16 = _i;
	float a = f16 ? 1.0f + 1.0f / 512 : 2.0f;
	uint64_t s = test_seed(f16 ? "mma_f16_single_entry" : "mma_single_entry");
	for (int round = 0; round < 6; round++) {
		float A[256] = {0}, B[128], C[128], D[128];
		int i = (int)(test_rng(&s) % 16), j = (int)(test_rng(&s) % 16);
		A[i * 16 + j] = a;
		for (int k = 0; k < 128; k++) {
			B[k] = (float)((int)(test_rng(&s) % 200) - 100);
			C[k] = (float)((int)(test_rng(&s) % 50));
		}
		run_mma_any(A, B, C, D, f16);
		for (int m = 0; m < 16; m++)
			for (int n = 0; n < 8; n++) {
				float want = C[m * 8 + n] + (m == i ? a * B[j * 8 + n] : 0.0f);
				ck_assert_msg(D[m * 8 + n] == want, "%s e_%d e_%d^T: D[%d][%d] = %.9g, want %.9g",
					      f16 ? "f16" : "bf16", i, j, m, n, D[m * 8 + n], want);
			}
	}
}
END_TEST

START_TEST(test_mma_random)
{
	int f16 = _i;
	uint64_t s = test_seed(f16 ? "mma_f16_random" : "mma_random");
	float A[256], B[128], C[128], D[128];
	double ref[128];
	for (int i = 0; i < 256; i++)
		A[i] = round16(test_uniform(&s, -2, 2), f16);
	for (int i = 0; i < 128; i++) {
		B[i] = round16(test_uniform(&s, -2, 2), f16);
		C[i] = test_uniform(&s, -1, 1);
	}
	for (int m = 0; m < 16; m++)
		for (int n = 0; n < 8; n++) {
			ref[m * 8 + n] = C[m * 8 + n];
			for (int k = 0; k < 16; k++)
				ref[m * 8 + n] += (double)A[m * 16 + k] * B[k * 8 + n];
		}
	run_mma_any(A, B, C, D, f16);
	double err = rel_l2(D, ref, 128);
	ck_assert_msg(err < 1e-6, "mma %s rel err %g", f16 ? "f16" : "bf16", err);
}
END_TEST

/* ---- shfl.sync: every mode and width against the PTX ISA's pseudocode ----
 * The ISA (shfl.sync): segmask = c[12:8], maxLane = (lane & segmask) |
 * (c[4:0] & ~segmask), minLane = lane & segmask; up: j = lane - b, valid if
 * j >= maxLane; down: j = lane + b, valid if j <= maxLane; bfly: j = lane ^ b,
 * valid if j <= maxLane; idx: j = minLane | (b & ~segmask), valid if j <=
 * maxLane; an invalid j reads the lane's own value. CUDA's __shfl_*_sync(...,
 * width) pass c = ((32 - width) << 8) | 0x1f, but 0 in c[4:0] for up. */
enum { SHFL_MODES = 4, SHFL_WIDTHS = 5, SHFL_B = 33 };

__global__ void k_shfl(int *out)
{
	int lane = threadIdx.x, v = 1000 + 7 * lane;
	for (int w = 0; w < SHFL_WIDTHS; w++) {
		int width = 2 << w;
		for (int b = 0; b < SHFL_B; b++) {
			int *o = out + ((w * SHFL_B + b) * SHFL_MODES) * 32 + lane;
			o[0] = __shfl_sync(0xffffffffu, v, b, width);
			o[32] = __shfl_up_sync(0xffffffffu, v, (unsigned)b, width);
			o[64] = __shfl_down_sync(0xffffffffu, v, (unsigned)b, width);
			o[96] = __shfl_xor_sync(0xffffffffu, v, b, width);
		}
	}
}

/* The lane whose value lane receives, from the ISA's pseudocode. */
static int isa_shfl_src(int mode, int lane, int b, int width)
{
	int segmask = (32 - width) & 31, c = mode == 1 ? 0 : 31;
	int maxLane = (lane & segmask) | (c & ~segmask), minLane = lane & segmask, j = lane, ok = 0;
	b &= 31;
	switch (mode) {
	case 0: j = minLane | (b & ~segmask); ok = j <= maxLane; break;
	case 1: j = lane - b; ok = j >= maxLane; break;
	case 2: j = lane + b; ok = j <= maxLane; break;
	case 3: j = lane ^ b; ok = j <= maxLane; break;
	}
	return ok ? j : lane;
}

START_TEST(test_shfl_modes_and_widths)
{
	size_t n = (size_t)SHFL_WIDTHS * SHFL_B * SHFL_MODES * 32;
	int *h = (int *)malloc(n * sizeof(int)), *d;
	CUDA_OK(cudaMalloc(&d, n * sizeof(int)));
	CUDA_LAUNCH(1, 32, 0, 0, k_shfl)(d);
	CUDA_OK(cudaGetLastError());
	CUDA_OK(cudaMemcpy(h, d, n * sizeof(int), cudaMemcpyDeviceToHost));
	static const char *names[SHFL_MODES] = {"idx", "up", "down", "bfly"};
	for (int w = 0; w < SHFL_WIDTHS; w++)
		for (int b = 0; b < SHFL_B; b++)
			for (int m = 0; m < SHFL_MODES; m++)
				for (int lane = 0; lane < 32; lane++) {
					int want = 1000 + 7 * isa_shfl_src(m, lane, b, 2 << w);
					int got = h[((w * SHFL_B + b) * SHFL_MODES + m) * 32 + lane];
					ck_assert_msg(got == want, "shfl.%s width %d b %d lane %d: got lane %d's value, want lane %d's",
						      names[m], 2 << w, b, lane, (got - 1000) / 7, (want - 1000) / 7);
				}
	cudaFree(d);
	free(h);
}
END_TEST

/* ---- ldmatrix ---- */
/* tile: 16x16 b16 in shared memory, element (r, c) = r*16 + c. Lane l gives
 * the address of row l%8 of matrix l/8, matrices in the order top-left,
 * bottom-left, top-right, bottom-right. out: 4 regs x 6 variants per lane. */
__global__ void k_ldmatrix(uint32_t *out)
{
	__shared__ __align__(16) unsigned short tile[16][16];
	int lane = threadIdx.x;
	for (int i = lane; i < 256; i += 32)
		tile[i / 16][i % 16] = (unsigned short)i;
	__syncwarp();
	int m = lane / 8, r = lane % 8;
	const void *row = &tile[r + 8 * (m & 1)][8 * (m >> 1)];
	uint32_t v[4] = {0, 0, 0, 0};
	uint32_t *o = out + lane * 24;
	ldmatrix_x1(v, row);
	o[0] = v[0];
	ldmatrix_x2(v, row);
	o[4] = v[0];
	o[5] = v[1];
	ldmatrix_x4(v, row);
	for (int i = 0; i < 4; i++)
		o[8 + i] = v[i];
	ldmatrix_x1_trans(v, row);
	o[12] = v[0];
	ldmatrix_x2_trans(v, row);
	o[16] = v[0];
	o[17] = v[1];
	ldmatrix_x4_trans(v, row);
	for (int i = 0; i < 4; i++)
		o[20 + i] = v[i];
}

START_TEST(test_ldmatrix)
{
	uint32_t h[32 * 24], *d;
	CUDA_OK(cudaMalloc(&d, sizeof(h)));
	CUDA_OK(cudaMemset(d, 0, sizeof(h)));
	CUDA_LAUNCH(1, 32, 0, 0, k_ldmatrix)(d);
	CUDA_OK(cudaGetLastError());
	CUDA_OK(cudaMemcpy(h, d, sizeof(h), cudaMemcpyDeviceToHost));
	for (int lane = 0; lane < 32; lane++) {
		for (int m = 0; m < 4; m++) {
			int r0 = 8 * (m & 1), c0 = 8 * (m >> 1);
			/* each thread holds row lane/4, elements 2(lane%4) and +1;
			 * with .trans, column lane/4, rows 2(lane%4) and +1 */
			int q = lane / 4, c = 2 * (lane % 4);
			uint32_t plain = (uint32_t)((r0 + q) * 16 + c0 + c) | ((uint32_t)((r0 + q) * 16 + c0 + c + 1) << 16);
			uint32_t trans = (uint32_t)((r0 + c) * 16 + c0 + q) | ((uint32_t)((r0 + c + 1) * 16 + c0 + q) << 16);
			const uint32_t *o = h + lane * 24;
			if (m < 1) {
				ck_assert_uint_eq(o[0], plain);
				ck_assert_uint_eq(o[12], trans);
			}
			if (m < 2) {
				ck_assert_uint_eq(o[4 + m], plain);
				ck_assert_uint_eq(o[16 + m], trans);
			}
			ck_assert_msg(o[8 + m] == plain, "x4 lane %d matrix %d: 0x%08x want 0x%08x", lane, m, o[8 + m], plain);
			ck_assert_msg(o[20 + m] == trans, "x4.trans lane %d matrix %d: 0x%08x want 0x%08x", lane, m, o[20 + m], trans);
		}
	}
	cudaFree(d);
}
END_TEST

/* ---- cp.async with zero fill ---- */
__global__ void k_zfill(const int4 *src, const int *nbytes, int4 *dst)
{
	__shared__ int4 s[64];
	int t = threadIdx.x;
	cp_async_16_zfill(&s[t], &src[t], nbytes[t]);
	cp_async_commit();
	cp_async_wait<0>();
	__syncthreads();
	dst[t] = s[63 - t];
}

START_TEST(test_cp_async_zfill)
{
	uint64_t s = test_seed("cp_async_zfill");
	int hsrc[256], hn[64], hdst[256], *dsrc, *dn, *ddst;
	for (int i = 0; i < 256; i++)
		hsrc[i] = (int)test_rng(&s) | 1;
	for (int i = 0; i < 64; i++)
		hn[i] = 4 * (int)(test_rng(&s) % 5);
	CUDA_OK(cudaMalloc(&dsrc, sizeof(hsrc)));
	CUDA_OK(cudaMalloc(&dn, sizeof(hn)));
	CUDA_OK(cudaMalloc(&ddst, sizeof(hdst)));
	CUDA_OK(cudaMemcpy(dsrc, hsrc, sizeof(hsrc), cudaMemcpyHostToDevice));
	CUDA_OK(cudaMemcpy(dn, hn, sizeof(hn), cudaMemcpyHostToDevice));
	CUDA_LAUNCH(1, 64, 0, 0, k_zfill)((const int4 *)dsrc, dn, (int4 *)ddst);
	CUDA_OK(cudaGetLastError());
	CUDA_OK(cudaMemcpy(hdst, ddst, sizeof(hdst), cudaMemcpyDeviceToHost));
	for (int t = 0; t < 64; t++) {
		int from = 63 - t;
		for (int w = 0; w < 4; w++)
			ck_assert_int_eq(hdst[4 * t + w], 4 * w < hn[from] ? hsrc[4 * from + w] : 0);
	}
	cudaFree(dsrc);
	cudaFree(dn);
	cudaFree(ddst);
}
END_TEST

/* ---- tiled matmul: C = A B, bf16 in, fp32 out ---- */
/* 64x64 block tile, 4 warps of 32x32, K tile 32; A and B tiles stream in by
 * cp.async into two buffers, fragments come from ldmatrix (.trans for B,
 * which is stored [k][n]). M, N multiples of 64, K of 32. */
#define MM_BM 64
#define MM_BN 64
#define MM_BK 32
#define MM_PAD 8

__global__ void __launch_bounds__(128) k_matmul(const __nv_bfloat16 *A, const __nv_bfloat16 *B, float *C, int M, int N, int K)
{
	__shared__ __align__(16) __nv_bfloat16 As[2][MM_BM][MM_BK + MM_PAD];
	__shared__ __align__(16) __nv_bfloat16 Bs[2][MM_BK][MM_BN + MM_PAD];
	int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
	int wm = warp >> 1, wn = warp & 1, g = lane >> 2, t = lane & 3;
	int bm = blockIdx.y * MM_BM, bn = blockIdx.x * MM_BN;
	float acc[2][4][4];
	for (int i = 0; i < 2; i++)
		for (int j = 0; j < 4; j++)
			for (int k = 0; k < 4; k++)
				acc[i][j][k] = 0.0f;
	(void)M;

	int ktiles = K / MM_BK;
	for (int kt = 0; kt <= ktiles; kt++) {
		if (kt < ktiles) {	/* prefetch tile kt into buffer kt % 2 */
			int buf = kt & 1, k0 = kt * MM_BK;
			for (int c = tid; c < MM_BM * MM_BK / 8; c += 128) {
				int row = c / (MM_BK / 8), col = 8 * (c % (MM_BK / 8));
				cp_async_16(&As[buf][row][col], &A[(size_t)(bm + row) * K + k0 + col]);
			}
			for (int c = tid; c < MM_BK * MM_BN / 8; c += 128) {
				int row = c / (MM_BN / 8), col = 8 * (c % (MM_BN / 8));
				cp_async_16(&Bs[buf][row][col], &B[(size_t)(k0 + row) * N + bn + col]);
			}
			cp_async_commit();
		}
		if (kt == 0)
			continue;
		/* compute on tile kt-1 while tile kt is in flight */
		if (kt < ktiles)
			cp_async_wait<1>();
		else
			cp_async_wait<0>();
		__syncthreads();
		int buf = (kt - 1) & 1;
		for (int kk = 0; kk < MM_BK; kk += 16) {
			uint32_t a[2][4], b[4][2];
			for (int mi = 0; mi < 2; mi++)
				ldmatrix_x4(a[mi], &As[buf][wm * 32 + mi * 16 + (lane & 15)][kk + 8 * (lane >> 4)]);
			for (int ni = 0; ni < 4; ni++)
				ldmatrix_x2_trans(b[ni], &Bs[buf][kk + (lane & 15)][wn * 32 + ni * 8]);
			for (int mi = 0; mi < 2; mi++)
				for (int ni = 0; ni < 4; ni++)
					mma_m16n8k16_bf16(acc[mi][ni], a[mi], b[ni], acc[mi][ni]);
		}
		__syncthreads();	/* the buffer is refilled next iteration */
	}
	for (int mi = 0; mi < 2; mi++)
		for (int ni = 0; ni < 4; ni++)
			for (int i = 0; i < 4; i++) {
				int row = bm + wm * 32 + mi * 16 + g + (i >> 1) * 8;
				int col = bn + wn * 32 + ni * 8 + 2 * t + (i & 1);
				C[(size_t)row * N + col] = acc[mi][ni][i];
			}
}

START_TEST(test_tiled_matmul)
{
	uint64_t s = test_seed("tiled_matmul");
	const int M = 128, N = 192, K = 96;
	__nv_bfloat16 *hA = (__nv_bfloat16 *)malloc(M * K * 2), *hB = (__nv_bfloat16 *)malloc(K * N * 2);
	float *hC = (float *)malloc(M * N * 4);
	double *ref = (double *)calloc(M * N, sizeof(double));
	for (int i = 0; i < M * K; i++)
		hA[i] = __float2bfloat16(test_uniform(&s, -1, 1));
	for (int i = 0; i < K * N; i++)
		hB[i] = __float2bfloat16(test_uniform(&s, -1, 1));
	for (int m = 0; m < M; m++)
		for (int k = 0; k < K; k++) {
			double a = __bfloat162float(hA[m * K + k]);
			for (int n = 0; n < N; n++)
				ref[m * N + n] += a * __bfloat162float(hB[k * N + n]);
		}
	__nv_bfloat16 *dA, *dB;
	float *dC;
	CUDA_OK(cudaMalloc(&dA, M * K * 2));
	CUDA_OK(cudaMalloc(&dB, K * N * 2));
	CUDA_OK(cudaMalloc(&dC, M * N * 4));
	CUDA_OK(cudaMemcpy(dA, hA, M * K * 2, cudaMemcpyHostToDevice));
	CUDA_OK(cudaMemcpy(dB, hB, K * N * 2, cudaMemcpyHostToDevice));
	dim3 grid(N / MM_BN, M / MM_BM);
	CUDA_LAUNCH(grid, 128, 0, 0, k_matmul)(dA, dB, dC, M, N, K);
	CUDA_OK(cudaGetLastError());
	CUDA_OK(cudaMemcpy(hC, dC, M * N * 4, cudaMemcpyDeviceToHost));
	double err = rel_l2(hC, ref, (size_t)M * N);
	printf("  tiled matmul %dx%dx%d: rel L2 err %.2e vs float64 reference\n", M, N, K, err);
	ck_assert_msg(err < 1e-5, "tiled matmul rel err %g", err);
	cudaFree(dA);
	cudaFree(dB);
	cudaFree(dC);
	free(hA);
	free(hB);
	free(hC);
	free(ref);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("emu_mma");
	TCase *tc = tcase_create("mma");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_mma_identity);
	tcase_add_loop_test(tc, test_mma_single_entry, 0, 2); /* bf16, fp16 */
	tcase_add_loop_test(tc, test_mma_random, 0, 2);
	tcase_add_test(tc, test_shfl_modes_and_widths);
	tcase_add_test(tc, test_ldmatrix);
	tcase_add_test(tc, test_cp_async_zfill);
	tcase_add_test(tc, test_tiled_matmul);
	suite_add_tcase(s, tc);
	return run_suite(s);
}
