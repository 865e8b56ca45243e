/* shard.c: token shards (llm.c layout) and the micro-batch loader of shard.h.
 *
 * The loader keeps, per file, its checked size and the index of its first
 * token in the concatenated stream, and reads the B*T+1 tokens of one
 * micro-batch on demand (readat.h: a descriptor, not a mapping, so a shard
 * truncated or replaced during a run is an error naming it, never SIGBUS). */
#include "shard.h"

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

#define SHARD_HEADER_BYTES (SHARD_HEADER_INTS * 4)

struct shard_file {
    char *path;
    size_t size;                /* bytes, header included, as checked at open */
    uint64_t count;             /* tokens in this file */
    uint64_t start;             /* index of its first token in the stream */
};

struct loader {
    struct shard_file *f;
    int nf;
    uint64_t total;             /* tokens in the stream */
    uint64_t bt;                /* B*T */
    int rank, world, shuffle, vocab;
    uint64_t seed;
    uint64_t pos;               /* micro-batches this rank has consumed */
    uint64_t nchunks;           /* shuffle: chunks of B*T+1 tokens at multiples of B*T */
    uint32_t *perm;             /* shuffle: the permutation of epoch perm_epoch */
    uint64_t perm_epoch;
    int perm_valid;
    int32_t *buf;               /* B*T+1 tokens of the current micro-batch */
    unsigned char *raw;         /* their bytes, as read */
    readat_cursor cur;          /* the shard being read */
};

static void put_le32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static int32_t get_le32(const unsigned char *p)
{
    return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                     (uint32_t)p[3] << 24);
}

static uint16_t get_le16(const unsigned char *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

/* Writes all n bytes or fails (write may be short on large buffers). */
static int write_all(int fd, const void *data, size_t n)
{
    const char *p = data;
    while (n > 0) {
        ssize_t k = write(fd, p, n > (1u << 30) ? (1u << 30) : n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Writes the tokens little-endian through a bounded staging buffer, so a
 * big-endian host writes the same bytes and memory stays small. */
static int write_tokens(int fd, const uint16_t *tokens, size_t n)
{
    unsigned char stage[1 << 16];
    size_t per = sizeof stage / 2;
    for (size_t i = 0; i < n; i += per) {
        size_t m = n - i < per ? n - i : per;
        for (size_t k = 0; k < m; k++) {
            stage[2 * k] = (unsigned char)tokens[i + k];
            stage[2 * k + 1] = (unsigned char)(tokens[i + k] >> 8);
        }
        if (write_all(fd, stage, 2 * m) < 0)
            return -1;
    }
    return 0;
}

/* fsyncs the folder holding path so that the rename itself is durable. */
static void sync_parent(const char *path)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == path)
        snprintf(dir, sizeof dir, "/");
    else if ((size_t)(slash - path) < sizeof dir)
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    else
        return;
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

int shard_write(const char *path, const uint16_t *tokens, size_t n, char *err)
{
    if (n > INT32_MAX)
        return errf(err, "%s: %zu tokens do not fit a shard (at most %d)", path, n, INT32_MAX);
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", path) >= (int)sizeof tmp)
        return errf(err, "%s: path too long", path);
    int fd = mkstemp(tmp);
    if (fd < 0)
        return errf(err, "%s: %s", path, strerror(errno));

    unsigned char header[SHARD_HEADER_BYTES] = {0};
    put_le32(header, SHARD_MAGIC);
    put_le32(header + 4, SHARD_VERSION);
    put_le32(header + 8, (uint32_t)n);
    if (fchmod(fd, 0644) < 0 || write_all(fd, header, sizeof header) < 0 ||
        write_tokens(fd, tokens, n) < 0 || fsync(fd) < 0) {
        errf(err, "%s: %s", path, strerror(errno));
        close(fd);
        unlink(tmp);
        return -1;
    }
    if (close(fd) < 0 || rename(tmp, path) < 0) {
        errf(err, "%s: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    sync_parent(path);
    return 0;
}

/* Checks one shard's header against the file's length. */
static int shard_check(struct shard_file *sf, char *err)
{
    const char *path = sf->path;
    int fd = fs_open_regular(path, err); /* a FIFO would block open() */
    if (fd < 0)
        return -1;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        errf(err, "%s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return errf(err, "%s: not a regular file", path);
    }
    if (st.st_size < SHARD_HEADER_BYTES) {
        close(fd);
        return errf(err, "%s: truncated header (%lld bytes; a shard starts with a %d-byte header)",
                    path, (long long)st.st_size, SHARD_HEADER_BYTES);
    }
    unsigned char h[12];
    readat_cursor c = { fd, 0 };
    sf->size = (size_t)st.st_size;
    int rc = readat(&c, 0, path, sf->size, h, sizeof h, 0, err);
    close(fd);
    if (rc)
        return -1;
    int32_t magic = get_le32(h), version = get_le32(h + 4);
    int32_t count = get_le32(h + 8);
    if (magic != SHARD_MAGIC)
        return errf(err, "%s: bad magic %d (expected %d): not a token shard", path, magic,
                    SHARD_MAGIC);
    if (version != SHARD_VERSION)
        return errf(err, "%s: unsupported version %d (expected %d)", path, version,
                    SHARD_VERSION);
    if (count < 0)
        return errf(err, "%s: negative token count %d in header", path, count);
    if (count == 0)
        return errf(err, "%s: empty shard (0 tokens)", path);
    long long want = SHARD_HEADER_BYTES + 2LL * count;
    if ((long long)sf->size < want)
        return errf(err, "%s: truncated: %zu bytes, but the header's %d tokens need %lld",
                    path, sf->size, count, want);
    if ((long long)sf->size > want)
        return errf(err, "%s: size mismatch: %zu bytes, but the header's %d tokens need %lld",
                    path, sf->size, count, want);
    sf->count = (uint64_t)count;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Expands the glob into ld->f, sorted bytewise by name (glob's own order
 * follows the locale). */
static int loader_glob(loader *ld, const char *pattern, char *err)
{
    glob_t g;
    int rc = glob(pattern, 0, NULL, &g);
    if (rc == GLOB_NOMATCH)
        return errf(err, "%s: no file matches", pattern);
    if (rc != 0) {
        if (rc != GLOB_NOSPACE)
            globfree(&g);
        return errf(err, "%s: %s", pattern, rc == GLOB_NOSPACE ? "out of memory" : "read error");
    }
    if (g.gl_pathc > INT_MAX / 2) {
        globfree(&g);
        return errf(err, "%s: too many files", pattern);
    }
    qsort(g.gl_pathv, g.gl_pathc, sizeof(char *), cmp_str);
    ld->f = calloc(g.gl_pathc, sizeof *ld->f);
    if (!ld->f) {
        globfree(&g);
        return errf(err, "%s: out of memory", pattern);
    }
    for (size_t i = 0; i < g.gl_pathc; i++) {
        ld->f[i].path = strdup(g.gl_pathv[i]);
        if (!ld->f[i].path) {
            globfree(&g);
            return errf(err, "%s: out of memory", pattern);
        }
        ld->nf++;
    }
    globfree(&g);
    return 0;
}

static int loader_check_args(int B, int T, int rank, int world, int vocab, char *err)
{
    if (B < 1 || T < 1)
        return errf(err, "loader: B=%d, T=%d: both must be >= 1", B, T);
    if (world < 1 || rank < 0 || rank >= world)
        return errf(err, "loader: rank %d of world %d: need 0 <= rank < world", rank, world);
    if (vocab < 1 || vocab > 65536)
        return errf(err, "loader: vocab %d: shards hold uint16 tokens, need 1..65536", vocab);
    return 0;
}

loader *loader_open(const char *pattern, int B, int T, int rank, int world, int shuffle,
                    uint64_t seed, int vocab, char *err)
{
    if (loader_check_args(B, T, rank, world, vocab, err) < 0)
        return NULL;
    loader *ld = calloc(1, sizeof *ld);
    if (!ld) {
        errf(err, "%s: out of memory", pattern);
        return NULL;
    }
    ld->cur = (readat_cursor)READAT_INIT;
    ld->bt = (uint64_t)B * (uint64_t)T;
    ld->rank = rank;
    ld->world = world;
    ld->shuffle = shuffle != 0;
    ld->seed = seed;
    ld->vocab = vocab;
    if (loader_glob(ld, pattern, err) < 0)
        goto fail;
    for (int i = 0; i < ld->nf; i++) {
        if (shard_check(&ld->f[i], err) < 0)
            goto fail;
        ld->f[i].start = ld->total;
        ld->total += ld->f[i].count;
    }
    if (ld->total < ld->bt + 1) {
        errf(err, "%s: %llu tokens in %d file(s), fewer than the B*T+1 = %llu one micro-batch "
                  "needs", pattern, (unsigned long long)ld->total, ld->nf,
             (unsigned long long)(ld->bt + 1));
        goto fail;
    }
    if (ld->shuffle) {
        ld->nchunks = (ld->total - 1) / ld->bt;
        if (ld->nchunks > UINT32_MAX) {
            errf(err, "%s: %llu chunks of B*T tokens are too many to shuffle; use a larger "
                      "B*T", pattern, (unsigned long long)ld->nchunks);
            goto fail;
        }
        ld->perm = malloc(ld->nchunks * sizeof *ld->perm);
        if (!ld->perm) {
            errf(err, "%s: out of memory", pattern);
            goto fail;
        }
    }
    ld->buf = malloc((ld->bt + 1) * sizeof *ld->buf);
    ld->raw = malloc((ld->bt + 1) * 2);
    if (!ld->buf || !ld->raw) {
        errf(err, "%s: out of memory", pattern);
        goto fail;
    }
    return ld;
fail:
    loader_close(ld);
    return NULL;
}

/* The permutation of chunk indices for one epoch: Fisher-Yates driven by a
 * generator seeded from (seed, epoch), so any epoch can be rebuilt alone. */
static void loader_permute(loader *ld, uint64_t epoch)
{
    uint64_t x = ld->seed;
    uint64_t h = rng_splitmix(&x) ^ epoch;
    rng_state r;
    rng_seed(&r, rng_splitmix(&h));
    for (uint64_t i = 0; i < ld->nchunks; i++)
        ld->perm[i] = (uint32_t)i;
    for (uint64_t i = ld->nchunks - 1; i > 0; i--) {
        uint64_t k = rng_below(&r, i + 1);
        uint32_t t = ld->perm[i];
        ld->perm[i] = ld->perm[k];
        ld->perm[k] = t;
    }
    ld->perm_epoch = epoch;
    ld->perm_valid = 1;
}

/* The index of the file holding stream token idx (< total). */
static int loader_find(const loader *ld, uint64_t idx)
{
    int lo = 0, hi = ld->nf - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        if (ld->f[mid].start <= idx)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* Copies n tokens starting at stream index start (wrapping at the end of the
 * stream) into out, checking each against the vocabulary. */
static int loader_read(loader *ld, uint64_t start, uint64_t n, int32_t *out, char *err)
{
    int i = loader_find(ld, start);
    uint64_t off = start - ld->f[i].start;
    while (n > 0) {
        const struct shard_file *sf = &ld->f[i];
        uint64_t m = sf->count - off < n ? sf->count - off : n;
        const unsigned char *p = ld->raw;
        if (readat(&ld->cur, i, sf->path, sf->size, ld->raw, 2 * m, SHARD_HEADER_BYTES + 2 * off,
                   err))
            return -1;
        for (uint64_t k = 0; k < m; k++) {
            uint16_t t = get_le16(p + 2 * k);
            if (t >= ld->vocab)
                return errf(err, "%s: token %u at index %llu (byte offset %llu) is >= vocab %d",
                            sf->path, t, (unsigned long long)(off + k),
                            (unsigned long long)(SHARD_HEADER_BYTES + 2 * (off + k)),
                            ld->vocab);
            out[k] = t;
        }
        out += m;
        n -= m;
        off = 0;
        i = i + 1 == ld->nf ? 0 : i + 1;
    }
    return 0;
}

/* Stream index of the first token of global micro-batch g. */
static uint64_t loader_start(loader *ld, uint64_t g)
{
    if (!ld->shuffle)
        return (uint64_t)((unsigned __int128)(g % ld->total) * (ld->bt % ld->total) % ld->total);
    uint64_t epoch = g / ld->nchunks;
    if (!ld->perm_valid || ld->perm_epoch != epoch)
        loader_permute(ld, epoch);
    return (uint64_t)ld->perm[g % ld->nchunks] * ld->bt;
}

int loader_next(loader *ld, int32_t *inputs, int32_t *targets, char *err)
{
    uint64_t g = ld->pos * (uint64_t)ld->world + (uint64_t)ld->rank;
    if (loader_read(ld, loader_start(ld, g), ld->bt + 1, ld->buf, err) < 0)
        return -1;
    memcpy(inputs, ld->buf, ld->bt * sizeof *inputs);
    memcpy(targets, ld->buf + 1, ld->bt * sizeof *targets);
    ld->pos++;
    return 0;
}

uint64_t loader_position(const loader *ld)
{
    return ld->pos;
}

void loader_seek(loader *ld, uint64_t position)
{
    ld->pos = position;
}

uint64_t loader_tokens(const loader *ld)
{
    return ld->total;
}

int loader_files(const loader *ld)
{
    return ld->nf;
}

void loader_close(loader *ld)
{
    if (!ld)
        return;
    readat_close(&ld->cur);
    for (int i = 0; i < ld->nf; i++)
        free(ld->f[i].path);
    free(ld->f);
    free(ld->perm);
    free(ld->buf);
    free(ld->raw);
    free(ld);
}

int loader_read_at(loader *ld, uint64_t start, uint64_t n, int32_t *out, char *err)
{
    return loader_read(ld, start % ld->total, n, out, err);
}
