#include "daemon/plan/registry.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "common/child.h"
#include "common/json_err.h"
#include "daemon/base/db.h"

static int cmp_metric(const void *a, const void *b)
{
    const struct reg_metric *x = a, *y = b;
    int c = strcmp(x->item, y->item);
    if (c)
        return c;
    if (x->version != y->version)
        return x->version < y->version ? -1 : 1;
    return strcmp(x->name, y->name);
}

void registry_free(struct registry *r)
{
    if (!r)
        return;
    free(r->items);
    free(r->metrics);
    json_decref(r->doc);
    memset(r, 0, sizeof *r);
}

static const char *jstr(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_string(v) ? json_string_value(v) : "";
}

int registry_parse(struct registry *r, const char *text, struct err *e)
{
    memset(r, 0, sizeof *r);
    json_error_t je;
    errno = 0;
    json_t *doc = json_loads(text, 0, &je);
    if (!doc)
        return json_err_nomem(&je) ? err_set(e, ERR_NOMEM, "battery", "out of memory reading the battery JSON")
                                   : err_set(e, ERR_FORMAT, "battery", "worker's battery JSON is invalid: %s", je.text);
    json_t *items = json_object_get(doc, "items");
    int rc = 0;
    if (!json_is_array(items) || json_array_size(items) == 0) {
        rc = err_set(e, ERR_FORMAT, "battery", "battery JSON has no \"items\" list");
        goto out;
    }
    size_t ni = json_array_size(items), nm = 0;
    for (size_t i = 0; i < ni; i++)
        nm += json_array_size(json_object_get(json_array_get(items, i), "metrics"));
    r->items = calloc(ni, sizeof *r->items);
    r->metrics = calloc(nm ? nm : 1, sizeof *r->metrics);
    if (!r->items || !r->metrics) {
        rc = err_set(e, ERR_NOMEM, "battery", "out of memory");
        goto out;
    }
    for (size_t i = 0; i < ni; i++) {
        json_t *it = json_array_get(items, i);
        json_t *ver = json_object_get(it, "version");
        const char *name = jstr(it, "name");
        if (!*name || strlen(name) >= REGISTRY_NAME_MAX || !json_is_integer(ver) ||
            json_integer_value(ver) <= 0) {
            rc = err_set(e, ERR_FORMAT, "battery", "item %zu lacks a name or a positive version", i);
            goto out;
        }
        struct reg_item *ri = &r->items[r->nitems++];
        snprintf(ri->name, sizeof ri->name, "%s", name);
        ri->version = (int)json_integer_value(ver);
        json_t *needs = json_object_get(it, "needs");
        for (size_t k = 0; k < json_array_size(needs); k++) {
            const char *need = json_string_value(json_array_get(needs, k));
            if (!need)
                continue;
            ri->needs_task |= strcmp(need, "task") == 0;
            ri->needs_artifacts |= strcmp(need, "artifacts") == 0;
            ri->needs_prev_artifacts |= strcmp(need, "prev_artifacts") == 0;
        }
        json_t *dep = json_object_get(it, "depends_on");
        if (dep && !json_is_null(dep) &&
            (!json_is_string(dep) || !*json_string_value(dep) ||
             strlen(json_string_value(dep)) >= REGISTRY_NAME_MAX)) {
            rc = err_set(e, ERR_FORMAT, "battery", "item %s: \"depends_on\" is not an item name", name);
            goto out;
        }
        if (json_is_string(dep))
            snprintf(ri->depends_on, sizeof ri->depends_on, "%s", json_string_value(dep));
        ri->opt_in = json_is_true(json_object_get(it, "opt_in"));
        json_t *ms = json_object_get(it, "metrics");
        for (size_t j = 0; j < json_array_size(ms); j++) {
            const char *mn = jstr(json_array_get(ms, j), "name");
            if (!*mn || strlen(mn) >= REGISTRY_NAME_MAX) {
                rc = err_set(e, ERR_FORMAT, "battery", "item %s: metric %zu has no usable name", name, j);
                goto out;
            }
            struct reg_metric *m = &r->metrics[r->nmetrics++];
            snprintf(m->item, sizeof m->item, "%s", name);
            m->version = ri->version;
            snprintf(m->name, sizeof m->name, "%s", mn);
        }
    }
    qsort(r->metrics, (size_t)r->nmetrics, sizeof *r->metrics, cmp_metric);
    r->doc = doc;
    doc = NULL;
out:
    json_decref(doc);
    if (rc < 0)
        registry_free(r);
    return rc;
}

int registry_from_worker_within(struct registry *r, const char *worker, double timeout_s,
                                struct err *e)
{
    memset(r, 0, sizeof *r);
    const char *argv[] = {worker, "battery", "--json", NULL};
    struct child c;
    char *out = NULL;
    size_t len = 0;
    int rc = child_capture(argv, timeout_s, &c, &out, &len, NULL, e);
    if (rc < 0)
        return rc == ERR_CHILD ? err_wrap(e, "the battery from the worker") : rc;
    if (!child_ok(&c)) {
        char how[128];
        child_describe(&c, how, sizeof how);
        rc = err_set(e, ERR_CHILD, worker, "'%s battery --json' failed (%s)%s", worker, how,
                     WIFEXITED(c.status) && WEXITSTATUS(c.status) == 127 ? ": worker not found" : "");
    } else {
        rc = registry_parse(r, out, e);
    }
    free(out);
    return rc;
}

int registry_from_worker(struct registry *r, const char *worker, struct err *e)
{
    return registry_from_worker_within(r, worker, REGISTRY_WORKER_TIMEOUT_S, e);
}

int registry_sync(struct registry *r, struct db *db, struct err *e)
{
    json_t *items = json_object_get(r->doc, "items");
    for (size_t i = 0; i < json_array_size(items); i++) {
        json_t *it = json_array_get(items, i);
        char ver[16];
        snprintf(ver, sizeof ver, "%lld", (long long)json_integer_value(json_object_get(it, "version")));
        json_t *needs = json_object_get(it, "needs");
        const char *nv[16];
        size_t nn = 0;
        for (size_t k = 0; k < json_array_size(needs) && nn < 16; k++)
            if (json_is_string(json_array_get(needs, k)))
                nv[nn++] = json_string_value(json_array_get(needs, k));
        char *needs_arr = db_text_array(nv, (int)nn);
        if (!needs_arr)
            return err_set(e, ERR_NOMEM, "battery", "out of memory");
        const char *dep = json_string_value(json_object_get(it, "depends_on"));
        const char *pi[4] = {jstr(it, "name"), ver, needs_arr, dep};
        int rc = db_run(db,
            "INSERT INTO battery_items (item, version, needs, depends_on) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (item, version) DO UPDATE SET needs = EXCLUDED.needs,"
            " depends_on = EXCLUDED.depends_on"
            " WHERE (battery_items.needs, battery_items.depends_on)"
            "   IS DISTINCT FROM (EXCLUDED.needs, EXCLUDED.depends_on)", 4, pi, e);
        free(needs_arr);
        if (rc < 0)
            return rc;
        json_t *ms = json_object_get(it, "metrics");
        for (size_t j = 0; j < json_array_size(ms); j++) {
            json_t *m = json_array_get(ms, j);
            const char *p[8] = {jstr(it, "name"), ver,           jstr(m, "name"), jstr(m, "unit"),
                                jstr(m, "description"), jstr(m, "layer"), jstr(m, "head"),
                                jstr(m, "idx")};
            PGresult *res = db_exec(db,
                "INSERT INTO metrics (item, version, name, unit, description, layer_meaning,"
                " head_meaning, idx_meaning) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                " ON CONFLICT (item, version, name) DO UPDATE SET unit = EXCLUDED.unit,"
                " description = EXCLUDED.description, layer_meaning = EXCLUDED.layer_meaning,"
                " head_meaning = EXCLUDED.head_meaning, idx_meaning = EXCLUDED.idx_meaning"
                " RETURNING id", 8, p, e);
            if (!res)
                return ERR_DB;
            struct reg_metric key;
            snprintf(key.item, sizeof key.item, "%s", p[0]);
            key.version = atoi(ver);
            snprintf(key.name, sizeof key.name, "%s", p[2]);
            struct reg_metric *found = bsearch(&key, r->metrics, (size_t)r->nmetrics,
                                               sizeof key, cmp_metric);
            if (found)
                found->id = atoi(PQgetvalue(res, 0, 0));
            PQclear(res);
        }
    }
    return 0;
}

int registry_metric_id(const struct registry *r, const char *item, int version, const char *name)
{
    struct reg_metric key;
    if (strlen(item) >= sizeof key.item || strlen(name) >= sizeof key.name)
        return -1;
    snprintf(key.item, sizeof key.item, "%s", item);
    key.version = version;
    snprintf(key.name, sizeof key.name, "%s", name);
    const struct reg_metric *m = bsearch(&key, r->metrics, (size_t)r->nmetrics, sizeof key, cmp_metric);
    return m && m->id > 0 ? m->id : -1;
}

int registry_item_version(const struct registry *r, const char *item)
{
    for (int i = 0; i < r->nitems; i++)
        if (strcmp(r->items[i].name, item) == 0)
            return r->items[i].version;
    return -1;
}

const struct reg_item *registry_item(const struct registry *r, const char *name)
{
    for (int i = 0; i < r->nitems; i++)
        if (strcmp(r->items[i].name, name) == 0)
            return &r->items[i];
    return NULL;
}
