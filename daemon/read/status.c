#include "daemon/read/status.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/base/db.h"
#include "daemon/plan/cost.h"
#include "daemon/plan/forecast.h"
#include "daemon/work/policy.h"

static void bar(FILE *out, double frac, int width)
{
    int full = (int)(frac * width + 0.5);
    fputc('[', out);
    for (int i = 0; i < width; i++)
        fputc(i < full ? '#' : '.', out);
    fputc(']', out);
}

static void duration(char *buf, size_t n, double s)
{
    if (!(s >= 0) || isinf(s))
        snprintf(buf, n, "?");
    else if (s < 120)
        snprintf(buf, n, "%.0fs", s);
    else if (s < 7200)
        snprintf(buf, n, "%.0fm", s / 60);
    else if (s < 172800)
        snprintf(buf, n, "%.1fh", s / 3600);
    else
        snprintf(buf, n, "%.1fd", s / 86400);
}

/* Adaptive runs' phases (policy.h), suspect checkpoints (integrity.h) and
 * families (family.h): their transitions found in most members, and the
 * members that depart.  `run` "" shows every run and family; a run shows
 * the families it is in. */
static int status_checked(struct db *db, const char *run, FILE *out, struct err *e)
{
    const char *p[1] = {run};
    PGresult *r = db_exec(db, "SELECT r.id, r.name FROM run_plans x JOIN runs r ON r.id = x.run_id"
                              " WHERE $1 = '' OR r.name = $1 ORDER BY r.name", 1, p, e);
    if (!r)
        return ERR_DB;
    if (PQntuples(r) > 0)
        fprintf(out, "\nadaptive runs (expensive items where the change is):\n");
    for (int i = 0; i < PQntuples(r); i++) {
        char line[1024];
        if (policy_phase(db, atoll(PQgetvalue(r, i, 0)), line, sizeof line, e) < 0) {
            PQclear(r);
            return ERR_DB;
        }
        fprintf(out, "  %s: %s\n", PQgetvalue(r, i, 1), line);
    }
    PQclear(r);
    r = db_exec(db, "SELECT run, step, reason, coalesce(suspect_detail, ''), duplicate_of_step FROM suspect_checkpoints"
                    " WHERE $1 = '' OR run = $1 ORDER BY run, step", 1, p, e);
    if (!r)
        return ERR_DB;
    if (PQntuples(r) > 0)
        fprintf(out, "\nsuspect checkpoints (not what their label says; left out of series):\n");
    for (int i = 0; i < PQntuples(r); i++) {
        fprintf(out, "  %s step %s: %s: %s", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), PQgetvalue(r, i, 2),
                PQgetvalue(r, i, 3));
        if (!PQgetisnull(r, i, 4))
            fprintf(out, " (a duplicate of step %s)", PQgetvalue(r, i, 4));
        fputc('\n', out);
    }
    PQclear(r);
    r = db_exec(db,
        "SELECT f.name, (SELECT count(*) FROM family_members m WHERE m.family_id = f.id),"
        "   (SELECT count(*) FROM family_transitions t WHERE t.family_id = f.id AND t.is_family),"
        "   (SELECT count(*) FROM family_transitions t WHERE t.family_id = f.id),"
        "   (SELECT count(*) FROM family_outliers o WHERE o.family_id = f.id),"
        "   coalesce(extract(epoch FROM now() - f.analysed_at)::text, ''),"
        "   (SELECT string_agg(x, E'\\n') FROM (SELECT '    ' || o.run || ': ' || o.item || '/' || o.metric"
        "       || CASE WHEN o.layer >= 0 OR o.head >= 0 OR o.idx >= 0 THEN ' [' || o.layer || ',' || o.head"
        "          || ',' || o.idx || ']' ELSE '' END || ' ' || o.reason || ': ' || o.detail AS x"
        "     FROM family_outliers_named o WHERE o.family = f.name ORDER BY o.run, o.reason, o.metric LIMIT 8) l),"
        "   (SELECT string_agg(x, E'\\n') FROM (SELECT '    ' || t.item || '/' || t.metric"
        "       || CASE WHEN t.layer >= 0 OR t.head >= 0 OR t.idx >= 0 THEN ' [' || t.layer || ',' || t.head"
        "          || ',' || t.idx || ']' ELSE '' END || ' ' || CASE WHEN t.sign > 0 THEN 'up' ELSE 'down' END"
        "       || ' in ' || t.members_found || '/' || t.members_total || ' members, peaks '"
        "       || t.peak_min || '..' || t.peak_max || ' (median ' || round(t.peak_median) || ', spread '"
        "       || t.peak_spread_ckpts || ' checkpoints)' AS x"
        "     FROM family_transitions_named t WHERE t.family = f.name AND t.is_family"
        "     ORDER BY t.peak_median LIMIT 8) l)"
        " FROM families f WHERE $1 = '' OR f.id IN (SELECT m.family_id FROM family_members m JOIN runs x"
        "   ON x.id = m.run_id WHERE x.name = $1) ORDER BY f.name", 1, p, e);
    if (!r)
        return ERR_DB;
    if (PQntuples(r) > 0)
        fprintf(out, "\nfamilies:\n");
    for (int i = 0; i < PQntuples(r); i++) {
        char ago[32] = "never";
        if (PQgetvalue(r, i, 5)[0])
            duration(ago, sizeof ago, atof(PQgetvalue(r, i, 5)));
        fprintf(out, "  %s: %s members; %s of %s transitions found in 2/3 of them; %s outliers; analysed %s%s\n",
                PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), PQgetvalue(r, i, 2), PQgetvalue(r, i, 3),
                PQgetvalue(r, i, 4), ago, PQgetvalue(r, i, 5)[0] ? " ago" : "");
        if (!PQgetisnull(r, i, 7))
            fprintf(out, "%s\n", PQgetvalue(r, i, 7));
        if (!PQgetisnull(r, i, 6))
            fprintf(out, "   outliers:\n%s\n", PQgetvalue(r, i, 6));
    }
    PQclear(r);
    return 0;
}

/* Per node (the `nodes` table, 006_nodes.sql): who, since when, whether
 * its heartbeat is current, and one line per checkpoint it holds.  Nodes
 * that stopped cleanly show for an hour, silent ones for a day.  `run`
 * "" shows every run's checkpoints. */
static int status_nodes(struct db *db, const char *run, FILE *out, struct err *e)
{
    const char *p[1] = {run};
    PGresult *r = db_exec(db,
        "SELECT n.node, n.host, n.pid, n.version, n.workers, extract(epoch FROM now() - n.started_at),"
        "   extract(epoch FROM now() - n.heartbeat_at), n.heartbeat_s,"
        "   extract(epoch FROM now() - n.stopped_at), coalesce(n.stats->>'jobs_done', '0'),"
        "   coalesce(n.stats->>'jobs_failed', '0'), a.ord, a.value->>'phase', a.value->>'run', a.value->>'step',"
        "   (SELECT string_agg(x, ',') FROM jsonb_array_elements_text(a.value->'items') x),"
        "   (SELECT string_agg(x, ',') FROM jsonb_array_elements_text(a.value->'jobs') x),"
        "   a.value->>'attempt', (a.value->>'for_s')::float8 + extract(epoch FROM now() - n.heartbeat_at),"
        "   a.value->>'pid', a.value->>'bytes_done', a.value->>'bytes_total', a.value->>'bytes_per_s',"
        "   (SELECT extract(epoch FROM min(j.lease_expires) - now()) FROM jobs j"
        "     WHERE j.id IN (SELECT x::bigint FROM jsonb_array_elements_text(a.value->'jobs') x)"
        "       AND j.state = 'running' AND j.lease_owner = n.node)"
        " FROM nodes n"
        " LEFT JOIN LATERAL jsonb_array_elements(n.activity) WITH ORDINALITY AS a(value, ord)"
        "   ON $1 = '' OR a.value->>'run' = $1"
        " WHERE (n.stopped_at IS NULL AND n.heartbeat_at > now() - interval '1 day')"
        "    OR n.stopped_at > now() - interval '1 hour'"
        " ORDER BY n.node, a.ord", 1, p, e);
    if (!r)
        return ERR_DB;
    if (PQntuples(r) > 0)
        fprintf(out, "\nnodes:\n");
    for (int i = 0; i < PQntuples(r); i++) {
        if (i == 0 || strcmp(PQgetvalue(r, i, 0), PQgetvalue(r, i - 1, 0)) != 0) {
            char up[32], beat[32];
            double age = atof(PQgetvalue(r, i, 6)), hb = atof(PQgetvalue(r, i, 7));
            duration(up, sizeof up, atof(PQgetvalue(r, i, 5)));
            duration(beat, sizeof beat, age);
            fprintf(out, "  %s (host %s, pid %s, ckptd %s): ", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
                    PQgetvalue(r, i, 2), PQgetvalue(r, i, 3));
            if (!PQgetisnull(r, i, 8)) {
                char ago[32];
                duration(ago, sizeof ago, atof(PQgetvalue(r, i, 8)));
                fprintf(out, "stopped %s ago", ago);
            } else if (age > 3 * hb + 1) {
                fprintf(out, "STALE: last heartbeat %s ago (expected every %gs); up %s before that", beat, hb, up);
            } else {
                fprintf(out, "up %s, heartbeat %s ago", up, beat);
            }
            fprintf(out, ", %s worker%s, %s jobs done, %s failed\n", PQgetvalue(r, i, 4),
                    strcmp(PQgetvalue(r, i, 4), "1") == 0 ? "" : "s", PQgetvalue(r, i, 9), PQgetvalue(r, i, 10));
            if (PQgetisnull(r, i, 11) && PQgetisnull(r, i, 8))
                fprintf(out, "    idle%s\n", run[0] ? " (for this run)" : "");
        }
        if (PQgetisnull(r, i, 11))
            continue;
        const char *phase = PQgetvalue(r, i, 12);
        char t[32];
        duration(t, sizeof t, atof(PQgetvalue(r, i, 18)));
        fprintf(out, "    %-9s  %s step %s [%s] jobs %s, attempt %s", phase, PQgetvalue(r, i, 13),
                PQgetvalue(r, i, 14), PQgetvalue(r, i, 15), PQgetvalue(r, i, 16), PQgetvalue(r, i, 17));
        if (strcmp(phase, "fetching") == 0) {
            double done = atof(PQgetvalue(r, i, 20)), total = atof(PQgetvalue(r, i, 21));
            double rate = atof(PQgetvalue(r, i, 22));
            fprintf(out, ", %.1f", done / 1e6);
            if (total >= 0)
                fprintf(out, " of %.1f MB (%.0f%%)", total / 1e6, total > 0 ? 100 * done / total : 100.0);
            else
                fprintf(out, " MB");
            fprintf(out, " at %.1f MB/s for %s", rate / 1e6, t);
        } else if (strcmp(phase, "staged") == 0) {
            fprintf(out, ", waiting for a worker for %s", t);
        } else if (strcmp(phase, "analysing") == 0) {
            fprintf(out, ", for %s (worker pid %s)", t, PQgetvalue(r, i, 19));
        } else {
            fprintf(out, ", results waiting to be stored for %s", t);
        }
        if (PQgetisnull(r, i, 23)) {
            fprintf(out, ", lease not held\n");
        } else {
            double left = atof(PQgetvalue(r, i, 23));
            char l[32];
            duration(l, sizeof l, left);
            if (left >= 0)
                fprintf(out, ", lease %s left\n", l);
            else
                fprintf(out, ", lease expired\n");
        }
    }
    PQclear(r);
    return 0;
}

int status_print(struct db *db, const char *run, FILE *out, struct err *e)
{
    const char *p[1] = {run ? run : ""};
    /* per run, per checkpoint: the state of its jobs */
    PGresult *r = db_exec(db,
        "WITH ck AS ("
        "  SELECT r.id AS run_id, r.name, c.id,"
        "    bool_and(j.state = 'done') AS done,"
        "    bool_or(j.state = 'running') AS running,"
        "    bool_or(j.state = 'dead') AS dead,"
        "    bool_or(j.state = 'queued') AS queued,"
        "    max(j.finished_at) FILTER (WHERE j.state = 'done') AS finished"
        "  FROM runs r JOIN checkpoints c ON c.run_id = r.id JOIN jobs j ON j.checkpoint_id = c.id"
        "  WHERE $1 = '' OR r.name = $1"
        "  GROUP BY r.id, r.name, c.id)"
        " SELECT name, count(*), count(*) FILTER (WHERE done), count(*) FILTER (WHERE running),"
        "   count(*) FILTER (WHERE dead), count(*) FILTER (WHERE queued AND NOT running),"
        "   count(*) FILTER (WHERE done AND finished > now() - interval '1 hour'),"
        "   extract(epoch FROM now() - least(min(finished) FILTER (WHERE done AND finished > now() - interval '1 hour'), now()))"
        " FROM ck GROUP BY run_id, name ORDER BY name", 1, p, e);
    if (!r)
        return ERR_DB;
    if (PQntuples(r) == 0)
        fprintf(out, run ? "no run named %s\n" : "no runs%s\n", run ? run : "");
    for (int i = 0; i < PQntuples(r); i++) {
        long total = atol(PQgetvalue(r, i, 1)), done = atol(PQgetvalue(r, i, 2));
        long running = atol(PQgetvalue(r, i, 3)), dead = atol(PQgetvalue(r, i, 4));
        long queued = atol(PQgetvalue(r, i, 5)), recent = atol(PQgetvalue(r, i, 6));
        double span = atof(PQgetvalue(r, i, 7));
        double rate = recent > 1 && span > 0 ? recent / span * 3600.0 : NAN; /* per hour */
        char eta[32];
        duration(eta, sizeof eta, rate > 0 ? (total - done - dead) / rate * 3600.0 : NAN);
        fprintf(out, "%s  ", PQgetvalue(r, i, 0));
        bar(out, total ? (double)done / total : 0, 30);
        fprintf(out, " %ld/%ld done, %ld running, %ld failed, %ld queued", done, total, running, dead, queued);
        /* the ETA of the cost model (plan/forecast.h), scaled by how the
         * recent checkpoints compared with it; the recent rate without a
         * shape */
        struct forecast f;
        double left = NAN, ratio = NAN;
        if (forecast_load(db, PQgetvalue(r, i, 0), &f, NULL) == 0 && f.has_shape) {
            left = forecast_eta(&f, cost_reference_gflops());
            ratio = forecast_ratio(&f, cost_reference_gflops());
        }
        if (isfinite(left) && f.left == 0) {
            /* nothing left */
        } else if (isfinite(left)) {
            char l[32];
            duration(l, sizeof l, left);
            if (f.running > 0)
                fprintf(out, "; ETA %s", l);
            else
                fprintf(out, "; %s of work left (no worker on it)", l);
            if (isfinite(ratio))
                fprintf(out, " (cost model x%.2f measured)", ratio);
            else
                fprintf(out, " (cost model)");
        } else if (rate > 0) {
            fprintf(out, "; %.1f checkpoints/h, ETA %s", rate, eta);
        }
        fputc('\n', out);
    }
    PQclear(r);

    r = db_exec(db,
        "SELECT run, step, item, state, attempts, max_attempts, coalesce(last_error, ''),"
        "   greatest(extract(epoch FROM not_before - now()), 0)"
        " FROM job_list WHERE last_error IS NOT NULL AND state IN ('queued', 'dead')"
        "   AND ($1 = '' OR run = $1)"
        " ORDER BY state DESC, run, step LIMIT 20", 1, p, e);
    if (!r)
        return ERR_DB;
    if (PQntuples(r) > 0)
        fprintf(out, "\nfailing jobs:\n");
    for (int i = 0; i < PQntuples(r); i++) {
        int dead = strcmp(PQgetvalue(r, i, 3), "dead") == 0;
        char wait[32];
        duration(wait, sizeof wait, atof(PQgetvalue(r, i, 7)));
        fprintf(out, "  %s step %s %s: %s after %s/%s attempts%s%s: %s\n", PQgetvalue(r, i, 0),
                PQgetvalue(r, i, 1), PQgetvalue(r, i, 2), dead ? "DEAD" : "retrying",
                PQgetvalue(r, i, 4), PQgetvalue(r, i, 5), dead ? "" : ", next in ", dead ? "" : wait,
                PQgetvalue(r, i, 6));
    }
    PQclear(r);

    r = db_exec(db,
        "SELECT f.node, r.name, c.step, f.bytes_done, coalesce(f.bytes_total, -1), f.bytes_per_s"
        " FROM fetches f JOIN checkpoints c ON c.id = f.checkpoint_id JOIN runs r ON r.id = c.run_id"
        " WHERE f.state = 'fetching' AND f.updated_at > now() - interval '10 minutes'"
        "   AND ($1 = '' OR r.name = $1) ORDER BY f.node, r.name, c.step", 1, p, e);
    if (!r)
        return ERR_DB;
    if (PQntuples(r) > 0)
        fprintf(out, "\ndownloads:\n");
    for (int i = 0; i < PQntuples(r); i++) {
        double done = atof(PQgetvalue(r, i, 3)), total = atof(PQgetvalue(r, i, 4));
        double rate = atof(PQgetvalue(r, i, 5));
        char eta[32];
        duration(eta, sizeof eta, rate > 0 && total >= 0 ? (total - done) / rate : NAN);
        fprintf(out, "  %s: %s step %s: %.1f", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), PQgetvalue(r, i, 2),
                done / 1e6);
        if (total >= 0)
            fprintf(out, " of %.1f MB (%.0f%%)", total / 1e6, total > 0 ? 100 * done / total : 100.0);
        else
            fprintf(out, " MB");
        fprintf(out, ", %.1f MB/s, ETA %s\n", rate / 1e6, eta);
    }
    PQclear(r);

    r = db_exec(db,
        "SELECT run, step, same_as_step FROM duplicate_checkpoints WHERE $1 = '' OR run = $1"
        " ORDER BY run, step", 1, p, e);
    if (!r)
        return ERR_DB;
    if (PQntuples(r) > 0)
        fprintf(out, "\nduplicates (same weights; left out of series):\n");
    for (int i = 0; i < PQntuples(r); i++)
        fprintf(out, "  %s step %s = step %s\n", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), PQgetvalue(r, i, 2));
    PQclear(r);

    if (status_checked(db, p[0], out, e) < 0)
        return ERR_DB;

    r = db_exec(db,
        "SELECT run, step, left(old_commit, 12), left(new_commit, 12), weights_changed, jobs_requeued,"
        "   rows_removed, extract(epoch FROM now() - noticed_at)"
        " FROM revision_changes_named WHERE $1 = '' OR run = $1 ORDER BY noticed_at DESC, run, step LIMIT 20",
        1, p, e);
    if (!r)
        return ERR_DB;
    if (PQntuples(r) > 0)
        fprintf(out, "\nrevisions moved on the hub (the old commit's results removed, jobs queued again):\n");
    for (int i = 0; i < PQntuples(r); i++) {
        char ago[32];
        duration(ago, sizeof ago, atof(PQgetvalue(r, i, 7)));
        fprintf(out, "  %s step %s: commit %s -> %s (%s), %s jobs queued again, %s rows removed, %s ago\n",
                PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), PQgetvalue(r, i, 2), PQgetvalue(r, i, 3),
                strcmp(PQgetvalue(r, i, 4), "t") == 0 ? "weights changed" : "same weights", PQgetvalue(r, i, 5),
                PQgetvalue(r, i, 6), ago);
    }
    PQclear(r);

    r = db_exec(db,
        "SELECT lease_owner, run, step, string_agg(item, ',' ORDER BY item),"
        "   extract(epoch FROM now() - min(started_at)), extract(epoch FROM min(lease_expires) - now())"
        " FROM job_list WHERE state = 'running' AND ($1 = '' OR run = $1)"
        " GROUP BY lease_owner, run, step ORDER BY lease_owner, run, step", 1, p, e);
    if (!r)
        return ERR_DB;
    if (PQntuples(r) > 0)
        fprintf(out, "\nworkers:\n");
    for (int i = 0; i < PQntuples(r); i++) {
        char t[32], l[32];
        duration(t, sizeof t, atof(PQgetvalue(r, i, 4)));
        duration(l, sizeof l, atof(PQgetvalue(r, i, 5)));
        fprintf(out, "  %s: %s step %s [%s] for %s, lease %s left\n", PQgetvalue(r, i, 0),
                PQgetvalue(r, i, 1), PQgetvalue(r, i, 2), PQgetvalue(r, i, 3), t, l);
    }
    PQclear(r);
    return status_nodes(db, p[0], out, e);
}
