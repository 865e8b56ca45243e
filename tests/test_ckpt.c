/* test_ckpt.c: JSON, safetensors, checkpoints, Hugging Face and llm.c files.
 *
 *  - JSON: values, escapes and surrogates, invalid UTF-8, depth limit, every
 *    truncation, numbers, random documents re-serialised, random mutations
 *  - safetensors: random tensors of several dtypes round trip (bytes, shapes,
 *    metadata), float conversions against independently computed values,
 *    transposed reads and writes, every kind of broken file, random mutations
 *  - our checkpoints bit-exact with and without moments; wrong model, wrong
 *    file, wrong dtype; a failed save keeps the good file
 *  - HF GPT-2 export -> import bit-exact; prefixed / bf16 / buffer-carrying
 *    files; bad configs and directories
 *  - llm.c files written here in llm.c's layout, fp32 and bf16; broken files
 *
 * Every test draws fresh data from a seed printed at start (set
 * ANATOMY_TEST_SEED to replay one). Files go to a fresh folder under /tmp. */
#include <check.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../data/errbuf.h"
#include "../data/json.h"
#include "../data/rng.h"
#include "../host/ckpt.h"
#include "../host/safetensors.h"

static uint64_t seed;
static rng_state rng;
static char dir[128];
static char err[ERRBUF];

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}

static void setup(void)
{
    rng_seed(&rng, seed);
    snprintf(dir, sizeof(dir), "/tmp/anatomy_test_ckpt_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    err[0] = 0;
}

static void teardown(void)
{
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* "<dir>/<name>" in one of a few rotating buffers. */
static const char *pth(const char *name)
{
    static char bufs[8][256];
    static int k;
    char *b = bufs[k++ % 8];
    snprintf(b, sizeof(bufs[0]), "%s/%s", dir, name);
    return b;
}

#define ck_err(...) ck_err_(__VA_ARGS__, NULL)
/* The last error contains every given fragment. */
static void ck_err_(const char *frag, ...)
{
    va_list ap;
    va_start(ap, frag);
    for (const char *f = frag; f; f = va_arg(ap, const char *))
        ck_assert_msg(strstr(err, f), "error \"%s\" lacks \"%s\"", err, f);
    va_end(ap);
}

static void write_bytes(const char *path, const void *buf, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(buf, 1, n, f), n);
    fclose(f);
}

static void *read_bytes(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    void *b = malloc(*n + 1);
    ck_assert_uint_eq(fread(b, 1, *n, f), *n);
    fclose(f);
    return b;
}

static json_doc *parse_str(const char *s)
{
    return json_parse(s, strlen(s), "t.json", err);
}

/* Parses exactly n bytes copied to their own allocation, so that a read past
 * the end is caught by AddressSanitizer. */
static json_doc *parse_exact(const char *s, size_t n)
{
    char *b = malloc(n ? n : 1);
    memcpy(b, s, n);
    json_doc *d = json_parse(b, n, "t.json", err);
    free(b);
    return d;
}

/* ================= JSON ================= */

START_TEST(test_json_values)
{
    const char *s = " {\"a\": [1, -2.5, true, false, null, \"x\"],\n \"b\": {\"c\": {}},"
                    " \"d\": [], \"e\": 1e3, \"a\": 7 } \n";
    json_doc *d = parse_str(s);
    ck_assert_msg(d, "%s", err);
    const json_value *r = json_root(d), *a = json_get(r, "a");
    ck_assert_int_eq(json_typeof(r), JSON_OBJECT);
    ck_assert_uint_eq(json_len(r), 5);
    ck_assert_int_eq(json_typeof(a), JSON_ARRAY);
    ck_assert_uint_eq(json_len(a), 6);
    int64_t i;
    double x;
    int b;
    ck_assert_int_eq(json_int(json_at(a, 0), 0, 10, &i), 0);
    ck_assert_int_eq(i, 1);
    ck_assert_int_eq(json_int(json_at(a, 0), 2, 10, &i), -1);
    ck_assert_int_eq(json_num(json_at(a, 1), &x), 0);
    ck_assert(x == -2.5);
    ck_assert_int_eq(json_int(json_at(a, 1), -10, 10, &i), -1);
    ck_assert_int_eq(json_bool(json_at(a, 2), &b), 0);
    ck_assert_int_eq(b, 1);
    ck_assert_int_eq(json_bool(json_at(a, 3), &b), 0);
    ck_assert_int_eq(b, 0);
    ck_assert_int_eq(json_typeof(json_at(a, 4)), JSON_NULL);
    ck_assert_int_eq(json_bool(json_at(a, 4), &b), -1);
    ck_assert_str_eq(json_str(json_at(a, 5)), "x");
    ck_assert_ptr_null(json_str(json_at(a, 0)));
    ck_assert_ptr_null(json_at(a, 6));
    ck_assert_ptr_null(json_get(a, "a"));
    ck_assert_ptr_null(json_get(r, "zz"));
    const char *keys[] = { "a", "b", "d", "e", "a" };
    int k = 0;
    for (const json_value *m = json_first(r); m; m = json_next(r, m))
        ck_assert_str_eq(json_key(m, NULL), keys[k++]);
    ck_assert_int_eq(k, 5);
    const json_value *c = json_get(json_get(r, "b"), "c");
    ck_assert_int_eq(json_typeof(c), JSON_OBJECT);
    ck_assert_ptr_null(json_first(c));
    ck_assert_ptr_null(json_first(json_get(r, "d")));
    ck_assert_int_eq(json_int(json_get(r, "e"), 0, 1000, &i), 0);
    ck_assert_int_eq(i, 1000);
    json_free(d);

    /* a scalar is a whole document too */
    d = parse_str("  \"solo\"  ");
    ck_assert_msg(d, "%s", err);
    ck_assert_str_eq(json_str(json_root(d)), "solo");
    json_free(d);
}
END_TEST

START_TEST(test_json_escapes)
{
    const char *s = "[\"\\\"\\\\\\/\\b\\f\\n\\r\\t\", \"\\u0041\\u00e9\\u20AC\", "
                    "\"\\ud83d\\ude00\", \"a\\u0000b\", \"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"]";
    json_doc *d = parse_str(s);
    ck_assert_msg(d, "%s", err);
    const json_value *r = json_root(d);
    ck_assert_str_eq(json_str(json_at(r, 0)), "\"\\/\b\f\n\r\t");
    ck_assert_str_eq(json_str(json_at(r, 1)), "A\xc3\xa9\xe2\x82\xac");
    ck_assert_str_eq(json_str(json_at(r, 2)), "\xf0\x9f\x98\x80");
    ck_assert_uint_eq(json_len(json_at(r, 3)), 3);
    ck_assert(!memcmp(json_str(json_at(r, 3)), "a\0b", 4));
    ck_assert_str_eq(json_str(json_at(r, 4)), "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
    json_free(d);

    /* Random code points through \u escapes (pairs above U+FFFF) decode to
     * the UTF-8 that an independent encoder gives. */
    for (int it = 0; it < 2000; it++) {
        uint32_t cp;
        do cp = 1 + (uint32_t)rng_below(&rng, 0x10FFFF);
        while (cp >= 0xD800 && cp <= 0xDFFF);
        char src[32], want[8] = { 0 };
        if (cp < 0x10000) {
            snprintf(src, sizeof(src), "\"\\u%04X\"", cp);
        } else {
            uint32_t v = cp - 0x10000;
            snprintf(src, sizeof(src), "\"\\u%04x\\u%04x\"", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
        }
        int nb = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
        static const unsigned char lead[] = { 0, 0, 0xC0, 0xE0, 0xF0 };
        for (int i = nb - 1; i > 0; i--)
            want[i] = (char)(0x80 | ((cp >> (6 * (nb - 1 - i))) & 0x3F));
        want[0] = (char)(nb == 1 ? cp : lead[nb] | (cp >> (6 * (nb - 1))));
        d = parse_str(src);
        ck_assert_msg(d, "%s: %s", src, err);
        ck_assert_str_eq(json_str(json_root(d)), want);
        json_free(d);
    }

    const char *bad[] = {
        "\"\\ud83d\"", "\"\\ude00\"", "\"\\ud83d\\u0041\"", "\"\\ud83dx\"", "\"\\u12\"",
        "\"\\u12G4\"", "\"\\x\"", "\"\\", "\"a\nb\"", "\"\t\"", "\"\x01\"",
        "\"\xc0\x80\"", "\"\x80\"", "\"\xed\xa0\x80\"", "\"\xf5\x80\x80\x80\"",
        "\"\xe2\x82\"", "\"\xf0\x8f\xbf\xbf\"", "\"\xf4\x90\x80\x80\"", "\"\xc3\"",
        "\"abc", "'x'",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        d = parse_exact(bad[i], strlen(bad[i]));
        ck_assert_msg(!d, "accepted %s", bad[i]);
        ck_err("t.json: line ");
    }
}
END_TEST

START_TEST(test_json_depth)
{
    size_t n = 1000000;
    char *s = malloc(2 * n + 16);
    ck_assert_ptr_nonnull(s);
    /* exactly the limit parses, one more does not */
    for (int obj = 0; obj < 2; obj++) {
        for (int extra = 0; extra < 2; extra++) {
            size_t d = JSON_MAXDEPTH + extra, o = 0;
            for (size_t i = 0; i < d; i++)
                o += (size_t)sprintf(s + o, obj ? "{\"k\":" : "[");
            o += (size_t)sprintf(s + o, "0");
            for (size_t i = 0; i < d; i++)
                s[o++] = obj ? '}' : ']';
            json_doc *doc = parse_exact(s, o);
            if (extra) {
                ck_assert_ptr_null(doc);
                ck_err("too deep");
            } else {
                ck_assert_msg(doc, "%s", err);
                json_free(doc);
            }
        }
    }
    /* a million open brackets: refused at the limit, no stack blowup */
    memset(s, '[', n);
    ck_assert_ptr_null(parse_exact(s, n));
    ck_err("too deep");
    free(s);
}
END_TEST

START_TEST(test_json_truncated)
{
    const char *s = "{\"name\": \"h.0.\\u00e9\", \"shape\": [3, -4.5e-2, 7],"
                    " \"ok\": true, \"n\": null, \"f\": false, \"o\": {\"x\": [[]]}}";
    size_t n = strlen(s);
    json_doc *d = parse_exact(s, n);
    ck_assert_msg(d, "%s", err);
    json_free(d);
    for (size_t i = 0; i < n; i++) {
        d = parse_exact(s, i);
        ck_assert_msg(!d, "prefix of %zu bytes accepted", i);
        ck_assert_msg(strstr(err, "t.json"), "%s", err);
    }
    const char *bad[] = { "", "   ", "{} x", "{},", "[1,]", "{\"a\":1,}", "{\"a\" 1}",
                          "{1: 2}", "[1 2]", "tru", "nul", "[true false]", "{\"a\":}",
                          "]", "[}", "{]", "[1]]", "/* c */ 1", "nan", "[Infinity]" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        d = parse_exact(bad[i], strlen(bad[i]));
        ck_assert_msg(!d, "accepted '%s'", bad[i]);
    }
    /* the position in the message points at the problem */
    ck_assert_ptr_null(parse_str("{\n  \"a\": 1,\n  \"b\" 2\n}"));
    ck_err("t.json: line 3, column 7");
}
END_TEST

START_TEST(test_json_numbers)
{
    /* int_ok: json_int over the whole int64 range accepts it */
    static const struct { const char *s; double v; int int_ok; } ok[] = {
        { "0", 0, 1 }, { "-0", 0, 1 }, { "7", 7, 1 }, { "-12", -12, 1 }, { "3.25", 3.25, 0 },
        { "-0.5e1", -5, 1 }, { "1E2", 100, 1 }, { "1e+2", 100, 1 }, { "25e-2", 0.25, 0 },
        { "123456789012345678", 123456789012345678.0, 1 },
        { "9223372036854775807", 9223372036854775807.0, 1 },
        { "-9223372036854775808", -9223372036854775808.0, 1 },
        { "9223372036854775808", 9223372036854775808.0, 0 },
        { "1e-400", 0, 1 }, { "1e300", 1e300, 0 },
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        json_doc *d = parse_str(ok[i].s);
        ck_assert_msg(d, "%s: %s", ok[i].s, err);
        double x;
        int64_t v;
        ck_assert_int_eq(json_num(json_root(d), &x), 0);
        ck_assert_msg(x == ok[i].v, "%s -> %.17g", ok[i].s, x);
        int r = json_int(json_root(d), INT64_MIN, INT64_MAX, &v);
        ck_assert_msg(r == (ok[i].int_ok ? 0 : -1), "%s", ok[i].s);
        if (!r)
            ck_assert_msg((double)v == ok[i].v, "%s -> %lld", ok[i].s, (long long)v);
        json_free(d);
    }
    json_doc *d = parse_str("[9223372036854775807, -9223372036854775808, 4.0, 2.5, 1e300, 300]");
    int64_t v;
    const json_value *r = json_root(d);
    ck_assert_int_eq(json_int(json_at(r, 0), INT64_MIN, INT64_MAX, &v), 0);
    ck_assert(v == INT64_MAX);
    ck_assert_int_eq(json_int(json_at(r, 1), INT64_MIN, INT64_MAX, &v), 0);
    ck_assert(v == INT64_MIN);
    ck_assert_int_eq(json_int(json_at(r, 2), 0, 10, &v), 0);
    ck_assert_int_eq(v, 4);
    ck_assert_int_eq(json_int(json_at(r, 3), 0, 10, &v), -1);
    ck_assert_int_eq(json_int(json_at(r, 4), INT64_MIN, INT64_MAX, &v), -1);
    ck_assert_int_eq(json_int(json_at(r, 5), 0, 255, &v), -1);
    ck_assert_int_eq(json_int(json_at(r, 5), 300, 300, &v), 0);
    json_free(d);

    const char *bad[] = { "01", "-", "1.", ".5", "1e", "1e+", "+1", "--1", "0x10", "1.e3",
                          "-a", "1e400", "-1e999", "00" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        d = parse_exact(bad[i], strlen(bad[i]));
        ck_assert_msg(!d, "accepted %s", bad[i]);
    }

    /* random integers and doubles survive printing and parsing exactly */
    for (int it = 0; it < 3000; it++) {
        char buf[64];
        int64_t iv = (int64_t)rng_next(&rng) >> rng_below(&rng, 63);
        snprintf(buf, sizeof(buf), "%lld", (long long)iv);
        d = parse_str(buf);
        ck_assert_int_eq(json_int(json_root(d), INT64_MIN, INT64_MAX, &v), 0);
        ck_assert(v == iv);
        json_free(d);
        double dv = rng_normal(&rng) * pow(10.0, (double)rng_below(&rng, 600) - 300), got;
        snprintf(buf, sizeof(buf), "%.17g", dv);
        d = parse_str(buf);
        ck_assert_msg(d, "%s: %s", buf, err);
        json_num(json_root(d), &got);
        ck_assert_msg(got == dv, "%s -> %.17g", buf, got);
        json_free(d);
    }
}
END_TEST

/* Random document: `spaced` is what the parser sees (random whitespace,
 * random escapes), `canon` what dump() must give back. */
static void gen_value(json_out *spaced, json_out *canon, int depth);

static void gen_ws(json_out *o)
{
    static const char *ws[] = { "", "", " ", "\n", "\t ", "\r\n  " };
    const char *w = ws[rng_below(&rng, 6)];
    json_out_raw(o, w, strlen(w));
}

static void gen_string(json_out *spaced, json_out *canon)
{
    char dec[64];
    int n = (int)rng_below(&rng, 12), o = 0;
    json_out_raw(spaced, "\"", 1);
    for (int i = 0; i < n; i++) {
        int c = 1 + (int)rng_below(&rng, 126);
        if (rng_below(&rng, 8) == 0) {
            /* a two-byte character, raw */
            char u[3] = { (char)0xC3, (char)(0x80 + rng_below(&rng, 64)), 0 };
            json_out_raw(spaced, u, 2);
            dec[o++] = u[0];
            dec[o++] = u[1];
            continue;
        }
        dec[o++] = (char)c;
        if (c < 0x20 || c == '"' || c == '\\' || rng_below(&rng, 6) == 0)
            json_out_fmt(spaced, "\\u%04x", c);
        else
            json_out_raw(spaced, (char *)&dec[o - 1], 1);
    }
    dec[o] = 0;
    json_out_raw(spaced, "\"", 1);
    json_out_str(canon, dec);
}

static void gen_value(json_out *spaced, json_out *canon, int depth)
{
    int kind = (int)rng_below(&rng, depth < 5 ? 6 : 4);
    gen_ws(spaced);
    if (kind == 0) {
        static const char *lit[] = { "true", "false", "null" };
        const char *l = lit[rng_below(&rng, 3)];
        json_out_fmt(spaced, "%s", l);
        json_out_fmt(canon, "%s", l);
    } else if (kind == 1 || kind == 2) {
        long long v = (long long)(rng_next(&rng) >> (1 + rng_below(&rng, 63)));
        if (rng_below(&rng, 2))
            v = -v;
        json_out_fmt(spaced, "%lld", v);
        json_out_fmt(canon, "%lld", v);
    } else if (kind == 3) {
        gen_string(spaced, canon);
    } else {
        int obj = kind == 5, n = (int)rng_below(&rng, 5);
        json_out_raw(spaced, obj ? "{" : "[", 1);
        json_out_raw(canon, obj ? "{" : "[", 1);
        for (int i = 0; i < n; i++) {
            if (i) {
                gen_ws(spaced);
                json_out_raw(spaced, ",", 1);
                json_out_raw(canon, ",", 1);
            }
            if (obj) {
                gen_ws(spaced);
                gen_string(spaced, canon);
                gen_ws(spaced);
                json_out_raw(spaced, ":", 1);
                json_out_raw(canon, ":", 1);
            }
            gen_value(spaced, canon, depth + 1);
        }
        gen_ws(spaced);
        json_out_raw(spaced, obj ? "}" : "]", 1);
        json_out_raw(canon, obj ? "}" : "]", 1);
    }
    gen_ws(spaced);
}

static void dump(json_out *o, const json_value *v)
{
    switch (json_typeof(v)) {
    case JSON_NULL: json_out_fmt(o, "null"); break;
    case JSON_TRUE: json_out_fmt(o, "true"); break;
    case JSON_FALSE: json_out_fmt(o, "false"); break;
    case JSON_NUMBER: {
        int64_t i;
        if (json_int(v, INT64_MIN, INT64_MAX, &i) == 0)
            json_out_fmt(o, "%lld", (long long)i);
        else
            json_out_fmt(o, "%.17g", v->u.num);
        break;
    }
    case JSON_STRING: json_out_str(o, json_str(v)); break;
    default: {
        int obj = json_typeof(v) == JSON_OBJECT;
        size_t n = 0;
        json_out_raw(o, obj ? "{" : "[", 1);
        for (const json_value *c = json_first(v); c; c = json_next(v, c), n++) {
            if (n)
                json_out_raw(o, ",", 1);
            if (obj) {
                json_out_str(o, json_key(c, NULL));
                json_out_raw(o, ":", 1);
            }
            dump(o, c);
        }
        ck_assert_uint_eq(n, json_len(v));
        json_out_raw(o, obj ? "}" : "]", 1);
    }
    }
}

START_TEST(test_json_random_docs)
{
    for (int it = 0; it < 400; it++) {
        json_out sp = { 0 }, ca = { 0 }, back = { 0 };
        gen_value(&sp, &ca, 0);
        ck_assert(!sp.failed && !ca.failed);
        json_doc *d = parse_exact(sp.buf, sp.len);
        ck_assert_msg(d, "%s\n%s", err, sp.buf);
        dump(&back, json_root(d));
        ck_assert_str_eq(back.buf, ca.buf);
        json_free(d);
        json_out_free(&sp);
        json_out_free(&ca);
        json_out_free(&back);
    }
}
END_TEST

START_TEST(test_json_mutations)
{
    const char *s = "{\"__metadata__\":{\"format\":\"pt\"},\"h.0.w\":{\"dtype\":\"F32\","
                    "\"shape\":[3,4],\"data_offsets\":[0,48]},\"x\":[1.5e3,\"\\u00e9\\n\",true,null]}";
    size_t n = strlen(s);
    static const char alphabet[] = "{}[]\":,\\u0e9-+.Etrufalsn \x80\xc3\xff";
    char *b = malloc(n + 8);
    for (int it = 0; it < 5000; it++) {
        size_t m = n;
        memcpy(b, s, n);
        int edits = 1 + (int)rng_below(&rng, 4);
        for (int e = 0; e < edits && m > 0; e++) {
            size_t at = rng_below(&rng, m);
            int op = (int)rng_below(&rng, 3);
            if (op == 0) {
                b[at] = alphabet[rng_below(&rng, sizeof(alphabet) - 1)];
            } else if (op == 1 && m > 1) {
                memmove(b + at, b + at + 1, m - at - 1);
                m--;
            } else {
                m = at; /* truncate */
            }
        }
        json_doc *d = parse_exact(b, m);
        if (d) {
            json_out o = { 0 };
            dump(&o, json_root(d));
            json_out_free(&o);
            json_free(d);
        } else {
            ck_assert_msg(strstr(err, "t.json: line "), "%s", err);
        }
    }
    free(b);
}
END_TEST

START_TEST(test_json_big_object)
{
    /* encoder.json's shape: 50257 string keys with integer values */
    int n = 50257;
    json_out o = { 0 };
    json_out_raw(&o, "{", 1);
    int *perm = malloc(n * sizeof(int));
    for (int i = 0; i < n; i++)
        perm[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)rng_below(&rng, (uint64_t)i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (int i = 0; i < n; i++)
        json_out_fmt(&o, "%s\"tok\\u0120%d\": %d", i ? ", " : "", perm[i], i);
    json_out_raw(&o, "}", 1);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    json_doc *d = parse_exact(o.buf, o.len);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ck_assert_msg(d, "%s", err);
    const json_value *r = json_root(d);
    ck_assert_uint_eq(json_len(r), (size_t)n);
    int i = 0;
    for (const json_value *m = json_first(r); m; m = json_next(r, m), i++) {
        char want[32];
        int64_t v;
        snprintf(want, sizeof(want), "tok\xc4\xa0%d", perm[i]);
        ck_assert_str_eq(json_key(m, NULL), want);
        ck_assert_int_eq(json_int(m, 0, n, &v), 0);
        ck_assert_int_eq(v, i);
    }
    ck_assert_int_eq(i, n);
    double sec = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    ck_assert_msg(sec < 1.0, "parsing %zu bytes took %.3f s", o.len, sec);
    json_free(d);
    json_out_free(&o);
    free(perm);
}
END_TEST

START_TEST(test_json_file)
{
    const char *s = "{\"vocab_size\": 300}";
    write_bytes(pth("c.json"), s, strlen(s));
    json_doc *d = json_parse_file(pth("c.json"), 0, err);
    ck_assert_msg(d, "%s", err);
    int64_t v;
    ck_assert_int_eq(json_int(json_get(json_root(d), "vocab_size"), 1, 1000, &v), 0);
    ck_assert_int_eq(v, 300);
    json_free(d);
    ck_assert_ptr_null(json_parse_file(pth("c.json"), 5, err));
    ck_err(pth("c.json"), "too large");
    ck_assert_ptr_null(json_parse_file(pth("none.json"), 0, err));
    ck_err(pth("none.json"), "cannot open");
    ck_assert_ptr_null(json_parse_file(dir, 0, err));
    ck_err(dir);
}
END_TEST

/* ================= safetensors ================= */

typedef struct {
    char name[48];
    st_dtype dt;
    int ndim;
    int64_t shape[ST_MAXDIM];
    size_t bytes;
    unsigned char *data;
} tt;

/* Random bytes in a tensor of the given shape, or of a random one (dims 0..7)
 * when shape is NULL. */
static void random_tensor(tt *t, const char *name, st_dtype dt, int ndim, const int64_t *shape)
{
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->dt = dt;
    t->ndim = ndim;
    size_t n = 1;
    for (int k = 0; k < ndim; k++) {
        t->shape[k] = shape ? shape[k]
                    : rng_below(&rng, 10) == 0 ? 0 : 1 + (int64_t)rng_below(&rng, 7);
        n *= (size_t)t->shape[k];
    }
    t->bytes = n * st_dtype_size(dt);
    t->data = malloc(t->bytes + 1);
    for (size_t i = 0; i < t->bytes; i++)
        t->data[i] = (unsigned char)rng_next(&rng);
}

static st_out_tensor out_of(const tt *t)
{
    st_out_tensor o = { .name = t->name, .dtype = t->dt, .ndim = t->ndim, .data = t->data };
    memcpy(o.shape, t->shape, sizeof(o.shape));
    return o;
}

START_TEST(test_st_roundtrip)
{
    static const st_dtype dts[] = { ST_F32, ST_F16, ST_BF16, ST_F64, ST_I32, ST_I64, ST_U8,
                                    ST_BOOL, ST_I16 };
    enum { N = 14 };
    tt t[N];
    st_out_tensor o[N];
    for (int i = 0; i < N; i++) {
        char name[48];
        snprintf(name, sizeof(name), i == 3 ? "we\"ird \\ na\xc3\xa9me %d" : "h.%d.w", i * 5 % N);
        random_tensor(&t[i], name, dts[rng_below(&rng, 9)], (int)rng_below(&rng, 4), NULL);
        o[i] = out_of(&t[i]);
    }
    const char *meta[6] = { "format", "pt", "note", "quote \" backslash \\ nl \n",
                            "\xc3\xbc", "" };
    const char *path = pth("a.safetensors");
    ck_assert_msg(st_write(path, o, N, meta, 3, err) == 0, "%s", err);

    size_t fn;
    unsigned char *raw = read_bytes(path, &fn);
    uint64_t hl;
    memcpy(&hl, raw, 8);
    ck_assert_uint_eq(hl % 8, 0);
    ck_assert_int_eq(raw[8], '{');
    free(raw);

    st_file *f = st_open(path, err);
    ck_assert_msg(f, "%s", err);
    ck_assert_int_eq(st_count(f), N);
    for (int i = 0; i < N; i++) {
        const st_tensor *s = st_at(f, i);
        ck_assert_str_eq(s->name, t[i].name);
        ck_assert_ptr_eq(st_find(f, t[i].name), s);
        ck_assert_int_eq(s->dtype, t[i].dt);
        ck_assert_int_eq(s->ndim, t[i].ndim);
        for (int k = 0; k < s->ndim; k++)
            ck_assert_int_eq(s->shape[k], t[i].shape[k]);
        ck_assert_uint_eq(s->end - s->begin, t[i].bytes);
        ck_assert(!memcmp(st_data(f, s), t[i].data, t[i].bytes));
    }
    ck_assert_ptr_null(st_find(f, "h.99.w"));
    ck_assert_int_eq(st_meta_count(f), 3);
    for (int i = 0; i < 3; i++)
        ck_assert_str_eq(st_meta(f, meta[2 * i]), meta[2 * i + 1]);
    ck_assert_ptr_null(st_meta(f, "absent"));
    st_close(f);

    /* no metadata, no tensors: still a valid file */
    ck_assert_msg(st_write(path, NULL, 0, NULL, 0, err) == 0, "%s", err);
    f = st_open(path, err);
    ck_assert_msg(f, "%s", err);
    ck_assert_int_eq(st_count(f), 0);
    ck_assert_int_eq(st_meta_count(f), 0);
    st_close(f);
    for (int i = 0; i < N; i++)
        free(t[i].data);
}
END_TEST

/* A file truncated after st_open: its tensors read as they were (st_open
 * copied the file), never a crash (a mapping would raise SIGBUS here). */
START_TEST(test_st_truncated_after_open)
{
    enum { N = 4096 };
    float *a = malloc(N * sizeof *a), *back = malloc(N * sizeof *back);
    for (int i = 0; i < N; i++)
        a[i] = (float)rng_uniform(&rng);
    st_out_tensor o = { "w", ST_F32, 1, { N }, a, 0 };
    const char *path = pth("cut.safetensors");
    ck_assert_msg(st_write(path, &o, 1, NULL, 0, err) == 0, "%s", err);
    st_file *f = st_open(path, err);
    ck_assert_msg(f, "%s", err);
    ck_assert_int_eq(truncate(path, 0), 0);
    const st_tensor *t = st_find(f, "w");
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(st_read_f32(f, t, back, 0, err), 0);
    ck_assert(!memcmp(back, a, N * sizeof *a));
    st_close(f);
    /* and one that shrinks between the size check and the read is an error */
    ck_assert_msg(st_write(path, &o, 1, NULL, 0, err) == 0, "%s", err);
    int fd = open(path, O_RDONLY);
    ck_assert_int_ge(fd, 0);
    struct stat sb;
    ck_assert_int_eq(fstat(fd, &sb), 0);
    ck_assert_int_eq(truncate(path, 100), 0);
    void *buf = NULL;
    ck_assert_int_eq(st_read_fd(fd, path, (size_t)sb.st_size, &buf, err), -1);
    ck_assert_msg(strstr(err, "cut.safetensors") && strstr(err, "truncated"), "%s", err);
    ck_assert_ptr_null(buf);
    close(fd);
    free(a);
    free(back);
}
END_TEST

/* A random fp16 value from its fields, with its value computed by ldexp
 * (independently of the decoder's bit tricks). */
static uint16_t random_f16(double *val)
{
    uint16_t s = (uint16_t)rng_below(&rng, 2), e = (uint16_t)rng_below(&rng, 31),
             m = (uint16_t)rng_below(&rng, 1024);
    double v = e ? ldexp(1.0 + m / 1024.0, e - 15) : ldexp((double)m, -24);
    *val = s ? -v : v;
    return (uint16_t)(s << 15 | e << 10 | m);
}

START_TEST(test_st_float_conversions)
{
    int R = 45, Cc = 300; /* crosses the 32 x 256 tiles of the transposed read */
    size_t n = (size_t)R * Cc;
    float *f32 = malloc(n * 4), *w32 = malloc(n * 4), *w16 = malloc(n * 4), *wbf = malloc(n * 4),
          *w64 = malloc(n * 4), *got = malloc(n * 4);
    uint16_t *h16 = malloc(n * 2), *hbf = malloc(n * 2);
    double *f64 = malloc(n * 8);
    for (size_t i = 0; i < n; i++) {
        f32[i] = w32[i] = (float)(rng_normal(&rng) * 3);
        double v;
        h16[i] = random_f16(&v);
        w16[i] = (float)v;
        float x = (float)rng_normal(&rng);
        uint32_t bits;
        memcpy(&bits, &x, 4);
        hbf[i] = (uint16_t)(bits >> 16);
        /* (1.m) * 2^(e - 127), from the fields (normal values only) */
        if (!(hbf[i] & 0x7f80))
            hbf[i] = 0x3f80;
        wbf[i] = (float)ldexp((double)(0x80 | (hbf[i] & 0x7f)), ((hbf[i] >> 7) & 0xff) - 127 - 7);
        if (hbf[i] & 0x8000)
            wbf[i] = -wbf[i];
        f64[i] = rng_normal(&rng) * 1e3;
        w64[i] = (float)f64[i];
    }
    h16[0] = 0x7c00;        /* +inf */
    w16[0] = INFINITY;
    h16[1] = 0x8001;        /* smallest negative subnormal */
    w16[1] = (float)-ldexp(1, -24);
    st_out_tensor o[4] = {
        { .name = "f32", .dtype = ST_F32, .ndim = 2, .shape = { R, Cc }, .data = f32 },
        { .name = "f16", .dtype = ST_F16, .ndim = 2, .shape = { R, Cc }, .data = h16 },
        { .name = "bf16", .dtype = ST_BF16, .ndim = 2, .shape = { R, Cc }, .data = hbf },
        { .name = "f64", .dtype = ST_F64, .ndim = 2, .shape = { R, Cc }, .data = f64 },
    };
    float *want[4] = { w32, w16, wbf, w64 };
    const char *path = pth("f.safetensors");
    ck_assert_msg(st_write(path, o, 4, NULL, 0, err) == 0, "%s", err);
    st_file *f = st_open(path, err);
    ck_assert_msg(f, "%s", err);
    for (int k = 0; k < 4; k++) {
        const st_tensor *t = st_find(f, o[k].name);
        ck_assert_int_eq(st_read_f32(f, t, got, 0, err), 0);
        for (size_t i = 0; i < n; i++)
            ck_assert_msg(got[i] == want[k][i], "%s[%zu]: %g != %g", o[k].name, i, got[i], want[k][i]);
        ck_assert_int_eq(st_read_f32(f, t, got, 1, err), 0);
        for (int i = 0; i < R; i++)
            for (int j = 0; j < Cc; j++)
                ck_assert(got[(size_t)j * R + i] == want[k][(size_t)i * Cc + j]);
    }
    st_close(f);

    /* an integer tensor is refused by name */
    int32_t iv[3] = { 1, 2, 3 };
    st_out_tensor oi = { .name = "ids", .dtype = ST_I32, .ndim = 1, .shape = { 3 }, .data = iv };
    ck_assert_int_eq(st_write(path, &oi, 1, NULL, 0, err), 0);
    f = st_open(path, err);
    ck_assert_int_eq(st_read_f32(f, st_find(f, "ids"), got, 0, err), -1);
    ck_err(path, "'ids'", "I32");
    st_close(f);

    /* the writer's transpose: file[i][j] = data[j][i] */
    o[0].transpose = 1;
    o[0].shape[0] = Cc;
    o[0].shape[1] = R;
    o[1].transpose = 1;
    o[1].shape[0] = Cc;
    o[1].shape[1] = R;
    ck_assert_msg(st_write(path, o, 2, NULL, 0, err) == 0, "%s", err);
    f = st_open(path, err);
    const st_tensor *t = st_find(f, "f32");
    ck_assert_int_eq(t->shape[0], Cc);
    const float *d = st_data(f, t);
    for (int i = 0; i < Cc; i++)
        for (int j = 0; j < R; j++)
            ck_assert(d[(size_t)i * R + j] == f32[(size_t)j * Cc + i]);
    const uint16_t *h = st_data(f, st_find(f, "f16"));
    for (int i = 0; i < Cc; i++)
        for (int j = 0; j < R; j++)
            ck_assert(h[(size_t)i * R + j] == h16[(size_t)j * Cc + i]);
    st_close(f);
    free(f32); free(w32); free(w16); free(wbf); free(w64); free(got);
    free(h16); free(hbf); free(f64);
}
END_TEST

/* A raw file: header length, header text (unpadded), ndata random bytes. */
static void write_raw(const char *path, uint64_t hl, const char *hdr, size_t ndata)
{
    size_t n = strlen(hdr);
    unsigned char *b = malloc(8 + n + ndata);
    memcpy(b, &hl, 8);
    memcpy(b + 8, hdr, n);
    for (size_t i = 0; i < ndata; i++)
        b[8 + n + i] = (unsigned char)rng_next(&rng);
    write_bytes(path, b, 8 + n + ndata);
    free(b);
}

static void expect_bad(const char *hdr, size_t ndata, const char *f1, const char *f2)
{
    const char *path = pth("bad.safetensors");
    write_raw(path, strlen(hdr), hdr, ndata);
    st_file *f = st_open(path, err);
    ck_assert_msg(!f, "accepted %s", hdr);
    ck_err(path, f1);
    if (f2)
        ck_err(f2);
}

START_TEST(test_st_bad_files)
{
#define T(name, dt, shape, a, b) "\"" name "\":{\"dtype\":\"" dt "\",\"shape\":" shape \
                                 ",\"data_offsets\":[" #a "," #b "]}"
    expect_bad("{" T("a", "F32", "[2,2]", 0, 16) "}", 15, "'a' extends past end of file", NULL);
    expect_bad("{" T("a", "F32", "[2,2]", 0, 16) "," T("b", "F32", "[2]", 8, 16) "}", 16,
               "overlaps", "'a'");
    expect_bad("{" T("a", "F33", "[2,2]", 0, 16) "}", 16, "'a'", "unknown dtype 'F33'");
    expect_bad("{" T("a", "F32", "[2,3]", 0, 16) "}", 24, "'a'", "[2, 3]");
    expect_bad("{" T("a", "F32", "[2,2]", 16, 0) "}", 24, "'a'", "data_offsets");
    expect_bad("{" T("a", "F32", "[2,-2]", 0, 16) "}", 24, "'a'", "shape");
    expect_bad("{" T("a", "F32", "[2.5]", 0, 16) "}", 24, "'a'", "shape");
    expect_bad("{" T("a", "F32", "[4]", 0, 16) "," T("a", "F32", "[4]", 16, 32) "}", 32,
               "duplicate tensor 'a'", NULL);
    expect_bad("{" T("a", "F32", "[1,1,1,1,1,1,1,1,1]", 0, 4) "}", 4, "dimensions", NULL);
    expect_bad("{" T("a", "F32", "[4294967296,4294967296,4294967296]", 0, 4) "}", 4,
               "too large", NULL);
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "'a'", "data_offsets");
    expect_bad("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "'a'", "dtype");
    expect_bad("{\"a\":[1]}", 4, "'a'", NULL);
    expect_bad("{\"__metadata__\":{\"k\":1}}", 0, "__metadata__", "'k'");
    expect_bad("{\"__metadata__\":[]}", 0, "__metadata__", NULL);
    expect_bad("{\"a\":", 8, "line 1", NULL);
    expect_bad("[1, 2]", 8, "not a JSON object", NULL);
    expect_bad("{} x", 8, "line 1", NULL);

    const char *path = pth("bad.safetensors");
    /* header length beyond the file, and absurdly large */
    write_raw(path, 4096, "{}", 16);
    ck_assert_ptr_null(st_open(path, err));
    ck_err(path, "header length 4096 extends past end of file");
    write_raw(path, (uint64_t)1 << 62, "{}", 16);
    ck_assert_ptr_null(st_open(path, err));
    ck_err(path, "too large");
    write_bytes(path, "\x02\0\0", 3);
    ck_assert_ptr_null(st_open(path, err));
    ck_err(path, "too short");
    ck_assert_ptr_null(st_open(pth("nope.safetensors"), err));
    ck_err(pth("nope.safetensors"), "cannot open");

    /* every truncation of a good file is refused */
    tt t[3];
    st_out_tensor o[3];
    for (int i = 0; i < 3; i++) {
        char name[16];
        snprintf(name, sizeof(name), "t%d", i);
        random_tensor(&t[i], name, ST_F32, 2, (const int64_t[]){ 3, 3 });
        o[i] = out_of(&t[i]);
    }
    const char *good = pth("good.safetensors");
    ck_assert_msg(st_write(good, o, 3, NULL, 0, err) == 0, "%s", err);
    size_t n;
    unsigned char *b = read_bytes(good, &n);
    for (size_t cut = 0; cut < n; cut += 1 + cut / 16) {
        write_bytes(path, b, cut);
        st_file *f = st_open(path, err);
        ck_assert_msg(!f, "truncation to %zu bytes accepted", cut);
        ck_err(path);
    }
    write_bytes(path, b, n - 1);
    ck_assert_ptr_null(st_open(path, err));
    ck_err(path, "tensor 't2' extends past end of file");
    free(b);
    for (int i = 0; i < 3; i++)
        free(t[i].data);
#undef T
}
END_TEST

START_TEST(test_st_mutations)
{
    tt t[4];
    st_out_tensor o[4];
    static const st_dtype dts[] = { ST_F32, ST_F16, ST_BF16, ST_F64 };
    for (int i = 0; i < 4; i++) {
        char name[16];
        snprintf(name, sizeof(name), "w%d", i);
        random_tensor(&t[i], name, dts[i], 2, NULL);
        o[i] = out_of(&t[i]);
    }
    const char *good = pth("good.safetensors"), *path = pth("m.safetensors");
    const char *meta[2] = { "format", "pt" };
    ck_assert_msg(st_write(good, o, 4, meta, 1, err) == 0, "%s", err);
    size_t n;
    unsigned char *b = read_bytes(good, &n), *m = malloc(n);
    float *buf = malloc(n * 4 + 4);
    uint64_t hl;
    memcpy(&hl, b, 8);
    static const char alphabet[] = "0123456789[],:{}\"FBI -e";
    int opened = 0;
    for (int it = 0; it < 600; it++) {
        memcpy(m, b, n);
        size_t len = n;
        for (int e = 0; e < 1 + (int)rng_below(&rng, 3); e++) {
            size_t at = rng_below(&rng, 8 + hl);
            if (at < 8)
                m[at] = (unsigned char)rng_next(&rng);
            else
                m[at] = (unsigned char)alphabet[rng_below(&rng, sizeof(alphabet) - 1)];
        }
        if (rng_below(&rng, 4) == 0)
            len -= rng_below(&rng, len);
        write_bytes(path, m, len);
        st_file *f = st_open(path, err);
        if (!f) {
            ck_err(path);
            continue;
        }
        opened++;
        /* whatever was accepted lies inside the file: read all of it */
        for (int i = 0; i < st_count(f); i++) {
            const st_tensor *s = st_at(f, i);
            ck_assert(s->end - s->begin <= len);
            if (s->dtype == ST_F32 || s->dtype == ST_F16 || s->dtype == ST_BF16 || s->dtype == ST_F64)
                ck_assert_int_eq(st_read_f32(f, s, buf, 0, err), 0);
        }
        st_close(f);
    }
    ck_assert_int_gt(opened, 0);
    free(b);
    free(m);
    free(buf);
    for (int i = 0; i < 4; i++)
        free(t[i].data);
}
END_TEST

/* Lists the folder's entries; returns how many there are. */
static int count_entries(const char *d)
{
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "ls -A '%s' | wc -l", d);
    FILE *p = popen(cmd, "r");
    int n = -1;
    ck_assert_int_eq(fscanf(p, "%d", &n), 1);
    pclose(p);
    return n;
}

START_TEST(test_st_failed_write_keeps_file)
{
    tt t;
    random_tensor(&t, "w", ST_F32, 2, (const int64_t[]){ 64, 256 });
    st_out_tensor o = out_of(&t);
    const char *path = pth("keep.safetensors");
    ck_assert_msg(st_write(path, &o, 1, NULL, 0, err) == 0, "%s", err);
    size_t n0;
    unsigned char *before = read_bytes(path, &n0);

    /* A file-size limit makes the write fail half-way, even for root. */
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit rl = { .rlim_cur = 10000, .rlim_max = RLIM_INFINITY };
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &rl), 0);
    for (size_t i = 0; i < t.bytes; i++)
        t.data[i] ^= 0x5a;
    ck_assert_int_eq(st_write(path, &o, 1, NULL, 0, err), -1);
    ck_err(path, "write failed");
    rl.rlim_cur = RLIM_INFINITY;
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &rl), 0);
    size_t n1;
    unsigned char *after = read_bytes(path, &n1);
    ck_assert_uint_eq(n0, n1);
    ck_assert(!memcmp(before, after, n0));
    ck_assert_int_eq(count_entries(dir), 1); /* no temporary file left */
    free(after);

    /* a folder that does not exist */
    const char *nf = pth("no/such/x.safetensors");
    ck_assert_int_eq(st_write(nf, &o, 1, NULL, 0, err), -1);
    ck_err(nf, "cannot create");

    /* a folder where the file cannot be created (a file is in the way) */
    ck_assert_int_eq(st_write(pth("keep.safetensors/x"), &o, 1, NULL, 0, err), -1);
    ck_err("keep.safetensors/x");
    free(before);
    free(t.data);
}
END_TEST

/* ================= our checkpoints ================= */

static const gpt2_config tiny = { .V = 300, .maxT = 64, .L = 2, .NH = 4, .C = 32 };

static float *random_floats(size_t n)
{
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        p[i] = (float)rng_normal(&rng) * (1 + (float)rng_below(&rng, 3));
    return p;
}

static float *poisoned(size_t n)
{
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        p[i] = NAN;
    return p;
}

START_TEST(test_ckpt_roundtrip)
{
    param_view *v;
    int nv;
    size_t n = gpt2_layout(&tiny, &v, &nv);
    float *p = random_floats(n), *m = random_floats(n), *s = random_floats(n);
    for (size_t i = 0; i < n; i++)
        s[i] = fabsf(s[i]);
    ckpt_meta md = { 0 };
    ckpt_meta_set(&md, "family", "gpt2");
    ckpt_meta_set(&md, "step", "%d", 17);
    ckpt_meta_set(&md, "step", "%d", 1234);
    ckpt_meta_set(&md, "rng", "%llu", (unsigned long long)rng_next(&rng));
    ckpt_meta_set(&md, "note", "a \"quoted\" \\ value");
    ckpt_meta_set(&md, "format", "mine"); /* cannot override the file's own */
    ck_assert_int_eq(md.n, 5);
    ck_assert_str_eq(ckpt_meta_get(&md, "step"), "1234");
    ck_assert_ptr_null(ckpt_meta_get(&md, "absent"));

    const char *path = pth("full.ckpt");
    ck_assert_msg(ckpt_save(path, v, nv, n, p, m, s, &md, err) == 0, "%s", err);
    float *p2 = poisoned(n), *m2 = poisoned(n), *s2 = poisoned(n);
    int has = -1;
    ck_assert_msg(ckpt_load(path, v, nv, n, p2, m2, s2, &has, err) == 0, "%s", err);
    ck_assert_int_eq(has, 1);
    ck_assert(!memcmp(p, p2, n * 4));
    ck_assert(!memcmp(m, m2, n * 4));
    ck_assert(!memcmp(s, s2, n * 4));

    ckpt_meta back;
    ck_assert_msg(ckpt_read_meta(path, &back, err) == 0, "%s", err);
    ck_assert_str_eq(ckpt_meta_get(&back, "format"), "anatomy-ckpt");
    ck_assert_str_eq(ckpt_meta_get(&back, "version"), "1");
    for (int i = 0; i < md.n; i++)
        if (strcmp(md.key[i], "format"))
            ck_assert_str_eq(ckpt_meta_get(&back, md.key[i]), md.val[i]);
    ckpt_meta_free(&back);

    /* no limit on the number of entries or their length (there was one of
     * 64 entries of 255 characters, past which entries were dropped) */
    int many = 200 + (int)rng_below(&rng, 100);
    for (int i = 0; i < many; i++) {
        char key[96];
        snprintf(key, sizeof key, "extra.%d.%0*d", i, (int)rng_below(&rng, 70), i);
        ckpt_meta_set(&md, key, "%0*d|%s", (int)rng_below(&rng, 2000), i, key);
    }
    ck_assert_int_eq(md.n, 5 + many);
    ck_assert_msg(ckpt_save(path, v, nv, n, p, m, s, &md, err) == 0, "%s", err);
    ck_assert_msg(ckpt_read_meta(path, &back, err) == 0, "%s", err);
    ck_assert_int_eq(back.n, 2 + 4 + many); /* format, version, and ours but "format" */
    for (int i = 0; i < md.n; i++)
        if (strcmp(md.key[i], "format"))
            ck_assert_str_eq(ckpt_meta_get(&back, md.key[i]), md.val[i]);
    ckpt_meta_free(&back);
    ckpt_meta_free(&md);
    ck_assert_int_eq(md.n, 0);

    /* weights only from a full checkpoint */
    float *p3 = poisoned(n);
    ck_assert_msg(ckpt_load(path, v, nv, n, p3, NULL, NULL, NULL, err) == 0, "%s", err);
    ck_assert(!memcmp(p, p3, n * 4));

    /* a weights-only checkpoint */
    const char *wpath = pth("weights.ckpt");
    for (size_t i = 0; i < n; i++)
        p[i] = (float)rng_normal(&rng);
    ck_assert_msg(ckpt_save(wpath, v, nv, n, p, NULL, NULL, NULL, err) == 0, "%s", err);
    float *m4 = poisoned(n), *s4 = poisoned(n);
    has = -1;
    ck_assert_msg(ckpt_load(wpath, v, nv, n, p3, m4, s4, &has, err) == 0, "%s", err);
    ck_assert_int_eq(has, 0);
    ck_assert(!memcmp(p, p3, n * 4));
    ck_assert(isnan(m4[0]) && isnan(s4[n - 1])); /* untouched */

    /* it is a plain safetensors file too */
    st_file *f = st_open(path, err);
    ck_assert_int_eq(st_count(f), 3 * nv);
    ck_assert_ptr_nonnull(st_find(f, "adamw.v.h.1.mlp.c_proj.weight"));
    st_close(f);

    ck_assert_int_eq(ckpt_save(path, v, nv, n, p, m, NULL, NULL, err), -1);
    free(p); free(m); free(s); free(p2); free(m2); free(s2); free(p3); free(m4); free(s4);
    free(v);
}
END_TEST

START_TEST(test_ckpt_wrong_model)
{
    param_view *v, *v2;
    int nv, nv2;
    size_t n = gpt2_layout(&tiny, &v, &nv);
    float *p = random_floats(n);
    const char *path = pth("c.ckpt");
    ck_assert_msg(ckpt_save(path, v, nv, n, p, NULL, NULL, NULL, err) == 0, "%s", err);

    /* another width: the first tensor already differs */
    gpt2_config c = tiny;
    c.C = 48;
    size_t n2 = gpt2_layout(&c, &v2, &nv2);
    float *q = malloc(n2 * 4);
    ck_assert_int_eq(ckpt_load(path, v2, nv2, n2, q, NULL, NULL, NULL, err), -1);
    ck_err(path, "'wte.weight'", "[384, 32]", "[384, 48]");
    free(v2);
    free(q);

    /* fewer layers: the file has tensors the model lacks */
    c = tiny;
    c.L = 1;
    n2 = gpt2_layout(&c, &v2, &nv2);
    q = malloc(n2 * 4);
    ck_assert_int_eq(ckpt_load(path, v2, nv2, n2, q, NULL, NULL, NULL, err), -1);
    ck_err(path, "'h.1.", "not part of this model");
    free(v2);
    free(q);

    /* more layers: a tensor is missing */
    c.L = 3;
    n2 = gpt2_layout(&c, &v2, &nv2);
    q = malloc(n2 * 4);
    ck_assert_int_eq(ckpt_load(path, v2, nv2, n2, q, NULL, NULL, NULL, err), -1);
    ck_err(path, "'h.2.ln_1.weight' missing");
    free(v2);
    free(q);

    /* a moment missing from a file that has the others */
    float *m = random_floats(n);
    ck_assert_msg(ckpt_save(path, v, nv, n, p, m, m, NULL, err) == 0, "%s", err);
    st_file *f = st_open(path, err);
    int cnt = st_count(f), k = 0;
    st_out_tensor *o = calloc((size_t)cnt, sizeof(*o));
    const char **meta = calloc(2 * (size_t)st_meta_count(f), sizeof(*meta));
    for (int i = 0; i < st_meta_count(f); i++)
        st_meta_at(f, i, &meta[2 * i], &meta[2 * i + 1]);
    for (int i = 0; i < cnt; i++) {
        const st_tensor *t = st_at(f, i);
        if (!strcmp(t->name, "adamw.v.h.0.ln_2.bias"))
            continue;
        o[k] = (st_out_tensor){ .name = t->name, .dtype = t->dtype, .ndim = t->ndim,
                                .data = st_data(f, t) };
        memcpy(o[k].shape, t->shape, sizeof(o[k].shape));
        k++;
    }
    const char *p2 = pth("c2.ckpt");
    ck_assert_msg(st_write(p2, o, k, meta, st_meta_count(f), err) == 0, "%s", err);
    q = malloc(n * 4);
    float *qm = malloc(n * 4), *qv = malloc(n * 4);
    ck_assert_int_eq(ckpt_load(p2, v, nv, n, q, qm, qv, NULL, err), -1);
    ck_err(p2, "'adamw.v.h.0.ln_2.bias' missing");

    /* a parameter of the wrong dtype */
    uint16_t bf[32] = { 0 };
    for (int i = 0; i < k; i++)
        if (!strcmp(o[i].name, "ln_f.bias")) {
            o[i].dtype = ST_BF16;
            o[i].data = bf;
        }
    ck_assert_msg(st_write(p2, o, k, meta, st_meta_count(f), err) == 0, "%s", err);
    ck_assert_int_eq(ckpt_load(p2, v, nv, n, q, NULL, NULL, NULL, err), -1);
    ck_err(p2, "'ln_f.bias'", "BF16");

    /* not one of ours / another version */
    const char *pm[4] = { "format", "pt", "version", "1" };
    ck_assert_int_eq(st_write(p2, o, k, pm, 2, err), 0);
    ck_assert_int_eq(ckpt_load(p2, v, nv, n, q, NULL, NULL, NULL, err), -1);
    ck_err(p2, "not an anatomy checkpoint");
    ck_assert_int_eq(ckpt_read_meta(p2, &(ckpt_meta){ 0 }, err), -1);
    ck_err(p2, "not an anatomy checkpoint");
    pm[1] = "anatomy-ckpt";
    pm[3] = "2";
    ck_assert_int_eq(st_write(p2, o, k, pm, 2, err), 0);
    ck_assert_int_eq(ckpt_load(p2, v, nv, n, q, NULL, NULL, NULL, err), -1);
    ck_err(p2, "version '2'");
    ck_assert_int_eq(ckpt_load(pth("none.ckpt"), v, nv, n, q, NULL, NULL, NULL, err), -1);
    ck_err(pth("none.ckpt"));
    st_close(f);
    free(o); free(meta); free(q); free(qm); free(qv); free(m); free(p); free(v);
}
END_TEST

START_TEST(test_ckpt_failed_save_keeps_file)
{
    param_view *v;
    int nv;
    size_t n = gpt2_layout(&tiny, &v, &nv);
    float *p = random_floats(n), *q = poisoned(n);
    const char *path = pth("k.ckpt");
    ck_assert_msg(ckpt_save(path, v, nv, n, p, NULL, NULL, NULL, err) == 0, "%s", err);
    float *p2 = random_floats(n);
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit rl = { .rlim_cur = 20000, .rlim_max = RLIM_INFINITY };
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &rl), 0);
    ck_assert_int_eq(ckpt_save(path, v, nv, n, p2, p2, p2, NULL, err), -1);
    ck_err(path);
    rl.rlim_cur = RLIM_INFINITY;
    setrlimit(RLIMIT_FSIZE, &rl);
    ck_assert_msg(ckpt_load(path, v, nv, n, q, NULL, NULL, NULL, err) == 0, "%s", err);
    ck_assert(!memcmp(p, q, n * 4));
    ck_assert_int_eq(count_entries(dir), 1);
    ck_assert_int_eq(ckpt_save(pth("missing/k.ckpt"), v, nv, n, p, NULL, NULL, NULL, err), -1);
    ck_err(pth("missing/k.ckpt"));
    free(p); free(p2); free(q); free(v);
}
END_TEST

/* ================= Hugging Face ================= */

/* Random GPT-2 parameters with the padded vocabulary rows zero. */
static float *random_gpt2(const gpt2_config *c, size_t *n)
{
    param_view *v;
    int nv;
    *n = gpt2_layout(c, &v, &nv);
    float *p = random_floats(*n);
    memset(p + (size_t)c->V * c->C, 0,
           (size_t)(gpt2_padded_vocab(c->V) - c->V) * c->C * sizeof(float));
    free(v);
    return p;
}

static void write_text(const char *path, const char *s)
{
    write_bytes(path, s, strlen(s));
}

START_TEST(test_hf_roundtrip)
{
    size_t n;
    float *p = random_gpt2(&tiny, &n);
    const char *d = pth("hf/sub");
    ck_assert_msg(hf_gpt2_export(d, &tiny, p, err) == 0, "%s", err);

    /* the files say what HF expects */
    char path[300];
    snprintf(path, sizeof(path), "%s/config.json", d);
    json_doc *doc = json_parse_file(path, 0, err);
    ck_assert_msg(doc, "%s", err);
    const json_value *r = json_root(doc);
    int64_t x;
    ck_assert_str_eq(json_str(json_get(r, "model_type")), "gpt2");
    ck_assert_str_eq(json_str(json_at(json_get(r, "architectures"), 0)), "GPT2LMHeadModel");
    ck_assert_str_eq(json_str(json_get(r, "activation_function")), "gelu_new");
    struct { const char *k; int v; } want[] = {
        { "vocab_size", 300 }, { "n_positions", 64 }, { "n_ctx", 64 }, { "n_embd", 32 },
        { "n_layer", 2 }, { "n_head", 4 }, { "eos_token_id", 299 }, { "bos_token_id", 299 } };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        ck_assert_msg(json_int(json_get(r, want[i].k), 0, 1 << 30, &x) == 0, "%s", want[i].k);
        ck_assert_int_eq(x, want[i].v);
    }
    json_free(doc);

    snprintf(path, sizeof(path), "%s/model.safetensors", d);
    st_file *f = st_open(path, err);
    ck_assert_msg(f, "%s", err);
    ck_assert_str_eq(st_meta(f, "format"), "pt");
    const st_tensor *t = st_find(f, "wte.weight");
    ck_assert_int_eq(t->shape[0], 300);
    ck_assert(!memcmp(st_data(f, t), p, 300 * 32 * 4));
    param_view *v;
    int nv;
    gpt2_layout(&tiny, &v, &nv);
    const param_view *qv = NULL;
    for (int i = 0; i < nv; i++)
        if (!strcmp(v[i].name, "h.1.attn.c_attn.weight"))
            qv = &v[i];
    t = st_find(f, "h.1.attn.c_attn.weight");
    ck_assert_int_eq(t->shape[0], 32);
    ck_assert_int_eq(t->shape[1], 96);
    const float *w = st_data(f, t);
    for (int i = 0; i < 32; i++)
        for (int j = 0; j < 96; j++)
            ck_assert(w[i * 96 + j] == p[qv->offset + (size_t)j * 32 + i]);
    for (int i = 0; i < st_count(f); i++)
        ck_assert(strncmp(st_at(f, i)->name, "transformer.", 12));
    ck_assert_int_eq(st_count(f), nv);
    st_close(f);

    gpt2_config c;
    float *q = NULL;
    ck_assert_msg(hf_gpt2_import(d, &c, &q, err) == 0, "%s", err);
    ck_assert(!memcmp(&c, &tiny, sizeof(c)));
    ck_assert(!memcmp(p, q, n * 4));
    free(q);

    /* exporting again over the same folder replaces both files */
    for (size_t i = 0; i < (size_t)300 * 32; i++)
        p[i] = (float)rng_normal(&rng);
    ck_assert_msg(hf_gpt2_export(d, &tiny, p, err) == 0, "%s", err);
    ck_assert_msg(hf_gpt2_import(d, &c, &q, err) == 0, "%s", err);
    ck_assert(!memcmp(p, q, n * 4));
    free(q);
    free(p);
    free(v);
}
END_TEST

/* Rewrites an exported model.safetensors the way other tools write them:
 * with a prefix, as dtype dt (F32 or BF16 by truncation), plus HF buffers
 * and a tied lm_head (changed when head_differs). */
static void rewrite_hf(const char *src_dir, const char *dst_dir, const char *prefix,
                       st_dtype dt, int head_differs)
{
    char path[300];
    snprintf(path, sizeof(path), "%s/model.safetensors", src_dir);
    st_file *f = st_open(path, err);
    ck_assert_msg(f, "%s", err);
    int n = st_count(f), k = 0;
    st_out_tensor *o = calloc((size_t)n + 8, sizeof(*o));
    char (*names)[96] = calloc((size_t)n + 8, sizeof(*names));
    void **bufs = calloc((size_t)n + 8, sizeof(void *));
    const void *wte = NULL;
    size_t wte_bytes = 0;
    for (int i = n - 1; i >= 0; i--, k++) { /* reversed order, too */
        const st_tensor *t = st_at(f, i);
        snprintf(names[k], sizeof(names[0]), "%s%s", prefix, t->name);
        o[k] = (st_out_tensor){ .name = names[k], .dtype = dt, .ndim = t->ndim };
        memcpy(o[k].shape, t->shape, sizeof(o[k].shape));
        const float *src = st_data(f, t);
        if (dt == ST_BF16) {
            uint16_t *h = malloc(t->numel * 2 + 2);
            for (uint64_t e = 0; e < t->numel; e++) {
                uint32_t bits;
                memcpy(&bits, &src[e], 4);
                h[e] = (uint16_t)(bits >> 16);
            }
            bufs[k] = h;
        } else {
            bufs[k] = malloc(t->numel * 4 + 4);
            memcpy(bufs[k], src, t->numel * 4);
        }
        o[k].data = bufs[k];
        if (!strcmp(t->name, "wte.weight")) {
            wte = bufs[k];
            wte_bytes = t->numel * st_dtype_size(dt);
        }
    }
    float *mask = malloc(64 * 64 * sizeof(float));
    for (int i = 0; i < 64 * 64; i++)
        mask[i] = (float)(i % 64 <= i / 64); /* causal mask */
    for (int l = 0; l < tiny.L; l++, k++) {
        snprintf(names[k], sizeof(names[0]), "%sh.%d.attn.bias", prefix, l);
        o[k] = (st_out_tensor){ .name = names[k], .dtype = ST_F32, .ndim = 4,
                                .shape = { 1, 1, 64, 64 }, .data = mask };
    }
    static float masked = -1e4f;
    snprintf(names[k], sizeof(names[0]), "%sh.0.attn.masked_bias", prefix);
    o[k] = (st_out_tensor){ .name = names[k], .dtype = ST_F32, .ndim = 0, .data = &masked };
    k++;
    void *head = malloc(wte_bytes);
    memcpy(head, wte, wte_bytes);
    if (head_differs)
        ((unsigned char *)head)[wte_bytes / 2] ^= 1;
    o[k++] = (st_out_tensor){ .name = "lm_head.weight", .dtype = dt, .ndim = 2,
                              .shape = { tiny.V, tiny.C }, .data = head };
    st_mkdirs(dst_dir, err);
    snprintf(path, sizeof(path), "%s/model.safetensors", dst_dir);
    ck_assert_msg(st_write(path, o, k, NULL, 0, err) == 0, "%s", err);
    char c1[300], c2[300];
    snprintf(c1, sizeof(c1), "%s/config.json", src_dir);
    snprintf(c2, sizeof(c2), "%s/config.json", dst_dir);
    size_t cn;
    void *cfg = read_bytes(c1, &cn);
    write_bytes(c2, cfg, cn);
    free(cfg);
    for (int i = 0; i < n; i++)
        free(bufs[i]);
    free(bufs); free(names); free(o); free(mask); free(head);
    st_close(f);
}

START_TEST(test_hf_variants)
{
    size_t n;
    float *p = random_gpt2(&tiny, &n);
    const char *d = pth("hf");
    ck_assert_msg(hf_gpt2_export(d, &tiny, p, err) == 0, "%s", err);
    gpt2_config c;
    float *q;

    const char *d2 = pth("hf_prefixed");
    rewrite_hf(d, d2, "transformer.", ST_F32, 0);
    ck_assert_msg(hf_gpt2_import(d2, &c, &q, err) == 0, "%s", err);
    ck_assert(!memcmp(p, q, n * 4));
    free(q);

    const char *d3 = pth("hf_bf16");
    rewrite_hf(d, d3, "", ST_BF16, 0);
    ck_assert_msg(hf_gpt2_import(d3, &c, &q, err) == 0, "%s", err);
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &p[i], 4);
        bits &= 0xffff0000u;
        float want;
        memcpy(&want, &bits, 4);
        ck_assert_msg(q[i] == want, "element %zu: %g != %g", i, q[i], want);
    }
    free(q);

    const char *d4 = pth("hf_untied");
    rewrite_hf(d, d4, "transformer.", ST_F32, 1);
    ck_assert_int_eq(hf_gpt2_import(d4, &c, &q, err), -1);
    ck_err(d4, "lm_head.weight", "differs");
    ck_assert_ptr_null(q);
    free(p);
}
END_TEST

START_TEST(test_hf_bad_input)
{
    size_t n;
    float *p = random_gpt2(&tiny, &n);
    const char *d = pth("hf");
    ck_assert_msg(hf_gpt2_export(d, &tiny, p, err) == 0, "%s", err);
    gpt2_config c;
    float *q = NULL;
    char cfgp[300], stp[300];
    snprintf(cfgp, sizeof(cfgp), "%s/config.json", d);
    snprintf(stp, sizeof(stp), "%s/model.safetensors", d);
    size_t cn;
    char *good_cfg = read_bytes(cfgp, &cn);
    good_cfg[cn] = 0;

    /* configs */
    static const struct { const char *json, *frag; } cfgs[] = {
        { "{\"vocab_size\":300,\"n_positions\":64,\"n_embd\":32,\"n_layer\":2,\"n_head\":5}", "n_head (5) does not divide n_embd (32)" },
        { "{\"vocab_size\":300,\"n_positions\":64,\"n_embd\":32,\"n_layer\":2}", "'n_head'" },
        { "{\"vocab_size\":300,\"n_positions\":64,\"n_embd\":32,\"n_layer\":-2,\"n_head\":4}", "'n_layer'" },
        { "{\"vocab_size\":300,\"n_positions\":64,\"n_embd\":32,\"n_layer\":2,\"n_head\":4,\"activation_function\":\"relu\"}", "activation_function 'relu'" },
        { "{\"vocab_size\":300,\"n_positions\":64,\"n_embd\":32,\"n_layer\":2,\"n_head\":4,\"model_type\":\"gpt_neo\"}", "model_type" },
        { "{\"vocab_size\":300,\"n_positions\":64,\"n_embd\":32,\"n_layer\":2,\"n_head\":4,\"tie_word_embeddings\":false}", "untied" },
        { "{\"vocab_size\":300,\"n_positions\":64,\"n_embd\":32,\"n_layer\":2,\"n_head\":4,\"n_inner\":100}", "n_inner" },
        { "{\"vocab_size\":300,\"n_positions\":64,\"n_embd\":32,\"n_layer\":2,\"n_head\":4", "line 1" },
        { "[]", "not a JSON object" },
    };
    for (size_t i = 0; i < sizeof(cfgs) / sizeof(cfgs[0]); i++) {
        write_text(cfgp, cfgs[i].json);
        ck_assert_int_eq(hf_gpt2_import(d, &c, &q, err), -1);
        ck_err(cfgp, cfgs[i].frag);
        ck_assert_ptr_null(q);
    }
    /* other keys are tolerated, n_ctx stands in for n_positions */
    write_text(cfgp, "{\"vocab_size\":300,\"n_ctx\":64,\"n_embd\":32,\"n_layer\":2,\"n_head\":4,"
                     "\"activation_function\":\"gelu_new\",\"task_specific_params\":{\"x\":[1]},"
                     "\"n_inner\":null,\"layer_norm_epsilon\":1e-05}");
    ck_assert_msg(hf_gpt2_import(d, &c, &q, err) == 0, "%s", err);
    ck_assert(!memcmp(p, q, n * 4));
    free(q);
    q = NULL;

    /* a config for another width than the tensors */
    write_text(cfgp, "{\"vocab_size\":300,\"n_positions\":64,\"n_embd\":48,\"n_layer\":2,\"n_head\":4}");
    ck_assert_int_eq(hf_gpt2_import(d, &c, &q, err), -1);
    ck_err(stp, "'wte.weight'", "[300, 32]", "[300, 48]");
    /* more positions than the file has */
    write_text(cfgp, "{\"vocab_size\":300,\"n_positions\":128,\"n_embd\":32,\"n_layer\":2,\"n_head\":4}");
    ck_assert_int_eq(hf_gpt2_import(d, &c, &q, err), -1);
    ck_err(stp, "'wpe.weight'");
    /* fewer layers than the file has */
    write_text(cfgp, "{\"vocab_size\":300,\"n_positions\":64,\"n_embd\":32,\"n_layer\":1,\"n_head\":4}");
    ck_assert_int_eq(hf_gpt2_import(d, &c, &q, err), -1);
    ck_err(stp, "unexpected tensor 'h.1.");
    /* more layers than the file has */
    write_text(cfgp, "{\"vocab_size\":300,\"n_positions\":64,\"n_embd\":32,\"n_layer\":3,\"n_head\":4}");
    ck_assert_int_eq(hf_gpt2_import(d, &c, &q, err), -1);
    ck_err(stp, "'h.2.ln_1.weight' missing");
    ck_assert_ptr_null(q);
    write_text(cfgp, good_cfg);

    /* a transposed weight stored the other way round */
    st_file *f = st_open(stp, err);
    int cnt = st_count(f);
    st_out_tensor *o = calloc((size_t)cnt, sizeof(*o));
    for (int i = 0; i < cnt; i++) {
        const st_tensor *t = st_at(f, i);
        o[i] = (st_out_tensor){ .name = t->name, .dtype = t->dtype, .ndim = t->ndim,
                                .data = st_data(f, t) };
        memcpy(o[i].shape, t->shape, sizeof(o[i].shape));
        if (!strcmp(t->name, "h.0.mlp.c_fc.weight")) {
            o[i].shape[0] = t->shape[1];
            o[i].shape[1] = t->shape[0];
        }
    }
    const char *d2 = pth("hf2");
    char stp2[300], cfgp2[300];
    snprintf(stp2, sizeof(stp2), "%s/model.safetensors", d2);
    snprintf(cfgp2, sizeof(cfgp2), "%s/config.json", d2);
    st_mkdirs(d2, err);
    write_text(cfgp2, good_cfg);
    ck_assert_int_eq(st_write(stp2, o, cnt, NULL, 0, err), 0);
    ck_assert_int_eq(hf_gpt2_import(d2, &c, &q, err), -1);
    ck_err(stp2, "'h.0.mlp.c_fc.weight'", "[128, 32]", "[32, 128]");
    /* a missing tensor */
    for (int i = 0; i < cnt; i++)
        memcpy(o[i].shape, st_at(f, i)->shape, sizeof(o[i].shape));
    ck_assert_int_eq(st_write(stp2, o, cnt - 1, NULL, 0, err), 0);
    ck_assert_int_eq(hf_gpt2_import(d2, &c, &q, err), -1);
    ck_err(stp2, st_at(f, cnt - 1)->name, "missing");
    st_close(f);
    free(o);

    /* folders without the right files */
    unlink(stp2);
    ck_assert_int_eq(hf_gpt2_import(d2, &c, &q, err), -1);
    ck_err(d2, "model.safetensors missing");
    write_text(pth("hf2/pytorch_model.bin"), "not really");
    ck_assert_int_eq(hf_gpt2_import(d2, &c, &q, err), -1);
    ck_err(d2, "pytorch_model.bin");
    unlink(cfgp2);
    ck_assert_int_eq(hf_gpt2_import(d2, &c, &q, err), -1);
    ck_err(cfgp2);
    ck_assert_int_eq(hf_gpt2_import(pth("nowhere"), &c, &q, err), -1);
    ck_err(pth("nowhere/config.json"));
    /* a truncated model file */
    size_t sn;
    unsigned char *sb = read_bytes(stp, &sn);
    write_bytes(stp, sb, sn - 5);
    ck_assert_int_eq(hf_gpt2_import(d, &c, &q, err), -1);
    ck_err(stp, "extends past end of file");
    free(sb);

    /* export refuses a bad config and an impossible folder */
    gpt2_config bad = tiny;
    bad.NH = 5;
    ck_assert_int_eq(hf_gpt2_export(pth("out"), &bad, p, err), -1);
    ck_err(pth("out"));
    ck_assert_int_eq(hf_gpt2_export(pth("hf/config.json/x"), &tiny, p, err), -1);
    ck_err("config.json");
    free(good_cfg);
    free(p);
}
END_TEST

/* ================= llm.c ================= */

/* Writes an llm.c model file (version 3: fp32, 5: bf16) of config c with
 * padded vocabulary Vp from random values; returns the 16 tensors as floats
 * (the values the file holds) in *kinds and their sizes in sz. */
static void write_llmc(const char *path, const gpt2_config *c, int Vp, int version,
                       float *kinds[16], size_t sz[16])
{
    size_t C = (size_t)c->C, L = (size_t)c->L;
    size_t s[16] = { (size_t)Vp * C, (size_t)c->maxT * C, L * C, L * C, L * 3 * C * C,
                     L * 3 * C, L * C * C, L * C, L * C, L * C, L * 4 * C * C, L * 4 * C,
                     L * 4 * C * C, L * C, C, C };
    int32_t h[256] = { 20240326, version, c->maxT, c->V, c->L, c->NH, c->C, Vp };
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    fwrite(h, 4, 256, f);
    for (int k = 0; k < 16; k++) {
        sz[k] = s[k];
        kinds[k] = malloc(s[k] * 4);
        for (size_t i = 0; i < s[k]; i++) {
            float x = (float)rng_normal(&rng);
            uint32_t bits;
            memcpy(&bits, &x, 4);
            if (version == 5) {
                uint16_t b = (uint16_t)(bits >> 16);
                fwrite(&b, 2, 1, f);
                bits &= 0xffff0000u;
                memcpy(&x, &bits, 4);
            } else {
                fwrite(&x, 4, 1, f);
            }
            kinds[k][i] = x;
        }
    }
    fclose(f);
}

/* Which llm.c tensor (and layer) one of our views comes from, by its name. */
static int llmc_kind(const char *name, int *layer)
{
    static const char *per[12] = { "ln_1.weight", "ln_1.bias", "attn.c_attn.weight",
                                   "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias",
                                   "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                                   "mlp.c_proj.weight", "mlp.c_proj.bias" };
    *layer = 0;
    if (!strcmp(name, "wte.weight")) return 0;
    if (!strcmp(name, "wpe.weight")) return 1;
    if (!strcmp(name, "ln_f.weight")) return 14;
    if (!strcmp(name, "ln_f.bias")) return 15;
    int off = 0;
    ck_assert_int_eq(sscanf(name, "h.%d.%n", layer, &off), 1);
    for (int k = 0; k < 12; k++)
        if (!strcmp(name + off, per[k]))
            return 2 + k;
    ck_abort_msg("unknown view %s", name);
    return -1;
}

static void check_llmc(const gpt2_config *c, int Vp, int version)
{
    const char *path = pth("model.bin");
    float *kinds[16];
    size_t sz[16];
    write_llmc(path, c, Vp, version, kinds, sz);
    gpt2_config got;
    float *p = NULL;
    ck_assert_msg(llmc_gpt2_import(path, &got, &p, err) == 0, "%s", err);
    ck_assert(!memcmp(&got, c, sizeof(got)));
    param_view *v;
    int nv;
    gpt2_layout(c, &v, &nv);
    for (int i = 0; i < nv; i++) {
        int layer, k = llmc_kind(v[i].name, &layer);
        size_t per = k >= 2 && k < 14 ? sz[k] / (size_t)c->L : sz[k];
        for (size_t e = 0; e < v[i].count; e++) {
            float want = k == 0 && e >= (size_t)c->V * c->C ? 0.0f : kinds[k][layer * per + e];
            ck_assert_msg(p[v[i].offset + e] == want, "%s[%zu]: %g != %g", v[i].name, e,
                          p[v[i].offset + e], want);
        }
    }
    free(v);
    free(p);
    for (int k = 0; k < 16; k++)
        free(kinds[k]);
}

START_TEST(test_llmc_import)
{
    check_llmc(&tiny, 320, 3);      /* llm.c padded less than we do */
    check_llmc(&tiny, 384, 5);
    gpt2_config c = { .V = 256, .maxT = 16, .L = 3, .NH = 2, .C = 16 };
    check_llmc(&c, 512, 3);         /* ... and more */
}
END_TEST

START_TEST(test_llmc_bad_input)
{
    const char *path = pth("model.bin");
    float *kinds[16];
    size_t sz[16];
    write_llmc(path, &tiny, 320, 3, kinds, sz);
    for (int k = 0; k < 16; k++)
        free(kinds[k]);
    size_t n;
    unsigned char *b = read_bytes(path, &n);
    gpt2_config c;
    float *p = NULL;
    const char *bad = pth("bad.bin");
    int32_t h;

    write_bytes(bad, b, n - 1);
    ck_assert_int_eq(llmc_gpt2_import(bad, &c, &p, err), -1);
    ck_err(bad, "truncated");
    ck_assert_ptr_null(p);
    unsigned char *longer = malloc(n + 4);
    memcpy(longer, b, n);
    write_bytes(bad, longer, n + 4);
    ck_assert_int_eq(llmc_gpt2_import(bad, &c, &p, err), -1);
    ck_err(bad, "trailing data");
    free(longer);
    write_bytes(bad, b, 100);
    ck_assert_int_eq(llmc_gpt2_import(bad, &c, &p, err), -1);
    ck_err(bad, "too short");

    static const struct { int idx; int32_t val; const char *frag; } cases[] = {
        { 0, 20240327, "bad magic" }, { 1, 4, "version 4" }, { 1, 1, "version 1" },
        { 5, 5, "heads 5" }, { 7, 256, "padded vocabulary" }, { 4, 0, "layer" },
        { 6, -32, "width" }, { 4, 3, "truncated" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        memcpy(&h, b + 4 * cases[i].idx, 4);
        memcpy(b + 4 * cases[i].idx, &cases[i].val, 4);
        write_bytes(bad, b, n);
        ck_assert_int_eq(llmc_gpt2_import(bad, &c, &p, err), -1);
        ck_err(bad, cases[i].frag);
        ck_assert_ptr_null(p);
        memcpy(b + 4 * cases[i].idx, &h, 4);
    }
    ck_assert_int_eq(llmc_gpt2_import(pth("none.bin"), &c, &p, err), -1);
    ck_err(pth("none.bin"), "cannot open");
    write_bytes(bad, b, n);
    ck_assert_msg(llmc_gpt2_import(bad, &c, &p, err) == 0, "%s", err);
    free(p);
    free(b);
}
END_TEST

static Suite *ckpt_suite(void)
{
    Suite *s = suite_create("ckpt");
    TCase *tc = tcase_create("json");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_json_values);
    tcase_add_test(tc, test_json_escapes);
    tcase_add_test(tc, test_json_depth);
    tcase_add_test(tc, test_json_truncated);
    tcase_add_test(tc, test_json_numbers);
    tcase_add_test(tc, test_json_random_docs);
    tcase_add_test(tc, test_json_mutations);
    tcase_add_test(tc, test_json_big_object);
    tcase_add_test(tc, test_json_file);
    suite_add_tcase(s, tc);

    tc = tcase_create("safetensors");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_st_roundtrip);
    tcase_add_test(tc, test_st_float_conversions);
    tcase_add_test(tc, test_st_bad_files);
    tcase_add_test(tc, test_st_mutations);
    tcase_add_test(tc, test_st_failed_write_keeps_file);
    tcase_add_test(tc, test_st_truncated_after_open);
    suite_add_tcase(s, tc);

    tc = tcase_create("checkpoints");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_ckpt_roundtrip);
    tcase_add_test(tc, test_ckpt_wrong_model);
    tcase_add_test(tc, test_ckpt_failed_save_keeps_file);
    tcase_add_test(tc, test_hf_roundtrip);
    tcase_add_test(tc, test_hf_variants);
    tcase_add_test(tc, test_hf_bad_input);
    tcase_add_test(tc, test_llmc_import);
    tcase_add_test(tc, test_llmc_bad_input);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    const char *env = getenv("ANATOMY_TEST_SEED");
    seed = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    printf("test_ckpt: seed %llu (ANATOMY_TEST_SEED to replay)\n", (unsigned long long)seed);
    fflush(stdout);
    SRunner *sr = srunner_create(ckpt_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
