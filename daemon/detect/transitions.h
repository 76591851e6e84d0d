/*
 * transitions.h - phase transitions and spikes in one series: where a
 * metric moves from one level to another (a grokking jump, the
 * induction-head loss drop), and where it leaves its level for a
 * checkpoint or two and comes back (a loss spike), found robustly on
 * uneven step schedules, in noise and past slow drift; each transition
 * with a calibrated false-positive rate.
 *
 * Pure: a series in (steps strictly increasing, values), events out.
 * No database, no global state; the daemon's caller is detect.h.
 *
 *     struct tr_event ev[TR_MAX_PER_SERIES];
 *     int n = tr_detect(steps, values, npoints, ev, TR_MAX_PER_SERIES, &e);
 *     // n >= 0: ev[0..n) ordered by peak_step, ev[i].kind a transition
 *     // or a spike; < 0: bad input (e says why)
 *
 * METHOD (TR_METHOD, "level-v2"; the method before it, "ramp-v1", is
 * transitions_v1.h).  Moving-window level comparisons (MOSUM: Eichinger &
 * Kirch 2018, Bernoulli 24(1)) in binary segmentation (Vostrikova 1981;
 * Fryzlewicz 2014, Ann. Statist. 42(6)), robust scales, noise as white
 * noise plus a random walk (the point of DeCAFS, Romano et al. 2022, JASA
 * 118(541), that a drift is not a change), outliers taken out first, and
 * a threshold on a p-value calibrated by simulation.  Medians of an even
 * count are the lower middle value plus half the distance to the upper.
 *
 *  1. Points whose value is NaN or infinite are dropped; with fewer than
 *     TR_MIN_POINTS left nothing is reported.  Coordinate: the checkpoint
 *     index (Pythia's log-then-linear schedule weighs every checkpoint
 *     alike).  Drift: mu, the median of the slopes (v[i+1] - v[i]) /
 *     (s[i+1] - s[i]) between neighbours, is taken out, u = v - mu (s -
 *     s[0]), when |mu| >= 3 x its standard error (1.2533 x the MAD scale
 *     of those slopes / sqrt(their count)); else u = v.
 *  2. Outliers and spikes.  Scales: the MAD scale of x is 1.4826 x the
 *     median of |x - median(x)|.  The point-noise floor f is half the
 *     quantum q, the smallest nonzero |v[i+1] - v[i]| (an accuracy over N
 *     examples moves by 1/N), when q is at most a tenth of max v - min v
 *     (a clean jump is no quantum), and at least 1e-6 max |v| + DBL_MIN.
 *     The range r is max - min of the running median of 3 of u (its end
 *     points: u).  Repeat, over the points not masked yet (in order): let
 *     g be the MAD scale of all their consecutive differences over sqrt 2
 *     (0 for 4 points or fewer); for every run of 1 or 2 consecutive
 *     ones, neither the first nor the last, let the baseline be the
 *     median of the (up to) 2 on each side, the excursion e the smaller
 *     distance of its points from the baseline (all on one side of it),
 *     the noise the MAD scale of the differences between consecutive
 *     points among the (up to) 10 on each side that involve none of its
 *     points, over sqrt 2 (0 with fewer than 4), at least g and f.  It
 *     qualifies when e > 0, e >= 2% of r, the medians of its two sides
 *     differ by at most e/2, the median of the (up to) 10 on each side
 *     differs from the baseline by at most e/2 (the baseline is the level
 *     there: the points between two spikes are no excursion), and e >= 5
 *     noise scales.  The one with the highest score e / noise (the first
 *     at a tie, the shorter first) is masked, until none qualifies or a
 *     quarter of the points are masked: a spike goes first, the point it
 *     left behind on its way back next.  Runs of consecutive masked points
 *     are events: a run holding an outlier of 7 noise scales or more (5
 *     scatters of the first differences) is a spike (kind TR_KIND_SPIKE;
 *     start and end its first and last point, peak the one farthest from
 *     the baseline (the median of the raw values of the 2 unmasked points
 *     on each side), magnitude that point's raw value less the baseline,
 *     score and noise those of its highest outlier).  Masked points are
 *     left out of everything that follows: no level and no noise sees
 *     them.
 *  3. Levels, on the n points left: L(a) = median of u[a-2..a], R(b) =
 *     median of u[b..b+2]; a change over w = b - a checkpoints is D(a, b) =
 *     R(b) - L(a), windows w = 1 .. wmax = max(1, (n - 5) / 4).  m is the
 *     running median of 3 of u (m = u at the ends).
 *  4. Noise of a change over w checkpoints, for the series without the
 *     points of the transitions found so far and without a set of points
 *     X (nothing, or the candidate's), f now of the points left: the
 *     largest of
 *       - the MAD scale of D over the windows of that width that touch
 *         neither (used with at least 8 of them, w <= wmax);
 *       - the model sqrt(0.4487 A + B (w + 1.111)), from the trimmed
 *         scales s1 of the first differences u[i+1] - u[i] and s2 of the
 *         second differences u[i+2] - 2u[i+1] + u[i] that touch neither
 *         (at least 8 each, else the whole series' model): A = s2^2 -
 *         2 s1^2, B = 3 s1^2 - s2^2, for white noise of variance A/2 and
 *         a random walk of B per checkpoint; when one is negative it is 0
 *         and the other s1^2; A is at least 2 f^2.  The trimmed scale of
 *         x is 1.5128 x the root mean square of the round(0.8 k) smallest
 *         |x - median(x)| (sigma for normal data, twice as efficient as
 *         the MAD).  0.4487 is the variance of a median of 3 normals,
 *         1.111 = (H-1)(2H-1)/(3H) the width a random walk adds between
 *         two 3-point levels.  A smooth trend whose slope changes counts
 *         as a random walk: a slow bend is judged against itself;
 *       - sqrt(0.8974) f.
 *     c_w, the median of D over all windows of width w (0 beyond wmax),
 *     is what the series does anyway over w checkpoints; the excess of a
 *     window is |D - c_w|, or |D| when smaller (a flat stretch of a
 *     staircase is no change); its score is excess / noise.  rho = B / (A
 *     + B), the random walk's share, goes with the score.
 *  5. Binary segmentation, a stack of segments from [0, n-1], each of at
 *     least 7 points.  In a segment, the window (a, b) with the highest
 *     score against the noise without X (the first at a tie, by a then
 *     b) is the candidate; scored again with X its points a-2 .. b+2, it
 *     is accepted when tr_p_value(score, n, rho) <= TR_P_MAX.  Its sign is
 *     that of D - c_w, or of D when |D| is the smaller (the excess's).  Around it, a from max(lo+2, a-reach) to a and b
 *     to min(hi-2, b+reach), reach = b - a + 3, the window (ma, mb) of the
 *     largest signed change gives the two levels, and the narrowest window
 *     with at least 90% of that change (the larger change at a tie of
 *     width) is the extent (ea, eb).  A change is recorded (step 6) when
 *     its signed change R(mb) - L(ma) is at least 1% of the range of m and
 *     1e-6 max |v|; its points ma-2 .. mb+2 then join the transitions
 *     found, and the segments [lo, ma] and [mb, hi] are searched next
 *     (the slow ends of a sigmoid are not found again); when nothing is
 *     recorded, [lo, ea] and [eb, hi].
 *  6. Stages: for k from ma+1 while k+2 <= mb-1, the level R(k) between
 *     the two is a stage when both steps, L(ma) -> R(k) and R(k) -> R(mb)
 *     (scored as the window (k+2, mb)), go the change's way by at least
 *     the smallest change, u[k..k+2] spans at most 0.34 of the smaller
 *     step, and the smaller of the two steps' scores has a p-value at most
 *     TR_P_MAX; the stage with the highest such score (the first at a
 *     tie) splits the change into (ma, k) and (k+2, mb), each looked into
 *     again (4 levels deep at most).  A change not split is a transition
 *     with the score of the test that admitted it or of its own two
 *     levels (ma, mb), whichever is higher (and that one's noise), and its
 *     p-value.
 *  7. Positions, from m as progress between the two levels, p = (m -
 *     L(ma)) / (R(mb) - L(ma)), over the points ma-2 .. mb+2: peak_step
 *     the first after ma-2 with p >= 0.5 (else mb); start_step the last
 *     before the peak with p <= 0.1 (else ma-2); end_step the first from
 *     the peak with p >= 0.9 (else mb+2).  before / after: the medians of
 *     the raw values of L(ma)'s and R(mb)'s points; magnitude their
 *     difference.
 *
 * CALIBRATION.  tr_p_value(z, n, rho) is the probability that a series of
 * n points without a transition, whose noise is white plus a random walk,
 * has a first candidate (tr_max_score) scoring z or more when scored with
 * that rho: the false-positive rate of the test at that score.  Table
 * (transitions_null.inc, from bench/transitions_bench --calibrate-table
 * 6000): for 18 lengths from 20 to 400 points, 6000 series each of white
 * noise plus a random walk whose share of the first differences' variance
 * is 0 for a quarter of them and spread from 0.02 to 1 for the rest; their
 * scores binned by the rho they were scored with; per bin of at least 400
 * series its median rho and a Gumbel law P(score <= z) = exp(-exp(-(z -
 * mu) / beta)) through its 90% and 99% quantiles.  Between rows, mu and
 * beta are interpolated linearly in rho and in log n, and held beyond the
 * table.  It is the same for every noise level (scores are in units of the
 * series' own noise) and conservative for the later, shorter segments
 * (fewer windows to choose from).
 *
 * Measured (build/bench/transitions_bench; white noise of sigma 1 unless
 * said).  False positives, series reporting a transition among 14,000
 * without one per kind, over Pythia's schedule, three toy runs' and even
 * ones of 20, 24 and 300 points (--calibrate 2000): white noise 1,
 * Student-t 3 df 4, Student-t 2 df 33, slow drift (a random walk of 0.3
 * sigma steps under white noise) 0, a pure random walk 66 (at most 0.7%
 * of a schedule's; 14 of 2000 in 20 and 38 points), a 30-sigma outlier 0
 * (a spike in every series where it is not an end point), constants 0,
 * values rounded to whole sigmas 7 (of 20 to 38 points, where their
 * differences' scales can collapse), a straight trend 0.  Sensitivity
 * (--sensitivity 500, the change at 60% of the schedule): a step of 8,
 * 12, 16 sigma is found in 76%, 97%, 100% of Pythia's 154 points and in
 * 15%, 70%, 94% of a toy run's 38 (short series pay for estimating their
 * own noise); a sigmoid 4 checkpoints wide of 12, 16, 24 sigma in 96%,
 * 100%, 100% (Pythia) and 22%, 64%, 97% (toy); peaks within one
 * checkpoint of the two around the centre.  On real training series
 * (bench/transitions_realbench.py, README.md): see the table there.
 *
 * Limits: a change spread over more than about a third of the series is
 * part of its trend; a transition needs 3 points on either side; a spike
 * at the first or last checkpoint cannot be told from a change; a series
 * is judged on its own noise, so a change that is small for a noisy
 * series is missed however large it would be elsewhere; scores of series
 * of 20 to 40 points are calibrated on a few thousand series, so their
 * p-values below 1e-4 are extrapolations of the Gumbel law.
 */
#ifndef CKPTD_TRANSITIONS_H
#define CKPTD_TRANSITIONS_H

#include "common/err.h"

#define TR_METHOD "level-v2"    /* transitions.method; bump with any change to the numbers */
#define TR_MIN_POINTS 20        /* finite points a series needs before anything is reported */
#define TR_HALF 3               /* points in each level (median) on either side of a change */
#define TR_P_MAX 1e-3           /* calibrated false-positive rate a transition may have */
#define TR_P_MIN 1e-16          /* p-values are reported down to this */
#define TR_MAX_SPIKES 32        /* at most this many spikes per series (the highest scores) */
#define TR_MAX_PER_SERIES 64    /* events per series: transitions first (highest scores), then spikes */

enum tr_kind {
    TR_KIND_TRANSITION,     /* a move from one level to another */
    TR_KIND_SPIKE,          /* one or two checkpoints away from the level, then back */
    TR_KIND_COUNT
};

struct tr_event {
    enum tr_kind kind;
    long long start_step;   /* transition: last checkpoint before it (<= 10% done); spike: its first */
    long long peak_step;    /* transition: first checkpoint with half of it done; spike: the farthest */
    long long end_step;     /* transition: first checkpoint with 90% done; spike: its last */
    double magnitude;       /* signed, the metric's units: level after - before; spike: peak - baseline */
    double score;           /* |change| over the noise of a change of that width; spike: over the local noise */
    double p_value;         /* transition: calibrated false-positive rate of the score; spike: NaN */
    double noise;           /* the noise scale the score divided by (the metric's units) */
    double before, after;   /* transition: the levels (medians of 3 raw values) either side,
                               after - before = magnitude; spike: its baseline and peak value */
};

/* Find the transitions and spikes of one series of n points: steps
 * strictly increasing (any sign), values with NaN/Inf allowed (skipped).
 * Writes at most cap events to out (the transitions with the highest
 * scores first, then the spikes with the highest), ordered by peak_step,
 * and returns how many; 0 for series too short or without events.
 * ERR_INVALID for steps not strictly increasing or n < 0, ERR_NOMEM; out
 * is then untouched.  Allocates only scratch space, freed before return. */
int tr_detect(const long long *steps, const double *values, int n, struct tr_event *out, int cap,
              struct err *e) CK_WUR;

/* tr_detect with another false-positive rate than TR_P_MAX (in [0, 1]):
 * for weighing weaker evidence, as bench/transitions_realbench.py does
 * with groups of metrics.  Errors as tr_detect. */
int tr_detect_p(const long long *steps, const double *values, int n, double p_max, struct tr_event *out,
                int cap, struct err *e) CK_WUR;

/* The score of the series' first candidate (step 5: what is tested before
 * anything is found), 0 for a series too short, and (rho, may be NULL) the
 * random walk's share of the noise it was scored against: for calibrating
 * tr_p_value on series without transitions.  Errors as tr_detect. */
int tr_max_score(const long long *steps, const double *values, int n, double *score, double *rho,
                 struct err *e) CK_WUR;

/* The calibrated false-positive rate of a first-candidate score z in a
 * series of n points whose noise model has the random-walk share rho (see
 * CALIBRATION), in [TR_P_MIN, 1]. */
double tr_p_value(double z, int n, double rho);

/* Group transitions whose [start, end] windows overlap (open intervals:
 * sharing an end point is not overlapping), transitively: group[i] gets a
 * number from 1, in order of each group's earliest start.  n >= 0. */
void tr_group(const long long *start, const long long *end, int n, int *group);

#endif
