-- 008_sae_fixed: the `sae_fixed` item's series named, and the step at
-- which each feature of a fixed dictionary is born.
--
-- sae_fixed applies one fixed dictionary (a released SAE of the final
-- model, say) at every checkpoint of a run.  Its rows: layer = the
-- dictionary's hook layer, head = the dictionary's position in the run's
-- "sae_fixed" option (add-run --sae, in order), idx = the feature.
--
-- Birth: the first analysed step (duplicate checkpoints left out) at which
-- a feature's density on the eval tokens exceeds a threshold,
-- sae_fixed_births(min_density); the view sae_fixed_feature_birth uses
-- 0.001 (2 tokens in 2048: above a single stray token of the default eval
-- set).  A feature that never exceeds it has birth_step NULL.
--
-- The per-checkpoint dictionaries of the `sae` item are joined by (run,
-- layer, step): sae_births_by_step sets the fixed features born at a step
-- beside the sae lineages born there.

-- The fixed dictionaries of each run: position (the rows' head) and path.
CREATE VIEW sae_fixed_dictionaries AS
SELECT r.name AS run, (d.ord - 1)::int AS dictionary, d.dir
FROM runs r
CROSS JOIN LATERAL jsonb_array_elements_text(
    CASE WHEN jsonb_typeof(r.options -> 'sae_fixed') = 'array' THEN r.options -> 'sae_fixed'
         ELSE '[]'::jsonb END) WITH ORDINALITY AS d(dir, ord);

-- Per fixed feature and step: its density and mean activation.
CREATE VIEW sae_fixed_feature_series AS
SELECT r.name AS run, mt.version, m.head::int AS dictionary, m.layer::int AS layer, m.step,
       m.idx AS feature,
       max(m.value) FILTER (WHERE mt.name = 'feature_density') AS density,
       max(m.value) FILTER (WHERE mt.name = 'feature_mean_activation') AS mean_activation
FROM measurements m
JOIN metrics mt ON mt.id = m.metric_id
JOIN runs r ON r.id = m.run_id
JOIN checkpoints c ON c.run_id = m.run_id AND c.step = m.step
WHERE mt.item = 'sae_fixed' AND mt.name IN ('feature_density', 'feature_mean_activation')
  AND c.duplicate_of IS NULL
GROUP BY r.name, mt.version, m.head, m.layer, m.step, m.idx;

-- Per fixed dictionary and step: how well it explains the activations.
CREATE VIEW sae_fixed_dictionary_series AS
SELECT r.name AS run, mt.version, m.head::int AS dictionary, m.layer::int AS layer, m.step,
       max(m.value) FILTER (WHERE mt.name = 'fvu') AS fvu,
       max(m.value) FILTER (WHERE mt.name = 'l0') AS l0,
       max(m.value) FILTER (WHERE mt.name = 'inactive_fraction') AS inactive_fraction,
       max(m.value) FILTER (WHERE mt.name = 'loss_recovered') AS loss_recovered,
       max(m.value) FILTER (WHERE mt.name = 'ce_clean') AS ce_clean,
       max(m.value) FILTER (WHERE mt.name = 'ce_spliced') AS ce_spliced,
       max(m.value) FILTER (WHERE mt.name = 'kl_spliced') AS kl_spliced
FROM measurements m
JOIN metrics mt ON mt.id = m.metric_id
JOIN runs r ON r.id = m.run_id
JOIN checkpoints c ON c.run_id = m.run_id AND c.step = m.step
WHERE mt.item = 'sae_fixed' AND m.idx = -1 AND c.duplicate_of IS NULL
GROUP BY r.name, mt.version, m.head, m.layer, m.step;

-- Each fixed feature's birth: the first step its density exceeds
-- min_density; the density there, and at the last analysed step.
CREATE FUNCTION sae_fixed_births(min_density double precision DEFAULT 0.001)
RETURNS TABLE (run text, version int, dictionary int, layer int, feature int,
               birth_step bigint, density_at_birth double precision, first_step bigint,
               last_step bigint, last_density double precision)
LANGUAGE sql STABLE AS $$
    SELECT s.run, s.version, s.dictionary, s.layer, s.feature,
           min(s.step) FILTER (WHERE s.density > min_density),
           (array_agg(s.density ORDER BY s.step) FILTER (WHERE s.density > min_density))[1],
           min(s.step), max(s.step),
           (array_agg(s.density ORDER BY s.step DESC))[1]
    FROM sae_fixed_feature_series s
    GROUP BY s.run, s.version, s.dictionary, s.layer, s.feature
$$;

CREATE VIEW sae_fixed_feature_birth AS
SELECT * FROM sae_fixed_births(0.001);

-- Births per step: fixed features (sae_fixed_feature_birth) beside the
-- sae item's lineages (lineages), by run, layer and step.
CREATE VIEW sae_births_by_step AS
WITH f AS (
    SELECT run, layer, birth_step AS step, count(*) AS fixed_born
    FROM sae_fixed_feature_birth WHERE birth_step IS NOT NULL
    GROUP BY run, layer, birth_step
), l AS (
    SELECT run, layer::int AS layer, birth_step AS step, count(*) AS lineages_born
    FROM lineages
    GROUP BY run, layer, birth_step
)
SELECT coalesce(f.run, l.run) AS run, coalesce(f.layer, l.layer) AS layer,
       coalesce(f.step, l.step) AS step, coalesce(f.fixed_born, 0) AS fixed_born,
       coalesce(l.lineages_born, 0) AS lineages_born
FROM f FULL JOIN l ON l.run = f.run AND l.layer = f.layer AND l.step = f.step;

GRANT SELECT ON sae_fixed_dictionaries, sae_fixed_feature_series, sae_fixed_dictionary_series,
    sae_fixed_feature_birth, sae_births_by_step TO ckptd_reader;
GRANT EXECUTE ON FUNCTION sae_fixed_births(double precision) TO ckptd_reader;
