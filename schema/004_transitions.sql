-- 004_transitions: transitions with names, and ranked across runs.
--
-- The daemon replaces a series' transitions (method ramp-v1, see
-- daemon/detect/transitions.h) each time a checkpoint of its run lands; these
-- views are for reading them.

-- Listing a run's transitions by peak step (ckptd transitions RUN).
CREATE INDEX transitions_run_peak ON transitions (run_id, peak_step);

-- One row per transition, named.  unit is the metric's: magnitude is in it.
CREATE VIEW transitions_named AS
SELECT t.id,
       r.name  AS run,
       mt.item,
       mt.version,
       mt.name AS metric,
       t.layer,
       t.head,
       t.idx,
       t.start_step,
       t.peak_step,
       t.end_step,
       t.magnitude,
       mt.unit,
       t.score,
       t.method,
       t.detected_at
FROM transitions t
JOIN runs r ON r.id = t.run_id
JOIN metrics mt ON mt.id = t.metric_id;

-- Transitions ranked by score (1 = the strongest): within their run
-- (rank_in_run), among all runs (rank_overall), and among the runs' series
-- of the same metric (rank_in_metric: which run shows this metric's
-- transition most clearly).  Ties share a rank.
CREATE VIEW transitions_ranked AS
SELECT n.*,
       rank() OVER (PARTITION BY n.run ORDER BY n.score DESC)                          AS rank_in_run,
       rank() OVER (ORDER BY n.score DESC)                                             AS rank_overall,
       rank() OVER (PARTITION BY n.item, n.version, n.metric ORDER BY n.score DESC)    AS rank_in_metric,
       count(*) OVER (PARTITION BY n.run)                                              AS run_transitions
FROM transitions_named n;

GRANT SELECT ON transitions_named, transitions_ranked TO ckptd_reader;
