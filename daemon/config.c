#include "config.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

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
}

int daemon_config_check(const struct daemon_config *c, struct err *e)
{
    if (c->workers < 1 || c->workers > 1024)
        return err_set(e, ERR_INVALID, "config", "workers must be between 1 and 1024");
    if (!(c->lease_s >= 1) || !(c->heartbeat_s > 0) || c->heartbeat_s * 2 > c->lease_s)
        return err_set(e, ERR_INVALID, "config",
                       "need lease_s >= 1 and heartbeat_s <= lease_s / 2 (lease %g, heartbeat %g)",
                       c->lease_s, c->heartbeat_s);
    if (!(c->poll_s > 0) || !(c->worker_timeout_s > 0) || !(c->backoff_base_s >= 0) ||
        c->backoff_max_s < c->backoff_base_s || c->shutdown_grace_s < 0)
        return err_set(e, ERR_INVALID, "config", "timing settings must be positive");
    if (c->worker_threads < 0 || c->worker_memory_mb < 0 || c->worker_cpu_s < 0)
        return err_set(e, ERR_INVALID, "config", "worker limits must not be negative");
    if (!c->node[0])
        return err_set(e, ERR_INVALID, "config", "node name must not be empty");
    return 0;
}

int daemon_config_load(struct daemon_config *out, const char *path, struct err *e)
{
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return err_set(e, ERR_FORMAT, path, "cannot read config: %s (line %d)", je.text, je.line);
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
                    {"spool_dir", c.spool_dir, sizeof c.spool_dir}};
        struct {
            const char *name;
            double *d;
        } nums[] = {{"worker_timeout_s", &c.worker_timeout_s}, {"lease_s", &c.lease_s},
                    {"heartbeat_s", &c.heartbeat_s},           {"poll_s", &c.poll_s},
                    {"backoff_base_s", &c.backoff_base_s},     {"backoff_max_s", &c.backoff_max_s},
                    {"shutdown_grace_s", &c.shutdown_grace_s}};
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
        if (!found) {
            long *lp = strcmp(key, "worker_memory_mb") == 0 ? &c.worker_memory_mb
                       : strcmp(key, "worker_cpu_s") == 0   ? &c.worker_cpu_s
                                                             : NULL;
            int *ip = strcmp(key, "workers") == 0          ? &c.workers
                      : strcmp(key, "worker_threads") == 0 ? &c.worker_threads
                                                           : NULL;
            if (!lp && !ip) {
                rc = err_set(e, ERR_FORMAT, path, "unknown setting \"%s\"", key);
                goto out;
            }
            if (!json_is_integer(v)) {
                rc = err_set(e, ERR_FORMAT, path, "\"%s\" must be an integer", key);
                goto out;
            }
            if (lp)
                *lp = (long)json_integer_value(v);
            else
                *ip = (int)json_integer_value(v);
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
