/*
 * integrity.h - checkpoints checked before they are believed: is each one
 * what its label says?
 *
 * Hub series carry checkpoints that are not what their branch names say
 * (EleutherAI/pythia issues: step0 equal to step1, #83; pythia-2.8b's
 * early branches serving the final weights, #195 and #205; a 12b step with
 * the final model's first shard, #206; a step behaving like a final one
 * until re-uploaded, #108).  A mislabelled checkpoint in a series is a fake
 * phase transition.  The evidence, per checkpoint of a run:
 *   - the `integrity` item's count sketch of its weights (the worker's
 *     battery_integrity.c): distances and cosines between sketches stand
 *     for distances and cosines between the weights (Johnson-Lindenstrauss;
 *     about 4 % on a distance at INTEGRITY_SKETCH_K = 256);
 *   - the sha256 of its weights and of each weight file (checkpoint_files).
 *
 * The judge (pure: integrity_judge) works on a run's checkpoints in step
 * order and decides, in this order:
 *  1. Shards.  A weight file of checkpoint i with the sha256 of a weight
 *     file of step j, where the two checkpoints' weights differ as a whole
 *     and the file of that name differs at i's neighbours (so it normally
 *     changes: a frozen shard shared by every step is no evidence): one of
 *     the two carries the other's shard.  The one that fits its place
 *     keeps it (the smaller distance to its own neighbours, by sketch);
 *     without sketches the later step keeps it, as in every case the Pythia
 *     tracker knows of (a final-era file leaking into earlier branches).
 *     The other is suspect, `shard_duplicate`.
 *  2. The trajectory, over the checkpoints with a sketch that are not
 *     suspect yet ("alive"), greedily, the worst first, until none is left:
 *     a. closer to a step at least two places away than to its neighbours:
 *        d(c, j) < INTEGRITY_NEAR_RATIO * fit(c), fit(c) being the distance
 *        to its nearest neighbour, and fit(j) < fit(c) (of two checkpoints
 *        that look alike, the one that fits its own place is believed).
 *        `step0_is_final` when c is the first checkpoint and j the last,
 *        else `mislabel`;  badness fit(c) / d(c, j);
 *     b. a stretch of 1..INTEGRITY_MAX_STRETCH consecutive checkpoints
 *        (at most a third of the alive ones) whose way in and way out are
 *        both longer than INTEGRITY_DETOUR_RATIO times the way that skips
 *        it: min(d(p, first), d(last, n)) > ratio * d(p, n), p and n its
 *        outside neighbours; badness that quotient.  Each member's reason:
 *        `mislabel` when a checkpoint outside the stretch is nearer to it
 *        than INTEGRITY_NEAR_RATIO times the way in or out (a block of
 *        labels shifted onto other steps' weights); else `init_jump` when
 *        the stretch's distance from the first checkpoint leaves the range
 *        of p's and n's by more than half the way in or out (a jump against
 *        the trend); else `off_trajectory`.
 *     A genuine trajectory (SGD's drift plus noise) never does either: a
 *     checkpoint's nearest checkpoints are its neighbours, and a detour of
 *     3x the skip needs the weights to leave and come back.  Measured on the
 *     toy runs of `ckpt-worker train` (tests/daemon_integrity.sh prints the
 *     largest ratios of genuine runs: docs/families.md).
 *  3. Equal weights (equal weights sha256).  Members next to each other in
 *     the schedule (no other checkpoint between them) form a block.  The
 *     block that fits its place best (nearest neighbours outside the
 *     group, by sketch) holds the canonical copy: its earliest member that
 *     is not suspect; every other member is a duplicate of it
 *     (duplicate_of), and a member of another block is `mislabel` (or
 *     `step0_is_final`) unless suspect already.  Without sketches to compare
 *     blocks, the earliest block is canonical and the others are plain
 *     duplicates, as before this module.
 *
 * The daemon's pass (integrity_run) reads a run's sketches and files,
 * judges, and writes the verdicts (checkpoints.suspect, suspect_step,
 * suspect_detail, duplicate_of) and the signals (checkpoint_integrity:
 * distance and cosine to the previous believed checkpoint and to the
 * first, the nearest checkpoint) in one transaction under the run's lock
 * that checkpoint_files_record takes too; when a verdict changed, the
 * run's transitions are found again without the suspects (detect_run).
 * It runs after a claim with the `integrity` item is stored, after a
 * checkpoint's files are recorded, and on `ckptd integrity RUN`.
 *
 *     struct integrity_stats st;
 *     if (integrity_run(db, run_id, &st, &e) < 0) log_err("integrity", &e);
 *     // st.suspects, st.changed
 */
#ifndef CKPTD_INTEGRITY_H
#define CKPTD_INTEGRITY_H

#include <stdio.h>

#include "common/err.h"

#define INTEGRITY_SKETCH_K 256      /* the worker's INTEGRITY_K (battery.h) */
#define INTEGRITY_NEAR_RATIO 0.5    /* "closer than": this times the neighbour distance */
#define INTEGRITY_DETOUR_RATIO 3.0  /* way in and out over the way that skips */
#define INTEGRITY_MAX_STRETCH 8     /* longest stretch judged as one detour */
#define INTEGRITY_LOCK 8315         /* pg_advisory_xact_lock(INTEGRITY_LOCK, run id), as checkpoint_files */

enum integrity_reason {
    INTEGRITY_OK,
    INTEGRITY_MISLABEL,
    INTEGRITY_INIT_JUMP,
    INTEGRITY_OFF_TRAJECTORY,
    INTEGRITY_STEP0_IS_FINAL,
    INTEGRITY_SHARD_DUPLICATE,
    INTEGRITY_REASON_COUNT
};

/* The reason as checkpoints.suspect spells it; NULL for INTEGRITY_OK. */
const char *integrity_reason_name(enum integrity_reason r);

/* A weight file of a checkpoint. */
struct integrity_file {
    const char *name;
    const char *sha256;
};

/* One checkpoint of the run, the input; borrowed. */
struct integrity_ckpt {
    long long step;
    const double *sketch;                /* k values, or NULL: not measured */
    const char *weights;                 /* identity of its weights (checkpoints.sha256), or NULL */
    const struct integrity_file *files;  /* its weight files (nfiles), NULL/0: not fetched */
    int nfiles;
};

/* The verdict and signals of one checkpoint.  Indices are into the input
 * array, -1 for none; distances NaN where undefined. */
struct integrity_verdict {
    enum integrity_reason reason;
    int like;            /* the checkpoint it resembles or shares a file with */
    int duplicate_of;    /* the canonical copy of its weights */
    char detail[256];    /* the numbers behind a suspect verdict */
    int prev, init, nearest; /* the previous believed one, the first believed one, the nearest */
    double dist_prev, cos_prev, dist_init, cos_init, dist_nearest, norm;
};

/* How close the believed checkpoints came to a verdict: the smallest
 * d(c, j) / fit(c) over them and any j two places away or more (rule 2a
 * flags below INTEGRITY_NEAR_RATIO), and the largest detour quotient of a
 * stretch (2b flags above INTEGRITY_DETOUR_RATIO).  INFINITY and 0 when
 * there were too few to compare. */
struct integrity_margins {
    double near, detour;
};

/* Judge n checkpoints in increasing step order, sketches of k values.
 * out (n) gets every verdict, margins (may be NULL) the headroom left.
 * 0, or ERR_INVALID (steps not increasing, k < 1), ERR_NOMEM; out is then
 * unspecified. */
int integrity_judge(const struct integrity_ckpt *c, int n, int k, struct integrity_verdict *out,
                    struct integrity_margins *margins, struct err *e) CK_WUR;

struct db;
struct claim;

struct integrity_stats {
    int checkpoints;  /* of the run */
    int sketched;     /* with a sketch */
    int suspects;     /* suspect after the pass */
    int duplicates;   /* duplicate_of set after the pass */
    int changed;      /* checkpoints whose verdict or canonical copy changed */
    struct integrity_margins margins;
    double seconds;
};

/* Judge the run's checkpoints and store the verdicts and signals; when
 * one changed, detect the run's transitions again (a failure there is
 * logged: the verdicts stay).  ERR_DB (rolled back, nothing changed),
 * ERR_NOMEM. */
int integrity_run(struct db *db, long long run_id, struct integrity_stats *st, struct err *e) CK_WUR;

/* After ingest stored a claim's rows: integrity_run when the claim held
 * the `integrity` item; a failure is logged and otherwise ignored. */
void integrity_after_ingest(struct db *db, const struct claim *c);

/* `ckptd integrity RUN [--json]`: judge again, then print every
 * checkpoint's signals and verdict (a table, or a JSON array of objects:
 * step, prev_step, dist_prev, cos_prev, init_step, dist_init, cos_init,
 * nearest_step, dist_nearest, duplicate_of, suspect, suspect_step, detail).
 * ERR_NOTFOUND for an unknown run. */
int integrity_print(struct db *db, const char *run, int json, FILE *out, struct err *e) CK_WUR;

#endif
