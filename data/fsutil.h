/* fsutil.h: opening input files without blocking on what is not a file.
 *
 * open(2) of a FIFO with no writer blocks until one appears, forever if none
 * does; a character device may block or never end. Inputs that are meant to
 * be files are therefore opened with O_NONBLOCK (which never blocks), checked
 * to be regular files with fstat on the same descriptor (no race with a
 * rename), and only then switched back to blocking reads. */
#ifndef ANATOMY_FSUTIL_H
#define ANATOMY_FSUTIL_H

#include <sys/types.h>

/* Read-only descriptor of the regular file path, or -1 with err
 * ("<path>: is a FIFO, not a regular file", "<path>: No such file or
 * directory") and errno: open's or fstat's, or 0 when the file is there but
 * not a regular one. Never blocks. */
int fs_open_regular(const char *path, char *err);

/* "a FIFO", "a directory", "a character device", ... for st_mode. */
const char *fs_kind(mode_t mode);

/* "dir/name" in a new allocation (the caller frees it), or NULL when out of memory. */
char *fs_join(const char *dir, const char *name);

#endif
