#include "common/child.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"

/* In the child, between fork and exec: only async-signal-safe calls. */
static void start_program(const char *const *argv, const struct child_opts *o, pid_t parent)
{
    if (o->new_group)
        setpgid(0, 0);
    if (o->die_with_parent) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) /* it died before prctl took effect */
            _exit(127);
    }
    int in = o->in_fd >= 0 ? o->in_fd : open("/dev/null", O_RDONLY);
    if (in >= 0 && in != 0)
        dup2(in, 0);
    if (o->out_fd >= 0 && o->out_fd != 1)
        dup2(o->out_fd, 1);
    if (o->err_fd >= 0 && o->err_fd != 2)
        dup2(o->err_fd, 2);
    const int sigs[] = {SIGPIPE, SIGTERM, SIGHUP, SIGINT, SIGCHLD, SIGQUIT};
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++)
        signal(sigs[i], SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (o->memory_mb > 0) {
        struct rlimit rl = {(rlim_t)o->memory_mb << 20, (rlim_t)o->memory_mb << 20};
        setrlimit(RLIMIT_AS, &rl);
    }
    if (o->cpu_s > 0) {
        struct rlimit rl = {(rlim_t)o->cpu_s, (rlim_t)o->cpu_s + 5};
        setrlimit(RLIMIT_CPU, &rl);
    }
    execvp(argv[0], (char *const *)argv);
    dprintf(2, "cannot execute %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

int child_spawn(struct child *c, const char *const *argv, const struct child_opts *o, struct err *e)
{
    memset(c, 0, sizeof *c);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        return err_set(e, ERR_CHILD, argv[0], "fork failed: %s", strerror(errno));
    if (pid == 0)
        start_program(argv, o, parent);
    if (o->new_group)
        setpgid(pid, pid); /* also from the parent: no race with kill(-pid) */
    c->pid = pid;
    c->group = o->new_group;
    c->started = mono_now();
    c->deadline = o->timeout_s > 0 ? c->started + o->timeout_s : 0;
    return 0;
}

static void reaped(struct child *c, int status)
{
    c->status = status;
    c->ended = 1;
    c->pid = 0;
    c->seconds = mono_now() - c->started;
}

void child_kill(struct child *c)
{
    if (c->ended || c->pid <= 0)
        return;
    kill(c->group ? -c->pid : c->pid, SIGKILL);
    int status = 0;
    while (waitpid(c->pid, &status, 0) < 0 && errno == EINTR)
        ;
    reaped(c, status);
}

int child_poll(struct child *c)
{
    if (c->ended || c->pid <= 0)
        return 1;
    int status = 0;
    if (waitpid(c->pid, &status, WNOHANG) == c->pid) {
        reaped(c, status);
        return 1;
    }
    if (c->deadline > 0 && mono_now() > c->deadline) {
        c->timed_out = 1;
        child_kill(c);
        return 1;
    }
    return 0;
}

void child_wait(struct child *c)
{
    if (c->deadline <= 0) {
        int status = 0;
        pid_t r;
        while ((r = waitpid(c->pid, &status, 0)) < 0 && errno == EINTR)
            ;
        if (r == c->pid)
            reaped(c, status);
        return;
    }
    /* a deadline: look every few milliseconds, longer as it runs */
    long ns = 1000000;
    while (!child_poll(c)) {
        struct timespec ts = {0, ns};
        nanosleep(&ts, NULL);
        ns = ns < 20000000 ? ns * 2 : ns;
    }
}

int child_ok(const struct child *c)
{
    return c->ended && !c->timed_out && WIFEXITED(c->status) && WEXITSTATUS(c->status) == 0;
}

void child_describe(const struct child *c, char *out, size_t n)
{
    if (!c->ended)
        snprintf(out, n, "still running");
    else if (c->timed_out)
        snprintf(out, n, "timed out after %.0f s and was killed", c->seconds);
    else if (WIFSIGNALED(c->status))
        snprintf(out, n, "killed by signal %d (%s)", WTERMSIG(c->status), strsignal(WTERMSIG(c->status)));
    else
        snprintf(out, n, "exited with status %d", WEXITSTATUS(c->status));
}

int child_capture(const char *const *argv, double timeout_s, struct child *c, char **out,
                  size_t *len, struct err *e)
{
    *out = NULL;
    *len = 0;
    int fd[2];
    if (pipe2(fd, O_CLOEXEC) != 0)
        return err_set(e, ERR_IO, argv[0], "pipe failed: %s", strerror(errno));
    struct child_opts o = {.in_fd = -1, .out_fd = fd[1], .err_fd = -1, .timeout_s = timeout_s};
    int rc = child_spawn(c, argv, &o, e);
    close(fd[1]);
    if (rc < 0) {
        close(fd[0]);
        return rc;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    if (!buf)
        rc = err_set(e, ERR_NOMEM, argv[0], "out of memory");
    while (rc == 0) {
        if (n + 1 >= cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                rc = err_set(e, ERR_NOMEM, argv[0], "out of memory");
                break;
            }
            buf = nb;
            cap *= 2;
        }
        int wait_ms = -1;
        if (c->deadline > 0) {
            double left = c->deadline - mono_now();
            if (left <= 0) {
                c->timed_out = 1;
                break;
            }
            wait_ms = (int)(left * 1000) + 1;
        }
        struct pollfd p = {fd[0], POLLIN, 0};
        int pr = poll(&p, 1, wait_ms);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr == 0)
            continue; /* the deadline, checked above */
        ssize_t got = read(fd[0], buf + n, cap - n - 1);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            rc = err_set(e, ERR_IO, argv[0], "cannot read its output: %s", strerror(errno));
        if (got <= 0)
            break;
        n += (size_t)got;
    }
    close(fd[0]);
    if (rc < 0 || c->timed_out) {
        int timed_out = c->timed_out;
        child_kill(c);
        c->timed_out = timed_out;
        free(buf);
        if (rc == 0)
            rc = err_set(e, ERR_CHILD, argv[0], "'%s' timed out after %.0f s and was killed", argv[0],
                         timeout_s);
        return rc;
    }
    child_wait(c); /* stdout closed: it is ending (or past its deadline: killed) */
    if (c->timed_out) {
        free(buf);
        return err_set(e, ERR_CHILD, argv[0], "'%s' timed out after %.0f s and was killed", argv[0],
                       timeout_s);
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}
