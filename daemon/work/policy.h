/*
 * policy.h - the order a run's jobs are claimed in: compute where the
 * change is.
 *
 * `order` (the default): every job of the run at priority 0; the claim
 * takes the checkpoints in the order they were added, all items at once.
 *
 * `adaptive` (`ckptd add-run --policy adaptive`): the researcher sees the
 * transition before the whole series is done.
 *   0  first pass: the cheap items on every checkpoint, and on a sparse
 *                skeleton (every POLICY_SKELETON_EVERY-th checkpoint of
 *                the schedule and both ends) the expensive items with
 *                them, in the same claim;
 *   1  dense:    the expensive items on the checkpoints around the cheap
 *                items' transitions, once the first pass is done;
 *   2  rest:     everything else.
 * Until the dense phase is planned, the jobs of phases 1 and 2 are held
 * (priority 3, POLICY_P_HELD, which no claim takes): a node that claims
 * ahead of its workers (prefetch) would otherwise take a job of the rest
 * while the first pass's last checkpoint is analysed, before the plan
 * knows where the change is.
 * The numbers are jobs.priority: the claim (queue.h) takes the checkpoint
 * whose due jobs have the lowest priority, and of it the jobs of that
 * priority or lower, so a checkpoint is claimed once per phase that has
 * work on it: a skeleton checkpoint once, any other twice (its cheap
 * items, then its expensive ones).  Across runs the phases are shared:
 * every run's first pass comes before any run's dense phase.
 *
 * What the policy costs: a second claim per checkpoint off the skeleton,
 * each a worker start, a load of the checkpoint and a store (with
 * prefetch, serve starts and loads the next worker while the current one
 * analyses, and stores the last one's rows meanwhile: what is left is the
 * second worker's own run).  So that
 * nothing else is paid twice, a checkpoint staged again whose files are
 * those recorded is not recorded or judged again (checkpoint_files.h),
 * and the first pass's series are examined for transitions once, when it
 * ends (policy_after_ingest), not after each of its claims; from then on
 * each claim's series are examined as it lands, as under `order`.
 *
 * Cheap and expensive come from the cost model (daemon/plan/cost.h): the
 * items sorted by their projected seconds per checkpoint for the run's
 * model shape (runs.model where recorded, else a file:// run's first
 * config.json, else pythia-70m's) and settings; the cheap ones are the
 * cheapest whose seconds add up to at most POLICY_CHEAP_SHARE of a
 * checkpoint's (at least one item; an item the model does not price counts
 * 0 s, and an item depending on an expensive one is expensive).  While no
 * job of the run has finished, the planner classifies again when a better
 * shape has become known.
 *
 * The dense phase is planned (policy_plan) when the run's first pass is
 * finished: each series of the cheap items (`integrity` left out: it
 * checks, it does not measure) gives its strongest transition (the
 * highest score; spikes left out), whose peak widened by
 * POLICY_WINDOW_MARGIN checkpoints on either side is a window weighing
 * its score; overlapping windows merge (weights add up), and the heaviest
 * are densified first until POLICY_DENSE_SHARE of the run's checkpoints
 * (a window larger than what is left gets the checkpoints nearest its
 * weighted mean peak).  Peaks, not [start, end]: the level-v2 detector
 * splits a series' change into stages, and the spans of slowly drifting
 * series' stages chain into one window covering the whole run.  Items that read the previous checkpoint (sae
 * with warm start, sae_match) still wait for it (queue.h): they gain less.
 *
 *     if (policy_apply(db, "pythia-160m", "adaptive", &e) < 0) ...   // add-run
 *     if (policy_after_ingest(db, &claim, detect_whole_run))   // serve: plans when the first pass ends
 *         detect_after_ingest(db, &claim);
 *     char phase[256]; policy_phase(db, run_id, phase, sizeof phase, &e);   // status
 */
#ifndef CKPTD_POLICY_H
#define CKPTD_POLICY_H

#include <stddef.h>

#include "common/err.h"

#define POLICY_CHEAP_SHARE 0.25
#define POLICY_SKELETON_EVERY 8
#define POLICY_WINDOW_MARGIN 2
#define POLICY_DENSE_SHARE 0.25

enum policy_priority {
    POLICY_P_FIRST = 0,
    POLICY_P_DENSE = 1,
    POLICY_P_REST = 2,
    POLICY_P_HELD = 3, /* phases 1 and 2 before the plan: not claimed */
    POLICY_P_COUNT
};

struct db;
struct claim;

/* Is `name` a policy ("order", "adaptive")? */
int policy_known(const char *name);

/* Set the run's policy (by name) and its queued jobs' priorities; for
 * adaptive, classify its items and write its plan (run_plans), keeping
 * densified windows already planned.  Idempotent.  ERR_NOTFOUND for no
 * such run, ERR_INVALID for an unknown policy, ERR_DB. */
int policy_apply(struct db *db, const char *run, const char *policy, struct err *e) CK_WUR;

/* What policy_plan returns besides 0 (nothing to do) and errors. */
#define POLICY_PLANNED 1    /* the dense phase was planned */
#define POLICY_FIRST_PASS 2 /* the first pass goes on: its series wait */

/* Examine every series of a run for transitions (detect.h's detect_run
 * over the run; the caller's, so that work/ needs nothing of detect/):
 * 0 or a negative code. */
typedef int (*policy_detect_fn)(struct db *db, long long run_id, struct err *e);

/* Plan the dense phase of the adaptive run when its first pass is over and
 * it has not been planned: first `detect` (may be NULL) examines every
 * series of the run, then the plan reads their transitions.  Reclassify
 * while nothing is done.  Returns POLICY_PLANNED, POLICY_FIRST_PASS while
 * the first pass goes on, 0 when there was nothing to do (an order run, a
 * planned one), or a negative code (nothing planned; the tick tries
 * again). */
int policy_plan(struct db *db, long long run_id, policy_detect_fn detect, struct err *e) CK_WUR;

/* After a claim was stored: policy_plan for its run (failures logged).
 * Returns 1 when the claim's series are to be examined now
 * (detect_after_ingest), 0 when not: the adaptive run's first pass goes
 * on (examined at its end, once, instead of after every claim), or it
 * ended with this claim and the whole run was examined for the plan. */
int policy_after_ingest(struct db *db, const struct claim *c, policy_detect_fn detect);

/* The tick's duty: policy_plan for every adaptive run not planned yet
 * (a first pass that ended with dead jobs, a node that died); logged. */
void policy_duty(struct db *db, policy_detect_fn detect);

/* One line on the run's policy and phase for `ckptd status`: "" for an
 * order run. */
int policy_phase(struct db *db, long long run_id, char *out, size_t n, struct err *e) CK_WUR;

/* ---- pure pieces (exposed for tests) ---- */

/* Which of n items (projected seconds each, NULL-or-"" depends_on each) are
 * cheap: cheap[i] 1 or 0.  Returns the number of cheap items. */
int policy_classify(const double *seconds, const char *const *names, const char *const *depends_on, int n,
                    int *cheap);

/* A window of checkpoint positions [lo, hi] and its weight. */
struct policy_window {
    int lo, hi;
    double weight;
    int peak; /* the median peak position */
};

/* Densify: windows w (n, positions in a schedule of `count`), widened by
 * `margin`, merged when they overlap (weights add up), heaviest first,
 * into dense (count: 1 for a checkpoint to densify) until `budget`
 * checkpoints.  Returns the number chosen. */
int policy_densify(const struct policy_window *w, int n, int count, int margin, int budget, unsigned char *dense);

/* After policy_plan returned plan_rc for a stored claim: are the claim's
 * series to be examined now?  Not while the first pass goes on, nor when
 * the plan examined the whole run; otherwise (an order run, a planned
 * one, a failure: the rows are stored) yes. */
int policy_detect_now(int plan_rc);

/* Checkpoints of an adaptive run with jobs of each kind, and of them those
 * with jobs queued or running. */
struct policy_counts {
    int cheap, cheap_left;       /* the cheap items (first pass) */
    int skeleton, skeleton_left; /* the skeleton's expensive items (first pass) */
    int dense, dense_left;
    int rest, rest_left;
};

/* The run's phase: "first pass" while a cheap or skeleton job is left
 * (whatever else runs beside it), then "dense", "rest", "done". */
const char *policy_phase_name(const struct policy_counts *k);

/* policy_phase's line from the counts, the item lists (comma-separated),
 * whether the dense phase is planned and its windows ("A..B, C..D"; NULL
 * or "" for none). */
void policy_phase_format(char *out, size_t n, const struct policy_counts *k, const char *cheap, const char *expensive,
                         int planned, const char *windows);

#endif
