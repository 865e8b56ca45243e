/* dist.h: the communicator for data-parallel training.
 *
 * Who am I: rank, world size and local rank come from the launcher's
 * environment (dist_env_detect), in this order of precedence:
 *   mpirun     OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK
 *   Slurm      SLURM_PROCID, SLURM_STEP_NUM_TASKS (else SLURM_NTASKS), SLURM_LOCALID
 *   torchrun   RANK, WORLD_SIZE, LOCAL_RANK (MASTER_ADDR, MASTER_PORT for NCCL's rendezvous)
 * and none of them means one process (rank 0 of 1).
 *
 * Transports, chosen by dist_init:
 *   "single"  world 1: every collective is the identity and nothing is
 *             initialised, so a plain run needs no launcher.
 *   "nccl"    the CUDA backend (backend->stream != NULL) in a build that has
 *             host/dist_nccl.c (build/anatomy-cuda against libnccl,
 *             build/anatomy-emu against the emulator's NCCL): collectives on
 *             device buffers on a second stream, gradient buckets reduced
 *             while backward goes on (dist_bucket_ready). NCCL's unique id
 *             travels over MPI when MPI is linked and the launcher is mpirun or
 *             Slurm and no --dist-init was given; otherwise through
 *             dist_rendezvous (e->init, default tcp: MASTER_ADDR:MASTER_PORT),
 *             so a torchrun-style launch, or a build without MPI, runs
 *             multi-process too. Host scalars (losses, the start-up parameter
 *             broadcast) go through a small device buffer.
 *             ANATOMY_DIST_NCCL=1 uses it even for one process (gpu-check:
 *             the NCCL path must change nothing); =0 never (MPI below).
 *   "mpi"     OpenMPI, when the build found it (mk/dist.mk defines
 *             DIST_HAVE_MPI): device buffers through a host staging buffer
 *             (fp32, or fp64 for fp64 buffers) allocated by dist_reserve:
 *             download, MPI_Allreduce in place (or MPI_Reduce_scatter /
 *             MPI_Allgatherv), upload. Initialised only when world > 1.
 * A world > 1 with neither is refused with a clear error.
 *
 * A watchdog thread per rank (world > 1, or NCCL) ends the whole job (NCCL:
 * ncclCommAbort; MPI: MPI_Abort; then exit 1) when
 *   - a rank reaches no collective for the timeout (it is stuck in compute or
 *     I/O; the hang names itself):
 *       anatomy: error: rank R: reached no collective for N s ...
 *   - a collective has not completed after the timeout + 1 s (the second lets
 *     a stuck rank name itself first):
 *       anatomy: error: rank R: collective <what> timed out after N s ...
 *   - NCCL reports an asynchronous error (ncclCommGetAsyncError, polled
 *     every 250 ms; a peer that aborted, a network error):
 *       anatomy: error: rank R: NCCL: <NCCL's message> ...
 * NCCL collectives are asynchronous; every dist_* call below waits for its
 * collective to complete before returning (bucket all-reduces are waited for
 * by the dist_allreduce_buf that ends the step), so "completed" is what the
 * timeout bounds on every transport.
 * The timeout therefore bounds any stretch between collectives too (model
 * loading, a checkpoint write, a sample): --dist-timeout must exceed them.
 * A rank that dies is caught by mpirun, which ends the job and names it
 * ("process rank R ... exited on signal 9", or the exit code of rank R);
 * without mpirun, by the others' watchdogs (their next collective times out).
 */
#ifndef ANATOMY_DIST_H
#define ANATOMY_DIST_H

#include <stddef.h>

#include "../kernels/ops.h"

/* Where a process learned its place in the job. */
typedef struct {
    int rank, world, local_rank;
    int local_world;    /* ranks on this node (OMPI_COMM_WORLD_LOCAL_SIZE,
                         * SLURM_STEP_TASKS_PER_NODE, LOCAL_WORLD_SIZE);
                         * 0 when the launcher does not say */
    const char *source; /* "mpirun", "slurm", "torchrun" or "none" */
    const char *init;   /* --dist-init: how NCCL's unique id travels: "tcp"
                         * (MASTER_ADDR:MASTER_PORT) or "file:PATH", used even
                         * when MPI is linked; NULL: MPI when linked and the
                         * launcher is mpirun or Slurm, else tcp. dist_env_detect
                         * sets NULL; the caller sets it after. */
} dist_env;

typedef struct dist dist;
struct dist {
    int rank, world, local_rank;
    const char *source;     /* as dist_env */
    const char *transport;  /* "single", "nccl" or "mpi" */
    backend *be;            /* whose buffers dist_allreduce_buf reduces */
    double timeout_s;       /* watchdog limit per collective */
    void *impl;             /* the transport's state */
};

/* 1 when this build can run world > 1 on the CPU (MPI linked in). */
int dist_have_mpi(void);

/* Reads rank / world / local rank from the environment (see above). Starts
 * nothing. Returns 0, or -1 with err naming the variable that is malformed
 * or inconsistent (e.g. RANK >= WORLD_SIZE). */
int dist_env_detect(dist_env *e, char *err);

/* Joins the job described by `e` with the transport chosen above: world 1
 * initialises nothing (unless NCCL is forced); NCCL agrees on its id and
 * joins the communicator; MPI is initialised and checked against the
 * environment; both start the watchdog. timeout_s > 0. Returns NULL with err
 * on failure. */
dist *dist_init(const dist_env *e, backend *be, double timeout_s, char *err);

/* Allocates, before the first step, the host staging the collectives below
 * need for buffers of up to n elements, so that no step allocates (MPI; NCCL
 * allocated its fixed scratch when it started). */
int dist_reserve(dist *d, size_t n, char *err);

/* Element-wise sum (mean: then divided by world) of a device buffer of n
 * elements of be->act across ranks, in place, on every rank. */
int dist_allreduce_buf(dist *d, void *buf, size_t n, int mean, const char *what, char *err);
/* The same for n host doubles (losses, counters). */
int dist_allreduce_f64(dist *d, double *v, int n, int mean, const char *what, char *err);
/* Rank root's n host floats to every rank. */
int dist_bcast_f32(dist *d, float *v, size_t n, int root, const char *what, char *err);
int dist_barrier(dist *d, const char *what, char *err);

/* ZeRO stage 1's partition of n elements: rank r owns [lo, hi) with
 * S = ceil(n / world), lo = min(r*S, n), hi = min(lo + S, n). */
void dist_shard(const dist *d, int rank, size_t n, size_t *lo, size_t *hi);
/* Sum (mean: divided by world) across ranks of the device buffer buf [n] of
 * type t, scattered: on return this rank's shard of buf (dist_shard) holds
 * its part of the result; the rest of buf is left as it was. */
int dist_reduce_scatter_buf(dist *d, void *buf, dtype t, size_t n, int mean, const char *what,
                            char *err);
/* Each rank's shard of buf [n] (type t) to every rank: on return buf is the
 * concatenation of the owners' shards. */
int dist_allgather_buf(dist *d, void *buf, dtype t, size_t n, const char *what, char *err);

/* Overlap hook: [offset, offset+n) of the gradient buffer grads (type
 * be->act) is final for this step and its mean over ranks may start now.
 * NCCL queues it on the communication stream and returns; the
 * dist_allreduce_buf(grads, ..., mean 1) that ends the step waits for it and
 * reduces only what no bucket covered. Other transports: a no-op. Ranges
 * must be disjoint within a step (an overlapping one is left to the end). */
void dist_bucket_ready(dist *d, void *grads, size_t offset, size_t n);

/* 1 when collectives do something: world > 1, or NCCL forced on for one
 * process (ANATOMY_DIST_NCCL=1). The trainer reduces only then. */
int dist_active(const dist *d);

/* Test-only fault injection, from ANATOMY_DIST_FAULT="KIND:RANK:STEP" with
 * KIND exit (exit code 3 after a message), kill (SIGKILL itself, no message),
 * hang (sleep forever outside any collective) or stop (SIGSTOP itself: the
 * whole process freezes, its watchdog too, as on a frozen node). Called at the start of
 * each step; does nothing unless the variable names this rank and step. */
void dist_fault_point(dist *d, int step);

/* NCCL's bootstrap without MPI: rank 0's len-byte blob (an ncclUniqueId)
 * reaches every rank of e. spec:
 *   "tcp"        rank 0 listens on MASTER_PORT; the others connect to
 *                MASTER_ADDR:MASTER_PORT (retrying until rank 0 is up) and
 *                read it
 *   "file:PATH"  rank 0 writes PATH atomically; the others wait for it. PATH
 *                must be new for each job (put the job id in it): a stale
 *                file from an earlier job would be read as this one's.
 * On rank 0 blob is the input, elsewhere the output. Gives up after
 * timeout_s with err naming the address or file. World 1 does nothing. */
int dist_rendezvous(const dist_env *e, const char *spec, void *blob, size_t len,
                    double timeout_s, char *err);

/* Leaves the job (MPI_Finalize when it was initialised) and frees d. */
void dist_finalize(dist *d);

#endif
