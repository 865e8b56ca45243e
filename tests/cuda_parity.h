/* cuda_parity.h: what the backend parity suites (test_cuda_ops.c,
 * test_cuda_seq_ops.c) share: the fp64 CPU oracle and the CUDA backend under
 * test (emulated or native), buffers uploaded from host doubles or poisoned
 * with NaN, results taken back net of a prefill, inputs representable in the
 * tested type, and the relative L2 error with the design's tolerances. */
#ifndef ANATOMY_CUDA_PARITY_H
#define ANATOMY_CUDA_PARITY_H

#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/ops.h"
#include "testrand.h"

#define TOL_F32 1e-5
#define TOL_BF16 1e-2

/* The nearest bf16 value (ties to even), written here independently of the
 * backends' own conversions. */
static double bf16_round(double x)
{
    float f = (float)x;
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return x;
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

/* x as the tested type holds it. */
static double in_type(double x, dtype t) { return t == DT_BF16 ? bf16_round(x) : (float)x; }

/* n normal values of the given scale, representable in t. */
static double *rnd(size_t n, double scale, dtype t)
{
    double *x = xmalloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++)
        x[i] = in_type(scale * nrand(), t);
    return x;
}

static dtype mode(int i) { return i ? DT_BF16 : DT_F32; }
static double tol(dtype act) { return act == DT_BF16 ? TOL_BF16 : TOL_F32; }

/* |a - ref| / |ref| over n elements; NaN never passes. */
static double rel_l2(const double *a, const double *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (a[i] != a[i] || ref[i] != ref[i])
            return INFINITY;
        num += (a[i] - ref[i]) * (a[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static backend *oracle(void)
{
    char err[512] = "";
    backend *be = backend_cpu64_create(0, err);
    ck_assert_msg(be != NULL, "cpu-fp64 backend: %s", err);
    return be;
}

static backend *gpu(dtype act)
{
    char err[512] = "";
    ck_assert_msg(backend_cuda_create != NULL, "this binary was linked without the CUDA backend");
    backend *be = backend_cuda_create(0, act, err);
    ck_assert_msg(be != NULL, "cuda backend: %s", err);
    ck_assert_int_eq(be->act, act);
    ck_assert_int_eq(be->stat, DT_F32);
    ck_assert_int_eq(be->opt, DT_F32);
    return be;
}

static void *dalloc(backend *be, dtype t, size_t n)
{
    void *d = be->alloc(be, (n ? n : 1) * dtype_size(t));
    ck_assert_ptr_nonnull(d);
    return d;
}

static void *up(backend *be, dtype t, const double *h, size_t n)
{
    void *d = dalloc(be, t, n);
    be->upload(be, d, t, h, DT_F64, n);
    return d;
}

static void *up_i32(backend *be, const int32_t *h, size_t n)
{
    void *d = dalloc(be, DT_I32, n);
    be->upload(be, d, DT_I32, h, DT_I32, n);
    return d;
}

/* An output buffer filled with NaN, so that an element the op fails to
 * write shows. */
static void *poisoned(backend *be, dtype t, size_t n)
{
    void *d = dalloc(be, t, n);
    be->fill(be, d, t, NAN, n);
    return d;
}

/* Downloads d (and frees it); with prefill, what the op added to it. */
static void take(backend *be, void *d, dtype t, const double *prefill, size_t n, double *out)
{
    be->download(be, out, DT_F64, d, t, n);
    for (size_t i = 0; prefill && i < n; i++)
        out[i] -= prefill[i];
    be->free(be, d);
}

#endif
