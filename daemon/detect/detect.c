#include "daemon/detect/detect.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/sbuf.h"
#include "daemon/base/db.h"
#include "daemon/detect/transitions.h"
#include "daemon/work/queue.h"

#define STR_(x) #x
#define STR(x) STR_(x)
#define LOCK_KEY STR(DETECT_LOCK)

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* One series being gathered from the COPY stream. */
struct series {
    int metric, layer, head, idx;
    int n, cap;
    long long *steps;
    double *values;
};

static int series_push(struct series *s, long long step, double value)
{
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 256;
        long long *st = realloc(s->steps, sizeof *st * (size_t)cap);
        if (!st)
            return ERR_NOMEM;
        s->steps = st;
        double *v = realloc(s->values, sizeof *v * (size_t)cap);
        if (!v)
            return ERR_NOMEM;
        s->values = v;
        s->cap = cap;
    }
    s->steps[s->n] = step;
    s->values[s->n++] = value;
    return 0;
}

/* A double as COPY text: %.17g, or \N (NULL) when not finite. */
static int put_num(struct sbuf *out, double x)
{
    return isfinite(x) ? sbuf_printf(out, "\t%.17g", x) : sbuf_printf(out, "\t\\N");
}

/* Detect in the gathered series and append its events (transitions and
 * spikes), as COPY text rows of `transitions`, to out. */
static int series_flush(struct series *s, long long run_id, struct sbuf *out, struct detect_stats *st,
                        struct err *e)
{
    if (s->n == 0)
        return 0;
    struct tr_event t[TR_MAX_PER_SERIES];
    int k = tr_detect(s->steps, s->values, s->n, t, TR_MAX_PER_SERIES, e);
    if (k < 0)
        return err_wrap(e, "series metric %d layer %d head %d idx %d", s->metric, s->layer, s->head, s->idx);
    st->series++;
    st->points += s->n;
    for (int i = 0; i < k; i++) {
        if (!isfinite(t[i].magnitude) || !isfinite(t[i].score))
            continue; /* values near DBL_MAX overflowed: nothing a row can hold */
        /* two events of one series sharing a peak checkpoint: one row, the
         * transition, else the stronger (the table keeps one per peak) */
        int drop = 0;
        for (int j = i - 1; j >= 0 && t[j].peak_step == t[i].peak_step; j--)
            drop |= t[j].kind < t[i].kind || (t[j].kind == t[i].kind && t[j].score >= t[i].score);
        for (int j = i + 1; j < k && t[j].peak_step == t[i].peak_step; j++)
            drop |= t[j].kind < t[i].kind || (t[j].kind == t[i].kind && t[j].score > t[i].score);
        if (drop)
            continue;
        int rc = sbuf_printf(out, "%lld\t%d\t%d\t%d\t%d\t%lld\t%lld\t%lld\t%.17g\t%.17g\t%s\t%s", run_id,
                             s->metric, s->layer, s->head, s->idx, t[i].start_step, t[i].peak_step,
                             t[i].end_step, t[i].magnitude, t[i].score, TR_METHOD,
                             t[i].kind == TR_KIND_SPIKE ? "spike" : "transition");
        if (rc == 0)
            rc = put_num(out, t[i].kind == TR_KIND_SPIKE ? NAN : t[i].p_value);
        if (rc == 0)
            rc = put_num(out, t[i].noise);
        if (rc == 0)
            rc = put_num(out, t[i].before);
        if (rc == 0)
            rc = put_num(out, t[i].after);
        if (rc == 0)
            rc = sbuf_printf(out, "\n");
        if (rc < 0)
            return err_set(e, ERR_NOMEM, "transitions", "out of memory");
        if (t[i].kind == TR_KIND_SPIKE)
            st->spikes++;
        else
            st->transitions++;
    }
    s->n = 0;
    return 0;
}

/* Parse one COPY text row "metric\tlayer\thead\tidx\tstep\tvalue". */
static int parse_row(const char *p, int *f, long long *step, double *value)
{
    char *end;
    for (int i = 0; i < 4; i++) {
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || *end != '\t' || errno)
            return -1;
        f[i] = (int)v;
        p = end + 1;
    }
    errno = 0;
    *step = strtoll(p, &end, 10);
    if (end == p || *end != '\t' || errno)
        return -1;
    p = end + 1;
    *value = strtod(p, &end);
    if (end == p || (*end && *end != '\n'))
        return -1;
    return 0;
}

/* Series whose index is not the same thing from one step to the next, so
 * a change along the steps means nothing: an SGLD draw of the llc trace, an
 * SAE latent (cold-started dictionaries number their latents afresh; a
 * feature's life across steps is sae_match's lineage), a latent's match, a
 * bucket of the integrity item's random sketch. */
#define NOT_A_SERIES                                                                              \
    "('llc','trace_loss'),('llc','chain_diverged_step'),"                                         \
    "('sae','feature_density'),('sae','feature_mean_activation'),"                                \
    "('sae_relu','feature_density'),('sae_relu','feature_mean_activation'),"                      \
    "('sae_match','matched_prev'),('sae_match','match_similarity'),"                              \
    "('sae_match','best_prev'),('sae_match','split_parent'),"                                      \
    "('integrity','sketch'),('integrity','tensor_sketch')"

/* COPY the series out, detect, gather the rows to write.  The COPY is
 * always read to its end, so the connection is usable after a failure. */
static int read_and_detect(struct db *db, long long run_id, const char *metric_filter, struct sbuf *out,
                           struct detect_stats *st, struct err *e)
{
    PGconn *conn = db_conn(db);
    struct sbuf q = {0};
    if (sbuf_printf(&q,
                    /* in the primary key's order, so no sort; duplicates
                     * and suspect checkpoints are few: a hashed NOT IN */
                    "COPY (SELECT m.metric_id, m.layer, m.head, m.idx, m.step, m.value"
                    " FROM measurements m WHERE m.run_id = %lld%s AND m.metric_id NOT IN"
                    " (SELECT id FROM metrics WHERE (item, name) IN (" NOT_A_SERIES "))"
                    " AND m.step NOT IN"
                    " (SELECT step FROM checkpoints WHERE run_id = %lld"
                    "  AND (duplicate_of IS NOT NULL OR suspect IS NOT NULL))"
                    " ORDER BY m.metric_id, m.layer, m.head, m.idx, m.step) TO STDOUT",
                    run_id, metric_filter, run_id) < 0)
        return err_set(e, ERR_NOMEM, "transitions", "out of memory");
    int started = db_copy_out(db, q.p, "reading the series", e);
    free(q.p);
    if (started < 0)
        return started;
    PGresult *r;
    struct series s = {.metric = -1};
    int rc = 0;
    char *row;
    int len;
    while ((len = PQgetCopyData(conn, &row, 0)) > 0) {
        int f[4] = {0};
        long long step = 0;
        double value = 0;
        if (rc == 0 && parse_row(row, f, &step, &value) < 0)
            rc = err_set(e, ERR_DB, "database", "unexpected row from the series query: %.80s", row);
        if (rc == 0 && (f[0] != s.metric || f[1] != s.layer || f[2] != s.head || f[3] != s.idx)) {
            rc = series_flush(&s, run_id, out, st, e);
            s.metric = f[0];
            s.layer = f[1];
            s.head = f[2];
            s.idx = f[3];
        }
        if (rc == 0 && series_push(&s, step, value) < 0)
            rc = err_set(e, ERR_NOMEM, "transitions", "out of memory");
        PQfreemem(row);
    }
    if (rc == 0)
        rc = series_flush(&s, run_id, out, st, e);
    free(s.steps);
    free(s.values);
    if (len == -2 && rc == 0)
        rc = err_set(e, ERR_DB, "database", "reading the series: %s", PQerrorMessage(conn));
    while ((r = PQgetResult(conn))) {
        if (PQresultStatus(r) != PGRES_COMMAND_OK && rc == 0) {
            err_set(e, ERR_DB, "database", "reading the series: %s", PQresultErrorMessage(r));
            rc = ERR_DB;
        }
        PQclear(r);
    }
    if (e && rc < 0)
        e->msg[strcspn(e->msg, "\n")] = '\0';
    return rc;
}

/* DELETE the old rows, COPY the new ones in. */
static int write_rows(struct db *db, long long run_id, const char *metric_filter, const struct sbuf *rows,
                      struct err *e)
{
    PGconn *conn = db_conn(db);
    struct sbuf q = {0};
    if (sbuf_printf(&q, "DELETE FROM transitions t WHERE t.run_id = %lld AND t.method = '%s'%s", run_id,
                    TR_METHOD, metric_filter) < 0)
        return err_set(e, ERR_NOMEM, "transitions", "out of memory");
    int rc = db_run(db, q.p, 0, NULL, e);
    free(q.p);
    if (rc < 0 || rows->len == 0)
        return rc;
    PGresult *r = PQexec(conn, "COPY transitions (run_id, metric_id, layer, head, idx, start_step, peak_step,"
                               " end_step, magnitude, score, method, kind, p_value, noise, level_before,"
                               " level_after) FROM STDIN");
    if (PQresultStatus(r) != PGRES_COPY_IN) {
        err_set(e, ERR_DB, "database", "writing transitions: %s", PQresultErrorMessage(r));
        PQclear(r);
        rc = ERR_DB;
    } else {
        PQclear(r);
        rc = 0;
        if (PQputCopyData(conn, rows->p, (int)rows->len) != 1 || PQputCopyEnd(conn, NULL) != 1)
            rc = err_set(e, ERR_DB, "database", "writing transitions: %s", PQerrorMessage(conn));
        while ((r = PQgetResult(conn))) {
            if (PQresultStatus(r) != PGRES_COMMAND_OK && rc == 0)
                rc = err_set(e, ERR_DB, "database", "writing transitions: %s", PQresultErrorMessage(r));
            PQclear(r);
        }
    }
    if (e && rc < 0)
        e->msg[strcspn(e->msg, "\n")] = '\0';
    return rc;
}

int detect_run(struct db *db, long long run_id, const char *const *items, const int *versions,
               int nitems, struct detect_stats *st, struct err *e)
{
    struct detect_stats local;
    if (!st)
        st = &local;
    memset(st, 0, sizeof *st);
    if (!db_conn(db))
        return err_set(e, ERR_DB, "database", "not connected");
    struct sbuf filter = {0}, rows = {0};
    char *names = NULL;
    int rc = 0;
    double t0 = mono_s();
    if (sbuf_printf(&filter, "%s", "") < 0) {
        rc = err_set(e, ERR_NOMEM, "transitions", "out of memory");
        goto out;
    }
    if ((rc = db_run(db, "BEGIN", 0, NULL, e)) < 0)
        goto out;
    char id[32];
    snprintf(id, sizeof id, "%lld", run_id);
    const char *p1[1] = {id};
    if ((rc = db_run(db, "SELECT pg_advisory_xact_lock(" LOCK_KEY ", ($1::bigint % 2147483647)::int)", 1, p1, e)) < 0)
        goto fail;
    if (nitems > 0) {
        /* the metric ids of the items: integers, safe to put in the query text */
        char vers[CLAIM_MAX_JOBS * 12] = "{";
        for (int i = 0; i < nitems && i < CLAIM_MAX_JOBS; i++)
            snprintf(vers + strlen(vers), sizeof vers - strlen(vers), "%s%d", i ? "," : "", versions[i]);
        strcat(vers, "}");
        names = db_text_array(items, nitems < CLAIM_MAX_JOBS ? nitems : CLAIM_MAX_JOBS);
        if (!names) {
            rc = err_set(e, ERR_NOMEM, "transitions", "out of memory");
            goto fail;
        }
        const char *p2[2] = {names, vers};
        PGresult *r = db_exec(db, "SELECT coalesce(string_agg(id::text, ','), '') FROM metrics"
                                  " WHERE (item, version) IN (SELECT * FROM unnest($1::text[], $2::int[]))",
                              2, p2, e);
        if (!r) {
            rc = ERR_DB;
            goto fail;
        }
        rc = sbuf_printf(&filter, " AND metric_id = ANY('{%s}'::int[])", PQgetvalue(r, 0, 0));
        PQclear(r);
        if (rc < 0) {
            rc = err_set(e, ERR_NOMEM, "transitions", "out of memory");
            goto fail;
        }
    }
    if ((rc = read_and_detect(db, run_id, filter.p, &rows, st, e)) < 0)
        goto fail;
    double t1 = mono_s();
    st->read_s = t1 - t0;
    if ((rc = write_rows(db, run_id, filter.p, &rows, e)) < 0 || (rc = db_run(db, "COMMIT", 0, NULL, e)) < 0)
        goto fail;
    st->write_s = mono_s() - t1;
    goto out;
fail:
    db_rollback(db);
    st->transitions = st->spikes = 0;
out:
    free(names);
    free(filter.p);
    free(rows.p);
    return rc;
}

void detect_after_ingest(struct db *db, const struct claim *c)
{
    struct err e;
    struct detect_stats st;
    const char *items[CLAIM_MAX_JOBS];
    for (int i = 0; i < c->njobs && i < CLAIM_MAX_JOBS; i++)
        items[i] = c->items[i];
    if (detect_run(db, c->run_id, items, c->versions, c->njobs, &st, &e) < 0) {
        err_wrap(&e, "run %s step %lld", c->run, c->step);
        log_err("transition detection failed; the checkpoint's results are stored", &e);
        return;
    }
    log_info("transitions detected",
             "run=%s step=%lld series=%ld points=%ld transitions=%ld spikes=%ld read_ms=%.1f write_ms=%.1f",
             log_quote(c->run), c->step, st.series, st.points, st.transitions, st.spikes, st.read_s * 1e3,
             st.write_s * 1e3);
}

int detect_run_named(struct db *db, const char *run, struct detect_stats *st, struct err *e)
{
    long long id;
    int rc = db_run_id(db, run, &id, e);
    return rc < 0 ? rc : detect_run(db, id, NULL, NULL, 0, st, e);
}

/* Does the row's metric match NAME or ITEM/NAME? */
static int metric_matches(const char *want, const char *item, const char *name)
{
    const char *slash = strchr(want, '/');
    if (!slash)
        return strcmp(want, name) == 0;
    size_t li = (size_t)(slash - want);
    return strlen(item) == li && strncmp(want, item, li) == 0 && strcmp(slash + 1, name) == 0;
}

/* NULL for SQL NULL, else the text */
static const char *get_or_null(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? NULL : PQgetvalue(r, row, col);
}

static double num_or_nan(const PGresult *r, int row, int col)
{
    const char *v = get_or_null(r, row, col);
    return v ? atof(v) : NAN;
}

/* The groups of the transitions (rows with tr[i] set) of each method:
 * group[i] numbered from 1 within the method (0 for spikes); gscore[i] the
 * group's sum over its distinct metrics of the largest -log10 p-value,
 * gmetrics[i] how many distinct metrics it holds.  Returns 0 or ERR_NOMEM. */
static int group_rows(const PGresult *r, int n, const int *tr, int *group, double *gscore, int *gmetrics)
{
    long long *st = malloc(sizeof *st * (size_t)(n + 1)), *en = malloc(sizeof *en * (size_t)(n + 1));
    int *idx = malloc(sizeof *idx * (size_t)(n + 1)), *g = malloc(sizeof *g * (size_t)(n + 1));
    int rc = 0;
    if (!st || !en || !idx || !g) {
        rc = ERR_NOMEM;
        goto out;
    }
    for (int i = 0; i < n; i++) {
        group[i] = 0;
        gscore[i] = 0;
        gmetrics[i] = 0;
    }
    for (int i = 0; i < n; i++) {
        if (!tr[i] || group[i] != 0)
            continue;
        /* the transitions of row i's method, not grouped yet */
        const char *method = PQgetvalue(r, i, 11);
        int k = 0;
        for (int j = i; j < n; j++)
            if (tr[j] && group[j] == 0 && strcmp(PQgetvalue(r, j, 11), method) == 0) {
                idx[k] = j;
                st[k] = atoll(PQgetvalue(r, j, 6));
                en[k++] = atoll(PQgetvalue(r, j, 8));
            }
        tr_group(st, en, k, g);
        for (int a = 0; a < k; a++)
            group[idx[a]] = g[a];
        /* per group: the best -log10 p of each distinct metric, summed */
        for (int a = 0; a < k; a++) {
            int ra = idx[a], first = 1;
            for (int b = 0; b < a && first; b++)
                first = !(g[b] == g[a] && strcmp(PQgetvalue(r, idx[b], 0), PQgetvalue(r, ra, 0)) == 0 &&
                          strcmp(PQgetvalue(r, idx[b], 1), PQgetvalue(r, ra, 1)) == 0);
            if (!first)
                continue;
            double best = 0;
            for (int b = a; b < k; b++) {
                int rb = idx[b];
                double p = num_or_nan(r, rb, 13);
                if (g[b] == g[a] && strcmp(PQgetvalue(r, rb, 0), PQgetvalue(r, ra, 0)) == 0 &&
                    strcmp(PQgetvalue(r, rb, 1), PQgetvalue(r, ra, 1)) == 0 && isfinite(p) && p > 0 &&
                    -log10(p) > best)
                    best = -log10(p);
            }
            for (int b = 0; b < k; b++)
                if (g[b] == g[a]) {
                    gscore[idx[b]] += best;
                    gmetrics[idx[b]]++;
                }
        }
    }
out:
    free(st);
    free(en);
    free(idx);
    free(g);
    return rc;
}

int detect_list(struct db *db, const char *run, const struct detect_list_opts *o, FILE *out,
                struct err *e)
{
    long long id;
    int rc = db_run_id(db, run, &id, e);
    if (rc < 0)
        return rc;
    char ids[32], minsc[40];
    snprintf(ids, sizeof ids, "%lld", id);
    snprintf(minsc, sizeof minsc, "%.17g", o->min_score);
    const char *method = o->method ? o->method : TR_METHOD;
    const char *p[3] = {ids, minsc, strcmp(method, "all") == 0 ? NULL : method};
    PGresult *r = db_exec(db,
        "SELECT mt.name, mt.item, mt.version, t.layer, t.head, t.idx, t.start_step, t.peak_step,"
        "  t.end_step, t.magnitude, t.score, t.method, t.kind, t.p_value, t.noise, t.level_before,"
        "  t.level_after"
        " FROM transitions t JOIN metrics mt ON mt.id = t.metric_id"
        " WHERE t.run_id = $1::bigint AND t.score >= $2::float8 AND ($3::text IS NULL OR t.method = $3)"
        " ORDER BY t.peak_step, mt.item, mt.name, t.layer, t.head, t.idx, t.method, t.kind DESC", 3, p, e);
    if (!r)
        return ERR_DB;
    int n = PQntuples(r);
    int *tr = malloc(sizeof *tr * (size_t)(n + 1)), *group = malloc(sizeof *group * (size_t)(n + 1));
    int *gmetrics = malloc(sizeof *gmetrics * (size_t)(n + 1));
    double *gscore = malloc(sizeof *gscore * (size_t)(n + 1));
    char *shown = calloc((size_t)(n + 1), 1);
    json_t *arr = o->json ? json_array() : NULL;
    if (!tr || !group || !gmetrics || !gscore || !shown || (o->json && !arr)) {
        rc = err_set(e, ERR_NOMEM, "transitions", "out of memory");
        goto out;
    }
    for (int i = 0; i < n; i++)
        tr[i] = strcmp(PQgetvalue(r, i, 12), "transition") == 0;
    if (group_rows(r, n, tr, group, gscore, gmetrics) < 0) {
        rc = err_set(e, ERR_NOMEM, "transitions", "out of memory");
        goto out;
    }
    if (!o->json)
        fprintf(out, "%5s  %-10s  %-24s %-12s %3s %5s %4s %6s %9s %9s %9s %12s %12s %8s %8s  %s\n", "group", "kind",
                "metric", "item", "ver", "layer", "head", "idx", "start", "peak", "end", "before", "after", "score",
                "p_value", "method");
    for (int i = 0; i < n; i++) {
        const char *name = PQgetvalue(r, i, 0), *item = PQgetvalue(r, i, 1);
        const char *kind = PQgetvalue(r, i, 12);
        if (o->metric && !metric_matches(o->metric, item, name))
            continue;
        if (o->kind && strcmp(o->kind, kind) != 0)
            continue;
        int ver = atoi(PQgetvalue(r, i, 2)), layer = atoi(PQgetvalue(r, i, 3));
        int head = atoi(PQgetvalue(r, i, 4)), idx = atoi(PQgetvalue(r, i, 5));
        long long start = atoll(PQgetvalue(r, i, 6)), peak = atoll(PQgetvalue(r, i, 7));
        long long end = atoll(PQgetvalue(r, i, 8));
        double mag = atof(PQgetvalue(r, i, 9)), score = atof(PQgetvalue(r, i, 10));
        double pv = num_or_nan(r, i, 13), noise = num_or_nan(r, i, 14);
        double before = num_or_nan(r, i, 15), after = num_or_nan(r, i, 16);
        const char *meth = PQgetvalue(r, i, 11);
        if (o->json) {
            json_t *obj = json_pack("{s:s, s:s, s:s, s:i, s:i, s:i, s:i, s:I, s:I, s:I, s:f, s:f, s:s, s:s}", "run",
                                    run, "metric", name, "item", item, "version", ver, "layer", layer, "head",
                                    head, "idx", idx, "start_step", (json_int_t)start, "peak_step",
                                    (json_int_t)peak, "end_step", (json_int_t)end, "magnitude", mag, "score",
                                    score, "method", meth, "kind", kind);
            if (obj) {
                json_object_set_new(obj, "p_value", isfinite(pv) ? json_real(pv) : json_null());
                json_object_set_new(obj, "noise", isfinite(noise) ? json_real(noise) : json_null());
                json_object_set_new(obj, "level_before", isfinite(before) ? json_real(before) : json_null());
                json_object_set_new(obj, "level_after", isfinite(after) ? json_real(after) : json_null());
                json_object_set_new(obj, "group", tr[i] ? json_integer(group[i]) : json_null());
                json_object_set_new(obj, "group_metrics", tr[i] ? json_integer(gmetrics[i]) : json_null());
                json_object_set_new(obj, "group_score",
                                    tr[i] && strcmp(meth, "ramp-v1") != 0 ? json_real(gscore[i]) : json_null());
            }
            if (!obj || json_array_append_new(arr, obj) < 0) {
                rc = err_set(e, ERR_NOMEM, "transitions", "out of memory");
                goto out;
            }
        } else {
            char g[16] = "-", pvs[16] = "-", bs[16] = "-", as[16] = "-";
            if (tr[i])
                snprintf(g, sizeof g, "%d", group[i]);
            if (isfinite(pv))
                snprintf(pvs, sizeof pvs, "%.2g", pv);
            if (isfinite(before))
                snprintf(bs, sizeof bs, "%.6g", before);
            if (isfinite(after))
                snprintf(as, sizeof as, "%.6g", after);
            fprintf(out, "%5s  %-10s  %-24s %-12s %3d %5d %4d %6d %9lld %9lld %9lld %12s %12s %8.2f %8s  %s\n", g,
                    kind, name, item, ver, layer, head, idx, start, peak, end, bs, as, score, pvs, meth);
            (void)mag;
            shown[i] = 1;
        }
    }
    if (o->json) {
        json_dumpf(arr, out, JSON_INDENT(2) | JSON_REAL_PRECISION(10));
        fputc('\n', out);
    } else {
        /* the groups of the transitions shown: window, metrics, score */
        int header = 0;
        for (int i = 0; i < n; i++) {
            int first = shown[i] && tr[i];
            for (int j = 0; j < i && first; j++)
                first = !(shown[j] && tr[j] && group[j] == group[i] &&
                          strcmp(PQgetvalue(r, j, 11), PQgetvalue(r, i, 11)) == 0);
            if (!first)
                continue;
            if (!header++)
                fprintf(out, "\n%5s  %9s %9s  %7s %8s  %-10s %s\n", "group", "start", "end", "metrics", "score",
                        "method", "metrics in it (item/metric)");
            long long gs = atoll(PQgetvalue(r, i, 6)), ge = atoll(PQgetvalue(r, i, 8));
            for (int j = i + 1; j < n; j++)
                if (tr[j] && group[j] == group[i] && strcmp(PQgetvalue(r, j, 11), PQgetvalue(r, i, 11)) == 0) {
                    gs = atoll(PQgetvalue(r, j, 6)) < gs ? atoll(PQgetvalue(r, j, 6)) : gs;
                    ge = atoll(PQgetvalue(r, j, 8)) > ge ? atoll(PQgetvalue(r, j, 8)) : ge;
                }
            fprintf(out, "%5d  %9lld %9lld  %7d %8.1f  %-10s ", group[i], gs, ge, gmetrics[i], gscore[i],
                    PQgetvalue(r, i, 11));
            int listed = 0;
            for (int j = 0; j < n; j++) {
                if (!(tr[j] && group[j] == group[i] && strcmp(PQgetvalue(r, j, 11), PQgetvalue(r, i, 11)) == 0))
                    continue;
                int dup = 0;
                for (int k = 0; k < j && !dup; k++)
                    dup = tr[k] && group[k] == group[i] &&
                          strcmp(PQgetvalue(r, k, 11), PQgetvalue(r, i, 11)) == 0 &&
                          strcmp(PQgetvalue(r, k, 0), PQgetvalue(r, j, 0)) == 0 &&
                          strcmp(PQgetvalue(r, k, 1), PQgetvalue(r, j, 1)) == 0;
                if (!dup)
                    fprintf(out, "%s%s/%s", listed++ ? ", " : "", PQgetvalue(r, j, 1), PQgetvalue(r, j, 0));
            }
            fputc('\n', out);
        }
    }
out:
    json_decref(arr);
    free(shown);
    free(tr);
    free(group);
    free(gmetrics);
    free(gscore);
    PQclear(r);
    return rc;
}
