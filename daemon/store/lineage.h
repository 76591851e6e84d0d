/*
 * lineage.h - SAE feature lineages: the `sae_match` item's rows of one step
 * turned into `sae_features` rows, and `feature_lineages` recomputed.
 *
 * A lineage is a chain of features linked by sae_match's mutual nearest
 * neighbours: feature f at step s continues the lineage of feature
 * matched_prev(f) at the step it was matched against (prev_step); a
 * feature with no match starts a lineage (it is born at s).  Each
 * sae_features row carries its lineage's root (root_step, root_feature),
 * copied from its matched previous row when that row is there, else itself.
 *
 * lineage_store runs inside ingest's transaction, after the rows of a claim
 * containing sae_match were COPYed, so the features and the lineages appear
 * with the measurements or not at all:
 *   1. lock the run (pg_advisory_xact_lock(LINEAGE_LOCK, run_id)): two
 *      nodes storing steps of one run take turns;
 *   2. replace the step's sae_features rows: sae_match's matched_prev,
 *      match_similarity, best_prev and split_parent of that step (version
 *      of the job), joined with the `sae` item's feature_density and
 *      feature_mean_activation of the same step and site (its highest
 *      version; stored in this transaction or an earlier one; NULL when
 *      absent), the root taken from the matched previous row;
 *   3. when later steps of the run are already stored (this step landed
 *      late), carry the roots forward through them, step by step;
 *   4. for every layer of the step, the run's feature_lineages rows:
 *      birth (root) step, last step and the feature there, length in
 *      checkpoints, death step = the first stored step of that layer after
 *      the last one (NULL while it reaches the latest), splits = rows
 *      whose split_parent is one of the lineage's features, split_of = the
 *      lineage of a split child's parent.  When the step is new and the
 *      layer's latest (steps landing in order), the table is extended by
 *      its rows alone; otherwise (a step landing late, a step stored
 *      again) it is deleted and recomputed from every row of the layer
 *      (lineage_refresh).  Both give the same table.
 *
 *     if (lineage_store(db, run_id, step, 1, prev_step, &e) < 0) ... // roll back
 */
#ifndef CKPTD_LINEAGE_H
#define CKPTD_LINEAGE_H

#include "common/err.h"

#define LINEAGE_ITEM "sae_match" /* the item whose rows are the links */
#define LINEAGE_SAE_ITEM "sae"   /* the item whose rows give density and mean activation */
#define LINEAGE_LOCK 8316        /* first key of the run's advisory lock */

struct db;

/* Steps 1-4 above for (run_id, step), from the rows of sae_match `version`
 * matched against prev_step (-1: no previous dictionary).  Must run inside
 * the caller's transaction; on error the caller rolls it back (ERR_DB with
 * the server's message). */
int lineage_store(struct db *db, long long run_id, long long step, int version,
                  long long prev_step, struct err *e) CK_WUR;

/* Step 4 alone for one run and layer (also inside a transaction). */
int lineage_refresh(struct db *db, long long run_id, int layer, struct err *e) CK_WUR;

#endif
