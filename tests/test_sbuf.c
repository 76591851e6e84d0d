/*
 * test_sbuf - common/sbuf.h: text appended piece by piece, across the
 * buffer's growth, equals the same text printed at once; one piece larger
 * than the doubled capacity; an empty buffer; free empties it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/sbuf.h"

static void test_rows(void **state)
{
    (void)state;
    struct sbuf b = {0};
    size_t want_len = 0;
    char line[64];
    for (int i = 0; i < 5000; i++) { /* about 60 KB: several growths */
        int n = snprintf(line, sizeof line, "%d\t%.17g\t%s\n", i, i / 7.0, i % 2 ? "a" : "\\N");
        want_len += (size_t)n;
        assert_int_equal(sbuf_printf(&b, "%d\t%.17g\t%s\n", i, i / 7.0, i % 2 ? "a" : "\\N"), 0);
    }
    assert_int_equal(b.len, want_len);
    assert_int_equal(strlen(b.p), want_len);
    assert_true(b.cap > b.len);
    /* row 4321 is where it should be */
    char *row = strstr(b.p, "\n4321\t");
    assert_non_null(row);
    snprintf(line, sizeof line, "\n4321\t%.17g\ta\n", 4321 / 7.0);
    assert_memory_equal(row, line, strlen(line));
    sbuf_free(&b);
    assert_null(b.p);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);
}

static void test_one_big_piece(void **state)
{
    (void)state;
    struct sbuf b = {0};
    size_t n = 100000; /* more than twice the first capacity */
    char *big = malloc(n + 1);
    assert_non_null(big);
    memset(big, 'x', n);
    big[n] = '\0';
    assert_int_equal(sbuf_printf(&b, "<%s>", big), 0);
    assert_int_equal(b.len, n + 2);
    assert_int_equal(b.p[0], '<');
    assert_int_equal(b.p[n + 1], '>');
    assert_int_equal(b.p[n + 2], '\0');
    free(big);
    sbuf_free(&b);
}

static void test_empty(void **state)
{
    (void)state;
    struct sbuf b = {0};
    assert_int_equal(sbuf_printf(&b, "%s", ""), 0);
    assert_non_null(b.p);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.p, "");
    sbuf_free(&b);
    sbuf_free(&b); /* twice: nothing left to free */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rows),
        cmocka_unit_test(test_one_big_piece),
        cmocka_unit_test(test_empty),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
