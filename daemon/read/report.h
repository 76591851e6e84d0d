/*
 * report.h - `ckptd report RUN`: one self-contained HTML page per run, with
 * SVG charts drawn here (no script, no network, inline CSS).
 *
 * The page holds, read in one read-only snapshot of the database:
 *   - a header: name, source, schedule, items, options, counts of
 *     checkpoints (analysed, duplicates), jobs by state, measurements, and
 *     the table of detected transitions;
 *   - per battery item, one line chart per single series (a metric with one
 *     (layer, head, idx) key, e.g. `loss`): x = step on a log axis, y
 *     linear; every point a <circle data-step data-value>; duplicate
 *     checkpoints grey and left out of the line; the series' transitions as
 *     shaded [start, end] bands with a line at the peak;
 *   - per metric whose keys differ only in idx (`loss_by_pos`): a profile,
 *     value against idx, at up to REPORT_PROFILE_STEPS steps spread evenly
 *     on the log-step axis;
 *   - per metric with heads, or with several layers: a heatmap, one row per
 *     (layer, head) or (layer, idx), one <rect data-step data-value> per
 *     checkpoint column on the same log axis, a colour legend; duplicate
 *     checkpoints grey; transitions outlined on their row;
 *   - SAE lineages (table `feature_lineages`, when it exists): per layer one
 *     bar per lineage from birth to death (or to its last step while alive),
 *     sorted by birth.
 *
 * The x axis: step s > 0 at log10(s) between the decades around the run's
 * smallest and largest positive steps; step 0, which a log axis cannot
 * hold, sits at the left edge, REPORT_ZERO_GAP pixels left of the axis
 * break (the schedule's steps 0, 1, 2, 4 … 512, 1000 … 143000 spread out
 * evenly early, as Pythia saves them).
 *
 * Caps that keep the page small (each one is stated on the page where it
 * applies): REPORT_HEAT_ROWS rows per heatmap (those whose values change
 * most), REPORT_HEAT_IDX idx values per per-head metric, REPORT_HEAT_BUDGET
 * cells on the whole page, REPORT_PROFILE_STEPS profiles of at most
 * REPORT_PROFILE_POINTS points, REPORT_LINEAGES bars per layer,
 * REPORT_TRANSITION_ROWS rows in the transitions table.
 *
 *     struct report_stats st;
 *     if (report_write(db, "pythia-70m", "report-pythia-70m", &st, &e) < 0) ...
 *     // report-pythia-70m/index.html, st.bytes, st.points, st.cells
 */
#ifndef CKPTD_REPORT_H
#define CKPTD_REPORT_H

#include <stddef.h>
#include <stdio.h>

#include "common/err.h"

struct db;

#define REPORT_ZERO_GAP 24        /* px between step 0 and the log axis */
#define REPORT_HEAT_ROWS 64       /* rows per heatmap */
#define REPORT_HEAT_IDX 2         /* heatmaps (idx values) per per-head metric */
#define REPORT_HEAT_BUDGET 100000 /* heatmap cells on one page (about 100 bytes each) */
#define REPORT_PROFILE_STEPS 6    /* profiles per idx metric */
#define REPORT_PROFILE_POINTS 1024
#define REPORT_LINEAGES 200       /* lineage bars per SAE layer */
#define REPORT_TRANSITION_ROWS 300

/* What a written page holds. */
struct report_stats {
    long long bytes;   /* size of index.html */
    int empty;         /* 1: the run has no measurements yet */
    int line_charts;   /* single-series charts */
    int points;        /* their point elements */
    int profiles;      /* profile charts */
    int heatmaps;
    long cells;        /* heatmap cells */
    int lineages;      /* lineage bars drawn */
    int transitions;   /* transitions of the run */
};

/* ---- the page ---- */

/* Write DIR/index.html for the run named `run`: created as a temporary
 * file in DIR (made with its parents when missing) and renamed into
 * place, so a reader sees the old page or the new one, never a part.
 * Returns 0, ERR_NOTFOUND when no run has that name ("no run named …"),
 * ERR_DB or ERR_IO; on failure no index.html is written or changed.
 * st (may be NULL) gets what the page holds. */
int report_write(struct db *db, const char *run, const char *dir, struct report_stats *st,
                 struct err *e) CK_WUR;

/* The default output directory for a run: "report-<run>" with every '/'
 * of the name turned into '_'. */
void report_default_dir(char *buf, size_t n, const char *run);

/* ---- pure pieces (exposed for tests) ---- */

/* The step axis: x = left for step 0 (when the run has one); positive steps
 * on log10 between the decades lo ≤ log10(min positive step) and
 * hi ≥ log10(max step), from left + REPORT_ZERO_GAP (or left when there is
 * no step 0) to left + width. */
struct report_axis {
    double left, width, gap;
    double lo, hi; /* log10 of the axis ends: lo a whole decade */
};

/* min_pos: smallest positive step (0 when there is none); max_step: the
 * largest step; has_zero: the run has step 0. */
void report_axis_init(struct report_axis *a, int has_zero, long long min_pos, long long max_step,
                      double left, double width);

/* x of a step (steps below 10^lo clamp to the axis start). */
double report_axis_x(const struct report_axis *a, long long step);

/* The step axis of a chart whose plot ends at y, as SVG elements: the
 * decades labelled ("1", "10", "1k" ...), the steps between them as small
 * ticks, step 0 left of a break mark. */
void report_step_axis(FILE *out, const struct report_axis *ax, double y);

/* Write s with & < > " ' as character references; NULL writes nothing. */
void report_html_escape(FILE *out, const char *s);

/* The colour of t in [0, 1] (clamped) on the heatmap ramp: 9 anchors from
 * dark purple to yellow after matplotlib's viridis (one per eighth), linear in
 * sRGB between them, as "#rrggbb"; its luminance rises with t. NaN gives
 * "#ffffff". */
void report_color(char out[8], double t);

/* Up to max "nice" ticks (1, 2 or 5 times a power of ten) covering
 * [lo, hi], about `want` of them; returns how many were written. */
int report_nice_ticks(double lo, double hi, int want, double *ticks, int max);

/* The shortest decimal that reads back as exactly v (%.15g, %.16g or
 * %.17g), or "NaN", "Infinity", "-Infinity" as PostgreSQL writes them. */
void report_fmt_double(char *buf, size_t n, double v);

#endif
