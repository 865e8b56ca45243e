/* errbuf.h: how library code reports failure. A function that can fail takes
 * `char *err` (ERRBUF bytes), fills it with one line naming the file or option
 * and what is wrong, and returns -1 (or NULL). The command layer prints it. */
#ifndef ANATOMY_ERRBUF_H
#define ANATOMY_ERRBUF_H

#include <stdarg.h>
#include <stdio.h>

#define ERRBUF 512

/* Formats into err (which may be NULL) and returns -1, so that
 * `return errf(err, "%s: truncated", path);` reads as one statement. */
static inline int errf(char *err, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, ERRBUF, fmt, ap);
        va_end(ap);
    }
    return -1;
}

#endif
