#include "daemon/work/supervise.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
    int out = open(w->out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int errfd = open(w->err_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int rc = 0;
    if (out < 0 || errfd < 0) {
        rc = err_set(e, ERR_IO, w->out_path, "cannot create spool file: %s", strerror(errno));
    } else {
        /* a daemon killed outright takes its workers with it; their jobs
         * return to the queue when the lease expires */
        struct child_opts o = {.in_fd = -1, .out_fd = out, .err_fd = errfd, .new_group = 1,
                               .die_with_parent = 1, .memory_mb = lim->memory_mb,
                               .cpu_s = lim->cpu_s, .timeout_s = lim->timeout_s};
        rc = child_spawn(&w->proc, argv, &o, e);
    }
    if (out >= 0)
        close(out);
    if (errfd >= 0)
        close(errfd);
    return rc;
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

/* The worker ended (reaped): how, and the tail of its stderr. */
static void describe_end(struct worker *w)
{
    char tail[700], how[128];
    stderr_tail(w, tail, sizeof tail);
    w->done = 1;
    w->seconds = w->proc.seconds;
    w->timed_out = w->proc.timed_out;
    w->ok = child_ok(&w->proc);
    if (w->ok)
        return;
    child_describe(&w->proc, how, sizeof how);
    snprintf(w->error, sizeof w->error, "worker %s%s%s", how, tail[0] ? "; stderr: " : "", tail);
}

int supervise_poll(struct worker *w)
{
    if (w->done)
        return 1;
    if (!w->proc.pid)
        return 1;
    if (!child_poll(&w->proc))
        return 0;
    describe_end(w);
    return 1;
}

void supervise_kill(struct worker *w)
{
    if (w->proc.pid > 0 && !w->done) {
        child_kill(&w->proc);
        w->seconds = w->proc.seconds;
        w->done = 1;
        w->ok = 0;
        snprintf(w->error, sizeof w->error, "worker killed by the daemon");
    }
}

void supervise_cleanup(struct worker *w)
{
    if (w->out_path[0])
        unlink(w->out_path);
    if (w->err_path[0])
        unlink(w->err_path);
}
