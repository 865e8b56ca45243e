/* test_gemm_bf16.c: the bf16 matmul (kernels/cpu/gemm_bf16.c), each of its
 * kernels this CPU has (AMX tiles, AVX512-BF16 vectors), against a
 * double-precision product of the same bf16-rounded inputs, and the CPU
 * backend that runs its linear layers on the kernel it picks
 * (backend_cpu_bf16_create) against the fp32 backend. On a CPU with neither
 * kernel (or with ANATOMY_NO_AMX and ANATOMY_NO_AVX512BF16 set) the suite
 * checks that the backend refuses with a reason, and says which products
 * were not run. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../kernels/cpu/gemm_bf16.h"
#include "../kernels/ops.h"
#include "alloc_fault.h"
#include "testrand.h"

static int have_bf16; /* the backend's pick is a kernel */
static int usable[3]; /* by bf16_kernel: the kernels this CPU runs */
static const bf16_kernel kernels[] = { BF16_AMX, BF16_AVX512 };

/* x rounded to bf16, to nearest even (what the kernel feeds the tiles) */
static double bf16_round(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&x, &u, sizeof x);
    return x;
}

static float *randm(size_t n, double scale)
{
    float *x = xmalloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(scale * nrand());
    return x;
}

static void *scratch_for(int M, int N, int K)
{
    size_t n = (bf16_gemm_scratch(M, N, K) + 63) / 64 * 64;
    void *p = aligned_alloc(64, n);
    ck_assert_ptr_nonnull(p);
    memset(p, 0xff, n); /* NaN bytes: the kernel must not read what it did not write */
    return p;
}

/* The epilogue under test: c = 2c + 1, each element's visits counted, and
 * the row and column it is told checked against the pointer it is given. */
typedef struct {
    float *C;
    int ldc, N;
    unsigned char *seen;
} epilogue_check;

static void twice_plus_one(void *ctx, float *c, int row, int col, int n)
{
    epilogue_check *e = ctx;
    ck_assert_msg(c == e->C + (size_t)row * e->ldc + col && n >= 1 && col + n <= e->N,
                  "epilogue told row %d col %d n %d for C + %td", row, col, n, c - e->C);
    for (int j = 0; j < n; j++) {
        c[j] = 2 * c[j] + 1;
        e->seen[(size_t)row * e->N + col + j]++;
    }
}

/* C = 2 (beta C + op(A) op(B)) + 1 for one random shape and layout, the
 * "2 x + 1" by the epilogue: every element within the fp32 summation bound
 * of the exact product of the rounded inputs; further from the unrounded
 * product (the rounding happened); with leading dimensions wider than the
 * matrices, whose gaps stay untouched; the epilogue once per element, after
 * the whole sum (K blocks included). */
static void check_shape(bf16_kernel kn, int ta, int tb, int M, int N, int K, float beta)
{
    int lda = (ta ? M : K) + irand(3), ldb = (tb ? K : N) + irand(3), ldc = N + irand(3);
    float *A = randm((size_t)(ta ? K : M) * lda, 1.0), *B = randm((size_t)(tb ? N : K) * ldb, 1.0);
    float *C = randm((size_t)M * ldc, 1.0), *C0 = xmalloc((size_t)M * ldc * sizeof *C0);
    memcpy(C0, C, (size_t)M * ldc * sizeof *C);
    void *scr = scratch_for(M, N, K);
    epilogue_check ec = { C, ldc, N, calloc((size_t)M * N, 1) };
    bf16_gemm(kn, ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc, scr, twice_plus_one, &ec);
    double worst = 0, unrounded = 0;
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < ldc; j++) {
            size_t at = (size_t)i * ldc + j;
            if (j >= N) {
                ck_assert_msg(memcmp(&C[at], &C0[at], sizeof *C) == 0,
                              "C[%d][%d] beside the matrix (ldc %d) was written", i, j, ldc);
                continue;
            }
            double s = 0, sa = 0, exact = 0;
            for (int k = 0; k < K; k++) {
                float a = ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                float b = tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                s += bf16_round(a) * bf16_round(b);
                sa += fabs(bf16_round(a) * bf16_round(b));
                exact += (double)a * b;
            }
            ck_assert_msg(ec.seen[(size_t)i * N + j] == 1, "%s, ta %d tb %d %dx%dx%d: the epilogue "
                          "ran %d times on C[%d][%d]", bf16_kernel_name(kn), ta, tb, M, N, K,
                          ec.seen[(size_t)i * N + j], i, j);
            double base = beta == 0.0f ? 0.0 : (double)beta * C0[at];
            double want = 2 * (base + s) + 1;
            double bound = 2 * (K + 2) * ldexp(1.0, -24) * (sa + fabs(base)) +
                           ldexp(1.0, -23) * (fabs(want) + 1);
            double e = fabs(C[at] - want) / bound;
            ck_assert_msg(e <= 1.0,
                          "%s, ta %d tb %d %dx%dx%d beta %g: C[%d][%d] = %.9g, want %.9g (%.2f of the "
                          "fp32 bound)", bf16_kernel_name(kn), ta, tb, M, N, K, beta, i, j, C[at], want, e);
            worst = e > worst ? e : worst;
            unrounded = fmax(unrounded, fabs((C[at] - 1) / 2 - base - exact) / (sa + 1e-30));
        }
    }
    /* bf16 keeps 8 bits: products of rounded inputs stray by ~2^-9 of their size */
    if (K >= 8)
        ck_assert_msg(unrounded > 1e-5, "%s, ta %d tb %d %dx%dx%d: within %.2g of the unrounded product: "
                      "were the inputs rounded to bf16?", bf16_kernel_name(kn), ta, tb, M, N, K, unrounded);
    free(A), free(B), free(C), free(C0), free(scr), free(ec.seen);
}

START_TEST(test_bf16_gemm_shapes)
{
    int ta = _i & 1, tb = _i >> 1 & 1;
    for (size_t q = 0; q < sizeof kernels / sizeof kernels[0]; q++) {
        bf16_kernel kn = kernels[q];
        seed(kn == BF16_AMX ? "bf16_gemm_shapes_amx" : "bf16_gemm_shapes_avx512", _i);
        if (!usable[kn])
            continue;
        /* edges of every kind: 1, under a tile, tile and a bit, odd K */
        const int small[][3] = { { 3, 5, 0 }, { 1, 1, 1 }, { 1, 17, 3 }, { 33, 1, 65 }, { 16, 16, 32 },
                                 { 31, 33, 31 }, { 47, 70, 100 }, { 64, 64, 64 } };
        for (size_t s = 0; s < sizeof small / sizeof small[0]; s++)
            check_shape(kn, ta, tb, small[s][0], small[s][1], small[s][2], 0.0f);
        check_shape(kn, ta, tb, 1 + irand(80), 1 + irand(80), 1 + irand(200), 1.0f);
        check_shape(kn, ta, tb, 1 + irand(80), 1 + irand(80), 1 + irand(200), 0.5f);
        /* K of 1000 makes panels of 512 columns: three of them here */
        check_shape(kn, ta, tb, 40, 1100, 1000, irand(2) ? 1.0f : 0.0f);
        /* K past 2048 is summed in blocks, C accumulating between them */
        check_shape(kn, ta, tb, 35, 40, 2049 + irand(3000), irand(2) ? 1.0f : 0.0f);
    }
}
END_TEST

/* Splitting M or N between calls (as the backend's threads do) gives the
 * same bits as one call, for beta 0 and 1. */
START_TEST(test_bf16_gemm_split_is_exact)
{
    bf16_kernel kn = kernels[_i >> 2];
    seed(kn == BF16_AMX ? "bf16_gemm_split_amx" : "bf16_gemm_split_avx512", _i & 3);
    if (!usable[kn])
        return;
    int ta = irand(2), tb = irand(2), M = 64 + irand(100), N = 64 + irand(100), K = 1 + irand(300);
    float beta = (float)(_i & 1);
    int by_rows = _i >> 1 & 1;
    int lda = ta ? M : K, ldb = tb ? K : N;
    float *A = randm((size_t)M * K, 1.0), *B = randm((size_t)K * N, 1.0), *C = randm((size_t)M * N, 1.0);
    float *one = xmalloc((size_t)M * N * sizeof *one), *two = xmalloc((size_t)M * N * sizeof *two);
    memcpy(one, C, (size_t)M * N * sizeof *C);
    memcpy(two, C, (size_t)M * N * sizeof *C);
    void *scr = scratch_for(M, N, K);
    bf16_gemm(kn, ta, tb, M, N, K, A, lda, B, ldb, beta, one, N, scr, NULL, NULL);
    int cut = 1 + irand((by_rows ? M : N) - 1);
    if (by_rows) { /* rows [0, cut) and [cut, M) */
        bf16_gemm(kn, ta, tb, cut, N, K, A, lda, B, ldb, beta, two, N, scr, NULL, NULL);
        bf16_gemm(kn, ta, tb, M - cut, N, K, ta ? A + cut : A + (size_t)cut * lda, lda, B, ldb, beta,
                 two + (size_t)cut * N, N, scr, NULL, NULL);
    } else { /* columns [0, cut) and [cut, N) */
        bf16_gemm(kn, ta, tb, M, cut, K, A, lda, B, ldb, beta, two, N, scr, NULL, NULL);
        bf16_gemm(kn, ta, tb, M, N - cut, K, A, lda, tb ? B + (size_t)cut * ldb : B + cut, ldb, beta,
                 two + cut, N, scr, NULL, NULL);
    }
    ck_assert_msg(memcmp(one, two, (size_t)M * N * sizeof *one) == 0,
                  "%s: split at %s %d of %dx%dx%d (ta %d tb %d beta %g) changed bits", bf16_kernel_name(kn),
                  by_rows ? "row" : "column", cut, M, N, K, ta, tb, beta);
    free(A), free(B), free(C), free(one), free(two), free(scr);
}
END_TEST

/* The backend: matmul forward and backward of cpu-bf16 against cpu (fp32)
 * within bf16's error (inputs rounded to 8 bits: about 2^-9 of the terms'
 * size, shrinking as sqrt(K) for random signs), bit-identical with 1 and 2
 * threads; without a bf16 kernel the constructor refuses with the reason. */
START_TEST(test_backend_bf16_matmuls)
{
    seed("backend_bf16", 0);
    char err[256] = "";
    backend *hb = backend_cpu_bf16_create(2, err);
    if (!have_bf16) {
        ck_assert_msg(hb == NULL && strstr(err, "AMX-BF16 or AVX512-BF16"),
                      "without a bf16 kernel: backend %p, err '%s'", (void *)hb, err);
        return;
    }
    ck_assert_msg(hb != NULL, "cpu-bf16: %s", err);
    backend *h1 = backend_cpu_bf16_create(1, err), *f = backend_cpu_create(2, err);
    ck_assert_ptr_nonnull(h1);
    ck_assert_str_eq(hb->name, "cpu-bf16");
    const int N = 300, IC = 96, OC = 160;
    float *x = randm((size_t)N * IC, 1.0), *w = randm((size_t)OC * IC, 0.1), *b = randm(OC, 0.1);
    float *dy = randm((size_t)N * OC, 1.0);
    float *out[3], *dx[3], *dw[3], *db[3];
    backend *bes[3] = { f, hb, h1 };
    for (int k = 0; k < 3; k++) {
        out[k] = xmalloc((size_t)N * OC * 4), dx[k] = xmalloc((size_t)N * IC * 4);
        dw[k] = xmalloc((size_t)OC * IC * 4), db[k] = xmalloc((size_t)OC * 4);
        memset(dx[k], 0, (size_t)N * IC * 4), memset(dw[k], 0, (size_t)OC * IC * 4);
        memset(db[k], 0, (size_t)OC * 4);
        bes[k]->matmul_forward(bes[k], out[k], x, w, b, N, IC, OC);
        bes[k]->matmul_backward(bes[k], dx[k], dw[k], db[k], dy, x, w, N, IC, OC, GRAD_ADD);
    }
    struct { const char *name; float **v; size_t n; } t[] = {
        { "out", out, (size_t)N * OC }, { "dinp", dx, (size_t)N * IC }, { "dweight", dw, (size_t)OC * IC },
    };
    for (int q = 0; q < 3; q++) {
        double num = 0, den = 0;
        for (size_t i = 0; i < t[q].n; i++) {
            num += ((double)t[q].v[1][i] - t[q].v[0][i]) * ((double)t[q].v[1][i] - t[q].v[0][i]);
            den += (double)t[q].v[0][i] * t[q].v[0][i];
        }
        double rel = sqrt(num / den);
        ck_assert_msg(rel < 1e-2 && rel > 1e-5, "%s: bf16 matmuls %.3g (rel L2) from fp32's", t[q].name, rel);
        ck_assert_msg(memcmp(t[q].v[1], t[q].v[2], t[q].n * 4) == 0, "%s: 2 threads differ from 1", t[q].name);
    }
    ck_assert_msg(memcmp(db[0], db[1], OC * 4) == 0, "dbias is a plain fp32 sum: it must not change");
    for (int k = 0; k < 3; k++) {
        free(out[k]), free(dx[k]), free(dw[k]), free(db[k]);
        bes[k]->destroy(bes[k]);
    }
    free(x), free(w), free(b), free(dy);
}
END_TEST

/* cpu-bf16 whose packing scratch cannot be had (the allocator failing
 * during the ops, alloc_fault.h) makes its products on the fp32 BLAS: the
 * fp32 backend's bits, epilogues (bias, GELU) included. */
START_TEST(test_backend_bf16_without_scratch)
{
    seed("bf16_no_scratch", 0);
    char err[256] = "";
    if (!have_bf16)
        return;
    backend *hb = backend_cpu_bf16_create(2, err), *f = backend_cpu_create(2, err);
    ck_assert_msg(hb && f, "%s", err);
    const int N = 200, IC = 96, OC = 130;
    size_t no = (size_t)N * OC, ni = (size_t)N * IC, nw = (size_t)OC * IC;
    float *x = randm(ni, 1.0), *w = randm(nw, 0.1), *b = randm(OC, 0.1), *dy = randm(no, 1.0);
    float *r[2][5];
    backend *bes[2] = { f, hb };
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 5; i++)
            r[k][i] = xmalloc((i == 2 ? ni : i == 3 ? nw : no) * 4);
        memset(r[k][2], 0, ni * 4), memset(r[k][3], 0, nw * 4);
        alloc_fails = k, alloc_refused = 0;
        bes[k]->matmul_gelu_forward(bes[k], r[k][0], r[k][1], x, w, b, N, IC, OC);
        bes[k]->matmul_backward(bes[k], r[k][2], r[k][3], NULL, dy, x, w, N, IC, OC, GRAD_ADD);
        bes[k]->matmul_forward(bes[k], r[k][4], x, w, NULL, N, IC, OC);
        alloc_fails = 0;
        ck_assert_msg(!k || alloc_refused > 0, "cpu-bf16 asked for no scratch: no fallback ran");
    }
    static const char *what[5] = { "pre", "gelu", "dinp", "dweight", "out (no bias)" };
    for (int i = 0; i < 5; i++)
        ck_assert_msg(memcmp(r[0][i], r[1][i], (i == 2 ? ni : i == 3 ? nw : no) * 4) == 0,
                      "%s: cpu-bf16 without scratch differs from the fp32 backend", what[i]);
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 5; i++)
            free(r[k][i]);
        bes[k]->destroy(bes[k]);
    }
    free(x), free(w), free(b), free(dy);
}
END_TEST

/* The fused GELU ops run GELU (forward) and GELU' (backward) in the
 * product's epilogue: on the fp32 (BLAS) and bf16 backends, 1 and 2
 * threads, with and without bias, they equal the unfused ops bit for bit:
 * pre = matmul_forward, out = gelu_forward(pre), dpre = gelu_backward of
 * matmul_backward's dinp; and on bf16, 2 threads equal 1 (rows or columns
 * split; OpenBLAS's fp32 sums depend on the block sizes it is given). */
START_TEST(test_fused_gelu_is_the_unfused_ops)
{
    seed("fused_gelu", _i);
    char err[256] = "";
    backend *bes[4] = { backend_cpu_create(1, err), backend_cpu_create(2, err), NULL, NULL };
    if (have_bf16)
        bes[2] = backend_cpu_bf16_create(1, err), bes[3] = backend_cpu_bf16_create(2, err);
    /* N under OC half the time: the threads then split the columns */
    const int N = 50 + irand(200), IC = 1 + irand(100), OC = 1 + irand(300);
    float *x = randm((size_t)N * IC, 1.0), *w = randm((size_t)OC * IC, 0.3), *b = randm(OC, 0.3);
    float *dy = randm((size_t)N * OC, 1.0), *bias = _i ? b : NULL;
    size_t no = (size_t)N * OC, ni = (size_t)N * IC;
    float *pre = xmalloc(no * 4), *out = xmalloc(no * 4), *pre1 = xmalloc(no * 4),
          *out1 = xmalloc(no * 4), *dpre = xmalloc(ni * 4), *dpre1 = xmalloc(ni * 4);
    float *dw = xmalloc((size_t)OC * IC * 4), *db = xmalloc((size_t)OC * 4);
    float *first = xmalloc(no * 4 * 2 + ni * 4);
    for (int k = 0; k < 4; k++) {
        backend *be = bes[k];
        if (!be)
            continue;
        be->matmul_gelu_forward(be, pre, out, x, w, bias, N, IC, OC);
        be->matmul_forward(be, pre1, x, w, bias, N, IC, OC);
        be->gelu_forward(be, out1, pre1, no);
        ck_assert_msg(memcmp(pre, pre1, no * 4) == 0, "%s, %d: pre differs from matmul_forward's",
                      be->name, k);
        ck_assert_msg(memcmp(out, out1, no * 4) == 0, "%s, %d: out differs from gelu_forward's",
                      be->name, k);
        /* dpre [N, IC] = dout [N, OC] @ w [OC, IC] times gelu'(pre), with
         * x standing in for both the input and pre [N, IC] */
        memset(dw, 0, (size_t)OC * IC * 4), memset(db, 0, (size_t)OC * 4);
        be->matmul_gelu_backward(be, dpre, dw, db, dy, x, x, w, N, IC, OC);
        memset(dpre1, 0, ni * 4);
        float *d = xmalloc(ni * 4);
        be->matmul_backward(be, d, NULL, NULL, dy, x, w, N, IC, OC, GRAD_SET);
        be->gelu_backward(be, dpre1, x, d, ni);
        ck_assert_msg(memcmp(dpre, dpre1, ni * 4) == 0, "%s, %d: dpre differs from the unfused ops'",
                      be->name, k);
        free(d);
        float *keep = first; /* bf16: 1 thread, then 2, the same bits */
        if (k == 2) {
            memcpy(keep, pre, no * 4), memcpy(keep + no, out, no * 4);
            memcpy(keep + 2 * no, dpre, ni * 4);
        } else if (k == 3) {
            ck_assert_msg(memcmp(keep, pre, no * 4) == 0 && memcmp(keep + no, out, no * 4) == 0 &&
                          memcmp(keep + 2 * no, dpre, ni * 4) == 0,
                          "%s: 2 threads differ from 1 (N %d IC %d OC %d)", be->name, N, IC, OC);
        }
        be->destroy(be);
    }
    free(x), free(w), free(b), free(dy), free(pre), free(out), free(pre1), free(out1), free(dpre);
    free(dpre1), free(dw), free(db), free(first);
}
END_TEST

static Suite *bf16_suite(void)
{
    Suite *s = suite_create("gemm_bf16");
    TCase *tc = tcase_create("bf16");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_bf16_gemm_shapes, 0, 4);
    tcase_add_loop_test(tc, test_bf16_gemm_split_is_exact, 0, 8);
    tcase_add_test(tc, test_backend_bf16_matmuls);
    tcase_add_test(tc, test_backend_bf16_without_scratch);
    tcase_add_loop_test(tc, test_fused_gelu_is_the_unfused_ops, 0, 2);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    char why[402] = "";
    test_seed_init("test_gemm_bf16");
    for (size_t q = 0; q < sizeof kernels / sizeof kernels[0]; q++) {
        usable[kernels[q]] = bf16_kernel_usable(kernels[q], why, sizeof why) == 0;
        if (!usable[kernels[q]])
            printf("test_gemm_bf16: %s not run: %s\n", bf16_kernel_name(kernels[q]), why);
    }
    bf16_kernel k = bf16_gemm_pick(why, sizeof why);
    have_bf16 = k != BF16_NONE;
    printf("test_gemm_bf16: the backend's kernel: %s%s%s\n", bf16_kernel_name(k), have_bf16 ? "" : ": ",
           have_bf16 ? "" : why);
    SRunner *sr = srunner_create(bf16_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
