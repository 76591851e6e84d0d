/*
 * test_child - common/child.h, how the daemon starts programs (vfork).
 *
 *   status    exit statuses and signals come back and are described as the
 *             daemon's messages say them
 *   deadline  a child past its deadline is killed by child_wait and by
 *             child_poll, well before it would have ended
 *   group     killing a child with its own group kills its children too
 *   fds       stdout and stderr go where asked; stdin is /dev/null
 *   limits    RLIMIT_AS and RLIMIT_CPU are set as asked
 *   exec      a program that cannot be run exits 127 saying why
 *   env       env_add's variables reach the child's environment beside the
 *             parent's (whose own values win), and the parent's
 *             environment is left as it was
 *   signals   the child starts with no signal blocked and default
 *             dispositions for those the parent handles or ignores
 *             (SIGPIPE, SIGTERM), whatever the parent's mask; the
 *             parent's mask and handlers are as they were
 *   capture   child_capture returns the output (and stderr, read at the same
 *             time, when asked), waits for the end, and
 *             kills a child that keeps its stdout open past the deadline
 */
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/child.h"
#include "common/clock.h"
#include "tests/lib/test_files.h"

static const struct child_opts plain = {.in_fd = -1, .out_fd = -1, .err_fd = -1};

static void run_sh(struct child *c, const char *script, const struct child_opts *o)
{
    const char *argv[] = {"/bin/sh", "-c", script, NULL};
    struct err e;
    if (child_spawn(c, argv, o, &e) < 0)
        fail_msg("spawn: %s", err_str(&e));
}

static void test_status(void **state)
{
    (void)state;
    struct child c;
    char how[128];
    run_sh(&c, "exit 0", &plain);
    child_wait(&c);
    assert_true(child_ok(&c));
    assert_int_equal(c.pid, 0);
    run_sh(&c, "exit 3", &plain);
    child_wait(&c);
    assert_false(child_ok(&c));
    child_describe(&c, how, sizeof how);
    assert_string_equal(how, "exited with status 3");
    run_sh(&c, "kill -SEGV $$", &plain);
    child_wait(&c);
    assert_false(child_ok(&c));
    child_describe(&c, how, sizeof how);
    assert_string_equal(how, "killed by signal 11 (Segmentation fault)");
    run_sh(&c, "sleep 10", &plain);
    assert_int_equal(child_poll(&c), 0);
    child_describe(&c, how, sizeof how);
    assert_string_equal(how, "still running");
    child_kill(&c);
    assert_true(c.ended && WIFSIGNALED(c.status) && WTERMSIG(c.status) == SIGKILL);
    child_kill(&c); /* ended: nothing */
}

static void test_deadline(void **state)
{
    (void)state;
    struct child c;
    struct child_opts o = plain;
    o.timeout_s = 0.3;
    double t0 = mono_now();
    run_sh(&c, "exec sleep 20", &o);
    child_wait(&c);
    double took = mono_now() - t0;
    assert_true(c.timed_out);
    assert_false(child_ok(&c));
    assert_true(took >= 0.3 && took < 10);
    char how[128];
    child_describe(&c, how, sizeof how);
    assert_non_null(strstr(how, "timed out after"));
    /* child_poll enforces it too */
    t0 = mono_now();
    run_sh(&c, "exec sleep 20", &o);
    while (!child_poll(&c))
        usleep(10000);
    assert_true(c.timed_out && mono_now() - t0 < 10);
    /* a child that ends in time is not "timed out" */
    o.timeout_s = 30;
    run_sh(&c, "exit 0", &o);
    child_wait(&c);
    assert_true(child_ok(&c));
    assert_false(c.timed_out);
}

/* Is the process whose pid is in file alive? (waits for the file) */
static int alive_from(const char *file)
{
    char *txt = NULL;
    for (int i = 0; i < 500 && !(txt = slurp(file, NULL)); i++)
        usleep(10000);
    assert_non_null(txt);
    pid_t p = (pid_t)atoi(txt);
    free(txt);
    assert_true(p > 0);
    for (int i = 0; i < 300; i++) { /* a zombie waiting for init counts as gone */
        char *stat = xasprintf("/proc/%d/stat", (int)p), *txt2 = slurp(stat, NULL);
        const char *paren = txt2 ? strrchr(txt2, ')') : NULL;
        int gone = !paren || paren[1] != ' ' || paren[2] == 'Z' || paren[2] == 'X';
        free(txt2);
        free(stat);
        if (gone)
            return 0;
        usleep(10000);
    }
    return 1;
}

static void test_group(void **state)
{
    (void)state;
    char dir[] = "/tmp/ckptd_test_child_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *pidf = xasprintf("%s/pid", dir), *script = xasprintf("sleep 30 & echo $! > %s.w; mv %s.w %s; wait",
                                                                 pidf, pidf, pidf);
    struct child c;
    struct child_opts o = plain;
    o.new_group = 1;
    run_sh(&c, script, &o);
    assert_int_equal(getpgid(c.pid), c.pid);
    while (!slurp(pidf, NULL))
        usleep(10000);
    child_kill(&c);
    assert_false(alive_from(pidf)); /* the grandchild went with the group */
    unlink(pidf);
    rmdir(dir);
    free(script);
    free(pidf);
}

static void test_fds_and_limits(void **state)
{
    (void)state;
    char path[] = "/tmp/ckptd_test_child_out_XXXXXX", epath[] = "/tmp/ckptd_test_child_err_XXXXXX";
    int out = mkstemp(path), err = mkstemp(epath);
    assert_true(out >= 0 && err >= 0);
    struct child c;
    struct child_opts o = plain;
    o.out_fd = out;
    o.err_fd = err;
    o.memory_mb = 512;
    o.cpu_s = 77;
    run_sh(&c, "ulimit -v; ulimit -t; echo oops >&2; cat; echo end", &o);
    child_wait(&c);
    assert_true(child_ok(&c));
    char *txt = slurp(path, NULL), *etxt = slurp(epath, NULL);
    assert_string_equal(txt, "524288\n77\nend\n"); /* KiB; stdin was empty (/dev/null) */
    assert_string_equal(etxt, "oops\n");
    free(etxt);
    free(txt);
    /* a program that cannot be executed: 127, and its stderr says why */
    assert_int_equal(ftruncate(err, 0), 0);
    lseek(err, 0, SEEK_SET);
    const char *argv[] = {"/nonexistent/ckpt-worker", "battery", NULL};
    struct err e;
    assert_int_equal(child_spawn(&c, argv, &o, &e), 0);
    child_wait(&c);
    assert_true(WIFEXITED(c.status) && WEXITSTATUS(c.status) == 127);
    etxt = slurp(epath, NULL);
    assert_non_null(strstr(etxt, "cannot execute /nonexistent/ckpt-worker"));
    free(etxt);
    close(out);
    close(err);
    unlink(path);
    unlink(epath);
}

static void test_env_add(void **state)
{
    (void)state;
    char path[] = "/tmp/ckptd_test_child_env_XXXXXX";
    int out = mkstemp(path);
    assert_true(out >= 0);
    setenv("CKPTD_TEST_INHERITED", "kept", 1);
    unsetenv("CKPTD_TEST_ADDED");
    struct child c;
    struct child_opts o = plain;
    o.out_fd = out;
    const char *add[] = {"CKPTD_TEST_ADDED=chosen", "CKPTD_TEST_SECOND=too", "CKPTD_TEST_INHERITED=lost", NULL};
    o.env_add = add;
    run_sh(&c, "echo \"$CKPTD_TEST_ADDED $CKPTD_TEST_SECOND $CKPTD_TEST_INHERITED\"", &o);
    child_wait(&c);
    assert_true(child_ok(&c));
    char *txt = slurp(path, NULL);
    /* every one added; a name the parent has keeps the parent's value */
    assert_string_equal(txt, "chosen too kept\n");
    free(txt);
    assert_null(getenv("CKPTD_TEST_ADDED"));
    /* without it, nothing is added */
    assert_int_equal(ftruncate(out, 0), 0);
    lseek(out, 0, SEEK_SET);
    o.env_add = NULL;
    run_sh(&c, "echo \"[${CKPTD_TEST_ADDED-unset}]\"", &o);
    child_wait(&c);
    txt = slurp(path, NULL);
    assert_string_equal(txt, "[unset]\n");
    free(txt);
    unsetenv("CKPTD_TEST_INHERITED");
    close(out);
    unlink(path);
}

static void test_capture(void **state)
{
    (void)state;
    struct child c;
    struct err e;
    char *out = NULL;
    size_t len = 0;
    const char *hello[] = {"/bin/sh", "-c", "printf 'hello\\nworld'; exit 4", NULL};
    assert_int_equal(child_capture(hello, 10, &c, &out, &len, NULL, &e), 0);
    assert_int_equal(len, 11);
    assert_string_equal(out, "hello\nworld");
    assert_true(WIFEXITED(c.status) && WEXITSTATUS(c.status) == 4);
    free(out);
    /* more than the first buffer */
    const char *big[] = {"/bin/sh", "-c", "head -c 300000 /dev/zero", NULL};
    assert_int_equal(child_capture(big, 0, &c, &out, &len, NULL, &e), 0);
    assert_int_equal(len, 300000);
    assert_true(child_ok(&c));
    free(out);
    /* stderr too, read alongside (a full stderr pipe cannot stall stdout) */
    const char *both[] = {"/bin/sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x >&2; echo out; echo 'level=error' >&2", NULL};
    char *err_text = NULL;
    assert_int_equal(child_capture(both, 10, &c, &out, &len, &err_text, &e), 0);
    assert_string_equal(out, "out\n");
    assert_non_null(err_text);
    assert_int_equal(strlen(err_text), 100000 + strlen("level=error\n"));
    assert_string_equal(err_text + 100000, "level=error\n");
    free(err_text);
    free(out);
    /* silent and stuck, or talking and stuck: killed at the deadline */
    const char *stuck[] = {"/bin/sh", "-c", "echo partial; exec sleep 20", NULL};
    double t0 = mono_now();
    err_clear(&e);
    assert_int_equal(child_capture(stuck, 0.3, &c, &out, &len, NULL, &e), ERR_CHILD);
    assert_null(out);
    assert_true(mono_now() - t0 < 10);
    assert_non_null(strstr(e.msg, "timed out"));
    assert_true(c.ended && c.timed_out);
    /* stdout closed but the process lingers: child_wait's deadline */
    const char *lingers[] = {"/bin/sh", "-c", "exec >&-; exec sleep 20", NULL};
    t0 = mono_now();
    assert_int_equal(child_capture(lingers, 0.3, &c, &out, &len, NULL, &e), ERR_CHILD);
    assert_true(mono_now() - t0 < 10);
}

static volatile sig_atomic_t usr1_seen;
static void on_usr1(int sig)
{
    (void)sig;
    usr1_seen = 1;
}

static void test_signals(void **state)
{
    (void)state;
    struct sigaction sa = {.sa_handler = on_usr1}, old_usr1, old_term;
    sigemptyset(&sa.sa_mask);
    assert_int_equal(sigaction(SIGUSR1, &sa, &old_usr1), 0);
    signal(SIGPIPE, SIG_IGN);
    struct sigaction ign = {.sa_handler = SIG_IGN};
    sigemptyset(&ign.sa_mask);
    assert_int_equal(sigaction(SIGTERM, &ign, &old_term), 0);
    sigset_t block, before, after;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR2);
    sigprocmask(SIG_BLOCK, &block, NULL);
    sigprocmask(SIG_BLOCK, NULL, &before);
    /* the child's mask and its SIGUSR1, SIGTERM and SIGPIPE: each kills it */
    struct child c;
    struct err e;
    char *out = NULL;
    size_t len = 0;
    const char *mask[] = {"/bin/sh", "-c", "sed -n 's/^SigBlk:[[:space:]]*//p' /proc/self/status", NULL};
    assert_int_equal(child_capture(mask, 10, &c, &out, &len, NULL, &e), 0);
    assert_string_equal(out, "0000000000000000\n");
    free(out);
    const char *scripts[] = {"kill -USR1 $$; exit 0", "kill -TERM $$; exit 0", "kill -PIPE $$; exit 0"};
    const int sigs[] = {SIGUSR1, SIGTERM, SIGPIPE};
    for (int i = 0; i < 3; i++) {
        run_sh(&c, scripts[i], &plain);
        child_wait(&c);
        assert_true(WIFSIGNALED(c.status));
        assert_int_equal(WTERMSIG(c.status), sigs[i]);
    }
    /* the parent: its mask as it was, its handler still its own */
    sigprocmask(SIG_BLOCK, NULL, &after);
    for (int sig = 1; sig < NSIG; sig++)
        assert_int_equal(sigismember(&after, sig), sigismember(&before, sig));
    usr1_seen = 0;
    raise(SIGUSR1);
    assert_int_equal(usr1_seen, 1);
    sigprocmask(SIG_UNBLOCK, &block, NULL);
    sigaction(SIGUSR1, &old_usr1, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    signal(SIGPIPE, SIG_DFL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status), cmocka_unit_test(test_deadline),
        cmocka_unit_test(test_group),  cmocka_unit_test(test_fds_and_limits),
        cmocka_unit_test(test_capture),    cmocka_unit_test(test_env_add),
        cmocka_unit_test(test_signals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
