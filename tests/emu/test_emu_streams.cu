/* tests/emu/test_emu_streams.cu: streams and events as CUDA defines them.
 *
 * Work on two streams is ordered only by an event recorded on one and waited
 * for by the other, by a host synchronisation, or by the legacy default
 * stream's rules (it waits for, and is waited for by, streams created
 * without cudaStreamNonBlocking). Each ordered case runs natively and
 * emulated; each case with an edge removed must draw the emulator's
 * cross-stream race report, which names both operations, and must not when
 * the edge is there. The last case is the gradient-bucket pattern of
 * host/dist_nccl.c through the emulated NCCL. */
#include "emu_test.h"
#ifdef ANATOMY_EMU
#include "emu/nccl_emu.h"
#endif

__global__ void k_produce(float *x, int n, float base)
{
	int i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i < n)
		x[i] = base + 3.0f * (float)i;
}

__global__ void k_consume(const float *x, float *y, int n)
{
	int i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i < n)
		y[i] = 2.0f * x[i];
}

enum { N = 200 };

static void expect_clean(void)
{
#ifdef ANATOMY_EMU
	ck_assert_msg(emu_last_report()[0] == 0, "unexpected report: %s", emu_last_report());
#endif
}

#ifdef ANATOMY_EMU
/* The last report is a cross-stream race naming both operations. */
static void expect_race(const char *a, const char *b)
{
	const char *r = emu_last_report();
	ck_assert_msg(strstr(r, "cross-stream race"), "no race report: '%s'", r);
	ck_assert_msg(strstr(r, a) && strstr(r, b), "race report names neither %s nor %s: %s", a, b, r);
	emu_clear_report();
}
#endif

/* produce on s1, consume on s2, with or without the event between */
static cudaError_t produce_consume(cudaStream_t s1, cudaStream_t s2, cudaEvent_t e, int wait, float *x, float *y)
{
	CUDA_LAUNCH(1, 256, 0, s1, k_produce)(x, N, 1.0f);
	cudaError_t e1 = cudaGetLastError();
	if (e1 != cudaSuccess)
		return e1;
	if (wait) {
		CUDA_OK(cudaEventRecord(e, s1));
		CUDA_OK(cudaStreamWaitEvent(s2, e, 0));
	}
	CUDA_LAUNCH(1, 256, 0, s2, k_consume)(x, y, N);
	return cudaGetLastError();
}

START_TEST(test_event_orders_streams)
{
	for (int seed = 1; seed <= (EMU_ONLY ? 4 : 1); seed++) {
#ifdef ANATOMY_EMU
		emu_set_seed((uint64_t)seed);
		emu_set_quiet(1);
		emu_clear_report();
#endif
		cudaStream_t s1, s2;
		cudaEvent_t e;
		float *x, *y, h[N];
		CUDA_OK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
		CUDA_OK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
		CUDA_OK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
		CUDA_OK(cudaMalloc(&x, N * sizeof(float)));
		CUDA_OK(cudaMalloc(&y, N * sizeof(float)));
		CUDA_OK(produce_consume(s1, s2, e, 1, x, y));
		CUDA_OK(cudaMemcpyAsync(h, y, sizeof h, cudaMemcpyDeviceToHost, s2));
		CUDA_OK(cudaStreamSynchronize(s2));
		for (int i = 0; i < N; i++)
			ck_assert_float_eq(h[i], 2.0f * (1.0f + 3.0f * (float)i));
		expect_clean();
		cudaFree(x);
		cudaFree(y);
		cudaEventDestroy(e);
		cudaStreamDestroy(s1);
		cudaStreamDestroy(s2);
	}
}
END_TEST

/* Blocking streams and the legacy default stream order each other; a
 * non-blocking stream orders with nothing but its events. */
START_TEST(test_legacy_default_stream)
{
#ifdef ANATOMY_EMU
	emu_set_quiet(1);
	emu_clear_report();
#endif
	cudaStream_t blocking, nonblocking;
	float *x, h[N];
	CUDA_OK(cudaStreamCreate(&blocking));
	CUDA_OK(cudaStreamCreateWithFlags(&nonblocking, cudaStreamNonBlocking));
	CUDA_OK(cudaMalloc(&x, N * sizeof(float)));
	/* a blocking stream's kernel, then a cudaMemcpy on the legacy stream */
	CUDA_LAUNCH(1, 256, 0, blocking, k_produce)(x, N, 5.0f);
	CUDA_OK(cudaGetLastError());
	CUDA_OK(cudaMemcpy(h, x, sizeof h, cudaMemcpyDeviceToHost));
	ck_assert_float_eq(h[7], 26.0f);
	expect_clean();
	/* the legacy stream's memset, then a blocking stream's kernel over it */
	CUDA_OK(cudaMemset(x, 0, N * sizeof(float)));
	CUDA_LAUNCH(1, 256, 0, blocking, k_produce)(x, N, 2.0f);
	CUDA_OK(cudaGetLastError());
	CUDA_OK(cudaStreamSynchronize(blocking));
	expect_clean();
	/* a non-blocking stream's kernel, synchronised, then cudaMemcpy */
	CUDA_LAUNCH(1, 256, 0, nonblocking, k_produce)(x, N, 1.0f);
	CUDA_OK(cudaGetLastError());
	CUDA_OK(cudaStreamSynchronize(nonblocking));
	CUDA_OK(cudaMemcpy(h, x, sizeof h, cudaMemcpyDeviceToHost));
	ck_assert_float_eq(h[7], 22.0f);
	expect_clean();
#ifdef ANATOMY_EMU
	/* ... and without the synchronisation: cudaMemcpy does not wait for a
	 * non-blocking stream */
	CUDA_LAUNCH(1, 256, 0, nonblocking, k_produce)(x, N, 1.0f);
	CUDA_OK(cudaGetLastError());
	ck_assert_int_ne(cudaMemcpy(h, x, sizeof h, cudaMemcpyDeviceToHost), cudaSuccess);
	expect_race("cudaMemcpy", "k_produce");
	/* a copy from pageable memory returns once staged, before it lands: a
	 * non-blocking stream's kernel must still be ordered after it */
	float *y;
	CUDA_OK(cudaDeviceSynchronize());
	CUDA_OK(cudaMalloc(&y, N * sizeof(float)));
	CUDA_OK(cudaMemcpy(x, h, sizeof h, cudaMemcpyHostToDevice));
	CUDA_LAUNCH(1, 256, 0, nonblocking, k_consume)(x, y, N);
	ck_assert_int_eq(cudaGetLastError(), cudaErrorLaunchFailure);
	expect_race("k_consume", "cudaMemcpy");
	/* ... while one into host memory has landed when it returns */
	ck_assert_int_eq(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
	CUDA_OK(cudaMemcpy(h, y, sizeof h, cudaMemcpyDeviceToHost));
	CUDA_LAUNCH(1, 256, 0, nonblocking, k_produce)(y, N, 1.0f);
	CUDA_OK(cudaGetLastError());
	CUDA_OK(cudaDeviceSynchronize());
	expect_clean();
	cudaFree(y);
#endif
	cudaFree(x);
	cudaStreamDestroy(blocking);
	cudaStreamDestroy(nonblocking);
}
END_TEST

#ifdef ANATOMY_EMU
/* The same pairs without the edge: each draws the report. */
START_TEST(test_missing_wait_is_a_race)
{
	emu_set_quiet(1);
	emu_clear_report();
	cudaStream_t s1, s2;
	cudaEvent_t e;
	float *x, *y, h[N];
	CUDA_OK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
	CUDA_OK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
	CUDA_OK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
	CUDA_OK(cudaMalloc(&x, N * sizeof(float)));
	CUDA_OK(cudaMalloc(&y, N * sizeof(float)));
	/* kernel after kernel: read after write */
	ck_assert_int_eq(produce_consume(s1, s2, e, 0, x, y), cudaErrorLaunchFailure);
	expect_race("k_consume", "k_produce");
	ck_assert_int_ne(cudaStreamSynchronize(s2), cudaSuccess); /* and the next sync says so */
	/* a copy after a kernel */
	CUDA_LAUNCH(1, 256, 0, s1, k_produce)(x, N, 1.0f);
	CUDA_OK(cudaGetLastError());
	ck_assert_int_ne(cudaMemcpyAsync(h, x, sizeof h, cudaMemcpyDeviceToHost, s2), cudaSuccess);
	expect_race("cudaMemcpyAsync", "k_produce");
	/* a kernel writing what a memset on the other stream wrote */
	CUDA_OK(cudaDeviceSynchronize());
	CUDA_OK(cudaMemsetAsync(y, 0, N * sizeof(float), s2));
	CUDA_LAUNCH(1, 256, 0, s1, k_consume)(x, y, N);
	ck_assert_int_eq(cudaGetLastError(), cudaErrorLaunchFailure);
	expect_race("k_consume", "cudaMemsetAsync");
	/* an operation kept across a synchronisation of another stream still
	 * races: the memset on s2 is not ordered by synchronising s1 */
	ck_assert_int_eq(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
	CUDA_OK(cudaMemsetAsync(x, 0, N * sizeof(float), s2));
	for (int i = 0; i < 70; i++) /* past the history's periodic clean-up */
		CUDA_LAUNCH(1, 256, 0, s1, k_produce)(y, N, 1.0f);
	CUDA_OK(cudaStreamSynchronize(s1));
	CUDA_LAUNCH(1, 256, 0, s1, k_consume)(x, y, N);
	ck_assert_int_eq(cudaGetLastError(), cudaErrorLaunchFailure);
	expect_race("k_consume", "cudaMemsetAsync");
	/* a host synchronisation is an edge: no report (after the error above) */
	ck_assert_int_eq(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
	CUDA_LAUNCH(1, 256, 0, s1, k_produce)(x, N, 1.0f);
	CUDA_OK(cudaGetLastError());
	CUDA_OK(cudaStreamSynchronize(s1));
	CUDA_LAUNCH(1, 256, 0, s2, k_consume)(x, y, N);
	CUDA_OK(cudaGetLastError());
	CUDA_OK(cudaDeviceSynchronize());
	expect_clean();
	cudaFree(x);
	cudaFree(y);
	cudaEventDestroy(e);
	cudaStreamDestroy(s1);
	cudaStreamDestroy(s2);
}
END_TEST

/* Two streams writing disjoint halves of one allocation do not race (the
 * bytes a kernel touched are what counts, not its pointer's allocation);
 * one byte in common does. */
START_TEST(test_disjoint_bytes_do_not_race)
{
	emu_set_quiet(1);
	emu_clear_report();
	cudaStream_t s1, s2;
	float *x;
	CUDA_OK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
	CUDA_OK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
	CUDA_OK(cudaMalloc(&x, 2 * N * sizeof(float)));
	CUDA_LAUNCH(1, 256, 0, s1, k_produce)(x, N, 1.0f);
	CUDA_LAUNCH(1, 256, 0, s2, k_produce)(x + N, N, 2.0f);
	CUDA_OK(cudaMemsetAsync(x + N, 0, N * sizeof(float), s2));
	CUDA_OK(cudaGetLastError());
	expect_clean();
	CUDA_LAUNCH(1, 256, 0, s2, k_produce)(x + N - 1, 1, 2.0f);
	ck_assert_int_eq(cudaGetLastError(), cudaErrorLaunchFailure);
	expect_race("k_produce", "stream 1");
	ck_assert_int_eq(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
	cudaFree(x);
	cudaStreamDestroy(s1);
	cudaStreamDestroy(s2);
}
END_TEST

/* Queued work (emu_stream_enqueue, what the emulated NCCL uses) really runs
 * out of issue order: without a wait, some seeds let a later kernel on
 * another stream run before it; with the wait, none does. */
static int set_seven(void *p)
{
	float *x = (float *)p;
	for (int i = 0; i < N; i++)
		x[i] = 7.0f;
	return 0;
}

START_TEST(test_queued_work_is_reordered)
{
	emu_set_quiet(1);
	int early = 0, late = 0;
	for (int seed = 1; seed <= 16; seed++) {
		for (int wait = 0; wait < 2; wait++) {
			emu_set_seed((uint64_t)seed);
			emu_clear_report();
			cudaStream_t s1, s2;
			cudaEvent_t e;
			float *x, *y, h[N];
			CUDA_OK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
			CUDA_OK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
			CUDA_OK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
			CUDA_OK(cudaMalloc(&x, N * sizeof(float)));
			CUDA_OK(cudaMalloc(&y, N * sizeof(float)));
			CUDA_OK(cudaMemset(x, 0, N * sizeof(float)));
			CUDA_OK(cudaDeviceSynchronize());
			struct emu_range r = { x, N * sizeof(float), 1 };
			CUDA_OK(emu_stream_enqueue(s2, "set_seven", NULL, set_seven, x, &r, 1));
			if (wait) {
				CUDA_OK(cudaEventRecord(e, s2));
				CUDA_OK(cudaStreamWaitEvent(s1, e, 0));
			}
			CUDA_LAUNCH(1, 256, 0, s1, k_consume)(x, y, N);
			cudaError_t rc = cudaGetLastError();
			cudaDeviceSynchronize();
			CUDA_OK(cudaMemcpy(h, y, sizeof h, cudaMemcpyDeviceToHost));
			if (wait) {
				ck_assert_int_eq(rc, cudaSuccess);
				expect_clean();
				ck_assert_float_eq(h[3], 14.0f);
			} else {
				ck_assert_int_eq(rc, cudaErrorLaunchFailure);
				expect_race("k_consume", "set_seven");
				if (h[3] == 14.0f)
					early++;
				else
					late++;
			}
			cudaFree(x);
			cudaFree(y);
			cudaEventDestroy(e);
			cudaStreamDestroy(s1);
			cudaStreamDestroy(s2);
		}
	}
	/* both orders happen over the seeds */
	ck_assert_int_gt(early, 0);
	ck_assert_int_gt(late, 0);
}
END_TEST

/* host/dist_nccl.c's bucket: backward writes a gradient on `compute`, an
 * event orders the in-place all-reduce on `comm` after it, and an event on
 * `comm` orders the optimizer's read after that. Removing either wait draws
 * the report; with both the result is right for every seed. */
START_TEST(test_nccl_bucket_edges)
{
	emu_set_quiet(1);
	for (int drop = 0; drop < 3; drop++) {
		for (int seed = 1; seed <= 3; seed++) {
			emu_set_seed((uint64_t)seed);
			emu_clear_report();
			ncclUniqueId id;
			ncclComm_t comm;
			ck_assert_int_eq(ncclGetUniqueId(&id), ncclSuccess);
			ck_assert_int_eq(ncclCommInitRank(&comm, 1, id, 0), ncclSuccess);
			cudaStream_t compute, cs;
			cudaEvent_t compute_done, comm_done;
			float *g, *y, h[N];
			CUDA_OK(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking));
			CUDA_OK(cudaStreamCreateWithFlags(&cs, cudaStreamNonBlocking));
			CUDA_OK(cudaEventCreateWithFlags(&compute_done, cudaEventDisableTiming));
			CUDA_OK(cudaEventCreateWithFlags(&comm_done, cudaEventDisableTiming));
			CUDA_OK(cudaMalloc(&g, N * sizeof(float)));
			CUDA_OK(cudaMalloc(&y, N * sizeof(float)));
			CUDA_LAUNCH(1, 256, 0, compute, k_produce)(g, N, 1.0f);
			CUDA_OK(cudaGetLastError());
			CUDA_OK(cudaEventRecord(compute_done, compute));
			if (drop != 1)
				CUDA_OK(cudaStreamWaitEvent(cs, compute_done, 0));
			ncclResult_t nr = ncclAllReduce(g, g, N, ncclFloat32, ncclAvg, comm, cs);
			CUDA_OK(cudaEventRecord(comm_done, cs));
			if (drop != 2)
				CUDA_OK(cudaStreamWaitEvent(compute, comm_done, 0));
			CUDA_LAUNCH(1, 256, 0, compute, k_consume)(g, y, N);
			cudaError_t rc = cudaGetLastError();
			cudaDeviceSynchronize();
			if (drop == 0) {
				ck_assert_int_eq(nr, ncclSuccess);
				ck_assert_int_eq(rc, cudaSuccess);
				expect_clean();
				CUDA_OK(cudaMemcpy(h, y, sizeof h, cudaMemcpyDeviceToHost));
				ck_assert_float_eq(h[5], 32.0f);
			} else if (drop == 1) {
				ck_assert_int_ne(nr, ncclSuccess);
				expect_race("ncclAllReduce", "k_produce");
			} else {
				ck_assert_int_eq(rc, cudaErrorLaunchFailure);
				expect_race("k_consume", "ncclAllReduce");
			}
			cudaFree(g);
			cudaFree(y);
			cudaEventDestroy(compute_done);
			cudaEventDestroy(comm_done);
			cudaStreamDestroy(compute);
			cudaStreamDestroy(cs);
			ncclCommDestroy(comm);
		}
	}
}
END_TEST
#endif

int main(void)
{
	Suite *s = suite_create("emu_streams");
	TCase *tc = tcase_create("streams");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_event_orders_streams);
	tcase_add_test(tc, test_legacy_default_stream);
#ifdef ANATOMY_EMU
	tcase_add_test(tc, test_missing_wait_is_a_race);
	tcase_add_test(tc, test_disjoint_bytes_do_not_race);
	tcase_add_test(tc, test_queued_work_is_reordered);
	tcase_add_test(tc, test_nccl_bucket_edges);
#endif
	suite_add_tcase(s, tc);
	return run_suite(s);
}
