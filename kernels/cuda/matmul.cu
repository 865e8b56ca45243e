/* matmul.cu: the cuBLASLt wrapper (matmul.h) and the matmul ops.
 *
 *   matmul_forward:  out[N,OC] = inp[N,IC] @ weight[OC,IC]^T + bias   (BIAS epilogue)
 *   matmul_gelu_forward: the same into out_pre, and GELU(out_pre) into out_gelu
 *                    (GELU_AUX_BIAS epilogue: one pass, no re-read of out_pre)
 *   matmul_backward: dinp (+)= dout @ weight (beta 1, or 0 for GRAD_SET);
 *                    dweight += dout^T @ inp (beta 1), and dbias from the same
 *                    call's BGRADB epilogue (column sums of dout)
 *   matmul_gelu_backward: dpre = (dout @ weight) * GELU'(pre) in one call
 *                    (DGELU epilogue, beta 0), then dweight and dbias as above
 *
 * Row-major [R, C] is column-major [C x R] with leading dimension C, so each
 * row-major product becomes one cuBLAS call with the operands swapped.
 *
 * The bias gradient: cuBLASLt's BGRADB epilogue writes (does not add) the
 * column sums of B, here dout, while the dweight product runs; they go to a
 * scratch vector of OC elements that one small kernel adds into dbias (the op
 * accumulates). Where cuBLASLt offers no algorithm for that epilogue (its
 * heuristic answers none; it documents no rule), the plan remembers so and
 * the deterministic two-pass column sum runs instead: partial sums over
 * chunks of rows, then one ordered sum per column (no atomics). */
#include "cuda_backend.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------- plans, in both builds */

/* Everything a cuBLASLt plan depends on, alignment of the pointers included
 * (an algorithm chosen for 256-byte aligned operands may not run on others):
 * the bias and the GELU aux matrix too, since cublasLt.h says the heuristic
 * reads their pointers' alignment (CUBLASLT_MATMUL_DESC_BIAS_POINTER,
 * EPILOGUE_AUX_POINTER). The emulated build keys its plan cache the same way
 * and checks each reuse against the pointers the plan was made for. */
struct mm_key {
	int ta, tb, m, n, k, lda, ldb, ldd, batch, ab, dd, epi;	/* epi: CUDA_MM_* */
	long long sA, sB, sD;
	unsigned alA, alB, alD, alX, alBias;	/* alX: the GELU aux matrix; alBias: bias or its gradient */
};

/* Largest power of two (<= 256) dividing the address of every matrix of the batch. */
static unsigned align_of(const void *p, long long stride, size_t esize, int batch)
{
	uintptr_t a = (uintptr_t)p;
	if (batch > 1)
		a |= (uintptr_t)(stride * (long long)esize);
	unsigned al = 256;
	while (al > 1 && a % al)
		al >>= 1;
	return al;
}

static void mm_key_make(mm_key *key, int ta, int tb, int m, int n, int k, dtype ab, const void *A, int lda,
			long long sA, const void *B, int ldb, long long sB, dtype dd, const void *D, int ldd,
			long long sD, int batch, int epi, const void *bias, const void *aux)
{
	memset(key, 0, sizeof *key);	/* padding too: keys are compared with memcmp */
	key->ta = ta, key->tb = tb, key->m = m, key->n = n, key->k = k;
	key->lda = lda, key->ldb = ldb, key->ldd = ldd, key->batch = batch;
	key->ab = ab, key->dd = dd, key->epi = epi;
	key->sA = sA, key->sB = sB, key->sD = sD;
	key->alA = align_of(A, sA, dtype_size(ab), batch);
	key->alB = align_of(B, sB, dtype_size(ab), batch);
	key->alD = align_of(D, sD, dtype_size(dd), batch);
	key->alX = aux ? align_of(aux, 0, dtype_size(dd), 1) : 0;
	key->alBias = bias ? align_of(bias, 0, dtype_size(dd), 1) : 0;
}

#define MM_CACHE 64

/* ANATOMY_LT_REFUSE=DGELU,BGRADB (either or both): plans of those epilogues
 * are made as if cuBLASLt's heuristic had no algorithm for them, so the ops'
 * fallbacks run: in the emulator to test them in bf16, on a GPU to time the
 * fused path against them in one build. Read once, when a context is made. */
static unsigned mm_refuse_from_env(void)
{
	const char *e = getenv("ANATOMY_LT_REFUSE");
	unsigned r = 0;
	if (e && strstr(e, "DGELU"))
		r |= 1u << CUDA_MM_DGELU;
	if (e && strstr(e, "BGRADB"))
		r |= 1u << CUDA_MM_BGRADB;
	return r;
}

/* Which pointers an epilogue takes: bias (read for BIAS, written for BGRADB)
 * and the aux matrix (written by GELU_AUX, read by DGELU). */
static int epi_aux(int epi) { return epi == CUDA_MM_GELU_AUX || epi == CUDA_MM_DGELU; }

/* The checks common to both builds: what cublasLt.h says each epilogue needs
 * (the aux leading dimension a multiple of 8; the BGRADB vector n long, which
 * an unbatched call guarantees), and what this wrapper promises to use them
 * with (beta 0 and alpha 1 where cuBLASLt's documentation leaves the order of
 * scaling and epilogue unsaid). Misuse by a caller: dies. */
static void epi_check(int epi, int ldd, int batch, float alpha, float beta, const void *bias, const void *aux)
{
	if (epi_aux(epi) && (batch != 1 || !mm_gelu_ok(ldd, aux)))
		cuda_die(__FILE__, __LINE__, "GELU epilogue: ld %d is not a multiple of 8 or aux %p is not 16-byte aligned",
			 ldd, aux);
	if (epi == CUDA_MM_DGELU && (beta != 0.0f || alpha != 1.0f))
		cuda_die(__FILE__, __LINE__, "DGELU epilogue with alpha %g, beta %g: only 1 and 0 are used", alpha, beta);
	if (epi == CUDA_MM_BGRADB && (batch != 1 || alpha != 1.0f || !bias))
		cuda_die(__FILE__, __LINE__, "BGRADB epilogue: unbatched, alpha 1 and a gradient vector only");
	if (epi == CUDA_MM_BIAS ? !bias : bias && (epi == CUDA_MM_PLAIN || epi == CUDA_MM_DGELU))
		cuda_die(__FILE__, __LINE__, "matmul epilogue %d with%s a bias", epi, bias ? "" : "out");
}

/* ---------------------------------------------------------------- cuBLASLt */
#ifndef ANATOMY_EMU

#include <cublasLt.h>


struct mm_plan {
	mm_key key;
	int valid;
	int none;	/* the heuristic offered no algorithm (optional epilogues only) */
	cublasLtMatmulDesc_t op;
	cublasLtMatrixLayout_t a, b, d;
	cublasLtMatmulAlgo_t algo;
};

struct mm_ctx {
	cublasLtHandle_t lt;
	cudaStream_t stream;
	void *ws;
	mm_plan plan[MM_CACHE];
	int next;	/* round-robin victim when the cache is full */
	unsigned refuse;	/* bit e: treat epilogue e as having no algorithm (ANATOMY_LT_REFUSE) */
	unsigned long runs[CUDA_MM_EPILOGUES];
};

static void lt_check(cublasStatus_t s, const char *what, const char *file, int line)
{
	if (s != CUBLAS_STATUS_SUCCESS)
		cuda_die(file, line, "%s: %s", what, cublasLtGetStatusString(s));
}
#define LT_CHECK(call) lt_check((call), #call, __FILE__, __LINE__)

static cudaDataType_t lt_type(dtype t) { return t == DT_BF16 ? CUDA_R_16BF : CUDA_R_32F; }


static void lt_layout(cublasLtMatrixLayout_t *l, dtype t, int rows, int cols, int ld, int batch,
		      long long stride)
{
	LT_CHECK(cublasLtMatrixLayoutCreate(l, lt_type(t), (uint64_t)rows, (uint64_t)cols, ld));
	if (batch > 1) {
		int32_t b = batch;
		int64_t s = stride;
		LT_CHECK(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &b, sizeof b));
		LT_CHECK(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &s,
							  sizeof s));
	}
}

static void plan_release(mm_plan *p)
{
	if (!p->valid)
		return;
	p->valid = 0;
	if (p->none)
		return;	/* plan_build released what it made */
	cublasLtMatrixLayoutDestroy(p->a);
	cublasLtMatrixLayoutDestroy(p->b);
	cublasLtMatrixLayoutDestroy(p->d);
	cublasLtMatmulDescDestroy(p->op);
}

/* The cuBLASLt epilogue of key q: GELU_AUX with a bias is GELU_AUX_BIAS. */
static cublasLtEpilogue_t lt_epilogue(const mm_key *q)
{
	switch (q->epi) {
	case CUDA_MM_BIAS: return CUBLASLT_EPILOGUE_BIAS;
	case CUDA_MM_GELU_AUX: return q->alBias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
	case CUDA_MM_DGELU: return CUBLASLT_EPILOGUE_DGELU;
	case CUDA_MM_BGRADB: return CUBLASLT_EPILOGUE_BGRADB;
	default: return CUBLASLT_EPILOGUE_DEFAULT;
	}
}

/* Descriptors, layouts and the heuristic's first choice for key k. The bias
 * and aux pointers are set before the heuristic, which reads their alignment.
 * Returns 0 (plan marked `none`, nothing kept) when the heuristic has no
 * algorithm for an optional epilogue (DGELU, BGRADB: the caller has another
 * way); dies for the others, which every caller needs. */
static int plan_build(mm_ctx *c, mm_plan *p, const mm_key *k, const void *bias, const void *aux)
{
	const mm_key *q = k;
	cublasOperation_t opa = q->ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = q->tb ? CUBLAS_OP_T : CUBLAS_OP_N;
	LT_CHECK(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
	LT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
	LT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
	cublasLtEpilogue_t epi = lt_epilogue(q);
	LT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
	if (bias) {	/* the bias, or BGRADB's gradient: D's type either way (cublasLt.h) */
		int32_t bt = lt_type((dtype)q->dd);
		LT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt));
		LT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
	}
	if (aux) {	/* aux: D's type (the default), D's leading dimension */
		int64_t ld = q->ldd;
		LT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof ld));
		LT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux,
							sizeof aux));
	}
	lt_layout(&p->a, (dtype)q->ab, q->ta ? q->k : q->m, q->ta ? q->m : q->k, q->lda, q->batch, q->sA);
	lt_layout(&p->b, (dtype)q->ab, q->tb ? q->n : q->k, q->tb ? q->k : q->n, q->ldb, q->batch, q->sB);
	lt_layout(&p->d, (dtype)q->dd, q->m, q->n, q->ldd, q->batch, q->sD);

	cublasLtMatmulPreference_t pref;
	uint64_t ws = MM_WORKSPACE;
	LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
	LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
	LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &q->alA,
						      sizeof q->alA));
	LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &q->alB,
						      sizeof q->alB));
	LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &q->alD,
						      sizeof q->alD));
	LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &q->alD,
						      sizeof q->alD));
	cublasLtMatmulHeuristicResult_t res;
	int nres = 0;
	LT_CHECK(cublasLtMatmulAlgoGetHeuristic(c->lt, p->op, p->a, p->b, p->d, p->d, pref, 1, &res, &nres));
	cublasLtMatmulPreferenceDestroy(pref);
	if ((c->refuse >> q->epi) & 1)
		nres = 0;
	p->key = *k;
	p->valid = 1;
	p->none = nres < 1;
	if (p->none && (q->epi == CUDA_MM_DGELU || q->epi == CUDA_MM_BGRADB)) {
		cublasLtMatrixLayoutDestroy(p->a);
		cublasLtMatrixLayoutDestroy(p->b);
		cublasLtMatrixLayoutDestroy(p->d);
		cublasLtMatmulDescDestroy(p->op);
		return 0;
	}
	if (p->none)
		cuda_die(__FILE__, __LINE__,
			 "cuBLASLt has no algorithm for m=%d n=%d k=%d ta=%d tb=%d batch=%d (%s in, %s out, "
			 "alignment %u/%u/%u, bias %u)", q->m, q->n, q->k, q->ta, q->tb, q->batch,
			 dtype_name((dtype)q->ab), dtype_name((dtype)q->dd), q->alA, q->alB, q->alD, q->alBias);
	p->algo = res.algo;
	return 1;
}

static mm_plan *plan_get(mm_ctx *c, const mm_key *k, const void *bias, const void *aux)
{
	for (int i = 0; i < MM_CACHE; i++)
		if (c->plan[i].valid && memcmp(&c->plan[i].key, k, sizeof *k) == 0)
			return &c->plan[i];
	mm_plan *p = &c->plan[c->next];
	c->next = (c->next + 1) % MM_CACHE;
	plan_release(p);
	plan_build(c, p, k, bias, aux);
	return p;
}

unsigned long mm_runs(const mm_ctx *c, int epi) { return c->runs[epi]; }

mm_ctx *mm_create(cudaStream_t stream, char *err)
{
	mm_ctx *c = (mm_ctx *)calloc(1, sizeof *c);
	if (!c) {
		snprintf(err, 256, "out of host memory");
		return NULL;
	}
	c->stream = stream;
	c->refuse = mm_refuse_from_env();
	cublasStatus_t s = cublasLtCreate(&c->lt);
	if (s != CUBLAS_STATUS_SUCCESS) {
		snprintf(err, 256, "cublasLtCreate: %s", cublasLtGetStatusString(s));
		free(c);
		return NULL;
	}
	if (cudaMalloc(&c->ws, MM_WORKSPACE) != cudaSuccess) {
		cudaGetLastError();
		snprintf(err, 256, "no device memory for the %u MiB cuBLASLt workspace", MM_WORKSPACE >> 20);
		cublasLtDestroy(c->lt);
		free(c);
		return NULL;
	}
	return c;
}

void mm_destroy(mm_ctx *c)
{
	if (!c)
		return;
	for (int i = 0; i < MM_CACHE; i++)
		plan_release(&c->plan[i]);
	cudaFree(c->ws);
	cublasLtDestroy(c->lt);
	free(c);
}

/* Every entry point of matmul.h: one cuBLASLt call with epilogue epi.
 * Returns 0, having done nothing, when cuBLASLt has no algorithm for it. */
static int mm_run(mm_ctx *c, int ta, int tb, int m, int n, int k, dtype ab, const void *A, int lda,
		  long long sA, const void *B, int ldb, long long sB, dtype dd, void *D, int ldd,
		  long long sD, int batch, float alpha, float beta, int epi, const void *bias, const void *aux)
{
	if (m <= 0 || n <= 0 || batch <= 0)
		return 1;
	if (k <= 0)
		cuda_die(__FILE__, __LINE__, "matmul with an empty inner dimension (k = %d)", k);
	epi_check(epi, ldd, batch, alpha, beta, bias, aux);
	mm_key key;
	mm_key_make(&key, ta, tb, m, n, k, ab, A, lda, sA, B, ldb, sB, dd, D, ldd, sD, batch, epi, bias, aux);
	mm_plan *p = plan_get(c, &key, bias, aux);
	if (p->none)
		return 0;
	if (bias)
		LT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
	if (aux)
		LT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux,
							sizeof aux));
	LT_CHECK(cublasLtMatmul(c->lt, p->op, &alpha, A, p->a, B, p->b, &beta, D, p->d, D, p->d, &p->algo,
				c->ws, MM_WORKSPACE, c->stream));
	c->runs[epi]++;
	return 1;
}

#else /* ------------------------------------------- emulated: OpenBLAS sgemm */

#include "../blas.h"

/* A plan as the native build would cache it, with the alignment every
 * pointer really had when it was made: cuBLASLt picks an algorithm for those,
 * and a later call that hits the same key with a less aligned pointer would
 * run that algorithm on operands it may not support. */
struct mm_emu_plan {
	mm_key key;
	int valid;
	int none;	/* the emulated heuristic refused it (ANATOMY_LT_REFUSE) */
	unsigned al[5];	/* A, B, D, bias, aux */
};

struct mm_ctx {
	float *buf[3];
	size_t cap[3];
	mm_emu_plan plan[MM_CACHE];
	int next;
	unsigned refuse;	/* bit e: the heuristic has no algorithm for epilogue e */
	unsigned long runs[CUDA_MM_EPILOGUES];
};

/* The plan cache's lookup, checked: a hit must not be less aligned anywhere
 * than the call that made the plan (the key is missing an alignment if it is).
 * A new plan of a refused epilogue is remembered as having no algorithm, as
 * the native plan_build does when cuBLASLt's heuristic answers none.
 * Returns 0 for such a plan. */
static int mm_plan_check(mm_ctx *c, const mm_key *k, const void *bias, const void *aux)
{
	unsigned al[5] = {k->alA, k->alB, k->alD, bias ? align_of(bias, 0, dtype_size((dtype)k->dd), 1) : 256,
			  aux ? align_of(aux, 0, dtype_size((dtype)k->dd), 1) : 256};
	static const char *const names[5] = {"A", "B", "D", "bias", "GELU aux"};
	for (int i = 0; i < MM_CACHE; i++) {
		mm_emu_plan *p = &c->plan[i];
		if (!p->valid || memcmp(&p->key, k, sizeof *k) != 0)
			continue;
		for (int j = 0; j < 5; j++)
			if (al[j] < p->al[j])
				cuda_die(__FILE__, __LINE__, "cuBLASLt plan m=%d n=%d k=%d made for a %s aligned to %u bytes "
					 "reused for one aligned to %u: its key must hold that alignment", k->m, k->n, k->k,
					 names[j], p->al[j], al[j]);
		return !p->none;
	}
	mm_emu_plan *p = &c->plan[c->next];
	c->next = (c->next + 1) % MM_CACHE;
	p->key = *k;
	p->valid = 1;
	p->none = (c->refuse >> k->epi) & 1;
	memcpy(p->al, al, sizeof al);
	return !p->none;
}

unsigned long mm_runs(const mm_ctx *c, int epi) { return c->runs[epi]; }

mm_ctx *mm_create(cudaStream_t stream, char *err)
{
	(void)stream;
	mm_ctx *c = (mm_ctx *)calloc(1, sizeof *c);
	if (!c)
		snprintf(err, 256, "out of host memory");
	else
		c->refuse = mm_refuse_from_env();
	return c;
}

void mm_destroy(mm_ctx *c)
{
	if (!c)
		return;
	for (int i = 0; i < 3; i++)
		free(c->buf[i]);
	free(c);
}

static float *mm_buf(mm_ctx *c, int i, size_t n)
{
	if (n > c->cap[i]) {
		free(c->buf[i]);
		c->buf[i] = (float *)malloc(n * sizeof(float));
		if (!c->buf[i])
			cuda_die(__FILE__, __LINE__, "emulated matmul: out of host memory (%zu floats)", n);
		c->cap[i] = n;
	}
	return c->buf[i];
}

static float mm_load(const void *p, dtype t, size_t i)
{
	if (t == DT_BF16)
		return emu_bf2f(((const unsigned short *)p)[i]);
	return ((const float *)p)[i];
}

static void mm_store(void *p, dtype t, size_t i, float x)
{
	if (t == DT_BF16)
		((unsigned short *)p)[i] = emu_f2bf_rn(x);
	else
		((float *)p)[i] = x;
}

/* An fp32 view of a column-major rows x cols matrix: the matrix itself when
 * it is fp32, else an exact widening into buffer slot. */
static const float *mm_view(mm_ctx *c, int slot, dtype t, const void *p, int rows, int cols, int ld)
{
	if (t == DT_F32)
		return (const float *)p;
	size_t span = (size_t)(cols - 1) * ld + rows;
	float *f = mm_buf(c, slot, span);
	for (size_t i = 0; i < span; i++)
		f[i] = mm_load(p, t, i);
	return f;
}

/* cuBLASLt's GELU: the tanh approximation, in fp32 on the fp32 pre-activation. */
static float mm_gelu(float x)
{
	float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
	return 0.5f * x * (1.0f + tanhf(u));
}

/* Its derivative, for DGELU: on the pre-activation as stored in aux. */
static float mm_dgelu(float x)
{
	float x2 = x * x, t = tanhf(0.7978845608028654f * (x + 0.044715f * x2 * x));
	float du = 0.7978845608028654f * (1.0f + 3.0f * 0.044715f * x2);
	return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
}

/* cublasLt.h's epilogues, one rounding to D's type per output:
 *   BIAS    D = alpha op(A) op(B) + beta C + bias[row]
 *   GELU_AUX  aux = that (with or without bias), D = GELU(aux)
 *   DGELU   D = (alpha op(A) op(B)) * GELU'(aux), aux read (beta 0 only)
 *   BGRADB  D as with no epilogue, and bias[j] = sum over k of op(B)[k, j]
 *           ("the number of columns of D", "reduction over k"), written */
static int mm_run(mm_ctx *c, int ta, int tb, int m, int n, int k, dtype ab, const void *A, int lda,
		  long long sA, const void *B, int ldb, long long sB, dtype dd, void *D, int ldd,
		  long long sD, int batch, float alpha, float beta, int epi, const void *bias, const void *aux)
{
	if (m <= 0 || n <= 0 || batch <= 0)
		return 1;
	if (k <= 0)
		cuda_die(__FILE__, __LINE__, "matmul with an empty inner dimension (k = %d)", k);
	epi_check(epi, ldd, batch, alpha, beta, bias, aux);
	if (epi_aux(epi) && dd != DT_BF16)
		cuda_die(__FILE__, __LINE__, "GELU epilogue on %s: cuBLASLt does not document its GELU's accuracy, "
			 "which fp32 (verification) mode must not depend on", dtype_name(dd));
	mm_key key;
	mm_key_make(&key, ta, tb, m, n, k, ab, A, lda, sA, B, ldb, sB, dd, D, ldd, sD, batch, epi, bias, aux);
	if (!mm_plan_check(c, &key, bias, aux))
		return 0;
	size_t ea = dtype_size(ab), ed = dtype_size(dd);
	for (int i = 0; i < batch; i++) {
		const void *Ai = (const char *)A + (size_t)(i * sA) * ea;
		const void *Bi = (const char *)B + (size_t)(i * sB) * ea;
		void *Di = (char *)D + (size_t)(i * sD) * ed;
		const float *Af = mm_view(c, 0, ab, Ai, ta ? k : m, ta ? m : k, lda);
		const float *Bf = mm_view(c, 1, ab, Bi, tb ? n : k, tb ? k : n, ldb);
		float *acc = mm_buf(c, 2, (size_t)m * n);
		cblas_sgemm(CblasColMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n,
			    k, 1.0f, Af, lda, Bf, ldb, 0.0f, acc, m);
		/* the epilogue in fp32, one rounding to D's type */
		for (int j = 0; j < n; j++) {
			for (int r = 0; r < m; r++) {
				size_t di = (size_t)j * ldd + r;
				float x = alpha * acc[(size_t)j * m + r];
				if (beta != 0.0f)
					x += beta * mm_load(Di, dd, di);
				if (bias && epi != CUDA_MM_BGRADB)
					x += mm_load(bias, dd, (size_t)r);
				if (epi == CUDA_MM_GELU_AUX) {
					mm_store((void *)aux, dd, di, x);
					x = mm_gelu(x);
				}
				if (epi == CUDA_MM_DGELU)
					x *= mm_dgelu(mm_load(aux, dd, di));
				mm_store(Di, dd, di, x);
			}
		}
		if (epi == CUDA_MM_BGRADB) {	/* op(B)[kk, j] is B[j + kk ldb] transposed, B[kk + j ldb] not */
			for (int j = 0; j < n; j++) {
				float g = 0.0f;
				for (int kk = 0; kk < k; kk++)
					g += tb ? Bf[(size_t)kk * ldb + j] : Bf[(size_t)j * ldb + kk];
				mm_store((void *)bias, dd, (size_t)j, g);
			}
		}
	}
	c->runs[epi]++;
	return 1;
}

#endif /* ANATOMY_EMU */

size_t mm_device_bytes(void)
{
#ifdef ANATOMY_EMU
	return 0;	/* the emulated matmul needs no workspace */
#else
	return MM_WORKSPACE;
#endif
}

void mm_gemm(mm_ctx *c, int ta, int tb, int m, int n, int k, dtype ab, const void *A, int lda,
	     long long sA, const void *B, int ldb, long long sB, dtype dd, void *D, int ldd,
	     long long sD, int batch, float alpha, float beta, const void *bias)
{
	mm_run(c, ta, tb, m, n, k, ab, A, lda, sA, B, ldb, sB, dd, D, ldd, sD, batch, alpha, beta,
	       bias ? CUDA_MM_BIAS : CUDA_MM_PLAIN, bias, NULL);
}

void mm_gemm_gelu(mm_ctx *c, int ta, int tb, int m, int n, int k, dtype ab, const void *A, int lda,
		  const void *B, int ldb, dtype dd, void *D, int ldd, const void *bias, void *aux)
{
	mm_run(c, ta, tb, m, n, k, ab, A, lda, 0, B, ldb, 0, dd, D, ldd, 0, 1, 1.0f, 0.0f, CUDA_MM_GELU_AUX, bias,
	       aux);
}

int mm_gemm_dgelu(mm_ctx *c, int ta, int tb, int m, int n, int k, dtype ab, const void *A, int lda,
		  const void *B, int ldb, dtype dd, void *D, int ldd, const void *aux)
{
	return mm_run(c, ta, tb, m, n, k, ab, A, lda, 0, B, ldb, 0, dd, D, ldd, 0, 1, 1.0f, 0.0f, CUDA_MM_DGELU,
		      NULL, aux);
}

int mm_gemm_bgradb(mm_ctx *c, int ta, int tb, int m, int n, int k, dtype ab, const void *A, int lda,
		   const void *B, int ldb, dtype dd, void *D, int ldd, float beta, void *dbias)
{
	return mm_run(c, ta, tb, m, n, k, ab, A, lda, 0, B, ldb, 0, dd, D, ldd, 0, 1, 1.0f, beta, CUDA_MM_BGRADB,
		      dbias, NULL);
}

/* ------------------------------------------------------------ column sums */

#define COLSUM_ROWS 128	/* rows per partial sum */
#define COLSUM_THREADS 256

/* part[y, c] = sum of x[r, c] for r in row chunk y, in row order. */
template <class T> __global__ void colsum_partial_kernel(float *part, const T *x, int N, int C)
{
	int c = blockIdx.x * blockDim.x + threadIdx.x;
	int r0 = blockIdx.y * COLSUM_ROWS, r1 = min(r0 + COLSUM_ROWS, N);
	if (c >= C)
		return;
	float s = 0.0f;
	for (int r = r0; r < r1; r++)
		s += to_f(x[(size_t)r * C + c]);
	part[(size_t)blockIdx.y * C + c] = s;
}

/* out[c] += sum over chunks of part[y, c], in chunk order. */
template <class T> __global__ void colsum_finish_kernel(T *out, const float *part, int R, int C)
{
	int c = blockIdx.x * blockDim.x + threadIdx.x;
	if (c >= C)
		return;
	float s = 0.0f;
	for (int y = 0; y < R; y++)
		s += part[(size_t)y * C + c];
	out[c] = from_f<T>(to_f(out[c]) + s);
}

size_t cuda_colsum_scratch_bytes(int N, int C)
{
	return (size_t)cdiv((size_t)N, COLSUM_ROWS) * C * sizeof(float);
}

template <class T> static void colsum_add(cuda_backend *cb, T *out, const T *x, int N, int C)
{
	int R = (int)cdiv((size_t)N, COLSUM_ROWS);
	if (R > 65535)
		cuda_die(__FILE__, __LINE__, "column sum over %d rows: more than %d rows", N, 65535 * COLSUM_ROWS);
	float *part = (float *)cuda_scratch(cb, SCR_COLSUM, cuda_colsum_scratch_bytes(N, C));
	dim3 grid(cdiv((size_t)C, COLSUM_THREADS), (unsigned)R);
	CUDA_LAUNCH(grid, COLSUM_THREADS, 0, cb->stream, colsum_partial_kernel<T>)(part, x, N, C);
	LAUNCH_CHECK();
	CUDA_LAUNCH(cdiv((size_t)C, COLSUM_THREADS), COLSUM_THREADS, 0, cb->stream, colsum_finish_kernel<T>)(
		out, part, R, C);
	LAUNCH_CHECK();
}

/* ------------------------------------------------------------------ ops */

void cuda_matmul_forward(backend *be, void *out, const void *inp, const void *weight,
			 const void *bias, int N, int IC, int OC)
{
	NVTX_RANGE("matmul_forward");
	cuda_backend *cb = cuda_of(be);
	if (N <= 0 || OC <= 0)
		return;
	/* out^T [OC x N] = W^T-view^T [OC x IC] * inp^T [IC x N] */
	mm_gemm(cb->mm, 1, 0, OC, N, IC, be->act, weight, IC, 0, inp, IC, 0, be->act, out, OC, 0, 1, 1.0f,
		0.0f, bias);
}

/* One cuBLASLt call with the GELU_AUX(_BIAS) epilogue in bf16 when OC and
 * out_pre qualify (mm_gelu_ok), else matmul_forward then gelu_forward. The
 * fp32 mode always takes the second way: it verifies against the CPU to
 * 1e-5, and cuBLASLt does not document its GELU's accuracy (a hardware tanh
 * approximation would be about 2^-11 relative), while gelu.cu computes
 * tanhf in fp32. */
void cuda_matmul_gelu_forward(backend *be, void *out_pre, void *out_gelu, const void *inp,
			      const void *weight, const void *bias, int N, int IC, int OC)
{
	NVTX_RANGE("matmul_gelu_forward");
	cuda_backend *cb = cuda_of(be);
	if (N <= 0 || OC <= 0)
		return;
	if (be->act != DT_BF16 || !mm_gelu_ok(OC, out_pre)) {
		cuda_matmul_forward(be, out_pre, inp, weight, bias, N, IC, OC);
		cuda_gelu_forward(be, out_gelu, out_pre, (size_t)N * OC);
		return;
	}
	mm_gemm_gelu(cb->mm, 1, 0, OC, N, IC, be->act, weight, IC, inp, IC, be->act, out_gelu, OC, bias, out_pre);
}

/* dweight += inp^T dout and dbias += column sums of dout: one cuBLASLt call
 * whose BGRADB epilogue writes the sums into scratch, then a kernel of OC
 * elements adds them (the op accumulates; the epilogue writes); or, where
 * cuBLASLt has no BGRADB algorithm, the product alone and the column sum. */
static void weight_bias_grad(backend *be, void *dweight, void *dbias, const void *dout, const void *inp, int N,
			     int IC, int OC)
{
	cuda_backend *cb = cuda_of(be);
	/* dW^T [IC x OC] += inp^T [IC x N] * dout [N x OC]; op(B) = dout, so its
	 * sums over k = N are dbias */
	if (dbias && dweight) {
		void *g = cuda_scratch(cb, SCR_COLSUM, (size_t)OC * dtype_size(be->act));
		if (mm_gemm_bgradb(cb->mm, 0, 1, IC, OC, N, be->act, inp, IC, dout, OC, be->act, dweight, IC, 1.0f,
				   g)) {
			cuda_accumulate(be, dbias, g, (size_t)OC);
			return;
		}
	}
	if (dweight)
		mm_gemm(cb->mm, 0, 1, IC, OC, N, be->act, inp, IC, 0, dout, OC, 0, be->act, dweight, IC, 0, 1, 1.0f,
			1.0f, NULL);
	if (!dbias)
		return;
	if (be->act == DT_BF16)
		colsum_add(cb, (__nv_bfloat16 *)dbias, (const __nv_bfloat16 *)dout, N, OC);
	else
		colsum_add(cb, (float *)dbias, (const float *)dout, N, OC);
}

void cuda_matmul_backward(backend *be, void *dinp, void *dweight, void *dbias, const void *dout,
			  const void *inp, const void *weight, int N, int IC, int OC, grad_mode dinp_mode)
{
	NVTX_RANGE("matmul_backward");
	cuda_backend *cb = cuda_of(be);
	if (N <= 0 || IC <= 0 || OC <= 0)
		return;
	/* dinp^T [IC x N] (+)= W-view [IC x OC] * dout^T [OC x N]; beta 0 reads nothing */
	if (dinp)
		mm_gemm(cb->mm, 0, 0, IC, N, OC, be->act, weight, IC, 0, dout, OC, 0, be->act, dinp, IC, 0, 1,
			1.0f, dinp_mode == GRAD_SET ? 0.0f : 1.0f, NULL);
	weight_bias_grad(be, dweight, dbias, dout, inp, N, IC, OC);
}

/* bf16: dpre^T [IC x N] = (W-view [IC x OC] * dout^T [OC x N]) * GELU'(pre^T),
 * the DGELU epilogue with pre as aux (same shape and leading dimension IC,
 * which must be a multiple of 8, pre 16-byte aligned: mm_gelu_ok). Otherwise,
 * and always in fp32, the product with beta 0 into dpre and gelu.cu's
 * in-place GELU' kernel: fp32 is the 1e-5 verification mode, and cuBLASLt
 * documents neither its GELU derivative's accuracy nor (cublasLt.h lists
 * the epilogues, not their types) an fp32 DGELU; the forward's rule. */
void cuda_matmul_gelu_backward(backend *be, void *dpre, void *dweight, void *dbias, const void *dout,
			       const void *inp, const void *pre, const void *weight, int N, int IC, int OC)
{
	NVTX_RANGE("matmul_gelu_backward");
	cuda_backend *cb = cuda_of(be);
	if (N <= 0 || IC <= 0)
		return;
	if (OC <= 0) {	/* an empty product: dpre = 0 */
		be->fill(be, dpre, be->act, 0.0, (size_t)N * IC);
		return;
	}
	int fused = be->act == DT_BF16 && mm_gelu_ok(IC, pre) &&
		    mm_gemm_dgelu(cb->mm, 0, 0, IC, N, OC, be->act, weight, IC, dout, OC, be->act, dpre, IC, pre);
	if (!fused) {
		mm_gemm(cb->mm, 0, 0, IC, N, OC, be->act, weight, IC, 0, dout, OC, 0, be->act, dpre, IC, 0, 1, 1.0f,
			0.0f, NULL);
		cuda_gelu_backward_scale(be, dpre, pre, (size_t)N * IC);
	}
	weight_bias_grad(be, dweight, dbias, dout, inp, N, IC, OC);
}
