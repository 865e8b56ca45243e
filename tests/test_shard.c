/* test_shard.c: token shards, the micro-batch loader and `anatomy prep`.
 *
 * Every test draws fresh tokens from a seed printed at start (set
 * ANATOMY_TEST_SEED to replay one). Shards are read back by an independent
 * reader here, and the loader's batches are checked against the stream they
 * must come from. prep runs in a child process (it exits on errors), so its
 * exit status and messages can be checked. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "../data/errbuf.h"
#include "../data/rng.h"
#include "../data/shard.h"
#include "../data/tokenizer.h"
#include "../host/cli.h"

static uint64_t g_seed;

/* ---- helpers ---- */

static void tmpdir_new(char *dir)
{
    strcpy(dir, "/tmp/test_shard.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void tmpdir_rm(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[1024];
    if (!d)
        return;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

/* Number of entries in dir whose name contains s. */
static int dir_count(const char *dir, const char *s)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    ck_assert_ptr_nonnull(d);
    while ((e = readdir(d)))
        n += strstr(e->d_name, s) != NULL;
    closedir(d);
    return n;
}

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, n, f), n);
    ck_assert_int_eq(fclose(f), 0);
}

static unsigned char *read_all(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *p = malloc((size_t)len + 1);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_eq(fread(p, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return p;
}

static int32_t le32(const unsigned char *p)
{
    return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                     (uint32_t)p[3] << 24);
}

/* An independent shard reader: checks the layout byte by byte, returns the tokens. */
static uint16_t *read_shard(const char *path, size_t *n)
{
    size_t len;
    unsigned char *p = read_all(path, &len);
    ck_assert_uint_ge(len, 1024);
    ck_assert_int_eq(le32(p), 20240520);
    ck_assert_int_eq(le32(p + 4), 1);
    for (int i = 3; i < 256; i++)
        ck_assert_int_eq(le32(p + 4 * i), 0);
    *n = (size_t)le32(p + 8);
    ck_assert_uint_eq(len, 1024 + 2 * *n);
    uint16_t *t = malloc(*n * 2 + 2);
    for (size_t i = 0; i < *n; i++)
        t[i] = (uint16_t)(p[1024 + 2 * i] | p[1024 + 2 * i + 1] << 8);
    free(p);
    return t;
}

static void rand_tokens(rng_state *r, uint16_t *t, size_t n, int vocab)
{
    for (size_t i = 0; i < n; i++)
        t[i] = (uint16_t)rng_below(r, (uint64_t)vocab);
}

/* Writes nf shards dir/s_NNN.bin of random sizes in [lo, hi] and returns the
 * concatenated stream (*n tokens). */
static uint16_t *make_shards(const char *dir, rng_state *r, int nf, int lo, int hi, int vocab,
                             size_t *n)
{
    size_t cap = (size_t)nf * (size_t)hi;
    uint16_t *s = malloc(cap * 2);
    char path[1024], err[ERRBUF];
    *n = 0;
    for (int f = 0; f < nf; f++) {
        size_t m = (size_t)lo + rng_below(r, (uint64_t)(hi - lo + 1));
        rand_tokens(r, s + *n, m, vocab);
        snprintf(path, sizeof path, "%s/s_%03d.bin", dir, f);
        ck_assert_msg(shard_write(path, s + *n, m, err) == 0, "%s", err);
        *n += m;
    }
    return s;
}

static char *pattern_of(const char *dir)
{
    static char p[1024];
    snprintf(p, sizeof p, "%s/s_*.bin", dir);
    return p;
}

/* Checks one micro-batch against the stream tokens at start (wrapping). */
static void check_batch(const uint16_t *s, size_t n, uint64_t start, size_t bt,
                        const int32_t *in, const int32_t *tg)
{
    for (size_t i = 0; i < bt; i++) {
        ck_assert_int_eq(in[i], s[(start + i) % n]);
        ck_assert_int_eq(tg[i], s[(start + i + 1) % n]);
    }
}

/* The chunk c (stream tokens [c*bt, c*bt + bt]) that a batch holds, or -1. */
static long find_chunk(const uint16_t *s, size_t n, size_t bt, const int32_t *in,
                       const int32_t *tg)
{
    size_t nch = (n - 1) / bt;
    for (size_t c = 0; c < nch; c++) {
        size_t i;
        for (i = 0; i < bt; i++)
            if (in[i] != s[c * bt + i] || tg[i] != s[c * bt + i + 1])
                break;
        if (i == bt)
            return (long)c;
    }
    return -1;
}

/* ---- shard files ---- */

START_TEST(test_write_read)
{
    rng_state r;
    rng_seed(&r, g_seed + 1);
    char dir[64], path[128], err[ERRBUF];
    tmpdir_new(dir);
    for (int rep = 0; rep < 5; rep++) {
        size_t n = 1 + rng_below(&r, 5000), m;
        uint16_t *t = malloc(n * 2);
        rand_tokens(&r, t, n, 65536);
        snprintf(path, sizeof path, "%s/w.bin", dir);
        ck_assert_msg(shard_write(path, t, n, err) == 0, "%s", err);
        uint16_t *back = read_shard(path, &m);
        ck_assert_uint_eq(m, n);
        ck_assert_mem_eq(back, t, n * 2);
        /* rewriting replaces the file and leaves no temporary behind */
        ck_assert_int_eq(dir_count(dir, ".tmp"), 0);
        ck_assert_int_eq(dir_count(dir, ".bin"), 1);
        free(back);
        free(t);
    }
    /* a folder that does not exist: error names the path, nothing left */
    snprintf(path, sizeof path, "%s/nope/w.bin", dir);
    uint16_t one = 7;
    ck_assert_int_eq(shard_write(path, &one, 1, err), -1);
    ck_assert_ptr_nonnull(strstr(err, path));
    tmpdir_rm(dir);
}
END_TEST

/* ---- micro-batches ---- */

START_TEST(test_sequential)
{
    rng_state r;
    rng_seed(&r, g_seed + 2);
    char dir[64], err[ERRBUF];
    for (int rep = 0; rep < 6; rep++) {
        tmpdir_new(dir);
        int B = 1 + (int)rng_below(&r, 4), T = 1 + (int)rng_below(&r, 24);
        int vocab = 50 + (int)rng_below(&r, 65487);
        size_t n, bt = (size_t)B * T;
        int nf = 1 + (int)rng_below(&r, 4);
        /* small shards, often shorter than one batch: batches cross files */
        uint16_t *s = make_shards(dir, &r, nf, 1, (int)bt + 40, vocab, &n);
        if (n < bt + 1) {       /* too short is tested elsewhere */
            free(s);
            tmpdir_rm(dir);
            rep--;
            continue;
        }
        loader *ld = loader_open(pattern_of(dir), B, T, 0, 1, 0, 0, vocab, err);
        ck_assert_msg(ld != NULL, "%s", err);
        ck_assert_int_eq(loader_files(ld), nf);
        ck_assert_uint_eq(loader_tokens(ld), n);
        int32_t *in = malloc(bt * 4), *tg = malloc(bt * 4);
        /* enough steps to wrap around the stream at least twice */
        uint64_t steps = 2 * (n / bt) + 5;
        for (uint64_t k = 0; k < steps; k++) {
            ck_assert_uint_eq(loader_position(ld), k);
            ck_assert_msg(loader_next(ld, in, tg, err) == 0, "%s", err);
            check_batch(s, n, (k * bt) % n, bt, in, tg);
        }
        loader_close(ld);
        free(in);
        free(tg);
        free(s);
        tmpdir_rm(dir);
    }
}
END_TEST

/* Ranks of world 2 together read what world 1 reads, step for step, and
 * never the same micro-batch; with and without shuffling. */
START_TEST(test_ranks)
{
    rng_state r;
    rng_seed(&r, g_seed + 3);
    char dir[64], err[ERRBUF];
    for (int rep = 0; rep < 4; rep++) {
        tmpdir_new(dir);
        int B = 1 + (int)rng_below(&r, 3), T = 2 + (int)rng_below(&r, 16);
        int shuffle = rep & 1, world = 2 + (int)rng_below(&r, 2);
        size_t n, bt = (size_t)B * T;
        uint16_t *s = make_shards(dir, &r, 3, (int)bt * 3, (int)bt * 6, 65536, &n);
        uint64_t seed = rng_next(&r);
        loader *one = loader_open(pattern_of(dir), B, T, 0, 1, shuffle, seed, 65536, err);
        ck_assert_msg(one != NULL, "%s", err);
        loader *rk[3];
        for (int q = 0; q < world; q++) {
            rk[q] = loader_open(pattern_of(dir), B, T, q, world, shuffle, seed, 65536, err);
            ck_assert_msg(rk[q] != NULL, "%s", err);
        }
        int32_t *in = malloc(bt * 4), *tg = malloc(bt * 4);
        int32_t *in1 = malloc(bt * 4), *tg1 = malloc(bt * 4);
        size_t nch = (n - 1) / bt;
        long *seen = calloc(nch, sizeof *seen);
        for (uint64_t j = 0; j < 2 * nch; j++) {
            for (int q = 0; q < world; q++) {
                ck_assert_int_eq(loader_next(rk[q], in, tg, err), 0);
                ck_assert_int_eq(loader_next(one, in1, tg1, err), 0);
                ck_assert_mem_eq(in, in1, bt * 4);
                ck_assert_mem_eq(tg, tg1, bt * 4);
                if (shuffle && j * world + q < nch) {   /* first epoch: disjoint chunks */
                    long c = find_chunk(s, n, bt, in, tg);
                    ck_assert_int_ge(c, 0);
                    ck_assert_int_eq(seen[c], 0);
                    seen[c] = q + 1;
                }
            }
        }
        for (int q = 0; q < world; q++) {
            ck_assert_uint_eq(loader_position(rk[q]), 2 * nch);
            loader_close(rk[q]);
        }
        loader_close(one);
        free(seen);
        free(in);
        free(tg);
        free(in1);
        free(tg1);
        free(s);
        tmpdir_rm(dir);
    }
}
END_TEST

/* Reads one epoch of chunk indices from a loader. */
static void read_epoch(loader *ld, const uint16_t *s, size_t n, size_t bt, long *order)
{
    size_t nch = (n - 1) / bt;
    int32_t *in = malloc(bt * 4), *tg = malloc(bt * 4);
    char err[ERRBUF];
    char *seen = calloc(nch, 1);
    for (size_t i = 0; i < nch; i++) {
        ck_assert_msg(loader_next(ld, in, tg, err) == 0, "%s", err);
        order[i] = find_chunk(s, n, bt, in, tg);
        ck_assert_int_ge(order[i], 0);
        ck_assert_int_eq(seen[order[i]], 0);    /* each chunk once per epoch */
        seen[order[i]] = 1;
    }
    free(seen);
    free(in);
    free(tg);
}

START_TEST(test_shuffle)
{
    rng_state r;
    rng_seed(&r, g_seed + 4);
    char dir[64], err[ERRBUF];
    tmpdir_new(dir);
    int B = 2, T = 3 + (int)rng_below(&r, 8);
    size_t n, bt = (size_t)B * T;
    /* 30..60 chunks, plus a tail shorter than a chunk that shuffling skips */
    uint16_t *s = make_shards(dir, &r, 2, (int)bt * 15 + 1, (int)bt * 30, 65536, &n);
    size_t nch = (n - 1) / bt;
    uint64_t seed = rng_next(&r);
    long *a = malloc(3 * nch * sizeof *a), *b = malloc(3 * nch * sizeof *b);
    long *c = malloc(nch * sizeof *c);

    loader *l1 = loader_open(pattern_of(dir), B, T, 0, 1, 1, seed, 65536, err);
    loader *l2 = loader_open(pattern_of(dir), B, T, 0, 1, 1, seed, 65536, err);
    loader *l3 = loader_open(pattern_of(dir), B, T, 0, 1, 1, seed + 1, 65536, err);
    ck_assert_msg(l1 && l2 && l3, "%s", err);
    for (int e = 0; e < 3; e++) {
        read_epoch(l1, s, n, bt, a + e * nch);
        read_epoch(l2, s, n, bt, b + e * nch);
    }
    read_epoch(l3, s, n, bt, c);
    /* same seed, same order; another seed or another epoch, another order */
    ck_assert_mem_eq(a, b, 3 * nch * sizeof *a);
    ck_assert(memcmp(a, c, nch * sizeof *a) != 0);
    ck_assert(memcmp(a, a + nch, nch * sizeof *a) != 0);
    ck_assert(memcmp(a + nch, a + 2 * nch, nch * sizeof *a) != 0);
    /* and not the identity */
    int ident = 1;
    for (size_t i = 0; i < nch; i++)
        ident &= a[i] == (long)i;
    ck_assert(!ident);
    loader_close(l1);
    loader_close(l2);
    loader_close(l3);
    free(a);
    free(b);
    free(c);
    free(s);
    tmpdir_rm(dir);
}
END_TEST

/* A loader sought to position p yields exactly what one that read p batches
 * yields next: the resume contract. */
START_TEST(test_seek)
{
    rng_state r;
    rng_seed(&r, g_seed + 5);
    char dir[64], err[ERRBUF];
    for (int rep = 0; rep < 4; rep++) {
        tmpdir_new(dir);
        int B = 1 + (int)rng_below(&r, 3), T = 2 + (int)rng_below(&r, 10);
        int shuffle = rep & 1, world = 1 + (rep >> 1), rank = world - 1;
        size_t n, bt = (size_t)B * T;
        uint16_t *s = make_shards(dir, &r, 2, (int)bt * 4, (int)bt * 9, 65536, &n);
        uint64_t seed = rng_next(&r);
        int steps = 3 * (int)(n / bt) + 3;
        int32_t *in = malloc(bt * 4 * (size_t)steps), *tg = malloc(bt * 4 * (size_t)steps);
        loader *ld = loader_open(pattern_of(dir), B, T, rank, world, shuffle, seed, 65536, err);
        ck_assert_msg(ld != NULL, "%s", err);
        for (int k = 0; k < steps; k++)
            ck_assert_int_eq(loader_next(ld, in + k * bt, tg + k * bt, err), 0);
        loader_close(ld);
        int32_t *in2 = malloc(bt * 4), *tg2 = malloc(bt * 4);
        for (int t = 0; t < 6; t++) {
            uint64_t p = rng_below(&r, (uint64_t)steps);
            ld = loader_open(pattern_of(dir), B, T, rank, world, shuffle, seed, 65536, err);
            ck_assert_msg(ld != NULL, "%s", err);
            /* wander first, so that no state but the position can carry over */
            for (int w = 0; w < 3; w++)
                ck_assert_int_eq(loader_next(ld, in2, tg2, err), 0);
            loader_seek(ld, p);
            ck_assert_uint_eq(loader_position(ld), p);
            for (uint64_t k = p; k < (uint64_t)steps; k++) {
                ck_assert_int_eq(loader_next(ld, in2, tg2, err), 0);
                ck_assert_mem_eq(in2, in + k * bt, bt * 4);
                ck_assert_mem_eq(tg2, tg + k * bt, bt * 4);
            }
            ck_assert_uint_eq(loader_position(ld), (uint64_t)steps);
            loader_close(ld);
        }
        free(in);
        free(tg);
        free(in2);
        free(tg2);
        free(s);
        tmpdir_rm(dir);
    }
}
END_TEST

/* ---- bad input ---- */

/* Opens pattern and expects failure with a message containing want. */
static void expect_open_fails(const char *pattern, int B, int T, const char *want)
{
    char err[ERRBUF] = "";
    loader *ld = loader_open(pattern, B, T, 0, 1, 0, 0, 65536, err);
    ck_assert_msg(ld == NULL, "%s: opened, expected an error", pattern);
    ck_assert_msg(strstr(err, want) != NULL, "message '%s' lacks '%s'", err, want);
}

/* A valid shard image of n random tokens (count in the header may lie). */
static unsigned char *shard_image(rng_state *r, size_t n, int32_t count, size_t *len)
{
    *len = 1024 + 2 * n;
    unsigned char *p = calloc(*len + 16, 1);    /* + 16: room for trailing bytes */
    int32_t h[3] = { 20240520, 1, count };
    for (int i = 0; i < 3; i++)
        for (int b = 0; b < 4; b++)
            p[4 * i + b] = (unsigned char)((uint32_t)h[i] >> (8 * b));
    for (size_t i = 0; i < 2 * n; i++)
        p[1024 + i] = (unsigned char)rng_next(r);
    return p;
}

START_TEST(test_bad_files)
{
    rng_state r;
    rng_seed(&r, g_seed + 6);
    char dir[64], good[128], bad[128], pat[160];
    tmpdir_new(dir);
    size_t n = 200 + rng_below(&r, 200), len;
    /* a good first file, so the message must name the second, bad one */
    snprintf(good, sizeof good, "%s/a_0.bin", dir);
    snprintf(bad, sizeof bad, "%s/a_1.bin", dir);
    snprintf(pat, sizeof pat, "%s/a_*.bin", dir);
    unsigned char *img = shard_image(&r, n, (int32_t)n, &len);
    write_file(good, img, len);

    write_file(bad, img, len - 1 - rng_below(&r, 2 * n - 1));      /* truncated tokens */
    expect_open_fails(pat, 2, 4, bad);
    expect_open_fails(pat, 2, 4, "truncated");
    write_file(bad, img, rng_below(&r, 1024));                      /* truncated header */
    expect_open_fails(pat, 2, 4, bad);
    write_file(bad, img, len + 1 + rng_below(&r, 9));               /* trailing bytes */
    expect_open_fails(pat, 2, 4, bad);

    unsigned char *m = malloc(len);
    memcpy(m, img, len);
    m[rng_below(&r, 4)] ^= (unsigned char)(1 + rng_below(&r, 255));   /* wrong magic */
    write_file(bad, m, len);
    expect_open_fails(pat, 2, 4, bad);
    expect_open_fails(pat, 2, 4, "magic");
    memcpy(m, img, len);
    m[4] = (unsigned char)(2 + rng_below(&r, 200));                 /* wrong version */
    write_file(bad, m, len);
    expect_open_fails(pat, 2, 4, bad);
    expect_open_fails(pat, 2, 4, "version");
    memcpy(m, img, len);
    m[8] ^= 1;                                                      /* count != size */
    write_file(bad, m, len);
    expect_open_fails(pat, 2, 4, bad);
    memcpy(m, img, len);
    m[11] = 0x80;                                                   /* negative count */
    write_file(bad, m, len);
    expect_open_fails(pat, 2, 4, bad);
    free(m);
    unsigned char *empty = shard_image(&r, 0, 0, &len);             /* empty shard */
    write_file(bad, empty, len);
    expect_open_fails(pat, 2, 4, bad);
    expect_open_fails(pat, 2, 4, "empty");
    free(empty);
    unlink(bad);

    /* a glob that matches nothing names the pattern */
    char none[160];
    snprintf(none, sizeof none, "%s/zz_*.bin", dir);
    expect_open_fails(none, 2, 4, none);
    /* a stream shorter than B*T+1: exactly n tokens for B*T = n fails, n-1 works */
    expect_open_fails(pat, 1, (int)n, pat);
    char err[ERRBUF];
    loader *ld = loader_open(pat, 1, (int)n - 1, 0, 1, 1, 0, 65536, err);
    ck_assert_msg(ld != NULL, "%s", err);
    loader_close(ld);
    /* bad arguments */
    ck_assert_ptr_null(loader_open(pat, 0, 4, 0, 1, 0, 0, 65536, err));
    ck_assert_ptr_null(loader_open(pat, 2, 4, 2, 2, 0, 0, 65536, err));
    ck_assert_ptr_null(loader_open(pat, 2, 4, 0, 1, 0, 0, 65537, err));
    free(img);
    tmpdir_rm(dir);
}
END_TEST

START_TEST(test_bad_token)
{
    rng_state r;
    rng_seed(&r, g_seed + 7);
    char dir[64], err[ERRBUF], path[128], want[256];
    for (int rep = 0; rep < 5; rep++) {
        tmpdir_new(dir);
        int vocab = 2 + (int)rng_below(&r, 60000);
        size_t n, bt = 8;
        uint16_t *s = make_shards(dir, &r, 3, 10, 40, vocab, &n);
        /* one out-of-vocabulary token in a random file at a random offset */
        int f = (int)rng_below(&r, 3);
        snprintf(path, sizeof path, "%s/s_%03d.bin", dir, f);
        size_t m;
        uint16_t *t = read_shard(path, &m);
        size_t off = rng_below(&r, m);
        t[off] = (uint16_t)(vocab + rng_below(&r, (uint64_t)(65536 - vocab)));
        ck_assert_int_eq(shard_write(path, t, m, err), 0);
        snprintf(want, sizeof want, "%s: token %u at index %zu", path, t[off], off);
        loader *ld = loader_open(pattern_of(dir), 2, 4, 0, 1, 0, 0, vocab, err);
        ck_assert_msg(ld != NULL, "%s", err);
        int32_t in[8], tg[8];
        int failed = 0;
        for (uint64_t k = 0; k < n / bt + 2 && !failed; k++) {
            uint64_t pos = loader_position(ld);
            if (loader_next(ld, in, tg, err) < 0) {
                failed = 1;
                ck_assert_msg(strstr(err, want) != NULL, "'%s' lacks '%s'", err, want);
                ck_assert_uint_eq(loader_position(ld), pos);   /* not consumed */
            }
        }
        ck_assert_msg(failed, "token >= vocab was never reported");
        loader_close(ld);
        free(t);
        free(s);
        tmpdir_rm(dir);
    }
}
END_TEST

/* Shards truncated, or replaced by shorter ones, after the loader opened
 * them and while it reads them: a clear error naming the file, never a
 * crash (reading a mapping past a file's new end raises SIGBUS, which ends
 * the test's process). */
START_TEST(test_truncated_in_use)
{
    rng_state r;
    rng_seed(&r, g_seed + 11);
    char dir[64], err[ERRBUF], path[128];
    for (int rep = 0; rep < 4; rep++) {
        tmpdir_new(dir);
        size_t n;
        int vocab = 1000, replace = rep & 1;
        uint16_t *s = make_shards(dir, &r, 3, 5000, 8000, vocab, &n); /* pages */
        loader *ld = loader_open(pattern_of(dir), 2, 4, 0, 1, rep >= 2, g_seed, vocab, err);
        ck_assert_msg(ld != NULL, "%s", err);
        int32_t in[8], tg[8];
        ck_assert_msg(loader_next(ld, in, tg, err) == 0, "%s", err);
        for (int f = 0; f < 3; f++) { /* each down to one token */
            snprintf(path, sizeof path, "%s/s_%03d.bin", dir, f);
            if (replace)
                ck_assert_msg(shard_write(path, s, 1, err) == 0, "%s", err);
            else
                ck_assert_int_eq(truncate(path, SHARD_HEADER_INTS * 4 + 2), 0);
        }
        int failed = 0;
        for (size_t k = 0; k < n / 8 + 2 && !failed; k++) {
            if (loader_next(ld, in, tg, err) < 0) {
                failed = 1;
                ck_assert_msg(strstr(err, dir) && (strstr(err, "truncated while in use") ||
                                                   strstr(err, "changed while in use")),
                              "%s", err);
            }
        }
        ck_assert_msg(failed, "rep %d: the shrunken shards were read without an error", rep);
        loader_close(ld);
        free(s);
        tmpdir_rm(dir);
    }
}
END_TEST

/* Random bytes, with a plausible header now and then: the loader must fail
 * cleanly or read batches, never crash. */
START_TEST(test_fuzz_files)
{
    rng_state r;
    rng_seed(&r, g_seed + 8);
    char dir[64], path[128], err[ERRBUF];
    tmpdir_new(dir);
    snprintf(path, sizeof path, "%s/s_000.bin", dir);
    for (int rep = 0; rep < 200; rep++) {
        size_t len = rng_below(&r, 1400), k;
        unsigned char *p = shard_image(&r, len / 2, 0, &k);
        for (size_t i = 0; i < 12; i++)
            if (rng_below(&r, 4) == 0)
                p[i] = (unsigned char)rng_next(&r);
        if (rng_below(&r, 2))
            p[8] = (unsigned char)((k - 1024) / 2), p[9] = (unsigned char)((k - 1024) / 512);
        write_file(path, p, rng_below(&r, 3) ? k : len);
        loader *ld = loader_open(pattern_of(dir), 1, 1 + (int)rng_below(&r, 8), 0, 1,
                                 (int)rng_below(&r, 2), 0, 1 + (int)rng_below(&r, 65536), err);
        if (!ld) {
            ck_assert_ptr_nonnull(strstr(err, dir));
        } else {
            int32_t in[8], tg[8];
            for (int s = 0; s < 20; s++)
                if (loader_next(ld, in, tg, err) < 0)
                    ck_assert_ptr_nonnull(strstr(err, path));
            loader_close(ld);
        }
        free(p);
    }
    tmpdir_rm(dir);
}
END_TEST

/* ---- prep ---- */

struct run {
    int status;                 /* exit status, or -1 when killed */
    char out[8192], err[8192];
};

/* Runs cmd_prep(argv) in a child with stdout and stderr captured. */
static void run_prep(const char *dir, char **argv, struct run *rr)
{
    char po[128], pe[128];
    snprintf(po, sizeof po, "%s/stdout.txt", dir);
    snprintf(pe, sizeof pe, "%s/stderr.txt", dir);
    int argc = 0;
    while (argv[argc])
        argc++;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        if (!freopen(po, "w", stdout) || !freopen(pe, "w", stderr))
            _exit(99);
        int rc = cmd_prep(argc, argv);
        fflush(stdout);
        _exit(rc);
    }
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    rr->status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    size_t n;
    unsigned char *p = read_all(po, &n);
    snprintf(rr->out, sizeof rr->out, "%.*s", (int)n, (char *)p);
    free(p);
    p = read_all(pe, &n);
    snprintf(rr->err, sizeof rr->err, "%.*s", (int)n, (char *)p);
    free(p);
    unlink(po);
    unlink(pe);
    /* under make asan, a sanitizer report in the child must fail the test */
    ck_assert_msg(!strstr(rr->err, "runtime error") && !strstr(rr->err, "Sanitizer"), "%s",
                  rr->err);
}

/* Random text: words, digits, punctuation, spaces, newlines (single and
 * runs), a little UTF-8, so that many places qualify as cuts and many do not. */
static char *rand_text(rng_state *r, size_t n)
{
    static const char *bits[] = { "the", " cat", " sat", "\n", "\n\n", " ", "  ", ".", ",",
                                  "'s", " 1234", "\xc3\xa9t\xc3\xa9", " \xe2\x82\xac", "\t",
                                  "Hello", "!\n", "\n ", " \n", "x", "\r\n", "?" };
    char *t = malloc(n + 32);
    size_t k = 0;
    while (k < n) {
        const char *b = bits[rng_below(r, sizeof bits / sizeof bits[0])];
        size_t m = strlen(b);
        memcpy(t + k, b, m);
        k += m;
    }
    t[n] = 0;
    /* cut inside a UTF-8 sequence at the end is fine: prep takes bytes */
    return t;
}

/* Concatenation of PREFIX_train_* shards (from index 0 until one is missing). */
static uint16_t *read_train(const char *prefix, size_t *n, int *nshards, size_t *sizes)
{
    uint16_t *all = NULL;
    *n = 0;
    *nshards = 0;
    for (;;) {
        char path[256];
        struct stat st;
        snprintf(path, sizeof path, "%s_train_%06d.bin", prefix, *nshards);
        if (stat(path, &st) != 0)
            break;
        size_t m;
        uint16_t *t = read_shard(path, &m);
        all = realloc(all, (*n + m) * 2 + 2);
        memcpy(all + *n, t, m * 2);
        *n += m;
        if (sizes)
            sizes[*nshards] = m;
        (*nshards)++;
        free(t);
    }
    return all;
}

START_TEST(test_prep_bytes)
{
    rng_state r;
    rng_seed(&r, g_seed + 9);
    char dir[64], f1[128], f2[128], prefix[128], vp[160];
    tmpdir_new(dir);
    size_t n1 = 1000 + rng_below(&r, 20000), n2 = rng_below(&r, 5000);
    char *t1 = rand_text(&r, n1), *t2 = rand_text(&r, n2);
    snprintf(f1, sizeof f1, "%s/a.txt", dir);
    snprintf(f2, sizeof f2, "%s/b.txt", dir);
    snprintf(prefix, sizeof prefix, "%s/out", dir);
    snprintf(vp, sizeof vp, "%s_val_000000.bin", prefix);
    write_file(f1, t1, n1);
    write_file(f2, t2, n2);
    size_t total = n1 + n2;
    char *text = malloc(total);
    memcpy(text, t1, n1);
    memcpy(text + n1, t2, n2);

    char val[32], shard[32], chunk[32];
    size_t V = rng_below(&r, 500), S = 100 + rng_below(&r, 3000);
    snprintf(val, sizeof val, "%zu", V);
    snprintf(shard, sizeof shard, "%zu", S);
    snprintf(chunk, sizeof chunk, "%d", 1 + (int)rng_below(&r, 300));
    char *argv[] = { "prep", "--tokenizer", "bytes", "--input", f1, f2, "--out", prefix,
                     "--val-tokens", val, "--shard-tokens", shard, "--chunk-bytes", chunk,
                     "--threads", "2", NULL };
    struct run rr;
    run_prep(dir, argv, &rr);
    ck_assert_msg(rr.status == 0, "status %d: %s", rr.status, rr.err);
    /* bytes: ids are the bytes, no end-of-text; val first, then train */
    size_t n, sizes[4096];
    int ns;
    if (V > 0) {
        size_t m;
        uint16_t *v = read_shard(vp, &m);
        ck_assert_uint_eq(m, V);
        for (size_t i = 0; i < V; i++)
            ck_assert_int_eq(v[i], (unsigned char)text[i]);
        free(v);
    } else {
        ck_assert_int_ne(access(vp, F_OK), 0);
    }
    uint16_t *tr = read_train(prefix, &n, &ns, sizes);
    ck_assert_uint_eq(n, total - V);
    for (size_t i = 0; i < n; i++)
        ck_assert_int_eq(tr[i], (unsigned char)text[V + i]);
    ck_assert_int_eq(ns, (int)((n + S - 1) / S));
    for (int i = 0; i + 1 < ns; i++)
        ck_assert_uint_eq(sizes[i], S);
    ck_assert_int_eq(dir_count(dir, ".tmp"), 0);
    free(tr);

    /* the default val: 10% of the tokens (under the 1M cap) */
    tmpdir_rm(dir);
    tmpdir_new(dir);
    snprintf(f1, sizeof f1, "%s/a.txt", dir);
    snprintf(prefix, sizeof prefix, "%s/out", dir);
    snprintf(vp, sizeof vp, "%s_val_000000.bin", prefix);
    write_file(f1, t1, n1);
    char *argv2[] = { "prep", "--tokenizer=bytes", "--input", f1, "--out", prefix, NULL };
    run_prep(dir, argv2, &rr);
    ck_assert_msg(rr.status == 0, "status %d: %s", rr.status, rr.err);
    size_t m;
    uint16_t *v = read_shard(vp, &m);
    ck_assert_uint_eq(m, n1 / 10);
    free(v);
    tr = read_train(prefix, &n, &ns, NULL);
    ck_assert_uint_eq(n, n1 - n1 / 10);
    ck_assert_int_eq(ns, 1);
    ck_assert_int_eq(tr[0], (unsigned char)t1[n1 / 10]);
    free(tr);

    free(text);
    free(t1);
    free(t2);
    tmpdir_rm(dir);
}
END_TEST

/* JSON Lines: each record's field is a document; escapes decode to UTF-8. */
START_TEST(test_prep_jsonl)
{
    rng_state r;
    rng_seed(&r, g_seed + 10);
    char dir[64], f1[128], prefix[128];
    tmpdir_new(dir);
    snprintf(f1, sizeof f1, "%s/a.jsonl", dir);
    snprintf(prefix, sizeof prefix, "%s/out", dir);
    int nrec = 5 + (int)rng_below(&r, 30);
    size_t cap = 1 << 16;
    char *json = malloc(cap), *want = malloc(cap);
    size_t jn = 0, wn = 0;
    for (int i = 0; i < nrec; i++) {
        int len = (int)rng_below(&r, 40);
        jn += (size_t)sprintf(json + jn, "{\"id\": %d, \"meta\": {\"a\": [1, \"}\"]}, \"text\": \"", i);
        for (int k = 0; k < len; k++) {
            switch (rng_below(&r, 6)) {
            case 0: jn += (size_t)sprintf(json + jn, "\\n"); want[wn++] = '\n'; break;
            case 1: jn += (size_t)sprintf(json + jn, "\\\""); want[wn++] = '"'; break;
            case 2: jn += (size_t)sprintf(json + jn, "\\u00e9");
                    want[wn++] = (char)0xc3; want[wn++] = (char)0xa9; break;
            case 3: jn += (size_t)sprintf(json + jn, "\\ud83d\\ude00");
                    memcpy(want + wn, "\xf0\x9f\x98\x80", 4); wn += 4; break;
            default: {
                char c = (char)('a' + rng_below(&r, 26));
                json[jn++] = c;
                want[wn++] = c;
            }
            }
        }
        jn += (size_t)sprintf(json + jn, "\"}\n%s", rng_below(&r, 4) ? "" : "\n");
    }
    write_file(f1, json, jn);
    char *argv[] = { "prep", "--tokenizer", "bytes", "--jsonl-field", "text", "--input", f1,
                     "--out", prefix, "--val-tokens", "0", "--chunk-bytes", "7", NULL };
    struct run rr;
    run_prep(dir, argv, &rr);
    ck_assert_msg(rr.status == 0, "status %d: %s", rr.status, rr.err);
    size_t n;
    int ns;
    uint16_t *tr = read_train(prefix, &n, &ns, NULL);
    if (wn == 0) {
        ck_assert_int_eq(ns, 0);
    } else {
        ck_assert_uint_eq(n, wn);
        for (size_t i = 0; i < n; i++)
            ck_assert_int_eq(tr[i], (unsigned char)want[i]);
    }
    free(tr);

    /* a record without the field: error names file and line */
    FILE *f = fopen(f1, "a");
    fprintf(f, "{\"other\": \"x\"}\n");
    fclose(f);
    run_prep(dir, argv, &rr);
    ck_assert_int_eq(rr.status, 1);
    char at[160];
    snprintf(at, sizeof at, "%s:", f1);
    ck_assert_msg(strstr(rr.err, at) && strstr(rr.err, "text"), "%s", rr.err);
    free(json);
    free(want);
    tmpdir_rm(dir);
}
END_TEST

/* gpt2: documents start with <|endoftext|>; cutting the text into small
 * work items and tokenizing on threads changes no token. */
START_TEST(test_prep_gpt2)
{
    char err[ERRBUF];
    tokenizer *tk = tokenizer_open("gpt2", NULL, err);
    if (!tk) {
        fprintf(stderr, "test_prep_gpt2: skipped, no gpt2 vocabulary (%s)\n", err);
        return;
    }
    rng_state r;
    rng_seed(&r, g_seed + 11);
    char dir[64], f[3][128], p1[128], p2[128];
    tmpdir_new(dir);
    char *text[3];
    size_t len[3];
    for (int i = 0; i < 3; i++) {
        len[i] = 2000 + rng_below(&r, 30000);
        text[i] = rand_text(&r, len[i]);
        snprintf(f[i], sizeof f[i], "%s/in%d.txt", dir, i);
        write_file(f[i], text[i], len[i]);
    }
    snprintf(p1, sizeof p1, "%s/one", dir);
    snprintf(p2, sizeof p2, "%s/many", dir);
    char chunk[32];
    snprintf(chunk, sizeof chunk, "%d", 16 + (int)rng_below(&r, 500));
    char *a1[] = { "prep", "--tokenizer", "gpt2", "--input", f[0], f[1], f[2], "--out", p1,
                   "--val-tokens", "0", "--chunk-bytes", "100000000", NULL };
    char *a2[] = { "prep", "--tokenizer", "gpt2", "--input", f[0], f[1], f[2], "--out", p2,
                   "--val-tokens", "0", "--chunk-bytes", chunk, "--threads", "3", NULL };
    struct run rr;
    run_prep(dir, a1, &rr);
    ck_assert_msg(rr.status == 0, "status %d: %s", rr.status, rr.err);
    run_prep(dir, a2, &rr);
    ck_assert_msg(rr.status == 0, "status %d: %s", rr.status, rr.err);
    size_t n1, n2;
    int s1, s2;
    uint16_t *t1 = read_train(p1, &n1, &s1, NULL), *t2 = read_train(p2, &n2, &s2, NULL);
    ck_assert_uint_eq(n1, n2);
    ck_assert_mem_eq(t1, t2, n1 * 2);
    /* the reference: each whole file encoded alone, preceded by the EOT */
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    int eot = tokenizer_eot(tk);
    ck_assert_int_ge(eot, 0);
    for (int i = 0; i < 3; i++) {
        if (n == cap)
            ids = realloc(ids, (cap = 2 * cap + 16) * sizeof *ids);
        ids[n++] = eot;
        ck_assert_int_eq(tokenizer_encode(tk, text[i], len[i], 0, &ids, &n, &cap, err), 0);
    }
    ck_assert_uint_eq(n, n1);
    for (size_t i = 0; i < n; i++)
        ck_assert_int_eq(t1[i], ids[i]);
    free(ids);
    free(t1);
    free(t2);
    for (int i = 0; i < 3; i++)
        free(text[i]);
    tokenizer_close(tk);
    tmpdir_rm(dir);
}
END_TEST

START_TEST(test_prep_errors)
{
    char dir[64], f1[128], prefix[128], missing[128];
    tmpdir_new(dir);
    snprintf(f1, sizeof f1, "%s/a.txt", dir);
    snprintf(prefix, sizeof prefix, "%s/out", dir);
    snprintf(missing, sizeof missing, "%s/missing.txt", dir);
    write_file(f1, "hello world\n", 12);
    struct run rr;

    char *a1[] = { "prep", "--tokenizer", "bytes", "--input", missing, "--out", prefix, NULL };
    run_prep(dir, a1, &rr);
    ck_assert_int_eq(rr.status, 1);
    char want[256];
    snprintf(want, sizeof want, "anatomy: error: %s: No such file or directory", missing);
    ck_assert_msg(strstr(rr.err, want), "%s", rr.err);

    char *a2[] = { "prep", "--tokenizer", "bytes", "--input", f1, "--out", prefix,
                   "--val-tokens", "12", NULL };
    run_prep(dir, a2, &rr);
    ck_assert_int_eq(rr.status, 1);
    ck_assert_msg(strstr(rr.err, "--val-tokens"), "%s", rr.err);
    ck_assert_int_eq(dir_count(dir, "out_"), 0);    /* nothing written */

    char *a3[] = { "prep", "--tokenizer", "words", "--input", f1, "--out", prefix, NULL };
    run_prep(dir, a3, &rr);
    ck_assert_int_eq(rr.status, 1);
    ck_assert_msg(strstr(rr.err, "words"), "%s", rr.err);

    char *a4[] = { "prep", "--tokenizer", "bytes", "--input", f1, "--out", prefix,
                   "--shard-tokens", "0", NULL };
    run_prep(dir, a4, &rr);
    ck_assert_int_eq(rr.status, 1);
    ck_assert_msg(strstr(rr.err, "--shard-tokens"), "%s", rr.err);

    char *a5[] = { "prep", "--tokenizer", "bytes", "--input", f1, "--bogus", NULL };
    run_prep(dir, a5, &rr);
    ck_assert_int_eq(rr.status, 1);
    ck_assert_msg(strstr(rr.err, "--bogus"), "%s", rr.err);

    char nodir[160];
    snprintf(nodir, sizeof nodir, "%s/no/such/dir/out", dir);
    char *a6[] = { "prep", "--tokenizer", "bytes", "--input", f1, "--out", nodir, NULL };
    run_prep(dir, a6, &rr);
    ck_assert_int_eq(rr.status, 1);
    ck_assert_msg(strstr(rr.err, nodir), "%s", rr.err);

    char *a7[] = { "prep", "--help", NULL };
    run_prep(dir, a7, &rr);
    ck_assert_int_eq(rr.status, 0);
    ck_assert_msg(strstr(rr.out, "usage: anatomy prep"), "%s", rr.out);
    tmpdir_rm(dir);
}
END_TEST

/* The same through the real binary, when it has been built next to us. */
START_TEST(test_prep_binary)
{
    char exe[1024], bin[1100];
    ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
    ck_assert_int_gt(k, 0);
    exe[k] = 0;
    *strrchr(exe, '/') = 0;
    snprintf(bin, sizeof bin, "%s/../anatomy", exe);
    if (access(bin, X_OK) != 0) {
        fprintf(stderr, "test_prep_binary: skipped, %s not built\n", bin);
        return;
    }
    rng_state r;
    rng_seed(&r, g_seed + 12);
    char dir[64], f1[128], prefix[128], cmd[2600];
    tmpdir_new(dir);
    size_t n1 = 100 + rng_below(&r, 5000);
    char *t1 = rand_text(&r, n1);
    snprintf(f1, sizeof f1, "%s/a.txt", dir);
    snprintf(prefix, sizeof prefix, "%s/out", dir);
    write_file(f1, t1, n1);
    snprintf(cmd, sizeof cmd, "%s prep --tokenizer bytes --input %s --out %s --val-tokens 10 "
             ">/dev/null 2>&1", bin, f1, prefix);
    ck_assert_int_eq(system(cmd), 0);
    size_t n;
    int ns;
    uint16_t *tr = read_train(prefix, &n, &ns, NULL);
    ck_assert_uint_eq(n, n1 - 10);
    for (size_t i = 0; i < n; i++)
        ck_assert_int_eq(tr[i], (unsigned char)t1[10 + i]);
    snprintf(cmd, sizeof cmd, "%s prep --tokenizer bytes --input %s/nope --out %s 2>&1",
             bin, dir, prefix);
    FILE *p = popen(cmd, "r");
    char line[512] = "";
    ck_assert_ptr_nonnull(fgets(line, sizeof line, p));
    ck_assert_int_ne(pclose(p), 0);
    ck_assert_msg(strstr(line, "anatomy: error: ") && strstr(line, "/nope: No such file"),
                  "%s", line);
    free(tr);
    free(t1);
    tmpdir_rm(dir);
}
END_TEST

static Suite *shard_suite(void)
{
    Suite *s = suite_create("shard");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_write_read);
    tcase_add_test(tc, test_sequential);
    tcase_add_test(tc, test_ranks);
    tcase_add_test(tc, test_shuffle);
    tcase_add_test(tc, test_seek);
    tcase_add_test(tc, test_bad_files);
    tcase_add_test(tc, test_bad_token);
    tcase_add_test(tc, test_truncated_in_use);
    tcase_add_test(tc, test_fuzz_files);
    tcase_add_test(tc, test_prep_bytes);
    tcase_add_test(tc, test_prep_jsonl);
    tcase_add_test(tc, test_prep_gpt2);
    tcase_add_test(tc, test_prep_errors);
    tcase_add_test(tc, test_prep_binary);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    const char *env = getenv("ANATOMY_TEST_SEED");
    g_seed = env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    printf("test_shard: seed %llu (ANATOMY_TEST_SEED to replay)\n", (unsigned long long)g_seed);
    fflush(stdout);
    SRunner *sr = srunner_create(shard_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
