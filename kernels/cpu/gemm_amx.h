/* gemm_amx.h: matrix products on Intel AMX tiles with bf16 inputs and fp32
 * accumulation (the CPU backend's --precision bf16), for x86-64 CPUs with
 * AMX-BF16 (Sapphire Rapids and later). Elsewhere amx_enable says why not
 * and nothing else may be called. */
#ifndef ANATOMY_GEMM_AMX_H
#define ANATOMY_GEMM_AMX_H

#include <stddef.h>

/* 0 when this CPU has AMX-BF16 and the kernel lets this process use the tile
 * registers (Linux asks each process to request them); else -1 with why (a
 * phrase: "this CPU has no AMX-BF16", ...); also -1 when the environment
 * sets ANATOMY_NO_AMX (to something other than 0), as a CPU without it would.
 * Decided once per process: call it before any thread runs amx_gemm. */
int amx_enable(char *why, size_t n);

/* Bytes of scratch amx_gemm needs for these sizes. */
size_t amx_gemm_scratch(int M, int N, int K);

/* Called once on each finished piece of a row of C (the whole sum and beta
 * applied), while it is still in cache: c is C[row][col .. col + n), row and
 * col counted from the call's C. What the caller fuses into the product
 * (a bias, an activation) without another pass over memory. */
typedef void (*amx_epilogue)(void *ctx, float *c, int row, int col, int n);

/* C[M,N] = beta C + op(A)[M,K] op(B)[K,N], row-major as cblas_sgemm with
 * alpha 1: op(A) = A (A[i*lda + k]) or, with ta, A^T (A[k*lda + i]); B
 * likewise with tb. A and B are rounded to bf16 (to nearest even) and the
 * products summed in fp32; beta 0 does not read C. Then epilogue (unless
 * NULL) on every element once, with ctx. One thread; scratch:
 * amx_gemm_scratch(M, N, K) bytes, 64-byte aligned. The result is the same
 * for any split of M or N into calls, so threads give identical bits. */
void amx_gemm(int ta, int tb, int M, int N, int K, const float *A, int lda, const float *B,
              int ldb, float beta, float *C, int ldc, void *scratch, amx_epilogue epilogue,
              void *ctx);

#endif
