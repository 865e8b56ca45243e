/* faultshim.c: an LD_PRELOAD library that injects write faults into files
 * under one directory, for tests/cli/test_reliability.py.
 *
 *   FAULT_DIR=/abs/dir        only descriptors whose path starts with it count
 *   FAULT_ENOSPC_AFTER=N      after N bytes written there, write() and fsync()
 *                             fail with ENOSPC (the write that crosses N writes
 *                             what fits): a full disk, where mount is not allowed
 *   FAULT_KILL_AFTER=N        after N bytes written there, the process sends
 *                             itself SIGKILL (mid-write: the bytes up to N
 *                             reach the file, the rest never do)
 *
 * Build: cc -shared -fPIC -O2 faultshim.c -o faultshim.so -ldl
 * Only write(2) and fsync(2) called through the PLT are seen: anatomy's
 * checkpoint and log writers call them directly (stdio would not be seen). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static long long written, enospc_after = -1, kill_after = -1;
static const char *dir;
static size_t dirlen;
static int ready;

static void setup(void)
{
    const char *s;
    ready = 1;
    dir = getenv("FAULT_DIR");
    dirlen = dir ? strlen(dir) : 0;
    if ((s = getenv("FAULT_ENOSPC_AFTER")))
        enospc_after = atoll(s);
    if ((s = getenv("FAULT_KILL_AFTER")))
        kill_after = atoll(s);
}

static int watched(int fd)
{
    char link[64], path[PATH_MAX];
    if (!ready)
        setup();
    if (!dir || fd < 3)
        return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0)
        return 0;
    path[n] = 0;
    return !strncmp(path, dir, dirlen) && (path[dirlen] == '/' || !path[dirlen]);
}

ssize_t write(int fd, const void *buf, size_t n)
{
    static ssize_t (*real)(int, const void *, size_t);
    if (!real)
        real = (ssize_t (*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    if (!watched(fd))
        return real(fd, buf, n);
    long long limit = kill_after >= 0 ? kill_after : enospc_after;
    if (limit >= 0 && written + (long long)n > limit) {
        size_t fits = (size_t)(limit - written);
        ssize_t w = fits ? real(fd, buf, fits) : 0;
        if (w > 0)
            written += w;
        if (kill_after >= 0)
            raise(SIGKILL);
        if (w > 0)
            return w;
        errno = ENOSPC;
        return -1;
    }
    ssize_t w = real(fd, buf, n);
    if (w > 0)
        written += w;
    return w;
}

int fsync(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    if (watched(fd) && enospc_after >= 0 && written >= enospc_after) {
        errno = ENOSPC;
        return -1;
    }
    return real(fd);
}
