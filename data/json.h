/* json.h: a small strict JSON reader (RFC 8259) and a string builder for
 * writing JSON.
 *
 * The reader parses a whole text into a read-only tree held in two blocks:
 * the nodes (one per value, in document order) and the decoded strings
 * (NUL-terminated UTF-8). Parsing is linear in the input, iterative (nesting
 * is limited to JSON_MAXDEPTH, so hostile input cannot exhaust the stack) and
 * never reads outside [text, text + len). Strict: no comments, no trailing
 * commas, no NaN/Infinity, no leading zeros, no control characters or invalid
 * UTF-8 inside strings, no lone surrogates, nothing after the top value but
 * whitespace. Duplicate object keys are kept; json_get returns the first.
 *
 * Walking the tree:
 *   for (const json_value *m = json_first(obj); m; m = json_next(obj, m))
 *       use(json_key(m), m);
 * Iteration is O(1) per step; json_get and json_at are linear scans of one
 * level. Pointers stay valid until json_free.
 */
#ifndef ANATOMY_JSON_H
#define ANATOMY_JSON_H

#include <stddef.h>
#include <stdint.h>

#define JSON_MAXDEPTH 256
#define JSON_MAXLEN ((size_t)1 << 30)

typedef enum {
    JSON_NULL, JSON_FALSE, JSON_TRUE, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT
} json_type;

/* One value. Read it through the functions below; the layout is public only
 * so that they can be cheap. */
typedef struct json_value {
    uint8_t type;       /* json_type */
    uint8_t is_int;     /* number written as an integer that fits int64 */
    uint32_t skip;      /* nodes in this subtree, itself included */
    uint32_t n;         /* string: bytes; array/object: children */
    uint32_t key_len;   /* object members: bytes of the key */
    const char *key;    /* object members: decoded key; otherwise NULL */
    union {
        double num;
        const char *str;
    } u;
    int64_t i;          /* the integer when is_int */
} json_value;

typedef struct json_doc json_doc;

/* Parses text[0..len). `name` (a file name, may be NULL) prefixes error
 * messages: "<name>: line 3, column 7: unterminated string". Returns NULL and
 * fills err on failure (bad syntax, too deep, too long, out of memory). */
json_doc *json_parse(const char *text, size_t len, const char *name, char *err);
/* Reads and parses a whole file of at most maxlen bytes (0: JSON_MAXLEN). */
json_doc *json_parse_file(const char *path, size_t maxlen, char *err);
void json_free(json_doc *doc);

const json_value *json_root(const json_doc *doc);

static inline json_type json_typeof(const json_value *v)
{
    return (json_type)v->type;
}

/* Children of an array or object, bytes of a string, 0 otherwise. */
static inline size_t json_len(const json_value *v)
{
    return v->type == JSON_ARRAY || v->type == JSON_OBJECT || v->type == JSON_STRING
        ? v->n : 0;
}

/* First child of an array or object, or NULL (empty, or not a container). */
static inline const json_value *json_first(const json_value *v)
{
    return (v->type == JSON_ARRAY || v->type == JSON_OBJECT) && v->n ? v + 1 : NULL;
}

/* The sibling after `child` inside `parent`, or NULL after the last one. */
static inline const json_value *json_next(const json_value *parent, const json_value *child)
{
    const json_value *nx = child + child->skip;
    return nx < parent + parent->skip ? nx : NULL;
}

/* Key of an object member (NUL-terminated; *len may be NULL), or NULL. */
static inline const char *json_key(const json_value *member, size_t *len)
{
    if (len)
        *len = member->key ? member->key_len : 0;
    return member->key;
}

/* Member of an object by key (first match), or NULL (absent / not an object). */
const json_value *json_get(const json_value *obj, const char *key);
/* Element i of an array, or NULL. */
const json_value *json_at(const json_value *arr, size_t i);

/* Decoded string (NUL-terminated; may hold NUL from \u0000, see json_len),
 * or NULL when v is not a string. */
static inline const char *json_str(const json_value *v)
{
    return v && v->type == JSON_STRING ? v->u.str : NULL;
}

/* Number as double: 0, or -1 when v is not a number. */
int json_num(const json_value *v, double *out);
/* Number as an integer in [lo, hi]: 0, or -1 when v is not a number, not
 * integral (2.5), or out of range. 1e3 and 4.0 are accepted as integers when
 * exactly representable. */
int json_int(const json_value *v, int64_t lo, int64_t hi, int64_t *out);
/* true/false: 0 with *out set, or -1. */
int json_bool(const json_value *v, int *out);

/* Writing: a growing string. Appending never fails visibly: on out of memory
 * `failed` is set and later appends do nothing; check it once at the end.
 * Start from a zeroed struct; buf is NUL-terminated whenever len > 0. */
typedef struct {
    char *buf;
    size_t len, cap;
    int failed;
} json_out;

void json_out_raw(json_out *o, const char *s, size_t n);
void json_out_fmt(json_out *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Appends s as a quoted JSON string, escaping '"', '\\' and control bytes
 * (bytes >= 0x80 are copied, so UTF-8 passes through). */
void json_out_str(json_out *o, const char *s);
void json_out_free(json_out *o);

#endif
