/* bpe.c: GPT-2's byte-level BPE, exactly as tiktoken computes it.
 *
 * Encoding is three steps:
 *  1. Split the text with the GPT-2 pattern
 *       's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *     by a hand-written scanner (next_piece) over the character classes of
 *     bpe_unicode.h. tests/test_bpe.c checks it against PCRE2 running the
 *     pattern itself, tests/ref against tiktoken.
 *  2. A piece that is itself a token is that token (tiktoken does the same;
 *     it is not always what merging would give).
 *  3. Otherwise merge: start from one token per byte and repeatedly merge the
 *     adjacent pair whose concatenation has the lowest rank (the leftmost on a
 *     tie), with a min-heap of candidate pairs and a linked list of symbols.
 *     A pair's rank is the rank of its concatenated bytes, whichever two
 *     tokens make it: tiktoken's rule, which can differ from GPT-2's original
 *     code (that only merges pairs listed in vocab.bpe). So a pair's rank is
 *     looked up by the bytes it spans, in the token hash table.
 * A token's rank is its id; the loader checks that merge results have ids
 * increasing in merge order, which makes id order the merge order.
 *
 * Invalid UTF-8: each byte of an invalid sequence is a character of class
 * "other" (like punctuation). Every byte is a token, so any input encodes and
 * the concatenated token bytes are the input.
 *
 * Vocabulary files: a JSON object {"token": id, ...} (encoder.json or
 * vocab.json) and a merges list ("#version" line optional, then "left right"
 * per line). Tokens are written through GPT-2's byte-to-unicode table. */
#include "bpe.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bpe_unicode.h"
#include "errbuf.h"

#define MAX_VOCAB_FILE (64u << 20)
#define MAX_TOKEN_BYTES 1024
#define N_WORKERS 64
#define CACHE_BITS 14
#define CACHE_KEY 22
#define CACHE_IDS 8

/* ---- character classes, and the byte-to-unicode table ---- */

static uint8_t g_class[0x110000];
static uint8_t g_ascii[128];
/* GPT-2's byte-to-unicode table, inverted: the byte a code point stands for,
 * or -1. Printable Latin-1 bytes stand for themselves; the other 68 bytes, in
 * order, are U+0100..U+0143. */
static int16_t g_unbyte[324];
static pthread_once_t g_tables_once = PTHREAD_ONCE_INIT;

static void tables_init(void)
{
    for (size_t r = 0; r < sizeof bpe_uranges / sizeof bpe_uranges[0]; r++)
        memset(g_class + bpe_uranges[r].lo, bpe_uranges[r].cls,
               bpe_uranges[r].hi - bpe_uranges[r].lo + 1);
    for (int c = 0; c < 128; c++)
        g_ascii[c] = g_class[c];
    int n = 0;
    for (int c = 0; c < 324; c++)
        g_unbyte[c] = -1;
    for (int byte = 0; byte < 256; byte++) {
        int printable = (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) ||
                        byte >= 0xAE;
        g_unbyte[printable ? byte : 256 + n++] = (int16_t)byte;
    }
}

/* Decodes one well-formed UTF-8 character at s[0..n): its length in bytes, or
 * 0 when the bytes are not one (overlong, surrogate, > U+10FFFF, truncated). */
static inline size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned c = s[0];
    if (c < 0xC2 || c > 0xF4)
        return 0;
    if (c < 0xE0) {
        if (n < 2 || (s[1] & 0xC0) != 0x80)
            return 0;
        *cp = (c & 0x1Fu) << 6 | (s[1] & 0x3Fu);
        return 2;
    }
    if (c < 0xF0) {
        unsigned lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        if (n < 3 || s[1] < lo || s[1] > hi || (s[2] & 0xC0) != 0x80)
            return 0;
        *cp = (c & 0x0Fu) << 12 | (s[1] & 0x3Fu) << 6 | (s[2] & 0x3Fu);
        return 3;
    }
    unsigned lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    if (n < 4 || s[1] < lo || s[1] > hi || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
        return 0;
    *cp = (c & 0x07u) << 18 | (s[1] & 0x3Fu) << 12 | (s[2] & 0x3Fu) << 6 | (s[3] & 0x3Fu);
    return 4;
}

/* The class of the character at s[i] (i < n); *k = its length in bytes. */
static inline int class_at(const unsigned char *s, size_t n, size_t i, size_t *k)
{
    uint32_t cp;
    if (s[i] < 0x80) {
        *k = 1;
        return g_ascii[s[i]];
    }
    *k = utf8_decode(s + i, n - i, &cp);
    if (!*k) {
        *k = 1;
        return BPE_O;
    }
    return g_class[cp];
}

/* Length of the pattern's match at s[i] (i < n): the alternatives in order,
 * leftmost-first as a backtracking regex engine takes them. */
static size_t next_piece(const unsigned char *s, size_t n, size_t i)
{
    size_t k, j;
    if (s[i] == '\'' && i + 1 < n) {
        unsigned d = s[i + 1];
        if (d == 's' || d == 't' || d == 'm' || d == 'd')
            return 2;
        if (i + 2 < n && ((d == 'r' && s[i + 2] == 'e') || (d == 'v' && s[i + 2] == 'e') ||
                          (d == 'l' && s[i + 2] == 'l')))
            return 3;
    }
    int cls = class_at(s, n, i, &k);
    j = i;
    if (s[i] == ' ' && i + 1 < n) {
        size_t k2;
        int c2 = class_at(s, n, i + 1, &k2);
        if (c2 != BPE_S) {      /* " ?\p{L}+", " ?\p{N}+", " ?[^\s\p{L}\p{N}]+" */
            cls = c2;
            j = i + 1;
            k = k2;
        }
    }
    if (cls != BPE_S) {
        for (j += k; j < n && class_at(s, n, j, &k) == cls; j += k)
            ;
        return j - i;
    }
    /* A whitespace run [i, j): "\s+(?!\S)" gives all of it at the end of the
     * text, else all but its last character (which then starts the next
     * piece); a single character before \S falls through to "\s+". */
    size_t last = i;
    for (j = i + k; j < n && class_at(s, n, j, &k) == BPE_S; j += k)
        last = j;
    if (j == n || last == i)
        return j - i;
    return last - i;
}

int bpe_split(const char *text, size_t len,
              int (*fn)(const char *piece, size_t n, void *ctx), void *ctx)
{
    pthread_once(&g_tables_once, tables_init);
    const unsigned char *s = (const unsigned char *)text;
    for (size_t i = 0; i < len;) {
        size_t k = next_piece(s, len, i);
        int rc = fn(text + i, k, ctx);
        if (rc)
            return rc;
        i += k;
    }
    return 0;
}

/* ---- the vocabulary ---- */

struct heap_ent {
    uint64_t key;               /* rank << 32 | position of the left symbol */
    uint32_t left, right;       /* the ids the pair had when pushed */
};

struct cache_slot {
    uint64_t hash;
    uint8_t len, nids;
    char key[CACHE_KEY];
    int32_t ids[CACHE_IDS];
};

/* What one encode call needs for itself: a cache of encoded pieces and the
 * merge scratch. Borrowed from the pool for the call's duration. */
struct worker {
    _Alignas(64) atomic_int busy;   /* own cache line: threads claim workers side by side */
    struct cache_slot *cache;   /* 1 << CACHE_BITS slots, or NULL */
    uint32_t *sym;              /* token id per symbol, UINT32_MAX when merged away */
    int32_t *next, *prev;
    struct heap_ent *heap;
    size_t cap;                 /* symbols the scratch holds */
};

/* A token hash table entry holds the first bytes of its token, so that most
 * lookups touch one cache line. */
#define TOK_INLINE 10
struct tok_ent {
    uint32_t id1;               /* id + 1; 0: empty */
    uint16_t len;
    char head[TOK_INLINE];      /* the token's first min(len, TOK_INLINE) bytes */
};

struct bpe {
    int vocab;                  /* ids 0..vocab-1 */
    int eot;
    char *bytes;                /* all tokens' bytes */
    uint32_t *off;              /* token id's bytes: bytes[off[id] .. off[id+1]) */
    uint8_t *mergeable;         /* 1: a byte or a merge result, usable by merging */
    int32_t byte_id[256];
    struct tok_ent *tok_tab;    /* bytes -> id, every token; open addressing */
    uint32_t tok_mask;
    int n_merges;
    uint64_t fingerprint;
    struct worker workers[N_WORKERS];
};

static inline uint64_t mix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 33);
}

/* A hash of short byte strings: 8 bytes per multiply, then a full mix. */
static inline uint64_t hash_bytes(const unsigned char *p, size_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull * (n + 1);
    uint64_t w;
    for (; n >= 8; p += 8, n -= 8) {
        memcpy(&w, p, 8);
        h = (h ^ w) * 0x9E3779B97F4A7C15ull;
        h ^= h >> 29;
    }
    w = 0;
    memcpy(&w, p, n);
    return mix64(h ^ w);
}

/* The id of token bytes p[0..n) (h = hash_bytes(p, n)), or -1. */
static inline int32_t tok_find(const bpe *b, const unsigned char *p, size_t n, uint64_t h)
{
    size_t head = n < TOK_INLINE ? n : TOK_INLINE;
    for (uint32_t i = (uint32_t)h & b->tok_mask;; i = (i + 1) & b->tok_mask) {
        const struct tok_ent *e = &b->tok_tab[i];
        if (!e->id1)
            return -1;
        if (e->len != n || memcmp(e->head, p, head) != 0)
            continue;
        uint32_t id = e->id1 - 1;
        if (n <= TOK_INLINE || memcmp(b->bytes + b->off[id] + head, p + head, n - head) == 0)
            return (int32_t)id;
    }
}

/* The byte code point cp stands for in the vocabulary files, or -1. */
static int unicode_to_byte(uint32_t cp)
{
    return cp < 324 ? g_unbyte[cp] : -1;
}

/* Turns a token as written in the files (UTF-8 of byte-to-unicode
 * characters) into its bytes, in place. Returns the byte length, or -1. */
static long unmap_token(unsigned char *s, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp = s[i];
        size_t k = 1;
        if (cp >= 0x80 && !(k = utf8_decode(s + i, n - i, &cp)))
            return -1;
        int byte = unicode_to_byte(cp);
        if (byte < 0)
            return -1;
        s[o++] = (unsigned char)byte;
        i += k;
    }
    return (long)o;
}

static char *read_file(const char *path, size_t *len, char *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        errf(err, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    char *buf = NULL;
    if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode)) {
        errf(err, "%s: not a regular file", path);
        goto out;
    }
    if ((uint64_t)st.st_size > MAX_VOCAB_FILE) {
        errf(err, "%s: %lld bytes, more than a vocabulary file can be", path,
             (long long)st.st_size);
        goto out;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        errf(err, "%s: out of memory", path);
        goto out;
    }
    if (fread(buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
        errf(err, "%s: read failed", path);
        free(buf);
        buf = NULL;
        goto out;
    }
    buf[st.st_size] = 0;
    *len = (size_t)st.st_size;
out:
    fclose(f);
    return buf;
}

/* A growing list of (token bytes, id) read from the vocabulary JSON. */
struct vocab_list {
    unsigned char *bytes;
    size_t nbytes, cap_bytes;
    uint32_t *off, *id;         /* entry i: bytes[off[i] .. off[i+1]), id[i] */
    size_t n, cap;
};

static int vl_push(struct vocab_list *v, const unsigned char *p, size_t len, uint32_t id)
{
    if (v->n + 2 > v->cap) {
        size_t cap = v->cap ? 2 * v->cap : 65536;
        uint32_t *off = realloc(v->off, cap * sizeof *off);
        if (!off)
            return -1;
        v->off = off;
        uint32_t *ids = realloc(v->id, cap * sizeof *ids);
        if (!ids)
            return -1;
        v->id = ids;
        v->cap = cap;
    }
    if (v->nbytes + len > v->cap_bytes) {
        size_t cap = v->cap_bytes ? 2 * v->cap_bytes : 1 << 20;
        while (cap < v->nbytes + len)
            cap *= 2;
        unsigned char *b = realloc(v->bytes, cap);
        if (!b)
            return -1;
        v->bytes = b;
        v->cap_bytes = cap;
    }
    memcpy(v->bytes + v->nbytes, p, len);
    v->off[v->n] = (uint32_t)v->nbytes;
    v->id[v->n++] = id;
    v->nbytes += len;
    v->off[v->n] = (uint32_t)v->nbytes;
    return 0;
}

static size_t skip_ws(const char *s, size_t i, size_t n)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int read_hex4(const char *s, size_t i, size_t n, uint32_t *v)
{
    if (i + 4 > n)
        return -1;
    *v = 0;
    for (int k = 0; k < 4; k++) {
        int h = hexval((unsigned char)s[i + k]);
        if (h < 0)
            return -1;
        *v = *v << 4 | (uint32_t)h;
    }
    return 0;
}

static size_t utf8_encode(uint32_t cp, unsigned char *o)
{
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | cp >> 6);
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | cp >> 18);
    o[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Reads the JSON string starting at s[*i] == '"' into out (UTF-8, escapes
 * resolved, at most MAX_TOKEN_BYTES*4); *i moves past the closing quote.
 * Returns the length, or -1 (with *i at the problem). */
static long json_string(const char *s, size_t *i, size_t n, unsigned char *out, size_t cap)
{
    size_t o = 0, p = *i + 1;
    for (;;) {
        if (p >= n || o + 4 > cap) {
            *i = p;
            return -1;
        }
        unsigned char c = (unsigned char)s[p];
        if (c == '"')
            break;
        if (c < 0x20) {
            *i = p;
            return -1;
        }
        if (c != '\\') {
            out[o++] = c;
            p++;
            continue;
        }
        if (p + 1 >= n) {
            *i = p;
            return -1;
        }
        char e = s[p + 1];
        p += 2;
        const char *simple = strchr("\"\\/bfnrt", e);
        if (e && simple) {
            out[o++] = (unsigned char)"\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
            continue;
        }
        uint32_t cp, lo;
        if (e != 'u' || read_hex4(s, p, n, &cp) < 0) {
            *i = p - 2;
            return -1;
        }
        p += 4;
        if (cp >= 0xD800 && cp < 0xDC00) {
            if (p + 6 > n || s[p] != '\\' || s[p + 1] != 'u' || read_hex4(s, p + 2, n, &lo) < 0 ||
                lo < 0xDC00 || lo >= 0xE000) {
                *i = p - 6;
                return -1;
            }
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            p += 6;
        } else if (cp >= 0xDC00 && cp < 0xE000) {
            *i = p - 6;
            return -1;
        }
        o += utf8_encode(cp, out + o);
    }
    *i = p + 1;
    return (long)o;
}

/* Parses the vocabulary JSON object {"token": id, ...} into v. */
static int parse_vocab_json(const char *path, const char *s, size_t n, struct vocab_list *v,
                            char *err)
{
    unsigned char tok[MAX_TOKEN_BYTES * 4 + 8];
    size_t i = skip_ws(s, 0, n);
    if (i >= n || s[i] != '{')
        return errf(err, "%s: byte %zu: expected a JSON object", path, i);
    i = skip_ws(s, i + 1, n);
    if (i < n && s[i] == '}')
        return errf(err, "%s: empty vocabulary", path);
    for (;;) {
        if (i >= n || s[i] != '"')
            return errf(err, "%s: byte %zu: expected a string key", path, i);
        size_t at = i;
        long len = json_string(s, &i, n, tok, sizeof tok);
        if (len < 0)
            return errf(err, "%s: byte %zu: bad or too long string", path, i);
        long blen = unmap_token(tok, (size_t)len);
        if (blen <= 0)
            return errf(err, "%s: byte %zu: token is empty or has a character outside "
                        "GPT-2's byte-to-unicode table", path, at);
        i = skip_ws(s, i, n);
        if (i >= n || s[i] != ':')
            return errf(err, "%s: byte %zu: expected ':'", path, i);
        i = skip_ws(s, i + 1, n);
        uint64_t id = 0;
        size_t d0 = i;
        while (i < n && s[i] >= '0' && s[i] <= '9' && id <= INT32_MAX)
            id = id * 10 + (uint64_t)(s[i++] - '0');
        if (i == d0 || id > INT32_MAX || (i < n && (s[i] == '.' || s[i] == 'e' || s[i] == 'E')) ||
            (s[d0] == '0' && i - d0 > 1))
            return errf(err, "%s: byte %zu: token id must be an integer in [0, 2^31)", path, d0);
        if (vl_push(v, tok, (size_t)blen, (uint32_t)id) < 0)
            return errf(err, "%s: out of memory", path);
        i = skip_ws(s, i, n);
        if (i < n && s[i] == ',') {
            i = skip_ws(s, i + 1, n);
            continue;
        }
        if (i < n && s[i] == '}')
            break;
        return errf(err, "%s: byte %zu: expected ',' or '}'", path, i);
    }
    if (skip_ws(s, i + 1, n) != n)
        return errf(err, "%s: byte %zu: text after the JSON object", path, skip_ws(s, i + 1, n));
    return 0;
}

static uint32_t pow2_above(size_t n)
{
    uint32_t p = 1024;
    while (p < 2 * n)
        p *= 2;
    return p;
}

static void fp_mix(uint64_t *h, uint64_t v)
{
    *h = (*h ^ v) * 0x100000001b3ull;
    *h ^= *h >> 31;
}

/* Builds the id-indexed tables from the JSON entries: ids must be exactly
 * 0..n-1, tokens distinct, every single byte a token. */
static int build_tokens(bpe *b, const char *path, struct vocab_list *v, char *err)
{
    if (v->n > (1u << 24))
        return errf(err, "%s: %zu tokens, more than supported", path, v->n);
    b->vocab = (int)v->n;
    b->off = malloc((v->n + 1) * sizeof *b->off);
    b->bytes = malloc(v->nbytes ? v->nbytes : 1);
    b->mergeable = calloc(v->n, 1);
    b->tok_mask = pow2_above(v->n) - 1;
    b->tok_tab = calloc((size_t)b->tok_mask + 1, sizeof *b->tok_tab);
    uint32_t *pos = malloc(v->n * sizeof *pos);
    if (!b->off || !b->bytes || !b->mergeable || !b->tok_tab || !pos) {
        free(pos);
        return errf(err, "%s: out of memory", path);
    }
    for (size_t k = 0; k < v->n; k++)
        pos[k] = UINT32_MAX;
    for (size_t k = 0; k < v->n; k++) {
        if (v->id[k] >= v->n) {
            free(pos);
            return errf(err, "%s: token id %u out of range: %zu tokens need ids 0..%zu", path,
                        v->id[k], v->n, v->n - 1);
        }
        if (pos[v->id[k]] != UINT32_MAX) {
            free(pos);
            return errf(err, "%s: token id %u given twice", path, v->id[k]);
        }
        pos[v->id[k]] = (uint32_t)k;
    }
    uint32_t o = 0;
    for (size_t id = 0; id < v->n; id++) {
        size_t k = pos[id], len = v->off[k + 1] - v->off[k];
        b->off[id] = o;
        memcpy(b->bytes + o, v->bytes + v->off[k], len);
        o += (uint32_t)len;
    }
    b->off[v->n] = o;
    free(pos);
    for (int c = 0; c < 256; c++)
        b->byte_id[c] = -1;
    for (uint32_t id = 0; id < v->n; id++) {
        const unsigned char *p = (const unsigned char *)b->bytes + b->off[id];
        size_t len = b->off[id + 1] - b->off[id];
        uint32_t i = (uint32_t)hash_bytes(p, len) & b->tok_mask;
        for (; b->tok_tab[i].id1; i = (i + 1) & b->tok_mask) {
            uint32_t other = b->tok_tab[i].id1 - 1;
            if (b->off[other + 1] - b->off[other] == len &&
                memcmp(b->bytes + b->off[other], p, len) == 0)
                return errf(err, "%s: token %u repeats token %u", path, id, other);
        }
        b->tok_tab[i].id1 = id + 1;
        b->tok_tab[i].len = (uint16_t)len;
        memcpy(b->tok_tab[i].head, p, len < TOK_INLINE ? len : TOK_INLINE);
        if (len == 1) {
            b->byte_id[*p] = (int32_t)id;
            b->mergeable[id] = 1;
        }
        fp_mix(&b->fingerprint, len);
        for (size_t k = 0; k < len; k++)
            fp_mix(&b->fingerprint, p[k]);
    }
    for (int c = 0; c < 256; c++)
        if (b->byte_id[c] < 0)
            return errf(err, "%s: byte 0x%02x has no token", path, c);
    return 0;
}

/* Reads the merges: each line "left right" names two tokens whose
 * concatenation is a token; results' ids must increase line by line. */
static int parse_merges(bpe *b, const char *path, char *s, size_t n, char *err)
{
    size_t i = 0, line = 0;
    int32_t last = -1;
    while (i < n) {
        size_t e = i;
        while (e < n && s[e] != '\n')
            e++;
        line++;
        size_t end = e;
        if (end > i && s[end - 1] == '\r')
            end--;
        char *ln = s + i;
        size_t len = end - i;
        i = e + 1;
        if (len == 0 || (line == 1 && len >= 8 && memcmp(ln, "#version", 8) == 0))
            continue;
        char *sp = memchr(ln, ' ', len);
        if (!sp || sp == ln || sp == ln + len - 1 || memchr(sp + 1, ' ', (size_t)(ln + len - sp - 1)))
            return errf(err, "%s:%zu: expected two tokens separated by one space", path, line);
        size_t la = (size_t)(sp - ln), lb = len - la - 1;
        long a = unmap_token((unsigned char *)ln, la);
        long bl = unmap_token((unsigned char *)sp + 1, lb);
        if (a <= 0 || bl <= 0 || a + bl > MAX_TOKEN_BYTES)
            return errf(err, "%s:%zu: token has a character outside GPT-2's byte-to-unicode table",
                        path, line);
        unsigned char cat[2 * MAX_TOKEN_BYTES];
        memcpy(cat, ln, (size_t)a);
        memcpy(cat + a, sp + 1, (size_t)bl);
        int32_t ia = tok_find(b, cat, (size_t)a, hash_bytes(cat, (size_t)a));
        int32_t ib = tok_find(b, cat + a, (size_t)bl, hash_bytes(cat + a, (size_t)bl));
        int32_t ic = tok_find(b, cat, (size_t)(a + bl), hash_bytes(cat, (size_t)(a + bl)));
        if (ia < 0 || ib < 0)
            return errf(err, "%s:%zu: merge of a string that is not a token", path, line);
        if (ic < 0)
            return errf(err, "%s:%zu: merge result is not a token", path, line);
        if (!b->mergeable[ia] || !b->mergeable[ib])
            return errf(err, "%s:%zu: merge uses a token no earlier merge made", path, line);
        if (ic <= last)
            return errf(err, "%s:%zu: merge result id %d not above the previous one's (%d)", path,
                        line, ic, last);
        b->mergeable[ic] = 1;
        last = ic;
        b->n_merges++;
        fp_mix(&b->fingerprint, (uint64_t)ia << 32 | (uint32_t)ib);
    }
    return 0;
}

bpe *bpe_load_files(const char *vocab_path, const char *merges_path, char *err)
{
    pthread_once(&g_tables_once, tables_init);
    struct vocab_list v = {0};
    char *js = NULL, *ms = NULL;
    size_t jn = 0, mn = 0;
    bpe *b = calloc(1, sizeof *b);
    if (!b) {
        errf(err, "%s: out of memory", vocab_path);
        return NULL;
    }
    b->fingerprint = 0xcbf29ce484222325ull;
    if (!(js = read_file(vocab_path, &jn, err)) || !(ms = read_file(merges_path, &mn, err)))
        goto fail;
    if (parse_vocab_json(vocab_path, js, jn, &v, err) < 0 || build_tokens(b, vocab_path, &v, err) < 0)
        goto fail;
    if (parse_merges(b, merges_path, ms, mn, err) < 0)
        goto fail;
    const unsigned char *eot = (const unsigned char *)BPE_EOT_TEXT;
    b->eot = tok_find(b, eot, strlen(BPE_EOT_TEXT), hash_bytes(eot, strlen(BPE_EOT_TEXT)));
    if (b->eot >= 0 && b->mergeable[b->eot]) {
        errf(err, "%s: %s is made by a merge", merges_path, BPE_EOT_TEXT);
        goto fail;
    }
    free(js);
    free(ms);
    free(v.bytes);
    free(v.off);
    free(v.id);
    return b;
fail:
    free(js);
    free(ms);
    free(v.bytes);
    free(v.off);
    free(v.id);
    bpe_free(b);
    return NULL;
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

bpe *bpe_load(const char *dir, char *err)
{
    char vp[PATH_MAX], mp[PATH_MAX];
    const char *layouts[2][2] = {{"encoder.json", "vocab.bpe"}, {"vocab.json", "merges.txt"}};
    for (int l = 0; l < 2; l++) {
        if (snprintf(vp, sizeof vp, "%s/%s", dir, layouts[l][0]) >= (int)sizeof vp ||
            snprintf(mp, sizeof mp, "%s/%s", dir, layouts[l][1]) >= (int)sizeof mp) {
            errf(err, "%s: path too long", dir);
            return NULL;
        }
        if (file_exists(vp) || file_exists(mp))
            return bpe_load_files(vp, mp, err);
    }
    errf(err, "%s: no encoder.json + vocab.bpe or vocab.json + merges.txt there", dir);
    return NULL;
}

void bpe_free(bpe *b)
{
    if (!b)
        return;
    for (int w = 0; w < N_WORKERS; w++) {
        struct worker *wk = &b->workers[w];
        free(wk->cache);
        free(wk->sym);
        free(wk->next);
        free(wk->prev);
        free(wk->heap);
    }
    free(b->bytes);
    free(b->off);
    free(b->mergeable);
    free(b->tok_tab);
    free(b);
}

int bpe_vocab_size(const bpe *b) { return b->vocab; }
int bpe_eot(const bpe *b) { return b->eot; }
int bpe_merges(const bpe *b) { return b->n_merges; }
uint64_t bpe_fingerprint(const bpe *b) { return b->fingerprint; }

const char *bpe_token(const bpe *b, int32_t id, size_t *len)
{
    if (id < 0 || id >= b->vocab)
        return NULL;
    *len = b->off[id + 1] - b->off[id];
    return b->bytes + b->off[id];
}

/* ---- encoding ---- */

static int worker_reserve(struct worker *w, size_t n)
{
    if (n <= w->cap)
        return 0;
    size_t cap = w->cap ? w->cap : 64;
    while (cap < n)
        cap *= 2;
    uint32_t *sym = realloc(w->sym, cap * sizeof *sym);
    if (sym)
        w->sym = sym;
    int32_t *next = realloc(w->next, cap * sizeof *next);
    if (next)
        w->next = next;
    int32_t *prev = realloc(w->prev, cap * sizeof *prev);
    if (prev)
        w->prev = prev;
    struct heap_ent *heap = realloc(w->heap, 3 * cap * sizeof *heap);
    if (heap)
        w->heap = heap;
    if (!sym || !next || !prev || !heap)
        return -1;
    w->cap = cap;
    return 0;
}

static inline void heap_push(struct heap_ent *h, size_t *n, struct heap_ent e)
{
    size_t i = (*n)++;
    while (i) {
        size_t p = (i - 1) / 2;
        if (h[p].key <= e.key)
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
}

static inline struct heap_ent heap_pop(struct heap_ent *h, size_t *n)
{
    struct heap_ent top = h[0], e = h[--*n];
    size_t i = 0, m = *n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m)
            break;
        if (c + 1 < m && h[c + 1].key < h[c].key)
            c++;
        if (e.key <= h[c].key)
            break;
        h[i] = h[c];
        i = c;
    }
    if (m)
        h[i] = e;
    return top;
}

/* Pushes the pair starting at symbol i, if it has a right neighbour and
 * their concatenation, the bytes p[i .. end of the neighbour), is a mergeable
 * token. The symbol index is its byte position: leftmost = least. */
static inline void push_pair(const bpe *b, struct worker *w, const unsigned char *p, size_t n,
                             size_t *hn, int32_t i)
{
    if (i < 0 || w->next[i] < 0)
        return;
    int32_t j = w->next[i];
    size_t end = w->next[j] >= 0 ? (size_t)w->next[j] : n;
    int32_t m = tok_find(b, p + i, end - (size_t)i, hash_bytes(p + i, end - (size_t)i));
    if (m < 0 || !b->mergeable[m])
        return;
    struct heap_ent e = {(uint64_t)(uint32_t)m << 32 | (uint32_t)i, w->sym[i], w->sym[j]};
    heap_push(w->heap, hn, e);
}

/* Merges the bytes p[0..n) (n >= 2) into tokens written to out. Returns the
 * count, or -1 when the scratch cannot grow. */
static long merge_piece(const bpe *b, struct worker *w, const unsigned char *p, size_t n,
                        int32_t *out)
{
    if (n > INT32_MAX || worker_reserve(w, n) < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        w->sym[i] = (uint32_t)b->byte_id[p[i]];
        w->next[i] = i + 1 < n ? (int32_t)(i + 1) : -1;
        w->prev[i] = (int32_t)i - 1;
    }
    size_t hn = 0;
    for (size_t i = 0; i + 1 < n; i++)
        push_pair(b, w, p, n, &hn, (int32_t)i);
    while (hn) {
        struct heap_ent e = heap_pop(w->heap, &hn);
        int32_t i = (int32_t)(uint32_t)e.key, j = w->next[i];
        /* Stale when either side has changed since the push (a symbol's id
         * only ever changes to a longer token, so equal ids mean unchanged). */
        if (w->sym[i] != e.left || j < 0 || w->sym[j] != e.right)
            continue;
        w->sym[i] = (uint32_t)(e.key >> 32);
        w->sym[j] = UINT32_MAX;
        w->next[i] = w->next[j];
        if (w->next[j] >= 0)
            w->prev[w->next[j]] = i;
        push_pair(b, w, p, n, &hn, w->prev[i]);
        push_pair(b, w, p, n, &hn, i);
    }
    long k = 0;
    for (int32_t i = 0; i >= 0; i = w->next[i])
        out[k++] = (int32_t)w->sym[i];
    return k;
}

/* Encodes one piece into out (room for n ids): a single token when the piece
 * is one, else a cached result, else merging. Returns the count or -1. */
static long encode_piece(const bpe *b, struct worker *w, const unsigned char *p, size_t n,
                         int32_t *out)
{
    if (n == 1) {
        out[0] = b->byte_id[p[0]];
        return 1;
    }
    uint64_t h = hash_bytes(p, n);
    int32_t id = tok_find(b, p, n, h);
    if (id >= 0 && b->mergeable[id]) {
        out[0] = id;
        return 1;
    }
    struct cache_slot *slot = NULL;
    if (w->cache && n <= CACHE_KEY) {
        slot = &w->cache[(h >> 20) & ((1u << CACHE_BITS) - 1)];
        if (slot->hash == h && slot->len == n && memcmp(slot->key, p, n) == 0) {
            memcpy(out, slot->ids, slot->nids * sizeof *out);
            return slot->nids;
        }
    }
    long k = merge_piece(b, w, p, n, out);
    if (slot && k > 0 && k <= CACHE_IDS) {
        slot->hash = h;
        slot->len = (uint8_t)n;
        slot->nids = (uint8_t)k;
        memcpy(slot->key, p, n);
        memcpy(slot->ids, out, (size_t)k * sizeof *out);
    }
    return k;
}

static int ids_reserve(int32_t **ids, size_t *n, size_t *cap, size_t more)
{
    if (*ids && *cap - *n >= more)
        return 0;
    size_t want = *cap > 1024 ? *cap : 1024;
    while (want - *n < more) {
        if (want > SIZE_MAX / 4 / sizeof(int32_t))
            return -1;
        want *= 2;
    }
    int32_t *p = realloc(*ids, want * sizeof(int32_t));
    if (!p)
        return -1;
    *ids = p;
    *cap = want;
    return 0;
}

static int encode_ordinary(const bpe *b, struct worker *w, const unsigned char *s, size_t len,
                           int32_t **ids, size_t *n, size_t *cap, char *err)
{
    for (size_t i = 0; i < len;) {
        size_t k = next_piece(s, len, i);
        if (ids_reserve(ids, n, cap, k) < 0)
            return errf(err, "tokenizer: out of memory");
        long m = encode_piece(b, w, s + i, k, *ids + *n);
        if (m < 0)
            return errf(err, "tokenizer: out of memory (a piece of %zu bytes)", k);
        *n += (size_t)m;
        i += k;
    }
    return 0;
}

/* Borrows a free worker from the pool (NULL when all are busy). */
static struct worker *worker_get(bpe *b)
{
    for (int i = 0; i < N_WORKERS; i++) {
        int zero = 0;
        struct worker *w = &b->workers[i];
        if (atomic_compare_exchange_strong(&w->busy, &zero, 1)) {
            if (!w->cache)
                w->cache = calloc((size_t)1 << CACHE_BITS, sizeof *w->cache);
            return w;
        }
    }
    return NULL;
}

int bpe_encode(bpe *b, const char *text, size_t len, int allow_special,
               int32_t **ids, size_t *n, size_t *cap, char *err)
{
    struct worker local = {0}, *w = worker_get(b);
    if (!w)
        w = &local;     /* every pooled worker busy: go without a cache */
    const unsigned char *s = (const unsigned char *)text;
    const size_t elen = strlen(BPE_EOT_TEXT);
    int rc = 0;
    while (len) {
        const unsigned char *sp = NULL;
        if (allow_special && b->eot >= 0)
            sp = memmem(s, len, BPE_EOT_TEXT, elen);
        size_t seg = sp ? (size_t)(sp - s) : len;
        if ((rc = encode_ordinary(b, w, s, seg, ids, n, cap, err)) < 0)
            break;
        if (!sp)
            break;
        if (ids_reserve(ids, n, cap, 1) < 0) {
            rc = errf(err, "tokenizer: out of memory");
            break;
        }
        (*ids)[(*n)++] = b->eot;
        s = sp + elen;
        len -= seg + elen;
    }
    if (w == &local) {
        free(local.sym);
        free(local.next);
        free(local.prev);
        free(local.heap);
    } else {
        atomic_store(&w->busy, 0);
    }
    return rc;
}
