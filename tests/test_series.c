/* test_series.c: CSV time series and the two time-series families.
 *  - the CSV reader: a good file read back exactly; every kind of bad input
 *    (empty, header only, no numeric column, ragged row, non-number, NaN/inf)
 *    gives one line naming the file and the line
 *  - split borders of the ETT protocol and of other files, too short splits
 *  - normalisation statistics from the training split only, end to end
 *    through the batch source; windows, patches; the source's epochs,
 *    seek and evaluation padding
 *  - patchts and tsgpt: every parameter's gradient against central finite
 *    differences in fp64 through the op table; fp32 against fp64; RevIN's
 *    shift invariance; the loss equals the mse metric; patchts learns */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../data/errbuf.h"
#include "../data/series.h"
#include "../host/models/patchts.h"
#include "../host/models/transformer.h"
#include "gradcheck.h"
#include "testrand.h"

static uint64_t base_seed;
static char tmpdir[256];

#define SEED(k) (base_seed + (uint64_t)(k))

/* A file in this run's temporary directory with the given text. */
static const char *write_file(const char *name, const char *text)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    return path;
}

/* A CSV of `rows` rows of `ch` random columns (kept in vals [rows, ch]). */
static const char *write_random_csv(const char *name, int rows, int ch, float *vals)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "date");
    for (int c = 0; c < ch; c++)
        fprintf(f, ",col%d", c);
    fprintf(f, "\n");
    for (int r = 0; r < rows; r++) {
        fprintf(f, "2016-07-01 %02d:00:00", r % 24);
        for (int c = 0; c < ch; c++) {
            float v = (float)(10 * nrand() + c);
            if (vals)
                vals[(size_t)r * ch + c] = v;
            fprintf(f, ",%.9g", v);
        }
        fprintf(f, "\n");
    }
    fclose(f);
    return path;
}

START_TEST(test_csv_good)
{
    rng_seed(&test_rng, SEED(1));
    int rows = 50 + irand(100), ch = 1 + irand(9);
    float *vals = malloc((size_t)rows * ch * sizeof *vals);
    const char *path = write_random_csv("good.csv", rows, ch, vals);
    series_table t;
    char err[ERRBUF];
    ck_assert_msg(series_read_csv(path, &t, err) == 0, "%s", err);
    ck_assert_int_eq(t.rows, rows);
    ck_assert_int_eq(t.channels, ch);
    for (int c = 0; c < ch; c++) {
        char want[16];
        snprintf(want, sizeof want, "col%d", c);
        ck_assert_str_eq(t.names[c], want);
    }
    for (size_t i = 0; i < (size_t)rows * ch; i++)
        ck_assert_msg(t.values[i] == vals[i], "value %zu: %g read, %g written", i,
                      t.values[i], vals[i]);
    series_free(&t);
    /* CRLF line ends, no final newline, spaces around numbers */
    path = write_file("crlf.csv", "date,a,b\r\nx, 1.5 ,-2\r\ny,3e2,4");
    ck_assert_msg(series_read_csv(path, &t, err) == 0, "%s", err);
    ck_assert_int_eq(t.rows, 2);
    ck_assert(t.values[0] == 1.5f && t.values[1] == -2.0f && t.values[2] == 300.0f &&
              t.values[3] == 4.0f);
    ck_assert_str_eq(t.names[1], "b");
    series_free(&t);
    free(vals);
}
END_TEST

/* Each bad file gives -1 and an error naming the file and, where a line is
 * at fault, the line. */
START_TEST(test_csv_bad)
{
    static const struct { const char *name, *text, *want; } cases[] = {
        { "empty.csv", "", "empty file" },
        { "blank.csv", "\n\n", "empty file" },
        { "onlyheader.csv", "date,a,b\n", "no data rows" },
        { "nocols.csv", "date\n2016\n", "line 1: the header has no numeric columns" },
        { "ragged.csv", "date,a,b\nx,1,2\ny,3\nz,4,5\n", "line 3: 2 fields, the header has 3" },
        { "ragged2.csv", "date,a,b\nx,1,2\ny,3,4,5\n", "line 3: 4 fields, the header has 3" },
        { "emptyline.csv", "date,a,b\nx,1,2\n\ny,3,4\n", "line 3: 1 fields, the header has 3" },
        { "word.csv", "date,a,b\nx,1,2\ny,3,abc\n", "line 3: column 3 (b): 'abc' is not" },
        { "suffix.csv", "date,a,b\nx,1.5x,2\n", "line 2: column 2 (a): '1.5x' is not" },
        { "emptyfield.csv", "date,a,b\nx,1,2\ny,,2\n", "line 3: column 2 (a): '' is not" },
        { "nan.csv", "date,a,b\nx,nan,2\n", "line 2: column 2 (a): 'nan' is not a finite" },
        { "inf.csv", "date,a,b\nx,1,2\nx,1,-inf\n", "line 3: column 3 (b): '-inf' is not" },
        { "huge.csv", "date,a\nx,1e39\n", "line 2: column 2 (a): '1e39' is not" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *path = write_file(cases[i].name, cases[i].text);
        series_table t;
        char err[ERRBUF] = "";
        ck_assert_msg(series_read_csv(path, &t, err) == -1, "%s was accepted", cases[i].name);
        ck_assert_msg(strstr(err, path) == err, "%s: error does not start with the path: %s",
                      cases[i].name, err);
        ck_assert_msg(strstr(err, cases[i].want), "%s: got '%s', want '%s'", cases[i].name, err,
                      cases[i].want);
        ck_assert_msg(!strchr(err, '\n'), "multi-line error: %s", err);
        ck_assert_ptr_null(t.values);
    }
    series_table t;
    char err[ERRBUF], path[300];
    snprintf(path, sizeof path, "%s/missing.csv", tmpdir);
    ck_assert_int_eq(series_read_csv(path, &t, err), -1);
    ck_assert_msg(strstr(err, "missing.csv: No such file"), "%s", err);
}
END_TEST

START_TEST(test_split_borders)
{
    rng_seed(&test_rng, SEED(2));
    char err[ERRBUF];
    int first, count;
    for (int k = 0; k < 20; k++) {
        int Lb = 1 + irand(720), H = 1 + irand(720);
        int rows = 14400 + irand(4000);
        /* ETTh: 12/4/4 months of hours; every split's first target is the
         * split's first row */
        ck_assert_int_eq(series_split("d/ETTh1.csv", rows, SERIES_TRAIN, Lb, H, &first, &count,
                                      err), 0);
        ck_assert_int_eq(first, 0);
        ck_assert_int_eq(count, 8640 - Lb - H + 1);
        ck_assert_int_eq(series_split("d/ETTh1.csv", rows, SERIES_VAL, Lb, H, &first, &count,
                                      err), 0);
        ck_assert_int_eq(first + Lb, 8640);
        ck_assert_int_eq(first + count - 1 + Lb + H, 11520); /* last target: the split's last row */
        ck_assert_int_eq(series_split("ETTh2.csv", rows, SERIES_TEST, Lb, H, &first, &count,
                                      err), 0);
        ck_assert_int_eq(first + Lb, 11520);
        ck_assert_int_eq(first + count - 1 + Lb + H, 14400);
        /* ETTm: four rows an hour */
        ck_assert_int_eq(series_split("x/ETTm1.csv", 4 * rows, SERIES_TEST, Lb, H, &first,
                                      &count, err), 0);
        ck_assert_int_eq(first + Lb, 4 * 11520);
        ck_assert_int_eq(count, 4 * 2880 - H + 1);
    }
    /* the standard ETTh1 test set at horizon 96: 2785 windows */
    ck_assert_int_eq(series_split("ETTh1.csv", 17420, SERIES_TEST, 336, 96, &first, &count,
                                  err), 0);
    ck_assert_int_eq(count, 2785);
    ck_assert_int_eq(first, 11520 - 336);
    /* other files: 70% / 10% / 20% */
    int b[4];
    ck_assert_int_eq(series_borders("custom.csv", 1000, b, err), 0);
    ck_assert(b[0] == 0 && b[1] == 700 && b[2] == 800 && b[3] == 1000);
    /* too short: ETT file with too few rows; a split without room for a window */
    ck_assert_int_eq(series_borders("ETTh1.csv", 14399, b, err), -1);
    ck_assert_msg(strstr(err, "ETTh1.csv: 14399 rows"), "%s", err);
    ck_assert_int_eq(series_split("short.csv", 100, SERIES_VAL, 10, 11, &first, &count, err),
                     -1);
    ck_assert_msg(strstr(err, "short.csv: the val split") && strstr(err, "too short"), "%s",
                  err);
    ck_assert_int_eq(series_split("short.csv", 100, SERIES_TRAIN, 60, 11, &first, &count, err),
                     -1);
    ck_assert_int_eq(series_split("short.csv", 100, SERIES_TRAIN, 60, 10, &first, &count, err),
                     0);
    ck_assert_int_eq(count, 1);
}
END_TEST

/* The series source normalises every split with the training split's
 * statistics: the test split is shifted and scaled far away so that any
 * statistic including it would show. */
START_TEST(test_normalisation_train_only)
{
    rng_seed(&test_rng, SEED(3));
    int rows = 200, ch = 3, Lb = 8, H = 4;
    float *vals = malloc((size_t)rows * ch * sizeof *vals);
    char path[512];
    snprintf(path, sizeof path, "%s/norm.csv", tmpdir);
    FILE *f = fopen(path, "wb");
    fprintf(f, "date,a,b,c\n");
    for (int r = 0; r < rows; r++) {
        fprintf(f, "t%d", r);
        for (int c = 0; c < ch; c++) {
            float v = (float)(r >= 140 ? 1000 + 50 * nrand() : (c + 1) * nrand() + 3 * c);
            vals[(size_t)r * ch + c] = v;
            fprintf(f, ",%.9g", v);
        }
        fprintf(f, "\n");
    }
    fclose(f);
    double mean[3], sd[3];
    for (int c = 0; c < ch; c++) {
        double s = 0, ss = 0;
        for (int r = 0; r < 140; r++)
            s += vals[(size_t)r * ch + c];
        mean[c] = s / 140;
        for (int r = 0; r < 140; r++)
            ss += pow(vals[(size_t)r * ch + c] - mean[c], 2);
        sd[c] = sqrt(ss / 140);
    }
    /* series_stats over the training rows */
    series_table t;
    char err[ERRBUF];
    ck_assert_msg(series_read_csv(path, &t, err) == 0, "%s", err);
    double m2[3], s2[3];
    series_stats(&t, 140, m2, s2);
    for (int c = 0; c < ch; c++) {
        ck_assert_double_eq_tol(m2[c], mean[c], 1e-9 * (1 + fabs(mean[c])));
        ck_assert_double_eq_tol(s2[c], sd[c], 1e-9 * sd[c]);
    }
    series_free(&t);
    /* the test split through the source: windows start Lb rows before row 160 */
    data_spec spec = { .path = path, .B = 5, .T = 0, .rank = 0, .world = 1, .shuffle = 0,
                       .seed = 1, .split = SPLIT_TEST };
    batch_source *src = series_source_open(&spec, ch, Lb, H, err);
    ck_assert_msg(src != NULL, "%s", err);
    ck_assert_int_eq(src->next(src, err), 0);
    for (int i = 0; i < 5; i++)
        for (int c = 0; c < ch; c++) {
            for (int k = 0; k < Lb; k++) {
                double want = (vals[(size_t)(160 - Lb + i + k) * ch + c] - mean[c]) / sd[c];
                double got = src->batch.x[((size_t)i * ch + c) * Lb + k];
                ck_assert_double_eq_tol(got, want, 1e-5 * (1 + fabs(want)));
            }
            for (int k = 0; k < H; k++) {
                double want = (vals[(size_t)(160 + i + k) * ch + c] - mean[c]) / sd[c];
                double got = src->batch.y[((size_t)i * ch + c) * H + k];
                ck_assert_double_eq_tol(got, want, 1e-5 * (1 + fabs(want)));
            }
        }
    src->close(src);
    /* a model with another channel count is refused, naming the file */
    ck_assert_ptr_null(series_source_open(&spec, 4, Lb, H, err));
    ck_assert_msg(strstr(err, "norm.csv: 3 numeric columns, the model has 4"), "%s", err);
    /* a split too short for one window, named */
    ck_assert_ptr_null(series_source_open(&spec, ch, 30, 41, err));
    ck_assert_msg(strstr(err, "norm.csv: the test split") && strstr(err, "too short"), "%s",
                  err);
    free(vals);
}
END_TEST

START_TEST(test_windows_and_patches)
{
    rng_seed(&test_rng, SEED(4));
    /* PatchTST's ETTh1 setting: 336 steps, P 16, S 8, end padding -> 42 patches */
    ck_assert_int_eq(series_patch_count(336, 16, 8, 1), 42);
    ck_assert_int_eq(series_patch_count(336, 16, 8, 0), 41);
    ck_assert_int_eq(series_patch_count(512, 16, 8, 1), 64);
    ck_assert_int_eq(series_patch_count(10, 11, 1, 0), 0);
    for (int k = 0; k < 50; k++) {
        int n = 2 + irand(60), len = 1 + irand(n), stride = 1 + irand(10), pad = irand(2);
        float *w = malloc((size_t)n * sizeof *w);
        for (int i = 0; i < n; i++)
            w[i] = (float)nrand();
        int np = series_patch_count(n, len, stride, pad);
        /* the padded window has n + stride values when padded; patches of len
         * at every stride that fit */
        int m = n + (pad ? stride : 0), want = 0;
        for (int s = 0; s + len <= m; s += stride)
            want++;
        ck_assert_int_eq(np, want);
        float *out = malloc((size_t)np * len * sizeof *out);
        series_patch(w, n, len, stride, pad, out);
        for (int p = 0; p < np; p++)
            for (int j = 0; j < len; j++) {
                int i = p * stride + j;
                ck_assert(out[p * len + j] == (i < n ? w[i] : w[n - 1]));
            }
        free(w);
        free(out);
    }
    /* windows are channel-major copies of consecutive rows */
    series_table t = { .rows = 30, .channels = 3 };
    t.values = malloc(90 * sizeof *t.values);
    for (int i = 0; i < 90; i++)
        t.values[i] = (float)nrand();
    float x[3 * 7], y[3 * 4];
    int start = irand(30 - 11 + 1);
    series_window(&t, start, 7, 4, x, y);
    for (int c = 0; c < 3; c++) {
        for (int i = 0; i < 7; i++)
            ck_assert(x[c * 7 + i] == t.values[(start + i) * 3 + c]);
        for (int j = 0; j < 4; j++)
            ck_assert(y[c * 4 + j] == t.values[(start + 7 + j) * 3 + c]);
    }
    free(t.values);
}
END_TEST

/* Training: each epoch visits every window once, in an order that seek()
 * reproduces; ranks split the micro-batches. Evaluation: every window once
 * per pass, the last micro-batch padded with y = NaN rows. */
START_TEST(test_source_epochs)
{
    rng_seed(&test_rng, SEED(5));
    int rows = 300, ch = 2, Lb = 6, H = 3, B = 7;
    float *vals = malloc((size_t)rows * ch * sizeof *vals);
    char path[512];
    snprintf(path, sizeof path, "%s", write_random_csv("epochs.csv", rows, ch, vals));
    char err[ERRBUF];
    data_spec spec = { .path = path, .B = B, .rank = 0, .world = 1, .shuffle = 1,
                       .seed = SEED(6), .split = SPLIT_TRAIN };
    batch_source *a = series_source_open(&spec, ch, Lb, H, err);
    ck_assert_msg(a != NULL, "%s", err);
    int nwin = 210 - Lb - H + 1;
    /* identify a window by its first x value (random floats: distinct) */
    int seen_total = 0, order_same = 1;
    float *firsts = malloc((size_t)nwin * 3 * sizeof *firsts);
    for (int j = 0; seen_total < 3 * nwin; j++) {
        ck_assert_int_eq(a->next(a, err), 0);
        for (int i = 0; i < B && seen_total < 3 * nwin; i++)
            firsts[seen_total++] = a->batch.x[(size_t)i * ch * Lb];
    }
    for (int e = 0; e < 3; e++) {
        /* each epoch: nwin distinct windows */
        for (int i = 0; i < nwin; i++)
            for (int k = 0; k < i; k++)
                ck_assert(firsts[e * nwin + i] != firsts[e * nwin + k]);
    }
    for (int i = 0; i < nwin; i++)
        order_same &= firsts[i] == firsts[nwin + i];
    ck_assert_msg(!order_same, "two epochs in the same order");
    /* seek reproduces, and rank 1 of 2 reads global micro-batches 1, 3, ... */
    float *want = malloc((size_t)B * ch * Lb * sizeof *want);
    a->seek(a, 5);
    ck_assert_int_eq(a->next(a, err), 0);
    memcpy(want, a->batch.x, (size_t)B * ch * Lb * sizeof *want);
    a->seek(a, 0);
    for (int j = 0; j < 6; j++)
        a->next(a, err);
    ck_assert(memcmp(want, a->batch.x, (size_t)B * ch * Lb * sizeof *want) == 0);
    ck_assert_uint_eq(a->position(a), 6);
    spec.rank = 1;
    spec.world = 2;
    batch_source *r1 = series_source_open(&spec, ch, Lb, H, err);
    r1->seek(r1, 2); /* global 5 */
    r1->next(r1, err);
    ck_assert(memcmp(want, r1->batch.x, (size_t)B * ch * Lb * sizeof *want) == 0);
    r1->close(r1);
    a->close(a);
    /* evaluation: val split, every window once, then NaN padding */
    spec = (data_spec){ .path = path, .B = B, .rank = 0, .world = 1, .shuffle = 1,
                        .seed = 3, .split = SPLIT_VAL };
    batch_source *v = series_source_open(&spec, ch, Lb, H, err);
    int vwin = 30 - H + 1;
    uint64_t nb = v->epoch_batches(v);
    ck_assert_uint_eq(nb, (uint64_t)(vwin + B - 1) / B);
    int real = 0, padded = 0;
    for (uint64_t j = 0; j < nb; j++) {
        v->next(v, err);
        for (int i = 0; i < B; i++) {
            int w = (int)j * B + i;
            float y0 = v->batch.y[(size_t)i * ch * H];
            if (w < vwin) {
                real++;
                ck_assert(isfinite(y0));
            } else {
                padded++;
                ck_assert(isnan(y0));
                ck_assert(isfinite(v->batch.x[(size_t)i * ch * Lb]));
            }
        }
    }
    ck_assert_int_eq(real, vwin);
    ck_assert_int_eq(padded, (int)nb * B - vwin);
    v->close(v);
    free(want);
    free(firsts);
    free(vals);
}
END_TEST

/* ---- the models ---- */

static const patchts_config pts_tiny = { .channels = 2, .lookback = 12, .horizon = 5,
                                         .patch = 4, .stride = 3, .pad = 1, .L = 2, .NH = 2,
                                         .C = 8 };
static const tsgpt_config tsg_tiny = { .channels = 2, .lookback = 6, .horizon = 4, .bins = 16,
                                       .samples = 5, .L = 2, .NH = 2, .C = 8 };

static double rel_l2(const double *a, const double *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return sqrt(num / (den > 0 ? den : 1e-300));
}

/* A random batch of B windows; row `pad_row` (if >= 0) is evaluation padding. */
static void random_series_batch(float *x, float *y, int B, int ch, int Lb, int H, int pad_row)
{
    for (int b = 0; b < B; b++)
        for (int c = 0; c < ch; c++) {
            double level = 2 * nrand(), amp = 0.5 + urand();
            for (int i = 0; i < Lb; i++)
                x[((size_t)b * ch + c) * Lb + i] = (float)(level + amp * nrand());
            for (int j = 0; j < H; j++)
                y[((size_t)b * ch + c) * H + j] =
                    b == pad_row ? NAN : (float)(level + amp * nrand());
        }
}

/* dropout: the model's drop probability during the check (0: none);
 * loss_kind, delta: the model's regression loss (patchts; LOSS_MSE for
 * tsgpt, which has none); training: m->training during the check (batchnorm:
 * 1 differentiates through the batch's statistics, 0 with the running ones,
 * moved from their initial values by a training forward first) */
static void gradcheck_mode(const model_family *fam, const int *cfg, int ch, int Lb, int H, int B,
                           double tol, float dropout, int loss_kind, double delta, int training)
{
    char err[ERRBUF];
    backend *be = backend_cpu64_create(1, err);
    ck_assert_msg(be != NULL, "%s", err);
    model *m = fam->create(be, cfg, err);
    ck_assert_msg(m != NULL, "%s", err);
    ck_assert_msg(m->plan(m, B, 0, err) == 0, "%s", err);
    m->loss_kind = loss_kind;
    m->huber_delta = delta;
    size_t n = m->nparams;
    double *p = malloc(n * sizeof *p), *g = malloc(n * sizeof *g), *fd = malloc(n * sizeof *fd);
    float *x = malloc((size_t)B * ch * Lb * sizeof *x), *y = malloc((size_t)B * ch * H * sizeof *y);
    for (size_t i = 0; i < n; i++)
        p[i] = 0.3 * nrand();
    random_series_batch(x, y, B, ch, Lb, H, B - 1);
    model_batch b = { .x = x, .y = y };
    if (!training && m->nstate) { /* running statistics that are not torch's initial ones */
        m->training = 1;
        model_loss_grad(m, p, &b, NULL);
    }
    m->training = training;
    if (dropout > 0) { /* a fixed mask: still a smooth function */
        double plain = model_loss_grad(m, p, &b, NULL);
        m->dropout = dropout;
        m->dropout_seed = rnext();
        ck_assert_msg(fabs(model_loss_grad(m, p, &b, NULL) - plain) > 1e-6,
                      "%s: dropout %g leaves the loss at %.9f", fam->name, dropout, plain);
    }
    double loss = model_loss_grad(m, p, &b, g);
    if (loss_kind != LOSS_MSE) { /* the loss of the data's errors, which metrics give */
        double sums[4] = { 0 }, counts[4] = { 0 };
        m->metrics(m, &b, sums, counts);
        double mse = sums[0] / counts[0], mae = sums[1] / counts[1];
        if (loss_kind == LOSS_MAE)
            ck_assert_double_eq_tol(loss, mae, 1e-12 * mae);
        /* Huber: strictly between its value with every error beyond delta
         * (delta (mae - delta / 2), below it elsewhere) and with every error
         * inside (mse / 2, above it elsewhere): both branches are checked */
        if (loss_kind == LOSS_HUBER)
            ck_assert_msg(loss < mse / 2 - 1e-9 && loss > delta * (mae - delta / 2) + 1e-9,
                          "huber %.9g, mse/2 %.9g, linear %.9g", loss, mse / 2,
                          delta * (mae - delta / 2));
    }
    /* extrapolated (gradcheck.h): a plain central difference at 1e-5 erred by
     * 1.16e-7 on a batchnorm case (seed 1796575543180362, statistics of 3
     * rows), scaling as h^2 */
    const double h = 1e-5;
    model_fd_gradient(fd, m, p, &b, h);
    double e = rel_l2(g, fd, n);
    ck_assert_msg(e < tol, "%s gradient vs finite differences: rel L2 %g", fam->name, e);
    /* every view gets some gradient (none silently unconnected) */
    for (int k = 0; k < m->nviews; k++) {
        double s = 0;
        const param_view *v = &m->views[k];
        for (size_t i = 0; i < v->count; i++)
            s += fabs(g[v->offset + i]);
        int padded_rows = strcmp(v->name, "wte.weight") == 0;
        ck_assert_msg(s > 0 || padded_rows, "%s: view %s has zero gradient", fam->name, v->name);
    }
    /* padding rows (evaluation only: a training batch has none, and its
     * batch statistics would see them): changing their x changes nothing */
    m->training = 0;
    double l0 = model_loss_grad(m, p, &b, NULL);
    for (int i = 0; i < ch * Lb; i++)
        x[(size_t)(B - 1) * ch * Lb + i] += (float)nrand();
    ck_assert_double_eq(model_loss_grad(m, p, &b, NULL), l0);
    free(p);
    free(g);
    free(fd);
    free(x);
    free(y);
    m->destroy(m);
    be->destroy(be);
}

static void gradcheck(const model_family *fam, const int *cfg, int ch, int Lb, int H, int B,
                      double tol, float dropout, int loss_kind, double delta)
{
    gradcheck_mode(fam, cfg, ch, Lb, H, B, tol, dropout, loss_kind, delta, 1);
}

START_TEST(test_patchts_gradcheck_fp64)
{
    rng_seed(&test_rng, SEED(10 + _i));
    patchts_config c = pts_tiny;
    /* _i = 0, 1: without and with end padding; 2: with dropout; 3, 4: post-LN
     * blocks, without and with dropout; 5, 6: without biases (--no-bias),
     * pre-LN and post-LN; 7, 8: the absolute and Huber losses (post-LN, with
     * dropout for Huber) */
    c.pad = _i & 1;
    c.post_ln = _i >= 3 && _i != 5;
    c.nobias = _i == 5 || _i == 6;
    int kind = _i == 7 ? LOSS_MAE : _i == 8 ? LOSS_HUBER : LOSS_MSE;
    gradcheck(&patchts_family, (const int *)&c, c.channels, c.lookback, c.horizon, 3, 1e-7,
              _i == 2 || _i == 4 || _i == 8 ? 0.3f : 0.0f, kind, 0.5);
}
END_TEST

/* --norm batch (post-LN blocks with batchnorm): _i = 0: training (through the
 * batch statistics); 1: with dropout; 2: without biases; 3: evaluation mode
 * (the running statistics, constants). */
START_TEST(test_patchts_batchnorm_gradcheck_fp64)
{
    rng_seed(&test_rng, SEED(70 + _i));
    patchts_config c = pts_tiny;
    c.post_ln = 1;
    c.norm = TSTACK_NORM_BATCH;
    c.nobias = _i == 2;
    gradcheck_mode(&patchts_family, (const int *)&c, c.channels, c.lookback, c.horizon, 3, 1e-7,
                   _i == 1 ? 0.3f : 0.0f, LOSS_MSE, 1.0, _i != 3);
}
END_TEST

START_TEST(test_tsgpt_gradcheck_fp64)
{
    rng_seed(&test_rng, SEED(20));
    const tsgpt_config *c = &tsg_tiny;
    gradcheck(&tsgpt_family, (const int *)c, c->channels, c->lookback, c->horizon, 3, 1e-7,
              0.0f, LOSS_MSE, 1.0);
    gradcheck(&tsgpt_family, (const int *)c, c->channels, c->lookback, c->horizon, 3, 1e-7,
              0.3f, LOSS_MSE, 1.0);
    /* without biases (--no-bias): the stack's views are the weights alone */
    tsgpt_config nb = *c;
    nb.nobias = 1;
    gradcheck(&tsgpt_family, (const int *)&nb, c->channels, c->lookback, c->horizon, 3, 1e-7,
              0.0f, LOSS_MSE, 1.0);
}
END_TEST

/* fp32 backend against the fp64 oracle; and the loss is the mse metric.
 * _i = 0: pre-LN; 1: post-LN; 2: post-LN with batchnorm (training forwards). */
START_TEST(test_patchts_fp32_and_metrics)
{
    rng_seed(&test_rng, SEED(30 + _i));
    char err[ERRBUF];
    patchts_config c = { 3, 48, 24, 8, 4, 1, 2, 2, 16, .post_ln = _i > 0,
                         .norm = _i == 2 ? TSTACK_NORM_BATCH : TSTACK_NORM_LAYER };
    backend *b64 = backend_cpu64_create(0, err), *b32 = backend_cpu_create(0, err);
    model *m64 = patchts_family.create(b64, (int *)&c, err);
    model *m32 = patchts_family.create(b32, (int *)&c, err);
    m64->training = m32->training = 1;
    int B = 5;
    ck_assert_int_eq(m64->plan(m64, B, 0, err), 0);
    ck_assert_int_eq(m32->plan(m32, B, 0, err), 0);
    size_t np = m64->nparams;
    float *pf = malloc((np + m64->nstate) * sizeof *pf); /* init writes the state after */
    double *g64 = malloc(np * sizeof *g64), *g32 = malloc(np * sizeof *g32);
    float *x = malloc((size_t)B * 3 * 48 * sizeof *x), *y = malloc((size_t)B * 3 * 24 * sizeof *y);
    patchts_family.init((int *)&c, pf, SEED(31));
    random_series_batch(x, y, B, 3, 48, 24, 4);
    model_set_params(m64, pf);
    model_set_params(m32, pf);
    model_set_state(m64, pf + np);
    model_set_state(m32, pf + np);
    model_batch b = { .x = x, .y = y };
    double l64 = m64->forward(m64, &b, 1.0f), l32 = m32->forward(m32, &b, 1.0f);
    m64->backward(m64);
    m32->backward(m32);
    b64->download(b64, g64, DT_F64, m64->grads, b64->act, np);
    b32->download(b32, g32, DT_F64, m32->grads, b32->act, np);
    ck_assert_msg(fabs(l32 - l64) / fabs(l64) < 1e-5, "loss fp32 %.9f fp64 %.9f", l32, l64);
    double e = rel_l2(g32, g64, np);
    ck_assert_msg(e < 1e-5, "gradients fp32 vs fp64: rel L2 %g", e);
    /* metrics: mse equals the loss; mae checked against the de-normalised
     * forecast computed from scratch is the parity test's job (tests/ref) */
    double sums[4] = { 0 }, counts[4] = { 0 };
    m64->forward(m64, &b, 0.0f);
    m64->metrics(m64, &b, sums, counts);
    ck_assert_double_eq(counts[0], 4.0 * 3 * 24);
    ck_assert_double_eq_tol(sums[0] / counts[0], l64, 1e-12 * l64);
    ck_assert(sums[1] > 0 && sums[1] / counts[1] <= sqrt(l64) + 1e-12);
    /* the forecast CSV holds the same forecasts (6 digits) */
    char *buf;
    size_t len;
    FILE *f = open_memstream(&buf, &len);
    ck_assert_int_eq(patchts_write_forecast(m64, f), 0);
    fclose(f);
    double se = 0;
    int lines = 0;
    for (char *q = buf; *q; q = strchr(q, '\n') + 1, lines++) {
        int r, j;
        double fc, tg;
        ck_assert_int_eq(sscanf(q, "%d,%d,%lf,%lf", &r, &j, &fc, &tg), 4);
        ck_assert(r < 4 * 3 && j < 24);
        se += (fc - tg) * (fc - tg);
    }
    ck_assert_int_eq(lines, 4 * 3 * 24);
    ck_assert_double_eq_tol(se / lines, l64, 1e-4 * l64);
    free(buf);
    free(pf);
    free(g64);
    free(g32);
    free(x);
    free(y);
    m64->destroy(m64);
    m32->destroy(m32);
    b64->destroy(b64);
    b32->destroy(b32);
}
END_TEST

/* RevIN: shifting a window and its target by the same constant leaves the
 * loss unchanged (the model sees the window minus its own mean). */
START_TEST(test_patchts_revin_shift)
{
    rng_seed(&test_rng, SEED(40));
    char err[ERRBUF];
    const patchts_config *c = &pts_tiny;
    backend *be = backend_cpu64_create(1, err);
    model *m = patchts_family.create(be, (const int *)c, err);
    int B = 4, nx = B * c->channels * c->lookback, ny = B * c->channels * c->horizon;
    ck_assert_int_eq(m->plan(m, B, 0, err), 0);
    float *pf = malloc(m->nparams * sizeof *pf), *x = malloc(nx * sizeof *x),
          *y = malloc(ny * sizeof *y);
    patchts_family.init((const int *)c, pf, SEED(41));
    model_set_params(m, pf);
    random_series_batch(x, y, B, c->channels, c->lookback, c->horizon, -1);
    model_batch b = { .x = x, .y = y };
    double l0 = m->forward(m, &b, 0.0f);
    float shift = (float)(5 * nrand());
    for (int i = 0; i < nx; i++)
        x[i] += shift;
    for (int i = 0; i < ny; i++)
        y[i] += shift;
    double l1 = m->forward(m, &b, 0.0f);
    ck_assert_msg(fabs(l1 - l0) < 1e-5 * l0, "loss %g, shifted by %g: %g", l0, shift, l1);
    free(pf);
    free(x);
    free(y);
    m->destroy(m);
    be->destroy(be);
}
END_TEST

/* It learns: a sine of random phase per row, forecast after AdamW steps. */
START_TEST(test_patchts_learns)
{
    rng_seed(&test_rng, SEED(50));
    char err[ERRBUF];
    patchts_config c = { 1, 32, 8, 8, 4, 1, 1, 2, 16, 0, 0, 0 };
    backend *be = backend_cpu_create(0, err);
    model *m = patchts_family.create(be, (int *)&c, err);
    int B = 16;
    ck_assert_int_eq(m->plan(m, B, 0, err), 0);
    float *p = malloc(m->nparams * sizeof *p), x[16 * 32], y[16 * 8];
    patchts_family.init((int *)&c, p, SEED(51));
    model_set_params(m, p);
    double first = 0, loss = 0;
    for (int step = 1; step <= 300; step++) {
        for (int b = 0; b < B; b++) {
            double ph = 6.283 * urand(), amp = 0.5 + urand(), off = nrand();
            for (int i = 0; i < 40; i++) {
                float v = (float)(off + amp * sin(ph + 0.4 * i));
                if (i < 32)
                    x[b * 32 + i] = v;
                else
                    y[b * 8 + i - 32] = v;
            }
        }
        model_batch bt = { .x = x, .y = y };
        model_zero_grad(m);
        loss = m->forward(m, &bt, 1.0f);
        if (step == 1)
            first = loss;
        m->backward(m);
        adamw_params hp = { 3e-3f, 0.9f, 0.95f, 1e-8f, 0.0f, step, 1.0f, 0, 0 };
        be->adamw(be, m->params, m->master, m->grads, m->m, m->v, m->segs, m->nsegs, &hp);
    }
    ck_assert_msg(loss < 0.02 && loss < first / 10, "loss %g after 300 steps (first %g)", loss,
                  first);
    free(p);
    m->destroy(m);
    be->destroy(be);
}
END_TEST

/* tsgpt's tokenizer and its sampled forecast's shape and metrics. */
START_TEST(test_tsgpt_tokens_and_forecast)
{
    rng_seed(&test_rng, SEED(60));
    for (int k = 0; k < 1000; k++) {
        int bins = 2 + irand(4000);
        double v = 20 * (urand() - 0.5);
        int b = tsgpt_bin(v, bins);
        ck_assert(b >= 0 && b < bins);
        if (fabs(v) < 8)
            ck_assert(fabs(tsgpt_unbin(b, bins) - v) <= 8.0 / bins + 1e-12);
    }
    ck_assert_int_eq(tsgpt_bin(NAN, 10), 0);
    ck_assert_int_eq(tsgpt_bin(1e9, 10), 9);
    float z[4] = { 0 }, w[4] = { 1, -3, 2, -2 };
    ck_assert_double_eq(tsgpt_scale(z, 4), 1.0);
    ck_assert_double_eq(tsgpt_scale(w, 4), 2.0);
    char err[ERRBUF];
    backend *be = backend_cpu_create(0, err);
    const tsgpt_config *c = &tsg_tiny;
    model *m = tsgpt_family.create(be, (const int *)c, err);
    int B = 3, ch = c->channels;
    ck_assert_int_eq(m->plan(m, B, 0, err), 0);
    float *p = malloc(m->nparams * sizeof *p), x[3 * 2 * 6], y[3 * 2 * 4];
    tsgpt_family.init((const int *)c, p, SEED(61));
    model_set_params(m, p);
    random_series_batch(x, y, B, ch, c->lookback, c->horizon, 2);
    model_batch b = { .x = x, .y = y };
    double loss = m->forward(m, &b, 0.0f);
    ck_assert_msg(fabs(loss - log(16.0)) < 0.5, "initial loss %g, ln 16 = %g", loss, log(16.0));
    double sums[4] = { 0 }, counts[4] = { 0 };
    m->metrics(m, &b, sums, counts);
    ck_assert_double_eq(counts[0], 2.0 * ch * c->horizon);
    ck_assert(isfinite(sums[0]) && sums[0] > 0 && sums[1] > 0);
    char *buf;
    size_t len;
    FILE *f = open_memstream(&buf, &len);
    ck_assert_int_eq(tsgpt_write_forecast(m, f), 0);
    fclose(f);
    int lines = 0;
    for (size_t i = 0; i < len; i++)
        lines += buf[i] == '\n';
    ck_assert_int_eq(lines, 2 * ch * c->horizon);
    /* q10 <= median <= q90 on every line, and a mean */
    char *s = buf;
    for (int i = 0; i < lines; i++) {
        int r, j;
        double md, lo, hi, mean, yv;
        ck_assert_int_eq(sscanf(s, "%d,%d,%lf,%lf,%lf,%lf,%lf", &r, &j, &md, &lo, &hi, &mean, &yv),
                         7);
        ck_assert(lo <= md && md <= hi && isfinite(mean));
        s = strchr(s, '\n') + 1;
    }
    free(buf);
    free(p);
    m->destroy(m);
    be->destroy(be);
}
END_TEST

/* tsgpt's batched, cached forecast (every row and path in one decoding batch,
 * the paths of a row reading its look-back from one shared cache prefix)
 * equals the reference that runs a full forward per path and value: the
 * same draws, the same bins, so the same median and quantiles. fp64 so that
 * no logit rounds differently; with and without biases; weights away from
 * init so that the bins spread. Shapes: several paths per row, one path (the
 * prefix row is the sequence), an odd look-back, and a horizon of one value
 * (no position after the prefix is ever cached). */
START_TEST(test_tsgpt_cached_forecast_matches_uncached)
{
    rng_seed(&test_rng, SEED(65));
    char err[ERRBUF];
    backend *be = backend_cpu64_create(1, err);
    static const int shapes[][5] = { /* nobias, samples, batch, lookback, horizon */
                                     { 0, 7, 3, 6, 4 }, { 1, 7, 3, 6, 4 }, { 0, 1, 2, 6, 4 },
                                     { 1, 4, 1, 5, 7 }, { 0, 3, 3, 7, 1 } };
    for (int k = 0; k < 5; k++) {
        tsgpt_config c = tsg_tiny;
        int nb = shapes[k][0];
        c.nobias = nb, c.samples = shapes[k][1], c.lookback = shapes[k][3];
        c.horizon = shapes[k][4];
        model *m = tsgpt_family.create(be, (const int *)&c, err);
        ck_assert_msg(m != NULL, "%s", err);
        int B = shapes[k][2], ch = c.channels, rows = B * ch, n = rows * 4 * c.horizon;
        ck_assert_int_eq(m->plan(m, B, 0, err), 0);
        float *p = malloc(m->nparams * sizeof *p), *x = malloc(rows * c.lookback * sizeof *x);
        float *y = malloc(rows * c.horizon * sizeof *y);
        float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
        tsgpt_family.init((const int *)&c, p, SEED(66 + nb));
        for (size_t i = 0; i < m->nparams; i++)
            p[i] *= 4.0f;
        model_set_params(m, p);
        random_series_batch(x, y, B, ch, c.lookback, c.horizon, -1);
        ck_assert_msg(tsgpt_forecast(m, x, 1, 99, a, err) == 0, "%s", err);
        ck_assert_msg(tsgpt_forecast(m, x, 0, 99, b, err) == 0, "%s", err);
        int spread = 0;
        for (int i = 0; i < n; i++) {
            ck_assert_msg(a[i] == b[i], "shape %d: forecast value %d: cached %g, uncached %g", k,
                          i, a[i], b[i]);
            spread += a[i] != a[0];
        }
        ck_assert_msg(spread > n / 2, "shape %d: the forecast is nearly constant (%d of %d differ)",
                      k, spread, n);
        /* another seed draws other paths */
        ck_assert_msg(tsgpt_forecast(m, x, 1, 100, b, err) == 0, "%s", err);
        ck_assert(memcmp(a, b, n * sizeof *a) != 0);
        free(p), free(x), free(y), free(a), free(b);
        m->destroy(m);
    }
    be->destroy(be);
}
END_TEST

/* The paths' mean beside their quantiles. Path p's draws depend on (seed, p,
 * row, step) only, so a forecast of S paths holds the paths of one of S - 1
 * and one more: from the median of 1 path (path 0) and of 2 (their average)
 * the first two paths are known, the mean of 3 gives the third, and the three
 * sorted must give back the 3-path median and 10/90% quantiles (numpy's
 * linear interpolation: v0 + 0.2 (v1 - v0), v1, v1 + 0.8 (v2 - v1)). */
START_TEST(test_tsgpt_forecast_mean_of_paths)
{
    char err[ERRBUF];
    backend *be = backend_cpu64_create(1, err);
    int B = 3, H = tsg_tiny.horizon, rows = B * tsg_tiny.channels, n = rows * 4 * H;
    float *fc[3], x[3 * 2 * 6], y[3 * 2 * 4], *p = NULL;
    random_series_batch(x, y, B, tsg_tiny.channels, tsg_tiny.lookback, H, -1);
    for (int S = 1; S <= 3; S++) {
        tsgpt_config c = tsg_tiny;
        c.samples = S;
        model *m = tsgpt_family.create(be, (const int *)&c, err);
        ck_assert_msg(m != NULL, "%s", err);
        ck_assert_int_eq(m->plan(m, B, 0, err), 0);
        if (!p) { /* the same weights for every S, away from init so that the bins spread */
            p = malloc(m->nparams * sizeof *p);
            tsgpt_family.init((const int *)&c, p, SEED(69));
            for (size_t i = 0; i < m->nparams; i++)
                p[i] *= 4.0f;
        }
        model_set_params(m, p);
        fc[S - 1] = malloc(n * sizeof *fc[0]);
        ck_assert_msg(tsgpt_forecast(m, x, 0, 7, fc[S - 1], err) == 0, "%s", err);
        m->destroy(m);
    }
    int differ = 0;
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < H; j++) {
            const float *f1 = fc[0] + (size_t)r * 4 * H, *f2 = fc[1] + (size_t)r * 4 * H;
            const float *f3 = fc[2] + (size_t)r * 4 * H;
            double tol = 1e-5 * (1 + fabs(f3[j]) + fabs(f3[2 * H + j]) + fabs(f3[H + j]));
            /* one path: all four are the path */
            ck_assert(f1[H + j] == f1[j] && f1[2 * H + j] == f1[j] && f1[3 * H + j] == f1[j]);
            double p0 = f1[j], p1 = 2.0 * f2[j] - p0;
            ck_assert_msg(fabs(f2[3 * H + j] - (p0 + p1) / 2) <= tol, "row %d step %d: mean of 2", r,
                          j);
            double v[3] = { p0, p1, 3.0 * f3[3 * H + j] - p0 - p1 };
            for (int a = 0; a < 3; a++) /* sort three */
                for (int b = a + 1; b < 3; b++)
                    if (v[b] < v[a]) {
                        double t = v[a];
                        v[a] = v[b];
                        v[b] = t;
                    }
            ck_assert_msg(fabs(f3[j] - v[1]) <= tol && fabs(f3[H + j] - (v[0] + 0.2 * (v[1] - v[0]))) <= tol &&
                              fabs(f3[2 * H + j] - (v[1] + 0.8 * (v[2] - v[1]))) <= tol,
                          "row %d step %d: paths %g %g %g give median %g q10 %g q90 %g", r, j, v[0],
                          v[1], v[2], f3[j], f3[H + j], f3[2 * H + j]);
            differ += v[0] != v[2];
        }
    /* the checks above saw distinct paths: over 200 seeds 10 to 24 of the 24
     * steps had them (a few seeds in a hundred fewer than half), never under 10 */
    ck_assert_msg(differ >= rows * H / 4, "the three paths mostly agree (%d of %d differ)",
                  differ, rows * H);
    for (int k = 0; k < 3; k++)
        free(fc[k]);
    free(p);
    be->destroy(be);
}
END_TEST

/* tsgpt learns: one fixed batch, its next-bin cross-entropy falls. */
START_TEST(test_tsgpt_learns)
{
    rng_seed(&test_rng, SEED(70));
    char err[ERRBUF];
    const tsgpt_config *c = &tsg_tiny;
    backend *be = backend_cpu_create(0, err);
    model *m = tsgpt_family.create(be, (const int *)c, err);
    int B = 4, ch = c->channels;
    ck_assert_int_eq(m->plan(m, B, 0, err), 0);
    float *p = malloc(m->nparams * sizeof *p), x[4 * 2 * 6], y[4 * 2 * 4];
    tsgpt_family.init((const int *)c, p, SEED(71));
    model_set_params(m, p);
    random_series_batch(x, y, B, ch, c->lookback, c->horizon, -1);
    model_batch b = { .x = x, .y = y };
    double first = 0, loss = 0;
    /* 300 steps: at 150 a few seeds in a hundred still sit just above 0.3 */
    for (int step = 1; step <= 300; step++) {
        model_zero_grad(m);
        loss = m->forward(m, &b, 1.0f);
        if (step == 1)
            first = loss;
        m->backward(m);
        adamw_params hp = { 1e-2f, 0.9f, 0.95f, 1e-8f, 0.0f, step, 1.0f, 0, 0 };
        be->adamw(be, m->params, m->master, m->grads, m->m, m->v, m->segs, m->nsegs, &hp);
    }
    ck_assert_msg(loss < 0.3 * first, "loss %g after 300 steps (first %g)", loss, first);
    free(p);
    m->destroy(m);
    be->destroy(be);
}
END_TEST

START_TEST(test_presets_and_config)
{
    char err[ERRBUF];
    int v[16];
    ck_assert_int_eq(patchts_family.preset("patchts-etth1", v, err), 0);
    const patchts_config *c = (const patchts_config *)v;
    ck_assert_int_eq(c->lookback, 336);
    ck_assert_int_eq(patchts_patches(c), 42);
    ck_assert_int_eq(c->post_ln, 1);
    ck_assert_int_eq(patchts_family.check(v, err), 0);
    ck_assert_int_eq(patchts_family.preset("nope", v, err), -1);
    ck_assert_msg(strstr(err, "--preset: unknown preset 'nope'"), "%s", err);
    patchts_config bad = pts_tiny;
    bad.patch = 13;
    ck_assert_int_eq(patchts_family.check((int *)&bad, err), -1);
    ck_assert_msg(strstr(err, "--patch"), "%s", err);
    bad = pts_tiny;
    bad.NH = 3;
    ck_assert_int_eq(patchts_family.check((int *)&bad, err), -1);
    ck_assert_int_eq(tsgpt_family.preset("tsgpt-etth1", v, err), 0);
    ck_assert_int_eq(tsgpt_family.check(v, err), 0);
}
END_TEST

static Suite *series_suite(void)
{
    Suite *s = suite_create("series");
    TCase *tc = tcase_create("data");
    tcase_add_test(tc, test_csv_good);
    tcase_add_test(tc, test_csv_bad);
    tcase_add_test(tc, test_split_borders);
    tcase_add_test(tc, test_normalisation_train_only);
    tcase_add_test(tc, test_windows_and_patches);
    tcase_add_test(tc, test_source_epochs);
    suite_add_tcase(s, tc);
    TCase *tm = tcase_create("models");
    tcase_set_timeout(tm, 120);
    tcase_add_loop_test(tm, test_patchts_gradcheck_fp64, 0, 9);
    tcase_add_loop_test(tm, test_patchts_batchnorm_gradcheck_fp64, 0, 4);
    tcase_add_test(tm, test_tsgpt_gradcheck_fp64);
    tcase_add_loop_test(tm, test_patchts_fp32_and_metrics, 0, 3);
    tcase_add_test(tm, test_patchts_revin_shift);
    tcase_add_test(tm, test_patchts_learns);
    tcase_add_test(tm, test_tsgpt_tokens_and_forecast);
    tcase_add_test(tm, test_tsgpt_learns);
    tcase_add_test(tm, test_tsgpt_cached_forecast_matches_uncached);
    tcase_add_test(tm, test_tsgpt_forecast_mean_of_paths);
    tcase_add_test(tm, test_presets_and_config);
    suite_add_tcase(s, tm);
    return s;
}

int main(void)
{
    const char *env = getenv("ANATOMY_TEST_SEED");
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    base_seed = env ? strtoull(env, NULL, 0)
                    : (uint64_t)ts.tv_sec * 1000003u + (uint64_t)ts.tv_nsec;
    printf("test_series: seed %llu (ANATOMY_TEST_SEED to replay)\n",
           (unsigned long long)base_seed);
    fflush(stdout);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_series.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    SRunner *sr = srunner_create(series_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    return failed ? 1 : 0;
}
