#include "daemon/store/lineage.h"

#include <stdio.h>
#include <stdlib.h>

#include "common/log.h"
#include "daemon/base/db.h"

#define STR_(x) #x
#define STR(x) STR_(x)

int lineage_refresh(struct db *db, long long run_id, int layer, struct err *e)
{
    char run[32], lay[16];
    snprintf(run, sizeof run, "%lld", run_id);
    snprintf(lay, sizeof lay, "%d", layer);
    const char *p[2] = {run, lay};
    int rc = db_run(db, "DELETE FROM feature_lineages WHERE run_id = $1 AND layer = $2", 2, p, e);
    if (rc < 0)
        return rc;
    /* One pass over the layer's rows groups them by root.  The last step
     * and the feature there come from one max(): step * 2^31 + feature
     * orders by step, and a lineage has one row per step (steps < 2^32
     * fit in a bigint next to a feature index < 2^31). */
    return db_run(db,
        "WITH RECURSIVE steps0 AS ("  /* the layer's steps: one index probe each */
        "  SELECT min(step) AS step FROM sae_features WHERE run_id = $1 AND layer = $2"
        "  UNION ALL SELECT (SELECT min(f.step) FROM sae_features f"
        "    WHERE f.run_id = $1 AND f.layer = $2 AND f.step > steps0.step)"
        "  FROM steps0 WHERE steps0.step IS NOT NULL),"
        " steps AS (SELECT step, lead(step) OVER (ORDER BY step) AS next"
        "  FROM steps0 WHERE step IS NOT NULL),"
        " g AS ("
        "  SELECT root_step, root_feature, count(*) AS length,"
        "    max(step * 2147483648 + feature) AS last_key"
        "  FROM sae_features WHERE run_id = $1 AND layer = $2"
        "  GROUP BY root_step, root_feature),"
        " n AS (SELECT g.*, last_key / 2147483648 AS last_step,"
        "    row_number() OVER (ORDER BY root_step, root_feature) AS lineage FROM g),"
        " child AS (SELECT c.step, c.feature, p.root_step, p.root_feature"
        "  FROM sae_features c JOIN sae_features p ON p.run_id = c.run_id AND p.layer = c.layer"
        "    AND p.step = c.prev_step AND p.feature = c.split_parent"
        "  WHERE c.run_id = $1 AND c.layer = $2 AND c.split_parent IS NOT NULL),"
        " sp AS (SELECT root_step, root_feature, count(*) AS splits FROM child GROUP BY 1, 2)"
        " INSERT INTO feature_lineages (run_id, layer, lineage, root_step, root_feature, birth_step,"
        "   death_step, last_step, length, splits, last_feature, split_of)"
        " SELECT $1, $2, n.lineage, n.root_step, n.root_feature, n.root_step, st.next, n.last_step,"
        "   n.length, coalesce(sp.splits, 0), n.last_key % 2147483648, pn.lineage"
        " FROM n JOIN steps st ON st.step = n.last_step"
        " LEFT JOIN sp ON sp.root_step = n.root_step AND sp.root_feature = n.root_feature"
        " LEFT JOIN child ch ON ch.step = n.root_step AND ch.feature = n.root_feature"
        " LEFT JOIN n pn ON pn.root_step = ch.root_step AND pn.root_feature = ch.root_feature",
        2, p, e);
}

/* feature_lineages of (run, layer) extended by step `step`, the layer's
 * new latest step, in place of a recompute: the lineages its rows continue
 * get it as their last step, those alive before and not continued die at
 * it, its new roots are appended (in feature order, after every earlier
 * root: the numbering a recompute gives), and the parents of its split
 * children count them.  The same table as lineage_refresh, touching only
 * the step's rows (test_daemon_deps compares the two). */
static int lineage_extend(struct db *db, const char *run, const char *layer, const char *step,
                          struct err *e)
{
    /* Each statement starts from the step's rows (a range of the primary
     * key), materialised: left to itself the planner may walk every
     * lineage's rows through the root index instead. */
#define STEP_ROWS \
    "WITH f AS MATERIALIZED (SELECT feature, prev_step, split_parent, root_step, root_feature" \
    "  FROM sae_features WHERE run_id = $1 AND layer = $2 AND step = $3) "
    const char *p[3] = {run, layer, step};
    int rc;
    if ((rc = db_run(db,
            STEP_ROWS
            "UPDATE feature_lineages l SET last_step = $3, last_feature = f.feature,"
            "   length = l.length + 1, death_step = NULL"
            " FROM f WHERE NOT (f.root_step = $3 AND f.root_feature = f.feature)"
            "   AND l.run_id = $1 AND l.layer = $2 AND l.root_step = f.root_step"
            "   AND l.root_feature = f.root_feature", 3, p, e)) < 0 ||
        (rc = db_run(db,
            "UPDATE feature_lineages SET death_step = $3 WHERE run_id = $1 AND layer = $2"
            "   AND death_step IS NULL AND last_step < $3", 3, p, e)) < 0 ||
        (rc = db_run(db,
            STEP_ROWS
            "INSERT INTO feature_lineages (run_id, layer, lineage, root_step, root_feature, birth_step,"
            "   death_step, last_step, length, splits, last_feature, split_of)"
            " SELECT $1, $2, coalesce((SELECT max(lineage) FROM feature_lineages"
            "     WHERE run_id = $1 AND layer = $2), 0) + row_number() OVER (ORDER BY f.feature),"
            "   $3, f.feature, $3, NULL, $3, 1, 0, f.feature,"
            "   (SELECT pl.lineage FROM sae_features p JOIN feature_lineages pl ON pl.run_id = $1"
            "      AND pl.layer = $2 AND pl.root_step = p.root_step AND pl.root_feature = p.root_feature"
            "    WHERE p.run_id = $1 AND p.layer = $2 AND p.step = f.prev_step"
            "      AND p.feature = f.split_parent)"
            " FROM f WHERE f.root_step = $3 AND f.root_feature = f.feature", 3, p, e)) < 0)
        return rc;
    return db_run(db,
        STEP_ROWS
        "UPDATE feature_lineages l SET splits = l.splits + x.n"
        " FROM (SELECT p.root_step, p.root_feature, count(*) AS n"
        "   FROM f JOIN sae_features p ON p.run_id = $1 AND p.layer = $2"
        "     AND p.step = f.prev_step AND p.feature = f.split_parent"
        "   WHERE f.split_parent IS NOT NULL GROUP BY 1, 2) x"
        " WHERE l.run_id = $1 AND l.layer = $2 AND l.root_step = x.root_step"
        "   AND l.root_feature = x.root_feature", 3, p, e);
#undef STEP_ROWS
}

/* The run's layers in sae_features, as CTE `ls` (one index probe per
 * layer: a run has a few, and every query by step goes through the primary
 * key's (run_id, layer, step) prefix with them). */
#define RUN_LAYERS \
    "WITH RECURSIVE ls AS (SELECT min(layer) AS layer FROM sae_features WHERE run_id = $1" \
    "  UNION ALL SELECT (SELECT min(s.layer) FROM sae_features s" \
    "    WHERE s.run_id = $1 AND s.layer > ls.layer) FROM ls WHERE ls.layer IS NOT NULL) "

/* Carry roots from step `from` forward through every later stored step of
 * the run's layer: each row takes its matched previous row's root, or its
 * own.  *later gets whether there was any. */
static int propagate(struct db *db, const char *run, const char *layer, const char *from,
                     int *later, struct err *e)
{
    const char *p[3] = {run, layer, from};
    PGresult *r = db_exec(db,
        "WITH RECURSIVE st AS ("
        "  SELECT min(step) AS step FROM sae_features WHERE run_id = $1 AND layer = $2 AND step > $3"
        "  UNION ALL SELECT (SELECT min(f.step) FROM sae_features f"
        "    WHERE f.run_id = $1 AND f.layer = $2 AND f.step > st.step)"
        "  FROM st WHERE st.step IS NOT NULL)"
        " SELECT step FROM st WHERE step IS NOT NULL ORDER BY step",
        3, p, e);
    if (!r)
        return ERR_DB;
    int rc = 0, n = PQntuples(r);
    for (int i = 0; i < n && rc == 0; i++) {
        const char *q[3] = {run, layer, PQgetvalue(r, i, 0)};
        rc = db_run(db,
            "UPDATE sae_features c SET root_step = x.rs, root_feature = x.rf"
            " FROM (SELECT c2.feature, coalesce(p.root_step, c2.step) AS rs,"
            "         coalesce(p.root_feature, c2.feature) AS rf"
            "       FROM sae_features c2 LEFT JOIN sae_features p ON p.run_id = $1"
            "         AND p.layer = $2 AND p.step = c2.prev_step AND p.feature = c2.matched_prev"
            "       WHERE c2.run_id = $1 AND c2.layer = $2 AND c2.step = $3) x"
            " WHERE c.run_id = $1 AND c.layer = $2 AND c.step = $3 AND c.feature = x.feature"
            "   AND (c.root_step, c.root_feature) IS DISTINCT FROM (x.rs, x.rf)",
            3, q, e);
    }
    if (n > 0)
        log_info("lineage roots carried forward", "layer=%s from_step=%s later_steps=%d", layer,
                 from, n);
    *later = n > 0;
    PQclear(r);
    return rc;
}

int lineage_store(struct db *db, long long run_id, long long step, int version,
                  long long prev_step, struct err *e)
{
    char run[32], st[32], ver[16], prev[32];
    snprintf(run, sizeof run, "%lld", run_id);
    snprintf(st, sizeof st, "%lld", step);
    snprintf(ver, sizeof ver, "%d", version);
    snprintf(prev, sizeof prev, "%lld", prev_step);
    const char *p[4] = {run, st, ver, prev_step >= 0 ? prev : NULL};
    int rc;
    if ((rc = db_run(db, "SELECT pg_advisory_xact_lock(" STR(LINEAGE_LOCK) ", $1::int)", 1, p, e)) < 0)
        return rc;
    PGresult *r = db_exec(db, RUN_LAYERS "DELETE FROM sae_features WHERE run_id = $1 AND step = $2"
                          " AND layer IN (SELECT layer FROM ls)", 2, p, e);
    if (!r)
        return ERR_DB;
    int replaced = atoi(PQcmdTuples(r)) > 0;
    PQclear(r);
    /* the step's rows of both items, one row per (layer, feature) */
    rc = db_run(db,
        "WITH x AS ("
        "  SELECT m.layer, m.idx, mt.item, mt.version, mt.name, m.value"
        "  FROM measurements m JOIN metrics mt ON mt.id = m.metric_id"
        "  WHERE m.run_id = $1 AND m.step = $2 AND m.head = -1 AND m.idx >= 0"
        "    AND ((mt.item = '" LINEAGE_ITEM "' AND mt.version = $3::int)"
        "      OR (mt.item = '" LINEAGE_SAE_ITEM "'"
        "          AND mt.name IN ('feature_density', 'feature_mean_activation')))),"
        " mt AS (SELECT layer, idx,"
        "    nullif(max(value) FILTER (WHERE name = 'matched_prev'), -1)::int AS mp,"
        "    max(value) FILTER (WHERE name = 'match_similarity') AS sim,"
        "    nullif(max(value) FILTER (WHERE name = 'best_prev'), -1)::int AS bp,"
        "    nullif(max(value) FILTER (WHERE name = 'split_parent'), -1)::int AS sp"
        "  FROM x WHERE item = '" LINEAGE_ITEM "' GROUP BY layer, idx),"
        " sa AS (SELECT DISTINCT ON (layer, idx) layer, idx,"
        "    max(value) FILTER (WHERE name = 'feature_density') AS density,"
        "    max(value) FILTER (WHERE name = 'feature_mean_activation') AS mean_act"
        "  FROM x WHERE item = '" LINEAGE_SAE_ITEM "' GROUP BY layer, idx, version"
        "  ORDER BY layer, idx, version DESC)"
        " INSERT INTO sae_features (run_id, layer, step, feature, density, mean_activation,"
        "   prev_step, matched_prev, similarity, best_prev, split_parent, root_step, root_feature)"
        " SELECT $1, mt.layer, $2, mt.idx, sa.density, sa.mean_act, $4::bigint,"
        "   CASE WHEN $4::bigint IS NOT NULL THEN mt.mp END,"
        "   CASE WHEN $4::bigint IS NOT NULL AND mt.sim <> 'NaN' THEN mt.sim END,"
        "   CASE WHEN $4::bigint IS NOT NULL THEN mt.bp END,"
        "   CASE WHEN $4::bigint IS NOT NULL THEN mt.sp END,"
        "   coalesce(pr.root_step, $2), coalesce(pr.root_feature, mt.idx)"
        " FROM mt LEFT JOIN sa ON sa.layer = mt.layer AND sa.idx = mt.idx"
        " LEFT JOIN sae_features pr ON pr.run_id = $1 AND pr.layer = mt.layer"
        "   AND pr.step = $4::bigint AND pr.feature = mt.mp",
        4, p, e);
    if (rc < 0)
        return rc;
    /* per layer of the step: roots carried into later steps; then, for a
     * new step that is the layer's latest, the lineages extended, else
     * recomputed */
    r = db_exec(db, RUN_LAYERS "SELECT layer FROM ls WHERE layer IS NOT NULL AND EXISTS"
                " (SELECT 1 FROM sae_features f WHERE f.run_id = $1 AND f.layer = ls.layer"
                "  AND f.step = $2)", 2, p, e);
    if (!r)
        return ERR_DB;
    for (int i = 0; i < PQntuples(r) && rc == 0; i++) {
        int later = 0;
        const char *layer = PQgetvalue(r, i, 0);
        if ((rc = propagate(db, run, layer, st, &later, e)) < 0)
            break;
        if (!replaced && !later)
            rc = lineage_extend(db, run, layer, st, e);
        else
            rc = lineage_refresh(db, run_id, atoi(layer), e);
    }
    if (PQntuples(r) == 0)
        log_warn("sae_match rows without features", "run_id=%lld step=%lld", run_id, step);
    PQclear(r);
    return rc;
}
