/*
 * fuzz_daemon_config.c - daemon_config_load (daemon/ops/config.c) on
 * arbitrary bytes as ckptd's config file, over the defaults.
 *
 * Checked beyond "no crash": on failure the error contract and the config
 * left as it was; on success what daemon_config_check promises the rest of
 * the daemon: every count, size and timeout inside its documented range
 * (so later arithmetic on them - seconds to milliseconds, megabytes to
 * bytes, lease / heartbeat - cannot overflow), strings terminated, and the
 * fetcher's options derived without trouble.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "daemon/fetch/fetch.h"
#include "daemon/ops/config.h"
#include "fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void in_range(const char *name, double v, double lo, double hi)
{
    if (!(v >= lo && v <= hi))
        fuzz_fail("accepted %s = %g outside [%g, %g]", name, v, lo, hi);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write("ckptd.json", data, size);
    struct daemon_config c, before;
    daemon_config_defaults(&c);
    before = c;
    struct err e;
    int rc = daemon_config_load(&c, path, &e);
    if (rc < 0) {
        fuzz_check_err("daemon_config_load", rc, &e);
        if (memcmp(&c, &before, sizeof c) != 0)
            fuzz_fail("config changed by a failed load");
        return 0;
    }
    in_range("workers", c.workers, 1, 1024);
    in_range("worker_threads", c.worker_threads, 0, 4096);
    in_range("worker_timeout_s", c.worker_timeout_s, 1e-3, DAEMON_CONFIG_MAX_S);
    in_range("worker_memory_mb", (double)c.worker_memory_mb, 0, DAEMON_CONFIG_MAX_MB);
    in_range("worker_cpu_s", (double)c.worker_cpu_s, 0, DAEMON_CONFIG_MAX_S);
    in_range("lease_s", c.lease_s, 1, DAEMON_CONFIG_MAX_S);
    in_range("heartbeat_s", c.heartbeat_s, 1e-3, c.lease_s / 2);
    in_range("poll_s", c.poll_s, 1e-3, DAEMON_CONFIG_MAX_S);
    in_range("backoff_base_s", c.backoff_base_s, 0, DAEMON_CONFIG_MAX_S);
    in_range("backoff_max_s", c.backoff_max_s, c.backoff_base_s, DAEMON_CONFIG_MAX_S);
    in_range("shutdown_grace_s", c.shutdown_grace_s, 0, DAEMON_CONFIG_MAX_S);
    in_range("cache_budget_gb", c.cache_budget_gb, 0, DAEMON_CONFIG_MAX_GB);
    in_range("prefetch", c.prefetch, 0, 1);
    in_range("fetch_parallel", c.fetch_parallel, 1, 256);
    in_range("fetch_low_speed_bytes", (double)c.fetch_low_speed_bytes, 0, 1 << 30);
    in_range("fetch_low_speed_s", (double)c.fetch_low_speed_s, 0, DAEMON_CONFIG_MAX_S);
    in_range("fetch_connect_timeout_s", c.fetch_connect_timeout_s, 1e-3, DAEMON_CONFIG_MAX_S);
    in_range("fetch_retries", c.fetch_retries, 0, 100);
    in_range("fetch_backoff_base_s", c.fetch_backoff_base_s, 0, DAEMON_CONFIG_MAX_S);
    in_range("fetch_backoff_max_s", c.fetch_backoff_max_s, c.fetch_backoff_base_s,
             DAEMON_CONFIG_MAX_S);
    in_range("healthz_max_age_s", c.healthz_max_age_s, c.heartbeat_s, DAEMON_CONFIG_MAX_S);
    in_range("db_statement_timeout_s", c.db_statement_timeout_s, 0, 86400);
    in_range("db_idle_in_transaction_timeout_s", c.db_idle_in_transaction_timeout_s, 0, 86400);
    in_range("disk_min_free_mb", (double)c.disk_min_free_mb, 0, DAEMON_CONFIG_MAX_MB);
    if (!memchr(c.node, 0, sizeof c.node) || !c.node[0] || !c.cache_dir[0] || !c.artifact_dir[0] ||
        !c.spool_dir[0])
        fuzz_fail("an empty or unterminated name or directory accepted");
    struct fetch_opts o;
    daemon_config_fetch_opts(&c, &o);
    return 0;
}
