-- 010_run_model: the shape of a run's model, for the cost model
-- (daemon/plan/cost.h): the keys of its config.json that set the battery's
-- work (num_hidden_layers, hidden_size, num_attention_heads,
-- intermediate_size, vocab_size, max_position_embeddings).  Recorded the
-- first time a node stages one of the run's checkpoints, or by
-- `ckptd plan RUN --model-config FILE`; NULL until then.

ALTER TABLE runs ADD COLUMN model jsonb;
