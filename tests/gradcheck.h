/* gradcheck.h: the finite-difference gradient the fp64 gradient checks compare
 * their backward with.
 *
 * A central difference D(h) = (L(x + h) - L(x - h)) / 2h errs by
 * h^2 L'''(x) / 6 + O(h^4). Random weights can put a layernorm or a
 * batchnorm near a flat input, where L''' is large: at h = 1e-5 a BERT case
 * (test_bert, seed 1796623883315841, no biases) erred by 3.9e-6 relative,
 * 4x less at each halving of h, with the backward right. Richardson's
 * extrapolation (4 D(h/2) - D(h)) / 3 cancels the h^2 term, leaving O(h^4),
 * while rounding stays near 1e-16 |L| / h: the check then fails on a wrong
 * gradient, not on curvature. */
#ifndef ANATOMY_GRADCHECK_H
#define ANATOMY_GRADCHECK_H

#include <stddef.h>

#include "../host/model.h"

/* The loss at the current x (x holds every coordinate, one of them moved). */
typedef double (*fd_loss)(void *ctx);

/* fd[s] = dL/dx[i] for the m coordinates i = idx[s] (idx NULL: i = s), by
 * the extrapolated central difference with step h; each x[i] is put back
 * after its turn. */
static inline void fd_gradient_at(double *fd, double *x, const size_t *idx, size_t m, double h,
                                  fd_loss loss, void *ctx)
{
    for (size_t s = 0; s < m; s++) {
        size_t i = idx ? idx[s] : s;
        double keep = x[i], d[2];
        for (int k = 0; k < 2; k++) { /* D(h), then D(h / 2) */
            double step = k ? h / 2 : h;
            x[i] = keep + step;
            double lp = loss(ctx);
            x[i] = keep - step;
            double lm = loss(ctx);
            d[k] = (lp - lm) / (2 * step);
        }
        x[i] = keep;
        fd[s] = (4 * d[1] - d[0]) / 3;
    }
}

/* ... for every coordinate i < n */
static inline void fd_gradient(double *fd, double *x, size_t n, double h, fd_loss loss, void *ctx)
{
    fd_gradient_at(fd, x, NULL, n, h, loss, ctx);
}

/* A model's loss at parameters p (uploaded from fp64) on batch b, and with
 * grad its analytic gradient (downloaded into grad). */
static inline double model_loss_grad(model *m, const double *p, const model_batch *b, double *grad)
{
    backend *be = m->be;
    be->upload(be, m->params, be->act, p, DT_F64, m->nparams);
    model_zero_grad(m);
    double loss = m->forward(m, b, grad ? 1.0f : 0.0f);
    if (grad) {
        m->backward(m);
        be->download(be, grad, DT_F64, m->grads, be->act, m->nparams);
    }
    return loss;
}

typedef struct { model *m; const double *p; const model_batch *b; } model_at;
static inline double model_loss_at(void *ctx)
{
    model_at *a = ctx;
    return model_loss_grad(a->m, a->p, a->b, NULL);
}

/* fd_gradient of the model's loss over all its parameters p */
static inline void model_fd_gradient(double *fd, model *m, double *p, const model_batch *b, double h)
{
    fd_gradient(fd, p, m->nparams, h, model_loss_at, &(model_at){ m, p, b });
}

#endif
