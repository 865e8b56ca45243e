/* allreduce_bench.c: one ncclAllReduce of N bf16 elements (GPT-2 124M's
 * gradient: bench_allreduce.sh passes N), timed with CUDA events on the
 * stream NCCL runs on, beside a cudaMemcpy of the same bytes on the same card
 * (the reference measured in the same run).
 *
 *   allreduce_bench N [ITERS]      world 1 (one GPU): NCCL's all-reduce is a
 *                                  local copy (out of place) or nothing (in
 *                                  place); this measures its launch cost
 *                                  and the card's copy rate, not a network
 *   allreduce_bench N ITERS 2      two processes on GPU 0 (fork, id through a
 *                                  pipe): prints NCCL's answer, which is an
 *                                  error where NCCL refuses two ranks on one
 *                                  device, else the time of a real 2-rank ring
 *
 * Build (bench_allreduce.sh does): gcc -O2 -I$CUDA_HOME/include
 *   bench/allreduce_bench.c -L$CUDA_HOME/lib64 -lnccl -lcudart */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cuda_runtime_api.h>
#include <nccl.h>

#define CK(call)                                                                               \
    do {                                                                                       \
        cudaError_t e_ = (call);                                                               \
        if (e_ != cudaSuccess) {                                                               \
            fprintf(stderr, "allreduce_bench: %s: %s\n", #call, cudaGetErrorString(e_));      \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)
#define NK(call)                                                                               \
    do {                                                                                       \
        ncclResult_t r_ = (call);                                                              \
        if (r_ != ncclSuccess) {                                                               \
            fprintf(stderr, "allreduce_bench: %s: %s\n", #call, ncclGetErrorString(r_));      \
            exit(2);                                                                           \
        }                                                                                      \
    } while (0)

typedef enum { IN_PLACE, OUT_OF_PLACE, MEMCPY } what;

/* Mean milliseconds of one operation over iters, after 3 warm-up calls. */
static float time_op(what w, ncclComm_t comm, void *a, void *b, size_t n, int iters,
                     cudaStream_t s)
{
    cudaEvent_t t0, t1;
    float ms = 0;
    CK(cudaEventCreate(&t0));
    CK(cudaEventCreate(&t1));
    for (int i = -3; i < iters; i++) {
        if (i == 0)
            CK(cudaEventRecord(t0, s));
        if (w == MEMCPY)
            CK(cudaMemcpyAsync(b, a, n * 2, cudaMemcpyDeviceToDevice, s));
        else
            NK(ncclAllReduce(a, w == IN_PLACE ? a : b, n, ncclBfloat16, ncclAvg, comm, s));
    }
    CK(cudaEventRecord(t1, s));
    CK(cudaEventSynchronize(t1));
    CK(cudaEventElapsedTime(&ms, t0, t1));
    cudaEventDestroy(t0);
    cudaEventDestroy(t1);
    return ms / iters;
}

static int run_rank(int world, int rank, ncclUniqueId id, size_t n, int iters)
{
    void *a, *b;
    cudaStream_t s;
    ncclComm_t comm;
    CK(cudaSetDevice(0));
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CK(cudaMalloc(&a, n * 2));
    CK(cudaMalloc(&b, n * 2));
    CK(cudaMemset(a, 0x3f, n * 2)); /* bf16 0x3f3f = 0.746..., finite */
    ncclResult_t r = ncclCommInitRank(&comm, world, id, rank);
    if (r != ncclSuccess) {
        printf("allreduce: %d ranks on one GPU: ncclCommInitRank (rank %d): %s\n", world, rank,
               ncclGetErrorString(r));
        return 3;
    }
    float in = time_op(IN_PLACE, comm, a, b, n, iters, s);
    float out = time_op(OUT_OF_PLACE, comm, a, b, n, iters, s);
    float cp = time_op(MEMCPY, comm, a, b, n, iters, s);
    double gb = n * 2.0 / 1e9;
    if (rank == 0) {
        printf("allreduce: %zu bf16 elements (%.1f MB), %d rank%s on GPU 0, %d iterations, "
               "NCCL %d.%d.%d\n", n, gb * 1e3, world, world > 1 ? "s" : "", iters, NCCL_MAJOR,
               NCCL_MINOR, NCCL_PATCH);
        printf("  ncclAllReduce in place      %8.3f ms  (%6.1f GB/s algbw)\n", in, gb / (in / 1e3));
        printf("  ncclAllReduce out of place  %8.3f ms  (%6.1f GB/s algbw)\n", out,
               gb / (out / 1e3));
        printf("  cudaMemcpy D2D, same bytes  %8.3f ms  (%6.1f GB/s: read + write %6.1f GB/s)\n",
               cp, gb / (cp / 1e3), 2 * gb / (cp / 1e3));
        if (world == 1)
            printf("  (world 1: no data crosses a link; bus bandwidth is 2(w-1)/w x algbw = 0. "
                   "Multi-GPU figures: bench/SCALING.md)\n");
        else
            printf("  busbw (2(w-1)/w x algbw, out of place) %6.1f GB/s\n",
                   2.0 * (world - 1) / world * gb / (out / 1e3));
    }
    ncclCommDestroy(comm);
    cudaFree(a);
    cudaFree(b);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: allreduce_bench N [ITERS [WORLD]]\n");
        return 1;
    }
    size_t n = strtoull(argv[1], NULL, 10);
    int iters = argc > 2 ? atoi(argv[2]) : 20, world = argc > 3 ? atoi(argv[3]) : 1;
    if (!n || iters < 1 || world < 1 || world > 2) {
        fprintf(stderr, "allreduce_bench: bad arguments\n");
        return 1;
    }
    if (world == 1) {
        ncclUniqueId id;
        NK(ncclGetUniqueId(&id));
        return run_rank(1, 0, id, n, iters);
    }
    /* two processes, forked before anything touches CUDA */
    int fds[2], status, rc = 0;
    if (pipe(fds))
        return 1;
    pid_t kids[2];
    for (int r = 0; r < 2; r++) {
        kids[r] = fork();
        if (kids[r] == 0) {
            ncclUniqueId id;
            if (r == 0) {
                NK(ncclGetUniqueId(&id));
                if (write(fds[1], &id, sizeof id) != (ssize_t)sizeof id)
                    _exit(1);
            } else if (read(fds[0], &id, sizeof id) != (ssize_t)sizeof id) {
                _exit(1);
            }
            alarm(120); /* a rank whose peer failed to join would wait forever */
            int krc = run_rank(2, r, id, n, iters);
            fflush(stdout);
            _exit(krc);
        }
    }
    for (int r = 0; r < 2; r++) {
        waitpid(kids[r], &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status))
            rc = 3;
    }
    return rc;
}
