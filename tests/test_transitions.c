/*
 * test_transitions - the transition detector level-v2 (daemon/detect/transitions.h),
 * pure, and the former ramp-v1 (transitions_v1.h) against its goldens:
 *
 *  - a grokking-like rise (0.02 -> 0.98, centre step 3000, 10%-90% over 400
 *    steps, noise sd 0.02) on a toy run's schedule, and an induction-like
 *    loss drop (5.3 -> 1.6 between steps 200 and 300, noise sd 0.05) on
 *    Pythia's schedule and on a toy one, 50 seeds each: exactly one
 *    transition; its peak within tolerance; [start, end] brackets the true
 *    10%-90% span; magnitude of the right sign within 20%; p-value at most
 *    TR_P_MAX;
 *  - spikes: one- and two-checkpoint excursions are spike events, never
 *    transitions, and a grokking change among loss spikes of 50 sigma is
 *    found with the noise of the series, not of its spikes;
 *  - stages: a fall in two steps with a level held between them gives two
 *    transitions, whether the level lasts 6 checkpoints or 3;
 *  - two metrics that move together (icl loss down, icl accuracy up) share
 *    a group, a third one elsewhere does not; tr_group on its own;
 *  - two transitions in one series, a clean step (exact positions), the
 *    cap keeping the highest scores;
 *  - series without a transition, 500 seeded series of each kind (white,
 *    Student-t 3 and 2 df, slow drift, pure random walk, one spike,
 *    constant, quantised, straight trend) on three schedules: at most the
 *    stated number of series with a transition per kind (NOISE_BOUND), none
 *    for constants, the spike always a spike; series shorter than
 *    TR_MIN_POINTS, even with a jump;
 *  - the noise model's random-walk share: median near 0 for white noise,
 *    near 1 for a random walk (Pythia's schedule);
 *  - tr_p_value: in [TR_P_MIN, 1], falling with the score;
 *  - NaN and infinite values skipped, bad arguments refused;
 *  - agreement with the independent reference implementations
 *    (tests/reference/transitions_ref.py for level-v2, cases_v2.json;
 *    ramp-v1's, cases.json): the same events, steps exact, magnitude,
 *    score and p-value within 1e-9 relative.
 *
 * Tolerance of the peak, stated: with i_c the first checkpoint at or after
 * the true centre, the peak is checkpoint i_c - 1, i_c or i_c + 1 (one of
 * the two around the centre, or the next).
 */
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "daemon/detect/transitions.h"
#include "daemon/detect/transitions_v1.h"
#include "tests/lib/series_sim.h"

#define SEEDS 50
#define NOISE_SERIES 500

/* The transitions (kind TR_KIND_TRANSITION) of a detection, in order;
 * returns how many, spikes left out. */
static int only_transitions(const struct tr_event *ev, int k, struct tr_event *out)
{
    int m = 0;
    for (int i = 0; i < k; i++)
        if (ev[i].kind == TR_KIND_TRANSITION)
            out[m++] = ev[i];
    return m;
}

static int count_kind(const struct tr_event *ev, int k, enum tr_kind kind)
{
    int m = 0;
    for (int i = 0; i < k; i++)
        m += ev[i].kind == kind;
    return m;
}

/* index of the first step >= x (n if none) */
static int first_at_or_after(const long long *s, int n, double x)
{
    int i = 0;
    while (i < n && (double)s[i] < x)
        i++;
    return i;
}

static int index_of(const long long *s, int n, long long step)
{
    for (int i = 0; i < n; i++)
        if (s[i] == step)
            return i;
    return -1;
}

/* One change of `height` centred at `centre` over `width` steps (10%-90%)
 * on noise sd `sigma`, SEEDS seeds: exactly one transition, and the
 * tolerances of the header.  Returns the largest peak error in checkpoints
 * (0: one of the two around the centre). */
static int check_change(const long long *s, int n, double base, double centre, double width, double height,
                        double sigma, const char *what)
{
    double v[SIM_MAX];
    int ic = first_at_or_after(s, n, centre);
    /* the true 10% and 90% points */
    double lo10 = centre - width / 2, hi90 = centre + width / 2;
    int worst = 0;
    double worst_p = 0;
    for (int seed = 0; seed < SEEDS; seed++) {
        struct sim_rng r = {1000ULL + (unsigned long long)seed};
        struct tr_event ev[TR_MAX_PER_SERIES], t[TR_MAX_PER_SERIES];
        struct err e;
        for (int i = 0; i < n; i++)
            v[i] = base + sigma * sim_gauss(&r);
        sim_add_sigmoid(s, v, n, centre, width, height);
        int k = only_transitions(ev, tr_detect(s, v, n, ev, TR_MAX_PER_SERIES, &e), t);
        if (k != 1)
            fail_msg("%s seed %d: %d transitions, expected 1", what, seed, k);
        int ip = index_of(s, n, t[0].peak_step);
        assert_true(ip >= 0);
        if (abs(ip - ic) > 1)
            fail_msg("%s seed %d: peak at step %lld, true centre %.0f (checkpoints %lld..%lld allowed)", what,
                     seed, t[0].peak_step, centre, s[ic - 1], s[ic + 1 < n ? ic + 1 : n - 1]);
        int err = ip < ic ? ic - ip - 1 : ip - ic;
        worst = err > worst ? err : worst;
        if (!(t[0].start_step <= t[0].peak_step && t[0].peak_step <= t[0].end_step))
            fail_msg("%s seed %d: start %lld peak %lld end %lld out of order", what, seed, t[0].start_step,
                     t[0].peak_step, t[0].end_step);
        /* [start, end] brackets the 10%-90% span, and by at most one
         * checkpoint more on either side */
        int i10 = first_at_or_after(s, n, lo10), i90 = first_at_or_after(s, n, hi90);
        int is = index_of(s, n, t[0].start_step), ie = index_of(s, n, t[0].end_step);
        if ((double)t[0].start_step > lo10 || is < i10 - 2)
            fail_msg("%s seed %d: start %lld, the change is 10%% done at %.0f", what, seed, t[0].start_step, lo10);
        if ((double)t[0].end_step < hi90 || ie > i90 + 1)
            fail_msg("%s seed %d: end %lld, the change is 90%% done at %.0f", what, seed, t[0].end_step, hi90);
        if (!(t[0].magnitude * height > 0) || fabs(t[0].magnitude - height) > 0.2 * fabs(height))
            fail_msg("%s seed %d: magnitude %g, true %g", what, seed, t[0].magnitude, height);
        if (fabs(t[0].after - t[0].before - t[0].magnitude) > 1e-12 * fabs(height))
            fail_msg("%s seed %d: levels %g -> %g, magnitude %g", what, seed, t[0].before, t[0].after,
                     t[0].magnitude);
        if (!(t[0].p_value <= TR_P_MAX && t[0].p_value >= TR_P_MIN && t[0].noise > 0))
            fail_msg("%s seed %d: p-value %g, noise %g", what, seed, t[0].p_value, t[0].noise);
        worst_p = t[0].p_value > worst_p ? t[0].p_value : worst_p;
    }
    printf("# %s: %d seeds, peak at most %d checkpoint(s) beyond the two around the centre, largest p %.2g\n", what,
           SEEDS, worst, worst_p);
    return worst;
}

static void test_grokking_toy(void **state)
{
    (void)state;
    long long s[SIM_MAX];
    int n = sim_toy(s, 6000, 100); /* 0, 1 ... 64, 100, 200 ... 6000 */
    check_change(s, n, 0.02, 3000, 400, 0.96, 0.02, "grokking, toy 6000/100");
    n = sim_toy(s, 3000, 100); /* the default toy run's schedule: 38 checkpoints */
    check_change(s, n, 0.40, 1000, 300, 0.58, 0.01, "grokking, toy 3000/100");
}

static void test_induction(void **state)
{
    (void)state;
    long long s[SIM_MAX];
    int n = sim_pythia(s);
    check_change(s, n, 5.3, 250, 100, -3.7, 0.05, "induction, pythia");
    n = sim_toy(s, 1000, 20);
    check_change(s, n, 5.3, 250, 100, -3.7, 0.05, "induction, toy 1000/20");
}

/* Loss spikes of the slingshot kind: one and two checkpoints far above
 * the level, back at once.  Each is a spike event at its checkpoints and
 * no transition is made of them; a grokking fall among them is found, its
 * noise that of the series (not inflated by the spikes). */
static void test_spikes(void **state)
{
    (void)state;
    long long s[SIM_MAX];
    double v[SIM_MAX];
    int n = sim_toy(s, 3000, 100);
    int one[3] = {index_of(s, n, 500), index_of(s, n, 1900), index_of(s, n, 2900)};
    int two = index_of(s, n, 2300); /* 2300 and 2400 */
    for (int seed = 0; seed < SEEDS; seed++) {
        struct sim_rng r = {5000ULL + (unsigned long long)seed};
        for (int pass = 0; pass < 2; pass++) {
            /* pass 0: noise and spikes only; pass 1: with a fall of 3.5 at 900 */
            sim_noise(&r, SIM_GAUSS, s, v, n, 0.02);
            if (pass)
                sim_add_sigmoid(s, v, n, 900, 400, -3.5);
            for (int j = 0; j < 3; j++)
                v[one[j]] += 1.0 + j;
            v[two] += 1.5;
            v[two + 1] += 1.2;
            struct tr_event ev[TR_MAX_PER_SERIES], t[TR_MAX_PER_SERIES];
            struct err e;
            int k = tr_detect(s, v, n, ev, TR_MAX_PER_SERIES, &e);
            assert_true(k >= 0);
            int nt = only_transitions(ev, k, t);
            if (nt != pass)
                fail_msg("seed %d pass %d: %d transitions, expected %d", seed, pass, nt, pass);
            if (count_kind(ev, k, TR_KIND_SPIKE) != 4)
                fail_msg("seed %d pass %d: %d spikes, expected 4", seed, pass, count_kind(ev, k, TR_KIND_SPIKE));
            for (int i = 0; i < k; i++) {
                if (ev[i].kind != TR_KIND_SPIKE)
                    continue;
                int is = index_of(s, n, ev[i].start_step), ie = index_of(s, n, ev[i].end_step);
                int ok = (is == ie && (is == one[0] || is == one[1] || is == one[2])) || (is == two && ie == two + 1);
                if (!ok || !(ev[i].magnitude > 0.9) || !isnan(ev[i].p_value))
                    fail_msg("seed %d: spike %lld..%lld, magnitude %g", seed, ev[i].start_step, ev[i].end_step,
                             ev[i].magnitude);
            }
            if (pass) {
                int ip = index_of(s, n, t[0].peak_step), ic = first_at_or_after(s, n, 900);
                if (abs(ip - ic) > 1 || !(t[0].p_value <= TR_P_MAX) || !(t[0].noise < 0.1) ||
                    fabs(t[0].magnitude + 3.5) > 0.7)
                    fail_msg("seed %d: the fall at step %lld, magnitude %g, noise %g, p %g", seed, t[0].peak_step,
                             t[0].magnitude, t[0].noise, t[0].p_value);
            }
        }
    }
}

/* A fall in two stages, 3.5 -> 2.0 -> 0.1 with a level held between them
 * for `hold` checkpoints: two transitions, each with its own p-value. */
static void check_stages(int hold)
{
    long long s[SIM_MAX];
    double v[SIM_MAX];
    int n = sim_toy(s, 6000, 100);
    double c1 = 2500, c2 = c1 + 100.0 * (hold + 1);
    for (int seed = 0; seed < SEEDS; seed++) {
        struct sim_rng r = {6000ULL + (unsigned long long)seed};
        sim_noise(&r, SIM_GAUSS, s, v, n, 0.05);
        for (int i = 0; i < n; i++)
            v[i] -= 1.5;
        sim_add_sigmoid(s, v, n, c1, 100, -1.5);
        sim_add_sigmoid(s, v, n, c2, 100, -1.9);
        struct tr_event ev[TR_MAX_PER_SERIES], t[TR_MAX_PER_SERIES];
        struct err e;
        int k = only_transitions(ev, tr_detect(s, v, n, ev, TR_MAX_PER_SERIES, &e), t);
        if (k != 2)
            fail_msg("hold %d seed %d: %d transitions, expected 2", hold, seed, k);
        if (abs(index_of(s, n, t[0].peak_step) - first_at_or_after(s, n, c1)) > 1 ||
            abs(index_of(s, n, t[1].peak_step) - first_at_or_after(s, n, c2)) > 1)
            fail_msg("hold %d seed %d: peaks %lld and %lld, true %.0f and %.0f", hold, seed, t[0].peak_step,
                     t[1].peak_step, c1, c2);
        if (fabs(t[0].magnitude + 1.5) > 0.3 || fabs(t[1].magnitude + 1.9) > 0.38 || !(t[0].p_value <= TR_P_MAX) ||
            !(t[1].p_value <= TR_P_MAX))
            fail_msg("hold %d seed %d: magnitudes %g and %g, p %g and %g", hold, seed, t[0].magnitude,
                     t[1].magnitude, t[0].p_value, t[1].p_value);
    }
}

static void test_stages(void **state)
{
    (void)state;
    check_stages(6);
    check_stages(3);
}

/* icl loss falls while icl accuracy rises, a third metric changes far
 * later: the first two overlap and share a group. */
static void test_move_together(void **state)
{
    (void)state;
    long long s[SIM_MAX];
    double loss[SIM_MAX], acc[SIM_MAX], other[SIM_MAX];
    int n = sim_toy(s, 1000, 20);
    for (int seed = 0; seed < SEEDS; seed++) {
        struct sim_rng r = {7000ULL + (unsigned long long)seed};
        sim_noise(&r, SIM_GAUSS, s, loss, n, 0.05);
        sim_noise(&r, SIM_GAUSS, s, acc, n, 0.02);
        sim_noise(&r, SIM_GAUSS, s, other, n, 0.02);
        sim_add_sigmoid(s, loss, n, 250, 100, -3.7);
        sim_add_sigmoid(s, acc, n, 255, 80, 0.94);
        sim_add_sigmoid(s, other, n, 700, 60, 1.0);
        struct tr_event ev[8], a[8], b[8], c[8];
        struct err e;
        assert_int_equal(only_transitions(ev, tr_detect(s, loss, n, ev, 8, &e), a), 1);
        assert_int_equal(only_transitions(ev, tr_detect(s, acc, n, ev, 8, &e), b), 1);
        assert_int_equal(only_transitions(ev, tr_detect(s, other, n, ev, 8, &e), c), 1);
        /* open intervals overlap */
        if (!(a[0].start_step < b[0].end_step && b[0].start_step < a[0].end_step))
            fail_msg("seed %d: loss [%lld, %lld] and accuracy [%lld, %lld] do not overlap", seed, a[0].start_step,
                     a[0].end_step, b[0].start_step, b[0].end_step);
        long long st[3] = {a[0].start_step, b[0].start_step, c[0].start_step};
        long long en[3] = {a[0].end_step, b[0].end_step, c[0].end_step};
        int g[3];
        tr_group(st, en, 3, g);
        assert_int_equal(g[0], 1);
        assert_int_equal(g[1], 1);
        assert_int_equal(g[2], 2);
        assert_true(a[0].magnitude < 0 && b[0].magnitude > 0);
    }
}

static void test_group(void **state)
{
    (void)state;
    long long st[] = {30, 0, 20, 5, 100, 40};
    long long en[] = {40, 10, 30, 15, 120, 41};
    int g[6];
    tr_group(st, en, 6, g);
    /* [0,10] [5,15] overlap; [20,30] and [30,40] share only 30; [40,41]
     * touches [30,40] at 40; [100,120] alone; numbered by earliest start */
    int want[6] = {3, 1, 2, 1, 5, 4};
    for (int i = 0; i < 6; i++)
        assert_int_equal(g[i], want[i]);
    long long st2[] = {0, 2, 5};
    long long en2[] = {10, 3, 12};
    tr_group(st2, en2, 3, g); /* transitively: [2,3] inside [0,10], [5,12] overlaps it */
    assert_int_equal(g[0], 1);
    assert_int_equal(g[1], 1);
    assert_int_equal(g[2], 1);
    tr_group(NULL, NULL, 0, g);
}

/* memorisation then grokking in one series: both, in order */
static void test_two_transitions(void **state)
{
    (void)state;
    long long s[SIM_MAX];
    double v[SIM_MAX];
    int n = sim_pythia(s);
    for (int seed = 0; seed < SEEDS; seed++) {
        struct sim_rng r = {9000ULL + (unsigned long long)seed};
        sim_noise(&r, SIM_GAUSS, s, v, n, 0.02);
        sim_add_sigmoid(s, v, n, 20500, 2000, 0.4);
        sim_add_sigmoid(s, v, n, 90500, 3000, -0.8);
        struct tr_event ev[8], t[8];
        struct err e;
        int k = only_transitions(ev, tr_detect(s, v, n, ev, 8, &e), t);
        if (k != 2)
            fail_msg("seed %d: %d transitions, expected 2", seed, k);
        assert_true(t[0].peak_step == 20000 || t[0].peak_step == 21000 || t[0].peak_step == 22000);
        assert_true(t[1].peak_step == 90000 || t[1].peak_step == 91000 || t[1].peak_step == 92000);
        assert_true(fabs(t[0].magnitude - 0.4) < 0.08 && fabs(t[1].magnitude + 0.8) < 0.16);
    }
}

/* a noiseless step: exact positions, the score a finite number with the
 * smallest p-value (the floors keep it from dividing by zero) */
static void test_clean_step(void **state)
{
    (void)state;
    long long s[40];
    double v[40];
    for (int i = 0; i < 40; i++) {
        s[i] = 100LL * i;
        v[i] = i < 20 ? 1.0 : 2.0;
    }
    struct tr_event t[4];
    struct err e;
    assert_int_equal(tr_detect(s, v, 40, t, 4, &e), 1);
    assert_int_equal(t[0].kind, TR_KIND_TRANSITION);
    assert_int_equal(t[0].start_step, 1900);
    assert_int_equal(t[0].peak_step, 2000);
    assert_int_equal(t[0].end_step, 2000);
    assert_true(fabs(t[0].magnitude - 1.0) < 1e-12);
    assert_true(t[0].before == 1.0 && t[0].after == 2.0);
    assert_true(isfinite(t[0].score) && t[0].p_value == TR_P_MIN);
}

/* a staircase of six steps with cap 3: the three strongest, by peak */
static void test_cap(void **state)
{
    (void)state;
    long long s[SIM_MAX];
    double v[SIM_MAX];
    int n = sim_even(s, 140);
    struct sim_rng r = {77};
    sim_noise(&r, SIM_GAUSS, s, v, n, 0.01);
    double heights[6] = {1, 3, 2, 6, 5, 4};
    for (int j = 0; j < 6; j++)
        sim_add_sigmoid(s, v, n, 10.0 * (20 * j + 15) + 5, 0, heights[j]);
    struct tr_event all[8], top[3];
    struct err e;
    assert_int_equal(tr_detect(s, v, n, all, 8, &e), 6);
    assert_int_equal(tr_detect(s, v, n, top, 3, &e), 3);
    /* the three largest scores are the three largest steps (6, 5, 4:
     * steps 4 and 5 and 6 of the stair), in peak order */
    assert_int_equal(top[0].peak_step, all[3].peak_step);
    assert_int_equal(top[1].peak_step, all[4].peak_step);
    assert_int_equal(top[2].peak_step, all[5].peak_step);
    for (int i = 0; i < 6; i++)
        assert_true(fabs(all[i].magnitude - heights[i]) < 0.05);
}

/* Series without a transition: per kind, at most NOISE_BOUND[kind] of
 * the 3 x NOISE_SERIES series with any transition (white noise: the
 * calibrated rate is TR_P_MAX per series); none for constants; the one
 * 30-sigma outlier of the spike kind a spike in every series. */
static const int NOISE_BOUND[SIM_KIND_COUNT] = {
    /* gauss t3 t2 drift walk spike const quant trend (measured: 0 0 6 0 9 0 0 1 0) */
    3, 10, 20, 6, 20, 3, 0, 5, 3};

static void test_noise_only(void **state)
{
    (void)state;
    long long s[SIM_MAX];
    double v[SIM_MAX];
    long total = 0;
    for (int k = 0; k < SIM_KIND_COUNT; k++) {
        int hits = 0, spiked = 0, at_end = 0;
        double worst = 0;
        for (int sch = 0; sch < 3; sch++) {
            int n = sch == 0 ? sim_pythia(s) : sch == 1 ? sim_toy(s, 3000, 100) : sim_toy(s, 6000, 100);
            struct sim_rng r = {0x70000000ULL + 100003ULL * (unsigned long long)k + (unsigned long long)sch};
            for (int i = 0; i < NOISE_SERIES; i++) {
                struct tr_event t[TR_MAX_PER_SERIES];
                struct err e;
                sim_noise(&r, (enum sim_kind)k, s, v, n, 1.0);
                int got = tr_detect(s, v, n, t, TR_MAX_PER_SERIES, &e);
                assert_true(got >= 0);
                hits += count_kind(t, got, TR_KIND_TRANSITION) > 0;
                spiked += count_kind(t, got, TR_KIND_SPIKE) > 0;
                /* an outlier at the first or last point cannot be told from a change */
                at_end += k == SIM_SPIKE && (v[0] > 20 || v[n - 1] > 20);
                double z;
                assert_int_equal(tr_max_score(s, v, n, &z, NULL, &e), 0);
                worst = z > worst ? z : worst;
            }
            total += NOISE_SERIES;
        }
        printf("# %-6s: %3d of %d series with a transition (bound %d), %4d with a spike, highest first score %.2f\n",
               sim_kind_name[k], hits, 3 * NOISE_SERIES, NOISE_BOUND[k], spiked, worst);
        if (hits > NOISE_BOUND[k])
            fail_msg("%s noise: %d series with a transition, at most %d allowed", sim_kind_name[k], hits,
                     NOISE_BOUND[k]);
        if (k == SIM_SPIKE && spiked != 3 * NOISE_SERIES - at_end)
            fail_msg("spike noise: the outlier is a spike in %d of %d series (%d at an end)", spiked,
                     3 * NOISE_SERIES, at_end);
    }
    printf("# %ld noise series\n", total);
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

/* The noise model's random-walk share (tr_max_score's rho), which the
 * p-values depend on: near 0 for white noise, near 1 for a random walk,
 * median of 41 series of Pythia's 154 points.  A bounded wander (AR(1),
 * 0.9 per checkpoint, under a little white noise) is printed: on series
 * this short it reads as a walk (docs/transitions.md, Known limits). */
static void test_noise_share(void **state)
{
    (void)state;
    long long s[SIM_MAX];
    double v[SIM_MAX], rho[41];
    int n = sim_pythia(s);
    double med[3];
    for (int k = 0; k < 3; k++) {
        struct sim_rng r = {0x5ba7e000ULL + (unsigned long long)k};
        for (int i = 0; i < 41; i++) {
            if (k < 2) {
                sim_noise(&r, k == 0 ? SIM_GAUSS : SIM_WALK, s, v, n, 1.0);
            } else {
                double x = 0;
                for (int j = 0; j < n; j++) {
                    x = 0.9 * x + sim_gauss(&r);
                    v[j] = x + 0.3 * sim_gauss(&r);
                }
            }
            struct err e;
            double z;
            assert_int_equal(tr_max_score(s, v, n, &z, &rho[i], &e), 0);
            assert_true(rho[i] >= 0 && rho[i] <= 1);
        }
        qsort(rho, 41, sizeof *rho, cmp_double);
        med[k] = rho[20];
    }
    printf("# random-walk share, median of 41: white %.3f, walk %.3f, AR(1) 0.9 %.3f\n", med[0], med[1], med[2]);
    if (!(med[0] <= 0.15))
        fail_msg("white noise read as %.3f random walk (median), at most 0.15 expected", med[0]);
    if (!(med[1] >= 0.6))
        fail_msg("a random walk read as %.3f random walk (median), at least 0.6 expected", med[1]);
}

/* Too short to tell a change from noise: nothing, however clear. */
static void test_short(void **state)
{
    (void)state;
    long long s[TR_MIN_POINTS];
    double v[TR_MIN_POINTS];
    for (int n = 0; n < TR_MIN_POINTS; n++) {
        for (int i = 0; i < n; i++) {
            s[i] = 1LL << i;
            v[i] = i < n / 2 ? 0.0 : 100.0;
        }
        struct tr_event t[4];
        struct err e;
        assert_int_equal(tr_detect(s, v, n, t, 4, &e), 0);
        double z = -1;
        assert_int_equal(tr_max_score(s, v, n, &z, NULL, &e), 0);
        assert_true(z == 0);
    }
}

static void test_constant(void **state)
{
    (void)state;
    long long s[SIM_MAX];
    double v[SIM_MAX];
    int n = sim_pythia(s);
    const double levels[] = {0.0, -3.25, 1e300, 5e-320};
    for (size_t j = 0; j < sizeof levels / sizeof *levels; j++) {
        for (int i = 0; i < n; i++)
            v[i] = levels[j];
        struct tr_event t[4];
        struct err e;
        assert_int_equal(tr_detect(s, v, n, t, 4, &e), 0);
    }
    /* constant to float32's precision (a frozen model's loss) */
    for (int i = 0; i < n; i++)
        v[i] = (double)(float)(4.2228 - 3e-7 * i);
    struct tr_event t[4];
    struct err e;
    assert_int_equal(tr_detect(s, v, n, t, 4, &e), 0);
}

/* The calibrated p-value: a probability, falling with the score. */
static void test_p_value(void **state)
{
    (void)state;
    const int lens[] = {20, 38, 154, 1000};
    const double rhos[] = {0, 0.5, 1};
    for (size_t a = 0; a < 4; a++)
        for (size_t b = 0; b < 3; b++) {
            double last = 2;
            for (double z = 0; z < 60; z += 0.25) {
                double p = tr_p_value(z, lens[a], rhos[b]);
                if (!(p >= TR_P_MIN && p <= 1 && p <= last))
                    fail_msg("p(%g, n %d, rho %g) = %g after %g", z, lens[a], rhos[b], p, last);
                last = p;
            }
            assert_true(last < 1e-9);
            assert_true(tr_p_value(1e4, lens[a], rhos[b]) == TR_P_MIN);
            assert_true(tr_p_value(0, lens[a], rhos[b]) > 0.5);
        }
}

/* NaN and infinite values are skipped wherever they are, even in the
 * middle of the change; the peak is a finite point's step. */
static void test_nan_inf(void **state)
{
    (void)state;
    long long s[SIM_MAX];
    double v[SIM_MAX];
    int n = sim_toy(s, 6000, 100);
    struct sim_rng r = {4242};
    sim_noise(&r, SIM_GAUSS, s, v, n, 0.02);
    sim_add_sigmoid(s, v, n, 3000, 400, 0.96);
    int i3000 = index_of(s, n, 3000);
    v[i3000] = NAN;
    v[i3000 + 1] = INFINITY;
    v[3] = -INFINITY;
    v[n - 1] = NAN;
    struct tr_event ev[4], t[4];
    struct err e;
    assert_int_equal(only_transitions(ev, tr_detect(s, v, n, ev, 4, &e), t), 1);
    assert_true(t[0].peak_step == 2900 || t[0].peak_step == 3200);
    assert_true(fabs(t[0].magnitude - 0.96) < 0.2 * 0.96);
    for (int i = 0; i < n; i++)
        v[i] = NAN;
    assert_int_equal(tr_detect(s, v, n, t, 4, &e), 0);
    /* finite points fewer than TR_MIN_POINTS: nothing */
    for (int i = 0; i < n; i++)
        v[i] = i < TR_MIN_POINTS - 1 ? (i < 7 ? 0.0 : 1.0) : NAN;
    assert_int_equal(tr_detect(s, v, n, t, 4, &e), 0);
}

static void test_bad_input(void **state)
{
    (void)state;
    long long s[20];
    double v[20];
    for (int i = 0; i < 20; i++) {
        s[i] = i;
        v[i] = i;
    }
    struct tr_event t[4];
    struct err e;
    s[7] = 6; /* equal to the one before */
    err_clear(&e);
    assert_int_equal(tr_detect(s, v, 20, t, 4, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "not strictly increasing"));
    assert_non_null(strstr(e.msg, "point 7"));
    s[7] = 7;
    assert_int_equal(tr_detect(s, v, -1, t, 4, &e), ERR_INVALID);
    assert_int_equal(tr_detect(s, v, 20, NULL, 4, &e), ERR_INVALID);
    assert_int_equal(tr_detect(NULL, NULL, 5, t, 4, &e), ERR_INVALID);
    assert_int_equal(tr_detect(s, v, 20, NULL, 0, NULL), 0); /* nothing asked for */
    double z;
    assert_int_equal(tr_max_score(s, v, -3, &z, NULL, NULL), ERR_INVALID);
}

/* A golden file's series: steps, and values with "nan", "inf", "-inf". */
static int golden_series(json_t *c, long long **s, double **v)
{
    json_t *js = json_object_get(c, "steps"), *jv = json_object_get(c, "values");
    int n = (int)json_array_size(js);
    assert_int_equal(n, (int)json_array_size(jv));
    *s = malloc(sizeof **s * (size_t)(n + 1));
    *v = malloc(sizeof **v * (size_t)(n + 1));
    assert_true(*s && *v);
    for (int i = 0; i < n; i++) {
        (*s)[i] = json_integer_value(json_array_get(js, (size_t)i));
        json_t *x = json_array_get(jv, (size_t)i);
        if (json_is_string(x)) /* JSON has no NaN or infinity */
            (*v)[i] = strcmp(json_string_value(x), "nan") == 0 ? NAN
                      : strcmp(json_string_value(x), "inf") == 0 ? INFINITY : -INFINITY;
        else
            (*v)[i] = json_number_value(x);
    }
    return n;
}

static double rel(double a, double b)
{
    return fabs(a - b) / (fabs(b) > 1e-300 ? fabs(b) : 1.0);
}

/* level-v2: the reference implementation's answers on its own series. */
static void test_reference(void **state)
{
    (void)state;
    json_error_t je;
    json_t *doc = json_load_file("tests/golden/transitions/cases_v2.json", 0, &je);
    if (!doc)
        fail_msg("tests/golden/transitions/cases_v2.json: %s (line %d); run make golden", je.text, je.line);
    assert_string_equal(json_string_value(json_object_get(doc, "method")), TR_METHOD);
    json_t *cases = json_object_get(doc, "cases");
    assert_true(json_array_size(cases) > 0);
    size_t ci;
    json_t *c;
    int nev = 0;
    double maxrel = 0;
    json_array_foreach(cases, ci, c) {
        const char *name = json_string_value(json_object_get(c, "name"));
        long long *s;
        double *v;
        int n = golden_series(c, &s, &v);
        json_t *want = json_object_get(c, "events");
        struct tr_event t[TR_MAX_PER_SERIES];
        struct err e;
        int k = tr_detect(s, v, n, t, TR_MAX_PER_SERIES, &e);
        if (k != (int)json_array_size(want))
            fail_msg("%s: %d events, the reference found %zu", name, k, json_array_size(want));
        double z, rho;
        assert_int_equal(tr_max_score(s, v, n, &z, &rho, &e), 0);
        double wz = json_number_value(json_object_get(c, "max_score"));
        double wr = json_number_value(json_object_get(c, "rho"));
        if (rel(z, wz) > 1e-9 || fabs(rho - wr) > 1e-9)
            fail_msg("%s: max score %.17g rho %.17g, reference %.17g %.17g", name, z, rho, wz, wr);
        maxrel = rel(z, wz) > maxrel ? rel(z, wz) : maxrel;
        for (int i = 0; i < k; i++) {
            json_t *w = json_array_get(want, (size_t)i);
            const char *kind = json_string_value(json_object_get(w, "kind"));
            long long ws = json_integer_value(json_object_get(w, "start_step"));
            long long wp = json_integer_value(json_object_get(w, "peak_step"));
            long long we = json_integer_value(json_object_get(w, "end_step"));
            if (strcmp(kind, t[i].kind == TR_KIND_SPIKE ? "spike" : "transition") != 0 || t[i].start_step != ws ||
                t[i].peak_step != wp || t[i].end_step != we)
                fail_msg("%s #%d: %s %lld/%lld/%lld, reference %s %lld/%lld/%lld", name, i,
                         t[i].kind == TR_KIND_SPIKE ? "spike" : "transition", t[i].start_step, t[i].peak_step,
                         t[i].end_step, kind, ws, wp, we);
            const char *keys[5] = {"magnitude", "score", "noise", "before", "after"};
            double got[5] = {t[i].magnitude, t[i].score, t[i].noise, t[i].before, t[i].after};
            for (int q = 0; q < 5; q++) {
                double r = rel(got[q], json_number_value(json_object_get(w, keys[q])));
                if (r > 1e-9)
                    fail_msg("%s #%d: %s %.17g, reference %.17g", name, i, keys[q], got[q],
                             json_number_value(json_object_get(w, keys[q])));
                maxrel = r > maxrel ? r : maxrel;
            }
            json_t *wp_ = json_object_get(w, "p_value");
            if (json_is_null(wp_) ? !isnan(t[i].p_value) : rel(t[i].p_value, json_number_value(wp_)) > 1e-9)
                fail_msg("%s #%d: p-value %.17g, reference %s", name, i, t[i].p_value,
                         json_is_null(wp_) ? "none" : "another");
            nev++;
        }
        free(s);
        free(v);
    }
    printf("# reference level-v2: %zu series, %d events, max relative difference %.2e\n", json_array_size(cases),
           nev, maxrel);
    json_decref(doc);
}

/* ramp-v1, kept for the rows it wrote: its reference's answers. */
static void test_reference_v1(void **state)
{
    (void)state;
    json_error_t je;
    json_t *doc = json_load_file("tests/golden/transitions/cases.json", 0, &je);
    if (!doc)
        fail_msg("tests/golden/transitions/cases.json: %s (line %d); run make golden", je.text, je.line);
    json_t *cases = json_object_get(doc, "cases");
    assert_true(json_array_size(cases) > 0);
    size_t ci;
    json_t *c;
    int ntr = 0;
    double maxrel = 0;
    json_array_foreach(cases, ci, c) {
        const char *name = json_string_value(json_object_get(c, "name"));
        long long *s;
        double *v;
        int n = golden_series(c, &s, &v);
        json_t *want = json_object_get(c, "transitions");
        struct tr1_transition t[TR1_MAX_PER_SERIES];
        struct err e;
        int k = tr1_detect(s, v, n, t, TR1_MAX_PER_SERIES, &e);
        if (k != (int)json_array_size(want))
            fail_msg("%s: %d transitions, the reference found %zu", name, k, json_array_size(want));
        double z;
        assert_int_equal(tr1_max_score(s, v, n, &z, &e), 0);
        double wz = json_number_value(json_object_get(c, "max_score"));
        if (rel(z, wz) > 1e-9)
            fail_msg("%s: max score %.17g, reference %.17g", name, z, wz);
        maxrel = rel(z, wz) > maxrel ? rel(z, wz) : maxrel;
        for (int i = 0; i < k; i++) {
            json_t *w = json_array_get(want, (size_t)i);
            long long ws = json_integer_value(json_object_get(w, "start_step"));
            long long wp = json_integer_value(json_object_get(w, "peak_step"));
            long long we = json_integer_value(json_object_get(w, "end_step"));
            double wm = json_number_value(json_object_get(w, "magnitude"));
            double wsc = json_number_value(json_object_get(w, "score"));
            if (t[i].start_step != ws || t[i].peak_step != wp || t[i].end_step != we)
                fail_msg("%s #%d: steps %lld/%lld/%lld, reference %lld/%lld/%lld", name, i, t[i].start_step,
                         t[i].peak_step, t[i].end_step, ws, wp, we);
            double r1 = rel(t[i].magnitude, wm), r2 = rel(t[i].score, wsc);
            if (r1 > 1e-9 || r2 > 1e-9)
                fail_msg("%s #%d: magnitude %.17g score %.17g, reference %.17g %.17g", name, i, t[i].magnitude,
                         t[i].score, wm, wsc);
            maxrel = r1 > maxrel ? r1 : maxrel;
            maxrel = r2 > maxrel ? r2 : maxrel;
            ntr++;
        }
        free(s);
        free(v);
    }
    printf("# reference ramp-v1: %zu series, %d transitions, max relative difference %.2e\n",
           json_array_size(cases), ntr, maxrel);
    json_decref(doc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grokking_toy),    cmocka_unit_test(test_induction),
        cmocka_unit_test(test_spikes),          cmocka_unit_test(test_stages),
        cmocka_unit_test(test_move_together),   cmocka_unit_test(test_group),
        cmocka_unit_test(test_two_transitions), cmocka_unit_test(test_clean_step),
        cmocka_unit_test(test_cap),             cmocka_unit_test(test_noise_only),
        cmocka_unit_test(test_noise_share),
        cmocka_unit_test(test_short),           cmocka_unit_test(test_constant),
        cmocka_unit_test(test_p_value),         cmocka_unit_test(test_nan_inf),
        cmocka_unit_test(test_bad_input),       cmocka_unit_test(test_reference),
        cmocka_unit_test(test_reference_v1),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
