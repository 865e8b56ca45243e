/* test_bert.c: the BERT family and its data (host/models/bert.c, data/mlm.c).
 *  - every parameter's gradient against central finite differences, in fp64,
 *    with and without the next-sentence head; gradients accumulate; the
 *    grads_ready ranges cover the buffer in decreasing order
 *  - the fp32 backend against the fp64 oracle (loss and gradients)
 *  - it learns: masked LM on one batch overfits
 *  - parameter counts (BERT-base as Hugging Face's BertForPreTraining)
 *  - masking: 15/80/10/10 within 0.5 points on a large sample, specials never
 *    masked, a pure function of (seed, index)
 *  - pairs: [CLS] A [SEP] B [SEP], segments, labels, true continuations;
 *    batches reproduced after seek; bad shards get clear errors */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../data/errbuf.h"
#include "../data/mlm.h"
#include "../data/rng.h"
#include "../data/shard.h"
#include "../host/models/bert.h"
#include "gradcheck.h"

static uint64_t base_seed;
#define SEED(k) (base_seed + (uint64_t)(k))

static void random_params(double *p, size_t n, uint64_t seed)
{
    rng_state r;
    rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++)
        p[i] = 0.3 * rng_normal(&r);
}

/* A random masked batch: tokens anywhere in the vocabulary (specials too),
 * random segments, about a third of the targets set, random NSP labels with
 * some ignored; at least one target and one label counted. */
typedef struct {
    int32_t *tok, *seg, *tg, *lab;
    model_batch b;
} rbatch;

static void random_batch(rbatch *rb, int B, int T, int V, int nsp, uint64_t seed)
{
    rng_state r;
    int n = B * T;
    rng_seed(&r, seed);
    rb->tok = malloc(n * sizeof(int32_t));
    rb->seg = malloc(n * sizeof(int32_t));
    rb->tg = malloc(n * sizeof(int32_t));
    rb->lab = malloc(B * sizeof(int32_t));
    for (int i = 0; i < n; i++) {
        rb->tok[i] = (int32_t)rng_below(&r, (uint64_t)V);
        rb->seg[i] = (int32_t)rng_below(&r, 2);
        rb->tg[i] = rng_below(&r, 3) ? -1 : (int32_t)rng_below(&r, (uint64_t)(V - 4));
    }
    rb->tg[1] = 2;
    for (int b = 0; b < B; b++)
        rb->lab[b] = rng_below(&r, 4) == 0 ? -1 : (int32_t)rng_below(&r, 2);
    rb->lab[0] = 1;
    memset(&rb->b, 0, sizeof rb->b);
    rb->b.tokens = rb->tok;
    rb->b.segments = rb->seg;
    rb->b.targets = rb->tg;
    rb->b.labels = nsp ? rb->lab : NULL;
}

static void free_batch(rbatch *rb)
{
    free(rb->tok);
    free(rb->seg);
    free(rb->tg);
    free(rb->lab);
}

static double rel_l2(const double *a, const double *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return sqrt(num / (den > 0 ? den : 1e-300));
}

static model *make(backend *be, bert_config c)
{
    char err[ERRBUF];
    model *m = bert_family.create(be, (const int *)&c, err);
    ck_assert_msg(m != NULL, "%s", err);
    return m;
}

/* the ranges grads_ready reports: in decreasing offset order, disjoint,
 * together the whole buffer */
typedef struct { size_t next_end; size_t covered; int calls, bad; } ready_log;

static void on_ready(void *ctx, size_t offset, size_t count)
{
    ready_log *r = ctx;
    if (offset + count != r->next_end)
        r->bad++;
    r->next_end = offset;
    r->covered += count;
    r->calls++;
}

START_TEST(test_gradcheck_fp64)
{
    char err[ERRBUF];
    int nsp = _i == 1 || _i == 3; /* _i = 2: with dropout; 3: no biases (with nsp) */
    bert_config c = { .V = 37, .maxT = 8, .L = 2, .NH = 2, .C = 8, .nsp = nsp,
                      .nobias = _i == 3 };
    backend *be = backend_cpu64_create(1, err);
    ck_assert_msg(be != NULL, "%s", err);
    model *m = make(be, c);
    int B = 3, T = 6;
    ck_assert_int_eq(m->plan(m, B, T, err), 0);
    size_t n = m->nparams;
    double *p = malloc(n * sizeof *p), *g = malloc(n * sizeof *g), *fd = malloc(n * sizeof *fd);
    rbatch rb;
    random_params(p, n, SEED(11 + nsp));
    random_batch(&rb, B, T, c.V, nsp, SEED(13 + nsp));
    if (_i == 2) {
        double plain = model_loss_grad(m, p, &rb.b, NULL);
        m->dropout = 0.3f;
        m->dropout_seed = SEED(15);
        ck_assert_msg(fabs(model_loss_grad(m, p, &rb.b, NULL) - plain) > 1e-6,
                      "dropout 0.3 leaves the loss at %.9f", plain);
    }
    ready_log rl = { n, 0, 0, 0 };
    m->grads_ready = on_ready;
    m->grads_ready_ctx = &rl;
    model_loss_grad(m, p, &rb.b, g);
    m->grads_ready = NULL;
    ck_assert_msg(rl.bad == 0 && rl.next_end == 0 && rl.covered == n,
                  "grads_ready: %d calls, %d out of order, %zu of %zu covered", rl.calls, rl.bad,
                  rl.covered, n);
    const double h = 1e-5;
    model_fd_gradient(fd, m, p, &rb.b, h);
    double e = rel_l2(g, fd, n);
    ck_assert_msg(e < 1e-7, "nsp=%d: gradient vs finite differences: rel L2 %g", nsp, e);
    /* every view that should learn gets a gradient */
    for (int v = 0; v < m->nviews; v++) {
        double s = 0;
        const param_view *pv = &m->views[v];
        for (size_t k = 0; k < pv->count; k++)
            s += fabs(g[pv->offset + k]);
        ck_assert_msg(s > 0, "no gradient reaches %s", pv->name);
    }
    /* padded vocabulary rows and bias entries stay exactly zero */
    const param_view *wte = model_find_view(m, "bert.embeddings.word_embeddings.weight");
    const param_view *ob = model_find_view(m, "cls.predictions.bias");
    ck_assert_ptr_nonnull(wte);
    for (size_t i = (size_t)c.V * c.C; i < wte->count; i++)
        ck_assert(g[wte->offset + i] == 0.0);
    if (c.nobias) { /* not one bias vector, the heads' and layernorms' included */
        for (int v = 0; v < m->nviews; v++)
            ck_assert_msg(!strstr(m->views[v].name, "bias"), "view %s", m->views[v].name);
    } else {
        ck_assert_ptr_nonnull(ob);
        for (size_t i = (size_t)c.V; i < ob->count; i++)
            ck_assert(g[ob->offset + i] == 0.0);
    }
    /* backward accumulates: a second pass doubles the gradient */
    model_loss_grad(m, p, &rb.b, fd);
    m->forward(m, &rb.b, 1.0f);
    m->backward(m);
    be->download(be, fd, DT_F64, m->grads, be->act, n);
    for (size_t i = 0; i < n; i++)
        g[i] *= 2;
    ck_assert_double_lt(rel_l2(fd, g, n), 1e-12);
    free_batch(&rb);
    free(p);
    free(g);
    free(fd);
    m->destroy(m);
    be->destroy(be);
}
END_TEST

START_TEST(test_fp32_matches_fp64)
{
    char err[ERRBUF];
    bert_config c = { .V = 300, .maxT = 32, .L = 2, .NH = 4, .C = 32, .nsp = 1 };
    backend *b64 = backend_cpu64_create(0, err), *b32 = backend_cpu_create(0, err);
    model *m64 = make(b64, c), *m32 = make(b32, c);
    int B = 3, T = 17;
    ck_assert_int_eq(m64->plan(m64, B, T, err), 0);
    ck_assert_int_eq(m32->plan(m32, B, T, err), 0);
    size_t np = m64->nparams;
    float *pf = malloc(np * sizeof *pf);
    double *g64 = malloc(np * sizeof *g64), *g32 = malloc(np * sizeof *g32);
    rbatch rb;
    bert_family.init((const int *)&c, pf, SEED(31));
    random_batch(&rb, B, T, c.V, 1, SEED(32));
    model_set_params(m64, pf);
    model_set_params(m32, pf);
    double l64 = m64->forward(m64, &rb.b, 1.0f), l32 = m32->forward(m32, &rb.b, 1.0f);
    m64->backward(m64);
    m32->backward(m32);
    b64->download(b64, g64, DT_F64, m64->grads, b64->act, np);
    b32->download(b32, g32, DT_F64, m32->grads, b32->act, np);
    ck_assert(isfinite(l32) && isfinite(l64));
    ck_assert_msg(fabs(l32 - l64) / fabs(l64) < 1e-5, "loss fp32 %.9f fp64 %.9f", l32, l64);
    double e = rel_l2(g32, g64, np);
    ck_assert_msg(e < 1e-5, "gradients fp32 vs fp64: rel L2 %g", e);
    free_batch(&rb);
    free(pf);
    free(g64);
    free(g32);
    m64->destroy(m64);
    m32->destroy(m32);
    b64->destroy(b64);
    b32->destroy(b32);
}
END_TEST

/* It learns: AdamW on one masked batch drives the masked-LM loss down and
 * the metrics see it (accuracy near 1 at the end). */
START_TEST(test_overfit_one_batch)
{
    char err[ERRBUF];
    bert_config c = { .V = 68, .maxT = 32, .L = 2, .NH = 2, .C = 32, .nsp = 1 };
    backend *be = backend_cpu_create(0, err);
    model *m = make(be, c);
    int B = 4, T = 16, n = B * T;
    ck_assert_int_eq(m->plan(m, B, T, err), 0);
    float *p = malloc(m->nparams * sizeof *p);
    int32_t tok[64], seg[64], tg[64], lab[4];
    rng_state r;
    mlm_vocab voc = mlm_vocab_of(c.V);
    rng_seed(&r, SEED(41));
    for (int i = 0; i < n; i++) {
        tok[i] = i % T == 0 ? voc.cls : (int32_t)rng_below(&r, (uint64_t)voc.vocab);
        seg[i] = i % T >= T / 2;
    }
    for (int b = 0; b < B; b++)
        lab[b] = b & 1;
    mlm_mask(&voc, SEED(42), 0, tok, tg, B, T);
    model_batch mb = { .tokens = tok, .segments = seg, .targets = tg, .labels = lab };
    bert_family.init((const int *)&c, p, SEED(43));
    model_set_params(m, p);
    double loss = 0, first = 0;
    int step;
    for (step = 1; step <= 400; step++) {
        model_zero_grad(m);
        loss = m->forward(m, &mb, 1.0f);
        if (step == 1)
            first = loss;
        if (loss < 0.05)
            break;
        m->backward(m);
        adamw_params hp = { 3e-3f, 0.9f, 0.99f, 1e-8f, 0.0f, step, 1.0f, 0, 0 };
        be->adamw(be, m->params, m->master, m->grads, m->m, m->v, m->segs, m->nsegs, &hp);
    }
    /* ln(68) + ln(2) at the start */
    ck_assert_msg(first > 4.0 && first < 6.0, "initial loss %g", first);
    ck_assert_msg(loss < 0.05, "loss %g after %d steps", loss, step);
    double sums[4] = { 0 }, counts[4] = { 0 };
    ck_assert_int_eq(m->nmetrics, 4);
    m->forward(m, &mb, 0.0f);
    m->metrics(m, &mb, sums, counts);
    ck_assert_str_eq(m->metric_names[0], "mlm_accuracy");
    ck_assert_msg(counts[0] > 0 && sums[0] == counts[0], "mlm accuracy %g/%g", sums[0],
                  counts[0]);
    ck_assert_msg(counts[1] == B && sums[1] == B, "nsp accuracy %g/%g", sums[1], counts[1]);
    /* the metrics read the same predictions after a forward with a gradient
     * (the logits buffer then holds their gradient) */
    double s2[4] = { 0 }, c2[4] = { 0 };
    m->forward(m, &mb, 1.0f);
    m->metrics(m, &mb, s2, c2);
    ck_assert(s2[0] == sums[0] && c2[0] == counts[0] && s2[1] == sums[1]);
    free(p);
    m->destroy(m);
    be->destroy(be);
}
END_TEST

START_TEST(test_params_count)
{
    char err[ERRBUF];
    int v[16] = { 0 };
    ck_assert_int_eq(bert_family.preset("bert-base", v, err), 0);
    bert_config *c = (bert_config *)v;
    ck_assert_int_eq(c->L, 12);
    ck_assert_int_eq(c->C, 768);
    c->V = 30522;
    c->nsp = 1;
    /* Hugging Face BertForPreTraining(BertConfig()): unique parameters */
    ck_assert_uint_eq(bert_family.real_params(v), 110106428);
    c->nsp = 0; /* no pooler, no next-sentence head: BertForMaskedLM */
    ck_assert_uint_eq(bert_family.real_params(v), 109514298);
    ck_assert_int_eq(bert_family.preset("bert-large", v, err), 0);
    c->V = 30522;
    c->nsp = 1;
    ck_assert_uint_eq(bert_family.real_params(v), 336226108);
    ck_assert_int_eq(bert_family.preset("bert-huge", v, err), -1);
    ck_assert_ptr_nonnull(strstr(err, "bert-huge"));
    c->NH = 5;
    ck_assert_int_eq(bert_family.check(v, err), -1);
    ck_assert_ptr_nonnull(strstr(err, "heads 5"));
}
END_TEST

/* ---- masking ---- */

START_TEST(test_mask_statistics)
{
    mlm_vocab voc = mlm_vocab_of(1004);
    int rows = 20000, T = 128;
    size_t n = (size_t)rows * T;
    int32_t *tok = malloc(n * sizeof *tok), *orig = malloc(n * sizeof *orig);
    int32_t *tg = malloc(n * sizeof *tg);
    rng_state r;
    rng_seed(&r, SEED(51));
    /* rows like the batcher's, with extra specials sprinkled in */
    for (size_t i = 0; i < n; i++) {
        int t = (int)(i % T);
        uint64_t u = rng_below(&r, 50);
        tok[i] = t == 0 ? voc.cls : t == T - 1 ? voc.sep : u == 0 ? voc.pad : u == 1 ? voc.sep
               : (int32_t)rng_below(&r, (uint64_t)voc.vocab);
    }
    memcpy(orig, tok, n * sizeof *tok);
    mlm_mask(&voc, SEED(52), 7, tok, tg, rows, T);
    size_t maskable = 0, chosen = 0, masked = 0, random = 0, kept = 0;
    for (size_t i = 0; i < n; i++) {
        int special = orig[i] >= voc.vocab;
        maskable += !special;
        if (special) {
            ck_assert_msg(tg[i] == -1 && tok[i] == orig[i], "special at %zu touched", i);
            continue;
        }
        if (tg[i] < 0) {
            ck_assert_msg(tok[i] == orig[i], "unchosen position %zu changed", i);
            continue;
        }
        ck_assert_int_eq(tg[i], orig[i]);
        chosen++;
        if (tok[i] == voc.mask)
            masked++;
        else if (tok[i] != orig[i]) {
            ck_assert_msg(tok[i] >= 0 && tok[i] < voc.vocab, "random token %d", tok[i]);
            random++;
        } else
            kept++;
    }
    /* a random replacement equal to the original counts as kept: 0.1/1000 */
    double pc = 100.0 * chosen / maskable, pm = 100.0 * masked / chosen;
    double pr = 100.0 * random / chosen, pk = 100.0 * kept / chosen;
    printf("masking: %zu maskable, chosen %.3f%%: [MASK] %.3f%% random %.3f%% kept %.3f%%\n",
           maskable, pc, pm, pr, pk);
    ck_assert_msg(fabs(pc - 15) < 0.5, "chosen %.3f%%", pc);
    ck_assert_msg(fabs(pm - 80) < 0.5, "[MASK] %.3f%%", pm);
    ck_assert_msg(fabs(pr - 10) < 0.5, "random %.3f%%", pr);
    ck_assert_msg(fabs(pk - 10) < 0.5, "kept %.3f%%", pk);
    /* a pure function of (seed, index): again the same, another index not */
    int32_t *tok2 = malloc(n * sizeof *tok2), *tg2 = malloc(n * sizeof *tg2);
    memcpy(tok2, orig, n * sizeof *tok2);
    mlm_mask(&voc, SEED(52), 7, tok2, tg2, rows, T);
    ck_assert(memcmp(tok, tok2, n * sizeof *tok) == 0 && memcmp(tg, tg2, n * sizeof *tg) == 0);
    memcpy(tok2, orig, n * sizeof *tok2);
    mlm_mask(&voc, SEED(52), 8, tok2, tg2, rows, T);
    ck_assert(memcmp(tg, tg2, n * sizeof *tg) != 0);
    free(tok);
    free(orig);
    free(tg);
    free(tok2);
    free(tg2);
}
END_TEST

/* ---- pairs from shards ---- */

static char tmpdir[256];

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_bert_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void rm_tmpdir(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
}

/* Two shards of random tokens below vocab; returns the stream (malloc'd). */
static uint16_t *write_shards(int vocab, size_t n1, size_t n2, uint64_t seed)
{
    char err[ERRBUF], path[300];
    uint16_t *s = malloc((n1 + n2) * sizeof *s);
    rng_state r;
    rng_seed(&r, seed);
    for (size_t i = 0; i < n1 + n2; i++)
        s[i] = (uint16_t)rng_below(&r, (uint64_t)vocab);
    snprintf(path, sizeof path, "%s/t_000000.bin", tmpdir);
    ck_assert_msg(shard_write(path, s, n1, err) == 0, "%s", err);
    snprintf(path, sizeof path, "%s/t_000001.bin", tmpdir);
    ck_assert_msg(shard_write(path, s + n1, n2, err) == 0, "%s", err);
    return s;
}

START_TEST(test_pairs)
{
    char err[ERRBUF], pattern[300];
    int vocab = 500, B = 4, T = 24;
    mlm_vocab voc = mlm_vocab_of(vocab + MLM_SPECIALS);
    make_tmpdir();
    uint16_t *s = write_shards(vocab, 3001, 2000, SEED(61));
    snprintf(pattern, sizeof pattern, "%s/t_*.bin", tmpdir);
    mlm_spec sp = { pattern, B, T, 1, 0, 0, SEED(62), voc };
    mlm_batcher *mb = mlm_open(&sp, err);
    ck_assert_msg(mb != NULL, "%s", err);
    int n = T - 3;
    ck_assert_uint_eq(mlm_windows(mb), 5001 / n);
    int32_t tok[96], seg[96], tg[96], lab[4];
    int ones = 0, rows = 0;
    for (uint64_t g = 0; g < 300; g++) {
        ck_assert_msg(mlm_batch(mb, g, tok, seg, tg, lab, err) == 0, "%s", err);
        for (int b = 0; b < B; b++) {
            const int32_t *t = tok + b * T, *sg = seg + b * T;
            uint64_t p = ((g * B + b) % mlm_windows(mb)) * n;
            int sep = -1;
            ck_assert_int_eq(t[0], voc.cls);
            ck_assert_int_eq(t[T - 1], voc.sep);
            for (int k = 1; k < T - 1; k++)
                if (t[k] == voc.sep)
                    sep = k;
            ck_assert(sep >= 2 && sep <= T - 3);
            for (int k = 0; k < T; k++) {
                ck_assert_int_eq(sg[k], k > sep);
                ck_assert_int_eq(tg[k], -1); /* masking off */
            }
            for (int k = 1; k < sep; k++) /* A: the window's start */
                ck_assert_int_eq(t[k], s[p + k - 1]);
            int follows = 1;
            for (int k = sep + 1; k < T - 1; k++)
                follows &= t[k] == s[p + k - 2];
            ck_assert(lab[b] == 0 || lab[b] == 1);
            if (lab[b] == 1)
                ck_assert_msg(follows, "label 1 but B does not follow A");
            else
                ck_assert_msg(!follows || T - 2 - sep < 3, "label 0 but B follows A");
            ones += lab[b];
            rows++;
        }
    }
    ck_assert_msg(ones > rows * 0.4 && ones < rows * 0.6, "%d of %d labels 1", ones, rows);
    mlm_close(mb);
    free(s);
    rm_tmpdir();
}
END_TEST

/* The batch source restores its stream by seek: masks, pairs and the
 * shuffled order included; ranks split the global micro-batches. */
START_TEST(test_source_seek)
{
    char err[ERRBUF], pattern[300];
    int vocab = 300, B = 3, T = 16;
    make_tmpdir();
    uint16_t *s = write_shards(vocab, 1500, 700, SEED(71));
    snprintf(pattern, sizeof pattern, "%s/t_*.bin", tmpdir);
    bert_config c = { vocab + MLM_SPECIALS, 32, 1, 1, 8, _i, 0 };
    model fake;
    memset(&fake, 0, sizeof fake);
    fake.fam = &bert_family;
    memcpy(fake.config, &c, sizeof c);
    data_spec ds = { pattern, B, T, 0, 1, 1, SEED(72), SPLIT_TRAIN, 0, 0, 0, 0, 0 };
    batch_source *a = bert_family.open_data(&fake, &ds, err), *b;
    ck_assert_msg(a != NULL, "%s", err);
    b = bert_family.open_data(&fake, &ds, err);
    ck_assert_msg(b != NULL, "%s", err);
    ck_assert_uint_eq(a->epoch_batches(a), 2200 / (T - 2 - _i) / B);
    size_t n = (size_t)B * T;
    int32_t keep[3][48 * 3];
    for (int k = 0; k < 200; k++) { /* several epochs */
        ck_assert_msg(a->next(a, err) == 0, "%s", err);
        if (k == 150) {
            memcpy(keep[0], a->batch.tokens, n * 4);
            memcpy(keep[1], a->batch.targets, n * 4);
            memcpy(keep[2], a->batch.segments, n * 4);
        }
    }
    ck_assert_uint_eq(a->position(a), 200);
    b->seek(b, 150);
    ck_assert_int_eq(b->next(b, err), 0);
    ck_assert(memcmp(keep[0], b->batch.tokens, n * 4) == 0);
    ck_assert(memcmp(keep[1], b->batch.targets, n * 4) == 0);
    ck_assert(memcmp(keep[2], b->batch.segments, n * 4) == 0);
    ck_assert((b->batch.labels != NULL) == _i);
    /* rank 1 of 2 reads global micro-batch 2k+1: rank 0 of 1's batch 301 */
    data_spec d2 = ds;
    d2.rank = 1;
    d2.world = 2;
    batch_source *r1 = bert_family.open_data(&fake, &d2, err);
    ck_assert_msg(r1 != NULL, "%s", err);
    r1->seek(r1, 150);
    ck_assert_int_eq(r1->next(r1, err), 0);
    a->seek(a, 301);
    ck_assert_int_eq(a->next(a, err), 0);
    ck_assert(memcmp(r1->batch.tokens, a->batch.tokens, n * 4) == 0);
    a->close(a);
    b->close(b);
    r1->close(r1);
    free(s);
    rm_tmpdir();
}
END_TEST

START_TEST(test_bad_data)
{
    char err[ERRBUF], pattern[300], path[300];
    int B = 2, T = 16;
    make_tmpdir();
    uint16_t *s = write_shards(300, 400, 400, SEED(81));
    snprintf(pattern, sizeof pattern, "%s/t_*.bin", tmpdir);
    /* tokens from a 300-id tokenizer read with a model vocabulary of 200+4 */
    mlm_spec sp = { pattern, B, T, 0, 0, 1, SEED(82), mlm_vocab_of(204) };
    mlm_batcher *mb = mlm_open(&sp, err);
    ck_assert_msg(mb != NULL, "%s", err);
    int32_t tok[32], seg[32], tg[32], lab[2];
    int rc = 0;
    for (uint64_t g = 0; g < 50 && rc == 0; g++)
        rc = mlm_batch(mb, g, tok, seg, tg, lab, err);
    ck_assert_int_eq(rc, -1);
    ck_assert_msg(strstr(err, "t_00000") && strstr(err, "tokenizer's 200 ids"), "%s", err);
    mlm_close(mb);
    /* a stream shorter than one sequence */
    sp.voc = mlm_vocab_of(304);
    sp.T = 1000;
    ck_assert_ptr_null(mlm_open(&sp, err));
    ck_assert_msg(strstr(err, "800 tokens"), "%s", err);
    /* shards truncated after they were opened, while in use: an error
     * naming the file, never SIGBUS (as with the shards mapped) */
    free(s);
    s = write_shards(300, 6000, 6000, SEED(83)); /* several pages each */
    sp.voc = mlm_vocab_of(304);
    sp.T = T;
    mb = mlm_open(&sp, err);
    ck_assert_msg(mb != NULL, "%s", err);
    ck_assert_msg(mlm_batch(mb, 0, tok, seg, tg, lab, err) == 0, "%s", err);
    for (int f = 0; f < 2; f++) {
        snprintf(path, sizeof path, "%s/t_00000%d.bin", tmpdir, f);
        ck_assert_int_eq(truncate(path, 1024 + 2), 0);
    }
    rc = 0;
    for (uint64_t g = 1; g < 50 && rc == 0; g++)
        rc = mlm_batch(mb, g, tok, seg, tg, lab, err);
    ck_assert_int_eq(rc, -1);
    ck_assert_msg(strstr(err, "t_00000") && strstr(err, "while in use"), "%s", err);
    mlm_close(mb);
    free(s);
    s = write_shards(300, 400, 400, SEED(81));
    sp.voc = mlm_vocab_of(204);
    /* a truncated shard, a missing file */
    sp.T = T;
    snprintf(path, sizeof path, "%s/t_000001.bin", tmpdir);
    ck_assert_int_eq(truncate(path, 1024 + 100), 0);
    ck_assert_ptr_null(mlm_open(&sp, err));
    ck_assert_msg(strstr(err, "t_000001.bin") && strstr(err, "truncated"), "%s", err);
    snprintf(pattern, sizeof pattern, "%s/none_*.bin", tmpdir);
    sp.path = pattern;
    ck_assert_ptr_null(mlm_open(&sp, err));
    ck_assert_msg(strstr(err, "no file matches"), "%s", err);
    free(s);
    rm_tmpdir();
}
END_TEST

static Suite *bert_suite(void)
{
    Suite *s = suite_create("bert");
    TCase *tc = tcase_create("model");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_gradcheck_fp64, 0, 4);
    tcase_add_test(tc, test_fp32_matches_fp64);
    tcase_add_test(tc, test_overfit_one_batch);
    tcase_add_test(tc, test_params_count);
    suite_add_tcase(s, tc);
    TCase *td = tcase_create("data");
    tcase_set_timeout(td, 120);
    tcase_add_test(td, test_mask_statistics);
    tcase_add_test(td, test_pairs);
    tcase_add_loop_test(td, test_source_seek, 0, 2);
    tcase_add_test(td, test_bad_data);
    suite_add_tcase(s, td);
    return s;
}

int main(void)
{
    const char *env = getenv("ANATOMY_TEST_SEED");
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    base_seed = env ? strtoull(env, NULL, 0) : (uint64_t)ts.tv_sec * 1000003u + (uint64_t)ts.tv_nsec;
    printf("test_bert: seed %llu (ANATOMY_TEST_SEED to replay)\n", (unsigned long long)base_seed);
    fflush(stdout);
    SRunner *sr = srunner_create(bert_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
