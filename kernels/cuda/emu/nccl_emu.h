/* nccl_emu.h: the emulator's NCCL, and the C view of the emulated runtime
 * that NCCL's callers need.
 *
 * build/anatomy-emu has no GPU and no libnccl, yet its ranks are separate
 * processes (mpirun, or a torchrun-style launch): nccl_emu.cpp implements the
 * subset of nccl.h that host/dist_nccl.c calls, across processes, through a
 * POSIX shared-memory segment named by the unique id. Types, enum values and
 * signatures are those of the real nccl.h (2.x), so the same caller compiles
 * against either.
 *
 * Semantics kept: every collective is queued on its stream and runs in that
 * stream's order, when the emulated runtime runs it (when called, or once
 * work ordered after it needs it, by a seeded coin; emu_stream_enqueue in
 * emu.h), and
 * reads its inputs then; the buffers it reads and writes go through the
 * runtime's cross-stream race check; a failure while it runs is reported by
 * ncclCommGetAsyncError and the next synchronisation of its stream; all
 * ranks must call the same collectives in
 * the same order; ncclAvg is the sum times 1/nranks; sums run in rank order
 * in float (double for ncclFloat64), so every rank gets the same bits;
 * in-place operations (recvbuff == sendbuff, or recvbuff == sendbuff +
 * rank*recvcount for the scattered ones) are allowed. ncclGroupStart/End
 * only count nesting (each call already completes on its own, and every rank
 * issues them in one order, so grouping cannot deadlock).
 * Not emulated: a peer that dies leaves the others waiting, as real NCCL
 * does; ncclCommAbort (from any thread) wakes the waiters of this process
 * and of the others with ncclRemoteError, and ncclCommGetAsyncError then
 * reports it.
 *
 * Host C code (host/dist_nccl.c compiled with -DANATOMY_EMU) includes this
 * header instead of <cuda_runtime_api.h> and <nccl.h>; C++ gets the runtime
 * from emu.h. */
#ifndef ANATOMY_NCCL_EMU_H
#define ANATOMY_NCCL_EMU_H

#include <stddef.h>

#ifdef __cplusplus
#include "emu.h"
extern "C" {
#else
/* The emulated runtime's C entry points (emu.cpp defines them extern "C");
 * only what a NCCL caller uses. */
typedef enum { cudaSuccess = 0, cudaErrorNotReady = 600 } cudaError_t;
enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};
#define cudaStreamNonBlocking 0x01
#define cudaEventDisableTiming 0x02
typedef struct emu_stream *cudaStream_t;
typedef struct emu_event *cudaEvent_t;
cudaError_t cudaMalloc(void **p, size_t n);
cudaError_t cudaFree(void *p);
cudaError_t cudaMallocHost(void **p, size_t n);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind,
                            cudaStream_t s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
const char *cudaGetErrorString(cudaError_t e);
#endif

#define NCCL_UNIQUE_ID_BYTES 128
typedef struct { char internal[NCCL_UNIQUE_ID_BYTES]; } ncclUniqueId;
typedef struct ncclComm *ncclComm_t;

typedef enum {
    ncclSuccess = 0,
    ncclUnhandledCudaError = 1,
    ncclSystemError = 2,
    ncclInternalError = 3,
    ncclInvalidArgument = 4,
    ncclInvalidUsage = 5,
    ncclRemoteError = 6,
    ncclInProgress = 7,
    ncclNumResults = 8
} ncclResult_t;

typedef enum { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3, ncclAvg = 4 } ncclRedOp_t;

typedef enum {
    ncclInt8 = 0, ncclChar = 0,
    ncclUint8 = 1,
    ncclInt32 = 2, ncclInt = 2,
    ncclUint32 = 3,
    ncclInt64 = 4,
    ncclUint64 = 5,
    ncclFloat16 = 6, ncclHalf = 6,
    ncclFloat32 = 7, ncclFloat = 7,
    ncclFloat64 = 8, ncclDouble = 8,
    ncclBfloat16 = 9
} ncclDataType_t;

ncclResult_t ncclGetVersion(int *version);
ncclResult_t ncclGetUniqueId(ncclUniqueId *id);
ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank);
ncclResult_t ncclCommDestroy(ncclComm_t comm);
ncclResult_t ncclCommAbort(ncclComm_t comm);
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *async_error);
ncclResult_t ncclCommCount(const ncclComm_t comm, int *count);
ncclResult_t ncclCommUserRank(const ncclComm_t comm, int *rank);
const char *ncclGetErrorString(ncclResult_t result);
const char *ncclGetLastError(ncclComm_t comm);

ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count,
                           ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
                           cudaStream_t stream);
ncclResult_t ncclReduce(const void *sendbuff, void *recvbuff, size_t count,
                        ncclDataType_t datatype, ncclRedOp_t op, int root, ncclComm_t comm,
                        cudaStream_t stream);
ncclResult_t ncclReduceScatter(const void *sendbuff, void *recvbuff, size_t recvcount,
                               ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
                               cudaStream_t stream);
ncclResult_t ncclAllGather(const void *sendbuff, void *recvbuff, size_t sendcount,
                           ncclDataType_t datatype, ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclBroadcast(const void *sendbuff, void *recvbuff, size_t count,
                           ncclDataType_t datatype, int root, ncclComm_t comm,
                           cudaStream_t stream);
ncclResult_t ncclGroupStart(void);
ncclResult_t ncclGroupEnd(void);

#ifdef __cplusplus
}
#endif

#endif
