/* readat.h: reading a file's bytes at an offset through a descriptor that
 * the reader opens on demand (one at a time, so a glob of a thousand shards
 * holds one descriptor), instead of a mapping. A file truncated or replaced
 * while in use then gives an error naming it, where reading a mapping past
 * the file's new end would kill the process with SIGBUS. */
#ifndef ANATOMY_READAT_H
#define ANATOMY_READAT_H

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "errbuf.h"

typedef struct {
    int fd;     /* -1: none open */
    int file;   /* the caller's index of the open file, -1: none */
} readat_cursor;

#define READAT_INIT { -1, -1 }

static inline void readat_close(readat_cursor *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = c->file = -1;
}

/* Reads n bytes at offset off of file number `file` (path), which was
 * `size` bytes when opened and checked, into buf. -1 with err naming path
 * when the file is gone, has another size now, or ends before off + n. */
static inline int readat(readat_cursor *c, int file, const char *path, uint64_t size,
                         void *buf, size_t n, uint64_t off, char *err)
{
    if (c->file != file) {
        readat_close(c);
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO put in its place must not block */
        if (fd < 0)
            return errf(err, "%s: cannot reopen: %s", path, strerror(errno));
        struct stat st;
        if (fstat(fd, &st) < 0 || (uint64_t)st.st_size != size) {
            close(fd);
            return errf(err, "%s: changed while in use: %lld bytes now, %llu when opened",
                        path, (long long)st.st_size, (unsigned long long)size);
        }
        c->fd = fd;
        c->file = file;
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(c->fd, (char *)buf + got, n - got, (off_t)(off + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return errf(err, "%s: read failed at byte %llu: %s", path,
                        (unsigned long long)(off + got), strerror(errno));
        if (r == 0)
            return errf(err, "%s: truncated while in use: it ends at byte %llu, before the "
                             "%zu bytes at %llu (%llu bytes when opened)", path,
                        (unsigned long long)(off + got), n, (unsigned long long)off,
                        (unsigned long long)size);
        got += (size_t)r;
    }
    return 0;
}

#endif
