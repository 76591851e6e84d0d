/*
 * config.h - the daemon's settings: defaults, then a JSON config file, then
 * command-line flags.  The database comes from "database" (a libpq conninfo
 * string or URI) or, when empty, from libpq's environment (PGHOST, ...).
 *
 *   {
 *     "database": "host=/var/run/postgresql dbname=ckptd",
 *     "node": "gpu07",             // lease owner name; default host:pid
 *     "workers": 2,                // ckpt-worker processes at once
 *     "worker_path": "",           // default: beside ckptd, then PATH
 *     "worker_threads": 0,         // BLAS threads per worker; 0: cores / workers
 *     "worker_timeout_s": 3600,    // wall clock per checkpoint
 *     "worker_memory_mb": 0,       // RLIMIT_AS; 0: none
 *     "worker_cpu_s": 0,           // RLIMIT_CPU; 0: none
 *     "spool_dir": "./var/spool",  // worker output until ingested
 *     "lease_s": 60, "heartbeat_s": 10, "poll_s": 5,
 *     "backoff_base_s": 5, "backoff_max_s": 600,
 *     "shutdown_grace_s": 30
 *   }
 *
 *     struct daemon_config c;
 *     daemon_config_defaults(&c);
 *     if (daemon_config_load(&c, "/etc/ckptd.json", &e) < 0) ...
 */
#ifndef CKPTD_DAEMON_CONFIG_H
#define CKPTD_DAEMON_CONFIG_H

#include "../common/err.h"

struct daemon_config {
    char database[1024];
    char node[128];
    int workers;
    char worker_path[1024];
    int worker_threads;
    double worker_timeout_s;
    long worker_memory_mb;
    long worker_cpu_s;
    char spool_dir[1024];
    double lease_s;
    double heartbeat_s;
    double poll_s;
    double backoff_base_s;
    double backoff_max_s;
    double shutdown_grace_s;
};

void daemon_config_defaults(struct daemon_config *c);

/* Overlay the settings a JSON file names; unknown keys are an error (a
 * typo should not silently fall back to a default). On error c is
 * unchanged. */
int daemon_config_load(struct daemon_config *c, const char *path, struct err *e) CK_WUR;

/* Check ranges (workers >= 1, heartbeat < lease, ...). */
int daemon_config_check(const struct daemon_config *c, struct err *e) CK_WUR;

#endif
