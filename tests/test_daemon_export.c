/*
 * test_daemon_export - daemon/read/export.h without a database (the
 * database side is tests/export_pandas.sh).
 *
 *   arguments   RUN with --metric/--item repeated, --format, --out;
 *               every usage error is ERR_INVALID with the reason.
 *   npy header  numpy's format 1.0: magic, version, the little-endian
 *               header length, the dict with the shape spelled as Python
 *               spells a tuple ("()", "(5,)", "(5, 2, 4)"), padded with
 *               spaces to a multiple of 64 and ending in a newline; a
 *               buffer too small or too many axes is -1.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "daemon/read/export.h"

static int parse(struct export_opts *o, struct err *e, int argc, const char *const *argv)
{
    char *copy[16];
    for (int i = 0; i < argc; i++)
        copy[i] = (char *)argv[i];
    copy[argc] = NULL;
    return export_parse_args(argc, copy, o, e);
}

static void test_args(void **state)
{
    (void)state;
    struct export_opts o;
    struct err e;
    const char *ok[] = {"export", "pythia-70m", "--metric", "induction_score", "--item", "loss",
                        "--metric", "loss.loss", "--format", "npy", "--out", "ind/"};
    assert_int_equal(parse(&o, &e, 12, ok), 0);
    assert_string_equal(o.run, "pythia-70m");
    assert_int_equal(o.nmetrics, 2);
    assert_string_equal(o.metrics[1], "loss.loss");
    assert_int_equal(o.nitems, 1);
    assert_int_equal(o.format, EXPORT_NPY);
    assert_string_equal(o.out, "ind/");

    const char *plain[] = {"export", "r"};
    assert_int_equal(parse(&o, &e, 2, plain), 0);
    assert_int_equal(o.format, EXPORT_CSV);
    assert_null(o.out);

    static const struct {
        int argc;
        const char *argv[6];
        const char *why;
    } bad[] = {
        {1, {"export"}, "need RUN"},
        {3, {"export", "a", "b"}, "unexpected argument 'b'"},
        {4, {"export", "a", "--format", "parquet"}, "unknown format 'parquet'"},
        {3, {"export", "a", "--format"}, "--format needs a value"},
        {4, {"export", "a", "--metric", ""}, "--metric needs a name"},
        {3, {"export", "a", "--bogus"}, "unknown option '--bogus'"},
        {4, {"export", "a", "--out", ""}, "--out needs a path"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err_clear(&e);
        assert_int_equal(parse(&o, &e, bad[i].argc, bad[i].argv), ERR_INVALID);
        if (!strstr(e.msg, bad[i].why))
            fail_msg("case %zu: '%s' does not say '%s'", i, e.msg, bad[i].why);
    }
}

static void check_header(const long long *shape, int nd, const char *dims)
{
    char buf[256], want[200];
    int n = export_npy_header(buf, sizeof buf, shape, nd);
    assert_true(n > 10);
    assert_int_equal(n % 64, 0);
    assert_memory_equal(buf, "\x93NUMPY\x01\x00", 8);
    assert_int_equal((unsigned char)buf[8] | (unsigned char)buf[9] << 8, n - 10);
    assert_int_equal(buf[n - 1], '\n');
    int dl = snprintf(want, sizeof want, "{'descr': '<f8', 'fortran_order': False, 'shape': %s, }", dims);
    assert_memory_equal(buf + 10, want, (size_t)dl);
    for (int i = 10 + dl; i < n - 1; i++)
        assert_int_equal(buf[i], ' ');
}

static void test_npy_header(void **state)
{
    (void)state;
    long long s[9] = {5, 2, 4, 1, 1, 1, 1, 1, 1};
    check_header(s, 0, "()");
    check_header(s, 1, "(5,)");
    check_header(s, 3, "(5, 2, 4)");
    long long big[2] = {123456789012LL, 3};
    check_header(big, 2, "(123456789012, 3)");
    char small[32];
    assert_int_equal(export_npy_header(small, sizeof small, s, 1), -1);
    char buf[1024];
    assert_int_equal(export_npy_header(buf, sizeof buf, s, 9), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_args),
        cmocka_unit_test(test_npy_header),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
