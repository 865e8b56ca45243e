/* memplan.c: the device memory of a training process, planned before any of
 * it is allocated (memplan.h).
 *
 * Parameters, gradients, master weights and moments follow from the
 * parameter count and the backend's dtypes. Activations are the family's
 * own business (each plans its buffers with carvers, host/models/), so
 * rather than a second formula per family that could drift from the code,
 * the plan builds the model on a stand-in backend that counts the bytes the
 * family asks for and hands out addresses that are never dereferenced; the
 * backend's own scratch comes from its workspace_bytes for the shapes its
 * plan entry is given. The trainer then checks the real allocations against
 * this (train.c prints both), and tests/test_memplan.py compares them in the
 * device emulator, which counts every cudaMalloc. */
#include "memplan.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../data/errbuf.h"

typedef struct {
    backend be; /* first: the model sees a backend */
    backend *real;
    uintptr_t next;   /* the next address handed out */
    size_t counted;   /* bytes asked for since the last reset */
    size_t workspace; /* the most the real backend's plan would hold */
} counting_backend;

static counting_backend *counting_of(backend *be)
{
    return (counting_backend *)be;
}

static void *cnt_alloc(backend *be, size_t bytes)
{
    counting_backend *c = counting_of(be);
    void *p = (void *)c->next;
    c->next += (bytes + 511) / 256 * 256; /* distinct, 256-byte aligned, never 0 */
    c->counted += bytes;
    return p;
}

static void cnt_free(backend *be, void *p)
{
    (void)be, (void)p;
}

static void cnt_copy(backend *be, void *dst, dtype a, const void *src, dtype b, size_t n)
{
    (void)be, (void)dst, (void)a, (void)src, (void)b, (void)n;
}

static void cnt_fill(backend *be, void *dst, dtype t, double value, size_t n)
{
    (void)be, (void)dst, (void)t, (void)value, (void)n;
}

static void cnt_sync(backend *be)
{
    (void)be;
}

static int cnt_plan(backend *be, int B, int T, int C, int NH, int V, char *err)
{
    (void)err;
    counting_backend *c = counting_of(be);
    backend *r = c->real;
    size_t w = r->workspace_bytes ? r->workspace_bytes(r, B, T, C, NH, V) : 0;
    if (w > c->workspace)
        c->workspace = w;
    return 0;
}

static size_t cnt_rnn_work_bytes(backend *be, int cell, int B, int T, int D, int H)
{
    backend *r = counting_of(be)->real;
    return r->rnn_work_bytes(r, cell, B, T, D, H);
}

/* real's table with counting memory entries: building and planning a model
 * calls no op (families only look at which ops exist), and what touches
 * memory does nothing here. */
static void counting_init(counting_backend *c, backend *real)
{
    memset(c, 0, sizeof *c);
    c->real = real;
    c->next = (uintptr_t)1 << 40;
    backend *be = &c->be;
    *be = *real;
    be->ctx = c;
    be->destroy = NULL;
    be->range = NULL;
    be->stream = NULL;
    be->mem_info = NULL;
    be->workspace_bytes = NULL;
    be->alloc = cnt_alloc;
    be->free = cnt_free;
    be->upload = cnt_copy;
    be->download = cnt_copy;
    be->fill = cnt_fill;
    be->sync = cnt_sync;
    be->plan = cnt_plan;
    if (real->rnn_work_bytes)
        be->rnn_work_bytes = cnt_rnn_work_bytes;
}

size_t mem_plan_total(const mem_plan *p)
{
    return p->params + p->grads + p->master + p->moments + p->activations + p->workspace;
}

int mem_plan_compute(const model_config *cfg, backend *be, const mem_shape *s, mem_plan *out,
                     char *err)
{
    counting_backend cb;
    counting_init(&cb, be);
    memset(out, 0, sizeof *out);
    model *m = cfg->family->create(&cb.be, cfg->v, err);
    if (!m)
        return -1;
    size_t n = m->nparams, state = n;
    if (s->zero && s->world > 1) { /* dist_shard's largest: rank 0's */
        size_t per = (n + (size_t)s->world - 1) / (size_t)s->world;
        state = per < n ? per : n;
    }
    /* the model's state that is not trained (running statistics) sits with the parameters */
    out->params = n * dtype_size(be->act) + m->nstate * dtype_size(be->stat);
    out->grads = n * dtype_size(be->act);
    out->master = be->act != be->opt ? state * dtype_size(be->opt) : 0;
    out->moments = 2 * state * dtype_size(be->opt);
    cb.counted = 0;
    m->recompute = s->recompute;
    int rc = m->plan(m, s->B, s->T, err);
    out->activations = cb.counted;
    /* families without a backend plan still run on its fixed buffers */
    out->workspace = cb.workspace ? cb.workspace
                     : be->workspace_bytes ? be->workspace_bytes(be, 0, 0, 0, 0, 0) : 0;
    m->destroy(m);
    return rc;
}

int mem_plan_max_seq(const model_config *cfg, backend *be, char *err)
{
    counting_backend cb;
    counting_init(&cb, be);
    model *m = cfg->family->create(&cb.be, cfg->v, err);
    if (!m)
        return -1;
    int t = m->maxT;
    m->destroy(m);
    return t;
}

int mem_plan_largest_batch(const model_config *cfg, backend *be, const mem_shape *s,
                           size_t limit)
{
    int lo = 0, hi = s->B; /* the answer is in [lo, hi]; lo fits (0 trivially) */
    char err[ERRBUF];
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        mem_shape t = *s;
        mem_plan p;
        t.B = mid;
        if (!mem_plan_compute(cfg, be, &t, &p, err) && mem_plan_total(&p) <= limit)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* n with thousands separators. */
static const char *grouped(size_t n, char *buf)
{
    char digits[32];
    int len = snprintf(digits, sizeof digits, "%zu", n), j = 0;
    for (int i = 0; i < len; i++) {
        if (i && (len - i) % 3 == 0)
            buf[j++] = ',';
        buf[j++] = digits[i];
    }
    buf[j] = 0;
    return buf;
}

const char *mem_plan_format(const mem_plan *p, char *buf, size_t n)
{
    char a[6][40], t[40], h[40];
    snprintf(buf, n, "params %s B | grads %s B | master %s B | moments %s B | activations %s B "
                     "| workspace %s B | total %s B (%s)",
             grouped(p->params, a[0]), grouped(p->grads, a[1]), grouped(p->master, a[2]),
             grouped(p->moments, a[3]), grouped(p->activations, a[4]),
             grouped(p->workspace, a[5]), grouped(mem_plan_total(p), t),
             mem_human(mem_plan_total(p), h, sizeof h));
    return buf;
}

int mem_parse_bytes(const char *s, size_t *out)
{
    char *end;
    errno = 0;
    if (!s || *s < '0' || *s > '9')
        return -1;
    unsigned long long v = strtoull(s, &end, 10);
    int shift = 0;
    switch (*end) {
    case 'K': case 'k': shift = 10; end++; break;
    case 'M': case 'm': shift = 20; end++; break;
    case 'G': case 'g': shift = 30; end++; break;
    case 'T': case 't': shift = 40; end++; break;
    default: break;
    }
    if (errno || *end || v == 0 || v > (~0ull >> shift))
        return -1;
    *out = (size_t)(v << shift);
    return 0;
}

size_t mem_in_use(backend *be)
{
    size_t free_b = 0, total = 0;
    if (!be->mem_info || be->mem_info(be, &free_b, &total))
        return 0;
    return total > free_b ? total - free_b : 0;
}

const char *mem_human(size_t bytes, char *buf, size_t n)
{
    if (bytes >= (size_t)1 << 30)
        snprintf(buf, n, "%.2f GiB", (double)bytes / (1u << 30));
    else
        snprintf(buf, n, "%.1f MiB", (double)bytes / (1u << 20));
    return buf;
}
