/* safetensors.c: the safetensors reader and writer, and atomic file
 * replacement (see safetensors.h). Hosts are little-endian, like the format,
 * so tensor bytes are used as they lie in the copy of the file. */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../data/errbuf.h"
#include "../data/json.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

static const struct { const char *name; size_t size; } dtypes[ST_NDTYPES] = {
    [ST_BOOL] = { "BOOL", 1 }, [ST_U8] = { "U8", 1 }, [ST_I8] = { "I8", 1 },
    [ST_U16] = { "U16", 2 }, [ST_I16] = { "I16", 2 }, [ST_F16] = { "F16", 2 },
    [ST_BF16] = { "BF16", 2 }, [ST_U32] = { "U32", 4 }, [ST_I32] = { "I32", 4 },
    [ST_F32] = { "F32", 4 }, [ST_U64] = { "U64", 8 }, [ST_I64] = { "I64", 8 },
    [ST_F64] = { "F64", 8 }, [ST_F8_E4M3] = { "F8_E4M3", 1 },
    [ST_F8_E5M2] = { "F8_E5M2", 1 },
};

const char *st_dtype_name(st_dtype t)
{
    return (unsigned)t < ST_NDTYPES ? dtypes[t].name : "?";
}

int st_dtype_parse(const char *name)
{
    for (int i = 0; i < ST_NDTYPES; i++)
        if (!strcmp(name, dtypes[i].name))
            return i;
    return -1;
}

size_t st_dtype_size(st_dtype t)
{
    return (unsigned)t < ST_NDTYPES ? dtypes[t].size : 0;
}

struct st_file {
    char *path;
    const uint8_t *map;
    size_t size;
    const uint8_t *data;
    uint64_t data_len;
    json_doc *doc;
    int n;
    st_tensor *t;
    int *by_name;       /* tensor indices sorted by name */
    int nmeta;
    const char **mkey, **mval;
};

char *st_shape_str(const int64_t *shape, int ndim, char *buf, size_t cap)
{
    size_t o = 0;
    o += (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < cap)
        snprintf(buf + o, cap - o, "]");
    return buf;
}

/* Reads __metadata__: an object of strings. */
static int parse_meta(st_file *f, const json_value *md, char *err)
{
    if (json_typeof(md) != JSON_OBJECT)
        return errf(err, "%s: __metadata__ is not an object", f->path);
    size_t n = json_len(md);
    f->mkey = calloc(n + 1, sizeof(char *));
    f->mval = calloc(n + 1, sizeof(char *));
    if (!f->mkey || !f->mval)
        return errf(err, "%s: out of memory", f->path);
    for (const json_value *m = json_first(md); m; m = json_next(md, m)) {
        const char *k = json_key(m, NULL);
        if (!json_str(m))
            return errf(err, "%s: __metadata__ value of '%s' is not a string", f->path, k);
        f->mkey[f->nmeta] = k;
        f->mval[f->nmeta++] = json_str(m);
    }
    return 0;
}

/* Reads one tensor entry of the header into t and checks it against the
 * data section's length. */
static int parse_tensor(st_file *f, const char *name, const json_value *e, st_tensor *t,
                        char *err)
{
    const char *p = f->path;
    if (json_typeof(e) != JSON_OBJECT)
        return errf(err, "%s: tensor '%s': entry is not an object", p, name);
    const char *dt = json_str(json_get(e, "dtype"));
    if (!dt)
        return errf(err, "%s: tensor '%s': missing dtype", p, name);
    int d = st_dtype_parse(dt);
    if (d < 0)
        return errf(err, "%s: tensor '%s': unknown dtype '%s'", p, name, dt);
    const json_value *sh = json_get(e, "shape"), *off = json_get(e, "data_offsets");
    if (!sh || json_typeof(sh) != JSON_ARRAY)
        return errf(err, "%s: tensor '%s': missing or bad shape", p, name);
    if (json_len(sh) > ST_MAXDIM)
        return errf(err, "%s: tensor '%s': more than %d dimensions", p, name, ST_MAXDIM);
    t->name = name;
    t->dtype = (st_dtype)d;
    t->ndim = (int)json_len(sh);
    t->numel = 1;
    int i = 0;
    for (const json_value *v = json_first(sh); v; v = json_next(sh, v), i++) {
        int64_t dim;
        if (json_int(v, 0, INT64_MAX, &dim))
            return errf(err, "%s: tensor '%s': bad shape entry", p, name);
        t->shape[i] = dim;
        if (__builtin_mul_overflow(t->numel, (uint64_t)dim, &t->numel))
            return errf(err, "%s: tensor '%s': shape too large", p, name);
    }
    int64_t b, en;
    if (!off || json_typeof(off) != JSON_ARRAY || json_len(off) != 2 ||
        json_int(json_at(off, 0), 0, INT64_MAX, &b) ||
        json_int(json_at(off, 1), 0, INT64_MAX, &en) || en < b)
        return errf(err, "%s: tensor '%s': bad data_offsets", p, name);
    t->begin = (uint64_t)b;
    t->end = (uint64_t)en;
    uint64_t bytes;
    char sbuf[160];
    if (__builtin_mul_overflow(t->numel, (uint64_t)st_dtype_size(t->dtype), &bytes) ||
        bytes != t->end - t->begin)
        return errf(err, "%s: tensor '%s': shape %s of %s does not match data_offsets [%llu, %llu]",
                    p, name, st_shape_str(t->shape, t->ndim, sbuf, sizeof(sbuf)), dt,
                    (unsigned long long)t->begin, (unsigned long long)t->end);
    if (t->end > f->data_len)
        return errf(err, "%s: tensor '%s' extends past end of file", p, name);
    return 0;
}

static int cmp_name(const void *a, const void *b, void *ctx)
{
    const st_tensor *t = ctx;
    return strcmp(t[*(const int *)a].name, t[*(const int *)b].name);
}

static int cmp_begin(const void *a, const void *b, void *ctx)
{
    const st_tensor *t = ctx, *x = &t[*(const int *)a], *y = &t[*(const int *)b];
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* Checks names unique and byte ranges disjoint; leaves by_name sorted. */
static int check_layout(st_file *f, char *err)
{
    int n = f->n, *ord = malloc((size_t)(n ? n : 1) * sizeof(int));
    f->by_name = malloc((size_t)(n ? n : 1) * sizeof(int));
    if (!ord || !f->by_name) {
        free(ord);
        return errf(err, "%s: out of memory", f->path);
    }
    for (int i = 0; i < n; i++)
        ord[i] = f->by_name[i] = i;
    qsort_r(f->by_name, (size_t)n, sizeof(int), cmp_name, f->t);
    qsort_r(ord, (size_t)n, sizeof(int), cmp_begin, f->t);
    int rc = 0;
    for (int i = 1; i < n && !rc; i++)
        if (!strcmp(f->t[f->by_name[i - 1]].name, f->t[f->by_name[i]].name))
            rc = errf(err, "%s: duplicate tensor '%s'", f->path, f->t[f->by_name[i]].name);
    uint64_t last_end = 0;
    const char *last = NULL;
    for (int i = 0; i < n && !rc; i++) {
        const st_tensor *t = &f->t[ord[i]];
        if (t->begin == t->end)
            continue;
        if (last && t->begin < last_end)
            rc = errf(err, "%s: tensor '%s' overlaps tensor '%s'", f->path, t->name, last);
        last_end = t->end;
        last = t->name;
    }
    free(ord);
    return rc;
}

static int parse_header(st_file *f, char *err)
{
    uint64_t n;
    memcpy(&n, f->map, 8);
    if (n > ST_MAXHEADER)
        return errf(err, "%s: header length %llu is too large", f->path, (unsigned long long)n);
    if (n > f->size - 8)
        return errf(err, "%s: header length %llu extends past end of file (%zu bytes)",
                    f->path, (unsigned long long)n, f->size);
    if (n < 2 || f->map[8] != '{')
        return errf(err, "%s: header is not a JSON object", f->path);
    f->data = f->map + 8 + n;
    f->data_len = f->size - 8 - n;
    f->doc = json_parse((const char *)f->map + 8, (size_t)n, f->path, err);
    if (!f->doc)
        return -1;
    const json_value *root = json_root(f->doc);
    if (json_typeof(root) != JSON_OBJECT)
        return errf(err, "%s: header is not a JSON object", f->path);
    f->t = calloc(json_len(root) + 1, sizeof(st_tensor));
    if (!f->t)
        return errf(err, "%s: out of memory", f->path);
    int seen_meta = 0;
    for (const json_value *m = json_first(root); m; m = json_next(root, m)) {
        size_t klen;
        const char *k = json_key(m, &klen);
        if (strlen(k) != klen)
            return errf(err, "%s: tensor name with a NUL character", f->path);
        if (!strcmp(k, "__metadata__")) {
            if (seen_meta++)
                return errf(err, "%s: duplicate __metadata__", f->path);
            if (parse_meta(f, m, err))
                return -1;
            continue;
        }
        if (parse_tensor(f, k, m, &f->t[f->n], err))
            return -1;
        f->n++;
    }
    return check_layout(f, err);
}

int st_read_fd(int fd, const char *path, size_t size, void **out, char *err)
{
    unsigned char *buf = malloc(size ? size : 1);
    size_t got = 0;
    *out = NULL;
    if (!buf)
        return errf(err, "%s: out of memory for %zu bytes", path, size);
    while (got < size) {
        ssize_t r = pread(fd, buf + got, size - got, (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (r < 0)
                errf(err, "%s: read failed: %s", path, strerror(errno));
            else
                errf(err, "%s: truncated while being read (%zu of %zu bytes; the file "
                          "changed after it was opened)", path, got, size);
            free(buf);
            return -1;
        }
        got += (size_t)r;
    }
    *out = buf;
    return 0;
}

st_file *st_open(const char *path, char *err)
{
    st_file *f = calloc(1, sizeof(*f));
    if (!f || !(f->path = strdup(path))) {
        free(f);
        errf(err, "%s: out of memory", path);
        return NULL;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        errf(err, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        errf(err, "%s: not a regular file", path);
        close(fd);
        goto fail;
    }
    f->size = (size_t)st.st_size;
    if (f->size < 8) {
        errf(err, "%s: too short for a safetensors file (%zu bytes)", path, f->size);
        close(fd);
        goto fail;
    }
    void *buf;
    int rc = st_read_fd(fd, path, f->size, &buf, err);
    close(fd);
    if (rc)
        goto fail;
    f->map = buf;
    if (parse_header(f, err))
        goto fail;
    return f;
fail:
    st_close(f);
    return NULL;
}

void st_close(st_file *f)
{
    if (!f)
        return;
    free((void *)f->map);
    json_free(f->doc);
    free(f->t);
    free(f->by_name);
    free(f->mkey);
    free(f->mval);
    free(f->path);
    free(f);
}

const char *st_path(const st_file *f) { return f->path; }
int st_count(const st_file *f) { return f->n; }
int st_meta_count(const st_file *f) { return f->nmeta; }

const st_tensor *st_at(const st_file *f, int i)
{
    return i >= 0 && i < f->n ? &f->t[i] : NULL;
}

const st_tensor *st_find(const st_file *f, const char *name)
{
    int lo = 0, hi = f->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        const st_tensor *t = &f->t[f->by_name[mid]];
        int c = strcmp(name, t->name);
        if (!c)
            return t;
        if (c < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return NULL;
}

const void *st_data(const st_file *f, const st_tensor *t)
{
    return f->data + t->begin;
}

void st_meta_at(const st_file *f, int i, const char **key, const char **val)
{
    *key = f->mkey[i];
    *val = f->mval[i];
}

const char *st_meta(const st_file *f, const char *key)
{
    for (int i = 0; i < f->nmeta; i++)
        if (!strcmp(f->mkey[i], key))
            return f->mval[i];
    return NULL;
}

static float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff, bits;
    float f;
    if (e == 0) {
        /* zero or subnormal: m * 2^-24 is exact in fp32 */
        f = (float)m * 5.9604644775390625e-08f;
        return sign ? -f : f;
    }
    if (e == 0x1f)
        bits = sign | 0x7f800000u | (m << 13);
    else
        bits = sign | ((e + 112) << 23) | (m << 13);
    memcpy(&f, &bits, 4);
    return f;
}

/* Converts n elements of a float dtype at src (any alignment) to fp32. */
static void to_f32(const uint8_t *src, st_dtype dt, float *dst, size_t n)
{
    switch (dt) {
    case ST_F32:
        memcpy(dst, src, n * 4);
        break;
    case ST_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, src + 8 * i, 8);
            dst[i] = (float)d;
        }
        break;
    case ST_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            uint32_t bits = (uint32_t)h << 16;
            memcpy(&dst[i], &bits, 4);
        }
        break;
    default: /* ST_F16 */
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            dst[i] = f16_to_f32(h);
        }
        break;
    }
}

static int is_float(st_dtype dt)
{
    return dt == ST_F32 || dt == ST_F64 || dt == ST_BF16 || dt == ST_F16;
}

int st_convert_f32(const void *src, st_dtype dt, float *dst, size_t n)
{
    if (!is_float(dt))
        return -1;
    to_f32(src, dt, dst, n);
    return 0;
}

int st_read_f32(const st_file *f, const st_tensor *t, float *out, int transpose, char *err)
{
    st_dtype dt = t->dtype;
    if (!is_float(dt))
        return errf(err, "%s: tensor '%s' has dtype %s, not a float type", f->path, t->name,
                    st_dtype_name(dt));
    const uint8_t *src = st_data(f, t);
    size_t es = st_dtype_size(dt);
    if (!transpose) {
        to_f32(src, dt, out, (size_t)t->numel);
        return 0;
    }
    if (t->ndim != 2)
        return errf(err, "%s: tensor '%s' is not 2-D and cannot be transposed", f->path, t->name);
    /* Tiles of 32 source rows x 256 columns: each source row segment is
     * converted once, then scattered down the output's columns. */
    size_t R = (size_t)t->shape[0], Cc = (size_t)t->shape[1];
    enum { TR = 32, TC = 256 };
    float tmp[TR][TC];
    for (size_t i0 = 0; i0 < R; i0 += TR) {
        size_t ni = R - i0 < TR ? R - i0 : TR;
        for (size_t j0 = 0; j0 < Cc; j0 += TC) {
            size_t nj = Cc - j0 < TC ? Cc - j0 : TC;
            for (size_t i = 0; i < ni; i++)
                to_f32(src + ((i0 + i) * Cc + j0) * es, dt, tmp[i], nj);
            for (size_t j = 0; j < nj; j++)
                for (size_t i = 0; i < ni; i++)
                    out[(j0 + j) * R + i0 + i] = tmp[i][j];
        }
    }
    return 0;
}

/* ---- atomic files ---- */

int st_atomic_open(st_atomic *a, const char *path, char *err)
{
    static unsigned counter;
    a->fd = -1;
    a->tmp = NULL;
    a->path = strdup(path);
    size_t cap = strlen(path) + 64;
    a->tmp = malloc(cap);
    if (!a->path || !a->tmp) {
        st_atomic_abort(a);
        return errf(err, "%s: out of memory", path);
    }
    for (int tries = 0; tries < 100; tries++) {
        unsigned c = __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED);
        snprintf(a->tmp, cap, "%s.tmp.%ld.%u", path, (long)getpid(), c);
        a->fd = open(a->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (a->fd >= 0)
            return 0;
        if (errno != EEXIST)
            break;
    }
    errf(err, "%s: cannot create temporary file: %s", path, strerror(errno));
    free(a->tmp);
    a->tmp = NULL;
    st_atomic_abort(a);
    return -1;
}

int st_atomic_write(st_atomic *a, const void *buf, size_t n, char *err)
{
    const char *p = buf;
    while (n) {
        ssize_t w = write(a->fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            errf(err, "%s: write failed: %s", a->path, w ? strerror(errno) : "no progress");
            st_atomic_abort(a);
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* fsyncs the folder holding path so that the rename itself is durable.
 * Returns 0 or an errno value. */
static int sync_dir(const char *path)
{
    char *d = strdup(path);
    if (!d)
        return ENOMEM;
    char *slash = strrchr(d, '/');
    const char *dir = ".";
    if (slash == d)
        dir = "/";
    else if (slash) {
        *slash = 0;
        dir = d;
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc = 0;
    if (fd >= 0) {
        /* Some filesystems cannot fsync a folder (EINVAL): nothing to do there. */
        if (fsync(fd) && errno != EINVAL)
            rc = errno;
        close(fd);
    }
    free(d);
    return rc;
}

int st_atomic_commit(st_atomic *a, char *err)
{
    if (a->fd < 0)
        return errf(err, "%s: write already failed", a->path ? a->path : "?");
    if (fsync(a->fd)) {
        errf(err, "%s: fsync failed: %s", a->path, strerror(errno));
        st_atomic_abort(a);
        return -1;
    }
    int rc = close(a->fd);
    a->fd = -1;
    if (rc) {
        errf(err, "%s: close failed: %s", a->path, strerror(errno));
        st_atomic_abort(a);
        return -1;
    }
    if (rename(a->tmp, a->path)) {
        errf(err, "%s: rename failed: %s", a->path, strerror(errno));
        st_atomic_abort(a);
        return -1;
    }
    free(a->tmp);
    a->tmp = NULL;
    rc = sync_dir(a->path);
    if (rc)
        errf(err, "%s: fsync of its folder failed: %s", a->path, strerror(rc));
    st_atomic_abort(a);
    return rc ? -1 : 0;
}

void st_atomic_abort(st_atomic *a)
{
    if (a->fd >= 0)
        close(a->fd);
    a->fd = -1;
    if (a->tmp)
        unlink(a->tmp);
    free(a->tmp);
    free(a->path);
    a->tmp = a->path = NULL;
}

int st_mkdirs(const char *dir, char *err)
{
    char *d = strdup(dir);
    if (!d)
        return errf(err, "%s: out of memory", dir);
    size_t n = strlen(d);
    for (size_t i = 1; i <= n; i++) {
        if (d[i] != '/' && d[i] != 0)
            continue;
        char c = d[i];
        d[i] = 0;
        if (mkdir(d, 0777) && errno != EEXIST) {
            errf(err, "%s: cannot create folder: %s", d, strerror(errno));
            free(d);
            return -1;
        }
        d[i] = c;
    }
    free(d);
    struct stat st;
    if (stat(dir, &st) || !S_ISDIR(st.st_mode))
        return errf(err, "%s: not a folder", dir);
    return 0;
}

/* ---- writer ---- */

/* Writes the [a, b] transpose of the [b, a] matrix src (element size es). */
static int write_transposed(st_atomic *a, const st_out_tensor *t, char *err)
{
    size_t rows = (size_t)t->shape[0], cols = (size_t)t->shape[1];
    size_t es = st_dtype_size(t->dtype), rb = 64;
    const uint8_t *src = t->data;
    uint8_t *buf = malloc(rb * cols * es + 1);
    if (!buf) {
        errf(err, "%s: out of memory", a->path);
        st_atomic_abort(a);
        return -1;
    }
    for (size_t i0 = 0; i0 < rows; i0 += rb) {
        size_t ni = rows - i0 < rb ? rows - i0 : rb;
        /* src row j holds file column j: read it contiguously, scatter. */
        for (size_t j = 0; j < cols; j++) {
            const uint8_t *s = src + (j * rows + i0) * es;
            if (es == 4)
                for (size_t i = 0; i < ni; i++)
                    memcpy(buf + (i * cols + j) * 4, s + i * 4, 4);
            else
                for (size_t i = 0; i < ni; i++)
                    memcpy(buf + (i * cols + j) * es, s + i * es, es);
        }
        if (st_atomic_write(a, buf, ni * cols * es, err)) {
            free(buf);
            return -1;
        }
    }
    free(buf);
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Checks the tensor list and returns each tensor's byte size in sizes[]. */
static int check_out(const char *path, const st_out_tensor *t, int n, uint64_t *sizes,
                     char *err)
{
    const char **names = malloc((size_t)(n ? n : 1) * sizeof(char *));
    if (!names)
        return errf(err, "%s: out of memory", path);
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        uint64_t numel = 1;
        names[i] = t[i].name;
        if (!t[i].name || !strcmp(t[i].name, "__metadata__"))
            rc = errf(err, "%s: tensor %d has a bad name", path, i);
        else if ((unsigned)t[i].dtype >= ST_NDTYPES || t[i].ndim < 0 ||
                 t[i].ndim > ST_MAXDIM || (t[i].transpose && t[i].ndim != 2))
            rc = errf(err, "%s: tensor '%s': bad dtype, rank or transpose", path, t[i].name);
        for (int k = 0; k < t[i].ndim && !rc; k++)
            if (t[i].shape[k] < 0 ||
                __builtin_mul_overflow(numel, (uint64_t)t[i].shape[k], &numel))
                rc = errf(err, "%s: tensor '%s': bad shape", path, t[i].name);
        if (!rc && __builtin_mul_overflow(numel, st_dtype_size(t[i].dtype), &sizes[i]))
            rc = errf(err, "%s: tensor '%s': too large", path, t[i].name);
        if (!rc && sizes[i] && !t[i].data)
            rc = errf(err, "%s: tensor '%s': no data", path, t[i].name);
    }
    if (!rc) {
        qsort(names, (size_t)n, sizeof(char *), cmp_str);
        for (int i = 1; i < n && !rc; i++)
            if (!strcmp(names[i - 1], names[i]))
                rc = errf(err, "%s: duplicate tensor '%s'", path, names[i]);
    }
    free(names);
    return rc;
}

/* Builds the header JSON, padded with spaces to a multiple of 8 bytes. */
static int build_header(json_out *h, const st_out_tensor *t, int n, const uint64_t *sizes,
                        const char *const *meta, int nmeta)
{
    json_out_raw(h, "{", 1);
    if (nmeta > 0) {
        json_out_raw(h, "\"__metadata__\":{", 16);
        for (int i = 0; i < nmeta; i++) {
            if (i)
                json_out_raw(h, ",", 1);
            json_out_str(h, meta[2 * i]);
            json_out_raw(h, ":", 1);
            json_out_str(h, meta[2 * i + 1]);
        }
        json_out_raw(h, "}", 1);
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        if (i || nmeta > 0)
            json_out_raw(h, ",", 1);
        json_out_str(h, t[i].name);
        json_out_fmt(h, ":{\"dtype\":\"%s\",\"shape\":[", st_dtype_name(t[i].dtype));
        for (int k = 0; k < t[i].ndim; k++)
            json_out_fmt(h, "%s%lld", k ? "," : "", (long long)t[i].shape[k]);
        json_out_fmt(h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                     (unsigned long long)(off + sizes[i]));
        off += sizes[i];
    }
    json_out_raw(h, "}", 1);
    while (h->len % 8)
        json_out_raw(h, " ", 1);
    return h->failed ? -1 : 0;
}

int st_write(const char *path, const st_out_tensor *t, int n,
             const char *const *meta, int nmeta, char *err)
{
    if (n < 0 || nmeta < 0)
        return errf(err, "%s: bad tensor count", path);
    for (int i = 0; i < nmeta; i++)
        if (!meta[2 * i] || !meta[2 * i + 1])
            return errf(err, "%s: metadata entry %d is NULL", path, i);
    uint64_t *sizes = malloc((size_t)(n ? n : 1) * sizeof(uint64_t));
    if (!sizes)
        return errf(err, "%s: out of memory", path);
    json_out h = { 0 };
    st_atomic a;
    int rc = check_out(path, t, n, sizes, err);
    if (!rc && build_header(&h, t, n, sizes, meta, nmeta))
        rc = errf(err, "%s: out of memory", path);
    if (!rc && h.len > ST_MAXHEADER)
        rc = errf(err, "%s: header too large", path);
    if (rc)
        goto out;
    if ((rc = st_atomic_open(&a, path, err)))
        goto out;
    uint64_t hl = h.len;
    if ((rc = st_atomic_write(&a, &hl, 8, err)) || (rc = st_atomic_write(&a, h.buf, h.len, err)))
        goto out;
    for (int i = 0; i < n && !rc; i++) {
        if (t[i].transpose)
            rc = write_transposed(&a, &t[i], err);
        else
            rc = st_atomic_write(&a, t[i].data, (size_t)sizes[i], err);
    }
    if (!rc)
        rc = st_atomic_commit(&a, err);
out:
    json_out_free(&h);
    free(sizes);
    return rc;
}
