/* tests/emu/test_emu_blocks.cu: blocks that wait on other blocks.
 *
 * flag_wait_geq / flag_release_add (ptx.cuh) order blocks through a counter
 * in global memory. The chains below fold every block's number into one
 * running value with an order-dependent step, so the result is right only if
 * the blocks really passed one after another in the intended order. In the
 * emulator the blocks start in a shuffled order, a few at a time, and a wait
 * lets the other started blocks run; the tests check that the ordering is
 * exercised (blocks that found their flag unset and waited), that the result
 * is the same for every seed and resident count, and that a grid whose
 * blocks can never all proceed is reported as a deadlock rather than hanging.
 * The ticket chain is correct on a GPU too and runs natively. */
#include "emu_test.h"
#include "ptx.cuh"

/* one order-dependent step: the chain's value after block k */
__host__ __device__ static inline unsigned chain_step(unsigned acc, unsigned k)
{
	return acc * 2654435761u + k + 1;
}

/* Each block takes a ticket when it starts and adds its step after the block
 * with the previous ticket: every wait targets a block that has started, so
 * the grid cannot hang whatever order the blocks start in. acc has one cell
 * per thread (all threads write, as a tile would). */
__global__ void k_ticket_chain(int *ticket, int *flag, unsigned *acc, int *waited)
{
	__shared__ int t;
	if (threadIdx.x == 0) {
		t = atomicAdd(ticket, 1);
		if (*(volatile int *)flag < t)
			atomicAdd(waited, 1);
		flag_wait_geq(flag, t);
	}
	__syncthreads();
	acc[threadIdx.x] = chain_step(acc[threadIdx.x], (unsigned)t);
	__syncthreads();
	if (threadIdx.x == 0)
		flag_release_add(flag, 1);
}

/* The same chain by blockIdx.x: block b waits for block b - 1, which may not
 * have started; right only when enough blocks are resident. */
__global__ void k_index_chain(int *flag, unsigned *acc, int *waited)
{
	int b = blockIdx.x;
	if (threadIdx.x == 0) {
		if (*(volatile int *)flag < b)
			atomicAdd(waited, 1);
		flag_wait_geq(flag, b);	/* marker: index chain wait */
	}
	__syncthreads();
	acc[threadIdx.x] = chain_step(acc[threadIdx.x], (unsigned)b);
	__syncthreads();
	if (threadIdx.x == 0)
		flag_release_add(flag, 1);
}

/* Two blocks, each waiting for the other first: no order works. */
__global__ void k_cycle(int *flags)
{
	int b = blockIdx.x;
	if (threadIdx.x == 0)
		flag_wait_geq(flags + (b ^ 1), 1);	/* marker: cycle wait */
	__syncthreads();
	if (threadIdx.x == 0)
		flag_release_add(flags + b, 1);
}

enum { NB = 12, NT = 64 };

struct chain_bufs {
	int *ticket, *flag, *waited;
	unsigned *acc;
};

static void chain_alloc(chain_bufs *c)
{
	CUDA_OK(cudaMalloc(&c->ticket, sizeof(int)));
	CUDA_OK(cudaMalloc(&c->flag, sizeof(int)));
	CUDA_OK(cudaMalloc(&c->waited, sizeof(int)));
	CUDA_OK(cudaMalloc(&c->acc, NT * sizeof(unsigned)));
}

static void chain_reset(chain_bufs *c)
{
	CUDA_OK(cudaMemset(c->ticket, 0, sizeof(int)));
	CUDA_OK(cudaMemset(c->flag, 0, sizeof(int)));
	CUDA_OK(cudaMemset(c->waited, 0, sizeof(int)));
	CUDA_OK(cudaMemset(c->acc, 0, NT * sizeof(unsigned)));
}

static void chain_free(chain_bufs *c)
{
	cudaFree(c->ticket);
	cudaFree(c->flag);
	cudaFree(c->waited);
	cudaFree(c->acc);
}

/* checks acc against the chain in order 0..NB-1; returns how many blocks waited */
static int chain_check(chain_bufs *c)
{
	unsigned got[NT], want = 0;
	int waited;
	for (unsigned k = 0; k < NB; k++)
		want = chain_step(want, k);
	CUDA_OK(cudaMemcpy(got, c->acc, sizeof got, cudaMemcpyDeviceToHost));
	CUDA_OK(cudaMemcpy(&waited, c->waited, sizeof waited, cudaMemcpyDeviceToHost));
	for (int i = 0; i < NT; i++)
		ck_assert_msg(got[i] == want, "thread %d: chain value %u, want %u (blocks out of order)", i, got[i], want);
	return waited;
}

START_TEST(test_ticket_chain)
{
	chain_bufs c;
	chain_alloc(&c);
	int waits = 0;
#if EMU_ONLY
	/* seed 0 (one block at a time, in order) and shuffled seeds with 1 to
	 * NB blocks resident */
	for (int seed = 0; seed < 6; seed++) {
		for (int res = 1; res <= NB; res += 3) {
			emu_set_seed(seed);
			emu_set_resident_blocks(res);
			chain_reset(&c);
			CUDA_LAUNCH(NB, NT, 0, 0, k_ticket_chain)(c.ticket, c.flag, c.acc, c.waited);
			CUDA_OK(cudaGetLastError());
			waits += chain_check(&c);
		}
	}
	emu_set_resident_blocks(0);
	emu_set_seed(1);
	printf("  ticket chain: %d waits over the seeds and resident counts\n", waits);
	ck_assert_msg(waits > 0, "no block ever found its flag unset: the ordering was not exercised");
#else
	chain_reset(&c);
	CUDA_LAUNCH(NB, NT, 0, 0, k_ticket_chain)(c.ticket, c.flag, c.acc, c.waited);
	CUDA_OK(cudaGetLastError());
	waits = chain_check(&c);
	printf("  ticket chain: %d waits\n", waits);
#endif
	chain_free(&c);
}
END_TEST

#if EMU_ONLY
/* All blocks resident: the blockIdx chain works whatever the start order,
 * and blocks do wait for predecessors that started after them. */
START_TEST(test_index_chain_resident)
{
	chain_bufs c;
	chain_alloc(&c);
	int waits = 0;
	for (int seed = 1; seed <= 4; seed++) {
		emu_set_seed(seed);
		emu_set_resident_blocks(NB);
		chain_reset(&c);
		CUDA_LAUNCH(NB, NT, 0, 0, k_index_chain)(c.flag, c.acc, c.waited);
		CUDA_OK(cudaGetLastError());
		waits += chain_check(&c);
	}
	emu_set_resident_blocks(0);
	emu_set_seed(1);
	ck_assert_msg(waits > 0, "shuffled starts never made a block wait");
	chain_free(&c);
}
END_TEST

/* One block at a time: a block that waits for a block yet to start hangs
 * on a GPU that runs it first; the emulator reports the deadlock (and the
 * device keeps working). */
START_TEST(test_index_chain_not_started)
{
	chain_bufs c;
	chain_alloc(&c);
	emu_set_quiet(1);
	emu_set_resident_blocks(1);
	int deadlocks = 0;
	for (int seed = 1; seed <= 3; seed++) {
		emu_set_seed(seed);
		chain_reset(&c);
		emu_clear_report();
		CUDA_LAUNCH(NB, NT, 0, 0, k_index_chain)(c.flag, c.acc, c.waited);
		cudaError_t e = cudaGetLastError();
		cudaDeviceSynchronize();
		if (e == cudaSuccess)
			continue;	/* the shuffle happened to start the blocks in order */
		ck_assert_int_eq(e, cudaErrorLaunchTimeout);
		const char *r = emu_last_report();
		ck_assert_msg(strstr(r, "grid deadlock") && strstr(r, "have not started"), "report: %s", r);
		char at[64];
		snprintf(at, sizeof at, "test_emu_blocks.cu:%d", marker_line(__FILE__, "marker: index chain wait"));
		ck_assert_msg(strstr(r, at), "report does not name %s: %s", at, r);
		deadlocks++;
	}
	emu_set_resident_blocks(0);
	emu_set_seed(1);
	emu_set_quiet(0);
	ck_assert_msg(deadlocks > 0, "no seed started a block before its predecessor");
	/* the device still works */
	chain_reset(&c);
	CUDA_LAUNCH(NB, NT, 0, 0, k_ticket_chain)(c.ticket, c.flag, c.acc, c.waited);
	CUDA_OK(cudaGetLastError());
	chain_check(&c);
	chain_free(&c);
}
END_TEST

START_TEST(test_cycle_deadlock)
{
	int *flags;
	CUDA_OK(cudaMalloc(&flags, 2 * sizeof(int)));
	emu_set_quiet(1);
	for (int res = 1; res <= 2; res++) {
		CUDA_OK(cudaMemset(flags, 0, 2 * sizeof(int)));
		emu_set_resident_blocks(res);
		emu_clear_report();
		CUDA_LAUNCH(2, 32, 0, 0, k_cycle)(flags);
		cudaError_t e = cudaGetLastError();
		cudaDeviceSynchronize();
		ck_assert_int_eq(e, cudaErrorLaunchTimeout);
		const char *r = emu_last_report();
		ck_assert_msg(strstr(r, "grid deadlock: no started block can proceed"), "report: %s", r);
		char at[64];
		snprintf(at, sizeof at, "test_emu_blocks.cu:%d", marker_line(__FILE__, "marker: cycle wait"));
		ck_assert_msg(strstr(r, at) && strstr(r, "to reach 1 (it holds 0)"), "report: %s", r);
		if (res == 2)	/* both blocks started, both named */
			ck_assert_msg(strstr(r, "block (0,0,0)") && strstr(r, "block (1,0,0)"), "report: %s", r);
	}
	emu_set_resident_blocks(0);
	emu_set_quiet(0);
	cudaFree(flags);
}
END_TEST
#endif

int main(void)
{
	Suite *s = suite_create("emu_blocks");
	TCase *tc = tcase_create("blocks");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_ticket_chain);
#if EMU_ONLY
	tcase_add_test(tc, test_index_chain_resident);
	tcase_add_test(tc, test_index_chain_not_started);
	tcase_add_test(tc, test_cycle_deadlock);
#endif
	suite_add_tcase(s, tc);
	return run_suite(s);
}
