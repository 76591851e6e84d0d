/*
 * test_daemon_policy - the pure pieces of the adaptive policy
 * (daemon/work/policy.h), no database needed: which items are cheap
 * (policy_classify: the cheapest up to POLICY_CHEAP_SHARE of a
 * checkpoint's seconds, at least one, dependants of expensive items
 * expensive) and which checkpoints are densified (policy_densify: windows
 * widened, merged when they overlap, heaviest first, outward from the
 * peak, within the budget), when a stored claim's series are examined
 * (policy_detect_now: not during the first pass) and the phase `status`
 * shows (policy_phase_name, policy_phase_format).  The claim order itself
 * is tests/daemon_policy.sh.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "daemon/work/policy.h"

static void test_policy_known(void **state)
{
    (void)state;
    assert_true(policy_known("order"));
    assert_true(policy_known("adaptive"));
    assert_false(policy_known("Adaptive"));
    assert_false(policy_known(""));
    assert_false(policy_known(NULL));
}

static void test_classify_share(void **state)
{
    (void)state;
    /* 1 + 2 = 3 s of 110: the two cheapest; 3 + 27 would pass 27.5 s */
    const char *const names[] = {"llc", "weights", "task", "sae", "heads"};
    const char *const deps[] = {"", "", "", "", ""};
    const double secs[] = {50, 1, 2, 27, 30};
    int cheap[5];
    assert_int_equal(policy_classify(secs, names, deps, 5, cheap), 2);
    assert_int_equal(cheap[1], 1);
    assert_int_equal(cheap[2], 1);
    assert_int_equal(cheap[0] + cheap[3] + cheap[4], 0);
}

static void test_classify_at_least_one(void **state)
{
    (void)state;
    /* the cheapest item alone is over the share: still cheap */
    const char *const names[] = {"sae", "llc"};
    const char *const deps[] = {NULL, NULL};
    const double secs[] = {40, 60};
    int cheap[2];
    assert_int_equal(policy_classify(secs, names, deps, 2, cheap), 1);
    assert_int_equal(cheap[0], 1);
    assert_int_equal(cheap[1], 0);
}

static void test_classify_unpriced_and_ties(void **state)
{
    (void)state;
    /* an item the model does not price counts 0 s: cheap; equal costs
     * are taken in name order, so the split does not depend on the list's */
    const char *const a[] = {"zeta", "alpha", "mystery", "big"};
    const char *const b[] = {"alpha", "zeta", "mystery", "big"};
    const char *const deps[] = {"", "", "", ""};
    const double sa[] = {10, 10, 0, 60};
    const double sb[] = {10, 10, 0, 60};
    int ca[4], cb[4];
    /* total 80: 0 + 10 = 10 <= 20, + 10 = 20 <= 20: all three small ones */
    assert_int_equal(policy_classify(sa, a, deps, 4, ca), 3);
    assert_int_equal(policy_classify(sb, b, deps, 4, cb), 3);
    const double sc[] = {10, 10, 0, 40}; /* total 60: 15 s: mystery and alpha, not zeta */
    assert_int_equal(policy_classify(sc, a, deps, 4, ca), 2);
    assert_int_equal(ca[1], 1);
    assert_int_equal(ca[2], 1);
    assert_int_equal(ca[0], 0);
    assert_int_equal(policy_classify(sc, b, deps, 4, cb), 2);
    assert_int_equal(cb[0], 1);
    assert_int_equal(cb[1], 0);
}

static void test_classify_dependants(void **state)
{
    (void)state;
    /* sae_match reads sae's dictionaries: with sae expensive it is too,
     * however cheap itself */
    const char *const names[] = {"weights", "sae_match", "sae"};
    const char *const deps[] = {"", "sae", ""};
    const double secs[] = {1, 0.5, 40};
    int cheap[3];
    assert_int_equal(policy_classify(secs, names, deps, 3, cheap), 1);
    assert_int_equal(cheap[0], 1);
    assert_int_equal(cheap[1], 0);
    assert_int_equal(cheap[2], 0);
}

static int count(const unsigned char *d, int n)
{
    int k = 0;
    for (int i = 0; i < n; i++)
        k += d[i];
    return k;
}

static void test_densify_window(void **state)
{
    (void)state;
    unsigned char d[40];
    const struct policy_window w[] = {{10, 14, 1, 12}};
    /* widened by 2: 8..16, within a budget of 20 */
    assert_int_equal(policy_densify(w, 1, 40, 2, 20, d), 9);
    for (int i = 0; i < 40; i++)
        assert_int_equal(d[i], i >= 8 && i <= 16);
}

static void test_densify_budget_from_the_peak(void **state)
{
    (void)state;
    unsigned char d[40];
    const struct policy_window w[] = {{0, 30, 1, 20}};
    /* a budget of 5 of a window of 31: the five nearest the peak */
    assert_int_equal(policy_densify(w, 1, 40, 0, 5, d), 5);
    for (int i = 18; i <= 22; i++)
        assert_int_equal(d[i], 1);
    assert_int_equal(count(d, 40), 5);
}

static void test_densify_heaviest_first_and_merge(void **state)
{
    (void)state;
    unsigned char d[100];
    /* two overlapping windows merge (weight 2) and win over a lone one */
    const struct policy_window w[] = {{70, 74, 1, 72}, {10, 14, 1, 12}, {13, 17, 1, 15}};
    assert_int_equal(policy_densify(w, 3, 100, 1, 9, d), 9);
    assert_int_equal(count(d, 100), 9);
    for (int i = 60; i < 100; i++)
        assert_int_equal(d[i], 0);
    /* the merged window 9..18 around its weighted peak (13.5 rounded) */
    for (int i = 0; i < 9; i++)
        assert_int_equal(d[i], 0);
    assert_int_equal(d[14], 1);
    /* a budget for both: every checkpoint of both, the ends clamped */
    const struct policy_window e[] = {{0, 1, 1, 0}, {97, 99, 1, 98}};
    assert_int_equal(policy_densify(e, 2, 100, 2, 50, d), 4 + 5);
    assert_int_equal(d[0] + d[1] + d[2] + d[3], 4);
    assert_int_equal(d[95] + d[96] + d[97] + d[98] + d[99], 5);
    assert_int_equal(policy_densify(e, 0, 100, 2, 50, d), 0);
    assert_int_equal(count(d, 100), 0);
}

static void test_detect_now(void **state)
{
    (void)state;
    /* the first pass defers the claim's series; the plan examined them all */
    assert_false(policy_detect_now(POLICY_FIRST_PASS));
    assert_false(policy_detect_now(POLICY_PLANNED));
    /* an order run or a planned one, and a failure (the rows are stored) */
    assert_true(policy_detect_now(0));
    assert_true(policy_detect_now(-3));
}

static void test_phase_name(void **state)
{
    (void)state;
    struct policy_counts k = {45, 2, 7, 0, 11, 11, 27, 27};
    assert_string_equal(policy_phase_name(&k), "first pass");
    k.cheap_left = 0;
    k.skeleton_left = 1; /* a skeleton checkpoint still running */
    assert_string_equal(policy_phase_name(&k), "first pass");
    k.skeleton_left = 0;
    assert_string_equal(policy_phase_name(&k), "dense");
    k.dense_left = 0;
    assert_string_equal(policy_phase_name(&k), "rest");
    k.rest_left = 0;
    assert_string_equal(policy_phase_name(&k), "done");
    /* a dense job picked up beside the end of the first pass: still first */
    struct policy_counts m = {45, 1, 7, 0, 11, 10, 27, 27};
    assert_string_equal(policy_phase_name(&m), "first pass");
}

static void test_phase_format(void **state)
{
    (void)state;
    char out[512];
    struct policy_counts k = {45, 45, 7, 7, 0, 0, 38, 38};
    policy_phase_format(out, sizeof out, &k, "weights,heads", "task", 0, NULL);
    assert_string_equal(out, "policy adaptive, phase first pass: cheap [weights,heads] on 45 checkpoints (45 left), "
                             "with skeleton [task] on 7 of them (7 left); dense planned when the first pass ends; "
                             "rest 38 (38 left)");
    struct policy_counts d = {45, 0, 7, 0, 11, 4, 27, 27};
    policy_phase_format(out, sizeof out, &d, "weights,heads", "task", 1, "315..480");
    assert_string_equal(out, "policy adaptive, phase dense: cheap [weights,heads] on 45 checkpoints (0 left), "
                             "with skeleton [task] on 7 of them (0 left); dense 11 checkpoints in 315..480 (4 left); "
                             "rest 27 (27 left)");
    struct policy_counts z = {45, 0, 7, 0, 0, 0, 38, 0};
    policy_phase_format(out, sizeof out, &z, "weights", "task,llc", 1, "");
    assert_string_equal(out, "policy adaptive, phase done: cheap [weights] on 45 checkpoints (0 left), "
                             "with skeleton [task,llc] on 7 of them (0 left); dense none (no transition in the cheap "
                             "items); rest 38 (0 left)");
    /* cut to the buffer, terminated */
    char small[24];
    policy_phase_format(small, sizeof small, &z, "weights", "task", 1, NULL);
    assert_int_equal(strlen(small), sizeof small - 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_policy_known),
        cmocka_unit_test(test_classify_share),
        cmocka_unit_test(test_classify_at_least_one),
        cmocka_unit_test(test_classify_unpriced_and_ties),
        cmocka_unit_test(test_classify_dependants),
        cmocka_unit_test(test_densify_window),
        cmocka_unit_test(test_densify_budget_from_the_peak),
        cmocka_unit_test(test_densify_heaviest_first_and_merge),
        cmocka_unit_test(test_detect_now),
        cmocka_unit_test(test_phase_name),
        cmocka_unit_test(test_phase_format),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
