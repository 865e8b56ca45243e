/* ops_norm.c: the CPU backend's batch normalisation (ops.h batchnorm_forward,
 * residual_batchnorm_forward, batchnorm_backward): statistics per column over
 * the rows of the batch, as torch.nn.BatchNorm1d.
 *
 * Compiled twice like backend_cpu.c: `real` is float, or double with
 * -DCPU_REAL_DOUBLE (the gradient checks' oracle); the install function has
 * one name per build (cpu_ops.h).
 *
 * Determinism: the work is split across threads by blocks of columns, each
 * column's sums over rows taken in row order by one thread, in double, so the
 * results depend neither on the run nor on the thread count. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math", "fp-contract=fast")
#endif

#include <math.h>
#include <stddef.h>

#include <omp.h>

#include "cpu_ops.h"

#ifdef CPU_REAL_DOUBLE
typedef double real;
#else
typedef float real;
#endif

#define BN_EPS 1e-5
#define BN_COLS 64 /* columns per task */

static cpu_team_fn norm_team;

static int team(const backend *be, double work) { return norm_team(be, work); }

/* Mean and biased variance of columns [c0, c0 + n) over N rows (two passes:
 * no cancellation). */
static void column_stats(const real *x, int N, int C, int c0, int n, double *m, double *v)
{
    for (int c = 0; c < n; c++)
        m[c] = v[c] = 0;
    for (int i = 0; i < N; i++) {
        const real *r = x + (size_t)i * C + c0;
        for (int c = 0; c < n; c++)
            m[c] += r[c];
    }
    for (int c = 0; c < n; c++)
        m[c] /= N;
    for (int i = 0; i < N; i++) {
        const real *r = x + (size_t)i * C + c0;
        for (int c = 0; c < n; c++) {
            double d = r[c] - m[c];
            v[c] += d * d;
        }
    }
    for (int c = 0; c < n; c++)
        v[c] /= N;
}

static void cpu_batchnorm_forward(backend *be, void *out_, void *mean_, void *rstd_,
                                  void *running_mean_, void *running_var_, const void *inp_,
                                  const void *weight_, const void *bias_, float momentum,
                                  int train, int N, int C)
{
    real *out = out_, *mean = mean_, *rstd = rstd_, *rm = running_mean_, *rv = running_var_;
    const real *inp = inp_, *w = weight_, *b = bias_;
    int nblocks = (C + BN_COLS - 1) / BN_COLS;
#pragma omp parallel for schedule(static) num_threads(team(be, (double)N * C))
    for (int k = 0; k < nblocks; k++) {
        int c0 = k * BN_COLS, n = C - c0 < BN_COLS ? C - c0 : BN_COLS;
        double m[BN_COLS], v[BN_COLS];
        real mu[BN_COLS], s[BN_COLS];
        if (train) {
            column_stats(inp, N, C, c0, n, m, v);
            for (int c = 0; c < n; c++) {
                double unbiased = N > 1 ? v[c] * N / (N - 1) : v[c];
                rm[c0 + c] = (real)((1.0 - momentum) * rm[c0 + c] + (double)momentum * m[c]);
                rv[c0 + c] = (real)((1.0 - momentum) * rv[c0 + c] + (double)momentum * unbiased);
            }
        } else {
            for (int c = 0; c < n; c++) {
                m[c] = rm[c0 + c];
                v[c] = rv[c0 + c];
            }
        }
        for (int c = 0; c < n; c++) {
            mu[c] = (real)m[c];
            s[c] = (real)(1.0 / sqrt(v[c] + BN_EPS));
            if (mean)
                mean[c0 + c] = mu[c];
            if (rstd)
                rstd[c0 + c] = s[c];
        }
        for (int i = 0; i < N; i++) {
            const real *x = inp + (size_t)i * C + c0;
            real *y = out + (size_t)i * C + c0;
            for (int c = 0; c < n; c++)
                y[c] = (x[c] - mu[c]) * s[c] * w[c0 + c] + (b ? b[c0 + c] : 0);
        }
    }
}

/* The fused op of ops.h as its definition: the residual add, then batchnorm
 * of the sum. */
static void cpu_residual_batchnorm_forward(backend *be, void *res_out_, void *out, void *mean,
                                           void *rstd, void *running_mean, void *running_var,
                                           const void *a_, const void *b_, const void *weight,
                                           const void *bias, float momentum, int train, int N,
                                           int C)
{
    real *r = res_out_;
    const real *a = a_, *b = b_;
    size_t n = (size_t)N * C;
#pragma omp parallel for simd schedule(static) num_threads(team(be, (double)n))
    for (size_t i = 0; i < n; i++)
        r[i] = a[i] + b[i];
    cpu_batchnorm_forward(be, out, mean, rstd, running_mean, running_var, r, weight, bias,
                          momentum, train, N, C);
}

static void cpu_batchnorm_backward(backend *be, void *dinp_, void *dweight_, void *dbias_,
                                   const void *dout_, const void *inp_, const void *weight_,
                                   const void *mean_, const void *rstd_, int train, int N,
                                   int C)
{
    real *dinp = dinp_, *dw = dweight_, *db = dbias_;
    const real *dout = dout_, *inp = inp_, *w = weight_, *mean = mean_, *rstd = rstd_;
    int nblocks = (C + BN_COLS - 1) / BN_COLS;
#pragma omp parallel for schedule(static) num_threads(team(be, (double)N * C))
    for (int k = 0; k < nblocks; k++) {
        int c0 = k * BN_COLS, n = C - c0 < BN_COLS ? C - c0 : BN_COLS;
        double sdy[BN_COLS] = { 0 }, sdyx[BN_COLS] = { 0 };
        for (int i = 0; i < N; i++) {
            const real *dy = dout + (size_t)i * C + c0, *x = inp + (size_t)i * C + c0;
            for (int c = 0; c < n; c++) {
                sdy[c] += dy[c];
                sdyx[c] += dy[c] * ((x[c] - mean[c0 + c]) * rstd[c0 + c]);
            }
        }
        for (int c = 0; c < n; c++) {
            if (dw)
                dw[c0 + c] += (real)sdyx[c];
            if (db)
                db[c0 + c] += (real)sdy[c];
        }
        if (!dinp)
            continue;
        real a[BN_COLS], g[BN_COLS], f[BN_COLS];
        for (int c = 0; c < n; c++) {
            a[c] = train ? (real)(sdy[c] / N) : 0; /* constants: no path through them */
            g[c] = train ? (real)(sdyx[c] / N) : 0;
            f[c] = rstd[c0 + c] * w[c0 + c];
        }
        for (int i = 0; i < N; i++) {
            const real *dy = dout + (size_t)i * C + c0, *x = inp + (size_t)i * C + c0;
            real *dx = dinp + (size_t)i * C + c0;
            for (int c = 0; c < n; c++)
                dx[c] += f[c] * (dy[c] - a[c] - (x[c] - mean[c0 + c]) * rstd[c0 + c] * g[c]);
        }
    }
}

void CPU_NORM_INSTALL(backend *be, cpu_team_fn team_fn)
{
    norm_team = team_fn;
    be->batchnorm_forward = cpu_batchnorm_forward;
    be->residual_batchnorm_forward = cpu_residual_batchnorm_forward;
    be->batchnorm_backward = cpu_batchnorm_backward;
}
