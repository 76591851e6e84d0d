-- 014_policy: the order in which a run's jobs are claimed
-- (daemon/work/policy.h).
--
-- jobs.priority: a claim takes the checkpoint whose due jobs have the
-- lowest priority (then the oldest checkpoint), and of it the jobs of that
-- priority or lower.  Every job of a run with the policy `order` has
-- priority 0: checkpoints in the order they were added, all items at once.
-- A run with the policy `adaptive`: 0 the cheap items on every checkpoint,
-- 1 the expensive ones on a sparse skeleton (every k-th checkpoint and both
-- ends), 2 the expensive ones in the windows around the cheap items'
-- transitions, 3 the rest.

ALTER TABLE jobs ADD COLUMN priority smallint NOT NULL DEFAULT 0 CHECK (priority >= 0);
CREATE INDEX jobs_queued_priority ON jobs (priority, checkpoint_id) WHERE state = 'queued';

ALTER TABLE runs ADD COLUMN policy text NOT NULL DEFAULT 'order'
    CHECK (policy IN ('order', 'adaptive'));

-- An adaptive run's plan: which items are cheap (from the cost model, for
-- the model's shape when known), the skeleton's spacing, and the windows
-- of steps densified once the cheap items' transitions were found
-- (planned_at NULL until then).
CREATE TABLE run_plans (
    run_id          bigint PRIMARY KEY REFERENCES runs ON DELETE CASCADE,
    cheap_items     text[] NOT NULL,
    expensive_items text[] NOT NULL,
    skeleton_every  int NOT NULL CHECK (skeleton_every > 0),
    shape_known     boolean NOT NULL,    -- costs from the run's own shape, else a reference one
    window_starts   bigint[] NOT NULL DEFAULT '{}',
    window_ends     bigint[] NOT NULL DEFAULT '{}',
    planned_at      timestamptz
);

GRANT SELECT ON run_plans TO ckptd_reader;
