/* cmd_plot.c: `anatomy plot`: training curves of one or more runs (their
 * log.jsonl) drawn by gnuplot into a PNG, one panel per metric, every run on
 * each panel. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../data/errbuf.h"
#include "../data/json.h"
#include "cli.h"

static const char usage[] =
    "usage: anatomy plot RUN_DIR... [--out FILE.png] [--metric M]\n"
    "\n"
    "Draws each run's log.jsonl (train --out DIR writes it) against steps with\n"
    "gnuplot (Debian package gnuplot-nox), all runs on one chart.\n"
    "\n"
    "  --out FILE.png  the image (default plot.png)\n"
    "  --metric M      one panel only: loss (train and validation), val (validation\n"
    "                  loss), lr, tokens (tokens/s) or hellaswag (accuracy); default:\n"
    "                  loss, lr, tokens, and hellaswag when a run has its records\n"
    "  --help          this text\n";

/* One column of numbers per series. */
typedef struct {
    double *v;
    size_t n, cap;
} column;

/* What one run's log holds: training steps (step, loss, lr, tokens/s),
 * validation points (step, val_loss) and HellaSwag points (step, accuracy). */
typedef struct {
    const char *dir;
    column step, loss, lr, tps, vstep, vloss, hstep, hacc;
} run_log;

enum { M_LOSS, M_VAL, M_LR, M_TOKENS, M_HELLASWAG, M_COUNT };
static const char *const metric_names[M_COUNT] = { "loss", "val", "lr", "tokens", "hellaswag" };

static void col_push(column *c, double x)
{
    if (c->n == c->cap) {
        size_t nc = c->cap ? 2 * c->cap : 256;
        double *p = realloc(c->v, nc * sizeof *p);
        if (!p)
            cli_die("plot: out of memory");
        c->v = p;
        c->cap = nc;
    }
    c->v[c->n++] = x;
}

/* A number member into *out: 0, or -1 with why filled (absent or not a number). */
static int need_num(const json_value *obj, const char *key, double *out, char *why)
{
    const json_value *v = json_get(obj, key);
    if (!v || json_num(v, out))
        return errf(why, "\"%s\" missing or not a number", key);
    return 0;
}

/* Adds one parsed line to r; -1 with why when it is neither a training nor
 * a validation record. Other records (with a "step" but neither "loss" nor
 * "val_loss") are skipped, so later kinds of line do not break plots. */
static int add_record(run_log *r, const json_value *o, char *why)
{
    double step, x;
    if (json_typeof(o) != JSON_OBJECT)
        return errf(why, "not a JSON object");
    if (need_num(o, "step", &step, why))
        return -1;
    if (json_get(o, "loss")) {
        double lr, tps;
        if (need_num(o, "loss", &x, why) || need_num(o, "lr", &lr, why) ||
            need_num(o, "tokens_per_s", &tps, why))
            return -1;
        col_push(&r->step, step);
        col_push(&r->loss, x);
        col_push(&r->lr, lr);
        col_push(&r->tps, tps);
    }
    if (json_get(o, "val_loss")) {
        if (need_num(o, "val_loss", &x, why))
            return -1;
        col_push(&r->vstep, step);
        col_push(&r->vloss, x);
    }
    if (json_get(o, "hellaswag_acc")) {
        if (need_num(o, "hellaswag_acc", &x, why))
            return -1;
        col_push(&r->hstep, step);
        col_push(&r->hacc, x);
    }
    return 0;
}

/* Reads DIR/log.jsonl into r; dies with "PATH:LINE: ..." on a bad line. */
static void load_log(run_log *r)
{
    char path[4200], why[ERRBUF];
    snprintf(path, sizeof path, "%s/log.jsonl", r->dir);
    FILE *f = fopen(path, "rb");
    if (!f)
        cli_die("%s: %s (not a run directory of train --out?)", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long lineno = 0;
    while ((len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        size_t n = (size_t)len;
        while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            n--;
        if (!n)
            continue;
        json_doc *doc = json_parse(line, n, NULL, why);
        int rc = doc ? add_record(r, json_root(doc), why) : -1;
        json_free(doc);
        if (rc)
            cli_die("%s:%ld: %s", path, lineno, why);
    }
    int bad = ferror(f);
    free(line);
    fclose(f);
    if (bad)
        cli_die("%s: read error", path);
    if (!r->step.n && !r->vstep.n && !r->hstep.n)
        cli_die("%s: no training or validation records", path);
}

/* Writes columns side by side into dir/name; dies on failure. */
static void write_data(const char *path, const column *a, const column *b, const column *c,
                       const column *d)
{
    FILE *f = fopen(path, "w");
    if (!f)
        cli_die("%s: %s", path, strerror(errno));
    for (size_t i = 0; i < a->n; i++) {
        fprintf(f, "%.9g %.9g", a->v[i], b->v[i]);
        if (c)
            fprintf(f, " %.9g %.9g", c->v[i], d->v[i]);
        fputc('\n', f);
    }
    if (fclose(f))
        cli_die("%s: write failed", path);
}

/* s as a gnuplot single-quoted string (a quote is written twice). */
static void put_quoted(FILE *f, const char *s)
{
    fputc('\'', f);
    for (; *s; s++) {
        if (*s == '\'')
            fputc('\'', f);
        fputc(*s, f);
    }
    fputc('\'', f);
}

/* The plot command of one panel over all runs (data in tmp/run<i>_*.dat). */
static int put_panel(FILE *f, int metric, const run_log *runs, int nruns, const char *tmp)
{
    static const char *const ylabel[M_COUNT] = { "loss", "validation loss", "learning rate",
                                                 "tokens/s", "HellaSwag accuracy" };
    int any = 0;
    fprintf(f, "set title '%s'\nset ylabel '%s'\n", ylabel[metric], ylabel[metric]);
    fprintf(f, "plot ");
    for (int i = 0; i < nruns; i++) {
        const run_log *r = &runs[i];
        const char *base = strrchr(r->dir, '/') && strrchr(r->dir, '/')[1]
            ? strrchr(r->dir, '/') + 1 : r->dir;
        char name[4200];
        int train = metric != M_VAL && metric != M_HELLASWAG && r->step.n;
        int val = (metric == M_LOSS || metric == M_VAL) && r->vstep.n;
        if (metric == M_HELLASWAG && r->hstep.n) {
            snprintf(name, sizeof name, "%s", base);
            fprintf(f, "%s'%s/run%d_hs.dat' using 1:2 with linespoints pt 7 ps 0.6 lw 1.5 "
                       "lc %d title ", any ? ", " : "", tmp, i, i + 1);
            put_quoted(f, name);
            any = 1;
        }
        if (train) {
            static const int colno[M_COUNT] = { 2, 0, 3, 4, 0 };
            snprintf(name, sizeof name, "%s%s", base, metric == M_LOSS ? " train" : "");
            fprintf(f, "%s'%s/run%d_train.dat' using 1:%d with lines lw 1.5 lc %d title ",
                    any ? ", " : "", tmp, i, colno[metric], i + 1);
            put_quoted(f, name);
            any = 1;
        }
        if (val) {
            snprintf(name, sizeof name, "%s val", base);
            fprintf(f, "%s'%s/run%d_val.dat' using 1:2 with linespoints dt 2 pt 7 ps 0.6 "
                       "lw 1.5 lc %d title ", any ? ", " : "", tmp, i, i + 1);
            put_quoted(f, name);
            any = 1;
        }
    }
    fputc('\n', f);
    return any;
}

/* Full path of gnuplot found in $PATH, or NULL. */
static char *find_gnuplot(void)
{
    const char *path = getenv("PATH");
    if (!path)
        return NULL;
    while (*path) {
        size_t n = strcspn(path, ":");
        char *full = malloc(n + 16);
        if (!full)
            return NULL;
        snprintf(full, n + 16, "%.*s/gnuplot", (int)n, n ? path : ".");
        if (access(full, X_OK) == 0)
            return full;
        free(full);
        path += n + (path[n] == ':');
    }
    return NULL;
}

/* Runs gnuplot on script (drawing out) with its stderr in errpath; on failure
 * the last line of that file into why. Returns 0 or -1. */
static int run_gnuplot(const char *gp, const char *script, const char *errpath, const char *out,
                       char *why)
{
    pid_t pid = fork();
    if (pid < 0)
        return errf(why, "fork: %s", strerror(errno));
    if (pid == 0) {
        if (!freopen(errpath, "w", stderr))
            _exit(126);
        execl(gp, "gnuplot", script, (char *)NULL);
        _exit(127);
    }
    int st;
    if (waitpid(pid, &st, 0) < 0)
        return errf(why, "waitpid: %s", strerror(errno));
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return 0;
    /* gnuplot echoes the script line and a caret first; the cause comes last */
    char line[512] = "", buf[512];
    FILE *f = fopen(errpath, "r");
    while (f && fgets(buf, sizeof buf, f))
        if (strspn(buf, " \t\r\n^") != strlen(buf))
            memcpy(line, buf, sizeof line);
    if (f)
        fclose(f);
    line[strcspn(line, "\r\n")] = 0;
    return errf(why, "%s: gnuplot failed: %s", out, line[0] ? line : "no message");
}

int cmd_plot(int argc, char **argv)
{
    enum { O_OUT = 256, O_METRIC, O_HELP };
    static const struct option longopts[] = {
        { "out", 1, 0, O_OUT }, { "metric", 1, 0, O_METRIC }, { "help", 0, 0, O_HELP },
        { 0, 0, 0, 0 },
    };
    const char *out = "plot.png";
    int metric = -1, c;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        switch (c) {
        case O_OUT: out = optarg; break;
        case O_METRIC:
            for (metric = 0; metric < M_COUNT && strcmp(optarg, metric_names[metric]); metric++)
                ;
            if (metric == M_COUNT)
                cli_die("--metric: '%s' is not loss, val, lr, tokens or hellaswag", optarg);
            break;
        case O_HELP: fputs(usage, stdout); return 0;
        default: cli_bad_option("plot", c, argv);
        }
    }
    int nruns = argc - optind;
    if (nruns < 1)
        cli_die("plot: give at least one run directory");
    run_log *runs = calloc((size_t)nruns, sizeof *runs);
    if (!runs)
        cli_die("plot: out of memory");
    for (int i = 0; i < nruns; i++) {
        runs[i].dir = argv[optind + i];
        load_log(&runs[i]);
    }
    char *gp = find_gnuplot();
    if (!gp)
        cli_die("plot: gnuplot not found in PATH (install gnuplot-nox)");

    const char *tmpbase = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char tmp[4096], path[4200], script[4200], errpath[4200], outtmp[4200], why[ERRBUF];
    snprintf(tmp, sizeof tmp, "%s/anatomy-plot-XXXXXX", tmpbase);
    if (!mkdtemp(tmp))
        cli_die("%s: %s", tmp, strerror(errno));
    for (int i = 0; i < nruns; i++) {
        run_log *r = &runs[i];
        snprintf(path, sizeof path, "%s/run%d_train.dat", tmp, i);
        write_data(path, &r->step, &r->loss, &r->lr, &r->tps);
        snprintf(path, sizeof path, "%s/run%d_val.dat", tmp, i);
        write_data(path, &r->vstep, &r->vloss, NULL, NULL);
        snprintf(path, sizeof path, "%s/run%d_hs.dat", tmp, i);
        write_data(path, &r->hstep, &r->hacc, NULL, NULL);
    }
    int have_hs = 0;
    for (int i = 0; i < nruns; i++)
        have_hs |= runs[i].hstep.n > 0;
    /* gnuplot writes next to the target, renamed into place once complete */
    snprintf(outtmp, sizeof outtmp, "%s.tmp%d.png", out, (int)getpid());
    snprintf(script, sizeof script, "%s/plot.gp", tmp);
    snprintf(errpath, sizeof errpath, "%s/gnuplot.err", tmp);
    FILE *f = fopen(script, "w");
    if (!f)
        cli_die("%s: %s", script, strerror(errno));
    int first = metric < 0 ? 0 : metric, last = metric < 0 ? M_COUNT - 1 : metric;
    int panels = metric < 0 ? 3 + have_hs : 1, empty = -1;
    fprintf(f, "set terminal pngcairo size 1000,%d noenhanced font ',10'\nset output ",
            320 * panels);
    put_quoted(f, outtmp);
    fprintf(f, "\nset grid\nset xlabel 'step'\nset key outside right top\n");
    if (panels > 1)
        fprintf(f, "set multiplot layout %d,1\n", panels);
    for (int m = first; m <= last; m++) {
        if (metric < 0 && m == M_VAL)
            continue; /* the loss panel holds validation too */
        if (metric < 0 && m == M_HELLASWAG && !have_hs)
            continue;
        if (m == M_LR)
            fprintf(f, "set format y '%%.1e'\n");
        else
            fprintf(f, "set format y '%%g'\n");
        if (!put_panel(f, m, runs, nruns, tmp) && empty < 0)
            empty = m;
    }
    if (panels > 1)
        fprintf(f, "unset multiplot\n");
    fclose(f);
    int rc = empty >= 0 ? errf(why, "--metric %s: no run has such records", metric_names[empty])
                        : run_gnuplot(gp, script, errpath, out, why);
    if (!rc && rename(outtmp, out))
        rc = errf(why, "%s: %s", out, strerror(errno));
    if (rc)
        unlink(outtmp);
    for (int i = 0; i < nruns; i++) {
        snprintf(path, sizeof path, "%s/run%d_train.dat", tmp, i);
        unlink(path);
        snprintf(path, sizeof path, "%s/run%d_val.dat", tmp, i);
        unlink(path);
        snprintf(path, sizeof path, "%s/run%d_hs.dat", tmp, i);
        unlink(path);
        column *cols[] = { &runs[i].step, &runs[i].loss, &runs[i].lr, &runs[i].tps,
                           &runs[i].vstep, &runs[i].vloss, &runs[i].hstep, &runs[i].hacc };
        for (size_t k = 0; k < sizeof cols / sizeof cols[0]; k++)
            free(cols[k]->v);
    }
    unlink(script);
    unlink(errpath);
    rmdir(tmp);
    free(runs);
    free(gp);
    if (rc)
        cli_die("%s", why);
    printf("%s\n", out);
    return 0;
}
