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
 * Each item's outcome comes from the worker's status file (`analyze
 * --status`, workers/battery/README.md), spool/<tag>.status: an item is
 * done when the file says so, whatever became of the worker afterwards;
 * failed with the worker's own message when it says so; and failed with
 * how the worker ended (and the item it was running) when it says
 * nothing.  A worker that exits 0 vouches for every item it did not
 * report failed (a worker without a status file: all of them).
 *
 * The spool is shared by the daemons of a node: each names its files
 * after its owner tag ("<node>.<pid>", daemon/base/owner.h), and
 * supervise_spool_open removes the files of daemons that died (killed
 * outright, their locks free) before this one starts.  A tag names one
 * worker: supervise_start refuses a tag whose files exist.
 *
 *     struct owner *spool = supervise_spool_open("/var/spool/ckptd", "node1", &e);
 *     snprintf(tag, sizeof tag, "%s.ck17.1", owner_tag(spool));
 *     supervise_status_path(w_status, sizeof w_status, "/var/spool/ckptd", tag);
 *     const char *argv[] = {"ckpt-worker", "analyze", dir, "--items", "loss",
 *                           "--status", w_status, NULL};
 *     supervise_start(&w, argv, "/var/spool/ckptd", tag, &limits, &e);
 *     while (supervise_poll(&w) == 0) ...   // 1 once it has ended
 *     supervise_outcomes(&w, items, versions, n, out);   // per item
 *     supervise_cleanup(&w);                // removes the spool files
 *     owner_close(spool);
 */
#ifndef CKPTD_SUPERVISE_H
#define CKPTD_SUPERVISE_H

#include <stddef.h>
#include <sys/types.h>

#include "common/child.h"
#include "common/err.h"
#include "daemon/base/owner.h"

struct worker_limits {
    double timeout_s;   /* wall clock; <= 0: none */
    long memory_mb;     /* RLIMIT_AS; 0: none */
    long cpu_s;         /* RLIMIT_CPU; 0: none */
    const char *const *env; /* "NAME=value" strings, NULL-terminated, added to its
                               environment; NULL: none */
    int gated;          /* its stdin a pipe kept open until supervise_open_gate
                           (the worker's --gate); the timeout counts from then */
};

struct worker {
    struct child proc;      /* the process (common/child.h): proc.pid > 0 while it runs,
                               proc.started (monotonic seconds) */
    char out_path[1024];    /* stdout: the rows */
    char err_path[1024];    /* stderr */
    char status_path[1024]; /* the worker's item outcomes (--status) */
    int done;               /* ended (reaped) */
    int ok;                 /* exited with status 0 */
    int timed_out;
    double seconds;         /* wall time it ran */
    char error[1024];       /* when !ok: how it ended and the tail of stderr */
    char how[256];          /* when !ok: how it ended, without stderr */
    int gate;               /* gated and its gate not yet opened: gate_fd is the pipe */
    int gate_fd;
    double timeout_s;       /* gated: the timeout it gets when the gate opens */
};

enum item_state {
    ITEM_FAILED,            /* failed, or never finished: error says why */
    ITEM_DONE,              /* its rows are all in the output */
    ITEM_STATE_COUNT
};

/* What became of one item of a worker. */
struct item_outcome {
    enum item_state state;
    long rows;              /* ITEM_DONE: rows the worker reported; -1 unknown */
    char error[1024];       /* ITEM_FAILED: for the job's last_error */
};

/* Find the worker binary: `configured` if set; else ckpt-worker beside the
 * running executable; else "ckpt-worker" (looked up on PATH at exec). */
void supervise_worker_path(const char *configured, char *out, size_t n);

/* Fork and exec argv[0] (PATH searched) with stdout/stderr to spool files
 * named after `tag`.  On failure nothing is left running. */
int supervise_start(struct worker *w, const char *const *argv, const char *spool_dir,
                    const char *tag, const struct worker_limits *lim, struct err *e) CK_WUR;

/* A gated worker may begin: one byte down its stdin, which is closed.  Its
 * start time (w->proc.started, so w->seconds) and its deadline count from
 * now.  Nothing when it is not gated (or its gate is open already). */
void supervise_open_gate(struct worker *w);

/* Non-blocking: reap if ended, kill if past the deadline. Returns 1 when
 * the worker has ended (w->done), 0 while it runs. */
int supervise_poll(struct worker *w);

/* Kill the worker's process group and reap it (shutdown, lost lease); a
 * gate not opened is closed. */
void supervise_kill(struct worker *w);

/* Remove the spool files. */
void supervise_cleanup(struct worker *w);

/* ---- the spool and item outcomes ---- */

/* Become an owner of the spool directory (created), after removing the
 * spool files of its dead owners.  owner_close it at exit. */
struct owner *supervise_spool_open(const char *spool_dir, const char *node, struct err *e);

/* The status file supervise_start gives a worker of `tag`. */
void supervise_status_path(char *out, size_t n, const char *spool_dir, const char *tag);

/* Each item's outcome (items[i] version versions[i]) from an ended
 * worker's status file and how it ended, as described above. */
void supervise_outcomes(const struct worker *w, const char (*items)[64], const int *versions,
                        int n, struct item_outcome *out);

#endif
