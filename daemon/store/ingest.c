#include "daemon/store/ingest.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "daemon/base/db.h"
#include "daemon/plan/registry.h"
#include "daemon/store/artifacts.h"
#include "daemon/store/lineage.h"
#include "daemon/work/queue.h"
#include "daemon/work/supervise.h"

#define COPY_CHUNK (256 * 1024)

static int parse_int(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int ingest_translate(const struct registry *reg, const struct claim *c, char *line, char *out,
                     size_t n, int *job_index, struct err *e)
{
    char *f[8];
    int nf = 0;
    char *p = line;
    while (nf < 8) {
        f[nf++] = p;
        char *tab = strchr(p, '\t');
        if (!tab)
            break;
        *tab = '\0';
        p = tab + 1;
    }
    if (nf != 7)
        return err_set(e, ERR_FORMAT, "rows", "expected 7 tab-separated fields, found %d", nf);
    long version, layer, head, idx;
    if (parse_int(f[1], 1, 1000000, &version) < 0 || parse_int(f[3], -1, 32767, &layer) < 0 ||
        parse_int(f[4], -1, 32767, &head) < 0 || parse_int(f[5], -1, 2147483647L, &idx) < 0)
        return err_set(e, ERR_FORMAT, "rows", "bad version/layer/head/idx in row for %s %s", f[0], f[2]);
    int j = -1;
    for (int i = 0; i < c->njobs && j < 0; i++)
        if (strcmp(c->items[i], f[0]) == 0 && c->versions[i] == version)
            j = i;
    if (j < 0)
        return err_set(e, ERR_FORMAT, "rows", "row for item %s version %ld, which was not asked for",
                       f[0], version);
    int id = registry_metric_id(reg, f[0], (int)version, f[2]);
    if (id < 0)
        return err_set(e, ERR_FORMAT, "rows", "unknown metric %s/%ld/%s (not in the battery registry)",
                       f[0], version, f[2]);
    char *end;
    errno = 0;
    double v = strtod(f[6], &end);
    if (end == f[6] || *end)
        return err_set(e, ERR_FORMAT, "rows", "value '%s' of %s/%s is not a number", f[6], f[0], f[2]);
    char val[40];
    if (isnan(v))
        snprintf(val, sizeof val, "NaN");
    else if (isinf(v))
        snprintf(val, sizeof val, "%sInfinity", v < 0 ? "-" : "");
    else
        snprintf(val, sizeof val, "%.17g", v);
    int w = snprintf(out, n, "%lld\t%lld\t%d\t%ld\t%ld\t%ld\t%s\n", c->run_id, c->step, id, layer,
                     head, idx, val);
    if (w < 0 || (size_t)w >= n)
        return err_set(e, ERR_FORMAT, "rows", "row too long");
    *job_index = j;
    return w;
}

/* A failed statement: a lost connection is ERR_DB (retry later); anything
 * the server refused (duplicate key, constraint) is a bad result: ERR_FORMAT. */
static int classify(struct db *db)
{
    return (!db_conn(db) || PQstatus(db_conn(db)) != CONNECTION_OK) ? ERR_DB : ERR_FORMAT;
}

/* ---- pass 1: which items' rows are whole and valid ---- */

/* What the output holds for one job of the claim. */
struct tally {
    int store;              /* done, and its rows are whole and valid: stored */
    long rows;              /* valid rows seen (of a done item) */
    char why[ERR_MSG_MAX + ERR_CTX_MAX + 64]; /* when a done item's rows are refused */
};

/* The job of c a row's item and version belong to, or -1. */
static int find_job(const struct claim *c, const char *row)
{
    size_t il = strcspn(row, "\t");
    if (row[il] != '\t')
        return -1;
    long version = atol(row + il + 1);
    for (int i = 0; i < c->njobs; i++)
        if (strlen(c->items[i]) == il && memcmp(c->items[i], row, il) == 0 &&
            c->versions[i] == version)
            return i;
    return -1;
}

/* A done item's rows are refused: the first reason is kept. */
static void refuse(struct tally *t, const char *fmt, ...) CK_PRINTF(2, 3);
static void refuse(struct tally *t, const char *fmt, ...)
{
    if (!t->store)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->why, sizeof t->why, fmt, ap);
    va_end(ap);
    t->store = 0;
}

/* One line of the output (newline still there when whole). */
static int scan_line(const struct registry *reg, const struct claim *c, const char *path,
                     long lineno, char *line, ssize_t len, struct tally *t, long *skipped,
                     struct err *e)
{
    char out[512];
    int whole = line[len - 1] == '\n', j = find_job(c, line);
    if (j < 0 && whole)
        return err_set(e, ERR_FORMAT, path, "line %ld: a row of an item that was not asked for: %.80s",
                       lineno, line);
    if (j < 0 || !t[j].store) { /* an item that did not finish (or is refused already) */
        (*skipped)++;
        return 0;
    }
    if (!whole) {
        refuse(&t[j], "%s line %ld: no newline (output cut short)", path, lineno);
        return 0;
    }
    line[len - 1] = '\0';
    int jj;
    struct err le;
    if (ingest_translate(reg, c, line, out, sizeof out, &jj, &le) < 0)
        refuse(&t[j], "%s line %ld: %s", path, lineno, err_str(&le));
    else
        t[j].rows++;
    return 0;
}

/* After a getline loop: 0 at the end of the file.  getline also stops
 * when it cannot allocate: that is no end of the rows, and not their
 * fault (ERR_NOMEM, try later); a read error is ERR_IO. */
static int read_ended(FILE *f, const char *path, long lineno, struct err *e)
{
    if (!ferror(f) && feof(f))
        return 0;
    if (errno == ENOMEM)
        return err_set(e, ERR_NOMEM, path, "out of memory reading line %ld", lineno + 1);
    return err_set(e, ERR_IO, path, "read error after line %ld", lineno);
}

/* Read the worker's output once: count each done item's valid rows and
 * refuse the items whose rows are not whole, valid and as many as the
 * worker reported.  t[i].store starts as "item i is done". */
static int scan_rows(const struct registry *reg, const struct claim *c, const char *path,
                     const struct item_outcome *out, struct tally *t, long *skipped, struct err *e)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long lineno = 0;
    int rc = 0;
    FILE *f = fopen(path, "r");
    if (!f)
        return err_set(e, ERR_FORMAT, path, "cannot open worker output: %s", strerror(errno));
    while (rc == 0 && (len = getline(&line, &cap, f)) > 0)
        rc = scan_line(reg, c, path, ++lineno, line, len, t, skipped, e);
    if (rc == 0)
        rc = read_ended(f, path, lineno, e);
    free(line);
    fclose(f);
    for (int i = 0; rc == 0 && i < c->njobs; i++) {
        if (t[i].store && t[i].rows == 0)
            refuse(&t[i], "%s: worker wrote no rows for item %s", path, c->items[i]);
        if (t[i].store && out[i].rows >= 0 && t[i].rows != out[i].rows)
            refuse(&t[i], "%s: %ld rows of item %s, the worker reported %ld", path, t[i].rows,
                   c->items[i], out[i].rows);
    }
    return rc;
}

/* The files the stored items wrote, hashed before the transaction (they
 * can be large). */
static int scan_artifacts(const struct registry *reg, const struct claim *c, const struct tally *t,
                          struct artifact_list *arts, struct err *e)
{
    for (int i = 0; c->artifact_dir[0] && i < c->njobs; i++) {
        const struct reg_item *ri = registry_item(reg, c->items[i]);
        if (t[i].store && ri && ri->needs_artifacts &&
            artifacts_scan(arts, c->artifact_dir, c->run, c->step, c->items[i], c->job_ids[i], e) < 0)
            return err_wrap(e, "artifacts of %s", c->items[i]);
    }
    return 0;
}

/* ---- pass 2: the transaction ---- */

/* Lock the claim's jobs; INGEST_LEASE_LOST unless all are still ours. */
static int lock_jobs(struct db *db, const struct claim *c, const char *node, struct err *e)
{
    char ids[CLAIM_MAX_JOBS * 24];
    db_int_array(ids, sizeof ids, c->job_ids, c->njobs);
    const char *p[2] = {ids, node};
    PGresult *r = db_exec(db,
        "SELECT id FROM jobs WHERE id = ANY($1::bigint[]) AND lease_owner = $2"
        " AND state = 'running' AND lease_expires > now() FOR UPDATE", 2, p, e);
    if (!r)
        return ERR_DB;
    int mine = PQntuples(r);
    PQclear(r);
    if (mine != c->njobs)
        return err_set(e, INGEST_LEASE_LOST, "queue",
                       "lease on %d of %d jobs of %s step %lld is no longer ours", c->njobs - mine,
                       c->njobs, c->run, c->step);
    return 0;
}

/* Send buf[0..*used) to the COPY in progress. */
static int copy_flush(PGconn *conn, char *buf, size_t *used, struct err *e)
{
    if (*used && PQputCopyData(conn, buf, (int)*used) != 1)
        return err_set(e, ERR_DB, "database", "COPY failed: %s", PQerrorMessage(conn));
    *used = 0;
    return 0;
}

/* Stream the stored items' rows (translated) into the COPY in progress. */
static int copy_lines(PGconn *conn, const struct registry *reg, const struct claim *c,
                      const char *path, const struct tally *t, struct err *e)
{
    char *buf = malloc(COPY_CHUNK + 512), *line = NULL;
    size_t used = 0, cap = 0;
    ssize_t len;
    int rc = 0, j;
    FILE *f = fopen(path, "r");
    if (!buf || !f) {
        rc = !buf ? err_set(e, ERR_NOMEM, path, "out of memory")
                  : err_set(e, ERR_FORMAT, path, "cannot open worker output: %s", strerror(errno));
        goto out;
    }
    long lineno = 0;
    while (rc == 0 && (len = getline(&line, &cap, f)) > 0) {
        lineno++;
        if (line[len - 1] != '\n' || (j = find_job(c, line)) < 0 || !t[j].store)
            continue;
        line[len - 1] = '\0';
        int w = ingest_translate(reg, c, line, buf + used, 512, &j, e);
        if (w < 0) /* the file changed under us */
            rc = err_set(e, ERR_FORMAT, path, "worker output changed while stored");
        else if ((used += (size_t)w) >= COPY_CHUNK)
            rc = copy_flush(conn, buf, &used, e);
    }
    if (rc == 0) /* rows cut short by a failed read would be stored short */
        rc = read_ended(f, path, lineno, e);
    if (rc == 0)
        rc = copy_flush(conn, buf, &used, e);
out:
    if (f)
        fclose(f);
    free(line);
    free(buf);
    return rc;
}

/* COPY the stored items' rows into measurements.  A failed statement: a
 * lost connection is ERR_DB (retry later); anything the server refused
 * (duplicate key, constraint) is a bad result: ERR_FORMAT. */
static int copy_rows(struct db *db, const struct registry *reg, const struct claim *c,
                     const char *path, const struct tally *t, struct err *e)
{
    PGconn *conn = db_conn(db);
    PGresult *r = PQexec(conn, "COPY measurements (run_id, step, metric_id, layer, head, idx, value) FROM STDIN");
    if (PQresultStatus(r) != PGRES_COPY_IN) {
        err_set(e, ERR_DB, "database", "COPY refused: %s", PQerrorMessage(conn));
        PQclear(r);
        return ERR_DB; /* not the rows' fault: try again later */
    }
    PQclear(r);
    int rc = copy_lines(conn, reg, c, path, t, e);
    if (PQputCopyEnd(conn, rc < 0 ? "ingestion aborted" : NULL) != 1 && rc == 0)
        rc = err_set(e, ERR_DB, "database", "COPY end failed: %s", PQerrorMessage(conn));
    while ((r = PQgetResult(conn))) {
        if (PQresultStatus(r) != PGRES_COMMAND_OK && rc == 0) {
            err_set(e, ERR_DB, "database", "COPY failed: %s", PQresultErrorMessage(r));
            if (e)
                e->msg[strcspn(e->msg, "\n")] = '\0';
            rc = classify(db);
            if (e)
                e->code = rc;
        }
        PQclear(r);
    }
    return rc;
}

/* The stored items' files and, for sae_match, the feature lineages. */
static int record_extras(struct db *db, const struct claim *c, const struct tally *t,
                         const struct artifact_list *arts, struct err *e)
{
    int rc;
    if ((rc = artifacts_record(db, c->run_id, c->step, arts, e)) < 0)
        return rc;
    for (int i = 0; i < c->njobs; i++)
        if (t[i].store && strcmp(c->items[i], LINEAGE_ITEM) == 0 &&
            (rc = lineage_store(db, c->run_id, c->step, c->versions[i], c->prev_step, e)) < 0) {
            err_wrap(e, "feature lineages");
            return rc;
        }
    return 0;
}

/* The stored jobs done, with their row counts. */
static int mark_done(struct db *db, const struct claim *c, const char *node, const struct tally *t,
                     double worker_seconds, struct err *e)
{
    char ids[CLAIM_MAX_JOBS * 24], counts[CLAIM_MAX_JOBS * 24], secs[32];
    long long id[CLAIM_MAX_JOBS], cnt[CLAIM_MAX_JOBS];
    int n = 0;
    for (int i = 0; i < c->njobs; i++)
        if (t[i].store) {
            id[n] = c->job_ids[i];
            cnt[n++] = t[i].rows;
        }
    if (n == 0)
        return 0;
    db_int_array(ids, sizeof ids, id, n);
    db_int_array(counts, sizeof counts, cnt, n);
    snprintf(secs, sizeof secs, "%.3f", worker_seconds);
    const char *p[4] = {ids, counts, secs, node};
    return db_run(db,
        "UPDATE jobs SET state = 'done', finished_at = now(), worker_seconds = $3::float8,"
        "   rows_written = x.cnt, lease_owner = NULL, lease_expires = NULL, last_error = NULL,"
        "   done_by = $4"
        " FROM unnest($1::bigint[], $2::bigint[]) AS x(id, cnt) WHERE jobs.id = x.id",
        4, p, e);
}

/* The jobs not stored fail, each with its own error (backoff or dead as
 * queue_fail decides). */
static int fail_rest(struct db *db, const struct claim *c, const char *node, const struct tally *t,
                     const struct item_outcome *out, const struct backoff *b, struct err *e)
{
    for (int i = 0; i < c->njobs; i++) {
        if (t[i].store)
            continue;
        char msg[sizeof t[i].why + 32];
        if (out[i].state == ITEM_DONE)
            snprintf(msg, sizeof msg, "results rejected: %s", t[i].why);
        else
            snprintf(msg, sizeof msg, "%s", out[i].error);
        int rc = queue_fail(db, node, &c->job_ids[i], 1, msg, b, e);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* BEGIN, the lease, the rows, the files, done and failed, NOTIFY, COMMIT. */
static int settle_tx(struct db *db, const struct registry *reg, const char *node,
                     const struct claim *c, const char *path, double secs, const struct tally *t,
                     const struct item_outcome *out, const struct backoff *b,
                     const struct artifact_list *arts, int any, struct err *e)
{
    int rc;
    if (!db_conn(db))
        return err_set(e, ERR_DB, "database", "not connected");
    if ((rc = db_run(db, "BEGIN", 0, NULL, e)) < 0)
        return rc;
    if ((rc = lock_jobs(db, c, node, e)) < 0 ||
        (any && (rc = copy_rows(db, reg, c, path, t, e)) < 0))
        goto fail;
    if ((any && (rc = record_extras(db, c, t, arts, e)) < 0) ||
        (rc = mark_done(db, c, node, t, secs, e)) < 0 ||
        (b && (rc = fail_rest(db, c, node, t, out, b, e)) < 0) ||
        /* jobs that depend on these may be claimable now */
        (rc = db_run(db, "NOTIFY " QUEUE_CHANNEL, 0, NULL, e)) < 0 ||
        (rc = db_run(db, "COMMIT", 0, NULL, e)) < 0) {
        /* out of memory is no fault of the results: it stays ERR_NOMEM */
        if (rc != ERR_NOMEM)
            rc = classify(db);
        if (e)
            e->code = rc;
        goto fail;
    }
    return 0;
fail:
    db_rollback(db);
    if (db_conn(db) && PQstatus(db_conn(db)) != CONNECTION_OK)
        db_lost(db);
    return rc;
}

/* Both entry points: strict (ingest_commit) refuses the whole output for
 * one bad item and records no failure; otherwise (b set) refused items
 * fail on their own. */
static int ingest_run(struct db *db, const struct registry *reg, const char *node,
                      const struct claim *c, const char *path, double secs,
                      struct item_outcome *out, const struct backoff *b,
                      struct ingest_result *res, struct err *e)
{
    struct tally t[CLAIM_MAX_JOBS];
    struct artifact_list arts;
    memset(&arts, 0, sizeof arts);
    memset(res, 0, sizeof *res);
    memset(t, 0, sizeof t);
    int any = 0, rc = 0;
    for (int i = 0; i < c->njobs; i++) {
        t[i].store = out[i].state == ITEM_DONE;
        any |= t[i].store;
    }
    if (any && (rc = scan_rows(reg, c, path, out, t, &res->skipped, e)) < 0)
        goto out;
    for (int i = 0; !b && i < c->njobs; i++)
        if (!t[i].store) {
            rc = err_set(e, ERR_FORMAT, NULL, "%s", t[i].why);
            goto out;
        }
    any = 0;
    for (int i = 0; i < c->njobs; i++)
        any |= t[i].store;
    if (any && (rc = scan_artifacts(reg, c, t, &arts, e)) < 0)
        goto out;
    if ((rc = settle_tx(db, reg, node, c, path, secs, t, out, b, &arts, any, e)) < 0)
        goto out;
    for (int i = 0; i < c->njobs; i++) {
        if (t[i].store) {
            res->done++;
            res->rows += t[i].rows;
        } else {
            res->failed++;
            if (out[i].state == ITEM_DONE) { /* refused: say so to the caller */
                out[i].state = ITEM_FAILED;
                snprintf(out[i].error, sizeof out[i].error, "results rejected: %s", t[i].why);
            }
        }
    }
out:
    artifacts_list_free(&arts);
    return rc;
}

int ingest_settle(struct db *db, const struct registry *reg, const char *node,
                  const struct claim *c, const char *rows_path, double worker_seconds,
                  struct item_outcome *out, const struct backoff *b, struct ingest_result *res,
                  struct err *e)
{
    return ingest_run(db, reg, node, c, rows_path, worker_seconds, out, b, res, e);
}

int ingest_commit(struct db *db, const struct registry *reg, const char *node,
                  const struct claim *c, const char *rows_path, double worker_seconds, long *rows,
                  struct err *e)
{
    struct item_outcome out[CLAIM_MAX_JOBS];
    struct ingest_result res;
    for (int i = 0; i < c->njobs; i++) {
        out[i].state = ITEM_DONE;
        out[i].rows = -1;
        out[i].error[0] = '\0';
    }
    int rc = ingest_run(db, reg, node, c, rows_path, worker_seconds, out, NULL, &res, e);
    *rows = rc == 0 ? res.rows : 0;
    return rc;
}
