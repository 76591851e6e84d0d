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

/* In the child, between vfork and exec, on the parent's memory: only
 * async-signal-safe calls, nothing written but this frame's locals. */
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
    /* default dispositions for these, whether handled or ignored here */
    const int sigs[] = {SIGPIPE, SIGTERM, SIGHUP, SIGINT, SIGCHLD, SIGQUIT};
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++)
        signal(sigs[i], SIG_DFL);
    /* and for any other the parent handles: its handler must not run on
     * the parent's memory once the mask is lifted (exec would reset it) */
    for (int sig = 1; sig < NSIG; sig++) {
        struct sigaction sa;
        if (sig != SIGKILL && sig != SIGSTOP && sigaction(sig, NULL, &sa) == 0 &&
            sa.sa_handler != SIG_DFL && sa.sa_handler != SIG_IGN)
            signal(sig, SIG_DFL);
    }
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
    if (o->env_add) { /* on the stack: no allocation between fork and exec */
        size_t n = 0, k = 0;
        while (environ[n])
            n++;
        while (o->env_add[k])
            k++;
        char *envp[n + k + 1];
        memcpy(envp, environ, n * sizeof *envp);
        size_t m = n;
        for (size_t i = 0; i < k; i++) {
            const char *eq = strchr(o->env_add[i], '=');
            size_t len = eq ? (size_t)(eq - o->env_add[i]) + 1 : strlen(o->env_add[i]);
            size_t j = 0;
            while (j < n && strncmp(environ[j], o->env_add[i], len) != 0)
                j++;
            if (j == n) /* a name the parent has keeps the parent's value */
                envp[m++] = (char *)o->env_add[i];
        }
        envp[m] = NULL;
        execvpe(argv[0], (char *const *)argv, envp);
    } else {
        execvp(argv[0], (char *const *)argv);
    }
    dprintf(2, "cannot execute %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

int child_spawn(struct child *c, const char *const *argv, const struct child_opts *o, struct err *e)
{
    memset(c, 0, sizeof *c);
    pid_t parent = getpid();
    /* vfork: the child borrows this process's memory until it execs, so
     * nothing is copied (fork copied the daemon's page tables, most of a
     * claim's cost in the daemon).  Every signal is blocked meanwhile: no
     * handler of this process runs in the child before start_program has
     * set the defaults. */
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
    pid_t pid = vfork();
    if (pid == 0)
        start_program(argv, o, parent);
    int saved = errno;
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (pid < 0)
        return err_set(e, ERR_CHILD, argv[0], "vfork failed: %s", strerror(saved));
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

/* A growing buffer a pipe is read into. */
struct sink {
    int fd;       /* -1 once at its end */
    char *buf;
    size_t len, cap;
};

/* Read what fd has now into k; 0, or -1 out of memory or on a read error. */
static int sink_read(struct sink *k)
{
    if (k->len + 1 >= k->cap) {
        char *nb = realloc(k->buf, k->cap * 2);
        if (!nb)
            return -1;
        k->buf = nb;
        k->cap *= 2;
    }
    ssize_t got = read(k->fd, k->buf + k->len, k->cap - k->len - 1);
    if (got < 0 && errno == EINTR)
        return 0;
    if (got <= 0) {
        close(k->fd);
        k->fd = -1;
        return got < 0 ? -1 : 0;
    }
    k->len += (size_t)got;
    return 0;
}

int child_capture(const char *const *argv, double timeout_s, struct child *c, char **out,
                  size_t *len, char **err_out, struct err *e)
{
    *out = NULL;
    *len = 0;
    if (err_out)
        *err_out = NULL;
    struct sink k[2] = {{-1, NULL, 0, 1 << 16}, {-1, NULL, 0, 1 << 12}};
    int pout[2] = {-1, -1}, perr[2] = {-1, -1}, rc = 0;
    if (pipe2(pout, O_CLOEXEC) != 0 || (err_out && pipe2(perr, O_CLOEXEC) != 0)) {
        rc = err_set(e, ERR_IO, argv[0], "pipe failed: %s", strerror(errno));
        for (int i = 0; i < 2; i++) {
            if (pout[i] >= 0)
                close(pout[i]);
        }
        return rc;
    }
    struct child_opts o = {.in_fd = -1, .out_fd = pout[1], .err_fd = perr[1], .timeout_s = timeout_s};
    rc = child_spawn(c, argv, &o, e);
    close(pout[1]);
    if (perr[1] >= 0)
        close(perr[1]);
    k[0].fd = pout[0];
    k[1].fd = perr[0];
    if (rc < 0) {
        for (int i = 0; i < 2; i++)
            if (k[i].fd >= 0)
                close(k[i].fd);
        return rc;
    }
    for (int i = 0; i < 2 && rc == 0; i++)
        if (k[i].fd >= 0 && !(k[i].buf = malloc(k[i].cap)))
            rc = err_set(e, ERR_NOMEM, argv[0], "out of memory");
    while (rc == 0 && (k[0].fd >= 0 || k[1].fd >= 0)) {
        int wait_ms = -1;
        if (c->deadline > 0) {
            double left = c->deadline - mono_now();
            if (left <= 0) {
                c->timed_out = 1;
                break;
            }
            wait_ms = (int)(left * 1000) + 1;
        }
        struct pollfd p[2];
        int np = 0, which[2];
        for (int i = 0; i < 2; i++)
            if (k[i].fd >= 0) {
                p[np] = (struct pollfd){k[i].fd, POLLIN, 0};
                which[np++] = i;
            }
        int pr = poll(p, (nfds_t)np, wait_ms);
        if (pr <= 0)
            continue; /* EINTR, or the deadline: checked above */
        for (int j = 0; j < np && rc == 0; j++)
            if (p[j].revents && sink_read(&k[which[j]]) < 0)
                rc = err_set(e, ERR_IO, argv[0], "cannot read its output: %s", strerror(errno));
    }
    for (int i = 0; i < 2; i++)
        if (k[i].fd >= 0)
            close(k[i].fd);
    if (rc == 0 && !c->timed_out)
        child_wait(c); /* its output closed: it is ending (or past its deadline: killed) */
    if (rc < 0 || c->timed_out) {
        int timed_out = c->timed_out;
        child_kill(c);
        c->timed_out = timed_out;
        if (rc == 0)
            rc = err_set(e, ERR_CHILD, argv[0], "'%s' timed out after %.0f s and was killed", argv[0],
                         timeout_s);
        free(k[0].buf);
        free(k[1].buf);
        return rc;
    }
    k[0].buf[k[0].len] = '\0';
    *out = k[0].buf;
    *len = k[0].len;
    if (err_out) {
        k[1].buf[k[1].len] = '\0';
        *err_out = k[1].buf;
    }
    return 0;
}
