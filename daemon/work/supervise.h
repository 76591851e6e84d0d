/*
 * supervise.h - ckpt-worker processes: start, watch, limit, reap.
 *
 * One worker process per claimed checkpoint.  Its stdout (the result rows)
 * and stderr go to files in the spool directory, so nothing is lost if the
 * daemon's database connection drops while it runs and no pipe can fill up.
 * The child (common/child.h) gets its own process group, resource limits
 * (RLIMIT_AS for memory, RLIMIT_CPU for CPU time), dies with the daemon,
 * and has a wall-clock deadline enforced by supervise_poll(), which kills
 * the whole group with SIGKILL when it passes.
 * When a worker ends, the outcome says how: exit status, or the signal, and
 * the tail of its stderr, ready to become a job's last_error.
 *
 *     struct worker w;
 *     const char *argv[] = {"ckpt-worker", "analyze", dir, "--items", "loss", NULL};
 *     supervise_start(&w, argv, "/var/spool/ckptd", "ck-17", &limits, &e);
 *     while (supervise_poll(&w) == 0) ...   // 1 once it has ended
 *     if (!w.ok) log(w.error);
 *     supervise_cleanup(&w);                // removes the spool files
 */
#ifndef CKPTD_SUPERVISE_H
#define CKPTD_SUPERVISE_H

#include <stddef.h>
#include <sys/types.h>

#include "common/child.h"
#include "common/err.h"

struct worker_limits {
    double timeout_s;   /* wall clock; <= 0: none */
    long memory_mb;     /* RLIMIT_AS; 0: none */
    long cpu_s;         /* RLIMIT_CPU; 0: none */
};

struct worker {
    struct child proc;      /* the process (common/child.h): proc.pid > 0 while it runs,
                               proc.started (monotonic seconds) */
    char out_path[1024];    /* stdout: the rows */
    char err_path[1024];    /* stderr */
    int done;               /* ended (reaped) */
    int ok;                 /* exited with status 0 */
    int timed_out;
    double seconds;         /* wall time it ran */
    char error[1024];       /* when !ok: how it ended and the tail of stderr */
};

/* Find the worker binary: `configured` if set; else ckpt-worker beside the
 * running executable; else "ckpt-worker" (looked up on PATH at exec). */
void supervise_worker_path(const char *configured, char *out, size_t n);

/* Fork and exec argv[0] (PATH searched) with stdout/stderr to spool files
 * named after `tag`.  On failure nothing is left running. */
int supervise_start(struct worker *w, const char *const *argv, const char *spool_dir,
                    const char *tag, const struct worker_limits *lim, struct err *e) CK_WUR;

/* Non-blocking: reap if ended, kill if past the deadline. Returns 1 when
 * the worker has ended (w->done), 0 while it runs. */
int supervise_poll(struct worker *w);

/* Kill the worker's process group and reap it (shutdown, lost lease). */
void supervise_kill(struct worker *w);

/* Remove the spool files. */
void supervise_cleanup(struct worker *w);

#endif
