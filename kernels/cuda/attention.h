/* attention.h: what the tests ask of the fused attention kernels beyond
 * the op table (C and CUDA C++). */
#ifndef ANATOMY_CUDA_ATTENTION_H
#define ANATOMY_CUDA_ATTENTION_H

#ifdef __cplusplus
extern "C" {
#endif

/* Blocks of the bf16 flash kernel `which` (0 forward, 1 dk/dv, 2 dq, 3 the
 * fused backward) at head
 * size hs (32, 64, 128) that one SM holds at once, launched as the backend
 * launches it: cudaOccupancyMaxActiveBlocksPerMultiprocessor, from the
 * kernel's registers and shared memory (the emulator takes the registers
 * from ptxas's report, ANATOMY_EMU_PTXAS). *name: the kernel. -1 when the
 * count is unknown (no register count) or hs is not a flash head size. */
int cuda_flash_occupancy(int hs, int which, const char **name);

/* The flash backward that follows: "fused" (one kernel, 5 tile matmuls per
 * tile pair, dQ added in a fixed order through an fp32 buffer; the default)
 * or "split" (a dk/dv and a dq kernel, 7 matmuls, no buffer). Both are
 * deterministic. Unset, the environment's ANATOMY_ATTN_BWD decides. Returns
 * -1 (and changes nothing) for another name. Set it before the backend plans
 * its scratch: the fused one needs more. */
int cuda_attention_set_backward(const char *name);

#ifdef __cplusplus
}
#endif
#endif
