#include "daemon/ops/config.h"

#include <jansson.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/json_err.h"
#include "daemon/fetch/fetch.h"
#include "daemon/fetch/hfcache.h"
#include "daemon/fetch/hub.h"
#include "daemon/ops/metrics.h"

void daemon_config_defaults(struct daemon_config *c)
{
    memset(c, 0, sizeof *c);
    char host[64] = "node";
    gethostname(host, sizeof host - 1);
    snprintf(c->node, sizeof c->node, "%s:%d", host, (int)getpid());
    c->workers = 1;
    c->worker_timeout_s = 3600;
    snprintf(c->spool_dir, sizeof c->spool_dir, "./var/spool");
    c->lease_s = 60;
    c->heartbeat_s = 10;
    c->poll_s = 5;
    c->backoff_base_s = 5;
    c->backoff_max_s = 600;
    c->shutdown_grace_s = 30;
    snprintf(c->cache_dir, sizeof c->cache_dir, "./var/cache");
    snprintf(c->artifact_dir, sizeof c->artifact_dir, "./var/artifacts");
    c->prefetch = 1;
    c->hf_cache_write = 1;
    c->fetch_parallel = 4;
    c->fetch_low_speed_bytes = 1024;
    c->fetch_low_speed_s = 30;
    c->fetch_connect_timeout_s = 15;
    c->fetch_retries = 5;
    c->fetch_backoff_base_s = 1;
    c->fetch_backoff_max_s = 60;
    c->healthz_max_age_s = 30;
    c->db_statement_timeout_s = 600;
    c->db_idle_in_transaction_timeout_s = 120;
    c->disk_min_free_mb = 64;
}

void daemon_config_fetch_opts(const struct daemon_config *c, struct fetch_opts *o)
{
    fetch_opts_defaults(o);
    o->parallel = c->fetch_parallel;
    o->low_speed_bytes = c->fetch_low_speed_bytes;
    o->low_speed_s = c->fetch_low_speed_s;
    o->connect_timeout_s = (long)(c->fetch_connect_timeout_s + 0.5);
    o->retries = c->fetch_retries;
    o->backoff_base_s = c->fetch_backoff_base_s;
    o->backoff_max_s = c->fetch_backoff_max_s;
    char tok[sizeof o->token], from[1024];
    const char *ep = getenv("HF_ENDPOINT");
    if (!ep || !*ep)
        ep = HUB_DEFAULT_ENDPOINT;
    if (hfcache_token(tok, sizeof tok, from, sizeof from) && strlen(tok) < sizeof o->token - 1 &&
        hub_url_origin(ep, o->token_origin, sizeof o->token_origin, NULL) == 0)
        memcpy(o->token, tok, strlen(tok) + 1);
    memset(tok, 0, sizeof tok);
    const char *ca = c->ca_file[0] ? c->ca_file : getenv("CKPTD_CA_BUNDLE");
    if (ca && *ca)
        snprintf(o->ca_file, sizeof o->ca_file, "%s", ca);
}

int daemon_offline(void) { return hfcache_offline(); }

/* The numeric settings and their ranges.  `lo_open` makes the lower bound
 * exclusive (a timeout of 0 s is no timeout).  The upper bounds are far
 * beyond any sensible value; they exist so that later arithmetic on a
 * setting (seconds to milliseconds, megabytes to bytes) cannot overflow. */
enum num_type { NUM_INT, NUM_LONG, NUM_DOUBLE };
static const struct {
    const char *name;
    size_t off;
    enum num_type type;
    double lo, hi;
    int lo_open;
    const char *unit;
} ranges[] = {
#define R(f, t, lo, hi, open, unit) {#f, offsetof(struct daemon_config, f), t, lo, hi, open, unit}
    R(workers, NUM_INT, 1, DAEMON_MAX_WORKERS, 0, "processes"),
    R(worker_threads, NUM_INT, 0, 4096, 0, "threads (0: cores / workers)"),
    R(worker_timeout_s, NUM_DOUBLE, 0, DAEMON_CONFIG_MAX_S, 1, "seconds"),
    R(worker_memory_mb, NUM_LONG, 0, DAEMON_CONFIG_MAX_MB, 0, "MB (0: no limit)"),
    R(worker_cpu_s, NUM_LONG, 0, DAEMON_CONFIG_MAX_S, 0, "seconds (0: no limit)"),
    R(lease_s, NUM_DOUBLE, 1, DAEMON_CONFIG_MAX_S, 0, "seconds"),
    R(heartbeat_s, NUM_DOUBLE, 0, DAEMON_CONFIG_MAX_S, 1, "seconds"),
    R(poll_s, NUM_DOUBLE, 0, DAEMON_CONFIG_MAX_S, 1, "seconds"),
    R(backoff_base_s, NUM_DOUBLE, 0, DAEMON_CONFIG_MAX_S, 0, "seconds"),
    R(backoff_max_s, NUM_DOUBLE, 0, DAEMON_CONFIG_MAX_S, 0, "seconds"),
    R(shutdown_grace_s, NUM_DOUBLE, 0, DAEMON_CONFIG_MAX_S, 0, "seconds"),
    R(cache_budget_gb, NUM_DOUBLE, 0, DAEMON_CONFIG_MAX_GB, 0, "GB (0: no limit)"),
    R(prefetch, NUM_INT, 0, 1, 0, "checkpoints per worker"),
    R(fetch_parallel, NUM_INT, 1, 256, 0, "transfers"),
    R(fetch_low_speed_bytes, NUM_LONG, 0, 1 << 30, 0, "bytes per second"),
    R(fetch_low_speed_s, NUM_LONG, 0, DAEMON_CONFIG_MAX_S, 0, "seconds"),
    R(fetch_connect_timeout_s, NUM_DOUBLE, 0, DAEMON_CONFIG_MAX_S, 1, "seconds"),
    R(fetch_retries, NUM_INT, 0, 100, 0, "retries"),
    R(fetch_backoff_base_s, NUM_DOUBLE, 0, DAEMON_CONFIG_MAX_S, 0, "seconds"),
    R(fetch_backoff_max_s, NUM_DOUBLE, 0, DAEMON_CONFIG_MAX_S, 0, "seconds"),
    R(healthz_max_age_s, NUM_DOUBLE, 0, DAEMON_CONFIG_MAX_S, 1, "seconds"),
    R(db_statement_timeout_s, NUM_DOUBLE, 0, 86400, 0, "seconds (0: never)"),
    R(db_idle_in_transaction_timeout_s, NUM_DOUBLE, 0, 86400, 0, "seconds (0: never)"),
    R(disk_min_free_mb, NUM_LONG, 0, DAEMON_CONFIG_MAX_MB, 0, "MB (0: no check)"),
#undef R
};

static double num_get(const struct daemon_config *c, size_t i)
{
    const char *p = (const char *)c + ranges[i].off;
    switch (ranges[i].type) {
    case NUM_INT:
        return *(const int *)p;
    case NUM_LONG:
        return (double)*(const long *)p;
    default:
        return *(const double *)p;
    }
}

/* An error naming setting i, its value and its allowed range. */
static int range_error(size_t i, double v, struct err *e)
{
    return err_set(e, ERR_INVALID, "config", "\"%s\" = %.17g is out of range: allowed %s%.17g to %.17g %s",
                   ranges[i].name, v, ranges[i].lo_open ? "more than " : "", ranges[i].lo,
                   ranges[i].hi, ranges[i].unit);
}

int daemon_config_check(const struct daemon_config *c, struct err *e)
{
    for (size_t i = 0; i < sizeof ranges / sizeof *ranges; i++) {
        double v = num_get(c, i);
        if (!(ranges[i].lo_open ? v > ranges[i].lo : v >= ranges[i].lo) || !(v <= ranges[i].hi))
            return range_error(i, v, e);
    }
    if (c->heartbeat_s * 2 > c->lease_s)
        return err_set(e, ERR_INVALID, "config",
                       "need lease_s >= 1 and heartbeat_s <= lease_s / 2 (lease %g, heartbeat %g)",
                       c->lease_s, c->heartbeat_s);
    if (c->backoff_max_s < c->backoff_base_s)
        return err_set(e, ERR_INVALID, "config",
                       "backoff_max_s (%g) must be at least backoff_base_s (%g)",
                       c->backoff_max_s, c->backoff_base_s);
    if (c->fetch_backoff_max_s < c->fetch_backoff_base_s)
        return err_set(e, ERR_INVALID, "config",
                       "fetch_backoff_max_s (%g) must be at least fetch_backoff_base_s (%g)",
                       c->fetch_backoff_max_s, c->fetch_backoff_base_s);
    if (c->ca_file[0] && access(c->ca_file, R_OK) != 0)
        return err_set(e, ERR_INVALID, "config", "ca_file %s cannot be read", c->ca_file);
    if (!c->cache_dir[0])
        return err_set(e, ERR_INVALID, "config", "cache_dir must not be empty");
    if (!c->artifact_dir[0])
        return err_set(e, ERR_INVALID, "config", "artifact_dir must not be empty");
    if (!c->spool_dir[0])
        return err_set(e, ERR_INVALID, "config", "spool_dir must not be empty");
    if (!c->node[0])
        return err_set(e, ERR_INVALID, "config", "node name must not be empty");
    if (!(c->healthz_max_age_s > c->heartbeat_s))
        return err_set(e, ERR_INVALID, "config",
                       "healthz_max_age_s must be more than heartbeat_s (%g, heartbeat %g): the node proves"
                       " the database once per heartbeat", c->healthz_max_age_s, c->heartbeat_s);
    if (c->metrics_listen[0] && metrics_parse_listen(c->metrics_listen, c->metrics_allow_remote, NULL, NULL, e) < 0)
        return e ? e->code : ERR_INVALID;
    return 0;
}

int daemon_config_load(struct daemon_config *out, const char *path, struct err *e)
{
    json_error_t je;
    errno = 0;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return json_err_nomem(&je) ? err_set(e, ERR_NOMEM, path, "out of memory reading the config")
                                   : err_set(e, ERR_FORMAT, path, "cannot read config: %s (line %d)",
                                             je.text, je.line);
    struct daemon_config c = *out;
    int rc = 0;
    const char *key;
    json_t *v;
    if (!json_is_object(root)) {
        rc = err_set(e, ERR_FORMAT, path, "config must be a JSON object");
        goto out;
    }
    json_object_foreach(root, key, v) {
        struct {
            const char *name;
            char *s;
            size_t n;
        } strs[] = {{"database", c.database, sizeof c.database},
                    {"node", c.node, sizeof c.node},
                    {"worker_path", c.worker_path, sizeof c.worker_path},
                    {"spool_dir", c.spool_dir, sizeof c.spool_dir},
                    {"cache_dir", c.cache_dir, sizeof c.cache_dir},
                    {"ca_file", c.ca_file, sizeof c.ca_file},
                    {"metrics_listen", c.metrics_listen, sizeof c.metrics_listen},
                    {"artifact_dir", c.artifact_dir, sizeof c.artifact_dir}};
        struct {
            const char *name;
            double *d;
        } nums[] = {{"worker_timeout_s", &c.worker_timeout_s}, {"lease_s", &c.lease_s},
                    {"heartbeat_s", &c.heartbeat_s},           {"poll_s", &c.poll_s},
                    {"backoff_base_s", &c.backoff_base_s},     {"backoff_max_s", &c.backoff_max_s},
                    {"shutdown_grace_s", &c.shutdown_grace_s},
                    {"cache_budget_gb", &c.cache_budget_gb},
                    {"fetch_connect_timeout_s", &c.fetch_connect_timeout_s},
                    {"fetch_backoff_base_s", &c.fetch_backoff_base_s},
                    {"fetch_backoff_max_s", &c.fetch_backoff_max_s},
                    {"healthz_max_age_s", &c.healthz_max_age_s},
                    {"db_statement_timeout_s", &c.db_statement_timeout_s},
                    {"db_idle_in_transaction_timeout_s", &c.db_idle_in_transaction_timeout_s}};
        int found = 0;
        for (size_t i = 0; i < sizeof strs / sizeof *strs && !found; i++)
            if (strcmp(key, strs[i].name) == 0) {
                if (!json_is_string(v) || strlen(json_string_value(v)) >= strs[i].n) {
                    rc = err_set(e, ERR_FORMAT, path, "\"%s\" must be a string", key);
                    goto out;
                }
                snprintf(strs[i].s, strs[i].n, "%s", json_string_value(v));
                found = 1;
            }
        for (size_t i = 0; i < sizeof nums / sizeof *nums && !found; i++)
            if (strcmp(key, nums[i].name) == 0) {
                if (!json_is_number(v)) {
                    rc = err_set(e, ERR_FORMAT, path, "\"%s\" must be a number", key);
                    goto out;
                }
                *nums[i].d = json_number_value(v);
                found = 1;
            }
        if (!found && (strcmp(key, "metrics_allow_remote") == 0 || strcmp(key, "hf_cache_write") == 0)) {
            if (!json_is_boolean(v)) {
                rc = err_set(e, ERR_FORMAT, path, "\"%s\" must be true or false", key);
                goto out;
            }
            *(key[0] == 'm' ? &c.metrics_allow_remote : &c.hf_cache_write) = json_is_true(v);
            found = 1;
        }
        if (!found) {
            long *lp = strcmp(key, "worker_memory_mb") == 0        ? &c.worker_memory_mb
                       : strcmp(key, "worker_cpu_s") == 0          ? &c.worker_cpu_s
                       : strcmp(key, "fetch_low_speed_bytes") == 0 ? &c.fetch_low_speed_bytes
                       : strcmp(key, "fetch_low_speed_s") == 0     ? &c.fetch_low_speed_s
                       : strcmp(key, "disk_min_free_mb") == 0      ? &c.disk_min_free_mb
                                                                   : NULL;
            int *ip = strcmp(key, "workers") == 0          ? &c.workers
                      : strcmp(key, "worker_threads") == 0 ? &c.worker_threads
                      : strcmp(key, "prefetch") == 0       ? &c.prefetch
                      : strcmp(key, "fetch_parallel") == 0 ? &c.fetch_parallel
                      : strcmp(key, "fetch_retries") == 0  ? &c.fetch_retries
                                                           : NULL;
            if (!lp && !ip) {
                rc = err_set(e, ERR_FORMAT, path, "unknown setting \"%s\"", key);
                goto out;
            }
            if (!json_is_integer(v)) {
                rc = err_set(e, ERR_FORMAT, path, "\"%s\" must be an integer", key);
                goto out;
            }
            /* beyond an int every integer setting is out of range: say so
             * here, before narrowing would turn it into a plausible value */
            json_int_t x = json_integer_value(v);
            if (x < INT_MIN || x > INT_MAX) {
                for (size_t i = 0; i < sizeof ranges / sizeof *ranges; i++)
                    if (strcmp(ranges[i].name, key) == 0)
                        rc = range_error(i, (double)x, e);
                if (e)
                    snprintf(e->ctx, sizeof e->ctx, "%s", path);
                goto out;
            }
            if (lp)
                *lp = (long)x;
            else
                *ip = (int)x;
        }
    }
    if ((rc = daemon_config_check(&c, e)) < 0) {
        if (e)
            snprintf(e->ctx, sizeof e->ctx, "%s", path);
        goto out;
    }
    *out = c;
out:
    json_decref(root);
    return rc;
}
