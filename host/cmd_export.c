/* cmd_export.c: `anatomy export`: any model source -> a Hugging Face GPT-2
 * directory (for transformers) or a weights-only anatomy checkpoint; several
 * sources -> the element-wise mean of their weights (weight averaging of a
 * run's checkpoints, as in stochastic weight averaging). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../data/errbuf.h"
#include "cli.h"
#include "setup.h"

static const char usage[] =
    "usage: anatomy export --init PATH [--init PATH ...] --out PATH [--format hf|ckpt]\n"
    "\n"
    "  --init PATH     Hugging Face GPT-2 directory, llm.c .bin, anatomy checkpoint, or\n"
    "                  run directory (its latest checkpoint). Several (repeated --init,\n"
    "                  or paths after the options, e.g. a shell glob): the output is the\n"
    "                  element-wise mean of their weights and running statistics (one\n"
    "                  family and config; optimizer moments are not averaged)\n"
    "  --out PATH      hf: a directory (config.json + model.safetensors, loadable with\n"
    "                  transformers' GPT2LMHeadModel.from_pretrained); ckpt: a file\n"
    "  --format F      hf (default) or ckpt (weights only, anatomy's checkpoint format)\n"
    "  --help          this text\n";

/* The value of config field i as the checkpoint metadata writes it. */
static const char *field_value(const model_config *c, int i, char *buf, size_t n)
{
    const family_field *fd = &c->family->fields[i];
    if (!fd->choices || !family_choice_name(fd, c->v[i], buf, n))
        snprintf(buf, n, "%d", c->v[i]);
    return buf;
}

/* 0 when b has a's family and config; else err names path b and the first
 * field that differs. */
static int same_config(const model_config *a, const char *apath, const model_config *b,
                       const char *bpath, char *err)
{
    char va[64], vb[64];
    if (a->family != b->family)
        return errf(err, "--init %s: a %s model, but %s is a %s model (averaging needs one "
                    "family and config)", bpath, b->family->name, apath, a->family->name);
    for (int i = 0; i < a->family->nfields; i++) {
        const family_field *fd = &a->family->fields[i];
        if (a->v[i] == b->v[i])
            continue;
        return errf(err, "--init %s: config field '%s'%s%s%s is %s, but %s in %s (averaging "
                    "needs one family and config)", bpath, fd->key, fd->option ? " (--" : "",
                    fd->option ? fd->option : "", fd->option ? ")" : "",
                    field_value(b, i, vb, sizeof vb), field_value(a, i, va, sizeof va), apath);
    }
    return 0;
}

/* The mean of the sources' snapshots (parameters, then state: setup_load's
 * layout) into *params, with their common config in *cfg; one source is
 * loaded as it is. The sum is accumulated in double in the order given and
 * divided once, then rounded to fp32: a computation anyone can repeat (numpy)
 * to the bit. Dies with a one-line error. */
static void load_mean(const char **inits, int n, model_config *cfg, float **params)
{
    model_source src = { 0 };
    char err[ERRBUF];
    param_view *views = NULL;
    int nviews;
    double *sum;
    size_t total;

    src.init = inits[0];
    if (setup_load(&src, cfg, params, NULL, err))
        cli_die("%s", err);
    if (n == 1)
        return;
    total = cfg->family->layout(cfg->v, &views, &nviews);
    free(views);
    total += family_state_layout(cfg->family, cfg->v, NULL, &nviews);
    if (!(sum = malloc(total * sizeof *sum)))
        cli_die("export: out of memory for %zu values", total);
    for (size_t j = 0; j < total; j++)
        sum[j] = (*params)[j];
    for (int k = 1; k < n; k++) {
        model_config ck;
        float *p;
        src.init = inits[k];
        if (setup_load(&src, &ck, &p, NULL, err) || same_config(cfg, inits[0], &ck, inits[k],
                                                                  err))
            cli_die("%s", err);
        for (size_t j = 0; j < total; j++)
            sum[j] += p[j];
        free(p);
    }
    for (size_t j = 0; j < total; j++)
        (*params)[j] = (float)(sum[j] / n);
    free(sum);
}

int cmd_export(int argc, char **argv)
{
    enum { O_INIT = 256, O_OUT, O_FORMAT, O_HELP };
    static const struct option longopts[] = {
        { "init", 1, 0, O_INIT }, { "out", 1, 0, O_OUT },
        { "format", 1, 0, O_FORMAT }, { "help", 0, 0, O_HELP },
        { 0, 0, 0, 0 },
    };
    const char *out = NULL, *format = "hf";
    const char **inits;
    int c, ninit = 0;
    model_config cfg;
    float *params;
    char err[ERRBUF];

    if (!(inits = malloc((size_t)(argc + 1) * sizeof *inits)))
        cli_die("export: out of memory");
    optind = 1;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        switch (c) {
        case O_INIT: inits[ninit++] = optarg; break;
        case O_OUT: out = optarg; break;
        case O_FORMAT: format = optarg; break;
        case O_HELP: fputs(usage, stdout); free(inits); return 0;
        default: cli_bad_option("export", c, argv);
        }
    }
    /* paths after the options are more sources: `--init run/step_*.safetensors` */
    while (optind < argc)
        inits[ninit++] = argv[optind++];
    /* a run directory is its latest checkpoint, which errors then name */
    for (int i = 0; i < ninit; i++)
        if (!(inits[i] = setup_latest_checkpoint(inits[i], err)))
            cli_die("--init%s", err);
    if (!ninit)
        cli_die("--init: required (the model to export)");
    if (!out)
        cli_die("--out: required (where to write)");
    if (strcmp(format, "hf") != 0 && strcmp(format, "ckpt") != 0)
        cli_die("--format: unknown format '%s' (expected hf or ckpt)", format);
    load_mean(inits, ninit, &cfg, &params);
    if (strcmp(format, "hf") == 0) {
        if (cfg.family != &gpt2_family)
            cli_die("--format hf: only GPT-2 models export to a Hugging Face directory (this "
                    "is a %s model; use --format ckpt)", cfg.family->name);
        if (((const gpt2_config *)cfg.v)->nobias)
            cli_die("--format hf: %s has no biases (--no-bias) and Hugging Face's GPT-2 has "
                    "them in every layer; use --format ckpt", inits[0]);
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
    for (int i = 0; i < ninit; i++)
        free((char *)inits[i]);
    free(inits);
    return 0;
}
