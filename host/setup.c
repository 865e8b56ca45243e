/* setup.c: backend choice and model construction for the subcommands. */
#include "setup.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../data/errbuf.h"
#include "cli.h"

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
    if (precision && strcmp(precision, "bf16") == 0)
        cli_die("--precision bf16: no CUDA device is available and the CPU backend computes in "
                "fp32 only");
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
        if (act != DT_F32)
            cli_die("--precision %s: the CPU backend computes in fp32 only", precision);
        be = backend_cpu_create(threads, err);
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

char *setup_latest_checkpoint(const char *path, char *err)
{
    DIR *d = opendir(path);
    struct dirent *e;
    char best[256] = "";
    char *out;
    if (!d)
        return strdup(path);
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (strncmp(e->d_name, "step_", 5) == 0 && n > 17 && n < sizeof best &&
            strcmp(e->d_name + n - 12, ".safetensors") == 0 && strcmp(e->d_name, best) > 0)
            strcpy(best, e->d_name);
    }
    closedir(d);
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

/* A directory with config.json is a Hugging Face model; one without is a run
 * directory, whose latest checkpoint is meant. */
static int is_run_dir(const char *path)
{
    char cfg[4200];
    struct stat st;
    snprintf(cfg, sizeof cfg, "%s/config.json", path);
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode) && stat(cfg, &st) != 0;
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
    fd = open(path, O_RDONLY);
    if (fd < 0)
        return errf(err, "%s: %s", path, strerror(errno));
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

void setup_meta_put_config(ckpt_meta *md, const gpt2_config *c)
{
    ckpt_meta_set(md, "family", "gpt2");
    ckpt_meta_set(md, "V", "%d", c->V);
    ckpt_meta_set(md, "maxT", "%d", c->maxT);
    ckpt_meta_set(md, "L", "%d", c->L);
    ckpt_meta_set(md, "NH", "%d", c->NH);
    ckpt_meta_set(md, "C", "%d", c->C);
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

int setup_meta_get_config(const ckpt_meta *md, const char *path, gpt2_config *c, char *err)
{
    const char *fam = ckpt_meta_get(md, "family");
    char why[ERRBUF];
    if (!fam || strcmp(fam, "gpt2") != 0)
        return errf(err, "%s: model family '%s' is not supported", path, fam ? fam : "(none)");
    if (meta_int(md, path, "V", &c->V, err) || meta_int(md, path, "maxT", &c->maxT, err) ||
        meta_int(md, path, "L", &c->L, err) || meta_int(md, path, "NH", &c->NH, err) ||
        meta_int(md, path, "C", &c->C, err))
        return -1;
    if (gpt2_check_config(c, why))
        return errf(err, "%s: %s", path, why);
    return 0;
}

int setup_load(const model_source *src, gpt2_config *cfg, float **params, ckpt_meta *md,
               char *err)
{
    source_kind kind;
    param_view *views = NULL;
    int nviews;
    size_t total;
    ckpt_meta local;

    if (!md)
        md = &local;
    md->n = 0;
    *params = NULL;
    if (src->preset) {
        if (gpt2_preset(src->preset, cfg, err))
            return -1;
        if (src->vocab_size > 0)
            cfg->V = src->vocab_size;
        if (src->max_seq > 0)
            cfg->maxT = src->max_seq;
        if (gpt2_check_config(cfg, err))
            return -1;
        total = gpt2_layout(cfg, &views, &nviews);
        free(views);
        *params = malloc(total * sizeof **params);
        if (!*params)
            return errf(err, "--preset %s: out of memory for %zu parameters", src->preset, total);
        gpt2_init_params(cfg, *params, src->seed);
        return 0;
    }
    if (is_run_dir(src->init)) {
        model_source one = *src;
        char why[ERRBUF];
        one.init = setup_latest_checkpoint(src->init, why);
        if (!one.init)
            return errf(err, "--init %s: neither a Hugging Face directory (no config.json) nor "
                             "a run directory (no step_NNNNNN.safetensors)", src->init);
        int rc = setup_load(&one, cfg, params, md, err);
        free((char *)one.init);
        return rc;
    }
    if (setup_source_kind(src->init, &kind, err))
        return -1;
    if (kind == SRC_HF_DIR)
        return hf_gpt2_import(src->init, cfg, params, err);
    if (kind == SRC_LLMC)
        return llmc_gpt2_import(src->init, cfg, params, err);
    if (ckpt_read_meta(src->init, md, err) || setup_meta_get_config(md, src->init, cfg, err))
        return -1;
    total = gpt2_layout(cfg, &views, &nviews);
    *params = malloc(total * sizeof **params);
    if (!views || !*params) {
        free(views);
        return errf(err, "%s: out of memory", src->init);
    }
    int rc = ckpt_load(src->init, views, nviews, total, *params, NULL, NULL, NULL, err);
    free(views);
    if (rc) {
        free(*params);
        *params = NULL;
    }
    return rc;
}

model *setup_model(backend *be, const model_source *src, ckpt_meta *md)
{
    char err[ERRBUF];
    gpt2_config cfg;
    float *params;
    model *m;

    if (setup_load(src, &cfg, &params, md, err))
        cli_die("%s", err);
    m = gpt2_create(be, &cfg, err);
    if (!m)
        cli_die("%s", err);
    model_set_params(m, params);
    free(params);
    return m;
}
