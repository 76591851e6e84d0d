#include "daemon/fetch/checkpoint_files.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/sha256.h"
#include "daemon/base/db.h"
#include "daemon/fetch/hub.h"

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Inside the recording transaction: the hub commit the files came from.
 * When the checkpoint was recorded at another commit, its results are
 * the old files': the done jobs go back to the queue, their rows go, and
 * the change is a row of revision_changes. */
static int record_commit(struct db *db, long long checkpoint_id, const char *commit, const char *new_weights,
                         struct err *e)
{
    char id[32];
    snprintf(id, sizeof id, "%lld", checkpoint_id);
    const char *p1[2] = {id, commit};
    PGresult *r = db_exec(db,
        "SELECT c.hub_commit, c.sha256, c.run_id, c.step, r.name FROM checkpoints c JOIN runs r ON r.id = c.run_id"
        " WHERE c.id = $1 FOR UPDATE OF c", 1, p1, e);
    if (!r)
        return ERR_DB;
    int rc = 0;
    if (PQntuples(r) != 1 || PQgetisnull(r, 0, 0) || strcmp(PQgetvalue(r, 0, 0), commit) == 0) {
        int found = PQntuples(r) == 1;
        PQclear(r);
        return found ? db_run(db, "UPDATE checkpoints SET hub_commit = $2 WHERE id = $1"
                                  " AND hub_commit IS DISTINCT FROM $2", 2, p1, e) : 0;
    }
    char old[64], old_w[SHA256_HEX + 1] = "", run_id[32], step[32], run[256];
    snprintf(old, sizeof old, "%s", PQgetvalue(r, 0, 0));
    snprintf(old_w, sizeof old_w, "%s", PQgetvalue(r, 0, 1));
    snprintf(run_id, sizeof run_id, "%s", PQgetvalue(r, 0, 2));
    snprintf(step, sizeof step, "%s", PQgetvalue(r, 0, 3));
    snprintf(run, sizeof run, "%s", PQgetvalue(r, 0, 4));
    PQclear(r);
    const char *p2[2] = {run_id, step};
    const char *p3[1] = {id};
    long long rows = 0, jobs = 0;
    /* every row measured at this step came from the old files */
    const char *dels[3] = {"DELETE FROM measurements WHERE run_id = $1 AND step = $2",
                           "DELETE FROM artifacts WHERE run_id = $1 AND step = $2",
                           "DELETE FROM sae_features WHERE run_id = $1 AND step = $2"};
    for (int k = 0; k < 3; k++) {
        if (!(r = db_exec(db, dels[k], 2, p2, e)))
            return ERR_DB;
        rows += atoll(PQcmdTuples(r));
        PQclear(r);
    }
    if (!(r = db_exec(db,
            "UPDATE jobs SET state = 'queued', attempts = 0, not_before = now(), last_error = NULL,"
            "   started_at = NULL, finished_at = NULL, worker_seconds = NULL, rows_written = NULL, done_by = NULL"
            " WHERE checkpoint_id = $1 AND state = 'done'", 1, p3, e)))
        return ERR_DB;
    jobs = atoll(PQcmdTuples(r));
    PQclear(r);
    char nj[32], nr[32];
    snprintf(nj, sizeof nj, "%lld", jobs);
    snprintf(nr, sizeof nr, "%lld", rows);
    const char *p4[7] = {id, old, commit, old_w, new_weights, nj, nr};
    if ((rc = db_run(db,
            "INSERT INTO revision_changes (checkpoint_id, old_commit, new_commit, old_weights, new_weights,"
            "   jobs_requeued, rows_removed) VALUES ($1, $2, $3, nullif($4, ''), nullif($5, ''), $6, $7)",
            7, p4, e)) < 0 ||
        (rc = db_run(db, "UPDATE checkpoints SET hub_commit = $2 WHERE id = $1", 2, p1, e)) < 0 ||
        (rc = db_run(db, "NOTIFY ckptd_jobs", 0, NULL, e)) < 0)
        return rc;
    log_warn("revision moved on the hub: the old commit's results removed, its jobs queued again",
             "run=%s step=%s old_commit=%s commit=%s weights_changed=%d jobs_requeued=%lld rows_removed=%lld",
             log_quote(run), step, old, commit, strcmp(old_w, new_weights) != 0, jobs, rows);
    return 0;
}

int checkpoint_files_record(struct db *db, long long checkpoint_id, const struct hub_files *files,
                            long long *dup_step, struct err *e)
{
    const char **names = NULL, **shas = NULL;
    char *names_arr = NULL, *shas_arr = NULL, *sizes_arr = NULL, *wlist = NULL;
    long long *sizes = NULL, total = 0;
    int rc = 0, nw = 0;
    *dup_step = -1;
    int n = files->n;
    names = calloc((size_t)n + 1, sizeof *names);
    shas = calloc((size_t)n + 1, sizeof *shas);
    sizes = calloc((size_t)n + 1, sizeof *sizes);
    sizes_arr = malloc((size_t)n * 24 + 16);
    wlist = malloc((size_t)n * 66 + 1);
    if (!names || !shas || !sizes || !sizes_arr || !wlist) {
        rc = err_set(e, ERR_NOMEM, "checkpoint files", "out of memory");
        goto out;
    }
    const char **wsha = calloc((size_t)n + 1, sizeof *wsha);
    if (!wsha) {
        rc = err_set(e, ERR_NOMEM, "checkpoint files", "out of memory");
        goto out;
    }
    for (int i = 0; i < n; i++) {
        names[i] = files->f[i].name;
        shas[i] = files->f[i].sha256;
        sizes[i] = files->f[i].size;
        total += files->f[i].size;
        if (hub_is_weights(files->f[i].name))
            wsha[nw++] = files->f[i].sha256;
    }
    qsort(wsha, (size_t)nw, sizeof *wsha, cmp_str);
    size_t o = 0;
    for (int i = 0; i < nw; i++)
        o += (size_t)sprintf(wlist + o, "%s%s", i ? "," : "", wsha[i]);
    wlist[o] = '\0';
    free(wsha);
    char wsha256[SHA256_HEX] = "";
    if (nw == 1)
        snprintf(wsha256, sizeof wsha256, "%s", wlist);
    else if (nw > 1) {
        struct sha256 h;
        if ((rc = sha256_init(&h, e)) < 0)
            goto out;
        sha256_update(&h, wlist, o);
        sha256_final(&h, wsha256);
    }
    db_int_array(sizes_arr, (size_t)n * 24 + 16, sizes, n);
    names_arr = db_text_array(names, n);
    shas_arr = db_text_array(shas, n);
    if (!names_arr || !shas_arr) {
        rc = err_set(e, ERR_NOMEM, "checkpoint files", "out of memory");
        goto out;
    }
    char id[32], tot[32];
    snprintf(id, sizeof id, "%lld", checkpoint_id);
    snprintf(tot, sizeof tot, "%lld", total);
    const char *p1[1] = {id};
    const char *p2[4] = {id, names_arr, sizes_arr, shas_arr};
    const char *p3[3] = {id, tot, wsha256};
    PGresult *r;
    /* staged again (a later claim of the checkpoint, a retry): the files
     * recorded, at the commit recorded, leave nothing to write or judge */
    const char *p0[5] = {id, names_arr, sizes_arr, shas_arr, hub_commit_ok(files->commit) ? files->commit : ""};
    r = db_exec(db,
        "SELECT (SELECT o.step FROM checkpoints o WHERE o.id = c.duplicate_of) FROM checkpoints c"
        " WHERE c.id = $1 AND c.size IS NOT NULL AND ($5 = '' OR c.hub_commit = $5)"
        "   AND (SELECT array_agg(f.name || ' ' || f.size || ' ' || f.sha256 ORDER BY f.name)"
        "        FROM checkpoint_files f WHERE f.checkpoint_id = c.id)"
        "     = (SELECT array_agg(x.name || ' ' || x.size || ' ' || x.sha ORDER BY x.name)"
        "        FROM unnest($2::text[], $3::bigint[], $4::text[]) AS x(name, size, sha))", 5, p0, e);
    if (!r) {
        rc = ERR_DB;
        goto out;
    }
    if (PQntuples(r) == 1) {
        if (!PQgetisnull(r, 0, 0))
            *dup_step = atoll(PQgetvalue(r, 0, 0));
        PQclear(r);
        rc = 1;
        goto out;
    }
    PQclear(r);
    if ((rc = db_run(db, "BEGIN", 0, NULL, e)) < 0)
        goto out;
    /* one run at a time: two nodes recording equal weights see each other */
    if ((rc = db_run(db, "SELECT pg_advisory_xact_lock(8315, run_id::int) FROM checkpoints WHERE id = $1",
                     1, p1, e)) < 0 ||
        (hub_commit_ok(files->commit) && (rc = record_commit(db, checkpoint_id, files->commit, wsha256, e)) < 0) ||
        (rc = db_run(db, "DELETE FROM checkpoint_files WHERE checkpoint_id = $1", 1, p1, e)) < 0 ||
        (rc = db_run(db,
            "INSERT INTO checkpoint_files (checkpoint_id, name, size, sha256)"
            " SELECT $1, x.name, x.size, x.sha FROM unnest($2::text[], $3::bigint[], $4::text[]) AS x(name, size, sha)",
            4, p2, e)) < 0 ||
        (rc = db_run(db, "UPDATE checkpoints SET size = $2, sha256 = nullif($3, '') WHERE id = $1", 3, p3, e)) < 0 ||
        (rc = db_run(db,
            /* checkpoints.sha256 is the weights' one comparable value (set
             * just above): the run's rows only, not the whole database's
             * files grouped by the checkpoint_weights view */
            "WITH w AS (SELECT run_id, sha256 FROM checkpoints WHERE id = $1 AND sha256 IS NOT NULL),"
            " same AS (SELECT c.id, c.step, c.suspect FROM checkpoints c"
            "   JOIN w ON c.run_id = w.run_id AND c.sha256 = w.sha256),"
            " canon AS (SELECT id FROM same ORDER BY suspect IS NOT NULL, step LIMIT 1)"
            " UPDATE checkpoints c SET duplicate_of = CASE WHEN c.id = canon.id THEN NULL ELSE canon.id END"
            " FROM canon WHERE c.id IN (SELECT id FROM same)"
            "   AND c.duplicate_of IS DISTINCT FROM CASE WHEN c.id = canon.id THEN NULL ELSE canon.id END",
            1, p1, e)) < 0)
        goto rollback;
    r = db_exec(db, "SELECT o.step FROM checkpoints c JOIN checkpoints o ON o.id = c.duplicate_of WHERE c.id = $1",
                1, p1, e);
    if (!r) {
        rc = ERR_DB;
        goto rollback;
    }
    if (PQntuples(r) == 1)
        *dup_step = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    if ((rc = db_run(db, "COMMIT", 0, NULL, e)) < 0)
        goto rollback;
    goto out;
rollback:
    db_rollback(db);
out:
    free(names);
    free(shas);
    free(sizes);
    free(sizes_arr);
    free(wlist);
    free(names_arr);
    free(shas_arr);
    return rc;
}
