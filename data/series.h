/* series.h: multivariate time series from CSV, cut the way the long-horizon
 * forecasting benchmarks cut them (Informer, PatchTST, DLinear).
 *
 * A file is a header row, then one row per time step: a date (or any text) in
 * the first column and a number in every other column ("channels"). Splits
 * are row ranges of the file in time order:
 *   ETTh*.csv (hourly): train, val, test = 12, 4, 4 months of 30 days of hours
 *                       (rows [0, 8640), [8640, 11520), [11520, 14400));
 *   ETTm*.csv (15 min): the same months, four rows per hour;
 *   any other file:     70% / the rest / 20%, as the reference code's
 *                       "custom" datasets.
 * A window is `lookback` rows of input followed by `horizon` rows to forecast.
 * The windows of a split are those whose first forecast row lies in the
 * split, so val and test windows start `lookback` rows before their split.
 * Normalisation uses the training split's per-channel mean and (population)
 * standard deviation, for every split. Nothing here knows about models. */
#ifndef ANATOMY_SERIES_H
#define ANATOMY_SERIES_H

#include <stddef.h>

enum { SERIES_TRAIN = 0, SERIES_VAL = 1, SERIES_TEST = 2 };

typedef struct {
    int rows, channels;  /* data rows (header excluded), numeric columns */
    float *values;       /* [rows, channels], row-major, as read or normalised */
    char *header;        /* the header line; names[c] point into it */
    char **names;        /* [channels] column names */
} series_table;

/* Reads and validates a whole CSV file. On error returns -1 with err naming
 * the file and the line (1-based, the header is line 1): empty file, a header
 * without numeric columns, a row with a different number of fields than the
 * header, a field that is not a finite number. */
int series_read_csv(const char *path, series_table *t, char *err);
void series_free(series_table *t);

/* Split row borders of a file of `rows` rows named `path` (see above):
 * split s covers rows [border[s], border[s+1]). Returns -1 with err when the
 * file is too short for its protocol (ETT needs 14400 hourly rows). */
int series_borders(const char *path, int rows, int border[4], char *err);

/* The windows of split s: window w (0 <= w < *count) reads rows
 * [*first + w, *first + w + lookback) and forecasts the next `horizon`.
 * -1 with err (naming the file, the split and its rows) when the split has
 * no room for one window. */
int series_split(const char *path, int rows, int split, int lookback, int horizon, int *first,
                 int *count, char *err);

/* Per-channel mean and population standard deviation over rows [0, rows)
 * (std 1 where a channel is constant, as scikit-learn's StandardScaler). */
void series_stats(const series_table *t, int rows, double *mean, double *std);
/* values = (values - mean) / std, every row. */
void series_normalise(series_table *t, const double *mean, const double *std);

/* Copies the window starting at row `start`: x[c, i] = row start+i
 * (i < lookback), y[c, j] = row start+lookback+j (j < horizon), channel-major. */
void series_window(const series_table *t, int start, int lookback, int horizon, float *x,
                   float *y);

/* Patches of a window of n values: patch p covers values [p*stride,
 * p*stride + len). With pad, the window is first extended by `stride` copies
 * of its last value (PatchTST's end padding), which adds one patch. Returns
 * the patch count, 0 when len > n. */
int series_patch_count(int n, int len, int stride, int pad);
/* out[p, k] = padded window[p*stride + k], [count, len]. */
void series_patch(const float *w, int n, int len, int stride, int pad, float *out);

#endif
