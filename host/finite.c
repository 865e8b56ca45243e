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
            char idx[128] = "";
            size_t rest = k, n = 0;
            /* the element's coordinates, row-major in the view's shape */
            for (int d = v->ndim - 1; d >= 0; d--) {
                size_t ext = v->shape[d] > 0 ? (size_t)v->shape[d] : 1;
                char part[32];
                snprintf(part, sizeof part, "%zu", rest % ext);
                rest /= ext;
                char tmp[128];
                snprintf(tmp, sizeof tmp, "%s%s%s", part, n ? ", " : "", idx);
                snprintf(idx, sizeof idx, "%s", tmp);
                n++;
            }
            return errf(err, "%s: tensor '%s' holds %s at index [%s]: the weights are not "
                             "finite (a diverged or damaged model)", path, v->name,
                        isnan(x[k]) ? "NaN" : x[k] > 0 ? "+inf" : "-inf", idx);
        }
    }
    return 0;
}
