/* cmd_eval.c: `anatomy eval`: mean loss of a model over the first micro-batches
 * of a token stream, read in order (micro-batch k starts at token k*B*T), or
 * HellaSwag accuracy (completion-style: the ending whose tokens have the lowest
 * mean loss given the context wins). */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../data/errbuf.h"
#include "../data/hellaswag.h"
#include "../data/shard.h"
#include "cli.h"
#include "setup.h"

static const char usage[] =
    "usage: anatomy eval --init PATH --data GLOB [options]\n"
    "       anatomy eval --init PATH --hellaswag FILE [options]\n"
    "\n"
    "Prints 'loss <mean>' over the first N micro-batches of the shards, or with\n"
    "--hellaswag 'hellaswag acc <accuracy> count <examples>'.\n"
    "\n"
    "  --init PATH     Hugging Face GPT-2 directory, llm.c .bin, or anatomy checkpoint\n"
    "  --preset NAME   or a randomly initialised preset (with --seed)\n"
    "  --data GLOB     token shards (llm.c layout)\n"
    "  --hellaswag FILE\n"
    "                  HellaSwag JSON Lines (ctx, endings, label); GPT-2 tokenizer\n"
    "  --limit N       with --hellaswag: the first N examples only\n"
    "  --vocab DIR     with --hellaswag: GPT-2 vocabulary folder (default:\n"
    "                  $ANATOMY_GPT2_DIR, else build/.cache/gpt2)\n"
    "  --batch B       micro-batch sequences (default 8; with --hellaswag:\n"
    "                  examples per forward pass, 4 rows each, default 1)\n"
    "  --seq T         sequence length (default: the model's context, at most 1024)\n"
    "  --batches N     micro-batches to average (default: all that fit in the shards)\n"
    "  --seed S        with --preset: initialisation seed (default 1337)\n"
    "  --device D      cpu or cuda (default: cuda when a GPU is present, else cpu)\n"
    "  --precision P   fp32 or bf16 (default: bf16 on cuda, fp32 on cpu)\n"
    "  --threads N     CPU threads (default: all cores)\n"
    "  --config FILE   read options from 'key = value' lines\n"
    "  --help          this text\n";

/* Tokens of row k of an example: context then ending k; n = their count. The
 * model sees the first n - 1 as inputs; the ending's e tokens are predicted
 * by positions n-1-e .. n-2. */
static int hs_row_len(const hellaswag_example *ex, int k)
{
    return ex->nctx + ex->nend[k];
}

/* Fills rows 4*slot .. 4*slot+3 of in/tg (T wide) with the example: inputs
 * are the last T of its n - 1 input tokens (the context loses its start when
 * too long), targets -1 except at the ending's positions; padding at the end
 * (causal attention keeps it from the earlier positions). first[k] gets the
 * position of the ending's first target in row k. */
static void hs_fill(const hellaswag_example *ex, int slot, int T, int32_t *in, int32_t *tg,
                    int *first)
{
    for (int k = 0; k < HELLASWAG_ENDINGS; k++) {
        int32_t *ri = in + (size_t)(slot * HELLASWAG_ENDINGS + k) * T;
        int32_t *rt = tg + (size_t)(slot * HELLASWAG_ENDINGS + k) * T;
        int n = hs_row_len(ex, k), skip = n - 1 > T ? n - 1 - T : 0;
        for (int t = 0; t < T; t++) {
            int j = t + skip; /* index of the input token in ctx ++ end */
            if (j >= n - 1) {
                ri[t] = 0;
                rt[t] = -1;
                continue;
            }
            ri[t] = j < ex->nctx ? ex->ctx[j] : ex->end[k][j - ex->nctx];
            rt[t] = j + 1 >= ex->nctx ? ex->end[k][j + 1 - ex->nctx] : -1;
        }
        first[k] = ex->nctx - 1 - skip;
    }
}

/* Mean cross-entropy of the e targets of row `row` from position t0 on,
 * from the logits of the last target-less forward. */
static double hs_row_loss(model *m, int row, int t0, const int32_t *tg, int T, float *logits)
{
    double sum = 0.0;
    int e = 0;
    for (int t = t0; t < T && tg[(size_t)row * T + t] >= 0; t++, e++) {
        m->logits(m, row, t, logits);
        double mx = logits[0], z = 0.0;
        for (int v = 1; v < m->V; v++)
            mx = logits[v] > mx ? logits[v] : mx;
        for (int v = 0; v < m->V; v++)
            z += exp((double)logits[v] - mx);
        sum += mx + log(z) - logits[tg[(size_t)row * T + t]];
    }
    return e ? sum / e : INFINITY;
}

/* `eval --hellaswag`: batch examples of 4 rows each through the model and
 * print the fraction whose right ending has the lowest mean loss. */
static int eval_hellaswag(const char *path, const char *vocab, long long limit, int nex,
                          const model_source *src, const char *device, int threads,
                          const char *precision)
{
    char err[ERRBUF];
    tokenizer *tk = tokenizer_open("gpt2", vocab, err);
    if (!tk)
        cli_die("%s", err);
    hellaswag_set *set = hellaswag_load(path, tk, (long)limit, err);
    if (!set)
        cli_die("%s", err);
    backend *be = setup_backend(device, threads, precision);
    model *m = setup_model(be, src, NULL);
    if (m->V != tokenizer_vocab_size(tk))
        cli_die("--hellaswag: the model has %d classes, the GPT-2 tokenizer %d", m->V,
                tokenizer_vocab_size(tk));
    int T = 1;
    for (size_t i = 0; i < set->n; i++) {
        for (int k = 0; k < HELLASWAG_ENDINGS; k++) {
            const hellaswag_example *ex = &set->ex[i];
            if (ex->nend[k] > m->maxT)
                cli_die("%s:%ld: ending %d has %d tokens, more than the model's context %d",
                        path, ex->line, k, ex->nend[k], m->maxT);
            if (hs_row_len(ex, k) - 1 > T)
                T = hs_row_len(ex, k) - 1;
        }
    }
    if (T > m->maxT)
        T = m->maxT;
    if ((size_t)nex > set->n)
        nex = (int)set->n;
    int rows = nex * HELLASWAG_ENDINGS, first[HELLASWAG_ENDINGS];
    if (m->plan(m, rows, T, err))
        cli_die("%s", err);
    int32_t *in = malloc((size_t)rows * T * sizeof *in), *tg = malloc((size_t)rows * T * sizeof *tg);
    float *logits = malloc((size_t)m->V * sizeof *logits);
    if (!in || !tg || !logits)
        cli_die("out of memory");
    size_t correct = 0;
    for (size_t i = 0; i < set->n; i += (size_t)nex) {
        int used = set->n - i < (size_t)nex ? (int)(set->n - i) : nex;
        for (size_t j = 0; j < (size_t)rows * T; j++)
            in[j] = 0, tg[j] = -1;
        for (int s = 0; s < used; s++)
            hs_fill(&set->ex[i + s], s, T, in, tg, first);
        m->forward(m, in, NULL, 0.0f);
        for (int s = 0; s < used; s++) {
            hs_fill(&set->ex[i + s], s, T, in, tg, first);
            int best = 0;
            double best_loss = INFINITY;
            for (int k = 0; k < HELLASWAG_ENDINGS; k++) {
                double l = hs_row_loss(m, s * HELLASWAG_ENDINGS + k, first[k], tg, T, logits);
                if (l < best_loss)
                    best_loss = l, best = k;
            }
            correct += best == set->ex[i + s].label;
        }
    }
    printf("hellaswag acc %.6f count %zu\n", (double)correct / (double)set->n, set->n);
    free(in);
    free(tg);
    free(logits);
    hellaswag_free(set);
    tokenizer_close(tk);
    m->destroy(m);
    be->destroy(be);
    return 0;
}

int cmd_eval(int argc, char **argv)
{
    enum { O_INIT = 256, O_PRESET, O_DATA, O_BATCH, O_SEQ, O_BATCHES, O_SEED, O_DEVICE, O_PRECISION,
           O_THREADS, O_HELLASWAG, O_LIMIT, O_VOCAB, O_HELP };
    static const struct option longopts[] = {
        { "init", 1, 0, O_INIT },       { "preset", 1, 0, O_PRESET },
        { "data", 1, 0, O_DATA },       { "batch", 1, 0, O_BATCH },
        { "seq", 1, 0, O_SEQ },         { "batches", 1, 0, O_BATCHES },
        { "seed", 1, 0, O_SEED },       { "device", 1, 0, O_DEVICE },
        { "precision", 1, 0, O_PRECISION },
        { "threads", 1, 0, O_THREADS }, { "hellaswag", 1, 0, O_HELLASWAG },
        { "limit", 1, 0, O_LIMIT },     { "vocab", 1, 0, O_VOCAB },
        { "help", 0, 0, O_HELP },
        { 0, 0, 0, 0 },
    };
    model_source src = { 0 };
    const char *data = NULL, *device = NULL, *precision = NULL, *hs = NULL, *vocab = NULL;
    int B = 0, T = 0, threads = 0, c;
    long long batches = 0, limit = 0;
    char err[ERRBUF];

    src.seed = 1337;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        switch (c) {
        case O_INIT: src.init = optarg; break;
        case O_PRESET: src.preset = optarg; break;
        case O_DATA: data = optarg; break;
        case O_BATCH: B = (int)cli_int("--batch", optarg, 1, 1 << 20); break;
        case O_SEQ: T = (int)cli_int("--seq", optarg, 1, 1 << 20); break;
        case O_BATCHES: batches = cli_int("--batches", optarg, 1, 1LL << 40); break;
        case O_SEED: src.seed = (uint64_t)cli_int("--seed", optarg, 0, 1LL << 62); break;
        case O_DEVICE: device = optarg; break;
        case O_PRECISION: precision = optarg; break;
        case O_THREADS: threads = (int)cli_int("--threads", optarg, 1, 4096); break;
        case O_HELLASWAG: hs = optarg; break;
        case O_LIMIT: limit = cli_int("--limit", optarg, 1, 1LL << 40); break;
        case O_VOCAB: vocab = optarg; break;
        case O_HELP: fputs(usage, stdout); return 0;
        default: cli_bad_option("eval", c, argv);
        }
    }
    if (optind < argc)
        cli_die("eval: unexpected argument '%s'", argv[optind]);
    if (!!src.init + !!src.preset != 1)
        cli_die("eval: give exactly one of --init or --preset");
    if (hs) {
        if (data)
            cli_die("eval: give one of --data or --hellaswag");
        if (T || batches)
            cli_die("eval: --seq and --batches do not apply to --hellaswag");
        return eval_hellaswag(hs, vocab, limit, B ? B : 1, &src, device, threads, precision);
    }
    if (!data)
        cli_die("--data: required (a glob of token shards), or --hellaswag FILE");
    if (limit || vocab)
        cli_die("eval: --limit and --vocab apply to --hellaswag only");
    if (!B)
        B = 8;

    backend *be = setup_backend(device, threads, precision);
    model *m = setup_model(be, &src, NULL);
    if (!T)
        T = m->maxT < 1024 ? m->maxT : 1024;
    if (m->plan(m, B, T, err))
        cli_die("%s", err);
    loader *ld = loader_open(data, B, T, 0, 1, 0, 0, m->V, err);
    if (!ld)
        cli_die("%s", err);
    long long fit = (long long)((loader_tokens(ld) - 1) / ((uint64_t)B * T));
    if (!batches)
        batches = fit > 0 ? fit : 1;
    int32_t *in = malloc((size_t)B * T * sizeof *in), *tg = malloc((size_t)B * T * sizeof *tg);
    if (!in || !tg)
        cli_die("out of memory");
    double sum = 0.0;
    for (long long i = 0; i < batches; i++) {
        if (loader_next(ld, in, tg, err))
            cli_die("%s", err);
        sum += m->forward(m, in, tg, 0.0f);
    }
    printf("loss %.6f\n", sum / (double)batches);
    free(in);
    free(tg);
    loader_close(ld);
    m->destroy(m);
    be->destroy(be);
    return 0;
}
