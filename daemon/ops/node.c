#include "daemon/ops/node.h"

#include <stdio.h>

#include "daemon/base/db.h"

int node_heartbeat(struct db *db, const struct node_info *ni, const char *activity, const char *stats,
                   struct err *e)
{
    char pid[16], workers[16], hb[32], up[32];
    snprintf(pid, sizeof pid, "%d", ni->pid);
    snprintf(workers, sizeof workers, "%d", ni->workers);
    snprintf(hb, sizeof hb, "%.3f", ni->heartbeat_s);
    snprintf(up, sizeof up, "%.3f", ni->uptime_s);
    const char *p[9] = {ni->node, ni->host, pid, ni->version, workers, hb, up, activity, stats};
    return db_run(db,
        "INSERT INTO nodes (node, host, pid, version, workers, heartbeat_s, started_at, heartbeat_at,"
        "                   stopped_at, activity, stats)"
        " VALUES ($1, $2, $3::int, $4, $5::int, $6::float8, now() - make_interval(secs => $7::float8), now(),"
        "         NULL, $8::jsonb, $9::jsonb)"
        " ON CONFLICT (node) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid, version = EXCLUDED.version,"
        "   workers = EXCLUDED.workers, heartbeat_s = EXCLUDED.heartbeat_s,"
        "   started_at = CASE WHEN nodes.pid = EXCLUDED.pid AND nodes.host = EXCLUDED.host"
        "                     AND nodes.stopped_at IS NULL THEN nodes.started_at ELSE EXCLUDED.started_at END,"
        "   heartbeat_at = now(), stopped_at = NULL, activity = EXCLUDED.activity, stats = EXCLUDED.stats",
        9, p, e);
}

int node_stopped(struct db *db, const char *node, int pid, struct err *e)
{
    char ps[16];
    snprintf(ps, sizeof ps, "%d", pid);
    const char *p[2] = {node, ps};
    return db_run(db,
        "UPDATE nodes SET stopped_at = now(), heartbeat_at = now(), activity = '[]'"
        " WHERE node = $1 AND pid = $2::int", 2, p, e);
}
