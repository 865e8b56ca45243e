/* ops_decode.c: attention for one new position over a key/value cache
 * (kernels/ops.h, attention_decode), for incremental sampling. Compiled
 * twice like every file here (fp32, fp64 with -DCPU_REAL_DOUBLE). One query
 * per sequence: groups of sequences run in parallel, each sequence's
 * arithmetic in one thread and in one order, so the result does not depend
 * on the thread count, on the grouping or on where a cached row lies. */
#include <math.h>

#include "../ops.h"

#ifdef CPU_REAL_DOUBLE
typedef double real;
#define EXP exp
#define CPU_DECODE_INSTALL cpu_decode_install_f64
#else
typedef float real;
#define EXP expf /* the double exp was a sixth of a batched decode's time */
#define CPU_DECODE_INSTALL cpu_decode_install_f32
#endif

void CPU_DECODE_INSTALL(backend *be);

#define DECODE_LANES 16 /* sequences of one prefix row that read its rows together */

/* One cached position j of the online softmax below: its k and v rows (every
 * head's) folded into the running max, sum and output of each head. */
static inline void decode_row(const real *q, const real *k, real *o, real *mx, real *sum,
                              real scale, int C, int NH)
{
    int hs = C / NH;
    const real *v = k + C;
    for (int h = 0; h < NH; h++) {
        const real *qh = q + h * hs, *kh = k + h * hs, *vh = v + h * hs;
        real *oh = o + h * hs, d = 0;
        for (int i = 0; i < hs; i++)
            d += qh[i] * kh[i];
        d *= scale;
        if (d > mx[h]) {
            real r = EXP(mx[h] - d);
            sum[h] *= r;
            for (int i = 0; i < hs; i++)
                oh[i] *= r;
            mx[h] = d;
        }
        real p = EXP(d - mx[h]);
        sum[h] += p;
        for (int i = 0; i < hs; i++)
            oh[i] += p * vh[i];
    }
}

/* The prefix's rows for w <= DECODE_LANES sequences of one prefix row: each
 * row's k and v are read once for all of them, and their scores computed
 * lane-wise (a SIMD lane per sequence: each lane's sum the one decode_row
 * forms, term by term in the same order), then each sequence's softmax
 * update as decode_row's. q, o: each sequence's query and running output
 * [C]; mx, sum: their running maxima and sums [w][NH]. Only the scores run
 * lane-wise: the exponentials are libm's scalar ones, as decode_row's. */
static void decode_prefix_lanes(const real *const *q, const real *pre, int plen, real *const *o,
                                real *mx, real *sum, int w, real scale, int C, int NH)
{
    int hs = C / NH;
    real qt[(size_t)C * DECODE_LANES]; /* [C][lane]: the queries transposed */
    for (int i = 0; i < C; i++)
        for (int t = 0; t < DECODE_LANES; t++)
            qt[(size_t)i * DECODE_LANES + t] = t < w ? q[t][i] : 0;
    for (int j = 0; j < plen; j++) {
        const real *k = pre + (size_t)j * 2 * C, *v = k + C;
        for (int h = 0; h < NH; h++) {
            const real *kh = k + h * hs, *vh = v + h * hs, *qh = qt + (size_t)h * hs * DECODE_LANES;
            real dd[DECODE_LANES];
            for (int t = 0; t < DECODE_LANES; t++)
                dd[t] = 0;
            for (int i = 0; i < hs; i++) {
                const real *qi = qh + (size_t)i * DECODE_LANES, ki = kh[i];
#pragma omp simd
                for (int t = 0; t < DECODE_LANES; t++)
                    dd[t] += qi[t] * ki;
            }
            for (int t = 0; t < w; t++) {
                real *oh = o[t] + h * hs, *m = mx + t * NH + h, *sm = sum + t * NH + h;
                real d = dd[t] * scale;
                if (d > *m) {
                    real r = EXP(*m - d);
                    *sm *= r;
                    for (int i = 0; i < hs; i++)
                        oh[i] *= r;
                    *m = d;
                }
                real p = EXP(d - *m);
                *sm += p;
                for (int i = 0; i < hs; i++)
                    oh[i] += p * vh[i];
            }
        }
    }
}

/* One pass per sequence with an online softmax per head (running max, sum
 * and output, rescaled when the max grows): no buffer of scores, so nothing
 * allocates. The heads run inside the loop over positions, so that each
 * cached row (every head's k and v) is read once, in order: the prefix's
 * rows, then the sequence's own; the same arithmetic, in the same order,
 * wherever a position's row lies. The work comes in units of up to
 * DECODE_LANES sequences of one prefix row (b = r, r + rows, r + 2 rows,
 * ...), which go through the prefix's rows together (decode_prefix_lanes),
 * then through their own rows position by position, a sequence after the
 * other (independent sums side by side, several rows in flight); units of
 * one row follow each other. Without a prefix a unit is one sequence. */
static void cpu_attention_decode(backend *be, void *out, void *kv, const void *qkv, int B,
                                 int pos, int maxlen, const void *prefix, int prefix_rows,
                                 int prefix_len, int C, int NH)
{
    int hs = C / NH, n = pos + 1, own = pos + 1 - prefix_len;
    int P = prefix_len ? prefix_rows : B, per = (B + P - 1) / P;
    int chunks = prefix_len ? (per + DECODE_LANES - 1) / DECODE_LANES : 1;
    real scale = (real)(1.0 / sqrt((double)hs));
    (void)be;
#pragma omp parallel for schedule(static) if ((double)B * n * C > 65536.0)
    for (int u = 0; u < P * chunks; u++) {
        int r = u / chunks, c = u % chunks, w = 0, b[DECODE_LANES];
        const real *q[DECODE_LANES];
        real *x[DECODE_LANES], *o[DECODE_LANES], mx[DECODE_LANES * NH], sum[DECODE_LANES * NH];
        for (int k = c * DECODE_LANES; k < (c + 1) * DECODE_LANES && r + k * P < B; k++)
            b[w++] = r + k * P;
        for (int t = 0; t < w; t++) {
            q[t] = (const real *)qkv + (size_t)b[t] * 3 * C;
            x[t] = (real *)kv + (size_t)b[t] * maxlen * 2 * C; /* this sequence's own rows */
            o[t] = (real *)out + (size_t)b[t] * C;
            for (int i = 0; i < 2 * C; i++)
                x[t][(size_t)(own - 1) * 2 * C + i] = q[t][C + i];
            for (int h = 0; h < NH; h++)
                mx[t * NH + h] = -INFINITY, sum[t * NH + h] = 0;
            for (int i = 0; i < C; i++)
                o[t][i] = 0;
        }
        if (prefix_len && w)
            decode_prefix_lanes(q, (const real *)prefix + (size_t)r * prefix_len * 2 * C,
                                prefix_len, o, mx, sum, w, scale, C, NH);
        for (int j = 0; j < own; j++)
            for (int t = 0; t < w; t++)
                decode_row(q[t], x[t] + (size_t)j * 2 * C, o[t], mx + t * NH, sum + t * NH, scale,
                           C, NH);
        for (int t = 0; t < w; t++) {
            for (int h = 0; h < NH; h++)
                for (int i = 0; i < hs; i++)
                    o[t][h * hs + i] /= sum[t * NH + h];
        }
    }
}

void CPU_DECODE_INSTALL(backend *be)
{
    be->attention_decode = cpu_attention_decode;
}
