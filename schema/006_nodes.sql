-- 006_nodes: the daemons and what each of their worker slots is doing, for
-- `ckptd status` and dashboards.
--
-- One row per node name (serve --node, default host:pid), written by that
-- node's serve loop every heartbeat_s (daemon/node.h).  A row whose
-- heartbeat_at is older than three heartbeats belongs to a node that died
-- or is cut off from the database; stopped_at is set by a clean stop.
-- activity holds one object per checkpoint the node holds:
--   {"phase": "fetching"|"staged"|"analysing"|"storing", "run", "step",
--    "checkpoint", "jobs": [ids], "items": [names], "attempt",
--    "for_s" (seconds in this phase when the row was written),
--    "pid" (analysing), "bytes_done", "bytes_total", "bytes_per_s" (fetching)}
-- stats holds the node's counters since it started (the same numbers as
-- its /metrics): jobs_claimed, jobs_done, jobs_failed, leases_lost,
-- fetch_bytes, db_reconnects, worker_s, download_s.

CREATE TABLE nodes (
    node         text PRIMARY KEY,
    host         text NOT NULL,
    pid          int NOT NULL,
    version      text NOT NULL,
    workers      int NOT NULL,
    heartbeat_s  double precision NOT NULL CHECK (heartbeat_s > 0),
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    stopped_at   timestamptz,
    stats        jsonb NOT NULL DEFAULT '{}',
    activity     jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(activity) = 'array')
);

GRANT SELECT ON nodes TO ckptd_reader;
