/* test_bpe.c: the tokenizers (data/tokenizer.c, data/bpe.c).
 *
 * - the pre-tokenizer against PCRE2 running the GPT-2 pattern itself, on
 *   random strings, and its character classes against PCRE2's for every code
 *   point (they differ only where Unicode 14, PCRE2 10.42's version, left a
 *   code point unassigned, and at U+180E; see classes_match_pcre2);
 * - the heap merge against a plain quadratic BPE written here;
 * - decode(encode(x)) == x on random bytes, for both kinds, with and without
 *   special tokens, from several threads at once;
 * - "<|endoftext|>" only where allowed;
 * - vocabulary errors: missing files, malformed and truncated files, a
 *   vocabulary that is not GPT-2's; the Hugging Face layout gives GPT-2 too.
 * Random inputs come from a fresh seed per run (printed; TEST_SEED=n repeats). */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <check.h>
#include <limits.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

#include "../data/bpe.h"
#include "../data/errbuf.h"
#include "../data/rng.h"
#include "../data/tokenizer.h"

#define GPT2_PATTERN "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

/* An assertion for hot loops: Check's ck_assert_* records its location in a
 * file on every call, which costs a system call; this costs nothing unless it fails. */
#define CHECK(cond, ...)                   \
    do {                                   \
        if (!(cond))                       \
            ck_abort_msg(__VA_ARGS__);     \
    } while (0)

static uint64_t g_seed;
static char g_vocab[PATH_MAX - 64];

/* ---- helpers ---- */

static uint64_t draw(rng_state *r, uint64_t n) { return rng_below(r, n); }

static size_t put_utf8(uint32_t cp, char *o)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12);
        o[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18);
    o[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Characters that exercise every branch of the pattern. */
static const uint32_t pool[] = {
    ' ', ' ', ' ', ' ', '\t', '\n', '\n', '\r', 0x0B, 0x0C, 0x85, 0xA0, 0x1680, 0x2003, 0x2028,
    0x2029, 0x202F, 0x3000, 0x1C, '\'', '\'', '\'', 's', 't', 'r', 'e', 'v', 'm', 'l', 'd', 'S',
    'T', 'R', 'E', 'L', 'D', 'a', 'Z', '0', '7', '9', '.', ',', '!', '-', '<', '|', '>', '_',
    0xE9, 0x3B1, 0x416, 0x5D0, 0x628, 0x915, 0x94D, 0x93E, 0x301, 0x308, 0x20DD, 0xE01, 0x4E2D,
    0x65E5, 0x3042, 0xAC00, 0x660, 0x967, 0xFF11, 0x2160, 0xBD, 0xB2, 0x2460, 0x1F600, 0x1F44D,
    0x1F3FD, 0x200D, 0xFE0F, 0x1F1EB, 0x20AC, 0x2019, 0x200B, 0xFEFF, 0x20000, 0x1D400, 0x10FFFD,
};

/* Random text of up to max bytes: pool characters, ASCII words, random code
 * points (when any_cp) and, when invalid, stray bytes. Returns its length. */
static size_t random_text(rng_state *r, char *out, size_t max, int any_cp, int invalid)
{
    size_t n = 0;
    while (n + 16 < max) {
        uint64_t k = draw(r, 10);
        if (k < 5) {
            n += put_utf8(pool[draw(r, sizeof pool / sizeof pool[0])], out + n);
        } else if (k < 7) {
            size_t w = 1 + draw(r, 8);
            for (size_t i = 0; i < w; i++)
                out[n++] = (char)('a' + draw(r, 26));
        } else if (k < 8 && any_cp) {
            uint32_t cp = (uint32_t)draw(r, 0x110000);
            if (cp >= 0xD800 && cp < 0xE000)
                cp = 'x';
            n += put_utf8(cp, out + n);
        } else if (k < 9 && invalid) {
            out[n++] = (char)(0x80 + draw(r, 0x80));
        } else if (k < 10 && draw(r, 4) == 0) {
            memcpy(out + n, "<|endoftext|>", 13);
            n += 13;
        }
    }
    return n;
}

/* Finds the GPT-2 vocabulary the way tokenizer_open does by default. */
static const char *vocab_dir(void)
{
    if (g_vocab[0])
        return g_vocab;
    const char *env = getenv("ANATOMY_GPT2_DIR");
    if (env && *env) {
        ck_assert_uint_lt(strlen(env), sizeof g_vocab);
        memcpy(g_vocab, env, strlen(env) + 1);
        return g_vocab;
    }
    ssize_t k = readlink("/proc/self/exe", g_vocab, sizeof g_vocab - 16);
    ck_assert_int_gt(k, 0);
    g_vocab[k] = 0;
    *strrchr(g_vocab, '/') = 0;                /* build/tests */
    *strrchr(g_vocab, '/') = 0;                /* build */
    strcat(g_vocab, "/.cache/gpt2");
    return g_vocab;
}

static tokenizer *open_gpt2(void)
{
    char err[ERRBUF];
    tokenizer *tk = tokenizer_open("gpt2", vocab_dir(), err);
    ck_assert_msg(tk, "gpt2 vocabulary not loadable (run make to fill build/.cache/gpt2): %s", err);
    return tk;
}

/* Concatenates the bytes of ids into out (NUL-free compare via length). */
static size_t decode_all(const tokenizer *tk, const int32_t *ids, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *p = tokenizer_decode(tk, ids[i], &len);
        CHECK(p, "id %d has no bytes", ids[i]);
        CHECK(o + len <= cap, "decoded more bytes than encoded");
        memcpy(out + o, p, len);
        o += len;
    }
    return o;
}

static void encode(tokenizer *tk, const char *s, size_t n, int special, int32_t **ids, size_t *nids)
{
    char err[ERRBUF];
    size_t cap = 0;
    *ids = NULL;
    *nids = 0;
    CHECK(tokenizer_encode(tk, s, n, special, ids, nids, &cap, err) == 0, "%s", err);
}

/* ---- the pre-tokenizer against PCRE2 ---- */

struct pieces {
    size_t off[4096];
    size_t n, at;
};

static int collect(const char *piece, size_t n, void *ctx)
{
    struct pieces *p = ctx;
    (void)piece;
    CHECK(p->n < 4096, "too many pieces");
    p->at += n;
    p->off[p->n++] = p->at;
    return 0;
}

static pcre2_code *compile(const char *pat)
{
    int e;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                                   &e, &eo, NULL);
    ck_assert_ptr_nonnull(re);
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    return re;
}

/* The class of cp by PCRE2: 1 L, 2 N, 3 \s, 0 other, 4 unassigned (Cn). */
static int pcre2_class(pcre2_code **re, pcre2_match_data *md, uint32_t cp)
{
    char b[4];
    size_t n = put_utf8(cp, b);
    for (int k = 0; k < 4; k++)
        if (pcre2_match(re[k], (PCRE2_SPTR)b, n, 0, 0, md, NULL) >= 0)
            return k + 1;
    return 0;
}

/* The class of cp by our scanner: whether prefix+cp is one piece. */
static int split_class(uint32_t cp)
{
    static const char prefix[3] = {'a', '1', '!'};
    char b[8];
    for (int k = 0; k < 3; k++) {
        struct pieces p = {.n = 0};
        b[0] = prefix[k];
        size_t n = 1 + put_utf8(cp, b + 1);
        bpe_split(b, n, collect, &p);
        if (p.n == 1)
            return k == 2 ? 0 : k + 1;
    }
    return 3;
}

START_TEST(classes_match_pcre2)
{
    /* Every code point. Ours are Unicode 16 (tiktoken's regex tables);
     * PCRE2 10.42's are Unicode 14, and its \s (with UCP) includes U+180E,
     * which Unicode dropped from White_Space in 6.3 (tiktoken agrees). */
    pcre2_code *re[4] = {compile("^\\p{L}$"), compile("^\\p{N}$"), compile("^\\s$"),
                         compile("^\\p{Cn}$")};
    pcre2_match_data *md = pcre2_match_data_create(4, NULL);
    long newer = 0;
    for (uint32_t cp = 0; cp < 0x110000; cp++) {
        if (cp >= 0xD800 && cp < 0xE000)
            continue;
        int ours = split_class(cp), ref = pcre2_class(re, md, cp);
        if (ref == 4 && (ours == 1 || ours == 2)) {
            newer++;
            continue;
        }
        if (ref == 4)
            ref = 0;
        if (cp == 0x180E) {
            CHECK(ours == 0 && ref == 3, "U+180E: class %d, PCRE2 says %d", ours, ref);
            continue;
        }
        CHECK(ours == ref, "U+%04X: class %d, PCRE2 says %d", cp, ours, ref);
    }
    /* Unicode 15-16 added ~9000 letters and ~120 numbers. */
    ck_assert_msg(newer > 8000 && newer < 12000, "%ld letters/numbers newer than PCRE2's", newer);
    pcre2_match_data_free(md);
    for (int k = 0; k < 4; k++)
        pcre2_code_free(re[k]);
}
END_TEST

/* Whether every code point of s[0..n) (valid UTF-8) is one PCRE2 classes as we do. */
static int comparable(pcre2_code **re, pcre2_match_data *md, const char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t k = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
        uint32_t cp = k == 1 ? c : k == 2 ? c & 0x1Fu : k == 3 ? c & 0x0Fu : c & 0x07u;
        for (size_t j = 1; j < k; j++)
            cp = cp << 6 | ((unsigned char)s[i + j] & 0x3Fu);
        int ref = pcre2_class(re, md, cp);
        if (ref == 4)
            ref = 0;
        if (split_class(cp) != ref)
            return 0;
        i += k;
    }
    return 1;
}

START_TEST(split_matches_pcre2)
{
    rng_state r;
    rng_seed(&r, g_seed + 1);
    pcre2_code *re[5] = {compile("^\\p{L}$"), compile("^\\p{N}$"), compile("^\\s$"),
                         compile("^\\p{Cn}$"), compile(GPT2_PATTERN)};
    pcre2_match_data *md = pcre2_match_data_create(4, NULL);
    char s[600];
    int compared = 0;
    for (int trial = 0; trial < 3000; trial++) {
        size_t n = random_text(&r, s, 40 + draw(&r, sizeof s - 40), trial % 2, 0);
        if (!comparable(re, md, s, n))
            continue;
        compared++;
        struct pieces ours = {.n = 0};
        bpe_split(s, n, collect, &ours);
        size_t at = 0, k = 0;
        while (at < n) {
            int rc = pcre2_match(re[4], (PCRE2_SPTR)s, n, at, 0, md, NULL);
            CHECK(rc > 0, "PCRE2 finds no match at %zu", at);
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            CHECK(ov[0] == at, "PCRE2 skipped bytes");     /* the pattern matches everything */
            CHECK(k < ours.n && ours.off[k] == ov[1],
                          "seed %llu trial %d: piece %zu ends at %zu, PCRE2 says %zu",
                          (unsigned long long)g_seed, trial, k, k < ours.n ? ours.off[k] : 0,
                          (size_t)ov[1]);
            at = ov[1];
            k++;
        }
        CHECK(k == ours.n, "seed %llu trial %d: %zu pieces, PCRE2 %zu", (unsigned long long)g_seed,
              trial, ours.n, k);
    }
    ck_assert_int_gt(compared, 2000);
    pcre2_match_data_free(md);
    for (int k = 0; k < 5; k++)
        pcre2_code_free(re[k]);
}
END_TEST

/* ---- merging against a plain BPE ---- */

static tokenizer *g_tk;
static int32_t *g_sorted;   /* ids of mergeable tokens sorted by bytes */
static int g_nsorted;

static int cmp_bytes(const char *a, size_t an, const char *b, size_t bn)
{
    int c = memcmp(a, b, an < bn ? an : bn);
    return c ? c : (an > bn) - (an < bn);
}

static int cmp_ids(const void *x, const void *y)
{
    size_t an, bn;
    const char *a = tokenizer_decode(g_tk, *(const int32_t *)x, &an);
    const char *b = tokenizer_decode(g_tk, *(const int32_t *)y, &bn);
    return cmp_bytes(a, an, b, bn);
}

static int rank_of(const char *p, size_t n)
{
    int lo = 0, hi = g_nsorted - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        size_t mn;
        const char *m = tokenizer_decode(g_tk, g_sorted[mid], &mn);
        int c = cmp_bytes(m, mn, p, n);
        if (!c)
            return g_sorted[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

/* tiktoken's algorithm as its paper trail reads: repeatedly merge the
 * leftmost adjacent pair of least rank; O(n^2), written for clarity. */
static size_t plain_bpe(const char *p, size_t n, int32_t *out)
{
    int r = rank_of(p, n);
    if (r >= 0) {
        out[0] = r;
        return 1;
    }
    size_t *start = malloc((n + 1) * sizeof *start), m = n;
    for (size_t i = 0; i <= n; i++)
        start[i] = i;
    for (;;) {
        int best = INT_MAX;
        size_t at = 0;
        for (size_t i = 0; i + 1 < m; i++) {
            int rk = rank_of(p + start[i], start[i + 2] - start[i]);
            if (rk >= 0 && rk < best) {
                best = rk;
                at = i;
            }
        }
        if (best == INT_MAX)
            break;
        memmove(start + at + 1, start + at + 2, (m - at - 1) * sizeof *start);
        m--;
    }
    for (size_t i = 0; i < m; i++)
        out[i] = rank_of(p + start[i], start[i + 1] - start[i]);
    free(start);
    return m;
}

struct plain_ctx {
    int32_t *ids;
    size_t n;
};

static int plain_piece(const char *piece, size_t n, void *ctx)
{
    struct plain_ctx *c = ctx;
    c->n += plain_bpe(piece, n, c->ids + c->n);
    return 0;
}

START_TEST(merges_match_plain_bpe)
{
    rng_state r;
    rng_seed(&r, g_seed + 2);
    g_tk = open_gpt2();
    g_sorted = malloc(50256 * sizeof *g_sorted);
    for (int i = 0; i < 50256; i++)       /* every token but <|endoftext|> merges */
        g_sorted[i] = i;
    g_nsorted = 50256;
    qsort(g_sorted, 50256, sizeof *g_sorted, cmp_ids);
    char s[3000];
    int32_t want[3000];
    for (int trial = 0; trial < 300; trial++) {
        size_t n;
        if (trial % 4 == 3) {   /* long pieces: words of random letters */
            n = 100 + draw(&r, 400);
            for (size_t i = 0; i < n; i++)
                s[i] = (char)(draw(&r, 3) ? (uint64_t)"etaoinshrdlu"[draw(&r, 12)] : 'a' + draw(&r, 26));
        } else {
            n = random_text(&r, s, 50 + draw(&r, 400), 1, trial % 2);
        }
        int32_t *ids;
        size_t nids;
        encode(g_tk, s, n, 0, &ids, &nids);
        struct plain_ctx pc = {want, 0};
        bpe_split(s, n, plain_piece, &pc);
        CHECK(nids == pc.n, "seed %llu trial %d: %zu ids, plain BPE %zu",
                      (unsigned long long)g_seed, trial, nids, pc.n);
        for (size_t i = 0; i < nids; i++)
            CHECK(ids[i] == want[i], "seed %llu trial %d: id %zu is %d, plain BPE %d",
                          (unsigned long long)g_seed, trial, i, ids[i], want[i]);
        free(ids);
    }
    free(g_sorted);
    tokenizer_close(g_tk);
}
END_TEST

/* ---- round trips ---- */

static void round_trips(tokenizer *tk, uint64_t seed, int trials)
{
    rng_state r;
    rng_seed(&r, seed);
    size_t cap = 1 << 16;
    char *s = malloc(cap), *back = malloc(cap);
    for (int trial = 0; trial < trials; trial++) {
        size_t n = draw(&r, 2) ? draw(&r, 4000) : draw(&r, 16);
        if (trial % 3 == 0)                     /* raw random bytes */
            for (size_t i = 0; i < n; i++)
                s[i] = (char)rng_next(&r);
        else
            n = random_text(&r, s, n + 17, 1, 1);
        int special = (int)draw(&r, 2);
        int32_t *ids;
        size_t nids;
        encode(tk, s, n, special, &ids, &nids);
        size_t m = decode_all(tk, ids, nids, back, cap);
        CHECK(m == n && memcmp(back, s, n) == 0,
                      "seed %llu trial %d: decode(encode(x)) != x (%zu vs %zu bytes)",
                      (unsigned long long)seed, trial, m, n);
        for (size_t i = 0; i < nids; i++)
            CHECK(ids[i] >= 0 && ids[i] < tokenizer_vocab_size(tk), "id %d out of range", ids[i]);
        free(ids);
    }
    free(s);
    free(back);
}

START_TEST(round_trip_gpt2)
{
    tokenizer *tk = open_gpt2();
    round_trips(tk, g_seed + 3, 1500);
    tokenizer_close(tk);
}
END_TEST

START_TEST(round_trip_bytes)
{
    char err[ERRBUF];
    tokenizer *tk = tokenizer_open("bytes", NULL, err);
    ck_assert_ptr_nonnull(tk);
    ck_assert_int_eq(tokenizer_vocab_size(tk), 256);
    ck_assert_int_eq(tokenizer_eot(tk), -1);
    size_t len;
    ck_assert_ptr_null(tokenizer_decode(tk, 256, &len));
    ck_assert_ptr_null(tokenizer_decode(tk, -1, &len));
    rng_state r;
    rng_seed(&r, g_seed + 4);
    char s[300];
    size_t n = 1 + draw(&r, sizeof s - 1);
    for (size_t i = 0; i < n; i++)
        s[i] = (char)rng_next(&r);
    int32_t *ids;
    size_t nids;
    encode(tk, s, n, 1, &ids, &nids);
    ck_assert_uint_eq(nids, n);
    for (size_t i = 0; i < n; i++)
        CHECK(ids[i] == (unsigned char)s[i], "bytes: id %d for byte %d", ids[i], (unsigned char)s[i]);
    free(ids);
    round_trips(tk, g_seed + 5, 300);
    tokenizer_close(tk);
}
END_TEST

/* Ids keep appending to what the caller already has. */
START_TEST(encode_appends)
{
    tokenizer *tk = open_gpt2();
    char err[ERRBUF];
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    ck_assert_int_eq(tokenizer_encode(tk, "Hello world", 11, 0, &ids, &n, &cap, err), 0);
    ck_assert_int_eq(tokenizer_encode(tk, "", 0, 0, &ids, &n, &cap, err), 0);
    ck_assert_int_eq(tokenizer_encode(tk, " world", 6, 0, &ids, &n, &cap, err), 0);
    /* GPT-2's ids for these, as published: anchors on top of the random tests. */
    ck_assert_uint_eq(n, 3);
    ck_assert_int_eq(ids[0], 15496);
    ck_assert_int_eq(ids[1], 995);
    ck_assert_int_eq(ids[2], 995);
    free(ids);
    tokenizer_close(tk);
}
END_TEST

struct thread_job {
    tokenizer *tk;
    uint64_t seed;
    int failures;
};

static void *thread_main(void *arg)
{
    struct thread_job *job = arg;
    rng_state r;
    rng_seed(&r, job->seed);
    char s[2000], err[ERRBUF];
    for (int trial = 0; trial < 300; trial++) {
        size_t n = random_text(&r, s, 100 + draw(&r, 1900), 1, 1);
        int32_t *a = NULL, *b = NULL;
        size_t na = 0, nb = 0, ca = 0, cb = 0;
        if (tokenizer_encode(job->tk, s, n, 0, &a, &na, &ca, err) < 0 ||
            tokenizer_encode(job->tk, s, n, 0, &b, &nb, &cb, err) < 0 || na != nb ||
            memcmp(a, b, na * sizeof *a) != 0)
            job->failures++;
        size_t m = 0;
        for (size_t i = 0; i < na; i++) {
            size_t len;
            const char *p = tokenizer_decode(job->tk, a[i], &len);
            if (!p || m + len > n || memcmp(s + m, p, len) != 0) {
                job->failures++;
                break;
            }
            m += len;
        }
        if (m != n)
            job->failures++;
        free(a);
        free(b);
    }
    return NULL;
}

START_TEST(encode_from_threads)
{
    tokenizer *tk = open_gpt2();
    pthread_t th[6];
    struct thread_job jobs[6];
    for (int t = 0; t < 6; t++) {
        jobs[t] = (struct thread_job){tk, g_seed + 100 + (uint64_t)t, 0};
        ck_assert_int_eq(pthread_create(&th[t], NULL, thread_main, &jobs[t]), 0);
    }
    for (int t = 0; t < 6; t++) {
        pthread_join(th[t], NULL);
        ck_assert_msg(jobs[t].failures == 0, "thread %d: %d failures", t, jobs[t].failures);
    }
    tokenizer_close(tk);
}
END_TEST

/* A piece of 1 MB must not take quadratic time. */
START_TEST(long_piece_is_not_quadratic)
{
    tokenizer *tk = open_gpt2();
    rng_state r;
    rng_seed(&r, g_seed + 6);
    size_t n = 1 << 20;
    char *s = malloc(n), *back = malloc(n);
    for (size_t i = 0; i < n; i++)
        s[i] = (char)('a' + draw(&r, 26));
    clock_t t0 = clock();
    int32_t *ids;
    size_t nids;
    encode(tk, s, n, 0, &ids, &nids);
    double sec = (double)(clock() - t0) / CLOCKS_PER_SEC;
    ck_assert_msg(sec < 5, "1 MB piece took %.1f s", sec);
    ck_assert_uint_eq(decode_all(tk, ids, nids, back, n), n);
    ck_assert(memcmp(s, back, n) == 0);
    free(ids);
    free(s);
    free(back);
    tokenizer_close(tk);
}
END_TEST

/* ---- special tokens ---- */

START_TEST(special_only_when_allowed)
{
    tokenizer *tk = open_gpt2();
    int eot = tokenizer_eot(tk);
    ck_assert_int_eq(eot, 50256);
    rng_state r;
    rng_seed(&r, g_seed + 7);
    char s[4000];
    for (int trial = 0; trial < 300; trial++) {
        /* segments of text without the special string, joined by it */
        size_t n = 0, nseg = 1 + draw(&r, 4), seg_start[8], seg_len[8];
        for (size_t k = 0; k < nseg; k++) {
            size_t len = 0;
            char tmp[800];
            do
                len = random_text(&r, tmp, draw(&r, 300) + 17, 1, 1);
            while (memmem(tmp, len, "<|endoftext|>", 13));
            seg_start[k] = n;
            seg_len[k] = len;
            memcpy(s + n, tmp, len);
            n += len;
            if (k + 1 < nseg) {
                memcpy(s + n, "<|endoftext|>", 13);
                n += 13;
            }
        }
        int32_t *with, *without, *part;
        size_t nw, nwo, np;
        encode(tk, s, n, 1, &with, &nw);
        encode(tk, s, n, 0, &without, &nwo);
        for (size_t i = 0; i < nwo; i++)
            CHECK(without[i] != eot, "<|endoftext|> without --allow-special");
        size_t at = 0;
        for (size_t k = 0; k < nseg; k++) {
            encode(tk, s + seg_start[k], seg_len[k], 0, &part, &np);
            CHECK(at + np <= nw && memcmp(with + at, part, np * sizeof *part) == 0,
                  "trial %d: segment %zu encodes differently", trial, k);
            at += np;
            free(part);
            if (k + 1 < nseg) {
                CHECK(at < nw && with[at] == eot, "trial %d: no <|endoftext|> after segment %zu",
                      trial, k);
                at++;
            }
        }
        CHECK(at == nw, "trial %d: extra ids", trial);
        free(with);
        free(without);
    }
    /* near misses are text */
    static const char *const near[] = {"<|endoftext|", "<|endoftext", "|endoftext|>",
                                       "<|ENDOFTEXT|>", "< |endoftext|>", "<|endoftext |>"};
    for (size_t k = 0; k < sizeof near / sizeof near[0]; k++) {
        int32_t *ids;
        size_t nids;
        encode(tk, near[k], strlen(near[k]), 1, &ids, &nids);
        for (size_t i = 0; i < nids; i++)
            CHECK(ids[i] != eot, "'%s' gave <|endoftext|>", near[k]);
        free(ids);
    }
    tokenizer_close(tk);
}
END_TEST

/* ---- vocabulary files ---- */

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f, "%s missing", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *s = malloc((size_t)n + 1);
    ck_assert_uint_eq(fread(s, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return s;
}

static void spill(const char *dir, const char *name, const char *s, size_t n)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(s, 1, n, f), n);
    fclose(f);
}

static void clear_dir(const char *dir)
{
    static const char *const names[] = {"encoder.json", "vocab.bpe", "vocab.json", "merges.txt"};
    char path[PATH_MAX];
    for (int k = 0; k < 4; k++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[k]);
        unlink(path);
    }
}

/* Loading dir must fail with a message containing want. */
static void expect_fail(const char *dir, const char *want)
{
    char err[ERRBUF] = "";
    tokenizer *tk = tokenizer_open("gpt2", dir, err);
    ck_assert_msg(!tk, "loaded a bad vocabulary (wanted '%s')", want);
    ck_assert_msg(strstr(err, want), "error '%s' does not say '%s'", err, want);
}

START_TEST(vocab_errors)
{
    char dir[] = "/tmp/anatomy_bpe_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char path[PATH_MAX];
    size_t jn, mn;
    snprintf(path, sizeof path, "%s/encoder.json", vocab_dir());
    char *js = slurp(path, &jn);
    snprintf(path, sizeof path, "%s/vocab.bpe", vocab_dir());
    char *ms = slurp(path, &mn);
    char err[ERRBUF];
    rng_state r;
    rng_seed(&r, g_seed + 8);

    expect_fail(dir, "no encoder.json");
    expect_fail("/nonexistent/anatomy", "no encoder.json");
    ck_assert_ptr_null(tokenizer_open("gpt3", NULL, err));
    ck_assert_ptr_nonnull(strstr(err, "unknown kind"));

    spill(dir, "encoder.json", js, jn);         /* merges missing */
    expect_fail(dir, "vocab.bpe");

    spill(dir, "vocab.bpe", ms, mn);            /* truncated JSON, at random places */
    for (int k = 0; k < 6; k++) {
        spill(dir, "encoder.json", js, 1 + draw(&r, jn - 2));
        expect_fail(dir, "encoder.json");
    }
    /* one id changed: a repeated id */
    char *bad = malloc(jn + 1);
    memcpy(bad, js, jn);
    char *p = strstr(bad, "\"the\": ");
    ck_assert_ptr_nonnull(p);
    memcpy(p + 7, "10", 2);                     /* "the": 1169 -> 1069 */
    spill(dir, "encoder.json", bad, jn);
    expect_fail(dir, "given twice");
    /* two tokens swapped: well-formed, but not GPT-2's vocabulary */
    memcpy(bad, js, jn);
    p = strstr(bad, "\"the\": 1169");
    char *q = strstr(bad, "\"and\": 392");
    ck_assert(p && q);
    memcpy(p + 1, "and", 3);
    memcpy(q + 1, "the", 3);
    spill(dir, "encoder.json", bad, jn);
    expect_fail(dir, "merge result id");        /* merges made "the" before "and" */
    /* other damage */
    memcpy(bad, js, jn);
    p = strstr(bad, "\"the\": 1169");
    p[5] = ';';
    spill(dir, "encoder.json", bad, jn);
    expect_fail(dir, "expected ':'");
    spill(dir, "encoder.json", "{\"a\": -1}", 9);
    expect_fail(dir, "integer");
    spill(dir, "encoder.json", "{\"\\u0800\": 0}", 13);
    expect_fail(dir, "byte-to-unicode");
    spill(dir, "encoder.json", "[]", 2);
    expect_fail(dir, "JSON object");
    spill(dir, "encoder.json", js, jn);
    spill(dir, "vocab.bpe", "#version: 0.2\nh e\nt he\nthe x\n", 29);
    expect_fail(dir, "vocab.bpe:4: merge result is not a token");
    spill(dir, "vocab.bpe", "#version: 0.2\nt he\n", 19);
    expect_fail(dir, "vocab.bpe:2: merge uses a token no earlier merge made");
    spill(dir, "vocab.bpe", "#version: 0.2\nt  h\n", 19);
    expect_fail(dir, "one space");
    spill(dir, "vocab.bpe", ms, mn / 2);        /* half the merges: other vocabulary */
    expect_fail(dir, "not GPT-2's vocabulary");
    spill(dir, "vocab.bpe", ms, mn);
    tokenizer *tk = tokenizer_open("gpt2", dir, err);
    ck_assert_msg(tk, "%s", err);
    tokenizer_close(tk);
    clear_dir(dir);
    rmdir(dir);
    free(bad);
    free(js);
    free(ms);
}
END_TEST

/* GPT-2's byte-to-unicode table. */
static uint32_t byte_to_unicode(unsigned char c)
{
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        if (b == c)
            return printable ? (uint32_t)b : 256u + (uint32_t)n;
        if (!printable)
            n++;
    }
    return 0;
}

START_TEST(hugging_face_layout)
{
    /* Writes the vocabulary as Hugging Face does (vocab.json with every
     * non-ASCII character \u-escaped, in reverse id order, other spacing;
     * merges.txt with CRLF line ends) and checks it is the same tokenizer. */
    tokenizer *ref = open_gpt2();
    char dir[] = "/tmp/anatomy_hf_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs("{\n", f);
    for (int id = 50256; id >= 0; id--) {
        size_t len;
        const char *t = tokenizer_decode(ref, id, &len);
        fputs("  \"", f);
        for (size_t i = 0; i < len; i++) {
            uint32_t cp = byte_to_unicode((unsigned char)t[i]);
            if (cp == '"' || cp == '\\')
                fprintf(f, "\\%c", (char)cp);
            else if (cp < 0x80)
                fputc((int)cp, f);
            else
                fprintf(f, "\\u%04x", cp);
        }
        fprintf(f, "\":%d%s\n", id, id ? "," : "");
    }
    fputs("}\n", f);
    fclose(f);
    size_t mn;
    snprintf(path, sizeof path, "%s/vocab.bpe", vocab_dir());
    char *ms = slurp(path, &mn);
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    f = fopen(path, "wb");
    for (size_t i = 0; i < mn; i++) {
        if (ms[i] == '\n')
            fputc('\r', f);
        fputc(ms[i], f);
    }
    fclose(f);
    char err[ERRBUF];
    tokenizer *hf = tokenizer_open("gpt2", dir, err);
    ck_assert_msg(hf, "%s", err);
    rng_state r;
    rng_seed(&r, g_seed + 9);
    char s[3000];
    for (int trial = 0; trial < 200; trial++) {
        size_t n = random_text(&r, s, 100 + draw(&r, 2900), 1, 1);
        int32_t *a, *b;
        size_t na, nb;
        encode(ref, s, n, 1, &a, &na);
        encode(hf, s, n, 1, &b, &nb);
        CHECK(na == nb && memcmp(a, b, na * sizeof *a) == 0, "trial %d: layouts differ", trial);
        free(a);
        free(b);
    }
    tokenizer_close(hf);
    tokenizer_close(ref);
    free(ms);
    clear_dir(dir);
    rmdir(dir);
}
END_TEST

static Suite *bpe_suite(void)
{
    const struct {
        const char *name;
        const TTest *test;
    } tests[] = {
        {"classes_match_pcre2", classes_match_pcre2},
        {"split_matches_pcre2", split_matches_pcre2},
        {"merges_match_plain_bpe", merges_match_plain_bpe},
        {"round_trip_gpt2", round_trip_gpt2},
        {"round_trip_bytes", round_trip_bytes},
        {"encode_appends", encode_appends},
        {"encode_from_threads", encode_from_threads},
        {"long_piece_is_not_quadratic", long_piece_is_not_quadratic},
        {"special_only_when_allowed", special_only_when_allowed},
        {"vocab_errors", vocab_errors},
        {"hugging_face_layout", hugging_face_layout},
    };
    Suite *s = suite_create("bpe");
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        TCase *tc = tcase_create(tests[i].name);     /* CK_RUN_CASE=name runs one */
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, tests[i].test);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void)
{
    const char *env = getenv("TEST_SEED");
    g_seed = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    printf("test_bpe: seed %llu (TEST_SEED=%llu repeats this run)\n", (unsigned long long)g_seed,
           (unsigned long long)g_seed);
    SRunner *sr = srunner_create(bpe_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
