/* testrand.h: the random inputs of the Check suites, drawn from the project's
 * one generator (data/rng.h). A suite seeds test_rng per test (seed()); saving
 * and restoring test_rng replays a stream. */
#ifndef ANATOMY_TESTRAND_H
#define ANATOMY_TESTRAND_H

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "../data/rng.h"

static rng_state test_rng;

static inline uint64_t rnext(void) { return rng_next(&test_rng); }
static inline double urand(void) { return rng_uniform(&test_rng); }
static inline int irand(int n) { return (int)rng_below(&test_rng, (uint64_t)n); }
static inline double nrand(void) { return rng_normal(&test_rng); }

/* ---- a Check suite's seeding: one stream per test ---- */

/* The run's seed: ANATOMY_TEST_SEED, else the clock; main sets it once
 * (test_seed_init) and every failure can be replayed from the printed value. */
static uint64_t seed_base;

static inline void test_seed_init(const char *suite)
{
    const char *e = getenv("ANATOMY_TEST_SEED");
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    seed_base = e ? strtoull(e, NULL, 0) : (uint64_t)ts.tv_sec * 1000003u + (uint64_t)ts.tv_nsec;
    printf("%s: ANATOMY_TEST_SEED=%llu\n", suite, (unsigned long long)seed_base);
    fflush(stdout);
}

/* Seeds test_rng from the run's seed, the test's name and its variant. */
static inline void seed(const char *name, int variant)
{
    uint64_t h = seed_base * 0x9e3779b97f4a7c15ull + (uint64_t)variant;
    for (const char *p = name; *p; p++)
        h = h * 131 + (unsigned char)*p;
    rng_seed(&test_rng, h);
}

static inline void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    ck_assert_ptr_nonnull(p);
    return p;
}

#endif
