/*
 * transitions_v1.h - the first transition detector, "ramp-v1", kept so
 * that the rows it wrote keep a stated meaning and so that the benchmark
 * (bench/transitions_realbench.py) can compare it with the current method
 * (transitions.h); the daemon no longer runs it, and its code is frozen.
 * Phase transitions in one series: where a metric changes abruptly (a
 * grokking jump, the induction-head loss drop), found robustly on uneven
 * step schedules, in noise, past outliers and slow drift.
 *
 * Pure: a series in (steps strictly increasing, values), transitions out.
 * No database, no global state.
 *
 *     struct tr1_transition t[TR1_MAX_PER_SERIES];
 *     int n = tr1_detect(steps, values, npoints, t, TR1_MAX_PER_SERIES, &e);
 *     // n >= 0: t[0..n) ordered by peak_step; < 0: bad input (e says why)
 *
 * Method "ramp-v1" (TR1_METHOD).  It builds on moving-window level
 * comparisons (MOSUM: Eichinger & Kirch 2018, "A MOSUM procedure for the
 * estimation of multiple random change points", Bernoulli 24(1)), binary
 * segmentation (Vostrikova 1981; Fryzlewicz 2014, "Wild binary
 * segmentation", Ann. Statist. 42(6)), robust scales by the median absolute
 * deviation, and the point of DeCAFS (Romano et al. 2022, JASA 118(541))
 * that a random-walk drift is not a change: noise is modelled as white
 * noise plus a random walk, from the series' own variogram.
 *
 *  1. Points whose value is NaN or infinite are dropped.  With fewer than
 *     TR1_MIN_POINTS left, nothing is reported.
 *  2. Coordinate: the checkpoint index.  Pythia's schedule is log-spaced to
 *     step 512 and even after it, toy runs likewise: counting checkpoints
 *     gives every measurement the same weight whatever its spacing (a
 *     log-then-linear step axis).  Steps serve to remove a linear drift in
 *     training time, u = v - mu * step (mu: the median slope between
 *     neighbouring checkpoints, which a few steps cannot move), and to
 *     report positions.
 *  3. Levels: L(a) = median of u over the TR1_HALF points ending at a,
 *     R(b) = median over the TR1_HALF points from b; a change over width
 *     w = b - a is D(a, b) = R(b) - L(a).  Two outliers cannot move a level.
 *  4. Noise of a change over w checkpoints, the largest of: the robust
 *     scale (1.4826 MAD) of all D(i, i + w) of the series around their
 *     median c_w; the variogram model 0.287 A + B (w + 2.4), where A + B k
 *     is a least-squares fit to the squared robust scales of u[i+k] - u[i],
 *     k = 1..min(8, n/8) (white noise of variance A/2, a random walk of B
 *     per checkpoint; 0.287 is the variance of a median of 5 normals, 2.4
 *     the extra width a random walk adds between two 5-point levels); and
 *     floors of 1.5 x the 1%-99% spread of the residuals from a running
 *     median of 3 and of 1% of the smoothed series' range, each divided by
 *     TR1_THRESHOLD (quantised values; an accuracy of 1.0 with rare dips).
 *     Widths: w <= (n - 20) / 4 (at least 1), so a transition touches at
 *     most a third of the windows of a width.
 *  5. Binary segmentation: in a segment, the window with the highest
 *     excess / noise is the candidate, the excess being |D - c_w|, or |D|
 *     when smaller (a flat stretch in a series full of rises, such as a
 *     staircase, is no change).  It is scored again against the
 *     series without it: the windows of its width sharing no point with it
 *     nor with a transition already found, and the variogram of the pairs
 *     that do not either (its random-walk part kept at >= 1/4 of the whole
 *     series': leaving the largest excursion out makes a random walk look
 *     calmer; a candidate spanning more than a third of the series keeps
 *     the whole variogram).  It is a transition if that score reaches
 *     TR1_THRESHOLD.  Around it (at most its width plus TR1_HALF further on
 *     either side), the window of the largest same-signed change gives the
 *     two levels, L and R; the narrowest window with >= 90% of that change
 *     is its extent, and the segments left and right of the extent are
 *     searched next.
 *  6. Positions, from the running median of 3, m, as progress between the
 *     two levels, p = (m - L) / (R - L), over the points of their window:
 *     peak_step is the first checkpoint with p >= 0.5 (the steepest point
 *     of a symmetric change); start_step the last checkpoint before it with
 *     p <= 0.1; end_step the first from the peak with p >= 0.9.  magnitude
 *     = median of the raw values over the TR1_HALF points of the right level
 *     minus the left's (signed, the metric's units); score = step 5's.
 *
 * TR1_THRESHOLD came from simulated series without a transition (the
 * benchmark program of its time, bench/transitions_bench --calibrate
 * 10000: 70,000 series of each kind over Pythia's schedule, three toy
 * runs' and even ones of 20, 24 and 300 points).  Highest scores: white noise 7.6, Student-t with 3 degrees of
 * freedom 8.2, slow drift (a random walk of 0.3 sigma steps under white
 * noise) 9.6, a 30-sigma spike 6.5, values rounded to whole sigmas 9.3, a
 * straight trend in steps 8.0, constants 0; harder than asked, Student-t
 * with 2 degrees of freedom 13.2 and a pure random walk 14.0 (in a toy run
 * of 38 checkpoints; 8.1 in Pythia's): none at or above 14.
 * Sensitivity (white noise, 500 series, --sensitivity): a step of 12 sigma
 * in Pythia's schedule is found in 70% of series, 16 sigma in 99%, 24 in
 * all; a sigmoid 4 checkpoints wide in a toy run of 38 checkpoints, 24
 * sigma in 48%, 48 sigma in 95%.  Tolerances (tests/test_transitions.c):
 * the peak is one of the two checkpoints around the true centre, or the
 * next; [start, end] brackets the true 10%-90% span; magnitudes within 20%.
 *
 * Limits: a change spread over more than about a third of the series is
 * part of its trend, not a transition; a transition needs TR1_HALF points
 * on either side; series are judged on their own noise.
 */
#ifndef CKPTD_TRANSITIONS_V1_H
#define CKPTD_TRANSITIONS_V1_H

#include "common/err.h"

#define TR1_METHOD "ramp-v1"     /* transitions.method; bump with any change to the numbers */
#define TR1_MIN_POINTS 20        /* finite points a series needs before anything is reported */
#define TR1_HALF 5               /* points in each level (median) on either side of a change */
#define TR1_THRESHOLD 14.0       /* score a transition needs */
#define TR1_MAX_PER_SERIES 32    /* at most this many per series (the highest scores) */

struct tr1_transition {
    long long start_step;   /* last checkpoint before the change (<= 10% of it done) */
    long long peak_step;    /* first checkpoint with half the change done */
    long long end_step;     /* first checkpoint with 90% of it done */
    double magnitude;       /* signed change, the metric's units */
    double score;           /* |change| over the series' own noise at that width */
};

/* Find the transitions of one series of n points: steps strictly
 * increasing (any sign), values with NaN/Inf allowed (skipped).  Writes at
 * most cap transitions to out, the highest scores, ordered by peak_step,
 * and returns how many; 0 for series too short or without transitions.
 * ERR_INVALID for steps not strictly increasing or n < 0, ERR_NOMEM; out
 * is then untouched.  Allocates only scratch space, freed before return. */
int tr1_detect(const long long *steps, const double *values, int n, struct tr1_transition *out,
              int cap, struct err *e) CK_WUR;

/* The score the series' first candidate gets (step 5: what is compared
 * with TR1_THRESHOLD before anything is found), 0 for a series too short:
 * for calibrating the threshold on series without transitions.  Errors as
 * tr1_detect. */
int tr1_max_score(const long long *steps, const double *values, int n, double *score,
                 struct err *e) CK_WUR;

#endif
