/* test_crc32c.c: CRC-32C and the checkpoint checksums built on it.
 *
 * The checksum against published check values and against a bitwise
 * reference on random lengths and alignments (hardware path and table path
 * both); its speed against memcpy on the same buffer (printed: "memory speed"
 * is the claim); a checkpoint with one random bit flipped in its data is
 * refused, naming the damaged tensor; a checkpoint without checksums (older
 * files, other writers) still loads. ANATOMY_TEST_SEED replays a seed. */
#include <check.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../data/crc32c.h"
#include "../data/errbuf.h"
#include "../data/rng.h"
#include "../host/ckpt.h"
#include "../host/ckpt_crc.h"
#include "../host/safetensors.h"

static uint64_t g_seed;
static rng_state rng;
static char err[ERRBUF];
static char dir[64];

static uint32_t crc_bitwise(const unsigned char *p, size_t n)
{
    uint32_t c = ~0u;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    }
    return ~c;
}

static unsigned char *random_bytes(size_t n)
{
    unsigned char *b = malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        b[i] = (unsigned char)rng_next(&rng);
    return b;
}

START_TEST(test_check_values)
{
    ck_assert_uint_eq(crc32c(0, "123456789", 9), 0xe3069283u);
    ck_assert_uint_eq(crc32c_portable(0, "123456789", 9), 0xe3069283u);
    ck_assert_uint_eq(crc32c(0, "", 0), 0);
    unsigned char z[32] = { 0 }, ff[32];
    memset(ff, 0xff, sizeof ff);
    ck_assert_uint_eq(crc32c(0, z, 32), 0x8a9136aau); /* RFC 3720 B.4 */
    ck_assert_uint_eq(crc32c(0, ff, 32), 0x62a8ab43u);
}
END_TEST

START_TEST(test_random_against_bitwise)
{
    for (int t = 0; t < 200; t++) {
        size_t n = rng_next(&rng) % 3000, off = rng_next(&rng) % 8;
        unsigned char *b = random_bytes(n + 8);
        uint32_t want = crc_bitwise(b + off, n);
        ck_assert_uint_eq(crc32c(0, b + off, n), want);
        ck_assert_uint_eq(crc32c_portable(0, b + off, n), want);
        size_t cut = n ? rng_next(&rng) % n : 0; /* continuation */
        ck_assert_uint_eq(crc32c(crc32c(0, b + off, cut), b + off + cut, n - cut), want);
        free(b);
    }
}
END_TEST

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

START_TEST(test_speed)
{
    size_t n = 64u << 20;
    unsigned char *a = random_bytes(n), *b = malloc(n);
    memcpy(b, a, n); /* fault the pages in */
    double best_crc = 1e9, best_cpy = 1e9, best_port = 1e9;
    volatile uint32_t sink = 0;
    for (int r = 0; r < 3; r++) {
        double t0 = now_s();
        sink ^= crc32c(0, a, n);
        double t1 = now_s();
        memcpy(b, a, n);
        double t2 = now_s();
        sink ^= crc32c_portable(0, a, n / 4);
        double t3 = now_s();
        best_crc = t1 - t0 < best_crc ? t1 - t0 : best_crc;
        best_cpy = t2 - t1 < best_cpy ? t2 - t1 : best_cpy;
        best_port = 4 * (t3 - t2) < best_port ? 4 * (t3 - t2) : best_port;
    }
    printf("test_crc32c: crc32c %.2f GB/s, table path %.2f GB/s, memcpy %.2f GB/s (64 MiB)\n",
           n / best_crc / 1e9, n / best_port / 1e9, n / best_cpy / 1e9);
    (void)sink;
    /* a loose floor, so that a loaded CI machine passes: a checkpoint load
     * reads the file once and copies it once, so checking it must not cost
     * more than a few copies */
    ck_assert_msg(best_crc < 8 * best_cpy + 0.05, "crc32c %.3f s vs memcpy %.3f s", best_crc,
                  best_cpy);
    free(a);
    free(b);
}
END_TEST

static const gpt2_config tiny = { .V = 300, .maxT = 64, .L = 2, .NH = 4, .C = 32 };

static char *pth(const char *name)
{
    static char buf[8][128];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 128, "%s/%s", dir, name);
    return p;
}

START_TEST(test_flipped_bit_is_named)
{
    param_view *v;
    int nv;
    size_t n = gpt2_layout(&tiny, &v, &nv);
    float *p = malloc(n * 4), *m = malloc(n * 4), *s = malloc(n * 4), *q = malloc(n * 4);
    for (size_t i = 0; i < n; i++) {
        p[i] = (float)rng_normal(&rng);
        m[i] = (float)rng_normal(&rng);
        s[i] = fabsf((float)rng_normal(&rng));
    }
    const char *path = pth("a.ckpt");
    ck_assert_msg(ckpt_save(path, v, nv, n, p, m, s, NULL, err) == 0, "%s", err);
    st_file *f = st_open(path, err);
    ck_assert_ptr_nonnull(f);
    ck_assert_ptr_nonnull(st_meta(f, CKPT_CRC_KEY));
    /* a random bit of a random tensor's data */
    const st_tensor *t = st_at(f, (int)(rng_next(&rng) % (uint64_t)st_count(f)));
    uint64_t at = t->begin + rng_next(&rng) % (t->end - t->begin);
    char name[80];
    snprintf(name, sizeof name, "'%s'", t->name);
    st_close(f);
    /* the data section starts after 8 + header length bytes */
    int fd = open(path, O_RDWR);
    uint64_t hl;
    ck_assert_int_eq(pread(fd, &hl, 8, 0), 8);
    off_t pos = (off_t)(8 + hl + at);
    unsigned char byte;
    ck_assert_int_eq(pread(fd, &byte, 1, pos), 1);
    byte ^= (unsigned char)(1u << (rng_next(&rng) % 8));
    ck_assert_int_eq(pwrite(fd, &byte, 1, pos), 1);
    close(fd);
    ck_assert_int_eq(ckpt_load(path, v, nv, n, q, NULL, NULL, NULL, err), -1);
    ck_assert_msg(strstr(err, name) && strstr(err, "checksum") && strstr(err, path), "%s", err);
    ckpt_meta md;
    ck_assert_msg(ckpt_read_meta(path, &md, err) == 0, "%s", err); /* metadata still reads */
    ck_assert_ptr_null(ckpt_meta_get(&md, CKPT_CRC_KEY));
    ckpt_meta_free(&md);
    free(p); free(m); free(s); free(q); free(v);
}
END_TEST

START_TEST(test_no_checksum_loads)
{
    param_view *v;
    int nv;
    size_t n = gpt2_layout(&tiny, &v, &nv);
    float *p = malloc(n * 4), *q = malloc(n * 4);
    for (size_t i = 0; i < n; i++)
        p[i] = (float)rng_normal(&rng);
    st_out_tensor *t = calloc((size_t)nv, sizeof *t);
    for (int i = 0; i < nv; i++) {
        t[i].name = v[i].name;
        t[i].dtype = ST_F32;
        t[i].ndim = v[i].ndim;
        for (int k = 0; k < v[i].ndim; k++)
            t[i].shape[k] = v[i].shape[k];
        t[i].data = p + v[i].offset;
    }
    static const char *const meta[4] = { "format", "anatomy-ckpt", "version", "1" };
    const char *path = pth("old.ckpt");
    ck_assert_msg(st_write(path, t, nv, meta, 2, err) == 0, "%s", err);
    ck_assert_msg(ckpt_load(path, v, nv, n, q, NULL, NULL, NULL, err) == 0, "%s", err);
    ck_assert(!memcmp(p, q, n * 4));
    free(p); free(q); free(t); free(v);
}
END_TEST

/* A safetensors writer that copies the metadata may reorder the tensors
 * (Python's save_file sorts them): the copy still verifies, since checksums
 * are keyed by name; one tensor's bytes swapped with another's do not. */
START_TEST(test_reordered_copy_verifies)
{
    param_view *v;
    int nv;
    size_t n = gpt2_layout(&tiny, &v, &nv);
    float *p = malloc(n * 4), *q = malloc(n * 4);
    for (size_t i = 0; i < n; i++)
        p[i] = (float)rng_normal(&rng);
    const char *path = pth("orig.ckpt"), *copy = pth("copy.ckpt");
    ck_assert_msg(ckpt_save(path, v, nv, n, p, NULL, NULL, NULL, err) == 0, "%s", err);
    st_file *f = st_open(path, err);
    int cnt = st_count(f), nm = st_meta_count(f);
    st_out_tensor *o = calloc((size_t)cnt, sizeof *o);
    const char **meta = calloc(2 * (size_t)nm, sizeof *meta);
    for (int i = 0; i < nm; i++)
        st_meta_at(f, i, &meta[2 * i], &meta[2 * i + 1]);
    for (int i = 0; i < cnt; i++) { /* reversed */
        const st_tensor *t = st_at(f, cnt - 1 - i);
        o[i] = (st_out_tensor){ .name = t->name, .dtype = t->dtype, .ndim = t->ndim,
                                .data = st_data(f, t) };
        memcpy(o[i].shape, t->shape, sizeof o[i].shape);
    }
    ck_assert_msg(st_write(copy, o, cnt, meta, nm, err) == 0, "%s", err);
    ck_assert_msg(ckpt_load(copy, v, nv, n, q, NULL, NULL, NULL, err) == 0, "%s", err);
    ck_assert(!memcmp(p, q, n * 4));
    /* two tensors of one shape, their data swapped */
    int a = -1, b = -1;
    for (int i = 0; i < cnt && b < 0; i++)
        for (int j = i + 1; j < cnt && b < 0; j++)
            if (o[i].ndim == o[j].ndim && !memcmp(o[i].shape, o[j].shape, sizeof o[i].shape)) {
                a = i;
                b = j;
            }
    ck_assert_int_ge(b, 0);
    const void *d = o[a].data;
    o[a].data = o[b].data;
    o[b].data = d;
    ck_assert_msg(st_write(copy, o, cnt, meta, nm, err) == 0, "%s", err);
    ck_assert_int_eq(ckpt_load(copy, v, nv, n, q, NULL, NULL, NULL, err), -1);
    ck_assert_msg(strstr(err, "checksum"), "%s", err);
    st_close(f);
    free(o); free(meta); free(p); free(q); free(v);
}
END_TEST

static Suite *crc_suite(void)
{
    Suite *s = suite_create("crc32c");
    TCase *tc = tcase_create("crc32c");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_check_values);
    tcase_add_test(tc, test_random_against_bitwise);
    tcase_add_test(tc, test_speed);
    tcase_add_test(tc, test_flipped_bit_is_named);
    tcase_add_test(tc, test_no_checksum_loads);
    tcase_add_test(tc, test_reordered_copy_verifies);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    const char *env = getenv("ANATOMY_TEST_SEED");
    g_seed = env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    printf("test_crc32c: seed %llu (ANATOMY_TEST_SEED to replay)\n", (unsigned long long)g_seed);
    fflush(stdout);
    rng_seed(&rng, g_seed);
    strcpy(dir, "/tmp/test_crc32c.XXXXXX");
    if (!mkdtemp(dir))
        return 1;
    SRunner *sr = srunner_create(crc_suite());
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd))
        fprintf(stderr, "test_crc32c: could not remove %s\n", dir);
    return failed ? 1 : 0;
}
