/*
 * test_daemon_report - the pure pieces of `ckptd report` (daemon/read/report.h),
 * no database needed: the log-step axis (report_axis_init/_x) against its
 * definition computed here, HTML escaping, the heatmap colour ramp (its
 * anchors, clamping, NaN, and a luminance that rises with the value), nice
 * tick steps, the shortest round-trip formatting of doubles, and the default
 * output directory.  The page itself is checked in a browser by
 * tests/report_browser.sh.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "daemon/plan/source.h"
#include "daemon/read/report.h"

/* ---- the axis ---- */

static void test_axis_pythia(void **state)
{
    (void)state;
    long long *steps = NULL;
    int n = 0;
    assert_int_equal(schedule_parse("pythia", &steps, &n, NULL), 0);
    struct report_axis a;
    report_axis_init(&a, 1, 1, 143000, 58, 388);
    assert_true(a.lo == 0);
    assert_true(fabs(a.hi - log10(143000.0)) < 1e-12);
    assert_true(report_axis_x(&a, 0) == 58);                  /* step 0 at the left edge */
    assert_true(fabs(report_axis_x(&a, 1) - (58 + REPORT_ZERO_GAP)) < 1e-9); /* 10^0 after the gap */
    assert_true(fabs(report_axis_x(&a, 143000) - 446) < 1e-9); /* the last step at the right edge */
    for (int i = 0; i < n; i++) {
        double want = steps[i] == 0 ? 58
                    : 58 + REPORT_ZERO_GAP + log10((double)steps[i]) / log10(143000.0) * (388 - REPORT_ZERO_GAP);
        double got = report_axis_x(&a, steps[i]);
        if (fabs(got - want) > 1e-9)
            fail_msg("step %lld: x %.12f, expected %.12f", steps[i], got, want);
        if (i > 0 && !(got > report_axis_x(&a, steps[i - 1])))
            fail_msg("x not increasing at step %lld", steps[i]);
    }
    /* equal ratios, equal distances: 1 → 10 as long as 1000 → 10000 */
    double d1 = report_axis_x(&a, 10) - report_axis_x(&a, 1);
    double d2 = report_axis_x(&a, 10000) - report_axis_x(&a, 1000);
    assert_true(fabs(d1 - d2) < 1e-9);
    free(steps);
}

static void test_axis_edges(void **state)
{
    (void)state;
    struct report_axis a;
    /* no step 0: no gap, the decade below the first step at the left edge */
    report_axis_init(&a, 0, 250, 9000, 10, 100);
    assert_true(a.gap == 0 && a.lo == 2);
    assert_true(report_axis_x(&a, 100) == 10);
    assert_true(fabs(report_axis_x(&a, 9000) - 110) < 1e-9);
    assert_true(report_axis_x(&a, 5) == 10); /* below the axis: clamped */
    assert_true(report_axis_x(&a, 1000000) == 110);
    /* one step: a decade wide */
    report_axis_init(&a, 0, 1000, 1000, 0, 100);
    assert_true(a.lo == 3 && a.hi == 4);
    assert_true(report_axis_x(&a, 1000) == 0);
    /* only step 0 */
    report_axis_init(&a, 1, 0, 0, 5, 100);
    assert_true(report_axis_x(&a, 0) == 5);
    assert_true(a.hi > a.lo);
    /* a power of ten as the smallest step is the axis start, not a decade below */
    report_axis_init(&a, 1, 1000, 143000, 0, 124);
    assert_true(a.lo == 3);
    assert_true(fabs(report_axis_x(&a, 1000) - REPORT_ZERO_GAP) < 1e-9);
}

/* ---- escaping ---- */

static char *escaped(const char *s)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    report_html_escape(f, s);
    fclose(f);
    return buf;
}

static void test_escape(void **state)
{
    (void)state;
    char *s = escaped("<script>alert(\"x\")</script> & 'q' &amp;");
    assert_string_equal(s, "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;q&#39; &amp;amp;");
    free(s);
    s = escaped("plain step{step} \xc3\xa9"); /* UTF-8 passes through */
    assert_string_equal(s, "plain step{step} \xc3\xa9");
    free(s);
    s = escaped("");
    assert_string_equal(s, "");
    free(s);
    s = escaped(NULL);
    assert_string_equal(s, "");
    free(s);
}

/* ---- colours ---- */

static double channel(int c)
{
    double v = c / 255.0;
    return v <= 0.04045 ? v / 12.92 : pow((v + 0.055) / 1.055, 2.4);
}

/* WCAG relative luminance of "#rrggbb" */
static double luminance(const char *hex)
{
    unsigned r, g, b;
    assert_int_equal(sscanf(hex, "#%2x%2x%2x", &r, &g, &b), 3);
    return 0.2126 * channel((int)r) + 0.7152 * channel((int)g) + 0.0722 * channel((int)b);
}

static void test_color(void **state)
{
    (void)state;
    char c[8];
    report_color(c, 0);
    assert_string_equal(c, "#440154");
    report_color(c, 1);
    assert_string_equal(c, "#fde725");
    report_color(c, 0.5);
    assert_string_equal(c, "#21918c");
    report_color(c, -3);
    assert_string_equal(c, "#440154");
    report_color(c, 7);
    assert_string_equal(c, "#fde725");
    report_color(c, INFINITY);
    assert_string_equal(c, "#fde725");
    report_color(c, NAN);
    assert_string_equal(c, "#ffffff");
    /* halfway between two anchors: the mean of their channels */
    report_color(c, 1.0 / 16);
    assert_string_equal(c, "#461768"); /* (0x44+0x47)/2, (0x01+0x2d)/2, (0x54+0x7b)/2, halves rounded up */
    double prev = -1;
    for (int i = 0; i <= 200; i++) {
        report_color(c, i / 200.0);
        assert_int_equal(strlen(c), 7);
        double l = luminance(c);
        if (!(l >= prev))
            fail_msg("luminance falls at t=%.3f (%s): %.5f after %.5f", i / 200.0, c, l, prev);
        prev = l;
    }
}

/* ---- ticks ---- */

static void check_ticks(double lo, double hi, int want)
{
    double t[32];
    int n = report_nice_ticks(lo, hi, want, t, 32);
    if (n < 2)
        fail_msg("[%g, %g]: %d ticks", lo, hi, n);
    double step = t[1] - t[0];
    double mag = pow(10, floor(log10(step) + 1e-9)), norm = step / mag;
    if (!(fabs(norm - 1) < 1e-9 || fabs(norm - 2) < 1e-9 || fabs(norm - 5) < 1e-9))
        fail_msg("[%g, %g]: step %g is not 1, 2 or 5 times a power of ten", lo, hi, step);
    for (int i = 0; i < n; i++) {
        if (t[i] < lo - 1e-9 * step || t[i] > hi + 1e-9 * step)
            fail_msg("[%g, %g]: tick %g outside", lo, hi, t[i]);
        if (i && fabs(t[i] - t[i - 1] - step) > 1e-9 * step)
            fail_msg("[%g, %g]: uneven ticks", lo, hi);
    }
    if (t[0] - lo > step + 1e-9 || hi - t[n - 1] > step + 1e-9)
        fail_msg("[%g, %g]: ticks leave a gap of more than a step", lo, hi);
    if (n < want / 2 || n > want * 2 + 1)
        fail_msg("[%g, %g]: %d ticks for %d wanted", lo, hi, n, want);
}

static void test_ticks(void **state)
{
    (void)state;
    double t[16];
    int n = report_nice_ticks(0, 1, 5, t, 16);
    assert_int_equal(n, 6);
    for (int i = 0; i < n; i++)
        assert_true(fabs(t[i] - 0.2 * i) < 1e-12);
    check_ticks(-1.63, -0.05, 5);
    check_ticks(1.2, 10.9, 5);
    check_ticks(0.0123, 0.8157, 5);
    check_ticks(-3e-7, 4e-7, 6);
    check_ticks(1e6, 1.43e8, 4);
    assert_int_equal(report_nice_ticks(NAN, 1, 5, t, 16), 0);
    assert_int_equal(report_nice_ticks(0, 1, 5, t, 3), 3); /* never more than max */
    n = report_nice_ticks(2, 2, 5, t, 16);                  /* one value: still an axis */
    assert_true(n >= 1);
    n = report_nice_ticks(-0.1, 0.1, 4, t, 16); /* a tick at exactly 0 */
    int zero = 0;
    for (int i = 0; i < n; i++)
        zero |= t[i] == 0 && !signbit(t[i]);
    assert_true(zero);
}

/* ---- numbers ---- */

static void expect_fmt(double v, const char *want)
{
    char buf[40];
    report_fmt_double(buf, sizeof buf, v);
    if (strcmp(buf, want) != 0)
        fail_msg("%.17g: '%s', expected '%s'", v, buf, want);
}

static void test_fmt_double(void **state)
{
    (void)state;
    expect_fmt(0.1, "0.1");
    expect_fmt(-2, "-2");
    expect_fmt(10.845231, "10.845231");
    expect_fmt(1.0 / 3, "0.3333333333333333"); /* 15 digits do not read back, 16 do */
    expect_fmt(0.1 + 0.2, "0.30000000000000004");
    expect_fmt(NAN, "NaN");
    expect_fmt(INFINITY, "Infinity");
    expect_fmt(-INFINITY, "-Infinity");
    expect_fmt(1e300, "1e+300");
    expect_fmt(5e-324, "4.94065645841247e-324");
    /* random doubles: each reads back exactly, and one digit fewer would not */
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 20000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        double v;
        memcpy(&v, &x, sizeof v);
        if (!isfinite(v))
            continue;
        char buf[40], other[40];
        report_fmt_double(buf, sizeof buf, v);
        if (strtod(buf, NULL) != v)
            fail_msg("%s does not read back as %a", buf, v);
        int p = 15;
        while (p <= 17 && (snprintf(other, sizeof other, "%.*g", p, v), strcmp(other, buf) != 0))
            p++;
        if (p > 17)
            fail_msg("%s is not %%.15g, %%.16g or %%.17g of %a", buf, v);
        if (p > 15 && (snprintf(other, sizeof other, "%.*g", p - 1, v), strtod(other, NULL) == v))
            fail_msg("%s: %d digits would do (%s)", buf, p - 1, other);
    }
}

static void test_default_dir(void **state)
{
    (void)state;
    char d[64];
    report_default_dir(d, sizeof d, "pythia-70m");
    assert_string_equal(d, "report-pythia-70m");
    report_default_dir(d, sizeof d, "org/run/x");
    assert_string_equal(d, "report-org_run_x");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_axis_pythia),   cmocka_unit_test(test_axis_edges),
        cmocka_unit_test(test_escape),        cmocka_unit_test(test_color),
        cmocka_unit_test(test_ticks),         cmocka_unit_test(test_fmt_double),
        cmocka_unit_test(test_default_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
