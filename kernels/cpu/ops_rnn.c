/* ops_rnn.c: the CPU backend's recurrent op (ops.h, "recurrent ops"): one
 * Elman (tanh) or LSTM layer run over T steps, forward and back-propagation
 * through time, with PyTorch's weight layout.
 *
 * The input projection of every step is one gemm (x @ W_ih^T for all B*T
 * rows) before the loop; each step then adds h'_{t-1} @ W_hh^T for its B
 * rows and applies the cell. Backward walks the steps in reverse computing
 * the gate gradients, and only the recurrent part (da_t @ W_hh, B rows) stays
 * inside the loop: dx, dW_ih, dW_hh and the biases are gemms and column sums
 * over all B*T rows afterwards, since the state each step read (h'_{t-1}) is
 * kept from forward.
 *
 * work (rnn_work_bytes), in reals, batch first:
 *   gates  [B,T,G*H]  LSTM only: i, f, g, o after their nonlinearities
 *   cell   [B,T,H]    LSTM only: c_t
 *   hprev  [B,T,H]    the state each step read, h'_{t-1} (zero after a reset)
 *   dgates [B,T,G*H]  backward: gradients of the pre-activations
 *   carry  3 x [B,H]  backward: dh and dc flowing to the previous step, dh scratch
 *
 * Compiled twice like backend_cpu.c (fp32, and fp64 with -DCPU_REAL_DOUBLE
 * for the gradient checks); the install function has one name per build. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math", "fp-contract=fast")
#endif

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../blas.h"
#include <omp.h>

#include "cpu_ops.h"

#ifdef CPU_REAL_DOUBLE
typedef double real;
#define GEMM cblas_dgemm
#define RNN_INSTALL cpu_rnn_install_f64
static inline real tanh_r(real x) { return tanh(x); }
static inline real sigm_r(real x) { return 1 / (1 + exp(-x)); }
#else
typedef float real;
#define GEMM cblas_sgemm
#define RNN_INSTALL cpu_rnn_install_f32
static inline real tanh_r(real x) { return tanhf(x); }
static inline real sigm_r(real x) { return 1 / (1 + expf(-x)); }
#endif

void RNN_INSTALL(backend *be, cpu_team_fn team_fn);
/* backend_cpu.c's one call: the install of the build whose real type is dt
 * (defined in the fp32 object only; both objects are always linked). */
void cpu_rnn_install(backend *be, cpu_team_fn team_fn, dtype dt);

static cpu_team_fn rnn_team;

static int team(const backend *be, double work) { return rnn_team(be, work); }

/* The steps run one after another, each a parallel region or two: waking a
 * team T times per layer costs more than small steps take (far more on a
 * busy machine), so a step goes parallel only when it is big. */
#define STEP_MIN 65536.0

static int step_team(const backend *be, double work)
{
    return work < STEP_MIN ? 1 : team(be, work);
}

static int gates_of(int cell) { return cell == RNN_CELL_LSTM ? 4 : 1; }

/* Offsets (in reals) of the work regions for a shape. */
typedef struct {
    size_t gates, cell, hprev, dgates, carry, total;
} rnn_layout;

static rnn_layout layout_of(int cell, int B, int T, int H)
{
    size_t BT = (size_t)B * T, GH = (size_t)gates_of(cell) * H, lstm = cell == RNN_CELL_LSTM;
    rnn_layout l;
    l.gates = 0;
    l.cell = l.gates + (lstm ? BT * GH : 0);
    l.hprev = l.cell + (lstm ? BT * H : 0);
    l.dgates = l.hprev + BT * H;
    l.carry = l.dgates + BT * GH;
    l.total = l.carry + 3 * (size_t)B * H;
    return l;
}

static size_t cpu_rnn_work_bytes(backend *be, int cell, int B, int T, int D, int H)
{
    (void)be;
    (void)D;
    return layout_of(cell, B, T, H).total * sizeof(real);
}

/* C[M,N] = A[M,K] op B + beta C, row-major, split over threads by rows of C
 * (or by columns when there are fewer rows than columns). Each part is one
 * BLAS call on a disjoint block of C. */
static void gemm(const backend *be, int step, int ta, int tb, int M, int N, int K, const real *A,
                 int lda, const real *Bm, int ldb, real beta, real *Cm, int ldc)
{
    if (M <= 0 || N <= 0 || K <= 0)
        return;
    int by_rows = M >= N, dim = by_rows ? M : N;
    double work = (double)M * N * K / 64;
    int parts = step ? step_team(be, work) : team(be, work);
    if (parts > dim / 16)
        parts = dim / 16 > 0 ? dim / 16 : 1;
#pragma omp parallel for schedule(static) num_threads(parts)
    for (int p = 0; p < parts; p++) {
        int lo = (int)((long)dim * p / parts), hi = (int)((long)dim * (p + 1) / parts);
        if (hi <= lo)
            continue;
        const real *a = A, *b = Bm;
        real *c;
        if (by_rows) {
            a = ta ? A + lo : A + (size_t)lo * lda;
            c = Cm + (size_t)lo * ldc;
        } else {
            b = tb ? Bm + (size_t)lo * ldb : Bm + lo;
            c = Cm + lo;
        }
        GEMM(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
             by_rows ? hi - lo : M, by_rows ? N : hi - lo, K, 1, a, lda, b, ldb, beta, c, ldc);
    }
}

static int is_reset(const int32_t *reset, int T, int b, int t)
{
    return reset && reset[(size_t)b * T + t] != 0;
}

/* ---- forward ------------------------------------------------------------- */

static void cpu_rnn_forward(backend *be, int cell, void *y_, void *hT_, void *cT_, void *work_,
                            const void *x_, const void *h0_, const void *c0_, const int32_t *reset,
                            const void *w_ih_, const void *w_hh_, const void *b_ih_,
                            const void *b_hh_, int B, int T, int D, int H)
{
    real *y = y_, *hT = hT_, *cT = cT_, *work = work_;
    const real *x = x_, *h0 = h0_, *c0 = c0_, *w_ih = w_ih_, *w_hh = w_hh_;
    const real *b_ih = b_ih_, *b_hh = b_hh_;
    int G = gates_of(cell), GH = G * H, lstm = cell == RNN_CELL_LSTM;
    long BT = (long)B * T;
    rnn_layout L = layout_of(cell, B, T, H);
    /* pre-activations: the gate buffer for LSTM, y itself for Elman (tanh in place) */
    real *pre = lstm ? work + L.gates : y, *cs = work + L.cell, *hprev = work + L.hprev;

    /* every step's input projection and both biases at once */
#pragma omp parallel for schedule(static) num_threads(team(be, (double)BT * GH))
    for (long r = 0; r < BT; r++)
        for (int j = 0; j < GH; j++)
            pre[r * GH + j] = b_ih[j] + b_hh[j];
    gemm(be, 0, 0, 1, (int)BT, GH, D, x, D, w_ih, D, 1, pre, GH);

    for (int t = 0; t < T; t++) {
        /* the state this step reads, kept for backward's dW_hh */
        for (int b = 0; b < B; b++) {
            real *hp = hprev + ((size_t)b * T + t) * H;
            const real *src = t ? y + ((size_t)b * T + t - 1) * H : h0 ? h0 + (size_t)b * H : NULL;
            if (is_reset(reset, T, b, t) || !src)
                memset(hp, 0, (size_t)H * sizeof(real));
            else
                memcpy(hp, src, (size_t)H * sizeof(real));
        }
        /* rows (b, t) of pre, stride T*GH, += h'_{t-1} @ W_hh^T */
        gemm(be, 1, 0, 1, B, GH, H, hprev + (size_t)t * H, T * H, w_hh, H, 1,
             pre + (size_t)t * GH, T * GH);
#pragma omp parallel for schedule(static) num_threads(step_team(be, (double)B * GH))
        for (int b = 0; b < B; b++) {
            size_t r = (size_t)b * T + t;
            real *p = pre + r * GH, *h = y + r * H;
            if (!lstm) {
                for (int j = 0; j < H; j++)
                    h[j] = tanh_r(p[j]);
                continue;
            }
            const real *cp = t ? cs + (r - 1) * H : c0 ? c0 + (size_t)b * H : NULL;
            int zero = is_reset(reset, T, b, t) || !cp;
            real *c = cs + r * H;
            for (int j = 0; j < H; j++) {
                real ig = sigm_r(p[j]), fg = sigm_r(p[H + j]);
                real gg = tanh_r(p[2 * H + j]), og = sigm_r(p[3 * H + j]);
                p[j] = ig;
                p[H + j] = fg;
                p[2 * H + j] = gg;
                p[3 * H + j] = og;
                c[j] = fg * (zero ? 0 : cp[j]) + ig * gg;
                h[j] = og * tanh_r(c[j]);
            }
        }
    }
    for (int b = 0; b < B; b++) {
        size_t last = ((size_t)b * T + T - 1) * H;
        if (hT)
            memcpy(hT + (size_t)b * H, y + last, (size_t)H * sizeof(real));
        if (cT && lstm)
            memcpy(cT + (size_t)b * H, cs + last, (size_t)H * sizeof(real));
    }
}

/* ---- backward ------------------------------------------------------------ */

/* dst[j] += sum over rows r of src[r, j]; split by columns, each summed in
 * row order: independent of the thread count. */
static void colsum_add(const backend *be, real *dst, const real *src, long rows, int cols)
{
#pragma omp parallel for schedule(static) num_threads(team(be, (double)rows * cols))
    for (int j = 0; j < cols; j++) {
        real s = 0;
        for (long r = 0; r < rows; r++)
            s += src[r * cols + j];
        dst[j] += s;
    }
}

static void cpu_rnn_backward(backend *be, int cell, void *dx_, void *dh0_, void *dc0_, void *dw_ih_,
                             void *dw_hh_, void *db_ih_, void *db_hh_, const void *dy_,
                             const void *dhT_, const void *dcT_, const void *work_, const void *x_,
                             const void *y_, const void *h0_, const void *c0_,
                             const int32_t *reset, const void *w_ih_, const void *w_hh_, int B,
                             int T, int D, int H)
{
    real *dx = dx_, *dh0 = dh0_, *dc0 = dc0_, *dw_ih = dw_ih_, *dw_hh = dw_hh_;
    real *db_ih = db_ih_, *db_hh = db_hh_;
    const real *dy = dy_, *dhT = dhT_, *dcT = dcT_, *x = x_, *y = y_, *c0 = c0_;
    const real *w_ih = w_ih_, *w_hh = w_hh_;
    (void)h0_; /* forward kept h'_{t-1} (h0 at t = 0) in hprev */
    int G = gates_of(cell), GH = G * H, lstm = cell == RNN_CELL_LSTM;
    long BT = (long)B * T;
    size_t BH = (size_t)B * H;
    rnn_layout L = layout_of(cell, B, T, H);
    /* backward's regions of work are scratch: the const is forward's part's */
    real *work = (real *)work_;
    const real *gates = work + L.gates, *cs = work + L.cell, *hprev = work + L.hprev;
    real *dg = work + L.dgates, *dh = work + L.carry, *dc = dh + BH, *dhp = dc + BH;

    for (size_t k = 0; k < BH; k++) {
        dh[k] = dhT ? dhT[k] : 0;
        dc[k] = dcT && lstm ? dcT[k] : 0;
    }
    for (int t = T - 1; t >= 0; t--) {
#pragma omp parallel for schedule(static) num_threads(step_team(be, (double)B * GH))
        for (int b = 0; b < B; b++) {
            size_t r = (size_t)b * T + t;
            const real *g = dy + r * H;
            real *d = dg + r * GH, *dhb = dh + (size_t)b * H, *dcb = dc + (size_t)b * H;
            if (!lstm) {
                const real *h = y + r * H;
                for (int j = 0; j < H; j++)
                    d[j] = (g[j] + dhb[j]) * (1 - h[j] * h[j]);
                continue;
            }
            const real *a = gates + r * GH, *c = cs + r * H;
            const real *cp = t ? cs + (r - 1) * H : c0 ? c0 + (size_t)b * H : NULL;
            int zero = is_reset(reset, T, b, t) || !cp;
            for (int j = 0; j < H; j++) {
                real ig = a[j], fg = a[H + j], gg = a[2 * H + j], og = a[3 * H + j];
                real tc = tanh_r(c[j]), dht = g[j] + dhb[j];
                real dct = dcb[j] + dht * og * (1 - tc * tc);
                real cprev = zero ? 0 : cp[j];
                d[j] = dct * gg * ig * (1 - ig);
                d[H + j] = dct * cprev * fg * (1 - fg);
                d[2 * H + j] = dct * ig * (1 - gg * gg);
                d[3 * H + j] = dht * tc * og * (1 - og);
                dcb[j] = zero ? 0 : dct * fg; /* to c'_{t-1}; nothing crosses a reset */
            }
        }
        /* dh'_{t-1} = da_t @ W_hh for the B rows of step t */
        gemm(be, 1, 0, 0, B, H, GH, dg + (size_t)t * GH, T * GH, w_hh, H, 0, dhp, H);
        for (int b = 0; b < B; b++) {
            real *dhb = dh + (size_t)b * H;
            if (is_reset(reset, T, b, t))
                memset(dhb, 0, (size_t)H * sizeof(real));
            else
                memcpy(dhb, dhp + (size_t)b * H, (size_t)H * sizeof(real));
        }
    }
    /* what reached step 0's input state belongs to h0, c0 */
    if (dh0)
        for (size_t k = 0; k < BH; k++)
            dh0[k] += dh[k];
    if (dc0 && lstm)
        for (size_t k = 0; k < BH; k++)
            dc0[k] += dc[k];
    gemm(be, 0, 1, 0, GH, H, (int)BT, dg, GH, hprev, H, 1, dw_hh, H);
    gemm(be, 0, 1, 0, GH, D, (int)BT, dg, GH, x, D, 1, dw_ih, D);
    colsum_add(be, db_ih, dg, BT, GH);
    colsum_add(be, db_hh, dg, BT, GH);
    if (dx)
        gemm(be, 0, 0, 0, (int)BT, D, GH, dg, GH, w_ih, D, 1, dx, D);
}

/* ---- install ------------------------------------------------------------- */

void RNN_INSTALL(backend *be, cpu_team_fn team_fn)
{
    rnn_team = team_fn;
    be->rnn_work_bytes = cpu_rnn_work_bytes;
    be->rnn_forward = cpu_rnn_forward;
    be->rnn_backward = cpu_rnn_backward;
}

#ifndef CPU_REAL_DOUBLE
void cpu_rnn_install_f64(backend *be, cpu_team_fn team_fn);

void cpu_rnn_install(backend *be, cpu_team_fn team_fn, dtype dt)
{
    if (dt == DT_F64)
        cpu_rnn_install_f64(be, team_fn);
    else
        cpu_rnn_install_f32(be, team_fn);
}
#endif
