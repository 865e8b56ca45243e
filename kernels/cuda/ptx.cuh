/* kernels/cuda/ptx.cuh: the only home of inline PTX.
 *
 * One device function per instruction the kernels use. Each has a GPU body
 * (inline PTX) and, under ANATOMY_EMU, an emulated body that implements the
 * PTX ISA's definition as a warp-collective operation: every lane hands in
 * its registers, the whole warp's fragments are reassembled into matrices
 * with the ISA's layout formulas, and each lane gets back exactly the
 * registers the hardware would give it. A kernel that indexes a fragment
 * wrongly therefore computes the same wrong answer on the CPU as on the GPU.
 *
 *   mma_m16n8k16_bf16   D = A*B + C, A 16x16 row-major bf16, B 16x8 col-major
 *                       bf16, C/D 16x8 fp32 (mma.sync.aligned.m16n8k16.row.col)
 *   mma_m16n8k16_f16    the same with fp16 A and B (.f32.f16.f16.f32)
 *   ldmatrix_x1/x2/x4 (+_trans)   8x8 b16 matrices from shared memory
 *   cp_async_16 / cp_async_16_zfill / cp_async_commit / cp_async_wait<N>
 *   flag_wait_geq / flag_release_add   ordering between blocks through a
 *                       counter in global memory (ld.acquire.gpu,
 *                       red.release.gpu)
 *
 * Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating
 * point type"; g = lane >> 2, t = lane & 3; a register holds two 16-bit
 * elements, the lower-indexed one in its low half):
 *   A a0..a7: row g for a0,a1,a4,a5 and g+8 for a2,a3,a6,a7;
 *             col 2t + (i & 1), plus 8 for a4..a7
 *   B b0..b3: row (k) 2t + (i & 1), plus 8 for b2,b3; col (n) g
 *   C c0..c3: row g for c0,c1 and g+8 for c2,c3; col 2t + (i & 1)
 * ldmatrix: lanes 8m..8m+7 give the row addresses of matrix m (16 bytes per
 * row); lane l receives row l>>2, elements 2(l&3) and 2(l&3)+1 of each matrix,
 * or with .trans the elements (2(l&3), l>>2) and (2(l&3)+1, l>>2).
 *
 * Numerics of the emulated mma: products of bf16 (fp16) values are exact; the 16
 * products and C are summed in double and rounded once to fp32. Tensor cores
 * sum in a different order with their own internal precision, so results can
 * differ from the GPU in the last bits of fp32 (never more). */
#ifndef ANATOMY_PTX_CUH
#define ANATOMY_PTX_CUH

#include "cuda_compat.cuh"

/* Two bf16 values in one register, a in the low half. */
static __device__ __forceinline__ uint32_t pack_bf16x2(__nv_bfloat16 lo, __nv_bfloat16 hi)
{
	return (uint32_t)__bfloat16_as_ushort(lo) | ((uint32_t)__bfloat16_as_ushort(hi) << 16);
}

#ifdef ANATOMY_EMU

struct ptx_mma_lane {
	uint32_t a[4], b[2];
	float c[4];
};

static inline float ptx_bf16_lo(uint32_t r) { return emu_bf2f((unsigned short)(r & 0xffffu)); }
static inline float ptx_bf16_hi(uint32_t r) { return emu_bf2f((unsigned short)(r >> 16)); }
static inline float ptx_bf16_elem(const uint32_t *regs, int i) { return i & 1 ? ptx_bf16_hi(regs[i >> 1]) : ptx_bf16_lo(regs[i >> 1]); }
static inline float ptx_f16_elem(const uint32_t *regs, int i)
{
	return emu_h2f((unsigned short)(i & 1 ? regs[i >> 1] >> 16 : regs[i >> 1] & 0xffffu));
}

/* One m16n8k16 over the warp; elem decodes element i of a lane's A or B registers. */
static void ptx_mma_m16n8k16_warp(void *const in[32], void *const out[32], float (*elem)(const uint32_t *, int))
{
	float A[16][16], B[16][8], C[16][8];
	for (int lane = 0; lane < 32; lane++) {
		const ptx_mma_lane *p = (const ptx_mma_lane *)in[lane];
		int g = lane >> 2, t = lane & 3;
		for (int i = 0; i < 8; i++) {
			int row = (i & 2) ? g + 8 : g;
			int col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
			A[row][col] = elem(p->a, i);
		}
		for (int i = 0; i < 4; i++) {
			int k = 2 * t + (i & 1) + (i >= 2 ? 8 : 0);
			B[k][g] = elem(p->b, i);
		}
		for (int i = 0; i < 4; i++)
			C[i >= 2 ? g + 8 : g][2 * t + (i & 1)] = p->c[i];
	}
	for (int lane = 0; lane < 32; lane++) {
		float *d = (float *)out[lane];
		int g = lane >> 2, t = lane & 3;
		for (int i = 0; i < 4; i++) {
			int row = i >= 2 ? g + 8 : g, col = 2 * t + (i & 1);
			double acc = C[row][col];
			for (int k = 0; k < 16; k++)
				acc += (double)A[row][k] * (double)B[k][col];
			d[i] = (float)acc;
		}
	}
}

static void ptx_mma_m16n8k16_bf16_warp(unsigned mask, void *const in[32], void *const out[32])
{
	(void)mask;
	ptx_mma_m16n8k16_warp(in, out, ptx_bf16_elem);
}

static void ptx_mma_m16n8k16_f16_warp(unsigned mask, void *const in[32], void *const out[32])
{
	(void)mask;
	ptx_mma_m16n8k16_warp(in, out, ptx_f16_elem);
}

static __forceinline__ void ptx_mma(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4],
				    void (*warp)(unsigned, void *const[32], void *const[32]), const char *what)
{
	ptx_mma_lane in;
	float out[4];
	memcpy(in.a, a, sizeof(in.a));
	memcpy(in.b, b, sizeof(in.b));
	memcpy(in.c, c, sizeof(in.c));
	emu_warp_collective(0xffffffffu, warp, &in, out, what);
	for (int i = 0; i < 4; i++)
		d[i] = out[i];
}

struct ptx_ldm_lane {
	const void *addr;
	int num, trans;
};

static void ptx_ldmatrix_warp(unsigned mask, void *const in[32], void *const out[32])
{
	(void)mask;
	int num = ((const ptx_ldm_lane *)in[0])->num, trans = ((const ptx_ldm_lane *)in[0])->trans;
	for (int m = 0; m < num; m++) {
		uint16_t mat[8][8];
		for (int r = 0; r < 8; r++) {
			const ptx_ldm_lane *p = (const ptx_ldm_lane *)in[8 * m + r];
			emu_lane_load((unsigned)(8 * m + r), mat[r], p->addr, 16, "ldmatrix");
		}
		for (int lane = 0; lane < 32; lane++) {
			uint32_t *reg = (uint32_t *)out[lane] + m;
			int q = lane >> 2, c = 2 * (lane & 3);
			uint16_t lo = trans ? mat[c][q] : mat[q][c];
			uint16_t hi = trans ? mat[c + 1][q] : mat[q][c + 1];
			*reg = (uint32_t)lo | ((uint32_t)hi << 16);
		}
	}
}

static __forceinline__ void ptx_ldmatrix(uint32_t *r, const void *smem_row, int num, int trans, const char *what)
{
	ptx_ldm_lane in = {smem_row, num, trans};
	uint32_t out[4] = {0, 0, 0, 0};
	emu_warp_collective(0xffffffffu, ptx_ldmatrix_warp, &in, out, what);
	for (int i = 0; i < num; i++)
		r[i] = out[i];
}

#endif /* ANATOMY_EMU */

#ifndef ANATOMY_EMU
/* mma.sync m16n8k16 with fp32 accumulation, A and B of type T ("bf16", "f16"). */
#define PTX_MMA_M16N8K16(T, d, a, b, c)                                                             \
	asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." T "." T ".f32 "                        \
		     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"                     \
		     : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])                                   \
		     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),     \
		       "f"(c[1]), "f"(c[2]), "f"(c[3]))
#endif

/* mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32: all 32 lanes. */
static __device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4])
{
#ifdef ANATOMY_EMU
	ptx_mma(d, a, b, c, ptx_mma_m16n8k16_bf16_warp, "mma.sync.m16n8k16.bf16");
#else
	PTX_MMA_M16N8K16("bf16", d, a, b, c);
#endif
}

/* mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32: all 32 lanes; the
 * fragments are laid out as for bf16 (two fp16 values per register). */
static __device__ __forceinline__ void mma_m16n8k16_f16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4])
{
#ifdef ANATOMY_EMU
	ptx_mma(d, a, b, c, ptx_mma_m16n8k16_f16_warp, "mma.sync.m16n8k16.f16");
#else
	PTX_MMA_M16N8K16("f16", d, a, b, c);
#endif
}

#ifndef ANATOMY_EMU
#define PTX_SMEM(p) ((unsigned)__cvta_generic_to_shared(p))
#endif

/* ldmatrix.sync.aligned.m8n8.x{1,2,4}{,.trans}.shared.b16: all 32 lanes;
 * smem_row is this lane's row address (lanes 0-7 for .x1, 0-15 for .x2). */
static __device__ __forceinline__ void ldmatrix_x1(uint32_t r[1], const void *smem_row)
{
#ifdef ANATOMY_EMU
	ptx_ldmatrix(r, smem_row, 1, 0, "ldmatrix.x1");
#else
	asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(PTX_SMEM(smem_row)));
#endif
}

static __device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const void *smem_row)
{
#ifdef ANATOMY_EMU
	ptx_ldmatrix(r, smem_row, 2, 0, "ldmatrix.x2");
#else
	asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
		     : "=r"(r[0]), "=r"(r[1]) : "r"(PTX_SMEM(smem_row)));
#endif
}

static __device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void *smem_row)
{
#ifdef ANATOMY_EMU
	ptx_ldmatrix(r, smem_row, 4, 0, "ldmatrix.x4");
#else
	asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
		     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(PTX_SMEM(smem_row)));
#endif
}

static __device__ __forceinline__ void ldmatrix_x1_trans(uint32_t r[1], const void *smem_row)
{
#ifdef ANATOMY_EMU
	ptx_ldmatrix(r, smem_row, 1, 1, "ldmatrix.x1.trans");
#else
	asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(PTX_SMEM(smem_row)));
#endif
}

static __device__ __forceinline__ void ldmatrix_x2_trans(uint32_t r[2], const void *smem_row)
{
#ifdef ANATOMY_EMU
	ptx_ldmatrix(r, smem_row, 2, 1, "ldmatrix.x2.trans");
#else
	asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
		     : "=r"(r[0]), "=r"(r[1]) : "r"(PTX_SMEM(smem_row)));
#endif
}

static __device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void *smem_row)
{
#ifdef ANATOMY_EMU
	ptx_ldmatrix(r, smem_row, 4, 1, "ldmatrix.x4.trans");
#else
	asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
		     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(PTX_SMEM(smem_row)));
#endif
}

/* cp.async.cg.shared.global [smem], [gmem], 16: an asynchronous 16-byte copy
 * that lands only when a cp_async_wait covering its group returns (the
 * emulator holds it until then, so reading early is caught). */
static __device__ __forceinline__ void cp_async_16(void *smem, const void *gmem)
{
#ifdef ANATOMY_EMU
	emu_cp_async(smem, gmem, 16, 16);
#else
	asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" :: "r"(PTX_SMEM(smem)), "l"(gmem));
#endif
}

/* As cp_async_16, but only src_bytes (0..16) are read; the rest of the 16
 * bytes are zero-filled (for tiles that hang over the edge of a matrix). */
static __device__ __forceinline__ void cp_async_16_zfill(void *smem, const void *gmem, int src_bytes)
{
#ifdef ANATOMY_EMU
	emu_cp_async(smem, gmem, 16, src_bytes);
#else
	asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" :: "r"(PTX_SMEM(smem)), "l"(gmem), "r"(src_bytes));
#endif
}

/* cp.async.commit_group: closes the group of this thread's copies so far. */
static __device__ __forceinline__ void cp_async_commit(void)
{
#ifdef ANATOMY_EMU
	emu_cp_async_commit();
#else
	asm volatile("cp.async.commit_group;\n" ::);
#endif
}

/* cp.async.wait_group N: waits until at most N of this thread's committed
 * groups are still in flight. Other threads' copies need a __syncthreads too. */
template <int N> static __device__ __forceinline__ void cp_async_wait(void)
{
#ifdef ANATOMY_EMU
	emu_cp_async_wait(N);
#else
	asm volatile("cp.async.wait_group %0;\n" :: "n"(N));
#endif
}

/* ---- ordering between blocks ----
 * A producer block publishes its global writes to a consumer block through a
 * counter in global memory, as the PTX memory model's release/acquire
 * patterns do ("Memory Consistency Model", release and acquire patterns):
 *
 *   producer: writes; __syncthreads(); one thread: flag_release_add(f, 1)
 *   consumer: one thread: flag_wait_geq(f, n); __syncthreads(); reads
 *
 * The barrier orders the other threads' writes before the releasing
 * thread's red.release.gpu (bar.sync is part of the causality order at CTA
 * scope, and release is cumulative over what precedes it), and orders the
 * acquiring thread's ld.acquire.gpu before the other threads' reads. Both
 * sides use .gpu scope: the blocks may run on any SM.
 *
 * A block may only wait on blocks that have already started: CUDA schedules
 * blocks in no promised order and keeps a started block running, so a grid
 * in which every wait targets an earlier-started block cannot hang (the
 * earliest-started unfinished block waits on nothing unfinished). The
 * caller's job is to make that so, e.g. with tiles handed out by an atomic
 * ticket. In the emulator the wait sleeps the thread and lets the other
 * started blocks run (emu_spin_wait); a grid where none can is reported as a
 * deadlock. */

/* Waits until the int at flag is at least value (acquire, GPU scope). */
static __device__ __forceinline__ void flag_wait_geq(const int *flag, int value)
{
#ifdef ANATOMY_EMU
	while (*(const volatile int *)flag < value)
		emu_spin_wait((const volatile int *)flag, value);
#else
	int v;
	for (;;) {
		asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(flag) : "memory");
		if (v >= value)
			break;
		__nanosleep(64);
	}
#endif
}

/* *flag += v (release, GPU scope). */
static __device__ __forceinline__ void flag_release_add(int *flag, int v)
{
#ifdef ANATOMY_EMU
	atomicAdd(flag, v);
	emu_released();
#else
	asm volatile("red.release.gpu.global.add.s32 [%0], %1;\n" :: "l"(flag), "r"(v) : "memory");
#endif
}

#endif
