/* cmd_info.c: `anatomy info`: a model's configuration, parameter count and
 * (with --views) its parameter table; and the BLAS the CPU backend runs its
 * matmuls on (alone when no model is named). Needs no backend. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "../data/errbuf.h"
#include "cli.h"
#include "setup.h"

static const char usage[] =
    "usage: anatomy info [(--preset NAME | --model NAME | --init PATH) [model options] [--views]]\n"
    "\n"
    "Prints the model's family, configuration, the context it sees, and its parameter\n"
    "count (padding excluded); then the BLAS of the CPU backend: library, version, the\n"
    "kernel it chose for this CPU, threads (OMP_NUM_THREADS, else all cores), and the\n"
    "file it was loaded from. With no model, only the BLAS.\n"
    "  --views   also list every parameter tensor with its shape and offset\n"
    "\n";

static void print_blas(void)
{
    char buf[256];
    printf("%-12s %s\n", "blas", blas_describe(0, buf, sizeof buf));
    printf("%-12s %s\n", "blas library", blas_library_path());
}

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
    enum { O_PRESET = 256, O_MODEL, O_INIT, O_VIEWS, O_HELP };
    static const struct option base[] = {
        { "preset", 1, 0, O_PRESET }, { "model", 1, 0, O_MODEL }, { "init", 1, 0, O_INIT },
        { "views", 0, 0, O_VIEWS },   { "help", 0, 0, O_HELP },
        { 0, 0, 0, 0 },
    };
    struct option *longopts = setup_longopts(base);
    model_source src = { 0 };
    int views = 0, c, nviews;
    model_config cfg;
    char err[ERRBUF];
    param_view *v;
    float *params;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        if (setup_take_option(&src, c, optarg))
            continue;
        switch (c) {
        case O_PRESET: src.preset = optarg; break;
        case O_MODEL: src.model = optarg; break;
        case O_INIT: src.init = optarg; break;
        case O_VIEWS: views = 1; break;
        case O_HELP:
            fputs(usage, stdout);
            setup_print_model_help(stdout);
            free(longopts);
            return 0;
        default: cli_bad_option("info", c, argv);
        }
    }
    free(longopts);
    if (optind < argc)
        cli_die("info: unexpected argument '%s'", argv[optind]);
    if (!src.preset && !src.model && !src.init && !src.nset && !views) {
        print_blas();
        return 0;
    }
    if (!!(src.preset || src.model) + !!src.init != 1)
        cli_die("info: give exactly one of --preset (or --model) or --init");
    if (src.init && src.nset)
        cli_die("--%s: only with --preset or --model (other sources carry their config)",
                src.set_opt[0]);
    if (src.init ? setup_load(&src, &cfg, &params, NULL, err)
                 : setup_preset_config(&src, &cfg, err))
        cli_die("%s", err);
    if (src.init)
        free(params);
    size_t total = cfg.family->layout(cfg.v, &v, &nviews);
    printf("family       %s (%s)\n", cfg.family->name, cfg.family->summary);
    cfg.family->describe(cfg.v, stdout);
    setup_print_settings(&cfg, stdout);
    print_count("parameters", cfg.family->real_params(cfg.v));
    print_blas();
    if (views) {
        printf("\n%-40s %-14s %12s %12s %s\n", "tensor", "shape", "offset", "count", "decay");
        for (int i = 0; i < nviews; i++) {
            char shape[32];
            if (v[i].ndim == 1)
                snprintf(shape, sizeof shape, "[%d]", v[i].shape[0]);
            else
                snprintf(shape, sizeof shape, "[%d, %d]", v[i].shape[0], v[i].shape[1]);
            printf("%-40s %-14s %12zu %12zu %s\n", v[i].name, shape, v[i].offset, v[i].count,
                   v[i].decay ? "yes" : "no");
        }
    }
    (void)total;
    free(v);
    return 0;
}
