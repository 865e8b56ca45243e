/* kernels/cuda/cuda_compat.cuh: the one header a kernel file includes.
 *
 * With nvcc it pulls in the CUDA runtime and the bf16/fp16 headers; with
 * -DANATOMY_EMU (g++ -x c++) it pulls in the device emulator (emu/emu.h),
 * which gives the same names on the CPU. Kernel source is otherwise plain
 * CUDA, with two spellings that differ from the textbook:
 *
 *   CUDA_LAUNCH(grid, block, smem, stream, kernel)(args...);
 *       instead of kernel<<<grid, block, smem, stream>>>(args...). The kernel
 *       goes last so a template kernel's commas need no parentheses. Check
 *       cudaGetLastError() afterwards as usual; the emulator runs the launch
 *       to completion before returning and reports its errors there too.
 *   DYNAMIC_SHARED(T, name);
 *       instead of extern __shared__ T name[]; (16-byte aligned).
 *
 * Inline PTX lives only in ptx.cuh, which has an emulated body for each
 * instruction. Select emulated code with #ifdef ANATOMY_EMU, never with
 * __CUDA_ARCH__ (which the emulator leaves undefined). */
#ifndef ANATOMY_CUDA_COMPAT_CUH
#define ANATOMY_CUDA_COMPAT_CUH

#ifdef ANATOMY_EMU

#include "emu/emu.h"

#define CUDA_LAUNCH(grid, block, smem, stream, ...) \
	emu_make_launcher(#__VA_ARGS__, __FILE__, __LINE__, (grid), (block), (smem), (stream), __VA_ARGS__)
#define DYNAMIC_SHARED(T, name) T *const name = (T *)emu_dynamic_shared()

#else

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#define CUDA_LAUNCH(grid, block, smem, stream, ...) \
	__VA_ARGS__<<<(grid), (block), (smem), (stream)>>>
#define DYNAMIC_SHARED(T, name) extern __shared__ __align__(16) T name[]

#endif

#endif
