/* ops_decode.c: attention for one new position over a key/value cache
 * (kernels/ops.h, attention_decode), for incremental sampling. Compiled
 * twice like every file here (fp32, fp64 with -DCPU_REAL_DOUBLE). One query
 * per sequence: the sequences run in parallel, each in one thread, so the
 * result does not depend on the thread count. */
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

/* One pass per sequence with an online softmax per head (running max, sum
 * and output, rescaled when the max grows): no buffer of scores, so nothing
 * allocates. The heads run inside the loop over positions, so that each
 * cached row (every head's k and v) is read once, in order. */
static void cpu_attention_decode(backend *be, void *out, void *kv, const void *qkv, int B,
                                 int pos, int maxlen, int C, int NH)
{
    int hs = C / NH, n = pos + 1;
    real scale = (real)(1.0 / sqrt((double)hs));
    (void)be;
#pragma omp parallel for schedule(static) if ((double)B * n * C > 65536.0)
    for (int b = 0; b < B; b++) {
        const real *q = (const real *)qkv + (size_t)b * 3 * C;
        real *x = (real *)kv + (size_t)b * maxlen * 2 * C; /* this sequence's cache */
        real *o = (real *)out + (size_t)b * C, mx[NH], sum[NH];
        for (int i = 0; i < 2 * C; i++)
            x[(size_t)pos * 2 * C + i] = q[C + i];
        for (int h = 0; h < NH; h++)
            mx[h] = -INFINITY, sum[h] = 0;
        for (int i = 0; i < C; i++)
            o[i] = 0;
        for (int j = 0; j < n; j++) {
            const real *k = x + (size_t)j * 2 * C, *v = k + C;
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
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < hs; i++)
                o[h * hs + i] /= sum[h];
    }
}

void CPU_DECODE_INSTALL(backend *be)
{
    be->attention_decode = cpu_attention_decode;
}
