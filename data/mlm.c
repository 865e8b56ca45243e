/* mlm.c: masked-LM batches (mlm.h): shards read on demand (readat.h: a
 * shard truncated during a run is an error, never SIGBUS), windows of the
 * token stream turned into [CLS] A [SEP] (B [SEP]) pairs, then BERT's masks.
 *
 * The shard reader is separate from shard.h's loader because pairs need
 * random access (a random B span for the next-sentence task), not the
 * loader's one consecutive run per micro-batch. */
#include "mlm.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "errbuf.h"
#include "readat.h"
#include "fsutil.h"
#include "rng.h"
#include "shard.h"

#define HEADER_BYTES (SHARD_HEADER_INTS * 4)

/* Independent generator streams drawn from one (seed, index): the tag keeps
 * the masks, the pairs and the shuffle from sharing numbers. */
enum { TAG_MASK = 1, TAG_PAIRS = 2, TAG_PERM = 3 };

static uint64_t mix3(uint64_t seed, uint64_t index, uint64_t tag)
{
    uint64_t x = seed;
    uint64_t h = rng_splitmix(&x) ^ index;
    h = rng_splitmix(&h) ^ (tag * 0x632be59bd9b4e019ULL);
    return rng_splitmix(&h);
}

static int is_special(const mlm_vocab *v, int32_t t)
{
    return t == v->cls || t == v->sep || t == v->mask || t == v->pad;
}

void mlm_mask(const mlm_vocab *voc, uint64_t seed, uint64_t index, int32_t *tokens,
              int32_t *targets, int rows, int T)
{
    rng_state r;
    rng_seed(&r, mix3(seed, index, TAG_MASK));
    for (int b = 0; b < rows; b++) {
        int32_t *tok = tokens + (size_t)b * T, *tg = targets + (size_t)b * T;
        int n = 0;
        for (int t = 0; t < T; t++) {
            tg[t] = -1;
            n += !is_special(voc, tok[t]);
        }
        /* stochastic rounding makes the expected fraction exactly MLM_RATE
         * even for short rows */
        int k = (int)(MLM_RATE * n + rng_uniform(&r));
        if (k > n)
            k = n;
        /* selection sampling (Knuth's algorithm S): each k-subset of the n
         * maskable positions equally likely, no scratch memory */
        int seen = 0, chosen = 0;
        for (int t = 0; t < T && chosen < k; t++) {
            if (is_special(voc, tok[t]))
                continue;
            if (rng_below(&r, (uint64_t)(n - seen)) < (uint64_t)(k - chosen)) {
                double u = rng_uniform(&r);
                tg[t] = tok[t];
                if (u < MLM_P_MASK)
                    tok[t] = voc->mask;
                else if (u < MLM_P_MASK + MLM_P_RANDOM)
                    tok[t] = (int32_t)rng_below(&r, (uint64_t)voc->vocab);
                chosen++;
            }
            seen++;
        }
    }
}

/* ---- shards ---- */

struct mlm_file {
    char *path;
    size_t size;         /* bytes, as checked at open */
    uint64_t count, start;
};

struct mlm_batcher {
    mlm_spec spec;
    char *pattern;
    struct mlm_file *f;
    int nf;
    uint64_t total;      /* tokens in the stream */
    int n;               /* content tokens per sequence: T-2, or T-3 with nsp */
    uint64_t windows;    /* total / n */
    uint32_t *perm;      /* shuffle: windows of epoch perm_epoch in visiting order */
    uint64_t perm_epoch;
    int perm_valid;
    readat_cursor cur;   /* the shard being read */
};

static int32_t le32(const unsigned char *p)
{
    return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                     (uint32_t)p[3] << 24);
}

static int check_file(struct mlm_file *sf, char *err)
{
    const char *path = sf->path;
    struct stat st;
    int fd = fs_open_regular(path, err); /* a FIFO would block open() */
    if (fd < 0)
        return -1;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return errf(err, "%s: not a readable regular file", path);
    }
    if (st.st_size < HEADER_BYTES) {
        close(fd);
        return errf(err, "%s: truncated header (%lld bytes; a shard starts with a %d-byte "
                         "header)", path, (long long)st.st_size, HEADER_BYTES);
    }
    unsigned char h[12];
    readat_cursor c = { fd, 0 };
    sf->size = (size_t)st.st_size;
    int rc = readat(&c, 0, path, sf->size, h, sizeof h, 0, err);
    close(fd);
    if (rc)
        return -1;
    int32_t magic = le32(h), version = le32(h + 4), count = le32(h + 8);
    if (magic != SHARD_MAGIC)
        return errf(err, "%s: bad magic %d (expected %d): not a token shard", path, magic,
                    SHARD_MAGIC);
    if (version != SHARD_VERSION)
        return errf(err, "%s: unsupported version %d (expected %d)", path, version,
                    SHARD_VERSION);
    if (count <= 0)
        return errf(err, "%s: token count %d in header (need > 0)", path, count);
    long long want = HEADER_BYTES + 2LL * count;
    if ((long long)sf->size != want)
        return errf(err, "%s: %s: %zu bytes, but the header's %d tokens need %lld", path,
                    (long long)sf->size < want ? "truncated" : "size mismatch", sf->size,
                    count, want);
    sf->count = (uint64_t)count;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int open_files(mlm_batcher *mb, const char *pattern, char *err)
{
    glob_t g;
    int rc = glob(pattern, 0, NULL, &g);
    if (rc == GLOB_NOMATCH)
        return errf(err, "%s: no file matches", pattern);
    if (rc != 0)
        return errf(err, "%s: cannot expand the pattern", pattern);
    qsort(g.gl_pathv, g.gl_pathc, sizeof(char *), cmp_str); /* bytewise, as shard.h */
    mb->f = calloc(g.gl_pathc, sizeof *mb->f);
    if (!mb->f) {
        globfree(&g);
        return errf(err, "%s: out of memory", pattern);
    }
    for (size_t i = 0; i < g.gl_pathc; i++) {
        mb->f[i].path = strdup(g.gl_pathv[i]);
        if (!mb->f[i].path) {
            globfree(&g);
            return errf(err, "%s: out of memory", pattern);
        }
        mb->nf++;
    }
    globfree(&g);
    for (int i = 0; i < mb->nf; i++) {
        if (check_file(&mb->f[i], err))
            return -1;
        mb->f[i].start = mb->total;
        mb->total += mb->f[i].count;
    }
    return 0;
}

void mlm_close(mlm_batcher *mb)
{
    if (!mb)
        return;
    readat_close(&mb->cur);
    for (int i = 0; i < mb->nf; i++)
        free(mb->f[i].path);
    free(mb->f);
    free(mb->perm);
    free(mb->pattern);
    free(mb);
}

mlm_batcher *mlm_open(const mlm_spec *spec, char *err)
{
    int specials = spec->nsp ? 3 : 2;
    if (spec->B < 1 || spec->T < specials + (spec->nsp ? 2 : 1)) {
        errf(err, "--batch/--seq: %d x %d: a masked-LM sequence needs at least %d tokens", spec->B,
             spec->T, specials + (spec->nsp ? 2 : 1));
        return NULL;
    }
    if (spec->voc.vocab < 1 || spec->voc.vocab > 65536) {
        errf(err, "--vocab-size: %d tokenizer ids (+%d specials): shards hold uint16 tokens",
             spec->voc.vocab, MLM_SPECIALS);
        return NULL;
    }
    mlm_batcher *mb = calloc(1, sizeof *mb);
    if (mb)
        mb->cur = (readat_cursor)READAT_INIT;
    if (!mb || !(mb->pattern = strdup(spec->path))) {
        free(mb);
        errf(err, "%s: out of memory", spec->path);
        return NULL;
    }
    mb->cur = (readat_cursor)READAT_INIT;
    mb->spec = *spec;
    mb->spec.path = mb->pattern;
    mb->n = spec->T - specials;
    if (open_files(mb, spec->path, err))
        goto fail;
    mb->windows = mb->total / (uint64_t)mb->n;
    /* one window, and with nsp a random B span somewhere other than the
     * true continuation, need a little more than one window of tokens */
    if (mb->windows < 1 || mb->total < (uint64_t)mb->n + 1) {
        errf(err, "%s: %llu tokens, fewer than the %d + 1 one sequence of %d needs", spec->path,
             (unsigned long long)mb->total, mb->n, spec->T);
        goto fail;
    }
    if (spec->shuffle) {
        if (mb->windows > UINT32_MAX) {
            errf(err, "%s: %llu windows are too many to shuffle", spec->path,
                 (unsigned long long)mb->windows);
            goto fail;
        }
        mb->perm = malloc(mb->windows * sizeof *mb->perm);
        if (!mb->perm) {
            errf(err, "%s: out of memory", spec->path);
            goto fail;
        }
    }
    return mb;
fail:
    mlm_close(mb);
    return NULL;
}

uint64_t mlm_windows(const mlm_batcher *mb) { return mb->windows; }
uint64_t mlm_tokens(const mlm_batcher *mb) { return mb->total; }

/* Fisher-Yates over the windows, from (seed, epoch) alone. */
static void permute(mlm_batcher *mb, uint64_t epoch)
{
    rng_state r;
    rng_seed(&r, mix3(mb->spec.seed, epoch, TAG_PERM));
    for (uint64_t i = 0; i < mb->windows; i++)
        mb->perm[i] = (uint32_t)i;
    for (uint64_t i = mb->windows - 1; i > 0; i--) {
        uint64_t k = rng_below(&r, i + 1);
        uint32_t t = mb->perm[i];
        mb->perm[i] = mb->perm[k];
        mb->perm[k] = t;
    }
    mb->perm_epoch = epoch;
    mb->perm_valid = 1;
}

/* Copies n stream tokens from index p (p + n <= total) into out. */
static int read_tokens(mlm_batcher *mb, uint64_t p, int n, int32_t *out, char *err)
{
    unsigned char raw[1024];
    int lo = 0, hi = mb->nf - 1;
    while (lo < hi) { /* the last file starting at or before p */
        int mid = (lo + hi + 1) / 2;
        if (mb->f[mid].start <= p)
            lo = mid;
        else
            hi = mid - 1;
    }
    const struct mlm_file *f = &mb->f[lo];
    int have = 0; /* tokens of raw not used yet, q the next */
    const unsigned char *q = raw;
    for (int i = 0; i < n; i++, p++, q += 2, have--) {
        while (p >= f->start + f->count) {
            f++;
            have = 0;
        }
        if (!have) { /* the next run of this file's tokens */
            uint64_t left = f->start + f->count - p;
            have = n - i < (int)(sizeof raw / 2) ? n - i : (int)(sizeof raw / 2);
            if ((uint64_t)have > left)
                have = (int)left;
            if (readat(&mb->cur, (int)(f - mb->f), f->path, f->size, raw, 2 * (size_t)have,
                       HEADER_BYTES + 2 * (p - f->start), err))
                return -1;
            q = raw;
        }
        int32_t t = (int32_t)(q[0] | q[1] << 8);
        if (t >= mb->spec.voc.vocab)
            return errf(err, "%s: token %d at offset %llu is not one of the tokenizer's %d ids "
                             "(the model vocabulary is the tokenizer's plus %d specials)",
                        f->path, t, (unsigned long long)(p - f->start), mb->spec.voc.vocab,
                        MLM_SPECIALS);
        out[i] = t;
    }
    return 0;
}

int mlm_batch(mlm_batcher *mb, uint64_t g, int32_t *tokens, int32_t *segments,
              int32_t *targets, int32_t *labels, char *err)
{
    const mlm_spec *sp = &mb->spec;
    const mlm_vocab *v = &sp->voc;
    int T = sp->T, n = mb->n;
    rng_state r;
    rng_seed(&r, mix3(sp->seed, g, TAG_PAIRS));
    for (int b = 0; b < sp->B; b++) {
        uint64_t s = g * (uint64_t)sp->B + (uint64_t)b;
        uint64_t w = s % mb->windows;
        if (sp->shuffle) {
            uint64_t e = s / mb->windows;
            if (!mb->perm_valid || mb->perm_epoch != e)
                permute(mb, e);
            w = mb->perm[w];
        }
        uint64_t p = w * (uint64_t)n;
        int32_t *tok = tokens + (size_t)b * T, *seg = segments + (size_t)b * T;
        tok[0] = v->cls;
        if (!sp->nsp) {
            if (read_tokens(mb, p, n, tok + 1, err))
                return -1;
            tok[T - 1] = v->sep;
            for (int t = 0; t < T; t++)
                seg[t] = 0;
            labels[b] = -1;
            continue;
        }
        /* A gets 1..n-1 tokens, B the rest; B follows A in the text half the
         * time (label 1), else it is a span drawn from anywhere else (0) */
        int la = 1 + (int)rng_below(&r, (uint64_t)(n - 1)), lb = n - la;
        int next = rng_below(&r, 2) == 1;
        uint64_t q = p + (uint64_t)la;
        if (!next) {
            uint64_t span = mb->total - (uint64_t)lb + 1; /* starts that fit */
            do
                q = rng_below(&r, span);
            while (q == p + (uint64_t)la && span > 1);
            next = q == p + (uint64_t)la; /* only when the stream has one place */
        }
        if (read_tokens(mb, p, la, tok + 1, err) ||
            read_tokens(mb, q, lb, tok + 2 + la, err))
            return -1;
        tok[1 + la] = v->sep;
        tok[T - 1] = v->sep;
        for (int t = 0; t < T; t++)
            seg[t] = t > 1 + la;
        labels[b] = next;
    }
    if (sp->mask)
        mlm_mask(v, sp->seed, g, tokens, targets, sp->B, T);
    else
        for (size_t i = 0; i < (size_t)sp->B * T; i++)
            targets[i] = -1;
    return 0;
}
