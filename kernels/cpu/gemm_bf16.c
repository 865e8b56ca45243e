/* gemm_bf16.c: C = beta C + op(A) op(B) with bf16 inputs and fp32 sums, on
 * AMX tiles or AVX512-BF16 vectors (gemm_bf16.h says which CPUs have which).
 *
 * Both kernels multiply pairs: TDPBF16PS (a 16 x 32 bf16 tile of A by a
 * 32 x 16 tile of B into a 16 x 16 fp32 tile of C) and VDPBF16PS (16 pairs
 * of A by 16 of B into 16 fp32 sums) add A[m][2p] B[2p][n] + A[m][2p+1]
 * B[2p+1][n] for pair p. Both operands are therefore packed as arrays of
 * 32-bit pairs (the even k in the low half): A as rows of pairs [m][p], B as
 * 16 x 16 tiles [p][n] ("VNNI" order), and the tiles of one 16-column strip
 * one after another along K, so that the strip is also a plain [p][16] array
 * for the vector kernel. The packing also rounds fp32 to bf16 and pads M, N
 * and K with zeros to whole tiles, so no kernel looks at an edge.
 *
 * Blocking, shared: K goes in blocks of up to 2048, C accumulating between
 * them; in each, op(B) is packed a panel of columns at a time (about 1 MiB
 * of bf16, to stay in L2), then op(A) 32 rows at a time, each reused across
 * the panel's columns; C is made 32 x 32 at a time:
 *   AMX: in tiles 0-3, from two A tiles (4, 5: rows 0-15 and 16-31) and two
 *        B tiles (6, 7: columns 0-15 and 16-31), four products per two loads
 *        of each;
 *   AVX512-BF16: 8 rows at a time in 16 zmm sums (8 rows x 2 strips), each
 *        pair of A broadcast to the 16 lanes and multiplied with a row of
 *        pairs of both strips: 16 VDPBF16PS per 2 loads and 8 broadcasts.
 * Each element's sum starts from beta C (from 0 when beta is 0: C is then
 * never read) and adds the products in K's order. A whole 32 x 32 block of C
 * is summed in place (scaled by beta first unless beta is 0 or 1); a block at
 * the edge of C goes through a staging block loaded with beta C, so both
 * add the same terms in the same order. (A gradient that accumulates, beta
 * 1, thus costs no extra pass over C.)
 *
 * Every C element is one fixed sequence of products over K, whatever rows or
 * columns share its call: results do not depend on how callers split M or N
 * between threads. */
/* One object: the fp64 compile of kernels/cpu (CPU_REAL_DOUBLE) leaves it empty. */
#ifndef CPU_REAL_DOUBLE
#include "gemm_bf16.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define X86_BUILD 1
#endif

#define TILE 16            /* rows of every tile; pairs per A row, columns per B row */
#define KC 32              /* k per tile (16 pairs) */
#define ALIGN_UP(x, a) (((x) + (a) - 1) / (a) * (a))

/* K is summed in blocks of at most KBLOCK (C accumulates between them), so
 * that a packed panel of B keeps a useful number of columns in L2 however
 * long K is (the logits' backward has K = V = 50,304). */
#define KBLOCK 2048

/* (one tile's K at least: an empty sum still sizes its panels) */
static int padded_k(int K) { return ALIGN_UP(K < 1 ? 1 : K < KBLOCK ? K : KBLOCK, KC); }
static int padded_n(int N) { return ALIGN_UP(N, 2 * TILE); }

/* Columns of op(B) packed at a time: a panel of about PANEL_BYTES of bf16,
 * which stays in the core's L2 while every row of A goes by. */
#define PANEL_BYTES (1 << 20)

static int panel_cols(int N, int K)
{
    int nc = (int)(PANEL_BYTES / ((size_t)padded_k(K) * 2)) / (2 * TILE) * (2 * TILE);
    nc = nc < 2 * TILE ? 2 * TILE : nc;
    return nc < padded_n(N) ? nc : padded_n(N);
}

size_t bf16_gemm_scratch(int M, int N, int K)
{
    (void)M;
    size_t kp = (size_t)padded_k(K), nc = (size_t)panel_cols(N, K);
    /* a packed panel of B, 32 packed rows of A, the 32 x 32 fp32 staging block */
    return ALIGN_UP(kp * nc * 2, 64) + ALIGN_UP(2 * TILE * kp * 2, 64) + 2 * TILE * 2 * TILE * 4;
}

#ifdef X86_BUILD

/* fp32 -> bf16 bits, rounded to nearest even (NaN stays NaN: the quiet bit
 * survives the carry) */
static inline uint32_t bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

static inline uint32_t pair(float even, float odd) { return bf16(even) | bf16(odd) << 16; }

#define VEC __attribute__((target("avx512f,avx512bw,avx512bf16")))

/* 32 floats in order as 16 pairs (bf16 of x[2p] low, x[2p+1] high). */
static inline VEC __m512i pairs_in_order(const float *x)
{
    return (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + 16), _mm512_loadu_ps(x));
}

/* 16 pairs (e[i], o[i]): two rows interleaved. */
static inline VEC __m512i pairs_of_rows(const float *e, const float *o)
{
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                         23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    __m512i v = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(o), _mm512_loadu_ps(e));
    return _mm512_permutexvar_epi16(idx, v);
}

/* The 16 x 16 matrix of 32-bit words in v[0..15] (v[i] its row i) transposed
 * in place: pairs within 128-bit lanes, then quads, then the lanes. */
static inline VEC void transpose16(__m512i v[16])
{
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(v[i], v[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(v[i], v[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) { /* v[i + j], lane L: rows i..i+3 of column 4L + j */
        v[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        v[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        v[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        v[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int j = 0; j < 4; j++) {
        __m512i s0 = _mm512_shuffle_i32x4(v[j], v[4 + j], _MM_SHUFFLE(2, 0, 2, 0));
        __m512i s1 = _mm512_shuffle_i32x4(v[j], v[4 + j], _MM_SHUFFLE(3, 1, 3, 1));
        __m512i s2 = _mm512_shuffle_i32x4(v[8 + j], v[12 + j], _MM_SHUFFLE(2, 0, 2, 0));
        __m512i s3 = _mm512_shuffle_i32x4(v[8 + j], v[12 + j], _MM_SHUFFLE(3, 1, 3, 1));
        t[j] = _mm512_shuffle_i32x4(s0, s2, _MM_SHUFFLE(2, 0, 2, 0));
        t[8 + j] = _mm512_shuffle_i32x4(s0, s2, _MM_SHUFFLE(3, 1, 3, 1));
        t[4 + j] = _mm512_shuffle_i32x4(s1, s3, _MM_SHUFFLE(2, 0, 2, 0));
        t[12 + j] = _mm512_shuffle_i32x4(s1, s3, _MM_SHUFFLE(3, 1, 3, 1));
    }
    for (int i = 0; i < 16; i++)
        v[i] = t[i];
}

/* Rows [r0, r0 + 32) of op(A) (M x K) into dst[32][kp / 2] pairs, zeros past
 * M and K. */
static VEC void pack_a(uint32_t *dst, int ta, const float *A, int lda, int r0, int M, int K, int kp)
{
    int rows = M - r0 < 2 * TILE ? M - r0 : 2 * TILE, w = kp / 2, full = K / 2;
    if (rows < 2 * TILE || K < kp) /* else every word is written below */
        memset(dst, 0, (size_t)2 * TILE * w * sizeof *dst);
    if (!ta) {
        for (int r = 0; r < rows; r++) {
            const float *a = A + (size_t)(r0 + r) * lda;
            uint32_t *d = dst + (size_t)r * w;
            int p = 0;
            for (; p + TILE <= full; p += TILE)
                _mm512_storeu_si512(d + p, pairs_in_order(a + 2 * p));
            for (; p < full; p++)
                d[p] = pair(a[2 * p], a[2 * p + 1]);
            if (K & 1)
                d[full] = pair(a[K - 1], 0.0f);
        }
        return;
    }
    /* A^T is stored: pair p of every row comes from two stored rows. 16 pairs
     * of 32 rows are made in order (pairs_of_rows), then turned into the
     * rows' order: two 16 x 16 transposes when the block is whole, else one
     * word at a time */
    int p0 = 0;
    if (rows == 2 * TILE)
        for (; p0 + TILE <= full; p0 += TILE) {
            __m512i lo[TILE], hi[TILE];
            for (int q = 0; q < TILE; q++) {
                const float *e = A + (size_t)(2 * (p0 + q)) * lda + r0, *o = e + lda;
                lo[q] = pairs_of_rows(e, o);
                hi[q] = pairs_of_rows(e + TILE, o + TILE);
            }
            transpose16(lo);
            transpose16(hi);
            for (int r = 0; r < TILE; r++) {
                _mm512_storeu_si512(dst + (size_t)r * w + p0, lo[r]);
                _mm512_storeu_si512(dst + (size_t)(TILE + r) * w + p0, hi[r]);
            }
        }
    for (int p = p0; p < (K + 1) / 2; p++) {
        const float *e = A + (size_t)(2 * p) * lda + r0, *o = e + lda;
        for (int r = 0; r < rows; r++)
            dst[(size_t)r * w + p] = pair(e[r], 2 * p + 1 < K ? o[r] : 0.0f);
    }
}

/* All of op(B) (K x N) into tiles: tile (j, c) (columns 16j.., k 32c..) at
 * dst + (j * nk + c) * 256 pairs, [p][n]; zeros past K and N. */
static VEC void pack_b(uint32_t *dst, int tb, const float *B, int ldb, int N, int K, int kp, int np)
{
    int nk = kp / KC, full = K / 2;
    if (N < np || K < kp) /* else every word is written below */
        memset(dst, 0, (size_t)kp / 2 * np * sizeof *dst);
    /* pair p, column n: tile (n / 16, p / 16), row p % 16, column n % 16 */
#define AT(p, n) (dst + ((size_t)((n) / TILE) * nk + (p) / TILE) * TILE * TILE + ((p) % TILE) * TILE + (n) % TILE)
    if (tb) { /* B^T stored: column n of op(B) is a stored row */
        int n0 = 0;
        /* 16 columns x 16 pairs: each stored row's pairs in order, then one
         * 16 x 16 transpose makes the tile's rows (pair-major) */
        for (; n0 + TILE <= N; n0 += TILE) {
            int p0 = 0;
            for (; p0 + TILE <= full; p0 += TILE) {
                __m512i v[TILE];
                for (int q = 0; q < TILE; q++)
                    v[q] = pairs_in_order(B + (size_t)(n0 + q) * ldb + 2 * p0);
                transpose16(v);
                for (int i = 0; i < TILE; i++)
                    _mm512_store_si512(AT(p0 + i, n0), v[i]);
            }
            for (int n = n0; n < n0 + TILE; n++) {
                const float *b = B + (size_t)n * ldb;
                for (int p = p0; p < full; p++)
                    *AT(p, n) = pair(b[2 * p], b[2 * p + 1]);
            }
        }
        for (int n = n0; n < N; n++) {
            const float *b = B + (size_t)n * ldb;
            for (int p = 0; p < full; p++)
                *AT(p, n) = pair(b[2 * p], b[2 * p + 1]);
        }
        if (K & 1)
            for (int n = 0; n < N; n++)
                *AT(full, n) = pair(B[(size_t)n * ldb + K - 1], 0.0f);
        return;
    }
    for (int p = 0; p < (K + 1) / 2; p++) { /* two stored rows make a row of pairs */
        const float *e = B + (size_t)(2 * p) * ldb, *o = e + ldb;
        int n = 0;
        if (2 * p + 1 < K)
            for (; n + TILE <= N; n += TILE)
                _mm512_storeu_si512(AT(p, n), pairs_of_rows(e + n, o + n));
        for (; n < N; n++)
            *AT(p, n) = pair(e[n], 2 * p + 1 < K ? o[n] : 0.0f);
    }
#undef AT
}

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

/* set to something other than 0 */
static int env_set(const char *name)
{
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0;
}

int bf16_kernel_usable(bf16_kernel k, char *why, size_t n)
{
    static int amx_state; /* 0: not asked yet, 1: granted, -1: not */
    static char amx_reason[160];
    unsigned a, b, c, d;
    const char *no = NULL;
    __builtin_cpu_init();
    /* the packing converts with AVX512-BF16 whichever kernel multiplies */
    if (k != BF16_AMX && k != BF16_AVX512)
        no = "no such kernel";
    else if (!__builtin_cpu_supports("avx512bw") || !__builtin_cpu_supports("avx512bf16"))
        no = k == BF16_AMX ? "this CPU has no AMX-BF16 (Intel Sapphire Rapids or later)"
                           : "this CPU has no AVX512-BF16 (AMD Zen 4, Intel Cooper Lake or later)";
    else if (k == BF16_AMX) {
        if (!amx_state) {
            if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 22)) || !(d & (1u << 24))) {
                snprintf(amx_reason, sizeof amx_reason,
                         "this CPU has no AMX-BF16 (Intel Sapphire Rapids or later)");
                amx_state = -1;
            } else if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) {
                snprintf(amx_reason, sizeof amx_reason,
                         "the kernel refused the AMX tile registers "
                         "(arch_prctl ARCH_REQ_XCOMP_PERM; Linux 5.16 or later)");
                amx_state = -1;
            } else {
                amx_state = 1;
            }
        }
        no = amx_state > 0 ? NULL : amx_reason;
    }
    if (no && why)
        snprintf(why, n, "%s", no);
    return no ? -1 : 0;
}

bf16_kernel bf16_gemm_pick(char *why, size_t n)
{
    static int picked = -1; /* -1: not yet, else a bf16_kernel */
    static char reason[402];
    if (picked < 0) {
        char amx[200], vec[200];
        if (env_set("ANATOMY_NO_AMX"))
            snprintf(amx, sizeof amx, "ANATOMY_NO_AMX is set");
        else if (bf16_kernel_usable(BF16_AMX, amx, sizeof amx) == 0)
            picked = BF16_AMX;
        if (picked < 0) {
            if (env_set("ANATOMY_NO_AVX512BF16"))
                snprintf(vec, sizeof vec, "ANATOMY_NO_AVX512BF16 is set");
            else if (bf16_kernel_usable(BF16_AVX512, vec, sizeof vec) == 0)
                picked = BF16_AVX512;
        }
        if (picked < 0) { /* both reasons: what each kernel lacks */
            snprintf(reason, sizeof reason, "%.199s; %.199s", amx, vec);
            picked = BF16_NONE;
        }
    }
    if (picked == BF16_NONE && why)
        snprintf(why, n, "%s", reason);
    return (bf16_kernel)picked;
}

/* One 32 x 32 block of C, the sum over the packed pairs: A's 32 rows of w
 * pairs (ap), B's two 16-column strips (b0, b1: [w][16] pairs each), pairs
 * of them not all zero padding; into dst, ldd floats a row, the products
 * added to what dst holds (add 1) or to zero (add 0: dst only written). */
typedef void (*block_fn)(const uint32_t *ap, int w, const uint32_t *b0, const uint32_t *b1,
                         int pairs, float *dst, size_t ldd, int add);

/* AMX: the tiles configured by bf16_gemm. Tile c of a strip is its pairs
 * [16c, 16c + 16): 256 words on. */
__attribute__((target("amx-tile,amx-bf16"))) static void amx_block(const uint32_t *ap, int w,
                                                                     const uint32_t *b0,
                                                                     const uint32_t *b1, int pairs,
                                                                     float *dst, size_t ldd,
                                                                     int add)
{
    const size_t astride = (size_t)w * 4, tile_pairs = TILE * TILE, ds = ldd * 4;
    (void)pairs; /* whole tiles, the padding's zeros included */
    if (add) {
        _tile_loadd(0, dst, ds);
        _tile_loadd(1, dst + TILE, ds);
        _tile_loadd(2, dst + (size_t)TILE * ldd, ds);
        _tile_loadd(3, dst + (size_t)TILE * ldd + TILE, ds);
    } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    }
    for (int c = 0; c < w / TILE; c++) {
        _tile_loadd(4, ap + (size_t)c * TILE, astride);
        _tile_loadd(5, ap + (size_t)TILE * w + (size_t)c * TILE, astride);
        _tile_loadd(6, b0 + (size_t)c * tile_pairs, 64);
        _tile_loadd(7, b1 + (size_t)c * tile_pairs, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, dst, ds);
    _tile_stored(1, dst + TILE, ds);
    _tile_stored(2, dst + (size_t)TILE * ldd, ds);
    _tile_stored(3, dst + (size_t)TILE * ldd + TILE, ds);
}

/* AVX512-BF16: 8 rows of the block, 16 sums in registers (the loops over
 * rows unrolled whatever the -O level: rolled, the sums live in memory and
 * the kernel runs at under half its rate). Pairs past `pairs` are padding
 * (zeros) and skipped: +0 leaves every sum as it is. */
static VEC void vec_rows8(const uint32_t *a, int w, const uint32_t *b0, const uint32_t *b1, int pairs,
                          float *dst, size_t ldd, int add)
{
    __m512 s[8][2];
#pragma GCC unroll 8
    for (int r = 0; r < 8; r++) {
        s[r][0] = add ? _mm512_loadu_ps(dst + (size_t)r * ldd) : _mm512_setzero_ps();
        s[r][1] = add ? _mm512_loadu_ps(dst + (size_t)r * ldd + TILE) : _mm512_setzero_ps();
    }
    for (int p = 0; p < pairs; p++) {
        __m512bh x0 = (__m512bh)_mm512_load_si512(b0 + (size_t)p * TILE);
        __m512bh x1 = (__m512bh)_mm512_load_si512(b1 + (size_t)p * TILE);
#pragma GCC unroll 8
        for (int r = 0; r < 8; r++) {
            __m512bh y = (__m512bh)_mm512_set1_epi32((int)a[(size_t)r * w + p]);
            s[r][0] = _mm512_dpbf16_ps(s[r][0], y, x0);
            s[r][1] = _mm512_dpbf16_ps(s[r][1], y, x1);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < 8; r++) {
        _mm512_storeu_ps(dst + (size_t)r * ldd, s[r][0]);
        _mm512_storeu_ps(dst + (size_t)r * ldd + TILE, s[r][1]);
    }
}

static VEC void vec_block(const uint32_t *ap, int w, const uint32_t *b0, const uint32_t *b1, int pairs,
                          float *dst, size_t ldd, int add)
{
    for (int r = 0; r < 2 * TILE; r += 8)
        vec_rows8(ap + (size_t)r * w, w, b0, b1, pairs, dst + (size_t)r * ldd, ldd, add);
}

/* The staging block S (32 x 32) for the block of C at (r0, c0): S = beta C
 * there, zeros past C's edges; then stage_out copies C's part of S back. */
static void stage_in(float *S, const float *C, int ldc, int r0, int c0, int M, int N, float beta)
{
    int rows = M - r0 < 2 * TILE ? M - r0 : 2 * TILE, cols = N - c0 < 2 * TILE ? N - c0 : 2 * TILE;
    memset(S, 0, (size_t)2 * TILE * 2 * TILE * sizeof *S);
    for (int r = 0; beta != 0.0f && r < rows; r++)
        for (int j = 0; j < cols; j++)
            S[r * 2 * TILE + j] = beta * C[(size_t)(r0 + r) * ldc + c0 + j];
}

static void stage_out(float *C, int ldc, const float *S, int r0, int c0, int M, int N)
{
    int rows = M - r0 < 2 * TILE ? M - r0 : 2 * TILE, cols = N - c0 < 2 * TILE ? N - c0 : 2 * TILE;
    for (int r = 0; r < rows; r++)
        memcpy(C + (size_t)(r0 + r) * ldc + c0, S + r * 2 * TILE, (size_t)cols * sizeof *C);
}

/* bf16_gemm for K <= KBLOCK, each block by `block`; the epilogue (NULL:
 * none) on each 32 rows of a panel's columns once they are finished: long
 * rows (what the epilogue reads beside C streams in) still in L2, and the
 * blocks' stores long done (on AMX a load right behind TILESTORED waits for
 * it). */
static VEC void kblock(block_fn block, int ta, int tb, int M, int N, int K, const float *A, int lda,
                       const float *B, int ldb, float beta, float *C, int ldc, void *scratch,
                       bf16_epilogue epilogue, void *ctx)
{
    int kp = padded_k(K), nc = panel_cols(N, K), nk = kp / KC, w = kp / 2, pairs = (K + 1) / 2;
    uint32_t *bp = scratch;
    uint32_t *ap = (uint32_t *)((char *)scratch + ALIGN_UP((size_t)kp * nc * 2, 64));
    float *stage = (float *)((char *)ap + ALIGN_UP((size_t)2 * TILE * kp * 2, 64));
    const size_t tile_pairs = TILE * TILE;
    for (int c0 = 0; c0 < N; c0 += nc) { /* a panel of columns */
        int cols = N - c0 < nc ? N - c0 : nc, np = padded_n(cols);
        pack_b(bp, tb, tb ? B + (size_t)c0 * ldb : B + c0, ldb, cols, K, kp, np);
        for (int r0 = 0; r0 < M; r0 += 2 * TILE) {
            pack_a(ap, ta, A, lda, r0, M, K, kp);
            for (int j = 0; j < np / TILE; j += 2) {
                const uint32_t *b0 = bp + (size_t)j * nk * tile_pairs, *b1 = b0 + (size_t)nk * tile_pairs;
                int col = c0 + j * TILE;
                if (r0 + 2 * TILE <= M && col + 2 * TILE <= N) { /* a whole block: in place */
                    float *c = C + (size_t)r0 * ldc + col;
                    for (int r = 0; beta != 0.0f && beta != 1.0f && r < 2 * TILE; r++)
                        for (int i = 0; i < 2 * TILE; i++)
                            c[(size_t)r * ldc + i] *= beta;
                    block(ap, w, b0, b1, pairs, c, (size_t)ldc, beta != 0.0f);
                } else {
                    stage_in(stage, C, ldc, r0, col, M, N, beta);
                    block(ap, w, b0, b1, pairs, stage, 2 * TILE, 1);
                    stage_out(C, ldc, stage, r0, col, M, N);
                }
            }
            for (int r = r0; epilogue && r < r0 + 2 * TILE && r < M; r++)
                epilogue(ctx, C + (size_t)r * ldc + c0, r, c0, cols);
        }
    }
}

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

__attribute__((target("amx-tile"))) static void amx_configure(void)
{
    tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.rows[t] = TILE;
        cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
}

__attribute__((target("amx-tile"))) static void amx_release(void) { _tile_release(); }

void bf16_gemm(bf16_kernel k, int ta, int tb, int M, int N, int K, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc, void *scratch,
               bf16_epilogue epilogue, void *ctx)
{
    if (M <= 0 || N <= 0)
        return;
    if (K <= 0) { /* an empty sum */
        for (int i = 0; i < M; i++) {
            for (int j = 0; j < N; j++)
                C[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[(size_t)i * ldc + j];
            if (epilogue)
                epilogue(ctx, C + (size_t)i * ldc, i, 0, N);
        }
        return;
    }
    if (k == BF16_AMX)
        amx_configure();
    for (int k0 = 0; k0 < K; k0 += KBLOCK) /* then C holds the sum so far: beta 1 */
        kblock(k == BF16_AMX ? amx_block : vec_block, ta, tb, M, N, K - k0 < KBLOCK ? K - k0 : KBLOCK,
               ta ? A + (size_t)k0 * lda : A + k0, lda, tb ? B + k0 : B + (size_t)k0 * ldb, ldb,
               k0 ? 1.0f : beta, C, ldc, scratch, k0 + KBLOCK >= K ? epilogue : NULL, ctx);
    if (k == BF16_AMX)
        amx_release();
}

#else /* not x86-64 Linux */

int bf16_kernel_usable(bf16_kernel k, char *why, size_t n)
{
    (void)k;
    if (why)
        snprintf(why, n, "the bf16 matmul kernels (AMX, AVX512-BF16) exist on x86-64 Linux only");
    return -1;
}

bf16_kernel bf16_gemm_pick(char *why, size_t n)
{
    bf16_kernel_usable(BF16_AMX, why, n);
    return BF16_NONE;
}

void bf16_gemm(bf16_kernel k, int ta, int tb, int M, int N, int K, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc, void *scratch,
               bf16_epilogue epilogue, void *ctx)
{
    (void)k, (void)ta, (void)tb, (void)M, (void)N, (void)K, (void)A, (void)lda, (void)B, (void)ldb;
    (void)beta, (void)C, (void)ldc, (void)scratch, (void)epilogue, (void)ctx;
}

#endif

const char *bf16_kernel_name(bf16_kernel k)
{
    return k == BF16_AMX ? "AMX-BF16 tiles" : k == BF16_AVX512 ? "AVX512-BF16 vectors" : "none";
}

#endif /* CPU_REAL_DOUBLE */
