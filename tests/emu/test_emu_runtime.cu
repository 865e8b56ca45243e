/* tests/emu/test_emu_runtime.cu: CUDA semantics of the runtime pieces.
 *
 * Indices, static and dynamic shared memory, barrier reductions, shuffles,
 * votes, warp reductions, atomics, bf16/half rounding and the host API's
 * errors, each against a reference written from the CUDA programming guide's
 * prose (not from the emulator's code). Runs emulated and natively. */
#include "emu_test.h"

/* ---- indices ---- */
__global__ void k_indices(unsigned *out)
{
	unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
	unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
	unsigned *o = out + 8 * (b * blockDim.x * blockDim.y * blockDim.z + t);
	o[0] = threadIdx.x; o[1] = threadIdx.y; o[2] = threadIdx.z;
	o[3] = blockIdx.x; o[4] = blockIdx.y; o[5] = blockIdx.z;
	o[6] = blockDim.x * 10000 + blockDim.y * 100 + blockDim.z;
	o[7] = gridDim.x * 10000 + gridDim.y * 100 + gridDim.z;
}

START_TEST(test_indices)
{
	dim3 grid(3, 2, 2), block(5, 4, 2);
	unsigned nthreads = 3 * 2 * 2 * 5 * 4 * 2, *d, *h = (unsigned *)malloc(nthreads * 8 * 4);
	CUDA_OK(cudaMalloc(&d, nthreads * 8 * 4));
	CUDA_LAUNCH(grid, block, 0, 0, k_indices)(d);
	CUDA_OK(cudaGetLastError());
	CUDA_OK(cudaMemcpy(h, d, nthreads * 8 * 4, cudaMemcpyDeviceToHost));
	unsigned i = 0;
	for (unsigned bz = 0; bz < 2; bz++)
		for (unsigned by = 0; by < 2; by++)
			for (unsigned bx = 0; bx < 3; bx++)
				for (unsigned tz = 0; tz < 2; tz++)
					for (unsigned ty = 0; ty < 4; ty++)
						for (unsigned tx = 0; tx < 5; tx++, i++) {
							unsigned *o = h + 8 * i;
							ck_assert_uint_eq(o[0], tx);
							ck_assert_uint_eq(o[1], ty);
							ck_assert_uint_eq(o[2], tz);
							ck_assert_uint_eq(o[3], bx);
							ck_assert_uint_eq(o[4], by);
							ck_assert_uint_eq(o[5], bz);
							ck_assert_uint_eq(o[6], 50402u);
							ck_assert_uint_eq(o[7], 30202u);
						}
	cudaFree(d);
	free(h);
}
END_TEST

/* ---- shared memory: static tile plus dynamic scratch ---- */
template <int N> __global__ void k_shared(const float *x, float *y, int dyn_n)
{
	__shared__ float tile[N];
	DYNAMIC_SHARED(float, scratch);
	int t = threadIdx.x, base = blockIdx.x * N;
	tile[t] = x[base + t];
	if (t < dyn_n)
		scratch[t] = 2.0f * x[base + t];
	__syncthreads();
	float v = tile[N - 1 - t];
	if (t < dyn_n)
		v += scratch[dyn_n - 1 - t];
	y[base + t] = v;
}

START_TEST(test_shared)
{
	uint64_t s = test_seed("shared");
	const int N = 96, B = 5, dyn = 40;
	float hx[N * B], hy[N * B], *dx, *dy;
	for (int i = 0; i < N * B; i++)
		hx[i] = test_uniform(&s, -1, 1);
	CUDA_OK(cudaMalloc(&dx, sizeof(hx)));
	CUDA_OK(cudaMalloc(&dy, sizeof(hy)));
	CUDA_OK(cudaMemcpy(dx, hx, sizeof(hx), cudaMemcpyHostToDevice));
	CUDA_LAUNCH(B, N, dyn * sizeof(float), 0, k_shared<N>)(dx, dy, dyn);
	CUDA_OK(cudaGetLastError());
	CUDA_OK(cudaMemcpy(hy, dy, sizeof(hy), cudaMemcpyDeviceToHost));
	for (int b = 0; b < B; b++)
		for (int t = 0; t < N; t++) {
			float want = hx[b * N + N - 1 - t];
			if (t < dyn)
				want += 2.0f * hx[b * N + dyn - 1 - t];
			ck_assert_float_eq(hy[b * N + t], want);
		}
	cudaFree(dx);
	cudaFree(dy);
}
END_TEST

/* ---- __syncthreads_count / _and / _or ---- */
__global__ void k_barrier_ops(const int *pred, int *out)
{
	int p = pred[threadIdx.x];
	int c = __syncthreads_count(p);
	int a = __syncthreads_and(p);
	int o = __syncthreads_or(p);
	out[3 * threadIdx.x] = c;
	out[3 * threadIdx.x + 1] = a;
	out[3 * threadIdx.x + 2] = o;
}

START_TEST(test_barrier_ops)
{
	uint64_t s = test_seed("barrier_ops");
	const int n = 200;
	int hp[n], ho[3 * n], *dp, *dout;
	CUDA_OK(cudaMalloc(&dp, sizeof(hp)));
	CUDA_OK(cudaMalloc(&dout, sizeof(ho)));
	for (int round = 0; round < 3; round++) {
		int count = 0;
		for (int i = 0; i < n; i++) {
			hp[i] = round == 1 ? 1 : round == 2 ? 0 : (int)(test_rng(&s) % 3 == 0) * (1 + (int)(test_rng(&s) % 7));
			count += hp[i] != 0;
		}
		CUDA_OK(cudaMemcpy(dp, hp, sizeof(hp), cudaMemcpyHostToDevice));
		CUDA_LAUNCH(1, n, 0, 0, k_barrier_ops)(dp, dout);
		CUDA_OK(cudaGetLastError());
		CUDA_OK(cudaMemcpy(ho, dout, sizeof(ho), cudaMemcpyDeviceToHost));
		for (int i = 0; i < n; i++) {
			ck_assert_int_eq(ho[3 * i], count);
			ck_assert_int_eq(ho[3 * i + 1] != 0, count == n);
			ck_assert_int_eq(ho[3 * i + 2] != 0, count > 0);
		}
	}
	cudaFree(dp);
	cudaFree(dout);
}
END_TEST

/* ---- shuffles ---- */
/* arg[lane] is the source lane, delta or xor mask for that lane. */
__global__ void k_shuffles(const long long *v, const int *arg, long long *out, int width)
{
	int lane = threadIdx.x;
	long long x = v[lane];
	out[lane] = __shfl_sync(0xffffffffu, x, arg[lane], width);
	out[32 + lane] = __shfl_up_sync(0xffffffffu, x, (unsigned)arg[32 + lane], width);
	out[64 + lane] = __shfl_down_sync(0xffffffffu, x, (unsigned)arg[64 + lane], width);
	out[96 + lane] = __shfl_xor_sync(0xffffffffu, x, arg[96 + lane], width);
	float f = (float)x;
	out[128 + lane] = (long long)__shfl_xor_sync(0xffffffffu, f, 1, width);
}

START_TEST(test_shuffles)
{
	uint64_t s = test_seed("shuffles");
	long long hv[32], ho[160], *dv, *dout;
	int ha[128], *da;
	CUDA_OK(cudaMalloc(&dv, sizeof(hv)));
	CUDA_OK(cudaMalloc(&da, sizeof(ha)));
	CUDA_OK(cudaMalloc(&dout, sizeof(ho)));
	for (int width = 1; width <= 32; width *= 2) {
		for (int l = 0; l < 32; l++) {
			hv[l] = (long long)(test_rng(&s) >> 20) - (1ll << 43);
			ha[l] = (int)(test_rng(&s) % 64);		/* beyond width wraps */
			ha[32 + l] = (int)(test_rng(&s) % (width + 2));
			ha[64 + l] = (int)(test_rng(&s) % (width + 2));
			ha[96 + l] = (int)(test_rng(&s) % 32);
		}
		CUDA_OK(cudaMemcpy(dv, hv, sizeof(hv), cudaMemcpyHostToDevice));
		CUDA_OK(cudaMemcpy(da, ha, sizeof(ha), cudaMemcpyHostToDevice));
		CUDA_LAUNCH(1, 32, 0, 0, k_shuffles)(dv, da, dout, width);
		CUDA_OK(cudaGetLastError());
		CUDA_OK(cudaMemcpy(ho, dout, sizeof(ho), cudaMemcpyDeviceToHost));
		for (int l = 0; l < 32; l++) {
			int seg = l / width * width;
			/* guide: "srcLane outside [0:width-1] ... modulo width" */
			ck_assert_int_eq(ho[l], hv[seg + ha[l] % width]);
			/* up: lanes below delta within their segment keep their value */
			int up = l % width >= ha[32 + l] ? l - ha[32 + l] : l;
			ck_assert_int_eq(ho[32 + l], hv[up]);
			int down = l % width + ha[64 + l] < width ? l + ha[64 + l] : l;
			ck_assert_int_eq(ho[64 + l], hv[down]);
			/* xor: a later segment is out of reach, an earlier one is not */
			int x = l ^ ha[96 + l];
			if (x >= seg + width)
				x = l;
			ck_assert_int_eq(ho[96 + l], hv[x]);
			int x1 = (l ^ 1) >= seg + width ? l : (l ^ 1);
			ck_assert_int_eq(ho[128 + l], (long long)(float)hv[x1]);
		}
	}
	cudaFree(dv);
	cudaFree(da);
	cudaFree(dout);
}
END_TEST

/* ---- votes, warp reductions, match; on two half-warps separately ---- */
__global__ void k_votes(const unsigned *v, unsigned *out)
{
	int lane = threadIdx.x;
	unsigned mask = lane < 16 ? 0x0000ffffu : 0xffff0000u;
	unsigned x = v[lane];
	unsigned *o = out + 10 * lane;
	o[0] = __ballot_sync(mask, x & 1);
	o[1] = (unsigned)__all_sync(mask, x & 1);
	o[2] = (unsigned)__any_sync(mask, x & 1);
	o[3] = __reduce_add_sync(mask, x);
	o[4] = __reduce_min_sync(mask, x);
	o[5] = (unsigned)__reduce_max_sync(mask, (int)x);
	o[6] = __reduce_and_sync(mask, x);
	o[7] = __reduce_or_sync(mask, x);
	o[8] = __reduce_xor_sync(mask, x);
	o[9] = __match_any_sync(mask, x % 3);
}

START_TEST(test_votes)
{
	uint64_t s = test_seed("votes");
	unsigned hv[32], ho[320], *dv, *dout;
	CUDA_OK(cudaMalloc(&dv, sizeof(hv)));
	CUDA_OK(cudaMalloc(&dout, sizeof(ho)));
	for (int l = 0; l < 32; l++)
		hv[l] = (unsigned)test_rng(&s);
	hv[20] |= 0x80000000u;	/* a negative int for the signed max */
	CUDA_OK(cudaMemcpy(dv, hv, sizeof(hv), cudaMemcpyHostToDevice));
	CUDA_LAUNCH(1, 32, 0, 0, k_votes)(dv, dout);
	CUDA_OK(cudaGetLastError());
	CUDA_OK(cudaMemcpy(ho, dout, sizeof(ho), cudaMemcpyDeviceToHost));
	for (int l = 0; l < 32; l++) {
		int lo = l < 16 ? 0 : 16;
		unsigned ballot = 0, add = 0, mn = 0xffffffffu, a = 0xffffffffu, o = 0, x = 0, match = 0;
		int mx = INT32_MIN;
		for (int k = lo; k < lo + 16; k++) {
			ballot |= (hv[k] & 1) << k;
			add += hv[k];
			mn = hv[k] < mn ? hv[k] : mn;
			mx = (int)hv[k] > mx ? (int)hv[k] : mx;
			a &= hv[k];
			o |= hv[k];
			x ^= hv[k];
			if (hv[k] % 3 == hv[l] % 3)
				match |= 1u << k;
		}
		unsigned mask = l < 16 ? 0x0000ffffu : 0xffff0000u;
		ck_assert_uint_eq(ho[10 * l], ballot);
		ck_assert_uint_eq(ho[10 * l + 1], ballot == mask);
		ck_assert_uint_eq(ho[10 * l + 2], ballot != 0);
		ck_assert_uint_eq(ho[10 * l + 3], add);
		ck_assert_uint_eq(ho[10 * l + 4], mn);
		ck_assert_uint_eq(ho[10 * l + 5], (unsigned)mx);
		ck_assert_uint_eq(ho[10 * l + 6], a);
		ck_assert_uint_eq(ho[10 * l + 7], o);
		ck_assert_uint_eq(ho[10 * l + 8], x);
		ck_assert_uint_eq(ho[10 * l + 9], match);
	}
	cudaFree(dv);
	cudaFree(dout);
}
END_TEST

/* ---- atomics: a histogram in shared memory, merged into global ---- */
__global__ void k_histogram(const unsigned *x, int n, unsigned *hist, int *maxv)
{
	__shared__ unsigned local[16];
	if (threadIdx.x < 16)
		local[threadIdx.x] = 0;
	__syncthreads();
	for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
		atomicAdd(&local[x[i] % 16], 1u);
		atomicMax(maxv, (int)(x[i] >> 8));
	}
	__syncthreads();
	if (threadIdx.x < 16)
		atomicAdd(&hist[threadIdx.x], local[threadIdx.x]);
}

START_TEST(test_atomics)
{
	uint64_t s = test_seed("atomics");
	const int n = 5000;
	unsigned *hx = (unsigned *)malloc(n * 4), hh[16], want[16] = {0}, *dx, *dh;
	int hm, wantm = 0, *dm;
	for (int i = 0; i < n; i++) {
		hx[i] = (unsigned)(test_rng(&s) >> 40);
		want[hx[i] % 16]++;
		wantm = (int)(hx[i] >> 8) > wantm ? (int)(hx[i] >> 8) : wantm;
	}
	CUDA_OK(cudaMalloc(&dx, n * 4));
	CUDA_OK(cudaMalloc(&dh, sizeof(hh)));
	CUDA_OK(cudaMalloc(&dm, sizeof(int)));
	CUDA_OK(cudaMemcpy(dx, hx, n * 4, cudaMemcpyHostToDevice));
	CUDA_OK(cudaMemset(dh, 0, sizeof(hh)));
	CUDA_OK(cudaMemset(dm, 0, sizeof(int)));
	CUDA_LAUNCH(7, 96, 0, 0, k_histogram)(dx, n, dh, dm);
	CUDA_OK(cudaGetLastError());
	CUDA_OK(cudaMemcpy(hh, dh, sizeof(hh), cudaMemcpyDeviceToHost));
	CUDA_OK(cudaMemcpy(&hm, dm, sizeof(int), cudaMemcpyDeviceToHost));
	for (int i = 0; i < 16; i++)
		ck_assert_uint_eq(hh[i], want[i]);
	ck_assert_int_eq(hm, wantm);
	cudaFree(dx);
	cudaFree(dh);
	cudaFree(dm);
	free(hx);
}
END_TEST

/* ---- bf16 / half conversions and arithmetic on the device ---- */
__global__ void k_convert(const float *x, int n, unsigned short *bf, unsigned short *hf)
{
	for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
		bf[i] = __bfloat16_as_ushort(__float2bfloat16(x[i]));
		hf[i] = __half_as_ushort(__float2half(x[i]));
	}
}

__global__ void k_bf16_arith(const unsigned short *a, const unsigned short *b, const unsigned short *c, int n, unsigned short *out)
{
	int i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i >= n)
		return;
	__nv_bfloat16 x = __ushort_as_bfloat16(a[i]), y = __ushort_as_bfloat16(b[i]), z = __ushort_as_bfloat16(c[i]);
	out[3 * i] = __bfloat16_as_ushort(__hadd(x, y));
	out[3 * i + 1] = __bfloat16_as_ushort(__hmul(x, y));
	out[3 * i + 2] = __bfloat16_as_ushort(__hfma(x, y, z));
}

static double bf16_value(unsigned short h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;
	memcpy(&f, &u, 4);
	return f;
}

static double half_value(unsigned short h)
{
	int e = (h >> 10) & 31, m = h & 1023;
	double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
	return h & 0x8000 ? -v : v;
}

/* The nearest value of a 16-bit format to x, ties to the even code, by
 * search over candidates (independent of any bit trick). */
static unsigned short nearest16(double x, double (*val)(unsigned short), unsigned short nan_code)
{
	if (x != x)
		return nan_code;
	unsigned short best = 0;
	double bd = INFINITY;
	for (unsigned c = 0; c < 65536; c++) {
		double v = val((unsigned short)c);
		if (v != v || (signbit(v) != signbit(x) && x != 0))
			continue;
		double d = fabs(v - x);
		if (isinf(v) && !isinf(x))
			continue;
		if (d < bd || (d == bd && !(c & 1) && (best & 1))) {
			bd = d;
			best = (unsigned short)c;
		}
	}
	return best;
}

/* Overflow to infinity under round-to-nearest: past max + half an ulp. */
static unsigned short round16(double x, double (*val)(unsigned short), unsigned short nan_code, double maxv, double half_ulp_at_max,
			      unsigned short inf_code)
{
	if (x == x && fabs(x) >= maxv + half_ulp_at_max)
		return (unsigned short)(inf_code | (x < 0 ? 0x8000 : 0));
	if (x == 0)
		return signbit(x) ? 0x8000 : 0;
	return nearest16(x, val, nan_code);
}

START_TEST(test_bf16_half_rounding)
{
	uint64_t s = test_seed("bf16_half_rounding");
	const int n = 600;
	float hx[n];
	unsigned short hb[n], hh[n], *db, *dh;
	float *dx;
	for (int i = 0; i < n; i++) {
		uint32_t u;
		if (i % 3 == 0) {
			/* values near half's range, including subnormals */
			float f = ldexpf(test_uniform(&s, 1, 2), (int)(test_rng(&s) % 44) - 28);
			hx[i] = test_rng(&s) & 1 ? -f : f;
			continue;
		}
		u = (uint32_t)test_rng(&s);
		if (i % 3 == 1)
			u = (u & 0xffff0000u) | 0x8000u;	/* exact bf16 ties */
		memcpy(&hx[i], &u, 4);
	}
	hx[0] = INFINITY;
	hx[1] = -INFINITY;
	hx[2] = NAN;
	hx[3] = 65519.0f;	/* rounds to half max */
	hx[4] = 65520.0f;	/* rounds to half inf */
	hx[5] = 0x1.fep127f * 1.0f + 0x1p119f;	/* bf16 max + half ulp: to inf */
	CUDA_OK(cudaMalloc(&dx, sizeof(hx)));
	CUDA_OK(cudaMalloc(&db, sizeof(hb)));
	CUDA_OK(cudaMalloc(&dh, sizeof(hh)));
	CUDA_OK(cudaMemcpy(dx, hx, sizeof(hx), cudaMemcpyHostToDevice));
	CUDA_LAUNCH(3, 64, 0, 0, k_convert)(dx, n, db, dh);
	CUDA_OK(cudaGetLastError());
	CUDA_OK(cudaMemcpy(hb, db, sizeof(hb), cudaMemcpyDeviceToHost));
	CUDA_OK(cudaMemcpy(hh, dh, sizeof(hh), cudaMemcpyDeviceToHost));
	for (int i = 0; i < n; i++) {
		double x = hx[i];
		unsigned short wb = round16(x, bf16_value, 0x7fff, 0x1.fep127, 0x1p119, 0x7f80);
		unsigned short wh = round16(x, half_value, 0x7fff, 65504.0, 16.0, 0x7c00);
		ck_assert_msg(hb[i] == wb, "bf16(%a) = 0x%04x, want 0x%04x", x, hb[i], wb);
		ck_assert_msg(hh[i] == wh, "half(%a) = 0x%04x, want 0x%04x", x, hh[i], wh);
	}
	cudaFree(dx);
	cudaFree(db);
	cudaFree(dh);
}
END_TEST

START_TEST(test_bf16_arith)
{
	uint64_t s = test_seed("bf16_arith");
	const int n = 300;
	unsigned short ha[n], hb[n], hc[n], ho[3 * n], *da, *dbb, *dc, *dout;
	for (int i = 0; i < n; i++) {
		/* finite values with exponents close enough for sums to need rounding */
		ha[i] = (unsigned short)((test_rng(&s) & 0x80ffu) | (0x3c00u + (test_rng(&s) % 0x0600u)));
		hb[i] = (unsigned short)((test_rng(&s) & 0x80ffu) | (0x3c00u + (test_rng(&s) % 0x0600u)));
		hc[i] = (unsigned short)((test_rng(&s) & 0x80ffu) | (0x3c00u + (test_rng(&s) % 0x0600u)));
	}
	CUDA_OK(cudaMalloc(&da, sizeof(ha)));
	CUDA_OK(cudaMalloc(&dbb, sizeof(hb)));
	CUDA_OK(cudaMalloc(&dc, sizeof(hc)));
	CUDA_OK(cudaMalloc(&dout, sizeof(ho)));
	CUDA_OK(cudaMemcpy(da, ha, sizeof(ha), cudaMemcpyHostToDevice));
	CUDA_OK(cudaMemcpy(dbb, hb, sizeof(hb), cudaMemcpyHostToDevice));
	CUDA_OK(cudaMemcpy(dc, hc, sizeof(hc), cudaMemcpyHostToDevice));
	CUDA_LAUNCH(5, 64, 0, 0, k_bf16_arith)(da, dbb, dc, n, dout);
	CUDA_OK(cudaGetLastError());
	CUDA_OK(cudaMemcpy(ho, dout, sizeof(ho), cudaMemcpyDeviceToHost));
	for (int i = 0; i < n; i++) {
		double a = bf16_value(ha[i]), b = bf16_value(hb[i]), c = bf16_value(hc[i]);
		/* exact in double: 8-bit significands, exponents within 2^12 */
		unsigned short w0 = nearest16(a + b, bf16_value, 0x7fff);
		unsigned short w1 = nearest16(a * b, bf16_value, 0x7fff);
		unsigned short w2 = nearest16(a * b + c, bf16_value, 0x7fff);
		ck_assert_msg(ho[3 * i] == w0, "%a + %a = 0x%04x, want 0x%04x", a, b, ho[3 * i], w0);
		ck_assert_msg(ho[3 * i + 1] == w1, "%a * %a = 0x%04x, want 0x%04x", a, b, ho[3 * i + 1], w1);
		ck_assert_msg(ho[3 * i + 2] == w2, "fma(%a, %a, %a) = 0x%04x, want 0x%04x", a, b, c, ho[3 * i + 2], w2);
	}
	cudaFree(da);
	cudaFree(dbb);
	cudaFree(dc);
	cudaFree(dout);
}
END_TEST

/* ---- host API errors that a GPU reports too ---- */
__global__ void k_noop(int *x) { if (x) x[0] = 1; }

/* Static __shared__ memory counts against the 48 KiB a block may use without
 * the opt-in, as on the hardware: 1 KiB static plus 47.5 KiB dynamic fails
 * to launch, plus 47 KiB launches; with the opt-in, the attribute bounds the
 * dynamic part alone. */
__global__ void k_static_smem(int *x, int n)
{
	__shared__ int st[256];
	DYNAMIC_SHARED(int, dyn);
	st[threadIdx.x] = (int)threadIdx.x;
	dyn[threadIdx.x] = n;
	__syncthreads();
	x[threadIdx.x] = st[(threadIdx.x + 1) % 256] + dyn[(threadIdx.x + 3) % 256];
}

START_TEST(test_static_shared_counts)
{
	int *d;
	CUDA_OK(cudaMalloc(&d, 256 * sizeof(int)));
#ifdef ANATOMY_EMU
	emu_set_quiet(1);
#endif
	cudaGetLastError();
	CUDA_LAUNCH(1, 256, 48 * 1024 - 512, 0, k_static_smem)(d, 5);
	ck_assert_int_eq(cudaGetLastError(), cudaErrorInvalidValue);
	CUDA_LAUNCH(1, 256, 47 * 1024, 0, k_static_smem)(d, 5);
	CUDA_OK(cudaGetLastError());
	CUDA_OK(cudaDeviceSynchronize());
	int h[256];
	CUDA_OK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
	ck_assert_int_eq(h[0], 1 + 5);
	CUDA_OK(cudaFuncSetAttribute(k_static_smem, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024));
	CUDA_LAUNCH(1, 256, 64 * 1024, 0, k_static_smem)(d, 6);
	CUDA_OK(cudaGetLastError());
	CUDA_LAUNCH(1, 256, 64 * 1024 + 16, 0, k_static_smem)(d, 6);
	ck_assert_int_eq(cudaGetLastError(), cudaErrorInvalidValue);
	CUDA_OK(cudaDeviceSynchronize());
#ifdef ANATOMY_EMU
	emu_set_quiet(0);
	emu_clear_report();
#endif
	cudaFree(d);
}
END_TEST

/* A block whose threads need more registers than an SM has fails to launch,
 * as on the GPU: 128 registers (as ptxas might report) x 1024 threads is
 * 131,072 > 65,536; x 512 fits. The count comes from ptxas (make test runs
 * the parity suites with every kernel's), here set by hand. */
__global__ void k_regs_heavy(int *x) { x[threadIdx.x] = (int)threadIdx.x; }

#ifdef ANATOMY_EMU
START_TEST(test_register_limit)
{
	int *d;
	CUDA_OK(cudaMalloc(&d, 1024 * sizeof(int)));
	emu_set_kernel_regs("k_regs_heavy", 128);
	emu_set_quiet(1);
	cudaGetLastError();
	CUDA_LAUNCH(1, 1024, 0, 0, k_regs_heavy)(d);
	ck_assert_int_eq(cudaGetLastError(), cudaErrorLaunchOutOfResources);
	ck_assert_msg(strstr(emu_last_report(), "1024 threads of 128 registers"), "%s", emu_last_report());
	emu_set_quiet(0);
	emu_clear_report();
	CUDA_LAUNCH(1, 512, 0, 0, k_regs_heavy)(d);
	CUDA_OK(cudaGetLastError());
	emu_set_kernel_regs("k_regs_heavy", 32); /* 1024 x 32 fits */
	CUDA_LAUNCH(1, 1024, 0, 0, k_regs_heavy)(d);
	CUDA_OK(cudaGetLastError());
	CUDA_OK(cudaDeviceSynchronize());
	cudaFree(d);
}
END_TEST

/* Resident blocks per SM as the CUDA occupancy calculator gives them for
 * sm_90 (64K registers allocated per warp in units of 256, 228 KiB of shared
 * memory less 1 KiB per block, 64 warps, 32 blocks), worked by hand. */
__global__ void k_occupancy(int *x) { x[threadIdx.x] = (int)threadIdx.x; }

START_TEST(test_occupancy)
{
	int n = -1;
	emu_set_quiet(1);
	/* no register count: no figure */
	ck_assert_int_eq(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k_occupancy, 128, 0),
			 cudaErrorInvalidDeviceFunction);
	emu_set_quiet(0);
	emu_clear_report();
	static const struct { int regs, threads; size_t smem; int want; } c[] = {
		{ 168, 128, 0, 3 },	   /* 5376 a warp: 12 warps of registers */
		{ 255, 128, 0, 2 },	   /* 8192 a warp: 8 warps */
		{ 168, 256, 0, 1 },
		{ 32, 128, 0, 16 },	   /* 64 warps of registers, 16 blocks of 4 */
		{ 16, 32, 0, 32 },	   /* the block limit */
		{ 64, 128, 100 * 1024, 2 }, /* 101 KiB a block */
		{ 64, 128, 120 * 1024, 1 },
		{ 64, 128, 228 * 1024, 0 }, /* more than the opt-in allows */
	};
	CUDA_OK(cudaFuncSetAttribute(k_occupancy, cudaFuncAttributeMaxDynamicSharedMemorySize, 227 * 1024));
	for (unsigned i = 0; i < sizeof c / sizeof c[0]; i++) {
		emu_set_kernel_regs("k_occupancy", c[i].regs);
		CUDA_OK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k_occupancy, c[i].threads, c[i].smem));
		ck_assert_msg(n == c[i].want, "%d registers x %d threads, %zu bytes: %d blocks, want %d", c[i].regs,
			      c[i].threads, c[i].smem, n, c[i].want);
	}
}
END_TEST
#endif

START_TEST(test_api_errors)
{
	int *d;
	CUDA_OK(cudaMalloc(&d, 64));
#ifdef ANATOMY_EMU
	emu_set_quiet(1);
#endif
	cudaGetLastError();
	CUDA_LAUNCH(1, 2048, 0, 0, k_noop)(d);
	ck_assert_int_eq(cudaGetLastError(), cudaErrorInvalidConfiguration);
	CUDA_LAUNCH(1, dim3(32, 32, 2), 0, 0, k_noop)(d);
	ck_assert_int_eq(cudaGetLastError(), cudaErrorInvalidConfiguration);
	CUDA_LAUNCH(1, 32, 100 * 1024, 0, k_noop)(d);
	ck_assert_int_ne(cudaGetLastError(), cudaSuccess);
	CUDA_OK(cudaFuncSetAttribute(k_noop, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024));
	CUDA_LAUNCH(1, 32, 100 * 1024, 0, k_noop)(d);
	CUDA_OK(cudaGetLastError());
	CUDA_OK(cudaDeviceSynchronize());
	ck_assert_int_ne(cudaMemcpy(d, d, 1, (cudaMemcpyKind)77), cudaSuccess);
	cudaGetLastError();
#ifdef ANATOMY_EMU
	/* stricter than a GPU: these are caught where they happen */
	int h[32];
	ck_assert_int_eq(cudaMemcpy(d, h, sizeof(h), cudaMemcpyHostToDevice), cudaErrorInvalidValue);
	ck_assert(strstr(emu_last_report(), "allocation has 64 bytes"));
	CUDA_LAUNCH(1, 32, 0, 0, k_noop)(h);
	ck_assert_int_eq(cudaGetLastError(), cudaErrorIllegalAddress);
	ck_assert(strstr(emu_last_report(), "argument 1"));
	CUDA_OK(cudaFree(d));
	ck_assert_int_eq(cudaFree(d), cudaErrorInvalidValue);
	emu_set_quiet(0);
#else
	cudaFree(d);
#endif
}
END_TEST

/* ---- the cost of a context switch ---- */
__global__ void k_barriers(int rounds, int *out)
{
	int acc = 0;
	for (int r = 0; r < rounds; r++) {
		acc += r ^ threadIdx.x;
		__syncthreads();
	}
	out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}

START_TEST(test_switch_cost)
{
	int *d;
	const int rounds = 400, threads = 256, blocks = 4;
	CUDA_OK(cudaMalloc(&d, blocks * threads * sizeof(int)));
	cudaEvent_t a, b;
	CUDA_OK(cudaEventCreate(&a));
	CUDA_OK(cudaEventCreate(&b));
	CUDA_OK(cudaEventRecord(a, 0));
#ifdef ANATOMY_EMU
	uint64_t sw0 = emu_switch_count();
#endif
	CUDA_LAUNCH(blocks, threads, 0, 0, k_barriers)(rounds, d);
	CUDA_OK(cudaGetLastError());
	CUDA_OK(cudaEventRecord(b, 0));
	CUDA_OK(cudaEventSynchronize(b));
	float ms;
	CUDA_OK(cudaEventElapsedTime(&ms, a, b));
	int h[threads];
	CUDA_OK(cudaMemcpy(h, d + threads, sizeof(h), cudaMemcpyDeviceToHost));
	for (int t = 0; t < threads; t++) {
		int acc = 0;
		for (int r = 0; r < rounds; r++)
			acc += r ^ t;
		ck_assert_int_eq(h[t], acc);
	}
#ifdef ANATOMY_EMU
	uint64_t sw = emu_switch_count() - sw0;
	ck_assert_uint_ge(sw, (uint64_t)2 * rounds * threads * blocks);
	printf("  context switch: %.1f ns (%llu switches in %.1f ms, barrier-bound kernel)\n",
	       ms * 1e6 / (double)sw, (unsigned long long)sw, ms);
#else
	printf("  native: %.3f ms for %d barriers x %d blocks\n", ms, rounds, blocks);
#endif
	cudaEventDestroy(a);
	cudaEventDestroy(b);
	cudaFree(d);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("emu_runtime");
	TCase *tc = tcase_create("runtime");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_indices);
	tcase_add_test(tc, test_shared);
	tcase_add_test(tc, test_barrier_ops);
	tcase_add_test(tc, test_shuffles);
	tcase_add_test(tc, test_votes);
	tcase_add_test(tc, test_atomics);
	tcase_add_test(tc, test_bf16_half_rounding);
	tcase_add_test(tc, test_bf16_arith);
	tcase_add_test(tc, test_api_errors);
	tcase_add_test(tc, test_static_shared_counts);
#ifdef ANATOMY_EMU
	tcase_add_test(tc, test_register_limit);
	tcase_add_test(tc, test_occupancy);
#endif
	tcase_add_test(tc, test_switch_cost);
	suite_add_tcase(s, tc);
	return run_suite(s);
}
