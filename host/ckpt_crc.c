/* ckpt_crc.c: per-tensor CRC-32C of checkpoints (see ckpt_crc.h).
 *
 * Why a checksum at all: st_open validates the header and every size, but a
 * bit flipped inside tensor data (a bad disk, a bad copy) is a valid float and
 * loads silently. Why per tensor: the error can name what is damaged. */
#include "ckpt_crc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../data/crc32c.h"
#include "../data/errbuf.h"

char *ckpt_crc_value(const st_out_tensor *t, int n)
{
    char *s = malloc((size_t)n * 9 + 1), *p = s;
    if (!s)
        return NULL;
    *s = 0;
    for (int i = 0; i < n; i++) {
        size_t bytes = st_dtype_size(t[i].dtype);
        for (int k = 0; k < t[i].ndim; k++)
            bytes *= (size_t)t[i].shape[k];
        p += sprintf(p, "%s%08x", i ? " " : "", crc32c(0, t[i].data, bytes));
    }
    return s;
}

static int by_begin(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

int ckpt_crc_verify(const st_file *f, char *err)
{
    const char *v = st_meta(f, CKPT_CRC_KEY);
    int n = st_count(f), rc = 0;
    if (!v)
        return 0;
    if (strlen(v) != (size_t)(n ? 9 * n - 1 : 0))
        return errf(err, "%s: metadata '%s' lists %zu checksums for %d tensors: the file is "
                         "corrupt", st_path(f), CKPT_CRC_KEY, (strlen(v) + 1) / 9, n);
    const st_tensor **t = malloc((size_t)(n ? n : 1) * sizeof *t);
    if (!t)
        return errf(err, "%s: out of memory", st_path(f));
    for (int i = 0; i < n; i++)
        t[i] = st_at(f, i);
    qsort(t, (size_t)n, sizeof *t, by_begin);
    for (int i = 0; i < n && !rc; i++) {
        char hex[9], *end;
        memcpy(hex, v + 9 * i, 8);
        hex[8] = 0;
        unsigned long want = strtoul(hex, &end, 16);
        if (end != hex + 8 || (i && v[9 * i - 1] != ' ')) {
            rc = errf(err, "%s: metadata '%s' is malformed", st_path(f), CKPT_CRC_KEY);
            break;
        }
        uint32_t got = crc32c(0, st_data(f, t[i]), t[i]->end - t[i]->begin);
        if (got != (uint32_t)want)
            rc = errf(err, "%s: tensor '%s' fails its checksum (crc32c %08x, recorded %08lx): "
                           "the file is corrupt", st_path(f), t[i]->name, got, want);
    }
    free(t);
    return rc;
}
