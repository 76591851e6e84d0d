/*
 * forecast.h - a run's cost from the cost model (cost.h) and the database:
 * what `ckptd plan` prints before a run starts, and the ETA `ckptd status`
 * gives while it runs.
 *
 * The model needs the run's shape (runs.model: recorded from the
 * config.json of the first checkpoint a node stages, or given to `ckptd
 * plan --model-config FILE`; a file:// source's first checkpoint is read
 * directly), its settings (the eval set's size from its token file and
 * the run's options, SAE sites, probe sets, sweep_every) and its items.
 * While the run goes on, the checkpoints done tell how the node compares
 * with the model: the ETA is the projected seconds of the checkpoints
 * left, times the measured/projected ratio of the last ones done, divided
 * by the workers on the run.
 *
 *     struct forecast f;
 *     if (forecast_load(db, "pythia-160m", &f, &e) < 0) ...
 *     if (f.has_shape) forecast_print(&f, 1, 1, cost_reference_gflops(), 0, stdout);
 *     double eta = forecast_eta(&f, cost_reference_gflops());   // seconds, or NAN
 */
#ifndef CKPTD_FORECAST_H
#define CKPTD_FORECAST_H

#include <stdio.h>

#include "common/err.h"
#include "daemon/plan/cost.h"

#define FORECAST_ITEMS 64
#define FORECAST_RECENT 20 /* checkpoints done that calibrate the ETA */

struct forecast {
    char run[256];
    long long run_id;
    int has_shape;
    struct cost_shape shape;
    struct cost_run set;
    char items[FORECAST_ITEMS][64];
    int nitems;
    int checkpoints;       /* the run's checkpoints (its schedule) */
    int done, left;        /* finished (done or dead) and not */
    int left_sweeps;       /* of those left, on the skeleton */
    int running;           /* checkpoints being analysed now (workers on the run) */
    int recent;            /* done checkpoints in the measured ratio */
    int recent_sweeps;     /* of those, full sweeps */
    double measured_s;     /* their worker seconds */
    double projected_s;    /* their projected seconds at the reference rate */
};

struct db;

/* The run's settings from its options (runs.options as text): eval set
 * (eval_tokens: its file's size in sequences of ctx, at most eval_seqs;
 * otherwise the generated 16 x 128), sae_sites, probes, sweep_every.
 * ERR_FORMAT for malformed options; an unreadable token file is ERR_IO. */
int forecast_run_settings(const char *options, struct cost_run *out, struct err *e) CK_WUR;

/* Record the shape of the run's model from DIR/config.json when the run
 * has none yet (runs.model IS NULL).  Returns 1 when recorded, 0 when
 * there was one already, a negative code on failure (a missing or
 * malformed config.json: ERR_IO, ERR_FORMAT). */
int forecast_note_model(struct db *db, long long run_id, const char *dir, struct err *e) CK_WUR;

/* Store a shape given by the user (a config.json's text), replacing any. */
int forecast_set_model(struct db *db, long long run_id, const char *config_json,
                       struct err *e) CK_WUR;

/* Everything about the run the forecast needs.  has_shape is 0 when no
 * shape is known (nothing else fails then).  ERR_NOTFOUND for no such run. */
int forecast_load(struct db *db, const char *run, struct forecast *f, struct err *e) CK_WUR;

/* A forecast without a database: the shape from a config.json's text,
 * the items (nitems), the settings, `checkpoints` checkpoints none of them
 * done.  ERR_FORMAT for a bad config.json, ERR_INVALID for too many items. */
int forecast_offline(struct forecast *f, const char *name, const char *config_json,
                     const char *const *items, int nitems, const struct cost_run *set,
                     int checkpoints, struct err *e) CK_WUR;

/* The text of a (config.json) file, malloc'd; NULL with e filled. */
char *forecast_read_file(const char *path, struct err *e);

/* The projection: per item seconds per checkpoint (ordinary and
 * full-sweep), the shared eval forward, per checkpoint, per series on one
 * node and on `nodes` nodes with `workers` workers each, at `gflops`;
 * with json a JSON object instead of the table. */
void forecast_print(const struct forecast *f, int nodes, int workers, double gflops, int json,
                    FILE *out);

/* Seconds until the run is done at the current pace: the projection of
 * the checkpoints left times the measured/projected ratio of the recent
 * ones (1 when none is done yet), over the workers on it (at least 1).
 * NAN without a shape; 0 when nothing is left. */
double forecast_eta(const struct forecast *f, double gflops);

/* The measured/projected ratio of the recent checkpoints, or NAN. */
double forecast_ratio(const struct forecast *f, double gflops);

#endif
