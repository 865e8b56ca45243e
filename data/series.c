/* series.c: CSV time series, their splits, normalisation, windows and
 * patches (series.h). */
#include "series.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errbuf.h"
#include "fsutil.h"

/* The whole file as one NUL-terminated string. */
static char *slurp(const char *path, size_t *len, char *err)
{
    int fd = fs_open_regular(path, err); /* a FIFO would block fopen() */
    FILE *f = fd < 0 ? NULL : fdopen(fd, "rb");
    if (fd < 0)
        return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0;

    if (!f) {
        errf(err, "%s: %s", path, strerror(errno));
        return NULL;
    }
    for (;;) {
        if (n + 65536 + 1 > cap) {
            size_t ncap = cap ? cap * 2 : 1 << 20;
            char *nb = realloc(buf, ncap);
            if (!nb) {
                errf(err, "%s: out of memory", path);
                goto fail;
            }
            buf = nb;
            cap = ncap;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0)
            break;
    }
    if (ferror(f)) {
        errf(err, "%s: read error", path);
        goto fail;
    }
    fclose(f);
    buf[n] = 0;
    *len = n;
    return buf;
fail:
    fclose(f);
    free(buf);
    return NULL;
}

/* Cuts the line at *p (ending at '\n' or the end; a '\r' before '\n' is
 * dropped) and advances *p past it. */
static char *next_line(char **p)
{
    char *s = *p, *e = strchr(s, '\n');
    if (e) {
        *p = e + 1;
        *e = 0;
    } else {
        *p = s + strlen(s);
    }
    size_t n = strlen(s);
    if (n && s[n - 1] == '\r')
        s[n - 1] = 0;
    return s;
}

static int count_fields(const char *s)
{
    int n = 1;
    for (; *s; s++)
        n += *s == ',';
    return n;
}

/* 1 when the rest of the text (from *p) is blank lines only. */
static int only_blank(const char *p)
{
    for (; *p; p++)
        if (!isspace((unsigned char)*p))
            return 0;
    return 1;
}

/* A finite number filling the whole field (spaces around it allowed). */
static int parse_field(const char *s, const char *end, float *out)
{
    char tmp[128], *stop;
    size_t n = (size_t)(end - s);
    while (n && isspace((unsigned char)*s))
        s++, n--;
    while (n && isspace((unsigned char)s[n - 1]))
        n--;
    if (n == 0 || n >= sizeof tmp)
        return -1;
    memcpy(tmp, s, n);
    tmp[n] = 0;
    errno = 0;
    double v = strtod(tmp, &stop);
    if (*stop || !isfinite(v) || fabs(v) > 3.0e38)
        return -1;
    *out = (float)v;
    return 0;
}

int series_read_csv(const char *path, series_table *t, char *err)
{
    size_t len;
    char *text, *p, *line;
    int lineno = 1, cap = 0;

    memset(t, 0, sizeof *t);
    text = slurp(path, &len, err);
    if (!text)
        return -1;
    p = text;
    if (only_blank(p)) {
        errf(err, "%s: empty file (expected a header row, then rows of a date and numbers)",
             path);
        goto fail;
    }
    line = next_line(&p);
    int fields = count_fields(line);
    if (fields < 2) {
        errf(err, "%s: line 1: the header has no numeric columns after the date column", path);
        goto fail;
    }
    t->channels = fields - 1;
    t->header = strdup(line);
    t->names = calloc((size_t)t->channels, sizeof *t->names);
    if (!t->header || !t->names) {
        errf(err, "%s: out of memory", path);
        goto fail;
    }
    {
        char *h = strchr(t->header, ',');
        for (int c = 0; c < t->channels; c++) {
            *h++ = 0;
            t->names[c] = h;
            h += strcspn(h, ",");
        }
    }
    while (*p && !only_blank(p)) {
        line = next_line(&p);
        lineno++;
        int nf = count_fields(line);
        if (nf != fields) {
            errf(err, "%s: line %d: %d fields, the header has %d%s", path, lineno, nf, fields,
                 *line ? "" : " (empty line)");
            goto fail;
        }
        if (t->rows == cap) {
            int ncap = cap ? cap * 2 : 4096;
            float *nv = realloc(t->values, (size_t)ncap * t->channels * sizeof *nv);
            if (!nv) {
                errf(err, "%s: out of memory", path);
                goto fail;
            }
            t->values = nv;
            cap = ncap;
        }
        float *row = t->values + (size_t)t->rows * t->channels;
        char *f = line + strcspn(line, ","); /* skip the date field */
        for (int c = 0; c < t->channels; c++) {
            char *s = f + 1, *e = s + strcspn(s, ",");
            if (parse_field(s, e, &row[c])) {
                int n = (int)(e - s);
                errf(err, "%s: line %d: column %d (%s): '%.*s' is not a finite number", path,
                     lineno, c + 2, t->names[c], n > 40 ? 40 : n, s);
                goto fail;
            }
            f = e;
        }
        t->rows++;
    }
    if (t->rows == 0) {
        errf(err, "%s: no data rows after the header", path);
        goto fail;
    }
    free(text);
    return 0;
fail:
    free(text);
    series_free(t);
    return -1;
}

void series_free(series_table *t)
{
    free(t->values);
    free(t->header);
    free(t->names);
    memset(t, 0, sizeof *t);
}

static int has_prefix(const char *path, const char *prefix)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    return strncmp(base, prefix, strlen(prefix)) == 0;
}

int series_borders(const char *path, int rows, int border[4], char *err)
{
    int per_hour = has_prefix(path, "ETTh") ? 1 : has_prefix(path, "ETTm") ? 4 : 0;
    border[0] = 0;
    if (per_hour) {
        int month = 30 * 24 * per_hour;
        border[1] = 12 * month;
        border[2] = 16 * month;
        border[3] = 20 * month;
        if (rows < border[3])
            return errf(err, "%s: %d rows; the ETT protocol (12/4/4 months) needs %d", path,
                        rows, border[3]);
        return 0;
    }
    /* the reference code's custom datasets: 70% train, 20% test, val between */
    int ntrain = (int)(rows * 0.7), ntest = (int)(rows * 0.2);
    border[1] = ntrain;
    border[2] = rows - ntest;
    border[3] = rows;
    return 0;
}

int series_split(const char *path, int rows, int split, int lookback, int horizon, int *first,
                 int *count, char *err)
{
    static const char *const names[] = { "train", "val", "test" };
    int b[4];
    if (split < 0 || split > 2)
        return errf(err, "%s: unknown split %d", path, split);
    if (series_borders(path, rows, b, err))
        return -1;
    /* windows whose first forecast row lies in [b[split], b[split+1]); the
     * training split's first window starts at row 0 */
    int lo = b[split] - lookback, hi = b[split + 1] - lookback - horizon; /* window starts */
    if (lo < 0)
        lo = 0;
    if (hi < lo)
        return errf(err, "%s: the %s split (lines %d to %d of %d rows) is too short for one window "
                         "of %d + %d rows", path, names[split], b[split] + 2, b[split + 1] + 1,
                    rows, lookback, horizon);
    *first = lo;
    *count = hi - lo + 1;
    return 0;
}

void series_stats(const series_table *t, int rows, double *mean, double *std)
{
    int C = t->channels;
    for (int c = 0; c < C; c++) {
        double s = 0;
        for (int r = 0; r < rows; r++)
            s += t->values[(size_t)r * C + c];
        double mu = rows ? s / rows : 0, ss = 0;
        for (int r = 0; r < rows; r++) {
            double d = t->values[(size_t)r * C + c] - mu;
            ss += d * d;
        }
        double sd = rows ? sqrt(ss / rows) : 0;
        mean[c] = mu;
        std[c] = sd > 0 ? sd : 1.0;
    }
}

void series_normalise(series_table *t, const double *mean, const double *std)
{
    int C = t->channels;
    for (int r = 0; r < t->rows; r++)
        for (int c = 0; c < C; c++) {
            float *v = &t->values[(size_t)r * C + c];
            *v = (float)((*v - mean[c]) / std[c]);
        }
}

void series_window(const series_table *t, int start, int lookback, int horizon, float *x,
                   float *y)
{
    int C = t->channels;
    const float *base = t->values + (size_t)start * C;
    for (int c = 0; c < C; c++) {
        for (int i = 0; i < lookback; i++)
            x[(size_t)c * lookback + i] = base[(size_t)i * C + c];
        for (int j = 0; y && j < horizon; j++)
            y[(size_t)c * horizon + j] = base[(size_t)(lookback + j) * C + c];
    }
}

int series_patch_count(int n, int len, int stride, int pad)
{
    if (len < 1 || stride < 1 || len > n)
        return 0;
    return (n - len) / stride + 1 + (pad ? 1 : 0);
}

void series_patch(const float *w, int n, int len, int stride, int pad, float *out)
{
    int np = series_patch_count(n, len, stride, pad);
    for (int p = 0; p < np; p++)
        for (int k = 0; k < len; k++) {
            int i = p * stride + k;
            out[(size_t)p * len + k] = w[i < n ? i : n - 1];
        }
}
