-- Example queries a researcher runs against ckptd's database.
-- psql "$CKPTD_DB" -v run=pythia-70m -f schema/queries.sql   (or paste one)

-- 1. One series: mean eval loss of a run, ordered by step.
SELECT step, value AS loss
FROM series
WHERE run = :'run' AND item = 'loss' AND metric = 'loss'
ORDER BY step;

-- 2. The first step at which a metric crosses a threshold (here: the loss
--    falls below 6 nats), per run.
SELECT run, min(step) AS first_step_below_6
FROM series
WHERE item = 'loss' AND metric = 'loss' AND value < 6
GROUP BY run;

-- 3. The derivative of a series by window functions: change per step
--    between consecutive checkpoints, and per log-step (Pythia's schedule is
--    log-spaced early, so d/dlog(step) is the comparable rate).
SELECT step, value,
       (value - lag(value) OVER w) / NULLIF(step - lag(step) OVER w, 0) AS d_per_step,
       (value - lag(value) OVER w)
         / NULLIF(ln(step + 1) - ln(lag(step) OVER w + 1), 0)        AS d_per_log_step
FROM series
WHERE run = :'run' AND item = 'loss' AND metric = 'loss'
WINDOW w AS (ORDER BY step)
ORDER BY step;

-- 4. Spectral norm of every layer's MLP input matrix at the latest step.
SELECT layer, value
FROM series_latest
WHERE run = :'run' AND item = 'weights' AND metric = 'spectral_norm' AND idx = 2
ORDER BY layer;

-- 5. Progress and failures.
SELECT * FROM run_progress;
SELECT run, step, item, attempts, last_error FROM job_list WHERE state = 'dead';

-- 6. SAE feature lineages (items sae and sae_match): the features born
--    between step 1000 and 4000 that survived to the end, i.e. are still
--    present at the run's latest analysed step, with the index each has in
--    that step's dictionary.
SELECT layer, lineage, birth_step, length, splits, last_feature
FROM lineages
WHERE run = :'run' AND birth_step BETWEEN 1000 AND 4000 AND death_step IS NULL
ORDER BY layer, birth_step, last_feature;

-- 7. One lineage through time: density and similarity to its previous
--    feature at every step (here the lineage of feature 17 of the latest
--    dictionary of layer 3).
SELECT f.step, f.feature, f.density, f.similarity
FROM sae_feature_series f
JOIN lineages l ON l.run = f.run AND l.layer = f.layer AND l.lineage = f.lineage
WHERE l.run = :'run' AND l.layer = 3 AND l.last_feature = 17 AND l.death_step IS NULL
ORDER BY f.step;

-- 8. A run's transitions by peak step, and the strongest across all runs.
SELECT metric, layer, head, idx, start_step, peak_step, end_step,
       round(magnitude::numeric, 4) AS magnitude, round(score::numeric, 1) AS score
FROM transitions_named
WHERE run = :'run'
ORDER BY peak_step, metric;

SELECT run, metric, layer, head, peak_step, score, rank_in_run, rank_overall
FROM transitions_ranked
WHERE rank_overall <= 20
ORDER BY rank_overall;

-- 9. When does each run show its clearest change of the same metric
--    (which run forms its induction heads first)?
SELECT run, metric, peak_step, magnitude, score
FROM transitions_ranked
WHERE item = 'heads' AND metric = 'induction_score' AND rank_in_metric <= 10
ORDER BY peak_step;

-- 10. Metrics that move together: pairs of transitions of one run whose
--    [start_step, end_step] windows overlap (as ckptd transitions groups them).
SELECT a.metric AS metric_a, a.layer AS layer_a, a.head AS head_a,
       b.metric AS metric_b, b.layer AS layer_b, b.head AS head_b,
       a.peak_step AS peak_a, b.peak_step AS peak_b
FROM transitions_named a
JOIN transitions_named b ON b.run = a.run AND b.id > a.id
 AND a.start_step < b.end_step AND b.start_step < a.end_step
WHERE a.run = :'run'
ORDER BY a.peak_step;

-- 11. When was each feature of a released SAE born?  A fixed dictionary
--     (add-run --sae DIR, item sae_fixed) at every checkpoint: the first
--     step each feature's density exceeds 0.001 (docs/sae.md).
SELECT dictionary, feature, birth_step, density_at_birth, last_density
FROM sae_fixed_feature_birth
WHERE run = :'run'
ORDER BY dictionary, birth_step NULLS LAST, feature;
