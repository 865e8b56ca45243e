/* cmd_eval.c: `anatomy eval`: mean loss of a model over the first micro-batches
 * of a token stream, read in order (micro-batch k starts at token k*B*T). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../data/errbuf.h"
#include "../data/shard.h"
#include "cli.h"
#include "setup.h"

static const char usage[] =
    "usage: anatomy eval --init PATH --data GLOB [options]\n"
    "\n"
    "Prints 'loss <mean>' over the first N micro-batches of the shards.\n"
    "\n"
    "  --init PATH     Hugging Face GPT-2 directory, llm.c .bin, or anatomy checkpoint\n"
    "  --preset NAME   or a randomly initialised preset (with --seed)\n"
    "  --data GLOB     token shards (llm.c layout)\n"
    "  --batch B       micro-batch sequences (default 8)\n"
    "  --seq T         sequence length (default: the model's context, at most 1024)\n"
    "  --batches N     micro-batches to average (default: all that fit in the shards)\n"
    "  --seed S        with --preset: initialisation seed (default 1337)\n"
    "  --device D      cpu or cuda (default: cuda when a GPU is present, else cpu)\n"
    "  --precision P   fp32 or bf16 (default: bf16 on cuda, fp32 on cpu)\n"
    "  --threads N     CPU threads (default: all cores)\n"
    "  --config FILE   read options from 'key = value' lines\n"
    "  --help          this text\n";

int cmd_eval(int argc, char **argv)
{
    enum { O_INIT = 256, O_PRESET, O_DATA, O_BATCH, O_SEQ, O_BATCHES, O_SEED, O_DEVICE, O_PRECISION,
           O_THREADS, O_HELP };
    static const struct option longopts[] = {
        { "init", 1, 0, O_INIT },       { "preset", 1, 0, O_PRESET },
        { "data", 1, 0, O_DATA },       { "batch", 1, 0, O_BATCH },
        { "seq", 1, 0, O_SEQ },         { "batches", 1, 0, O_BATCHES },
        { "seed", 1, 0, O_SEED },       { "device", 1, 0, O_DEVICE },
        { "precision", 1, 0, O_PRECISION },
        { "threads", 1, 0, O_THREADS }, { "help", 0, 0, O_HELP },
        { 0, 0, 0, 0 },
    };
    model_source src = { 0 };
    const char *data = NULL, *device = NULL, *precision = NULL;
    int B = 8, T = 0, threads = 0, c;
    long long batches = 0;
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
        case O_HELP: fputs(usage, stdout); return 0;
        default: cli_bad_option("eval", c, argv);
        }
    }
    if (optind < argc)
        cli_die("eval: unexpected argument '%s'", argv[optind]);
    if (!!src.init + !!src.preset != 1)
        cli_die("eval: give exactly one of --init or --preset");
    if (!data)
        cli_die("--data: required (a glob of token shards)");

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
