/*
 * node.h - this daemon's row in `nodes` (schema/006_nodes.sql): who it is,
 * its counters, and what each checkpoint it holds is doing, for
 * `ckptd status`.
 *
 * The serve loop calls node_heartbeat() every heartbeat_s (and once when
 * it becomes ready) with the activity and stats JSON it builds; the row's
 * heartbeat_at tells status the node is alive, and the statement is the
 * database round trip that /healthz and the systemd watchdog count on when
 * the node is otherwise idle.  Times inside activity are durations
 * ("for_s"), so readers add the row's age and no two clocks are compared.
 * node_stopped() marks a clean stop.
 *
 *     struct node_info ni = {"gpu07", "gpu07.cluster", CKPTD_VERSION, getpid(), 2, 10, uptime};
 *     if (node_heartbeat(db, &ni, "[]", "{}", &e) < 0) log_err("node heartbeat failed", &e);
 *     ...
 *     node_stopped(db, "gpu07", getpid(), &e);
 */
#ifndef CKPTD_NODE_H
#define CKPTD_NODE_H

#include "common/err.h"

struct db;

struct node_info {
    const char *node;     /* the lease owner name */
    const char *host;
    const char *version;
    int pid;
    int workers;
    double heartbeat_s;
    double uptime_s;      /* seconds since this process started */
};

/* Insert or renew the row (a restarted node of the same name takes it
 * over, stopped_at cleared).  activity: a JSON array; stats: a JSON
 * object. */
int node_heartbeat(struct db *db, const struct node_info *ni, const char *activity, const char *stats,
                   struct err *e) CK_WUR;

/* A clean stop: stopped_at now, activity emptied; only if the row is
 * still this process's (node and pid). */
int node_stopped(struct db *db, const char *node, int pid, struct err *e) CK_WUR;

#endif
