/* tests/emu/emu_test.h: helpers shared by the kernel tests.
 *
 * Each tests/emu/test_*.cu is one Check suite that builds two ways from the
 * same source: with g++ -DANATOMY_EMU against the device emulator, and with
 * nvcc for a real GPU. Tests that exercise the emulator's bug detection only
 * exist in the emulated build (EMU_ONLY). */
#ifndef ANATOMY_EMU_TEST_H
#define ANATOMY_EMU_TEST_H

#include "cuda_compat.cuh"

#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef ANATOMY_EMU
#define EMU_ONLY 1
#else
#define EMU_ONLY 0
#endif

#define CUDA_OK(call) do { \
	cudaError_t e_ = (call); \
	ck_assert_msg(e_ == cudaSuccess, "%s failed: %s", #call, cudaGetErrorString(e_)); \
} while (0)

/* xorshift64*, seeded per test so failures reproduce. */
static inline uint64_t test_rng(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545f4914f6cdd1dull;
}

/* A seed from the clock (or TEST_SEED) mixed with the test's name; the base
 * is printed so a failure can be rerun with TEST_SEED=<base>. */
static inline uint64_t test_seed(const char *name)
{
	const char *env = getenv("TEST_SEED");
	uint64_t base = env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL), s = base;
	for (const char *p = name; *p; p++)
		s = s * 131 + (unsigned char)*p;
	printf("  %s: TEST_SEED=%llu\n", name, (unsigned long long)base);
	return s ? s : 1;
}

static inline float test_uniform(uint64_t *s, float lo, float hi)
{
	return lo + (hi - lo) * (float)((test_rng(s) >> 40) * (1.0 / 16777216.0));
}

/* Relative L2 error of got against a double reference; NaN never passes. */
static inline double rel_l2(const float *got, const double *ref, size_t n)
{
	double num = 0, den = 0;
	for (size_t i = 0; i < n; i++) {
		double d = (double)got[i] - ref[i];
		if (got[i] != got[i])
			return INFINITY;
		num += d * d;
		den += ref[i] * ref[i];
	}
	return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* The line of the first line of file that contains marker, or -1. Lets a
 * test check that a report points at the right line without hard-coding it. */
static inline int marker_line(const char *file, const char *marker)
{
	FILE *f = fopen(file, "r");
	char buf[1024];
	int line = 0;
	if (!f)
		return -1;
	while (fgets(buf, sizeof(buf), f)) {
		line++;
		if (strstr(buf, marker)) {
			fclose(f);
			return line;
		}
	}
	fclose(f);
	return -1;
}

/* Runs one suite in a forked child per test and returns the exit status. */
static inline int run_suite(Suite *s)
{
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}

#endif
