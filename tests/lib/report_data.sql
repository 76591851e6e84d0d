-- report_data.sql - a synthetic Pythia-like run for tests/report_browser.sh:
-- Pythia's 154 steps (0, 1, 2, 4 … 512, 1000 … 143000), step 3000 a
-- duplicate of step 2000 (same weights, so the same values), and, as the
-- battery would write them:
--   loss/loss               a sigmoid drop of 2 nats centred at step 4000
--   loss/icl_score_scaled   one series at idx 127
--   loss/loss_by_pos        idx 0..127 at every step
--   heads/induction_score   6 layers x 8 heads; L1 H3 and L2 H5 rise at ~3000
--   heads/prev_token_score  6 x 8; L0 H2 high early
--   lens/lens_loss          layers -1..5
--   llc/llc                 a scalar with NaN at step 64
-- and three transitions.  Strings that need escaping sit in the source,
-- a description and a method.  Values are rounded to 6 decimals.
-- psql -v run=NAME -f tests/lib/report_data.sql

INSERT INTO runs (name, source, schedule, items)
VALUES (:'run', 'file:///data/<script>alert("x")</script>&amp;''q''/step{step}', 'pythia',
        '{loss,heads,lens,llc,sae}');

INSERT INTO checkpoints (run_id, step, revision, url)
SELECT r.id, s.step, 'step' || s.step, 'file:///data/step' || s.step
FROM runs r,
     (SELECT 0::bigint AS step
      UNION ALL SELECT (2 ^ k)::bigint FROM generate_series(0, 9) k
      UNION ALL SELECT 1000 * k FROM generate_series(1, 143) k) s
WHERE r.name = :'run';

UPDATE checkpoints c SET duplicate_of = o.id
FROM checkpoints o, runs r
WHERE r.name = :'run' AND c.run_id = r.id AND o.run_id = r.id AND c.step = 3000 AND o.step = 2000;

INSERT INTO metrics (item, version, name, unit, description, layer_meaning, head_meaning, idx_meaning) VALUES
 ('loss', 2, 'loss', 'nats', 'mean next-token <b>cross-entropy</b> & "friends"', '', '', ''),
 ('loss', 2, 'icl_score_scaled', 'nats', 'in-context learning score', '', '', 'hi, the later token index'),
 ('loss', 2, 'loss_by_pos', 'nats', 'loss at one position', '', '', 'position t'),
 ('heads', 1, 'induction_score', 'probability', 'attention i -> i-L+1', 'layer of the head', 'head index', ''),
 ('heads', 1, 'prev_token_score', 'probability', 'attention i -> i-1', 'layer of the head', 'head index', ''),
 ('lens', 1, 'lens_loss', 'nats', 'logit lens loss', 'layer l; -1 the embedding', '', ''),
 ('llc', 1, 'llc', '', 'local learning coefficient', '', '', '')
ON CONFLICT (item, version, name) DO NOTHING;

-- s: the step; e: the step whose weights it has (2000 for the duplicate)
CREATE TEMP VIEW steps AS
SELECT c.run_id, c.step AS s, coalesce(o.step, c.step)::float8 AS e
FROM checkpoints c JOIN runs r ON r.id = c.run_id LEFT JOIN checkpoints o ON o.id = c.duplicate_of
WHERE r.name = :'run';

CREATE TEMP VIEW mid AS SELECT id, item, name FROM metrics;

INSERT INTO measurements (run_id, step, metric_id, layer, head, idx, value)
SELECT run_id, s, (SELECT id FROM mid WHERE item = 'loss' AND name = 'loss'), -1, -1, -1,
       round((10.5 - 0.6 * ln(1 + e) - 2.0 / (1 + exp(-4 * (ln(e + 1) - ln(4000)))))::numeric, 6)::float8
FROM steps;

INSERT INTO measurements (run_id, step, metric_id, layer, head, idx, value)
SELECT run_id, s, (SELECT id FROM mid WHERE item = 'loss' AND name = 'icl_score_scaled'), -1, -1, 127,
       round((-0.1 - 1.5 / (1 + exp(-3 * (ln(e + 1) - ln(3000)))))::numeric, 6)::float8
FROM steps;

INSERT INTO measurements (run_id, step, metric_id, layer, head, idx, value)
SELECT run_id, s, (SELECT id FROM mid WHERE item = 'loss' AND name = 'loss_by_pos'), -1, -1, t,
       round((8 - 0.4 * ln(t + 2) * (1 + ln(1 + e) / 4))::numeric, 6)::float8
FROM steps, generate_series(0, 127) t;

INSERT INTO measurements (run_id, step, metric_id, layer, head, idx, value)
SELECT run_id, s, (SELECT id FROM mid WHERE item = 'heads' AND name = 'induction_score'), l, h, -1,
       round((0.01 + 0.005 * ((l * 8 + h) % 5)
              + CASE WHEN (l, h) IN ((1, 3), (2, 5)) THEN 0.8 / (1 + exp(-5 * (ln(e + 1) - ln(3000)))) ELSE 0 END
             )::numeric, 6)::float8
FROM steps, generate_series(0, 5) l, generate_series(0, 7) h;

INSERT INTO measurements (run_id, step, metric_id, layer, head, idx, value)
SELECT run_id, s, (SELECT id FROM mid WHERE item = 'heads' AND name = 'prev_token_score'), l, h, -1,
       round((0.05 + 0.01 * h + CASE WHEN (l, h) = (0, 2) THEN 0.9 * (1 - exp(-e / 500)) ELSE 0 END)::numeric, 6)::float8
FROM steps, generate_series(0, 5) l, generate_series(0, 7) h;

INSERT INTO measurements (run_id, step, metric_id, layer, head, idx, value)
SELECT run_id, s, (SELECT id FROM mid WHERE item = 'lens' AND name = 'lens_loss'), l, -1, -1,
       round((10.8 - (l + 1) * 0.9 * (1 - exp(-e / 2000)))::numeric, 6)::float8
FROM steps, generate_series(-1, 5) l;

INSERT INTO measurements (run_id, step, metric_id, layer, head, idx, value)
SELECT run_id, s, (SELECT id FROM mid WHERE item = 'llc' AND name = 'llc'), -1, -1, -1,
       CASE WHEN s = 64 THEN 'NaN'::float8 ELSE round((5 + 20 * (1 - exp(-e / 10000)))::numeric, 6)::float8 END
FROM steps;

INSERT INTO transitions (run_id, metric_id, layer, head, idx, start_step, peak_step, end_step, magnitude, score, method)
SELECT r.id, m.id, t.layer, t.head, t.idx, t.a, t.p, t.b, t.mag, t.score, t.method
FROM runs r,
     (VALUES ('loss', 'loss', -1, -1, -1, 1000, 4000, 8000, -2.0, 5.5, 'test <pelt> & co'),
             ('loss', 'icl_score_scaled', -1, -1, 127, 1000, 3000, 6000, -1.5, 4.0, 'test'),
             ('heads', 'induction_score', 1, 3, -1, 2000, 3000, 6000, 0.78, 9.0, 'test'))
       AS t(item, name, layer, head, idx, a, p, b, mag, score, method)
JOIN metrics m ON m.item = t.item AND m.name = t.name
WHERE r.name = :'run';

-- a spike of the loss at step 16 (schema/009_spikes.sql)
INSERT INTO transitions (run_id, metric_id, start_step, peak_step, end_step, magnitude, score, method, kind,
                         level_before, level_after)
SELECT r.id, m.id, 16, 16, 16, 0.5, 12.0, 'test', 'spike', 3.0, 3.5
FROM runs r JOIN metrics m ON m.item = 'loss' AND m.name = 'loss'
WHERE r.name = :'run';
