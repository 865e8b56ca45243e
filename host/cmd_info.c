/* cmd_info.c: `anatomy info`: a model's configuration, parameter count and
 * (with --views) its parameter table; and the BLAS the CPU backend runs its
 * matmuls on (alone when no model is named). Needs no backend. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "../data/errbuf.h"
#include "../kernels/cpu/gemm_bf16.h"
#include "cli.h"
#include "memplan.h"
#include "setup.h"
#include "train.h"

static const char usage[] =
    "usage: anatomy info [(--preset NAME | --model NAME | --init PATH) [model options] [--views]\n"
    "                    [--batch B [--seq T] [--device D] [--precision P] [--world W]\n"
    "                     [--zero 1] [--recompute] [--memory-limit BYTES]]]\n"
    "\n"
    "Prints the model's family, configuration, the context it sees, and its parameter\n"
    "count (padding excluded); for a training checkpoint (or run directory) its step,\n"
    "batch layout, seed and the last training and validation losses; then the BLAS of\n"
    "the CPU backend: library, version, the kernel it chose for this CPU, threads\n"
    "(OMP_NUM_THREADS, else all cores), the file it was loaded from, and whether this\n"
    "CPU has a bf16 matmul kernel (AMX-BF16 or AVX512-BF16) for\n"
    "--precision bf16 on the CPU. With no model, only the BLAS.\n"
    "  --views   also list every parameter tensor with its shape and offset\n"
    "memory plan (with --batch): the device memory each rank of `anatomy train` with\n"
    "these options will allocate, by category (parameters, gradients, master weights,\n"
    "AdamW moments, activations, the backend's workspace), as train prints it at\n"
    "start-up; nothing is allocated. The options mean what they mean to train:\n"
    "  --batch B            micro-batch sequences\n"
    "  --seq T              sequence length (default: the model's context, at most 1024)\n"
    "  --device D           cpu or cuda (default: cuda when this build has it, else cpu)\n"
    "  --precision P        fp32 or bf16 (default: bf16 on cuda, fp32 on cpu)\n"
    "                       (bf16 on cpu: the linear layers' matmuls on AMX or AVX512-BF16)\n"
    "  --world W            data-parallel ranks (default 1)\n"
    "  --zero 1             ZeRO stage 1: moments and master weights are 1/W per rank\n"
    "  --recompute          layernorm and GELU outputs recomputed in backward\n"
    "  --memory-limit BYTES device memory per rank (e.g. 80G): says whether the plan\n"
    "                       fits, and the largest --batch that does\n"
    "\n";

static void print_blas(void)
{
    char buf[256];
    printf("%-12s %s\n", "blas", blas_describe(0, buf, sizeof buf));
    printf("%-12s %s\n", "blas library", blas_library_path());
    bf16_kernel k = bf16_gemm_pick(buf, sizeof buf);
    if (k != BF16_NONE)
        printf("%-12s %s (--device cpu --precision bf16)\n", "bf16 matmul", bf16_kernel_name(k));
    else
        printf("%-12s none: %s (--precision bf16 is CUDA's only)\n", "bf16 matmul", buf);
}

/* n with thousands separators, in buf. */
static const char *grouped(double n, char *buf, size_t size)
{
    char digits[32];
    int len = snprintf(digits, sizeof digits, "%.0f", n), j = 0;
    for (int i = 0; i < len && (size_t)j + 2 < size; i++) {
        if (i && digits[i - 1] != '-' && (len - i) % 3 == 0)
            buf[j++] = ',';
        buf[j++] = digits[i];
    }
    buf[j] = 0;
    return buf;
}

static void print_count(const char *label, size_t n)
{
    char out[48];
    printf("%-12s %s\n", label, grouped((double)n, out, sizeof out));
}

/* Where a training checkpoint's run stood when it was saved (its metadata):
 * the step, the batch layout and seed, the last training and validation
 * losses. Nothing for sources that are not training checkpoints. */
static void print_training(const ckpt_meta *md, const char *path)
{
    const char *keys[] = { "step", "steps", "total_batch", "batch", "seq", "world", "seed" };
    double v[7], loss, val, vstep;
    char err[ERRBUF], a[32], b[32], c[32], d[32];
    if (!ckpt_meta_get(md, "step"))
        return;
    for (int i = 0; i < 7; i++)
        if (!ckpt_meta_get(md, keys[i]))
            v[i] = -1;
        else if (train_meta_double(md, path, keys[i], &v[i], err))
            cli_die("%s", err);
    printf("%-12s step %s", "trained", grouped(v[0], a, sizeof a));
    if (v[1] > 0)
        printf(" of %s", grouped(v[1], a, sizeof a));
    if (v[2] > 0 && v[3] > 0 && v[4] > 0 && v[5] > 0)
        printf(", %s tokens a step (batch %s x seq %s x %s rank%s)", grouped(v[2], a, sizeof a),
               grouped(v[3], b, sizeof b), grouped(v[4], c, sizeof c), grouped(v[5], d, sizeof d),
               v[5] > 1 ? "s" : "");
    if (v[6] >= 0)
        printf(", seed %s", ckpt_meta_get(md, "seed"));
    printf("\n");
    if (!ckpt_meta_get(md, "loss")) {
        printf("%-12s not recorded (a checkpoint from before they were)\n", "losses");
        return;
    }
    if (train_meta_double(md, path, "loss", &loss, err))
        cli_die("%s", err);
    printf("%-12s training %.6f at step %s", "losses", loss, grouped(v[0], a, sizeof a));
    if (ckpt_meta_get(md, "val_step")) {
        if (train_meta_double(md, path, "val_loss", &val, err) ||
            train_meta_double(md, path, "val_step", &vstep, err))
            cli_die("%s", err);
        printf(", validation %.6f at step %s", val, grouped(vstep, a, sizeof a));
    } else {
        printf(", no validation yet");
    }
    printf("\n");
}

/* The memory plan of `train` with these options (memplan.h), on the backend
 * they name (created for its dtypes and workspace; nothing else allocated). */
static void print_plan(const model_config *cfg, mem_shape *ms, const char *device,
                       const char *precision, size_t limit)
{
    char err[ERRBUF];
    backend *be = setup_backend(device, 1, precision);
    int maxT = mem_plan_max_seq(cfg, be, err);
    mem_plan p;
    int fits;
    if (maxT < 0)
        cli_die("%s", err);
    if (!ms->T)
        ms->T = maxT < 1024 ? maxT : 1024;
    if (ms->T > maxT)
        cli_die("--seq: %d is longer than the model's context length %d", ms->T, maxT);
    if (mem_plan_compute(cfg, be, ms, &p, err))
        cli_die("%s", err);
    printf("\nmemory plan per rank: %s %s, batch %d x seq %d, %d rank%s%s%s\n", be->name,
           dtype_name(be->act), ms->B, ms->T, ms->world, ms->world > 1 ? "s" : "",
           ms->zero && ms->world > 1 ? ", ZeRO stage 1" : "", ms->recompute ? ", recompute" : "");
    const char *names[] = { "params", "grads", "master", "moments", "activations", "workspace",
                            "total" };
    size_t bytes[] = { p.params, p.grads, p.master, p.moments, p.activations, p.workspace,
                       mem_plan_total(&p) };
    for (int i = 0; i < 7; i++) {
        char label[32];
        snprintf(label, sizeof label, "  %s", names[i]);
        printf("%-14s %16zu B %10.2f GiB\n", label, bytes[i], bytes[i] / 1073741824.0);
    }
    if (limit) {
        if (mem_plan_total(&p) <= limit)
            printf("fits in --memory-limit %.2f GiB\n", limit / 1073741824.0);
        else if ((fits = mem_plan_largest_batch(cfg, be, ms, limit)) > 0)
            printf("does not fit in --memory-limit %.2f GiB: the largest batch that fits is "
                   "--batch %d\n", limit / 1073741824.0, fits);
        else
            printf("does not fit in --memory-limit %.2f GiB: not even --batch 1 does at "
                   "--seq %d\n", limit / 1073741824.0, ms->T);
    }
    be->destroy(be);
}

int cmd_info(int argc, char **argv)
{
    enum { O_PRESET = 256, O_MODEL, O_INIT, O_VIEWS, O_HELP, O_BATCH, O_SEQ, O_DEVICE,
           O_PRECISION, O_WORLD, O_ZERO, O_RECOMPUTE, O_MEMLIMIT };
    static const struct option base[] = {
        { "preset", 1, 0, O_PRESET }, { "model", 1, 0, O_MODEL }, { "init", 1, 0, O_INIT },
        { "views", 0, 0, O_VIEWS },   { "help", 0, 0, O_HELP },
        { "batch", 1, 0, O_BATCH },   { "seq", 1, 0, O_SEQ },   { "device", 1, 0, O_DEVICE },
        { "precision", 1, 0, O_PRECISION }, { "world", 1, 0, O_WORLD },
        { "zero", 1, 0, O_ZERO },     { "recompute", 0, 0, O_RECOMPUTE },
        { "memory-limit", 1, 0, O_MEMLIMIT },
        { 0, 0, 0, 0 },
    };
    mem_shape ms = { 0, 0, 0, 1, 0 };
    const char *device = NULL, *precision = NULL;
    size_t limit = 0;
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
        case O_BATCH: ms.B = (int)cli_int("--batch", optarg, 1, 1 << 20); break;
        case O_SEQ: ms.T = (int)cli_int("--seq", optarg, 1, 1 << 20); break;
        case O_DEVICE: device = optarg; break;
        case O_PRECISION: precision = optarg; break;
        case O_WORLD: ms.world = (int)cli_int("--world", optarg, 1, 1 << 16); break;
        case O_ZERO: ms.zero = (int)cli_int("--zero", optarg, 0, 1); break;
        case O_RECOMPUTE: ms.recompute = 1; break;
        case O_MEMLIMIT:
            if (mem_parse_bytes(optarg, &limit))
                cli_die("--memory-limit: '%s' is not a byte count (e.g. 80G, 512M)", optarg);
            break;
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
    int planning = ms.B || ms.T || device || precision || ms.world > 1 || ms.zero ||
                   ms.recompute || limit;
    if (planning && !ms.B)
        cli_die("info: --seq, --device, --precision, --world, --zero, --recompute and "
                "--memory-limit are memory plan options: give --batch too");
    if (!src.preset && !src.model && !src.init && !src.nset && !views && !planning) {
        print_blas();
        return 0;
    }
    if (!!(src.preset || src.model) + !!src.init != 1)
        cli_die("info: give exactly one of --preset (or --model) or --init");
    if (src.init && src.nset)
        cli_die("--%s: only with --preset or --model (other sources carry their config)",
                src.set_opt[0]);
    ckpt_meta md = { 0 };
    if (src.init ? setup_load(&src, &cfg, &params, &md, err)
                 : setup_preset_config(&src, &cfg, err))
        cli_die("%s", err);
    if (src.init)
        free(params);
    size_t total = cfg.family->layout(cfg.v, &v, &nviews);
    printf("family       %s (%s)\n", cfg.family->name, cfg.family->summary);
    cfg.family->describe(cfg.v, stdout);
    setup_print_settings(&cfg, stdout);
    print_count("parameters", cfg.family->real_params(cfg.v));
    print_training(&md, src.init);
    ckpt_meta_free(&md);
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
        /* the state that is not trained (running statistics): its own buffer */
        param_view *sv = NULL;
        int nsv = 0;
        family_state_layout(cfg.family, cfg.v, &sv, &nsv);
        if (nsv)
            printf("\n%-40s %-14s %12s %12s\n", "state (not trained)", "shape", "offset", "count");
        for (int i = 0; i < nsv; i++) {
            char shape[32];
            snprintf(shape, sizeof shape, "[%d]", sv[i].shape[0]);
            printf("%-40s %-14s %12zu %12zu\n", sv[i].name, shape, sv[i].offset, sv[i].count);
        }
        free(sv);
    }
    (void)total;
    free(v);
    if (planning)
        print_plan(&cfg, &ms, device, precision, limit);
    return 0;
}
