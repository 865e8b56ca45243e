/* finite.h: refusing weights that are not numbers. */
#ifndef ANATOMY_FINITE_H
#define ANATOMY_FINITE_H

#include "model.h"

/* 0 when every parameter of p (laid out by views) is finite; else -1 with
 * err naming path, the first tensor holding a NaN or an infinity and the
 * element's index in it. A model with one would evaluate to a NaN loss and
 * sample token 0 forever; training from it diverges at the first step. */
int finite_check_params(const char *path, const param_view *views, int nviews,
                        const float *p, char *err);

#endif
