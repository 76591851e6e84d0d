#include "daemon/work/supervise.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/path.h"

void supervise_worker_path(const char *configured, char *out, size_t n)
{
    if (configured && *configured) {
        snprintf(out, n, "%s", configured);
        return;
    }
    char self[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len > 0) {
        self[len] = '\0';
        char *slash = strrchr(self, '/');
        if (slash) {
            *slash = '\0';
            char cand[PATH_MAX + 16];
            snprintf(cand, sizeof cand, "%s/ckpt-worker", self);
            if (access(cand, X_OK) == 0) {
                snprintf(out, n, "%s", cand);
                return;
            }
        }
    }
    snprintf(out, n, "ckpt-worker");
}

int supervise_start(struct worker *w, const char *const *argv, const char *spool_dir,
                    const char *tag, const struct worker_limits *lim, struct err *e)
{
    memset(w, 0, sizeof *w);
    if (path_mkdir_p(spool_dir, e) < 0)
        return err_wrap(e, "spool directory");
    snprintf(w->out_path, sizeof w->out_path, "%s/%s.rows", spool_dir, tag);
    snprintf(w->err_path, sizeof w->err_path, "%s/%s.err", spool_dir, tag);
    supervise_status_path(w->status_path, sizeof w->status_path, spool_dir, tag);
    unlink(w->status_path); /* only the new worker's outcomes count */
    int out = open(w->out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int errfd = open(w->err_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0 || errfd < 0) {
        if (out >= 0)
            close(out);
        if (errfd >= 0)
            close(errfd);
        return err_set(e, ERR_IO, w->out_path, "cannot create spool file: %s", strerror(errno));
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        close(out);
        close(errfd);
        return err_set(e, ERR_CHILD, argv[0], "fork failed: %s", strerror(errno));
    }
    if (pid == 0) {
        setpgid(0, 0);
        /* a daemon killed outright takes its workers with it; their jobs
         * return to the queue when the lease expires */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) /* it died before prctl took effect */
            _exit(127);
        dup2(out, 1);
        dup2(errfd, 2);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0)
            dup2(devnull, 0);
        signal(SIGPIPE, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        if (lim->memory_mb > 0) {
            struct rlimit rl = {(rlim_t)lim->memory_mb << 20, (rlim_t)lim->memory_mb << 20};
            setrlimit(RLIMIT_AS, &rl);
        }
        if (lim->cpu_s > 0) {
            struct rlimit rl = {(rlim_t)lim->cpu_s, (rlim_t)lim->cpu_s + 5};
            setrlimit(RLIMIT_CPU, &rl);
        }
        execvp(argv[0], (char *const *)argv);
        fprintf(stderr, "cannot execute %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid); /* also from the parent: no race with kill(-pid) */
    close(out);
    close(errfd);
    w->pid = pid;
    w->started = mono_now();
    w->deadline = lim->timeout_s > 0 ? w->started + lim->timeout_s : 0;
    return 0;
}

/* The last lines of the stderr file, joined with " | ", at most ~600 bytes. */
static void stderr_tail(const struct worker *w, char *out, size_t n)
{
    out[0] = '\0';
    FILE *f = fopen(w->err_path, "rb");
    if (!f)
        return;
    char buf[601];
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    long from = size > 600 ? size - 600 : 0;
    fseek(f, from, SEEK_SET);
    size_t got = fread(buf, 1, 600, f);
    fclose(f);
    buf[got] = '\0';
    char *p = buf;
    if (from > 0) { /* start at a line boundary */
        char *nl = strchr(p, '\n');
        if (nl)
            p = nl + 1;
    }
    size_t o = 0;
    for (char *line = strtok(p, "\n"); line && o + 4 < n; line = strtok(NULL, "\n"))
        o += (size_t)snprintf(out + o, n - o, "%s%s", o ? " | " : "", line);
}

static void describe_end(struct worker *w, int status)
{
    char tail[700];
    stderr_tail(w, tail, sizeof tail);
    w->ok = !w->timed_out && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (w->ok)
        return;
    if (w->timed_out)
        snprintf(w->how, sizeof w->how, "worker timed out after %.0f s and was killed", w->seconds);
    else if (WIFSIGNALED(status))
        snprintf(w->how, sizeof w->how, "worker killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(w->how, sizeof w->how, "worker exited with status %d", WEXITSTATUS(status));
    snprintf(w->error, sizeof w->error, "%s%s%s", w->how, tail[0] ? "; stderr: " : "", tail);
}

int supervise_poll(struct worker *w)
{
    if (w->done)
        return 1;
    if (!w->pid)
        return 1;
    int status = 0;
    pid_t r = waitpid(w->pid, &status, WNOHANG);
    if (r == w->pid) {
        w->seconds = mono_now() - w->started;
        w->done = 1;
        w->pid = 0;
        describe_end(w, status);
        return 1;
    }
    if (w->deadline > 0 && mono_now() > w->deadline) {
        w->timed_out = 1;
        kill(-w->pid, SIGKILL);
        waitpid(w->pid, &status, 0);
        w->seconds = mono_now() - w->started;
        w->done = 1;
        w->pid = 0;
        describe_end(w, status);
        return 1;
    }
    return 0;
}

void supervise_kill(struct worker *w)
{
    if (w->pid > 0 && !w->done) {
        kill(-w->pid, SIGKILL);
        int status;
        waitpid(w->pid, &status, 0);
        w->seconds = mono_now() - w->started;
        w->done = 1;
        w->pid = 0;
        w->ok = 0;
        snprintf(w->how, sizeof w->how, "worker killed by the daemon");
        snprintf(w->error, sizeof w->error, "%s", w->how);
    }
}

void supervise_cleanup(struct worker *w)
{
    if (w->out_path[0])
        unlink(w->out_path);
    if (w->err_path[0])
        unlink(w->err_path);
    if (w->status_path[0])
        unlink(w->status_path);
}

/* ---- the spool and item outcomes ---- */

static void remove_spool_files(const char *dir, const char *tag, void *arg)
{
    (void)arg;
    int n = owner_remove_tagged(dir, tag);
    if (n > 0)
        log_info("spool files of a dead daemon removed", "owner=%s files=%d", tag, n);
}

struct owner *supervise_spool_open(const char *spool_dir, const char *node, struct err *e)
{
    if (path_mkdir_p(spool_dir, e) < 0) {
        err_wrap(e, "spool directory");
        return NULL;
    }
    return owner_open(spool_dir, node, remove_spool_files, NULL, e);
}

void supervise_status_path(char *out, size_t n, const char *spool_dir, const char *tag)
{
    snprintf(out, n, "%s/%s.status", spool_dir, tag);
}

/* The first line of a status file, the format this daemon reads. */
#define STATUS_MAGIC "ckpt-worker-status\t1"

/* Split a status line at tabs into at most 4 fields (the last keeps its
 * tabs); returns how many. */
static int status_fields(char *line, char **f)
{
    int n = 0;
    f[n++] = line;
    for (char *p = line; *p && n < 4; p++)
        if (*p == '\t') {
            *p = '\0';
            f[n++] = p + 1;
        }
    return n;
}

/* `how` the worker ended, then `what` of the item, then its stderr tail. */
static void unfinished_error(const struct worker *w, const char *what, const char *item,
                             int version, char *out, size_t n)
{
    const char *tail = strstr(w->error, "; stderr: ");
    snprintf(out, n, "%s %s item %s v%d%s", w->how[0] ? w->how : "worker ended", what, item,
             version, tail ? tail : "");
}

void supervise_outcomes(const struct worker *w, const char (*items)[64], const int *versions,
                        int n, struct item_outcome *out)
{
    enum { SEEN_NONE, SEEN_STARTED, SEEN_END } seen[64] = {SEEN_NONE};
    char line[2048], *f[4];
    int speaks = 0;
    for (int i = 0; i < n; i++) {
        out[i].state = w->ok ? ITEM_DONE : ITEM_FAILED;
        out[i].rows = -1;
        snprintf(out[i].error, sizeof out[i].error, "%s", w->error);
    }
    FILE *sf = w->status_path[0] ? fopen(w->status_path, "r") : NULL;
    if (sf && fgets(line, sizeof line, sf)) {
        line[strcspn(line, "\n")] = '\0';
        speaks = strcmp(line, STATUS_MAGIC) == 0;
    }
    while (speaks && fgets(line, sizeof line, sf)) {
        if (!strchr(line, '\n'))
            break; /* cut: the worker died writing it */
        line[strcspn(line, "\n")] = '\0';
        int nf = status_fields(line, f), i;
        if (nf < 3)
            continue;
        for (i = 0; i < n && i < 64; i++)
            if (strcmp(items[i], f[1]) == 0 && versions[i] == atoi(f[2]))
                break;
        if (i == n || i == 64 || seen[i] == SEEN_END)
            continue;
        if (strcmp(f[0], "started") == 0) {
            seen[i] = SEEN_STARTED;
        } else if (strcmp(f[0], "done") == 0 && nf == 4) {
            seen[i] = SEEN_END;
            out[i].state = ITEM_DONE;
            out[i].rows = atol(f[3]);
            out[i].error[0] = '\0';
        } else if (strcmp(f[0], "failed") == 0) {
            seen[i] = SEEN_END;
            out[i].state = ITEM_FAILED;
            snprintf(out[i].error, sizeof out[i].error, "%s%s%s", w->ok ? "" : w->how,
                     w->ok ? "" : "; ", nf == 4 ? f[3] : "unknown error");
        }
    }
    if (sf)
        fclose(sf);
    for (int i = 0; speaks && !w->ok && i < n && i < 64; i++)
        if (seen[i] != SEEN_END)
            unfinished_error(w, seen[i] == SEEN_STARTED ? "while running" : "before starting",
                             items[i], versions[i], out[i].error, sizeof out[i].error);
}
