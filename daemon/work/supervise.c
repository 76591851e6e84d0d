#include "daemon/work/supervise.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
    /* O_EXCL: a tag in use is an error that touches nothing of the worker
     * using it, never its rows truncated under it */
    int out = open(w->out_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (out < 0 && errno == EEXIST) {
        int rc = err_set(e, ERR_IO, w->out_path, "spool file exists: tag '%s' is in use", tag);
        w->out_path[0] = w->err_path[0] = w->status_path[0] = '\0'; /* not ours to remove */
        return rc;
    }
    unlink(w->status_path); /* only the new worker's outcomes count */
    int errfd = open(w->err_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int gate[2] = {-1, -1};
    int rc = 0;
    if (out < 0 || errfd < 0) {
        rc = err_set(e, ERR_IO, w->out_path, "cannot create spool file: %s", strerror(errno));
    } else if (lim->gated && pipe2(gate, O_CLOEXEC) < 0) {
        rc = err_set(e, ERR_IO, w->out_path, "cannot make the worker's gate: %s", strerror(errno));
    } else {
        /* a daemon killed outright takes its workers with it; their jobs
         * return to the queue when the lease expires */
        struct child_opts o = {.in_fd = gate[0], .out_fd = out, .err_fd = errfd, .new_group = 1,
                               .die_with_parent = 1, .memory_mb = lim->memory_mb, .cpu_s = lim->cpu_s,
                               .timeout_s = lim->gated ? 0 : lim->timeout_s, .env_add = lim->env};
        rc = child_spawn(&w->proc, argv, &o, e);
    }
    if (out >= 0)
        close(out);
    if (errfd >= 0)
        close(errfd);
    if (gate[0] >= 0)
        close(gate[0]);
    if (rc == 0 && lim->gated) {
        w->gate = 1;
        w->gate_fd = gate[1];
        w->timeout_s = lim->timeout_s;
    } else if (gate[1] >= 0) {
        close(gate[1]);
    }
    return rc;
}

static void close_gate(struct worker *w)
{
    if (w->gate) {
        close(w->gate_fd);
        w->gate = 0;
        w->gate_fd = -1;
    }
}

void supervise_open_gate(struct worker *w)
{
    if (!w->gate)
        return;
    /* a worker that ended already (its load failed) reads nothing: EPIPE
     * is ignored (the daemon ignores SIGPIPE) and its end is reaped */
    ssize_t n = write(w->gate_fd, "g", 1);
    (void)n;
    close_gate(w);
    w->proc.started = mono_now();
    w->proc.deadline = w->timeout_s > 0 ? w->proc.started + w->timeout_s : 0;
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
    snprintf(w->how, sizeof w->how, "worker %s", how);
    snprintf(w->error, sizeof w->error, "%s%s%s", w->how, tail[0] ? "; stderr: " : "", tail);
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
    close_gate(w);
    if (w->proc.pid > 0 && !w->done) {
        child_kill(&w->proc);
        w->seconds = w->proc.seconds;
        w->done = 1;
        w->ok = 0;
        snprintf(w->how, sizeof w->how, "worker killed by the daemon");
        snprintf(w->error, sizeof w->error, "%s", w->how);
    }
}

void supervise_cleanup(struct worker *w)
{
    close_gate(w);
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
