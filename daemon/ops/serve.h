/*
 * serve.h - `ckptd serve`: the scheduler loop of one node.
 *
 * One tick function runs every duty (see serve_tick in serve.c); the loop
 * around it sleeps on the database socket (LISTEN ckptd_jobs) or a short
 * timer while workers run.  Signals: SIGTERM/SIGINT stop claiming, let
 * running workers finish for shutdown_grace_s, then kill them and give their
 * jobs back; a second SIGTERM shortens the grace to nothing.  SIGHUP reloads
 * the config file (timings, limits, worker count).
 *
 *     struct serve_opts o = {.config = &cfg, .config_path = path, .until_idle = 1};
 *     return serve_run(&o) == 0 ? 0 : 1;
 */
#ifndef CKPTD_SERVE_H
#define CKPTD_SERVE_H

#include "daemon/ops/config.h"

struct serve_opts {
    struct daemon_config *config;
    const char *config_path; /* for SIGHUP; may be NULL */
    int until_idle;          /* exit when no job is queued or running anywhere */
};

/* Run until stopped (or idle). Returns 0 on a clean stop, negative when the
 * node could not start (no worker binary, schema not migrated, ...). */
int serve_run(const struct serve_opts *o);

#endif
