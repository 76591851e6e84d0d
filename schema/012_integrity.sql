-- 012_integrity: checkpoints checked against their run's trajectory before
-- their measurements are believed (daemon/detect/integrity.h).
--
-- The `integrity` item writes a count sketch of each checkpoint's weights;
-- the daemon compares the sketches of a run's checkpoints (distances and
-- cosines between sketches stand for those between the weights) and the
-- sha256s of their files, and marks a checkpoint that breaks the run's
-- trajectory as suspect, with a reason:
--   mislabel         its weights are closer to another, non-adjacent step's
--                    than to its neighbours' (or equal to them), and that
--                    step fits its own place better
--   init_jump        a stretch of checkpoints whose distance from init
--                    jumps away from the trend of its neighbours and back
--   off_trajectory   such a stretch whose distance from init stays in line
--                    while the weights leave the path and come back
--   step0_is_final   the first checkpoint holds the last one's weights
--   shard_duplicate  a weight file (shard) equals another step's, while the
--                    same file differs at its neighbours, and the other
--                    step fits its place better
-- Suspect checkpoints are left out of `series` and of transition detection,
-- like duplicates.  Of checkpoints with equal weights, the copy that is not
-- suspect is the canonical one (duplicate_of points to it): the one that
-- fits the trajectory, not simply the earliest.

ALTER TABLE checkpoints
    ADD COLUMN suspect text CHECK (suspect IN ('mislabel', 'init_jump', 'off_trajectory',
                                               'step0_is_final', 'shard_duplicate')),
    ADD COLUMN suspect_step bigint,       -- the step it resembles or shares a file with, if any
    ADD COLUMN suspect_detail text;       -- the numbers behind the verdict, for people

-- Per checkpoint, the signals from its sketch (NULL where a neighbour has
-- none): distance and cosine to the previous checkpoint of the run that is
-- neither a duplicate nor suspect, and to the first one (step 0 when the
-- run has it); the nearest other checkpoint; the norm of the sketch (about
-- the norm of the weights).  Written by the daemon with each judgement.
CREATE TABLE checkpoint_integrity (
    checkpoint_id  bigint PRIMARY KEY REFERENCES checkpoints ON DELETE CASCADE,
    prev_step      bigint,
    dist_prev      double precision,
    cos_prev       double precision,
    init_step      bigint,
    dist_init      double precision,
    cos_init       double precision,
    nearest_step   bigint,
    dist_nearest   double precision,
    sketch_norm    double precision,
    judged_at      timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE VIEW series AS
SELECT r.name   AS run,
       m.step,
       mt.item,
       mt.version,
       mt.name  AS metric,
       m.layer,
       m.head,
       m.idx,
       m.value,
       mt.unit
FROM measurements m
JOIN runs r ON r.id = m.run_id
JOIN metrics mt ON mt.id = m.metric_id
JOIN checkpoints c ON c.run_id = m.run_id AND c.step = m.step
WHERE c.duplicate_of IS NULL AND c.suspect IS NULL;

CREATE OR REPLACE VIEW sae_feature_series AS
SELECT r.name AS run, f.layer, f.step, f.feature, f.density, f.mean_activation, f.prev_step,
       f.matched_prev, f.similarity, f.split_parent, l.lineage
FROM sae_features f
JOIN runs r ON r.id = f.run_id
JOIN checkpoints c ON c.run_id = f.run_id AND c.step = f.step
LEFT JOIN feature_lineages l ON l.run_id = f.run_id AND l.layer = f.layer
    AND l.root_step = f.root_step AND l.root_feature = f.root_feature
WHERE c.duplicate_of IS NULL AND c.suspect IS NULL;

CREATE OR REPLACE VIEW sae_fixed_feature_series AS
SELECT r.name AS run, mt.version, m.head::int AS dictionary, m.layer::int AS layer, m.step,
       m.idx AS feature,
       max(m.value) FILTER (WHERE mt.name = 'feature_density') AS density,
       max(m.value) FILTER (WHERE mt.name = 'feature_mean_activation') AS mean_activation
FROM measurements m
JOIN metrics mt ON mt.id = m.metric_id
JOIN runs r ON r.id = m.run_id
JOIN checkpoints c ON c.run_id = m.run_id AND c.step = m.step
WHERE mt.item = 'sae_fixed' AND mt.name IN ('feature_density', 'feature_mean_activation')
  AND c.duplicate_of IS NULL AND c.suspect IS NULL
GROUP BY r.name, mt.version, m.head, m.layer, m.step, m.idx;

CREATE OR REPLACE VIEW sae_fixed_dictionary_series AS
SELECT r.name AS run, mt.version, m.head::int AS dictionary, m.layer::int AS layer, m.step,
       max(m.value) FILTER (WHERE mt.name = 'fvu') AS fvu,
       max(m.value) FILTER (WHERE mt.name = 'l0') AS l0,
       max(m.value) FILTER (WHERE mt.name = 'inactive_fraction') AS inactive_fraction,
       max(m.value) FILTER (WHERE mt.name = 'loss_recovered') AS loss_recovered,
       max(m.value) FILTER (WHERE mt.name = 'ce_clean') AS ce_clean,
       max(m.value) FILTER (WHERE mt.name = 'ce_spliced') AS ce_spliced,
       max(m.value) FILTER (WHERE mt.name = 'kl_spliced') AS kl_spliced
FROM measurements m
JOIN metrics mt ON mt.id = m.metric_id
JOIN runs r ON r.id = m.run_id
JOIN checkpoints c ON c.run_id = m.run_id AND c.step = m.step
WHERE mt.item = 'sae_fixed' AND m.idx = -1 AND c.duplicate_of IS NULL AND c.suspect IS NULL
GROUP BY r.name, mt.version, m.head, m.layer, m.step;

-- Suspect checkpoints with their reason, for people.
CREATE VIEW suspect_checkpoints AS
SELECT r.name AS run, c.step, c.suspect AS reason, c.suspect_step, c.suspect_detail,
       o.step AS duplicate_of_step
FROM checkpoints c
JOIN runs r ON r.id = c.run_id
LEFT JOIN checkpoints o ON o.id = c.duplicate_of
WHERE c.suspect IS NOT NULL;

-- Every checkpoint's integrity signals and verdict, named.
CREATE VIEW checkpoint_signals AS
SELECT r.name AS run, c.step, i.prev_step, i.dist_prev, i.cos_prev, i.init_step, i.dist_init,
       i.cos_init, i.nearest_step, i.dist_nearest, i.sketch_norm, o.step AS duplicate_of_step,
       c.suspect, c.suspect_step, c.suspect_detail
FROM checkpoints c
JOIN runs r ON r.id = c.run_id
LEFT JOIN checkpoint_integrity i ON i.checkpoint_id = c.id
LEFT JOIN checkpoints o ON o.id = c.duplicate_of;

GRANT SELECT ON checkpoint_integrity, suspect_checkpoints, checkpoint_signals TO ckptd_reader;
