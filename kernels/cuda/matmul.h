/* matmul.h: a thin wrapper over cuBLASLt, private to kernels/cuda/.
 *
 * One call, mm_gemm, in cuBLAS's column-major terms:
 *   D[i] = alpha * op(A[i]) op(B[i]) + beta * D[i]  (+ bias broadcast along columns)
 * for i < batch, with A and B in one dtype (bf16 or fp32), D in bf16 or fp32,
 * fp32 accumulation and fp32 scaling (never TF32: the fp32 mode is the
 * verification mode), and D updated in place when beta != 0.
 *
 * The context owns one cuBLASLt handle, one workspace and a cache of planned
 * shapes (descriptors, layouts and the algorithm the heuristic picked), so a
 * call in a training step allocates nothing and queries nothing.
 *
 * Under ANATOMY_EMU there is no cuBLASLt: mm_gemm computes on the CPU with
 * OpenBLAS's sgemm on the inputs widened exactly from their stored values
 * (bf16 -> fp32 is exact), then applies alpha, beta, bias (and GELU) and
 * rounds to D's type once, round to nearest even, as cuBLASLt's epilogue does.
 * It keeps the same plan cache, by the same key, and dies when a cached plan
 * is reused with a pointer less aligned than the one it was made for (a key
 * missing an alignment), or when a GELU epilogue is asked for in fp32.
 *
 * Both builds count the calls run with each epilogue (mm_runs), and in both
 * ANATOMY_LT_REFUSE=DGELU,BGRADB makes the plans of those epilogues as if
 * the heuristic had no algorithm, so that the callers' fallbacks run. */
#ifndef ANATOMY_CUDA_MATMUL_H
#define ANATOMY_CUDA_MATMUL_H

#include "cuda_compat.cuh"

#include "../ops.h"

#include <stdint.h>

typedef struct mm_ctx mm_ctx;

/* Workspace for cuBLASLt (32 MiB: what Hopper's fastest kernels ask for). */
#define MM_WORKSPACE (32u << 20)

/* Creates the context on `stream`; NULL with err filled (256 bytes) on failure. */
mm_ctx *mm_create(cudaStream_t stream, char *err);
void mm_destroy(mm_ctx *c);
/* Device bytes a context holds: MM_WORKSPACE (none in the emulator). */
size_t mm_device_bytes(void);

/* D = alpha op(A) op(B) + beta D (+ bias[m]), column-major, batched by
 * strides (elements). ta/tb: 1 = transposed. A is (ta ? k x m : m x k) with
 * leading dimension lda; B is (tb ? n x k : k x n); D is m x n. ab: dtype of
 * A and B; dd: dtype of D and bias. Dies on a cuBLASLt error. */
void mm_gemm(mm_ctx *c, int ta, int tb, int m, int n, int k, dtype ab, const void *A, int lda,
	     long long sA, const void *B, int ldb, long long sB, dtype dd, void *D, int ldd,
	     long long sD, int batch, float alpha, float beta, const void *bias);

/* D = GELU(op(A) op(B) + bias) and aux = op(A) op(B) + bias (the GELU input,
 * kept for the backward), one unbatched bf16 call with alpha 1, beta 0:
 * cuBLASLt's GELU_AUX_BIAS epilogue (GELU_AUX when bias is NULL), whose GELU
 * is the tanh approximation. aux has D's dtype and leading dimension ldd,
 * which must be a multiple of 8 (cuBLASLt's rule for the aux matrix), and
 * aux must be 16-byte aligned: mm_gelu_ok says whether a call qualifies. */
void mm_gemm_gelu(mm_ctx *c, int ta, int tb, int m, int n, int k, dtype ab, const void *A, int lda,
		  const void *B, int ldb, dtype dd, void *D, int ldd, const void *bias, void *aux);
static inline int mm_gelu_ok(int ldd, const void *aux)
{
	return ldd % 8 == 0 && ((uintptr_t)aux & 15) == 0;
}

/* D = (op(A) op(B)) * GELU'(aux), unbatched, alpha 1, beta 0 (D written,
 * not read): cuBLASLt's DGELU epilogue, aux as for mm_gemm_gelu (the saved
 * pre-activation; mm_gelu_ok must hold). Returns 0, doing nothing, when
 * cuBLASLt has no algorithm for it. */
int mm_gemm_dgelu(mm_ctx *c, int ta, int tb, int m, int n, int k, dtype ab, const void *A, int lda,
		  const void *B, int ldb, dtype dd, void *D, int ldd, const void *aux);

/* D = op(A) op(B) + beta D, unbatched, and dbias[j] = sum over k of
 * op(B)[k, j] for the n columns, WRITTEN in D's type: cuBLASLt's BGRADB
 * epilogue. Returns 0, doing nothing, when cuBLASLt has no algorithm for it. */
int mm_gemm_bgradb(mm_ctx *c, int ta, int tb, int m, int n, int k, dtype ab, const void *A, int lda,
		   const void *B, int ldb, dtype dd, void *D, int ldd, float beta, void *dbias);

/* The calls run with epilogue epi (CUDA_MM_*, ops.h) since mm_create. */
unsigned long mm_runs(const mm_ctx *c, int epi);

#endif
