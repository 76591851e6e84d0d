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
