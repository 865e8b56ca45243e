/* rundir.h: the run directory (--out) of `anatomy train`, kept as a journal.
 *
 *   DIR/lock                    flock'd by the one trainer writing DIR; holds
 *                               "host pid" of the holder for the error message
 *   DIR/log.jsonl               one JSON line per event; after a resume it is
 *                               cut back to the checkpoint's step, so it is
 *                               exactly the run's history
 *   DIR/step_NNNNNN.safetensors checkpoints (atomic: written as
 *                               step_NNNNNN.safetensors.tmp.PID.K, renamed)
 *
 * and the signals that stop a run gracefully (SIGINT, SIGTERM, SIGUSR1: the
 * loop finishes its step, checkpoints and exits with RUNDIR_STOP_STATUS). */
#ifndef ANATOMY_RUNDIR_H
#define ANATOMY_RUNDIR_H

#include <stddef.h>

/* Exit status of a run stopped by a signal after writing its checkpoint:
 * EX_TEMPFAIL of sysexits.h, "temporary failure, the user is invited to
 * retry". Not 128 + signal, which says "killed" and nothing saved; not 1,
 * which is an error. A Slurm or torchrun wrapper requeues on 75. */
#define RUNDIR_STOP_STATUS 75

typedef struct {
    char *dir;
    char *log_path;
    int lock_fd, log_fd;
    char *line;          /* the log line being built (rundir_logf) */
    size_t len, cap;
} rundir;

/* Creates dir and its parents (mkdir -p); errors name --out. */
int rundir_mkdir_p(const char *dir, char *err);
/* <out>/step_NNNNNN.safetensors, the name of step's checkpoint. */
void rundir_ckpt_path(const char *out, int step, char *path, size_t cap);
/* The step a checkpoint's file name (no directory) says, else -1: six
 * digits, or more from step 1,000,000 on, so that "latest" is the largest
 * number, never the last name in text order. */
int rundir_ckpt_step(const char *name);

/* Takes the run directory for a run at step `step` (0: a fresh run), before
 * anything in it changes:
 *   - creates it, and locks it: a second trainer gets an error naming the
 *     holder's host and pid;
 *   - a fresh run refuses a directory holding checkpoints, and a resumed one
 *     checkpoints after its step, naming them, unless overwrite, which
 *     removes them;
 *   - removes the temporary files that dead writers left (never a live
 *     process's);
 *   - log.jsonl: emptied (fresh) or cut to the lines of steps <= step
 *     (resume), then opened for appending.
 * -1 with err on failure (nothing is held then). */
int rundir_open(rundir *rd, const char *dir, int step, int overwrite, char *err);
/* Appends formatted text to the pending log line. */
void rundir_logf(rundir *rd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Writes the pending line to log.jsonl. Every write is checked: -1 with err
 * ("<dir>/log.jsonl: write failed at step N: No space left on device"). */
int rundir_log_flush(rundir *rd, int step, char *err);
/* Closes the log and releases the lock. */
void rundir_close(rundir *rd);

/* Graceful stop: after rundir_signals_on, the first SIGINT, SIGTERM or
 * SIGUSR1 is recorded (rundir_stop_signal returns it) for the loop to act on
 * between steps; a second SIGINT exits at once with status 130. off restores
 * the previous handlers. */
void rundir_signals_on(void);
void rundir_signals_off(void);
int rundir_stop_signal(void);
/* "SIGTERM", ... */
const char *rundir_signal_name(int sig);

#endif
