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
    size_t cap = 1;
    for (int i = 0; i < n; i++)
        cap += strlen(t[i].name) + 10;
    char *s = malloc(cap), *p = s;
    if (!s)
        return NULL;
    *s = 0;
    for (int i = 0; i < n; i++) {
        size_t bytes = st_dtype_size(t[i].dtype);
        for (int k = 0; k < t[i].ndim; k++)
            bytes *= (size_t)t[i].shape[k];
        p += sprintf(p, "%s%s=%08x", i ? " " : "", t[i].name, crc32c(0, t[i].data, bytes));
    }
    return s;
}

int ckpt_crc_verify(const st_file *f, char *err)
{
    const char *v = st_meta(f, CKPT_CRC_KEY), *path = st_path(f);
    int n = st_count(f), listed = 0;
    if (!v)
        return 0;
    while (*v) {
        const char *eq = strchr(v, '='), *end = strchr(v, ' ');
        char name[256], hex[9], *stop;
        if (!end)
            end = v + strlen(v);
        if (!eq || eq > end || end - eq != 9 || (size_t)(eq - v) >= sizeof name)
            return errf(err, "%s: metadata '%s' is malformed near '%.40s'", path, CKPT_CRC_KEY,
                        v);
        memcpy(name, v, (size_t)(eq - v));
        name[eq - v] = 0;
        memcpy(hex, eq + 1, 8);
        hex[8] = 0;
        unsigned long want = strtoul(hex, &stop, 16);
        if (stop != hex + 8)
            return errf(err, "%s: metadata '%s' is malformed near '%.40s'", path, CKPT_CRC_KEY,
                        v);
        const st_tensor *t = st_find(f, name);
        if (!t)
            return errf(err, "%s: tensor '%s' has a checksum but is not in the file: the file "
                             "is corrupt", path, name);
        uint32_t got = crc32c(0, st_data(f, t), t->end - t->begin);
        if (got != (uint32_t)want)
            return errf(err, "%s: tensor '%s' fails its checksum (crc32c %08x, recorded %08lx): "
                             "the file is corrupt", path, name, got, want);
        listed++;
        v = *end ? end + 1 : end;
    }
    if (listed != n)
        return errf(err, "%s: metadata '%s' lists %d checksums for %d tensors: the file is "
                         "corrupt", path, CKPT_CRC_KEY, listed, n);
    return 0;
}
