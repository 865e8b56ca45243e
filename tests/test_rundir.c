/* test_rundir.c: the run directory as a journal (host/rundir.c), below the
 * command line: the lock excludes a second holder and names the first; a
 * fresh run refuses checkpoints and --overwrite removes them; a resume keeps
 * the log's lines up to its step (a half line and later steps dropped, other
 * kinds of line of kept steps kept); temporaries of dead writers and of this
 * very pid go, a live process's stay; log writes land line by line; the stop
 * signals are recorded and handed back. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../data/errbuf.h"
#include "../host/rundir.h"

static char dir[64], err[ERRBUF];

static char *pth(const char *name)
{
    static char buf[4][256];
    static int k;
    char *p = buf[k++ % 4];
    snprintf(p, 256, "%s/%s", dir, name);
    return p;
}

static void put(const char *name, const char *text)
{
    FILE *f = fopen(pth(name), "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

static char *get(const char *name)
{
    static char buf[8192];
    FILE *f = fopen(pth(name), "r");
    ck_assert_ptr_nonnull(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

static int exists(const char *name)
{
    struct stat st;
    return stat(pth(name), &st) == 0;
}

static void fresh_dir(void)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s", dir, dir);
    ck_assert_int_eq(system(cmd), 0);
}

START_TEST(test_lock_excludes_and_names_holder)
{
    rundir a, b;
    fresh_dir();
    ck_assert_msg(rundir_open(&a, dir, 0, 0, err) == 0, "%s", err);
    ck_assert_int_eq(rundir_open(&b, dir, 0, 0, err), -1);
    char pid[32];
    snprintf(pid, sizeof pid, "pid %ld", (long)getpid());
    ck_assert_msg(strstr(err, "another trainer") && strstr(err, pid) && strstr(err, dir),
                  "%s", err);
    rundir_close(&a);
    ck_assert_msg(rundir_open(&b, dir, 0, 0, err) == 0, "%s", err); /* released */
    rundir_close(&b);
}
END_TEST

START_TEST(test_fresh_run_refuses_checkpoints)
{
    rundir r;
    fresh_dir();
    put("step_000002.safetensors", "x");
    put("step_000004.safetensors", "x");
    put("log.jsonl", "{\"step\": 1, \"loss\": 1}\n");
    ck_assert_int_eq(rundir_open(&r, dir, 0, 0, err), -1);
    ck_assert_msg(strstr(err, "step_000002.safetensors") && strstr(err, "step_000004") &&
                  strstr(err, "--overwrite"), "%s", err);
    ck_assert_str_eq(get("log.jsonl"), "{\"step\": 1, \"loss\": 1}\n"); /* untouched */
    ck_assert_msg(rundir_open(&r, dir, 0, 1, err) == 0, "%s", err);
    ck_assert(!exists("step_000002.safetensors") && !exists("step_000004.safetensors"));
    ck_assert_str_eq(get("log.jsonl"), "");
    rundir_close(&r);
    /* a resume from step 2 with step 4 present: refused, or 4 removed */
    put("step_000002.safetensors", "x");
    put("step_000004.safetensors", "x");
    ck_assert_int_eq(rundir_open(&r, dir, 2, 0, err), -1);
    ck_assert_msg(strstr(err, "step_000004") && !strstr(err, "step_000002"), "%s", err);
    ck_assert_msg(rundir_open(&r, dir, 2, 1, err) == 0, "%s", err);
    ck_assert(exists("step_000002.safetensors") && !exists("step_000004.safetensors"));
    rundir_close(&r);
}
END_TEST

START_TEST(test_resume_cuts_log)
{
    rundir r;
    fresh_dir();
    put("log.jsonl", "{\"step\": 1, \"loss\": 5}\n"
                     "{\"step\": 2, \"loss\": 4}\n"
                     "{\"step\": 2, \"val_loss\": 4.5}\n"
                     "{\"step\": 3, \"loss\": 3}\n"
                     "{\"step\": 10, \"loss\": 3}\n"
                     "{\"step\": 4, \"lo");
    put("step_000002.safetensors", "x");
    ck_assert_msg(rundir_open(&r, dir, 2, 0, err) == 0, "%s", err);
    ck_assert_str_eq(get("log.jsonl"), "{\"step\": 1, \"loss\": 5}\n"
                                       "{\"step\": 2, \"loss\": 4}\n"
                                       "{\"step\": 2, \"val_loss\": 4.5}\n");
    rundir_logf(&r, "{\"step\": %d, \"loss\": %d", 3, 7);
    rundir_logf(&r, "}\n");
    ck_assert_msg(rundir_log_flush(&r, 3, err) == 0, "%s", err);
    ck_assert_str_eq(get("log.jsonl"), "{\"step\": 1, \"loss\": 5}\n"
                                       "{\"step\": 2, \"loss\": 4}\n"
                                       "{\"step\": 2, \"val_loss\": 4.5}\n"
                                       "{\"step\": 3, \"loss\": 7}\n");
    rundir_close(&r);
}
END_TEST

START_TEST(test_stale_temporaries)
{
    rundir r;
    char dead[96], live[96], mine[96], other[96];
    fresh_dir();
    pid_t c = fork();
    if (c == 0)
        _exit(0);
    waitpid(c, NULL, 0);
    snprintf(dead, sizeof dead, "step_000001.safetensors.tmp.%ld.0", (long)c);
    snprintf(live, sizeof live, "step_000001.safetensors.tmp.%ld.1", (long)getppid());
    snprintf(mine, sizeof mine, "log.jsonl.tmp.%ld.7", (long)getpid());
    snprintf(other, sizeof other, "notes.tmp.txt");
    put(dead, "x");
    put(live, "x");
    put(mine, "x");
    put(other, "x");
    ck_assert_msg(rundir_open(&r, dir, 0, 0, err) == 0, "%s", err);
    ck_assert(!exists(dead) && !exists(mine));
    ck_assert(exists(live) && exists(other));
    rundir_close(&r);
}
END_TEST

START_TEST(test_stop_signals_recorded)
{
    rundir_signals_on();
    ck_assert_int_eq(rundir_stop_signal(), 0);
    raise(SIGUSR1);
    ck_assert_int_eq(rundir_stop_signal(), SIGUSR1);
    raise(SIGTERM); /* the first one is the one reported */
    ck_assert_int_eq(rundir_stop_signal(), SIGUSR1);
    ck_assert_str_eq(rundir_signal_name(SIGTERM), "SIGTERM");
    rundir_signals_off();
    /* a second SIGINT ends the process at once, with status 130 */
    pid_t c = fork();
    if (c == 0) {
        rundir_signals_on();
        raise(SIGINT);
        raise(SIGINT);
        _exit(0);
    }
    int st;
    waitpid(c, &st, 0);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 130);
}
END_TEST

START_TEST(test_log_write_failure_is_an_error)
{
    rundir r;
    fresh_dir();
    ck_assert_msg(rundir_open(&r, dir, 0, 0, err) == 0, "%s", err);
    /* a write to /dev/full fails with ENOSPC, as a full disk does */
    int full = open("/dev/full", O_WRONLY);
    if (full < 0) {
        rundir_close(&r);
        return; /* no /dev/full here: the command-line suite covers it */
    }
    dup2(full, r.log_fd);
    close(full);
    rundir_logf(&r, "{\"step\": 5, \"loss\": 1}\n");
    ck_assert_int_eq(rundir_log_flush(&r, 5, err), -1);
    ck_assert_msg(strstr(err, "log.jsonl") && strstr(err, "at step 5") &&
                  strstr(err, strerror(ENOSPC)), "%s", err);
    rundir_close(&r);
}
END_TEST

int main(void)
{
    strcpy(dir, "/tmp/test_rundir.XXXXXX");
    if (!mkdtemp(dir))
        return 1;
    Suite *s = suite_create("rundir");
    TCase *tc = tcase_create("rundir");
    tcase_add_test(tc, test_lock_excludes_and_names_holder);
    tcase_add_test(tc, test_fresh_run_refuses_checkpoints);
    tcase_add_test(tc, test_resume_cuts_log);
    tcase_add_test(tc, test_stale_temporaries);
    tcase_add_test(tc, test_stop_signals_recorded);
    tcase_add_test(tc, test_log_write_failure_is_an_error);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd))
        fprintf(stderr, "test_rundir: could not remove %s\n", dir);
    return failed ? 1 : 0;
}
