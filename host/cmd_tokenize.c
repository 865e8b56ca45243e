/* cmd_tokenize.c: `anatomy tokenize`: text on stdin to token ids on stdout,
 * or (--decode) ids back to the exact bytes. */
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "../data/errbuf.h"
#include "../data/tokenizer.h"

static const char usage[] =
    "usage: anatomy tokenize [--tokenizer gpt2|bytes] [--allow-special] [--decode] [--vocab DIR]\n"
    "\n"
    "Reads stdin. Writes the token ids separated by spaces and a newline, or with\n"
    "--decode reads ids (separated by any whitespace) and writes their bytes.\n"
    "\n"
    "  --tokenizer K     gpt2 (GPT-2's BPE, 50257 tokens; default) or bytes (256)\n"
    "  --allow-special   read \"<|endoftext|>\" as the end-of-text token (50256);\n"
    "                    otherwise it is ordinary text\n"
    "  --decode          ids to bytes\n"
    "  --vocab DIR       folder with encoder.json + vocab.bpe or vocab.json +\n"
    "                    merges.txt (default: $ANATOMY_GPT2_DIR, else the\n"
    "                    build/.cache/gpt2 that make fills)\n"
    "  --help            this text\n";

/* All of stdin in one malloc'd block (NUL-terminated); *len its size. */
static char *read_stdin(size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    if (!buf)
        cli_die("tokenize: out of memory");
    for (;;) {
        if (cap - n < 2) {
            cap *= 2;
            char *p = realloc(buf, cap);
            if (!p)
                cli_die("tokenize: out of memory reading stdin (%zu bytes so far)", n);
            buf = p;
        }
        ssize_t r = read(STDIN_FILENO, buf + n, cap - n - 1);
        if (r < 0)
            cli_die("tokenize: reading stdin failed");
        if (r == 0)
            break;
        n += (size_t)r;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

static void write_all(const char *p, size_t n)
{
    if (n && fwrite(p, 1, n, stdout) != n)
        cli_die("tokenize: writing stdout failed");
}

/* Writes ids as decimal numbers separated by spaces, then a newline. */
static void write_ids(const int32_t *ids, size_t n)
{
    char buf[1 << 16];
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char tmp[12];
        int k = 0;
        uint32_t v = (uint32_t)ids[i];
        do
            tmp[k++] = (char)('0' + v % 10);
        while (v /= 10);
        if (o + 13 > sizeof buf) {
            write_all(buf, o);
            o = 0;
        }
        if (i)
            buf[o++] = ' ';
        while (k)
            buf[o++] = tmp[--k];
    }
    buf[o++] = '\n';
    write_all(buf, o);
}

static int is_space(char c)
{
    return c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* Parses whitespace-separated ids from s[0..len), all of them before writing
 * anything (bad input leaves no partial output), then writes their bytes. */
static void decode(const tokenizer *tk, const char *s, size_t len)
{
    int vocab = tokenizer_vocab_size(tk);
    int32_t *ids = malloc((len / 2 + 1) * sizeof *ids);
    size_t n = 0, i = 0;
    if (!ids)
        cli_die("tokenize: out of memory");
    while (i < len) {
        if (is_space(s[i])) {
            i++;
            continue;
        }
        size_t start = i;
        uint64_t v = 0;
        while (i < len && s[i] >= '0' && s[i] <= '9' && v <= (uint64_t)vocab)
            v = v * 10 + (uint64_t)(s[i++] - '0');
        while (i < len && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == start || (i < len && !is_space(s[i]))) {
            size_t e = start;
            while (e < len && !is_space(s[e]) && e - start < 32)
                e++;
            cli_die("tokenize --decode: byte %zu: '%.*s' is not a token id", start,
                    (int)(e - start), s + start);
        }
        if (v >= (uint64_t)vocab)
            cli_die("tokenize --decode: byte %zu: id %.*s out of range [0, %d)", start,
                    (int)(i - start), s + start, vocab);
        ids[n++] = (int32_t)v;
    }
    for (size_t k = 0; k < n; k++) {
        size_t nb;
        const char *p = tokenizer_decode(tk, ids[k], &nb);
        if (!p)
            cli_die("tokenize --decode: id %d has no bytes", ids[k]);
        write_all(p, nb);
    }
    free(ids);
}

int cmd_tokenize(int argc, char **argv)
{
    enum { O_TOKENIZER = 256, O_ALLOW, O_DECODE, O_VOCAB, O_HELP };
    static const struct option longopts[] = {
        { "tokenizer", 1, 0, O_TOKENIZER }, { "allow-special", 0, 0, O_ALLOW },
        { "decode", 0, 0, O_DECODE },       { "vocab", 1, 0, O_VOCAB },
        { "help", 0, 0, O_HELP },           { 0, 0, 0, 0 },
    };
    const char *kind = "gpt2", *vocab = NULL;
    int allow_special = 0, do_decode = 0, c;
    char err[ERRBUF];

    optind = 1;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        switch (c) {
        case O_TOKENIZER: kind = optarg; break;
        case O_ALLOW: allow_special = 1; break;
        case O_DECODE: do_decode = 1; break;
        case O_VOCAB: vocab = optarg; break;
        case O_HELP: fputs(usage, stdout); return 0;
        default: cli_bad_option("tokenize", c, argv);
        }
    }
    if (optind < argc)
        cli_die("tokenize: unexpected argument '%s'", argv[optind]);
    if (strcmp(kind, "gpt2") != 0 && strcmp(kind, "bytes") != 0)
        cli_die("--tokenizer: '%s' is not gpt2 or bytes", kind);
    if (vocab && strcmp(kind, "gpt2") != 0)
        cli_die("--vocab: only the gpt2 tokenizer has a vocabulary");
    if (allow_special && strcmp(kind, "gpt2") != 0)
        cli_die("--allow-special: the bytes tokenizer has no special tokens");
    tokenizer *tk = tokenizer_open(kind, vocab, err);
    if (!tk)
        cli_die("%s", err);
    size_t len;
    char *text = read_stdin(&len);
    if (do_decode) {
        decode(tk, text, len);
    } else {
        int32_t *ids = NULL;
        size_t n = 0, cap = 0;
        if (tokenizer_encode(tk, text, len, allow_special, &ids, &n, &cap, err) < 0)
            cli_die("%s", err);
        write_ids(ids, n);
        free(ids);
    }
    if (fflush(stdout) != 0)
        cli_die("tokenize: writing stdout failed");
    free(text);
    tokenizer_close(tk);
    return 0;
}
