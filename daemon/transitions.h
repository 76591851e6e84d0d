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
 * Fryzlewicz 2014, Ann. Statist. 42(6)), robust scales (MAD), noise as
 * white noise plus a random walk from the series' own variogram (the
 * point of DeCAFS, Romano et al. 2022, JASA 118(541), that a drift is not
 * a change), and a threshold on a p-value calibrated by simulation:
 *
 *  1. Points whose value is NaN or infinite are dropped; fewer than
 *     TR_MIN_POINTS left: nothing.  Coordinate: the checkpoint index
 *     (Pythia's log-then-linear schedule weighs every checkpoint alike).
 *     A linear drift in training steps is taken out: u = v - mu * step,
 *     mu the median slope between neighbouring checkpoints.
 *  2. Spikes first.  One or two consecutive points (never the first or
 *     the last) are a spike when, against the median of the 2 points on
 *     each side (the baseline), all of them lie on one side, the smaller
 *     distance (the excursion) is at least 6 local noise scales and 2% of
 *     the range of the series' running median of 3, and the medians of
 *     the two sides differ by at most half the excursion (it came back).
 *     Local noise: 1.4826 MAD of the differences u[j+1] - u[j] within 8
 *     points either side that do not involve the spike, over sqrt 2.
 *     Candidates are taken by score, each point once.  A spike is an
 *     event (kind TR_KIND_SPIKE: start and end its first and last point,
 *     peak the farthest, magnitude that point's raw value less the raw
 *     baseline, score the excursion over the local noise), and its points
 *     are left out of everything that follows: no level median and no
 *     noise estimate sees them.
 *  3. Levels, on the points left: L(a) = median of the TR_HALF (3) points
 *     ending at a, R(b) = median of the 3 from b; a change over w = b - a
 *     checkpoints is D(a, b) = R(b) - L(a).
 *  4. Noise of a change over w checkpoints, for the series without the
 *     transitions found so far (and, when a candidate is scored, without
 *     its own points): the largest of
 *       - the robust scale of D over the clean windows of that width
 *         (used with at least 8 windows; their median c_w is what the
 *         series does anyway over w checkpoints),
 *       - the variogram model sqrt(0.4487 A + B (w + 1.111)), where A + B k
 *         is the least-squares fit to the squared robust scales of
 *         u[i+k] - u[i] over clean pairs, k = 1..min(8, n/8) (white noise
 *         of variance A/2, a random walk of B per checkpoint; 0.4487 is the
 *         variance of a median of 3 normals, 1.111 = (H-1)(2H-1)/(3H) the
 *         extra width a random walk adds between two 3-point levels),
 *       - the point-noise floor: the 2%-98% spread of the residuals from
 *         the running median of 3 over 6 (values quantised so finely
 *         that most differences are 0), and 1e-6 of the values' magnitude.
 *     Because spikes are gone and found transitions are left out, neither
 *     inflates the noise another change is judged against: a staged
 *     transition's second step is scored against the noise, not against
 *     the first step.
 *  5. Binary segmentation.  In a segment, the window (a, b), w <= (n - 5) / 4,
 *     with the highest excess / noise is the candidate (excess: |D - c_w|,
 *     or |D| if smaller, so a flat stretch in a staircase is no change).
 *     Scored again against the noise without its own points, it is a
 *     transition when that score's calibrated p-value is at most TR_P_MAX
 *     and its change is at least 1% of the range of the running median
 *     of 3.  Around it (its width plus 3 further on either side) the
 *     window of the largest same-signed change gives the two levels; the
 *     narrowest window with 90% of that change is its extent, and the
 *     segments either side are searched next.
 *  6. Stages: between the two levels, a level held by 3 consecutive points
 *     (their spread at most 0.34 of each step beside it), with the step on
 *     each side significant on its own (p-value at most TR_P_MAX), splits
 *     the transition into two, each looked into again the same way.
 *  7. Positions, from the running median of 3, m, as progress between the
 *     two levels, p = (m - L) / (R - L): peak_step the first checkpoint
 *     with p >= 0.5; start_step the last before it with p <= 0.1;
 *     end_step the first from the peak with p >= 0.9.  magnitude = median
 *     of the raw values of the right level's 3 points less the left's.
 *
 * CALIBRATION.  The score of a series' first candidate (step 5, what
 * tr_max_score returns) was simulated on 20,000 series of white Gaussian
 * noise for each of 20 lengths from 20 to 1000 points
 * (bench/transitions_bench --calibrate-table 20000, written to
 * transitions_null.inc); its upper tail is a Gumbel law whose location and
 * scale, fitted to the 90% and 99% quantiles, are interpolated in log n.
 * tr_p_value(score, n) is the probability that a series of n points
 * without a transition has a first candidate scoring at least that much:
 * the false-positive rate of the series' noise model at that score.  It
 * is the same for every noise level (scores are in units of the series'
 * own noise) and conservative for the later, shorter segments (fewer
 * windows to choose from).  [figures: see the end of this comment]
 *
 * Limits: a change spread over more than about a third of the series is
 * part of its trend; a transition needs 3 points on either side; a spike
 * at the first or last checkpoint cannot be told from a change; a series
 * is judged on its own noise, so a change that is small for a noisy
 * series is missed however large it would be elsewhere.
 */
#ifndef CKPTD_TRANSITIONS_H
#define CKPTD_TRANSITIONS_H

#include "../common/err.h"

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
