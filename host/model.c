/* model.c: what every model family shares: its buffers (parameters, gradients,
 * AdamW state), and moving parameters between host fp32 and the backend. */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../data/errbuf.h"
#include "../kernels/dropout_mask.h"
#include "family.h"
#include "memplan.h"

static int build_segments(model *m)
{
    m->segs = calloc((size_t)m->nviews, sizeof *m->segs);
    if (!m->segs)
        return -1;
    m->nsegs = 0;
    for (int i = 0; i < m->nviews; i++) {
        const param_view *v = &m->views[i];
        param_segment *last = m->nsegs ? &m->segs[m->nsegs - 1] : NULL;
        if (last && last->decay == v->decay && last->offset + last->count == v->offset) {
            last->count += v->count;
            continue;
        }
        m->segs[m->nsegs++] = (param_segment){ v->offset, v->count, v->decay };
    }
    return 0;
}

/* be->alloc, adding the device memory it took (by the backend's report) to *used. */
static void *alloc_counted(backend *be, size_t bytes, size_t *used)
{
    size_t before = mem_in_use(be);
    void *p = be->alloc(be, bytes);
    size_t after = mem_in_use(be);
    if (p && after > before)
        *used += after - before;
    return p;
}

int model_alloc(model *m, char *err)
{
    backend *be = m->be;
    size_t n = m->nparams;
    size_t act = n * dtype_size(be->act), opt = n * dtype_size(be->opt);

    if (build_segments(m))
        return errf(err, "out of memory");
    m->used_params = m->used_grads = m->used_master = m->used_moments = 0;
    m->params = alloc_counted(be, act, &m->used_params);
    m->grads = alloc_counted(be, act, &m->used_grads);
    m->m = alloc_counted(be, opt, &m->used_moments);
    m->v = alloc_counted(be, opt, &m->used_moments);
    m->master = be->act != be->opt ? alloc_counted(be, opt, &m->used_master) : NULL;
    m->state = m->nstate ? alloc_counted(be, m->nstate * dtype_size(be->stat), &m->used_params)
                         : NULL;
    if (!m->params || !m->grads || !m->m || !m->v || (be->act != be->opt && !m->master) ||
        (m->nstate && !m->state)) {
        double gib = (2.0 * act + 3.0 * opt) / (1 << 30);
        model_free_buffers(m);
        return errf(err, "%s model: %zu parameters need %.2f GiB on %s for weights, "
                         "gradients and AdamW state, which could not be allocated",
                    m->family, m->nparams, gib, be->name);
    }
    m->state_lo = 0;
    m->state_hi = n;
    model_zero_grad(m);
    be->fill(be, m->m, be->opt, 0.0, n);
    be->fill(be, m->v, be->opt, 0.0, n);
    return 0;
}

int model_shard_state(model *m, size_t lo, size_t hi, char *err)
{
    backend *be = m->be;
    size_t n = hi - lo, es = dtype_size(be->opt), from = lo - m->state_lo;
    size_t used_m = 0, used_master = 0;
    void *old[3] = { m->m, m->v, m->master }, *fresh[3] = { NULL, NULL, NULL };
    float *host = malloc((n ? n : 1) * sizeof *host);
    int k, nbuf = m->master ? 3 : 2;

    if (lo < m->state_lo || hi > m->state_hi || lo > hi) {
        free(host);
        return errf(err, "optimizer state shard [%zu, %zu) is outside [%zu, %zu)", lo, hi,
                    m->state_lo, m->state_hi);
    }
    /* the parts first, then the wholes go: at no time more than both */
    for (k = 0; k < nbuf && host; k++) {
        fresh[k] = alloc_counted(be, (n ? n : 1) * es, k == 2 ? &used_master : &used_m);
        if (!fresh[k])
            break;
        be->download(be, host, DT_F32, buf_at(old[k], from, be->opt), be->opt, n);
        be->upload(be, fresh[k], be->opt, host, DT_F32, n);
    }
    free(host);
    if (k < nbuf) {
        for (int j = 0; j < nbuf; j++)
            if (fresh[j])
                be->free(be, fresh[j]);
        return errf(err, "out of device memory for the optimizer state shard (%zu elements)",
                    n);
    }
    for (k = 0; k < nbuf; k++)
        be->free(be, old[k]);
    m->m = fresh[0];
    m->v = fresh[1];
    m->master = nbuf == 3 ? fresh[2] : NULL;
    m->state_lo = lo;
    m->state_hi = hi;
    m->used_moments = used_m;
    m->used_master = used_master;
    return 0;
}

void model_free_buffers(model *m)
{
    backend *be = m->be;
    void **bufs[] = { &m->params, &m->grads, &m->master, &m->m, &m->v, &m->state };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        if (*bufs[i])
            be->free(be, *bufs[i]);
        *bufs[i] = NULL;
    }
}

void model_zero_grad(model *m)
{
    m->be->fill(m->be, m->grads, m->be->act, 0.0, m->nparams);
}

void model_set_params(model *m, const float *host)
{
    backend *be = m->be;
    be->upload(be, m->params, be->act, host, DT_F32, m->nparams);
    if (m->master)
        be->upload(be, m->master, be->opt, host + m->state_lo, DT_F32,
                   m->state_hi - m->state_lo);
}

void model_get_params(model *m, float *host)
{
    backend *be = m->be;
    size_t lo = m->state_lo, hi = m->state_hi;
    if (!m->master || lo > 0 || hi < m->nparams)
        be->download(be, host, DT_F32, m->params, be->act, m->nparams);
    if (m->master) /* the exact values where this process keeps them */
        be->download(be, host + lo, DT_F32, m->master, be->opt, hi - lo);
}

void model_set_moments(model *m, const float *mh, const float *vh)
{
    backend *be = m->be;
    size_t lo = m->state_lo, n = m->state_hi - lo;
    be->upload(be, m->m, be->opt, mh + lo, DT_F32, n);
    be->upload(be, m->v, be->opt, vh + lo, DT_F32, n);
}

void model_get_moments(model *m, float *mh, float *vh)
{
    backend *be = m->be;
    size_t lo = m->state_lo, n = m->state_hi - lo;
    be->download(be, mh + lo, DT_F32, m->m, be->opt, n);
    be->download(be, vh + lo, DT_F32, m->v, be->opt, n);
}

void model_set_state(model *m, const float *host)
{
    if (m->nstate)
        m->be->upload(m->be, m->state, m->be->stat, host, DT_F32, m->nstate);
}

void model_get_state(model *m, float *host)
{
    if (m->nstate)
        m->be->download(m->be, host, DT_F32, m->state, m->be->stat, m->nstate);
}

const param_view *model_find_view(const model *m, const char *name)
{
    for (int i = 0; i < m->nviews; i++)
        if (strcmp(m->views[i].name, name) == 0)
            return &m->views[i];
    return NULL;
}

static const char *const loss_names[] = { [LOSS_MSE] = "mse", [LOSS_MAE] = "mae",
                                          [LOSS_HUBER] = "huber" };

int model_loss_kind(const char *name)
{
    for (int k = 0; k < (int)(sizeof loss_names / sizeof loss_names[0]); k++)
        if (strcmp(name, loss_names[k]) == 0)
            return k;
    return -1;
}

const char *model_loss_name(int kind)
{
    return kind >= 0 && kind < (int)(sizeof loss_names / sizeof loss_names[0])
               ? loss_names[kind] : "?";
}

void model_add_view(param_view *v, int *n, size_t *off, const char *name, int ndim, int d0,
                    int d1)
{
    param_view *p = &v[(*n)++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = ndim;
    p->shape[0] = d0;
    p->shape[1] = ndim > 1 ? d1 : 0;
    p->count = (size_t)d0 * (ndim > 1 ? (size_t)d1 : 1);
    p->offset = *off;
    p->decay = ndim > 1;
    *off += p->count;
}

void model_views_ready(model *m, int first, int last)
{
    if (m->grads_ready) {
        size_t lo = m->views[first].offset;
        size_t hi = m->views[last].offset + m->views[last].count;
        m->grads_ready(m->grads_ready_ctx, lo, hi - lo);
    }
}

/* A site's seed: the micro-batch's seed and the site mixed (splitmix64's
 * finaliser), so that sites draw unrelated masks. */
static uint64_t site_seed(const model *m, unsigned site)
{
    return dropout_mix64(m->dropout_seed ^ ((uint64_t)site + 1) * 0xd1b54a32d192ed03ull);
}

const void *model_dropout_to(model *m, void *out, const void *x, size_t n, unsigned site)
{
    if (m->dropout > 0)
        m->be->dropout_forward(m->be, out, x, n, m->dropout, site_seed(m, site));
    return model_dropped(m, out, (void *)x);
}

void model_dropout(model *m, void *x, size_t n, unsigned site)
{
    (void)model_dropout_to(m, x, x, n, site);
}

void *carve(carver *cv, size_t n)
{
    void *p = cv->base ? cv->base + cv->used * cv->esize : NULL;
    cv->used += (n + 31) / 32 * 32; /* 128-byte alignment for fp32 */
    return p;
}

void *model_view_at(const model *m, void *base, int view)
{
    return buf_at(base, m->views[view].offset, m->be->act);
}

model *model_new(backend *be, const model_family *fam, const int *config, size_t priv_size,
                 char *err)
{
    model *m = calloc(1, sizeof *m);
    void *s = calloc(1, priv_size);
    if (!m || !s) {
        free(m);
        free(s);
        errf(err, "out of memory");
        return NULL;
    }
    m->family = fam->name;
    m->fam = fam;
    memcpy(m->config, config, (size_t)fam->nfields * sizeof *config);
    m->be = be;
    m->priv = s;
    m->loss_kind = LOSS_MSE;
    m->huber_delta = 1.0;
    return m;
}

void model_delete(model *m)
{
    if (!m)
        return;
    model_free_buffers(m);
    free(m->views);
    free(m->state_views);
    free(m->segs);
    free(m->priv);
    free(m);
}

double model_loss(model *m, double sum, double count)
{
    m->nloss = 1;
    m->loss_sum[0] = sum;
    m->loss_count[0] = count;
    return count > 0 ? sum / count : 0.0;
}

void model_loss_part(model *m, double sum, double count)
{
    if (m->nloss >= MODEL_MAXLOSS)
        return;
    m->loss_sum[m->nloss] = sum;
    m->loss_count[m->nloss++] = count;
}

void model_loss_add(const model *m, double *acc)
{
    for (int k = 0; k < m->nloss && k < MODEL_MAXLOSS; k++) {
        acc[k] += m->loss_sum[k];
        acc[MODEL_MAXLOSS + k] += m->loss_count[k];
    }
}

double model_loss_mean(const double *acc)
{
    double loss = 0.0;
    for (int k = 0; k < MODEL_MAXLOSS; k++)
        if (acc[MODEL_MAXLOSS + k] > 0)
            loss += acc[k] / acc[MODEL_MAXLOSS + k];
    return loss;
}
