/* dist.c: rank detection, the MPI transport and the collective watchdog.
 * See dist.h for the contract; the world-1 transport is the identity. */
#include "dist.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef DIST_HAVE_MPI
#include <mpi.h>
#endif

#include "../data/errbuf.h"

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

int dist_env_detect(dist_env *e, char *err)
{
    int rc;
    e->rank = 0;
    e->world = 1;
    e->local_rank = 0;
    e->source = "none";
    rc = env_triple("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", NULL,
                    "OMPI_COMM_WORLD_LOCAL_RANK", e, err);
    if (rc)
        return rc < 0 ? -1 : (e->source = "mpirun", 0);
    /* inside an sbatch script SLURM_NTASKS is the allocation's task count even
     * for the one batch process; srun's step count is the one that matters */
    rc = env_triple("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_LOCALID", e,
                    err);
    if (rc)
        return rc < 0 ? -1 : (e->source = "slurm", 0);
    rc = env_triple("RANK", "WORLD_SIZE", NULL, "LOCAL_RANK", e, err);
    if (rc)
        return rc < 0 ? -1 : (e->source = "torchrun", 0);
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
    int thread_multiple;    /* MPI_Abort may be called from the watchdog */
    double spent_s;         /* seconds spent inside collectives (for the log) */
    void *stage;            /* host staging buffer for device reductions */
    size_t stage_bytes;
} dist_impl;

#ifdef DIST_HAVE_MPI
static double seconds_since(const struct timespec *t)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t->tv_sec) + (now.tv_nsec - t->tv_nsec) / 1e9;
}

static void *watchdog_main(void *arg)
{
    dist *d = arg;
    dist_impl *im = d->impl;
    pthread_mutex_lock(&im->lock);
    while (!im->stop) {
        struct timespec wake;
        clock_gettime(CLOCK_REALTIME, &wake);
        wake.tv_nsec += 250 * 1000 * 1000;
        if (wake.tv_nsec >= 1000000000L) {
            wake.tv_sec++;
            wake.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&im->cond, &im->lock, &wake);
        double t = im->stop ? 0 : seconds_since(&im->since);
        /* A rank stuck outside communication names itself; the ranks waiting
         * for it give it a second's grace to do so before they report. */
        if (im->what && t >= d->timeout_s + 1.0)
            fprintf(stderr, "anatomy: error: rank %d: collective %s timed out after %.0f s "
                            "(another rank died or hangs; --dist-timeout sets the limit)\n",
                    d->rank, im->what, t);
        else if (!im->what && t >= d->timeout_s)
            fprintf(stderr, "anatomy: error: rank %d: reached no collective for %.0f s (this "
                            "rank is stuck outside communication; --dist-timeout sets the "
                            "limit)\n", d->rank, t);
        else
            continue;
        fflush(stderr);
#ifdef DIST_HAVE_MPI
        if (im->thread_multiple)
            MPI_Abort(MPI_COMM_WORLD, 1);
#endif
        _exit(1); /* mpirun ends the job when a rank exits non-zero */
    }
    pthread_mutex_unlock(&im->lock);
    return NULL;
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
                  "with mpirun or srun --mpi=pmix (torchrun-style launches need the NCCL "
                  "transport, which is not built yet)", d->source, d->rank, d->world, rank,
             size);
        MPI_Finalize();
        return -1;
    }
    return 0;
}
#endif

dist *dist_init(const dist_env *e, backend *be, double timeout_s, char *err)
{
    dist *d = calloc(1, sizeof *d);
    dist_impl *im = calloc(1, sizeof *im);
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
    if (d->world == 1)
        return d;
#ifdef DIST_HAVE_MPI
    if (mpi_start(d, im, err))
        goto fail;
    d->transport = "mpi";
    pthread_mutex_init(&im->lock, NULL);
    clock_gettime(CLOCK_MONOTONIC, &im->since);
    pthread_cond_init(&im->cond, NULL);
    if (pthread_create(&im->thread, NULL, watchdog_main, d)) {
        errf(err, "rank %d: cannot start the collective watchdog thread", d->rank);
        MPI_Finalize();
        goto fail;
    }
    im->started = 1;
    return d;
#else
    errf(err, "the environment (%s) asks for %d ranks but this anatomy was built without MPI "
              "(mk/dist.mk found no mpicc): install libopenmpi-dev and rebuild, or run one "
              "process", d->source, d->world);
    goto fail;
#endif
fail:
    free(im);
    free(d);
    return NULL;
}

void dist_finalize(dist *d)
{
    if (!d)
        return;
    dist_impl *im = d->impl;
    if (im->started) {
        pthread_mutex_lock(&im->lock);
        im->stop = 1;
        pthread_cond_signal(&im->cond);
        pthread_mutex_unlock(&im->lock);
        pthread_join(im->thread, NULL);
        pthread_mutex_destroy(&im->lock);
        pthread_cond_destroy(&im->cond);
    }
#ifdef DIST_HAVE_MPI
    if (!strcmp(d->transport, "mpi"))
        MPI_Finalize();
#endif
    free(im->stage);
    free(im);
    free(d);
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
#endif

int dist_allreduce_f64(dist *d, double *v, int n, int mean, const char *what, char *err)
{
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
    if (d->world == 1)
        return 0;
#ifdef DIST_HAVE_MPI
    dist_impl *im = d->impl;
    backend *be = d->be;
    dtype ht = be->act == DT_F64 ? DT_F64 : DT_F32;
    size_t bytes = n * dtype_size(ht);
    if (bytes > im->stage_bytes) {
        void *p = realloc(im->stage, bytes);
        if (!p)
            return errf(err, "rank %d: %s: out of memory for a %zu-byte staging buffer",
                        d->rank, what, bytes);
        im->stage = p;
        im->stage_bytes = bytes;
    }
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

void dist_bucket_ready(dist *d, void *grads, size_t offset, size_t n)
{
    (void)d, (void)grads, (void)offset, (void)n;
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
    } else if (!strcmp(kind, "hang")) {
        for (;;)
            pause();
    }
}
