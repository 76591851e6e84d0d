-- 002_views: series with names instead of ids, queue progress, and the
-- read-only role for analysts.

-- One row per measured value, named.  Checkpoints marked as duplicates of
-- another step are left out: identical weights are not a change in time.
CREATE VIEW series AS
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
WHERE c.duplicate_of IS NULL;

-- The newest step of every series.
CREATE VIEW series_latest AS
SELECT DISTINCT ON (m.run_id, m.metric_id, m.layer, m.head, m.idx)
       r.name AS run, mt.item, mt.version, mt.name AS metric,
       m.layer, m.head, m.idx, m.step, m.value
FROM measurements m
JOIN runs r ON r.id = m.run_id
JOIN metrics mt ON mt.id = m.metric_id
ORDER BY m.run_id, m.metric_id, m.layer, m.head, m.idx, m.step DESC;

-- Per run: checkpoints by the state of their jobs.
CREATE VIEW run_progress AS
SELECT r.name AS run,
       count(*) AS checkpoints,
       count(*) FILTER (WHERE s.done = s.total) AS done,
       count(*) FILTER (WHERE s.running > 0) AS running,
       count(*) FILTER (WHERE s.dead > 0) AS failed,
       count(*) FILTER (WHERE s.queued > 0 AND s.running = 0) AS queued
FROM runs r
JOIN checkpoints c ON c.run_id = r.id
JOIN LATERAL (
    SELECT count(*) AS total,
           count(*) FILTER (WHERE j.state = 'done') AS done,
           count(*) FILTER (WHERE j.state = 'running') AS running,
           count(*) FILTER (WHERE j.state = 'dead') AS dead,
           count(*) FILTER (WHERE j.state = 'queued') AS queued
    FROM jobs j WHERE j.checkpoint_id = c.id
) s ON true
GROUP BY r.name;

-- Jobs with their run and step, for humans.
CREATE VIEW job_list AS
SELECT j.id, r.name AS run, c.step, j.item, j.version, j.state, j.attempts,
       j.max_attempts, j.not_before, j.lease_owner, j.lease_expires,
       j.last_error, j.started_at, j.finished_at, j.worker_seconds, j.rows_written
FROM jobs j
JOIN checkpoints c ON c.id = j.checkpoint_id
JOIN runs r ON r.id = c.run_id;

-- Analysts read everything and write nothing.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ckptd_reader') THEN
        CREATE ROLE ckptd_reader NOLOGIN;
    END IF;
END
$$;
GRANT USAGE ON SCHEMA public TO ckptd_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO ckptd_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO ckptd_reader;
