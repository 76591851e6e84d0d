#include "daemon/store/ingest.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "daemon/base/db.h"
#include "daemon/plan/registry.h"
#include "daemon/store/artifacts.h"
#include "daemon/store/lineage.h"
#include "daemon/work/queue.h"

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

int ingest_commit(struct db *db, const struct registry *reg, const char *node,
                  const struct claim *c, const char *rows_path, double worker_seconds, long *rows,
                  struct err *e)
{
    char ids[CLAIM_MAX_JOBS * 24], counts_arr[CLAIM_MAX_JOBS * 24], secs[32];
    long long counts[CLAIM_MAX_JOBS] = {0};
    long total = 0;
    char *buf = NULL, *line = NULL;
    size_t linecap = 0;
    int rc = 0, in_copy = 0;
    struct artifact_list arts;
    memset(&arts, 0, sizeof arts);
    *rows = 0;
    FILE *f = fopen(rows_path, "r");
    if (!f)
        return err_set(e, ERR_FORMAT, rows_path, "cannot open worker output: %s", strerror(errno));
    buf = malloc(COPY_CHUNK + 512);
    if (!buf) {
        fclose(f);
        return err_set(e, ERR_NOMEM, rows_path, "out of memory");
    }
    /* the files the items wrote, hashed before the transaction (they can be large) */
    for (int i = 0; c->artifact_dir[0] && i < c->njobs; i++) {
        const struct reg_item *ri = registry_item(reg, c->items[i]);
        if (ri && ri->needs_artifacts &&
            (rc = artifacts_scan(&arts, c->artifact_dir, c->run, c->step, c->items[i],
                                 c->job_ids[i], e)) < 0) {
            err_wrap(e, "artifacts of %s", c->items[i]);
            goto out;
        }
    }
    PGconn *conn = db_conn(db);
    if (!conn) {
        rc = err_set(e, ERR_DB, "database", "not connected");
        goto out;
    }
    if ((rc = db_run(db, "BEGIN", 0, NULL, e)) < 0)
        goto out;
    db_int_array(ids, sizeof ids, c->job_ids, c->njobs);
    const char *p1[2] = {ids, node};
    PGresult *r = db_exec(db,
        "SELECT id FROM jobs WHERE id = ANY($1::bigint[]) AND lease_owner = $2"
        " AND state = 'running' AND lease_expires > now() FOR UPDATE", 2, p1, e);
    if (!r) {
        rc = ERR_DB;
        goto fail;
    }
    int mine = PQntuples(r);
    PQclear(r);
    if (mine != c->njobs) {
        rc = err_set(e, INGEST_LEASE_LOST, "queue",
                     "lease on %d of %d jobs of %s step %lld is no longer ours", c->njobs - mine,
                     c->njobs, c->run, c->step);
        goto fail;
    }
    r = PQexec(conn, "COPY measurements (run_id, step, metric_id, layer, head, idx, value) FROM STDIN");
    if (PQresultStatus(r) != PGRES_COPY_IN) {
        err_set(e, ERR_DB, "database", "COPY refused: %s", PQerrorMessage(conn));
        PQclear(r);
        rc = ERR_DB; /* not the rows' fault: try again later */
        goto fail;
    }
    PQclear(r);
    in_copy = 1;
    size_t used = 0;
    long lineno = 0;
    ssize_t len;
    while ((len = getline(&line, &linecap, f)) > 0) {
        lineno++;
        if (line[len - 1] != '\n') {
            rc = err_set(e, ERR_FORMAT, rows_path, "line %ld: no newline (output cut short)", lineno);
            goto fail;
        }
        line[len - 1] = '\0';
        int j;
        int w = ingest_translate(reg, c, line, buf + used, 512, &j, e);
        if (w < 0) {
            rc = w;
            err_wrap(e, "%s line %ld", rows_path, lineno);
            goto fail;
        }
        used += (size_t)w;
        counts[j]++;
        total++;
        if (used >= COPY_CHUNK) {
            if (PQputCopyData(conn, buf, (int)used) != 1) {
                rc = err_set(e, ERR_DB, "database", "COPY failed: %s", PQerrorMessage(conn));
                goto fail;
            }
            used = 0;
        }
    }
    /* getline also ends on ENOMEM: that is no end of the rows, and the
     * rows are not to blame for it */
    if (ferror(f) || !feof(f)) {
        rc = errno == ENOMEM ? err_set(e, ERR_NOMEM, rows_path, "out of memory reading line %ld", lineno + 1)
                             : err_set(e, ERR_IO, rows_path, "read error after line %ld", lineno);
        goto fail;
    }
    for (int i = 0; i < c->njobs; i++)
        if (counts[i] == 0) {
            rc = err_set(e, ERR_FORMAT, rows_path, "worker wrote no rows for item %s", c->items[i]);
            goto fail;
        }
    if (used && PQputCopyData(conn, buf, (int)used) != 1) {
        rc = err_set(e, ERR_DB, "database", "COPY failed: %s", PQerrorMessage(conn));
        goto fail;
    }
    in_copy = 0;
    if (PQputCopyEnd(conn, NULL) != 1) {
        rc = err_set(e, ERR_DB, "database", "COPY end failed: %s", PQerrorMessage(conn));
        goto fail;
    }
    int copy_ok = 1;
    while ((r = PQgetResult(conn))) {
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            err_set(e, ERR_DB, "database", "COPY failed: %s", PQresultErrorMessage(r));
            if (e)
                e->msg[strcspn(e->msg, "\n")] = '\0';
            copy_ok = 0;
        }
        PQclear(r);
    }
    if (!copy_ok) {
        rc = classify(db);
        if (e)
            e->code = rc;
        goto fail;
    }
    /* out of memory is no fault of the results: it stays ERR_NOMEM */
    if ((rc = artifacts_record(db, c->run_id, c->step, &arts, e)) < 0) {
        if (rc != ERR_NOMEM)
            rc = classify(db);
        if (e)
            e->code = rc;
        goto fail;
    }
    for (int i = 0; i < c->njobs; i++)
        if (strcmp(c->items[i], LINEAGE_ITEM) == 0 &&
            (rc = lineage_store(db, c->run_id, c->step, c->versions[i], c->prev_step, e)) < 0) {
            err_wrap(e, "feature lineages");
            if (rc != ERR_NOMEM)
                rc = classify(db);
            if (e)
                e->code = rc;
            goto fail;
        }
    db_int_array(counts_arr, sizeof counts_arr, counts, c->njobs);
    snprintf(secs, sizeof secs, "%.3f", worker_seconds);
    const char *p2[4] = {ids, counts_arr, secs, node};
    if ((rc = db_run(db,
            "UPDATE jobs SET state = 'done', finished_at = now(), worker_seconds = $3::float8,"
            "   rows_written = x.cnt, lease_owner = NULL, lease_expires = NULL, last_error = NULL,"
            "   done_by = $4"
            " FROM unnest($1::bigint[], $2::bigint[]) AS x(id, cnt) WHERE jobs.id = x.id",
            4, p2, e)) < 0 ||
        /* jobs that depend on these may be claimable now */
        (rc = db_run(db, "NOTIFY " QUEUE_CHANNEL, 0, NULL, e)) < 0 ||
        (rc = db_run(db, "COMMIT", 0, NULL, e)) < 0) {
        rc = classify(db);
        if (e)
            e->code = rc;
        goto fail;
    }
    *rows = total;
    goto out;
fail:
    if (in_copy && db_conn(db)) {
        PQputCopyEnd(db_conn(db), "ingestion aborted");
        while ((r = PQgetResult(db_conn(db))))
            PQclear(r);
    }
    db_rollback(db);
    if (db_conn(db) && PQstatus(db_conn(db)) != CONNECTION_OK)
        db_lost(db);
out:
    artifacts_list_free(&arts);
    free(line);
    free(buf);
    fclose(f);
    return rc;
}
