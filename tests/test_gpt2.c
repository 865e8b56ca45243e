/* test_gpt2.c: the whole GPT-2 model on the CPU backends.
 *  - every parameter's gradient against central finite differences, in fp64
 *  - the fp32 backend against the fp64 oracle (loss and gradients)
 *  - it learns: one batch overfits below 0.1 loss
 *  - presets, padded vocabulary rows, config and plan errors */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../data/errbuf.h"
#include "../data/rng.h"
#include "../host/models/gpt2.h"
#include "../host/train.h"
#include "gradcheck.h"

static const gpt2_config tiny = { .V = 37, .maxT = 8, .L = 2, .NH = 2, .C = 8 };
/* nanoGPT's bias=False: no bias vector anywhere (linear layers, layernorms) */
static const gpt2_config tiny_nobias = { .V = 37, .maxT = 8, .L = 2, .NH = 2, .C = 8,
                                         .nobias = 1 };

/* Fresh inputs every run: every seed below is offset by this one, printed at
 * start; ANATOMY_TEST_SEED replays a run. */
static uint64_t base_seed;

#define SEED(k) (base_seed + (uint64_t)(k))

/* Random parameters with every kind of tensor far from its init values, so no
 * gradient is trivially zero (padded vocabulary rows included). */
static void random_params(double *p, size_t n, uint64_t seed)
{
    rng_state r;
    rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++)
        p[i] = 0.3 * rng_normal(&r);
}

static void random_batch(int32_t *in, int32_t *tg, int n, int V, uint64_t seed)
{
    rng_state r;
    rng_seed(&r, seed);
    for (int i = 0; i < n; i++) {
        in[i] = (int32_t)rng_below(&r, (uint64_t)V);
        tg[i] = rng_below(&r, 5) == 0 ? -1 : (int32_t)rng_below(&r, (uint64_t)V);
    }
    tg[0] = 1; /* at least one counted position */
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

/* Loss and analytic gradient at params p (fp64 backend) on tokens in, targets tg. */
static double loss_grad(model *m, const double *p, const int32_t *in, const int32_t *tg,
                        double *grad)
{
    return model_loss_grad(m, p, &(model_batch){ .tokens = in, .targets = tg }, grad);
}

START_TEST(test_model_gradcheck_fp64)
{
    char err[ERRBUF];
    backend *be = backend_cpu64_create(1, err);
    ck_assert_msg(be != NULL, "%s", err);
    const gpt2_config *cfg = _i == 3 ? &tiny_nobias : &tiny; /* 3: without biases */
    model *m = gpt2_create(be, cfg, err);
    ck_assert_msg(m != NULL, "%s", err);
    if (cfg->nobias) {
        /* the table has no bias at all: 4 weights per block, ln_f's gain */
        ck_assert_int_eq(m->nviews, 2 + 6 * cfg->L + 1);
        for (int v = 0; v < m->nviews; v++)
            ck_assert_msg(!strstr(m->views[v].name, "bias"), "view %s", m->views[v].name);
    }
    int B = 2, T = 5;
    ck_assert_int_eq(m->plan(m, B, T, err), 0);
    size_t n = m->nparams;
    double *p = malloc(n * sizeof *p), *g = malloc(n * sizeof *g), *fd = malloc(n * sizeof *fd);
    int32_t in[10], tg[10];
    random_params(p, n, SEED(11 + _i));
    random_batch(in, tg, B * T, tiny.V, SEED(12 + _i));
    if (_i == 2) { /* with dropout: a fixed mask, so still a smooth function */
        double plain = loss_grad(m, p, in, tg, NULL);
        m->dropout = 0.3f;
        m->dropout_seed = SEED(13);
        ck_assert_msg(fabs(loss_grad(m, p, in, tg, NULL) - plain) > 1e-6,
                      "dropout 0.3 leaves the loss at %.9f", plain);
    }
    loss_grad(m, p, in, tg, g);
    const double h = 1e-5;
    model_fd_gradient(fd, m, p, &(model_batch){ .tokens = in, .targets = tg }, h);
    double e = rel_l2(g, fd, n);
    ck_assert_msg(e < 1e-7, "model gradient vs finite differences: rel L2 %g", e);
    /* padded vocabulary rows (V..Vp) get exactly zero gradient */
    const param_view *wte = model_find_view(m, "wte.weight");
    for (size_t i = (size_t)tiny.V * tiny.C; i < wte->count; i++)
        ck_assert(g[wte->offset + i] == 0.0);
    free(p);
    free(g);
    free(fd);
    m->destroy(m);
    be->destroy(be);
}
END_TEST

/* backward accumulates: two forward+backward passes give twice the gradient */
START_TEST(test_model_grads_accumulate)
{
    char err[ERRBUF];
    backend *be = backend_cpu64_create(1, err);
    model *m = gpt2_create(be, &tiny, err);
    ck_assert_int_eq(m->plan(m, 2, 6, err), 0);
    size_t n = m->nparams;
    double *p = malloc(n * sizeof *p), *g1 = malloc(n * sizeof *g1), *g2 = malloc(n * sizeof *g2);
    int32_t in[12], tg[12];
    random_params(p, n, SEED(21));
    random_batch(in, tg, 12, tiny.V, SEED(22));
    loss_grad(m, p, in, tg, g1);
    m->forward(m, &(model_batch){ .tokens = in, .targets = tg }, 1.0f);
    m->backward(m);
    be->download(be, g2, DT_F64, m->grads, be->act, n);
    for (size_t i = 0; i < n; i++)
        g1[i] *= 2;
    ck_assert_double_lt(rel_l2(g2, g1, n), 1e-12);
    free(p);
    free(g1);
    free(g2);
    m->destroy(m);
    be->destroy(be);
}
END_TEST

START_TEST(test_fp32_matches_fp64)
{
    char err[ERRBUF];
    gpt2_config cfg = { .V = 300, .maxT = 32, .L = 2, .NH = 4, .C = 32 };
    backend *b64 = backend_cpu64_create(0, err), *b32 = backend_cpu_create(0, err);
    model *m64 = gpt2_create(b64, &cfg, err), *m32 = gpt2_create(b32, &cfg, err);
    int B = 3, T = 17, n = B * T;
    ck_assert_int_eq(m64->plan(m64, B, T, err), 0);
    ck_assert_int_eq(m32->plan(m32, B, T, err), 0);
    size_t np = m64->nparams;
    float *pf = malloc(np * sizeof *pf);
    double *g64 = malloc(np * sizeof *g64), *g32 = malloc(np * sizeof *g32);
    int32_t *in = malloc(n * sizeof *in), *tg = malloc(n * sizeof *tg);
    gpt2_init_params(&cfg, pf, SEED(31));
    random_batch(in, tg, n, cfg.V, SEED(32));
    model_set_params(m64, pf); /* the same fp32 values in both */
    model_set_params(m32, pf);
    float scale = 1.0f; /* gradient of the mean loss */
    double l64 = m64->forward(m64, &(model_batch){ .tokens = in, .targets = tg }, scale), l32 = m32->forward(m32, &(model_batch){ .tokens = in, .targets = tg }, scale);
    m64->backward(m64);
    m32->backward(m32);
    b64->download(b64, g64, DT_F64, m64->grads, b64->act, np);
    b32->download(b32, g32, DT_F64, m32->grads, b32->act, np);
    ck_assert_msg(fabs(l32 - l64) / fabs(l64) < 1e-5, "loss fp32 %.9f fp64 %.9f", l32, l64);
    double e = rel_l2(g32, g64, np);
    ck_assert_msg(e < 1e-5, "gradients fp32 vs fp64: rel L2 %g", e);
    free(pf);
    free(g64);
    free(g32);
    free(in);
    free(tg);
    m64->destroy(m64);
    m32->destroy(m32);
    b64->destroy(b64);
    b32->destroy(b32);
}
END_TEST

/* Without biases is with zero biases: a no-bias model given a biased
 * model's weights, whose biases are all zero, computes the same loss bit
 * for bit and the same weight gradients (the forward of a missing bias is
 * no bias, not some other tensor). Parameters copied by name. */
START_TEST(test_nobias_is_zero_bias)
{
    char err[ERRBUF];
    gpt2_config cb = { .V = 300, .maxT = 32, .L = 2, .NH = 4, .C = 32 }, cn = cb;
    cn.nobias = 1;
    backend *be = backend_cpu_create(2, err);
    model *mb = gpt2_create(be, &cb, err), *mn = gpt2_create(be, &cn, err);
    ck_assert_ptr_nonnull(mb);
    ck_assert_ptr_nonnull(mn);
    ck_assert_uint_lt(mn->nparams, mb->nparams);
    int B = 2, T = 16, n = B * T;
    ck_assert_int_eq(mb->plan(mb, B, T, err), 0);
    ck_assert_int_eq(mn->plan(mn, B, T, err), 0);
    float *pb = malloc(mb->nparams * sizeof *pb), *pn = malloc(mn->nparams * sizeof *pn);
    double *gb = malloc(mb->nparams * sizeof *gb), *gn = malloc(mn->nparams * sizeof *gn);
    int32_t in[32], tg[32];
    gpt2_init_params(&cb, pb, SEED(71));
    for (int v = 0; v < mb->nviews; v++) {
        const param_view *w = &mb->views[v], *o = model_find_view(mn, w->name);
        if (strstr(w->name, ".bias")) { /* the no-bias model has none of them */
            ck_assert_ptr_null(o);
            memset(pb + w->offset, 0, w->count * sizeof *pb);
            continue;
        }
        for (size_t i = 0; i < w->count; i++) /* away from init: gains not all 1 */
            pb[w->offset + i] += w->ndim == 1 ? 0.3f * (float)(i % 7) : 0.0f;
        ck_assert_msg(o && o->count == w->count, "%s", w->name);
        memcpy(pn + o->offset, pb + w->offset, w->count * sizeof *pb);
    }
    model_set_params(mb, pb);
    model_set_params(mn, pn);
    random_batch(in, tg, n, cb.V, SEED(72));
    model_zero_grad(mb);
    model_zero_grad(mn);
    double lb = mb->forward(mb, &(model_batch){ .tokens = in, .targets = tg }, 1.0f);
    double ln = mn->forward(mn, &(model_batch){ .tokens = in, .targets = tg }, 1.0f);
    ck_assert_msg(lb == ln, "loss with zero biases %.9f, without biases %.9f", lb, ln);
    mb->backward(mb);
    mn->backward(mn);
    be->download(be, gb, DT_F64, mb->grads, be->act, mb->nparams);
    be->download(be, gn, DT_F64, mn->grads, be->act, mn->nparams);
    for (int v = 0; v < mn->nviews; v++) {
        const param_view *o = &mn->views[v], *w = model_find_view(mb, o->name);
        ck_assert_mem_eq(gn + o->offset, gb + w->offset, o->count * sizeof *gn);
    }
    free(pb);
    free(pn);
    free(gb);
    free(gn);
    mb->destroy(mb);
    mn->destroy(mn);
    be->destroy(be);
}
END_TEST

/* It learns: AdamW on one fixed batch drives the loss below 0.1, and the
 * padded vocabulary rows stay exactly zero throughout. */
START_TEST(test_overfit_one_batch)
{
    char err[ERRBUF];
    gpt2_config cfg = { .V = 64, .maxT = 32, .L = 2, .NH = 2, .C = 32 };
    backend *be = backend_cpu_create(0, err);
    model *m = gpt2_create(be, &cfg, err);
    int B = 4, T = 16, n = B * T;
    ck_assert_int_eq(m->plan(m, B, T, err), 0);
    float *p = malloc(m->nparams * sizeof *p);
    int32_t in[64], tg[64];
    rng_state r;
    rng_seed(&r, SEED(41));
    for (int i = 0; i < n; i++) {
        in[i] = (int32_t)rng_below(&r, 64);
        tg[i] = (int32_t)rng_below(&r, 64);
    }
    gpt2_init_params(&cfg, p, SEED(42));
    model_set_params(m, p);
    double loss = 0, first = 0;
    int step;
    for (step = 1; step <= 500; step++) {
        model_zero_grad(m);
        loss = m->forward(m, &(model_batch){ .tokens = in, .targets = tg }, 1.0f);
        if (step == 1)
            first = loss;
        if (loss < 0.1)
            break;
        m->backward(m);
        adamw_params hp = { 3e-3f, 0.9f, 0.95f, 1e-8f, 0.0f, step, 1.0f, 0, 0 };
        be->adamw(be, m->params, m->master, m->grads, m->m, m->v, m->segs, m->nsegs, &hp);
    }
    ck_assert_msg(first > 3.5, "initial loss %g should be near ln(64) = 4.16", first);
    ck_assert_msg(loss < 0.1, "loss %g after %d steps", loss, step);
    model_get_params(m, p);
    const param_view *wte = model_find_view(m, "wte.weight");
    for (size_t i = (size_t)cfg.V * cfg.C; i < wte->count; i++)
        ck_assert(p[wte->offset + i] == 0.0f);
    free(p);
    m->destroy(m);
    be->destroy(be);
}
END_TEST

/* --recompute changes memory, not results: the same loss and gradients bit
 * for bit (the CPU backend is deterministic and recomputes the same values). */
START_TEST(test_recompute_same_gradients)
{
    char err[ERRBUF];
    gpt2_config cfg = { .V = 300, .maxT = 32, .L = 3, .NH = 4, .C = 32 };
    backend *be = backend_cpu_create(0, err);
    model *a = gpt2_create(be, &cfg, err), *b = gpt2_create(be, &cfg, err);
    int B = 2, T = 19, n = B * T;
    b->recompute = 1;
    ck_assert_int_eq(a->plan(a, B, T, err), 0);
    ck_assert_int_eq(b->plan(b, B, T, err), 0);
    size_t np = a->nparams;
    float *p = malloc(np * sizeof *p);
    double *ga = malloc(np * sizeof *ga), *gb = malloc(np * sizeof *gb);
    int32_t in[38], tg[38];
    gpt2_init_params(&cfg, p, SEED(51));
    random_batch(in, tg, n, cfg.V, SEED(52));
    model_set_params(a, p);
    model_set_params(b, p);
    float scale = 1.0f; /* gradient of the mean loss */
    double la = a->forward(a, &(model_batch){ .tokens = in, .targets = tg }, scale), lb = b->forward(b, &(model_batch){ .tokens = in, .targets = tg }, scale);
    a->backward(a);
    b->backward(b);
    be->download(be, ga, DT_F64, a->grads, be->act, np);
    be->download(be, gb, DT_F64, b->grads, be->act, np);
    ck_assert(la == lb);
    ck_assert(memcmp(ga, gb, np * sizeof *ga) == 0);
    free(p);
    free(ga);
    free(gb);
    a->destroy(a);
    b->destroy(b);
    be->destroy(be);
}
END_TEST

/* Incremental decoding (the key/value cache of sampling) gives the logits a
 * full causal forward gives at every position, on both CPU backends. */
START_TEST(test_decode_matches_forward)
{
    char err[ERRBUF];
    gpt2_config cfg = { .V = 300, .maxT = 24, .L = 3, .NH = 4, .C = 32 };
    int T = 24;
    for (int k = 0; k < 2; k++) {
        backend *be = k ? backend_cpu64_create(2, err) : backend_cpu_create(2, err);
        ck_assert_ptr_nonnull(be);
        model *m = gpt2_create(be, &cfg, err);
        ck_assert_ptr_nonnull(m);
        size_t n = m->nparams;
        float *p = malloc(n * sizeof *p), *a = malloc(cfg.V * sizeof *a), *b = malloc(cfg.V * sizeof *b);
        int32_t in[24], tg[24];
        gpt2_init_params(&cfg, p, SEED(61 + k));
        for (size_t i = 0; i < n; i++) /* away from init: larger activations */
            p[i] *= 5.0f;
        model_set_params(m, p);
        random_batch(in, tg, T, cfg.V, SEED(63 + k));
        ck_assert_int_eq(m->plan(m, 1, T, err), 0);
        ck_assert_int_eq(m->decode_plan(m, T, err), 0);
        m->forward(m, &(model_batch){ .tokens = in }, 0.0f);
        double worst = 0;
        for (int t = 0; t < T; t++) {
            m->logits(m, 0, t, a);
            m->decode_step(m, in[t], t, b);
            double num = 0, den = 0;
            for (int v = 0; v < cfg.V; v++) {
                ck_assert_msg(isfinite(b[v]), "decode logit %d at %d is %g", v, t, b[v]);
                num += (double)(a[v] - b[v]) * (a[v] - b[v]);
                den += (double)a[v] * a[v];
            }
            double e = sqrt(num / den);
            worst = e > worst ? e : worst;
        }
        /* fp64 computes in double but the logits come back as float */
        ck_assert_msg(worst < (k ? 1e-7 : 1e-5), "%s: decode vs forward logits rel L2 %.3g",
                      be->name, worst);
        free(p);
        free(a);
        free(b);
        m->destroy(m);
        be->destroy(be);
    }
}
END_TEST

START_TEST(test_presets)
{
    static const struct { const char *name; size_t params; } want[] = {
        { "gpt2-124m", 124439808 }, { "gpt2-350m", 354823168 },
        { "gpt2-774m", 774030080 }, { "gpt2-1558m", 1557611200 },
    };
    char err[ERRBUF];
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        gpt2_config c;
        param_view *v;
        int nv;
        ck_assert_int_eq(gpt2_preset(want[i].name, &c, err), 0);
        size_t total = gpt2_layout(&c, &v, &nv);
        size_t real = total - (size_t)(gpt2_padded_vocab(c.V) - c.V) * c.C;
        ck_assert_msg(real == want[i].params, "%s: %zu parameters", want[i].name, real);
        ck_assert_int_eq(nv, 4 + 12 * c.L);
        free(v);
    }
    gpt2_config c;
    ck_assert_int_eq(gpt2_preset("gpt2-9000m", &c, err), -1);
    ck_assert_ptr_nonnull(strstr(err, "gpt2-9000m"));
}
END_TEST

START_TEST(test_bad_config_and_plan)
{
    char err[ERRBUF];
    backend *be = backend_cpu_create(1, err);
    gpt2_config c = tiny;
    c.NH = 3; /* does not divide C = 8 */
    ck_assert_ptr_null(gpt2_create(be, &c, err));
    ck_assert_ptr_nonnull(strstr(err, "heads 3"));
    c = tiny;
    c.V = 0;
    ck_assert_ptr_null(gpt2_create(be, &c, err));
    ck_assert_ptr_nonnull(strstr(err, "vocabulary"));
    model *m = gpt2_create(be, &tiny, err);
    ck_assert_int_eq(m->plan(m, 2, tiny.maxT + 1, err), -1);
    ck_assert_ptr_nonnull(strstr(err, "--seq"));
    ck_assert_int_eq(m->plan(m, 0, 4, err), -1);
    m->destroy(m);
    be->destroy(be);
}
END_TEST

/* The trainer refuses --dropout for a model that names no dropout sites
 * (every family has some today; a new one must say where it drops), before
 * it plans, reads or writes anything. */
START_TEST(test_dropout_refused_without_sites)
{
    char err[ERRBUF] = "";
    backend *be = backend_cpu64_create(1, err);
    model *m = gpt2_create(be, &tiny, err);
    ck_assert_msg(m != NULL, "%s", err);
    ck_assert_ptr_nonnull(m->has_dropout);
    m->has_dropout = NULL;
    train_opts o = { .B = 2, .T = 4, .total_batch = 8, .steps = 1, .world = 1, .dropout = 0.1 };
    train_state st = { 0 };
    ck_assert_int_ne(train_run(m, &o, &st, err), 0);
    ck_assert_msg(strstr(err, "--dropout") && strstr(err, "gpt2"), "error: %s", err);
    ck_assert_int_eq(st.step, 0);
    ck_assert_int_eq(m->B, 0); /* not planned */
    m->destroy(m);
    be->destroy(be);
}
END_TEST

static Suite *gpt2_suite(void)
{
    Suite *s = suite_create("gpt2");
    TCase *tc = tcase_create("model");
    tcase_set_timeout(tc, 120);
    /* 2: with dropout; 3: without biases */
    tcase_add_loop_test(tc, test_model_gradcheck_fp64, 0, 4);
    tcase_add_test(tc, test_model_grads_accumulate);
    tcase_add_test(tc, test_fp32_matches_fp64);
    tcase_add_test(tc, test_nobias_is_zero_bias);
    tcase_add_test(tc, test_overfit_one_batch);
    tcase_add_test(tc, test_recompute_same_gradients);
    tcase_add_test(tc, test_decode_matches_forward);
    tcase_add_test(tc, test_presets);
    tcase_add_test(tc, test_bad_config_and_plan);
    tcase_add_test(tc, test_dropout_refused_without_sites);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    const char *env = getenv("ANATOMY_TEST_SEED");
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    base_seed = env ? strtoull(env, NULL, 0) : (uint64_t)ts.tv_sec * 1000003u + (uint64_t)ts.tv_nsec;
    printf("test_gpt2: seed %llu (ANATOMY_TEST_SEED to replay)\n", (unsigned long long)base_seed);
    fflush(stdout);
    SRunner *sr = srunner_create(gpt2_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
