/*
 * test_rng - common/rng.h against its stated formulas, computed
 * independently by tests/reference/rng_ref.py (tests/golden/rng/draws.json):
 * rng_next, rng_mod, rng_below, rng_unit, rng_normal and rng_normal_pair
 * exactly (the same IEEE double operations and libm), rng_normals_f within
 * 2e-6 (the C code works in float with logf and sincosf, the reference in
 * double).  Then
 * the properties the callers rely on: rng_unit in [0, 1), rng_symmetric
 * in [-1, 1), rng_normal's mean and variance near 0 and 1 over 200,000
 * draws (4 standard errors), rng_normals_f's likewise.
 */
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/rng.h"

#define GOLDEN "tests/golden/rng/draws.json"

static double num(json_t *a, size_t i)
{
    json_t *v = json_array_get(a, i);
    if (!json_is_number(v))
        fail_msg("not a number at %zu", i);
    return json_number_value(v);
}

static void test_golden(void **state)
{
    (void)state;
    json_error_t je;
    json_t *doc = json_load_file(GOLDEN, 0, &je);
    if (!doc)
        fail_msg("%s: %s", GOLDEN, je.text);
    json_t *cases = json_object_get(doc, "cases"), *c;
    size_t k;
    assert_true(json_array_size(cases) >= 3);
    json_array_foreach(cases, k, c) {
        const char *hs = json_string_value(json_object_get(c, "seed")); /* hex: all 64 bits */
        assert_non_null(hs);
        uint64_t seed = (uint64_t)strtoull(hs, NULL, 16);
        uint64_t s = seed;
        json_t *a = json_object_get(c, "next");
        for (size_t i = 0; i < json_array_size(a); i++) {
            char hex[17];
            snprintf(hex, sizeof hex, "%016llx", (unsigned long long)rng_next(&s));
            assert_string_equal(hex, json_string_value(json_array_get(a, i)));
        }
        s = seed;
        a = json_object_get(c, "mod_1000003");
        for (size_t i = 0; i < json_array_size(a); i++)
            assert_int_equal(rng_mod(&s, 1000003), (uint64_t)num(a, i));
        s = seed;
        a = json_object_get(c, "below_7");
        for (size_t i = 0; i < json_array_size(a); i++)
            assert_int_equal(rng_below(&s, 7), (uint32_t)num(a, i));
        s = seed;
        a = json_object_get(c, "unit");
        for (size_t i = 0; i < json_array_size(a); i++) {
            double got = rng_unit(&s), want = num(a, i);
            if (got != want)
                fail_msg("seed %llu unit[%zu]: %.17g, expected %.17g", (unsigned long long)seed, i, got, want);
        }
        s = seed;
        a = json_object_get(c, "normal");
        for (size_t i = 0; i < json_array_size(a); i++) {
            double got = rng_normal(&s), want = num(a, i);
            if (got != want)
                fail_msg("seed %llu normal[%zu]: %.17g, expected %.17g", (unsigned long long)seed, i, got, want);
        }
        s = seed;
        a = json_object_get(c, "normal_pair_3");
        assert_int_equal(json_array_size(a), 6);
        for (size_t i = 0; i < 6; i += 2) {
            double z[2];
            rng_normal_pair(&s, z);
            if (z[0] != num(a, i) || z[1] != num(a, i + 1))
                fail_msg("seed %llu normal_pair[%zu]: %.17g %.17g, expected %.17g %.17g",
                         (unsigned long long)seed, i / 2, z[0], z[1], num(a, i), num(a, i + 1));
        }
        s = seed;
        a = json_object_get(c, "normals_f_5");
        float x[5];
        rng_normals_f(x, 5, &s);
        assert_int_equal(json_array_size(a), 5);
        for (size_t i = 0; i < 5; i++)
            if (fabs(x[i] - num(a, i)) > 2e-6)
                fail_msg("seed %llu normals_f[%zu]: %.9g, expected %.9g", (unsigned long long)seed, i, x[i],
                         num(a, i));
        /* an odd count takes the same draws: the last pair's sine dropped */
        uint64_t s2 = seed;
        float y[6];
        rng_normals_f(y, 6, &s2);
        assert_memory_equal(x, y, sizeof x);
        assert_true(s2 == s);
    }
    json_decref(doc);
}

static void test_properties(void **state)
{
    (void)state;
    enum { N = 200000 };
    uint64_t s = 42;
    double sum = 0, sum2 = 0;
    for (int i = 0; i < N; i++) {
        double u = rng_unit(&s);
        assert_true(u >= 0.0 && u < 1.0);
        float f = rng_symmetric(&s);
        assert_true(f >= -1.0f && f < 1.0f);
        assert_true(rng_mod(&s, 3) < 3);
        double z = rng_normal(&s);
        assert_true(isfinite(z));
        sum += z;
        sum2 += z * z;
    }
    double mean = sum / N, var = sum2 / N - mean * mean;
    if (fabs(mean) > 4 / sqrt(N) || fabs(var - 1) > 4 * sqrt(2.0 / N))
        fail_msg("rng_normal: mean %.5f, variance %.5f", mean, var);
    static float x[N];
    rng_normals_f(x, N, &s);
    sum = sum2 = 0;
    for (int i = 0; i < N; i++) {
        assert_true(isfinite(x[i]));
        sum += x[i];
        sum2 += (double)x[i] * x[i];
    }
    mean = sum / N;
    var = sum2 / N - mean * mean;
    if (fabs(mean) > 4 / sqrt(N) || fabs(var - 1) > 4 * sqrt(2.0 / N))
        fail_msg("rng_normals_f: mean %.5f, variance %.5f", mean, var);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden),
        cmocka_unit_test(test_properties),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
