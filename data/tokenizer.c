/* tokenizer.c: the two tokenizers behind tokenizer.h. "bytes" is the identity
 * on bytes (V = 256, no end-of-text token); "gpt2" wraps bpe.c and looks for
 * its vocabulary in a cache folder when none is given. */
#include "tokenizer.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "bpe.h"
#include "errbuf.h"

enum { TK_BYTES, TK_GPT2 };

/* bpe_fingerprint of GPT-2's vocabulary (encoder.json sha256 196139...,
 * vocab.bpe sha256 1ce166...; vocab.json + merges.txt give the same). */
#define GPT2_FINGERPRINT 0x3109c20961343d5full
#define GPT2_VOCAB 50257

struct tokenizer {
    int kind;
    bpe *bpe;
    char bytes[256];
};

/* Grows *ids so that `more` ids fit after *n. */
static int ids_reserve(int32_t **ids, size_t *n, size_t *cap, size_t more, char *err)
{
    if (*cap - *n >= more && *ids)
        return 0;
    size_t want = *cap ? *cap : 1024;
    while (want - *n < more) {
        if (want > SIZE_MAX / 2 / sizeof(int32_t))
            return errf(err, "tokenizer: out of memory");
        want *= 2;
    }
    int32_t *p = realloc(*ids, want * sizeof(int32_t));
    if (!p)
        return errf(err, "tokenizer: out of memory");
    *ids = p;
    *cap = want;
    return 0;
}

static int is_dir_with(const char *dir, const char *file)
{
    char path[PATH_MAX];
    struct stat st;
    if (snprintf(path, sizeof path, "%s/%s", dir, file) >= (int)sizeof path)
        return 0;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int has_vocab(const char *dir)
{
    return (is_dir_with(dir, "encoder.json") && is_dir_with(dir, "vocab.bpe")) ||
           (is_dir_with(dir, "vocab.json") && is_dir_with(dir, "merges.txt"));
}

/* The default vocabulary folder: $ANATOMY_GPT2_DIR, else the .cache/gpt2 that
 * `make` fills in the build folder, found next to the running binary (build/anatomy)
 * or one level up (build/tests/test_*), else build/.cache/gpt2 from the cwd.
 * Writes the first candidate that holds a vocabulary into out; 0 or -1. */
static int default_vocab_dir(char *out, size_t size, char *err)
{
    const char *env = getenv("ANATOMY_GPT2_DIR");
    if (env && *env) {
        if (snprintf(out, size, "%s", env) >= (int)size)
            return errf(err, "ANATOMY_GPT2_DIR: path too long");
        return 0;
    }
    char exe[PATH_MAX];
    ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (k > 0) {
        exe[k] = 0;
        for (int up = 0; up < 2; up++) {
            char *slash = strrchr(exe, '/');
            if (!slash)
                break;
            *slash = 0;
            if (snprintf(out, size, "%s/.cache/gpt2", exe) < (int)size && has_vocab(out))
                return 0;
        }
    }
    snprintf(out, size, "build/.cache/gpt2");
    if (has_vocab(out))
        return 0;
    return errf(err, "gpt2 vocabulary: not found (run `make` to fill build/.cache/gpt2, "
                     "set ANATOMY_GPT2_DIR, or pass --vocab DIR)");
}

tokenizer *tokenizer_open(const char *kind, const char *vocab_dir, char *err)
{
    tokenizer *tk = calloc(1, sizeof *tk);
    if (!tk) {
        errf(err, "tokenizer: out of memory");
        return NULL;
    }
    for (int i = 0; i < 256; i++)
        tk->bytes[i] = (char)i;
    if (kind && strcmp(kind, "bytes") == 0) {
        tk->kind = TK_BYTES;
        return tk;
    }
    if (!kind || strcmp(kind, "gpt2") != 0) {
        errf(err, "tokenizer: unknown kind '%s' (expected bytes or gpt2)", kind ? kind : "(null)");
        free(tk);
        return NULL;
    }
    tk->kind = TK_GPT2;
    char dir[PATH_MAX];
    if (!vocab_dir) {
        if (default_vocab_dir(dir, sizeof dir, err) < 0) {
            free(tk);
            return NULL;
        }
        vocab_dir = dir;
    }
    tk->bpe = bpe_load(vocab_dir, err);
    if (!tk->bpe) {
        free(tk);
        return NULL;
    }
    if (bpe_fingerprint(tk->bpe) != GPT2_FINGERPRINT || bpe_vocab_size(tk->bpe) != GPT2_VOCAB ||
        bpe_eot(tk->bpe) != GPT2_VOCAB - 1) {
        errf(err, "%s: not GPT-2's vocabulary (%d tokens, fingerprint %016llx, expected %d, "
                  "%016llx)", vocab_dir, bpe_vocab_size(tk->bpe),
             (unsigned long long)bpe_fingerprint(tk->bpe), GPT2_VOCAB,
             (unsigned long long)GPT2_FINGERPRINT);
        tokenizer_close(tk);
        return NULL;
    }
    return tk;
}

void tokenizer_close(tokenizer *tk)
{
    if (!tk)
        return;
    bpe_free(tk->bpe);
    free(tk);
}

int tokenizer_vocab_size(const tokenizer *tk)
{
    return tk->kind == TK_BYTES ? 256 : bpe_vocab_size(tk->bpe);
}

int tokenizer_eot(const tokenizer *tk)
{
    return tk->kind == TK_BYTES ? -1 : bpe_eot(tk->bpe);
}

int tokenizer_encode(tokenizer *tk, const char *text, size_t len, int allow_special,
                     int32_t **ids, size_t *n, size_t *cap, char *err)
{
    if (tk->kind == TK_GPT2)
        return bpe_encode(tk->bpe, text, len, allow_special, ids, n, cap, err);
    if (ids_reserve(ids, n, cap, len, err) < 0)
        return -1;
    const unsigned char *s = (const unsigned char *)text;
    int32_t *out = *ids + *n;
    for (size_t i = 0; i < len; i++)
        out[i] = s[i];
    *n += len;
    return 0;
}

const char *tokenizer_decode(const tokenizer *tk, int32_t id, size_t *len)
{
    if (tk->kind == TK_GPT2)
        return bpe_token(tk->bpe, id, len);
    if (id < 0 || id > 255)
        return NULL;
    *len = 1;
    return &tk->bytes[id];
}
