/* tests/emu/test_emu_algos.cu: kernels written right must match the CPU.
 *
 * Block reductions (warp shuffles, shared memory, atomics), an inclusive
 * block scan (shuffle-up within warps, warp totals through shared memory)
 * and a tiled transpose. Integer results are exact, so they are compared bit
 * for bit, emulated or native; the float sum to the fp32 tolerance. */
#include "emu_test.h"

/* Sum over a warp: every lane ends with the total. */
template <class T> __device__ __forceinline__ T warp_sum(T v)
{
	for (int off = 16; off > 0; off /= 2)
		v += __shfl_xor_sync(0xffffffffu, v, off);
	return v;
}

/* One partial sum per block, combined with one atomic per block. */
template <class T> __global__ void k_reduce(const T *x, int n, T *out)
{
	__shared__ T partial[32];
	T v = 0;
	for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
		v += x[i];
	v = warp_sum(v);
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
	if (lane == 0)
		partial[warp] = v;
	__syncthreads();
	if (warp == 0) {
		v = lane < nwarps ? partial[lane] : 0;
		v = warp_sum(v);
		if (lane == 0)
			atomicAdd(out, v);
	}
}

START_TEST(test_reduce_int)
{
	uint64_t s = test_seed("reduce_int");
	const int n = 20000;
	int *h = (int *)malloc(n * sizeof(int)), *dx, *dout, got;
	long long want = 0;
	for (int i = 0; i < n; i++)
		want += h[i] = (int)(test_rng(&s) % 20001) - 10000;
	CUDA_OK(cudaMalloc(&dx, n * sizeof(int)));
	CUDA_OK(cudaMalloc(&dout, sizeof(int)));
	CUDA_OK(cudaMemcpy(dx, h, n * sizeof(int), cudaMemcpyHostToDevice));
	CUDA_OK(cudaMemset(dout, 0, sizeof(int)));
	CUDA_LAUNCH(6, 256, 0, 0, k_reduce<int>)(dx, n, dout);
	CUDA_OK(cudaGetLastError());
	CUDA_OK(cudaMemcpy(&got, dout, sizeof(int), cudaMemcpyDeviceToHost));
	ck_assert_int_eq(got, (int)want);
	printf("  reduce_int digest: %d\n", got);
	cudaFree(dx);
	cudaFree(dout);
	free(h);
}
END_TEST

START_TEST(test_reduce_float)
{
	uint64_t s = test_seed("reduce_float");
	const int n = 30000;
	float *h = (float *)malloc(n * sizeof(float)), *dx, *dout, got;
	double want = 0;
	for (int i = 0; i < n; i++)
		want += h[i] = test_uniform(&s, 0, 1);
	CUDA_OK(cudaMalloc(&dx, n * sizeof(float)));
	CUDA_OK(cudaMalloc(&dout, sizeof(float)));
	CUDA_OK(cudaMemcpy(dx, h, n * sizeof(float), cudaMemcpyHostToDevice));
	CUDA_OK(cudaMemset(dout, 0, sizeof(float)));
	/* three warps per block, so the second-level sum masks out lanes */
	CUDA_LAUNCH(9, 96, 0, 0, k_reduce<float>)(dx, n, dout);
	CUDA_OK(cudaGetLastError());
	CUDA_OK(cudaMemcpy(&got, dout, sizeof(float), cudaMemcpyDeviceToHost));
	double err = fabs(got - want) / want;
	ck_assert_msg(err < 1e-5, "sum %g, want %g (rel %g)", got, want, err);
	cudaFree(dx);
	cudaFree(dout);
	free(h);
}
END_TEST

/* Inclusive scan of each block's segment of blockDim.x elements. */
__global__ void k_scan(const int *x, int *y, int n)
{
	__shared__ int warp_total[32];
	int i = blockIdx.x * blockDim.x + threadIdx.x;
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	int v = i < n ? x[i] : 0;
	for (int off = 1; off < 32; off *= 2) {
		int u = __shfl_up_sync(0xffffffffu, v, off);
		if (lane >= off)
			v += u;
	}
	if (lane == 31)
		warp_total[warp] = v;
	__syncthreads();
	if (warp == 0) {
		int nw = blockDim.x >> 5;
		int w = lane < nw ? warp_total[lane] : 0;
		for (int off = 1; off < 32; off *= 2) {
			int u = __shfl_up_sync(0xffffffffu, w, off);
			if (lane >= off)
				w += u;
		}
		if (lane < nw)
			warp_total[lane] = w;	/* inclusive prefix of warp totals */
	}
	__syncthreads();
	if (warp > 0)
		v += warp_total[warp - 1];
	if (i < n)
		y[i] = v;
}

START_TEST(test_scan)
{
	uint64_t s = test_seed("scan");
	const int block = 512, n = 3 * block + 200;
	int *h = (int *)malloc(n * sizeof(int)), *got = (int *)malloc(n * sizeof(int)), *dx, *dy;
	for (int i = 0; i < n; i++)
		h[i] = (int)(test_rng(&s) % 1000) - 500;
	CUDA_OK(cudaMalloc(&dx, n * sizeof(int)));
	CUDA_OK(cudaMalloc(&dy, n * sizeof(int)));
	CUDA_OK(cudaMemcpy(dx, h, n * sizeof(int), cudaMemcpyHostToDevice));
	CUDA_LAUNCH((n + block - 1) / block, block, 0, 0, k_scan)(dx, dy, n);
	CUDA_OK(cudaGetLastError());
	CUDA_OK(cudaMemcpy(got, dy, n * sizeof(int), cudaMemcpyDeviceToHost));
	uint32_t digest = 0;
	for (int b = 0; b * block < n; b++) {
		int acc = 0;
		for (int i = b * block; i < n && i < (b + 1) * block; i++) {
			acc += h[i];
			ck_assert_msg(got[i] == acc, "scan[%d] = %d, want %d", i, got[i], acc);
			digest = digest * 31 + (uint32_t)got[i];
		}
	}
	printf("  scan digest: %08x\n", digest);
	cudaFree(dx);
	cudaFree(dy);
	free(h);
	free(got);
}
END_TEST

/* Transpose through a padded 32x33 tile with 32x8 thread blocks. */
__global__ void k_transpose(const float *x, float *y, int rows, int cols)
{
	__shared__ float tile[32][33];
	int bx = blockIdx.x * 32, by = blockIdx.y * 32;
	for (int j = threadIdx.y; j < 32; j += blockDim.y) {
		int r = by + j, c = bx + threadIdx.x;
		if (r < rows && c < cols)
			tile[j][threadIdx.x] = x[(size_t)r * cols + c];
	}
	__syncthreads();
	for (int j = threadIdx.y; j < 32; j += blockDim.y) {
		int r = bx + j, c = by + threadIdx.x;	/* row of y = column of x */
		if (r < cols && c < rows)
			y[(size_t)r * rows + c] = tile[threadIdx.x][j];
	}
}

START_TEST(test_transpose)
{
	uint64_t s = test_seed("transpose");
	const int rows = 70, cols = 100;
	float *h = (float *)malloc(rows * cols * 4), *got = (float *)malloc(rows * cols * 4), *dx, *dy;
	for (int i = 0; i < rows * cols; i++)
		h[i] = test_uniform(&s, -5, 5);
	CUDA_OK(cudaMalloc(&dx, rows * cols * 4));
	CUDA_OK(cudaMalloc(&dy, rows * cols * 4));
	CUDA_OK(cudaMemcpy(dx, h, rows * cols * 4, cudaMemcpyHostToDevice));
	dim3 grid((cols + 31) / 32, (rows + 31) / 32), block(32, 8);
	CUDA_LAUNCH(grid, block, 0, 0, k_transpose)(dx, dy, rows, cols);
	CUDA_OK(cudaGetLastError());
	CUDA_OK(cudaMemcpy(got, dy, rows * cols * 4, cudaMemcpyDeviceToHost));
	for (int r = 0; r < rows; r++)
		for (int c = 0; c < cols; c++)
			ck_assert_float_eq(got[c * rows + r], h[r * cols + c]);
	cudaFree(dx);
	cudaFree(dy);
	free(h);
	free(got);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("emu_algos");
	TCase *tc = tcase_create("algos");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_reduce_int);
	tcase_add_test(tc, test_reduce_float);
	tcase_add_test(tc, test_scan);
	tcase_add_test(tc, test_transpose);
	suite_add_tcase(s, tc);
	return run_suite(s);
}
