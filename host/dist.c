/* dist.c: rank detection, the MPI transport, the choice of transport (NCCL
 * lives in dist_nccl.c) and the collective watchdog. See dist.h for the
 * contract; the world-1 transport is the identity. */
#include "dist.h"

#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifdef DIST_HAVE_MPI
#include <mpi.h>
#endif

#include "../data/errbuf.h"
#include "dist_nccl.h"

/* The NCCL transport is linked only into builds with the CUDA backend
 * (dist_nccl.h); elsewhere these are NULL and never called. */
#pragma weak dist_nccl_new_id
#pragma weak dist_nccl_open
#pragma weak dist_nccl_close
#pragma weak dist_nccl_abort
#pragma weak dist_nccl_async_error
#pragma weak dist_nccl_allreduce
#pragma weak dist_nccl_bucket
#pragma weak dist_nccl_reduce_scatter
#pragma weak dist_nccl_allgather
#pragma weak dist_nccl_allreduce_host_f64
#pragma weak dist_nccl_bcast_host_f32

#define DIST_MAXWORLD (1 << 20)

int dist_have_mpi(void)
{
#ifdef DIST_HAVE_MPI
    return 1;
#else
    return 0;
#endif
}

/* Parses the integer in variable `name` into *v within [lo, hi]. Returns 1
 * when set, 0 when absent, -1 with err when malformed. */
static int env_int(const char *name, int lo, int hi, int *v, char *err)
{
    const char *s = getenv(name);
    char *end;
    long x;
    if (!s)
        return 0;
    errno = 0;
    x = strtol(s, &end, 10);
    if (end == s || *end || errno || x < lo || x > hi)
        return errf(err, "%s: '%s' is not an integer in [%d, %d]", name, s, lo, hi);
    *v = (int)x;
    return 1;
}

/* One launcher's variables: rank and world must come together. */
static int env_triple(const char *rank_var, const char *world_var, const char *world_alt,
                      const char *local_var, dist_env *e, char *err)
{
    int r = 0, w = 1, l = 0, hr, hw, hl;
    if ((hr = env_int(rank_var, 0, DIST_MAXWORLD - 1, &r, err)) < 0)
        return -1;
    hw = env_int(world_var, 1, DIST_MAXWORLD, &w, err);
    if (hw == 0 && world_alt)
        hw = env_int(world_alt, 1, DIST_MAXWORLD, &w, err);
    if (hw < 0 || (hl = env_int(local_var, 0, DIST_MAXWORLD - 1, &l, err)) < 0)
        return -1;
    if (!hr && !hw)
        return 0;
    if (hr != hw)
        return errf(err, "%s: set without %s (a launcher sets both)", hr ? rank_var : world_var,
                    hr ? world_var : rank_var);
    if (r >= w)
        return errf(err, "%s: rank %d is not below the world size %d (%s)", rank_var, r, w,
                    world_var);
    e->rank = r;
    e->world = w;
    e->local_rank = hl ? l : r;
    return 1;
}

/* Ranks on this node from `name`; Slurm writes "8" or "8(x2)" or "8,7". A
 * value that does not parse is ignored (it only sizes the thread default). */
static void env_local_world(dist_env *e, const char *name)
{
    const char *s = getenv(name);
    char *end;
    long v = s ? strtol(s, &end, 10) : 0;
    if (s && end != s && v >= 1 && v <= DIST_MAXWORLD)
        e->local_world = (int)v;
}

int dist_env_detect(dist_env *e, char *err)
{
    int rc;
    e->rank = 0;
    e->world = 1;
    e->local_rank = 0;
    e->local_world = 0;
    e->source = "none";
    e->init = NULL;
    rc = env_triple("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", NULL,
                    "OMPI_COMM_WORLD_LOCAL_RANK", e, err);
    if (rc) {
        env_local_world(e, "OMPI_COMM_WORLD_LOCAL_SIZE");
        return rc < 0 ? -1 : (e->source = "mpirun", 0);
    }
    /* inside an sbatch script SLURM_NTASKS is the allocation's task count even
     * for the one batch process; srun's step count is the one that matters */
    rc = env_triple("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_LOCALID", e,
                    err);
    if (rc) {
        env_local_world(e, "SLURM_STEP_TASKS_PER_NODE");
        return rc < 0 ? -1 : (e->source = "slurm", 0);
    }
    rc = env_triple("RANK", "WORLD_SIZE", NULL, "LOCAL_RANK", e, err);
    if (rc) {
        env_local_world(e, "LOCAL_WORLD_SIZE");
        return rc < 0 ? -1 : (e->source = "torchrun", 0);
    }
    return 0;
}

/* ---- watchdog: one thread per process, armed around each collective ---- */

typedef struct {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int started, stop;
    const char *what;       /* the collective in flight, NULL when none */
    struct timespec since;  /* when it began, or when the last one ended */
    int mpi_up;             /* this process called MPI_Init (MPI_Finalize at the end) */
    int thread_multiple;    /* MPI_Abort may be called from the watchdog */
    double spent_s;         /* seconds spent inside collectives (for the log) */
    dist_nccl *nccl;        /* the NCCL transport, when it is the one */
    void *stage;            /* host staging buffer for device reductions */
    size_t stage_bytes;
    int *counts, *displs;   /* [world]: ZeRO shard sizes and offsets for MPI */
} dist_impl;

static double seconds_since(const struct timespec *t)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t->tv_sec) + (now.tv_nsec - t->tv_nsec) / 1e9;
}

/* Ends the whole job from the watchdog, after its message. NCCL first: the
 * abort releases whatever this process's streams wait on (alarm: should the
 * abort itself hang, SIGALRM ends the process). Under mpirun one rank's
 * non-zero exit ends the job; elsewhere (torchrun-style) each rank's own
 * watchdog ends it, since its next collective cannot complete. */
static void watchdog_end_job(dist_impl *im)
{
    fflush(stderr);
    if (im->nccl) {
        alarm(10);
        dist_nccl_abort(im->nccl);
    }
#ifdef DIST_HAVE_MPI
    if (im->mpi_up && im->thread_multiple)
        MPI_Abort(MPI_COMM_WORLD, 1);
#endif
    _exit(1);
}

static void *watchdog_main(void *arg)
{
    dist *d = arg;
    dist_impl *im = d->impl;
    pthread_mutex_lock(&im->lock);
    while (!im->stop) {
        struct timespec wake;
        const char *nerr;
        clock_gettime(CLOCK_REALTIME, &wake);
        wake.tv_nsec += 250 * 1000 * 1000;
        if (wake.tv_nsec >= 1000000000L) {
            wake.tv_sec++;
            wake.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&im->cond, &im->lock, &wake);
        if (im->stop)
            break;
        double t = seconds_since(&im->since);
        /* A rank stuck outside communication names itself; the ranks waiting
         * for it give it a second's grace to do so before they report. */
        if (im->nccl && (nerr = dist_nccl_async_error(im->nccl)))
            fprintf(stderr, "anatomy: error: rank %d: NCCL: %s%s%s (a peer failed or aborted)\n",
                    d->rank, nerr, im->what ? " during " : "", im->what ? im->what : "");
        else if (im->what && t >= d->timeout_s + 1.0)
            fprintf(stderr, "anatomy: error: rank %d: collective %s timed out after %.0f s "
                            "(another rank died or hangs; --dist-timeout sets the limit)\n",
                    d->rank, im->what, t);
        else if (!im->what && t >= d->timeout_s)
            fprintf(stderr, "anatomy: error: rank %d: reached no collective for %.0f s (this "
                            "rank is stuck outside communication; --dist-timeout sets the "
                            "limit)\n", d->rank, t);
        else
            continue;
        watchdog_end_job(im);
    }
    pthread_mutex_unlock(&im->lock);
    return NULL;
}

static int wd_start(dist *d, char *err)
{
    dist_impl *im = d->impl;
    pthread_mutex_init(&im->lock, NULL);
    pthread_cond_init(&im->cond, NULL);
    clock_gettime(CLOCK_MONOTONIC, &im->since);
    if (pthread_create(&im->thread, NULL, watchdog_main, d)) {
        pthread_mutex_destroy(&im->lock);
        pthread_cond_destroy(&im->cond);
        return errf(err, "rank %d: cannot start the collective watchdog thread", d->rank);
    }
    im->started = 1;
    return 0;
}

static void wd_stop(dist_impl *im)
{
    if (!im->started)
        return;
    pthread_mutex_lock(&im->lock);
    im->stop = 1;
    pthread_cond_signal(&im->cond);
    pthread_mutex_unlock(&im->lock);
    pthread_join(im->thread, NULL);
    pthread_mutex_destroy(&im->lock);
    pthread_cond_destroy(&im->cond);
    im->started = 0;
}

static void wd_enter(dist *d, const char *what)
{
    dist_impl *im = d->impl;
    pthread_mutex_lock(&im->lock);
    im->what = what;
    clock_gettime(CLOCK_MONOTONIC, &im->since);
    pthread_mutex_unlock(&im->lock);
}

static void wd_leave(dist *d)
{
    dist_impl *im = d->impl;
    pthread_mutex_lock(&im->lock);
    im->spent_s += seconds_since(&im->since);
    im->what = NULL;
    clock_gettime(CLOCK_MONOTONIC, &im->since);
    pthread_mutex_unlock(&im->lock);
}

/* ---- init / finalize ---- */

#ifdef DIST_HAVE_MPI
static int mpi_start(dist *d, dist_impl *im, char *err)
{
    int provided = 0, size = 0, rank = 0, inited = 0;
    MPI_Initialized(&inited);
    if (!inited && MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS)
        return errf(err, "rank %d: MPI_Init_thread failed", d->rank);
    if (inited)
        MPI_Query_thread(&provided);
    im->thread_multiple = provided >= MPI_THREAD_MULTIPLE;
    /* errors come back as codes we report, not as MPI's own abort */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (size != d->world || rank != d->rank) {
        errf(err, "the environment (%s) says rank %d of %d but MPI says rank %d of %d: launch "
                  "with mpirun or srun --mpi=pmix (torchrun-style launches work with the CUDA "
                  "backend, over NCCL)", d->source, d->rank, d->world, rank, size);
        MPI_Finalize();
        return -1;
    }
    im->mpi_up = 1;
    return 0;
}
#endif

/* The NCCL transport applies: the backend queues on a native stream and the
 * build has dist_nccl.c. ANATOMY_DIST_NCCL=0 keeps such a build on MPI's host
 * staging; =1 uses NCCL even for one process (to check that the NCCL path
 * changes nothing: scripts/gpu-check.sh). */
static int nccl_wanted(const dist *d, int *force)
{
    const char *v = getenv("ANATOMY_DIST_NCCL");
    *force = v && !strcmp(v, "1");
    if (v && !strcmp(v, "0"))
        return 0;
    return dist_nccl_open && d->be && d->be->stream && d->be->stream(d->be);
}

/* Agrees on NCCL's unique id and joins the communicator, under the watchdog.
 * The id travels over MPI when MPI is linked and the launcher is one MPI
 * understands (mpirun, srun) and no --dist-init was given; otherwise through
 * dist_rendezvous (e->init, default tcp from MASTER_ADDR:MASTER_PORT). */
static int nccl_start(dist *d, const dist_env *e, dist_impl *im, char *err)
{
    unsigned char id[DIST_NCCL_ID_BYTES] = { 0 };
    int rc = -1;
    if (wd_start(d, err))
        return -1;
    wd_enter(d, "NCCL initialisation");
#ifdef DIST_HAVE_MPI
    if (d->world > 1 && !e->init &&
        (!strcmp(e->source, "mpirun") || !strcmp(e->source, "slurm"))) {
        if (mpi_start(d, im, err) || (d->rank == 0 && dist_nccl_new_id(id, err)))
            goto done;
        if (MPI_Bcast(id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD) != MPI_SUCCESS) {
            errf(err, "rank %d: MPI_Bcast of NCCL's unique id failed", d->rank);
            goto done;
        }
    } else
#endif
    if ((d->rank == 0 && dist_nccl_new_id(id, err)) ||
        dist_rendezvous(e, e->init ? e->init : "tcp", id, sizeof id, d->timeout_s, err))
        goto done;
    dist_nccl *c = dist_nccl_open(d, id, d->be->stream(d->be), err);
    if (!c)
        goto done;
    pthread_mutex_lock(&im->lock);
    im->nccl = c; /* the watchdog may poll and abort it from now on */
    pthread_mutex_unlock(&im->lock);
    d->transport = "nccl";
    rc = 0;
done:
    wd_leave(d);
    return rc;
}

dist *dist_init(const dist_env *e, backend *be, double timeout_s, char *err)
{
    dist *d = calloc(1, sizeof *d);
    dist_impl *im = calloc(1, sizeof *im);
    int force;
    if (!d || !im) {
        free(d);
        free(im);
        errf(err, "out of memory");
        return NULL;
    }
    d->rank = e->rank;
    d->world = e->world;
    d->local_rank = e->local_rank;
    d->source = e->source;
    d->transport = "single";
    d->be = be;
    d->timeout_s = timeout_s > 0 ? timeout_s : 300;
    d->impl = im;
    int nccl = nccl_wanted(d, &force);
    if (d->world == 1 && !(nccl && force))
        return d;
    if (nccl) {
        if (nccl_start(d, e, im, err))
            goto fail;
        if (d->world == 1)
            fprintf(stderr, "anatomy: rank 0: NCCL transport forced on for one process "
                            "(ANATOMY_DIST_NCCL=1)\n");
        return d;
    }
#ifdef DIST_HAVE_MPI
    if (mpi_start(d, im, err))
        goto fail;
    d->transport = "mpi";
    if (wd_start(d, err)) {
        MPI_Finalize();
        goto fail;
    }
    return d;
#else
    errf(err, "the environment (%s) asks for %d ranks but this anatomy was built without MPI "
              "(mk/dist.mk found no mpicc) and its %s backend has no NCCL: install "
              "libopenmpi-dev and rebuild, or run one process", d->source, d->world,
         be ? be->name : "");
    goto fail;
#endif
fail:
    wd_stop(im);
#ifdef DIST_HAVE_MPI
    if (im->mpi_up)
        MPI_Finalize();
#endif
    free(im);
    free(d);
    return NULL;
}

void dist_finalize(dist *d)
{
    if (!d)
        return;
    dist_impl *im = d->impl;
    wd_stop(im);
    if (im->nccl)
        dist_nccl_close(im->nccl);
#ifdef DIST_HAVE_MPI
    if (im->mpi_up)
        MPI_Finalize();
#endif
    free(im->stage);
    free(im->counts);
    free(im->displs);
    free(im);
    free(d);
}

int dist_active(const dist *d)
{
    return d && (d->world > 1 || ((dist_impl *)d->impl)->nccl);
}

/* ---- collectives ---- */

#ifdef DIST_HAVE_MPI
/* MPI counts are int: reduce in chunks. */
static int mpi_allreduce(void *v, size_t n, MPI_Datatype t, size_t esz)
{
    const size_t chunk = (size_t)1 << 30;
    for (size_t off = 0; off < n; off += chunk) {
        int cnt = (int)(n - off < chunk ? n - off : chunk);
        if (MPI_Allreduce(MPI_IN_PLACE, (char *)v + off * esz, cnt, t, MPI_SUM,
                          MPI_COMM_WORLD) != MPI_SUCCESS)
            return -1;
    }
    return 0;
}

/* Grows the staging buffer to `bytes` (it is reused by every call). */
static int stage_reserve(dist *d, size_t bytes, const char *what, char *err)
{
    dist_impl *im = d->impl;
    if (bytes <= im->stage_bytes)
        return 0;
    void *p = realloc(im->stage, bytes);
    if (!p)
        return errf(err, "rank %d: %s: out of memory for a %zu-byte staging buffer", d->rank,
                    what, bytes);
    im->stage = p;
    im->stage_bytes = bytes;
    return 0;
}

static int shard_counts(dist *d, size_t n, const char *what, char *err);
#endif

int dist_reserve(dist *d, size_t n, char *err)
{
    if (d->world == 1 || ((dist_impl *)d->impl)->nccl)
        return 0; /* NCCL's scratch was allocated when it started */
#ifdef DIST_HAVE_MPI
    backend *be = d->be;
    size_t esz = be->act == DT_F64 || be->opt == DT_F64 ? 8 : 4, lo, hi;
    dist_shard(d, d->rank, n, &lo, &hi);
    /* the largest user: reduce-scatter stages all n inputs plus its shard */
    return shard_counts(d, n, "staging", err) ||
           stage_reserve(d, (n + (hi - lo) + 1) * esz, "staging", err) ? -1 : 0;
#else
    (void)n, (void)err;
    return 0;
#endif
}

void dist_shard(const dist *d, int rank, size_t n, size_t *lo, size_t *hi)
{
    size_t s = (n + (size_t)d->world - 1) / (size_t)d->world;
    *lo = (size_t)rank * s < n ? (size_t)rank * s : n;
    *hi = *lo + s < n ? *lo + s : n;
}

#ifdef DIST_HAVE_MPI
/* MPI's per-rank counts and offsets of the partition of n; int-sized. */
static int shard_counts(dist *d, size_t n, const char *what, char *err)
{
    dist_impl *im = d->impl;
    if (n > (size_t)INT_MAX) /* MPI's counts and offsets are int */
        return errf(err, "rank %d: %s: %zu elements is more than ZeRO's MPI path shards "
                         "(%d)", d->rank, what, n, INT_MAX);
    if (!im->counts) {
        im->counts = malloc((size_t)d->world * sizeof *im->counts);
        im->displs = malloc((size_t)d->world * sizeof *im->displs);
        if (!im->counts || !im->displs)
            return errf(err, "rank %d: out of memory", d->rank);
    }
    for (int r = 0; r < d->world; r++) {
        size_t lo, hi;
        dist_shard(d, r, n, &lo, &hi);
        im->counts[r] = (int)(hi - lo);
        im->displs[r] = (int)lo;
    }
    return 0;
}
#endif

/* The NCCL transport's calls, bracketed by the watchdog; `what` names the
 * collective in errors. */
static int nccl_done(dist *d, int rc, const char *what, char *err)
{
    wd_leave(d);
    if (!rc)
        return 0;
    char inner[ERRBUF];
    const char *msg = inner, *p;
    snprintf(inner, sizeof inner, "%s", err);
    if (!strncmp(msg, "rank ", 5) && (p = strstr(msg, ": ")))
        msg = p + 2; /* dist_nccl's own "rank R: " */
    return errf(err, "rank %d: %s: %s", d->rank, what, msg);
}

int dist_reduce_scatter_buf(dist *d, void *buf, dtype t, size_t n, int mean, const char *what,
                            char *err)
{
    dist_impl *im = d->impl;
    if (im->nccl) {
        wd_enter(d, what);
        return nccl_done(d, dist_nccl_reduce_scatter(im->nccl, buf, t, n, mean, err), what, err);
    }
    if (d->world == 1)
        return 0;
#ifdef DIST_HAVE_MPI
    backend *be = d->be;
    dtype ht = t == DT_F64 ? DT_F64 : DT_F32;
    size_t esz = dtype_size(ht), lo, hi;
    dist_shard(d, d->rank, n, &lo, &hi);
    if (shard_counts(d, n, what, err) || stage_reserve(d, (n + (hi - lo) + 1) * esz, what, err))
        return -1;
    char *in = im->stage, *out = in + n * esz;
    be->download(be, in, ht, buf, t, n);
    wd_enter(d, what);
    int rc = MPI_Reduce_scatter(in, out, im->counts, ht == DT_F64 ? MPI_DOUBLE : MPI_FLOAT,
                                MPI_SUM, MPI_COMM_WORLD) != MPI_SUCCESS;
    wd_leave(d);
    if (rc)
        return errf(err, "rank %d: MPI_Reduce_scatter of %s failed", d->rank, what);
    if (mean) {
        if (ht == DT_F64)
            for (size_t i = 0; i < hi - lo; i++)
                ((double *)out)[i] /= d->world;
        else
            for (size_t i = 0; i < hi - lo; i++)
                ((float *)out)[i] *= 1.0f / (float)d->world;
    }
    be->upload(be, buf_at(buf, lo, t), t, out, ht, hi - lo);
    return 0;
#else
    (void)buf, (void)t, (void)n, (void)mean;
    return errf(err, "rank %d: %s: no transport for %d ranks", d->rank, what, d->world);
#endif
}

int dist_allgather_buf(dist *d, void *buf, dtype t, size_t n, const char *what, char *err)
{
    dist_impl *im = d->impl;
    if (im->nccl) {
        wd_enter(d, what);
        return nccl_done(d, dist_nccl_allgather(im->nccl, buf, t, n, err), what, err);
    }
    if (d->world == 1)
        return 0;
#ifdef DIST_HAVE_MPI
    backend *be = d->be;
    dtype ht = t == DT_F64 ? DT_F64 : DT_F32;
    size_t esz = dtype_size(ht), lo, hi;
    dist_shard(d, d->rank, n, &lo, &hi);
    if (shard_counts(d, n, what, err) || stage_reserve(d, (n + 1) * esz, what, err))
        return -1;
    be->download(be, (char *)im->stage + lo * esz, ht, buf_at(buf, lo, t), t, hi - lo);
    wd_enter(d, what);
    int rc = MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, im->stage, im->counts,
                            im->displs, ht == DT_F64 ? MPI_DOUBLE : MPI_FLOAT,
                            MPI_COMM_WORLD) != MPI_SUCCESS;
    wd_leave(d);
    if (rc)
        return errf(err, "rank %d: MPI_Allgatherv of %s failed", d->rank, what);
    be->upload(be, buf, t, im->stage, ht, n);
    return 0;
#else
    (void)buf, (void)t, (void)n;
    return errf(err, "rank %d: %s: no transport for %d ranks", d->rank, what, d->world);
#endif
}

int dist_allreduce_f64(dist *d, double *v, int n, int mean, const char *what, char *err)
{
    dist_impl *im = d->impl;
    if (im->nccl) {
        wd_enter(d, what);
        return nccl_done(d, dist_nccl_allreduce_host_f64(im->nccl, v, (size_t)n, mean, err),
                         what, err);
    }
    if (d->world == 1)
        return 0;
#ifdef DIST_HAVE_MPI
    wd_enter(d, what);
    int rc = mpi_allreduce(v, (size_t)n, MPI_DOUBLE, sizeof *v);
    wd_leave(d);
    if (rc)
        return errf(err, "rank %d: MPI_Allreduce of %s failed", d->rank, what);
    if (mean)
        for (int i = 0; i < n; i++)
            v[i] /= d->world;
    return 0;
#else
    (void)v, (void)n, (void)mean;
    return errf(err, "rank %d: %s: no transport for %d ranks", d->rank, what, d->world);
#endif
}

int dist_allreduce_buf(dist *d, void *buf, size_t n, int mean, const char *what, char *err)
{
    dist_impl *im = d->impl;
    if (im->nccl) {
        wd_enter(d, what);
        return nccl_done(d, dist_nccl_allreduce(im->nccl, buf, d->be->act, n, mean, err), what,
                         err);
    }
    if (d->world == 1)
        return 0;
#ifdef DIST_HAVE_MPI
    backend *be = d->be;
    dtype ht = be->act == DT_F64 ? DT_F64 : DT_F32;
    if (stage_reserve(d, n * dtype_size(ht), what, err))
        return -1;
    be->download(be, im->stage, ht, buf, be->act, n);
    wd_enter(d, what);
    int rc = mpi_allreduce(im->stage, n, ht == DT_F64 ? MPI_DOUBLE : MPI_FLOAT, dtype_size(ht));
    wd_leave(d);
    if (rc)
        return errf(err, "rank %d: MPI_Allreduce of %s failed", d->rank, what);
    if (mean) {
        if (ht == DT_F64) {
            double *s = im->stage;
            for (size_t i = 0; i < n; i++)
                s[i] /= d->world;
        } else {
            float *s = im->stage, inv = 1.0f / (float)d->world;
            /* a power-of-two world scales exactly; others round once here */
            for (size_t i = 0; i < n; i++)
                s[i] *= inv;
        }
    }
    be->upload(be, buf, be->act, im->stage, ht, n);
    return 0;
#else
    (void)buf, (void)n, (void)mean;
    return errf(err, "rank %d: %s: no transport for %d ranks", d->rank, what, d->world);
#endif
}

int dist_bcast_f32(dist *d, float *v, size_t n, int root, const char *what, char *err)
{
    dist_impl *im = d->impl;
    if (im->nccl) {
        wd_enter(d, what);
        return nccl_done(d, dist_nccl_bcast_host_f32(im->nccl, v, n, root, err), what, err);
    }
    if (d->world == 1)
        return 0;
#ifdef DIST_HAVE_MPI
    const size_t chunk = (size_t)1 << 30;
    int rc = 0;
    wd_enter(d, what);
    for (size_t off = 0; off < n && !rc; off += chunk) {
        int cnt = (int)(n - off < chunk ? n - off : chunk);
        rc = MPI_Bcast(v + off, cnt, MPI_FLOAT, root, MPI_COMM_WORLD) != MPI_SUCCESS;
    }
    wd_leave(d);
    if (rc)
        return errf(err, "rank %d: MPI_Bcast of %s failed", d->rank, what);
    return 0;
#else
    (void)v, (void)n, (void)root;
    return errf(err, "rank %d: %s: no transport for %d ranks", d->rank, what, d->world);
#endif
}

int dist_barrier(dist *d, const char *what, char *err)
{
    dist_impl *im = d->impl;
    if (im->nccl) {
        double one = 1;
        wd_enter(d, what);
        return nccl_done(d, dist_nccl_allreduce_host_f64(im->nccl, &one, 1, 0, err), what, err);
    }
    if (d->world == 1)
        return 0;
#ifdef DIST_HAVE_MPI
    wd_enter(d, what);
    int rc = MPI_Barrier(MPI_COMM_WORLD) != MPI_SUCCESS;
    wd_leave(d);
    if (rc)
        return errf(err, "rank %d: MPI_Barrier (%s) failed", d->rank, what);
    return 0;
#else
    return errf(err, "rank %d: %s: no transport for %d ranks", d->rank, what, d->world);
#endif
}

/* Under NCCL: queued on the communication stream (dist_nccl_bucket), so that
 * it overlaps the rest of backward; the watchdog covers the enqueue, which
 * blocks when the transport is synchronous (the emulator's). Elsewhere: a
 * no-op, the whole buffer is reduced by dist_allreduce_buf. */
void dist_bucket_ready(dist *d, void *grads, size_t offset, size_t n)
{
    dist_impl *im = d->impl;
    if (!im->nccl)
        return;
    wd_enter(d, "gradient bucket");
    dist_nccl_bucket(im->nccl, grads, d->be->act, offset, n);
    wd_leave(d);
}

void dist_fault_point(dist *d, int step)
{
    const char *s = getenv("ANATOMY_DIST_FAULT");
    char kind[16];
    int r, at;
    if (!s || sscanf(s, "%15[a-z]:%d:%d", kind, &r, &at) != 3 || r != d->rank || at != step)
        return;
    fflush(stdout);
    if (!strcmp(kind, "exit")) {
        fprintf(stderr, "anatomy: error: rank %d: injected fault at step %d "
                        "(ANATOMY_DIST_FAULT)\n", d->rank, step);
        exit(3);
    } else if (!strcmp(kind, "kill")) {
        raise(SIGKILL);
    } else if (!strcmp(kind, "stop")) {
        raise(SIGSTOP); /* frozen, watchdog included: a peer's must notice */
    } else if (!strcmp(kind, "hang")) {
        for (;;)
            pause();
    }
}

/* ---- rendezvous (NCCL's unique id without MPI) ---- */

#define RDV_MAGIC 0x414e5244u /* "ANRD" */
#define RDV_MAXLEN 4096

static double mono_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* Reads or writes exactly n bytes on fd before `deadline`; -1 on error,
 * end of stream or timeout. */
static int io_full(int fd, void *buf, size_t n, int writing, double deadline)
{
    char *p = buf;
    while (n) {
        struct pollfd pf = { fd, writing ? POLLOUT : POLLIN, 0 };
        int ms = (int)((deadline - mono_s()) * 1e3);
        if (ms <= 0 || poll(&pf, 1, ms) <= 0)
            return -1;
        ssize_t k = writing ? send(fd, p, n, MSG_NOSIGNAL) : recv(fd, p, n, 0);
        if (k < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static int rdv_port(char *port, size_t n, char *err)
{
    const char *s = getenv("MASTER_PORT");
    char *end;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || end == s || *end || v < 1 || v > 65535)
        return errf(err, "MASTER_PORT: '%s' is not a port number (1-65535)", s ? s : "");
    snprintf(port, n, "%ld", v);
    return 0;
}

/* Rank 0: accept world-1 peers, check each one's hello, send them the blob. */
static int rdv_tcp_serve(const dist_env *e, const char *port, const void *blob, uint32_t len,
                         double deadline, char *err)
{
    struct addrinfo hints = { 0 }, *ai = NULL;
    int fd = -1, one = 1, rc = -1, served = 0;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    if (getaddrinfo(NULL, port, &hints, &ai))
        return errf(err, "MASTER_PORT %s: cannot resolve a local address", port);
    for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0)
            continue;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) || listen(fd, 128)) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(ai);
    if (fd < 0)
        return errf(err, "rank 0: cannot listen on MASTER_PORT %s: %s", port, strerror(errno));
    uint32_t head[2] = { RDV_MAGIC, len };
    char *seen = calloc((size_t)e->world, 1);
    if (!seen) {
        close(fd);
        return errf(err, "rank 0: out of memory");
    }
    while (served < e->world - 1) {
        struct pollfd pf = { fd, POLLIN, 0 };
        int ms = (int)((deadline - mono_s()) * 1e3), c;
        uint32_t hello[2];
        if (ms <= 0 || poll(&pf, 1, ms) <= 0) {
            errf(err, "rank 0: only %d of %d ranks connected to port %s in time", served,
                 e->world - 1, port);
            goto done;
        }
        c = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0)
            continue;
        /* a stray connection (port scanner, old job) is dropped, not fatal */
        if (!io_full(c, hello, sizeof hello, 0, deadline) && hello[0] == RDV_MAGIC &&
            hello[1] > 0 && hello[1] < (uint32_t)e->world &&
            !io_full(c, head, sizeof head, 1, deadline) &&
            !io_full(c, (void *)blob, len, 1, deadline) && !seen[hello[1]]) {
            seen[hello[1]] = 1;
            served++;
        }
        close(c);
    }
    rc = 0;
done:
    free(seen);
    close(fd);
    return rc;
}

/* Other ranks: connect to MASTER_ADDR:MASTER_PORT until rank 0 answers. */
static int rdv_tcp_fetch(const dist_env *e, const char *port, void *blob, uint32_t len,
                         double deadline, char *err)
{
    const char *host = getenv("MASTER_ADDR");
    struct addrinfo hints = { 0 }, *ai = NULL;
    if (!host || !*host)
        return errf(err, "MASTER_ADDR: not set (rank 0's host name or address)");
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, port, &hints, &ai))
        return errf(err, "MASTER_ADDR %s: cannot resolve it", host);
    int rc = -1;
    while (rc && mono_s() < deadline) {
        for (struct addrinfo *a = ai; a && rc; a = a->ai_next) {
            int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
            uint32_t hello[2] = { RDV_MAGIC, (uint32_t)e->rank }, head[2];
            if (fd < 0)
                continue;
            if (!connect(fd, a->ai_addr, a->ai_addrlen) &&
                !io_full(fd, hello, sizeof hello, 1, deadline) &&
                !io_full(fd, head, sizeof head, 0, deadline) && head[0] == RDV_MAGIC &&
                head[1] == len && !io_full(fd, blob, len, 0, deadline))
                rc = 0;
            close(fd);
        }
        if (rc)
            usleep(100 * 1000); /* rank 0 not listening yet */
    }
    freeaddrinfo(ai);
    if (rc)
        return errf(err, "rank %d: no rendezvous with rank 0 at %s:%s in time", e->rank, host,
                    port);
    return 0;
}

static int rdv_file(const dist_env *e, const char *path, void *blob, uint32_t len,
                    double deadline, char *err)
{
    uint32_t head[2];
    if (e->rank == 0) {
        char tmp[4200];
        int n = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
        if (n < 0 || (size_t)n >= sizeof tmp)
            return errf(err, "--dist-init file:%s: path too long", path);
        FILE *f = fopen(tmp, "wb");
        head[0] = RDV_MAGIC;
        head[1] = len;
        if (!f || fwrite(head, sizeof head, 1, f) != 1 || fwrite(blob, len, 1, f) != 1 ||
            fflush(f) || fsync(fileno(f))) {
            if (f)
                fclose(f);
            unlink(tmp);
            return errf(err, "--dist-init file:%s: cannot write: %s", path, strerror(errno));
        }
        fclose(f);
        if (rename(tmp, path)) {
            unlink(tmp);
            return errf(err, "--dist-init file:%s: %s", path, strerror(errno));
        }
        return 0;
    }
    for (;;) {
        FILE *f = fopen(path, "rb");
        if (f) {
            int ok = fread(head, sizeof head, 1, f) == 1 && head[0] == RDV_MAGIC &&
                     head[1] == len && fread(blob, len, 1, f) == 1 && fgetc(f) == EOF;
            fclose(f);
            if (ok)
                return 0;
            return errf(err, "--dist-init file:%s: not a rendezvous file of %u bytes", path,
                        len);
        }
        if (mono_s() >= deadline)
            return errf(err, "rank %d: --dist-init file:%s: rank 0 did not write it in time",
                        e->rank, path);
        usleep(50 * 1000);
    }
}

int dist_rendezvous(const dist_env *e, const char *spec, void *blob, size_t len,
                    double timeout_s, char *err)
{
    double deadline = mono_s() + (timeout_s > 0 ? timeout_s : 300);
    char port[16];
    if (e->world == 1)
        return 0;
    if (len == 0 || len > RDV_MAXLEN)
        return errf(err, "rendezvous: %zu bytes is not in [1, %d]", len, RDV_MAXLEN);
    if (!strncmp(spec, "file:", 5) && spec[5])
        return rdv_file(e, spec + 5, blob, (uint32_t)len, deadline, err);
    if (strcmp(spec, "tcp"))
        return errf(err, "--dist-init: '%s' is not tcp or file:PATH", spec);
    if (rdv_port(port, sizeof port, err))
        return -1;
    return e->rank == 0 ? rdv_tcp_serve(e, port, blob, (uint32_t)len, deadline, err)
                        : rdv_tcp_fetch(e, port, blob, (uint32_t)len, deadline, err);
}
