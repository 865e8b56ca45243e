/* cmd_prep.c: `anatomy prep`: text files (or JSON Lines) -> token shards.
 *
 * Each input file, or each JSON Lines record, is one document; with a
 * tokenizer that has an end-of-text token, every document is preceded by it
 * (GPT-2's convention, as in llm.c), so documents are separated and the stream
 * starts on a document boundary. The first --val-tokens tokens of the stream
 * (or, --val-from end, the last; or a --val-fraction of them) become
 * PREFIX_val_000000.bin, the rest PREFIX_train_000000.bin, _000001, ...
 * A validation-only prep (--val-fraction 1) writes PREFIX_val_* shards alone,
 * so a *_train_* glob never picks up held-out text.
 *
 * Work is cut into items of about --chunk-bytes of text. The main thread
 * reads the input into items and writes the tokens out, both in input order,
 * while --threads workers decode (JSON Lines) and tokenize items as they
 * come: a pipeline with no barrier between batches, so one slow item stalls
 * no other worker and the reading and writing overlap the tokenizing (a
 * barrier per batch of 2 x threads items left cores idle at every batch's
 * end, and the reading, JSON decoding and writing ran on one core while the
 * others waited). The shards do not depend on --threads or on the cuts. A
 * long document is cut only after a lone '\n' between two printable ASCII
 * characters: GPT-2's pre-tokenizer always makes such a '\n' a piece of its
 * own, so a cut there changes no token. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

#include "cli.h"
#include "../data/errbuf.h"
#include "../data/fsutil.h"
#include "../data/json.h"
#include "../data/shard.h"
#include "../data/tokenizer.h"

#define PREP_DEFAULT_SHARD 100000000LL
#define PREP_VAL_FRACTION 10        /* default val: 1/10 of the tokens... */
#define PREP_VAL_CAP 1000000        /* ...but at most this many */
#define PREP_PROGRESS_BYTES (64LL << 20)
#define PREP_CHUNK_MAX (1 << 20)    /* default --chunk-bytes... */
#define PREP_CHUNK_MIN (64 << 10)   /* ...down to this on inputs too small to share */
#define PREP_ITEMS_PER_THREAD 8     /* at the default, a thread gets this many at least */

struct prep_opts {
    const char *kind, *vocab_dir, *out, *field;
    const char **inputs;
    int ninputs;
    long long val_tokens;           /* -1: the default rule */
    double val_fraction;            /* > 0: this fraction of the tokens instead */
    int val_end;                    /* --val-from end: the split is the stream's tail */
    long long shard_tokens;
    int threads;                    /* 0: not given; every core we may run on */
    size_t chunk;                   /* 0: not given; chosen from the input size */
};

/* One span of an item's text; eot: a document starts here. A JSON Lines
 * piece (line > 0) is the record's raw line, decoded by the worker that
 * encodes it, so that JSON parsing runs on every core too. */
struct piece {
    size_t off, len;
    int eot;
    long line;                      /* JSON Lines: the line number in path; else 0 */
    const char *path;
};

/* A unit of work: text pieces in, token ids out. */
struct item {
    char *text;
    size_t len, cap;
    struct piece *pc;
    int npc, pccap;
    int32_t *ids;
    size_t nids, idcap;
    int failed;
    int done;                       /* encoded; guarded by the pipeline's lock */
    char err[ERRBUF];
};

/* The pipeline: item k of the input lives in ring[k % nring]. The main
 * thread fills items (filled counts them) and writes them out (written);
 * workers take filled items in order (taken) and mark them done. So items
 * [written, taken) are with workers or done, [taken, filled) wait for one,
 * and the main thread owns every other slot. */
struct pipeline {
    pthread_mutex_t mu;
    pthread_cond_t work;            /* to workers: an item was filled, or quit */
    pthread_cond_t done;            /* to the main thread: an item was encoded */
    struct item *ring;
    size_t nring;
    unsigned long long filled, taken, written;
    int quit;
};

struct worker {
    pthread_t th;
    struct pipeline *pl;
    tokenizer *tk;
    const struct prep_opts *o;
    char err[ERRBUF];
};

/* Reads the inputs in order and cuts them into items. */
struct source {
    const struct prep_opts *o;
    int next;                       /* next input to open */
    const char *path;               /* the open input, or NULL */
    int fd;                         /* plain text */
    FILE *fp;                       /* JSON Lines */
    int eof, doc_pending;
    char *carry;                    /* plain text read but not yet given out */
    size_t clen, ccap, scanned;
    char *line;
    size_t linecap;
    long lineno;
    unsigned long long bytes, docs;
};

/* Accumulates tokens and writes the shards. */
struct sink {
    const char *prefix;
    uint16_t *buf;
    size_t head, n, cap;            /* the tokens not yet written: buf[head, head + n) */
    long long val_req;
    double val_frac;                /* > 0: val is this fraction of the total */
    int val_end;                    /* the val tokens are the stream's last ones */
    int val_done, shard, val_shard, vocab;
    size_t shard_tokens;
    unsigned long long total, val, train;
    int tty;
};

struct progress {
    int on, tty, printed;
    double t0, last;
    unsigned long long total_bytes;
};

static void usage(FILE *f)
{
    fprintf(f,
        "usage: anatomy prep --tokenizer bytes|gpt2 --input FILE... --out PREFIX [options]\n"
        "\n"
        "Tokenizes text into shards: PREFIX_val_000000.bin (the first tokens, or the\n"
        "last with --val-from end) and PREFIX_train_000000.bin, _000001, ... (the rest).\n"
        "Each input file, or each JSON Lines record, is one document, preceded by\n"
        "<|endoftext|> with gpt2.\n"
        "\n"
        "  --tokenizer KIND     bytes (256 ids) or gpt2 (50257 ids)\n"
        "  --input FILE...      text files (several after one --input, or repeat it); - reads\n"
        "                       stdin (once); FIFOs and devices are refused, pipe them to -\n"
        "  --out PREFIX         output prefix, e.g. data/tiny/shakespeare\n"
        "  --val-tokens N       tokens for the validation shard (default: 10%% of the\n"
        "                       tokens, at most 1000000; 0 writes no validation shard)\n"
        "  --val-fraction F     instead: this fraction of the tokens, 0 < F <= 1 (nanoGPT's\n"
        "                       prepare.py holds out 0.1); 1 is a validation-only prep:\n"
        "                       PREFIX_val_* shards and no PREFIX_train_* file\n"
        "  --val-from W         start (default: the validation tokens lead the stream) or\n"
        "                       end (they are its tail, as nanoGPT and most scripts hold\n"
        "                       out). A fraction holds every token in memory (2 bytes\n"
        "                       each) until the input ends; the end holds back the\n"
        "                       last --val-tokens (default at most 1000000)\n"
        "  --shard-tokens N     tokens per training shard (default 100000000), and per\n"
        "                       validation shard of a validation-only prep\n"
        "  --jsonl-field NAME   inputs are JSON Lines; each record's string field NAME\n"
        "                       is a document\n"
        "  --vocab DIR          gpt2 vocabulary (encoder.json + vocab.bpe, or vocab.json\n"
        "                       + merges.txt); default: the build cache\n"
        "  --threads N          tokenizer threads (default: all cores; the output is\n"
        "                       the same for any N)\n"
        "  --chunk-bytes N      text per unit of work (default 1048576, less on small\n"
        "                       inputs so that every thread has work)\n"
        "  --help               this text\n");
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Grows *p (elements of size sz, capacity *cap) to hold at least want. */
static void grow(void *p, size_t *cap, size_t want, size_t sz)
{
    if (want <= *cap)
        return;
    size_t c = *cap ? *cap : 256;
    while (c < want)
        c *= 2;
    void *q = realloc(*(void **)p, c * sz);
    if (!q)
        cli_die("prep: out of memory (%zu bytes)", c * sz);
    *(void **)p = q;
    *cap = c;
}

static void item_clear(struct item *it)
{
    it->len = 0;
    it->npc = 0;
    it->nids = 0;
    it->failed = 0;
}

static void item_add(struct item *it, const char *text, size_t len, int eot, const char *path,
                     long line)
{
    size_t cap = (size_t)it->pccap;
    grow(&it->pc, &cap, (size_t)it->npc + 1, sizeof *it->pc);
    it->pccap = (int)cap;
    grow(&it->text, &it->cap, it->len + len + 1, 1);     /* + 1: text is never NULL */
    if (len)
        memcpy(it->text + it->len, text, len);
    it->pc[it->npc++] = (struct piece){ it->len, len, eot, line, path };
    it->len += len;
}

static void item_free(struct item *it)
{
    free(it->text);
    free(it->pc);
    free(it->ids);
}

static int is_graph_ascii(char c)
{
    return c > ' ' && c < 0x7f;
}

/* The first safe cut >= need in carry (see the file comment), or 0. Resumes
 * its scan where the last unsuccessful one stopped. */
static size_t find_cut(struct source *s, size_t need)
{
    size_t i = need > 1 ? need - 1 : 1;
    if (i < s->scanned)
        i = s->scanned;
    while (i + 1 < s->clen) {
        const char *nl = memchr(s->carry + i, '\n', s->clen - 1 - i);
        if (!nl)
            break;
        i = (size_t)(nl - s->carry);
        if (is_graph_ascii(s->carry[i - 1]) && is_graph_ascii(s->carry[i + 1]))
            return i + 1;
        i++;
    }
    s->scanned = s->clen > 0 ? s->clen - 1 : 0;
    return 0;
}

static void source_close(struct source *s)
{
    if (s->fp)
        fclose(s->fp);
    if (s->fd >= 0)
        close(s->fd);
    s->fp = NULL;
    s->fd = -1;
    s->path = NULL;
}

static void source_open_next(struct source *s)
{
    s->path = s->o->inputs[s->next++];
    s->eof = 0;
    s->clen = 0;
    s->scanned = 0;
    s->lineno = 0;
    if (!strcmp(s->path, "-")) { /* stdin, as it comes */
        if (s->o->field)
            s->fp = stdin;
        else
            s->fd = STDIN_FILENO;
        s->doc_pending = !s->o->field;
        s->docs += !s->o->field;
        return;
    }
    if (s->o->field) {
        s->fp = fopen(s->path, "rb");
        if (!s->fp)
            cli_die("%s: %s", s->path, strerror(errno));
        return;
    }
    s->fd = open(s->path, O_RDONLY);
    if (s->fd < 0)
        cli_die("%s: %s", s->path, strerror(errno));
    s->doc_pending = 1;
    s->docs++;
}

/* Reads more of the open plain file into carry; sets eof at its end. */
static void source_read(struct source *s)
{
    size_t want = s->clen + (s->clen > s->o->chunk ? s->clen : s->o->chunk);
    grow(&s->carry, &s->ccap, want, 1);
    ssize_t k;
    do
        k = read(s->fd, s->carry + s->clen, s->ccap - s->clen);
    while (k < 0 && errno == EINTR);
    if (k < 0)
        cli_die("%s: %s", s->path, strerror(errno));
    if (k == 0)
        s->eof = 1;
    s->clen += (size_t)k;
    s->bytes += (unsigned long long)k;
}

/* Moves plain text from the open file into it until it is full or the file ends. */
static void fill_plain(struct source *s, struct item *it)
{
    while (it->len < s->o->chunk) {
        size_t need = s->o->chunk - it->len, cut;
        for (;;) {
            cut = find_cut(s, need);
            if (cut)
                break;
            if (s->eof) {
                cut = s->clen;
                break;
            }
            source_read(s);
        }
        if (cut > 0 || s->doc_pending)
            item_add(it, s->carry, cut, s->doc_pending, s->path, 0);
        s->doc_pending = 0;
        memmove(s->carry, s->carry + cut, s->clen - cut);
        s->clen -= cut;
        s->scanned = 0;
        if (s->eof && s->clen == 0) {
            source_close(s);
            return;
        }
    }
}

static int is_blank(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r' && p[i] != '\n')
            return 0;
    return 1;
}

/* Moves JSON Lines records from the open file into it until it is full or
 * the file ends. Blank lines are skipped; the others are documents, checked
 * and decoded by the workers (piece_text). */
static void fill_jsonl(struct source *s, struct item *it)
{
    while (it->len < s->o->chunk) {
        errno = 0;
        ssize_t k = getline(&s->line, &s->linecap, s->fp);
        if (k < 0) {
            if (ferror(s->fp))
                cli_die("%s: %s", s->path, strerror(errno ? errno : EIO));
            source_close(s);
            return;
        }
        s->lineno++;
        s->bytes += (unsigned long long)k;
        if (is_blank(s->line, (size_t)k))
            continue;
        item_add(it, s->line, (size_t)k, 1, s->path, s->lineno);
        s->docs++;
    }
}

/* Fills it with the next pieces of input. Returns 0 when all input is used up. */
static int source_fill(struct source *s, struct item *it)
{
    item_clear(it);
    while (it->len < s->o->chunk) {
        if (!s->path) {
            if (s->next == s->o->ninputs)
                break;
            source_open_next(s);
        }
        if (s->o->field)
            fill_jsonl(s, it);
        else
            fill_plain(s, it);
    }
    return it->npc > 0;
}

/* The document text of piece p: the piece itself, or for JSON Lines the
 * string member `field` of the record in it (*doc then holds the parsed line;
 * json_free it after use). Returns 0, or -1 with it->err filled. */
static int piece_text(struct item *it, const struct piece *p, const char *field, json_doc **doc,
                      const char **text, size_t *len)
{
    *doc = NULL;
    *text = it->text + p->off;
    *len = p->len;
    if (!p->line)
        return 0;
    char name[ERRBUF];
    snprintf(name, sizeof name, "%s:%ld", p->path, p->line);
    *doc = json_parse(*text, *len, name, it->err);
    if (!*doc)
        return -1;
    const json_value *root = json_root(*doc), *v;
    if (json_typeof(root) != JSON_OBJECT) {
        errf(it->err, "%s: expected a JSON object", name);
    } else if (!(v = json_get(root, field))) {
        errf(it->err, "%s: no field \"%s\"", name, field);
    } else if (json_typeof(v) != JSON_STRING) {
        errf(it->err, "%s: field \"%s\" is not a string", name, field);
    } else {
        *text = json_str(v);
        *len = json_len(v);
        return 0;
    }
    json_free(*doc);
    *doc = NULL;
    return -1;
}

/* Tokenizes one item (called from the worker threads); field: --jsonl-field. */
static void item_encode(tokenizer *tk, struct item *it, const char *field)
{
    int eot = tokenizer_eot(tk);
    it->nids = 0;
    for (int i = 0; i < it->npc; i++) {
        const struct piece *p = &it->pc[i];
        if (p->eot && eot >= 0) {
            if (it->nids == it->idcap) {
                size_t c = it->idcap ? 2 * it->idcap : 1024;
                int32_t *q = realloc(it->ids, c * sizeof *q);
                if (!q) {
                    it->failed = 1;
                    snprintf(it->err, sizeof it->err, "prep: out of memory");
                    return;
                }
                it->ids = q;
                it->idcap = c;
            }
            it->ids[it->nids++] = eot;
        }
        json_doc *doc;
        const char *text;
        size_t len;
        if (piece_text(it, p, field, &doc, &text, &len) < 0 ||
            tokenizer_encode(tk, text, len, 0, &it->ids, &it->nids, &it->idcap, it->err) < 0) {
            json_free(doc);
            it->failed = 1;
            return;
        }
        json_free(doc);
    }
}

/* A worker: takes filled items in input order, encodes them, marks them done;
 * returns once the main thread says quit and no filled item is left. */
static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct pipeline *pl = w->pl;
    pthread_mutex_lock(&pl->mu);
    for (;;) {
        while (pl->taken == pl->filled && !pl->quit)
            pthread_cond_wait(&pl->work, &pl->mu);
        if (pl->taken == pl->filled)
            break;
        struct item *it = &pl->ring[pl->taken++ % pl->nring];
        pthread_mutex_unlock(&pl->mu);
        item_encode(w->tk, it, w->o->field);
        pthread_mutex_lock(&pl->mu);
        it->done = 1;
        pthread_cond_signal(&pl->done);
    }
    pthread_mutex_unlock(&pl->mu);
    return NULL;
}

/* Opens one worker's tokenizer: run on the workers' own threads so that
 * the vocabulary loads in parallel (a gpt2 load is ~50 ms of JSON). */
static void *worker_open(void *arg)
{
    struct worker *w = arg;
    w->tk = tokenizer_open(w->o->kind, w->o->vocab_dir, w->err);
    return NULL;
}

static void spawn(pthread_t *th, void *(*fn)(void *), void *arg)
{
    int rc = pthread_create(th, NULL, fn, arg);
    if (rc)
        cli_die("prep: cannot start a thread: %s", strerror(rc));
}

/* One tokenizer per worker (tokenizer.h does not promise that a shared one is
 * thread-safe), loaded in parallel; dies naming the first that fails. */
static struct worker *workers_open(const struct prep_opts *o, struct pipeline *pl)
{
    struct worker *ws = calloc((size_t)o->threads, sizeof *ws);
    if (!ws)
        cli_die("prep: out of memory");
    for (int t = 0; t < o->threads; t++) {
        ws[t] = (struct worker){ .pl = pl, .o = o };
        if (t > 0)
            spawn(&ws[t].th, worker_open, &ws[t]);
    }
    worker_open(&ws[0]);
    for (int t = 1; t < o->threads; t++)
        pthread_join(ws[t].th, NULL);
    for (int t = 0; t < o->threads; t++)
        if (!ws[t].tk)
            cli_die("--tokenizer %s: %s", o->kind, ws[t].err);
    return ws;
}

/* Hands the next item to the workers once the main thread has filled it. */
static void pipeline_publish(struct pipeline *pl, struct item *it)
{
    pthread_mutex_lock(&pl->mu);
    it->done = 0;
    pl->filled++;
    pthread_cond_signal(&pl->work);
    pthread_mutex_unlock(&pl->mu);
}

/* Waits until the oldest item not yet written is encoded; returns it. */
static struct item *pipeline_next_done(struct pipeline *pl)
{
    struct item *it = &pl->ring[pl->written % pl->nring];
    pthread_mutex_lock(&pl->mu);
    while (!it->done)
        pthread_cond_wait(&pl->done, &pl->mu);
    pthread_mutex_unlock(&pl->mu);
    return it;
}

static void progress_clear(struct progress *pg)
{
    if (pg->tty && pg->printed) {
        fputs("\r\033[K", stderr);
        pg->printed = 0;
    }
}

/* At most 4 lines a second on a terminal (rewritten in place), one every
 * 5 s otherwise, and only when asked for (terminal or large input). */
static void progress_report(struct progress *pg, const struct source *s, const struct sink *k,
                            int final)
{
    if (!pg->on)
        return;
    double t = now_s();
    if (!final && t - pg->last < (pg->tty ? 0.25 : 5.0))
        return;
    pg->last = t;
    double el = t - pg->t0 > 1e-9 ? t - pg->t0 : 1e-9;
    double mb = (double)s->bytes / 1e6, rate = mb / el;
    fprintf(stderr, "%sprep: %.1f MB", pg->tty ? "\r\033[K" : "", mb);
    if (pg->total_bytes) {
        double left = (double)pg->total_bytes / 1e6 - mb;
        fprintf(stderr, " of %.1f MB", (double)pg->total_bytes / 1e6);
        if (!final && rate > 0 && left > 0)
            fprintf(stderr, ", ETA %.0f s", left / rate);
    }
    fprintf(stderr, ", %.1f MB/s, %llu tokens%s", rate, k->total, pg->tty && !final ? "" : "\n");
    pg->printed = pg->tty && !final;
}

/* Writes buf[0..n) as the shard `kind` index, then drops it from the buffer. */
static void sink_write(struct sink *k, const char *kind, int index, size_t n,
                       struct progress *pg)
{
    char path[4096], err[ERRBUF];
    if (snprintf(path, sizeof path, "%s_%s_%06d.bin", k->prefix, kind, index) >=
        (int)sizeof path)
        cli_die("--out %s: path too long", k->prefix);
    if (shard_write(path, k->buf + k->head, n, err) < 0)
        cli_die("%s", err);
    progress_clear(pg);
    printf("%s: %zu tokens\n", path, n);
    fflush(stdout);
    /* dropped by moving the head, not the rest: a prep that holds every
     * token until the end (a fraction) writes many shards in a row */
    k->head += n;
    k->n -= n;
}

/* The validation tokens of a stream of n tokens in all. */
static size_t val_size(const struct sink *k, size_t n)
{
    if (k->val_frac > 0) /* as nanoGPT: train = data[:int(n*(1-F))], val the rest */
        return n - (size_t)((double)n * (1.0 - k->val_frac));
    if (k->val_req >= 0)
        return (size_t)k->val_req;
    return n < (size_t)PREP_VAL_CAP * PREP_VAL_FRACTION ? n / PREP_VAL_FRACTION : PREP_VAL_CAP;
}

/* Writes n validation tokens from the buffer's head: one shard, as always,
 * or in a validation-only prep (of a corpus of any size) shards cut at
 * --shard-tokens like the training ones. */
static void sink_write_val(struct sink *k, size_t n, struct progress *pg)
{
    size_t cut = k->val_frac >= 1 ? k->shard_tokens : n;
    k->val += n;
    while (n > 0) {
        size_t m = n < cut ? n : cut;
        sink_write(k, "val", k->val_shard++, m, pg);
        n -= m;
    }
}

/* --val-from end: training shards are written while more than the tokens
 * the split may still claim are buffered (all of them for a fraction, else
 * the count or the default cap); at the end the tail is the split. */
static void sink_flush_end(struct sink *k, int final, struct progress *pg)
{
    if (!final) {
        if (k->val_frac > 0)
            return;
        size_t hold = k->val_req >= 0 ? (size_t)k->val_req : (size_t)PREP_VAL_CAP;
        while (k->n >= hold + k->shard_tokens) {
            k->train += k->shard_tokens;
            sink_write(k, "train", k->shard++, k->shard_tokens, pg);
        }
        return;
    }
    size_t val = val_size(k, (size_t)k->total);
    if (k->total == 0)
        cli_die("prep: the input holds no tokens");
    if (k->val_frac > 0 && k->val_frac < 1 && val == k->total)
        val--; /* a fraction below 1 leaves training at least one token */
    if (val > k->n || (val == k->total && k->val_frac < 1))
        cli_die("--val-tokens %zu: the input holds only %llu tokens, none left for training",
                val, k->total);
    while (k->n > val) {
        size_t n = k->n - val < k->shard_tokens ? k->n - val : k->shard_tokens;
        k->train += n;
        sink_write(k, "train", k->shard++, n, pg);
    }
    sink_write_val(k, val, pg);
    k->val_done = 1;
}

/* Writes what is ready: the val shard once its size is known and at least
 * one training token follows it, then every full training shard; at the end
 * (final) the remainder too. */
static void sink_flush(struct sink *k, int final, struct progress *pg)
{
    if (k->val_end) {
        sink_flush_end(k, final, pg);
        return;
    }
    if (!k->val_done && k->val_frac > 0) {
        size_t val;
        if (!final)
            return; /* the total decides */
        if (k->n == 0)
            cli_die("prep: the input holds no tokens");
        val = val_size(k, k->n);
        if (val == k->n && k->val_frac < 1)
            val--; /* a fraction below 1 leaves training at least one token */
        sink_write_val(k, val, pg);
        k->val_done = 1;
    }
    if (!k->val_done) {
        size_t val;
        if (k->val_req >= 0) {
            val = (size_t)k->val_req;
        } else {
            /* 10% of the total is known to reach the cap once 10x the cap is seen */
            size_t seen_enough = (size_t)PREP_VAL_CAP * PREP_VAL_FRACTION;
            if (!final && k->n < seen_enough)
                return;
            val = final && k->n < seen_enough ? k->n / PREP_VAL_FRACTION : PREP_VAL_CAP;
        }
        if (k->n <= val) {
            if (!final)
                return;
            if (k->n == 0)
                cli_die("prep: the input holds no tokens");
            cli_die("--val-tokens %zu: the input holds only %zu tokens, none left for training",
                    val, k->n);
        }
        if (val > 0)
            sink_write_val(k, val, pg);
        k->val_done = 1;
    }
    while (k->n >= k->shard_tokens || (final && k->n > 0)) {
        size_t n = k->n < k->shard_tokens ? k->n : k->shard_tokens;
        k->train += n;
        sink_write(k, "train", k->shard++, n, pg);
    }
}

static void sink_push(struct sink *k, const int32_t *ids, size_t n, struct progress *pg)
{
    if (k->head) { /* what is left moves to the front once per push */
        memmove(k->buf, k->buf + k->head, k->n * sizeof *k->buf);
        k->head = 0;
    }
    grow(&k->buf, &k->cap, k->n + n, sizeof *k->buf);
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= k->vocab)
            cli_die("prep: tokenizer produced id %d outside its vocabulary of %d", ids[i],
                    k->vocab);
        k->buf[k->n + i] = (uint16_t)ids[i];
    }
    k->n += n;
    k->total += n;
    sink_flush(k, 0, pg);
}

/* Warns about shards of an earlier, longer run that this run did not
 * overwrite: a loader glob would silently pick them up. */
static void warn_stale(const struct sink *k)
{
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s_train_%06d.bin", k->prefix, k->shard);
    /* a validation-only prep writes no training shard: any there are another
     * prep's (the training text of the same prefix), not stale */
    if (k->val_frac < 1 && stat(path, &st) == 0)
        fprintf(stderr, "anatomy: warning: %s (and maybe later ones) is left from an earlier "
                        "run; remove it before training\n", path);
    snprintf(path, sizeof path, "%s_val_%06d.bin", k->prefix, k->val_shard);
    if (stat(path, &st) == 0)
        fprintf(stderr, "anatomy: warning: %s is left from an earlier run; remove it\n", path);
}

static void parse_args(int argc, char **argv, struct prep_opts *o)
{
    static const struct option longopts[] = {
        { "tokenizer", required_argument, NULL, 'k' },
        { "input", required_argument, NULL, 'i' },
        { "out", required_argument, NULL, 'o' },
        { "val-tokens", required_argument, NULL, 'v' },
        { "val-fraction", required_argument, NULL, 'F' },
        { "val-from", required_argument, NULL, 'W' },
        { "shard-tokens", required_argument, NULL, 's' },
        { "jsonl-field", required_argument, NULL, 'f' },
        { "vocab", required_argument, NULL, 'V' },
        { "threads", required_argument, NULL, 'j' },
        { "chunk-bytes", required_argument, NULL, 'c' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    *o = (struct prep_opts){ .val_tokens = -1, .shard_tokens = PREP_DEFAULT_SHARD };
    o->inputs = calloc((size_t)argc + 1, sizeof *o->inputs);
    if (!o->inputs)
        cli_die("prep: out of memory");
    optind = 0;     /* full reset: cmd_prep may run more than once in a process */
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (c) {
        case 'k': o->kind = optarg; break;
        case 'i': o->inputs[o->ninputs++] = optarg; break;
        case 'o': o->out = optarg; break;
        case 'v': o->val_tokens = cli_int("--val-tokens", optarg, 0, INT32_MAX); break;
        case 'F':
            o->val_fraction = cli_float("--val-fraction", optarg, 0, 1);
            if (o->val_fraction <= 0)
                cli_die("--val-fraction: %s must be above 0 (--val-tokens 0 writes no "
                        "validation shard)", optarg);
            break;
        case 'W':
            if (strcmp(optarg, "start") && strcmp(optarg, "end"))
                cli_die("--val-from: unknown place '%s' (expected start or end)", optarg);
            o->val_end = strcmp(optarg, "end") == 0;
            break;
        case 's': o->shard_tokens = cli_int("--shard-tokens", optarg, 1, INT32_MAX); break;
        case 'f': o->field = optarg; break;
        case 'V': o->vocab_dir = optarg; break;
        case 'j': o->threads = (int)cli_int("--threads", optarg, 1, 1024); break;
        case 'c': o->chunk = (size_t)cli_int("--chunk-bytes", optarg, 1, 1LL << 30); break;
        case 'h': usage(stdout); exit(0);
        case ':': cli_die("prep: %s needs a value", argv[optind - 1]);
        default: cli_die("prep: unknown option '%s' (see anatomy prep --help)", argv[optind - 1]);
        }
    }
    for (int i = optind; i < argc; i++)     /* `--input a b c`: the rest are inputs too */
        o->inputs[o->ninputs++] = argv[i];
    if (!o->kind)
        cli_die("prep: --tokenizer is required (bytes or gpt2)");
    if (o->ninputs == 0)
        cli_die("prep: --input is required");
    if (!o->out || !*o->out)
        cli_die("prep: --out is required");
    if (o->val_fraction > 0 && o->val_tokens >= 0)
        cli_die("--val-fraction: give it or --val-tokens, not both");
}

/* Fails early, before any work, on inputs that cannot be read and on an
 * output folder that does not exist. Returns the total input size (bytes of
 * regular files; 0 when some input's size is unknown). */
static unsigned long long check_paths(const struct prep_opts *o)
{
    unsigned long long total = 0;
    int known = 1;
    int stdin_seen = 0;
    for (int i = 0; i < o->ninputs; i++) {
        struct stat st;
        char why[ERRBUF];
        if (!strcmp(o->inputs[i], "-")) { /* stdin: a stream, read once */
            if (stdin_seen++)
                cli_die("--input -: stdin can be read only once");
            known = 0;
            continue;
        }
        /* checked, not opened: a FIFO would block here, and again below */
        int fd = fs_open_regular(o->inputs[i], why);
        if (fd < 0)
            cli_die("%s%s", why, strstr(why, "not a regular file")
                                     ? " (to read a stream, give --input - and redirect it)"
                                     : "");
        if (fstat(fd, &st) < 0)
            cli_die("%s: %s", o->inputs[i], strerror(errno));
        close(fd);
        total += (unsigned long long)st.st_size;
    }
    char dir[4096];
    const char *slash = strrchr(o->out, '/');
    if (slash && slash != o->out)
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - o->out), o->out);
    else
        snprintf(dir, sizeof dir, "%s", slash ? "/" : ".");
    if (access(dir, W_OK) < 0)
        cli_die("--out %s: %s: %s", o->out, dir, strerror(errno));
    return known ? total : 0;
}

/* The default --threads: the cores in this process's affinity mask (which
 * taskset and container CPU sets narrow), else the cores online. */
static int default_threads(void)
{
    cpu_set_t set;
    int n = 0;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        n = CPU_COUNT(&set);
    if (n <= 0)
        n = (int)sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 1024 ? 1024 : n;
}

/* The default --chunk-bytes: 1 MiB, or less when the input is too small to
 * give every thread several items (cuts change no token, so any size will
 * do; small ones only cost a little overhead per item). */
static size_t default_chunk(int threads, unsigned long long total_bytes)
{
    unsigned long long c = total_bytes / ((unsigned long long)threads * PREP_ITEMS_PER_THREAD);
    if (threads == 1 || total_bytes == 0 || c >= PREP_CHUNK_MAX)
        return PREP_CHUNK_MAX;
    return c > PREP_CHUNK_MIN ? (size_t)c : PREP_CHUNK_MIN;
}

/* The main thread's part of the pipeline: keeps the ring full of input
 * and writes out encoded items in order until the input is used up. */
static void run_pipeline(struct pipeline *pl, struct source *src, struct sink *sk,
                         struct progress *pg)
{
    int more = 1;
    for (;;) {
        while (more && pl->filled - pl->written < pl->nring) {
            struct item *it = &pl->ring[pl->filled % pl->nring];
            if (!source_fill(src, it))
                more = 0;
            else
                pipeline_publish(pl, it);
        }
        if (pl->written == pl->filled)
            return;
        struct item *it = pipeline_next_done(pl);
        if (it->failed)
            cli_die("%s", it->err);
        sink_push(sk, it->ids, it->nids, pg);
        pl->written++;
        progress_report(pg, src, sk, 0);
    }
}

int cmd_prep(int argc, char **argv)
{
    struct prep_opts o;
    parse_args(argc, argv, &o);
    unsigned long long total_bytes = check_paths(&o);
    if (!o.threads)
        o.threads = default_threads();
    if (!o.chunk)
        o.chunk = default_chunk(o.threads, total_bytes);

    struct pipeline pl = { .nring = 2 * (size_t)o.threads + 2 };
    struct worker *ws = workers_open(&o, &pl);
    int vocab = tokenizer_vocab_size(ws[0].tk);
    if (vocab > 65536)
        cli_die("--tokenizer %s: vocabulary of %d ids does not fit the shards' uint16 tokens",
                o.kind, vocab);

    pl.ring = calloc(pl.nring, sizeof *pl.ring);
    if (!pl.ring)
        cli_die("prep: out of memory");
    pthread_mutex_init(&pl.mu, NULL);
    pthread_cond_init(&pl.work, NULL);
    pthread_cond_init(&pl.done, NULL);
    for (int t = 0; t < o.threads; t++)
        spawn(&ws[t].th, worker_main, &ws[t]);

    struct source src = { .o = &o, .fd = -1 };
    struct sink sk = { .prefix = o.out, .val_req = o.val_tokens, .vocab = vocab,
                       .shard_tokens = (size_t)o.shard_tokens, .val_frac = o.val_fraction,
                       .val_end = o.val_end };
    struct progress pg = { .tty = isatty(2), .total_bytes = total_bytes };
    pg.on = pg.tty || total_bytes > (unsigned long long)PREP_PROGRESS_BYTES;
    pg.t0 = pg.last = now_s();

    run_pipeline(&pl, &src, &sk, &pg);
    pthread_mutex_lock(&pl.mu);
    pl.quit = 1;
    pthread_cond_broadcast(&pl.work);
    pthread_mutex_unlock(&pl.mu);
    for (int t = 0; t < o.threads; t++)
        pthread_join(ws[t].th, NULL);

    sink_flush(&sk, 1, &pg);
    progress_clear(&pg);
    if (pg.on)
        progress_report(&pg, &src, &sk, 1);
    printf("prep: %llu document(s), %llu bytes -> %llu tokens: %llu val, %llu train in %d "
           "shard(s), vocab %d\n", src.docs, src.bytes, sk.total, sk.val, sk.train, sk.shard,
           vocab);
    warn_stale(&sk);

    for (size_t i = 0; i < pl.nring; i++)
        item_free(&pl.ring[i]);
    free(pl.ring);
    pthread_cond_destroy(&pl.work);
    pthread_cond_destroy(&pl.done);
    pthread_mutex_destroy(&pl.mu);
    for (int t = 0; t < o.threads; t++)
        tokenizer_close(ws[t].tk);
    free(ws);
    free(sk.buf);
    free(src.carry);
    free(src.line);
    free(o.inputs);
    return 0;
}
