/* ops_decode.c: attention for one new position over a key/value cache
 * (kernels/ops.h, attention_decode), for incremental sampling. Compiled
 * twice like every file here (fp32, fp64 with -DCPU_REAL_DOUBLE). One query
 * per sequence: the sequences run in parallel, each in one thread, so the
 * result does not depend on the thread count or on the order they run in. */
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

/* The t-th sequence of B in the order the work runs: the sequences of prefix
 * row 0 (b = 0, rows, 2 rows, ...), then those of row 1, and so on, so that
 * the sequences reading one prefix follow each other (on one thread, its
 * rows stay in cache). Rows r < B % rows have one sequence more than the
 * others. kernels/cuda/decode.cu orders its blocks the same way. */
static int decode_order(int t, int B, int rows)
{
    int q = B / rows, m = B % rows, r, k;
    if (t < m * (q + 1)) {
        r = t / (q + 1), k = t % (q + 1);
    } else {
        t -= m * (q + 1);
        r = m + t / q, k = t % q;
    }
    return r + k * rows;
}

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

/* One pass per sequence with an online softmax per head (running max, sum
 * and output, rescaled when the max grows): no buffer of scores, so nothing
 * allocates. The heads run inside the loop over positions, so that each
 * cached row (every head's k and v) is read once, in order: the prefix's
 * rows, then the sequence's own; the same arithmetic, in the same order,
 * wherever a position's row lies. */
static void cpu_attention_decode(backend *be, void *out, void *kv, const void *qkv, int B,
                                 int pos, int maxlen, const void *prefix, int prefix_rows,
                                 int prefix_len, int C, int NH)
{
    int hs = C / NH, n = pos + 1, own = pos + 1 - prefix_len;
    real scale = (real)(1.0 / sqrt((double)hs));
    (void)be;
#pragma omp parallel for schedule(static) if ((double)B * n * C > 65536.0)
    for (int t = 0; t < B; t++) {
        int b = prefix_len ? decode_order(t, B, prefix_rows) : t;
        const real *q = (const real *)qkv + (size_t)b * 3 * C;
        real *x = (real *)kv + (size_t)b * maxlen * 2 * C; /* this sequence's own rows */
        real *o = (real *)out + (size_t)b * C, mx[NH], sum[NH];
        for (int i = 0; i < 2 * C; i++)
            x[(size_t)(own - 1) * 2 * C + i] = q[C + i];
        for (int h = 0; h < NH; h++)
            mx[h] = -INFINITY, sum[h] = 0;
        for (int i = 0; i < C; i++)
            o[i] = 0;
        if (prefix_len) {
            const real *pre = (const real *)prefix + (size_t)(b % prefix_rows) * prefix_len * 2 * C;
            for (int j = 0; j < prefix_len; j++)
                decode_row(q, pre + (size_t)j * 2 * C, o, mx, sum, scale, C, NH);
        }
        for (int j = 0; j < own; j++)
            decode_row(q, x + (size_t)j * 2 * C, o, mx, sum, scale, C, NH);
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < hs; i++)
                o[h * hs + i] /= sum[h];
    }
}

void CPU_DECODE_INSTALL(backend *be)
{
    be->attention_decode = cpu_attention_decode;
}
