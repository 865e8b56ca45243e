/* dist.h: the communicator for data-parallel training.
 *
 * Who am I: rank, world size and local rank come from the launcher's
 * environment (dist_env_detect), in this order of precedence:
 *   mpirun     OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK
 *   Slurm      SLURM_PROCID, SLURM_STEP_NUM_TASKS (else SLURM_NTASKS), SLURM_LOCALID
 *   torchrun   RANK, WORLD_SIZE, LOCAL_RANK (MASTER_ADDR, MASTER_PORT for NCCL's rendezvous)
 * and none of them means one process (rank 0 of 1).
 *
 * Transports: "single" (world 1: every collective is the identity and nothing
 * is initialised, so a plain run needs no mpirun) and "mpi" (OpenMPI, when the
 * build found it: mk/dist.mk defines DIST_HAVE_MPI). MPI is initialised only
 * when world > 1. A build without MPI refuses world > 1 with a clear error.
 * NCCL for the CUDA backend is meant to plug in as a third transport behind
 * the same calls; it is not written yet. Its unique id will travel over MPI
 * when linked (dist_bcast), else through dist_rendezvous below (TCP from rank
 * 0 at MASTER_ADDR:MASTER_PORT, or a file on a shared filesystem), which is
 * written and tested already.
 *
 * A watchdog thread per rank (world > 1) ends the whole job (MPI_Abort) when
 *   - a rank reaches no collective for the timeout (it is stuck in compute or
 *     I/O; the hang names itself):
 *       anatomy: error: rank R: reached no collective for N s ...
 *   - a collective has not completed after the timeout + 1 s (the second lets
 *     a stuck rank name itself first):
 *       anatomy: error: rank R: collective <what> timed out after N s ...
 * The timeout therefore bounds any stretch between collectives too (model
 * loading, a checkpoint write, a sample): --dist-timeout must exceed them.
 * A rank that dies is caught by mpirun, which ends the job and names it
 * ("process rank R ... exited on signal 9", or the exit code of rank R).
 *
 * Device buffers are reduced through a host staging buffer (fp32, or fp64 for
 * fp64 buffers) that is allocated on first use and reused: download,
 * MPI_Allreduce in place (or MPI_Reduce_scatter / MPI_Allgatherv), upload. Overlapping the gradient all-reduce with
 * backward (buckets reduced as soon as backward has produced them, on a
 * second CUDA stream) is the CUDA transport's job; dist_bucket_ready below is
 * its entry point and is a no-op today (the loop reduces once, after the
 * accumulation loop).
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
    const char *init;   /* --dist-init: how NCCL's unique id travels when MPI is not
                         * linked: "tcp" (MASTER_ADDR:MASTER_PORT) or "file:PATH";
                         * NULL: MPI when linked, else tcp. Set by the caller after
                         * dist_env_detect. */
} dist_env;

typedef struct dist dist;
struct dist {
    int rank, world, local_rank;
    const char *source;     /* as dist_env */
    const char *transport;  /* "single" or "mpi" */
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

/* Joins the job described by `e`: world 1 initialises nothing; world > 1
 * initialises MPI (and checks that MPI agrees with the environment) and starts
 * the watchdog. timeout_s > 0. Returns NULL with err on failure. */
dist *dist_init(const dist_env *e, backend *be, double timeout_s, char *err);

/* Allocates, before the first step, the host staging the collectives below
 * need for buffers of up to n elements, so that no step allocates. */
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

/* Overlap hook for the CUDA transport: [offset, offset+n) of the gradient
 * buffer is final for this step and may be reduced now. No-op for now. */
void dist_bucket_ready(dist *d, void *grads, size_t offset, size_t n);

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
