/* cmd_export.c: `anatomy export`: any model source -> a Hugging Face GPT-2
 * directory (for transformers) or a weights-only anatomy checkpoint. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../data/errbuf.h"
#include "cli.h"
#include "setup.h"

static const char usage[] =
    "usage: anatomy export --init PATH --out PATH [--format hf|ckpt]\n"
    "\n"
    "  --init PATH     Hugging Face GPT-2 directory, llm.c .bin, or anatomy checkpoint\n"
    "  --out PATH      hf: a directory (config.json + model.safetensors, loadable with\n"
    "                  transformers' GPT2LMHeadModel.from_pretrained); ckpt: a file\n"
    "  --format F      hf (default) or ckpt (weights only, anatomy's checkpoint format)\n"
    "  --help          this text\n";

int cmd_export(int argc, char **argv)
{
    enum { O_INIT = 256, O_OUT, O_FORMAT, O_HELP };
    static const struct option longopts[] = {
        { "init", 1, 0, O_INIT }, { "out", 1, 0, O_OUT },
        { "format", 1, 0, O_FORMAT }, { "help", 0, 0, O_HELP },
        { 0, 0, 0, 0 },
    };
    model_source src = { 0 };
    const char *out = NULL, *format = "hf";
    int c;
    model_config cfg;
    float *params;
    char err[ERRBUF];

    optind = 1;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        switch (c) {
        case O_INIT: src.init = optarg; break;
        case O_OUT: out = optarg; break;
        case O_FORMAT: format = optarg; break;
        case O_HELP: fputs(usage, stdout); return 0;
        default: cli_bad_option("export", c, argv);
        }
    }
    if (optind < argc)
        cli_die("export: unexpected argument '%s'", argv[optind]);
    if (!src.init)
        cli_die("--init: required (the model to export)");
    if (!out)
        cli_die("--out: required (where to write)");
    if (strcmp(format, "hf") != 0 && strcmp(format, "ckpt") != 0)
        cli_die("--format: unknown format '%s' (expected hf or ckpt)", format);
    if (setup_load(&src, &cfg, &params, NULL, err))
        cli_die("%s", err);
    if (strcmp(format, "hf") == 0) {
        if (cfg.family != &gpt2_family)
            cli_die("--format hf: only GPT-2 models export to a Hugging Face directory (this "
                    "is a %s model; use --format ckpt)", cfg.family->name);
        if (((const gpt2_config *)cfg.v)->nobias)
            cli_die("--format hf: %s has no biases (--no-bias) and Hugging Face's GPT-2 has "
                    "them in every layer; use --format ckpt", src.init);
        if (hf_gpt2_export(out, (const gpt2_config *)cfg.v, params, err))
            cli_die("%s", err);
    } else {
        param_view *views;
        int nviews;
        size_t total = cfg.family->layout(cfg.v, &views, &nviews);
        ckpt_meta md = { 0 };
        ckpt_state state = { NULL, 0, 0, params + total }; /* after the parameters */
        state.total = family_state_layout(cfg.family, cfg.v, (param_view **)&state.views,
                                          &state.nviews);
        setup_meta_put_config(&md, &cfg);
        if (ckpt_save_extra(out, views, nviews, total, params, NULL, NULL, &md, &state, NULL, 0,
                            err))
            cli_die("%s", err);
        ckpt_meta_free(&md);
        free(views);
        free((void *)state.views);
    }
    printf("wrote %s\n", out);
    free(params);
    return 0;
}
