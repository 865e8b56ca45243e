/* setup.c: backend choice and model construction for the subcommands. */
#include "setup.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../data/errbuf.h"
#include "../data/fsutil.h"
#include "cli.h"
#include "finite.h"
#include "rundir.h"

/* The default device: the CUDA backend when this build has it and it starts
 * (a usable GPU, or the emulator in anatomy-emu), else the CPU, in the
 * precision asked for or that device's default. */
static backend *setup_auto(int threads, const char *precision)
{
    char err[ERRBUF];
    if (backend_cuda_create && (!precision || strcmp(precision, "bf16") == 0 ||
                                strcmp(precision, "fp32") == 0)) {
        int bf16 = !precision || strcmp(precision, "bf16") == 0;
        backend *be = backend_cuda_create(0, bf16 ? DT_BF16 : DT_F32, err);
        if (be)
            return be;
    }
    return setup_backend("cpu", threads, precision);
}

backend *setup_backend(const char *device, int threads, const char *precision)
{
    char err[ERRBUF];
    backend *be;
    dtype act;
    if (!device)
        return setup_auto(threads, precision);
    if (!precision)
        precision = strcmp(device, "cuda") == 0 ? "bf16" : "fp32";
    if (strcmp(precision, "bf16") == 0)
        act = DT_BF16;
    else if (strcmp(precision, "fp32") == 0)
        act = DT_F32;
    else
        cli_die("--precision: unknown precision '%s' (expected bf16 or fp32)", precision);
    if (strcmp(device, "cpu") == 0) {
        be = act == DT_BF16 ? backend_cpu_bf16_create(threads, err)
                            : backend_cpu_create(threads, err);
        if (!be && act == DT_BF16)
            cli_die("--precision bf16 --device cpu: %s (--precision fp32 runs anywhere)", err);
    } else if (strcmp(device, "cuda") == 0) {
        if (!backend_cuda_create)
            cli_die("--device cuda: this build has no CUDA backend (built without nvcc); "
                    "use --device cpu");
        be = backend_cuda_create(0, act, err);
    } else {
        cli_die("--device: unknown device '%s' (expected cpu or cuda)", device);
    }
    if (!be)
        cli_die("--device %s: %s", device, err);
    return be;
}

/* A directory with config.json is a Hugging Face model; one without is a run
 * directory, whose latest checkpoint is meant. */
static int is_run_dir(const char *path)
{
    char cfg[4200];
    struct stat st;
    snprintf(cfg, sizeof cfg, "%s/config.json", path);
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode) && stat(cfg, &st) != 0;
}

char *setup_latest_checkpoint(const char *path, char *err)
{
    DIR *d = opendir(path);
    struct dirent *e;
    char best[256] = "";
    int best_step = -1;
    char *out;
    if (!d)
        return strdup(path);
    while ((e = readdir(d))) {
        int s = rundir_ckpt_step(e->d_name);
        if (s > best_step && strlen(e->d_name) < sizeof best) {
            best_step = s;
            strcpy(best, e->d_name);
        }
    }
    closedir(d);
    if (!*best && !is_run_dir(path)) /* a Hugging Face directory names itself */
        return strdup(path);
    if (!*best) {
        errf(err, ": %s: no step_NNNNNN.safetensors checkpoint in this directory", path);
        return NULL;
    }
    out = malloc(strlen(path) + strlen(best) + 2);
    if (out)
        sprintf(out, "%s/%s", path, best);
    else
        errf(err, ": out of memory");
    return out;
}


int setup_source_kind(const char *path, source_kind *kind, char *err)
{
    struct stat st;
    unsigned char head[16];
    int fd;
    ssize_t got;

    if (stat(path, &st))
        return errf(err, "%s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        *kind = SRC_HF_DIR;
        return 0;
    }
    fd = fs_open_regular(path, err); /* a FIFO would block open() */
    if (fd < 0)
        return -1;
    got = read(fd, head, sizeof head);
    close(fd);
    if (got >= 4 && head[0] == 0xc6 && head[1] == 0xd7 && head[2] == 0x34 && head[3] == 0x01) {
        *kind = SRC_LLMC; /* 20240326 little-endian */
        return 0;
    }
    if (got >= 9 && head[8] == '{') {
        *kind = SRC_CKPT; /* safetensors: u64 header length, then JSON */
        return 0;
    }
    return errf(err, "%s: not a Hugging Face GPT-2 directory, an llm.c model file or an "
                     "anatomy checkpoint", path);
}

/* ---- model options ---- */

/* A switch option (--nsp) takes no value. */
static int is_switch(const family_field *fd)
{
    return (fd->flags & FIELD_SWITCH) != 0;
}

/* The distinct field options of all families, in first-seen order. */
static const family_field *opt_fields[64];
static int nopt;

static void collect_options(void)
{
    int i = 0;
    const model_family *f;
    if (nopt)
        return;
    while ((f = family_next(&i))) {
        for (int k = 0; k < f->nfields; k++) {
            const family_field *fd = &f->fields[k];
            int seen = 0;
            if (!fd->option)
                continue;
            for (int j = 0; j < nopt; j++)
                seen |= strcmp(opt_fields[j]->option, fd->option) == 0;
            if (!seen && nopt < (int)(sizeof opt_fields / sizeof opt_fields[0]))
                opt_fields[nopt++] = fd;
        }
    }
}

/* Older names of field options, kept so that scripts written for them still
 * run: the recurrent and feed-forward families called their width --hidden
 * before every family took one set of shape options (--layers, --heads,
 * --width, ...). An alias means exactly its target. */
static const struct { const char *alias, *option; } opt_aliases[] = {
    { "hidden", "width" },
};
#define NALIAS ((int)(sizeof opt_aliases / sizeof opt_aliases[0]))

static int option_code(const char *option)
{
    for (int k = 0; k < nopt; k++)
        if (strcmp(opt_fields[k]->option, option) == 0)
            return SETUP_OPT_BASE + k;
    return -1;
}

struct option *setup_longopts(const struct option *base)
{
    int nb = 0, n;
    struct option *out;
    collect_options();
    while (base[nb].name)
        nb++;
    out = calloc((size_t)nb + nopt + NALIAS + 1, sizeof *out);
    if (!out)
        cli_die("out of memory");
    memcpy(out, base, (size_t)nb * sizeof *out);
    for (int k = 0; k < nopt; k++)
        out[nb + k] = (struct option){ opt_fields[k]->option, !is_switch(opt_fields[k]), 0,
                                       SETUP_OPT_BASE + k };
    n = nb + nopt;
    for (int a = 0; a < NALIAS; a++) {
        int code = option_code(opt_aliases[a].option);
        if (code >= 0)
            out[n++] = (struct option){ opt_aliases[a].alias,
                                        !is_switch(opt_fields[code - SETUP_OPT_BASE]), 0,
                                        code };
    }
    return out;
}

int setup_take_option(model_source *src, int c, const char *arg)
{
    char name[80];
    if (c < SETUP_OPT_BASE || c >= SETUP_OPT_BASE + nopt)
        return 0;
    const family_field *fd = opt_fields[c - SETUP_OPT_BASE];
    if (src->nset == SETUP_MAXSET)
        cli_die("--%s: too many model options", fd->option);
    snprintf(name, sizeof name, "--%s", fd->option);
    /* the range is the family's to check, once the family is known */
    if (fd->choices) { /* a name; its index is the value */
        int k = family_choice_index(fd, arg);
        char list[128];
        if (k < 0)
            cli_die("%s: '%s' is not one of %s", name, arg,
                    family_choice_list(fd, list, sizeof list));
        src->set_val[src->nset] = k;
    } else {
        src->set_val[src->nset] =
            is_switch(fd) ? 1 : (int)cli_int(name, arg, -2147483647LL, 2147483647LL);
    }
    src->set_opt[src->nset++] = fd->option;
    return 1;
}

void setup_print_model_help(FILE *out)
{
    int i = 0;
    const model_family *f;
    collect_options();
    fprintf(out, "model (with --preset or --model; other sources carry their config):\n");
    fprintf(out, "  --model NAME         family:");
    while ((f = family_next(&i)))
        fprintf(out, " %s", f->name);
    fprintf(out, " (default: the preset's)\n");
    i = 0;
    while ((f = family_next(&i)))
        fprintf(out, "      %-8s %s; presets: %s\n", f->name, f->summary, f->presets);
    for (int k = 0; k < nopt; k++) {
        char left[40];
        const char *opt = opt_fields[k]->option;
        const char *helps[32];
        int nh = 0;
        if (opt_fields[k]->choices) { /* --norm layer|batch */
            char list[128];
            snprintf(left, sizeof left, "--%s %s", opt,
                     family_choice_list(opt_fields[k], list, sizeof list));
        } else {
            snprintf(left, sizeof left, "--%s%s", opt, is_switch(opt_fields[k]) ? "" : " N");
        }
        /* an option several families share: each meaning once, after the
         * families it is theirs in ("gpt2, bert, vit: attention heads") */
        i = 0;
        while ((f = family_next(&i)))
            for (int j = 0; j < f->nfields; j++) {
                const family_field *fd = &f->fields[j];
                int seen = 0;
                if (!fd->option || strcmp(fd->option, opt))
                    continue;
                for (int h = 0; h < nh; h++)
                    seen |= strcmp(helps[h], fd->help) == 0;
                if (!seen && nh < (int)(sizeof helps / sizeof helps[0]))
                    helps[nh++] = fd->help;
            }
        for (int h = 0; h < nh; h++) {
            char names[256] = "";
            i = 0;
            while ((f = family_next(&i)))
                for (int j = 0; j < f->nfields; j++)
                    if (f->fields[j].option && strcmp(f->fields[j].option, opt) == 0 &&
                        strcmp(f->fields[j].help, helps[h]) == 0)
                        snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s",
                                 *names ? ", " : "", f->name);
            fprintf(out, "  %-20s %s: %s\n", h ? "" : left, names, helps[h]);
        }
    }
    fprintf(out, "  shape options apply on top of the preset; an option the family has no\n"
                 "  such dimension for is an error. Aliases:");
    for (int a = 0; a < NALIAS; a++)
        fprintf(out, " --%s = --%s", opt_aliases[a].alias, opt_aliases[a].option);
    fprintf(out, "\n");
}

void setup_print_settings(const model_config *c, FILE *out)
{
    const model_family *f = c->family;
    fprintf(out, "%-12s", "settings");
    for (int i = 0; i < f->nfields; i++) {
        const family_field *fd = &f->fields[i];
        if (!fd->option)
            continue;
        char name[32];
        if (is_switch(fd)) {
            if (c->v[i])
                fprintf(out, " --%s", fd->option);
        } else if (fd->choices && family_choice_name(fd, c->v[i], name, sizeof name)) {
            fprintf(out, " --%s %s", fd->option, name);
        } else {
            fprintf(out, " --%s %d", fd->option, c->v[i]);
        }
    }
    fprintf(out, "\n");
}

/* ---- configs and checkpoint metadata ---- */

model_config setup_config_of(const model *m)
{
    model_config c = { 0 };
    c.family = m->fam;
    memcpy(c.v, m->config, sizeof c.v);
    return c;
}

void setup_meta_put_config(ckpt_meta *md, const model_config *c)
{
    char name[64];
    ckpt_meta_set(md, "family", "%s", c->family->name);
    for (int i = 0; i < c->family->nfields; i++) {
        const family_field *fd = &c->family->fields[i];
        if (fd->choices && family_choice_name(fd, c->v[i], name, sizeof name))
            ckpt_meta_set(md, fd->key, "%s", name); /* "norm": "batch", "pool": "mean" */
        else
            ckpt_meta_set(md, fd->key, "%d", c->v[i]);
    }
}

static int meta_int(const ckpt_meta *md, const char *path, const char *key, int *out, char *err)
{
    const char *s = ckpt_meta_get(md, key);
    char *end;
    long v;
    if (!s)
        return errf(err, "%s: metadata has no '%s'", path, key);
    errno = 0;
    v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < -2147483647L || v > 2147483647L)
        return errf(err, "%s: metadata '%s' = '%s' is not an integer", path, key, s);
    *out = (int)v;
    return 0;
}

int setup_meta_get_config(const ckpt_meta *md, const char *path, model_config *c, char *err)
{
    const char *fam = ckpt_meta_get(md, "family");
    char why[ERRBUF];
    memset(c, 0, sizeof *c);
    if (!fam || !(c->family = family_find(fam)))
        return errf(err, "%s: model family '%s' is not supported by this build", path,
                    fam ? fam : "(none)");
    for (int i = 0; i < c->family->nfields; i++) {
        const family_field *fd = &c->family->fields[i];
        const char *s = ckpt_meta_get(md, fd->key);
        char list[128];
        if ((fd->flags & FIELD_OPTIONAL) && !s) {
            c->v[i] = fd->lo;
        } else if (fd->choices && s) { /* "norm": "batch" */
            if ((c->v[i] = family_choice_index(fd, s)) < 0)
                return errf(err, "%s: metadata '%s' = '%s' is not one of %s", path, fd->key, s,
                            family_choice_list(fd, list, sizeof list));
        } else if (meta_int(md, path, fd->key, &c->v[i], err)) {
            return -1;
        }
    }
    if (family_check(c, why))
        return errf(err, "%s: %s", path, why);
    return 0;
}

void setup_meta_put_loss(ckpt_meta *md, const model *m)
{
    if (!m->has_loss_kind)
        return;
    ckpt_meta_set(md, "regression_loss", "%s", model_loss_name(m->loss_kind));
    ckpt_meta_set(md, "huber_delta", "%.17g", m->huber_delta);
}

int setup_meta_get_loss(const ckpt_meta *md, const char *path, int *kind, double *delta,
                        char *err)
{
    const char *k = ckpt_meta_get(md, "regression_loss"), *d = ckpt_meta_get(md, "huber_delta");
    char *end;
    *kind = LOSS_MSE;
    *delta = 1.0;
    if (k && (*kind = model_loss_kind(k)) < 0)
        return errf(err, "%s: metadata 'regression_loss' = '%s' is not %s", path, k,
                    MODEL_LOSS_NAMES);
    if (d) {
        errno = 0;
        *delta = strtod(d, &end);
        if (end == d || *end || errno || !(*delta > 0 && *delta <= 1e30))
            return errf(err, "%s: metadata 'huber_delta' = '%s' is not a number > 0", path, d);
    }
    return 0;
}

/* The family and config of --model / --preset with the field options applied. */
int setup_preset_config(const model_source *src, model_config *cfg, char *err)
{
    const model_family *f = NULL;
    const char *preset = src->preset;
    char first[64];
    memset(cfg, 0, sizeof *cfg);
    if (src->model && !(f = family_find(src->model))) {
        int i = 0;
        char list[256] = "";
        const model_family *g;
        while ((g = family_next(&i)))
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", *list ? " " : "",
                     g->name);
        return errf(err, "--model: unknown model '%s' (known: %s)", src->model, list);
    }
    if (!preset) { /* --model alone: the family's first preset */
        size_t n = strcspn(f->presets, " ");
        snprintf(first, sizeof first, "%.*s", (int)n, f->presets);
        preset = first;
    }
    const model_family *owner = family_of_preset(preset);
    if (!owner)
        return errf(err, "--preset: unknown preset '%s' (known: %s)", preset,
                    family_all_presets());
    if (f && owner != f)
        return errf(err, "--preset %s: a %s preset, not a %s one (--model %s presets: %s)",
                    preset, owner->name, f->name, f->name, f->presets);
    cfg->family = owner;
    if (owner->preset(preset, cfg->v, err))
        return -1;
    for (int k = 0; k < src->nset; k++) {
        int i;
        for (i = 0; i < owner->nfields; i++)
            if (owner->fields[i].option && strcmp(owner->fields[i].option, src->set_opt[k]) == 0)
                break;
        if (i == owner->nfields) {
            char list[512] = "";
            for (int j = 0; j < owner->nfields; j++)
                if (owner->fields[j].option)
                    snprintf(list + strlen(list), sizeof list - strlen(list), " --%s",
                             owner->fields[j].option);
            return errf(err, "--%s: the %s model has no such setting (its settings:%s)",
                        src->set_opt[k], owner->name, list);
        }
        cfg->v[i] = src->set_val[k];
    }
    return family_check(cfg, err);
}

/* An HF GPT-2 directory or llm.c file, as a gpt2 config. */
static int import_gpt2(const char *path, source_kind kind, model_config *cfg, float **params,
                       char *err)
{
    gpt2_config g = { 0 }; /* fields an importer does not set (nobias) stay 0 */
    int rc = kind == SRC_HF_DIR ? hf_gpt2_import(path, &g, params, err)
                                : llmc_gpt2_import(path, &g, params, err);
    if (rc)
        return rc;
    memset(cfg, 0, sizeof *cfg);
    cfg->family = &gpt2_family;
    memcpy(cfg->v, &g, sizeof g);
    return 0;
}

static int load_into(const model_source *src, model_config *cfg, float **params, ckpt_meta *md,
                     char *err)
{
    source_kind kind;
    param_view *views = NULL;
    int nviews;
    size_t total;

    ckpt_meta_free(md);
    *params = NULL;
    if (!src->init) {
        if (setup_preset_config(src, cfg, err))
            return -1;
        total = cfg->family->layout(cfg->v, &views, &nviews);
        free(views);
        total += family_state_layout(cfg->family, cfg->v, NULL, &nviews);
        *params = malloc(total * sizeof **params);
        if (!*params)
            return errf(err, "--preset: out of memory for %zu parameters", total);
        cfg->family->init(cfg->v, *params, src->seed); /* and the state after them */
        return 0;
    }
    if (is_run_dir(src->init)) {
        model_source one = *src;
        char why[ERRBUF];
        one.init = setup_latest_checkpoint(src->init, why);
        if (!one.init)
            return errf(err, "--init %s: neither a Hugging Face directory (no config.json) nor "
                             "a run directory (no step_NNNNNN.safetensors)", src->init);
        int rc = load_into(&one, cfg, params, md, err);
        free((char *)one.init);
        return rc;
    }
    if (setup_source_kind(src->init, &kind, err))
        return -1;
    if (kind != SRC_CKPT)
        return import_gpt2(src->init, kind, cfg, params, err);
    if (ckpt_read_meta(src->init, md, err) || setup_meta_get_config(md, src->init, cfg, err))
        return -1;
    total = cfg->family->layout(cfg->v, &views, &nviews);
    ckpt_state state = { NULL, 0, 0, NULL };
    state.total = family_state_layout(cfg->family, cfg->v, (param_view **)&state.views,
                                      &state.nviews);
    *params = malloc((total + state.total) * sizeof **params);
    if (!views || !*params || (state.total && !state.views)) {
        free(views);
        free((void *)state.views);
        free(*params);
        *params = NULL;
        return errf(err, "%s: out of memory", src->init);
    }
    state.data = *params + total; /* the snapshot: parameters, then state */
    int rc = ckpt_load_model(src->init, views, nviews, total, *params, NULL, NULL, NULL, &state,
                             err);
    free(views);
    free((void *)state.views);
    if (rc) {
        free(*params);
        *params = NULL;
    }
    return rc;
}

int setup_load(const model_source *src, model_config *cfg, float **params, ckpt_meta *md,
               char *err)
{
    if (md)
        return load_into(src, cfg, params, md, err);
    ckpt_meta local = { 0 };
    int rc = load_into(src, cfg, params, &local, err);
    ckpt_meta_free(&local);
    return rc;
}

model *setup_model(backend *be, const model_source *src, ckpt_meta *md)
{
    char err[ERRBUF];
    model_config cfg;
    float *params;

    if (setup_load(src, &cfg, &params, md, err))
        cli_die("%s", err);
    return setup_model_from(be, src, &cfg, params);
}

model *setup_model_from(backend *be, const model_source *src, const model_config *cfg_in,
                        float *params)
{
    char err[ERRBUF];
    model_config cfg = *cfg_in;
    model *m;

    if (src->init) { /* eval, sample and train all refuse NaN weights (or running statistics) */
        param_view *views = NULL, *sviews = NULL;
        int nviews = 0, nsviews = 0;
        size_t total = cfg.family->layout(cfg.v, &views, &nviews);
        family_state_layout(cfg.family, cfg.v, &sviews, &nsviews);
        int bad = views && finite_check_params(src->init, views, nviews, params, err);
        bad = bad || (sviews && finite_check_params(src->init, sviews, nsviews, params + total,
                                                    err));
        free(views);
        free(sviews);
        if (bad)
            cli_die("%s", err);
    }
    m = cfg.family->create(be, cfg.v, err);
    if (!m)
        cli_die("%s", err);
    model_set_params(m, params);
    model_set_state(m, params + m->nparams);
    free(params);
    return m;
}
