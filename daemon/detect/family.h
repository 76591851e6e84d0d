/*
 * family.h - runs that differ by seed, side by side: is a transition a
 * property of the model and its data, or an accident of one seed?
 *
 * A family is a named group of runs (EleutherAI's PolyPythias: pythia-160m
 * under 9 seeds, `hf://EleutherAI/pythia-160m-seed{1..9}`; toy runs of
 * `ckpt-worker train --seed N`).  Each member's series are examined by the
 * detector as any run's are (detect.h, after each checkpoint lands, with
 * duplicates and suspect checkpoints left out); the family analysis reads
 * the members' transitions and series and writes:
 *
 *  - family_transitions: per series (metric, layer, head, idx), each
 *    member's changes (family_changes: its touching stages joined, those of
 *    at least half its largest kept; memorising and grokking both stand);
 *    the members' changes of the same sign whose [start, end] windows
 *    overlap, transitively across members (tr_group of transitions.h), form
 *    a cluster; clusters that share no member and have like magnitudes
 *    are then matched, nearest first (family_cluster): grokking's step
 *    varies by seed, and one seed's window need not overlap another's.
 *    Per member the transition with the highest score stands for it.
 *    members_found over members_total (the members whose series has
 *    TR_MIN_POINTS believed points, so the detector could look), the
 *    spread of the peak steps (min, median, max, and in checkpoints of the
 *    family's schedule), the median magnitude.  A cluster found in at least
 *    2/3 of members_total (and in 2 or more) is the family's transition.
 *  - family_outliers: members that depart from the others, per series:
 *      band               at each step where the member and at least two
 *                         others have a believed finite value, the others'
 *                         band is [min - h, max + h], h = max(their range,
 *                         FAMILY_BAND_FLOOR x the family's range of the
 *                         series over all steps); a member outside it on more
 *                         than FAMILY_BAND_FRACTION of those steps (at least
 *                         3 compared), and FAMILY_BAND_RATIO times as often
 *                         as the median of the other members is outside
 *                         theirs, is an outlier (value: the fraction).  The
 *                         second condition keeps series where every seed
 *                         goes its own way (which Fourier frequencies a
 *                         modular-addition run picks) from naming one;
 *      transition_absent  a family transition the member does not show
 *                         although its series could (value: the family's
 *                         median peak step);
 *      transition_far     it shows it, with its peak more than
 *                         max(FAMILY_FAR_CKPTS, 3 x 1.4826 x the others' MAD)
 *                         checkpoints from the others' median peak, in
 *                         positions of the family's schedule (value: the
 *                         distance in checkpoints; needs 2 others).
 *    Series looked at for the band rule: those where some member has a
 *    transition, and every series of metrics with at most FAMILY_BAND_KEYS
 *    keys (scalars, per-layer and small per-head metrics), so a Pythia
 *    family's 30,000 composition series cost nothing unless one moves.
 *  - the view family_bands (schema/013_families.sql): per step and series,
 *    the members' count, mean, standard deviation, median, min and max.
 *
 * The analysis runs in one transaction per family under an advisory lock
 * (another node skips a family being analysed), from the serve tick when a
 * member's results or transitions changed since the last one (at most every
 * FAMILY_EVERY_S per family), and on `ckptd detect --family NAME`.
 *
 *     struct family_stats st;
 *     if (family_add(db, "pythia-160m-seeds", runs, 9, &added, &e) < 0) ...
 *     if (family_analyse_named(db, "pythia-160m-seeds", &st, &e) < 0) ...
 *     // st.family_transitions, st.outliers
 */
#ifndef CKPTD_FAMILY_H
#define CKPTD_FAMILY_H

#include <stdio.h>

#include "common/err.h"

#define FAMILY_LOCK 74210019     /* pg_try_advisory_xact_lock(FAMILY_LOCK, family id) */
#define FAMILY_BAND_FLOOR 0.05   /* of the series' range: the least widening of a band */
#define FAMILY_BAND_FRACTION 0.5 /* outside on more than this share of the steps compared */
#define FAMILY_BAND_RATIO 2.0    /* and this many times as often as the others are */
#define FAMILY_BAND_KEYS 64      /* metrics with at most this many series get the band rule */
#define FAMILY_FAR_CKPTS 3       /* a peak closer than this (in checkpoints) is never far */
#define FAMILY_MATCH_RATIO 2.0   /* disjoint clusters of like magnitude are one transition */
#define FAMILY_CHANGE_SHARE 0.5  /* a member's changes of at least this share of its largest count */
#define FAMILY_EVERY_S 10.0      /* a family is analysed again at most this often by the tick */

struct db;
struct detect_list_opts;

/* ---- membership ---- */

/* Create the family when missing and add the runs (by name) to it; runs
 * already members are left alone.  *added (may be NULL) gets how many were
 * new.  ERR_NOTFOUND naming the first run that does not exist (nothing is
 * written), ERR_INVALID for a bad family name, ERR_DB. */
int family_add(struct db *db, const char *family, const char *const *runs, int nruns, int *added,
               struct err *e) CK_WUR;

/* ---- the analysis ---- */

struct family_stats {
    int members;
    int series;              /* series with a member transition, or banded */
    int clusters;            /* family_transitions rows */
    int family_transitions;  /* of those, the family's (>= 2/3 of the members) */
    int outliers;            /* family_outliers rows */
    double seconds;
};

/* Analyse the family (by id) now, replacing its rows.  ERR_DB (rolled
 * back), ERR_NOMEM.  With `try` set, a family another session is
 * analysing is skipped (st->members = -1). */
int family_analyse(struct db *db, long long family_id, int try_lock, struct family_stats *st,
                   struct err *e) CK_WUR;

/* The same by name; ERR_NOTFOUND for an unknown family. */
int family_analyse_named(struct db *db, const char *family, struct family_stats *st, struct err *e) CK_WUR;

/* The tick's duty: analyse every family whose members' results,
 * transitions or membership changed since its last analysis and whose
 * last analysis is FAMILY_EVERY_S old; failures are logged. */
void family_duty(struct db *db);

/* The ids of the family's member runs (by name), in name order; *ids is
 * the caller's to free.  ERR_NOTFOUND for an unknown family. */
int family_member_ids(struct db *db, const char *family, long long **ids, int *n, struct err *e) CK_WUR;

/* `ckptd transitions --family NAME`: the family's clusters, the family's
 * own first (then by median peak), with members found, peaks and their
 * spread, then the outliers; o->json: one JSON object {"family",
 * "members", "transitions": [...], "outliers": [...]}.  o->metric filters
 * as for runs.  ERR_NOTFOUND for an unknown family. */
int family_list(struct db *db, const char *family, const struct detect_list_opts *o, FILE *out,
                struct err *e) CK_WUR;

/* ---- pure pieces (exposed for tests) ---- */

/* One member's transition of one series. */
struct family_tr {
    int member;            /* index of the member */
    long long start, peak, end;
    double magnitude, score;
};

/* One member's transitions of one series, t (n, by peak), made its
 * changes in place: stages of one sign whose windows touch or overlap
 * (level-v2 splits one change into stages) are joined, in peak order,
 * into one change (the windows' union, the sum of the magnitudes, the
 * peak of the larger part, the highest score); then the changes smaller
 * than FAMILY_CHANGE_SHARE x the member's largest |magnitude| are dropped
 * (a shoulder apart from the rise, a wobble on a plateau), so that
 * memorising and grokking both stand, and nothing smaller.  Returns the
 * number kept, in peak order. */
int family_changes(struct family_tr *t, int n);

/* Cluster n transitions of one series: same sign and overlapping windows,
 * transitively; then clusters of one sign that share no member and whose
 * mean |magnitude| are within FAMILY_MATCH_RATIO of each other are one
 * transition seen at different steps (grokking under different seeds),
 * the nearest pair (by mean peak step) merged first, until none is left.
 * cluster[i] numbers them from 1.  Returns the number of
 * clusters, or ERR_NOMEM. */
int family_cluster(const struct family_tr *t, int n, int *cluster) CK_WUR;

/* The band rule over `members` members x `steps` steps of one series,
 * values row-major per member, NaN where a member has none: fraction[m]
 * (NaN when it was compared on fewer than 3 steps), compared[m], and
 * outlier[m] (1: the rule names it).  Returns the number named. */
int family_band(const double *values, int members, int steps, double *fraction, int *compared, int *outlier);

/* The far rule: pos (n) the members' peak positions (checkpoints), i the
 * one judged; *dist gets |pos[i] - median of the others|, *limit the
 * limit.  1 when far, 0 when not, -1 with fewer than 2 others. */
int family_far(const double *pos, int n, int i, double *dist, double *limit);

#endif
