/* rng.h: the project's one random number generator (xoshiro256**, seeded
 * through splitmix64). Its whole state is four words, so checkpoints store it
 * and a resumed run draws exactly the numbers an uninterrupted run would. */
#ifndef ANATOMY_RNG_H
#define ANATOMY_RNG_H

#include <math.h>
#include <stdint.h>

typedef struct { uint64_t s[4]; } rng_state;

static inline uint64_t rng_splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline void rng_seed(rng_state *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = rng_splitmix(&seed);
}

static inline uint64_t rng_next(rng_state *r)
{
    uint64_t *s = r->s;
    uint64_t x = s[1] * 5, result = ((x << 7) | (x >> 57)) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = (s[3] << 45) | (s[3] >> 19);
    return result;
}

/* Uniform in [0, 1) with 53 random bits. */
static inline double rng_uniform(rng_state *r)
{
    return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* Uniform integer in [0, n), n > 0, without modulo bias. */
static inline uint64_t rng_below(rng_state *r, uint64_t n)
{
    uint64_t lim = -n % n, x;
    do x = rng_next(r);
    while (x < lim);
    return x % n;
}

/* Standard normal (Box-Muller; one draw per call, so the stream is simple). */
static inline double rng_normal(rng_state *r)
{
    double u1 = rng_uniform(r), u2 = rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

#endif
