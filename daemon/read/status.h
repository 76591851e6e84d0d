/*
 * status.h - `ckptd status [RUN]`: the one place a person looks.
 *
 * Per run: checkpoints done / running / failed / queued of the total, a
 * progress bar and an ETA: the cost model's (plan/forecast.h) when the
 * run's shape is known (the projected seconds of the checkpoints left,
 * scaled by the measured/projected ratio of the recent ones, over the
 * workers on the run), else the rate over the last hour; then the jobs that
 * are failing or dead with their last error; then, per node, what its
 * workers are doing (run, step, items, for how long, lease left); then,
 * from each node's row in `nodes` (node.h), the nodes themselves: host,
 * pid, version, uptime, the age of their heartbeat (STALE after three
 * missed ones), stopped ones, and per checkpoint held its phase (fetching
 * with bytes and rate, staged, analysing with the worker's pid, storing),
 * job ids, items, attempt, for how long and the lease left.
 */
#ifndef CKPTD_STATUS_H
#define CKPTD_STATUS_H

#include <stdio.h>

#include "common/err.h"

struct db;

/* Print the status of one run (by name) or of all runs when run is NULL. */
int status_print(struct db *db, const char *run, FILE *out, struct err *e) CK_WUR;

#endif
