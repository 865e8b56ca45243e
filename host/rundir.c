/* rundir.c: the run directory (--out) as a journal, and the signals that
 * stop a run gracefully. See rundir.h for the layout and the contract.
 *
 * Why a lock and not a PID file: flock is released by the kernel when its
 * holder dies, kill -9 included, so a stale lock never needs cleaning. The
 * "host pid" inside is only for the error message. */
#include "rundir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../data/errbuf.h"
#include "../data/fsutil.h"
#include "safetensors.h"

int rundir_mkdir_p(const char *dir, char *err)
{
    char tmp[4096];
    size_t len = strlen(dir);
    if (len >= sizeof tmp)
        return errf(err, "--out %s: path too long", dir);
    memcpy(tmp, dir, len + 1);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(tmp, 0777) && errno != EEXIST)
            return errf(err, "--out %s: %s: %s", dir, tmp, strerror(errno));
        *p = '/';
    }
    if (mkdir(tmp, 0777) && errno != EEXIST)
        return errf(err, "--out %s: %s", dir, strerror(errno));
    return 0;
}

void rundir_ckpt_path(const char *out, int step, char *path, size_t cap)
{
    snprintf(path, cap, "%s/step_%06d.safetensors", out, step);
}

/* ---- the lock ---- */

static int take_lock(rundir *rd, char *err)
{
    char *path = fs_join(rd->dir, "lock");
    if (!path)
        return errf(err, "--out %s: out of memory", rd->dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0) {
        errf(err, "--out %s: cannot create %s: %s", rd->dir, path, strerror(errno));
        free(path);
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB)) {
        char who[256] = "";
        int e = errno;
        ssize_t n = pread(fd, who, sizeof who - 1, 0);
        who[n > 0 ? n : 0] = 0;
        who[strcspn(who, "\n")] = 0;
        char host[128] = "?";
        long pid = 0;
        if (sscanf(who, "%127s %ld", host, &pid) != 2)
            snprintf(host, sizeof host, "?");
        close(fd);
        if (e == EWOULDBLOCK)
            errf(err, "--out %s: another trainer is writing this run directory (host %s, pid "
                      "%ld, holding %s); one run per directory", rd->dir, host, pid, path);
        else
            errf(err, "--out %s: cannot lock %s: %s", rd->dir, path, strerror(e));
        free(path);
        return -1;
    }
    char host[128] = "?", who[200];
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = 0;
    int n = snprintf(who, sizeof who, "%s %ld\n", host, (long)getpid());
    /* best effort: the flock, not this text, is what excludes */
    ssize_t w = ftruncate(fd, 0) ? -1 : pwrite(fd, who, (size_t)n, 0);
    (void)w;
    free(path);
    rd->lock_fd = fd;
    return 0;
}

/* ---- what is in the directory ---- */

int rundir_ckpt_step(const char *name)
{
    const char *d = name + 5;
    size_t n = 0;
    long long step = 0;
    if (strncmp(name, "step_", 5) != 0)
        return -1;
    while (d[n] >= '0' && d[n] <= '9' && n < 10)
        step = step * 10 + (d[n++] - '0');
    /* rundir_ckpt_path's %06d: six digits, or more without a leading zero */
    if (n < 6 || (n > 6 && d[0] == '0') || strcmp(d + n, ".safetensors") != 0 || step > INT_MAX)
        return -1;
    return (int)step;
}

/* <anything>.tmp.PID.K (st_atomic_open's names): PID, else 0. */
static long tmp_pid(const char *name)
{
    const char *t = strstr(name, ".tmp.");
    long pid;
    unsigned k;
    int end = 0;
    while (t) {
        if (sscanf(t, ".tmp.%ld.%u%n", &pid, &k, &end) == 2 && !t[end] && pid > 0)
            return pid;
        t = strstr(t + 1, ".tmp.");
    }
    return 0;
}

/* Checkpoints with step > after: refused, or removed with overwrite. Stale
 * temporary files: removed. */
static int scan_dir(rundir *rd, int after, int overwrite, char *err)
{
    DIR *d = opendir(rd->dir);
    struct dirent *e;
    char names[512] = "";
    int found = 0, stale = 0, rc = 0;
    if (!d)
        return errf(err, "--out %s: %s", rd->dir, strerror(errno));
    while ((e = readdir(d))) {
        long pid = tmp_pid(e->d_name);
        /* A writer that died mid-write. The lock says no trainer writes here
         * now, but a process of that pid that is alive (another user's, a
         * reused pid) keeps its files. Our own pid's are stale all the same:
         * we have written nothing yet (a restarted container reuses pids). */
        if (pid && (pid == (long)getpid() || (kill((pid_t)pid, 0) && errno == ESRCH))) {
            char *p = fs_join(rd->dir, e->d_name);
            if (p && unlink(p) == 0)
                stale++;
            free(p);
            continue;
        }
        int s = rundir_ckpt_step(e->d_name);
        if (s < 0 || s <= after)
            continue;
        if (overwrite) {
            char *p = fs_join(rd->dir, e->d_name);
            if (!p || unlink(p)) {
                rc = errf(err, "--out %s: cannot remove %s: %s", rd->dir, e->d_name,
                          p ? strerror(errno) : "out of memory");
                free(p);
                break;
            }
            free(p);
            continue;
        }
        if (found++ < 3)
            snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s",
                     found > 1 ? ", " : "", e->d_name);
    }
    closedir(d);
    if (stale)
        printf("%s: removed %d temporary file(s) left by writers that died\n", rd->dir, stale);
    if (rc || !found)
        return rc;
    if (found > 3)
        snprintf(names + strlen(names), sizeof names - strlen(names), " and %d more",
                 found - 3);
    if (after == 0)
        return errf(err, "--out %s: holds another run's checkpoints (%s); --resume %s continues "
                         "it, --overwrite replaces it", rd->dir, names, rd->dir);
    return errf(err, "--out %s: holds checkpoints after the resumed step %d (%s); resume from "
                     "the latest, or --overwrite to discard them", rd->dir, after, names);
}

/* ---- the log ---- */

/* The step of a log line ({"step": N, ...}), or -1. */
static long line_step(const char *s, size_t n)
{
    char buf[64];
    long step;
    if (n >= sizeof buf)
        n = sizeof buf - 1;
    memcpy(buf, s, n);
    buf[n] = 0;
    return sscanf(buf, "{\"step\": %ld", &step) == 1 ? step : -1;
}

/* Rewrites log.jsonl with its complete lines of steps <= step (atomic: a
 * kill leaves the old log or the new one). */
static int cut_log(rundir *rd, int step, char *err)
{
    int fd = open(rd->log_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : errf(err, "%s: %s", rd->log_path, strerror(errno));
    struct stat st;
    char *buf = NULL;
    size_t n = 0;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (buf = malloc((size_t)st.st_size + 1))) {
        while (n < (size_t)st.st_size) {
            ssize_t k = read(fd, buf + n, (size_t)st.st_size - n);
            if (k <= 0)
                break;
            n += (size_t)k;
        }
    }
    close(fd);
    if (!buf)
        return errf(err, "%s: cannot read it to cut it back to step %d", rd->log_path, step);
    size_t keep = 0, dropped = 0;
    for (size_t i = 0; i < n;) {
        char *nl = memchr(buf + i, '\n', n - i);
        if (!nl) { /* a line cut short by a kill */
            dropped++;
            break;
        }
        size_t len = (size_t)(nl - (buf + i)) + 1;
        long s = line_step(buf + i, len);
        if (s >= 0 && s <= step) {
            memmove(buf + keep, buf + i, len);
            keep += len;
        } else {
            dropped++;
        }
        i += len;
    }
    int rc = 0;
    if (dropped) {
        st_atomic a;
        rc = st_atomic_open(&a, rd->log_path, err);
        if (!rc)
            rc = st_atomic_write(&a, buf, keep, err);
        if (!rc)
            rc = st_atomic_commit(&a, err);
    }
    free(buf);
    return rc;
}

int rundir_open(rundir *rd, const char *dir, int step, int overwrite, char *err)
{
    memset(rd, 0, sizeof *rd);
    rd->lock_fd = rd->log_fd = -1;
    if (rundir_mkdir_p(dir, err))
        return -1;
    rd->dir = strdup(dir);
    rd->log_path = fs_join(dir, "log.jsonl");
    rd->cap = 4096;
    rd->line = malloc(rd->cap);
    if (!rd->dir || !rd->log_path || !rd->line) {
        rundir_close(rd);
        return errf(err, "--out %s: out of memory", dir);
    }
    if (take_lock(rd, err) || scan_dir(rd, step, overwrite, err) ||
        (step > 0 && cut_log(rd, step, err)))
        goto fail;
    rd->log_fd = open(rd->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC |
                                        (step > 0 ? 0 : O_TRUNC), 0666);
    if (rd->log_fd < 0) {
        errf(err, "%s: %s", rd->log_path, strerror(errno));
        goto fail;
    }
    return 0;
fail:
    rundir_close(rd);
    return -1;
}

void rundir_logf(rundir *rd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(rd->line + rd->len, rd->cap - rd->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        rd->len = rd->len + (size_t)n < rd->cap ? rd->len + (size_t)n : rd->cap - 1;
}

int rundir_log_flush(rundir *rd, int step, char *err)
{
    const char *p = rd->line;
    size_t n = rd->len;
    rd->len = 0;
    while (n) {
        ssize_t w = write(rd->log_fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return errf(err, "%s: write failed at step %d: %s", rd->log_path, step,
                        w ? strerror(errno) : "no progress");
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

void rundir_close(rundir *rd)
{
    if (rd->log_fd >= 0)
        close(rd->log_fd);
    if (rd->lock_fd >= 0)
        close(rd->lock_fd); /* releases the flock */
    free(rd->dir);
    free(rd->log_path);
    free(rd->line);
    memset(rd, 0, sizeof *rd);
    rd->lock_fd = rd->log_fd = -1;
}

/* ---- signals ---- */

static volatile sig_atomic_t stop_sig;
static struct sigaction old_int, old_term, old_usr1;
static int signals_on;

static void on_stop_signal(int sig)
{
    if (sig == SIGINT && stop_sig) {
        static const char msg[] = "anatomy: second SIGINT: aborting without a checkpoint\n";
        ssize_t w = write(STDERR_FILENO, msg, sizeof msg - 1);
        (void)w;
        _exit(130);
    }
    if (!stop_sig)
        stop_sig = sig;
}

void rundir_signals_on(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sa.sa_flags = SA_RESTART; /* a write in progress goes on */
    sigemptyset(&sa.sa_mask);
    stop_sig = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    sigaction(SIGUSR1, &sa, &old_usr1);
    signals_on = 1;
}

void rundir_signals_off(void)
{
    if (!signals_on)
        return;
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    sigaction(SIGUSR1, &old_usr1, NULL);
    signals_on = 0;
}

int rundir_stop_signal(void)
{
    return stop_sig;
}

const char *rundir_signal_name(int sig)
{
    switch (sig) {
    case SIGINT: return "SIGINT";
    case SIGTERM: return "SIGTERM";
    case SIGUSR1: return "SIGUSR1";
    default: return "a signal";
    }
}
