-- 005_sae: SAE features and their lineages across a run's checkpoints, and
-- what the queue must know of each battery item to order dependent jobs.
--
-- battery_items: each (item, version) the workers offer, with its needs and
-- the item whose artifacts it reads (depends_on), as `ckpt-worker battery
-- --json` states them; the daemon upserts it with the metric dictionary.
-- job_ready() is the claim's test of a queued job's dependencies (see
-- daemon/README.md, "Dependencies"):
--   (a) a job whose item depends on D: every job of D on the same
--       checkpoint is done, or queued and ready itself, so the claim takes
--       it too and the worker runs D first;
--   (b) a job that reads the previous checkpoint (its item needs
--       prev_artifacts and has a depends_on, or has none and the run's
--       option "<item>_warm_start" is true): the jobs of the item it reads
--       (depends_on, else its own) on the run's previous checkpoint (the
--       greatest lower step not marked a duplicate) are neither queued nor
--       running.  When they are all done the worker gets that checkpoint's
--       artifacts (job_prev_step); when one is dead, or there is no such
--       job or checkpoint, it runs without them;
--   (c) such a job is never claimed together with a job that needs
--       prev_artifacts but does not wait for them (the worker's one
--       --prev-artifacts would reach that job too).
--
-- sae_features: one row per (run, layer, step, feature) of an SAE
-- dictionary, filled when the `sae_match` item's rows of that step are
-- stored: its match to the previous dictionary and the `sae` item's
-- density and mean activation.  root_step/root_feature name the lineage:
-- the row's matched previous feature's root, or the row itself when it was
-- born.
--
-- feature_lineages: one row per lineage (a chain of mutually matched
-- features), recomputed for a run and layer whenever a step of it lands.

CREATE TABLE battery_items (
    item       text NOT NULL,
    version    int NOT NULL,
    needs      text[] NOT NULL DEFAULT '{}',
    depends_on text,
    PRIMARY KEY (item, version)
);

-- The item whose job on the previous checkpoint job j waits for, or NULL.
CREATE FUNCTION job_prev_item(j_id bigint) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN 'prev_artifacts' = ANY (b.needs) THEN
                CASE WHEN b.depends_on IS NOT NULL THEN b.depends_on
                     WHEN r.options ->> (j.item || '_warm_start') = 'true' THEN j.item END END
    FROM jobs j
    JOIN battery_items b ON b.item = j.item AND b.version = j.version
    JOIN checkpoints c ON c.id = j.checkpoint_id
    JOIN runs r ON r.id = c.run_id
    WHERE j.id = j_id
$$;

-- The checkpoint before ck in its run: the greatest lower step that is not
-- known to be a duplicate, or NULL.
CREATE FUNCTION checkpoint_prev(ck_id bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT p.id FROM checkpoints c
    JOIN checkpoints p ON p.run_id = c.run_id AND p.step < c.step AND p.duplicate_of IS NULL
    WHERE c.id = ck_id
    ORDER BY p.step DESC LIMIT 1
$$;

-- The step whose artifacts job j reads: the previous checkpoint's, when
-- every job there of the item j reads is done; else NULL (none, or one
-- failed for good: its files may be half-written).
CREATE FUNCTION job_prev_step(j_id bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT p.step FROM jobs j
    JOIN checkpoints p ON p.id = checkpoint_prev(j.checkpoint_id)
    CROSS JOIN LATERAL (SELECT job_prev_item(j_id) AS item) pi
    WHERE j.id = j_id AND pi.item IS NOT NULL
      AND EXISTS (SELECT 1 FROM jobs x WHERE x.checkpoint_id = p.id AND x.item = pi.item)
      AND NOT EXISTS (SELECT 1 FROM jobs x WHERE x.checkpoint_id = p.id AND x.item = pi.item
                      AND x.state <> 'done')
$$;

-- May queued job j be claimed now?  Rules (a), (b), (c) above.  Jobs of
-- items the daemon has no battery_items row for have no dependencies.
CREATE FUNCTION job_ready(j_id bigint, depth int DEFAULT 0) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
    j jobs;
    b battery_items;
    pitem text;
    pck bigint;
BEGIN
    IF depth > 8 THEN -- a dependency cycle: never
        RETURN false;
    END IF;
    SELECT * INTO j FROM jobs WHERE id = j_id;
    IF NOT FOUND OR j.state <> 'queued' THEN
        RETURN false;
    END IF;
    SELECT * INTO b FROM battery_items WHERE item = j.item AND version = j.version;
    IF NOT FOUND OR (b.depends_on IS NULL AND NOT 'prev_artifacts' = ANY (b.needs)) THEN
        RETURN true;
    END IF;
    pitem := job_prev_item(j_id);
    IF pitem IS NOT NULL THEN
        pck := checkpoint_prev(j.checkpoint_id);
        IF pck IS NOT NULL AND EXISTS (SELECT 1 FROM jobs x WHERE x.checkpoint_id = pck
                                       AND x.item = pitem AND x.state IN ('queued', 'running')) THEN
            RETURN false; -- (b)
        END IF;
        IF EXISTS (SELECT 1 FROM jobs x
                   JOIN battery_items xb ON xb.item = x.item AND xb.version = x.version
                   WHERE x.checkpoint_id = j.checkpoint_id AND x.id <> j.id AND x.state = 'queued'
                     AND 'prev_artifacts' = ANY (xb.needs) AND job_prev_item(x.id) IS NULL
                     AND job_ready(x.id, depth + 1)) THEN
            RETURN false; -- (c)
        END IF;
    END IF;
    IF b.depends_on IS NOT NULL AND EXISTS (
            SELECT 1 FROM jobs d WHERE d.checkpoint_id = j.checkpoint_id AND d.item = b.depends_on
              AND d.state <> 'done' AND NOT (d.state = 'queued' AND job_ready(d.id, depth + 1))) THEN
        RETURN false; -- (a)
    END IF;
    RETURN true;
END
$$;

CREATE TABLE sae_features (
    run_id          bigint NOT NULL REFERENCES runs ON DELETE CASCADE,
    layer           smallint NOT NULL,
    step            bigint NOT NULL,
    feature         int NOT NULL,              -- row of that step's dictionary
    density         double precision,          -- sae: feature_density (NULL if absent)
    mean_activation double precision,          -- sae: feature_mean_activation
    prev_step       bigint,                    -- the dictionary matched against; NULL: none
    matched_prev    int,                       -- mutual nearest neighbour there; NULL: born
    similarity      double precision,          -- cosine to best_prev; NULL without prev_step
    best_prev       int,                       -- most similar previous feature
    split_parent    int,                       -- previous feature it split off, or NULL
    root_step       bigint NOT NULL,           -- the lineage: where its chain starts
    root_feature    int NOT NULL,
    PRIMARY KEY (run_id, layer, step, feature)
);
CREATE INDEX sae_features_root ON sae_features (run_id, layer, root_step, root_feature);
CREATE INDEX sae_features_splits ON sae_features (run_id, layer) WHERE split_parent IS NOT NULL;

CREATE TABLE feature_lineages (
    run_id       bigint NOT NULL REFERENCES runs ON DELETE CASCADE,
    layer        smallint NOT NULL,
    lineage      int NOT NULL,        -- 1.. in order of (root_step, root_feature); renumbered
                                      -- when an earlier step lands late
    root_step    bigint NOT NULL,     -- the stable identity of the lineage
    root_feature int NOT NULL,
    birth_step   bigint NOT NULL,     -- = root_step
    death_step   bigint,              -- the first analysed step without it; NULL while it is
                                      -- alive at the run's latest analysed step (this layer)
    last_step    bigint NOT NULL,     -- the last step it is present at
    length       int NOT NULL,        -- checkpoints it spans (rows of sae_features)
    splits       int NOT NULL,        -- split children along it
    last_feature int NOT NULL,        -- its feature index at last_step
    split_of     int,                 -- the lineage it split off from, or NULL
    PRIMARY KEY (run_id, layer, lineage),
    UNIQUE (run_id, layer, root_step, root_feature)
);
CREATE INDEX feature_lineages_birth ON feature_lineages (run_id, layer, birth_step);

-- Lineages with the run's name.
CREATE VIEW lineages AS
SELECT r.name AS run, l.layer, l.lineage, l.birth_step, l.death_step, l.last_step, l.length,
       l.splits, l.root_feature, l.last_feature, l.split_of, l.death_step IS NULL AS alive
FROM feature_lineages l
JOIN runs r ON r.id = l.run_id;

-- SAE features with the run's name, left out at duplicate checkpoints.
CREATE VIEW sae_feature_series AS
SELECT r.name AS run, f.layer, f.step, f.feature, f.density, f.mean_activation, f.prev_step,
       f.matched_prev, f.similarity, f.split_parent, l.lineage
FROM sae_features f
JOIN runs r ON r.id = f.run_id
JOIN checkpoints c ON c.run_id = f.run_id AND c.step = f.step
LEFT JOIN feature_lineages l ON l.run_id = f.run_id AND l.layer = f.layer
    AND l.root_step = f.root_step AND l.root_feature = f.root_feature
WHERE c.duplicate_of IS NULL;

GRANT SELECT ON battery_items, sae_features, feature_lineages, lineages, sae_feature_series
    TO ckptd_reader;
