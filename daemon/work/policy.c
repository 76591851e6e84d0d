#include "daemon/work/policy.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "daemon/base/db.h"
#include "daemon/plan/cost.h"
#include "daemon/plan/source.h"
#include "daemon/work/queue.h"

#define MAX_ITEMS 64

/* The jobs' priorities from the run's plan (run_plans): cheap items and
 * every item of a skeleton checkpoint 0 (one claim each), densified
 * windows 1, the rest 2; before the plan is made, 3 for all but the first
 * pass (held: no claim takes them).  Queued jobs only: what ran keeps what
 * it had. */
#define SET_PRIORITIES                                                                                  \
    "WITH ck AS (SELECT id, step, row_number() OVER (ORDER BY step) - 1 AS i, count(*) OVER () AS n"     \
    "            FROM checkpoints WHERE run_id = $1),"                                                  \
    " p AS (SELECT * FROM run_plans WHERE run_id = $1),"                                                \
    " want AS (SELECT j.id, CASE WHEN j.item = ANY (p.cheap_items) THEN 0"                             \
    "            WHEN ck.i % p.skeleton_every = 0 OR ck.i = ck.n - 1 THEN 0"                            \
    "            WHEN p.planned_at IS NULL THEN 3"                                                      \
    "            WHEN EXISTS (SELECT 1 FROM unnest(p.window_starts, p.window_ends) AS w(s, e)"             \
    "                         WHERE ck.step BETWEEN w.s AND w.e) THEN 1"                                \
    "            ELSE 2 END AS prio"                                                                    \
    "          FROM jobs j JOIN ck ON ck.id = j.checkpoint_id CROSS JOIN p WHERE j.state = 'queued')"   \
    " UPDATE jobs j SET priority = want.prio FROM want WHERE j.id = want.id AND j.priority <> want.prio"

int policy_known(const char *name)
{
    return name && (strcmp(name, "order") == 0 || strcmp(name, "adaptive") == 0);
}

/* ---- pure pieces ---- */

int policy_classify(const double *seconds, const char *const *names, const char *const *depends_on, int n,
                    int *cheap)
{
    int order[MAX_ITEMS], m = n < MAX_ITEMS ? n : MAX_ITEMS;
    double total = 0.0;
    for (int i = 0; i < m; i++) {
        order[i] = i;
        cheap[i] = 0;
        total += seconds[i] > 0 ? seconds[i] : 0.0;
    }
    for (int a = 1; a < m; a++) /* by cost, then name: stable across runs */
        for (int b = a; b > 0; b--) {
            int x = order[b], y = order[b - 1];
            if (seconds[x] < seconds[y] || (seconds[x] == seconds[y] && strcmp(names[x], names[y]) < 0)) {
                order[b] = y;
                order[b - 1] = x;
            } else {
                break;
            }
        }
    double sum = 0.0;
    for (int a = 0; a < m; a++) {
        double s = seconds[order[a]] > 0 ? seconds[order[a]] : 0.0;
        if (a > 0 && sum + s > POLICY_CHEAP_SHARE * total)
            break;
        sum += s;
        cheap[order[a]] = 1;
    }
    /* an item that depends on an expensive one runs with it */
    for (int changed = 1; changed;) {
        changed = 0;
        for (int i = 0; i < m; i++) {
            if (!cheap[i] || !depends_on[i] || !depends_on[i][0])
                continue;
            for (int k = 0; k < m; k++)
                if (strcmp(names[k], depends_on[i]) == 0 && !cheap[k]) {
                    cheap[i] = 0;
                    changed = 1;
                }
        }
    }
    int nc = 0;
    for (int i = 0; i < m; i++)
        nc += cheap[i];
    return nc;
}

static int cmp_window(const void *a, const void *b)
{
    const struct policy_window *x = a, *y = b;
    return (x->lo > y->lo) - (x->lo < y->lo);
}

int policy_densify(const struct policy_window *w, int n, int count, int margin, int budget, unsigned char *dense)
{
    for (int i = 0; i < count; i++)
        dense[i] = 0;
    if (n <= 0 || count <= 0)
        return 0;
    struct policy_window *m = malloc(sizeof *m * (size_t)n);
    double *peaksum = malloc(sizeof *peaksum * (size_t)n);
    if (!m || !peaksum) {
        free(m);
        free(peaksum);
        return 0;
    }
    for (int i = 0; i < n; i++) {
        m[i] = w[i];
        m[i].lo = w[i].lo - margin < 0 ? 0 : w[i].lo - margin;
        m[i].hi = w[i].hi + margin >= count ? count - 1 : w[i].hi + margin;
    }
    qsort(m, (size_t)n, sizeof *m, cmp_window);
    int k = 0;
    for (int i = 0; i < n; i++) {
        if (k > 0 && m[i].lo <= m[k - 1].hi) { /* overlapping: one window, weights add up */
            peaksum[k - 1] += m[i].weight * m[i].peak;
            m[k - 1].weight += m[i].weight;
            if (m[i].hi > m[k - 1].hi)
                m[k - 1].hi = m[i].hi;
            continue;
        }
        m[k] = m[i];
        peaksum[k] = m[i].weight * m[i].peak;
        k++;
    }
    for (int i = 0; i < k; i++)
        m[i].peak = m[i].weight > 0 ? (int)lround(peaksum[i] / m[i].weight) : (m[i].lo + m[i].hi) / 2;
    int chosen = 0;
    for (int round = 0; round < k && chosen < budget; round++) {
        int best = -1;
        for (int i = 0; i < k; i++)
            if (m[i].weight >= 0 && (best < 0 || m[i].weight > m[best].weight))
                best = i;
        if (best < 0)
            break;
        struct policy_window *x = &m[best];
        /* outward from the peak, within the window, while the budget lasts */
        for (int d = 0; chosen < budget && (x->peak - d >= x->lo || x->peak + d <= x->hi); d++) {
            const int at[2] = {x->peak - d, x->peak + d};
            for (int s = 0; s < (d ? 2 : 1) && chosen < budget; s++)
                if (at[s] >= x->lo && at[s] <= x->hi && !dense[at[s]]) {
                    dense[at[s]] = 1;
                    chosen++;
                }
        }
        x->weight = -1; /* done */
    }
    free(m);
    free(peaksum);
    return chosen;
}

/* ---- the run's costs ---- */

/* pythia-70m, when the run's model is not known yet */
static const struct cost_shape reference_shape = {6, 512, 8, 2048, 50304, 2048};

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = malloc(1 << 20);
    size_t n = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    if (buf)
        buf[n] = '\0';
    return buf;
}

/* The run's shape: runs.model (recorded by the forecast, when this
 * database has that column), a file:// run's first config.json, else the
 * reference.  1 when the run's own, 0 for the reference. */
static int run_shape(struct db *db, long long run_id, struct cost_shape *sh)
{
    char id[32];
    snprintf(id, sizeof id, "%lld", run_id);
    const char *p[1] = {id};
    PGresult *r = db_exec(db,
        "SELECT (to_jsonb(r) -> 'model')::text,"
        "   (SELECT url FROM checkpoints c WHERE c.run_id = r.id ORDER BY step LIMIT 1)"
        " FROM runs r WHERE r.id = $1", 1, p, NULL);
    int own = 0;
    *sh = reference_shape;
    if (r && PQntuples(r) == 1) {
        struct cost_shape s;
        if (!PQgetisnull(r, 0, 0) && strcmp(PQgetvalue(r, 0, 0), "null") != 0 &&
            cost_shape_from_json(&s, PQgetvalue(r, 0, 0), NULL) == 0) {
            *sh = s;
            own = 1;
        } else if (!PQgetisnull(r, 0, 1)) {
            char dir[4096], path[4200];
            if (source_local_path(PQgetvalue(r, 0, 1), dir, sizeof dir, NULL) == 0) {
                snprintf(path, sizeof path, "%s/config.json", dir);
                char *text = read_text(path);
                if (text && cost_shape_from_json(&s, text, NULL) == 0) {
                    *sh = s;
                    own = 1;
                }
                free(text);
            }
        }
    }
    PQclear(r);
    return own;
}

/* The settings that change the work, from the run's options. */
static void run_settings(const char *options, struct cost_run *out)
{
    *out = COST_RUN_DEFAULT;
    json_t *o = json_loads(options, 0, NULL);
    json_t *v = json_object_get(o, "eval_seqs");
    if (json_is_integer(v) && json_integer_value(v) > 0)
        out->eval_seqs = (int)json_integer_value(v);
    v = json_object_get(o, "ctx");
    if (json_is_integer(v) && json_integer_value(v) > 0)
        out->ctx = (int)json_integer_value(v);
    if (json_array_size(json_object_get(o, "sae_sites")) > 0)
        out->sae_sites = (int)json_array_size(json_object_get(o, "sae_sites"));
    out->probe_sets = (int)json_array_size(json_object_get(o, "probes"));
    json_decref(o);
}

/* Classify the run's items: cheap and expensive as text[] literals. */
static int classify_run(struct db *db, long long run_id, char **cheap_arr, char **exp_arr, int *own,
                        struct err *e)
{
    char id[32];
    snprintf(id, sizeof id, "%lld", run_id);
    const char *p[1] = {id};
    PGresult *r = db_exec(db,
        "SELECT it, coalesce((SELECT b.depends_on FROM battery_items b WHERE b.item = it"
        "   ORDER BY b.version DESC LIMIT 1), ''), r.options::text"
        " FROM runs r CROSS JOIN unnest(r.items) AS it WHERE r.id = $1", 1, p, e);
    if (!r)
        return ERR_DB;
    int n = PQntuples(r) < MAX_ITEMS ? PQntuples(r) : MAX_ITEMS;
    const char *names[MAX_ITEMS], *deps[MAX_ITEMS], *cheap_n[MAX_ITEMS], *exp_n[MAX_ITEMS];
    double secs[MAX_ITEMS];
    int cheap[MAX_ITEMS], nc = 0, ne = 0;
    struct cost_shape sh;
    struct cost_run set;
    *own = run_shape(db, run_id, &sh);
    run_settings(n > 0 ? PQgetvalue(r, 0, 2) : "{}", &set);
    for (int i = 0; i < n; i++) {
        names[i] = PQgetvalue(r, i, 0);
        deps[i] = PQgetvalue(r, i, 1);
        struct cost_item ci;
        secs[i] = cost_item(names[i], &sh, &set, 0, cost_reference_gflops(), &ci) == 0 ? ci.seconds : 0.0;
    }
    policy_classify(secs, names, deps, n, cheap);
    for (int i = 0; i < n; i++) {
        if (cheap[i])
            cheap_n[nc++] = names[i];
        else
            exp_n[ne++] = names[i];
    }
    *cheap_arr = db_text_array(cheap_n, nc);
    *exp_arr = db_text_array(exp_n, ne);
    PQclear(r);
    if (!*cheap_arr || !*exp_arr) {
        free(*cheap_arr);
        free(*exp_arr);
        return err_set(e, ERR_NOMEM, "policy", "out of memory");
    }
    return 0;
}

/* Write the adaptive plan's classification and the priorities (in the
 * caller's transaction). */
static int write_adaptive(struct db *db, long long run_id, struct err *e)
{
    char *cheap = NULL, *exp = NULL, id[32], every[16];
    int own = 0, rc = classify_run(db, run_id, &cheap, &exp, &own, e);
    if (rc < 0)
        return rc;
    snprintf(id, sizeof id, "%lld", run_id);
    snprintf(every, sizeof every, "%d", POLICY_SKELETON_EVERY);
    const char *p[5] = {id, cheap, exp, every, own ? "t" : "f"};
    const char *p1[1] = {id};
    if ((rc = db_run(db, "UPDATE runs SET policy = 'adaptive' WHERE id = $1", 1, p1, e)) == 0 &&
        (rc = db_run(db,
            "INSERT INTO run_plans (run_id, cheap_items, expensive_items, skeleton_every, shape_known)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (run_id) DO UPDATE SET cheap_items = $2,"
            "   expensive_items = $3, skeleton_every = $4, shape_known = $5", 5, p, e)) == 0)
        rc = db_run(db, SET_PRIORITIES, 1, p1, e);
    free(cheap);
    free(exp);
    return rc;
}

int policy_apply(struct db *db, const char *run, const char *policy, struct err *e)
{
    if (!policy_known(policy))
        return err_set(e, ERR_INVALID, policy ? policy : "", "a policy is order or adaptive");
    long long run_id;
    int found = db_run_id(db, run, &run_id, e);
    if (found < 0)
        return found;
    char id[32];
    snprintf(id, sizeof id, "%lld", run_id);
    const char *p1[1] = {id};
    int rc = db_run(db, "BEGIN", 0, NULL, e);
    if (rc < 0)
        return rc;
    if (strcmp(policy, "adaptive") == 0)
        rc = write_adaptive(db, run_id, e);
    else if ((rc = db_run(db, "UPDATE runs SET policy = 'order' WHERE id = $1", 1, p1, e)) == 0 &&
             (rc = db_run(db, "DELETE FROM run_plans WHERE run_id = $1", 1, p1, e)) == 0)
        rc = db_run(db, "UPDATE jobs SET priority = 0 WHERE state = 'queued' AND priority <> 0"
                        " AND checkpoint_id IN (SELECT id FROM checkpoints WHERE run_id = $1)", 1, p1, e);
    if (rc == 0 && (rc = db_run(db, "NOTIFY " QUEUE_CHANNEL, 0, NULL, e)) == 0 &&
        (rc = db_run(db, "COMMIT", 0, NULL, e)) == 0)
        return 0;
    db_rollback(db);
    return rc;
}

/* ---- planning the dense phase ---- */

#define STATE_CLASSIFY 3 /* nothing finished yet: the items may be classified again */

/* Where the run stands: 0 (not adaptive, or planned), POLICY_FIRST_PASS
 * (its first pass goes on), STATE_CLASSIFY (no shape known and nothing
 * finished), POLICY_PLANNED (to plan now), or a negative code.  locked:
 * its run_plans row is locked for the transaction (one node plans). */
static int plan_state(struct db *db, const char *id, int locked, struct err *e)
{
    const char *p[1] = {id};
#define PLAN_STATE_SQL                                                                                      \
    "SELECT EXISTS (SELECT 1 FROM jobs j JOIN checkpoints c ON c.id = j.checkpoint_id"                       \
    "               WHERE c.run_id = p.run_id AND j.priority = 0 AND j.state IN ('queued', 'running')),"   \
    "   p.shape_known OR EXISTS (SELECT 1 FROM jobs j JOIN checkpoints c ON c.id = j.checkpoint_id"        \
    "                            WHERE c.run_id = p.run_id AND j.state IN ('done', 'dead'))"               \
    " FROM run_plans p JOIN runs x ON x.id = p.run_id"                                                      \
    " WHERE p.run_id = $1 AND p.planned_at IS NULL AND x.policy = 'adaptive'"
    PGresult *r = db_exec(db, locked ? PLAN_STATE_SQL " FOR UPDATE OF p" : PLAN_STATE_SQL, 1, p, e);
#undef PLAN_STATE_SQL
    if (!r)
        return ERR_DB;
    int st = PQntuples(r) != 1                        ? 0
             : strcmp(PQgetvalue(r, 0, 1), "t") != 0 ? STATE_CLASSIFY
             : strcmp(PQgetvalue(r, 0, 0), "t") == 0 ? POLICY_FIRST_PASS
                                                      : POLICY_PLANNED;
    PQclear(r);
    return st;
}

int policy_plan(struct db *db, long long run_id, policy_detect_fn detect, struct err *e)
{
    char id[32];
    snprintf(id, sizeof id, "%lld", run_id);
    const char *p[1] = {id};
    PGresult *r = NULL, *tr = NULL, *ck = NULL;
    struct policy_window *w = NULL;
    unsigned char *dense = NULL;
    char *starts = NULL, *ends = NULL;
    int rc = plan_state(db, id, 0, e), planned = 0;
    if (rc <= 0 || rc == POLICY_FIRST_PASS)
        return rc;
    /* the first pass is over: its series, whose detection waited for it,
     * are examined before the plan reads their transitions (a race with
     * another node doing the same costs a second pass, nothing else) */
    if (rc == POLICY_PLANNED && detect && (rc = detect(db, run_id, e)) < 0)
        return rc;
    if ((rc = db_run(db, "BEGIN", 0, NULL, e)) < 0)
        return rc;
    /* again, locked: one node plans */
    if ((rc = plan_state(db, id, 1, e)) <= 0)
        goto rollback; /* not adaptive, or planned (0): nothing to do; or a failure */
    if (rc == STATE_CLASSIFY) { /* a shape may have become known */
        struct cost_shape sh;
        if (run_shape(db, run_id, &sh) && (rc = write_adaptive(db, run_id, e)) < 0)
            goto rollback;
        if ((rc = db_run(db, "COMMIT", 0, NULL, e)) < 0)
            goto rollback;
        return 0;
    }
    if (rc == POLICY_FIRST_PASS)
        goto rollback; /* the first pass goes on */
    ck = db_exec(db, "SELECT step FROM checkpoints WHERE run_id = $1 ORDER BY step", 1, p, e);
    /* the cheap items' series, each by its strongest transition (not a
     * spike: a spike comes back), of the newest method written: level-v2
     * splits a series' change into stages, and the windows of the stages
     * of slowly drifting series chain into one window over the whole run */
    tr = ck ? db_exec(db,
        "SELECT DISTINCT ON (t.metric_id, t.layer, t.head, t.idx) t.peak_step, t.peak_step, t.peak_step, t.score"
        " FROM transitions t JOIN metrics mt ON mt.id = t.metric_id"
        " WHERE t.run_id = $1 AND mt.item <> 'integrity' AND t.kind = 'transition'"
        "   AND mt.item = ANY ((SELECT cheap_items FROM run_plans WHERE run_id = $1)::text[])"
        "   AND t.method = (SELECT method FROM transitions WHERE run_id = $1 ORDER BY detected_at DESC LIMIT 1)"
        " ORDER BY t.metric_id, t.layer, t.head, t.idx, t.score DESC, t.peak_step",
        1, p, e) : NULL;
    if (!ck || !tr) {
        rc = ERR_DB;
        goto rollback;
    }
    int count = PQntuples(ck), nt = PQntuples(tr);
    w = calloc((size_t)nt + 1, sizeof *w);
    dense = calloc((size_t)count + 1, 1);
    starts = malloc((size_t)count * 24 + 4);
    ends = malloc((size_t)count * 24 + 4);
    if (!w || !dense || !starts || !ends) {
        rc = err_set(e, ERR_NOMEM, "policy", "out of memory");
        goto rollback;
    }
    for (int i = 0; i < nt; i++) {
        int at[3];
        for (int k = 0; k < 3; k++) {
            long long s = atoll(PQgetvalue(tr, i, k));
            int lo = 0, hi = count;
            while (lo < hi) {
                int mid = (lo + hi) / 2;
                if (atoll(PQgetvalue(ck, mid, 0)) < s)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            at[k] = lo < count ? lo : count - 1;
        }
        double score = atof(PQgetvalue(tr, i, 3));
        w[i] = (struct policy_window){at[0], at[2], score > 0 && isfinite(score) ? score : 1.0, at[1]};
    }
    int budget = (int)ceil(POLICY_DENSE_SHARE * count);
    planned = policy_densify(w, nt, count, POLICY_WINDOW_MARGIN, budget, dense);
    /* the chosen checkpoints as ranges of steps */
    size_t os = 0, oe = 0;
    os += (size_t)sprintf(starts + os, "{");
    oe += (size_t)sprintf(ends + oe, "{");
    for (int i = 0, first = 1; i < count; i++) {
        if (!dense[i] || (i > 0 && dense[i - 1]))
            continue;
        int j = i;
        while (j + 1 < count && dense[j + 1])
            j++;
        os += (size_t)sprintf(starts + os, "%s%s", first ? "" : ",", PQgetvalue(ck, i, 0));
        oe += (size_t)sprintf(ends + oe, "%s%s", first ? "" : ",", PQgetvalue(ck, j, 0));
        first = 0;
    }
    sprintf(starts + os, "}");
    sprintf(ends + oe, "}");
    const char *p3[3] = {id, starts, ends};
    if ((rc = db_run(db, "UPDATE run_plans SET window_starts = $2, window_ends = $3, planned_at = now()"
                         " WHERE run_id = $1", 3, p3, e)) < 0 ||
        (rc = db_run(db, SET_PRIORITIES, 1, p, e)) < 0 || (rc = db_run(db, "NOTIFY " QUEUE_CHANNEL, 0, NULL, e)) < 0 ||
        (rc = db_run(db, "COMMIT", 0, NULL, e)) < 0)
        goto rollback;
    log_info("adaptive run planned: expensive items next around the cheap items' transitions",
             "run_id=%lld transitions=%d densified=%d of=%d windows=%s..%s", run_id, nt, planned, count, starts, ends);
    rc = POLICY_PLANNED;
    goto out;
rollback:
    db_rollback(db);
out:
    PQclear(r);
    PQclear(tr);
    PQclear(ck);
    free(w);
    free(dense);
    free(starts);
    free(ends);
    return rc;
}

int policy_after_ingest(struct db *db, const struct claim *c, policy_detect_fn detect)
{
    struct err e;
    int rc = policy_plan(db, c->run_id, detect, &e);
    if (rc < 0)
        log_err("cannot plan the adaptive run's next phase; the tick tries again", &e);
    /* examined now unless the first pass goes on or the planner examined
     * the whole run; after a failure too: the rows are stored */
    return policy_detect_now(rc);
}

void policy_duty(struct db *db, policy_detect_fn detect)
{
    struct err e;
    PGresult *r = db_exec(db, "SELECT run_id FROM run_plans WHERE planned_at IS NULL", 0, NULL, &e);
    if (!r) {
        log_err("adaptive runs: cannot look for plans to make", &e);
        return;
    }
    for (int i = 0; i < PQntuples(r); i++)
        if (policy_plan(db, atoll(PQgetvalue(r, i, 0)), detect, &e) < 0)
            log_err("cannot plan the adaptive run's next phase", &e);
    PQclear(r);
}

int policy_detect_now(int plan_rc)
{
    return plan_rc != POLICY_PLANNED && plan_rc != POLICY_FIRST_PASS;
}

const char *policy_phase_name(const struct policy_counts *k)
{
    return k->cheap_left > 0 || k->skeleton_left > 0 ? "first pass"
           : k->dense_left > 0                       ? "dense"
           : k->rest_left > 0                        ? "rest"
                                                     : "done";
}

void policy_phase_format(char *out, size_t n, const struct policy_counts *k, const char *cheap, const char *expensive,
                         int planned, const char *windows)
{
    char dense[512];
    if (!planned)
        snprintf(dense, sizeof dense, "planned when the first pass ends");
    else if (!windows || !windows[0])
        snprintf(dense, sizeof dense, "none (no transition in the cheap items)");
    else
        snprintf(dense, sizeof dense, "%d checkpoints in %s (%d left)", k->dense, windows, k->dense_left);
    snprintf(out, n,
             "policy adaptive, phase %s: cheap [%s] on %d checkpoints (%d left), with skeleton [%s] on %d of them "
             "(%d left); dense %s; rest %d (%d left)",
             policy_phase_name(k), cheap, k->cheap, k->cheap_left, expensive, k->skeleton, k->skeleton_left, dense,
             k->rest, k->rest_left);
}

int policy_phase(struct db *db, long long run_id, char *out, size_t n, struct err *e)
{
    out[0] = '\0';
    char id[32];
    snprintf(id, sizeof id, "%lld", run_id);
    const char *p[1] = {id};
    /* checkpoints with jobs of each kind, and of them those with jobs left:
     * cheap items, the skeleton's expensive ones (first pass), dense, rest */
    PGresult *r = db_exec(db,
        "SELECT array_to_string(p.cheap_items, ','), array_to_string(p.expensive_items, ','), p.planned_at IS NOT NULL,"
        "   (SELECT string_agg(s || '..' || e, ', ') FROM unnest(p.window_starts, p.window_ends) AS w(s, e)),"
        "   (SELECT concat_ws(' ',"
        "      count(DISTINCT j.checkpoint_id) FILTER (WHERE j.item = ANY (p.cheap_items)),"
        "      count(DISTINCT j.checkpoint_id) FILTER (WHERE j.item = ANY (p.cheap_items) AND j.state IN ('queued', 'running')),"
        "      count(DISTINCT j.checkpoint_id) FILTER (WHERE j.priority = 0 AND NOT j.item = ANY (p.cheap_items)),"
        "      count(DISTINCT j.checkpoint_id) FILTER (WHERE j.priority = 0 AND NOT j.item = ANY (p.cheap_items)"
        "                                            AND j.state IN ('queued', 'running')),"
        "      count(DISTINCT j.checkpoint_id) FILTER (WHERE j.priority = 1),"
        "      count(DISTINCT j.checkpoint_id) FILTER (WHERE j.priority = 1 AND j.state IN ('queued', 'running')),"
        "      count(DISTINCT j.checkpoint_id) FILTER (WHERE j.priority >= 2),"
        "      count(DISTINCT j.checkpoint_id) FILTER (WHERE j.priority >= 2 AND j.state IN ('queued', 'running')))"
        "    FROM jobs j JOIN checkpoints c ON c.id = j.checkpoint_id WHERE c.run_id = p.run_id)"
        " FROM run_plans p WHERE p.run_id = $1", 1, p, e);
    if (!r)
        return ERR_DB;
    struct policy_counts k;
    if (PQntuples(r) == 1 &&
        sscanf(PQgetvalue(r, 0, 4), "%d %d %d %d %d %d %d %d", &k.cheap, &k.cheap_left, &k.skeleton, &k.skeleton_left,
               &k.dense, &k.dense_left, &k.rest, &k.rest_left) == 8)
        policy_phase_format(out, n, &k, PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1), strcmp(PQgetvalue(r, 0, 2), "t") == 0,
                            PQgetisnull(r, 0, 3) ? NULL : PQgetvalue(r, 0, 3));
    PQclear(r);
    return 0;
}
