/*
 * detect.h - transitions in the database: after a checkpoint's rows land,
 * every series of the run they touch is examined again (transitions.h)
 * and its transitions replaced; and `ckptd detect` / `ckptd transitions`.
 *
 * One pass per call, in one transaction: an advisory lock per run (two
 * nodes storing checkpoints of one run take turns), one COPY out of the
 * touched series ordered by (metric, layer, head, idx, step) leaving out
 * checkpoints marked as duplicates or suspect (integrity.h), detection in C, then DELETE of the
 * series' TR_METHOD rows and COPY in of the new ones.  Either all the
 * series' transitions are replaced or none are; a failure never touches
 * the measurements, which were committed before (ingest.h).
 *
 *     struct detect_stats st;
 *     const char *items[] = {"loss"};
 *     int versions[] = {2};
 *     if (detect_run(db, run_id, items, versions, 1, &st, &e) < 0)
 *         log_err("transition detection failed", &e);   // measurements stay
 */
#ifndef CKPTD_DETECT_H
#define CKPTD_DETECT_H

#include <stdio.h>

#include "common/err.h"

#define DETECT_LOCK 74210002 /* pg_advisory_xact_lock(DETECT_LOCK, run id) */

struct db;
struct claim;

struct detect_stats {
    long series;       /* series examined */
    long points;       /* their points (duplicates left out) */
    long transitions;  /* transition rows written */
    long spikes;       /* spike rows written */
    double read_s;     /* COPY out and detection, interleaved */
    double write_s;    /* delete and COPY in, commit */
};

/* Re-examine the series of run run_id whose metric belongs to one of the
 * nitems (item, version) pairs, or every series of the run when nitems is
 * 0, and replace their TR_METHOD transitions.  st (may be NULL) gets the
 * counts.  ERR_DB on a database failure (rolled back: nothing changed;
 * the connection is marked lost if it went), ERR_NOMEM. */
int detect_run(struct db *db, long long run_id, const char *const *items, const int *versions,
               int nitems, struct detect_stats *st, struct err *e) CK_WUR;

/* After ingest_commit stored a claim's rows: detect_run over its items,
 * logged either way; a failure is logged and otherwise ignored. */
void detect_after_ingest(struct db *db, const struct claim *c);

/* `ckptd detect RUN`: every series of the run by name.  ERR_NOTFOUND for
 * an unknown run. */
int detect_run_named(struct db *db, const char *run, struct detect_stats *st, struct err *e) CK_WUR;

struct detect_list_opts {
    const char *metric;   /* only this metric (NAME or ITEM/NAME); NULL: all */
    double min_score;     /* only events scoring at least this */
    int json;             /* a JSON array instead of the table */
    const char *method;   /* only rows of this method; NULL: TR_METHOD; "all": every method */
    const char *kind;     /* only "transition" or "spike" rows; NULL: both */
};

/* `ckptd transitions RUN`: the run's transitions ordered by peak step, one
 * line each under a header line, or a JSON array of objects (run, metric,
 * item, version, layer, head, idx, start_step, peak_step, end_step,
 * magnitude, score, method, group).  group numbers transitions of the run
 * (at or above min_score, any metric) whose [start, end] windows overlap
 * (tr_group).  ERR_NOTFOUND for an unknown run. */
int detect_list(struct db *db, const char *run, const struct detect_list_opts *o, FILE *out,
                struct err *e) CK_WUR;

#endif
