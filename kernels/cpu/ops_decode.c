/* ops_decode.c: attention for one new position over a key/value cache
 * (kernels/ops.h, attention_decode), for incremental sampling. Compiled
 * twice like every file here (fp32, fp64 with -DCPU_REAL_DOUBLE). One query
 * per sequence: the (sequence, head) pairs run in parallel, each in one
 * thread, so the result does not depend on the thread count. */
#include <math.h>

#include "../ops.h"

#ifdef CPU_REAL_DOUBLE
typedef double real;
#define CPU_DECODE_INSTALL cpu_decode_install_f64
#else
typedef float real;
#define CPU_DECODE_INSTALL cpu_decode_install_f32
#endif

void CPU_DECODE_INSTALL(backend *be);

/* One pass per head with an online softmax (running max, sum and output,
 * rescaled when the max grows): no buffer of scores, so nothing allocates. */
static void cpu_attention_decode(backend *be, void *out, const void *qkv, int B, int ld,
                                 int pos, int C, int NH)
{
    int hs = C / NH, n = pos + 1;
    real scale = (real)(1.0 / sqrt((double)hs));
    (void)be;
#pragma omp parallel for schedule(static) if ((double)B * n * C > 65536.0)
    for (int bh = 0; bh < B * NH; bh++) {
        int b = bh / NH, h = bh % NH;
        const real *x = (const real *)qkv + (size_t)b * 3 * C; /* position j: x + j*ld*3C */
        const real *q = x + (size_t)pos * ld * 3 * C + h * hs;
        real *oh = (real *)out + (size_t)b * C + h * hs, mx = -INFINITY, sum = 0;
        for (int i = 0; i < hs; i++)
            oh[i] = 0;
        for (int j = 0; j < n; j++) {
            const real *k = x + (size_t)j * ld * 3 * C + C + h * hs;
            const real *v = k + C;
            real d = 0;
            for (int i = 0; i < hs; i++)
                d += q[i] * k[i];
            d *= scale;
            if (d > mx) {
                real r = (real)exp((double)(mx - d));
                sum *= r;
                for (int i = 0; i < hs; i++)
                    oh[i] *= r;
                mx = d;
            }
            real p = (real)exp((double)(d - mx));
            sum += p;
            for (int i = 0; i < hs; i++)
                oh[i] += p * v[i];
        }
        for (int i = 0; i < hs; i++)
            oh[i] /= sum;
    }
}

void CPU_DECODE_INSTALL(backend *be)
{
    be->attention_decode = cpu_attention_decode;
}
