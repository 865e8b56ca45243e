/* dropout_mask.h: which elements dropout keeps, as one pure function of
 * (seed, element index), shared verbatim by every backend (C, CUDA, and the
 * CUDA source under the emulator). A counter-based draw instead of a random
 * stream because
 *  - the backward recomputes the forward's mask instead of storing it
 *    (no mask buffer, nothing to plan);
 *  - element i's draw does not depend on which thread computes it or in
 *    what order, so the CPU and CUDA backends drop the same elements and
 *    their outputs compare element for element;
 *  - a run resumed from a checkpoint draws the same masks as one that was
 *    never interrupted (the seed comes from the run's seed and the
 *    micro-batch index, model.h).
 * The bits are splitmix64's finaliser over seed + (i + 1) * golden ratio:
 * consecutive indices give independent-looking 64-bit words. Element i is
 * kept when the top 32 bits are >= threshold = p * 2^32 (p the drop
 * probability), so P(drop) = p to within 2^-32. */
#ifndef ANATOMY_DROPOUT_MASK_H
#define ANATOMY_DROPOUT_MASK_H

#include <stdint.h>

#if defined(__CUDACC__) || defined(ANATOMY_EMU)
#define DROPOUT_FN static __host__ __device__ __forceinline__
#else
#define DROPOUT_FN static inline
#endif

/* The drop threshold of probability p in [0, 1): elements whose draw is
 * below it are dropped. */
DROPOUT_FN uint32_t dropout_threshold(float p)
{
    double t = (double)p * 4294967296.0;
    return t <= 0 ? 0u : t >= 4294967295.0 ? 4294967295u : (uint32_t)t;
}

/* splitmix64's finaliser: a bijection of 64-bit words whose outputs for
 * nearby inputs look independent. Also what the host mixes the masks' seeds
 * with (per micro-batch, per site). */
DROPOUT_FN uint64_t dropout_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* 1 when element i is kept. */
DROPOUT_FN int dropout_keep(uint64_t seed, uint64_t i, uint32_t threshold)
{
    uint64_t z = dropout_mix64(seed + (i + 1) * 0x9e3779b97f4a7c15ull);
    return (uint32_t)(z >> 32) >= threshold;
}

#endif
