/*
 * test_supervise - daemon/work/supervise.h, the daemon's worker processes
 * (stand-in workers are shell commands):
 *
 *   ok        a worker that exits 0: its stdout in the spool's .rows file,
 *             ok, its wall time; supervise_cleanup removes the spool files
 *   failed    exit status and signal become the job's error with the tail
 *             of stderr (its last lines joined by " | ", at most ~600
 *             bytes, from a line boundary)
 *   deadline  a worker past timeout_s is killed with its whole process
 *             group (a grandchild too) and says so
 *   kill      supervise_kill stops a running worker ("killed by the daemon")
 *   limits    RLIMIT_AS and RLIMIT_CPU reach the worker; stdin is empty
 *   errors    a spool directory that cannot be made, a worker that cannot
 *             be executed (exit 127, "cannot execute" in the error)
 *   path      supervise_worker_path: the configured one, else ckpt-worker
 *             beside the running program, else on PATH
 *   gate      a gated worker waits on its stdin, past its own timeout, until
 *             supervise_open_gate: then it reads one byte and runs, its
 *             seconds and its deadline counted from the opening; killed
 *             before, its gate is closed and it ends as killed; one whose
 *             stdin closes without a byte reads end of input
 *   tag       a second worker started under a tag in use fails with a
 *             clear error and leaves the first one's files as they are; a
 *             tag whose files were cleaned up can be used again
 */
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/clock.h"
#include "daemon/work/supervise.h"
#include "tests/lib/test_files.h"

static char dir[64];
static const struct worker_limits none = {0, 0, 0, NULL, 0};

static void start_sh(struct worker *w, const char *script, const struct worker_limits *lim, const char *tag)
{
    const char *argv[] = {"/bin/sh", "-c", script, NULL};
    struct err e;
    char *spool = xasprintf("%s/spool", dir);
    if (supervise_start(w, argv, spool, tag, lim, &e) < 0)
        fail_msg("supervise_start: %s", err_str(&e));
    free(spool);
}

static void wait_end(struct worker *w)
{
    double t0 = mono_now();
    while (!supervise_poll(w)) {
        if (mono_now() - t0 > 30)
            fail_msg("worker still running after 30 s");
        usleep(5000);
    }
}

static void test_ok(void **state)
{
    (void)state;
    struct worker w;
    start_sh(&w, "printf 'loss\\t1\\tloss\\t-1\\t-1\\t-1\\t2.5\\n'; echo progress >&2", &none, "ck1");
    assert_true(w.proc.pid > 0);
    wait_end(&w);
    assert_true(w.done && w.ok);
    assert_int_equal(w.proc.pid, 0);
    assert_true(w.seconds >= 0 && w.seconds < 30);
    char *rows = slurp(w.out_path, NULL);
    assert_string_equal(rows, "loss\t1\tloss\t-1\t-1\t-1\t2.5\n");
    free(rows);
    char *want = xasprintf("%s/spool/ck1.rows", dir);
    assert_string_equal(w.out_path, want);
    free(want);
    assert_int_equal(supervise_poll(&w), 1); /* ended stays ended */
    supervise_cleanup(&w);
    assert_int_equal(access(w.out_path, F_OK), -1);
    assert_int_equal(access(w.err_path, F_OK), -1);
}

static void test_failed(void **state)
{
    (void)state;
    struct worker w;
    start_sh(&w, "echo 'first line' >&2; echo 'level=error msg=\"bad checkpoint\"' >&2; exit 3", &none, "ck2");
    wait_end(&w);
    assert_false(w.ok);
    assert_string_equal(w.error, "worker exited with status 3; stderr: first line | level=error msg=\"bad checkpoint\"");
    supervise_cleanup(&w);
    start_sh(&w, "kill -SEGV $$", &none, "ck3");
    wait_end(&w);
    assert_false(w.ok);
    assert_string_equal(w.error, "worker killed by signal 11 (Segmentation fault)");
    supervise_cleanup(&w);
    /* a long stderr: its tail, from a line start, about 600 bytes */
    start_sh(&w, "i=0; while [ $i -lt 100 ]; do echo \"line number $i of the log\" >&2; i=$((i+1)); done; exit 1",
             &none, "ck4");
    wait_end(&w);
    assert_non_null(strstr(w.error, "; stderr: line number "));
    assert_non_null(strstr(w.error, " | line number 99 of the log"));
    assert_null(strstr(w.error, "line number 0 of"));
    assert_true(strlen(w.error) < 700);
    supervise_cleanup(&w);
}

static void test_tag_in_use(void **state)
{
    (void)state;
    struct worker w, w2;
    struct err e;
    start_sh(&w, "printf 'loss\\t1\\tloss\\t-1\\t-1\\t-1\\t2.5\\n'; sleep 0.3", &none, "ck9");
    const char *argv[] = {"/bin/sh", "-c", "echo other", NULL};
    char *spool = xasprintf("%s/spool", dir);
    err_clear(&e);
    assert_true(supervise_start(&w2, argv, spool, "ck9", &none, &e) < 0);
    assert_non_null(strstr(err_str(&e), "tag 'ck9' is in use"));
    assert_int_equal(w2.proc.pid, 0);
    supervise_cleanup(&w2); /* removes nothing of the first worker's */
    wait_end(&w);
    assert_true(w.ok);
    char *rows = slurp(w.out_path, NULL);
    assert_string_equal(rows, "loss\t1\tloss\t-1\t-1\t-1\t2.5\n");
    free(rows);
    assert_int_equal(access(w.err_path, F_OK), 0);
    supervise_cleanup(&w);
    start_sh(&w, "echo again", &none, "ck9");
    wait_end(&w);
    assert_true(w.ok);
    rows = slurp(w.out_path, NULL);
    assert_string_equal(rows, "again\n");
    free(rows);
    supervise_cleanup(&w);
    free(spool);
}

static void test_gate(void **state)
{
    (void)state;
    struct worker w;
    /* gated with a 0.3 s timeout: it must not count while the gate is shut */
    struct worker_limits lim = {0.3, 0, 0, NULL, 1};
    start_sh(&w, "x=$(head -c 1); echo \"begun $x\"", &lim, "gate1");
    assert_int_equal(w.gate, 1);
    double t0 = mono_now();
    while (mono_now() - t0 < 0.6) {
        assert_int_equal(supervise_poll(&w), 0); /* waits, and no deadline kills it */
        usleep(20000);
    }
    double opened = mono_now();
    supervise_open_gate(&w);
    assert_int_equal(w.gate, 0);
    wait_end(&w);
    assert_true(w.ok);
    assert_true(w.seconds < mono_now() - opened + 0.01); /* from the opening, not the start */
    char *out = slurp(w.out_path, NULL);
    assert_string_equal(out, "begun g\n");
    free(out);
    supervise_open_gate(&w); /* open already: nothing */
    supervise_cleanup(&w);

    /* past its timeout once open: killed */
    start_sh(&w, "head -c 1 >/dev/null; sleep 30", &lim, "gate2");
    supervise_open_gate(&w);
    wait_end(&w);
    assert_true(w.timed_out && !w.ok);
    supervise_cleanup(&w);

    /* killed before its gate opens */
    start_sh(&w, "head -c 1 >/dev/null; echo never", &lim, "gate3");
    supervise_kill(&w);
    assert_true(w.done && !w.ok);
    assert_int_equal(w.gate, 0);
    out = slurp(w.out_path, NULL);
    assert_string_equal(out, "");
    free(out);
    supervise_cleanup(&w);

    /* ungated workers read an empty stdin, as before */
    start_sh(&w, "x=$(head -c 1); echo \"[$x]\"", &none, "gate4");
    assert_int_equal(w.gate, 0);
    wait_end(&w);
    out = slurp(w.out_path, NULL);
    assert_string_equal(out, "[]\n");
    free(out);
    supervise_cleanup(&w);
}

static void test_deadline_and_kill(void **state)
{
    (void)state;
    struct worker w;
    struct worker_limits lim = {0.3, 0, 0, NULL, 0};
    char *pidf = xasprintf("%s/grandchild", dir);
    char *script = xasprintf("sleep 30 & echo $! > %s; wait", pidf);
    double t0 = mono_now();
    start_sh(&w, script, &lim, "ck5");
    wait_end(&w);
    assert_true(mono_now() - t0 < 20);
    assert_true(w.timed_out && !w.ok);
    assert_non_null(strstr(w.error, "worker timed out after"));
    assert_non_null(strstr(w.error, "and was killed"));
    char *txt = NULL;
    for (int i = 0; i < 200 && !(txt = slurp(pidf, NULL)); i++)
        usleep(10000);
    if (txt) { /* the grandchild went with the group (a zombie for init at most) */
        char *stat = xasprintf("/proc/%d/stat", atoi(txt)), *st = NULL;
        for (int i = 0; i < 200; i++) {
            free(st);
            st = slurp(stat, NULL);
            const char *paren = st ? strrchr(st, ')') : NULL;
            if (!paren || paren[2] == 'Z' || paren[2] == 'X')
                break;
            usleep(10000);
        }
        const char *paren = st ? strrchr(st, ')') : NULL;
        assert_true(!paren || paren[2] == 'Z' || paren[2] == 'X');
        free(st);
        free(stat);
        free(txt);
    }
    supervise_cleanup(&w);
    /* the daemon stops a worker (lost lease, shutdown) */
    start_sh(&w, "exec sleep 30", &none, "ck6");
    assert_int_equal(supervise_poll(&w), 0);
    supervise_kill(&w);
    assert_true(w.done && !w.ok);
    assert_string_equal(w.error, "worker killed by the daemon");
    supervise_kill(&w); /* nothing left to kill */
    supervise_cleanup(&w);
    free(script);
    free(pidf);
}

static void test_limits(void **state)
{
    (void)state;
    struct worker w;
    struct worker_limits lim = {60, 300, 42, NULL, 0};
    start_sh(&w, "ulimit -v; ulimit -t; cat; echo end", &lim, "ck7");
    wait_end(&w);
    assert_true(w.ok);
    char *out = slurp(w.out_path, NULL);
    assert_string_equal(out, "307200\n42\nend\n");
    free(out);
    supervise_cleanup(&w);
}

static void test_errors(void **state)
{
    (void)state;
    struct worker w;
    struct err e;
    char *file = xasprintf("%s/plain", dir), *under = xasprintf("%s/plain/spool", dir);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fclose(f);
    const char *argv[] = {"/bin/true", NULL};
    err_clear(&e);
    assert_true(supervise_start(&w, argv, under, "x", &none, &e) < 0);
    assert_non_null(strstr(err_str(&e), "spool"));
    assert_int_equal(w.proc.pid, 0);
    const char *missing[] = {"/nonexistent/ckpt-worker", "analyze", NULL};
    char *spool = xasprintf("%s/spool", dir);
    assert_int_equal(supervise_start(&w, missing, spool, "ck8", &none, &e), 0);
    wait_end(&w);
    assert_false(w.ok);
    assert_non_null(strstr(w.error, "worker exited with status 127; stderr: cannot execute /nonexistent/ckpt-worker"));
    supervise_cleanup(&w);
    free(spool);
    free(under);
    free(file);
}

static void test_worker_path(void **state)
{
    (void)state;
    char out[PATH_MAX];
    supervise_worker_path("/opt/ckptd/bin/ckpt-worker", out, sizeof out);
    assert_string_equal(out, "/opt/ckptd/bin/ckpt-worker");
    /* this program's folder (build/tests) has no ckpt-worker: PATH */
    supervise_worker_path("", out, sizeof out);
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    assert_true(n > 0);
    self[n] = '\0';
    *strrchr(self, '/') = '\0';
    char *beside = xasprintf("%s/ckpt-worker", self);
    if (access(beside, X_OK) == 0)
        assert_string_equal(out, beside);
    else
        assert_string_equal(out, "ckpt-worker");
    free(beside);
}

static int setup(void **state)
{
    (void)state;
    return scratch_make(dir, sizeof dir, "ckptd_test_supervise_");
}

static int teardown(void **state)
{
    (void)state;
    return scratch_remove(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ok),     cmocka_unit_test(test_failed), cmocka_unit_test(test_deadline_and_kill),
        cmocka_unit_test(test_limits), cmocka_unit_test(test_errors), cmocka_unit_test(test_worker_path),
        cmocka_unit_test(test_gate),        cmocka_unit_test(test_tag_in_use),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
