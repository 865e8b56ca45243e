/* cmd_train.c: `anatomy train`: options -> model + train_opts -> train_run. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../data/errbuf.h"
#include "../kernels/cpu/gemm_bf16.h"
#include "cli.h"
#include "memplan.h"
#include "rundir.h"
#include "setup.h"
#include "train.h"

static const char usage[] =
    "usage: anatomy train (--preset NAME | --model NAME | --init PATH | --resume PATH)\n"
    "                     --data PATH [options]\n"
    "\n"
    "Trains a model of any family (GPT-2, BERT, ViT, ...; see 'model options' below) by\n"
    "minimising its loss (cross-entropy; squared error for forecasts) with AdamW.\n"
    "\n"
    "model:\n"
    "  --preset NAME        random init from a preset (its family's; list below)\n"
    "  --model NAME         a family, from its first preset unless --preset says\n"
    "  --init PATH          start from weights: Hugging Face GPT-2 directory, llm.c .bin,\n"
    "                       or an anatomy checkpoint (optimizer state is not taken)\n"
    "  --resume PATH        continue a run exactly: a checkpoint file, or a run directory\n"
    "                       (its latest step_NNNNNN.safetensors)\n"
    "data:\n"
    "  --data PATH          training data as the family reads it: token shards (llm.c\n"
    "                       layout, a glob, e.g. 'data/x_train_*.bin'), image files, a CSV\n"
    "  --val-data PATH      validation data (for single-file data such as a CSV with\n"
    "                       its own splits, the same file)\n"
    "  --batch B            micro-batch sequences (default 8)\n"
    "  --seq T              sequence length (default: the model's context, at most 1024)\n"
    "  --total-batch N      tokens per optimizer step, a multiple of B*T*ranks (default\n"
    "                       B*T*ranks): gradients accumulate over N/(B*T*ranks) micro-batches\n"
    "  --shuffle            visit the stream's B*T chunks in a seeded random order\n"
    "  --crop-pad N         vit: training images cropped at a random offset from the image\n"
    "                       padded by N black pixels (0-16); with --flip, replaces the\n"
    "                       default augmentation (CIFAR: 4 and flips; grey images: none)\n"
    "  --flip 0|1           vit: mirror training images with probability 1/2 (see\n"
    "                       --crop-pad; the one not given is then off)\n"
    "  --erase P            vit: with probability P (0-1, default 0) a training image,\n"
    "                       after its crop and flip, has one random rectangle of 2-33%\n"
    "                       of its area, aspect 0.3-3.3, set to 0, the middle of the\n"
    "                       pixel scale (random erasing, as torchvision's RandomErasing)\n"
    "  --rows R             how a micro-batch's B rows are cut from the token stream\n"
    "                       (gpt2, ffnn): contiguous (default) takes B*T consecutive\n"
    "                       tokens, in stream order or --shuffle's chunk order, so an\n"
    "                       epoch reads every token once and runs repeat exactly;\n"
    "                       random starts each row at its own seeded random offset, as\n"
    "                       nanoGPT's get_batch (tokens may repeat or be skipped within\n"
    "                       an epoch). Both resume bit for bit. Validation reads in order.\n"
    "optimisation:\n"
    "  --steps N            optimizer steps (default 1000)\n"
    "  --lr X               peak learning rate (default 6e-4)\n"
    "  --warmup N           linear warmup steps (default 0)\n"
    "  --schedule S         cosine (default: warmup, then cosine to lr*lr-min-frac) or constant\n"
    "  --lr-min-frac F      cosine floor as a fraction of --lr (default 0.1)\n"
    "  --weight-decay X     AdamW decoupled decay on 2-D parameters (default 0.1)\n"
    "  --beta1 X            AdamW first-moment decay (default 0.9, as PyTorch and llm.c)\n"
    "  --beta2 X            AdamW second-moment decay (default 0.95, as llm.c and nanoGPT\n"
    "                       train GPT-2; PyTorch's own default is 0.999)\n"
    "  --eps X              AdamW denominator term (default 1e-8, as PyTorch and llm.c);\n"
    "                       the three are saved in checkpoints, and --resume keeps them\n"
    "  --grad-clip X        clip the global gradient norm to X; 0 disables (default 1.0)\n"
    "  --label-smoothing E  vit: training targets (1 - E) one-hot + E / classes (as PyTorch's\n"
    "                       cross_entropy label_smoothing; default 0); validation unsmoothed\n"
    "  --loss L             patchts: the loss trained and validated: mse (default), mae or\n"
    "                       huber (PyTorch's mse_loss, l1_loss, huber_loss) of the forecast\n"
    "                       error in the data's units; eval reports mse and mae whatever it\n"
    "                       is. Saved in checkpoints; --resume keeps it\n"
    "  --huber-delta D      with --loss huber: where the loss turns from squared to linear,\n"
    "                       in the data's units (> 0, default 1)\n"
    "  --dropout P          drop probability in training forwards, at most 0.9 (default 0:\n"
    "                       none); the run's first lines name where the model drops\n"
    "  --seed S             initialisation, shuffling and sampling seed (default 1337)\n"
    "  --recompute          keep no per-layer layernorm and GELU outputs; recompute them in\n"
    "                       the backward pass (less activation memory, same results)\n"
    "  --memory-limit BYTES device memory a rank may use (e.g. 80G, 512M): the run stops\n"
    "                       before allocating when its memory plan (printed at start-up)\n"
    "                       needs more, naming the largest --batch that fits (default: the\n"
    "                       device's free memory on cuda, no limit on cpu)\n"
    "run:\n"
    "  --out DIR            write log.jsonl and checkpoints here: one trainer per directory\n"
    "                       (locked); a fresh run refuses one that holds checkpoints\n"
    "  --overwrite          let a fresh run (or a resume from an earlier step) remove the\n"
    "                       directory's checkpoints after its own start\n"
    "  --ckpt-every N       checkpoint every N steps (default: only at the end)\n"
    "  --val-every N        validation loss every N steps (default: only at the end)\n"
    "  --val-batches N      micro-batches per validation (default 20)\n"
    "  --sample-every N     print a sample every N steps (default 0: never)\n"
    "  --sample-tokens N    tokens per sample (default 64)\n"
    "  --hellaswag FILE     HellaSwag JSON Lines (data/recipes/hellaswag.sh): accuracy every\n"
    "                       --hellaswag-every steps and at the end, with the training batch\n"
    "                       (B/4 examples per forward; needs B >= 4 and a GPT-2-tokenizer LM)\n"
    "  --hellaswag-every N  (default 0: only at the end)\n"
    "  --hellaswag-limit N  the first N examples only (default: all)\n"
    "  --tokenizer KIND     bytes or gpt2, to print samples as text (default: by vocabulary)\n"
    "  --device D           cpu or cuda (default: cuda when a GPU is present, else cpu)\n"
    "  --precision P        fp32 or bf16 (default: bf16 on cuda, fp32 on cpu)\n"
    "                       (bf16 on cpu: the linear layers' matmuls on AMX or AVX512-BF16)\n"
    "  --threads N          CPU threads (default: all cores, shared evenly by the ranks\n"
    "                       on a node when the launcher says how many there are)\n"
    "multi-process (data parallel; launched by mpirun, srun or torchrun-style variables):\n"
    "                       rank/world/local rank from OMPI_COMM_WORLD_*, SLURM_PROCID/\n"
    "                       SLURM_NTASKS/SLURM_LOCALID or RANK/WORLD_SIZE/LOCAL_RANK;\n"
    "                       --total-batch stays the global batch (default B*T*ranks)\n"
    "  --dist-timeout S     end the job when a rank waits in a collective, or reaches\n"
    "                       none, for S seconds (a dead or hung rank; default 300)\n"
    "  --zero 1             ZeRO stage 1: each rank keeps (on its device) and updates\n"
    "                       1/ranks of the AdamW moments and master weights (gradients\n"
    "                       reduce-scattered, parameters all-gathered); checkpoints gather\n"
    "                       them into the usual single file, which resumes on any number of\n"
    "                       ranks with or without ZeRO (default 0; no effect with one rank)\n"
    "  --dist-init SPEC     how the ranks find each other for NCCL when MPI is not linked:\n"
    "                       tcp (rank 0 at MASTER_ADDR:MASTER_PORT; the default) or\n"
    "                       file:PATH (a new file on a filesystem all ranks share)\n"
    "  --dist-info          print this process's rank, world, local rank and their\n"
    "                       source, then exit (starts nothing)\n"
    "  --config FILE        read options from 'key = value' lines; the command line wins\n"
    "  --help               this text\n"
    "\n"
    "SIGINT, SIGTERM and SIGUSR1 (Slurm's --signal=USR1@90) end the current step, write a\n"
    "checkpoint to --out and exit with status 75 (EX_TEMPFAIL: resume with --resume DIR);\n"
    "a second SIGINT aborts at once. Exit status: 0 done, 1 error, 75 stopped by a signal.\n"
    "\n";

enum {
    O_PRESET = 256, O_MODEL, O_INIT, O_RESUME, O_DATA, O_VAL, O_BATCH, O_SEQ,
    O_TOTAL, O_SHUFFLE, O_STEPS, O_LR, O_WARMUP, O_SCHED, O_LRMIN, O_WD, O_CLIP, O_DROPOUT, O_SEED,
    O_OUT, O_CKPT, O_VALEVERY, O_VALB, O_SAMPLE, O_SAMPLETOK, O_TOK, O_DEVICE, O_PRECISION, O_THREADS,
    O_DTIMEOUT, O_DINFO, O_DINIT, O_HS, O_HSEVERY, O_HSLIMIT, O_ZERO, O_RECOMPUTE, O_BETA1,
    O_BETA2, O_EPS, O_HELP, O_OVERWRITE, O_ROWS, O_MEMLIMIT, O_CROPPAD, O_FLIP, O_ERASE, O_SMOOTH,
    O_LOSS, O_HUBER
};

static const struct option base_opts[] = {
    { "preset", 1, 0, O_PRESET },       { "model", 1, 0, O_MODEL },
    { "init", 1, 0, O_INIT },
    { "resume", 1, 0, O_RESUME },       { "data", 1, 0, O_DATA },
    { "val-data", 1, 0, O_VAL },        { "batch", 1, 0, O_BATCH },
    { "seq", 1, 0, O_SEQ },             { "total-batch", 1, 0, O_TOTAL },
    { "shuffle", 0, 0, O_SHUFFLE },     { "steps", 1, 0, O_STEPS },
    { "lr", 1, 0, O_LR },               { "warmup", 1, 0, O_WARMUP },
    { "schedule", 1, 0, O_SCHED },      { "lr-min-frac", 1, 0, O_LRMIN },
    { "weight-decay", 1, 0, O_WD },     { "grad-clip", 1, 0, O_CLIP },
    { "beta1", 1, 0, O_BETA1 },         { "beta2", 1, 0, O_BETA2 },
    { "eps", 1, 0, O_EPS },
    { "dropout", 1, 0, O_DROPOUT },
    { "seed", 1, 0, O_SEED },           { "out", 1, 0, O_OUT },
    { "ckpt-every", 1, 0, O_CKPT },     { "val-every", 1, 0, O_VALEVERY },
    { "val-batches", 1, 0, O_VALB },    { "sample-every", 1, 0, O_SAMPLE },
    { "sample-tokens", 1, 0, O_SAMPLETOK }, { "tokenizer", 1, 0, O_TOK },
    { "device", 1, 0, O_DEVICE },       { "precision", 1, 0, O_PRECISION },
    { "threads", 1, 0, O_THREADS },
    { "dist-timeout", 1, 0, O_DTIMEOUT }, { "dist-info", 0, 0, O_DINFO },
    { "dist-init", 1, 0, O_DINIT },
    { "hellaswag", 1, 0, O_HS },        { "hellaswag-every", 1, 0, O_HSEVERY },
    { "hellaswag-limit", 1, 0, O_HSLIMIT },
    { "zero", 1, 0, O_ZERO },           { "recompute", 0, 0, O_RECOMPUTE },
    { "rows", 1, 0, O_ROWS },           { "memory-limit", 1, 0, O_MEMLIMIT },
    { "crop-pad", 1, 0, O_CROPPAD },    { "flip", 1, 0, O_FLIP },      { "erase", 1, 0, O_ERASE },
    { "label-smoothing", 1, 0, O_SMOOTH },
    { "loss", 1, 0, O_LOSS },           { "huber-delta", 1, 0, O_HUBER },
    { "help", 0, 0, O_HELP },           { "overwrite", 0, 0, O_OVERWRITE },
    { 0, 0, 0, 0 },
};

/* A resumed run must read the same data in the same order. The number of
 * ranks may differ: without ZeRO the state is replicated on every rank, and
 * the data position converts exactly (see convert_data_pos). */
static void check_resume_matches(const ckpt_meta *md, const char *path, const train_opts *o)
{
    struct { const char *key; long long want; const char *opt; } k[] = {
        { "batch", o->B, "--batch" },       { "seq", o->T, "--seq" },
        { "total_batch", o->total_batch, "--total-batch" },
        { "shuffle", o->shuffle, "--shuffle" },
        { "random_rows", o->random_rows, "--rows random" },
    };
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++) {
        const char *v = ckpt_meta_get(md, k[i].key);
        if (v && strtoll(v, NULL, 10) != k[i].want)
            cli_die("--resume %s: %s is %lld but the checkpoint was trained with %s; resuming "
                    "needs the same batch layout", path, k[i].opt, k[i].want, v);
    }
    const char *seed = ckpt_meta_get(md, "seed");
    if (seed && (o->shuffle || o->random_rows) && strtoull(seed, NULL, 10) != o->seed)
        cli_die("--resume %s: --seed %llu differs from the checkpoint's %s, which fixes the "
                "%s", path, (unsigned long long)o->seed, seed,
                o->random_rows ? "rows' random offsets" : "shuffled order");
}

/* AdamW's betas and epsilon. A checkpoint's are the run's: an option left
 * out takes the checkpoint's value (a checkpoint written before they were
 * saved was trained with the defaults), an option given must equal it.
 * given[k]: the option was on the command line. */
static void resume_adamw(const ckpt_meta *md, const char *path, train_opts *o,
                         const int *given)
{
    struct { const char *key, *opt; double *v, old; } k[] = {
        { "beta1", "--beta1", &o->beta1, 0.9 }, { "beta2", "--beta2", &o->beta2, 0.95 },
        { "eps", "--eps", &o->eps, 1e-8 },
    };
    for (int i = 0; i < 3; i++) {
        const char *s = ckpt_meta_get(md, k[i].key);
        double have = k[i].old;
        char *end;
        if (s) {
            have = strtod(s, &end);
            if (end == s || *end || !(have >= 0 && have < 1))
                cli_die("--resume %s: metadata '%s' = '%s' is not a number in [0, 1)", path,
                        k[i].key, s);
        }
        if (given[i] && *k[i].v != have)
            cli_die("--resume %s: %s is %g but the checkpoint was trained with %.9g; resuming "
                    "keeps AdamW's settings (leave %s out)", path, k[i].opt, *k[i].v, have,
                    k[i].opt);
        *k[i].v = have;
    }
}

/* The regression loss, as AdamW's settings: an option left out takes the
 * checkpoint's (mse for one written before it was saved), one given must
 * equal it. loss_given, delta_given: --loss, --huber-delta were given. */
static void resume_loss(const ckpt_meta *md, const char *path, train_opts *o, int loss_given,
                        int delta_given)
{
    char err[ERRBUF];
    int kind;
    double delta;
    if (setup_meta_get_loss(md, path, &kind, &delta, err))
        cli_die("--resume %s", err);
    if (loss_given && o->loss_kind != kind)
        cli_die("--resume %s: --loss is %s but the checkpoint was trained with %s; resuming "
                "keeps the loss (leave --loss out)", path, model_loss_name(o->loss_kind),
                model_loss_name(kind));
    if (delta_given && kind == LOSS_HUBER && o->huber_delta != delta)
        cli_die("--resume %s: --huber-delta is %g but the checkpoint was trained with %.9g; "
                "resuming keeps the loss (leave --huber-delta out)", path, o->huber_delta,
                delta);
    o->loss_kind = kind;
    if (kind == LOSS_HUBER)
        o->huber_delta = delta;
}

/* The checkpoint's data position counts micro-batches per rank of its own
 * world; the stream position is global micro-batch data_pos * world (rank r
 * reads j*world + r), so on another world it is that over the new world. The
 * global batch is fixed, so this divides whenever --total-batch is accepted. */
static void convert_data_pos(const ckpt_meta *md, const char *path, const train_opts *o,
                             train_state *st)
{
    const char *v = ckpt_meta_get(md, "world");
    long long old = v ? strtoll(v, NULL, 10) : 1;
    if (old < 1 || old > (1 << 20))
        cli_die("--resume %s: metadata 'world' = '%s' is out of range", path, v);
    if (old == o->world)
        return;
    unsigned long long global = (unsigned long long)st->data_pos * (unsigned long long)old;
    if (global % (unsigned long long)o->world)
        cli_die("--resume %s: the checkpoint consumed %llu micro-batches over %lld ranks, "
                "which %d ranks cannot split evenly", path, global, old, o->world);
    st->data_pos = global / (unsigned long long)o->world;
    if (o->rank == 0)
        printf("resuming a %lld-rank checkpoint on %d ranks: data position %llu -> %llu "
               "micro-batches per rank (exact data order; sums reassociate, so not bit for "
               "bit)\n", old, o->world, global / (unsigned long long)old,
               (unsigned long long)st->data_pos);
}

/* With one GPU per rank, rank picks the local_rank-th visible device: the
 * backend opens device 0, so narrow CUDA_VISIBLE_DEVICES before it starts.
 * A launcher that already bound one GPU per rank (a single entry) wins. */
static void pick_gpu(const dist_env *e)
{
    const char *vis = getenv("CUDA_VISIBLE_DEVICES");
    char buf[64];
    if (e->world == 1 || (vis && *vis && !strchr(vis, ',')))
        return;
    if (vis && *vis) {
        const char *s = vis;
        for (int i = 0; i < e->local_rank && s; i++)
            if ((s = strchr(s, ',')))
                s++;
        if (!s || !*s)
            cli_die("rank %d: local rank %d has no GPU in CUDA_VISIBLE_DEVICES=%s", e->rank,
                    e->local_rank, vis);
        size_t n = strcspn(s, ",");
        if (n >= sizeof buf)
            cli_die("CUDA_VISIBLE_DEVICES: entry too long");
        memcpy(buf, s, n);
        buf[n] = 0;
    } else {
        snprintf(buf, sizeof buf, "%d", e->local_rank);
    }
    setenv("CUDA_VISIBLE_DEVICES", buf, 1);
}

/* Cores per rank when `local` ranks share this node. */
static int cpu_share(int local)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > local ? (int)(n / local) : 1;
}

/* The memory plan of this run (memplan.h), printed by rank 0 before anything
 * is allocated, and checked against --memory-limit or, on a device that
 * reports its memory, what it has free (plus what the backend already holds
 * for itself, which the plan counts): a run that would not fit stops here,
 * naming the largest --batch that would. */
static void check_memory(const model_config *cfg, backend *be, const train_opts *o,
                         int recompute, size_t limit)
{
    char err[ERRBUF], line[512];
    mem_shape ms = { o->B, o->T, recompute, o->world, o->zero };
    mem_plan p;
    const char *against = "--memory-limit";
    size_t free_b = 0, total_b = 0;

    if (mem_plan_compute(cfg, be, &ms, &p, err))
        cli_die("%s", err);
    if (o->rank == 0)
        printf("memory plan per rank (%s %s, batch %d x seq %d%s%s): %s\n", be->name,
               dtype_name(be->act), o->B, o->T, recompute ? ", recompute" : "",
               o->zero && o->world > 1 ? ", ZeRO stage 1" : "",
               mem_plan_format(&p, line, sizeof line));
    if (!limit && be->mem_info && !be->mem_info(be, &free_b, &total_b)) {
        limit = free_b + (be->workspace_bytes ? be->workspace_bytes(be, 0, 0, 0, 0, 0) : 0);
        against = "free device memory";
    }
    if (!limit || mem_plan_total(&p) <= limit)
        return;
    int fits = mem_plan_largest_batch(cfg, be, &ms, limit);
    char need[40], have[40];
    mem_human(mem_plan_total(&p), need, sizeof need);
    mem_human(limit, have, sizeof have);
    if (fits > 0)
        cli_die("--batch %d: the memory plan needs %s per rank, more than the %s of %s; the "
                "largest batch that fits is --batch %d%s", o->B, need, have, against, fits,
                recompute ? "" : " (--recompute or --zero 1 with more ranks may fit more)");
    cli_die("--batch %d: the memory plan needs %s per rank, more than the %s of %s; not even "
            "--batch 1 fits at --seq %d", o->B, need, have, against, o->T);
}

int cmd_train(int argc, char **argv)
{
    model_source src = { 0 };
    train_opts o = { 0 };
    train_state st = { 0 };
    const char *device = NULL, *precision = NULL, *resume = NULL, *tok_kind = NULL, *sched = "cosine";
    const char *dist_init_spec = NULL;
    long long hs_limit = 0;
    tokenizer *hs_tok = NULL;
    hellaswag_set *hs_set = NULL;
    int threads = 0, c, seq = 0, dist_info = 0, recompute = 0, adamw_given[3] = { 0 };
    int loss_given = 0, delta_given = 0;
    double dist_timeout = 300;
    dist_env denv;
    char err[ERRBUF];
    ckpt_meta md = { 0 };
    size_t mem_limit = 0;

    o.B = 8;
    o.steps = 1000;
    o.lr = 6e-4;
    o.lr_min_frac = 0.1;
    o.weight_decay = 0.1;
    o.grad_clip = 1.0;
    o.beta1 = 0.9;
    o.beta2 = 0.95;
    o.eps = 1e-8;
    o.loss_kind = LOSS_MSE;
    o.huber_delta = 1.0;
    o.val_batches = 20;
    o.sample_tokens = 64;
    o.seed = 1337;
    o.world = 1;
    struct option *longopts = setup_longopts(base_opts);
    optind = 1;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        if (setup_take_option(&src, c, optarg))
            continue;
        switch (c) {
        case O_PRESET: src.preset = optarg; break;
        case O_MODEL: src.model = optarg; break;
        case O_INIT: src.init = optarg; break;
        case O_RESUME: resume = optarg; break;
        case O_DATA: o.data = optarg; break;
        case O_VAL: o.val_data = optarg; break;
        case O_BATCH: o.B = (int)cli_int("--batch", optarg, 1, 1 << 20); break;
        case O_SEQ: seq = (int)cli_int("--seq", optarg, 1, 1 << 20); break;
        case O_TOTAL: o.total_batch = cli_int("--total-batch", optarg, 1, 1LL << 40); break;
        case O_SHUFFLE: o.shuffle = 1; break;
        case O_MEMLIMIT:
            if (mem_parse_bytes(optarg, &mem_limit))
                cli_die("--memory-limit: '%s' is not a byte count (e.g. 80G, 512M)", optarg);
            break;
        case O_CROPPAD:
            o.augment = 1;
            o.crop_pad = (int)cli_int("--crop-pad", optarg, 0, 16);
            break;
        case O_FLIP:
            o.augment = 1;
            o.flip = (int)cli_int("--flip", optarg, 0, 1);
            break;
        case O_ROWS:
            if (strcmp(optarg, "random") && strcmp(optarg, "contiguous"))
                cli_die("--rows: unknown mode '%s' (expected contiguous or random)", optarg);
            o.random_rows = strcmp(optarg, "random") == 0;
            break;
        case O_STEPS: o.steps = (int)cli_int("--steps", optarg, 1, 100000000); break;
        case O_LR: o.lr = cli_float("--lr", optarg, 0, 10); break;
        case O_WARMUP: o.warmup = (int)cli_int("--warmup", optarg, 0, 100000000); break;
        case O_SCHED: sched = optarg; break;
        case O_LRMIN: o.lr_min_frac = cli_float("--lr-min-frac", optarg, 0, 1); break;
        case O_WD: o.weight_decay = cli_float("--weight-decay", optarg, 0, 10); break;
        case O_CLIP: o.grad_clip = cli_float("--grad-clip", optarg, 0, 1e30); break;
        case O_BETA1: o.beta1 = cli_float("--beta1", optarg, 0, 0.999999); adamw_given[0] = 1; break;
        case O_BETA2: o.beta2 = cli_float("--beta2", optarg, 0, 0.999999); adamw_given[1] = 1; break;
        case O_EPS: o.eps = cli_float("--eps", optarg, 1e-30, 0.5); adamw_given[2] = 1; break;
        case O_DROPOUT: o.dropout = cli_float("--dropout", optarg, 0, 0.9); break;
        case O_ERASE: o.erase = cli_float("--erase", optarg, 0, 1); break;
        case O_SMOOTH: o.label_smoothing = cli_float("--label-smoothing", optarg, 0, 0.99); break;
        case O_LOSS:
            if ((o.loss_kind = model_loss_kind(optarg)) < 0)
                cli_die("--loss: unknown loss '%s' (expected %s)", optarg, MODEL_LOSS_NAMES);
            loss_given = 1;
            break;
        case O_HUBER:
            o.huber_delta = cli_float("--huber-delta", optarg, -1e30, 1e30);
            if (!(o.huber_delta > 0))
                cli_die("--huber-delta: %g is not > 0 (the Huber loss's delta)", o.huber_delta);
            delta_given = 1;
            break;
        case O_SEED: o.seed = (uint64_t)cli_int("--seed", optarg, 0, (1LL << 62)); break;
        case O_OUT: o.out = optarg; break;
        case O_CKPT: o.ckpt_every = (int)cli_int("--ckpt-every", optarg, 0, 100000000); break;
        case O_VALEVERY: o.val_every = (int)cli_int("--val-every", optarg, 0, 100000000); break;
        case O_VALB: o.val_batches = (int)cli_int("--val-batches", optarg, 1, 1000000); break;
        case O_SAMPLE: o.sample_every = (int)cli_int("--sample-every", optarg, 0, 100000000); break;
        case O_SAMPLETOK: o.sample_tokens = (int)cli_int("--sample-tokens", optarg, 1, 1000000); break;
        case O_TOK: tok_kind = optarg; break;
        case O_DEVICE: device = optarg; break;
        case O_PRECISION: precision = optarg; break;
        case O_THREADS: threads = (int)cli_int("--threads", optarg, 1, 4096); break;
        case O_DTIMEOUT: dist_timeout = cli_float("--dist-timeout", optarg, 1, 1e7); break;
        case O_DINFO: dist_info = 1; break;
        case O_DINIT: dist_init_spec = optarg; break;
        case O_HS: o.hellaswag_path = optarg; break;
        case O_HSEVERY: o.hellaswag_every = (int)cli_int("--hellaswag-every", optarg, 0, 100000000); break;
        case O_HSLIMIT: hs_limit = cli_int("--hellaswag-limit", optarg, 1, 1LL << 40); break;
        case O_ZERO: o.zero = (int)cli_int("--zero", optarg, 0, 1); break;
        case O_RECOMPUTE: recompute = 1; break;
        case O_OVERWRITE: o.overwrite = 1; break;
        case O_HELP:
            fputs(usage, stdout);
            setup_print_model_help(stdout);
            free(longopts);
            return 0;
        default: cli_bad_option("train", c, argv);
        }
    }
    free(longopts);
    if (optind < argc)
        cli_die("train: unexpected argument '%s' (see 'anatomy train --help')", argv[optind]);
    if (dist_env_detect(&denv, err))
        cli_die("%s", err);
    if (dist_init_spec && strcmp(dist_init_spec, "tcp") && strncmp(dist_init_spec, "file:", 5))
        cli_die("--dist-init: '%s' is neither tcp nor file:PATH", dist_init_spec);
    if (dist_init_spec && !strcmp(dist_init_spec, "file:"))
        cli_die("--dist-init: file: needs a path (file:PATH)");
    denv.init = dist_init_spec;
    if (dist_info) {
        printf("rank %d world %d local_rank %d source %s mpi %s local_world %d\n", denv.rank,
               denv.world, denv.local_rank, denv.source, dist_have_mpi() ? "yes" : "no",
               denv.local_world);
        return 0;
    }
    if (!!(src.preset || src.model) + !!src.init + !!resume != 1)
        cli_die("train: give exactly one of --preset (or --model), --init or --resume");
    if (!o.data)
        cli_die("--data: required (a glob of token shards; 'anatomy prep' makes them)");
    if (strcmp(sched, "constant") == 0)
        o.constant = 1;
    else if (strcmp(sched, "cosine") != 0)
        cli_die("--schedule: unknown schedule '%s' (expected cosine or constant)", sched);
    if (src.nset && !(src.preset || src.model))
        cli_die("--%s: only with --preset or --model (other sources carry their config)",
                src.set_opt[0]);

    char *resume_path = NULL;
    if (resume) {
        resume_path = setup_latest_checkpoint(resume, err);
        if (!resume_path)
            cli_die("--resume%s", err);
    }
    if (resume_path)
        src.init = resume_path;
    src.seed = o.seed;
    /* no --device: either may follow, so prepare for both (pick_gpu only
     * narrows CUDA_VISIBLE_DEVICES; threads matter only to the CPU) */
    if (!device || strcmp(device, "cuda") == 0)
        pick_gpu(&denv);
    if ((!device || strcmp(device, "cpu") == 0) && threads == 0 && denv.local_world > 1)
        threads = cpu_share(denv.local_world); /* share the node's cores */
    backend *be = setup_backend(device, threads, precision);
    dist *dd = dist_init(&denv, be, dist_timeout, err);
    if (!dd)
        cli_die("%s", err);
    o.dist = dd;
    o.rank = dd->rank;
    o.world = dd->world;
    if (o.rank == 0 && strncmp(be->name, "cpu", 3) == 0) /* which kernel the matmuls run on */
        printf("blas: %s\n", blas_describe(threads, (char[256]){ 0 }, 256));
    if (o.rank == 0 && strcmp(be->name, "cpu-bf16") == 0)
        printf("matmul: the linear layers in bf16 on %s (fp32 sums); attention's "
               "products, recurrent steps, weights and optimizer in fp32\n",
               bf16_kernel_name(bf16_gemm_pick(NULL, 0)));
    model_config cfg;
    float *params;
    if (setup_load(&src, &cfg, &params, &md, err))
        cli_die("%s", err);
    int maxT = mem_plan_max_seq(&cfg, be, err);
    if (maxT < 0)
        cli_die("%s", err);
    o.T = seq ? seq : (maxT < 1024 ? maxT : 1024);
    if (o.T > maxT)
        cli_die("--seq: %d is longer than the model's context length %d", o.T, maxT);
    check_memory(&cfg, be, &o, recompute, mem_limit);
    model *m = setup_model_from(be, &src, &cfg, params);
    m->recompute = recompute;
    if (resume_path && !ckpt_meta_get(&md, "step"))
        cli_die("--resume %s: not a training checkpoint (use --init to start from weights)",
                resume_path);
    if (o.random_rows && !m->fam->random_rows)
        cli_die("--rows random: the %s model's data source has no random rows (gpt2 and ffnn "
                "token shards have)", m->fam->name);
    if (o.random_rows && o.shuffle)
        cli_die("--rows random: rows at random offsets have no chunk order to --shuffle; give "
                "one of them");
    if (!o.total_batch)
        o.total_batch = (long long)o.B * o.T * o.world;
    if (resume_path) {
        check_resume_matches(&md, resume_path, &o);
        resume_adamw(&md, resume_path, &o, adamw_given);
        resume_loss(&md, resume_path, &o, loss_given, delta_given);
        if (train_restore(m, resume_path, &md, &st, err))
            cli_die("%s", err);
        convert_data_pos(&md, resume_path, &o, &st);
        if (st.step >= o.steps)
            cli_die("--steps: the checkpoint is already at step %d of %d", st.step, o.steps);
    } else {
        rng_seed(&st.rng, o.seed ^ 0x5a4d504c45ULL);
    }
    if (delta_given && o.loss_kind != LOSS_HUBER)
        cli_die("--huber-delta: only with --loss huber (the loss is %s)",
                model_loss_name(o.loss_kind));
    if (!tok_kind)
        tok_kind = ckpt_meta_get(&md, "tokenizer");
    if (!tok_kind)
        tok_kind = m->V == 256 ? "bytes" : m->V == 50257 ? "gpt2" : NULL;
    o.tokenizer_kind = tok_kind;
    if (o.sample_every && tok_kind) {
        o.tok = tokenizer_open(tok_kind, NULL, err);
        if (!o.tok)
            cli_die("--tokenizer %s: %s", tok_kind, err);
    }
    if (o.hellaswag_path) {
        if (!m->fam->generative || m->V != 50257)
            cli_die("--hellaswag: needs a language model over GPT-2's 50257 tokens (this %s "
                    "model has %d classes)", m->fam->name, m->V);
        if (o.B < 4)
            cli_die("--hellaswag: --batch %d is below the 4 rows one example needs", o.B);
        hs_tok = tokenizer_open("gpt2", NULL, err);
        if (!hs_tok)
            cli_die("--hellaswag: %s", err);
        hs_set = hellaswag_load(o.hellaswag_path, hs_tok, (long)hs_limit, err);
        if (!hs_set)
            cli_die("%s", err);
        o.hellaswag = hs_set;
    } else if (o.hellaswag_every || hs_limit) {
        cli_die("--hellaswag-every/--hellaswag-limit: only with --hellaswag FILE");
    }
    int rc = train_run(m, &o, &st, err);
    if (rc < 0) {
        if (o.world > 1 && strncmp(err, "rank ", 5))
            cli_die("rank %d: %s", o.rank, err);
        cli_die("%s", err);
    }
    if (o.tok)
        tokenizer_close(o.tok);
    if (hs_set)
        hellaswag_free(hs_set);
    if (hs_tok)
        tokenizer_close(hs_tok);
    m->destroy(m);
    dist_finalize(dd); /* its NCCL communicator uses the backend's device */
    be->destroy(be);
    free(resume_path);
    ckpt_meta_free(&md);
    return rc == TRAIN_STOPPED ? RUNDIR_STOP_STATUS : 0;
}
