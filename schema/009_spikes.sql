-- 009_spikes: the detector level-v2 (daemon/detect/transitions.h): spikes as
-- events of their own, a calibrated false-positive rate per transition,
-- and groups of transitions across metrics.
--
-- Rows written by ramp-v1 stay as they are, tagged with their method:
-- their kind is 'transition' and their p_value and noise are NULL.  The
-- daemon now writes level-v2 rows and replaces only those.

-- 'transition': a move from one level to another; 'spike': one or two
-- checkpoints away from the level and back (start and end its first and
-- last checkpoint, peak the farthest, magnitude the excursion).
ALTER TABLE transitions ADD COLUMN kind text NOT NULL DEFAULT 'transition'
    CHECK (kind IN ('transition', 'spike'));
-- The calibrated false-positive rate of a transition's score: the
-- probability that a series of its length without a transition scores as
-- high (NULL for spikes and for ramp-v1 rows).
ALTER TABLE transitions ADD COLUMN p_value double precision
    CHECK (p_value IS NULL OR (p_value >= 0 AND p_value <= 1));
-- The noise scale the score divided by, in the metric's unit.
ALTER TABLE transitions ADD COLUMN noise double precision;
-- The levels either side, in the metric's unit (medians of the 3 raw
-- values each side; magnitude = level_after - level_before).  A spike:
-- its baseline and its peak value.
ALTER TABLE transitions ADD COLUMN level_before double precision;
ALTER TABLE transitions ADD COLUMN level_after double precision;

CREATE OR REPLACE VIEW transitions_named AS
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
       t.detected_at,
       t.kind,
       t.p_value,
       t.noise,
       t.level_before,
       t.level_after
FROM transitions t
JOIN runs r ON r.id = t.run_id
JOIN metrics mt ON mt.id = t.metric_id;

-- Transitions (spikes left out) ranked by score within their method (the
-- scores of two methods are on different scales): within their run, among
-- all runs, among the runs' series of the same metric.  Ties share a rank.
DROP VIEW transitions_ranked;
CREATE VIEW transitions_ranked AS
SELECT n.*,
       rank() OVER (PARTITION BY n.run, n.method ORDER BY n.score DESC)                         AS rank_in_run,
       rank() OVER (PARTITION BY n.method ORDER BY n.score DESC)                                AS rank_overall,
       rank() OVER (PARTITION BY n.method, n.item, n.version, n.metric ORDER BY n.score DESC)   AS rank_in_metric,
       count(*) OVER (PARTITION BY n.run, n.method)                                             AS run_transitions
FROM transitions_named n
WHERE n.kind = 'transition';

-- Spikes, named.
CREATE VIEW spikes AS
SELECT id, run, item, version, metric, layer, head, idx, start_step, peak_step, end_step,
       magnitude, level_before AS baseline, level_after AS peak_value, unit, score, method, detected_at
FROM transitions_named
WHERE kind = 'spike';

-- Each transition with its group: transitions of one run and method whose
-- [start_step, end_step] windows overlap, transitively (sharing only an end
-- point is not overlapping), numbered from 1 by earliest start, as `ckptd
-- transitions` numbers them.
CREATE VIEW transitions_grouped AS
WITH o AS (
    SELECT n.*,
           max(n.end_step) OVER (PARTITION BY n.run, n.method ORDER BY n.start_step, n.id
                                 ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach
    FROM transitions_named n
    WHERE n.kind = 'transition'
)
SELECT o.id, o.run, o.item, o.version, o.metric, o.layer, o.head, o.idx, o.start_step, o.peak_step,
       o.end_step, o.magnitude, o.level_before, o.level_after, o.unit, o.score, o.p_value, o.method,
       sum(CASE WHEN o.reach IS NULL OR o.start_step >= o.reach THEN 1 ELSE 0 END)
           OVER (PARTITION BY o.run, o.method ORDER BY o.start_step, o.id) AS group_no
FROM o;

-- One row per group: its window, how many transitions and distinct metrics
-- (item/name) it holds, and its score: the sum over its distinct metrics of
-- the largest -log10 p_value among that metric's transitions in the group
-- (NULL for ramp-v1 rows, which have no p-value).  The sum is what the
-- evidence would be if the metrics' noises were independent; metrics
-- computed from the same predictions (a loss and an accuracy) are not, so
-- read it as a ranking, not as a probability.
CREATE VIEW transition_groups AS
SELECT run, method, group_no,
       min(start_step) AS start_step,
       max(end_step) AS end_step,
       sum(n) AS transitions,
       count(*) AS metrics,
       string_agg(item || '/' || metric, ', ' ORDER BY best DESC NULLS LAST, item, metric) AS metric_names,
       sum(best) AS group_score
FROM (
    SELECT run, method, group_no, item, metric,
           min(start_step) AS start_step, max(end_step) AS end_step, count(*) AS n,
           max(-log(greatest(p_value, 1e-300))) AS best
    FROM transitions_grouped
    GROUP BY run, method, group_no, item, metric
) per_metric
GROUP BY run, method, group_no;

GRANT SELECT ON transitions_named, transitions_ranked, spikes, transitions_grouped, transition_groups
    TO ckptd_reader;
