/* test_vit.c: the Vision Transformer family and the image readers.
 *  - patchify against the index formula
 *  - every parameter's gradient against central finite differences (fp64)
 *  - the fp32 backend against the fp64 oracle; backward accumulates
 *  - it learns: a batch of random images with random labels is memorised
 *  - preset parameter counts (ViT-B/16: 86,567,656)
 *  - the IDX and CIFAR-10 readers on generated files (plain and gzip), the
 *    --data naming convention, and every bad-file error
 *  - the batch source: shuffled epochs, seek, ranks, padded val batches,
 *    augmentation as a function of (seed, micro-batch) */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../data/errbuf.h"
#include "../data/images.h"
#include "../data/rng.h"
#include "../host/models/vit.h"
#include "gradcheck.h"

/* Fresh inputs every run: every seed is offset by this one, printed at
 * start; ANATOMY_TEST_SEED replays a run. */
static uint64_t base_seed;
#define SEED(k) (base_seed + (uint64_t)(k))

/* image 8, 2 channels, patch 4 (4 patches of 32 values), 5 classes, L2 NH2 C8 */
static const vit_config tiny = { 8, 2, 4, 5, 2, 2, 8, 0, VIT_POOL_CLS };

static double rel_l2(const double *a, const double *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    if (isnan(num) || isnan(den))
        return INFINITY;
    return sqrt(num / (den > 0 ? den : 1e-300));
}

static void random_images(float *x, int32_t *tg, const vit_config *c, int B, uint64_t seed,
                          int with_ignored)
{
    rng_state r;
    size_t img = (size_t)c->channels * c->image * c->image;
    rng_seed(&r, seed);
    for (size_t i = 0; i < (size_t)B * img; i++)
        x[i] = (float)(2.0 * rng_uniform(&r) - 1.0);
    for (int b = 0; b < B; b++)
        tg[b] = (int32_t)rng_below(&r, (uint64_t)c->classes);
    if (with_ignored && B > 2)
        tg[1 + rng_below(&r, (uint64_t)B - 1)] = -1; /* row 0 always counts */
}

static int count_valid(const int32_t *tg, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++)
        v += tg[i] >= 0;
    return v;
}

static model *make(backend *be, const vit_config *c)
{
    char err[ERRBUF];
    model *m = vit_family.create(be, (const int *)c, err);
    ck_assert_msg(m != NULL, "%s", err);
    return m;
}

START_TEST(test_patchify)
{
    vit_config c = { 12, 3, 4, 10, 1, 1, 4, 0, VIT_POOL_CLS };
    int B = 2, P = 4, H = 12, G = 3, D = 3 * 16, N = 9;
    size_t img = 3 * 12 * 12;
    float *x = malloc(B * img * sizeof *x), *out = malloc((size_t)B * N * D * sizeof *out);
    rng_state r;
    rng_seed(&r, SEED(1));
    for (size_t i = 0; i < B * img; i++)
        x[i] = (float)rng_normal(&r);
    for (size_t i = 0; i < (size_t)B * N * D; i++)
        out[i] = NAN; /* poisoned: every element must be written */
    vit_patchify(&c, x, B, out);
    for (int b = 0; b < B; b++)
        for (int gy = 0; gy < G; gy++)
            for (int gx = 0; gx < G; gx++)
                for (int k = 0; k < 3; k++)
                    for (int py = 0; py < P; py++)
                        for (int px = 0; px < P; px++) {
                            float got = out[((size_t)b * N + gy * G + gx) * D + (k * P + py) * P + px];
                            float want = x[b * img + (size_t)k * H * H + (gy * P + py) * H + gx * P + px];
                            ck_assert(got == want);
                        }
    free(x);
    free(out);
}
END_TEST

START_TEST(test_gradcheck_fp64)
{
    char err[ERRBUF];
    backend *be = backend_cpu64_create(1, err);
    ck_assert_msg(be != NULL, "%s", err);
    vit_config nb = tiny, mean = tiny; /* 3: without biases (--no-bias) */
    nb.nobias = 1;
    mean.pool = VIT_POOL_MEAN;          /* 5: the head on the patch rows' mean (--pool mean) */
    model *m = make(be, _i == 3 ? &nb : _i == 5 ? &mean : &tiny);
    int B = 3;
    ck_assert_int_eq(m->plan(m, B, 0, err), 0);
    ck_assert_int_eq(m->T, 5);
    for (int v = 0; _i == 3 && v < m->nviews; v++)
        ck_assert_msg(!strstr(m->views[v].name, "bias"), "view %s", m->views[v].name);
    size_t n = m->nparams;
    double *p = malloc(n * sizeof *p), *g = malloc(n * sizeof *g), *fd = malloc(n * sizeof *fd);
    float x[3 * 2 * 64];
    int32_t tg[3];
    rng_state r;
    rng_seed(&r, SEED(10 + _i));
    for (size_t i = 0; i < n; i++)
        p[i] = 0.3 * rng_normal(&r);
    random_images(x, tg, &tiny, B, SEED(20 + _i), _i == 1);
    model_batch b = { .x = x, .targets = tg };
    if (_i == 2) { /* with dropout: a fixed mask, so still a smooth function */
        double plain = model_loss_grad(m, p, &b, NULL);
        m->dropout = 0.3f;
        m->dropout_seed = SEED(23);
        ck_assert_msg(fabs(model_loss_grad(m, p, &b, NULL) - plain) > 1e-6,
                      "dropout 0.3 leaves the loss at %.9f", plain);
    }
    if (_i == 5) { /* the same parameters as [CLS] pooling, another function of them */
        model *cls = make(be, &tiny);
        ck_assert_int_eq(cls->plan(cls, B, 0, err), 0);
        ck_assert_uint_eq(cls->nparams, n);
        double lc = model_loss_grad(cls, p, &b, NULL), lm = model_loss_grad(m, p, &b, NULL);
        ck_assert_msg(fabs(lc - lm) > 1e-6, "mean pooling gives [CLS] pooling's loss %.9f", lc);
        cls->destroy(cls);
    }
    if (_i == 4) { /* label smoothing (the gradient term added to dlogits) */
        double plain = model_loss_grad(m, p, &b, NULL);
        m->label_smoothing = 0.2f;
        ck_assert_msg(fabs(model_loss_grad(m, p, &b, NULL) - plain) > 1e-6,
                      "label smoothing 0.2 leaves the loss at %.9f", plain);
    }
    model_loss_grad(m, p, &b, g);
    const double h = 1e-5;
    model_fd_gradient(fd, m, p, &b, h);
    double e = rel_l2(g, fd, n);
    ck_assert_msg(e < 1e-7, "ViT gradient vs finite differences: rel L2 %g", e);
    /* and view by view, so a small view cannot hide in the total */
    for (int v = 0; v < m->nviews; v++) {
        const param_view *pv = &m->views[v];
        double ev = rel_l2(g + pv->offset, fd + pv->offset, pv->count);
        ck_assert_msg(ev < 1e-6, "%s: rel L2 %g", pv->name, ev);
    }
    free(p);
    free(g);
    free(fd);
    m->destroy(m);
    be->destroy(be);
}
END_TEST

/* Initial parameters with the (zero) head replaced by random values, so that
 * gradients reach the stack. */
static void init_params(const vit_config *c, model *m, float *pf, uint64_t seed)
{
    rng_state r;
    vit_family.init((const int *)c, pf, seed);
    rng_seed(&r, seed + 1);
    const param_view *hw = model_find_view(m, "head.weight");
    ck_assert_ptr_nonnull(hw);
    for (size_t i = 0; i < hw->count; i++)
        pf[hw->offset + i] = (float)(0.1 * rng_normal(&r));
}

START_TEST(test_fp32_matches_fp64)
{
    char err[ERRBUF];
    vit_config c = { 16, 3, 4, 10, 2, 4, 32, 0, VIT_POOL_CLS };
    backend *b64 = backend_cpu64_create(0, err), *b32 = backend_cpu_create(0, err);
    model *m64 = make(b64, &c), *m32 = make(b32, &c);
    int B = 5;
    ck_assert_int_eq(m64->plan(m64, B, 0, err), 0);
    ck_assert_int_eq(m32->plan(m32, B, 0, err), 0);
    size_t np = m64->nparams;
    float *pf = malloc(np * sizeof *pf), *x = malloc((size_t)B * 3 * 256 * sizeof *x);
    double *g64 = malloc(np * sizeof *g64), *g32 = malloc(np * sizeof *g32);
    int32_t tg[5];
    init_params(&c, m64, pf, SEED(31));
    random_images(x, tg, &c, B, SEED(32), 1);
    model_set_params(m64, pf);
    model_set_params(m32, pf);
    model_batch b = { .x = x, .targets = tg };
    double l64 = m64->forward(m64, &b, 1.0f), l32 = m32->forward(m32, &b, 1.0f);
    m64->backward(m64);
    m32->backward(m32);
    b64->download(b64, g64, DT_F64, m64->grads, b64->act, np);
    b32->download(b32, g32, DT_F64, m32->grads, b32->act, np);
    ck_assert_msg(fabs(l32 - l64) / fabs(l64) < 1e-5, "loss fp32 %.9f fp64 %.9f", l32, l64);
    double e = rel_l2(g32, g64, np);
    ck_assert_msg(e < 1e-5, "gradients fp32 vs fp64: rel L2 %g", e);
    /* the metric: top-1 of the logits it reports */
    double sums[1] = { 0 }, counts[1] = { 0 };
    m32->metrics(m32, &b, sums, counts);
    ck_assert(counts[0] == count_valid(tg, B));
    float lg[10];
    int correct = 0;
    for (int i = 0; i < B; i++) {
        m32->logits(m32, i, 0, lg);
        int best = 0;
        for (int k = 1; k < 10; k++)
            best = lg[k] > lg[best] ? k : best;
        correct += tg[i] >= 0 && best == tg[i];
    }
    ck_assert(sums[0] == correct);
    free(pf);
    free(x);
    free(g64);
    free(g32);
    m64->destroy(m64);
    m32->destroy(m32);
    b64->destroy(b64);
    b32->destroy(b32);
}
END_TEST

/* backward accumulates, and grad_scale scales: forward(2) + backward equals
 * two passes at scale 1. */
START_TEST(test_grads_accumulate)
{
    char err[ERRBUF];
    backend *be = backend_cpu64_create(1, err);
    model *m = make(be, &tiny);
    ck_assert_int_eq(m->plan(m, 4, 0, err), 0);
    size_t n = m->nparams;
    double *p = malloc(n * sizeof *p), *g1 = malloc(n * sizeof *g1), *g2 = malloc(n * sizeof *g2);
    float x[4 * 128];
    int32_t tg[4];
    rng_state r;
    rng_seed(&r, SEED(41));
    for (size_t i = 0; i < n; i++)
        p[i] = 0.3 * rng_normal(&r);
    random_images(x, tg, &tiny, 4, SEED(42), 1);
    model_batch b = { .x = x, .targets = tg };
    model_loss_grad(m, p, &b, g1);
    m->forward(m, &b, 1.0f);
    m->backward(m);
    be->download(be, g2, DT_F64, m->grads, be->act, n);
    model_zero_grad(m);
    m->forward(m, &b, 2.0f);
    m->backward(m);
    be->download(be, g1, DT_F64, m->grads, be->act, n);
    ck_assert_double_lt(rel_l2(g2, g1, n), 1e-12);
    free(p);
    free(g1);
    free(g2);
    m->destroy(m);
    be->destroy(be);
}
END_TEST

START_TEST(test_overfit_one_batch)
{
    char err[ERRBUF];
    vit_config c = { 8, 1, 4, 10, 2, 2, 32, 0, VIT_POOL_CLS };
    backend *be = backend_cpu_create(0, err);
    model *m = make(be, &c);
    int B = 16;
    ck_assert_int_eq(m->plan(m, B, 0, err), 0);
    float *p = malloc(m->nparams * sizeof *p), x[16 * 64];
    int32_t tg[16];
    random_images(x, tg, &c, B, SEED(51), 0);
    vit_family.init((const int *)&c, p, SEED(52));
    model_set_params(m, p);
    model_batch b = { .x = x, .targets = tg };
    double loss = 0, first = 0;
    int step;
    for (step = 1; step <= 400; step++) {
        model_zero_grad(m);
        loss = m->forward(m, &b, 1.0f);
        if (step == 1)
            first = loss;
        if (loss < 0.05)
            break;
        m->backward(m);
        adamw_params hp = { 3e-3f, 0.9f, 0.95f, 1e-8f, 0.0f, step, 1.0f, 0, 0 };
        be->adamw(be, m->params, m->master, m->grads, m->m, m->v, m->segs, m->nsegs, &hp);
    }
    /* the zero head makes every class equally likely at the start */
    ck_assert_msg(fabs(first - log(10.0)) < 1e-5, "initial loss %g, want ln 10", first);
    ck_assert_msg(loss < 0.05, "loss %g after %d steps", loss, step);
    double sums[1] = { 0 }, counts[1] = { 0 };
    m->metrics(m, &b, sums, counts);
    ck_assert(sums[0] == 16 && counts[0] == 16);
    free(p);
    m->destroy(m);
    be->destroy(be);
}
END_TEST

START_TEST(test_presets)
{
    static const struct { const char *name; size_t params; } want[] = {
        { "vit-tiny", 5717416 }, { "vit-small", 22050664 }, { "vit-base", 86567656 },
        { "vit-mnist", 1199882 }, { "vit-mnist-p7", 305034 }, { "vit-mnist-p4", 305034 },
    };
    char err[ERRBUF];
    int v[16];
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        ck_assert_int_eq(vit_family.preset(want[i].name, v, err), 0);
        ck_assert_int_eq(vit_family.check(v, err), 0);
        size_t n = vit_family.real_params(v);
        ck_assert_msg(n == want[i].params, "%s: %zu parameters", want[i].name, n);
    }
    ck_assert_int_eq(vit_family.preset("vit-huge", v, err), -1);
    ck_assert_ptr_nonnull(strstr(err, "vit-huge"));
    vit_config c = tiny;
    c.patch = 3;
    ck_assert_int_eq(vit_family.check((int *)&c, err), -1);
    ck_assert_ptr_nonnull(strstr(err, "--patch"));
    c = tiny;
    c.NH = 3;
    ck_assert_int_eq(vit_family.check((int *)&c, err), -1);
    ck_assert_ptr_nonnull(strstr(err, "heads"));
}
END_TEST

/* ---- image files ---- */

static char tmpdir[256];

static const char *tpath(const char *name)
{
    static char buf[8][512];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 512, "%s/%s", tmpdir, name);
    return p;
}

static void put_be32(FILE *f, uint32_t v)
{
    unsigned char b[4] = { v >> 24, v >> 16, v >> 8, v };
    fwrite(b, 1, 4, f);
}

/* An IDX images file of n random images rows x cols; chop bytes dropped at
 * the end (truncation), extra bytes appended. Pixels into pix when not NULL. */
static void write_idx_images(const char *path, uint32_t magic, int n, int rows, int cols,
                             int chop, int extra, uint8_t *pix, uint64_t seed)
{
    FILE *f = fopen(path, "wb");
    rng_state r;
    size_t total = (size_t)n * rows * cols;
    uint8_t *buf = malloc(total + (size_t)extra + 1);
    rng_seed(&r, seed);
    for (size_t i = 0; i < total + (size_t)extra; i++)
        buf[i] = (uint8_t)rng_below(&r, 256);
    if (pix)
        memcpy(pix, buf, total);
    put_be32(f, magic);
    put_be32(f, (uint32_t)n);
    put_be32(f, (uint32_t)rows);
    put_be32(f, (uint32_t)cols);
    fwrite(buf, 1, total + (size_t)extra - (size_t)chop, f);
    fclose(f);
    free(buf);
}

static void write_idx_labels(const char *path, uint32_t magic, int n, int classes, int chop,
                             uint8_t *lab, uint64_t seed)
{
    FILE *f = fopen(path, "wb");
    rng_state r;
    rng_seed(&r, seed);
    put_be32(f, magic);
    put_be32(f, (uint32_t)n);
    for (int i = 0; i < n - chop; i++) {
        uint8_t v = (uint8_t)rng_below(&r, (uint64_t)classes);
        if (lab)
            lab[i] = v;
        fputc(v, f);
    }
    fclose(f);
}

/* n CIFAR-10 records; labels below classes; chop bytes dropped at the end. */
static void write_cifar(const char *path, int n, int classes, int chop, uint8_t *pix,
                        uint8_t *lab, uint64_t seed)
{
    FILE *f = fopen(path, "wb");
    rng_state r;
    uint8_t rec[3073];
    rng_seed(&r, seed);
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < 3073; k++)
            rec[k] = (uint8_t)rng_below(&r, 256);
        rec[0] = (uint8_t)rng_below(&r, (uint64_t)classes);
        if (pix)
            memcpy(pix + (size_t)i * 3072, rec + 1, 3072);
        if (lab)
            lab[i] = rec[0];
        fwrite(rec, 1, (size_t)(i == n - 1 ? 3073 - chop : 3073), f);
    }
    fclose(f);
}

static void gzip_file(const char *path)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "gzip -f '%s'", path);
    ck_assert_int_eq(system(cmd), 0);
}

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_vit_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void remove_tmpdir(void)
{
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
}

START_TEST(test_read_idx)
{
    char err[ERRBUF];
    image_set s;
    uint8_t pix[37 * 9 * 7], lab[37];
    make_tmpdir();
    /* gzip (_i == 1) or plain; non-square to catch swapped dims */
    write_idx_images(tpath("train-images-idx3-ubyte"), 0x803, 37, 9, 7, 0, 0, pix, SEED(60));
    write_idx_labels(tpath("train-labels-idx1-ubyte"), 0x801, 37, 10, 0, lab, SEED(61));
    if (_i == 1) {
        gzip_file(tpath("train-images-idx3-ubyte"));
        gzip_file(tpath("train-labels-idx1-ubyte"));
    }
    const char *img = _i ? tpath("train-images-idx3-ubyte.gz") : tpath("train-images-idx3-ubyte");
    const char *labp = _i ? tpath("train-labels-idx1-ubyte.gz") : tpath("train-labels-idx1-ubyte");
    ck_assert_msg(images_read_idx(&s, img, labp, 10, err) == 0, "%s", err);
    ck_assert_int_eq(s.n, 37);
    ck_assert_int_eq(s.channels, 1);
    ck_assert_int_eq(s.height, 9);
    ck_assert_int_eq(s.width, 7);
    ck_assert(memcmp(s.pixels, pix, sizeof pix) == 0);
    ck_assert(memcmp(s.labels, lab, sizeof lab) == 0);
    images_free(&s);
    /* the --data convention: the images file alone finds its labels, and so
     * does the directory (training split) */
    ck_assert_msg(images_open(&s, img, 0, 10, err) == 0, "%s", err);
    ck_assert(s.n == 37 && memcmp(s.labels, lab, sizeof lab) == 0);
    images_free(&s);
    ck_assert_msg(images_open(&s, tmpdir, 0, 10, err) == 0, "%s", err);
    ck_assert(s.n == 37 && memcmp(s.pixels, pix, sizeof pix) == 0);
    images_free(&s);
    /* the test split reads t10k-* */
    ck_assert_int_eq(images_open(&s, tmpdir, 1, 10, err), -1);
    ck_assert_ptr_nonnull(strstr(err, "t10k-images-idx3-ubyte"));
    write_idx_images(tpath("t10k-images-idx3-ubyte"), 0x803, 5, 9, 7, 0, 0, NULL, SEED(62));
    write_idx_labels(tpath("t10k-labels-idx1-ubyte"), 0x801, 5, 10, 0, NULL, SEED(63));
    ck_assert_msg(images_open(&s, tmpdir, 1, 10, err) == 0, "%s", err);
    ck_assert_int_eq(s.n, 5);
    images_free(&s);
    remove_tmpdir();
}
END_TEST

START_TEST(test_read_cifar)
{
    char err[ERRBUF];
    image_set s;
    uint8_t *pix = malloc(5 * 7 * 3072), lab[5 * 7];
    char name[64];
    make_tmpdir();
    mkdir(tpath("cifar-10-batches-bin"), 0755);
    for (int f = 0; f < 5; f++) {
        snprintf(name, sizeof name, "cifar-10-batches-bin/data_batch_%d.bin", f + 1);
        write_cifar(tpath(name), 7, 10, 0, pix + (size_t)f * 7 * 3072, lab + f * 7, SEED(70 + f));
    }
    write_cifar(tpath("cifar-10-batches-bin/test_batch.bin"), 3, 10, 0, NULL, NULL, SEED(76));
    /* the directory (through its cifar-10-batches-bin/): five batches in order */
    ck_assert_msg(images_open(&s, tmpdir, 0, 10, err) == 0, "%s", err);
    ck_assert_int_eq(s.n, 35);
    ck_assert(s.channels == 3 && s.height == 32 && s.width == 32);
    ck_assert(memcmp(s.pixels, pix, (size_t)35 * 3072) == 0);
    ck_assert(memcmp(s.labels, lab, 35) == 0);
    images_free(&s);
    ck_assert_msg(images_open(&s, tmpdir, 1, 10, err) == 0, "%s", err);
    ck_assert_int_eq(s.n, 3);
    images_free(&s);
    /* one file */
    ck_assert_msg(images_open(&s, tpath("cifar-10-batches-bin/data_batch_2.bin"), 0, 10, err) == 0,
                  "%s", err);
    ck_assert(s.n == 7 && memcmp(s.labels, lab + 7, 7) == 0);
    images_free(&s);
    /* a missing batch is named */
    unlink(tpath("cifar-10-batches-bin/data_batch_4.bin"));
    ck_assert_int_eq(images_open(&s, tmpdir, 0, 10, err), -1);
    ck_assert_ptr_nonnull(strstr(err, "data_batch_4.bin"));
    free(pix);
    remove_tmpdir();
}
END_TEST

/* Expects reading to fail with an error that names `file` and says `what`. */
static void expect_idx_error(const char *img, const char *lab, int classes, const char *file,
                             const char *what)
{
    char err[ERRBUF] = "";
    image_set s;
    s.n = 12345;
    ck_assert_msg(images_read_idx(&s, img, lab, classes, err) == -1, "accepted: want '%s'", what);
    ck_assert_msg(strstr(err, file) == err, "error '%s' does not start with %s", err, file);
    ck_assert_msg(strstr(err, what) != NULL, "error '%s' does not say '%s'", err, what);
    ck_assert_msg(strchr(err, '\n') == NULL, "error is not one line: '%s'", err);
    ck_assert(s.n == 0 && s.pixels == NULL && s.labels == NULL);
}

START_TEST(test_bad_idx)
{
    const char *img, *lab, *good_img, *good_lab;
    make_tmpdir();
    /* copies: tpath's buffers are reused */
    good_img = strdup(tpath("good-images-idx3-ubyte"));
    good_lab = strdup(tpath("good-labels-idx1-ubyte"));
    write_idx_images(good_img, 0x803, 20, 6, 6, 0, 0, NULL, SEED(80));
    write_idx_labels(good_lab, 0x801, 20, 10, 0, NULL, SEED(81));

    img = tpath("magic-images-idx3-ubyte");
    write_idx_images(img, 0x802, 20, 6, 6, 0, 0, NULL, SEED(82));
    expect_idx_error(img, good_lab, 10, img, "not an IDX images file");
    /* a labels file given as images, and the reverse */
    expect_idx_error(good_lab, good_lab, 10, good_lab, "not an IDX images file");
    expect_idx_error(good_img, good_img, 10, good_img, "not an IDX labels file");

    img = tpath("trunc-images-idx3-ubyte");
    write_idx_images(img, 0x803, 20, 6, 6, 1 + (int)(base_seed % 30), 0, NULL, SEED(83));
    expect_idx_error(img, good_lab, 10, img, "truncated");
    img = tpath("hdr-images-idx3-ubyte");
    FILE *f = fopen(img, "wb");
    fwrite("\0\0\x08\x03\0\0", 1, 6, f);
    fclose(f);
    expect_idx_error(img, good_lab, 10, img, "truncated");
    img = tpath("long-images-idx3-ubyte");
    write_idx_images(img, 0x803, 20, 6, 6, 0, 3, NULL, SEED(84));
    expect_idx_error(img, good_lab, 10, img, "bytes after");

    lab = tpath("trunc-labels-idx1-ubyte");
    write_idx_labels(lab, 0x801, 20, 10, 2, NULL, SEED(85));
    expect_idx_error(good_img, lab, 10, lab, "truncated");
    /* label out of range: labels drawn below 10, read with fewer classes */
    lab = tpath("range-labels-idx1-ubyte");
    write_idx_labels(lab, 0x801, 20, 10, 0, NULL, SEED(86));
    expect_idx_error(good_img, lab, 1, lab, "out of range for 1 classes");
    /* count mismatch: 21 labels for 20 images */
    lab = tpath("count-labels-idx1-ubyte");
    write_idx_labels(lab, 0x801, 21, 10, 0, NULL, SEED(87));
    expect_idx_error(good_img, lab, 10, lab, "21 labels, but its images file");
    /* a corrupt gzip stream */
    img = tpath("gz-images-idx3-ubyte");
    write_idx_images(img, 0x803, 20, 6, 6, 0, 0, NULL, SEED(88));
    gzip_file(img);
    img = tpath("gz-images-idx3-ubyte.gz");
    ck_assert_int_eq(truncate(img, 40), 0);
    expect_idx_error(img, good_lab, 10, img, "corrupt or truncated");
    /* missing files */
    expect_idx_error(tpath("none-images-idx3-ubyte"), good_lab, 10,
                     tpath("none-images-idx3-ubyte"), "No such file");

    /* through images_open: the labels file that is not there, a name that
     * gives no labels file, an empty directory */
    char err[ERRBUF];
    image_set s;
    ck_assert_int_eq(images_open(&s, tpath("magic-images-idx3-ubyte"), 0, 10, err), -1);
    ck_assert_ptr_nonnull(strstr(err, "magic-labels-idx1-ubyte does not exist"));
    write_idx_images(tpath("images.dat"), 0x803, 2, 6, 6, 0, 0, NULL, SEED(89));
    ck_assert_int_eq(images_open(&s, tpath("images.dat"), 0, 10, err), -1);
    ck_assert_ptr_nonnull(strstr(err, "images-idx3"));
    mkdir(tpath("empty"), 0755);
    ck_assert_int_eq(images_open(&s, tpath("empty"), 0, 10, err), -1);
    ck_assert_ptr_nonnull(strstr(err, "no training images"));
    free((char *)good_img);
    free((char *)good_lab);
    remove_tmpdir();
}
END_TEST

START_TEST(test_bad_cifar)
{
    char err[ERRBUF];
    image_set s;
    const char *p;
    make_tmpdir();
    p = tpath("trunc.bin");
    write_cifar(p, 4, 10, 1 + (int)(base_seed % 3000), NULL, NULL, SEED(90));
    ck_assert_int_eq(images_open(&s, p, 0, 10, err), -1);
    ck_assert_msg(strstr(err, p) == err && strstr(err, "truncated"), "%s", err);
    p = tpath("range.bin");
    write_cifar(p, 4, 10, 0, NULL, NULL, SEED(91));
    /* a label byte of 10 in the third record */
    FILE *f = fopen(p, "r+b");
    fseek(f, 2 * 3073, SEEK_SET);
    fputc(10, f);
    fclose(f);
    ck_assert_int_eq(images_open(&s, p, 0, 10, err), -1);
    ck_assert_msg(strstr(err, p) == err && strstr(err, "label 10 of image 2 is out of range"),
                  "%s", err);
    p = tpath("empty.bin");
    fclose(fopen(p, "wb"));
    ck_assert_int_eq(images_open(&s, p, 0, 10, err), -1);
    ck_assert_msg(strstr(err, p) == err && strstr(err, "empty"), "%s", err);
    ck_assert(s.n == 0 && s.pixels == NULL);
    remove_tmpdir();
}
END_TEST

/* ---- the batch source ---- */

static batch_source *open_source(const vit_config *c, const char *path, int B, data_split split,
                                 int rank, int world, uint64_t seed)
{
    char err[ERRBUF];
    model fake;
    memset(&fake, 0, sizeof fake);
    memcpy(fake.config, c, sizeof *c);
    data_spec spec = { .path = path, .B = B, .T = 0, .rank = rank, .world = world,
                       .shuffle = 1, .seed = seed, .split = split };
    batch_source *s = vit_family.open_data(&fake, &spec, err);
    ck_assert_msg(s != NULL, "%s", err);
    return s;
}

/* The index of the image of pix (n images ch x H x W) that row x is a crop
 * of: the image padded by `pad` black pixels, cropped back to H x W at an
 * offset within the padding, mirrored when allow_flip says it may be; -1 if
 * none. *moved counts a non-zero shift, *flipped a mirror. */
static int match_augmented(const float *x, const uint8_t *pix, int n, int ch, int H, int W,
                           int pad, int allow_flip, int *moved, int *flipped)
{
    size_t img = (size_t)ch * H * W;
    for (int k = 0; k < n; k++)
        for (int fl = 0; fl <= allow_flip; fl++)
            for (int dy = -pad; dy <= pad; dy++)
                for (int dx = -pad; dx <= pad; dx++) {
                    int ok = 1;
                    for (size_t q = 0; q < img && ok; q++) {
                        int c = (int)(q / ((size_t)H * W)), y = (int)(q / W % H), xx = (int)(q % W);
                        int sy = y + dy, sx = (fl ? W - 1 - xx : xx) + dx;
                        float want = sy < 0 || sy >= H || sx < 0 || sx >= W
                                         ? -1.0f
                                         : pix[k * img + ((size_t)c * H + sy) * W + sx] / 127.5f - 1.0f;
                        ok = fabsf(x[q] - want) < 1e-6f;
                    }
                    if (ok) {
                        *moved += dy || dx;
                        *flipped += fl;
                        return k;
                    }
                }
    return -1;
}

START_TEST(test_source_idx)
{
    vit_config c = { 6, 1, 3, 10, 1, 1, 4, 0, VIT_POOL_CLS };
    int n = 23, B = 4;
    uint8_t pix[23 * 36], lab[23];
    make_tmpdir();
    write_idx_images(tpath("train-images-idx3-ubyte"), 0x803, n, 6, 6, 0, 0, pix, SEED(100));
    write_idx_labels(tpath("train-labels-idx1-ubyte"), 0x801, n, 10, 0, lab, SEED(101));
    write_idx_images(tpath("t10k-images-idx3-ubyte"), 0x803, n, 6, 6, 0, 0, pix, SEED(100));
    write_idx_labels(tpath("t10k-labels-idx1-ubyte"), 0x801, n, 10, 0, lab, SEED(101));
    batch_source *s = open_source(&c, tmpdir, B, SPLIT_TRAIN, 0, 1, SEED(102));
    char err[ERRBUF];
    ck_assert_int_eq((int)s->epoch_batches(s), 5); /* floor(23 / 4) */
    /* every epoch: distinct images, each with its own label, scaled and
     * not augmented (grey images are neither shifted nor mirrored); the two
     * epochs in different orders */
    int order[2][20], moved = 0, flipped = 0;
    float first[4 * 36];
    for (int e = 0; e < 2; e++) {
        int seen[23] = { 0 };
        for (int j = 0; j < 5; j++) {
            ck_assert_int_eq(s->next(s, err), 0);
            if (e == 0 && j == 0)
                memcpy(first, s->batch.x, sizeof first);
            for (int i = 0; i < B; i++) {
                int idx = match_augmented(s->batch.x + i * 36, pix, n, 1, 6, 6, 0, 0, &moved,
                                          &flipped);
                ck_assert_msg(idx >= 0, "a batch row is no training image");
                ck_assert_int_eq(s->batch.targets[i], lab[idx]);
                ck_assert_int_eq(seen[idx]++, 0);
                order[e][j * B + i] = idx;
            }
        }
    }
    ck_assert(moved == 0 && flipped == 0);
    ck_assert(memcmp(order[0], order[1], sizeof order[0]) != 0);
    ck_assert_int_eq((int)s->position(s), 10);
    /* seek reproduces */
    s->seek(s, 0);
    ck_assert_int_eq(s->next(s, err), 0);
    ck_assert(memcmp(first, s->batch.x, sizeof first) == 0);
    s->close(s);
    /* two ranks read the one-rank stream's even and odd micro-batches */
    batch_source *all = open_source(&c, tmpdir, B, SPLIT_TRAIN, 0, 1, SEED(103));
    batch_source *r0 = open_source(&c, tmpdir, B, SPLIT_TRAIN, 0, 2, SEED(103));
    batch_source *r1 = open_source(&c, tmpdir, B, SPLIT_TRAIN, 1, 2, SEED(103));
    ck_assert_int_eq((int)r0->epoch_batches(r0), 3);
    ck_assert_int_eq((int)r1->epoch_batches(r1), 2);
    for (int g = 0; g < 12; g++) {
        batch_source *r = g % 2 ? r1 : r0;
        ck_assert_int_eq(all->next(all, err), 0);
        ck_assert_int_eq(r->next(r, err), 0);
        ck_assert(memcmp(all->batch.x, r->batch.x, B * 36 * sizeof(float)) == 0);
        ck_assert(memcmp(all->batch.targets, r->batch.targets, B * sizeof(int32_t)) == 0);
    }
    all->close(all);
    r0->close(r0);
    r1->close(r1);
    /* val: file order, ceil(23 / 4) = 6 batches, the last one's 1 missing row ignored */
    s = open_source(&c, tmpdir, B, SPLIT_VAL, 0, 1, SEED(104));
    ck_assert_int_eq((int)s->epoch_batches(s), 6);
    for (int j = 0; j < 7; j++) {
        ck_assert_int_eq(s->next(s, err), 0);
        for (int i = 0; i < B; i++) {
            int k = (j % 6) * B + i;
            if (k >= n) {
                ck_assert_int_eq(s->batch.targets[i], -1);
                continue;
            }
            ck_assert_int_eq(s->batch.targets[i], lab[k]);
            ck_assert(fabsf(s->batch.x[i * 36 + 7] - (pix[k * 36 + 7] / 127.5f - 1.0f)) < 1e-6f);
        }
    }
    s->close(s);
    /* wrong geometry, too few images */
    model fake;
    memset(&fake, 0, sizeof fake);
    vit_config big = { 8, 1, 4, 10, 1, 1, 4, 0, VIT_POOL_CLS };
    memcpy(fake.config, &big, sizeof big);
    data_spec spec = { .path = tmpdir, .B = 4, .world = 1, .split = SPLIT_TRAIN };
    ck_assert_ptr_null(vit_family.open_data(&fake, &spec, err));
    ck_assert_ptr_nonnull(strstr(err, "images are 1 x 6 x 6"));
    memcpy(fake.config, &c, sizeof c);
    spec.B = 24;
    ck_assert_ptr_null(vit_family.open_data(&fake, &spec, err));
    ck_assert_ptr_nonnull(strstr(err, "fewer than one micro-batch"));
    remove_tmpdir();
}
END_TEST

/* A new tmpdir holding n grey side x side images with labels as the
 * standard files of both splits (the same images in each): pix and lab get
 * them; seed and seed + 1 draw them. */
static void write_grey_dir(int n, int side, uint8_t *pix, uint8_t *lab, uint64_t seed)
{
    make_tmpdir();
    write_idx_images(tpath("train-images-idx3-ubyte"), 0x803, n, side, side, 0, 0, pix, seed);
    write_idx_labels(tpath("train-labels-idx1-ubyte"), 0x801, n, 10, 0, lab, seed + 1);
    write_idx_images(tpath("t10k-images-idx3-ubyte"), 0x803, n, side, side, 0, 0, pix, seed);
    write_idx_labels(tpath("t10k-labels-idx1-ubyte"), 0x801, n, 10, 0, lab, seed + 1);
}

/* --crop-pad and --flip (data_spec.augment) on grey images, which have no
 * default augmentation: each training row is its image shifted by at most
 * the padding and maybe mirrored, both seen; validation rows untouched; and
 * augment with pad 0 and no flip turns CIFAR's default off. */
START_TEST(test_source_augment_options)
{
    vit_config c = { 6, 1, 3, 10, 1, 1, 4, 0, VIT_POOL_CLS };
    int n = 9, B = 3;
    uint8_t pix[9 * 36], lab[9];
    char err[ERRBUF];
    model fake;
    memset(&fake, 0, sizeof fake);
    memcpy(fake.config, &c, sizeof c);
    write_grey_dir(n, 6, pix, lab, SEED(120));
    data_spec spec = { .path = tmpdir, .B = B, .world = 1, .shuffle = 1, .seed = SEED(122),
                       .split = SPLIT_TRAIN, .augment = 1, .crop_pad = 2, .flip = 1 };
    batch_source *s = vit_family.open_data(&fake, &spec, err);
    ck_assert_msg(s != NULL, "%s", err);
    int moved = 0, flipped = 0, far = 0;
    for (int j = 0; j < 20; j++) {
        ck_assert_int_eq(s->next(s, err), 0);
        for (int i = 0; i < B; i++) {
            int m0 = moved, k = match_augmented(s->batch.x + i * 36, pix, n, 1, 6, 6, 2, 1, &moved,
                                                &flipped);
            ck_assert_msg(k >= 0, "row %d of batch %d is no 2-pixel crop/flip of an image", i, j);
            ck_assert_int_eq(s->batch.targets[i], lab[k]);
            /* a shift of 2 is reachable: not only the default of 1 */
            if (moved > m0 && match_augmented(s->batch.x + i * 36, pix, n, 1, 6, 6, 1, 1, &m0,
                                              &m0) < 0)
                far++;
        }
    }
    ck_assert_msg(moved > 0 && flipped > 0 && far > 0, "moved %d flipped %d far %d", moved,
                  flipped, far);
    s->close(s);
    spec.split = SPLIT_VAL;
    s = vit_family.open_data(&fake, &spec, err);
    ck_assert_msg(s != NULL, "%s", err);
    ck_assert_int_eq(s->next(s, err), 0);
    for (int q = 0; q < B * 36; q++)
        ck_assert(fabsf(s->batch.x[q] - (pix[q] / 127.5f - 1.0f)) < 1e-6f);
    s->close(s);
    remove_tmpdir();
    /* CIFAR with augment on, pad 0, no flip: the images as they are */
    vit_config cc = { 32, 3, 8, 10, 1, 1, 4, 0, VIT_POOL_CLS };
    uint8_t *cp = malloc(4 * 3072), cl[4];
    memcpy(fake.config, &cc, sizeof cc);
    make_tmpdir();
    write_cifar(tpath("one.bin"), 4, 10, 0, cp, cl, SEED(123));
    data_spec off = { .path = tpath("one.bin"), .B = 4, .world = 1, .seed = SEED(124),
                      .split = SPLIT_TRAIN, .augment = 1 };
    s = vit_family.open_data(&fake, &off, err);
    ck_assert_msg(s != NULL, "%s", err);
    for (int j = 0; j < 3; j++) {
        ck_assert_int_eq(s->next(s, err), 0);
        for (int i = 0; i < 4; i++) {
            int mv = 0, fl = 0;
            ck_assert_int_eq(match_augmented(s->batch.x + i * 3072, cp, 4, 3, 32, 32, 0, 0, &mv, &fl),
                             i);
        }
    }
    s->close(s);
    free(cp);
    remove_tmpdir();
}
END_TEST

/* --erase P (data_spec.erase): with P = 1 every training row is its image
 * (shuffled, no crop or flip here) but for one rectangle of zeros, 1 to 7
 * pixels a side on 8 x 8 images, of 2-33% of the area give or take the
 * rounding of its sides, at more than one place and shape; P = 0 leaves the
 * batches exactly as without the option; P = 1/2 erases some rows and not
 * others; validation rows are never erased. */
START_TEST(test_source_random_erasing)
{
    vit_config c = { 8, 1, 4, 10, 1, 1, 4, 0, VIT_POOL_CLS };
    enum { n = 12, B = 4, HW = 64 };
    uint8_t pix[n * HW], lab[n];
    char err[ERRBUF];
    model fake;
    memset(&fake, 0, sizeof fake);
    memcpy(fake.config, &c, sizeof c);
    write_grey_dir(n, 8, pix, lab, SEED(130));
    data_spec spec = { .path = tmpdir, .B = B, .world = 1, .shuffle = 1, .seed = SEED(132),
                       .split = SPLIT_TRAIN, .augment = 1, .erase = 1 };
    batch_source *s = vit_family.open_data(&fake, &spec, err);
    ck_assert_msg(s != NULL, "%s", err);
    int shapes = 0, places = 0, last_h = -1, last_y = -1;
    for (int j = 0; j < 15; j++) {
        ck_assert_int_eq(s->next(s, err), 0);
        for (int i = 0; i < B; i++) {
            const float *x = s->batch.x + i * HW;
            int k = -1, y0 = 8, y1 = -1, x0 = 8, x1 = -1, zeros = 0;
            for (int q = 0; q < n && k < 0; q++) { /* the image: every pixel not erased equal */
                int ok = 1;
                for (int p = 0; p < HW && ok; p++)
                    ok = x[p] == 0.0f || fabsf(x[p] - (pix[q * HW + p] / 127.5f - 1.0f)) < 1e-6f;
                k = ok ? q : -1;
            }
            ck_assert_msg(k >= 0, "row %d of batch %d is no image with a rectangle erased", i, j);
            ck_assert_int_eq(s->batch.targets[i], lab[k]);
            for (int p = 0; p < HW; p++)
                if (x[p] == 0.0f) { /* (127.5 is no pixel value: a zero is erased) */
                    zeros++;
                    y0 = p / 8 < y0 ? p / 8 : y0, y1 = p / 8 > y1 ? p / 8 : y1;
                    x0 = p % 8 < x0 ? p % 8 : x0, x1 = p % 8 > x1 ? p % 8 : x1;
                }
            int h = y1 - y0 + 1, w = x1 - x0 + 1;
            ck_assert_msg(zeros > 0 && zeros == h * w, "row %d of batch %d: %d zeros in a %d x %d box",
                          i, j, zeros, h, w);
            ck_assert(h >= 1 && h <= 7 && w >= 1 && w <= 7 && zeros <= 0.33 * HW * 1.6);
            shapes += last_h >= 0 && h != last_h, places += last_y >= 0 && y0 != last_y;
            last_h = h, last_y = y0;
        }
    }
    ck_assert_msg(shapes > 0 && places > 0, "shapes %d places %d", shapes, places);
    s->close(s);
    /* erasing on draws after the crop and flip: their draws, and so the rows, unchanged */
    spec.erase = 0;
    spec.crop_pad = 1, spec.flip = 1;
    float plain[B * HW];
    batch_source *a = vit_family.open_data(&fake, &spec, err);
    ck_assert_msg(a != NULL, "%s", err);
    data_spec with = spec;
    with.erase = 1e-300; /* on, yet (almost) never drawn: the crop and flip draws unchanged */
    batch_source *b = vit_family.open_data(&fake, &with, err);
    ck_assert_msg(b != NULL, "%s", err);
    for (int j = 0; j < 5; j++) {
        ck_assert_int_eq(a->next(a, err), 0);
        ck_assert_int_eq(b->next(b, err), 0);
        memcpy(plain, a->batch.x, sizeof plain);
        ck_assert_mem_eq(plain, b->batch.x, sizeof plain);
    }
    a->close(a);
    b->close(b);
    /* P = 1/2: some rows erased, some not; validation never */
    spec.erase = 0.5, spec.crop_pad = 0, spec.flip = 0;
    s = vit_family.open_data(&fake, &spec, err);
    ck_assert_msg(s != NULL, "%s", err);
    int erased = 0;
    for (int j = 0; j < 15; j++) {
        ck_assert_int_eq(s->next(s, err), 0);
        for (int i = 0; i < B; i++) {
            int z = 0;
            for (int p = 0; p < HW; p++)
                z += s->batch.x[i * HW + p] == 0.0f;
            erased += z > 0;
        }
    }
    ck_assert_msg(erased > 10 && erased < 50, "%d of 60 rows erased at P = 1/2", erased);
    s->close(s);
    spec.split = SPLIT_VAL, spec.erase = 1;
    s = vit_family.open_data(&fake, &spec, err);
    ck_assert_msg(s != NULL, "%s", err);
    ck_assert_int_eq(s->next(s, err), 0);
    for (int q = 0; q < B * HW; q++)
        ck_assert(fabsf(s->batch.x[q] - (pix[q] / 127.5f - 1.0f)) < 1e-6f);
    s->close(s);
    remove_tmpdir();
}
END_TEST

/* CIFAR training batches are augmented: each row is its image shifted by at
 * most 4 pixels (black where it came from the padding) and maybe mirrored;
 * the same micro-batch index draws the same augmentation. */
START_TEST(test_source_cifar_augment)
{
    vit_config c = { 32, 3, 8, 10, 1, 1, 4, 0, VIT_POOL_CLS };
    uint8_t *pix = malloc(8 * 3072), lab[8];
    char err[ERRBUF];
    make_tmpdir();
    write_cifar(tpath("one.bin"), 8, 10, 0, pix, lab, SEED(110));
    batch_source *s = open_source(&c, tpath("one.bin"), 8, SPLIT_TRAIN, 0, 1, SEED(111));
    float *keep = malloc(8 * 3072 * sizeof *keep);
    int shifted = 0, flipped = 0;
    for (int j = 0; j < 6; j++) {
        ck_assert_int_eq(s->next(s, err), 0);
        if (j == 0)
            memcpy(keep, s->batch.x, 8 * 3072 * sizeof *keep);
        for (int i = 0; i < 8; i++) {
            int k = match_augmented(s->batch.x + i * 3072, pix, 8, 3, 32, 32, 4, 1, &shifted,
                                    &flipped);
            ck_assert_msg(k >= 0, "row %d of batch %d is no crop/flip of a training image", i, j);
            ck_assert_int_eq(s->batch.targets[i], lab[k]);
        }
    }
    /* 48 draws: some shift and some flip (all identity: 1 in 2^48 * 81^48) */
    ck_assert(shifted > 0 && flipped > 0);
    s->seek(s, 0);
    ck_assert_int_eq(s->next(s, err), 0);
    ck_assert(memcmp(keep, s->batch.x, 8 * 3072 * sizeof *keep) == 0);
    s->close(s);
    /* val: no augmentation */
    s = open_source(&c, tpath("one.bin"), 8, SPLIT_VAL, 0, 1, SEED(112));
    ck_assert_int_eq(s->next(s, err), 0);
    for (int q = 0; q < 8 * 3072; q++)
        ck_assert(fabsf(s->batch.x[q] - (pix[q] / 127.5f - 1.0f)) < 1e-6f);
    s->close(s);
    free(keep);
    free(pix);
    remove_tmpdir();
}
END_TEST

static Suite *vit_suite(void)
{
    Suite *s = suite_create("vit");
    TCase *tm = tcase_create("model");
    tcase_set_timeout(tm, 120);
    tcase_add_test(tm, test_patchify);
    /* 2: dropout; 3: no bias; 4: label smoothing; 5: mean pooling */
    tcase_add_loop_test(tm, test_gradcheck_fp64, 0, 6);
    tcase_add_test(tm, test_fp32_matches_fp64);
    tcase_add_test(tm, test_grads_accumulate);
    tcase_add_test(tm, test_overfit_one_batch);
    tcase_add_test(tm, test_presets);
    suite_add_tcase(s, tm);
    TCase *tf = tcase_create("files");
    tcase_set_timeout(tf, 60);
    tcase_add_loop_test(tf, test_read_idx, 0, 2);
    tcase_add_test(tf, test_read_cifar);
    tcase_add_test(tf, test_bad_idx);
    tcase_add_test(tf, test_bad_cifar);
    tcase_add_test(tf, test_source_idx);
    tcase_add_test(tf, test_source_cifar_augment);
    tcase_add_test(tf, test_source_augment_options);
    tcase_add_test(tf, test_source_random_erasing);
    suite_add_tcase(s, tf);
    return s;
}

int main(void)
{
    const char *env = getenv("ANATOMY_TEST_SEED");
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    base_seed = env ? strtoull(env, NULL, 0)
                    : (uint64_t)ts.tv_sec * 1000003u + (uint64_t)ts.tv_nsec;
    printf("test_vit: seed %llu (ANATOMY_TEST_SEED to replay)\n", (unsigned long long)base_seed);
    fflush(stdout);
    SRunner *sr = srunner_create(vit_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
