/* cmd_eval.c: `anatomy eval`: mean loss of a model over the first micro-batches
 * of a token stream, read in order (micro-batch k starts at token k*B*T), or
 * HellaSwag accuracy (completion-style: the ending whose tokens have the lowest
 * mean loss given the context wins). */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../data/errbuf.h"
#include "../data/hellaswag.h"
#include "cli.h"
#include "batches.h"
#include "family.h"
#include "hellaswag_eval.h"
#include "setup.h"

static const char usage[] =
    "usage: anatomy eval (--init PATH | --preset NAME) --data PATH [options]\n"
    "       anatomy eval --init PATH --hellaswag FILE [options]\n"
    "\n"
    "Prints 'loss <mean>' over the first N micro-batches of the data, read in order\n"
    "and unaugmented (the mean over every scored token, masked token, example or\n"
    "forecast element, as PyTorch's over the whole set), then one line per figure the model reports (e.g. 'accuracy',\n"
    "'mlm_accuracy', 'mse', 'mae'); with --hellaswag 'hellaswag acc <accuracy> count\n"
    "<examples>'. A forecaster's loss is the one its checkpoint trained with (train\n"
    "--loss); its 'mse' and 'mae' lines are those errors whatever the loss.\n"
    "\n"
    "  --init PATH     Hugging Face GPT-2 directory, llm.c .bin, or anatomy checkpoint\n"
    "  --preset NAME   or a randomly initialised preset (with --seed; --model too)\n"
    "  --data PATH     the data as the model's family reads it (token shards: a glob)\n"
    "  --split S       train, val or test (default test): which split of data that\n"
    "                  holds several (a CSV series), and no augmentation or random\n"
    "                  masks beyond the split's fixed ones\n"
    "  --grads FILE    also write the gradient of the first micro-batch's loss, by\n"
    "                  parameter name, as safetensors (for reference checks)\n"
    "  --forecast FILE forecasters (patchts, tsgpt): every evaluated window's forecast\n"
    "                  as CSV (batch,row,step,forecast or median/q10/q90/mean,target)\n"
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
    "                  (bf16 on cpu: the linear layers' matmuls on AMX or AVX512-BF16)\n"
    "  --threads N     CPU threads (default: all cores)\n"
    "  --config FILE   read options from 'key = value' lines\n"
    "  --help          this text\n";

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
    if (!m->fam->generative || m->V != tokenizer_vocab_size(tk))
        cli_die("--hellaswag: needs a GPT-2-tokenizer language model (this %s model has %d "
                "classes, the tokenizer %d)", m->fam->name, m->V, tokenizer_vocab_size(tk));
    int T = hellaswag_max_len(set);
    if (T > m->maxT)
        T = m->maxT;
    if ((size_t)nex > set->n)
        nex = (int)set->n;
    int rows = nex * HELLASWAG_ENDINGS;
    if (m->plan(m, rows, T, err))
        cli_die("%s", err);
    int32_t *in = malloc((size_t)rows * T * sizeof *in), *tg = malloc((size_t)rows * T * sizeof *tg);
    if (!in || !tg)
        cli_die("out of memory");
    size_t correct = 0, count = 0;
    if (hellaswag_score(m, set, path, 0, 1, in, tg, &correct, &count, err))
        cli_die("%s", err);
    printf("hellaswag acc %.6f count %zu\n", (double)correct / (double)count, count);
    free(in);
    free(tg);
    hellaswag_free(set);
    tokenizer_close(tk);
    m->destroy(m);
    be->destroy(be);
    return 0;
}

/* One micro-batch's forecast lines, each prefixed with the batch index. */
static int write_batch_forecast(model *m, FILE *out, long long batch)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    if (!mem)
        return -1;
    int rc = m->write_forecast(m, mem);
    fclose(mem);
    for (char *line = buf; rc == 0 && line && *line;) {
        char *nl = strchr(line, '\n');
        size_t n = nl ? (size_t)(nl - line) : strlen(line);
        if (fprintf(out, "%lld,%.*s\n", batch, (int)n, line) < 0)
            rc = -1;
        line = nl ? nl + 1 : NULL;
    }
    free(buf);
    return rc < 0 || ferror(out) ? -1 : 0;
}

/* --grads FILE: the gradient of the first micro-batch's loss, by view name,
 * as a safetensors file (for reference-parity tests). */
static void write_grads(model *m, batch_source *src, const char *path)
{
    char err[ERRBUF];
    float *g = malloc(m->nparams * sizeof *g);
    ckpt_meta md = { 0 };
    if (!g)
        cli_die("--grads %s: out of memory", path);
    src->seek(src, 0);
    if (src->next(src, err))
        cli_die("%s", err);
    model_zero_grad(m);
    double loss = m->forward(m, &src->batch, 1.0f);
    m->backward(m);
    m->be->download(m->be, g, DT_F32, m->grads, m->be->act, m->nparams);
    model_config cfg = setup_config_of(m);
    setup_meta_put_config(&md, &cfg);
    ckpt_meta_set(&md, "loss", "%.9g", loss);
    if (ckpt_save(path, m->views, m->nviews, m->nparams, g, NULL, NULL, &md, err))
        cli_die("--grads %s", err);
    ckpt_meta_free(&md);
    printf("grads %s loss %.9g\n", path, loss);
    free(g);
}

int cmd_eval(int argc, char **argv)
{
    enum { O_INIT = 256, O_PRESET, O_MODEL, O_DATA, O_SPLIT, O_BATCH, O_SEQ, O_BATCHES, O_SEED,
           O_DEVICE, O_PRECISION, O_THREADS, O_HELLASWAG, O_LIMIT, O_VOCAB, O_GRADS, O_FORECAST,
           O_HELP };
    static const struct option base[] = {
        { "init", 1, 0, O_INIT },       { "preset", 1, 0, O_PRESET },
        { "model", 1, 0, O_MODEL },     { "data", 1, 0, O_DATA },
        { "split", 1, 0, O_SPLIT },     { "batch", 1, 0, O_BATCH },
        { "seq", 1, 0, O_SEQ },         { "batches", 1, 0, O_BATCHES },
        { "seed", 1, 0, O_SEED },       { "device", 1, 0, O_DEVICE },
        { "precision", 1, 0, O_PRECISION },
        { "threads", 1, 0, O_THREADS }, { "hellaswag", 1, 0, O_HELLASWAG },
        { "limit", 1, 0, O_LIMIT },     { "vocab", 1, 0, O_VOCAB },
        { "grads", 1, 0, O_GRADS },     { "forecast", 1, 0, O_FORECAST },
        { "help", 0, 0, O_HELP },
        { 0, 0, 0, 0 },
    };
    struct option *longopts = setup_longopts(base);
    model_source src = { 0 };
    const char *data = NULL, *device = NULL, *precision = NULL, *hs = NULL, *vocab = NULL;
    const char *split = "test", *grads = NULL, *forecast = NULL;
    int B = 0, T = 0, threads = 0, c;
    long long batches = 0, limit = 0;
    char err[ERRBUF];

    src.seed = 1337;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        if (setup_take_option(&src, c, optarg))
            continue;
        switch (c) {
        case O_INIT: src.init = optarg; break;
        case O_PRESET: src.preset = optarg; break;
        case O_MODEL: src.model = optarg; break;
        case O_DATA: data = optarg; break;
        case O_SPLIT: split = optarg; break;
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
        case O_GRADS: grads = optarg; break;
        case O_FORECAST: forecast = optarg; break;
        case O_HELP:
            fputs(usage, stdout);
            setup_print_model_help(stdout);
            free(longopts);
            return 0;
        default: cli_bad_option("eval", c, argv);
        }
    }
    free(longopts);
    if (optind < argc)
        cli_die("eval: unexpected argument '%s'", argv[optind]);
    if (!!src.init + !!(src.preset || src.model) != 1)
        cli_die("eval: give exactly one of --init or --preset (or --model)");
    if (src.nset && src.init)
        cli_die("--%s: only with --preset or --model (other sources carry their config)",
                src.set_opt[0]);
    if (hs) {
        if (data)
            cli_die("eval: give one of --data or --hellaswag");
        if (T || batches || grads || forecast)
            cli_die("eval: --seq, --batches, --grads and --forecast do not apply to --hellaswag");
        return eval_hellaswag(hs, vocab, limit, B ? B : 1, &src, device, threads, precision);
    }
    if (!data)
        cli_die("--data: required (the data the model reads), or --hellaswag FILE");
    if (limit || vocab)
        cli_die("eval: --limit and --vocab apply to --hellaswag only");
    data_split sp;
    if (strcmp(split, "train") == 0)
        sp = SPLIT_TRAIN;
    else if (strcmp(split, "val") == 0)
        sp = SPLIT_VAL;
    else if (strcmp(split, "test") == 0)
        sp = SPLIT_TEST;
    else
        cli_die("--split: unknown split '%s' (expected train, val or test)", split);
    if (!B)
        B = 8;

    backend *be = setup_backend(device, threads, precision);
    ckpt_meta md = { 0 };
    model *m = setup_model(be, &src, &md);
    /* a checkpoint's loss is the one its run trained and validated with */
    if (setup_meta_get_loss(&md, src.init ? src.init : "--preset", &m->loss_kind,
                            &m->huber_delta, err))
        cli_die("%s", err);
    ckpt_meta_free(&md);
    if (!T)
        T = m->maxT < 1024 ? m->maxT : 1024;
    if (m->plan(m, B, T, err))
        cli_die("%s", err);
    /* read in order, unaugmented: the split's own masks and draws (seed 0) */
    data_spec ds = { .path = data, .B = B, .T = T, .world = 1, .split = sp };
    batch_source *bs = m->fam->open_data(m, &ds, err);
    if (!bs)
        cli_die("%s", err);
    if (grads) {
        write_grads(m, bs, grads);
        bs->seek(bs, 0);
    }
    long long fit = (long long)bs->epoch_batches(bs);
    if (!batches)
        batches = fit > 0 ? fit : 1;
    else if (fit > 0 && batches > fit) /* would wrap around and count batches twice */
        cli_die("--batches: %lld is more than the data holds (%lld micro-batches of %d x %d); "
                "give at most %lld, or leave --batches out for all of them", batches, fit, B,
                T, fit);
    FILE *fc = NULL;
    char fc_tmp[4200];
    if (forecast) {
        if (!m->write_forecast || !m->metrics)
            cli_die("--forecast: a %s model makes no forecasts", m->fam->name);
        snprintf(fc_tmp, sizeof fc_tmp, "%s.tmp", forecast);
        fc = fopen(fc_tmp, "w");
        if (!fc)
            cli_die("--forecast %s: %s", forecast, strerror(errno));
        fprintf(fc, "batch,%s\n", m->forecast_header);
    }
    /* the mean over every scored item, not of the micro-batches' means */
    double acc[2 * MODEL_MAXLOSS] = { 0 };
    double sums[MODEL_MAXMETRICS] = { 0 }, counts[MODEL_MAXMETRICS] = { 0 };
    for (long long i = 0; i < batches; i++) {
        if (bs->next(bs, err))
            cli_die("%s", err);
        m->forward(m, &bs->batch, 0.0f);
        model_loss_add(m, acc);
        if (m->metrics)
            m->metrics(m, &bs->batch, sums, counts);
        if (fc && write_batch_forecast(m, fc, i))
            cli_die("--forecast %s: write failed", forecast);
    }
    if (fc) { /* complete, then in place: a failed run leaves no partial file */
        if (fflush(fc) || fsync(fileno(fc)) || fclose(fc) || rename(fc_tmp, forecast))
            cli_die("--forecast %s: %s", forecast, strerror(errno));
        printf("forecast %s\n", forecast);
    }
    printf("loss %.6f\n", model_loss_mean(acc));
    printf("averaged over %lld batches, %lld tokens (%d x %d each)\n", batches,
           batches * B * T, B, T);
    for (int k = 0; m->metrics && k < m->nmetrics; k++)
        printf("%s %.6f\n", m->metric_names[k], counts[k] ? sums[k] / counts[k] : 0.0);
    /* last, so that the figures keep their lines: what produced them (a bf16
     * backend's accuracy is not fp32's) */
    printf("evaluated %s (%zu parameters) on %s, %s activations%s, split %s\n", m->family,
           m->nparams_real, be->name, dtype_name(be->act),
           strcmp(be->name, "cpu-bf16") == 0 ? ", linear layers' matmuls in bf16" : "", split);
    bs->close(bs);
    m->destroy(m);
    be->destroy(be);
    return 0;
}
