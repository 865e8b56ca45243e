/* backend_cpu.c: the CPU backend, the reference every other backend is checked
 * against. OpenMP over rows, heads and elements; OpenBLAS for the matmuls.
 *
 * The Makefile compiles this file twice. As is, `real` is float and the
 * constructor is backend_cpu_create ("cpu"). With -DCPU_REAL_DOUBLE, `real` is
 * double and the constructor is backend_cpu64_create ("cpu-fp64"), the oracle
 * of the gradient checks. Everything else is static, so the two objects link
 * side by side.
 *
 * Determinism: every output element is written by one thread, with an order
 * of operations fixed at compile time, so results are bit-identical run to
 * run. Sums over rows (parameter gradients, dk/dv in attention) are split
 * across threads by column, owner or head, never by row, which makes them
 * independent even of the thread count. Only the matmuls (OpenBLAS) and
 * sumsq depend on the thread count.
 */
/* Two code-generation choices for GCC, made here because they belong to this file:
 * - no-trapping-math: the default forbids if-converting a float compare (it
 *   might raise an exception flag nobody reads), which keeps every loop with
 *   a clamp or a select from vectorising. It permits no value change.
 * - fp-contract=fast: a*b + c becomes one fused multiply-add where the target
 *   has one (ISO C mode otherwise keeps them apart): a quarter fewer
 *   instructions in attention, and one rounding instead of two. Contraction
 *   is decided at compile time, so results stay bit-identical run to run.
 * (-fno-math-errno would also vectorise AdamW's sqrt, but GCC ignores it in
 * this pragma.) */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math", "fp-contract=fast")
#elif defined(__clang__)
/* Clang contracts by default; where it cannot vectorise an `omp simd` loop
 * (a max reduction, sqrt with errno) it only runs it scalar, so no warning. */
#pragma clang diagnostic ignored "-Wpass-failed"
#endif

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../blas.h"
#include <omp.h>

#include "../ops.h"
#include "cpu_ops.h"
#include "gemm_bf16.h"

#ifdef CPU_REAL_DOUBLE
typedef double real;
#define REAL_DT DT_F64
#define CPU_NAME "cpu-fp64"
#define CPU_CREATE backend_cpu64_create
#define GEMM cblas_dgemm
#else
typedef float real;
#define REAL_DT DT_F32
#define CPU_NAME "cpu"
#define CPU_CREATE backend_cpu_create
#define GEMM cblas_sgemm
#endif

#define ALIGN 64
#define COL_BLOCK 64   /* columns per task in the column-split row sums */

typedef struct {
    backend be; /* first, so a backend * is a cpu_backend * */
    int threads; /* <= 0: OpenMP's default at each call */
    void *att_buf; /* attention's score blocks, ATT_ROWS x T x 2 reals per thread */
    size_t att_cap; /* bytes in att_buf */
    bf16_kernel bf16; /* the matmuls in bf16 on this kernel (backend_cpu_bf16_create); 0: BLAS */
    void *bf16_buf; /* their packing scratch, one slice per part of a gemm */
    size_t bf16_cap; /* bytes in bf16_buf */
} cpu_backend;

static int nthreads(const backend *be)
{
    int t = ((const cpu_backend *)be)->threads;
    return t > 0 ? t : omp_get_max_threads();
}

#define PAR_MIN 16384.0 /* elements of work below which one thread is faster */

/* Threads for a parallel region over `work` elements: small ops run on the
 * calling thread alone, since waking a team costs more than they do (far
 * more on a busy machine). Results do not depend on it, except where
 * noted (sumsq), and there it is a fixed function of the size. */
static int team(const backend *be, double work)
{
    return work < PAR_MIN ? 1 : nthreads(be);
}

/* The part [lo, hi) of n items that thread `me` of `all` takes: contiguous,
 * sizes differing by at most one. */
static void thread_range(size_t n, int me, int all, size_t *lo, size_t *hi)
{
    size_t q = n / all, r = n % all, u = (size_t)me;
    *lo = q * u + (u < r ? u : r);
    *hi = *lo + q + (u < r);
}

/* ---- scalar math ---------------------------------------------------------
 * The fp32 build uses its own exp (and tanh on top of it) because glibc's
 * expf does not vectorise without -ffast-math; this one does, inside the
 * `omp simd` loops below, and stays within a few ulp. The fp64 build, the
 * oracle, uses libm. */

#ifdef CPU_REAL_DOUBLE
static inline real exp_r(real x) { return exp(x); }
static inline real tanh_r(real x) { return tanh(x); }
static inline real sqrt_r(real x) { return sqrt(x); }
#else
/* exp(x) = 2^n exp(r), n = round(x log2 e), |r| <= ln2/2, exp(r) by its Taylor
 * series to degree 7 (truncation 5e-9): a few ulp. 0 below -87 (the true
 * value is under 2e-38), +inf above 88 (no caller gets near), NaN stays NaN.
 * Written with selects, not branches, so that it vectorises. */
static inline float exp_r(float x)
{
    const float shifter = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float xc = x < -87.0f ? -87.0f : x;
    xc = xc > 88.0f ? 88.0f : xc;
    float t = xc * 1.44269504f + shifter;
    float n = t - shifter;
    float r = xc - n * 0.693145751953125f; /* ln2 split hi + lo: n*hi is exact */
    r = r - n * 1.428606765330187e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    uint32_t tb, bits;
    memcpy(&tb, &t, sizeof(tb)); /* low mantissa bits of t hold n */
    bits = (tb - 0x4b400000u + 127u) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof(scale));
    float y = p * scale;
    y = x < -87.0f ? 0.0f : y;
    return x > 88.0f ? INFINITY : y;
}

/* tanh(x) = (e^2x - 1) / (e^2x + 1); |tanh(9)| rounds to 1 in float. Near 0
 * the absolute error is ~1e-7, which is all GELU (1 + tanh) needs. */
static inline float tanh_r(float x)
{
    float xc = x < -9.0f ? -9.0f : (x > 9.0f ? 9.0f : x);
    float e = exp_r(2.0f * xc);
    return (e - 1.0f) / (e + 1.0f);
}

static inline float sqrt_r(float x) { return sqrtf(x); }
#endif

/* Dot product of n reals. The simd reduction splits the sum into lanes in an
 * order fixed at compile time: vectorised yet deterministic. */
static inline real dot(const real *a, const real *b, int n)
{
    real s = 0;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* y[i] += a * x[i] */
static inline void axpy(real *restrict y, real a, const real *restrict x, int n)
{
#pragma omp simd
    for (int i = 0; i < n; i++)
        y[i] += a * x[i];
}

/* ---- memory -------------------------------------------------------------- */

static void *cpu_alloc(backend *be, size_t bytes)
{
    (void)be;
    if (bytes > SIZE_MAX - ALIGN)
        return NULL;
    size_t n = (bytes + ALIGN - 1) / ALIGN * ALIGN; /* aligned_alloc wants a multiple */
    return aligned_alloc(ALIGN, n ? n : ALIGN);
}

static void cpu_free(backend *be, void *p)
{
    (void)be;
    free(p);
}

static float bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

/* Round to nearest even, as the GPU converts; NaN stays a (quiet) NaN. */
static uint16_t f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

static double load_elem(const void *p, dtype t, size_t i)
{
    switch (t) {
    case DT_F32: return ((const float *)p)[i];
    case DT_F64: return ((const double *)p)[i];
    case DT_BF16: return bf16_to_f32(((const uint16_t *)p)[i]);
    default: return ((const int32_t *)p)[i];
    }
}

/* Integers saturate and truncate toward zero; NaN becomes 0. */
static void store_elem(void *p, dtype t, size_t i, double x)
{
    switch (t) {
    case DT_F32: ((float *)p)[i] = (float)x; break;
    case DT_F64: ((double *)p)[i] = x; break;
    case DT_BF16: ((uint16_t *)p)[i] = f32_to_bf16((float)x); break;
    default:
        if (!(x == x))
            x = 0;
        x = x < INT32_MIN ? INT32_MIN : (x > INT32_MAX ? INT32_MAX : x);
        ((int32_t *)p)[i] = (int32_t)x;
    }
}

/* dst = src (src NULL: dst = 0) over `bytes`, split across the threads in
 * blocks of whole pages. One thread cannot use the machine's memory
 * bandwidth alone, and while it works the others would only wait: zeroing
 * the gradients (4 bytes a parameter, every step) and the checkpoint's
 * copies are the large cases. Overlapping ranges (memmove) stay on one
 * thread, as do small ones. */
static void copy_bytes(backend *be, void *dst, const void *src, size_t bytes)
{
    const size_t block = 4096;
    size_t blocks = (bytes + block - 1) / block;
    int nt = team(be, (double)bytes / 4);
    int overlap = src && (char *)dst < (const char *)src + bytes &&
                  (const char *)src < (char *)dst + bytes;
    if (nt <= 1 || blocks < 2 || overlap) {
        if (!src)
            memset(dst, 0, bytes);
        else if (dst != src)
            memmove(dst, src, bytes);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        size_t lo, hi;
        thread_range(blocks, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
        size_t a = lo * block, b = hi * block < bytes ? hi * block : bytes;
        if (a < b) {
            if (src)
                memcpy((char *)dst + a, (const char *)src + a, b - a);
            else
                memset((char *)dst + a, 0, b - a);
        }
    }
}

/* Copies n elements converting src type st to dst type dt. Every pair is
 * served (int32 pairs with the float types by value), so a caller's type
 * mistake gives wrong numbers, never a crash. The usual pairs get loops the
 * compiler can vectorise; the rest go through double, which holds every
 * float, bf16 and int32 value exactly. */
static void convert(backend *be, void *dst, dtype dt, const void *src, dtype st, size_t n)
{
    if (!n || !dst || !src)
        return;
    int nt = team(be, (double)n);
    if (dt == st) {
        copy_bytes(be, dst, src, n * dtype_size(dt));
    } else if (dt == DT_F32 && st == DT_F64) {
        float *d = dst;
        const double *s = src;
#pragma omp parallel for simd schedule(static) num_threads(nt)
        for (size_t i = 0; i < n; i++)
            d[i] = (float)s[i];
    } else if (dt == DT_F64 && st == DT_F32) {
        double *d = dst;
        const float *s = src;
#pragma omp parallel for simd schedule(static) num_threads(nt)
        for (size_t i = 0; i < n; i++)
            d[i] = s[i];
    } else {
#pragma omp parallel for schedule(static) num_threads(nt)
        for (size_t i = 0; i < n; i++)
            store_elem(dst, dt, i, load_elem(src, st, i));
    }
}

static void cpu_upload(backend *be, void *dst, dtype dt, const void *src, dtype ht, size_t n)
{
    convert(be, dst, dt, src, ht, n);
}

static void cpu_download(backend *be, void *dst, dtype ht, const void *src, dtype dt, size_t n)
{
    convert(be, dst, ht, src, dt, n);
}

static void cpu_fill(backend *be, void *dst, dtype t, double value, size_t n)
{
    if (!n || !dst)
        return;
    if (value == 0.0 && !signbit(value)) { /* all-zero bytes for every type */
        copy_bytes(be, dst, NULL, n * dtype_size(t));
        return;
    }
    int nt = team(be, (double)n);
    if (t == DT_F32 || t == DT_F64) {
#pragma omp parallel for schedule(static) num_threads(nt)
        for (size_t i = 0; i < n; i++)
            store_elem(dst, t, i, value);
        return;
    }
    store_elem(dst, t, 0, value); /* bf16 and int32: convert once, copy bits */
    size_t es = dtype_size(t);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (size_t i = 1; i < n; i++)
        memcpy((char *)dst + i * es, dst, es);
}

static void cpu_sync(backend *be) { (void)be; }

static void cpu_destroy(backend *be)
{
    free(((cpu_backend *)be)->att_buf);
    free(((cpu_backend *)be)->bf16_buf);
    free(be);
}

/* *buf, grown (ALIGN-aligned) when a call needs more than its *cap bytes;
 * NULL when out of memory, the old buffer kept. */
static void *scratch_at_least(void **buf, size_t *cap, size_t bytes)
{
    if (bytes > *cap) {
        void *p = aligned_alloc(ALIGN, (bytes + ALIGN - 1) / ALIGN * ALIGN);
        if (!p)
            return NULL;
        free(*buf);
        *buf = p;
        *cap = bytes;
    }
    return *buf;
}

/* ---- encoder ------------------------------------------------------------- */

/* Token ids must lie in [0, Vp); a negative id (never a row of wte) adds
 * nothing, so a stray -1 cannot read or write outside the buffers. */
static void cpu_encoder_forward(backend *be, void *out_, const int32_t *tok, const void *wte_,
                                const void *wpe_, int B, int T, int C)
{
    real *out = out_;
    const real *wte = wte_, *wpe = wpe_;
    long BT = (long)B * T;
#pragma omp parallel for schedule(static) num_threads(team(be, (double)BT * C))
    for (long bt = 0; bt < BT; bt++) {
        real *o = out + bt * C;
        const real *p = wpe + (bt % T) * C;
        if (tok[bt] < 0) {
            memcpy(o, p, (size_t)C * sizeof(real));
            continue;
        }
        const real *e = wte + (size_t)tok[bt] * C;
#pragma omp simd
        for (int c = 0; c < C; c++)
            o[c] = e[c] + p[c];
    }
}

/* dwte rows are owned by thread (token mod nthreads); each owner walks all
 * positions in order, so every row's sum has a fixed order and no two
 * threads write the same row. dwpe is split by position. */
static void cpu_encoder_backward(backend *be, void *dwte_, void *dwpe_, const void *dout_,
                                 const int32_t *tok, int B, int T, int C)
{
    real *dwte = dwte_, *dwpe = dwpe_;
    const real *dout = dout_;
    long BT = (long)B * T;
#pragma omp parallel num_threads(team(be, (double)BT * C))
    {
        unsigned me = (unsigned)omp_get_thread_num(), all = (unsigned)omp_get_num_threads();
        for (long bt = 0; dwte && bt < BT; bt++) {
            if (tok[bt] < 0 || (unsigned)tok[bt] % all != me)
                continue;
            axpy(dwte + (size_t)tok[bt] * C, 1, dout + bt * C, C);
        }
        if (dwpe) {
#pragma omp for schedule(static)
            for (int t = 0; t < T; t++)
                for (int b = 0; b < B; b++)
                    axpy(dwpe + (size_t)t * C, 1, dout + ((long)b * T + t) * C, C);
        }
    }
}

/* ---- layernorm ----------------------------------------------------------- */

static void cpu_layernorm_forward(backend *be, void *out_, void *mean_, void *rstd_,
                                  const void *inp_, const void *weight_, const void *bias_,
                                  int N, int C)
{
    real *out = out_, *mean = mean_, *rstd = rstd_;
    const real *inp = inp_, *w = weight_, *b = bias_;
#pragma omp parallel for schedule(static) num_threads(team(be, (double)N * C))
    for (int i = 0; i < N; i++) {
        const real *x = inp + (size_t)i * C;
        real *y = out + (size_t)i * C;
        real m = 0, v = 0;
#pragma omp simd reduction(+ : m)
        for (int c = 0; c < C; c++)
            m += x[c];
        m /= C;
#pragma omp simd reduction(+ : v)
        for (int c = 0; c < C; c++)
            v += (x[c] - m) * (x[c] - m); /* two passes: no cancellation */
        real s = 1 / sqrt_r(v / C + (real)1e-5);
        if (b) {
#pragma omp simd
            for (int c = 0; c < C; c++)
                y[c] = (x[c] - m) * s * w[c] + b[c];
        } else { /* a layernorm without bias (nanoGPT's bias=False) */
#pragma omp simd
            for (int c = 0; c < C; c++)
                y[c] = (x[c] - m) * s * w[c];
        }
        if (mean)
            mean[i] = m;
        if (rstd)
            rstd[i] = s;
    }
}

/* The fused op of ops.h as its definition: the residual add, then layernorm
 * of the sum (bits equal to the two ops in sequence). */
static void cpu_residual_forward(backend *be, void *out_, const void *a_, const void *b_, size_t N);
static void cpu_residual_layernorm_forward(backend *be, void *res_out, void *ln_out, void *mean,
                                           void *rstd, const void *a, const void *b,
                                           const void *weight, const void *bias, int N, int C)
{
    cpu_residual_forward(be, res_out, a, b, (size_t)N * C);
    cpu_layernorm_forward(be, ln_out, mean, rstd, res_out, weight, bias, N, C);
}

/* dw[c] += sum_i dy[i,c] xhat[i,c] and db[c] += sum_i dy[i,c] for the
 * columns [c0, c1), rows summed in order before touching dw and db. */
static void ln_param_grads(real *dw, real *db, const real *dout, const real *inp,
                           const real *mean, const real *rstd, int N, int C, int c0, int c1)
{
    real aw[COL_BLOCK] = { 0 }, ab[COL_BLOCK] = { 0 };
    int n = c1 - c0;
    for (int i = 0; i < N; i++) {
        const real *dy = dout + (size_t)i * C + c0, *x = inp + (size_t)i * C + c0;
        real m = mean[i], s = rstd[i];
#pragma omp simd
        for (int c = 0; c < n; c++) {
            aw[c] += dy[c] * ((x[c] - m) * s);
            ab[c] += dy[c];
        }
    }
    for (int c = 0; c < n; c++) {
        if (dw)
            dw[c0 + c] += aw[c];
        if (db)
            db[c0 + c] += ab[c];
    }
}

static void cpu_layernorm_backward(backend *be, void *dinp_, void *dweight_, void *dbias_,
                                   const void *dout_, const void *inp_, const void *weight_,
                                   const void *mean_, const void *rstd_, int N, int C)
{
    real *dinp = dinp_, *dw = dweight_, *db = dbias_;
    const real *dout = dout_, *inp = inp_, *w = weight_, *mean = mean_, *rstd = rstd_;
    int nblocks = (C + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel num_threads(team(be, (double)N * C))
    {
        if (dw || db) {
#pragma omp for schedule(static) nowait
            for (int k = 0; k < nblocks; k++) {
                int c0 = k * COL_BLOCK, c1 = c0 + COL_BLOCK < C ? c0 + COL_BLOCK : C;
                ln_param_grads(dw, db, dout, inp, mean, rstd, N, C, c0, c1);
            }
        }
        if (dinp) {
#pragma omp for schedule(static)
            for (int i = 0; i < N; i++) {
                const real *dy = dout + (size_t)i * C, *x = inp + (size_t)i * C;
                real *dx = dinp + (size_t)i * C;
                real m = mean[i], s = rstd[i], a = 0, g = 0;
#pragma omp simd reduction(+ : a, g)
                for (int c = 0; c < C; c++) {
                    real dyw = dy[c] * w[c];
                    a += dyw;
                    g += dyw * ((x[c] - m) * s);
                }
                a /= C;
                g /= C;
#pragma omp simd
                for (int c = 0; c < C; c++)
                    dx[c] += s * (dy[c] * w[c] - a - (x[c] - m) * s * g);
            }
        }
    }
}

/* ---- matmul -------------------------------------------------------------- */

#define GEMM_UNIT 16 /* block edges at multiples of this many rows/columns */

#define GELU_K ((real)0.7978845608028654) /* sqrt(2/pi) */
#define GELU_A ((real)0.044715)

/* GELU, tanh form (GPT-2's), and its derivative. */
static inline real gelu_r(real x)
{
    real u = GELU_K * (x + GELU_A * x * x * x);
    return (real)0.5 * x * (1 + tanh_r(u));
}

static inline real gelu_grad_r(real x)
{
    real x2 = x * x;
    real t = tanh_r(GELU_K * (x + GELU_A * x2 * x));
    real du = GELU_K * (1 + 3 * GELU_A * x2);
    return (real)0.5 * (1 + t) + (real)0.5 * x * (1 - t * t) * du;
}

/* GCC vectorises for AVX-512 CPUs in 256-bit halves by default. GELU in
 * full 512-bit vectors (the spans below) took the ViT width-128 bf16 step
 * from 378-394 to 346-353 ms (one thread). Elsewhere the default. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__AVX512F__)
#define WIDE_VECTORS __attribute__((target("prefer-vector-width=512")))
#else
#define WIDE_VECTORS
#endif

/* y = GELU(x) over n elements; d *= GELU'(x), or with dy, d += dy GELU'(x).
 * The ops and gemm()'s epilogue share these, and every element goes through
 * the one loop body below, GELU_LANES at a time (the last few padded): a
 * compiler's scalar remainder loop may contract a * b + c into FMAs
 * differently from its vector loop, and where an element falls in a span
 * (thread splits, panels) would then change its bits. So a fused op equals
 * the unfused ones, and any thread count gives the same result. */
#define GELU_LANES 16

WIDE_VECTORS static void gelu_span(real *y, const real *x, size_t n)
{
    for (size_t i = 0; i < n; i += GELU_LANES) {
        size_t m = n - i < GELU_LANES ? n - i : GELU_LANES;
        real xb[GELU_LANES], yb[GELU_LANES];
        const real *xs = x + i;
        real *ys = y + i;
        if (m < GELU_LANES) { /* the tail, padded with zeros */
            memset(xb, 0, sizeof xb);
            memcpy(xb, xs, m * sizeof *xb);
            xs = xb, ys = yb;
        }
#pragma omp simd
        for (int j = 0; j < GELU_LANES; j++)
            ys[j] = gelu_r(xs[j]);
        if (m < GELU_LANES)
            memcpy(y + i, yb, m * sizeof *yb);
    }
}

WIDE_VECTORS static void gelu_grad_span(real *d, const real *dy, const real *x, size_t n)
{
    for (size_t i = 0; i < n; i += GELU_LANES) {
        size_t m = n - i < GELU_LANES ? n - i : GELU_LANES;
        real db[GELU_LANES], yb[GELU_LANES], xb[GELU_LANES];
        real *ds = d + i;
        const real *ys = dy ? dy + i : NULL, *xs = x + i;
        if (m < GELU_LANES) { /* the tail, padded with zeros */
            memset(db, 0, sizeof db), memset(yb, 0, sizeof yb), memset(xb, 0, sizeof xb);
            memcpy(db, ds, m * sizeof *db);
            memcpy(xb, xs, m * sizeof *xb);
            if (dy)
                memcpy(yb, ys, m * sizeof *yb);
            ds = db, xs = xb, ys = dy ? yb : NULL;
        }
        if (ys) {
#pragma omp simd
            for (int j = 0; j < GELU_LANES; j++)
                ds[j] += ys[j] * gelu_grad_r(xs[j]);
        } else {
#pragma omp simd
            for (int j = 0; j < GELU_LANES; j++)
                ds[j] *= gelu_grad_r(xs[j]);
        }
        if (m < GELU_LANES)
            memcpy(d + i, db, m * sizeof *db);
    }
}

/* What gemm() does to each finished piece of a row of C while it is still in
 * cache: add the bias by column; then either write out = GELU(C) beside C
 * (C keeps the pre-activation, which the backward reads) or scale C by
 * GELU'(pre). The fused ops' definitions in one pass over memory, not three:
 * at the ViT's widths these elementwise passes cost as much as the products. */
typedef struct {
    const real *bias;     /* [N], or NULL */
    real *gelu_out;       /* laid out as C (row stride ldc), or NULL */
    const real *gelu_pre; /* laid out as C, or NULL */
} epilogue;

/* One thread's block of C: the epilogue and where the block starts. */
typedef struct {
    const epilogue *e;
    size_t row0, col0, ldc;
} epilogue_block;

/* bf16_epilogue's signature: c is C[row][col .. col + n) of the block. */
static void epilogue_apply(void *ctx, real *c, int row, int col, int n)
{
    const epilogue_block *at = ctx;
    const epilogue *e = at->e;
    size_t j0 = at->col0 + (size_t)col, off = (at->row0 + (size_t)row) * at->ldc + j0;
    if (e->bias) {
        const real *b = e->bias + j0;
#pragma omp simd
        for (int j = 0; j < n; j++)
            c[j] += b[j];
    }
    if (e->gelu_out)
        gelu_span(e->gelu_out + off, c, (size_t)n);
    if (e->gelu_pre)
        gelu_grad_span(c, NULL, e->gelu_pre + off, (size_t)n);
}

/* Cm[M,N] = op(A) op(B) + beta Cm, row-major; ta/tb select transposes;
 * then the epilogue e (NULL: none) on every element. OpenBLAS (or, on
 * cpu-bf16, bf16_gemm) runs single-threaded (see the constructor): the
 * OpenMP threads split the larger of M and N into contiguous blocks and
 * each makes one call on its block. One thread pool for the whole backend,
 * since two pools spinning against each other cost more than the matmuls
 * on a small machine; and each element is still summed by one call in a
 * fixed order. M or N zero does nothing; K zero is beta Cm, then e. */
static void gemm(backend *be, int ta, int tb, int M, int N, int K, const real *A, int lda,
                 const real *B, int ldb, real beta, real *Cm, int ldc, const epilogue *e)
{
    if (M <= 0 || N <= 0)
        return;
    if (K <= 0) { /* an empty sum, which BLAS would not touch */
        for (int i = 0; i < M; i++) {
            real *c = Cm + (size_t)i * ldc;
            for (int j = 0; j < N; j++)
                c[j] = beta == 0 ? 0 : beta * c[j];
            if (e)
                epilogue_apply(&(epilogue_block){ e, 0, 0, (size_t)ldc }, c, i, 0, N);
        }
        return;
    }
    int split_m = M >= N, dim = split_m ? M : N;
    size_t units = ((size_t)dim + GEMM_UNIT - 1) / GEMM_UNIT;
    int parts = nthreads(be);
    if ((double)M * N * K < 65536.0 || units < 2)
        parts = 1; /* too small to be worth waking the threads */
    if ((size_t)parts > units)
        parts = (int)units;
#ifndef CPU_REAL_DOUBLE
    cpu_backend *cb = (cpu_backend *)be;
    char *scratch = NULL;
    size_t per = 0;
    if (cb->bf16) { /* one slice per part; NULL (out of memory): the BLAS instead */
        per = (bf16_gemm_scratch(M, N, K) + ALIGN - 1) / ALIGN * ALIGN;
        scratch = scratch_at_least(&cb->bf16_buf, &cb->bf16_cap, per * (size_t)parts);
    }
#endif
#pragma omp parallel for schedule(static) num_threads(parts)
    for (int p = 0; p < parts; p++) {
        size_t lo, hi;
        thread_range(units, p, parts, &lo, &hi);
        size_t end = hi * GEMM_UNIT < (size_t)dim ? hi * GEMM_UNIT : (size_t)dim;
        int a = (int)(lo * GEMM_UNIT), b = (int)end;
        if (b <= a)
            continue;
        const real *Ab = A, *Bb = B;
        real *Cb;
        int rows = split_m ? b - a : M, cols = split_m ? N : b - a;
        epilogue_block at = { e, split_m ? (size_t)a : 0, split_m ? 0 : (size_t)a, (size_t)ldc };
        if (split_m) {
            Ab = ta ? A + a : A + (size_t)a * lda;
            Cb = Cm + (size_t)a * ldc;
        } else {
            Bb = tb ? B + (size_t)a * ldb : B + a;
            Cb = Cm + a;
        }
#ifndef CPU_REAL_DOUBLE
        if (scratch) { /* the epilogue on each 32 rows as they are finished */
            bf16_gemm(cb->bf16, ta, tb, rows, cols, K, Ab, lda, Bb, ldb, beta, Cb, ldc,
                     scratch + per * (size_t)p, e ? epilogue_apply : NULL, &at);
            continue;
        }
#endif
        GEMM(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, rows,
             cols, K, 1, Ab, lda, Bb, ldb, beta, Cb, ldc);
        for (int r = 0; e && r < rows; r++) /* BLAS has no epilogue: after its product */
            epilogue_apply(&at, Cb + (size_t)r * ldc, r, 0, cols);
    }
}

static void cpu_matmul_forward(backend *be, void *out_, const void *inp, const void *weight,
                               const void *bias_, int N, int IC, int OC)
{
    real *out = out_;
    const real *bias = bias_;
    gemm(be, 0, 1, N, OC, IC, inp, IC, weight, IC, 0, out, OC,
         bias ? &(epilogue){ .bias = bias } : NULL);
}

static void cpu_matmul_backward(backend *be, void *dinp, void *dweight, void *dbias_,
                                const void *dout_, const void *inp, const void *weight, int N,
                                int IC, int OC, grad_mode dinp_mode)
{
    const real *dout = dout_;
    real *dbias = dbias_;
    /* beta 0: BLAS then writes dinp without reading it (garbage stays out) */
    if (dinp)
        gemm(be, 0, 0, N, IC, OC, dout, OC, weight, IC, dinp_mode == GRAD_SET ? 0 : 1, dinp, IC,
             NULL);
    if (dweight)
        gemm(be, 1, 0, OC, IC, N, dout, OC, inp, IC, 1, dweight, IC, NULL);
    if (!dbias || N <= 0)
        return;
    int nblocks = (OC + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static) num_threads(team(be, (double)N * OC))
    for (int k = 0; k < nblocks; k++) {
        int c0 = k * COL_BLOCK, n = OC - c0 < COL_BLOCK ? OC - c0 : COL_BLOCK;
        real acc[COL_BLOCK] = { 0 };
        for (int i = 0; i < N; i++) {
            const real *dy = dout + (size_t)i * OC + c0;
#pragma omp simd
            for (int c = 0; c < n; c++)
                acc[c] += dy[c];
        }
        for (int c = 0; c < n; c++)
            dbias[c0 + c] += acc[c];
    }
}

/* ---- attention ------------------------------------------------------------
 * Keys are taken in tiles of KT, copied transposed (Kt[d][t]) so that the KT
 * scores of a query accumulate as independent vector lanes: no horizontal
 * sums, and the tile stays in cache for every query that uses it. Queries
 * go in groups of RB rows, so that each row of V, K, dV or dK loaded serves
 * RB rows at once (register blocking).
 * Forward: tasks of QB query rows, online softmax across key tiles (running
 * max and sum, rescaled when the max grows), so the stack holds a few tiles
 * whatever T is. Backward: one (b, h) per task, key tiles outer, row groups
 * inner; the task owns its dk/dv rows and sums into them in a fixed order.
 * Masked and padded lanes get p = 0 and add exact zeros.
 * Stack per thread: about (QB + 2) hs + 2 hs KT + 3 RB KT reals. */

#define KT 64 /* keys per tile */
#define QB 64 /* query rows per forward task */
#define RB 4  /* query rows per register block; the code below spells out 4 */

/* Kt[d*KT + t] = row t of the tile at k (rows `stride` apart), for t < n;
 * zero for t >= n so that the padded lanes stay finite. */
static void tile_transpose(real *restrict Kt, const real *restrict k, size_t stride, int n,
                           int hs)
{
    if (n < KT)
        memset(Kt, 0, (size_t)hs * KT * sizeof(real));
    for (int t = 0; t < n; t++)
        for (int d = 0; d < hs; d++)
            Kt[(size_t)d * KT + t] = k[t * stride + d];
}

/* Explicit vectors (GCC/Clang vector extensions, lowered to whatever the
 * target has) for the three small kernels below, where the accumulators
 * must stay in registers. The width follows the target, so that no vector
 * crosses a function boundary wider than the ABI allows (-Wpsabi).
 * vload/vstore take any real-aligned address. */
#ifdef __AVX__
#define VBYTES 32
#else
#define VBYTES 16
#endif
typedef real vreal __attribute__((vector_size(VBYTES)));
typedef real vreal_u __attribute__((vector_size(VBYTES), aligned(sizeof(real)), may_alias));
#define VL ((int)(VBYTES / sizeof(real)))

static inline vreal vload(const real *p) { return *(const vreal_u *)p; }
static inline void vstore(real *p, vreal v) { *(vreal_u *)p = v; }

/* s[t] = sum_d q[d] Kt[d][t] for all KT lanes, summed over d in order. */
static inline void tile_dots(real *restrict s, const real *restrict q, const real *restrict Kt,
                             int hs)
{
    vreal a[KT / VL];
    for (int u = 0; u < KT / VL; u++)
        a[u] = (vreal){ 0 };
    for (int d = 0; d < hs; d++) {
        real qd = q[d];
        const real *kr = Kt + (size_t)d * KT;
        for (int u = 0; u < KT / VL; u++)
            a[u] += qd * vload(kr + u * VL);
    }
    for (int u = 0; u < KT / VL; u++)
        vstore(s + u * VL, a[u]);
}

/* acc[r][c] += sum_{t<n} W[r][t] x_t[c] for the RB rows, x_t being `stride`
 * apart: each x_t[c] is loaded once for all rows, and every element gets
 * the same sequence of additions whichever loop below takes its column.
 * The acc rows must be distinct unless their W rows are zero. */
static void block_gemv(real *const acc[RB], const real (*W)[KT], const real *x, size_t stride,
                       int n, int hs)
{
    real *a0 = acc[0], *a1 = acc[1], *a2 = acc[2], *a3 = acc[3];
    int c = 0;
    for (; c + 2 * VL <= hs; c += 2 * VL) { /* 8 independent chains */
        vreal s0 = vload(a0 + c), s1 = vload(a1 + c), s2 = vload(a2 + c), s3 = vload(a3 + c);
        vreal u0 = vload(a0 + c + VL), u1 = vload(a1 + c + VL);
        vreal u2 = vload(a2 + c + VL), u3 = vload(a3 + c + VL);
        for (int t = 0; t < n; t++) {
            vreal x0 = vload(x + t * stride + c), x1 = vload(x + t * stride + c + VL);
            s0 += W[0][t] * x0, u0 += W[0][t] * x1;
            s1 += W[1][t] * x0, u1 += W[1][t] * x1;
            s2 += W[2][t] * x0, u2 += W[2][t] * x1;
            s3 += W[3][t] * x0, u3 += W[3][t] * x1;
        }
        vstore(a0 + c, s0), vstore(a1 + c, s1), vstore(a2 + c, s2), vstore(a3 + c, s3);
        vstore(a0 + c + VL, u0), vstore(a1 + c + VL, u1);
        vstore(a2 + c + VL, u2), vstore(a3 + c + VL, u3);
    }
    for (; c + VL <= hs; c += VL) {
        vreal s0 = vload(a0 + c), s1 = vload(a1 + c), s2 = vload(a2 + c), s3 = vload(a3 + c);
        for (int t = 0; t < n; t++) {
            vreal x0 = vload(x + t * stride + c);
            s0 += W[0][t] * x0, s1 += W[1][t] * x0, s2 += W[2][t] * x0, s3 += W[3][t] * x0;
        }
        vstore(a0 + c, s0), vstore(a1 + c, s1), vstore(a2 + c, s2), vstore(a3 + c, s3);
    }
    for (; c < hs; c++) {
        real s0 = a0[c], s1 = a1[c], s2 = a2[c], s3 = a3[c];
        for (int t = 0; t < n; t++) {
            real xc = x[t * stride + c];
            s0 += W[0][t] * xc, s1 += W[1][t] * xc, s2 += W[2][t] * xc, s3 += W[3][t] * xc;
        }
        a0[c] = s0, a1[c] = s1, a2[c] = s2, a3[c] = s3;
    }
}

/* y_t[c] += sum_r W[r][t] z_r[c] for t < n, y_t being `stride` apart: each
 * y_t is loaded and stored once for all RB rows. */
static void block_rank_update(real *y, size_t stride, const real (*W)[KT],
                              const real *const z[RB], int n, int hs)
{
    const real *z0 = z[0], *z1 = z[1], *z2 = z[2], *z3 = z[3];
    for (int t = 0; t < n; t++) {
        real *yt = y + t * stride, w0 = W[0][t], w1 = W[1][t], w2 = W[2][t], w3 = W[3][t];
#pragma omp simd
        for (int c = 0; c < hs; c++)
            yt[c] += w0 * z0[c] + w1 * z1[c] + w2 * z2[c] + w3 * z3[c];
    }
}

/* One query row against one key tile with n valid keys: P[t] = exp(s_t - m)
 * (0 for t >= n) after folding the tile into the row's running max m and sum
 * l, and rescaling its unnormalised output acc when m grows. */
static void row_tile_softmax(real *restrict P, real *restrict acc, real *m, real *l,
                             const real *q, const real *Kt, int n, int hs, real scale)
{
    real s[KT], tm = -INFINITY;
    tile_dots(s, q, Kt, hs);
    for (int t = 0; t < n; t++) {
        s[t] *= scale;
        tm = s[t] > tm ? s[t] : tm;
    }
    if (tm > *m) { /* rescale what was summed against the old max */
        real corr = exp_r(*m - tm);
        *l *= corr;
#pragma omp simd
        for (int c = 0; c < hs; c++)
            acc[c] *= corr;
        *m = tm;
    }
    real ts = 0, mm = *m;
#pragma omp simd reduction(+ : ts)
    for (int t = 0; t < KT; t++) {
        real p = t < n ? exp_r(s[t] - mm) : 0;
        P[t] = p;
        ts += p;
    }
    *l += ts;
}

/* Query rows [i0, i1) of one head: q, k, v point at the head's columns of
 * the batch's row 0 and advance by `stride` per row; out by C. */
static void att_block_forward(real *out, real *lse, const real *q, const real *k, const real *v,
                              size_t stride, int C, int T, int i0, int i1, int hs, real scale,
                              int causal)
{
    real Kt[hs * KT], acc[QB * hs], dummy[hs], m[QB], l[QB], P[RB][KT];
    int rows = i1 - i0, kend = causal ? i1 : T;
    for (int r = 0; r < rows; r++)
        m[r] = -INFINITY, l[r] = 0;
    memset(acc, 0, sizeof(acc));
    memset(dummy, 0, sizeof(dummy));
    for (int j0 = 0; j0 < kend; j0 += KT) {
        int nt = kend - j0 < KT ? kend - j0 : KT;
        tile_transpose(Kt, k + j0 * stride, stride, nt, hs);
        for (int g = 0; g < rows; g += RB) {
            real *accp[RB];
            int nmax = 0;
            for (int r = 0; r < RB; r++) {
                int i = i0 + g + r, n = causal && i + 1 - j0 < nt ? i + 1 - j0 : nt;
                accp[r] = g + r < rows ? acc + (g + r) * hs : dummy;
                if (g + r >= rows || n <= 0) {
                    memset(P[r], 0, sizeof(P[r]));
                    continue;
                }
                row_tile_softmax(P[r], accp[r], &m[g + r], &l[g + r], q + i * stride, Kt, n,
                                 hs, scale);
                nmax = n > nmax ? n : nmax;
            }
            if (nmax > 0)
                block_gemv(accp, (const real(*)[KT])P, v + j0 * stride, stride, nmax, hs);
        }
    }
    for (int r = 0; r < rows; r++) {
        real inv = 1 / l[r];
        for (int c = 0; c < hs; c++)
            out[(size_t)(i0 + r) * C + c] = acc[r * hs + c] * inv;
        lse[i0 + r] = m[r] + log(l[r]);
    }
}

/* ---- attention through the BLAS -------------------------------------------
 * The same op as above with its matrix products made by sgemm: for each
 * (b, h), query rows in blocks of ATT_ROWS, the block's scores S = q k^T
 * against the keys it may see (causal: up to its last row) in a scratch of
 * ATT_ROWS x T, softmax in place, then out = P v. Backward recomputes S and
 * P from lse the same way, dP = dO v^T beside it, dS = P (dP - D) in place,
 * and three products accumulate dv += P^T dO, dk += dS^T q, dq += dS k.
 * At GPT-2 d12's B 8, T 256 (hs 64) forward + backward take 1.5x less time
 * than the tiled code (bench/NOTES.md), though the masked upper triangle of
 * each diagonal block is computed and zeroed. One (b, h) per task, so each task owns its output
 * rows and sums into dk, dv in a fixed order; one BLAS call per product on
 * the calling thread. Needs 2 ATT_ROWS T reals per thread (att_scratch);
 * where that cannot be had the tiled code above runs instead. */

#define ATT_ROWS 64

/* Small T: one task per sequence, whose rows (q, k, v forward; with out,
 * dout, dq, dk, dv backward: 8 T C reals) fit this many bytes, first copied
 * in order into contiguous [T][hs] rows per head, the products made there,
 * then copied (added, backward) back. In place, at the ViT's T 50 and hs 32,
 * a head's rows are 128 bytes 1.5 KB apart in a qkv that lives in L3, and
 * the products' packing stalls on them (bench/NOTES.md, "attention at small
 * T"). */
#define ATT_GATHER_BYTES (512 * 1024)

static int att_gathers(int T, int C)
{
    return 8 * (size_t)T * C * sizeof(real) <= ATT_GATHER_BYTES;
}

/* Reals of scratch a thread needs: the score block(s), then the gathered rows. */
static size_t att_scratch_reals(int T, int C, int backward)
{
    size_t blocks = (backward ? 2 : 1) * (size_t)ATT_ROWS * T;
    return blocks + (att_gathers(T, C) ? (backward ? 8 : 4) * (size_t)T * C : 0);
}

/* g[j][t][0..hs) = row t's part j (parts of hs, nparts of them, the row
 * being nparts hs long): one sequence's T rows read in order into one block
 * of T contiguous rows per part, so each head's products see plain [T][hs]
 * matrices. */
static void heads_split(real *g, const real *rows, int T, int nparts, int hs)
{
    for (int t = 0; t < T; t++)
        for (int j = 0; j < nparts; j++)
            memcpy(g + ((size_t)j * T + t) * hs, rows + ((size_t)t * nparts + j) * hs,
                   hs * sizeof(real));
}

/* heads_split's inverse, written or (add) added into the rows. */
static void heads_join(real *rows, const real *g, int T, int nparts, int hs, int add)
{
    for (int t = 0; t < T; t++)
        for (int j = 0; j < nparts; j++) {
            real *d = rows + ((size_t)t * nparts + j) * hs;
            const real *x = g + ((size_t)j * T + t) * hs;
            if (!add) {
                memcpy(d, x, hs * sizeof(real));
                continue;
            }
#pragma omp simd
            for (int c = 0; c < hs; c++)
                d[c] += x[c];
        }
}

/* The calling backend's scratch for `threads` threads of `per` reals each,
 * grown on first use of a longer T; NULL when out of memory. */
static real *att_scratch(backend *be, int threads, size_t per)
{
    cpu_backend *cb = (cpu_backend *)be;
    return scratch_at_least(&cb->att_buf, &cb->att_cap, per * (size_t)threads * sizeof(real));
}

/* One (b, h): q, k, v point at the head's columns of row 0 and advance by
 * `stride`; out by C. S: ATT_ROWS x T reals. */
static void att_head_forward_blas(real *out, real *lse, const real *q, const real *k,
                                  const real *v, size_t stride, int C, int T, int hs,
                                  real scale, int causal, real *S)
{
    for (int i0 = 0; i0 < T; i0 += ATT_ROWS) {
        int rows = T - i0 < ATT_ROWS ? T - i0 : ATT_ROWS, kend = causal ? i0 + rows : T;
        GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, rows, kend, hs, scale, q + i0 * stride,
             (int)stride, k, (int)stride, 0, S, kend);
        for (int r = 0; r < rows; r++) {
            real *s = S + (size_t)r * kend, m = -INFINITY, l = 0;
            int n = causal ? i0 + r + 1 : T;
#pragma omp simd reduction(max : m) /* exact in any order */
            for (int t = 0; t < n; t++)
                m = s[t] > m ? s[t] : m;
#pragma omp simd reduction(+ : l)
            for (int t = 0; t < kend; t++) {
                real p = t < n ? exp_r(s[t] - m) : 0;
                s[t] = p;
                l += p;
            }
            real inv = 1 / l;
#pragma omp simd
            for (int t = 0; t < kend; t++)
                s[t] *= inv;
            lse[i0 + r] = m + log(l);
        }
        GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hs, kend, 1, S, kend, v,
             (int)stride, 0, out + (size_t)i0 * C, C);
    }
}

/* One (b, h), pointers as att_head_backward's. P, dP: ATT_ROWS x T reals. */
static void att_head_backward_blas(real *dq, real *dk, real *dv, const real *q, const real *k,
                                   const real *v, const real *dout, const real *out,
                                   const real *lse, size_t stride, size_t ostride, int T, int hs,
                                   real scale, int causal, real *P, real *dP)
{
    for (int i0 = 0; i0 < T; i0 += ATT_ROWS) {
        int rows = T - i0 < ATT_ROWS ? T - i0 : ATT_ROWS, kend = causal ? i0 + rows : T;
        const real *qb = q + i0 * stride, *dob = dout + i0 * ostride;
        GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, rows, kend, hs, scale, qb, (int)stride, k,
             (int)stride, 0, P, kend);
        GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, rows, kend, hs, 1, dob, (int)ostride, v,
             (int)stride, 0, dP, kend);
        for (int r = 0; r < rows; r++) {
            int i = i0 + r, n = causal ? i + 1 : T;
            real *p = P + (size_t)r * kend, *dp = dP + (size_t)r * kend;
            real D = dot(dout + i * ostride, out + i * ostride, hs), L = lse[i];
#pragma omp simd
            for (int t = 0; t < kend; t++) {
                real pt = t < n ? exp_r(p[t] - L) : 0;
                p[t] = pt;                          /* p_ij */
                dp[t] = pt * (dp[t] - D) * scale;   /* ds_ij / sqrt(hs) */
            }
        }
        GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, kend, hs, rows, 1, P, kend, dob,
             (int)ostride, 1, dv, (int)stride);
        GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, kend, hs, rows, 1, dP, kend, qb,
             (int)stride, 1, dk, (int)stride);
        GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hs, kend, 1, dP, kend, k,
             (int)stride, 1, dq + i0 * stride, (int)stride);
    }
}

static void cpu_attention_forward(backend *be, void *out_, void *lse_, const void *qkv_, int B,
                                  int T, int C, int NH, int causal)
{
    real *out = out_, *lse = lse_;
    const real *qkv = qkv_;
    int hs = C / NH, nblk = (T + QB - 1) / QB;
    size_t C3 = 3 * (size_t)C;
    real scale = (real)(1 / sqrt((double)hs));
    int gather = att_gathers(T, C);
    size_t per = att_scratch_reals(T, C, 0);
    int nt = nthreads(be);
    real *buf = B > 0 && T > 0 ? att_scratch(be, nt, per) : NULL;
    if (buf && gather) {
        size_t tc = (size_t)T * C;
#pragma omp parallel for schedule(static) num_threads(team(be, (double)B * NH * T * T * hs))
        for (int b = 0; b < B; b++) {
            real *S = buf + per * omp_get_thread_num(), *g = S + (size_t)ATT_ROWS * T;
            real *go = g + 3 * tc;
            /* g: [3][NH][T][hs] from the batch's rows [T][3][NH][hs], read in order */
            heads_split(g, qkv + (size_t)b * T * C3, T, 3 * NH, hs);
            for (int h = 0; h < NH; h++) {
                size_t ho = (size_t)h * T * hs;
                att_head_forward_blas(go + ho, lse + ((size_t)b * NH + h) * T, g + ho,
                                      g + tc + ho, g + 2 * tc + ho, hs, hs, T, hs, scale,
                                      causal, S);
            }
            heads_join(out + (size_t)b * tc, go, T, NH, hs, 0);
        }
        return;
    }
    if (buf) {
        int heads = B * NH;
#pragma omp parallel for schedule(static) num_threads(team(be, (double)heads * T * T * hs))
        for (int bh = 0; bh < heads; bh++) {
            int b = bh / NH, h = bh % NH;
            const real *base = qkv + (size_t)b * T * C3 + (size_t)h * hs;
            att_head_forward_blas(out + (size_t)b * T * C + (size_t)h * hs, lse + (size_t)bh * T,
                                  base, base + C, base + 2 * (size_t)C, C3, C, T, hs, scale,
                                  causal, buf + per * omp_get_thread_num());
        }
        return;
    }
    long tasks = (long)B * NH * nblk;
    /* Blocks are independent; dealing them out one at a time balances the
     * causal triangle across threads. */
#pragma omp parallel for schedule(static, 1) num_threads(team(be, (double)tasks * QB * T * hs))
    for (long r = 0; r < tasks; r++) {
        int blk = (int)(r % nblk), h = (int)(r / nblk % NH), b = (int)(r / nblk / NH);
        int i0 = blk * QB, i1 = i0 + QB < T ? i0 + QB : T;
        const real *base = qkv + (size_t)b * T * C3 + (size_t)h * hs;
        att_block_forward(out + (size_t)b * T * C + (size_t)h * hs,
                          lse + ((size_t)b * NH + h) * T, base, base + C, base + 2 * (size_t)C,
                          C3, C, T, i0, i1, hs, scale, causal);
    }
}

/* One (b, h): q, k, v, dq, dk, dv point at the head's columns of row 0 and
 * advance by `stride`; dout and out by `ostride`. */
static void att_head_backward(real *dq, real *dk, real *dv, const real *q, const real *k,
                              const real *v, const real *dout, const real *out,
                              const real *lse, size_t stride, size_t ostride, int T, int hs,
                              real scale, int causal)
{
    real Kt[hs * KT], Vt[hs * KT], dummy[hs], s[KT], dp[KT], P[RB][KT], DS[RB][KT];
    memset(dummy, 0, sizeof(dummy));
    for (int j0 = 0; j0 < T; j0 += KT) {
        int nt = T - j0 < KT ? T - j0 : KT;
        tile_transpose(Kt, k + j0 * stride, stride, nt, hs);
        tile_transpose(Vt, v + j0 * stride, stride, nt, hs);
        for (int i0 = causal ? j0 : 0; i0 < T; i0 += RB) {
            const real *qr[RB], *dor[RB];
            real *dqr[RB];
            int nmax = 0;
            for (int r = 0; r < RB; r++) {
                int i = i0 + r, n = causal && i + 1 - j0 < nt ? i + 1 - j0 : nt;
                if (i >= T) { /* past the last row: zero weights, harmless rows */
                    memset(P[r], 0, sizeof(P[r]));
                    memset(DS[r], 0, sizeof(DS[r]));
                    qr[r] = q, dor[r] = dout, dqr[r] = dummy;
                    continue;
                }
                qr[r] = q + i * stride, dor[r] = dout + i * ostride, dqr[r] = dq + i * stride;
                real D = dot(dor[r], out + i * ostride, hs), L = lse[i];
                tile_dots(s, qr[r], Kt, hs);
                tile_dots(dp, dor[r], Vt, hs);
#pragma omp simd
                for (int t = 0; t < KT; t++) {
                    real p = t < n ? exp_r(s[t] * scale - L) : 0;
                    P[r][t] = p;                        /* p_ij */
                    DS[r][t] = p * (dp[t] - D) * scale; /* ds_ij / sqrt(hs) */
                }
                nmax = n > nmax ? n : nmax;
            }
            block_rank_update(dv + j0 * stride, stride, (const real(*)[KT])P, dor, nmax, hs);
            block_rank_update(dk + j0 * stride, stride, (const real(*)[KT])DS, qr, nmax, hs);
            block_gemv(dqr, (const real(*)[KT])DS, k + j0 * stride, stride, nmax, hs);
        }
    }
}

static void cpu_attention_backward(backend *be, void *dqkv_, const void *dout_,
                                   const void *qkv_, const void *out_, const void *lse_, int B,
                                   int T, int C, int NH, int causal)
{
    real *dqkv = dqkv_;
    const real *dout = dout_, *qkv = qkv_, *out = out_, *lse = lse_;
    int hs = C / NH;
    size_t C3 = 3 * (size_t)C;
    real scale = (real)(1 / sqrt((double)hs));
    int heads = B * NH;
    int gather = att_gathers(T, C);
    size_t per = att_scratch_reals(T, C, 1);
    real *buf = B > 0 && T > 0 ? att_scratch(be, nthreads(be), per) : NULL;
    if (buf && gather) {
        size_t tc = (size_t)T * C;
#pragma omp parallel for schedule(static) num_threads(team(be, (double)heads * T * T * hs))
        for (int b = 0; b < B; b++) {
            real *P = buf + per * omp_get_thread_num(), *dP = P + (size_t)ATT_ROWS * T;
            real *g = dP + (size_t)ATT_ROWS * T, *gd = g + 3 * tc, *go = gd + 3 * tc;
            heads_split(g, qkv + (size_t)b * T * C3, T, 3 * NH, hs);
            heads_split(go, dout + (size_t)b * tc, T, NH, hs);
            heads_split(go + tc, out + (size_t)b * tc, T, NH, hs);
            memset(gd, 0, 3 * tc * sizeof(real));
            for (int h = 0; h < NH; h++) {
                size_t ho = (size_t)h * T * hs;
                att_head_backward_blas(gd + ho, gd + tc + ho, gd + 2 * tc + ho, g + ho,
                                       g + tc + ho, g + 2 * tc + ho, go + ho, go + tc + ho,
                                       lse + ((size_t)b * NH + h) * T, hs, hs, T, hs, scale,
                                       causal, P, dP);
            }
            heads_join(dqkv + (size_t)b * T * C3, gd, T, 3 * NH, hs, 1);
        }
        return;
    }
    if (buf) {
#pragma omp parallel for schedule(static) num_threads(team(be, (double)heads * T * T * hs))
        for (int bh = 0; bh < heads; bh++) {
            int b = bh / NH, h = bh % NH;
            size_t qo = (size_t)b * T * C3 + (size_t)h * hs;
            size_t oo = (size_t)b * T * C + (size_t)h * hs;
            real *P = buf + per * omp_get_thread_num();
            att_head_backward_blas(dqkv + qo, dqkv + qo + C, dqkv + qo + 2 * (size_t)C, qkv + qo,
                                   qkv + qo + C, qkv + qo + 2 * (size_t)C, dout + oo, out + oo,
                                   lse + (size_t)bh * T, C3, (size_t)C, T, hs, scale, causal, P,
                                   P + (size_t)ATT_ROWS * T);
        }
        return;
    }
#pragma omp parallel for schedule(static) num_threads(team(be, (double)heads * T * T * hs))
    for (int bh = 0; bh < heads; bh++) {
        int b = bh / NH, h = bh % NH;
        size_t qo = (size_t)b * T * C3 + (size_t)h * hs, oo = (size_t)b * T * C + (size_t)h * hs;
        att_head_backward(dqkv + qo, dqkv + qo + C, dqkv + qo + 2 * (size_t)C, qkv + qo,
                          qkv + qo + C, qkv + qo + 2 * (size_t)C, dout + oo, out + oo,
                          lse + (size_t)bh * T, C3, (size_t)C, T, hs, scale, causal);
    }
}

/* ---- elementwise --------------------------------------------------------- */

#define SPAN 4096 /* elements of an elementwise op per call of its span */

static void cpu_gelu_forward(backend *be, void *out_, const void *inp_, size_t N)
{
    real *y = out_;
    const real *x = inp_;
#pragma omp parallel for schedule(static) num_threads(team(be, (double)N))
    for (size_t i = 0; i < N; i += SPAN)
        gelu_span(y + i, x + i, N - i < SPAN ? N - i : SPAN);
}

/* The fused op of ops.h: the matmul, then GELU of its output, GELU in the
 * product's epilogue. */
static void cpu_matmul_gelu_forward(backend *be, void *pre, void *out, const void *inp,
                                    const void *weight, const void *bias, int N, int IC, int OC)
{
    gemm(be, 0, 1, N, OC, IC, inp, IC, weight, IC, 0, pre, OC,
         &(epilogue){ .bias = bias, .gelu_out = out });
}

static void cpu_gelu_backward(backend *be, void *dinp_, const void *inp_, const void *dout_,
                              size_t N)
{
    real *dx = dinp_;
    const real *x = inp_, *dy = dout_;
#pragma omp parallel for schedule(static) num_threads(team(be, (double)N))
    for (size_t i = 0; i < N; i += SPAN)
        gelu_grad_span(dx + i, dy + i, x + i, N - i < SPAN ? N - i : SPAN);
}

/* The fused op of ops.h: dpre = dout @ weight, times gelu'(pre) in the
 * product's epilogue; the parameter gradients as matmul_backward's. */
static void cpu_matmul_gelu_backward(backend *be, void *dpre, void *dweight, void *dbias,
                                     const void *dout, const void *inp, const void *pre,
                                     const void *weight, int N, int IC, int OC)
{
    if (N <= 0 || IC <= 0)
        return;
    /* OC 0 is an empty product: dpre = 0 */
    gemm(be, 0, 0, N, IC, OC, dout, OC, weight, IC, 0, dpre, IC,
         &(epilogue){ .gelu_pre = pre });
    cpu_matmul_backward(be, NULL, dweight, dbias, dout, inp, weight, N, IC, OC, GRAD_ADD);
}

static void cpu_residual_forward(backend *be, void *out_, const void *a_, const void *b_,
                                 size_t N)
{
    real *out = out_;
    const real *a = a_, *b = b_;
#pragma omp parallel for simd schedule(static) num_threads(team(be, (double)N))
    for (size_t i = 0; i < N; i++)
        out[i] = a[i] + b[i];
}

static void cpu_accumulate(backend *be, void *dst_, const void *src_, size_t N)
{
    real *dst = dst_;
    const real *src = src_;
#pragma omp parallel for simd schedule(static) num_threads(team(be, (double)N))
    for (size_t i = 0; i < N; i++)
        dst[i] += src[i];
}

/* ---- crossentropy ---------------------------------------------------------
 * Per row: max, then exp(x - max) written straight into dlogits (reading
 * each logit before its own slot is overwritten, so aliasing is safe), then
 * one scaling pass. A target outside [0, V) other than -1 is a caller bug:
 * its loss is NaN, so it shows, and its gradient row is 0. */

static void cpu_crossentropy(backend *be, void *losses_, void *dlogits_, const void *logits_,
                             const int32_t *targets, int N, int V, int Vp, float scale_)
{
    real *losses = losses_, *dlogits = dlogits_;
    const real *logits = logits_;
    real scale = scale_;
#pragma omp parallel for schedule(static) num_threads(team(be, (double)N * Vp))
    for (int n = 0; n < N; n++) {
        const real *x = logits + (size_t)n * Vp;
        real *dx = dlogits ? dlogits + (size_t)n * Vp : NULL;
        int tg = targets[n];
        if (tg < 0 || tg >= V) {
            losses[n] = tg == -1 ? 0 : (real)NAN;
            if (dx)
                memset(dx, 0, (size_t)Vp * sizeof(real));
            continue;
        }
        real m = -INFINITY, sum = 0, xt = x[tg];
#pragma omp simd reduction(max : m)
        for (int v = 0; v < V; v++)
            m = x[v] > m ? x[v] : m;
        if (dx) {
#pragma omp simd reduction(+ : sum)
            for (int v = 0; v < V; v++) {
                real e = exp_r(x[v] - m);
                dx[v] = e;
                sum += e;
            }
        } else {
#pragma omp simd reduction(+ : sum)
            for (int v = 0; v < V; v++)
                sum += exp_r(x[v] - m);
        }
        losses[n] = m + (real)log(sum) - xt;
        if (!dx)
            continue;
        real f = scale / sum;
#pragma omp simd
        for (int v = 0; v < V; v++)
            dx[v] *= f;
        dx[tg] -= scale;
        for (int v = V; v < Vp; v++)
            dx[v] = 0;
    }
}

/* ---- optimiser ----------------------------------------------------------- */

/* Each thread sums a fixed contiguous range in double; the partial sums are
 * added in thread order. Deterministic for a given thread count and n. */
static double cpu_sumsq(backend *be, const void *grads, size_t n)
{
    const real *g = grads;
    int nt = team(be, (double)n), used = 1;
    double part[nt];
#pragma omp parallel num_threads(nt)
    {
        int me = omp_get_thread_num(), all = omp_get_num_threads();
        size_t lo, hi;
        thread_range(n, me, all, &lo, &hi);
        double s = 0;
#pragma omp simd reduction(+ : s)
        for (size_t i = lo; i < hi; i++)
            s += (double)g[i] * g[i];
        part[me] = s;
        if (me == 0)
            used = all;
    }
    double s = 0;
    for (int t = 0; t < used; t++)
        s += part[t];
    return s;
}

typedef struct {
    real b1, b2, eps, gs, step, bc2s, keep;
} adamw_consts;

/* AdamW on parameter elements [lo, hi); w is master or params, and params
 * gets w. m and v hold the state from parameter element so on (ops.h:
 * state_offset), parameter i's at i - so; w likewise from wo on (the master
 * copy: wo = so; params themselves: wo = 0). */
static void adamw_range(real *params, real *w, size_t wo, const real *grads, real *m, real *v,
                        size_t so, size_t lo, size_t hi, const adamw_consts *k)
{
    real b1 = k->b1, b2 = k->b2, eps = k->eps, gs = k->gs, step = k->step, bc2s = k->bc2s;
    real keep = k->keep;
#pragma omp simd
    for (size_t i = lo; i < hi; i++) {
        size_t j = i - so;
        real g = gs * grads[i];
        m[j] = b1 * m[j] + (1 - b1) * g;
        v[j] = b2 * v[j] + (1 - b2) * g * g;
        real wi = w[i - wo] * keep - step * (m[j] / (sqrt_r(v[j]) / bc2s + eps));
        w[i - wo] = wi;
        params[i] = wi; /* the same store when master is NULL */
    }
}

/* torch.optim.AdamW's order of operations: decay, moments, then the step
 * lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps). Steps below 1 count as 1 (no
 * division by a zero bias correction). Segments must not overlap. */
static void cpu_adamw(backend *be, void *params_, void *master_, const void *grads, void *m,
                      void *v, const param_segment *segs, int nsegs, const adamw_params *hp)
{
    real *params = params_, *w = master_ ? (real *)master_ : params;
    size_t so = hp->state_offset, wo = master_ ? so : 0; /* params are always whole */
    int t = hp->step < 1 ? 1 : hp->step;
    double bc1 = 1 - pow(hp->beta1, t), bc2 = 1 - pow(hp->beta2, t);
    adamw_consts on = { hp->beta1, hp->beta2, hp->eps, hp->grad_scale, (real)(hp->lr / bc1),
                        (real)sqrt(bc2), (real)(1 - (double)hp->lr * hp->weight_decay) };
    adamw_consts off = on;
    off.keep = 1;
    double total = 0;
    for (int k = 0; k < nsegs; k++)
        total += (double)segs[k].count;
#pragma omp parallel num_threads(team(be, total))
    {
        int me = omp_get_thread_num(), all = omp_get_num_threads();
        for (int k = 0; k < nsegs; k++) {
            size_t lo, hi, o = segs[k].offset;
            thread_range(segs[k].count, me, all, &lo, &hi);
            adamw_range(params, w, wo, grads, m, v, so, o + lo, o + hi,
                        segs[k].decay ? &on : &off);
        }
    }
}

/* ---- what the backend holds for itself ------------------------------------ */

/* ops.h's workspace_bytes: attention's score blocks and, at small T, its
 * copied rows (att_scratch_reals a thread) and, on cpu-bf16, the bf16
 * kernels' packing scratch (at most a 1 MiB panel of B, 32 rows of A over
 * 2,048 of K and the staging block a thread, which bf16_gemm_scratch
 * reaches at K 2,048 and N 256 or more). Both grow on first use; for the
 * plan's shapes, the most they reach; B 0: what they hold. */
static size_t cpu_workspace_bytes(backend *be, int B, int T, int C, int NH, int V)
{
    cpu_backend *cb = (cpu_backend *)be;
    (void)NH, (void)V;
    if (B <= 0)
        return cb->att_cap + cb->bf16_cap;
    size_t threads = (size_t)nthreads(be);
    size_t att = T > 0 ? att_scratch_reals(T, C, 1) * threads * sizeof(real) : 0;
    size_t packing = 0;
#ifndef CPU_REAL_DOUBLE
    if (cb->bf16)
        packing = (bf16_gemm_scratch(1, 1 << 20, 1 << 20) + ALIGN - 1) / ALIGN * ALIGN * threads;
#endif
    return att + packing;
}

/* ---- constructor --------------------------------------------------------- */

backend *CPU_CREATE(int threads, char *err)
{
    cpu_backend *cb = calloc(1, sizeof(*cb));
    if (!cb) {
        if (err)
            snprintf(err, 256, "%s backend: out of memory", CPU_NAME);
        return NULL;
    }
    cb->threads = threads;
    /* OpenBLAS's own pthreads would spin beside the OpenMP ones; gemm()
     * splits the work over OpenMP instead. Process-wide, and idempotent. */
    openblas_set_num_threads(1);
    backend *be = &cb->be;
    be->name = CPU_NAME;
    be->act = be->stat = be->opt = REAL_DT;
    be->ctx = cb;
    be->alloc = cpu_alloc;
    be->free = cpu_free;
    be->upload = cpu_upload;
    be->download = cpu_download;
    be->fill = cpu_fill;
    be->sync = cpu_sync;
    be->destroy = cpu_destroy;
    be->workspace_bytes = cpu_workspace_bytes;
    be->encoder_forward = cpu_encoder_forward;
    be->encoder_backward = cpu_encoder_backward;
    be->layernorm_forward = cpu_layernorm_forward;
    be->layernorm_backward = cpu_layernorm_backward;
    be->residual_layernorm_forward = cpu_residual_layernorm_forward;
    be->matmul_forward = cpu_matmul_forward;
    be->matmul_backward = cpu_matmul_backward;
    be->attention_forward = cpu_attention_forward;
    be->attention_backward = cpu_attention_backward;
    be->gelu_forward = cpu_gelu_forward;
    be->matmul_gelu_forward = cpu_matmul_gelu_forward;
    be->gelu_backward = cpu_gelu_backward;
    be->matmul_gelu_backward = cpu_matmul_gelu_backward;
    be->residual_forward = cpu_residual_forward;
    be->accumulate = cpu_accumulate;
    be->crossentropy = cpu_crossentropy;
    be->sumsq = cpu_sumsq;
    be->adamw = cpu_adamw;
    CPU_SEQ_INSTALL(be, team); /* ops_seq.c */
    CPU_NORM_INSTALL(be, team); /* ops_norm.c */
#ifdef CPU_REAL_DOUBLE
    { void cpu_decode_install_f64(backend *); cpu_decode_install_f64(be); } /* ops_decode.c */
#else
    { void cpu_decode_install_f32(backend *); cpu_decode_install_f32(be); } /* ops_decode.c */
#endif
    { void cpu_rnn_install(backend *, cpu_team_fn, dtype); cpu_rnn_install(be, team, REAL_DT); } /* ops_rnn.c */
    return be;
}

#ifndef CPU_REAL_DOUBLE
/* The fp32 backend with its matmul ops (the linear layers, through gemm)
 * in bf16 on the CPU's bf16 kernel (gemm_bf16.h: AMX tiles, else
 * AVX512-BF16 vectors): inputs rounded to bf16, products summed in fp32, as
 * PyTorch's bf16 autocast does on the CPU. Everything else (attention's
 * products, the recurrent steps, every other op, the weights, gradients and
 * AdamW) stays fp32. NULL with err where the CPU has neither kernel. */
backend *backend_cpu_bf16_create(int threads, char *err)
{
    char why[402];
    bf16_kernel k = bf16_gemm_pick(why, sizeof why);
    if (k == BF16_NONE) {
        if (err)
            snprintf(err, 256, "bf16 matmuls on the CPU need AMX-BF16 or AVX512-BF16: %.190s", why);
        return NULL;
    }
    backend *be = backend_cpu_create(threads, err);
    if (!be)
        return NULL;
    ((cpu_backend *)be)->bf16 = k;
    be->name = "cpu-bf16";
    return be;
}
#endif
