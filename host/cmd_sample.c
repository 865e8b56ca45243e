/* cmd_sample.c: `anatomy sample`: generate text from a model, streamed. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../data/errbuf.h"
#include "cli.h"
#include "setup.h"
#include "train.h"

static const char usage[] =
    "usage: anatomy sample (--init PATH | --preset NAME) [options]\n"
    "\n"
    "Continues a prompt with tokens drawn from the model. Each new token is one step\n"
    "over a cache of the keys and values of the earlier positions, so generation is\n"
    "linear in length per token; past the model's context the cache restarts from\n"
    "the last half of it.\n"
    "\n"
    "  --prompt TEXT      text to continue (default: start from end-of-text / token 0)\n"
    "  --tokens N         tokens to generate (default 256)\n"
    "  --temperature X    softmax temperature; 0 = greedy (default 1.0)\n"
    "  --top-k K          draw only among the K most likely tokens; 0 = all (default 0)\n"
    "  --seed S           sampling seed (default 1337)\n"
    "  --tokenizer KIND   bytes or gpt2 (default: from the checkpoint or the vocabulary)\n"
    "  --vocab DIR        GPT-2 vocabulary folder (encoder.json + vocab.bpe)\n"
    "  --device D         cpu or cuda (default: cuda when a GPU is present, else cpu)\n"
    "  --precision P      fp32 or bf16 (default: bf16 on cuda, fp32 on cpu)\n"
    "                     (bf16 on cpu: the linear layers' matmuls on AMX or AVX512-BF16)\n"
    "  --threads N        CPU threads (default: all cores)\n"
    "  --ids              print the generated token ids (one line) instead of text\n"
    "  --help             this text\n";

int cmd_sample(int argc, char **argv)
{
    enum { O_INIT = 256, O_PRESET, O_PROMPT, O_TOKENS, O_TEMP, O_TOPK, O_SEED, O_TOK, O_VOCAB,
           O_DEVICE, O_PRECISION, O_THREADS, O_IDS, O_HELP };
    static const struct option longopts[] = {
        { "init", 1, 0, O_INIT },         { "preset", 1, 0, O_PRESET },
        { "prompt", 1, 0, O_PROMPT },     { "tokens", 1, 0, O_TOKENS },
        { "temperature", 1, 0, O_TEMP },  { "top-k", 1, 0, O_TOPK },
        { "seed", 1, 0, O_SEED },         { "tokenizer", 1, 0, O_TOK },
        { "vocab", 1, 0, O_VOCAB },       { "device", 1, 0, O_DEVICE },
        { "precision", 1, 0, O_PRECISION },
        { "threads", 1, 0, O_THREADS },   { "ids", 0, 0, O_IDS },
        { "help", 0, 0, O_HELP },
        { 0, 0, 0, 0 },
    };
    model_source src = { 0 };
    const char *prompt = NULL, *kind = NULL, *vocab = NULL, *device = NULL, *precision = NULL;
    int ntok = 256, top_k = 0, threads = 0, c, ids_out = 0;
    double temp = 1.0;
    uint64_t seed = 1337;
    char err[ERRBUF];
    ckpt_meta md = { 0 };

    optind = 1;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        switch (c) {
        case O_INIT: src.init = optarg; break;
        case O_PRESET: src.preset = optarg; break;
        case O_PROMPT: prompt = optarg; break;
        case O_TOKENS: ntok = (int)cli_int("--tokens", optarg, 1, 10000000); break;
        case O_TEMP: temp = cli_float("--temperature", optarg, 0, 100); break;
        case O_TOPK: top_k = (int)cli_int("--top-k", optarg, 0, 1 << 24); break;
        case O_SEED: seed = (uint64_t)cli_int("--seed", optarg, 0, 1LL << 62); break;
        case O_TOK: kind = optarg; break;
        case O_VOCAB: vocab = optarg; break;
        case O_DEVICE: device = optarg; break;
        case O_PRECISION: precision = optarg; break;
        case O_THREADS: threads = (int)cli_int("--threads", optarg, 1, 4096); break;
        case O_IDS: ids_out = 1; break;
        case O_HELP: fputs(usage, stdout); return 0;
        default: cli_bad_option("sample", c, argv);
        }
    }
    if (optind < argc)
        cli_die("sample: unexpected argument '%s'", argv[optind]);
    if (!!src.init + !!src.preset != 1)
        cli_die("sample: give exactly one of --init or --preset");
    src.seed = seed;

    backend *be = setup_backend(device, threads, precision);
    model *m = setup_model(be, &src, &md);
    if (!m->fam->generative)
        cli_die("sample: a %s model does not generate text (sampling needs a next-token "
                "language model)", m->fam->name);
    if (!kind)
        kind = ckpt_meta_get(&md, "tokenizer");
    if (!kind)
        kind = m->V == 256 ? "bytes" : m->V == 50257 ? "gpt2" : NULL;
    if (!kind)
        cli_die("--tokenizer: the model's vocabulary (%d) matches no known tokenizer; say "
                "bytes or gpt2", m->V);
    tokenizer *tk = tokenizer_open(kind, vocab, err);
    if (!tk)
        cli_die("--tokenizer %s: %s", kind, err);
    if (tokenizer_vocab_size(tk) > m->V)
        cli_die("--tokenizer %s: its %d tokens do not fit the model's vocabulary of %d", kind,
                tokenizer_vocab_size(tk), m->V);

    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    if (prompt && *prompt) {
        if (tokenizer_encode(tk, prompt, strlen(prompt), 0, &ids, &n, &cap, err))
            cli_die("--prompt: %s", err);
    } else {
        int eot = tokenizer_eot(tk);
        ids = malloc(sizeof *ids);
        if (!ids)
            cli_die("out of memory");
        ids[n++] = eot >= 0 ? eot : 0;
    }
    int32_t *toks = malloc((n + (size_t)ntok) * sizeof *toks);
    if (!toks)
        cli_die("out of memory");
    memcpy(toks, ids, n * sizeof *ids);
    if (!m->decode_plan) { /* no cache: each token is a forward over the last T */
        int T = m->maxT < 1024 ? m->maxT : 1024;
        if (m->plan(m, 1, T, err))
            cli_die("%s", err);
    }
    rng_state rng;
    rng_seed(&rng, seed);
    sampler sp;
    if (sampler_init(&sp, m, (int)n + ntok, err))
        cli_die("%s", err);
    if (prompt && !ids_out)
        fputs(prompt, stdout);
    int len = (int)n;
    for (int i = 0; i < ntok; i++) {
        size_t bl;
        toks[len] = sampler_next(&sp, toks, len, temp, top_k, &rng);
        if (ids_out) {
            printf("%s%d", i ? " " : "", toks[len++]);
            continue;
        }
        const char *s = tokenizer_decode(tk, toks[len++], &bl);
        if (s)
            fwrite(s, 1, bl, stdout);
        fflush(stdout);
    }
    fputc('\n', stdout);
    sampler_free(&sp);
    free(ids);
    free(toks);
    tokenizer_close(tk);
    m->destroy(m);
    be->destroy(be);
    ckpt_meta_free(&md);
    return 0;
}
