#include "daemon/detect/family.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/sbuf.h"
#include "daemon/base/db.h"
#include "daemon/detect/detect.h"
#include "daemon/detect/transitions.h"

#define STR_(x) #x
#define STR(x) STR_(x)

/* Which transitions rows the family reads: the current method's
 * transitions; its spikes (kind 'spike', schema/009_spikes.sql) are
 * excursions that come back, not changes to match across members. */
#define FAMILY_TR_FILTER "t.method = '" TR_METHOD "' AND t.kind = 'transition'"

/* Values the family believes: finite, at checkpoints neither duplicate nor suspect. */
#define BELIEVED \
    "c.duplicate_of IS NULL AND c.suspect IS NULL AND m.value > '-Infinity'::float8 AND m.value < 'Infinity'::float8"

/* ---- pure pieces ---- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of v (n > 0), sorting a copy into scratch. */
static double median(const double *v, int n, double *scratch)
{
    memcpy(scratch, v, sizeof *v * (size_t)n);
    qsort(scratch, (size_t)n, sizeof *scratch, cmp_double);
    return n % 2 ? scratch[n / 2] : 0.5 * (scratch[n / 2 - 1] + scratch[n / 2]);
}

/* Clusters of one sign with no member in common whose mean |magnitude|
 * are within FAMILY_MATCH_RATIO of each other: the same transition at
 * different steps in different members.  The pair with the nearest mean
 * peaks is merged, again until none is left; then the clusters are
 * numbered 1..k again.  Returns k. */
static int match_disjoint(const struct family_tr *t, int n, int *cluster, int ncl)
{
    for (;;) {
        int ba = 0, bb = 0;
        double bd = INFINITY;
        for (int a = 1; a <= ncl; a++)
            for (int b = a + 1; b <= ncl; b++) {
                double pa = 0, pb = 0, ma = 0, mb = 0;
                int na = 0, nb = 0, sa = 0, sb = 0, shared = 0;
                for (int i = 0; i < n; i++) {
                    if (cluster[i] == a) {
                        pa += (double)t[i].peak;
                        ma += fabs(t[i].magnitude);
                        sa = t[i].magnitude < 0 ? -1 : 1;
                        na++;
                        for (int j = 0; j < n && !shared; j++)
                            shared = cluster[j] == b && t[j].member == t[i].member;
                    } else if (cluster[i] == b) {
                        pb += (double)t[i].peak;
                        mb += fabs(t[i].magnitude);
                        sb = t[i].magnitude < 0 ? -1 : 1;
                        nb++;
                    }
                }
                if (na == 0 || nb == 0 || sa != sb || shared)
                    continue;
                ma /= na;
                mb /= nb;
                if (fmax(ma, mb) > FAMILY_MATCH_RATIO * fmin(ma, mb))
                    continue;
                double d = fabs(pa / na - pb / nb);
                if (d < bd) {
                    bd = d;
                    ba = a;
                    bb = b;
                }
            }
        if (ba == 0)
            break;
        for (int i = 0; i < n; i++)
            if (cluster[i] == bb)
                cluster[i] = ba;
    }
    int k = 0;
    for (int c = 1; c <= ncl; c++) {
        int used = 0;
        for (int i = 0; i < n; i++)
            if (cluster[i] == c) {
                cluster[i] = -(k + 1); /* renumbered, marked until the end */
                used = 1;
            }
        k += used;
    }
    for (int i = 0; i < n; i++)
        cluster[i] = -cluster[i];
    return k;
}

int family_changes(struct family_tr *t, int n)
{
    int k = 0;
    for (int i = 0; i < n; i++) {
        int j = k - 1; /* the latest kept change of this sign */
        while (j >= 0 && (t[j].magnitude < 0) != (t[i].magnitude < 0))
            j--;
        if (j >= 0 && t[i].start <= t[j].end) {
            if (fabs(t[i].magnitude) > fabs(t[j].magnitude))
                t[j].peak = t[i].peak;
            t[j].start = t[i].start < t[j].start ? t[i].start : t[j].start;
            t[j].end = t[i].end > t[j].end ? t[i].end : t[j].end;
            t[j].magnitude += t[i].magnitude;
            t[j].score = fmax(t[j].score, t[i].score);
        } else {
            t[k++] = t[i];
        }
    }
    double largest = 0;
    for (int i = 0; i < k; i++)
        largest = fmax(largest, fabs(t[i].magnitude));
    int kept = 0;
    for (int i = 0; i < k; i++)
        if (fabs(t[i].magnitude) >= FAMILY_CHANGE_SHARE * largest)
            t[kept++] = t[i];
    return kept;
}

int family_cluster(const struct family_tr *t, int n, int *cluster)
{
    long long *st = malloc(sizeof *st * ((size_t)n + 1)), *en = malloc(sizeof *en * ((size_t)n + 1));
    int *idx = malloc(sizeof *idx * ((size_t)n + 1)), *g = malloc(sizeof *g * ((size_t)n + 1));
    int next = 0, rc = 0;
    if (!st || !en || !idx || !g) {
        rc = ERR_NOMEM;
        goto out;
    }
    for (int sign = -1; sign <= 1; sign += 2) {
        int k = 0;
        for (int i = 0; i < n; i++)
            if ((t[i].magnitude < 0 ? -1 : 1) == sign) {
                idx[k] = i;
                st[k] = t[i].start;
                en[k] = t[i].end;
                k++;
            }
        if (k == 0)
            continue;
        tr_group(st, en, k, g);
        int top = 0;
        for (int i = 0; i < k; i++) {
            cluster[idx[i]] = next + g[i];
            top = g[i] > top ? g[i] : top;
        }
        next += top;
    }
    rc = match_disjoint(t, n, cluster, next);
out:
    free(st);
    free(en);
    free(idx);
    free(g);
    return rc;
}

int family_band(const double *values, int members, int steps, double *fraction, int *compared, int *outlier)
{
    double lo_all = INFINITY, hi_all = -INFINITY;
    for (int i = 0; i < members * steps; i++)
        if (!isnan(values[i])) {
            lo_all = fmin(lo_all, values[i]);
            hi_all = fmax(hi_all, values[i]);
        }
    const double floor = FAMILY_BAND_FLOOR * (hi_all - lo_all);
    for (int m = 0; m < members; m++) {
        int n = 0, outside = 0;
        for (int s = 0; s < steps; s++) {
            double v = values[(size_t)m * steps + s], lo = INFINITY, hi = -INFINITY;
            int others = 0;
            if (isnan(v))
                continue;
            for (int o = 0; o < members; o++) {
                double w = values[(size_t)o * steps + s];
                if (o == m || isnan(w))
                    continue;
                lo = fmin(lo, w);
                hi = fmax(hi, w);
                others++;
            }
            if (others < 2)
                continue;
            double h = fmax(hi - lo, floor);
            n++;
            outside += v < lo - h || v > hi + h;
        }
        compared[m] = n;
        fraction[m] = n >= 3 ? (double)outside / n : NAN;
    }
    int named = 0;
    for (int m = 0; m < members; m++) {
        double others[256], scratch[256];
        int k = 0;
        for (int o = 0; o < members && k < 256; o++)
            if (o != m && !isnan(fraction[o]))
                others[k++] = fraction[o];
        outlier[m] = fraction[m] > FAMILY_BAND_FRACTION && k >= 2 &&
                     fraction[m] >= FAMILY_BAND_RATIO * median(others, k, scratch);
        named += outlier[m];
    }
    return named;
}

int family_far(const double *pos, int n, int i, double *dist, double *limit)
{
    double others[256], scratch[256];
    int k = 0;
    for (int j = 0; j < n && k < 256; j++)
        if (j != i)
            others[k++] = pos[j];
    if (k < 2)
        return -1;
    double med = median(others, k, scratch);
    for (int j = 0; j < k; j++)
        others[j] = fabs(others[j] - med);
    double mad = median(others, k, scratch);
    *dist = fabs(pos[i] - med);
    *limit = fmax(FAMILY_FAR_CKPTS, 3.0 * 1.4826 * mad);
    return *dist > *limit;
}

/* ---- membership ---- */

static int name_ok(const char *s)
{
    if (!s || !*s || strlen(s) > 200)
        return 0;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '.' ||
              *p == '_' || *p == '/' || *p == '-'))
            return 0;
    return 1;
}

int family_add(struct db *db, const char *family, const char *const *runs, int nruns, int *added, struct err *e)
{
    if (added)
        *added = 0;
    if (!name_ok(family))
        return err_set(e, ERR_INVALID, family ? family : "", "a family name is letters, digits and . _ / -");
    char *names = db_text_array(runs, nruns);
    if (!names)
        return err_set(e, ERR_NOMEM, family, "out of memory");
    const char *p[2] = {family, names};
    PGresult *r = NULL;
    int rc = db_run(db, "BEGIN", 0, NULL, e);
    if (rc < 0)
        goto out;
    r = db_exec(db, "SELECT x.n FROM unnest($2::text[]) WITH ORDINALITY AS x(n, o)"
                    " WHERE $1::text IS NOT NULL AND NOT EXISTS (SELECT 1 FROM runs WHERE name = x.n) ORDER BY x.o",
                2, p, e);
    if (!r) {
        rc = ERR_DB;
        goto rollback;
    }
    if (PQntuples(r) > 0) {
        rc = err_set(e, ERR_NOTFOUND, family, "no run named '%s'", PQgetvalue(r, 0, 0));
        goto rollback;
    }
    PQclear(r);
    r = db_exec(db,
        "WITH f AS (INSERT INTO families (name) VALUES ($1) ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name"
        "   RETURNING id),"
        " ins AS (INSERT INTO family_members (family_id, run_id)"
        "   SELECT f.id, r.id FROM f, runs r WHERE r.name = ANY($2::text[]) ON CONFLICT DO NOTHING RETURNING 1)"
        " SELECT count(*) FROM ins", 2, p, e);
    if (!r) {
        rc = ERR_DB;
        goto rollback;
    }
    int n = atoi(PQgetvalue(r, 0, 0));
    if (added)
        *added = n;
    if (n > 0 && (rc = db_run(db, "UPDATE families SET changed_at = now() WHERE name = $1", 1, p, e)) < 0)
        goto rollback;
    if ((rc = db_run(db, "COMMIT", 0, NULL, e)) < 0)
        goto rollback;
    goto out;
rollback:
    db_rollback(db);
out:
    PQclear(r);
    free(names);
    return rc;
}

int family_member_ids(struct db *db, const char *family, long long **ids, int *n, struct err *e)
{
    *ids = NULL;
    *n = 0;
    const char *p[1] = {family};
    PGresult *r = db_exec(db, "SELECT f.id, fm.run_id FROM families f LEFT JOIN family_members fm ON fm.family_id = f.id"
                              " LEFT JOIN runs r ON r.id = fm.run_id WHERE f.name = $1 ORDER BY r.name", 1, p, e);
    if (!r)
        return ERR_DB;
    if (PQntuples(r) == 0) {
        PQclear(r);
        return err_set(e, ERR_NOTFOUND, family, "no family named '%s'", family);
    }
    *ids = calloc((size_t)PQntuples(r) + 1, sizeof **ids);
    if (!*ids) {
        PQclear(r);
        return err_set(e, ERR_NOMEM, family, "out of memory");
    }
    for (int i = 0; i < PQntuples(r); i++)
        if (!PQgetisnull(r, i, 1))
            (*ids)[(*n)++] = atoll(PQgetvalue(r, i, 1));
    PQclear(r);
    return 0;
}

/* ---- the analysis ---- */

struct skey {
    int metric, layer, head, idx;
};

static int skey_cmp(const struct skey *a, const struct skey *b)
{
    if (a->metric != b->metric)
        return a->metric < b->metric ? -1 : 1;
    if (a->layer != b->layer)
        return a->layer < b->layer ? -1 : 1;
    if (a->head != b->head)
        return a->head < b->head ? -1 : 1;
    return (a->idx > b->idx) - (a->idx < b->idx);
}

/* Everything one analysis holds. */
struct fam {
    long long id;
    int nm;
    long long *members;       /* run ids, by name */
    int nsteps;
    long long *steps;         /* the family's believed steps, increasing */
    PGresult *tr;             /* members' transitions, by series */
    PGresult *counts;         /* believed points per (member, series) with transitions */
    struct sbuf trows, orows;  /* COPY data of family_transitions and family_outliers */
    struct family_stats *st;
};

static int member_of(const struct fam *f, long long run_id)
{
    for (int i = 0; i < f->nm; i++)
        if (f->members[i] == run_id)
            return i;
    return -1;
}

/* Position of a step in the family's schedule (nearest at or after). */
static double pos_of(const struct fam *f, long long step)
{
    int lo = 0, hi = f->nsteps;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (f->steps[mid] < step)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Believed points of member m's series k, from f->counts (sorted by series, member). */
static long series_points(const struct fam *f, const struct skey *k, int m)
{
    for (int i = 0; i < PQntuples(f->counts); i++) {
        struct skey c = {atoi(PQgetvalue(f->counts, i, 1)), atoi(PQgetvalue(f->counts, i, 2)),
                         atoi(PQgetvalue(f->counts, i, 3)), atoi(PQgetvalue(f->counts, i, 4))};
        if (skey_cmp(&c, k) == 0 && atoll(PQgetvalue(f->counts, i, 0)) == f->members[m])
            return atol(PQgetvalue(f->counts, i, 5));
    }
    return 0;
}

static int add_outlier(struct fam *f, int m, const struct skey *k, const char *reason, double value,
                       const char *fmt, ...) CK_PRINTF(6, 7);

static int add_outlier(struct fam *f, int m, const struct skey *k, const char *reason, double value,
                       const char *fmt, ...)
{
    char detail[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    for (char *c = detail; *c; c++) /* COPY text: no tabs, newlines or backslashes */
        if (*c == '\t' || *c == '\n' || *c == '\\')
            *c = ' ';
    f->st->outliers++;
    char v[40];
    snprintf(v, sizeof v, isfinite(value) ? "%.17g" : "\\N", value);
    return sbuf_printf(&f->orows, "%lld\t%lld\t%d\t%d\t%d\t%d\t%s\t%s\t%s\n", f->id, f->members[m], k->metric, k->layer,
                      k->head, k->idx, reason, v, detail);
}

/* One series' member transitions t (n): clusters, the family's, and the
 * transition outliers. */
static int analyse_series(struct fam *f, const struct skey *k, struct family_tr *t, int n, struct err *e)
{
    int *cl = malloc(sizeof *cl * ((size_t)n + 1)), *best = malloc(sizeof *best * ((size_t)f->nm + 1));
    double *pos = malloc(sizeof *pos * ((size_t)f->nm + 1)), *scr = malloc(sizeof *scr * ((size_t)n + f->nm + 1));
    double *mag = malloc(sizeof *mag * ((size_t)n + 1));
    long *points = malloc(sizeof *points * ((size_t)f->nm + 1));
    int rc = 0;
    if (!cl || !best || !pos || !scr || !mag || !points) {
        rc = err_set(e, ERR_NOMEM, "family", "out of memory");
        goto out;
    }
    int ncl = family_cluster(t, n, cl);
    if (ncl < 0) {
        rc = err_set(e, ERR_NOMEM, "family", "out of memory");
        goto out;
    }
    int total = 0;
    for (int m = 0; m < f->nm; m++) {
        points[m] = series_points(f, k, m);
        total += points[m] >= TR_MIN_POINTS;
    }
    for (int c = 1; c <= ncl; c++) {
        for (int m = 0; m < f->nm; m++)
            best[m] = -1;
        int found = 0, nmag = 0;
        long long start = 0, end = 0;
        for (int i = 0; i < n; i++) {
            if (cl[i] != c)
                continue;
            if (nmag == 0 || t[i].start < start)
                start = t[i].start;
            if (nmag == 0 || t[i].end > end)
                end = t[i].end;
            mag[nmag++] = t[i].magnitude;
            if (best[t[i].member] < 0)
                found++;
            if (best[t[i].member] < 0 || t[i].score > t[best[t[i].member]].score)
                best[t[i].member] = i;
        }
        if (found == 0)
            continue;
        /* members found, by peak */
        int order[256], no = 0;
        for (int m = 0; m < f->nm && no < 256; m++)
            if (best[m] >= 0)
                order[no++] = m;
        for (int a = 1; a < no; a++)
            for (int b = a; b > 0 && t[best[order[b]]].peak < t[best[order[b - 1]]].peak; b--) {
                int x = order[b];
                order[b] = order[b - 1];
                order[b - 1] = x;
            }
        double peaks[256];
        for (int a = 0; a < no; a++) {
            peaks[a] = (double)t[best[order[a]]].peak;
            pos[a] = pos_of(f, t[best[order[a]]].peak);
        }
        double pmed = median(peaks, no, scr), mmed = median(mag, nmag, scr);
        int is_family = found >= 2 && 3 * found >= 2 * (total > found ? total : found);
        f->st->clusters++;
        f->st->family_transitions += is_family;
        int sign = mmed < 0 ? -1 : 1;
        struct sbuf runs = {0}, pk = {0};
        for (int a = 0; a < no && rc == 0; a++) {
            if (sbuf_printf(&runs, "%s%lld", a ? "," : "", f->members[order[a]]) < 0 ||
                sbuf_printf(&pk, "%s%lld", a ? "," : "", t[best[order[a]]].peak) < 0)
                rc = ERR_NOMEM;
        }
        if (rc == 0 &&
            sbuf_printf(&f->trows, "%lld\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%lld\t%lld\t%lld\t%.17g\t%lld\t%d\t%.17g\t{%s}\t{%s}\t%s\n",
                       f->id, k->metric, k->layer, k->head, k->idx, sign, found, total > found ? total : found,
                       is_family ? "t" : "f", start, end, t[best[order[0]]].peak, pmed, t[best[order[no - 1]]].peak,
                       (int)(pos[no - 1] - pos[0]), mmed, runs.p, pk.p, TR_METHOD) < 0)
            rc = ERR_NOMEM;
        free(runs.p);
        free(pk.p);
        if (rc < 0) {
            rc = err_set(e, ERR_NOMEM, "family", "out of memory");
            goto out;
        }
        if (!is_family)
            continue;
        /* far: a member found here whose peak is far from the others' */
        for (int a = 0; a < no; a++) {
            double dist, limit;
            if (family_far(pos, no, a, &dist, &limit) == 1 &&
                (rc = add_outlier(f, order[a], k, "transition_far", dist,
                                  "peak at step %lld, %.1f checkpoints from the others' median (limit %.1f); the "
                                  "family's median peak %.0f", t[best[order[a]]].peak, dist, limit, pmed)) < 0)
                goto oom;
        }
        /* absent: could show it and does not, in this cluster */
        for (int m = 0; m < f->nm; m++) {
            if (best[m] >= 0 || points[m] < TR_MIN_POINTS)
                continue;
            int near = -1; /* its own transition of that sign elsewhere in the series */
            for (int i = 0; i < n; i++)
                if (t[i].member == m && (t[i].magnitude < 0 ? -1 : 1) == sign &&
                    (near < 0 || fabs((double)t[i].peak - pmed) < fabs((double)t[near].peak - pmed)))
                    near = i;
            if (near >= 0) {
                pos[no] = pos_of(f, t[near].peak);
                double dist, limit;
                if (family_far(pos, no + 1, no, &dist, &limit) == 1 &&
                    (rc = add_outlier(f, m, k, "transition_far", dist,
                                      "its transition peaks at step %lld, outside the family's windows, %.1f "
                                      "checkpoints from the others' median (limit %.1f)", t[near].peak, dist, limit)) < 0)
                    goto oom;
                continue;
            }
            if ((rc = add_outlier(f, m, k, "transition_absent", pmed,
                                  "no transition where %d of %d members have one (peaks %lld..%lld, median %.0f)",
                                  found, total, t[best[order[0]]].peak, t[best[order[no - 1]]].peak, pmed)) < 0)
                goto oom;
        }
    }
    goto out;
oom:
    rc = err_set(e, ERR_NOMEM, "family", "out of memory");
out:
    free(cl);
    free(best);
    free(pos);
    free(scr);
    free(mag);
    free(points);
    return rc;
}

/* The transitions, series by series. */
static int analyse_transitions(struct fam *f, struct err *e)
{
    int n = PQntuples(f->tr), rc = 0;
    struct family_tr *t = malloc(sizeof *t * ((size_t)n + 1));
    if (!t)
        return err_set(e, ERR_NOMEM, "family", "out of memory");
    for (int i = 0; i < n && rc == 0;) {
        struct skey k = {atoi(PQgetvalue(f->tr, i, 1)), atoi(PQgetvalue(f->tr, i, 2)), atoi(PQgetvalue(f->tr, i, 3)),
                         atoi(PQgetvalue(f->tr, i, 4))};
        int nt = 0, first = 0;
        for (; i < n; i++) {
            struct skey x = {atoi(PQgetvalue(f->tr, i, 1)), atoi(PQgetvalue(f->tr, i, 2)),
                             atoi(PQgetvalue(f->tr, i, 3)), atoi(PQgetvalue(f->tr, i, 4))};
            if (skey_cmp(&x, &k) != 0)
                break;
            int m = member_of(f, atoll(PQgetvalue(f->tr, i, 0)));
            if (m < 0)
                continue;
            if (nt > first && t[first].member != m) { /* the previous member's, made its changes */
                nt = first + family_changes(t + first, nt - first);
                first = nt;
            }
            t[nt++] = (struct family_tr){m, atoll(PQgetvalue(f->tr, i, 5)), atoll(PQgetvalue(f->tr, i, 6)),
                                         atoll(PQgetvalue(f->tr, i, 7)), strtod(PQgetvalue(f->tr, i, 8), NULL),
                                         strtod(PQgetvalue(f->tr, i, 9), NULL)};
        }
        nt = first + family_changes(t + first, nt - first);
        f->st->series++;
        if (nt > 0)
            rc = analyse_series(f, &k, t, nt, e);
    }
    free(t);
    return rc;
}

/* One banded series gathered: values (nm, nsteps). */
static int band_series(struct fam *f, const struct skey *k, const double *values, double *frac, int *cmp,
                       int *named, struct err *e)
{
    family_band(values, f->nm, f->nsteps, frac, cmp, named);
    for (int m = 0; m < f->nm; m++)
        if (named[m] && add_outlier(f, m, k, "band", frac[m], "outside the others' band at %.0f%% of %d steps "
                                    "compared", 100.0 * frac[m], cmp[m]) < 0)
            return err_set(e, ERR_NOMEM, "family", "out of memory");
    return 0;
}

/* Parse "metric\tlayer\thead\tidx\trun\tstep\tvalue". */
static int parse_band_row(const char *p, struct skey *k, long long *run, long long *step, double *v)
{
    long long f[6];
    char *end;
    for (int i = 0; i < 6; i++) {
        errno = 0;
        f[i] = strtoll(p, &end, 10);
        if (end == p || *end != '\t' || errno)
            return -1;
        p = end + 1;
    }
    *k = (struct skey){(int)f[0], (int)f[1], (int)f[2], (int)f[3]};
    *run = f[4];
    *step = f[5];
    *v = strtod(p, &end);
    return end == p ? -1 : 0;
}

/* The band rule over the series chosen in SQL: streamed with COPY. */
static int analyse_bands(struct db *db, struct fam *f, const char *members, struct err *e)
{
    struct sbuf q = {0};
    if (sbuf_printf(&q,
            /* the series keys at each member's latest step (index probes,
             * not a scan of the members' rows) */
            "COPY (WITH keys AS (SELECT DISTINCT m.metric_id, m.layer, m.head, m.idx"
            "   FROM unnest('%s'::bigint[]) AS u(id)"
            "   CROSS JOIN LATERAL (SELECT max(x.step) AS s FROM measurements x WHERE x.run_id = u.id) l"
            "   JOIN measurements m ON m.run_id = u.id AND m.step = l.s),"
            " small AS (SELECT metric_id FROM keys GROUP BY metric_id HAVING count(*) <= " STR(FAMILY_BAND_KEYS) "),"
            " chosen AS (SELECT * FROM keys WHERE metric_id IN (SELECT metric_id FROM small)"
            "   UNION SELECT t.metric_id, t.layer, t.head, t.idx FROM transitions t"
            "   WHERE t.run_id = ANY('%s'::bigint[]) AND " FAMILY_TR_FILTER ")"
            " SELECT m.metric_id, m.layer, m.head, m.idx, m.run_id, m.step, m.value"
            " FROM chosen s CROSS JOIN unnest('%s'::bigint[]) AS u(id)"
            " JOIN measurements m ON m.run_id = u.id AND m.metric_id = s.metric_id AND m.layer = s.layer"
            "   AND m.head = s.head AND m.idx = s.idx"
            " JOIN checkpoints c ON c.run_id = m.run_id AND c.step = m.step"
            " WHERE " BELIEVED
            " ORDER BY m.metric_id, m.layer, m.head, m.idx, m.run_id, m.step) TO STDOUT",
            members, members, members) < 0)
        return err_set(e, ERR_NOMEM, "family", "out of memory");
    int started = db_copy_out(db, q.p, "reading the family's series", e);
    free(q.p);
    if (started < 0)
        return started;
    PGconn *conn = db_conn(db);
    PGresult *r;
    size_t cells = (size_t)f->nm * (size_t)f->nsteps;
    double *values = malloc(sizeof *values * (cells + 1)), *frac = malloc(sizeof *frac * ((size_t)f->nm + 1));
    int *cmp = malloc(sizeof *cmp * ((size_t)f->nm + 1)), rc = 0, have = 0;
    int *named = malloc(sizeof *named * ((size_t)f->nm + 1));
    if (!values || !frac || !cmp || !named)
        rc = err_set(e, ERR_NOMEM, "family", "out of memory");
    struct skey cur = {0, 0, 0, 0};
    char *row;
    int len;
    while ((len = PQgetCopyData(conn, &row, 0)) > 0) {
        struct skey k = {0, 0, 0, 0};
        long long run = -1, step = -1;
        double v = NAN;
        if (rc == 0 && parse_band_row(row, &k, &run, &step, &v) < 0)
            rc = err_set(e, ERR_DB, "database", "unexpected row from the family's series: %.80s", row);
        if (rc == 0 && (!have || skey_cmp(&k, &cur) != 0)) {
            if (have)
                rc = band_series(f, &cur, values, frac, cmp, named, e);
            for (size_t i = 0; i < cells; i++)
                values[i] = NAN;
            cur = k;
            have = 1;
        }
        int m = member_of(f, run), s = (int)pos_of(f, step);
        if (rc == 0 && m >= 0 && s < f->nsteps && f->steps[s] == step)
            values[(size_t)m * f->nsteps + s] = v;
        PQfreemem(row);
    }
    if (rc == 0 && have)
        rc = band_series(f, &cur, values, frac, cmp, named, e);
    if (len == -2 && rc == 0)
        rc = err_set(e, ERR_DB, "database", "reading the family's series: %s", PQerrorMessage(conn));
    while ((r = PQgetResult(conn))) {
        if (PQresultStatus(r) != PGRES_COMMAND_OK && rc == 0)
            rc = err_set(e, ERR_DB, "database", "reading the family's series: %s", PQresultErrorMessage(r));
        PQclear(r);
    }
    free(values);
    free(frac);
    free(cmp);
    free(named);
    return rc;
}

static int copy_in(struct db *db, const char *sql, const struct sbuf *b, struct err *e)
{
    if (b->len == 0)
        return 0;
    PGconn *conn = db_conn(db);
    PGresult *r = PQexec(conn, sql);
    int rc = 0;
    if (PQresultStatus(r) != PGRES_COPY_IN) {
        rc = err_set(e, ERR_DB, "database", "writing the family's analysis: %s", PQresultErrorMessage(r));
        PQclear(r);
        return rc;
    }
    PQclear(r);
    if (PQputCopyData(conn, b->p, (int)b->len) != 1 || PQputCopyEnd(conn, NULL) != 1)
        rc = err_set(e, ERR_DB, "database", "writing the family's analysis: %s", PQerrorMessage(conn));
    while ((r = PQgetResult(conn))) {
        if (PQresultStatus(r) != PGRES_COMMAND_OK && rc == 0)
            rc = err_set(e, ERR_DB, "database", "writing the family's analysis: %s", PQresultErrorMessage(r));
        PQclear(r);
    }
    if (e && rc < 0)
        e->msg[strcspn(e->msg, "\n")] = '\0';
    return rc;
}

int family_analyse(struct db *db, long long family_id, int try_lock, struct family_stats *st, struct err *e)
{
    struct family_stats local;
    if (!st)
        st = &local;
    memset(st, 0, sizeof *st);
    double t0 = mono_now();
    struct fam f;
    memset(&f, 0, sizeof f);
    f.id = family_id;
    f.st = st;
    char id[32], *members = NULL;
    snprintf(id, sizeof id, "%lld", family_id);
    const char *p[1] = {id};
    PGresult *r = NULL;
    int rc = db_run(db, "BEGIN", 0, NULL, e);
    if (rc < 0)
        return rc;
    r = db_exec(db, try_lock ? "SELECT pg_try_advisory_xact_lock(" STR(FAMILY_LOCK) ", ($1::bigint % 2147483647)::int)"
                             : "SELECT pg_advisory_xact_lock(" STR(FAMILY_LOCK) ", ($1::bigint % 2147483647)::int),"
                               " true",
                1, p, e);
    if (!r) {
        rc = ERR_DB;
        goto rollback;
    }
    int locked = strcmp(PQgetvalue(r, 0, PQnfields(r) - 1), "t") == 0;
    PQclear(r);
    r = NULL;
    if (!locked) {
        st->members = -1;
        goto rollback; /* another node is at it: rc 0 */
    }
    r = db_exec(db, "SELECT fm.run_id FROM family_members fm JOIN runs x ON x.id = fm.run_id"
                    " WHERE fm.family_id = $1 ORDER BY x.name", 1, p, e);
    if (!r) {
        rc = ERR_DB;
        goto rollback;
    }
    f.nm = st->members = PQntuples(r);
    f.members = calloc((size_t)f.nm + 1, sizeof *f.members);
    members = malloc((size_t)f.nm * 24 + 4);
    if (!f.members || !members) {
        rc = err_set(e, ERR_NOMEM, "family", "out of memory");
        goto rollback;
    }
    for (int i = 0; i < f.nm; i++)
        f.members[i] = atoll(PQgetvalue(r, i, 0));
    PQclear(r);
    db_int_array(members, (size_t)f.nm * 24 + 4, f.members, f.nm);
    const char *pm[1] = {members};
    r = db_exec(db, "SELECT DISTINCT step FROM checkpoints WHERE run_id = ANY($1::bigint[])"
                    " AND duplicate_of IS NULL AND suspect IS NULL ORDER BY step", 1, pm, e);
    if (!r) {
        rc = ERR_DB;
        goto rollback;
    }
    f.nsteps = PQntuples(r);
    f.steps = calloc((size_t)f.nsteps + 1, sizeof *f.steps);
    if (!f.steps) {
        rc = err_set(e, ERR_NOMEM, "family", "out of memory");
        goto rollback;
    }
    for (int i = 0; i < f.nsteps; i++)
        f.steps[i] = atoll(PQgetvalue(r, i, 0));
    PQclear(r);
    r = NULL;
    /* every transition, by series, member and peak: family_changes joins
     * each member's stages and keeps its main changes */
    f.tr = db_exec(db,
        "SELECT t.run_id, t.metric_id, t.layer, t.head, t.idx, t.start_step, t.peak_step, t.end_step, t.magnitude,"
        "   t.score FROM transitions t WHERE t.run_id = ANY($1::bigint[]) AND " FAMILY_TR_FILTER
        " ORDER BY t.metric_id, t.layer, t.head, t.idx, t.run_id, t.peak_step", 1, pm, e);
    f.counts = f.tr ? db_exec(db,
        "SELECT m.run_id, m.metric_id, m.layer, m.head, m.idx, count(*) FROM measurements m"
        " JOIN (SELECT DISTINCT t.metric_id, t.layer, t.head, t.idx FROM transitions t"
        "       WHERE t.run_id = ANY($1::bigint[]) AND " FAMILY_TR_FILTER ") s USING (metric_id, layer, head, idx)"
        " JOIN checkpoints c ON c.run_id = m.run_id AND c.step = m.step"
        " WHERE m.run_id = ANY($1::bigint[]) AND " BELIEVED
        " GROUP BY 1, 2, 3, 4, 5 ORDER BY 2, 3, 4, 5, 1", 1, pm, e) : NULL;
    if (!f.tr || !f.counts) {
        rc = ERR_DB;
        goto rollback;
    }
    if ((rc = analyse_transitions(&f, e)) < 0 || (f.nm >= 3 && (rc = analyse_bands(db, &f, members, e)) < 0))
        goto rollback;
    if ((rc = db_run(db, "DELETE FROM family_transitions WHERE family_id = $1", 1, p, e)) < 0 ||
        (rc = db_run(db, "DELETE FROM family_outliers WHERE family_id = $1", 1, p, e)) < 0 ||
        (rc = copy_in(db, "COPY family_transitions (family_id, metric_id, layer, head, idx, sign, members_found,"
                          " members_total, is_family, start_step, end_step, peak_min, peak_median, peak_max,"
                          " peak_spread_ckpts, magnitude_median, runs, peaks, method) FROM STDIN", &f.trows, e)) < 0 ||
        (rc = copy_in(db, "COPY family_outliers (family_id, run_id, metric_id, layer, head, idx, reason, value,"
                          " detail) FROM STDIN", &f.orows, e)) < 0 ||
        (rc = db_run(db, "UPDATE families SET analysed_at = now() WHERE id = $1", 1, p, e)) < 0 ||
        (rc = db_run(db, "COMMIT", 0, NULL, e)) < 0)
        goto rollback;
    st->seconds = mono_now() - t0;
    goto out;
rollback:
    db_rollback(db);
out:
    PQclear(r);
    PQclear(f.tr);
    PQclear(f.counts);
    free(f.members);
    free(f.steps);
    free(f.trows.p);
    free(f.orows.p);
    free(members);
    return rc;
}

int family_analyse_named(struct db *db, const char *family, struct family_stats *st, struct err *e)
{
    const char *p[1] = {family};
    PGresult *r = db_exec(db, "SELECT id FROM families WHERE name = $1", 1, p, e);
    if (!r)
        return ERR_DB;
    if (PQntuples(r) != 1) {
        PQclear(r);
        return err_set(e, ERR_NOTFOUND, family, "no family named '%s'", family);
    }
    long long id = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return family_analyse(db, id, 0, st, e);
}

void family_duty(struct db *db)
{
    struct err e;
    /* changed since the last analysis: its membership, a member's results
     * or transitions (with a margin for transactions that committed after
     * the analysis read) */
    PGresult *r = db_exec(db,
        "SELECT f.id, f.name FROM families f"
        " WHERE (f.analysed_at IS NULL OR f.analysed_at < now() - make_interval(secs => " STR(FAMILY_EVERY_S) "))"
        "   AND (f.analysed_at IS NULL OR f.changed_at > f.analysed_at"
        "     OR EXISTS (SELECT 1 FROM family_members fm JOIN checkpoints c ON c.run_id = fm.run_id"
        "                JOIN jobs j ON j.checkpoint_id = c.id"
        "                WHERE fm.family_id = f.id AND j.finished_at > f.analysed_at - interval '30 seconds')"
        "     OR EXISTS (SELECT 1 FROM family_members fm JOIN transitions t ON t.run_id = fm.run_id"
        "                WHERE fm.family_id = f.id AND t.detected_at > f.analysed_at - interval '30 seconds'))"
        " ORDER BY f.analysed_at NULLS FIRST LIMIT 4", 0, NULL, &e);
    if (!r) {
        log_err("families: cannot look for changes", &e);
        return;
    }
    for (int i = 0; i < PQntuples(r); i++) {
        struct family_stats st;
        if (family_analyse(db, atoll(PQgetvalue(r, i, 0)), 1, &st, &e) < 0)
            log_err("family analysis failed", &e);
        else if (st.members >= 0)
            log_info("family analysed", "family=%s members=%d clusters=%d family_transitions=%d outliers=%d seconds=%.3f",
                     log_quote(PQgetvalue(r, i, 1)), st.members, st.clusters, st.family_transitions, st.outliers,
                     st.seconds);
    }
    PQclear(r);
}

/* ---- listing ---- */

int family_list(struct db *db, const char *family, const struct detect_list_opts *o, FILE *out, struct err *e)
{
    const char *metric = o->metric ? o->metric : "";
    const char *p[2] = {family, metric};
    PGresult *mem = db_exec(db, "SELECT f.analysed_at IS NOT NULL, coalesce(string_agg(r.name, ' ' ORDER BY r.name), '')"
                                " FROM families f LEFT JOIN family_members fm ON fm.family_id = f.id"
                                " LEFT JOIN runs r ON r.id = fm.run_id WHERE f.name = $1 GROUP BY f.id", 1, p, e);
    if (!mem)
        return ERR_DB;
    if (PQntuples(mem) != 1) {
        PQclear(mem);
        return err_set(e, ERR_NOTFOUND, family, "no family named '%s'", family);
    }
    PGresult *tr = db_exec(db,
        "SELECT item, version, metric, layer, head, idx, sign, members_found, members_total, is_family, start_step,"
        "   end_step, peak_min, peak_median, peak_max, peak_spread_ckpts, magnitude_median,"
        "   array_to_string(members, ','), array_to_string(peaks, ','), method"
        " FROM family_transitions_named WHERE family = $1"
        "   AND ($2 = '' OR metric = $2 OR item || '/' || metric = $2)"
        " ORDER BY is_family DESC, peak_median, item, metric, layer, head, idx", 2, p, e);
    PGresult *ol = tr ? db_exec(db,
        "SELECT run, item, version, metric, layer, head, idx, reason, value, detail FROM family_outliers_named"
        " WHERE family = $1 AND ($2 = '' OR metric = $2 OR item || '/' || metric = $2)"
        " ORDER BY run, reason, item, metric, layer, head, idx", 2, p, e) : NULL;
    int rc = 0;
    if (!tr || !ol) {
        rc = ERR_DB;
        goto out;
    }
    if (o->json) {
        json_t *doc = json_object(), *ta = json_array(), *oa = json_array(), *ma = json_array();
        char *names = strdup(PQgetvalue(mem, 0, 1)), *save = NULL;
        for (char *w = names ? strtok_r(names, " ", &save) : NULL; w; w = strtok_r(NULL, " ", &save))
            json_array_append_new(ma, json_string(w));
        free(names);
        for (int i = 0; i < PQntuples(tr); i++) {
            json_t *x = json_object(), *runs = json_array(), *peaks = json_array();
            char *rs = strdup(PQgetvalue(tr, i, 17)), *ps = strdup(PQgetvalue(tr, i, 18)), *s1 = NULL, *s2 = NULL;
            for (char *w = rs ? strtok_r(rs, ",", &s1) : NULL; w; w = strtok_r(NULL, ",", &s1))
                json_array_append_new(runs, json_string(w));
            for (char *w = ps ? strtok_r(ps, ",", &s2) : NULL; w; w = strtok_r(NULL, ",", &s2))
                json_array_append_new(peaks, json_integer(atoll(w)));
            free(rs);
            free(ps);
            json_object_set_new(x, "item", json_string(PQgetvalue(tr, i, 0)));
            json_object_set_new(x, "version", json_integer(atoi(PQgetvalue(tr, i, 1))));
            json_object_set_new(x, "metric", json_string(PQgetvalue(tr, i, 2)));
            json_object_set_new(x, "layer", json_integer(atoi(PQgetvalue(tr, i, 3))));
            json_object_set_new(x, "head", json_integer(atoi(PQgetvalue(tr, i, 4))));
            json_object_set_new(x, "idx", json_integer(atoi(PQgetvalue(tr, i, 5))));
            json_object_set_new(x, "sign", json_integer(atoi(PQgetvalue(tr, i, 6))));
            json_object_set_new(x, "members_found", json_integer(atoi(PQgetvalue(tr, i, 7))));
            json_object_set_new(x, "members_total", json_integer(atoi(PQgetvalue(tr, i, 8))));
            json_object_set_new(x, "family", json_boolean(strcmp(PQgetvalue(tr, i, 9), "t") == 0));
            json_object_set_new(x, "start_step", json_integer(atoll(PQgetvalue(tr, i, 10))));
            json_object_set_new(x, "end_step", json_integer(atoll(PQgetvalue(tr, i, 11))));
            json_object_set_new(x, "peak_min", json_integer(atoll(PQgetvalue(tr, i, 12))));
            json_object_set_new(x, "peak_median", json_real(strtod(PQgetvalue(tr, i, 13), NULL)));
            json_object_set_new(x, "peak_max", json_integer(atoll(PQgetvalue(tr, i, 14))));
            json_object_set_new(x, "peak_spread_ckpts", json_integer(atoi(PQgetvalue(tr, i, 15))));
            json_object_set_new(x, "magnitude_median", json_real(strtod(PQgetvalue(tr, i, 16), NULL)));
            json_object_set_new(x, "members", runs);
            json_object_set_new(x, "peaks", peaks);
            json_object_set_new(x, "method", json_string(PQgetvalue(tr, i, 19)));
            json_array_append_new(ta, x);
        }
        for (int i = 0; i < PQntuples(ol); i++) {
            json_t *x = json_object();
            json_object_set_new(x, "run", json_string(PQgetvalue(ol, i, 0)));
            json_object_set_new(x, "item", json_string(PQgetvalue(ol, i, 1)));
            json_object_set_new(x, "version", json_integer(atoi(PQgetvalue(ol, i, 2))));
            json_object_set_new(x, "metric", json_string(PQgetvalue(ol, i, 3)));
            json_object_set_new(x, "layer", json_integer(atoi(PQgetvalue(ol, i, 4))));
            json_object_set_new(x, "head", json_integer(atoi(PQgetvalue(ol, i, 5))));
            json_object_set_new(x, "idx", json_integer(atoi(PQgetvalue(ol, i, 6))));
            json_object_set_new(x, "reason", json_string(PQgetvalue(ol, i, 7)));
            json_object_set_new(x, "value", PQgetisnull(ol, i, 8) ? json_null()
                                                                   : json_real(strtod(PQgetvalue(ol, i, 8), NULL)));
            json_object_set_new(x, "detail", json_string(PQgetvalue(ol, i, 9)));
            json_array_append_new(oa, x);
        }
        json_object_set_new(doc, "family", json_string(family));
        json_object_set_new(doc, "members", ma);
        json_object_set_new(doc, "analysed", json_boolean(strcmp(PQgetvalue(mem, 0, 0), "t") == 0));
        json_object_set_new(doc, "transitions", ta);
        json_object_set_new(doc, "outliers", oa);
        char *s = json_dumps(doc, JSON_INDENT(1) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(12));
        json_decref(doc);
        if (!s) {
            rc = err_set(e, ERR_NOMEM, "family", "out of memory");
            goto out;
        }
        fprintf(out, "%s\n", s);
        free(s);
        goto out;
    }
    fprintf(out, "family %s: members %s%s\n", family, PQgetvalue(mem, 0, 1),
            strcmp(PQgetvalue(mem, 0, 0), "t") == 0 ? "" : " (not analysed yet: ckptd detect --family)");
    fprintf(out, "%-4s %-24s %-12s %3s %5s %4s %6s %6s %9s %9s %11s %9s %6s %12s  %s\n", "fam", "metric", "item", "ver",
            "layer", "head", "idx", "found", "peak_min", "peak_med", "peak_max", "spread", "sign", "magnitude",
            "members (peak)");
    for (int i = 0; i < PQntuples(tr); i++) {
        char found[32];
        snprintf(found, sizeof found, "%s/%s", PQgetvalue(tr, i, 7), PQgetvalue(tr, i, 8));
        fprintf(out, "%-4s %-24s %-12s %3s %5s %4s %6s %6s %9s %9.0f %11s %9s %6s %12.6g  ",
                strcmp(PQgetvalue(tr, i, 9), "t") == 0 ? "*" : "", PQgetvalue(tr, i, 2), PQgetvalue(tr, i, 0),
                PQgetvalue(tr, i, 1), PQgetvalue(tr, i, 3), PQgetvalue(tr, i, 4), PQgetvalue(tr, i, 5), found,
                PQgetvalue(tr, i, 12), strtod(PQgetvalue(tr, i, 13), NULL), PQgetvalue(tr, i, 14),
                PQgetvalue(tr, i, 15), atoi(PQgetvalue(tr, i, 6)) < 0 ? "down" : "up",
                strtod(PQgetvalue(tr, i, 16), NULL));
        char *rs = strdup(PQgetvalue(tr, i, 17)), *ps = strdup(PQgetvalue(tr, i, 18)), *s1 = NULL, *s2 = NULL;
        char *w1 = rs ? strtok_r(rs, ",", &s1) : NULL, *w2 = ps ? strtok_r(ps, ",", &s2) : NULL;
        for (int k = 0; w1 && w2; k++, w1 = strtok_r(NULL, ",", &s1), w2 = strtok_r(NULL, ",", &s2))
            fprintf(out, "%s%s@%s", k ? " " : "", w1, w2);
        free(rs);
        free(ps);
        fputc('\n', out);
    }
    fprintf(out, "(* the family's: found in at least 2/3 of the members whose series the detector could read; "
                 "spread: checkpoints between the first and last peak)\n");
    if (PQntuples(ol) > 0)
        fprintf(out, "outliers:\n");
    for (int i = 0; i < PQntuples(ol); i++) {
        char key[64] = "";
        if (atoi(PQgetvalue(ol, i, 4)) >= 0 || atoi(PQgetvalue(ol, i, 5)) >= 0 || atoi(PQgetvalue(ol, i, 6)) >= 0)
            snprintf(key, sizeof key, " [layer %s head %s idx %s]", PQgetvalue(ol, i, 4), PQgetvalue(ol, i, 5),
                     PQgetvalue(ol, i, 6));
        fprintf(out, "  %s  %s/%s%s  %s: %s\n", PQgetvalue(ol, i, 0), PQgetvalue(ol, i, 1), PQgetvalue(ol, i, 3), key,
                PQgetvalue(ol, i, 7), PQgetvalue(ol, i, 9));
    }
out:
    PQclear(mem);
    PQclear(tr);
    PQclear(ol);
    return rc;
}
