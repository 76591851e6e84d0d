-- 013_families: runs that differ by seed, side by side
-- (daemon/detect/family.h).
--
-- A family is a named group of runs (`ckptd add-family NAME RUN...`,
-- `add-run --family NAME`).  family_bands gives, per step and series, how
-- the members spread; family_transitions says, per series, in how many
-- members the detector found a transition in overlapping windows and how
-- their peak steps spread; family_outliers names the members that leave
-- the others' band or miss the family's transition.  The last two are
-- written by the daemon's family analysis, after its members' transitions
-- change.

CREATE TABLE families (
    id           bigserial PRIMARY KEY,
    name         text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9._/-]+$'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    changed_at   timestamptz NOT NULL DEFAULT now(), -- a member's transitions or membership changed
    analysed_at  timestamptz                         -- the analysis last written (NULL: never)
);

CREATE TABLE family_members (
    family_id  bigint NOT NULL REFERENCES families ON DELETE CASCADE,
    run_id     bigint NOT NULL REFERENCES runs ON DELETE CASCADE,
    added_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (family_id, run_id)
);
CREATE INDEX family_members_run ON family_members (run_id);

-- One per cluster of members' transitions of one series: transitions of the
-- same sign whose [start, end] windows overlap, transitively, across
-- members.  members_found: members with one in the cluster; members_total:
-- members whose series has enough points for the detector; is_family:
-- members_found >= 2/3 of members_total (and at least 2).  Per member found,
-- the transition with the highest score gives its peak (runs[i], peaks[i]).
-- Peaks as steps and as checkpoint positions in the schedule (the spread
-- in checkpoints weighs Pythia's log-spaced start like its even tail).
CREATE TABLE family_transitions (
    id               bigserial PRIMARY KEY,
    family_id        bigint NOT NULL REFERENCES families ON DELETE CASCADE,
    metric_id        int NOT NULL REFERENCES metrics,
    layer            smallint NOT NULL,
    head             smallint NOT NULL,
    idx              int NOT NULL,
    sign             smallint NOT NULL CHECK (sign IN (-1, 1)),
    members_found    int NOT NULL,
    members_total    int NOT NULL,
    is_family        boolean NOT NULL,
    start_step       bigint NOT NULL,   -- the earliest start among the members' transitions
    end_step         bigint NOT NULL,   -- the latest end
    peak_min         bigint NOT NULL,
    peak_median      double precision NOT NULL,
    peak_max         bigint NOT NULL,
    peak_spread_ckpts int NOT NULL,     -- checkpoints between the earliest and latest peak
    magnitude_median double precision NOT NULL,
    runs             bigint[] NOT NULL, -- members found, by peak
    peaks            bigint[] NOT NULL, -- their peak steps
    method           text NOT NULL
);
CREATE INDEX family_transitions_family ON family_transitions (family_id, peak_median);

-- Members that depart from the others, per series (daemon/detect/family.h states the rules):
--   band                leaves the others' band on more than half of
--                       the compared steps (value: that fraction)
--   transition_absent   lacks a family transition the others show (value:
--                       the family's median peak step)
--   transition_far      has it, far from the others' peaks (value: its
--                       distance from their median, in checkpoints)
CREATE TABLE family_outliers (
    family_id  bigint NOT NULL REFERENCES families ON DELETE CASCADE,
    run_id     bigint NOT NULL REFERENCES runs ON DELETE CASCADE,
    metric_id  int NOT NULL REFERENCES metrics,
    layer      smallint NOT NULL,
    head       smallint NOT NULL,
    idx        int NOT NULL,
    reason     text NOT NULL CHECK (reason IN ('band', 'transition_absent', 'transition_far')),
    value      double precision,
    detail     text NOT NULL
);
CREATE INDEX family_outliers_family ON family_outliers (family_id, run_id);

-- Per (family, step, series): the members' spread over their checkpoints
-- that are neither duplicates nor suspect, finite values only.
CREATE VIEW family_bands AS
SELECT f.name AS family,
       m.step,
       mt.item,
       mt.version,
       mt.name AS metric,
       m.layer,
       m.head,
       m.idx,
       count(*) AS members,
       avg(m.value) AS mean,
       stddev_samp(m.value) AS stddev,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY m.value) AS median,
       min(m.value) AS min,
       max(m.value) AS max,
       mt.unit
FROM families f
JOIN family_members fm ON fm.family_id = f.id
JOIN measurements m ON m.run_id = fm.run_id
JOIN checkpoints c ON c.run_id = m.run_id AND c.step = m.step
JOIN metrics mt ON mt.id = m.metric_id
WHERE c.duplicate_of IS NULL AND c.suspect IS NULL
  AND m.value > '-Infinity'::float8 AND m.value < 'Infinity'::float8  -- leaves out NaN too
GROUP BY f.name, m.step, mt.item, mt.version, mt.name, m.layer, m.head, m.idx, mt.unit;

-- Families with their members, named.
CREATE VIEW family_runs AS
SELECT f.name AS family, r.name AS run, fm.added_at
FROM families f
JOIN family_members fm ON fm.family_id = f.id
JOIN runs r ON r.id = fm.run_id;

CREATE VIEW family_transitions_named AS
SELECT f.name AS family, mt.item, mt.version, mt.name AS metric, t.layer, t.head, t.idx, t.sign,
       t.members_found, t.members_total, t.is_family, t.start_step, t.end_step, t.peak_min,
       t.peak_median, t.peak_max, t.peak_spread_ckpts, t.magnitude_median, mt.unit,
       ARRAY(SELECT r.name FROM unnest(t.runs) WITH ORDINALITY AS u(id, o)
             JOIN runs r ON r.id = u.id ORDER BY u.o) AS members,
       t.peaks, t.method, t.id
FROM family_transitions t
JOIN families f ON f.id = t.family_id
JOIN metrics mt ON mt.id = t.metric_id;

CREATE VIEW family_outliers_named AS
SELECT f.name AS family, r.name AS run, mt.item, mt.version, mt.name AS metric, o.layer, o.head,
       o.idx, o.reason, o.value, o.detail
FROM family_outliers o
JOIN families f ON f.id = o.family_id
JOIN runs r ON r.id = o.run_id
JOIN metrics mt ON mt.id = o.metric_id;

GRANT SELECT ON families, family_members, family_transitions, family_outliers, family_bands,
    family_runs, family_transitions_named, family_outliers_named TO ckptd_reader;
