/* kernels/cuda/emu/emu.h: the CUDA device emulator, as kernel source sees it.
 *
 * A .cu file compiled with `g++ -x c++ -DANATOMY_EMU` includes this (through
 * kernels/cuda/cuda_compat.cuh) instead of the CUDA headers. Kernels become
 * plain functions; a launch runs each block's threads as coroutines on the
 * calling host thread, switched at every barrier and warp collective
 * (emu.cpp). Shared memory is `static` storage plus one dynamic arena, which
 * is correct because blocks run one at a time. Builtins, intrinsics and the
 * host API subset the project uses are declared here with CUDA's names and
 * semantics; what is not emulated is listed in emu/README.md. */
#ifndef ANATOMY_EMU_H
#define ANATOMY_EMU_H

#ifndef __cplusplus
#error "emu.h is C++: compile .cu files with g++ -x c++ -DANATOMY_EMU"
#endif

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <tuple>
#include <type_traits>
#include <utility>

/* ---- qualifiers ---- */
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __grid_constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
/* Function-scope statics are block-shared because one block runs at a time.
 * The runtime finds them in the symbol table (emu.cpp: static shared). */
#define __shared__ static __attribute__((aligned(16)))
#define __CUDACC_EMU__ 1

/* ---- vector types ---- */
struct uint3 { unsigned x, y, z; };
struct dim3 {
	unsigned x, y, z;
	dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
	dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
	operator uint3() const { uint3 v = {x, y, z}; return v; }
};

#define EMU_VEC2(T, N, A) struct __attribute__((aligned(A))) N##2 { T x, y; }; \
	static inline N##2 make_##N##2(T x, T y) { N##2 v; v.x = x; v.y = y; return v; }
#define EMU_VEC3(T, N) struct N##3 { T x, y, z; }; \
	static inline N##3 make_##N##3(T x, T y, T z) { N##3 v; v.x = x; v.y = y; v.z = z; return v; }
#define EMU_VEC4(T, N, A) struct __attribute__((aligned(A))) N##4 { T x, y, z, w; }; \
	static inline N##4 make_##N##4(T x, T y, T z, T w) { N##4 v; v.x = x; v.y = y; v.z = z; v.w = w; return v; }
EMU_VEC2(float, float, 8) EMU_VEC3(float, float) EMU_VEC4(float, float, 16)
EMU_VEC2(int, int, 8) EMU_VEC3(int, int) EMU_VEC4(int, int, 16)
EMU_VEC2(unsigned, uint, 8) EMU_VEC4(unsigned, uint, 16)
EMU_VEC2(double, double, 16)
EMU_VEC2(short, short, 4) EMU_VEC4(short, short, 8)
EMU_VEC2(unsigned short, ushort, 4) EMU_VEC4(unsigned short, ushort, 8)
EMU_VEC2(signed char, char, 2) EMU_VEC4(signed char, char, 4)
EMU_VEC2(unsigned char, uchar, 2) EMU_VEC4(unsigned char, uchar, 4)
EMU_VEC2(long long, longlong, 16) EMU_VEC2(unsigned long long, ulonglong, 16)
static inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { uint3 v = {x, y, z}; return v; }
#undef EMU_VEC2
#undef EMU_VEC3
#undef EMU_VEC4

#include "emu_fp16.h"

/* ---- the current thread ---- */
/* What kernel code reads through threadIdx & co. One per emulated thread;
 * emu_cur points at the running one (per host thread, so ranks-as-threads
 * code can launch from several threads; launches are serialised). */
struct emu_tls {
	uint3 tidx, bidx;
	dim3 bdim, gdim;
};
extern __thread emu_tls *emu_cur;
#define threadIdx (static_cast<const uint3 &>(emu_cur->tidx))
#define blockIdx (static_cast<const uint3 &>(emu_cur->bidx))
#define blockDim (static_cast<const dim3 &>(emu_cur->bdim))
#define gridDim (static_cast<const dim3 &>(emu_cur->gdim))
static const int warpSize = 32;

/* ---- runtime entry points (emu.cpp) ---- */
/* Every entry point called from kernel code records its caller's address, so
 * reports name the kernel line; the wrappers below are always inlined. */
extern "C" {
void emu_syncthreads(void);
int emu_syncthreads_op(int pred, int op);
void emu_yield(void);
void emu_trap(void);
unsigned emu_activemask(void);
unsigned emu_lane(void);

/* One lane's part of a warp-collective operation. */
struct emu_warp_arg {
	uint64_t v;		/* the lane's value */
	int32_t b, c;		/* shuffle operand and clamp, or 0 */
};
typedef void (*emu_warp_fn)(unsigned mask, void *const in[32], void *const out[32]);
/* Blocks until every lane of mask has called it with the same fn and mask,
 * then runs fn once over all of their in/out pointers (lanes outside mask are
 * NULL). what names the operation in reports. */
void emu_warp_collective(unsigned mask, emu_warp_fn fn, void *in, void *out, const char *what);
void emu_syncwarp(unsigned mask);
uint64_t emu_shfl(unsigned mask, uint64_t v, int b, int c, int mode);
unsigned emu_vote(unsigned mask, int pred, int op);
unsigned emu_reduce(unsigned mask, unsigned v, int op);
unsigned emu_match(unsigned mask, uint64_t v, int all, int *pred);

/* A load done by a warp collective for one lane (ldmatrix): it must be
 * shared memory aligned to n (for n of 4, 8, 16) and goes through the race
 * detector and bounds checks as that lane's access. The raw load/store pair
 * is for atomics, after emu_atomic_begin has checked the address. */
void emu_lane_load(unsigned lane, void *dst, const void *src, size_t n, const char *what);
void emu_atomic_begin(void *p, size_t n);
void emu_raw_load(void *dst, const void *src, size_t n);
void emu_raw_store(void *dst, const void *src, size_t n);

void emu_cp_async(void *smem, const void *gmem, int cp_size, int src_size);
void emu_cp_async_commit(void);
void emu_cp_async_wait(int n);

void *emu_dynamic_shared(void);
/* Waiting on another block (flag_wait_geq in ptx.cuh): the thread sleeps
 * until *flag >= value, and the grid scheduler runs other blocks meanwhile;
 * emu_released, after a release, may give them a turn at once. */
void emu_spin_wait(const volatile int *flag, int value);
void emu_released(void);
long long emu_clock64(void);
void emu_report_error(const char *what);
}

enum { EMU_SHFL_IDX, EMU_SHFL_UP, EMU_SHFL_DOWN, EMU_SHFL_BFLY };
enum { EMU_VOTE_ALL, EMU_VOTE_ANY, EMU_VOTE_BALLOT };
enum { EMU_RED_ADD, EMU_RED_MIN, EMU_RED_MAX, EMU_RED_SMIN, EMU_RED_SMAX, EMU_RED_AND, EMU_RED_OR, EMU_RED_XOR };
enum { EMU_BAR_PLAIN, EMU_BAR_COUNT, EMU_BAR_AND, EMU_BAR_OR };

/* ---- barriers, warp collectives ---- */
#define __syncthreads() emu_syncthreads()
static __forceinline__ int __syncthreads_count(int p) { return emu_syncthreads_op(p, EMU_BAR_COUNT); }
static __forceinline__ int __syncthreads_and(int p) { return emu_syncthreads_op(p, EMU_BAR_AND); }
static __forceinline__ int __syncthreads_or(int p) { return emu_syncthreads_op(p, EMU_BAR_OR); }
static __forceinline__ void __syncwarp(unsigned mask = 0xffffffffu) { emu_syncwarp(mask); }
static __forceinline__ unsigned __activemask(void) { return emu_activemask(); }
static __forceinline__ void __threadfence(void) { emu_yield(); }
static __forceinline__ void __threadfence_block(void) { emu_yield(); }
static __forceinline__ void __threadfence_system(void) { emu_yield(); }
static __forceinline__ void __nanosleep(unsigned) { emu_yield(); }
static __forceinline__ void __trap(void) { emu_trap(); }
static __forceinline__ long long clock64(void) { return emu_clock64(); }

template <class T> static __forceinline__ uint64_t emu_bits(T v)
{
	static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type wider than 8 bytes");
	uint64_t u = 0;
	memcpy(&u, &v, sizeof(T));
	return u;
}
template <class T> static __forceinline__ T emu_from_bits(uint64_t u)
{
	T v;
	memcpy(&v, &u, sizeof(T));
	return v;
}
/* The clamp operand c is what sm_30_intrinsics.hpp passes to shfl.sync. */
template <class T> static __forceinline__ T __shfl_sync(unsigned mask, T var, int src, int width = 32)
{ return emu_from_bits<T>(emu_shfl(mask, emu_bits(var), src, ((32 - width) << 8) | 0x1f, EMU_SHFL_IDX)); }
template <class T> static __forceinline__ T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32)
{ return emu_from_bits<T>(emu_shfl(mask, emu_bits(var), (int)delta, (32 - width) << 8, EMU_SHFL_UP)); }
template <class T> static __forceinline__ T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32)
{ return emu_from_bits<T>(emu_shfl(mask, emu_bits(var), (int)delta, ((32 - width) << 8) | 0x1f, EMU_SHFL_DOWN)); }
template <class T> static __forceinline__ T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32)
{ return emu_from_bits<T>(emu_shfl(mask, emu_bits(var), lane_mask, ((32 - width) << 8) | 0x1f, EMU_SHFL_BFLY)); }

static __forceinline__ int __all_sync(unsigned mask, int p) { return (int)emu_vote(mask, p, EMU_VOTE_ALL); }
static __forceinline__ int __any_sync(unsigned mask, int p) { return (int)emu_vote(mask, p, EMU_VOTE_ANY); }
static __forceinline__ unsigned __ballot_sync(unsigned mask, int p) { return emu_vote(mask, p, EMU_VOTE_BALLOT); }
static __forceinline__ unsigned __reduce_add_sync(unsigned mask, unsigned v) { return emu_reduce(mask, v, EMU_RED_ADD); }
static __forceinline__ int __reduce_add_sync(unsigned mask, int v) { return (int)emu_reduce(mask, (unsigned)v, EMU_RED_ADD); }
static __forceinline__ unsigned __reduce_min_sync(unsigned mask, unsigned v) { return emu_reduce(mask, v, EMU_RED_MIN); }
static __forceinline__ int __reduce_min_sync(unsigned mask, int v) { return (int)emu_reduce(mask, (unsigned)v, EMU_RED_SMIN); }
static __forceinline__ unsigned __reduce_max_sync(unsigned mask, unsigned v) { return emu_reduce(mask, v, EMU_RED_MAX); }
static __forceinline__ int __reduce_max_sync(unsigned mask, int v) { return (int)emu_reduce(mask, (unsigned)v, EMU_RED_SMAX); }
static __forceinline__ unsigned __reduce_and_sync(unsigned mask, unsigned v) { return emu_reduce(mask, v, EMU_RED_AND); }
static __forceinline__ unsigned __reduce_or_sync(unsigned mask, unsigned v) { return emu_reduce(mask, v, EMU_RED_OR); }
static __forceinline__ unsigned __reduce_xor_sync(unsigned mask, unsigned v) { return emu_reduce(mask, v, EMU_RED_XOR); }
template <class T> static __forceinline__ unsigned __match_any_sync(unsigned mask, T v) { return emu_match(mask, emu_bits(v), 0, NULL); }
template <class T> static __forceinline__ unsigned __match_all_sync(unsigned mask, T v, int *pred) { return emu_match(mask, emu_bits(v), 1, pred); }

/* ---- atomics ---- */
/* Cooperative scheduling makes a read-modify-write atomic by construction;
 * emu_atomic_begin tells the race detector the access is atomic. The memory
 * itself is touched through the runtime so AddressSanitizer's shared-memory
 * hook does not see it as a plain access. */
template <class T, class F> static __forceinline__ T emu_atomic_rmw(T *p, F f)
{
	T old, nv;
	emu_atomic_begin((void *)p, sizeof(T));
	emu_raw_load(&old, p, sizeof(T));
	nv = f(old);
	emu_raw_store(p, &nv, sizeof(T));
	return old;
}
template <class T> static __forceinline__ T atomicAdd(T *p, T v) { return emu_atomic_rmw(p, [v](T o) { return (T)(o + v); }); }
template <class T> static __forceinline__ T atomicSub(T *p, T v) { return emu_atomic_rmw(p, [v](T o) { return (T)(o - v); }); }
template <class T> static __forceinline__ T atomicExch(T *p, T v) { return emu_atomic_rmw(p, [v](T) { return v; }); }
template <class T> static __forceinline__ T atomicMin(T *p, T v) { return emu_atomic_rmw(p, [v](T o) { return v < o ? v : o; }); }
template <class T> static __forceinline__ T atomicMax(T *p, T v) { return emu_atomic_rmw(p, [v](T o) { return v > o ? v : o; }); }
template <class T> static __forceinline__ T atomicAnd(T *p, T v) { return emu_atomic_rmw(p, [v](T o) { return (T)(o & v); }); }
template <class T> static __forceinline__ T atomicOr(T *p, T v) { return emu_atomic_rmw(p, [v](T o) { return (T)(o | v); }); }
template <class T> static __forceinline__ T atomicXor(T *p, T v) { return emu_atomic_rmw(p, [v](T o) { return (T)(o ^ v); }); }
template <class T> static __forceinline__ T atomicCAS(T *p, T cmp, T v) { return emu_atomic_rmw(p, [cmp, v](T o) { return o == cmp ? v : o; }); }
static __forceinline__ unsigned atomicInc(unsigned *p, unsigned lim) { return emu_atomic_rmw(p, [lim](unsigned o) { return o >= lim ? 0u : o + 1; }); }
static __forceinline__ unsigned atomicDec(unsigned *p, unsigned lim) { return emu_atomic_rmw(p, [lim](unsigned o) { return (o == 0 || o > lim) ? lim : o - 1; }); }

/* ---- loads with cache hints: plain loads here ---- */
template <class T> static __forceinline__ T __ldg(const T *p) { return *p; }
template <class T> static __forceinline__ T __ldcg(const T *p) { return *p; }
template <class T> static __forceinline__ T __ldca(const T *p) { return *p; }
template <class T> static __forceinline__ T __ldcs(const T *p) { return *p; }
template <class T> static __forceinline__ T __ldlu(const T *p) { return *p; }
template <class T> static __forceinline__ void __stcg(T *p, T v) { *p = v; }
template <class T> static __forceinline__ void __stcs(T *p, T v) { *p = v; }
template <class T> static __forceinline__ void __stwb(T *p, T v) { *p = v; }

/* ---- integer and float intrinsics ---- */
template <class A, class B> static inline typename std::common_type<A, B>::type min(A a, B b)
{ typedef typename std::common_type<A, B>::type C; return (C)a < (C)b ? (C)a : (C)b; }
template <class A, class B> static inline typename std::common_type<A, B>::type max(A a, B b)
{ typedef typename std::common_type<A, B>::type C; return (C)a > (C)b ? (C)a : (C)b; }
static inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
static inline unsigned __float_as_uint(float f) { unsigned i; memcpy(&i, &f, 4); return i; }
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
static inline long long __double_as_longlong(double d) { long long i; memcpy(&i, &d, 8); return i; }
static inline double __longlong_as_double(long long i) { double d; memcpy(&d, &i, 8); return d; }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
static inline int __clzll(long long x) { return x ? __builtin_clzll((unsigned long long)x) : 64; }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }
static inline unsigned __brev(unsigned x)
{
	unsigned r = 0;
	for (int i = 0; i < 32; i++)
		r |= ((x >> i) & 1u) << (31 - i);
	return r;
}
static inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((uint64_t)a * b) >> 32); }
static inline int __mulhi(int a, int b) { return (int)(((int64_t)a * b) >> 32); }
static inline int __mul24(int a, int b) { return (int)(((int64_t)(a << 8 >> 8) * (b << 8 >> 8))); }
static inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s)
{
	uint64_t v = ((uint64_t)y << 32) | x;
	unsigned r = 0;
	for (int i = 0; i < 4; i++)
		r |= (unsigned)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
	return r;
}
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
/* __expf, __logf, __sinf, __cosf, __powf, __sincosf, __log2f, __exp10f:
 * glibc's math.h declares and libm exports these names already (full
 * precision, not the GPU's approximations). */
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __fsqrt_rn(float x) { return sqrtf(x); }
static inline float __frsqrt_rn(float x) { return (float)(1.0 / sqrt((double)x)); }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline float __saturatef(float x) { return x != x ? 0.0f : x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }
static inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
static inline int __float2int_rz(float x) { return (int)x; }
static inline unsigned __float2uint_rn(float x) { return (unsigned)nearbyintf(x); }
static inline float __int2float_rn(int i) { return (float)i; }
static inline float __uint2float_rn(unsigned i) { return (float)i; }
static inline float __double2float_rn(double d) { return (float)d; }

/* ---- host API ---- */
typedef enum cudaError {
	cudaSuccess = 0,
	cudaErrorInvalidValue = 1,
	cudaErrorMemoryAllocation = 2,
	cudaErrorInitializationError = 3,
	cudaErrorInvalidConfiguration = 9,
	cudaErrorInvalidDevicePointer = 17,
	cudaErrorInvalidMemcpyDirection = 21,
	cudaErrorInvalidDeviceFunction = 98,
	cudaErrorNoDevice = 100,
	cudaErrorInvalidDevice = 101,
	cudaErrorInvalidResourceHandle = 400,
	cudaErrorNotReady = 600,
	cudaErrorIllegalAddress = 700,
	cudaErrorLaunchOutOfResources = 701,
	cudaErrorLaunchTimeout = 702,
	cudaErrorAssert = 710,
	cudaErrorIllegalInstruction = 715,
	cudaErrorMisalignedAddress = 716,
	cudaErrorLaunchFailure = 719,
} cudaError_t;

enum cudaMemcpyKind {
	cudaMemcpyHostToHost = 0,
	cudaMemcpyHostToDevice = 1,
	cudaMemcpyDeviceToHost = 2,
	cudaMemcpyDeviceToDevice = 3,
	cudaMemcpyDefault = 4,
};
enum cudaFuncAttribute {
	cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
	cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};
enum cudaDeviceAttr {
	cudaDevAttrMaxThreadsPerBlock = 1,
	cudaDevAttrMaxSharedMemoryPerBlock = 8,
	cudaDevAttrWarpSize = 10,
	cudaDevAttrMultiProcessorCount = 16,
	cudaDevAttrComputeCapabilityMajor = 75,
	cudaDevAttrComputeCapabilityMinor = 76,
	cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
#define cudaStreamDefault 0x00
#define cudaStreamNonBlocking 0x01
#define cudaEventDefault 0x00
#define cudaEventBlockingSync 0x01
#define cudaEventDisableTiming 0x02
#define cudaHostAllocDefault 0x00

struct cudaDeviceProp {
	char name[256];
	size_t totalGlobalMem, sharedMemPerBlock, sharedMemPerBlockOptin, sharedMemPerMultiprocessor;
	int regsPerBlock, warpSize, maxThreadsPerBlock, maxThreadsDim[3], maxGridSize[3];
	int major, minor, multiProcessorCount, maxThreadsPerMultiProcessor, l2CacheSize;
	size_t totalConstMem;
};

typedef struct emu_stream *cudaStream_t;
typedef struct emu_event *cudaEvent_t;

extern "C" {
cudaError_t cudaMalloc(void **p, size_t n);
cudaError_t cudaFree(void *p);
cudaError_t cudaMallocHost(void **p, size_t n);
cudaError_t cudaHostAlloc(void **p, size_t n, unsigned flags);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind, cudaStream_t s);
cudaError_t cudaMemset(void *p, int v, size_t n);
cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t s);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
cudaError_t cudaStreamCreate(cudaStream_t *s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamQuery(cudaStream_t s);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags);
cudaError_t cudaEventCreate(cudaEvent_t *e);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventQuery(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaDeviceReset(void);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char *cudaGetErrorString(cudaError_t e);
const char *cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDevice(int *d);
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int d);
cudaError_t cudaDeviceGetAttribute(int *v, enum cudaDeviceAttr a, int d);
cudaError_t cudaFuncSetAttribute(const void *fn, enum cudaFuncAttribute a, int v);
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *nb, const void *fn, int block, size_t dyn_smem);

/* ---- emulator controls, for tests and tools (no CUDA equivalent) ---- */
/* The last error report (empty if none since emu_clear_report). */
const char *emu_last_report(void);
void emu_clear_report(void);
/* Quiet: reports are kept for emu_last_report but not printed to stderr. */
void emu_set_quiet(int quiet);
/* Thread-order seed; 0 runs threads in index order. ANATOMY_EMU_SEED sets it. */
void emu_set_seed(uint64_t seed);
/* The registers per thread ptxas gives `kernel` ("name<targs>"): a launch whose
 * block needs more than an SM's 64K registers fails as on the GPU
 * (ANATOMY_EMU_PTXAS=build/cuda/ptxas.txt loads every kernel's count). */
void emu_set_kernel_regs(const char *kernel, int regs);
uint64_t emu_get_seed(void);
/* Stream work the emulator runs on the host (the emulated NCCL's
 * collectives): fn(ctx) runs once, in s's order, either now or once work
 * ordered after it needs it, by a coin drawn from the seed (now with seed 0);
 * nonzero from fn is the next synchronisation's error. The ranges are the
 * bytes it reads and writes, for the cross-stream race check; a race is
 * reported and returned as cudaErrorLaunchFailure (fn still runs). */
struct emu_range { const void *p; size_t n; int write; };
cudaError_t emu_stream_enqueue(cudaStream_t s, const char *what, const void *caller, int (*fn)(void *), void *ctx,
			       const struct emu_range *r, int nr);
/* Context switches since start (for the cost figure in tests). */
uint64_t emu_switch_count(void);
/* Blocks of a grid started at once (each launch; 0: ANATOMY_EMU_RESIDENT, or
 * 1 with seed 0 and 1-4 drawn from other seeds). */
void emu_set_resident_blocks(int n);
/* Nonzero when built with AddressSanitizer, i.e. shared-memory race and
 * bounds checking is active. */
int emu_checks_active(void);
}

extern "C" cudaError_t emu_malloc_at(void **p, size_t n, const void *caller);
/* noinline: the caller's address names the allocation in reports */
template <class T> __attribute__((noinline)) cudaError_t cudaMalloc(T **p, size_t n)
{ return emu_malloc_at((void **)p, n, __builtin_return_address(0)); }
template <class T> static inline cudaError_t cudaMallocHost(T **p, size_t n) { return cudaMallocHost((void **)p, n); }
template <class T> static inline cudaError_t cudaFuncSetAttribute(T *fn, enum cudaFuncAttribute a, int v)
{ return cudaFuncSetAttribute((const void *)fn, a, v); }
template <class T> static inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *nb, T *fn, int block, size_t dyn_smem)
{ return cudaOccupancyMaxActiveBlocksPerMultiprocessor(nb, (const void *)fn, block, dyn_smem); }
template <class T> static inline cudaError_t cudaMemcpyToSymbol(T &sym, const void *src, size_t n, size_t off = 0, enum cudaMemcpyKind = cudaMemcpyHostToDevice)
{ if (off + n > sizeof(T)) return cudaErrorInvalidValue; memcpy((char *)&sym + off, src, n); return cudaSuccess; }
template <class T> static inline cudaError_t cudaMemcpyFromSymbol(void *dst, const T &sym, size_t n, size_t off = 0, enum cudaMemcpyKind = cudaMemcpyDeviceToHost)
{ if (off + n > sizeof(T)) return cudaErrorInvalidValue; memcpy(dst, (const char *)&sym + off, n); return cudaSuccess; }

/* ---- launches ---- */
struct emu_launch_desc {
	const char *name, *file;
	int line;
	dim3 grid, block;
	size_t smem;
	cudaStream_t stream;
	const void *fn;				/* the kernel, for attributes */
	void (*invoke)(const void *fn, void *args);	/* calls fn with a copy of args */
	void *args;
	int nptr;				/* pointer arguments, checked at launch */
	const void *ptrs[32];
	int ptr_index[32];
};
extern "C" cudaError_t emu_launch(struct emu_launch_desc *d);

template <class... P> struct emu_launcher {
	emu_launch_desc d;
	void (*kernel)(P...);

	template <class T> void note_arg(int i, const T &v)
	{
		if constexpr (std::is_pointer<T>::value) {
			if (d.nptr < 32) {
				d.ptrs[d.nptr] = (const void *)v;
				d.ptr_index[d.nptr++] = i;
			}
		}
	}
	template <class Tuple, size_t... I> void note_args(Tuple &t, std::index_sequence<I...>)
	{
		(void)t;
		int dummy[] = {0, (note_arg((int)I, std::get<I>(t)), 0)...};
		(void)dummy;
	}
	template <class... A> cudaError_t operator()(A &&...a)
	{
		static_assert(sizeof...(A) == sizeof...(P), "kernel launched with the wrong number of arguments");
		typedef std::tuple<typename std::decay<P>::type...> args_t;
		args_t args(std::forward<A>(a)...);
		note_args(args, std::index_sequence_for<P...>());
		d.fn = (const void *)kernel;
		d.args = &args;
		d.invoke = [](const void *fn, void *targs) {
			args_t copy = *(args_t *)targs;	/* each thread gets its own parameters */
			std::apply((void (*)(P...))fn, copy);
		};
		return emu_launch(&d);
	}
};
template <class... P> static inline emu_launcher<P...> emu_make_launcher(const char *name, const char *file, int line,
	dim3 grid, dim3 block, size_t smem, cudaStream_t stream, void (*k)(P...))
{
	emu_launcher<P...> l;
	l.d = emu_launch_desc();
	l.d.name = name;
	l.d.file = file;
	l.d.line = line;
	l.d.grid = grid;
	l.d.block = block;
	l.d.smem = smem;
	l.d.stream = stream;
	l.kernel = k;
	return l;
}

#endif
