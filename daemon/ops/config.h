/*
 * config.h - the daemon's settings: defaults, then a JSON config file, then
 * command-line flags.  The database comes from "database" (a libpq conninfo
 * string or URI) or, when empty, from libpq's environment (PGHOST, ...).
 *
 *   {
 *     "database": "host=/var/run/postgresql dbname=ckptd",
 *     "node": "gpu07",             // lease owner name; default host:pid
 *     "workers": 2,                // ckpt-worker processes at once (1..256)
 *     "worker_path": "",           // default: beside ckptd, then PATH
 *     "worker_threads": 0,         // BLAS threads per worker; 0: cores / workers
 *     "worker_timeout_s": 3600,    // wall clock per checkpoint
 *     "worker_memory_mb": 0,       // RLIMIT_AS; 0: none
 *     "worker_cpu_s": 0,           // RLIMIT_CPU; 0: none
 *     "spool_dir": "./var/spool",  // worker output until ingested
 *     "lease_s": 60, "heartbeat_s": 10, "poll_s": 5,
 *     "db_statement_timeout_s": 600,  // a statement waiting longer fails (0: never)
 *     "db_idle_in_transaction_timeout_s": 120, // the server ends a session idle in a
 *                                  // transaction this long, freeing its locks (0: never)
 *     "backoff_base_s": 5, "backoff_max_s": 600,
 *     "shutdown_grace_s": 30,
 *     "cache_dir": "./var/cache", // downloaded checkpoints (cache.h)
 *     "cache_budget_gb": 0,        // evict analysed snapshots beyond this; 0: no limit
 *     "hf_cache_write": true,      // hf:// downloads also go into the HuggingFace cache
 *                                  // (hfcache.h: $HF_HUB_CACHE, $HF_HOME/hub, ...)
 *     "prefetch": 1,               // checkpoints claimed and fetched ahead, per worker
 *     "fetch_parallel": 4,         // transfers at once on this node
 *     "fetch_low_speed_bytes": 1024, "fetch_low_speed_s": 30,  // stall abort
 *     "fetch_connect_timeout_s": 15, "fetch_retries": 5,
 *     "fetch_backoff_base_s": 1, "fetch_backoff_max_s": 60,
 *     "ca_file": "",               // PEM CA bundle for https; "": CKPTD_CA_BUNDLE, else the system's
 *     "metrics_listen": "",        // /metrics and /healthz on ADDR:PORT (metrics.h); "": off
 *     "metrics_allow_remote": false, // a non-loopback metrics_listen needs this
 *     "healthz_max_age_s": 30      // /healthz is 503 when no database round trip succeeded for this long,
 *     "artifact_dir": "./var/artifacts" // files items write (SAE dictionaries), per run and
 *                                  // step; shared by every node of a cluster
 *     "disk_min_free_mb": 64       // below this free on spool_dir, cache_dir or artifact_dir
 *                                  // no new work is claimed and failures there cost no
 *                                  // attempt (space.h); 0: no check
 *   }
 *
 * The environment adds HF_ENDPOINT, the hub token (HF_TOKEN,
 * HUGGING_FACE_HUB_TOKEN, else the file HF_TOKEN_PATH or $HF_HOME/token;
 * sent to the endpoint's host only), HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE,
 * the HuggingFace cache's place (daemon/fetch/hfcache.h) and CKPTD_CA_BUNDLE
 * (a CA file for TLS, used when "ca_file" is empty).  TLS peers are always verified: there is no
 * setting that turns verification off.
 *
 *     struct daemon_config c;
 *     daemon_config_defaults(&c);
 *     if (daemon_config_load(&c, "/etc/ckptd.json", &e) < 0) ...
 */
#ifndef CKPTD_DAEMON_CONFIG_H
#define CKPTD_DAEMON_CONFIG_H

#include "common/err.h"

/* The most workers one node runs (serve keeps a worker slot and a
 * prefetch slot for each): "workers" and --workers go up to this. */
#define DAEMON_MAX_WORKERS 256

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
    char cache_dir[1024];
    double cache_budget_gb;
    int hf_cache_write;
    int prefetch;
    int fetch_parallel;
    long fetch_low_speed_bytes;
    long fetch_low_speed_s;
    double fetch_connect_timeout_s;
    int fetch_retries;
    double fetch_backoff_base_s;
    double fetch_backoff_max_s;
    char ca_file[1024];
    char metrics_listen[128];
    int metrics_allow_remote;
    double healthz_max_age_s;
    double db_statement_timeout_s, db_idle_in_transaction_timeout_s;
    char artifact_dir[1024];
    long disk_min_free_mb;
};

/* Upper bounds of the settings (daemon_config_check): a timeout beyond a
 * year, a worker memory limit beyond 16 TB or a cache budget beyond 1 PB
 * is a typo; the bounds keep later unit conversions from overflowing. */
#define DAEMON_CONFIG_MAX_S (366.0 * 86400.0)
#define DAEMON_CONFIG_MAX_MB (1L << 24)
#define DAEMON_CONFIG_MAX_GB (1 << 20)

struct fetch_opts;

void daemon_config_defaults(struct daemon_config *c);

/* Overlay the settings a JSON file names; unknown keys are an error (a
 * typo should not silently fall back to a default). On error c is
 * unchanged. */
int daemon_config_load(struct daemon_config *c, const char *path, struct err *e) CK_WUR;

/* Check every setting against its range (workers 1 to DAEMON_MAX_WORKERS, timeouts
 * positive and at most DAEMON_CONFIG_MAX_S, ...) and the relations between
 * them (heartbeat_s <= lease_s / 2, backoff_max_s >= backoff_base_s,
 * healthz_max_age_s > heartbeat_s).  ERR_INVALID naming the setting, its
 * value and the allowed range. */
int daemon_config_check(const struct daemon_config *c, struct err *e) CK_WUR;

/* The fetcher's settings from the config and the environment (the token
 * as hfcache_token finds it, HF_ENDPOINT for its origin, ca_file or
 * CKPTD_CA_BUNDLE). */
void daemon_config_fetch_opts(const struct daemon_config *c, struct fetch_opts *o);

/* HF_HUB_OFFLINE (else TRANSFORMERS_OFFLINE) is 1/true/yes/on: hfcache_offline. */
int daemon_offline(void);

#endif
