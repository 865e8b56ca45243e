/* tests/emu/test_emu_bugs.cu: kernels written wrong on purpose.
 *
 * Each must be caught by the emulator with a report that names the kernel
 * and points at the offending line (found here by its BUG: marker comment),
 * or, for bugs that only change values (a wrong shuffle offset, a transposed
 * mma fragment), must produce the wrong answer the GPU would, so the test
 * comparing against the CPU reference fails. A GPU would hang, race or
 * corrupt memory silently on most of these, so the natively built binary
 * only compiles them. The correct twin of each tricky pattern runs too, to
 * show the detector does not cry wolf. */
#include "emu_test.h"
#include "ptx.cuh"

/* ---- kernels ---- */
__global__ void k_missing_barrier(const float *x, float *y)
{
	__shared__ float s[128];
	int t = threadIdx.x;
	s[t] = 0.0f;
	__syncthreads();
	s[t] = x[blockIdx.x * 128 + t];
	y[blockIdx.x * 128 + t] = s[(t + 1) % 128]; /* BUG: missing-barrier read */
}

__global__ void k_with_barrier(const float *x, float *y)
{
	__shared__ float s[128];
	int t = threadIdx.x;
	s[t] = x[blockIdx.x * 128 + t];
	__syncthreads();
	y[blockIdx.x * 128 + t] = s[(t + 1) % 128];
}

/* Warp-synchronous tree sum in shared memory: correct only with __syncwarp. */
template <int SYNC> __global__ void k_warp_tree(const int *x, int *y)
{
	__shared__ int s[32];
	int lane = threadIdx.x;
	s[lane] = 0;
	__syncthreads();
	s[lane] = x[lane];
	if (SYNC)
		__syncwarp();
	for (int off = 16; off > 0; off /= 2) {
		int v = lane < off ? s[lane + off] : 0; /* BUG: unsynced-warp read */
		if (SYNC)
			__syncwarp();
		if (lane < off)
			s[lane] += v;
		if (SYNC)
			__syncwarp();
	}
	if (lane == 0)
		y[0] = s[0];
}

__global__ void k_shfl_outside_mask(int *x)
{
	int lane = threadIdx.x & 31, v = x[threadIdx.x];
	if (lane < 16)
		v += __shfl_sync(0x0000ffffu, v, lane + 8); /* BUG: shuffle-outside-mask */
	x[threadIdx.x] = v;
}

__global__ void k_warp_sum_wrong_offset(const int *x, int *y)
{
	int v = x[threadIdx.x];
	for (int off = 32; off > 0; off /= 2)	/* BUG: starts at 32, not 16 */
		v += __shfl_down_sync(0xffffffffu, v, off);
	if (threadIdx.x == 0)
		y[0] = v;
}

/* D = A * B for one 16x8x16 tile; B is read transposed when WRONG. */
template <int WRONG> __global__ void k_mma_tile(const __nv_bfloat16 *A, const __nv_bfloat16 *B, float *D)
{
	int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
	uint32_t a[4], b[2];
	for (int r = 0; r < 4; r++) {
		int row = g + (r & 1) * 8, col = 2 * t + (r >> 1) * 8;
		a[r] = pack_bf16x2(A[row * 16 + col], A[row * 16 + col + 1]);
	}
	for (int r = 0; r < 2; r++) {
		int k = 2 * t + r * 8;
		if (WRONG)	/* BUG: B fragment taken row-wise, i.e. transposed */
			b[r] = pack_bf16x2(B[g * 16 + k], B[g * 16 + k + 1]);
		else
			b[r] = pack_bf16x2(B[k * 8 + g], B[(k + 1) * 8 + g]);
	}
	float c[4] = {0, 0, 0, 0}, d[4];
	mma_m16n8k16_bf16(d, a, b, c);
	for (int i = 0; i < 4; i++)
		D[(g + (i >> 1) * 8) * 8 + 2 * t + (i & 1)] = d[i];
}

__global__ void k_oob_store(const float *x, float *y, int n)
{
	int i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i <= n)	/* off by one */
		y[i] = 2.0f * x[i < n ? i : 0]; /* BUG: oob-store */
}

__global__ void k_shared_oob(float *y)
{
	__shared__ float s[64];
	int t = threadIdx.x;
	s[t + 1] = (float)t; /* BUG: shared-oob */
	__syncthreads();
	y[t] = s[t];
}

__global__ void k_dynamic_shared_oob(float *y, int n)
{
	DYNAMIC_SHARED(float, s);
	int t = threadIdx.x;
	s[t] = (float)t;
	__syncthreads();
	y[t] = s[n]; /* BUG: dynamic-oob */
}

__global__ void k_divergent_barrier(float *y)
{
	int t = threadIdx.x;
	y[t] = (float)t;
	if (t < 16)
		__syncthreads(); /* BUG: divergent-barrier */
	y[t] += 1.0f;
}

__global__ void k_two_barriers(float *y)
{
	int t = threadIdx.x;
	if (t % 2) {
		y[t] = 1.0f;
		__syncthreads(); /* BUG: odd-barrier */
	} else {
		y[t] = 2.0f;
		__syncthreads(); /* BUG: even-barrier */
	}
}

__global__ void k_early_exit_shuffle(int *x)
{
	int lane = threadIdx.x;
	if (lane == 5)
		return;
	x[lane] = __shfl_xor_sync(0xffffffffu, x[lane], 1); /* BUG: shuffle-after-exit */
}

__global__ void k_cp_async_no_wait(const float4 *x, float *y)
{
	__shared__ float4 s[32];
	int t = threadIdx.x;
	cp_async_16(&s[t], &x[t]);
	cp_async_commit();
	float v = s[t].x; /* BUG: read-before-wait */
	cp_async_wait<0>();
	y[t] = v + s[t].y;
}

/* Rewrites a cp.async's global source before the wait that completes the
 * copy: the hardware may copy the old value or the new one. The twin
 * rewrites it after the wait. */
template <int AFTER> __global__ void k_cp_async_source_rewrite(float4 *x, float *y)
{
	__shared__ float4 s[32];
	int t = threadIdx.x;
	cp_async_16(&s[t], &x[t]); /* BUG: source-rewritten-in-flight */
	cp_async_commit();
	if (!AFTER)
		x[t].x += 1.0f;
	cp_async_wait<0>();
	if (AFTER)
		x[t].x += 1.0f;
	y[t] = s[t].x;
}

__global__ void k_uninit_shared(float *y)
{
	__shared__ float s[64];
	if (threadIdx.x < 32)
		s[threadIdx.x] = 1.0f;
	__syncthreads();
	y[threadIdx.x] = s[threadIdx.x]; /* BUG: uninit-read */
}

__global__ void k_use_after_free(float *y) { y[threadIdx.x] = 1.0f; /* BUG: after-free */ }

#ifdef ANATOMY_EMU

/* The report must name the kernel and the marker's line in this file. */
static void expect_report(const char *kernel, const char *kind, const char *marker)
{
	const char *r = emu_last_report();
	char where[128];
	ck_assert_msg(strstr(r, kernel), "report does not name %s: %s", kernel, r);
	ck_assert_msg(strstr(r, kind), "report is not about '%s': %s", kind, r);
	if (marker) {
		int line = marker_line(__FILE__, marker);
		ck_assert_int_gt(line, 0);
		snprintf(where, sizeof(where), "test_emu_bugs.cu:%d", line);
		ck_assert_msg(strstr(r, where), "report does not point at %s: %s", where, r);
	}
	printf("  caught: %s\n", r);
}

static float *upload(const float *h, size_t n)
{
	float *d;
	CUDA_OK(cudaMalloc(&d, n * sizeof(float)));
	CUDA_OK(cudaMemcpy(d, h, n * sizeof(float), cudaMemcpyHostToDevice));
	return d;
}

static void random_floats(float *h, size_t n, uint64_t *s)
{
	for (size_t i = 0; i < n; i++)
		h[i] = test_uniform(s, -1, 1);
}

START_TEST(test_missing_barrier)
{
	uint64_t s = test_seed("missing_barrier");
	float hx[256];
	random_floats(hx, 256, &s);
	float *dx = upload(hx, 256), *dy;
	CUDA_OK(cudaMalloc(&dy, sizeof(hx)));
	emu_set_quiet(1);
	for (uint64_t seed = 1; seed <= 3; seed++) {
		emu_set_seed(seed);
		CUDA_LAUNCH(2, 128, 0, 0, k_missing_barrier)(dx, dy);
		ck_assert_int_eq(cudaGetLastError(), cudaErrorLaunchFailure);
		expect_report("k_missing_barrier", "data race on shared memory", "BUG: missing-barrier read");
	}
	emu_set_seed(1);
	emu_set_quiet(0);
	CUDA_LAUNCH(2, 128, 0, 0, k_with_barrier)(dx, dy);
	CUDA_OK(cudaGetLastError());
	cudaFree(dx);
	cudaFree(dy);
}
END_TEST

START_TEST(test_warp_sync)
{
	uint64_t s = test_seed("warp_sync");
	int hx[32], want = 0, got, *dx, *dy;
	for (int i = 0; i < 32; i++)
		want += hx[i] = (int)(test_rng(&s) % 1000);
	CUDA_OK(cudaMalloc(&dx, sizeof(hx)));
	CUDA_OK(cudaMalloc(&dy, sizeof(int)));
	CUDA_OK(cudaMemcpy(dx, hx, sizeof(hx), cudaMemcpyHostToDevice));
	CUDA_LAUNCH(1, 32, 0, 0, k_warp_tree<1>)(dx, dy);
	CUDA_OK(cudaGetLastError());
	CUDA_OK(cudaMemcpy(&got, dy, sizeof(int), cudaMemcpyDeviceToHost));
	ck_assert_int_eq(got, want);
	emu_set_quiet(1);
	CUDA_LAUNCH(1, 32, 0, 0, k_warp_tree<0>)(dx, dy);
	ck_assert_int_eq(cudaGetLastError(), cudaErrorLaunchFailure);
	emu_set_quiet(0);
	expect_report("k_warp_tree<0>", "data race on shared memory", "BUG: unsynced-warp read");
	cudaFree(dx);
	cudaFree(dy);
}
END_TEST

START_TEST(test_shuffle_outside_mask)
{
	int hx[32] = {0}, *dx;
	CUDA_OK(cudaMalloc(&dx, sizeof(hx)));
	CUDA_OK(cudaMemcpy(dx, hx, sizeof(hx), cudaMemcpyHostToDevice));
	emu_set_quiet(1);
	CUDA_LAUNCH(1, 32, 0, 0, k_shfl_outside_mask)(dx);
	ck_assert_int_eq(cudaGetLastError(), cudaErrorIllegalInstruction);
	emu_set_quiet(0);
	expect_report("k_shfl_outside_mask", "which is not in the mask 0x0000ffff", "BUG: shuffle-outside-mask");
	cudaFree(dx);
}
END_TEST

START_TEST(test_shuffle_wrong_offset)
{
	uint64_t s = test_seed("shuffle_wrong_offset");
	int hx[32], want = 0, got, *dx, *dy;
	for (int i = 0; i < 32; i++)
		want += hx[i] = (int)(test_rng(&s) % 1000) + 1;
	CUDA_OK(cudaMalloc(&dx, sizeof(hx)));
	CUDA_OK(cudaMalloc(&dy, sizeof(int)));
	CUDA_OK(cudaMemcpy(dx, hx, sizeof(hx), cudaMemcpyHostToDevice));
	CUDA_LAUNCH(1, 32, 0, 0, k_warp_sum_wrong_offset)(dx, dy);
	CUDA_OK(cudaGetLastError());	/* legal code, wrong answer */
	CUDA_OK(cudaMemcpy(&got, dy, sizeof(int), cudaMemcpyDeviceToHost));
	/* offset 32 is past the warp: every lane gets its own value back, so
	 * the sum is exactly doubled, as on the GPU */
	ck_assert_int_eq(got, 2 * want);
	printf("  caught: k_warp_sum_wrong_offset returns %d, reference %d\n", got, want);
	cudaFree(dx);
	cudaFree(dy);
}
END_TEST

START_TEST(test_mma_transposed_fragment)
{
	uint64_t s = test_seed("mma_transposed_fragment");
	__nv_bfloat16 hA[256], hB[128];
	double ref[128];
	float hD[128];
	for (int i = 0; i < 256; i++)
		hA[i] = __float2bfloat16(test_uniform(&s, -1, 1));
	for (int i = 0; i < 128; i++)
		hB[i] = __float2bfloat16(test_uniform(&s, -1, 1));
	for (int m = 0; m < 16; m++)
		for (int n = 0; n < 8; n++) {
			ref[m * 8 + n] = 0;
			for (int k = 0; k < 16; k++)
				ref[m * 8 + n] += (double)__bfloat162float(hA[m * 16 + k]) * __bfloat162float(hB[k * 8 + n]);
		}
	__nv_bfloat16 *dA, *dB;
	float *dD;
	CUDA_OK(cudaMalloc(&dA, sizeof(hA)));
	CUDA_OK(cudaMalloc(&dB, sizeof(hB)));
	CUDA_OK(cudaMalloc(&dD, sizeof(hD)));
	CUDA_OK(cudaMemcpy(dA, hA, sizeof(hA), cudaMemcpyHostToDevice));
	CUDA_OK(cudaMemcpy(dB, hB, sizeof(hB), cudaMemcpyHostToDevice));
	CUDA_LAUNCH(1, 32, 0, 0, k_mma_tile<0>)(dA, dB, dD);
	CUDA_OK(cudaGetLastError());
	CUDA_OK(cudaMemcpy(hD, dD, sizeof(hD), cudaMemcpyDeviceToHost));
	double right = rel_l2(hD, ref, 128);
	ck_assert_msg(right < 1e-6, "right fragments: rel err %g", right);
	/* the wrong kernel reads B[g][k] for B[k][g]; B has 8 columns, so it
	 * also strays into the next rows: the answer is garbage */
	emu_set_quiet(1);
	CUDA_LAUNCH(1, 32, 0, 0, k_mma_tile<1>)(dA, dB, dD);
	cudaError_t e = cudaGetLastError();
	emu_set_quiet(0);
	if (e == cudaSuccess) {
		CUDA_OK(cudaMemcpy(hD, dD, sizeof(hD), cudaMemcpyDeviceToHost));
		double wrong = rel_l2(hD, ref, 128);
		ck_assert_msg(wrong > 0.3, "transposed fragment not caught: rel err %g", wrong);
		printf("  caught: k_mma_tile<1> (transposed B fragment) rel err %.3f vs CPU reference\n", wrong);
	} else {
		/* 16 rows of 16 over a 128-element B runs out of bounds */
		expect_report("k_mma_tile<1>", "out-of-bounds global read", "BUG: B fragment taken row-wise");
	}
	cudaFree(dA);
	cudaFree(dB);
	cudaFree(dD);
}
END_TEST

START_TEST(test_oob_store)
{
	const int n = 100;
	float hx[n] = {0};
	float *dx = upload(hx, n), *dy;
	CUDA_OK(cudaMalloc(&dy, n * sizeof(float)));
	emu_set_quiet(1);
	CUDA_LAUNCH(4, 32, 0, 0, k_oob_store)(dx, dy, n);
	ck_assert_int_eq(cudaGetLastError(), cudaErrorIllegalAddress);
	ck_assert_int_eq(cudaDeviceSynchronize(), cudaErrorIllegalAddress);
	emu_set_quiet(0);
	expect_report("k_oob_store", "out-of-bounds global write: 4 bytes at byte offset 400 of a 400-byte", "BUG: oob-store");
	cudaFree(dx);
	cudaFree(dy);
}
END_TEST

START_TEST(test_shared_oob)
{
	float *dy;
	CUDA_OK(cudaMalloc(&dy, 64 * sizeof(float)));
	emu_set_quiet(1);
	CUDA_LAUNCH(1, 64, 0, 0, k_shared_oob)(dy);
	ck_assert_int_eq(cudaGetLastError(), cudaErrorIllegalAddress);
	expect_report("k_shared_oob", "out-of-bounds write of shared array k_shared_oob::s", "BUG: shared-oob");
	CUDA_LAUNCH(1, 64, 64 * sizeof(float), 0, k_dynamic_shared_oob)(dy, 64);
	ck_assert_int_eq(cudaGetLastError(), cudaErrorIllegalAddress);
	emu_set_quiet(0);
	expect_report("k_dynamic_shared_oob", "out-of-bounds read of dynamic shared memory: 4 bytes at offset 256",
		      "BUG: dynamic-oob");
	cudaFree(dy);
}
END_TEST

START_TEST(test_divergent_barrier)
{
	float *dy;
	CUDA_OK(cudaMalloc(&dy, 64 * sizeof(float)));
	emu_set_quiet(1);
	CUDA_LAUNCH(1, 64, 0, 0, k_divergent_barrier)(dy);
	ck_assert_int_eq(cudaGetLastError(), cudaErrorLaunchTimeout);
	expect_report("k_divergent_barrier", "barrier divergence", "BUG: divergent-barrier");
	CUDA_LAUNCH(1, 64, 0, 0, k_two_barriers)(dy);
	ck_assert_int_eq(cudaGetLastError(), cudaErrorLaunchTimeout);
	emu_set_quiet(0);
	expect_report("k_two_barriers", "wait at different barriers", "BUG: odd-barrier");
	expect_report("k_two_barriers", "wait at different barriers", "BUG: even-barrier");
	cudaFree(dy);
}
END_TEST

START_TEST(test_exited_lane_in_shuffle)
{
	int hx[32] = {0}, *dx;
	CUDA_OK(cudaMalloc(&dx, sizeof(hx)));
	CUDA_OK(cudaMemcpy(dx, hx, sizeof(hx), cudaMemcpyHostToDevice));
	emu_set_quiet(1);
	CUDA_LAUNCH(1, 32, 0, 0, k_early_exit_shuffle)(dx);
	ck_assert_int_eq(cudaGetLastError(), cudaErrorLaunchTimeout);
	emu_set_quiet(0);
	expect_report("k_early_exit_shuffle", "warp collective deadlock", "BUG: shuffle-after-exit");
	ck_assert(strstr(emu_last_report(), "thread 5 exited"));
	cudaFree(dx);
}
END_TEST

START_TEST(test_cp_async_read_before_wait)
{
	float hx[128] = {0};
	float *dx = upload(hx, 128), *dy;
	CUDA_OK(cudaMalloc(&dy, 32 * sizeof(float)));
	emu_set_quiet(1);
	CUDA_LAUNCH(1, 32, 0, 0, k_cp_async_no_wait)((const float4 *)dx, dy);
	ck_assert_int_eq(cudaGetLastError(), cudaErrorLaunchFailure);
	emu_set_quiet(0);
	expect_report("k_cp_async_no_wait", "still in flight", "BUG: read-before-wait");
	cudaFree(dx);
	cudaFree(dy);
}
END_TEST

START_TEST(test_cp_async_source_rewritten)
{
	float hx[128];
	for (int i = 0; i < 128; i++)
		hx[i] = (float)i;
	float *dx = upload(hx, 128), *dy, hy[32];
	CUDA_OK(cudaMalloc(&dy, 32 * sizeof(float)));
	CUDA_LAUNCH(1, 32, 0, 0, k_cp_async_source_rewrite<1>)((float4 *)dx, dy);
	CUDA_OK(cudaGetLastError());
	CUDA_OK(cudaMemcpy(hy, dy, sizeof hy, cudaMemcpyDeviceToHost));
	for (int t = 0; t < 32; t++)
		ck_assert_float_eq(hy[t], (float)(4 * t));
	emu_set_quiet(1);
	CUDA_LAUNCH(1, 32, 0, 0, k_cp_async_source_rewrite<0>)((float4 *)dx, dy);
	ck_assert_int_eq(cudaGetLastError(), cudaErrorLaunchFailure);
	emu_set_quiet(0);
	expect_report("k_cp_async_source_rewrite<0>", "was rewritten while the copy was in flight",
		      "BUG: source-rewritten-in-flight");
	cudaFree(dx);
	cudaFree(dy);
}
END_TEST

START_TEST(test_uninit_and_freed)
{
	float *dy;
	CUDA_OK(cudaMalloc(&dy, 64 * sizeof(float)));
	emu_set_quiet(1);
	CUDA_LAUNCH(1, 64, 0, 0, k_uninit_shared)(dy);
	ck_assert_int_eq(cudaGetLastError(), cudaErrorLaunchFailure);
	expect_report("k_uninit_shared", "no thread of this block has written", "BUG: uninit-read");
	CUDA_OK(cudaFree(dy));
	CUDA_LAUNCH(1, 64, 0, 0, k_use_after_free)(dy);
	ck_assert_int_ne(cudaGetLastError(), cudaSuccess);
	emu_set_quiet(0);
	/* a freed pointer is no longer device memory: refused at launch */
	expect_report("k_use_after_free", "does not point into device memory", NULL);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("emu_bugs");
	TCase *tc = tcase_create("bugs");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_missing_barrier);
	tcase_add_test(tc, test_warp_sync);
	tcase_add_test(tc, test_shuffle_outside_mask);
	tcase_add_test(tc, test_shuffle_wrong_offset);
	tcase_add_test(tc, test_mma_transposed_fragment);
	tcase_add_test(tc, test_oob_store);
	tcase_add_test(tc, test_shared_oob);
	tcase_add_test(tc, test_divergent_barrier);
	tcase_add_test(tc, test_exited_lane_in_shuffle);
	tcase_add_test(tc, test_cp_async_read_before_wait);
	tcase_add_test(tc, test_cp_async_source_rewritten);
	tcase_add_test(tc, test_uninit_and_freed);
	suite_add_tcase(s, tc);
	return run_suite(s);
}

#else

int main(void)
{
	printf("emu_bugs: skipped natively (deliberately wrong kernels hang or corrupt a GPU)\n");
	printf("100%%: Checks: 0, Failures: 0, Errors: 0\n");
	return 0;
}

#endif
