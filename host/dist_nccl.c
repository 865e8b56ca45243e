/* dist_nccl.c: the NCCL transport (see dist_nccl.h), for builds with the
 * CUDA backend only: mk/dist.mk compiles it with -DDIST_NCCL against
 * <nccl.h> for build/anatomy-cuda and against the emulator's NCCL
 * (-DANATOMY_EMU) for build/anatomy-emu. Elsewhere it compiles to nothing.
 *
 * Streams: the backend queues its ops on `compute`; collectives go on `comm`,
 * a second stream, after an event recorded on `compute`, so that a gradient
 * bucket's all-reduce runs while backward goes on with the layers below it.
 * Before the backend may touch the results, `compute` waits for an event
 * recorded on `comm`. */
#ifdef DIST_NCCL

#include "dist_nccl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef ANATOMY_EMU
#include "../kernels/cuda/emu/nccl_emu.h"
#else
#include <cuda_runtime_api.h>
#include <nccl.h>
#endif

#include "../data/errbuf.h"
#include "../kernels/ops.h"

_Static_assert(sizeof(ncclUniqueId) == DIST_NCCL_ID_BYTES, "ncclUniqueId size");

/* The scratch that carries host data (losses, the start-up parameter
 * broadcast) through the device: bytes, in both places. */
#define HOST_CHUNK_BYTES ((size_t)4 << 20)
/* Gradient buckets queued in one step; more are reduced at the end instead. */
#define MAX_BUCKETS 1024

typedef struct { size_t lo, hi; } span;

struct dist_nccl {
    const dist *d;
    ncclComm_t comm;
    cudaStream_t compute, comm_stream;
    cudaEvent_t compute_done, comm_done;
    void *dev;           /* HOST_CHUNK_BYTES of device memory */
    void *pinned;        /* HOST_CHUNK_BYTES of page-locked host memory */
    /* buckets of the current step: all on one buffer, disjoint spans */
    void *bucket_buf;
    dtype bucket_type;
    span *spans;
    int nspans;
    ncclResult_t bucket_err; /* the first failure, reported at the end */
};

static ncclDataType_t nccl_type(dtype t)
{
    switch (t) {
    case DT_BF16: return ncclBfloat16;
    case DT_F64: return ncclFloat64;
    case DT_I32: return ncclInt32;
    default: return ncclFloat32;
    }
}

/* call: the function's name, or the call's text (cut at its parenthesis) */
static int nccl_fail(const dist_nccl *c, ncclResult_t r, const char *call, char *err)
{
    return errf(err, "rank %d: %.*s: %s", c->d->rank, (int)strcspn(call, "("), call,
                ncclGetErrorString(r));
}

static int cuda_fail(const dist_nccl *c, cudaError_t r, const char *call, char *err)
{
    return errf(err, "rank %d: %.*s: %s", c->d->rank, (int)strcspn(call, "("), call,
                cudaGetErrorString(r));
}

/* A synchronisation that fails after collectives were queued: NCCL's own
 * error (a peer aborted, say) says more than the CUDA one. */
static int sync_fail(const dist_nccl *c, cudaError_t r, const char *call, char *err)
{
    ncclResult_t a = ncclSuccess;
    if (ncclCommGetAsyncError(c->comm, &a) == ncclSuccess && a != ncclSuccess && a != ncclInProgress)
        return nccl_fail(c, a, "a queued collective", err);
    return cuda_fail(c, r, call, err);
}

#define SYNC_TRY(call)                                                                         \
    do {                                                                                       \
        cudaError_t r_ = (call);                                                               \
        if (r_ != cudaSuccess)                                                                 \
            return sync_fail(c, r_, #call, err);                                               \
    } while (0)
#define NCCL_TRY(call)                                                                         \
    do {                                                                                       \
        ncclResult_t r_ = (call);                                                              \
        if (r_ != ncclSuccess)                                                                 \
            return nccl_fail(c, r_, #call, err);                                               \
    } while (0)
#define CUDA_TRY(call)                                                                         \
    do {                                                                                       \
        cudaError_t r_ = (call);                                                               \
        if (r_ != cudaSuccess)                                                                 \
            return cuda_fail(c, r_, #call, err);                                               \
    } while (0)

int dist_nccl_new_id(void *id, char *err)
{
    ncclUniqueId u;
    ncclResult_t r = ncclGetUniqueId(&u);
    if (r != ncclSuccess)
        return errf(err, "rank 0: ncclGetUniqueId: %s", ncclGetErrorString(r));
    memcpy(id, &u, sizeof u);
    return 0;
}

/* The CUDA backend's failure cause (ops.h): NCCL's asynchronous error, when
 * a collective queued on the comm stream failed (a peer aborted or died);
 * a backend synchronisation that waits for it fails with a CUDA error that
 * would name only the backend's call. */
static int nccl_failure_cause(void *ctx, char *buf, size_t n)
{
    const dist_nccl *c = ctx;
    ncclResult_t a = ncclSuccess;
    if (!c->comm || ncclCommGetAsyncError(c->comm, &a) != ncclSuccess || a == ncclSuccess ||
        a == ncclInProgress)
        return 0;
    snprintf(buf, n, "rank %d: a queued collective: %s", c->d->rank, ncclGetErrorString(a));
    return 1;
}

void dist_nccl_close(dist_nccl *c)
{
    if (!c)
        return;
    if (backend_cuda_set_failure_cause)
        backend_cuda_set_failure_cause(NULL, NULL);
    if (c->comm_stream)
        cudaStreamSynchronize(c->comm_stream);
    if (c->comm)
        ncclCommDestroy(c->comm);
    if (c->compute_done)
        cudaEventDestroy(c->compute_done);
    if (c->comm_done)
        cudaEventDestroy(c->comm_done);
    if (c->comm_stream)
        cudaStreamDestroy(c->comm_stream);
    if (c->dev)
        cudaFree(c->dev);
    if (c->pinned)
        cudaFreeHost(c->pinned);
    free(c->spans);
    free(c);
}

static int open_resources(dist_nccl *c, const void *id, char *err)
{
    ncclUniqueId u;
    CUDA_TRY(cudaStreamCreateWithFlags(&c->comm_stream, cudaStreamNonBlocking));
    CUDA_TRY(cudaEventCreateWithFlags(&c->compute_done, cudaEventDisableTiming));
    CUDA_TRY(cudaEventCreateWithFlags(&c->comm_done, cudaEventDisableTiming));
    CUDA_TRY(cudaMalloc(&c->dev, HOST_CHUNK_BYTES));
    CUDA_TRY(cudaMallocHost(&c->pinned, HOST_CHUNK_BYTES));
    c->spans = malloc(MAX_BUCKETS * sizeof *c->spans);
    if (!c->spans)
        return errf(err, "rank %d: out of memory", c->d->rank);
    memcpy(&u, id, sizeof u);
    NCCL_TRY(ncclCommInitRank(&c->comm, c->d->world, u, c->d->rank));
    if (backend_cuda_set_failure_cause)
        backend_cuda_set_failure_cause(nccl_failure_cause, c);
    return 0;
}

dist_nccl *dist_nccl_open(const dist *d, const void *id, void *stream, char *err)
{
    dist_nccl *c = calloc(1, sizeof *c);
    if (!c) {
        errf(err, "rank %d: out of memory", d->rank);
        return NULL;
    }
    c->d = d;
    c->compute = (cudaStream_t)stream;
    if (open_resources(c, id, err)) {
        dist_nccl_close(c);
        return NULL;
    }
    return c;
}

void dist_nccl_abort(dist_nccl *c)
{
    if (c && c->comm)
        ncclCommAbort(c->comm);
}

const char *dist_nccl_async_error(dist_nccl *c)
{
    ncclResult_t r = ncclSuccess;
    if (!c || !c->comm)
        return NULL;
    if (ncclCommGetAsyncError(c->comm, &r) != ncclSuccess)
        return "ncclCommGetAsyncError failed";
    return r == ncclSuccess || r == ncclInProgress ? NULL : ncclGetErrorString(r);
}

/* comm waits for everything queued on compute so far. */
static int comm_after_compute(dist_nccl *c, char *err)
{
    CUDA_TRY(cudaEventRecord(c->compute_done, c->compute));
    CUDA_TRY(cudaStreamWaitEvent(c->comm_stream, c->compute_done, 0));
    return 0;
}

/* compute waits for comm, and so does the host (see dist_nccl.h). */
static int compute_after_comm(dist_nccl *c, char *err)
{
    CUDA_TRY(cudaEventRecord(c->comm_done, c->comm_stream));
    CUDA_TRY(cudaStreamWaitEvent(c->compute, c->comm_done, 0));
    SYNC_TRY(cudaEventSynchronize(c->comm_done));
    return 0;
}

void dist_nccl_bucket(dist_nccl *c, void *buf, dtype t, size_t off, size_t n)
{
    if (!n || c->bucket_err || (c->bucket_buf && (c->bucket_buf != buf || c->bucket_type != t)))
        return;
    if (c->nspans == MAX_BUCKETS)
        return;
    for (int i = 0; i < c->nspans; i++)
        if (off < c->spans[i].hi && c->spans[i].lo < off + n)
            return; /* overlaps: reduced once, at the end */
    if (cudaEventRecord(c->compute_done, c->compute) != cudaSuccess ||
        cudaStreamWaitEvent(c->comm_stream, c->compute_done, 0) != cudaSuccess) {
        c->bucket_err = ncclUnhandledCudaError;
        return;
    }
    void *p = buf_at(buf, off, t);
    ncclResult_t r = ncclAllReduce(p, p, n, nccl_type(t), ncclAvg, c->comm, c->comm_stream);
    if (r != ncclSuccess) {
        c->bucket_err = r;
        return;
    }
    c->bucket_buf = buf;
    c->bucket_type = t;
    c->spans[c->nspans++] = (span){ off, off + n };
}

static int span_cmp(const void *a, const void *b)
{
    const span *x = a, *y = b;
    return (x->lo > y->lo) - (x->lo < y->lo);
}

int dist_nccl_allreduce(dist_nccl *c, void *buf, dtype t, size_t n, int mean, char *err)
{
    int nspans = c->bucket_buf == buf ? c->nspans : 0;
    ncclResult_t berr = c->bucket_err;
    c->bucket_buf = NULL;
    c->nspans = 0;
    c->bucket_err = ncclSuccess;
    if (berr != ncclSuccess)
        return errf(err, "rank %d: ncclAllReduce of a gradient bucket: %s", c->d->rank,
                    ncclGetErrorString(berr));
    if (nspans && !mean)
        return errf(err, "rank %d: gradient buckets are averaged, but this all-reduce sums",
                    c->d->rank);
    if (comm_after_compute(c, err))
        return -1;
    /* the gaps between the buckets already queued, in one group */
    qsort(c->spans, (size_t)nspans, sizeof *c->spans, span_cmp);
    ncclRedOp_t op = mean ? ncclAvg : ncclSum;
    size_t pos = 0;
    NCCL_TRY(ncclGroupStart());
    for (int i = 0; i <= nspans; i++) {
        size_t end = i < nspans ? c->spans[i].lo : n;
        if (end > n)
            end = n;
        if (end > pos) {
            void *p = buf_at(buf, pos, t);
            ncclResult_t r = ncclAllReduce(p, p, end - pos, nccl_type(t), op, c->comm,
                                           c->comm_stream);
            if (r != ncclSuccess) {
                ncclGroupEnd();
                return nccl_fail(c, r, "ncclAllReduce", err);
            }
        }
        if (i < nspans && c->spans[i].hi > pos)
            pos = c->spans[i].hi;
    }
    NCCL_TRY(ncclGroupEnd());
    return compute_after_comm(c, err);
}

/* dist_shard's partition: S = ceil(n / world) per rank, the last ones short. */
static void shard_of(const dist_nccl *c, int r, size_t n, size_t *lo, size_t *cnt)
{
    size_t hi;
    dist_shard(c->d, r, n, lo, &hi);
    *cnt = hi - *lo;
}

int dist_nccl_reduce_scatter(dist_nccl *c, void *buf, dtype t, size_t n, int mean, char *err)
{
    int w = c->d->world;
    size_t s = (n + (size_t)w - 1) / (size_t)w;
    ncclRedOp_t op = mean ? ncclAvg : ncclSum;
    if (comm_after_compute(c, err))
        return -1;
    if (s * (size_t)w == n) { /* equal shards: NCCL's own, in place */
        NCCL_TRY(ncclReduceScatter(buf, buf_at(buf, (size_t)c->d->rank * s, t), s, nccl_type(t),
                                   op, c->comm, c->comm_stream));
    } else { /* unequal: a reduce to each shard's owner, in one group */
        NCCL_TRY(ncclGroupStart());
        for (int r = 0; r < w; r++) {
            size_t lo, cnt;
            shard_of(c, r, n, &lo, &cnt);
            if (!cnt)
                continue;
            void *p = buf_at(buf, lo, t);
            ncclResult_t res = ncclReduce(p, p, cnt, nccl_type(t), op, r, c->comm, c->comm_stream);
            if (res != ncclSuccess) {
                ncclGroupEnd();
                return nccl_fail(c, res, "ncclReduce", err);
            }
        }
        NCCL_TRY(ncclGroupEnd());
    }
    return compute_after_comm(c, err);
}

int dist_nccl_allgather(dist_nccl *c, void *buf, dtype t, size_t n, char *err)
{
    int w = c->d->world;
    size_t s = (n + (size_t)w - 1) / (size_t)w;
    if (comm_after_compute(c, err))
        return -1;
    if (s * (size_t)w == n) {
        NCCL_TRY(ncclAllGather(buf_at(buf, (size_t)c->d->rank * s, t), buf, s, nccl_type(t),
                               c->comm, c->comm_stream));
    } else { /* unequal: each owner broadcasts its shard, in one group */
        NCCL_TRY(ncclGroupStart());
        for (int r = 0; r < w; r++) {
            size_t lo, cnt;
            shard_of(c, r, n, &lo, &cnt);
            if (!cnt)
                continue;
            void *p = buf_at(buf, lo, t);
            ncclResult_t res = ncclBroadcast(p, p, cnt, nccl_type(t), r, c->comm,
                                             c->comm_stream);
            if (res != ncclSuccess) {
                ncclGroupEnd();
                return nccl_fail(c, res, "ncclBroadcast", err);
            }
        }
        NCCL_TRY(ncclGroupEnd());
    }
    return compute_after_comm(c, err);
}

/* Host data through the device scratch, one chunk at a time; the comm stream
 * carries the copies too, so the backend's stream is not disturbed. */
static int host_chunk(dist_nccl *c, void *v, size_t bytes, ncclDataType_t t, size_t count,
                      int root, char *err)
{
    memcpy(c->pinned, v, bytes);
    CUDA_TRY(cudaMemcpyAsync(c->dev, c->pinned, bytes, cudaMemcpyHostToDevice, c->comm_stream));
    if (root < 0)
        NCCL_TRY(ncclAllReduce(c->dev, c->dev, count, t, ncclSum, c->comm, c->comm_stream));
    else
        NCCL_TRY(ncclBroadcast(c->dev, c->dev, count, t, root, c->comm, c->comm_stream));
    CUDA_TRY(cudaMemcpyAsync(c->pinned, c->dev, bytes, cudaMemcpyDeviceToHost, c->comm_stream));
    SYNC_TRY(cudaStreamSynchronize(c->comm_stream));
    memcpy(v, c->pinned, bytes);
    return 0;
}

int dist_nccl_allreduce_host_f64(dist_nccl *c, double *v, size_t n, int mean, char *err)
{
    const size_t chunk = HOST_CHUNK_BYTES / sizeof *v;
    for (size_t off = 0; off < n; off += chunk) {
        size_t k = n - off < chunk ? n - off : chunk;
        if (host_chunk(c, v + off, k * sizeof *v, ncclFloat64, k, -1, err))
            return -1;
    }
    if (mean)
        for (size_t i = 0; i < n; i++)
            v[i] /= c->d->world;
    return 0;
}

int dist_nccl_bcast_host_f32(dist_nccl *c, float *v, size_t n, int root, char *err)
{
    const size_t chunk = HOST_CHUNK_BYTES / sizeof *v;
    for (size_t off = 0; off < n; off += chunk) {
        size_t k = n - off < chunk ? n - off : chunk;
        if (host_chunk(c, v + off, k * sizeof *v, ncclFloat32, k, root, err))
            return -1;
    }
    return 0;
}

#endif /* DIST_NCCL */
