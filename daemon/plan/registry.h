/*
 * registry.h - the battery as the daemon knows it: the items and versions
 * the worker offers (from `ckpt-worker battery --json`) and the id of every
 * metric in the database's `metrics` dictionary.
 *
 * The worker is the authority on what it measures; the daemon asks it, then
 * upserts every (item, version, metric) into `metrics` so measurements can
 * reference them by id.  A new item version becomes new metric ids: old
 * series stay, tagged with their version.
 *
 *     struct registry r = {0};
 *     if (registry_from_worker(&r, worker_path, &e) < 0 || registry_sync(&r, db, &e) < 0) ...
 *     int id = registry_metric_id(&r, "loss", 1, "loss");
 *     registry_free(&r);
 */
#ifndef CKPTD_REGISTRY_H
#define CKPTD_REGISTRY_H

#include "common/err.h"

#define REGISTRY_NAME_MAX 64

struct reg_item {
    char name[REGISTRY_NAME_MAX];
    int version;
    int needs_task; /* needs a toy run's task.json ("task" in its needs) */
    int opt_in;     /* "opt_in": true, run only when named */
    int needs_artifacts;      /* "artifacts": writes or reads --artifacts DIR */
    int needs_prev_artifacts; /* "prev_artifacts": reads --prev-artifacts DIR */
    char depends_on[REGISTRY_NAME_MAX]; /* the item whose artifacts it reads, or "" */
};

struct reg_metric {
    char item[REGISTRY_NAME_MAX];
    int version;
    char name[REGISTRY_NAME_MAX];
    int id; /* metrics.id once synced, else 0 */
};

struct registry {
    int nitems;
    struct reg_item *items;
    int nmetrics;
    struct reg_metric *metrics; /* sorted by (item, version, name) */
    void *doc;                  /* the worker's JSON (json_t *) */
};

struct db;

/* How long `WORKER battery --json` may take (it answers in milliseconds). */
#define REGISTRY_WORKER_TIMEOUT_S 30.0

/* Run `WORKER battery --json` (common/child.h: stdout captured, killed
 * after REGISTRY_WORKER_TIMEOUT_S) and parse it.  ERR_CHILD when it cannot
 * run, fails ("worker not found" for exit status 127) or runs past the
 * deadline; registry_parse's errors.  On error r is left empty. */
int registry_from_worker(struct registry *r, const char *worker, struct err *e) CK_WUR;

/* The same with its own deadline (timeout_s <= 0: none). */
int registry_from_worker_within(struct registry *r, const char *worker, double timeout_s,
                                struct err *e) CK_WUR;

/* Parse a battery JSON document (for tests and for the above). */
int registry_parse(struct registry *r, const char *json_text, struct err *e) CK_WUR;

/* Upsert every metric into `metrics` and learn the ids; every item's needs
 * and depends_on into `battery_items` (what the claim's dependency rules
 * read). */
int registry_sync(struct registry *r, struct db *db, struct err *e) CK_WUR;

/* Id of a metric, or -1 when unknown. */
int registry_metric_id(const struct registry *r, const char *item, int version,
                       const char *name);

/* Current version of an item, or -1 when the worker has no such item. */
int registry_item_version(const struct registry *r, const char *item);

/* The item called `name`, or NULL.  Borrowed from r. */
const struct reg_item *registry_item(const struct registry *r, const char *name);

void registry_free(struct registry *r);

#endif
