/* test_batches.c: the language models' batch source (host/batches.c) in its
 * two row modes.
 *
 * The shard holds token i % 65536 at stream index i (below 65536 tokens, so
 * a token is its own index): a row's first token says where the row starts,
 * and every check reads positions straight off the batch. The stream's
 * length and the seeds are fresh each run (printed; ANATOMY_TEST_SEED
 * replays one). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../data/errbuf.h"
#include "../data/rng.h"
#include "../data/shard.h"
#include "../host/batches.h"

static uint64_t g_seed;
static char g_dir[64], g_path[128];
static uint64_t g_n; /* tokens in the stream */

static void make_shard(void)
{
    char err[ERRBUF];
    rng_state r;
    rng_seed(&r, g_seed);
    g_n = 3000 + rng_below(&r, 20000);
    uint16_t *t = malloc(g_n * sizeof *t);
    ck_assert_ptr_nonnull(t);
    for (uint64_t i = 0; i < g_n; i++)
        t[i] = (uint16_t)i;
    strcpy(g_dir, "/tmp/test_batches.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(g_dir));
    snprintf(g_path, sizeof g_path, "%s/x_train_000000.bin", g_dir);
    ck_assert_msg(shard_write(g_path, t, g_n, err) == 0, "%s", err);
    free(t);
}

static void drop_shard(void)
{
    unlink(g_path);
    rmdir(g_dir);
}

static batch_source *open_src(int B, int T, int rank, int world, int random_rows,
                              uint64_t seed)
{
    char err[ERRBUF];
    data_spec ds = { .path = g_path, .B = B, .T = T, .rank = rank, .world = world,
                     .seed = seed, .split = SPLIT_TRAIN, .random_rows = random_rows };
    batch_source *s = lm_source_open(&ds, 65536, err);
    ck_assert_msg(s != NULL, "%s", err);
    return s;
}

/* Row b of the batch: T consecutive stream tokens (inputs) and the next
 * ones (targets); returns its start. */
static uint64_t row_start(const batch_source *s, int b, int T)
{
    const int32_t *in = s->batch.tokens + (size_t)b * T, *tg = s->batch.targets + (size_t)b * T;
    for (int t = 0; t < T; t++) {
        ck_assert_int_eq(in[t], (in[0] + t) % (int32_t)g_n);
        ck_assert_int_eq(tg[t], (in[0] + t + 1) % (int32_t)g_n);
    }
    return (uint64_t)in[0];
}

/* Random rows: each row is a whole window of the stream (no wrap: a row
 * starts at most n - T - 1, as nanoGPT's randint(len - block_size)); the
 * starts are independent of each other (not a B*T chunk cut into rows, not
 * T apart), spread over the whole range, and a pure function of (seed,
 * micro-batch, row): a seek anywhere reproduces them, another seed does not. */
START_TEST(test_random_rows_independent_and_seekable)
{
    char err[ERRBUF];
    const int B = 8, T = 16, steps = 40;
    uint64_t seed = g_seed ^ 0x1234;
    batch_source *s = open_src(B, T, 0, 1, 1, seed);
    uint64_t *starts = malloc((size_t)steps * B * sizeof *starts);
    uint64_t lo = UINT64_MAX, hi = 0;
    int contiguous = 0;
    for (int j = 0; j < steps; j++) {
        ck_assert_int_eq(s->position(s), j);
        ck_assert_msg(s->next(s, err) == 0, "%s", err);
        for (int b = 0; b < B; b++) {
            uint64_t o = row_start(s, b, T);
            ck_assert_msg(o + T + 1 <= g_n, "row at %llu runs past the stream's %llu tokens",
                          (unsigned long long)o, (unsigned long long)g_n);
            ck_assert_uint_eq(o, lm_row_offset(seed, (uint64_t)j, b, g_n - T));
            starts[j * B + b] = o;
            lo = o < lo ? o : lo;
            hi = o > hi ? o : hi;
            if (b && o == starts[j * B + b - 1] + T)
                contiguous++;
        }
    }
    /* 320 draws over thousands of offsets: T-apart neighbours are rare,
     * and the draws reach both ends of the range */
    ck_assert_msg(contiguous < 4, "%d rows start T after the row before", contiguous);
    ck_assert_msg(lo < (g_n - T) / 8 && hi > (g_n - T) * 7 / 8, "starts span [%llu, %llu] of %llu",
                  (unsigned long long)lo, (unsigned long long)hi, (unsigned long long)g_n);
    /* seek back to any position: the same rows */
    for (int j = steps - 1; j >= 0; j -= 7) {
        s->seek(s, (uint64_t)j);
        ck_assert_msg(s->next(s, err) == 0, "%s", err);
        for (int b = 0; b < B; b++)
            ck_assert_uint_eq(row_start(s, b, T), starts[j * B + b]);
    }
    s->close(s);
    /* another seed, other rows */
    s = open_src(B, T, 0, 1, 1, seed + 1);
    ck_assert_msg(s->next(s, err) == 0, "%s", err);
    int same = 0;
    for (int b = 0; b < B; b++)
        same += row_start(s, b, T) == starts[b];
    ck_assert_msg(same < 2, "seed + 1 repeats %d of %d rows", same, B);
    s->close(s);
    free(starts);
}
END_TEST

/* Ranks: rank r of w reads global micro-batches r, r + w, ... of the
 * single-process stream, in random mode as in contiguous mode. */
START_TEST(test_random_rows_ranks_split_the_stream)
{
    char err[ERRBUF];
    const int B = 3, T = 8, world = 3, per = 5;
    int rr = _i; /* 0: contiguous, 1: random rows */
    uint64_t seed = g_seed ^ 0x99;
    batch_source *one = open_src(B, T, 0, 1, rr, seed);
    batch_source *rk[3];
    for (int q = 0; q < world; q++)
        rk[q] = open_src(B, T, q, world, rr, seed);
    for (int j = 0; j < per; j++) {
        for (int q = 0; q < world; q++) {
            ck_assert_msg(one->next(one, err) == 0, "%s", err);
            ck_assert_msg(rk[q]->next(rk[q], err) == 0, "%s", err);
            ck_assert_mem_eq(one->batch.tokens, rk[q]->batch.tokens, (size_t)B * T * 4);
            ck_assert_mem_eq(one->batch.targets, rk[q]->batch.targets, (size_t)B * T * 4);
        }
    }
    for (int q = 0; q < world; q++)
        rk[q]->close(rk[q]);
    one->close(one);
}
END_TEST

/* Contiguous rows (the default) are B*T consecutive tokens: row b starts T
 * after row b-1, micro-batch j at j*B*T. Validation ignores random_rows. */
START_TEST(test_contiguous_default_and_validation_in_order)
{
    char err[ERRBUF];
    const int B = 4, T = 10;
    for (int k = 0; k < 2; k++) {
        data_spec ds = { .path = g_path, .B = B, .T = T, .rank = 0, .world = 1,
                         .seed = g_seed, .split = k ? SPLIT_VAL : SPLIT_TRAIN,
                         .random_rows = k };
        batch_source *s = lm_source_open(&ds, 65536, err);
        ck_assert_msg(s != NULL, "%s", err);
        for (int j = 0; j < 3; j++) {
            ck_assert_msg(s->next(s, err) == 0, "%s", err);
            for (int b = 0; b < B; b++)
                ck_assert_uint_eq(row_start(s, b, T), ((uint64_t)j * B * T + (uint64_t)b * T) % g_n);
        }
        s->close(s);
    }
}
END_TEST

static Suite *batches_suite(void)
{
    Suite *s = suite_create("batches");
    TCase *tc = tcase_create("lm_source");
    tcase_add_checked_fixture(tc, make_shard, drop_shard);
    tcase_add_test(tc, test_random_rows_independent_and_seekable);
    tcase_add_loop_test(tc, test_random_rows_ranks_split_the_stream, 0, 2);
    tcase_add_test(tc, test_contiguous_default_and_validation_in_order);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    const char *env = getenv("ANATOMY_TEST_SEED");
    g_seed = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20);
    printf("test_batches: seed %llu (ANATOMY_TEST_SEED to replay)\n", (unsigned long long)g_seed);
    SRunner *sr = srunner_create(batches_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
