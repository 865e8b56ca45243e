/* cli.c: the pieces every subcommand shares: fatal errors in one line,
 * strict number parsing, and --config files. */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../data/errbuf.h"
#include "../data/fsutil.h"

_Noreturn void cli_die(const char *fmt, ...)
{
    va_list ap;
    fflush(stdout);
    fputs("anatomy: error: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

long long cli_int(const char *opt, const char *s, long long lo, long long hi)
{
    char *end;
    long long v;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (end == s || *end || errno)
        cli_die("%s: '%s' is not an integer", opt, s);
    if (v < lo || v > hi)
        cli_die("%s: %lld is out of range [%lld, %lld]", opt, v, lo, hi);
    return v;
}

double cli_float(const char *opt, const char *s, double lo, double hi)
{
    char *end;
    double v;
    errno = 0;
    v = strtod(s, &end);
    if (end == s || *end || errno || !isfinite(v))
        cli_die("%s: '%s' is not a number", opt, s);
    if (v < lo || v > hi)
        cli_die("%s: %g is out of range [%g, %g]", opt, v, lo, hi);
    return v;
}

static char *trim(char *s)
{
    char *e;
    while (*s == ' ' || *s == '\t')
        s++;
    e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r'))
        *--e = 0;
    return s;
}

/* Appends "--key=value" for every setting of `path` to out (argv-style). */
static int read_config(const char *path, char ***out, int *n)
{
    char line[4096], why[ERRBUF];
    int lineno = 0, fd = fs_open_regular(path, why); /* not a folder, FIFO, device */
    FILE *f = fd < 0 ? NULL : fdopen(fd, "r");
    if (fd < 0)
        cli_die("--config %s", why);
    if (!f)
        cli_die("--config %s: %s", path, strerror(errno));
    while (fgets(line, sizeof line, f)) {
        char *s, *eq, *key, *val, *arg;
        lineno++;
        if (!strchr(line, '\n') && !feof(f))
            cli_die("%s:%d: line longer than %zu bytes", path, lineno, sizeof line - 2);
        s = trim(line);
        if (!*s || *s == '#')
            continue;
        eq = strchr(s, '=');
        if (!eq)
            cli_die("%s:%d: expected 'key = value', got '%s'", path, lineno, s);
        *eq = 0;
        key = trim(s);
        val = trim(eq + 1);
        if (!*key || strspn(key, "abcdefghijklmnopqrstuvwxyz0123456789-") != strlen(key))
            cli_die("%s:%d: '%s' is not an option name", path, lineno, key);
        /* unquote "value" */
        size_t vl = strlen(val);
        if (vl >= 2 && val[0] == '"' && val[vl - 1] == '"') {
            val[vl - 1] = 0;
            val++;
        }
        arg = malloc(strlen(key) + strlen(val) + 4);
        if (!arg)
            cli_die("out of memory");
        sprintf(arg, "--%s=%s", key, val);
        *out = realloc(*out, (size_t)(*n + 2) * sizeof **out);
        if (!*out)
            cli_die("out of memory");
        (*out)[(*n)++] = arg;
    }
    fclose(f);
    return 0;
}

char **cli_expand_config(int *argc, char **argv)
{
    char **out = malloc(2 * sizeof *out);
    char **rest = malloc((size_t)(*argc + 1) * sizeof *rest);
    int n = 0, nrest = 0;
    if (!out || !rest)
        cli_die("out of memory");
    out[n++] = argv[0];
    for (int i = 1; i < *argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            while (i < *argc)
                rest[nrest++] = argv[i++];
            break;
        }
        if (strcmp(a, "--config") == 0) {
            if (i + 1 >= *argc)
                cli_die("--config: missing file name");
            read_config(argv[++i], &out, &n);
        } else if (strncmp(a, "--config=", 9) == 0) {
            read_config(a + 9, &out, &n);
        } else {
            rest[nrest++] = argv[i];
        }
    }
    out = realloc(out, (size_t)(n + nrest + 1) * sizeof *out);
    if (!out)
        cli_die("out of memory");
    memcpy(out + n, rest, (size_t)nrest * sizeof *rest);
    n += nrest;
    out[n] = NULL;
    free(rest);
    *argc = n;
    return out;
}

_Noreturn void cli_bad_option(const char *cmd, int c, char **argv)
{
    const char *arg = optind > 0 ? argv[optind - 1] : "?";
    if (c == ':')
        cli_die("%s: option '%s' needs a value", cmd, arg);
    cli_die("%s: unknown option '%s' (see 'anatomy %s --help')", cmd, arg, cmd);
}

void cli_free_config(int argc, char **args, char **orig)
{
    /* the "--key=value" strings are ours; the others belong to the caller */
    for (int i = 1; i < argc; i++) {
        int theirs = 0;
        for (char **o = orig; *o && !theirs; o++)
            theirs = *o == args[i];
        if (!theirs)
            free(args[i]);
    }
    free(args);
}
