/*
 * test_daemon_family - the pure pieces of families (daemon/detect/family.h)
 * and of the runs a source's range names (daemon/plan/runset.h), no
 * database needed: a member's changes from its stages; clustering members'
 * transitions by overlapping windows
 * and sign, the band rule, the far rule; runset_expand's names, widths and
 * refusals.  The database side is tests/daemon_family.sh.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "daemon/detect/family.h"
#include "daemon/plan/runset.h"

/* ---- family_cluster ---- */

static void test_cluster_overlap_and_sign(void **state)
{
    (void)state;
    /* three members' rises overlapping transitively (a-b, b-c), a fall
     * overlapping them, and a late rise apart */
    const struct family_tr t[] = {
        {0, 100, 150, 200, 0.5, 1}, {1, 180, 260, 300, 0.4, 1}, {2, 290, 320, 400, 0.6, 1},
        {0, 120, 160, 210, -0.3, 1}, {1, 900, 950, 1000, 0.2, 1},
    };
    int cl[5];
    int n = family_cluster(t, 5, cl);
    assert_int_equal(n, 3);
    assert_int_equal(cl[0], cl[1]);
    assert_int_equal(cl[1], cl[2]); /* transitively */
    assert_int_not_equal(cl[3], cl[0]); /* another sign: never with the rises */
    assert_int_not_equal(cl[4], cl[0]);
    assert_int_not_equal(cl[4], cl[3]);
    for (int i = 0; i < 5; i++)
        assert_true(cl[i] >= 1 && cl[i] <= 3);
}

static void test_cluster_matched_apart(void **state)
{
    (void)state;
    /* one transition at different steps in different members (grokking
     * under three seeds): windows apart, no member twice, like magnitudes */
    const struct family_tr t[] = {{0, 0, 10, 20, 1, 1}, {1, 21, 30, 40, 0.8, 1}, {2, 300, 320, 340, 0.6, 1}};
    int cl[3];
    assert_int_equal(family_cluster(t, 3, cl), 1);
    assert_int_equal(cl[0], 1);
    assert_int_equal(cl[1], 1);
    assert_int_equal(cl[2], 1);
    assert_int_equal(family_cluster(t, 0, cl), 0);
}

static void test_cluster_not_matched(void **state)
{
    (void)state;
    /* a member's two transitions stay apart; so do magnitudes more than
     * FAMILY_MATCH_RATIO apart; the nearest pair is matched first */
    const struct family_tr t[] = {
        {0, 0, 10, 20, 1, 1},       /* A: member 0 early */
        {0, 500, 510, 520, 1, 1},   /* B: member 0 late */
        {1, 100, 110, 120, 1, 1},   /* C: member 1, nearer A than B */
        {2, 600, 610, 620, 0.1, 1}, /* D: member 2, ten times smaller */
    };
    int cl[4];
    assert_int_equal(family_cluster(t, 4, cl), 3);
    assert_int_not_equal(cl[0], cl[1]);
    assert_int_equal(cl[2], cl[0]);
    assert_int_not_equal(cl[3], cl[0]);
    assert_int_not_equal(cl[3], cl[1]);
}

/* ---- family_changes ---- */

static void test_changes_stages_joined(void **state)
{
    (void)state;
    /* one member's series: memorising early; a small wobble; the rise in
     * two touching stages (shoulder then rise); a fall of another sign
     * touching the rise; a small late rise apart */
    struct family_tr t[] = {
        {0, 16, 50, 50, 0.43, 40},       {0, 1050, 1200, 1400, 0.02, 12}, {0, 1450, 1650, 1800, 0.30, 9},
        {0, 1750, 1780, 1900, -0.25, 3}, {0, 1800, 1900, 2000, 0.10, 6},  {0, 2300, 2350, 2400, 0.12, 5},
    };
    int n = family_changes(t, 6);
    assert_int_equal(n, 3);
    assert_int_equal(t[0].peak, 50); /* memorising stands */
    assert_int_equal(t[1].start, 1450); /* the rise, its stages joined */
    assert_int_equal(t[1].end, 2000);
    assert_int_equal(t[1].peak, 1650); /* the larger stage's peak */
    assert_true(fabs(t[1].magnitude - 0.40) < 1e-12);
    assert_true(t[1].score == 9);
    assert_true(fabs(t[2].magnitude + 0.25) < 1e-12); /* the fall: of at least half the largest */
    assert_int_equal(family_changes(t, 0), 0);
}

static void test_changes_shoulder_dropped(void **state)
{
    (void)state;
    /* a shoulder apart from the rise, a quarter of it: the rise alone;
     * a member with one small change keeps it */
    struct family_tr t[] = {{0, 125, 200, 275, 0.20, 137}, {0, 375, 425, 450, 0.77, 74}};
    assert_int_equal(family_changes(t, 2), 1);
    assert_int_equal(t[0].peak, 425);
    struct family_tr u[] = {{3, 175, 225, 325, 0.27, 17}};
    assert_int_equal(family_changes(u, 1), 1);
    assert_int_equal(u[0].peak, 225);
}

/* ---- family_band ---- */

#define M 4
#define S 10

static void test_band_names_the_one_apart(void **state)
{
    (void)state;
    double v[M * S], frac[M];
    int cmp[M], out[M];
    for (int m = 0; m < M; m++)
        for (int s = 0; s < S; s++)
            v[m * S + s] = s * 0.1 + 0.001 * m; /* three (and the fourth, at first) together */
    for (int s = 3; s < S; s++)
        v[3 * S + s] = 5.0 + s; /* the fourth leaves from step 3 on */
    assert_int_equal(family_band(v, M, S, frac, cmp, out), 1);
    assert_int_equal(out[3], 1);
    assert_int_equal(cmp[3], S);
    assert_true(fabs(frac[3] - 0.7) < 1e-12);
    for (int m = 0; m < 3; m++) {
        assert_int_equal(out[m], 0);
        assert_true(frac[m] <= 0.5);
    }
}

static void test_band_taking_turns(void **state)
{
    (void)state;
    /* each member leaves the others' band at its turn, a quarter of the
     * steps: none leaves on more than half, none is named */
    double v[M * S], frac[M];
    int cmp[M], out[M];
    for (int m = 0; m < M; m++)
        for (int s = 0; s < S; s++)
            v[m * S + s] = s % M == m ? 100.0 : s * 0.01 + 0.001 * m;
    assert_int_equal(family_band(v, M, S, frac, cmp, out), 0);
    for (int m = 0; m < M; m++) {
        assert_int_equal(out[m], 0);
        assert_true(frac[m] > 0 && frac[m] <= 0.5);
    }
}

static void test_band_missing_values(void **state)
{
    (void)state;
    /* NaN where a member has no value: compared only where it and two
     * others have one; fewer than 3 steps compared gives NaN */
    double v[M * S], frac[M];
    int cmp[M], out[M];
    for (int m = 0; m < M; m++)
        for (int s = 0; s < S; s++)
            v[m * S + s] = m == 3 && s >= 2 ? NAN : s;
    family_band(v, M, S, frac, cmp, out);
    assert_int_equal(cmp[3], 2);
    assert_true(isnan(frac[3]));
    assert_int_equal(out[3], 0);
    assert_int_equal(cmp[0], S);
}

/* ---- family_far ---- */

static void test_far(void **state)
{
    (void)state;
    double pos[4] = {10, 11, 12, 30}, dist, limit;
    assert_int_equal(family_far(pos, 4, 3, &dist, &limit), 1);
    assert_true(fabs(dist - 19) < 1e-12);
    assert_true(limit >= FAMILY_FAR_CKPTS);
    assert_int_equal(family_far(pos, 4, 0, &dist, &limit), 0);
    /* never far within FAMILY_FAR_CKPTS checkpoints, however tight the others */
    double tight[3] = {20, 20, 20 + FAMILY_FAR_CKPTS};
    assert_int_equal(family_far(tight, 3, 2, &dist, &limit), 0);
    double tight2[3] = {20, 20, 21 + FAMILY_FAR_CKPTS};
    assert_int_equal(family_far(tight2, 3, 2, &dist, &limit), 1);
    /* spread-out others widen the limit (3 x 1.4826 x their MAD) */
    double wide[5] = {0, 20, 40, 60, 75};
    assert_int_equal(family_far(wide, 5, 4, &dist, &limit), 0);
    assert_true(limit > dist);
    /* fewer than two others: no verdict */
    assert_int_equal(family_far(pos, 2, 0, &dist, &limit), -1);
}

/* ---- runset_expand ---- */

static void test_runset_pythia(void **state)
{
    (void)state;
    struct runset rs;
    struct err e;
    assert_int_equal(runset_expand("hf://EleutherAI/pythia-160m-seed{1..9}", &rs, &e), 9);
    assert_string_equal(rs.source[0], "hf://EleutherAI/pythia-160m-seed1");
    assert_string_equal(rs.name[0], "pythia-160m-seed1");
    assert_string_equal(rs.source[8], "hf://EleutherAI/pythia-160m-seed9");
    assert_string_equal(rs.name[8], "pythia-160m-seed9");
    runset_free(&rs);
}

static void test_runset_file_width(void **state)
{
    (void)state;
    struct runset rs;
    struct err e;
    assert_int_equal(runset_expand("file:///runs/seed{08..10}/step{step}", &rs, &e), 3);
    assert_string_equal(rs.source[0], "file:///runs/seed08/step{step}"); /* {step} stays */
    assert_string_equal(rs.name[0], "seed08");
    assert_string_equal(rs.name[2], "seed10");
    runset_free(&rs);
    assert_int_equal(runset_expand("file:///runs/seed1/step{step}", &rs, &e), 0); /* no range */
    runset_free(&rs);
}

static void test_runset_refusals(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "hf://a/b{3..1}",          /* empty */
        "hf://a/b{1..2}-c{1..2}",  /* two ranges */
        "hf://a/b{1..x}",          /* not a number */
        "hf://a/b{0..5000}",       /* more than RUNSET_MAX */
        "hf://a/b{1..2}c d",       /* a name that is not a run name */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        struct runset rs;
        struct err e;
        int rc = runset_expand(bad[i], &rs, &e);
        if (rc != ERR_INVALID)
            print_error("%s: %d\n", bad[i], rc);
        assert_int_equal(rc, ERR_INVALID);
        assert_true(e.msg[0] != '\0');
        runset_free(&rs);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cluster_overlap_and_sign), cmocka_unit_test(test_cluster_matched_apart),
        cmocka_unit_test(test_cluster_not_matched),
        cmocka_unit_test(test_changes_stages_joined),    cmocka_unit_test(test_changes_shoulder_dropped),
        cmocka_unit_test(test_band_names_the_one_apart), cmocka_unit_test(test_band_taking_turns),
        cmocka_unit_test(test_band_missing_values),       cmocka_unit_test(test_far),
        cmocka_unit_test(test_runset_pythia),             cmocka_unit_test(test_runset_file_width),
        cmocka_unit_test(test_runset_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
