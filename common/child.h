/*
 * child.h - running another program: start it with its descriptors,
 * process group and limits set, wait for it with a deadline, kill it.
 *
 * Programs started with vfork and exec: the daemon's workers
 * (work/supervise: their own process group, rlimits, a deadline, stdout
 * and stderr to spool files), the worker's battery read at start
 * (plan/registry: stdout captured, a deadline) and the eval text's
 * tokenization (plan/evalset).
 * The child starts with default signal dispositions and no blocked
 * signals; a program that cannot be executed exits 127 after saying so on
 * its stderr.  A deadline is enforced by child_poll and child_wait, which
 * kill the child (its whole group when it has one) with SIGKILL.
 *
 *     struct child c;
 *     struct child_opts o = {.in_fd = -1, .out_fd = -1, .err_fd = -1, .timeout_s = 60};
 *     if (child_spawn(&c, argv, &o, &e) < 0) return ...;
 *     child_wait(&c);                      // or: while (!child_poll(&c)) do_other_work();
 *     if (!child_ok(&c)) { char why[128]; child_describe(&c, why, sizeof why); ... }
 */
#ifndef CKPTD_CHILD_H
#define CKPTD_CHILD_H

#include <stddef.h>
#include <sys/types.h>

#include "common/err.h"

struct child_opts {
    int in_fd;           /* the child's stdin; -1: /dev/null */
    int out_fd, err_fd;  /* its stdout and stderr; -1: this process's */
    int new_group;       /* its own process group, killed as a whole */
    int die_with_parent; /* SIGKILL when this process dies (Linux PR_SET_PDEATHSIG) */
    long memory_mb;      /* RLIMIT_AS; 0: none */
    long cpu_s;          /* RLIMIT_CPU (the hard limit 5 s later); 0: none */
    double timeout_s;    /* wall clock from the start; <= 0: none */
    const char *const *env_add; /* "NAME=value" strings, NULL-terminated, added to
                                   the child's environment after the parent's
                                   (a NAME already there keeps its value); NULL:
                                   none */
};

struct child {
    pid_t pid;        /* > 0 while it runs; 0 once reaped */
    int group;        /* has its own process group */
    double started;   /* monotonic seconds */
    double deadline;  /* monotonic; 0: none */
    int ended;        /* reaped: status is valid */
    int status;       /* waitpid's status */
    int timed_out;    /* killed at its deadline */
    double seconds;   /* wall time it ran, once ended */
};

/* Start argv[0] (searched on PATH), argv NULL-terminated.  The
 * caller keeps and closes its own descriptors.  ERR_CHILD when vfork
 * fails; then nothing was started. */
int child_spawn(struct child *c, const char *const *argv, const struct child_opts *o,
                struct err *e) CK_WUR;

/* Without blocking: 1 once the child has ended (reaped now or before;
 * killed and reaped if past its deadline), 0 while it runs. */
int child_poll(struct child *c);

/* Block until the child ends; past its deadline it is killed.  Returns
 * nothing: read c->status, c->timed_out or child_ok. */
void child_wait(struct child *c);

/* Kill the child (its group when it has one) with SIGKILL and reap it.
 * Nothing when it has already ended. */
void child_kill(struct child *c);

/* Ended by exit(0), within its deadline? */
int child_ok(const struct child *c);

/* How it ended, for a message: "exited with status 3", "killed by signal
 * 9 (Killed)", "timed out after 12 s and was killed". */
void child_describe(const struct child *c, char *out, size_t n);

/* The pipe-and-wait of a program whose output is wanted: run argv with
 * stdout into a buffer (NUL-terminated, *out malloc'ed, caller frees,
 * *len bytes before the NUL) and stderr into another (*err_out, likewise)
 * or, with err_out NULL, this process's stderr, until it ends or
 * timeout_s passes (<= 0: no deadline).  0 once it ended, whatever its
 * status (in c: check child_ok); ERR_CHILD when it could not be started
 * or ran past the deadline (killed; the buffers NULL), ERR_NOMEM, ERR_IO. */
int child_capture(const char *const *argv, double timeout_s, struct child *c, char **out,
                  size_t *len, char **err_out, struct err *e) CK_WUR;

#endif
