/* fuzz_bpe.c: libFuzzer target for the tokenizer (data/bpe.c, data/tokenizer.c).
 *
 * The first input byte picks what the rest is:
 *   0, 1  text, encoded with GPT-2's vocabulary without / with special tokens
 *   2     text written in a small dictionary (bytes 0-15 stand for pieces that
 *         steer the pre-tokenizer: contractions, <|endoftext|>, whitespace,
 *         multi-byte characters), then as 1
 *   3     a vocabulary: JSON, a NUL byte, merges (both files fuzzed)
 *   4     the same, but after a generated JSON prefix holding the 256 byte
 *         tokens, so that fuzzed vocabularies can load
 * Every text must encode, decode back to itself, and give only ids in range
 * (no end-of-text id unless allowed); vocabularies must load or fail cleanly,
 * and when they load, text must round-trip through them.
 * Run with ANATOMY_GPT2_DIR set, or from the build folder (make test-fuzz). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../data/bpe.h"
#include "../../data/errbuf.h"
#include "../../data/tokenizer.h"

static tokenizer *g_tk;
static char g_json[64], g_merges[64];

static void cleanup(void)
{
    unlink(g_json);
    unlink(g_merges);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char err[ERRBUF];
    (void)argc;
    (void)argv;
    g_tk = tokenizer_open("gpt2", NULL, err);
    if (!g_tk) {
        fprintf(stderr, "fuzz_bpe: %s\n", err);
        exit(1);
    }
    const char *tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(g_json, sizeof g_json, "%s/fuzz_bpe_%d.json", tmp, (int)getpid());
    snprintf(g_merges, sizeof g_merges, "%s/fuzz_bpe_%d.merges", tmp, (int)getpid());
    atexit(cleanup);
    return 0;
}

/* Encodes text and checks ids and the round trip; traps on any failure. */
static void round_trip(tokenizer *tk, bpe *b, const char *text, size_t n, int special)
{
    char err[ERRBUF];
    int32_t *ids = NULL;
    size_t nids = 0, cap = 0, at = 0;
    int vocab = tk ? tokenizer_vocab_size(tk) : bpe_vocab_size(b);
    int eot = tk ? tokenizer_eot(tk) : bpe_eot(b);
    int rc = tk ? tokenizer_encode(tk, text, n, special, &ids, &nids, &cap, err)
                : bpe_encode(b, text, n, special, &ids, &nids, &cap, err);
    if (rc != 0)
        __builtin_trap();
    for (size_t i = 0; i < nids; i++) {
        size_t len;
        if (ids[i] < 0 || ids[i] >= vocab || (!special && ids[i] == eot))
            __builtin_trap();
        const char *p = tk ? tokenizer_decode(tk, ids[i], &len) : bpe_token(b, ids[i], &len);
        if (!p || at + len > n || memcmp(text + at, p, len) != 0)
            __builtin_trap();
        at += len;
    }
    if (at != n)
        __builtin_trap();
    free(ids);
}

static const char *const dict[16] = {
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "<|endoftext|>",
    " ", "   ", "\n\n", "\t", "\xc3\xa9", "\xe4\xb8\xad", "\xf0\x9f\x98\x80", "\xe2\x80\x8d",
};

static void fuzz_dict(const uint8_t *data, size_t size)
{
    char *text = malloc(size * 13 + 1);
    size_t n = 0;
    for (size_t i = 0; i < size; i++) {
        if (data[i] < 16) {
            size_t len = strlen(dict[data[i]]);
            memcpy(text + n, dict[data[i]], len);
            n += len;
        } else {
            text[n++] = (char)data[i];
        }
    }
    round_trip(g_tk, NULL, text, n, 0);
    round_trip(g_tk, NULL, text, n, 1);
    free(text);
}

static void spill(const char *path, const char *a, size_t an, const char *b, size_t bn)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        abort();
    fwrite(a, 1, an, f);
    fwrite(b, 1, bn, f);
    fclose(f);
}

/* GPT-2's byte-to-unicode character for byte c, as a JSON escape. */
static int byte_escape(int c, char *out)
{
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        if (b == c)
            return sprintf(out, "\\u%04x", printable ? b : 256 + n);
        if (!printable)
            n++;
    }
    return 0;
}

static void fuzz_vocab(const uint8_t *data, size_t size, int with_bytes)
{
    const uint8_t *nul = memchr(data, 0, size);
    size_t jn = nul ? (size_t)(nul - data) : size;
    const char *merges = nul ? (const char *)nul + 1 : "";
    size_t mn = nul ? size - jn - 1 : 0;
    char prefix[256 * 20 + 8];
    size_t pn = 0;
    if (with_bytes) {
        prefix[pn++] = '{';
        for (int c = 0; c < 256; c++) {
            char esc[8];
            byte_escape(c, esc);
            pn += (size_t)sprintf(prefix + pn, "\"%s\": %d%s", esc, c, c < 255 || jn ? ", " : "}");
        }
    }
    spill(g_json, prefix, pn, (const char *)data, jn);
    spill(g_merges, merges, mn, "", 0);
    char err[ERRBUF];
    bpe *b = bpe_load_files(g_json, g_merges, err);
    if (!b) {
        if (!err[0] || !memchr(err, 0, ERRBUF))
            __builtin_trap();
        return;
    }
    round_trip(NULL, b, (const char *)data, size, 0);
    round_trip(NULL, b, (const char *)data, size, 1);
    round_trip(NULL, b, "hello world, it's 123 <|endoftext|> \xe4\xb8\xad  \n", 40, 1);
    bpe_free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int mode = data[0] % 5;
    data++;
    size--;
    switch (mode) {
    case 0:
    case 1: round_trip(g_tk, NULL, (const char *)data, size, mode); break;
    case 2: fuzz_dict(data, size); break;
    case 3: fuzz_vocab(data, size, 0); break;
    case 4: fuzz_vocab(data, size, 1); break;
    }
    return 0;
}
