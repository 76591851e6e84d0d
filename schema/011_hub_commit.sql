-- 011_hub_commit: the hub commit each checkpoint was fetched at, and the
-- revisions that moved under a run (a branch re-uploaded on the hub, as
-- pythia-12b-deduped's step32000 was).
--
-- checkpoints.hub_commit: the commit of the revision (stepN) when its
-- files were last staged, from the hub's X-Repo-Commit; NULL for sources
-- that have no commits (file://, URL templates) and until first staged.
--
-- revision_changes: one row each time a checkpoint is staged at another
-- commit than the one recorded.  Results computed from the old commit's
-- files are not kept: in the transaction that records the new files, the
-- checkpoint's done jobs go back to the queue and their rows (measurements,
-- artifacts, SAE features of that step) are removed, so every series shows
-- what the revision holds now.  jobs_requeued and rows_removed say what
-- that cost; the row stays as the record that the step changed.

ALTER TABLE checkpoints ADD COLUMN hub_commit text CHECK (hub_commit ~ '^[0-9a-f]{40}$');

CREATE TABLE revision_changes (
    id             bigserial PRIMARY KEY,
    checkpoint_id  bigint NOT NULL REFERENCES checkpoints ON DELETE CASCADE,
    old_commit     text NOT NULL,
    new_commit     text NOT NULL,
    old_weights    text,                    -- checkpoints.sha256 before
    new_weights    text,                    -- and after
    jobs_requeued  int NOT NULL DEFAULT 0,
    rows_removed   bigint NOT NULL DEFAULT 0,
    noticed_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX revision_changes_checkpoint ON revision_changes (checkpoint_id);

-- For humans: which step of which run moved, and when.
CREATE VIEW revision_changes_named AS
SELECT r.name AS run, c.step, c.revision, rc.old_commit, rc.new_commit,
       rc.old_weights IS DISTINCT FROM rc.new_weights AS weights_changed,
       rc.jobs_requeued, rc.rows_removed, rc.noticed_at
FROM revision_changes rc
JOIN checkpoints c ON c.id = rc.checkpoint_id
JOIN runs r ON r.id = c.run_id;

GRANT SELECT ON revision_changes, revision_changes_named TO ckptd_reader;
