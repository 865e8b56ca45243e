/* hellaswag.c: reading the HellaSwag JSON Lines file (see hellaswag.h). */
#include "hellaswag.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errbuf.h"
#include "fsutil.h"
#include "json.h"

void hellaswag_free(hellaswag_set *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++) {
        free(s->ex[i].ctx);
        for (int k = 0; k < HELLASWAG_ENDINGS; k++)
            free(s->ex[i].end[k]);
    }
    free(s->ex);
    free(s);
}

/* Tokenizes text (prefixed by a space when space is set) into a new array. */
static int encode(tokenizer *tk, const char *text, size_t len, int space, int32_t **ids,
                  int *n, char *err)
{
    size_t cnt = 0, cap = 0;
    *ids = NULL;
    /* " " + text must be encoded as one string: the space joins the first word */
    if (space) {
        char *joined = malloc(len + 2);
        if (!joined)
            return errf(err, "out of memory");
        joined[0] = ' ';
        memcpy(joined + 1, text, len);
        int rc = tokenizer_encode(tk, joined, len + 1, 0, ids, &cnt, &cap, err);
        free(joined);
        if (rc)
            return -1;
    } else if (tokenizer_encode(tk, text, len, 0, ids, &cnt, &cap, err)) {
        return -1;
    }
    if (cnt > (1u << 30))
        return errf(err, "text too long");
    *n = (int)cnt;
    return 0;
}

/* Fills ex from one parsed line; err holds only the "what is wrong" part. */
static int parse_example(const json_value *root, tokenizer *tk, hellaswag_example *ex,
                         char *err)
{
    if (json_typeof(root) != JSON_OBJECT)
        return errf(err, "not a JSON object");
    const json_value *ctx = json_get(root, "ctx"), *ends = json_get(root, "endings"),
                     *label = json_get(root, "label");
    if (!ctx || !json_str(ctx))
        return errf(err, "\"ctx\" missing or not a string");
    if (!ends || json_typeof(ends) != JSON_ARRAY)
        return errf(err, "\"endings\" missing or not an array");
    if (json_len(ends) != HELLASWAG_ENDINGS)
        return errf(err, "\"endings\" has %zu entries, expected %d", json_len(ends),
                    HELLASWAG_ENDINGS);
    int64_t lab;
    if (!label || json_int(label, 0, HELLASWAG_ENDINGS - 1, &lab))
        return errf(err, "\"label\" missing or not an integer in 0..%d", HELLASWAG_ENDINGS - 1);
    ex->label = (int)lab;
    if (encode(tk, json_str(ctx), json_len(ctx), 0, &ex->ctx, &ex->nctx, err))
        return -1;
    if (ex->nctx == 0)
        return errf(err, "\"ctx\" is empty");
    for (int k = 0; k < HELLASWAG_ENDINGS; k++) {
        const json_value *e = json_at(ends, (size_t)k);
        if (!json_str(e))
            return errf(err, "\"endings\"[%d] is not a string", k);
        if (encode(tk, json_str(e), json_len(e), 1, &ex->end[k], &ex->nend[k], err))
            return -1;
    }
    return 0;
}

/* Parses one line into a new slot of s; -1 with err "path:line: ...". */
static int add_line(hellaswag_set *s, size_t *cap, const char *path, long lineno,
                    const char *line, size_t len, tokenizer *tk, char *err)
{
    char why[ERRBUF];
    if (s->n == *cap) {
        size_t nc = *cap ? *cap * 2 : 256;
        hellaswag_example *p = realloc(s->ex, nc * sizeof *p);
        if (!p)
            return errf(err, "%s: out of memory", path);
        s->ex = p;
        *cap = nc;
    }
    hellaswag_example *ex = &s->ex[s->n];
    memset(ex, 0, sizeof *ex);
    ex->line = lineno;
    json_doc *doc = json_parse(line, len, NULL, why);
    int rc = doc ? parse_example(json_root(doc), tk, ex, why) : -1;
    json_free(doc);
    s->n++; /* counted even on failure so hellaswag_free releases its arrays */
    if (rc)
        return errf(err, "%s:%ld: %s", path, lineno, why);
    return 0;
}

hellaswag_set *hellaswag_load(const char *path, tokenizer *tk, long limit, char *err)
{
    int fd = fs_open_regular(path, err); /* a FIFO would block fopen() */
    FILE *f = fd < 0 ? NULL : fdopen(fd, "rb");
    if (fd < 0)
        return NULL;
    if (!f) {
        errf(err, "%s: %s", path, strerror(errno));
        return NULL;
    }
    hellaswag_set *s = calloc(1, sizeof *s);
    char *line = NULL;
    size_t lcap = 0, cap = 0;
    long lineno = 0;
    ssize_t len;
    int rc = s ? 0 : errf(err, "%s: out of memory", path);
    while (!rc && (limit <= 0 || (long)s->n < limit) && (len = getline(&line, &lcap, f)) >= 0) {
        lineno++;
        size_t n = (size_t)len;
        while (n && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' '))
            n--;
        if (n)
            rc = add_line(s, &cap, path, lineno, line, n, tk, err);
    }
    if (!rc && ferror(f))
        rc = errf(err, "%s: read error", path);
    if (!rc && s->n == 0)
        rc = errf(err, "%s: no examples", path);
    free(line);
    fclose(f);
    if (rc) {
        hellaswag_free(s);
        return NULL;
    }
    return s;
}
