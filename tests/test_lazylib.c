/*
 * test_lazylib - common/lazylib.h: a library and its functions found at the
 * first call (zlib's, by its runtime soname), the pointers usable and kept;
 * a missing library and a missing function each an ERR_UNSUPPORTED naming
 * it, with no slot left filled by a half load; a failure not remembered.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>
#include <zlib.h>

#include "common/lazylib.h"

static struct {
    __typeof__(zlibVersion) *version;
    __typeof__(crc32) *crc;
} z;

static void test_loads_and_keeps(void **state)
{
    (void)state;
    struct lazylib l = LAZYLIB_INIT;
    const struct lazylib_sym syms[] = {{"zlibVersion", (void **)&z.version}, {"crc32", (void **)&z.crc}};
    struct err e;
    err_clear(&e);
    memset(&z, 0, sizeof z);
    assert_int_equal(lazylib_load(&l, "libz.so.1", syms, 2, &e), 0);
    assert_non_null(z.version);
    assert_non_null(z.crc);
    assert_string_equal(z.version(), zlibVersion());
    const unsigned char abc[] = "abc";
    assert_int_equal(z.crc(0, abc, 3), 0x352441c2); /* CRC-32 of "abc" */
    /* loaded once: a second call changes nothing */
    __typeof__(crc32) *first = z.crc;
    z.crc = NULL;
    assert_int_equal(lazylib_load(&l, "libz.so.1", syms, 2, &e), 0);
    assert_null(z.crc);
    z.crc = first;
}

static void test_missing_library(void **state)
{
    (void)state;
    struct lazylib l = LAZYLIB_INIT;
    void *slot = NULL;
    const struct lazylib_sym syms[] = {{"zlibVersion", &slot}};
    struct err e;
    err_clear(&e);
    assert_int_equal(lazylib_load(&l, "libckptd-nonesuch.so.7", syms, 1, &e), ERR_UNSUPPORTED);
    assert_int_equal(e.code, ERR_UNSUPPORTED);
    assert_non_null(strstr(err_str(&e), "libckptd-nonesuch.so.7"));
    assert_null(slot);
    /* not remembered: the same lazylib loads a library that is there */
    assert_int_equal(lazylib_load(&l, "libz.so.1", syms, 1, &e), 0);
    assert_non_null(slot);
}

static void test_missing_function(void **state)
{
    (void)state;
    struct lazylib l = LAZYLIB_INIT;
    void *a = NULL, *b = NULL;
    const struct lazylib_sym syms[] = {{"zlibVersion", &a}, {"ckptd_no_such_function", &b}};
    struct err e;
    err_clear(&e);
    assert_int_equal(lazylib_load(&l, "libz.so.1", syms, 2, &e), ERR_UNSUPPORTED);
    assert_non_null(strstr(err_str(&e), "function ckptd_no_such_function"));
    assert_non_null(strstr(err_str(&e), "libz.so.1"));
    assert_null(b);
    /* and the next call tries again (and fails again) */
    assert_int_equal(lazylib_load(&l, "libz.so.1", syms, 2, &e), ERR_UNSUPPORTED);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loads_and_keeps),
        cmocka_unit_test(test_missing_library),
        cmocka_unit_test(test_missing_function),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
