-- 003_fetch: what each checkpoint is made of, duplicates, and downloads in
-- progress.
--
-- checkpoint_files: every file of a fetched checkpoint with its size and
-- sha256 (computed while downloading, or stated by the hub and checked).
-- A checkpoint whose weight files (*.safetensors, *.bin) have the same set
-- of sha256s as another step of the same run is a duplicate: its
-- duplicate_of names the earliest such step, so the `series` view (002)
-- leaves its measurements out.
-- fetches: one row per checkpoint being (or last) downloaded by a node,
-- updated with every heartbeat, for `ckptd status`.

CREATE TABLE checkpoint_files (
    checkpoint_id bigint NOT NULL REFERENCES checkpoints ON DELETE CASCADE,
    name          text NOT NULL,
    size          bigint NOT NULL CHECK (size >= 0),
    sha256        text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    PRIMARY KEY (checkpoint_id, name)
);
CREATE INDEX checkpoint_files_sha ON checkpoint_files (sha256);

CREATE TABLE fetches (
    checkpoint_id bigint PRIMARY KEY REFERENCES checkpoints ON DELETE CASCADE,
    node          text NOT NULL,
    state         text NOT NULL CHECK (state IN ('fetching', 'done', 'failed')),
    bytes_done    bigint NOT NULL DEFAULT 0,
    bytes_total   bigint,                   -- NULL until the listing is known
    bytes_per_s   double precision NOT NULL DEFAULT 0,
    error         text,
    started_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- The weights of a checkpoint as one comparable value.
CREATE VIEW checkpoint_weights AS
SELECT checkpoint_id, string_agg(sha256, ',' ORDER BY sha256) AS weights
FROM checkpoint_files
WHERE name ~ '\.(safetensors|bin)$'
GROUP BY checkpoint_id;

-- Duplicates with the step they repeat, for humans.
CREATE VIEW duplicate_checkpoints AS
SELECT r.name AS run, c.step, o.step AS same_as_step
FROM checkpoints c
JOIN checkpoints o ON o.id = c.duplicate_of
JOIN runs r ON r.id = c.run_id;

GRANT SELECT ON checkpoint_files, fetches, checkpoint_weights, duplicate_checkpoints TO ckptd_reader;
