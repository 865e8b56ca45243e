/* testrand.h: the random inputs of the Check suites, drawn from the project's
 * one generator (data/rng.h). A suite seeds test_rng per test; saving and
 * restoring test_rng replays a stream. */
#ifndef ANATOMY_TESTRAND_H
#define ANATOMY_TESTRAND_H

#include <stdint.h>

#include "../data/rng.h"

static rng_state test_rng;

static inline uint64_t rnext(void) { return rng_next(&test_rng); }
static inline double urand(void) { return rng_uniform(&test_rng); }
static inline int irand(int n) { return (int)rng_below(&test_rng, (uint64_t)n); }
static inline double nrand(void) { return rng_normal(&test_rng); }

#endif
