/* dist_nccl.h: the NCCL transport behind dist.h, for the CUDA backend.
 *
 * Called only by dist.c, which references these symbols weakly: host/dist_nccl.c
 * is compiled into the builds that have the CUDA backend (build/anatomy-cuda
 * against libnccl, build/anatomy-emu against the emulator's NCCL,
 * kernels/cuda/emu/nccl_emu.cpp) and into no other, so the CPU build needs no
 * CUDA or NCCL headers and sees dist_nccl_open == NULL.
 *
 * Buffers are device buffers of the backend; collectives run on a second
 * ("communication") stream that first waits for everything queued so far on
 * the backend's stream, and the backend's stream then waits for them. Every
 * call below except dist_nccl_bucket also makes the host wait until the
 * collective has completed, so that a collective that never completes is
 * caught by dist.c's watchdog around it (and the next step needs the result
 * anyway: the gradient norm, the optimizer). Errors: -1 and err. */
#ifndef ANATOMY_DIST_NCCL_H
#define ANATOMY_DIST_NCCL_H

#include <stddef.h>

#include "dist.h"

#define DIST_NCCL_ID_BYTES 128 /* sizeof(ncclUniqueId) */

typedef struct dist_nccl dist_nccl;

/* A fresh unique id (rank 0), to be sent to the other ranks. */
int dist_nccl_new_id(void *id, char *err);
/* Joins the communicator of d->world ranks named by id as d->rank, queuing on
 * `stream` (backend->stream). Blocks until every rank has joined. */
dist_nccl *dist_nccl_open(const dist *d, const void *id, void *stream, char *err);
void dist_nccl_close(dist_nccl *c);
/* From the watchdog thread: aborts the communicator so that no collective of
 * this process waits on it any longer. The process is about to exit. */
void dist_nccl_abort(dist_nccl *c);
/* NCCL's asynchronous error (a peer failed, a network error), as text, or
 * NULL when there is none. Safe from the watchdog thread. */
const char *dist_nccl_async_error(dist_nccl *c);

/* In place on buf [n] of type t: sum (mean: average) over ranks. Finishes the
 * buckets queued on buf since the last call and reduces only the rest. */
int dist_nccl_allreduce(dist_nccl *c, void *buf, dtype t, size_t n, int mean, char *err);
/* Queues the average over ranks of buf[off, off+n) on the communication
 * stream after what the backend's stream has queued so far, and returns. A
 * range that overlaps one already queued is left for dist_nccl_allreduce. */
void dist_nccl_bucket(dist_nccl *c, void *buf, dtype t, size_t off, size_t n);
/* dist_reduce_scatter_buf / dist_allgather_buf on dist_shard's partition. */
int dist_nccl_reduce_scatter(dist_nccl *c, void *buf, dtype t, size_t n, int mean, char *err);
int dist_nccl_allgather(dist_nccl *c, void *buf, dtype t, size_t n, char *err);
/* Host data, through a device buffer: sum (mean: then divided by the world,
 * on the host, as the MPI transport does) of n doubles; rank root's n floats
 * to every rank. */
int dist_nccl_allreduce_host_f64(dist_nccl *c, double *v, size_t n, int mean, char *err);
int dist_nccl_bcast_host_f32(dist_nccl *c, float *v, size_t n, int root, char *err);

#endif
