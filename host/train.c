/* train.c: the training loop.
 *
 *   for each step: for each micro-batch (gradient accumulation):
 *       batch source -> host batch -> model.forward (loss) -> model.backward (grads +=)
 *   global grad norm -> clip coefficient -> AdamW (one call over all segments)
 *   -> one log line (stdout) and one JSON line (<out>/log.jsonl)
 *   every --val-every: validation loss; every --sample-every: a sample;
 *   every --ckpt-every, at the end and after a stop signal: a checkpoint.
 * The run directory (lock, log, checkpoint names, signals) is rundir.c's.
 * Everything a step needs (batches, host copies for checkpoints) is allocated
 * before the first step. */
#include "train.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "../data/errbuf.h"
#include "../kernels/dropout_mask.h"
#include "batches.h"
#include "family.h"
#include "hellaswag_eval.h"
#include "memplan.h"
#include "rundir.h"
#include "setup.h"

double train_lr(const train_opts *o, int step)
{
    if (step < o->warmup)
        return o->lr * (step + 1) / o->warmup;
    if (o->constant || o->steps <= o->warmup)
        return o->lr;
    double progress = (double)(step - o->warmup) / (double)(o->steps - o->warmup);
    if (progress > 1.0)
        progress = 1.0;
    double min_lr = o->lr * o->lr_min_frac;
    return min_lr + 0.5 * (o->lr - min_lr) * (1.0 + cos(M_PI * progress));
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void format_eta(char *buf, size_t n, double seconds)
{
    long s = (long)(seconds + 0.5);
    if (s >= 3600)
        snprintf(buf, n, "%ldh%02ldm", s / 3600, s / 60 % 60);
    else if (s >= 60)
        snprintf(buf, n, "%ldm%02lds", s / 60, s % 60);
    else
        snprintf(buf, n, "%lds", s);
}

/* Index of a draw from softmax(logits / temperature) restricted to the top k. */
static int sample_token(float *logits, int V, double temperature, int top_k, rng_state *rng)
{
    float threshold = -INFINITY, maxv = -INFINITY;
    double sum = 0.0, r;
    int i;

    for (i = 0; i < V; i++)
        if (logits[i] > maxv)
            maxv = logits[i];
    if (temperature <= 0.0) { /* greedy */
        for (i = 0; i < V; i++)
            if (logits[i] == maxv)
                return i;
    }
    if (top_k > 0 && top_k < V) {
        /* the k-th largest by counting bisection on the value range */
        float lo = -INFINITY, hi = maxv;
        for (i = 0; i < V; i++)
            if (logits[i] < hi && (lo == -INFINITY || logits[i] < lo))
                lo = logits[i];
        for (int it = 0; it < 60 && lo < hi; it++) {
            float mid = lo + (hi - lo) / 2;
            int count = 0;
            for (i = 0; i < V; i++)
                count += logits[i] >= mid;
            if (count >= top_k)
                lo = mid;
            else
                hi = mid;
            if (mid == lo && mid == hi)
                break;
        }
        threshold = lo;
    }
    for (i = 0; i < V; i++) {
        double p = logits[i] >= threshold ? exp((logits[i] - maxv) / temperature) : 0.0;
        logits[i] = (float)p;
        sum += p;
    }
    r = rng_uniform(rng) * sum;
    for (i = 0; i < V; i++) {
        r -= logits[i];
        if (r < 0 && logits[i] > 0)
            return i;
    }
    for (i = V - 1; i > 0 && logits[i] == 0; i--)
        ;
    return i;
}

int sampler_init(sampler *s, model *m, int maxlen, char *err)
{
    memset(s, 0, sizeof *s);
    s->m = m;
    s->probs = malloc((size_t)m->V * sizeof *s->probs);
    if (!s->probs)
        return errf(err, "out of memory for sampling");
    if (m->decode_plan) {
        s->maxlen = maxlen > 0 && maxlen < m->maxT ? maxlen : m->maxT;
        if (m->decode_plan(m, s->maxlen, err)) {
            sampler_free(s);
            return -1;
        }
        return 0;
    }
    s->ctx = calloc((size_t)m->B * m->T, sizeof *s->ctx);
    if (!s->ctx) {
        sampler_free(s);
        return errf(err, "out of memory for sampling");
    }
    return 0;
}

void sampler_free(sampler *s)
{
    free(s->ctx);
    free(s->probs);
    s->ctx = NULL;
    s->probs = NULL;
}

void sampler_reset(sampler *s)
{
    s->cached = 0;
    s->base = 0;
}

int32_t sampler_next(sampler *s, const int32_t *tokens, int len, double temperature, int top_k,
                     rng_state *rng)
{
    model *m = s->m;
    if (s->maxlen) {
        if (len - s->base > s->maxlen) { /* full: restart from the last half */
            s->base = len - (s->maxlen + 1) / 2;
            s->cached = 0;
        }
        while (s->base + s->cached < len) {
            m->decode_step(m, tokens[s->base + s->cached], s->cached, s->probs);
            s->cached++;
        }
        return sample_token(s->probs, m->V, temperature, top_k, rng);
    }
    int T = m->T, start = len > T ? len - T : 0, w = len - start;
    model_batch b = { .tokens = s->ctx };
    memcpy(s->ctx, tokens + start, (size_t)w * sizeof *s->ctx);
    m->forward(m, &b, 0.0f);
    m->logits(m, 0, w - 1, s->probs);
    return sample_token(s->probs, m->V, temperature, top_k, rng);
}

static void print_tokens(FILE *f, tokenizer *tok, const int32_t *t, int n)
{
    for (int i = 0; i < n; i++) {
        size_t len;
        const char *s = tok ? tokenizer_decode(tok, t[i], &len) : NULL;
        if (s)
            fwrite(s, 1, len, f);
        else
            fprintf(f, "%s%d", i ? " " : "", t[i]);
    }
    fputc('\n', f);
}

/* toks: room for 1 + o->sample_tokens ids. */
static void train_sample(sampler *sp, const train_opts *o, train_state *st, int32_t *toks,
                         int step)
{
    int n = o->sample_tokens, len = 1;
    sampler_reset(sp); /* a new sequence, and the weights have changed */
    /* start from the end-of-text token where the tokenizer has one */
    toks[0] = o->tok && tokenizer_eot(o->tok) >= 0 ? tokenizer_eot(o->tok) : 0;
    if (toks[0] >= sp->m->V)
        toks[0] = 0;
    while (len < n + 1) {
        toks[len] = sampler_next(sp, toks, len, 1.0, 0, &st->rng);
        len++;
    }
    printf("sample at step %d:\n---\n", step);
    print_tokens(stdout, o->tok, toks + 1, len - 1);
    printf("---\n");
    fflush(stdout);
}

/* Loss (and the model's metrics, into sums/counts) over the first
 * `batches` micro-batches of the validation stream: the mean over every
 * scored item (token, masked token, example, element), not the mean of the
 * micro-batches' means (model.h, nloss). The source was opened with this
 * rank's place, so rank r evaluates micro-batches r, r + world, ... below
 * `batches` and the sums are reduced: the result is the single-process one
 * up to summation order. */
static double val_loss(model *m, const train_opts *o, batch_source *src, int batches,
                       double *sums, double *counts, char *err)
{
    enum { NL = 2 * MODEL_MAXLOSS };
    double acc[NL + 2 * MODEL_MAXMETRICS] = { 0 };
    int nm = m->metrics ? m->nmetrics : 0;
    src->seek(src, 0);
    for (int i = o->rank; i < batches; i += o->world) {
        if (src->next(src, err))
            return NAN;
        m->forward(m, &src->batch, 0.0f);
        model_loss_add(m, acc);
        if (nm)
            m->metrics(m, &src->batch, acc + NL, acc + NL + MODEL_MAXMETRICS);
    }
    if (o->dist && dist_allreduce_f64(o->dist, acc, NL + 2 * MODEL_MAXMETRICS, 0,
                                      "validation loss", err))
        return NAN;
    for (int k = 0; k < nm; k++) {
        sums[k] = acc[NL + k];
        counts[k] = acc[NL + MODEL_MAXMETRICS + k];
    }
    return model_loss_mean(acc);
}

/* HellaSwag accuracy with the training plan: rank r scores examples r,
 * r + world, ...; the counts are reduced. in, tg: host [B*T] scratch. */
static int train_hellaswag(model *m, const train_opts *o, int step, rundir *log, int32_t *in,
                           int32_t *tg, char *err)
{
    size_t correct = 0, count = 0;
    double t0 = now_ms();
    if (hellaswag_score(m, o->hellaswag, o->hellaswag_path, (size_t)o->rank, (size_t)o->world,
                        in, tg, &correct, &count, err))
        return -1;
    double c[2] = { (double)correct, (double)count };
    if (o->dist && dist_allreduce_f64(o->dist, c, 2, 0, "hellaswag", err))
        return -1;
    if (o->rank == 0) {
        double acc = c[1] > 0 ? c[0] / c[1] : 0.0;
        printf("hella %5d/%d | acc %.4f (%.0f/%.0f) | %.1f s\n", step, o->steps, acc, c[0],
               c[1], (now_ms() - t0) / 1e3);
        if (log) {
            rundir_logf(log, "{\"step\": %d, \"hellaswag_acc\": %.6f, \"hellaswag_count\": "
                             "%.0f}\n", step, acc, c[1]);
            if (rundir_log_flush(log, step, err))
                return -1;
        }
    }
    return 0;
}

/* Makes every rank start from rank 0's parameters. Initialisation is
 * deterministic, so this only guards against a rank that loaded different
 * files; it costs one broadcast of the weights at start. */
static int sync_params(model *m, const train_opts *o, char *err)
{
    float *p;
    int rc;
    if (!o->dist || o->world == 1)
        return 0;
    p = malloc(m->nparams * sizeof *p);
    if (!p)
        return errf(err, "rank %d: out of memory for the parameter broadcast", o->rank);
    model_get_params(m, p);
    rc = dist_bcast_f32(o->dist, p, m->nparams, 0, "parameter broadcast", err);
    if (!rc && o->rank)
        model_set_params(m, p);
    free(p);
    return rc;
}

/* The seed of the stochastic rounding of bf16 params (adamw_params.seed);
 * the backend mixes in the step. */
static uint32_t rounding_seed(const train_opts *o)
{
    return (uint32_t)(o->seed ^ (o->seed >> 32));
}

static void put_state(ckpt_meta *md, const train_opts *o, const train_state *st)
{
    ckpt_meta_set(md, "step", "%d", st->step);
    ckpt_meta_set(md, "data_pos", "%llu", (unsigned long long)st->data_pos);
    ckpt_meta_set(md, "rng", "%016llx%016llx%016llx%016llx",
                  (unsigned long long)st->rng.s[0], (unsigned long long)st->rng.s[1],
                  (unsigned long long)st->rng.s[2], (unsigned long long)st->rng.s[3]);
    ckpt_meta_set(md, "seed", "%llu", (unsigned long long)o->seed);
    ckpt_meta_set(md, "batch", "%d", o->B);
    ckpt_meta_set(md, "seq", "%d", o->T);
    ckpt_meta_set(md, "total_batch", "%lld", o->total_batch);
    ckpt_meta_set(md, "world", "%d", o->world);
    ckpt_meta_set(md, "zero", "%d", o->zero && o->world > 1);
    ckpt_meta_set(md, "shuffle", "%d", o->shuffle);
    ckpt_meta_set(md, "beta1", "%.17g", o->beta1);
    ckpt_meta_set(md, "beta2", "%.17g", o->beta2);
    ckpt_meta_set(md, "eps", "%.17g", o->eps);
    ckpt_meta_set(md, "random_rows", "%d", o->random_rows);
    if (o->tokenizer_kind)
        ckpt_meta_set(md, "tokenizer", "%s", o->tokenizer_kind);
    ckpt_meta_set(md, "steps", "%d", o->steps);
    ckpt_meta_set(md, "loss", "%.17g", st->loss);
    if (st->val_step > 0) {
        ckpt_meta_set(md, "val_loss", "%.17g", st->val_loss);
        ckpt_meta_set(md, "val_step", "%d", st->val_step);
    }
}

/* Every rank's shard [lo, hi) of the host array a [n] (the ranks' parts of
 * a ZeRO-sharded state, each filled in by its owner) to every rank. */
static int gather_shards(const train_opts *o, float *a, size_t n, const char *what, char *err)
{
    for (int r = 0; r < o->world; r++) {
        size_t lo, hi;
        dist_shard(o->dist, r, n, &lo, &hi);
        if (hi > lo && dist_bcast_f32(o->dist, a + lo, hi - lo, r, what, err))
            return -1;
    }
    return 0;
}

int train_save(model *m, const train_opts *o, const train_state *st, const char *path, char *err)
{
    size_t n = m->nparams;
    /* sharded optimizer state (ZeRO stage 1): every rank's part to every
     * rank, so that rank 0 writes the same single file as without ZeRO, one
     * that resumes on any world size, with or without ZeRO */
    int sharded = m->state_lo > 0 || m->state_hi < n;
    if (!sharded && o->rank != 0)
        return 0; /* rank 0 holds it all and writes */
    float *p = malloc(n * sizeof *p), *mm = malloc(n * sizeof *mm), *vv = malloc(n * sizeof *vv);
    float *sv = malloc((m->nstate ? m->nstate : 1) * sizeof *sv);
    ckpt_meta md = { 0 };
    int rc = 0;

    if (!p || !mm || !vv || !sv)
        rc = errf(err, "%s: out of memory for the checkpoint copy", path);
    if (sharded && o->dist) { /* every rank must take part, even one out of memory */
        int bad = rc != 0;
        double v = bad;
        if (dist_allreduce_f64(o->dist, &v, 1, 0, "checkpoint", err))
            rc = -1;
        else if (v > 0 && !bad)
            rc = errf(err, "rank %d: another rank is out of memory for the checkpoint copy",
                      o->rank);
    }
    if (!rc) {
        model_get_params(m, p);
        model_get_moments(m, mm, vv);
        model_get_state(m, sv); /* the same on every rank: sync_state after each step */
        if (sharded && (gather_shards(o, mm, n, "AdamW m", err) ||
                        gather_shards(o, vv, n, "AdamW v", err) ||
                        (m->master && gather_shards(o, p, n, "master weights", err))))
            rc = -1;
    }
    if (!rc && o->rank == 0) {
        model_config cfg = setup_config_of(m);
        setup_meta_put_config(&md, &cfg);
        put_state(&md, o, st);
        setup_meta_put_loss(&md, m);
        ckpt_extra carried = { "train.carried", 2,
                               { st->carried_world, (int64_t)st->carried_n }, st->carried };
        ckpt_state state = { m->state_views, m->nstate_views, m->nstate, sv };
        rc = ckpt_save_extra(path, m->views, m->nviews, n, p, mm, vv, &md, &state, &carried,
                             st->carried ? 1 : 0, err);
        ckpt_meta_free(&md);
    }
    free(sv);
    free(p);
    free(mm);
    free(vv);
    return rc;
}

static int meta_u64(const ckpt_meta *md, const char *path, const char *key, uint64_t *v, char *err)
{
    const char *s = ckpt_meta_get(md, key);
    char *end;
    if (!s)
        return errf(err, "%s: not a training checkpoint (no '%s' in its metadata)", path, key);
    errno = 0;
    *v = strtoull(s, &end, 10);
    if (end == s || *end || errno)
        return errf(err, "%s: metadata '%s' = '%s' is not a number", path, key, s);
    return 0;
}

int train_meta_double(const ckpt_meta *md, const char *path, const char *key, double *v, char *err)
{
    const char *s = ckpt_meta_get(md, key);
    char *end;
    if (!s)
        return errf(err, "%s: no '%s' in its metadata", path, key);
    errno = 0;
    *v = strtod(s, &end);
    if (end == s || *end || errno)
        return errf(err, "%s: metadata '%s' = '%s' is not a number", path, key, s);
    return 0;
}

int train_restore(model *m, const char *path, const ckpt_meta *md, train_state *st, char *err)
{
    size_t n = m->nparams;
    uint64_t step, pos, vstep = 0;
    const char *r = ckpt_meta_get(md, "rng");
    float *p, *mm, *vv, *sv = NULL;
    int has = 0, rc;

    if (meta_u64(md, path, "step", &step, err) || meta_u64(md, path, "data_pos", &pos, err))
        return -1;
    if (!r || strlen(r) != 64 || strspn(r, "0123456789abcdef") != 64)
        return errf(err, "%s: metadata 'rng' is missing or malformed", path);
    for (int i = 0; i < 4; i++) {
        char word[17];
        memcpy(word, r + 16 * i, 16);
        word[16] = 0;
        st->rng.s[i] = strtoull(word, NULL, 16);
    }
    if (step > 100000000)
        return errf(err, "%s: metadata 'step' = %llu is out of range", path,
                    (unsigned long long)step);
    st->step = (int)step;
    st->data_pos = pos;
    /* the last validation, kept until the next one (absent in older checkpoints) */
    if (ckpt_meta_get(md, "val_step") &&
        (meta_u64(md, path, "val_step", &vstep, err) ||
         train_meta_double(md, path, "val_loss", &st->val_loss, err)))
        return -1;
    st->val_step = vstep <= step ? (int)vstep : 0;
    p = malloc(n * sizeof *p);
    mm = malloc(n * sizeof *mm);
    vv = malloc(n * sizeof *vv);
    sv = malloc((m->nstate ? m->nstate : 1) * sizeof *sv);
    if (!p || !mm || !vv || !sv) {
        rc = errf(err, "%s: out of memory", path);
        goto done;
    }
    ckpt_state state = { m->state_views, m->nstate_views, m->nstate, sv };
    rc = ckpt_load_model(path, m->views, m->nviews, n, p, mm, vv, &has, &state, err);
    if (!rc && !has)
        rc = errf(err, "%s: holds weights only (no AdamW moments); use --init to start "
                       "a new run from it", path);
    if (!rc) {
        model_set_moments(m, mm, vv);
        model_set_state(m, sv);
    }
    if (!rc) { /* a recurrent model's carried state, when the checkpoint has one */
        int64_t shape[MODEL_MAXDIM];
        int nd;
        float *c;
        rc = ckpt_load_extra(path, "train.carried", &c, shape, &nd, err);
        if (!rc && c && (nd != 2 || shape[0] < 1 || shape[0] > (1 << 20) || shape[1] < 1)) {
            free(c);
            rc = errf(err, "%s: tensor 'train.carried' is not [ranks, state]", path);
        } else if (!rc && c) {
            free(st->carried);
            st->carried = c;
            st->carried_world = (int)shape[0];
            st->carried_n = (size_t)shape[1];
        }
    }
done:
    free(p);
    free(mm);
    free(vv);
    free(sv);
    return rc;
}

/* ZeRO stage 1: this rank's shard [lo, hi) of the flat parameter vector
 * (dist_shard) and AdamW's segments intersected with it. The model keeps
 * only that part of the optimizer state (moments, master weights) on the
 * device (model_shard_state), and AdamW updates only it. Off (on == 0), the
 * shard is everything and segs are the model's. */
typedef struct {
    int on;
    size_t lo, hi;
    param_segment *segs;
    int nsegs;
} zero_plan;

static int zero_init(zero_plan *z, model *m, const train_opts *o, char *err)
{
    z->on = o->zero && o->dist && o->world > 1;
    z->lo = 0;
    z->hi = m->nparams;
    z->segs = NULL;
    z->nsegs = 0;
    if (!z->on)
        return 0;
    dist_shard(o->dist, o->rank, m->nparams, &z->lo, &z->hi);
    if (model_shard_state(m, z->lo, z->hi, err))
        return -1;
    z->segs = malloc(((size_t)m->nsegs + 1) * sizeof *z->segs);
    if (!z->segs)
        return errf(err, "rank %d: out of memory for the ZeRO plan", o->rank);
    for (int k = 0; k < m->nsegs; k++) {
        size_t a = m->segs[k].offset, b = a + m->segs[k].count;
        a = a > z->lo ? a : z->lo;
        b = b < z->hi ? b : z->hi;
        if (a < b)
            z->segs[z->nsegs++] = (param_segment){ a, b - a, m->segs[k].decay };
    }
    return 0;
}

/* Combines the ranks' gradients and losses after the accumulation loop and
 * returns the global gradient norm in *norm. Each rank's gradient is already
 * its mean over its micro-batches (scale 1/(valid*accum)), so the mean over
 * ranks is the gradient of the global batch. Without ZeRO: one all-reduce of
 * the whole gradient (under NCCL: what the buckets queued during the last
 * backward, dist_bucket_ready, did not cover, after waiting for them). With
 * ZeRO: a reduce-scatter leaves each rank the mean gradient of its shard, and
 * the norm sums the shards'. */
static int reduce_grads(model *m, const train_opts *o, const zero_plan *z, double *loss,
                        double *norm, int *stop, char *err)
{
    backend *be = m->be;
    *stop = rundir_stop_signal();
    if (!dist_active(o->dist)) { /* one process (NCCL forced on at world 1 still reduces) */
        *norm = sqrt(be->sumsq(be, m->grads, m->nparams));
        return 0;
    }
    /* A stop signal rides with the loss: every rank learns at this same step
     * whether any rank got one, and which, so all stop after it together and
     * the checkpoint is one consistent file. */
    static const int sigs[3] = { SIGINT, SIGTERM, SIGUSR1 };
    double v[4] = { *loss, 0, 0, 0 };
    for (int k = 0; k < 3; k++)
        v[1 + k] = *stop == sigs[k];
    if (dist_allreduce_f64(o->dist, v, 4, 1, "loss", err))
        return -1;
    *loss = v[0];
    *stop = 0;
    for (int k = 2; k >= 0; k--) /* SIGUSR1, then SIGTERM, then SIGINT wins */
        if (v[1 + k] > 0)
            *stop = sigs[k];
    if (!z->on) {
        if (dist_allreduce_buf(o->dist, m->grads, m->nparams, 1, "gradients", err))
            return -1;
        *norm = sqrt(be->sumsq(be, m->grads, m->nparams));
        return 0;
    }
    if (dist_reduce_scatter_buf(o->dist, m->grads, be->act, m->nparams, 1, "gradients", err))
        return -1;
    double sq = z->hi > z->lo ? be->sumsq(be, buf_at(m->grads, z->lo, be->act), z->hi - z->lo)
                              : 0.0;
    if (dist_allreduce_f64(o->dist, &sq, 1, 0, "gradient norm", err))
        return -1;
    *norm = sqrt(sq);
    return 0;
}

/* Every rank's carried state (model.h) of the training source into
 * all[world * n], rank r's at all + r * n. Ranks other than r add zeros to
 * its part, so the sum is exact. wide: [world * n] scratch (world > 1). */
static int gather_carried(model *m, const train_opts *o, const void *key, float *all,
                          double *wide, size_t n, char *err)
{
    float *mine = all + (size_t)o->rank * n;
    m->get_carried(m, key, mine);
    if (!o->dist || o->world == 1)
        return 0;
    size_t total = n * (size_t)o->world;
    if (total > INT_MAX)
        return errf(err, "rank %d: the carried state (%zu floats) is too large to gather",
                    o->rank, total);
    memset(wide, 0, total * sizeof *wide);
    for (size_t i = 0; i < n; i++)
        wide[(size_t)o->rank * n + i] = mine[i];
    if (dist_allreduce_f64(o->dist, wide, (int)total, 0, "carried state", err))
        return -1;
    for (size_t i = 0; i < total; i++)
        all[i] = (float)wide[i];
    return 0;
}

/* Collective under ZeRO (the state's shards are gathered): every rank calls it. */
static int save_step(model *m, const train_opts *o, const train_state *st, char *err)
{
    char path[4200];
    rundir_ckpt_path(o->out, st->step, path, sizeof path);
    if (train_save(m, o, st, path, err))
        return -1;
    if (o->rank == 0) {
        printf("checkpoint %s\n", path);
        fflush(stdout);
    }
    return 0;
}

/* The model's state (batchnorm's running statistics, each rank's updated from
 * its own micro-batches) replaced by its mean over the ranks after every
 * step, so that every rank validates, saves and resumes with the same
 * statistics (their mean; torch's DistributedDataParallel broadcasts rank
 * 0's instead). hf [nstate], hd [nstate]: host room, allocated before the
 * first step. */
static int sync_state(model *m, const train_opts *o, float *hf, double *hd, char *err)
{
    if (!o->dist || o->world == 1 || !m->nstate)
        return 0;
    model_get_state(m, hf);
    for (size_t i = 0; i < m->nstate; i++)
        hd[i] = hf[i];
    if (dist_allreduce_f64(o->dist, hd, (int)m->nstate, 1, "running statistics", err))
        return -1;
    for (size_t i = 0; i < m->nstate; i++)
        hf[i] = (float)hd[i];
    model_set_state(m, hf);
    return 0;
}

/* The dropout masks' seed of global micro-batch mb of a run seeded with
 * seed: splitmix64 over both, so that every micro-batch (and every rank's)
 * draws its own masks, the same ones again after a resume. */
static uint64_t dropout_seed(uint64_t seed, uint64_t mb)
{
    return dropout_mix64(seed * 0x9e3779b97f4a7c15ull + mb + 0x632be59bd9b4e019ull);
}

/* The model's grads_ready hook during the last micro-batch of a step: hands
 * each finished range of gradients to the communicator, which may start its
 * all-reduce while backward goes on (dist_bucket_ready). */
typedef struct { dist *d; void *grads; } bucket_ctx;

static void train_grads_ready(void *ctx, size_t offset, size_t count)
{
    bucket_ctx *b = ctx;
    dist_bucket_ready(b->d, b->grads, offset, count);
}

/* A profiler range around a phase, when the backend has the hook. */
static void train_range(backend *be, const char *name, int push)
{
    if (be->range)
        be->range(be, name, push);
}

/* Device memory the backend holds for itself now (memplan.h: workspace). */
static size_t workspace_held(backend *be)
{
    return be->workspace_bytes ? be->workspace_bytes(be, 0, 0, 0, 0, 0) : 0;
}

/* The memory plan's check (cmd_train printed the plan): what each category
 * took on the device, as its report saw it. The model measured its own
 * buffers (model_alloc, model_shard_state); the activations are what the
 * plan added to the device's use, less what the backend's scratch grew by
 * (in_use, held: the device's use and the backend's before the plan). */
static void print_memory_in_use(model *m, size_t in_use, size_t held)
{
    backend *be = m->be;
    mem_plan used = { m->used_params, m->used_grads, m->used_master, m->used_moments, 0, 0 };
    char line[512];
    size_t now = mem_in_use(be), total = 0, dev_free = 0;
    used.workspace = workspace_held(be);
    used.activations = now - in_use - (used.workspace - held);
    be->mem_info(be, &dev_free, &total);
    printf("memory in use per rank: %s; the device reports %zu B in use of %.2f GiB\n",
           mem_plan_format(&used, line, sizeof line), now, total / 1073741824.0);
}

int train_run(model *m, const train_opts *o, train_state *st, char *err)
{
    backend *be = m->be;
    int B = o->B, T = o->T, rc = -1;
    long long per_micro = (long long)B * T * o->world;
    int accum = (int)(o->total_batch / per_micro);
    batch_source *ld = NULL, *vld = NULL;
    int32_t *hs_in = NULL, *hs_tg = NULL;
    rundir rdir, *log = NULL;
    sampler sp = { 0 };
    int stop = 0, saved = -1;
    int32_t *sample_toks = NULL;
    double t_total = 0.0, t_comm = 0.0;
    int timed = 0;
    zero_plan z = { 0 };
    float *carried = NULL;  /* [world * ncarried]: every rank's carried state, for checkpoints */
    double *carried_wide = NULL;
    size_t ncarried = 0;
    float *state_f = NULL; /* [nstate] each, for sync_state */
    double *state_d = NULL;

    if (o->dropout > 0 && !m->has_dropout) {
        errf(err, "--dropout: the %s model has nowhere to drop", m->family);
        goto done;
    }
    if (o->label_smoothing > 0 && !m->has_label_smoothing) {
        errf(err, "--label-smoothing: the %s model has no class targets to smooth", m->family);
        goto done;
    }
    if (o->loss_kind != LOSS_MSE && !m->has_loss_kind) {
        errf(err, "--loss %s: the %s model's loss is its own (only patchts has a choice)",
             model_loss_name(o->loss_kind), m->family);
        goto done;
    }
    /* for every forward, validation's too */
    m->loss_kind = o->loss_kind;
    m->huber_delta = o->huber_delta;
    if (accum < 1 || o->total_batch % per_micro) {
        errf(err, "--total-batch: %lld tokens is not a positive multiple of batch x seq x "
                  "ranks = %lld", o->total_batch, per_micro);
        goto done;
    }
    /* the parameters first, while every rank holds the whole master copy;
     * then the optimizer state shrinks to this rank's shard before the
     * activations take their memory */
    if (sync_params(m, o, err))
        goto done;
    if (st->step > 0 && m->master && be->params_from_master) {
        /* the act-typed params as the checkpoint's step left them (bf16: its
         * stochastic rounding of the master weights, where loading rounded
         * to nearest), so that a resumed run continues bit for bit */
        adamw_params hp = { .step = st->step, .seed = rounding_seed(o), .state_offset = 0 };
        be->params_from_master(be, m->params, m->master, m->segs, m->nsegs, &hp);
    }
    if (zero_init(&z, m, o, err))
        goto done;
    size_t in_use = mem_in_use(be), held = workspace_held(be);
    if (m->plan(m, B, T, err))
        goto done;
    if (be->mem_info && o->rank == 0)
        print_memory_in_use(m, in_use, held);
    int overlap = dist_active(o->dist) && !z.on;
    if (o->hellaswag) {
        hs_in = malloc((size_t)B * T * sizeof *hs_in);
        hs_tg = malloc((size_t)B * T * sizeof *hs_tg);
        if (!hs_in || !hs_tg) {
            errf(err, "out of memory for HellaSwag");
            goto done;
        }
    }
    bucket_ctx bucket = { o->dist, m->grads };
    int sampling = o->sample_every > 0 && m->fam->generative;
    if (sampling) {
        sample_toks = malloc(((size_t)o->sample_tokens + 1) * sizeof *sample_toks);
        if (!sample_toks) {
            errf(err, "out of memory for sampling");
            goto done;
        }
        if (sampler_init(&sp, m, o->sample_tokens + 1, err))
            goto done;
    }
    {
        data_spec ds = { o->data, B, T, o->rank, o->world, o->shuffle, o->seed, SPLIT_TRAIN,
                         o->random_rows, o->augment, o->crop_pad, o->flip, o->erase };
        ld = m->fam->open_data(m, &ds, err);
        if (!ld)
            goto done;
        ld->seek(ld, st->data_pos);
        if (o->world > 1 && m->nstate) {
            state_f = malloc(m->nstate * sizeof *state_f);
            state_d = malloc(m->nstate * sizeof *state_d);
            if (!state_f || !state_d || m->nstate > (size_t)1 << 30) {
                errf(err, "out of memory for the running statistics");
                goto done;
            }
        }
        if (m->carried_count && m->get_carried && m->set_carried)
            ncarried = m->carried_count(m);
        if (ncarried) {
            carried = calloc(ncarried * (size_t)o->world, sizeof *carried);
            carried_wide = o->world > 1 ? calloc(ncarried * (size_t)o->world,
                                                 sizeof *carried_wide) : NULL;
            if (!carried || (o->world > 1 && !carried_wide)) {
                errf(err, "out of memory for the carried state");
                goto done;
            }
        }
        if (st->carried) { /* resumed: the streams continue from the checkpoint's state */
            if (ncarried && st->carried_n == ncarried && st->carried_world == o->world &&
                ld->keep_state) {
                m->set_carried(m, ld->batch.resets, st->carried + (size_t)o->rank * ncarried);
                ld->keep_state(ld);
            } else if (o->rank == 0) {
                printf("the checkpoint's carried state (%d ranks x %zu) does not fit this run "
                       "(%d ranks x %zu): the streams start again from zero\n",
                       st->carried_world, st->carried_n, o->world, ncarried);
            }
            free(st->carried);
            st->carried = NULL;
        }
        if (o->val_data) {
            ds.path = o->val_data;
            ds.split = SPLIT_VAL;
            vld = m->fam->open_data(m, &ds, err);
            if (!vld)
                goto done;
        }
    }
    if (o->dist && dist_reserve(o->dist, m->nparams, err))
        goto done;
    if (o->out && o->rank == 0) { /* lock, checks, stale files, the log cut to st->step */
        if (rundir_open(&rdir, o->out, st->step, o->overwrite, err))
            goto done;
        log = &rdir;
    }
    rundir_signals_on(); /* from here a signal stops the run after a step */
    if (o->rank == 0)
        printf("training %s: %zu parameters, %d steps of %lld tokens (%d x %d x %d ranks x %d "
               "accumulation), %s%s%s\n", m->family, m->nparams_real, o->steps, o->total_batch,
               B, T, o->world, accum, be->name, z.on ? ", ZeRO stage 1" : "",
               o->out ? "" : "; no --out: nothing is saved");
    if (o->rank == 0 && o->dropout > 0)
        printf("dropout %g: %s\n", o->dropout, m->has_dropout);
    if (o->rank == 0 && o->loss_kind == LOSS_MAE)
        printf("loss: mae (training and validation; evaluation reports mse and mae too)\n");
    if (o->rank == 0 && o->loss_kind == LOSS_HUBER)
        printf("loss: huber, delta %g (training and validation; evaluation reports mse and mae "
               "too)\n", o->huber_delta);
    if (o->rank == 0 && o->random_rows)
        printf("rows: each of the %d rows of a micro-batch at its own random offset "
               "(--rows random)\n", B);

    while (st->step < o->steps) {
        int step = st->step;
        double t0 = now_ms(), loss = 0.0, lr = train_lr(o, step);

        if (o->dist)
            dist_fault_point(o->dist, step);
        model_zero_grad(m);
        for (int a = 0; a < accum; a++) {
            /* this micro-batch's global index: rank r reads r, r + world, ... */
            uint64_t mb = ld->position(ld) * (uint64_t)o->world + (uint64_t)o->rank;
            if (ld->next(ld, err))
                goto done;
            m->training = 1;
            m->dropout = (float)o->dropout;
            m->dropout_seed = dropout_seed(o->seed, mb);
            m->label_smoothing = (float)o->label_smoothing;
            loss += m->forward(m, &ld->batch, 1.0f / (float)accum) / accum;
            /* the last micro-batch's gradients are the step's: their
             * all-reduce may start layer by layer (not under ZeRO, whose
             * reduce-scatter waits for the whole buffer) */
            m->grads_ready = overlap && a == accum - 1 ? train_grads_ready : NULL;
            m->grads_ready_ctx = &bucket;
            m->backward(m);
            m->grads_ready = NULL;
            m->training = 0; /* nothing else trains or drops: validation, samples */
            m->dropout = 0.0f;
            m->label_smoothing = 0.0f;
        }
        st->data_pos = ld->position(ld);
        double tc = now_ms(), norm;
        if (reduce_grads(m, o, &z, &loss, &norm, &stop, err))
            goto done;
        tc = now_ms() - tc;
        if (!isfinite(loss)) {
            errf(err, "step %d: the loss is %g; training diverged (lower --lr?)", step + 1, loss);
            goto done;
        }
        float gscale = 1.0f;
        if (o->grad_clip > 0) {
            double coef = o->grad_clip / (norm + 1e-6);
            if (coef < 1.0)
                gscale = (float)coef;
        }
        adamw_params hp = { (float)lr, (float)o->beta1, (float)o->beta2, (float)o->eps,
                            (float)o->weight_decay, step + 1, gscale, rounding_seed(o),
                            m->state_lo };
        if (z.on) { /* this rank's shard, then everyone's parameters to everyone */
            train_range(be, "optimizer", 1);
            be->adamw(be, m->params, m->master, m->grads, m->m, m->v, z.segs, z.nsegs, &hp);
            train_range(be, "optimizer", 0);
            double ta = now_ms();
            if (dist_allgather_buf(o->dist, m->params, be->act, m->nparams, "parameters", err))
                goto done;
            tc += now_ms() - ta;
        } else {
            train_range(be, "optimizer", 1);
            be->adamw(be, m->params, m->master, m->grads, m->m, m->v, m->segs, m->nsegs, &hp);
            train_range(be, "optimizer", 0);
        }
        if (sync_state(m, o, state_f, state_d, err))
            goto done;
        be->sync(be);
        double ms = now_ms() - t0;
        st->step++;
        st->loss = loss;
        if (step > 0 || o->steps == 1) { /* the first step warms caches */
            t_total += ms;
            t_comm += tc;
            timed++;
        }
        double avg = timed ? t_total / timed : ms, tps = o->total_batch / (ms / 1e3);
        char eta[32];
        format_eta(eta, sizeof eta, avg * (o->steps - st->step) / 1e3);
        if (o->rank == 0) {
            printf("step %5d/%d | loss %.6f | norm %.4f | lr %.2e | %.1f ms | %.0f tok/s | "
                   "eta %s\n", st->step, o->steps, loss, norm, lr, ms, tps, eta);
            fflush(stdout);
            if (log) {
                rundir_logf(log, "{\"step\": %d, \"loss\": %.9g, \"norm\": %.6f, \"lr\": %.6e, "
                                 "\"ms\": %.3f, \"tokens_per_s\": %.1f}\n",
                            st->step, loss, norm, lr, ms, tps);
                if (rundir_log_flush(log, st->step, err))
                    goto done;
            }
        }
        int last = st->step == o->steps;
        if (vld && ((o->val_every > 0 && st->step % o->val_every == 0) || last)) {
            double sums[MODEL_MAXMETRICS], counts[MODEL_MAXMETRICS];
            /* no more than the validation data holds: past its end the stream
             * wraps, and a repeated batch would count twice in the mean */
            long long held = (long long)vld->epoch_batches(vld) * o->world;
            int nval = held > 0 && held < o->val_batches ? (int)held : o->val_batches;
            double vl = val_loss(m, o, vld, nval, sums, counts, err);
            if (isnan(vl))
                goto done;
            st->val_loss = vl;
            st->val_step = st->step;
            if (o->rank == 0) {
                /* the figures first, as before; what they were averaged over last */
                printf("val   %5d/%d | loss %.6f", st->step, o->steps, vl);
                for (int k = 0; m->metrics && k < m->nmetrics; k++)
                    printf(" | %s %.6f", m->metric_names[k], counts[k] ? sums[k] / counts[k] : 0.0);
                printf(" | %d batches, %lld tokens\n", nval, (long long)nval * B * T);
                if (log) {
                    rundir_logf(log, "{\"step\": %d, \"val_loss\": %.9g", st->step, vl);
                    for (int k = 0; m->metrics && k < m->nmetrics; k++)
                        rundir_logf(log, ", \"val_%s\": %.9g", m->metric_names[k],
                                    counts[k] ? sums[k] / counts[k] : 0.0);
                    rundir_logf(log, "}\n");
                    if (rundir_log_flush(log, st->step, err))
                        goto done;
                }
            }
        }
        if (o->hellaswag && ((o->hellaswag_every > 0 && st->step % o->hellaswag_every == 0) ||
                             last)) {
            if (train_hellaswag(m, o, st->step, log, hs_in, hs_tg, err))
                goto done;
        }
        if (sampling && (st->step % o->sample_every == 0 || last) && o->rank == 0)
            train_sample(&sp, o, st, sample_toks, st->step);
        /* the same condition on every rank: the ZeRO gather is collective */
        if (o->out && ((o->ckpt_every > 0 && st->step % o->ckpt_every == 0) || last)) {
            if (ncarried && gather_carried(m, o, ld->batch.resets, carried, carried_wide,
                                           ncarried, err))
                goto done;
            st->carried = carried;
            st->carried_n = ncarried;
            st->carried_world = o->world;
            int bad = save_step(m, o, st, err);
            st->carried = NULL;
            if (bad)
                goto done;
            saved = st->step;
        }
        if (stop && !last) { /* every rank decided this at the same step */
            if (o->out && saved != st->step && save_step(m, o, st, err))
                goto done;
            if (o->rank == 0) {
                if (o->out)
                    printf("stopped by %s at step %d; resume with --resume %s\n",
                           rundir_signal_name(stop), st->step, o->out);
                else
                    printf("stopped by %s at step %d; no --out: nothing was saved\n",
                           rundir_signal_name(stop), st->step);
                fflush(stdout);
            }
            rc = TRAIN_STOPPED;
            goto done;
        }
    }
    if (o->rank == 0 && timed) {
        printf("done: %d steps, %.1f ms/step average, %.0f tokens/s\n", st->step,
               t_total / timed, o->total_batch / (t_total / timed / 1e3));
        if (o->world > 1)
            printf("communication: %.1f ms/step average on rank 0 (%s over %s, %d ranks)\n",
                   t_comm / timed, z.on ? "gradient reduce-scatter, parameter all-gather"
                                        : "gradient and loss all-reduce",
                   o->dist->transport, o->world);
    }
    rc = 0;
done:
    free(carried);
    free(carried_wide);
    free(state_f);
    free(state_d);
    rundir_signals_off();
    free(z.segs);
    sampler_free(&sp);
    free(sample_toks);
    if (log)
        rundir_close(log);
    free(hs_in);
    free(hs_tg);
    if (ld)
        ld->close(ld);
    if (vld)
        vld->close(vld);
    return rc;
}
