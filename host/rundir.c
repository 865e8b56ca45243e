/* rundir.c: the run directory (--out): where checkpoints are named and how
 * the folder is made. */
#include "rundir.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "../data/errbuf.h"

int rundir_mkdir_p(const char *dir, char *err)
{
    char tmp[4096];
    size_t len = strlen(dir);
    if (len >= sizeof tmp)
        return errf(err, "--out %s: path too long", dir);
    memcpy(tmp, dir, len + 1);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(tmp, 0777) && errno != EEXIST)
            return errf(err, "--out %s: %s: %s", dir, tmp, strerror(errno));
        *p = '/';
    }
    if (mkdir(tmp, 0777) && errno != EEXIST)
        return errf(err, "--out %s: %s", dir, strerror(errno));
    return 0;
}

void rundir_ckpt_path(const char *out, int step, char *path, size_t cap)
{
    snprintf(path, cap, "%s/step_%06d.safetensors", out, step);
}
