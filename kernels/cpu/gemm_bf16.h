/* gemm_bf16.h: matrix products with bf16 inputs and fp32 sums on the CPU
 * (the CPU backend's --precision bf16), on one of two x86-64 kernels:
 *
 *   BF16_AMX     Intel AMX tiles (TDPBF16PS): Sapphire Rapids and later
 *   BF16_AVX512  AVX512-BF16 vectors (VDPBF16PS): AMD Zen 4 and later,
 *                Intel Cooper Lake, and every CPU with AMX
 *
 * Both read the same packed operands and sum every element in one fixed
 * order over K; the two kernels' sums may differ in the last bits. Where
 * neither exists, bf16_gemm_pick says why and bf16_gemm may not be called. */
#ifndef ANATOMY_GEMM_BF16_H
#define ANATOMY_GEMM_BF16_H

#include <stddef.h>

typedef enum { BF16_NONE = 0, BF16_AMX, BF16_AVX512 } bf16_kernel;

/* The kernel this process uses: AMX where the CPU has AMX-BF16 and the
 * Linux kernel lets this process use the tile registers, else AVX512-BF16,
 * else BF16_NONE with why (a phrase naming what is missing). ANATOMY_NO_AMX
 * and ANATOMY_NO_AVX512BF16 (set to something other than 0) each rule out
 * their kernel, as a CPU without it would. Decided once per process: call it
 * before any thread runs bf16_gemm. */
bf16_kernel bf16_gemm_pick(char *why, size_t n);

/* 0 when this CPU can run kernel k (for AMX: and the tiles were granted),
 * whatever the environment says; else -1 with why. What the tests use to
 * run every kernel a machine has. */
int bf16_kernel_usable(bf16_kernel k, char *why, size_t n);

/* "AMX-BF16 tiles", "AVX512-BF16 vectors" or "none". */
const char *bf16_kernel_name(bf16_kernel k);

/* Bytes of scratch bf16_gemm needs for these sizes (either kernel). */
size_t bf16_gemm_scratch(int M, int N, int K);

/* Called once on each finished piece of a row of C (the whole sum and beta
 * applied), while it is still in cache: c is C[row][col .. col + n), row and
 * col counted from the call's C. What the caller fuses into the product
 * (a bias, an activation) without another pass over memory. */
typedef void (*bf16_epilogue)(void *ctx, float *c, int row, int col, int n);

/* C[M,N] = beta C + op(A)[M,K] op(B)[K,N] on kernel k (one that
 * bf16_kernel_usable accepts), row-major as cblas_sgemm with alpha 1:
 * op(A) = A (A[i*lda + k]) or, with ta, A^T (A[k*lda + i]); B likewise with
 * tb. A and B are rounded to bf16 (to nearest even) and the products summed
 * in fp32; beta 0 does not read C. Then epilogue (unless NULL) on every
 * element once, with ctx. One thread; scratch: bf16_gemm_scratch(M, N, K)
 * bytes, 64-byte aligned. The result is the same for any split of M or N
 * into calls, so threads give identical bits. */
void bf16_gemm(bf16_kernel k, int ta, int tb, int M, int N, int K, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc, void *scratch,
               bf16_epilogue epilogue, void *ctx);

#endif
