-- 001_core: runs, checkpoints, the job queue, the metric dictionary and the
-- narrow time series of measurements; transitions and artifacts.
--
-- Identity rules that make a duplicate impossible:
--   runs.name                                   unique
--   checkpoints (run_id, step)                  unique
--   jobs (checkpoint_id, item, version)         unique: one job per battery item version
--   metrics (item, version, name)               unique: a version bump is a new metric id
--   measurements (run_id, metric_id, layer, head, idx, step)  primary key

CREATE TABLE runs (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9._/-]+$'),
    source      text NOT NULL,              -- file:///x/step{step}/, https://…, hf://ORG/NAME
    schedule    text NOT NULL,              -- 'pythia' or a comma-separated list of steps
    items       text[] NOT NULL,            -- battery items to run on every checkpoint
    options     jsonb NOT NULL DEFAULT '{}',-- per-run worker options: eval_tokens, seed
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE checkpoints (
    id           bigserial PRIMARY KEY,
    run_id       bigint NOT NULL REFERENCES runs ON DELETE CASCADE,
    step         bigint NOT NULL CHECK (step >= 0),
    revision     text NOT NULL,             -- e.g. step1000
    url          text NOT NULL,             -- where the checkpoint directory is
    size         bigint,                    -- bytes, once known
    sha256       text,                      -- of the weights, once known
    duplicate_of bigint REFERENCES checkpoints ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (run_id, step)
);

CREATE TYPE job_state AS ENUM ('queued', 'running', 'done', 'dead');

CREATE TABLE jobs (
    id             bigserial PRIMARY KEY,
    checkpoint_id  bigint NOT NULL REFERENCES checkpoints ON DELETE CASCADE,
    item           text NOT NULL,
    version        int NOT NULL CHECK (version > 0),
    state          job_state NOT NULL DEFAULT 'queued',
    attempts       int NOT NULL DEFAULT 0,
    max_attempts   int NOT NULL DEFAULT 5 CHECK (max_attempts > 0),
    not_before     timestamptz NOT NULL DEFAULT now(),  -- backoff after a failure
    lease_owner    text,                                -- node id holding it
    lease_expires  timestamptz,
    last_error     text,
    started_at     timestamptz,
    finished_at    timestamptz,
    worker_seconds double precision,
    rows_written   bigint,
    UNIQUE (checkpoint_id, item, version),
    CHECK ((state = 'running') = (lease_owner IS NOT NULL AND lease_expires IS NOT NULL))
);
-- claiming scans queued jobs; expiry scans running leases
CREATE INDEX jobs_queued ON jobs (checkpoint_id) WHERE state = 'queued';
CREATE INDEX jobs_running ON jobs (lease_expires) WHERE state = 'running';
CREATE INDEX jobs_state ON jobs (state);

CREATE TABLE metrics (
    id            serial PRIMARY KEY,
    item          text NOT NULL,
    version       int NOT NULL,
    name          text NOT NULL,
    unit          text NOT NULL DEFAULT '',
    description   text NOT NULL DEFAULT '',
    layer_meaning text NOT NULL DEFAULT '',
    head_meaning  text NOT NULL DEFAULT '',
    idx_meaning   text NOT NULL DEFAULT '',
    UNIQUE (item, version, name)
);

-- The narrow time series.  layer/head/idx are -1 where they do not apply.
CREATE TABLE measurements (
    run_id    bigint NOT NULL REFERENCES runs ON DELETE CASCADE,
    step      bigint NOT NULL,
    metric_id int NOT NULL REFERENCES metrics,
    layer     smallint NOT NULL DEFAULT -1,
    head      smallint NOT NULL DEFAULT -1,
    idx       int NOT NULL DEFAULT -1,
    value     double precision NOT NULL,
    -- key order serves "one series ordered by step" and, scanned backwards,
    -- "latest step of every series"
    PRIMARY KEY (run_id, metric_id, layer, head, idx, step)
);
-- everything measured at one step of a run
CREATE INDEX measurements_step ON measurements (run_id, step);

CREATE TABLE transitions (
    id          bigserial PRIMARY KEY,
    run_id      bigint NOT NULL REFERENCES runs ON DELETE CASCADE,
    metric_id   int NOT NULL REFERENCES metrics,
    layer       smallint NOT NULL DEFAULT -1,
    head        smallint NOT NULL DEFAULT -1,
    idx         int NOT NULL DEFAULT -1,
    start_step  bigint NOT NULL,
    peak_step   bigint NOT NULL,
    end_step    bigint NOT NULL,
    magnitude   double precision NOT NULL,
    score       double precision NOT NULL,
    method      text NOT NULL,
    detected_at timestamptz NOT NULL DEFAULT now(),
    CHECK (start_step <= peak_step AND peak_step <= end_step),
    UNIQUE (run_id, metric_id, layer, head, idx, method, peak_step)
);

CREATE TABLE artifacts (
    id         bigserial PRIMARY KEY,
    run_id     bigint NOT NULL REFERENCES runs ON DELETE CASCADE,
    step       bigint NOT NULL,
    job_id     bigint REFERENCES jobs ON DELETE SET NULL,
    kind       text NOT NULL,               -- e.g. sae
    path       text NOT NULL,
    sha256     text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size       bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (run_id, step, kind, path)
);
