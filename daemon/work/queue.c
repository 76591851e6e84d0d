#include "daemon/work/queue.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "daemon/base/db.h"
#include "daemon/plan/source.h"

/* Claims lost to another node between snapshot and lock, retried at once. */
#define CLAIM_RACE_RETRIES 16

/* Backoff as SQL: base * 2^(attempts-1), capped, times a jitter in [0.8, 1.2). */
#define BACKOFF_SQL(base, max) \
    "make_interval(secs => least(" max ", " base " * power(2, greatest(attempts - 1, 0)))" \
    " * (0.8 + 0.4 * random()))"

/* After a failed attempt: queued again, or dead when none are left. */
#define REQUEUE_OR_DEAD \
    "CASE WHEN attempts >= max_attempts THEN 'dead'::job_state ELSE 'queued'::job_state END"

int queue_add_run(struct db *db, const char *name, const char *source, const char *schedule,
                  const long long *steps, int nsteps, const struct queue_item *items, int nitems,
                  const char *options_json, int max_attempts, long *new_ckpts, long *new_jobs,
                  struct err *e)
{
    char *steps_arr = NULL, *items_arr = NULL, *vers_arr = NULL, *urls_arr = NULL;
    const char **names = NULL;
    char **urls = NULL;
    int rc = 0;
    if (new_ckpts)
        *new_ckpts = 0;
    if (new_jobs)
        *new_jobs = 0;
    size_t cap = (size_t)nsteps * 24 + 16, vcap = (size_t)nitems * 12 + 16;
    steps_arr = malloc(cap);
    vers_arr = malloc(vcap);
    names = malloc((size_t)(nitems ? nitems : 1) * sizeof *names);
    urls = calloc((size_t)(nsteps ? nsteps : 1), sizeof *urls);
    if (!steps_arr || !vers_arr || !names || !urls) {
        rc = err_set(e, ERR_NOMEM, name, "out of memory");
        goto out;
    }
    db_int_array(steps_arr, cap, steps, nsteps);
    /* each checkpoint's URL from the template, by the one builder (source.h) */
    for (int i = 0; i < nsteps; i++) {
        char url[2048];
        if ((rc = source_checkpoint_url(source, steps[i], url, sizeof url, e)) < 0)
            goto out;
        if (!(urls[i] = strdup(url))) {
            rc = err_set(e, ERR_NOMEM, name, "out of memory");
            goto out;
        }
    }
    size_t ov = (size_t)snprintf(vers_arr, vcap, "{");
    for (int i = 0; i < nitems; i++) {
        names[i] = items[i].name;
        ov += (size_t)snprintf(vers_arr + ov, vcap - ov, "%s%d", i ? "," : "", items[i].version);
    }
    snprintf(vers_arr + ov, vcap - ov, "}");
    items_arr = db_text_array(names, nitems);
    urls_arr = db_text_array((const char *const *)urls, nsteps);
    if (!items_arr || !urls_arr) {
        rc = err_set(e, ERR_NOMEM, name, "out of memory");
        goto out;
    }
    char maxa[16];
    snprintf(maxa, sizeof maxa, "%d", max_attempts);

    if ((rc = db_run(db, "BEGIN", 0, NULL, e)) < 0)
        goto out;
    const char *p1[5] = {name, source, schedule, items_arr, options_json ? options_json : "{}"};
    PGresult *r = db_exec(db,
        "INSERT INTO runs (name, source, schedule, items, options) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (name) DO UPDATE SET items = ARRAY(SELECT DISTINCT unnest(runs.items || EXCLUDED.items))"
        " RETURNING id, source", 5, p1, e);
    if (!r) {
        rc = ERR_DB;
        goto rollback;
    }
    char run_id[32];
    snprintf(run_id, sizeof run_id, "%s", PQgetvalue(r, 0, 0));
    int same = strcmp(PQgetvalue(r, 0, 1), source) == 0;
    PQclear(r);
    if (!same) {
        rc = err_set(e, ERR_INVALID, name, "run exists with a different source");
        goto rollback;
    }
    /* checkpoints: revision stepN, the URLs built above */
    const char *p2[3] = {run_id, steps_arr, urls_arr};
    r = db_exec(db,
        "INSERT INTO checkpoints (run_id, step, revision, url)"
        " SELECT $1, x.s, 'step' || x.s, x.url"
        " FROM unnest($2::bigint[], $3::text[]) AS x(s, url)"
        " ON CONFLICT (run_id, step) DO NOTHING", 3, p2, e);
    if (!r) {
        rc = ERR_DB;
        goto rollback;
    }
    if (new_ckpts)
        *new_ckpts = atol(PQcmdTuples(r));
    PQclear(r);
    const char *p3[5] = {run_id, steps_arr, items_arr, vers_arr, maxa};
    r = db_exec(db,
        "INSERT INTO jobs (checkpoint_id, item, version, max_attempts)"
        " SELECT c.id, it.item, it.version, $5"
        " FROM checkpoints c CROSS JOIN unnest($3::text[], $4::int[]) AS it(item, version)"
        " WHERE c.run_id = $1 AND c.step = ANY($2::bigint[])"
        " ON CONFLICT (checkpoint_id, item, version) DO NOTHING", 5, p3, e);
    if (!r) {
        rc = ERR_DB;
        goto rollback;
    }
    if (new_jobs)
        *new_jobs = atol(PQcmdTuples(r));
    PQclear(r);
    if ((rc = db_run(db, "NOTIFY " QUEUE_CHANNEL, 0, NULL, e)) < 0 ||
        (rc = db_run(db, "COMMIT", 0, NULL, e)) < 0)
        goto rollback;
    goto out;
rollback:
    db_rollback(db);
out:
    for (int i = 0; urls && i < nsteps; i++)
        free(urls[i]);
    free(urls);
    free(urls_arr);
    free(names);
    free(steps_arr);
    free(items_arr);
    free(vers_arr);
    return rc;
}

/* The worker runs items in the order given: put each job after the job of
 * the item it depends on when both are in the claim (a stable insertion
 * of each job behind its dependency; id order otherwise). */
static void order_by_dependencies(struct claim *c, char deps[][64])
{
    for (int pass = 0; pass < c->njobs * c->njobs; pass++) {
        int moved = 0;
        for (int i = 0; i < c->njobs && !moved; i++) {
            int d = -1;
            for (int k = i + 1; k < c->njobs && deps[i][0]; k++)
                if (strcmp(c->items[k], deps[i]) == 0)
                    d = k; /* the dependency comes later: move i behind it */
            if (d < 0)
                continue;
            long long id = c->job_ids[i];
            int ver = c->versions[i];
            char item[64], dep[64];
            memcpy(item, c->items[i], sizeof item);
            memcpy(dep, deps[i], sizeof dep);
            for (int k = i; k < d; k++) {
                c->job_ids[k] = c->job_ids[k + 1];
                c->versions[k] = c->versions[k + 1];
                memcpy(c->items[k], c->items[k + 1], sizeof item);
                memcpy(deps[k], deps[k + 1], sizeof dep);
            }
            c->job_ids[d] = id;
            c->versions[d] = ver;
            memcpy(c->items[d], item, sizeof item);
            memcpy(deps[d], dep, sizeof dep);
            moved = 1;
        }
        if (!moved)
            return;
    }
}

/* The claimed jobs (the claim statement's rows, at most CLAIM_MAX_JOBS)
 * into c, in the order the worker runs them. */
static void claim_jobs(struct claim *c, PGresult *r)
{
    const int n = PQntuples(r);
    /* the previous checkpoint's artifacts: passed when every job that
     * reads them found them done there, at the same step (job_prev_step) */
    int readers = 0, found = 0;
    c->prev_step = -1;
    char deps[CLAIM_MAX_JOBS][64];
    for (int i = 0; i < n; i++) {
        c->job_ids[i] = atoll(PQgetvalue(r, i, 0));
        snprintf(c->items[i], sizeof c->items[i], "%s", PQgetvalue(r, i, 1));
        c->versions[i] = atoi(PQgetvalue(r, i, 2));
        int a = atoi(PQgetvalue(r, i, 3));
        c->attempts = a > c->attempts ? a : c->attempts;
        snprintf(deps[i], sizeof deps[i], "%s", PQgetvalue(r, i, 5));
        if (PQgetisnull(r, i, 6))
            continue;
        readers++;
        if (PQgetisnull(r, i, 7))
            continue;
        long long ps = atoll(PQgetvalue(r, i, 7));
        if (found++ == 0)
            c->prev_step = ps;
        else if (ps != c->prev_step)
            found = -CLAIM_MAX_JOBS; /* cannot happen: one previous checkpoint */
    }
    if (found != readers)
        c->prev_step = -1;
    c->njobs = n;
    c->checkpoint_id = atoll(PQgetvalue(r, 0, 4));
    order_by_dependencies(c, deps);
}

/* Undo a claim of the jobs in r (column 0: their ids): queued again, the
 * attempt not counted, as queue_release does.  A failure is only logged:
 * the lease expires and the jobs return anyway. */
static void give_back(struct db *db, const char *node, PGresult *r)
{
    const int n = PQntuples(r);
    long long *ids = malloc((size_t)n * sizeof *ids);
    char *arr = malloc((size_t)n * 24 + 3);
    struct err e;
    err_clear(&e);
    if (!ids || !arr) {
        err_set(&e, ERR_NOMEM, "queue", "out of memory");
    } else {
        for (int i = 0; i < n; i++)
            ids[i] = atoll(PQgetvalue(r, i, 0));
        db_int_array(arr, (size_t)n * 24 + 3, ids, n);
        const char *p[2] = {arr, node};
        if (db_run(db,
                   "UPDATE jobs SET state = 'queued', attempts = greatest(attempts - 1, 0),"
                   "   lease_owner = NULL, lease_expires = NULL, not_before = now()"
                   " WHERE id = ANY($1::bigint[]) AND lease_owner = $2 AND state = 'running'",
                   2, p, &e) == 0)
            log_warn("claim given back", "jobs=%d", n);
    }
    if (e.code)
        log_err("cannot give the claimed jobs back (their lease will expire)", &e);
    free(arr);
    free(ids);
}

int queue_claim(struct db *db, const char *node, double lease_s, struct claim *c, struct err *e)
{
    char lease[32];
    snprintf(lease, sizeof lease, "%.3f", lease_s);
    const char *p[2] = {node, lease};
    PGresult *r = NULL;
    int n = 0;
    /* Lock the first checkpoint that has due queued jobs, by the lowest
     * priority of those jobs (policy.h: 0 for every job of a run in step
     * order; 3, POLICY_P_HELD, is an adaptive run's job held until its
     * plan is made, never a candidate), then oldest first (by id: the
     * order runs and their steps were added), skipping checkpoints another
     * node is claiming right now;
     * then take its queued jobs of that priority or lower.  One due job is enough: the jobs of a checkpoint fail
     * together, but their backoffs are jittered row by row, and waiting for
     * the last would split the checkpoint into several worker runs.
     *
     * The candidates are the checkpoints of the first 256 due jobs on
     * the jobs_queued_priority index, so a claim costs the same however many jobs
     * are done, running or queued.  FOR UPDATE SKIP LOCKED applies to the
     * candidates in order, one at a time until one is locked, whatever
     * plan the statistics bring (a lock in a subquery run per queued job
     * would lock every checkpoint whenever the planner sorts after the
     * join).  More claimers at once than candidates: the rest hear
     * "nothing" and poll again.
     *
     * Dependencies: a job is a candidate when its item has none (no
     * depends_on, no need of prev_artifacts in battery_items: one index
     * probe), or job_ready() (schema/005_sae.sql) says they allow it; the
     * test runs on the jobs scanned for candidates, before any lock.  The
     * jobs that read the previous checkpoint come back with the item they
     * read there and that checkpoint's step when its job is done
     * (job_prev_item, job_prev_step).
     *
     * ck comes back even when the UPDATE took nothing: another node claimed
     * that checkpoint's jobs after our snapshot was taken but before we
     * locked it.  That is not "nothing claimable": look again.
     *
     * bench/queue_bench.sh extracts this statement and the next from this
     * file; keep each one db_exec() of string literals. */
    int rc = 0;
    for (int tries = 0;; tries++) {
        r = db_exec(db,
            "WITH cand AS MATERIALIZED ("
            "  SELECT array_agg(q.checkpoint_id ORDER BY q.priority, q.checkpoint_id) AS ids,"
            "    array_agg(q.priority ORDER BY q.priority, q.checkpoint_id) AS prios"
            "  FROM (SELECT q.checkpoint_id, q.priority FROM jobs q"
            "    WHERE q.state = 'queued' AND q.priority < 3 AND q.not_before <= now()"
            "      AND (NOT EXISTS (SELECT 1 FROM battery_items b WHERE b.item = q.item"
            "             AND b.version = q.version AND (b.depends_on IS NOT NULL"
            "             OR 'prev_artifacts' = ANY (b.needs))) OR job_ready(q.id))"
            "    ORDER BY q.priority, q.checkpoint_id LIMIT 256) q),"
            " ck AS ("
            "  SELECT c.id, cand.prios[array_position(cand.ids, c.id)] AS prio FROM checkpoints c, cand"
            "  WHERE c.id = ANY (cand.ids)"
            "  ORDER BY array_position(cand.ids, c.id) LIMIT 1 FOR UPDATE OF c SKIP LOCKED),"
            " claimed AS ("
            "  UPDATE jobs j SET state = 'running', lease_owner = $1,"
            "    lease_expires = now() + make_interval(secs => $2::float8),"
            "    attempts = attempts + 1, started_at = now()"
            "  FROM ck WHERE j.checkpoint_id = ck.id AND j.state = 'queued' AND j.priority <= ck.prio"
            "    AND (NOT EXISTS (SELECT 1 FROM battery_items b WHERE b.item = j.item"
            "           AND b.version = j.version AND (b.depends_on IS NOT NULL"
            "           OR 'prev_artifacts' = ANY (b.needs))) OR job_ready(j.id))"
            "  RETURNING j.id, j.item, j.version, j.attempts)"
            " SELECT claimed.id, claimed.item, claimed.version, claimed.attempts,"
            "   ck.id AS checkpoint_id, b.depends_on,"
            "   CASE WHEN 'prev_artifacts' = ANY (b.needs) THEN job_prev_item(claimed.id) END,"
            "   CASE WHEN 'prev_artifacts' = ANY (b.needs) THEN job_prev_step(claimed.id) END"
            " FROM ck LEFT JOIN claimed ON true"
            " LEFT JOIN battery_items b ON b.item = claimed.item AND b.version = claimed.version"
            " ORDER BY claimed.id", 2, p, e);
        if (!r) {
            rc = ERR_DB;
            goto out;
        }
        n = PQntuples(r);
        if (n == 0 || !PQgetisnull(r, 0, 0))
            break;
        PQclear(r);
        r = NULL;
        if (tries == CLAIM_RACE_RETRIES)
            goto out; /* a crowd of claimers: poll again later */
    }
    if (n == 0)
        goto out;
    memset(c, 0, sizeof *c);
    if (n > CLAIM_MAX_JOBS) {
        /* cannot happen with a sane battery: the jobs go back untouched */
        rc = err_set(e, ERR_INVALID, "queue", "checkpoint has %d jobs, more than %d", n, CLAIM_MAX_JOBS);
        give_back(db, node, r);
        goto out;
    }
    claim_jobs(c, r);
    PQclear(r);
    r = NULL;
    char ck[32];
    snprintf(ck, sizeof ck, "%lld", c->checkpoint_id);
    const char *p2[1] = {ck};
    r = db_exec(db,
        "SELECT c.run_id, c.step, c.url, r.name, r.options::text, r.source,"
        "   (SELECT count(*) FROM checkpoints o WHERE o.run_id = c.run_id AND o.step < c.step),"
        "   (SELECT count(*) FROM checkpoints o WHERE o.run_id = c.run_id)"
        " FROM checkpoints c JOIN runs r ON r.id = c.run_id WHERE c.id = $1", 1, p2, e);
    if (!r) {
        rc = ERR_DB; /* the lease expires and the jobs return */
        goto out;
    }
    if (PQntuples(r) != 1) { /* the run was deleted under us */
        rc = err_set(e, ERR_DB, "queue", "checkpoint %s vanished while being claimed", ck);
        goto out;
    }
    c->run_id = atoll(PQgetvalue(r, 0, 0));
    c->step = atoll(PQgetvalue(r, 0, 1));
    snprintf(c->url, sizeof c->url, "%s", PQgetvalue(r, 0, 2));
    snprintf(c->run, sizeof c->run, "%s", PQgetvalue(r, 0, 3));
    snprintf(c->options, sizeof c->options, "%s", PQgetvalue(r, 0, 4));
    snprintf(c->source, sizeof c->source, "%s", PQgetvalue(r, 0, 5));
    c->index = atoi(PQgetvalue(r, 0, 6));
    c->count = atoi(PQgetvalue(r, 0, 7));
    rc = 1;
out:
    PQclear(r);
    return rc;
}

int queue_heartbeat(struct db *db, const char *node, double lease_s, const long long *ids, int n,
                    struct err *e)
{
    char arr[CLAIM_MAX_JOBS * 24], lease[32];
    db_int_array(arr, sizeof arr, ids, n);
    snprintf(lease, sizeof lease, "%.3f", lease_s);
    const char *p[3] = {arr, node, lease};
    PGresult *r = db_exec(db,
        "UPDATE jobs SET lease_expires = now() + make_interval(secs => $3::float8)"
        " WHERE id = ANY($1::bigint[]) AND lease_owner = $2 AND state = 'running'"
        "   AND lease_expires > now()", 3, p, e);
    if (!r)
        return ERR_DB;
    int got = atoi(PQcmdTuples(r));
    PQclear(r);
    return got;
}

/* Queued jobs whose item depends on one that is dead on the same
 * checkpoint can never run: dead too, saying why (`ckptd retry` of the
 * run, or of the dead job, brings them back). */
static int bury_dependents(struct db *db, struct err *e)
{
    return db_run(db,
        "UPDATE jobs j SET state = 'dead', finished_at = now(),"
        "   last_error = 'depends on ' || d.item || ' (job ' || d.id || ') of this checkpoint,"
        " which failed for good: ' || coalesce(d.last_error, '')"
        " FROM battery_items b, jobs d"
        " WHERE j.state = 'queued' AND b.item = j.item AND b.version = j.version"
        "   AND d.checkpoint_id = j.checkpoint_id AND d.item = b.depends_on AND d.state = 'dead'",
        0, NULL, e);
}

int queue_fail(struct db *db, const char *node, const long long *ids, int n, const char *error,
               const struct backoff *b, struct err *e)
{
    char arr[CLAIM_MAX_JOBS * 24], base[32], max[32];
    db_int_array(arr, sizeof arr, ids, n);
    snprintf(base, sizeof base, "%.3f", b->base_s);
    snprintf(max, sizeof max, "%.3f", b->max_s);
    const char *p[5] = {arr, node, error, base, max};
    int rc = db_run(db,
        "UPDATE jobs SET state = " REQUEUE_OR_DEAD ","
        "   last_error = $3, lease_owner = NULL, lease_expires = NULL, finished_at = now(),"
        "   not_before = now() + " BACKOFF_SQL("$4::float8", "$5::float8")
        " WHERE id = ANY($1::bigint[]) AND lease_owner = $2 AND state = 'running'", 5, p, e);
    if (rc == 0)
        rc = bury_dependents(db, e);
    if (rc == 0)
        rc = db_run(db, "NOTIFY " QUEUE_CHANNEL, 0, NULL, e);
    return rc;
}

int queue_release(struct db *db, const char *node, const long long *ids, int n, struct err *e)
{
    char arr[CLAIM_MAX_JOBS * 24];
    db_int_array(arr, sizeof arr, ids, n);
    const char *p[2] = {arr, node};
    int rc = db_run(db,
        "UPDATE jobs SET state = 'queued', attempts = greatest(attempts - 1, 0),"
        "   lease_owner = NULL, lease_expires = NULL, not_before = now()"
        " WHERE id = ANY($1::bigint[]) AND lease_owner = $2 AND state = 'running'", 2, p, e);
    if (rc == 0)
        rc = db_run(db, "NOTIFY " QUEUE_CHANNEL, 0, NULL, e);
    return rc;
}

int queue_giveback(struct db *db, const char *node, const long long *ids, int n, const char *why,
                   struct err *e)
{
    char arr[CLAIM_MAX_JOBS * 24];
    db_int_array(arr, sizeof arr, ids, n);
    const char *p[3] = {arr, node, why};
    int rc = db_run(db,
        "UPDATE jobs SET state = 'queued', attempts = greatest(attempts - 1, 0),"
        "   lease_owner = NULL, lease_expires = NULL, not_before = now(), last_error = $3"
        " WHERE id = ANY($1::bigint[]) AND lease_owner = $2 AND state = 'running'", 3, p, e);
    if (rc == 0)
        rc = db_run(db, "NOTIFY " QUEUE_CHANNEL, 0, NULL, e);
    return rc;
}

int queue_expire(struct db *db, const struct backoff *b, struct err *e)
{
    char base[32], max[32];
    snprintf(base, sizeof base, "%.3f", b->base_s);
    snprintf(max, sizeof max, "%.3f", b->max_s);
    const char *p[2] = {base, max};
    PGresult *r = db_exec(db,
        "UPDATE jobs SET state = " REQUEUE_OR_DEAD ","
        "   last_error = 'lease of ' || lease_owner || ' expired (node died or lost the database)',"
        "   lease_owner = NULL, lease_expires = NULL,"
        "   not_before = now() + " BACKOFF_SQL("$1::float8", "$2::float8")
        " WHERE state = 'running' AND lease_expires < now()", 2, p, e);
    if (!r)
        return ERR_DB;
    int n = atoi(PQcmdTuples(r));
    PQclear(r);
    if (n > 0) {
        log_warn("expired leases returned to the queue", "jobs=%d", n);
        int rc = bury_dependents(db, e);
        if (rc == 0)
            rc = db_run(db, "NOTIFY " QUEUE_CHANNEL, 0, NULL, e);
        if (rc < 0)
            return rc;
    }
    return n;
}

int queue_retry(struct db *db, const char *run_or_job, struct err *e)
{
    const char *p[1] = {run_or_job};
    char *end = NULL;
    long long id = strtoll(run_or_job, &end, 10);
    PGresult *r;
    if (*run_or_job && end && *end == '\0' && id > 0)
        r = db_exec(db,
            "UPDATE jobs SET state = 'queued', attempts = 0, not_before = now(),"
            "   last_error = 'before manual retry: ' || coalesce(last_error, '')"
            " WHERE state = 'dead' AND (id = $1::bigint OR id IN ("
            "   SELECT j.id FROM jobs t JOIN jobs j ON j.checkpoint_id = t.checkpoint_id"
            "   JOIN battery_items b ON b.item = j.item AND b.version = j.version"
            "   WHERE t.id = $1::bigint AND b.depends_on = t.item))", 1, p, e);
    else
        r = db_exec(db,
            "UPDATE jobs j SET state = 'queued', attempts = 0, not_before = now(),"
            "   last_error = 'before manual retry: ' || coalesce(last_error, '')"
            " FROM checkpoints c, runs r WHERE j.checkpoint_id = c.id AND c.run_id = r.id"
            "   AND r.name = $1 AND j.state = 'dead'", 1, p, e);
    if (!r)
        return ERR_DB;
    int n = atoi(PQcmdTuples(r));
    PQclear(r);
    if (n > 0 && db_run(db, "NOTIFY " QUEUE_CHANNEL, 0, NULL, e) < 0)
        return ERR_DB;
    return n;
}

int queue_counts(struct db *db, long *queued, long *running, struct err *e)
{
    PGresult *r = db_exec(db,
        "SELECT count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE state = 'running')"
        " FROM jobs WHERE state IN ('queued', 'running')", 0, NULL, e);
    if (!r)
        return ERR_DB;
    *queued = atol(PQgetvalue(r, 0, 0));
    *running = atol(PQgetvalue(r, 0, 1));
    PQclear(r);
    return 0;
}

int queue_notify(struct db *db, struct err *e) { return db_run(db, "NOTIFY " QUEUE_CHANNEL, 0, NULL, e); }

int queue_listen(struct db *db, struct err *e) { return db_run(db, "LISTEN " QUEUE_CHANNEL, 0, NULL, e); }

int queue_fetch_progress(struct db *db, long long checkpoint_id, const char *node, const char *state,
                         long long done, long long total, double rate, const char *error, struct err *e)
{
    char id[32], d[32], t[32], r[32];
    snprintf(id, sizeof id, "%lld", checkpoint_id);
    snprintf(d, sizeof d, "%lld", done);
    snprintf(t, sizeof t, "%lld", total);
    snprintf(r, sizeof r, "%.1f", rate);
    const char *p[7] = {id, node, state, d, total >= 0 ? t : NULL, r, error};
    return db_run(db,
        "INSERT INTO fetches (checkpoint_id, node, state, bytes_done, bytes_total, bytes_per_s, error)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)"
        " ON CONFLICT (checkpoint_id) DO UPDATE SET node = $2, state = $3, bytes_done = $4, bytes_total = $5,"
        "   bytes_per_s = $6, error = $7, updated_at = now(),"
        "   started_at = CASE WHEN fetches.state = 'fetching' AND $3 = 'fetching' THEN fetches.started_at"
        "                     ELSE now() END",
        7, p, e);
}
