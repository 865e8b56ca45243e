/* finite.c: see finite.h. One pass over the weights at load, before the
 * model exists: cheaper than any forward pass over them. */
#include "finite.h"

#include <math.h>
#include <stdio.h>

#include "../data/errbuf.h"

int finite_check_params(const char *path, const param_view *views, int nviews,
                        const float *p, char *err)
{
    for (int i = 0; i < nviews; i++) {
        const param_view *v = &views[i];
        const float *x = p + v->offset;
        for (size_t k = 0; k < v->count; k++) {
            if (isfinite(x[k]))
                continue;
            /* the element's coordinates, row-major in the view's shape */
            size_t at[MODEL_MAXDIM], rest = k;
            for (int d = v->ndim - 1; d >= 0; d--) {
                size_t ext = v->shape[d] > 0 ? (size_t)v->shape[d] : 1;
                at[d] = rest % ext;
                rest /= ext;
            }
            char idx[MODEL_MAXDIM * 22] = "";
            size_t used = 0;
            for (int d = 0; d < v->ndim && used < sizeof idx; d++)
                used += (size_t)snprintf(idx + used, sizeof idx - used, "%s%zu", d ? ", " : "",
                                         at[d]);
            return errf(err, "%s: tensor '%s' holds %s at index [%s]: the weights are not "
                             "finite (a diverged or damaged model)", path, v->name,
                        isnan(x[k]) ? "NaN" : x[k] > 0 ? "+inf" : "-inf", idx);
        }
    }
    return 0;
}
