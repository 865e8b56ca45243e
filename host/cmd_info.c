/* cmd_info.c: `anatomy info`: a model's configuration, parameter count and
 * (with --views) its parameter table. Needs no backend. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "../data/errbuf.h"
#include "cli.h"
#include "setup.h"

static const char usage[] =
    "usage: anatomy info (--preset NAME | --init PATH) [--vocab-size N] [--max-seq N] [--views]\n"
    "\n"
    "Prints the model's configuration and parameter count (padding excluded).\n"
    "  --views   also list every parameter tensor with its shape and offset\n";

static void print_count(const char *label, size_t n)
{
    char digits[32], out[48];
    int len = snprintf(digits, sizeof digits, "%zu", n), j = 0;
    for (int i = 0; i < len; i++) {
        if (i && (len - i) % 3 == 0)
            out[j++] = ',';
        out[j++] = digits[i];
    }
    out[j] = 0;
    printf("%-12s %s\n", label, out);
}

int cmd_info(int argc, char **argv)
{
    enum { O_PRESET = 256, O_INIT, O_VOCAB, O_MAXSEQ, O_VIEWS, O_HELP };
    static const struct option longopts[] = {
        { "preset", 1, 0, O_PRESET }, { "init", 1, 0, O_INIT },
        { "vocab-size", 1, 0, O_VOCAB }, { "max-seq", 1, 0, O_MAXSEQ },
        { "views", 0, 0, O_VIEWS },   { "help", 0, 0, O_HELP },
        { 0, 0, 0, 0 },
    };
    model_source src = { 0 };
    int views = 0, c, nviews;
    gpt2_config cfg;
    char err[ERRBUF];
    param_view *v;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        switch (c) {
        case O_PRESET: src.preset = optarg; break;
        case O_INIT: src.init = optarg; break;
        case O_VOCAB: src.vocab_size = (int)cli_int("--vocab-size", optarg, 2, 1 << 24); break;
        case O_MAXSEQ: src.max_seq = (int)cli_int("--max-seq", optarg, 1, 1 << 20); break;
        case O_VIEWS: views = 1; break;
        case O_HELP: fputs(usage, stdout); return 0;
        default: cli_bad_option("info", c, argv);
        }
    }
    if (optind < argc)
        cli_die("info: unexpected argument '%s'", argv[optind]);
    if (!!src.preset + !!src.init != 1)
        cli_die("info: give exactly one of --preset or --init");
    if (src.preset) {
        if (gpt2_preset(src.preset, &cfg, err))
            cli_die("%s", err);
        if (src.vocab_size)
            cfg.V = src.vocab_size;
        if (src.max_seq)
            cfg.maxT = src.max_seq;
        if (gpt2_check_config(&cfg, err))
            cli_die("--preset %s: %s", src.preset, err);
    } else {
        float *params;
        if (setup_load(&src, &cfg, &params, NULL, err))
            cli_die("%s", err);
        free(params);
    }
    size_t total = gpt2_layout(&cfg, &v, &nviews);
    int Vp = gpt2_padded_vocab(cfg.V);
    printf("family       gpt2\n");
    printf("vocab        %d (stored padded to %d)\n", cfg.V, Vp);
    printf("context      %d\nlayers       %d\nheads        %d\nwidth        %d\n", cfg.maxT,
           cfg.L, cfg.NH, cfg.C);
    print_count("parameters", total - (size_t)(Vp - cfg.V) * cfg.C);
    if (views) {
        printf("\n%-28s %-14s %12s %12s %s\n", "tensor", "shape", "offset", "count", "decay");
        for (int i = 0; i < nviews; i++) {
            char shape[32];
            if (v[i].ndim == 1)
                snprintf(shape, sizeof shape, "[%d]", v[i].shape[0]);
            else
                snprintf(shape, sizeof shape, "[%d, %d]", v[i].shape[0], v[i].shape[1]);
            printf("%-28s %-14s %12zu %12zu %s\n", v[i].name, shape, v[i].offset, v[i].count,
                   v[i].decay ? "yes" : "no");
        }
    }
    free(v);
    return 0;
}
