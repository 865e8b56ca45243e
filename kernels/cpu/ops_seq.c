/* ops_seq.c: the CPU backend's ops shared by the model families other than
 * GPT-2 (ops.h, "ops shared by the other model families"): embedding lookup,
 * sequence embedding (a first row such as ViT's [CLS], plus positions), the
 * mean of a range of rows ([CLS] or mean pooling), tanh, the regression losses
 * (squared, absolute, Huber) and dropout.
 *
 * Compiled twice like backend_cpu.c: `real` is float, or double with
 * -DCPU_REAL_DOUBLE (the gradient checks' oracle); the install function has
 * one name per build (cpu_ops.h).
 *
 * Determinism, as in backend_cpu.c: every output element is written by one
 * thread in an order fixed at compile time. The sums over rows (dtable,
 * dfirst, dpos) are split by table row or by position, never by the rows
 * being summed, so they do not depend on the thread count either. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math", "fp-contract=fast")
#endif

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <omp.h>

#include "../dropout_mask.h"
#include "cpu_ops.h"

#ifdef CPU_REAL_DOUBLE
typedef double real;
static inline real tanh_r(real x) { return tanh(x); }
#else
typedef float real;
static inline real tanh_r(real x) { return tanhf(x); }
#endif

/* The backend's thread policy, handed over by the install function (the same
 * function for every backend of this build, so one copy serves them all). */
static cpu_team_fn seq_team;

static int team(const backend *be, double work) { return seq_team(be, work); }

/* ---- embedding ----------------------------------------------------------- */

/* A negative id is "no row": it reads zeros (and adds nothing when
 * accumulating); ids must otherwise lie inside the table. */
static void cpu_embedding_forward(backend *be, void *out_, const int32_t *ids, const void *table_,
                                  int N, int C, int accumulate)
{
    real *out = out_;
    const real *table = table_;
#pragma omp parallel for schedule(static) num_threads(team(be, (double)N * C))
    for (int n = 0; n < N; n++) {
        real *o = out + (size_t)n * C;
        if (ids[n] < 0) {
            if (!accumulate)
                memset(o, 0, (size_t)C * sizeof(real));
            continue;
        }
        const real *e = table + (size_t)ids[n] * C;
        if (accumulate) {
#pragma omp simd
            for (int c = 0; c < C; c++)
                o[c] += e[c];
        } else {
            memcpy(o, e, (size_t)C * sizeof(real));
        }
    }
}

/* Table rows are owned by thread (id mod threads); each owner walks all n in
 * order, so a row's sum has one fixed order whatever the thread count, and no
 * two threads write one row. */
static void cpu_embedding_backward(backend *be, void *dtable_, const void *dout_, const int32_t *ids,
                                   int N, int C)
{
    real *dtable = dtable_;
    const real *dout = dout_;
#pragma omp parallel num_threads(team(be, (double)N * C))
    {
        unsigned me = (unsigned)omp_get_thread_num(), all = (unsigned)omp_get_num_threads();
        for (int n = 0; n < N; n++) {
            if (ids[n] < 0 || (unsigned)ids[n] % all != me)
                continue;
            real *d = dtable + (size_t)ids[n] * C;
            const real *g = dout + (size_t)n * C;
#pragma omp simd
            for (int c = 0; c < C; c++)
                d[c] += g[c];
        }
    }
}

/* ---- sequence embedding -------------------------------------------------- */

static void cpu_sequence_embed_forward(backend *be, void *out_, const void *x_, const void *first_,
                                       const void *pos_, int B, int T, int C)
{
    real *out = out_;
    const real *x = x_, *first = first_, *pos = pos_;
    int k = first ? 1 : 0;
    long BT = (long)B * T;
#pragma omp parallel for schedule(static) num_threads(team(be, (double)BT * C))
    for (long bt = 0; bt < BT; bt++) {
        long b = bt / T;
        int t = (int)(bt % T);
        const real *src = t >= k ? x + ((size_t)b * (T - k) + (t - k)) * C : first;
        const real *p = pos + (size_t)t * C;
        real *o = out + (size_t)bt * C;
#pragma omp simd
        for (int c = 0; c < C; c++)
            o[c] = src[c] + p[c];
    }
}

/* k, the rows of out that do not come from x, is 1 exactly when dfirst is
 * given: the backward has no other way to know whether the forward had a
 * first row, so a caller whose forward had one passes dfirst (ops.h).
 * dx by (b, t), each row once; dpos and dfirst by position, each summing
 * over b in order (dfirst goes with position 0, the only one it sees). */
static void cpu_sequence_embed_backward(backend *be, void *dx_, void *dfirst_, void *dpos_,
                                        const void *dout_, int B, int T, int C)
{
    real *dx = dx_, *dfirst = dfirst_, *dpos = dpos_;
    const real *dout = dout_;
    int k = dfirst ? 1 : 0;
    long BT = (long)B * T;
    if (dx) {
#pragma omp parallel for schedule(static) num_threads(team(be, (double)BT * C))
        for (long bt = 0; bt < BT; bt++) {
            long b = bt / T;
            int t = (int)(bt % T);
            if (t < k)
                continue;
            real *d = dx + ((size_t)b * (T - k) + (t - k)) * C;
            const real *g = dout + (size_t)bt * C;
#pragma omp simd
            for (int c = 0; c < C; c++)
                d[c] += g[c];
        }
    }
#pragma omp parallel for schedule(static) num_threads(team(be, (double)BT * C))
    for (int t = 0; t < T; t++) {
        real *targets[2] = { dpos ? dpos + (size_t)t * C : NULL, t == 0 ? dfirst : NULL };
        for (int j = 0; j < 2; j++) {
            real *d = targets[j];
            if (!d)
                continue;
            for (int b = 0; b < B; b++) {
                const real *g = dout + ((size_t)b * T + t) * C;
#pragma omp simd
                for (int c = 0; c < C; c++)
                    d[c] += g[c];
            }
        }
    }
}

/* ---- row mean ----------------------------------------------------------- */

/* The first row starts the sum and 1/n scales it, so n = 1 copies x exactly
 * (-0.0 included); the rows are added in order, one output row per thread. */
static void cpu_rows_mean_forward(backend *be, void *out_, const void *x_, int B, int T, int C,
                                  int t, int n)
{
    real *out = out_;
    const real *x = x_;
    const real inv = (real)1 / (real)n;
#pragma omp parallel for schedule(static) num_threads(team(be, (double)B * n * C))
    for (int b = 0; b < B; b++) {
        real *o = out + (size_t)b * C;
        const real *xb = x + ((size_t)b * T + t) * C;
        memcpy(o, xb, (size_t)C * sizeof(real));
        for (int i = 1; i < n; i++) {
            const real *r = xb + (size_t)i * C;
#pragma omp simd
            for (int c = 0; c < C; c++)
                o[c] += r[c];
        }
#pragma omp simd
        for (int c = 0; c < C; c++)
            o[c] *= inv;
    }
}

static void cpu_rows_mean_backward(backend *be, void *dx_, const void *dout_, int B, int T, int C,
                                   int t, int n)
{
    real *dx = dx_;
    const real *dout = dout_;
    const real inv = (real)1 / (real)n;
#pragma omp parallel for schedule(static) num_threads(team(be, (double)B * n * C))
    for (int b = 0; b < B; b++) {
        const real *g = dout + (size_t)b * C;
        for (int i = 0; i < n; i++) {
            real *d = dx + ((size_t)b * T + t + i) * C;
#pragma omp simd
            for (int c = 0; c < C; c++)
                d[c] += g[c] * inv;
        }
    }
}

/* ---- tanh ---------------------------------------------------------------- */

static void cpu_tanh_forward(backend *be, void *out_, const void *inp_, size_t N)
{
    real *y = out_;
    const real *x = inp_;
#pragma omp parallel for schedule(static) num_threads(team(be, (double)N))
    for (size_t i = 0; i < N; i++)
        y[i] = tanh_r(x[i]);
}

/* From the output: tanh' = 1 - y^2, so the input need not be kept. */
static void cpu_tanh_backward(backend *be, void *dinp_, const void *out_, const void *dout_, size_t N)
{
    real *dx = dinp_;
    const real *y = out_, *dy = dout_;
#pragma omp parallel for simd schedule(static) num_threads(team(be, (double)N))
    for (size_t i = 0; i < N; i++)
        dx[i] += dy[i] * (1 - y[i] * y[i]);
}

/* ---- regression loss ----------------------------------------------------- */

/* Rows are split among threads; each row's sum is one thread's, in column
 * order. Each element of pred is read before its own dpred slot is written,
 * by the same thread, so dpred may alias pred (no restrict here on purpose).
 * One loop per kind, so that each stays a plain loop the compiler can fuse
 * (MSE's is the squared-error op this one grew from, to the last bit). */
static void cpu_regression_loss(backend *be, void *losses_, void *dpred_, const void *pred_,
                                const void *target_, const void *unit_, int N, int C, int kind,
                                float delta, float scale_)
{
    real *losses = losses_, *dpred = dpred_;
    const real *pred = pred_, *target = target_, *unit = unit_;
    real f = (kind == LOSS_MSE ? 2 : 1) * (real)scale_;
#pragma omp parallel for schedule(static) num_threads(team(be, (double)N * C))
    for (int n = 0; n < N; n++) {
        const real *p = pred + (size_t)n * C, *y = target + (size_t)n * C;
        real *d = dpred ? dpred + (size_t)n * C : NULL;
        /* MAE and Huber in the row's units: |u| = |e| * unit, delta / unit */
        real inv = unit ? 1 / unit[n] : 1, dl = (real)delta * inv;
        real s = 0;
        if (kind == LOSS_MAE) {
            for (int c = 0; c < C; c++) {
                real e = p[c] - y[c];
                real sg = e > 0 ? 1 : e < 0 ? -1 : 0; /* sign(0) = 0 */
                s += sg * e * inv;
                if (d)
                    d[c] = f * sg * inv;
            }
        } else if (kind == LOSS_HUBER) {
            for (int c = 0; c < C; c++) {
                real e = p[c] - y[c], a = e < 0 ? -e : e;
                s += a < dl ? e * e / 2 : dl * (a - dl / 2);
                if (d)
                    d[c] = f * (e < -dl ? -dl : e > dl ? dl : e);
            }
        } else {
            for (int c = 0; c < C; c++) {
                real e = p[c] - y[c];
                s += e * e;
                if (d)
                    d[c] = f * e;
            }
        }
        losses[n] = s;
    }
}

/* ---- dropout ------------------------------------------------------------- */

/* Element i's mask depends on (seed, i) only, so the split over threads
 * changes nothing. out may alias inp: each element is read, then written.
 * Also the backward (ops.h), applied to the gradient. */
static void cpu_dropout_forward(backend *be, void *out_, const void *inp_, size_t N, float p,
                                uint64_t seed)
{
    real *y = out_;
    const real *x = inp_;
    uint32_t th = dropout_threshold(p);
    real scale = 1 / (1 - (real)p);
#pragma omp parallel for schedule(static) num_threads(team(be, (double)N))
    for (size_t i = 0; i < N; i++)
        y[i] = dropout_keep(seed, i, th) ? x[i] * scale : 0;
}

/* ---- install ------------------------------------------------------------- */

void CPU_SEQ_INSTALL(backend *be, cpu_team_fn team_fn)
{
    seq_team = team_fn;
    be->embedding_forward = cpu_embedding_forward;
    be->embedding_backward = cpu_embedding_backward;
    be->sequence_embed_forward = cpu_sequence_embed_forward;
    be->sequence_embed_backward = cpu_sequence_embed_backward;
    be->rows_mean_forward = cpu_rows_mean_forward;
    be->rows_mean_backward = cpu_rows_mean_backward;
    be->tanh_forward = cpu_tanh_forward;
    be->tanh_backward = cpu_tanh_backward;
    be->dropout_forward = cpu_dropout_forward;
    be->regression_loss = cpu_regression_loss;
}
