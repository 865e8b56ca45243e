/* images.c: IDX (MNIST, Fashion-MNIST) and CIFAR-10 binary readers. Each
 * file is read whole into memory (Fashion-MNIST's training images are 47 MB,
 * CIFAR-10's five batches 154 MB), validated, then copied into an image_set.
 *
 * Gzip-compressed files are decompressed by running `gzip -dc` (spawned
 * directly, no shell) rather than through zlib: the files are read once at
 * startup, so a process costs nothing that matters, gzip is in every Debian
 * base system (it is Essential), its CRC check catches a truncated or
 * corrupt download, and the build keeps its current link line. */
#include "images.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "errbuf.h"
#include "fsutil.h"

extern char **environ;

#define IDX_IMAGES_MAGIC 0x00000803u
#define IDX_LABELS_MAGIC 0x00000801u
#define CIFAR_SIDE 32
#define CIFAR_PIXELS (3 * CIFAR_SIDE * CIFAR_SIDE)
#define CIFAR_RECORD (1 + CIFAR_PIXELS)
/* the most a compressed file may expand to: beyond any image set this reads,
 * and a bound on what a corrupt or hostile .gz can make us allocate */
#define MAX_BYTES ((size_t)8 << 30)

void images_free(image_set *s)
{
    if (!s)
        return;
    free(s->pixels);
    free(s->labels);
    memset(s, 0, sizeof *s);
}

static int is_gzip(FILE *f)
{
    unsigned char m[2];
    size_t got = fread(m, 1, 2, f);
    rewind(f);
    return got == 2 && m[0] == 0x1f && m[1] == 0x8b;
}

/* Reads an already-open plain file whole. */
static int slurp_plain(FILE *f, const char *path, unsigned char **data, size_t *len,
                       char *err)
{
    struct stat st;
    if (fstat(fileno(f), &st) || !S_ISREG(st.st_mode))
        return errf(err, "%s: not a regular file", path);
    size_t n = (size_t)st.st_size;
    unsigned char *buf = malloc(n ? n : 1);
    if (!buf)
        return errf(err, "%s: out of memory reading %zu bytes", path, n);
    if (fread(buf, 1, n, f) != n) {
        free(buf);
        return errf(err, "%s: read error: %s", path, strerror(errno));
    }
    *data = buf;
    *len = n;
    return 0;
}

/* Decompresses a gzip file by reading `gzip -dc -- path` through a pipe. */
static int slurp_gzip(const char *path, unsigned char **data, size_t *len, char *err)
{
    int fd[2];
    posix_spawn_file_actions_t fa;
    pid_t pid;
    char *argv[] = { "gzip", "-dc", "--", (char *)path, NULL };
    size_t cap = 1 << 20, n = 0;
    unsigned char *buf = NULL;
    int rc, status = 0, toolarge = 0;

    if (pipe(fd))
        return errf(err, "%s: pipe: %s", path, strerror(errno));
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fd[1], 1);
    posix_spawn_file_actions_addclose(&fa, fd[0]);
    posix_spawn_file_actions_addclose(&fa, fd[1]);
    /* gzip's own complaint would be a second line: its exit status is enough */
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    rc = posix_spawnp(&pid, "gzip", &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fd[1]);
    if (rc) {
        close(fd[0]);
        return errf(err, "%s: cannot run gzip to decompress it: %s", path, strerror(rc));
    }
    buf = malloc(cap);
    for (;;) {
        if (!buf)
            break;
        if (n == cap) {
            unsigned char *nb = cap < MAX_BYTES ? realloc(buf, cap * 2) : NULL;
            if (!nb) {
                toolarge = cap >= MAX_BYTES;
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t got = read(fd[0], buf + n, cap - n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        n += (size_t)got;
    }
    close(fd[0]); /* gzip gets SIGPIPE if we stopped early */
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (!buf)
        return toolarge ? errf(err, "%s: decompresses to more than %zu bytes", path, MAX_BYTES)
                        : errf(err, "%s: out of memory decompressing it", path);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        free(buf);
        return errf(err, "%s: gzip data is corrupt or truncated", path);
    }
    *data = buf;
    *len = n;
    return 0;
}

/* The file's bytes, decompressed when it is gzip. */
static int slurp(const char *path, unsigned char **data, size_t *len, char *err)
{
    int fd = fs_open_regular(path, err); /* a FIFO would block fopen() */
    FILE *f = fd < 0 ? NULL : fdopen(fd, "rb");
    if (fd < 0)
        return -1;
    int rc;
    if (!f)
        return errf(err, "%s: %s", path, strerror(errno));
    if (is_gzip(f)) {
        fclose(f);
        return slurp_gzip(path, data, len, err);
    }
    rc = slurp_plain(f, path, data, len, err);
    fclose(f);
    return rc;
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int check_labels(const uint8_t *labels, int n, int classes, const char *path,
                        size_t stride, char *err)
{
    for (int i = 0; i < n; i++)
        if (labels[(size_t)i * stride] >= classes)
            return errf(err, "%s: label %d of image %d is out of range for %d classes", path,
                        labels[(size_t)i * stride], i, classes);
    return 0;
}

/* Parses an IDX images file: fills n, rows, cols and points *pix into d. */
static int parse_idx_images(const unsigned char *d, size_t len, const char *path, int *n,
                            int *rows, int *cols, char *err)
{
    if (len < 16)
        return errf(err, "%s: truncated: %zu bytes, shorter than the 16-byte IDX images header",
                    path, len);
    uint32_t magic = be32(d);
    if (magic != IDX_IMAGES_MAGIC)
        return errf(err, "%s: not an IDX images file (magic 0x%08x, expected 0x%08x)", path,
                    magic, IDX_IMAGES_MAGIC);
    uint32_t cnt = be32(d + 4), r = be32(d + 8), c = be32(d + 12);
    if (cnt == 0 || r == 0 || c == 0 || cnt > 0x7fffffffu || r > 65535 || c > 65535)
        return errf(err, "%s: bad dims %u x %u x %u", path, cnt, r, c);
    unsigned long long want = 16ull + (unsigned long long)cnt * r * c;
    if ((unsigned long long)len < want)
        return errf(err, "%s: truncated: the header announces %u images of %ux%u (%llu bytes) "
                         "but the file holds %zu", path, cnt, r, c, want, len);
    if ((unsigned long long)len > want)
        return errf(err, "%s: %llu bytes after the %u images of %ux%u the header announces", path,
                    (unsigned long long)len - want, cnt, r, c);
    *n = (int)cnt;
    *rows = (int)r;
    *cols = (int)c;
    return 0;
}

static int parse_idx_labels(const unsigned char *d, size_t len, const char *path, int *n,
                            char *err)
{
    if (len < 8)
        return errf(err, "%s: truncated: %zu bytes, shorter than the 8-byte IDX labels header",
                    path, len);
    uint32_t magic = be32(d);
    if (magic != IDX_LABELS_MAGIC)
        return errf(err, "%s: not an IDX labels file (magic 0x%08x, expected 0x%08x)", path,
                    magic, IDX_LABELS_MAGIC);
    uint32_t cnt = be32(d + 4);
    if (cnt == 0 || cnt > 0x7fffffffu)
        return errf(err, "%s: bad label count %u", path, cnt);
    if ((unsigned long long)len < 8ull + cnt)
        return errf(err, "%s: truncated: the header announces %u labels but the file holds %zu",
                    path, cnt, len - 8);
    if ((unsigned long long)len > 8ull + cnt)
        return errf(err, "%s: %zu bytes after the %u labels the header announces", path,
                    len - 8 - cnt, cnt);
    *n = (int)cnt;
    return 0;
}

int images_read_idx(image_set *s, const char *images_path, const char *labels_path,
                    int classes, char *err)
{
    unsigned char *di = NULL, *dl = NULL;
    size_t li, ll;
    int n = 0, rows = 0, cols = 0, nl = 0;

    memset(s, 0, sizeof *s);
    if (slurp(images_path, &di, &li, err))
        return -1;
    if (parse_idx_images(di, li, images_path, &n, &rows, &cols, err))
        goto fail;
    if (slurp(labels_path, &dl, &ll, err))
        goto fail;
    if (parse_idx_labels(dl, ll, labels_path, &nl, err))
        goto fail;
    if (nl != n) {
        errf(err, "%s: %d labels, but its images file %s holds %d images", labels_path, nl,
             images_path, n);
        goto fail;
    }
    if (check_labels(dl + 8, n, classes, labels_path, 1, err))
        goto fail;
    s->pixels = malloc((size_t)n * rows * cols);
    s->labels = malloc((size_t)n);
    if (!s->pixels || !s->labels) {
        errf(err, "%s: out of memory", images_path);
        goto fail;
    }
    memcpy(s->pixels, di + 16, (size_t)n * rows * cols);
    memcpy(s->labels, dl + 8, (size_t)n);
    s->n = n;
    s->channels = 1;
    s->height = rows;
    s->width = cols;
    free(di);
    free(dl);
    return 0;
fail:
    free(di);
    free(dl);
    images_free(s);
    return -1;
}

int images_read_cifar(image_set *s, const char *const *paths, int npaths, int classes,
                      char *err)
{
    unsigned char **d = calloc((size_t)(npaths > 0 ? npaths : 1), sizeof *d);
    size_t *len = calloc((size_t)(npaths > 0 ? npaths : 1), sizeof *len);
    size_t total = 0;
    int rc = -1;

    memset(s, 0, sizeof *s);
    if (!d || !len) {
        errf(err, "%s: out of memory", npaths > 0 ? paths[0] : "CIFAR-10");
        goto out;
    }
    for (int f = 0; f < npaths; f++) {
        if (slurp(paths[f], &d[f], &len[f], err))
            goto out;
        if (len[f] == 0) {
            errf(err, "%s: empty file", paths[f]);
            goto out;
        }
        if (len[f] % CIFAR_RECORD) {
            errf(err, "%s: truncated: %zu bytes is not a whole number of %d-byte CIFAR-10 "
                      "records", paths[f], len[f], CIFAR_RECORD);
            goto out;
        }
        if (check_labels(d[f], (int)(len[f] / CIFAR_RECORD), classes, paths[f], CIFAR_RECORD,
                         err))
            goto out;
        total += len[f] / CIFAR_RECORD;
    }
    if (total == 0 || total > 0x7fffffff) {
        errf(err, "%s: no images", npaths > 0 ? paths[0] : "CIFAR-10");
        goto out;
    }
    s->pixels = malloc(total * CIFAR_PIXELS);
    s->labels = malloc(total);
    if (!s->pixels || !s->labels) {
        errf(err, "%s: out of memory", paths[0]);
        images_free(s);
        goto out;
    }
    size_t k = 0;
    for (int f = 0; f < npaths; f++)
        for (size_t r = 0; r < len[f] / CIFAR_RECORD; r++, k++) {
            const unsigned char *rec = d[f] + r * CIFAR_RECORD;
            s->labels[k] = rec[0];
            memcpy(s->pixels + k * CIFAR_PIXELS, rec + 1, CIFAR_PIXELS);
        }
    s->n = (int)total;
    s->channels = 3;
    s->height = s->width = CIFAR_SIDE;
    rc = 0;
out:
    for (int f = 0; d && f < npaths; f++)
        free(d[f]);
    free(d);
    free(len);
    return rc;
}

/* snprintf for paths; the caller has bounded the inputs (images_open
 * refuses paths near PATH_CAP), so truncation cannot happen. */
#define PATH_CAP 4096
static void pathf(char *out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, PATH_CAP, fmt, ap);
    va_end(ap);
}

static int is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* dir/name or dir/name.gz, whichever exists, into out; 0 if found. */
static int find_in(const char *dir, const char *name, char *out)
{
    pathf(out, "%s/%s", dir, name);
    if (is_file(out))
        return 0;
    pathf(out, "%s/%s.gz", dir, name);
    return is_file(out) ? 0 : -1;
}

static int open_dir(image_set *s, const char *dir, int test, int classes, char *err)
{
    char img[PATH_CAP], lab[PATH_CAP], sub[PATH_CAP];
    const char *pre = test ? "t10k" : "train";
    char name[64];

    snprintf(name, sizeof name, "%s-images-idx3-ubyte", pre);
    if (find_in(dir, name, img) == 0) {
        snprintf(name, sizeof name, "%s-labels-idx1-ubyte", pre);
        if (find_in(dir, name, lab))
            return errf(err, "%s: holds %s but not %s[.gz]", dir, img, name);
        return images_read_idx(s, img, lab, classes, err);
    }
    /* CIFAR-10's archive unpacks into cifar-10-batches-bin/ */
    for (int pass = 0; pass < 2; pass++) {
        const char *d = dir;
        if (pass) {
            pathf(sub, "%s/cifar-10-batches-bin", dir);
            d = sub;
        }
        char files[5][PATH_CAP];
        const char *paths[5];
        int n = test ? 1 : 5;
        for (int i = 0; i < n; i++) {
            if (test)
                pathf(files[i], "%s/test_batch.bin", d);
            else
                pathf(files[i], "%s/data_batch_%d.bin", d, i + 1);
            paths[i] = files[i];
        }
        if (!is_file(files[0]))
            continue;
        for (int i = 1; i < n; i++)
            if (!is_file(files[i]))
                return errf(err, "%s: holds %s but not %s", dir, files[0], files[i]);
        return images_read_cifar(s, paths, n, classes, err);
    }
    return errf(err, "%s: no %s images in this directory (expected %s-images-idx3-ubyte[.gz] "
                     "or %s)", dir, test ? "test" : "training", pre,
                test ? "test_batch.bin" : "data_batch_1.bin .. data_batch_5.bin");
}

int images_open(image_set *s, const char *path, int test, int classes, char *err)
{
    struct stat st;
    size_t len = strlen(path);

    memset(s, 0, sizeof *s);
    if (len > PATH_CAP - 64)
        return errf(err, "%.64s...: path too long", path);
    if (stat(path, &st))
        return errf(err, "%s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode))
        return open_dir(s, path, test, classes, err);
    if (len >= 4 && strcmp(path + len - 4, ".bin") == 0)
        return images_read_cifar(s, &path, 1, classes, err);

    /* an IDX images file: its labels file by the standard naming */
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *hit = NULL;
    for (const char *p = strstr(base, "images-idx3"); p; p = strstr(p + 1, "images-idx3"))
        hit = p;
    if (!hit)
        return errf(err, "%s: cannot tell its labels file: an IDX images file's name must "
                         "contain 'images-idx3' (its labels: 'labels-idx1'), a CIFAR-10 "
                         "file's end in '.bin'", path);
    char lab[PATH_CAP];
    pathf(lab, "%.*slabels-idx1%s", (int)(hit - path), path, hit + strlen("images-idx3"));
    if (!is_file(lab)) {
        /* the other compression of the same name */
        char alt[PATH_CAP];
        size_t ll = strlen(lab);
        if (ll > 3 && strcmp(lab + ll - 3, ".gz") == 0)
            pathf(alt, "%.*s", (int)(ll - 3), lab);
        else
            pathf(alt, "%s.gz", lab);
        if (!is_file(alt))
            return errf(err, "%s: its labels file %s does not exist", path, lab);
        memcpy(lab, alt, sizeof lab);
    }
    return images_read_idx(s, path, lab, classes, err);
}
