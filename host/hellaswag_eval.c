/* hellaswag_eval.c: completion-style HellaSwag scoring (hellaswag_eval.h). */
#include "hellaswag_eval.h"

#include <math.h>

#include "../data/errbuf.h"
#include "family.h"

/* Tokens of row k of an example: context then ending k; the model sees the
 * first n - 1 as inputs and the ending's tokens are predicted by positions
 * n-1-e .. n-2. */
static int row_len(const hellaswag_example *ex, int k)
{
    return ex->nctx + ex->nend[k];
}

int hellaswag_max_len(const hellaswag_set *set)
{
    int T = 1;
    for (size_t i = 0; i < set->n; i++)
        for (int k = 0; k < HELLASWAG_ENDINGS; k++)
            if (row_len(&set->ex[i], k) - 1 > T)
                T = row_len(&set->ex[i], k) - 1;
    return T;
}

/* Fills rows 4*slot .. 4*slot+3 of in/tg (T wide) with the example: inputs
 * are the last T of its n - 1 input tokens, targets -1 except at the
 * ending's positions; padding at the end (causal attention keeps it from
 * the earlier positions). */
static void fill(const hellaswag_example *ex, int slot, int T, int32_t *in, int32_t *tg)
{
    for (int k = 0; k < HELLASWAG_ENDINGS; k++) {
        int32_t *ri = in + (size_t)(slot * HELLASWAG_ENDINGS + k) * T;
        int32_t *rt = tg + (size_t)(slot * HELLASWAG_ENDINGS + k) * T;
        int n = row_len(ex, k), skip = n - 1 > T ? n - 1 - T : 0;
        for (int t = 0; t < T; t++) {
            int j = t + skip; /* index of the input token in ctx ++ end */
            if (j >= n - 1) {
                ri[t] = 0;
                rt[t] = -1;
                continue;
            }
            ri[t] = j < ex->nctx ? ex->ctx[j] : ex->end[k][j - ex->nctx];
            rt[t] = j + 1 >= ex->nctx ? ex->end[k][j + 1 - ex->nctx] : -1;
        }
    }
}

int hellaswag_score(model *m, const hellaswag_set *set, const char *path, size_t first,
                    size_t stride, int32_t *in, int32_t *tg, size_t *correct, size_t *count,
                    char *err)
{
    int B = m->B, T = m->T, per = B / HELLASWAG_ENDINGS;
    size_t idx[64];
    if (per < 1)
        return errf(err, "hellaswag: a batch of %d rows holds no example (4 rows each)", B);
    if (per > 64)
        per = 64;
    if (!m->position_losses)
        return errf(err, "hellaswag: the %s model has no per-position losses", m->fam->name);
    for (size_t i = first; i < set->n;) {
        int used = 0;
        for (size_t j = 0; j < (size_t)B * T; j++)
            in[j] = 0, tg[j] = -1;
        for (; used < per && i < set->n; i += stride, used++) {
            const hellaswag_example *ex = &set->ex[i];
            for (int k = 0; k < HELLASWAG_ENDINGS; k++)
                if (ex->nend[k] > T)
                    return errf(err, "%s:%ld: ending %d has %d tokens, more than the %d "
                                     "positions scored", path, ex->line, k, ex->nend[k], T);
            fill(ex, used, T, in, tg);
            idx[used] = i;
        }
        model_batch b = { .tokens = in, .targets = tg };
        m->forward(m, &b, 0.0f);
        const double *loss = m->position_losses(m);
        for (int s = 0; s < used; s++) {
            int best = 0;
            double best_loss = INFINITY;
            for (int k = 0; k < HELLASWAG_ENDINGS; k++) {
                size_t row = (size_t)(s * HELLASWAG_ENDINGS + k) * T;
                double sum = 0.0;
                int e = 0;
                for (int t = 0; t < T; t++)
                    if (tg[row + t] >= 0)
                        sum += loss[row + t], e++;
                double mean = e ? sum / e : INFINITY;
                if (mean < best_loss)
                    best_loss = mean, best = k;
            }
            *correct += best == set->ex[idx[s]].label;
            (*count)++;
        }
    }
    return 0;
}
