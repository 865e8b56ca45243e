/* json.c: the strict JSON reader and string builder declared in json.h.
 *
 * One pass over the input, no recursion: an explicit stack holds the open
 * containers. Nodes are appended in document order, so a container's children
 * follow it and `skip` (set when the container closes) jumps over a subtree.
 * Decoded strings go to one pool allocated up front: a decoded string plus its
 * NUL is never longer than its quoted source, so len + 1 bytes always suffice
 * and pointers into the pool never move. */
#include "json.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "errbuf.h"
#include "fsutil.h"

struct json_doc {
    json_value *nodes;
    size_t nnodes, cap;
    char *pool;
};

typedef struct {
    const unsigned char *start, *p, *end;
    const char *name;
    char *err;
    json_doc *doc;
    char *pool_pos;
} parser;

/* Fills err with "<name>: line L, column C: msg" for the byte at `at`. */
static int perr(parser *ps, const unsigned char *at, const char *msg)
{
    size_t line = 1, col = 1;
    for (const unsigned char *q = ps->start; q < at && q < ps->end; q++) {
        if (*q == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
    }
    return errf(ps->err, "%s: line %zu, column %zu: %s",
                ps->name ? ps->name : "json", line, col, msg);
}

static void skip_ws(parser *ps)
{
    while (ps->p < ps->end &&
           (*ps->p == ' ' || *ps->p == '\n' || *ps->p == '\r' || *ps->p == '\t'))
        ps->p++;
}

/* Appends a zeroed node; returns its index or -1 (out of memory). The node
 * count can never exceed the input length + 1, which bounds the growth. */
static long new_node(parser *ps)
{
    json_doc *d = ps->doc;
    if (d->nnodes == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 64;
        json_value *nn = realloc(d->nodes, cap * sizeof(*nn));
        if (!nn)
            return perr(ps, ps->p, "out of memory");
        d->nodes = nn;
        d->cap = cap;
    }
    memset(&d->nodes[d->nnodes], 0, sizeof(json_value));
    d->nodes[d->nnodes].skip = 1;
    return (long)d->nnodes++;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The 4 hex digits at p (caller checked they are in bounds), or -1. */
static long hex4(const unsigned char *p)
{
    long v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(p[i]);
        if (h < 0)
            return -1;
        v = v * 16 + h;
    }
    return v;
}

/* Length of the valid UTF-8 sequence (2..4 bytes) starting at p, or 0 when
 * it is invalid: stray continuation, overlong form, surrogate, > U+10FFFF,
 * or cut short by the end of input. */
static int utf8_seq(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0], lo = 0x80, hi = 0xBF;
    int n;
    if (c < 0xC2)
        return 0;
    if (c < 0xE0) {
        n = 2;
    } else if (c < 0xF0) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0;
        if (c == 0xED)
            hi = 0x9F;
    } else if (c < 0xF5) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90;
        if (c == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    if (end - p < n)
        return 0;
    if (p[1] < lo || p[1] > hi)
        return 0;
    for (int i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xBF)
            return 0;
    return n;
}

static char *put_utf8(char *d, unsigned long cp)
{
    if (cp < 0x80) {
        *d++ = (char)cp;
    } else if (cp < 0x800) {
        *d++ = (char)(0xC0 | (cp >> 6));
        *d++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *d++ = (char)(0xE0 | (cp >> 12));
        *d++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *d++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *d++ = (char)(0xF0 | (cp >> 18));
        *d++ = (char)(0x80 | ((cp >> 12) & 0x3F));
        *d++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *d++ = (char)(0x80 | (cp & 0x3F));
    }
    return d;
}

/* Decodes the \-escape whose backslash is at ps->p into *dst. */
static int parse_escape(parser *ps, char **dst)
{
    const unsigned char *p = ps->p, *end = ps->end;
    if (end - p < 2)
        return perr(ps, p, "unterminated string");
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    const char *hit = p[1] ? strchr(from, p[1]) : NULL;
    if (hit) {
        *(*dst)++ = to[hit - from];
        ps->p = p + 2;
        return 0;
    }
    if (p[1] != 'u')
        return perr(ps, p, "bad escape in string");
    long cp = end - p >= 6 ? hex4(p + 2) : -1;
    if (cp < 0)
        return perr(ps, p, "bad \\u escape in string");
    p += 6;
    if (cp >= 0xDC00 && cp <= 0xDFFF)
        return perr(ps, p - 6, "lone low surrogate in string");
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        long lo = end - p >= 6 && p[0] == '\\' && p[1] == 'u' ? hex4(p + 2) : -1;
        if (lo < 0xDC00 || lo > 0xDFFF)
            return perr(ps, p - 6, "lone high surrogate in string");
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        p += 6;
    }
    *dst = put_utf8(*dst, (unsigned long)cp);
    ps->p = p;
    return 0;
}

/* Parses the string whose opening quote is at ps->p into the pool. */
static int parse_string(parser *ps, const char **out, uint32_t *outlen)
{
    char *dst = ps->pool_pos, *s = dst;
    const unsigned char *open = ps->p;
    ps->p++;
    for (;;) {
        const unsigned char *p = ps->p;
        /* Plain ASCII runs are the common case: copy them in one go. */
        while (p < ps->end && *p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\')
            *dst++ = (char)*p++;
        ps->p = p;
        if (p >= ps->end)
            return perr(ps, open, "unterminated string");
        if (*p == '"') {
            ps->p++;
            break;
        }
        if (*p == '\\') {
            if (parse_escape(ps, &dst))
                return -1;
        } else if (*p < 0x20) {
            return perr(ps, p, "control character in string");
        } else {
            int n = utf8_seq(p, ps->end);
            if (!n)
                return perr(ps, p, "invalid UTF-8 in string");
            memcpy(dst, p, n);
            dst += n;
            ps->p += n;
        }
    }
    *dst++ = 0;
    ps->pool_pos = dst;
    *out = s;
    *outlen = (uint32_t)(dst - 1 - s);
    return 0;
}

static int is_digit(const unsigned char *p, const unsigned char *end)
{
    return p < end && *p >= '0' && *p <= '9';
}

/* Parses a number (RFC 8259 grammar) at ps->p into v. */
static int parse_number(parser *ps, json_value *v)
{
    const unsigned char *p = ps->p, *end = ps->end, *s = p;
    int neg = 0, frac = 0;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    if (!is_digit(p, end))
        return perr(ps, s, "bad number");
    if (*p == '0') {
        p++;
        if (is_digit(p, end))
            return perr(ps, s, "bad number (leading zero)");
    } else {
        while (is_digit(p, end))
            p++;
    }
    size_t ndigits = (size_t)(p - s) - neg;
    if (p < end && *p == '.') {
        frac = 1;
        p++;
        if (!is_digit(p, end))
            return perr(ps, s, "bad number");
        while (is_digit(p, end))
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        frac = 1;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (!is_digit(p, end))
            return perr(ps, s, "bad number");
        while (is_digit(p, end))
            p++;
    }
    v->type = JSON_NUMBER;
    if (!frac && ndigits <= 18) {
        /* Fast path: exact, and (double)i rounds exactly as strtod would. */
        int64_t i = 0;
        for (const unsigned char *q = s + neg; q < p; q++)
            i = i * 10 + (*q - '0');
        v->i = neg ? -i : i;
        v->is_int = 1;
        v->u.num = (double)v->i;
        ps->p = p;
        return 0;
    }
    char buf[512];
    size_t n = (size_t)(p - s);
    if (n >= sizeof(buf))
        return perr(ps, s, "number too long");
    memcpy(buf, s, n);
    buf[n] = 0;
    v->u.num = strtod(buf, NULL);
    if (isinf(v->u.num))
        return perr(ps, s, "number out of range");
    if (!frac) {
        errno = 0;
        long long ll = strtoll(buf, NULL, 10);
        if (errno != ERANGE) {
            v->i = ll;
            v->is_int = 1;
        }
    }
    ps->p = p;
    return 0;
}

static int parse_literal(parser *ps, json_value *v)
{
    static const struct { const char *s; size_t n; json_type t; } lits[] = {
        { "true", 4, JSON_TRUE }, { "false", 5, JSON_FALSE }, { "null", 4, JSON_NULL },
    };
    for (size_t i = 0; i < 3; i++) {
        if ((size_t)(ps->end - ps->p) >= lits[i].n &&
            !memcmp(ps->p, lits[i].s, lits[i].n)) {
            v->type = (uint8_t)lits[i].t;
            ps->p += lits[i].n;
            return 0;
        }
    }
    return perr(ps, ps->p, "unexpected character");
}

/* Parses `"key" :` (with surrounding whitespace) of an object member. */
static int parse_key(parser *ps, const char **key, uint32_t *key_len)
{
    skip_ws(ps);
    if (ps->p >= ps->end)
        return perr(ps, ps->p, "unexpected end of input");
    if (*ps->p != '"')
        return perr(ps, ps->p, "expected a string key");
    if (parse_string(ps, key, key_len))
        return -1;
    skip_ws(ps);
    if (ps->p >= ps->end || *ps->p != ':')
        return perr(ps, ps->p, "expected ':'");
    ps->p++;
    return 0;
}

/* Parses one scalar at ps->p into node idx. */
static int parse_scalar(parser *ps, long idx)
{
    json_value *v = &ps->doc->nodes[idx];
    unsigned char c = *ps->p;
    if (c == '"') {
        v->type = JSON_STRING;
        return parse_string(ps, &v->u.str, &v->n);
    }
    if (c == '-' || (c >= '0' && c <= '9'))
        return parse_number(ps, v);
    return parse_literal(ps, v);
}

/* The body of json_parse; ps->doc is allocated with its pool. */
static int parse_doc(parser *ps)
{
    uint32_t stack[JSON_MAXDEPTH];
    int depth = 0;
    const char *key = NULL;
    uint32_t key_len = 0;
    json_value *nodes;

    skip_ws(ps);
    if (ps->p >= ps->end)
        return perr(ps, ps->p, "empty input");
    for (;;) {
        /* A value is expected at ps->p (whitespace skipped). */
        skip_ws(ps);
        if (ps->p >= ps->end)
            return perr(ps, ps->p, "unexpected end of input");
        long idx = new_node(ps);
        if (idx < 0)
            return -1;
        nodes = ps->doc->nodes;
        nodes[idx].key = key;
        nodes[idx].key_len = key_len;
        key = NULL;
        key_len = 0;
        if (depth)
            nodes[stack[depth - 1]].n++;
        unsigned char c = *ps->p;
        if (c == '{' || c == '[') {
            if (depth == JSON_MAXDEPTH)
                return perr(ps, ps->p, "nesting too deep");
            nodes[idx].type = c == '{' ? JSON_OBJECT : JSON_ARRAY;
            stack[depth++] = (uint32_t)idx;
            ps->p++;
            skip_ws(ps);
            if (ps->p < ps->end && *ps->p == (c == '{' ? '}' : ']')) {
                ps->p++;
                depth--;
            } else {
                if (c == '{' && parse_key(ps, &key, &key_len))
                    return -1;
                continue;
            }
        } else if (parse_scalar(ps, idx)) {
            return -1;
        }
        /* After a value: close containers, or find the next member. */
        for (;;) {
            if (!depth) {
                skip_ws(ps);
                if (ps->p != ps->end)
                    return perr(ps, ps->p, "unexpected text after the value");
                return 0;
            }
            skip_ws(ps);
            if (ps->p >= ps->end)
                return perr(ps, ps->p, "unexpected end of input");
            uint32_t top = stack[depth - 1];
            int obj = nodes[top].type == JSON_OBJECT;
            if (*ps->p == ',') {
                ps->p++;
                if (obj && parse_key(ps, &key, &key_len))
                    return -1;
                break;
            }
            if (*ps->p != (obj ? '}' : ']'))
                return perr(ps, ps->p, obj ? "expected ',' or '}'" : "expected ',' or ']'");
            ps->p++;
            nodes[top].skip = (uint32_t)(ps->doc->nnodes - top);
            depth--;
        }
    }
}

json_doc *json_parse(const char *text, size_t len, const char *name, char *err)
{
    if (len > JSON_MAXLEN) {
        errf(err, "%s: JSON text too long (%zu bytes)", name ? name : "json", len);
        return NULL;
    }
    json_doc *doc = calloc(1, sizeof(*doc));
    char *pool = malloc(len + 1);
    if (!doc || !pool) {
        free(doc);
        free(pool);
        errf(err, "%s: out of memory", name ? name : "json");
        return NULL;
    }
    doc->pool = pool;
    parser ps = {
        .start = (const unsigned char *)text, .p = (const unsigned char *)text,
        .end = (const unsigned char *)text + len, .name = name, .err = err,
        .doc = doc, .pool_pos = pool,
    };
    if (!text)
        ps.start = ps.p = ps.end = (const unsigned char *)"";
    if (parse_doc(&ps)) {
        json_free(doc);
        return NULL;
    }
    return doc;
}

json_doc *json_parse_file(const char *path, size_t maxlen, char *err)
{
    if (!maxlen || maxlen > JSON_MAXLEN)
        maxlen = JSON_MAXLEN;
    int fd = fs_open_regular(path, err); /* a FIFO would block open() */
    if (fd < 0) {
        if (errno)
            errf(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        errf(err, "%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    if ((uint64_t)st.st_size > maxlen) {
        errf(err, "%s: file too large for JSON (%lld bytes, limit %zu)", path,
             (long long)st.st_size, maxlen);
        close(fd);
        return NULL;
    }
    size_t n = (size_t)st.st_size, got = 0;
    char *buf = malloc(n + 1);
    if (!buf) {
        errf(err, "%s: out of memory", path);
        close(fd);
        return NULL;
    }
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            errf(err, "%s: read failed: %s", path, r ? strerror(errno) : "file shrank");
            free(buf);
            close(fd);
            return NULL;
        }
        got += (size_t)r;
    }
    close(fd);
    json_doc *doc = json_parse(buf, n, path, err);
    free(buf);
    return doc;
}

void json_free(json_doc *doc)
{
    if (!doc)
        return;
    free(doc->nodes);
    free(doc->pool);
    free(doc);
}

const json_value *json_root(const json_doc *doc)
{
    return doc && doc->nnodes ? doc->nodes : NULL;
}

const json_value *json_get(const json_value *obj, const char *key)
{
    if (!obj || obj->type != JSON_OBJECT)
        return NULL;
    size_t n = strlen(key);
    for (const json_value *m = json_first(obj); m; m = json_next(obj, m))
        if (m->key_len == n && !memcmp(m->key, key, n))
            return m;
    return NULL;
}

const json_value *json_at(const json_value *arr, size_t i)
{
    if (!arr || arr->type != JSON_ARRAY || i >= arr->n)
        return NULL;
    const json_value *e = json_first(arr);
    while (i--)
        e = json_next(arr, e);
    return e;
}

int json_num(const json_value *v, double *out)
{
    if (!v || v->type != JSON_NUMBER)
        return -1;
    *out = v->u.num;
    return 0;
}

int json_int(const json_value *v, int64_t lo, int64_t hi, int64_t *out)
{
    if (!v || v->type != JSON_NUMBER)
        return -1;
    int64_t i;
    if (v->is_int) {
        i = v->i;
    } else {
        double d = v->u.num;
        /* Only integers a double holds exactly, so 1e30 is not "an int64". */
        if (d != floor(d) || fabs(d) > 9007199254740992.0)
            return -1;
        i = (int64_t)d;
    }
    if (i < lo || i > hi)
        return -1;
    *out = i;
    return 0;
}

int json_bool(const json_value *v, int *out)
{
    if (!v || (v->type != JSON_TRUE && v->type != JSON_FALSE))
        return -1;
    *out = v->type == JSON_TRUE;
    return 0;
}

/* Makes room for n more bytes plus a NUL; 0, or -1 (failed set). */
static int out_reserve(json_out *o, size_t n)
{
    if (o->failed)
        return -1;
    if (o->len + n + 1 <= o->cap)
        return 0;
    size_t cap = o->cap ? o->cap : 256;
    while (cap < o->len + n + 1)
        cap *= 2;
    char *b = realloc(o->buf, cap);
    if (!b) {
        o->failed = 1;
        return -1;
    }
    o->buf = b;
    o->cap = cap;
    return 0;
}

void json_out_raw(json_out *o, const char *s, size_t n)
{
    if (out_reserve(o, n))
        return;
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    o->buf[o->len] = 0;
}

void json_out_fmt(json_out *o, const char *fmt, ...)
{
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0) {
        o->failed = 1;
        return;
    }
    if ((size_t)n < sizeof(small)) {
        json_out_raw(o, small, (size_t)n);
        return;
    }
    if (out_reserve(o, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(o->buf + o->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    o->len += (size_t)n;
}

void json_out_str(json_out *o, const char *s)
{
    json_out_raw(o, "\"", 1);
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        const unsigned char *run = p;
        while (*p >= 0x20 && *p != '"' && *p != '\\')
            p++;
        json_out_raw(o, (const char *)run, (size_t)(p - run));
        if (!*p)
            break;
        char esc[8];
        switch (*p) {
        case '"': strcpy(esc, "\\\""); break;
        case '\\': strcpy(esc, "\\\\"); break;
        case '\n': strcpy(esc, "\\n"); break;
        case '\r': strcpy(esc, "\\r"); break;
        case '\t': strcpy(esc, "\\t"); break;
        case '\b': strcpy(esc, "\\b"); break;
        case '\f': strcpy(esc, "\\f"); break;
        default: snprintf(esc, sizeof(esc), "\\u%04x", *p); break;
        }
        json_out_raw(o, esc, strlen(esc));
        p++;
    }
    json_out_raw(o, "\"", 1);
}

void json_out_free(json_out *o)
{
    free(o->buf);
    memset(o, 0, sizeof(*o));
}
