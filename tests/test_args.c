/*
 * test_args - common/args.h: getopt_long as both binaries' commands use it.
 *
 * Each case parses a fixed argv and checks the sequence of results (option
 * vals, positional words, the refused word), so a change in getopt's mode
 * (permutation, printed errors, "--") fails here before a command's message
 * changes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/args.h"

static const struct option opts[] = {
    {"out", required_argument, NULL, 'o'},
    {"json", no_argument, NULL, 'j'},
    {"metrics", required_argument, NULL, 'm'},
    {"metrics-allow-remote", no_argument, NULL, 'r'},
    {NULL, 0, NULL, 0},
};

/* Parse argv (NULL-terminated) and write what came back as one line:
 * "o=VAL" for options, "w=WORD" for words, "bad=WORD", "missing=WORD/opt". */
static void trace(char **argv, const char *shortopts, char *out, size_t n)
{
    int argc = 0;
    while (argv[argc])
        argc++;
    struct args c;
    args_start(&c, argc, argv, shortopts, opts);
    size_t o = 0;
    out[0] = '\0';
    for (int k; (k = args_next(&c)) != ARGS_END;) {
        const char *sep = o ? " " : "";
        if (k == ARGS_WORD)
            o += (size_t)snprintf(out + o, n - o, "%sw=%s", sep, c.arg);
        else if (k == ARGS_BAD)
            o += (size_t)snprintf(out + o, n - o, "%sbad=%s", sep, c.word);
        else if (k == ARGS_MISSING)
            o += (size_t)snprintf(out + o, n - o, "%smissing=%s/%c", sep, c.word, c.opt);
        else
            o += (size_t)snprintf(out + o, n - o, "%s%c=%s", sep, k, c.arg ? c.arg : "");
    }
}

#define CASE(expect, shortopts, ...)                                   \
    do {                                                               \
        char *argv_[] = {"cmd", __VA_ARGS__, NULL};                    \
        char got_[512];                                                \
        trace(argv_, shortopts, got_, sizeof got_);                    \
        assert_string_equal(got_, expect);                             \
    } while (0)

static void test_in_order(void **state)
{
    (void)state;
    CASE("w=run o=dir j=", "", "run", "--out", "dir", "--json");
    CASE("o=dir w=run j=", "", "--out", "dir", "run", "--json");
    CASE("o=dir", "", "--out=dir");
    CASE("o=-1", "", "--out", "-1"); /* a value that looks like an option */
    CASE("w=a w=b", "", "a", "b");   /* the command decides about a second word */
}

static void test_refused(void **state)
{
    (void)state;
    CASE("w=run bad=--frob o=x", "", "run", "--frob", "--out", "x");
    CASE("missing=--out/o", "", "--out");
    CASE("bad=--json=1", "", "--json=1");
    CASE("bad=-x", "", "-x");
    CASE("w=-", "", "-"); /* "-" is a word (stdin, by convention) */
}

static void test_names(void **state)
{
    (void)state;
    CASE("m=h:1 r=", "", "--metrics", "h:1", "--metrics-allow-remote");
    CASE("o=d", "", "--ou", "d");                  /* an unambiguous prefix */
    CASE("bad=--metrics-a=1", "", "--metrics-a=1"); /* a flag given a value */
    CASE("h=", "h", "-h");
}

static void test_dashdash(void **state)
{
    (void)state;
    CASE("o=d w=--json w=-x", "", "--out", "d", "--", "--json", "-x");
    CASE("j=", "", "--json", "--");
}

/* Global options stop at the command's name; the command parses its own
 * argv from there (the state of getopt reset in between). */
static void test_two_passes(void **state)
{
    (void)state;
    char *argv[] = {"ckptd", "--json", "report", "run", "--out", "d", NULL};
    struct args c;
    args_start(&c, 6, argv, "", opts);
    assert_int_equal(args_next(&c), 'j');
    assert_int_equal(args_next(&c), ARGS_WORD);
    assert_string_equal(c.arg, "report");
    int at = args_index(&c) - 1;
    assert_int_equal(at, 2);
    args_start(&c, 6 - at, argv + at, "", opts);
    assert_int_equal(args_next(&c), ARGS_WORD);
    assert_string_equal(c.arg, "run");
    assert_int_equal(args_next(&c), 'o');
    assert_string_equal(c.arg, "d");
    assert_int_equal(args_next(&c), ARGS_END);
    assert_string_equal(argv[2], "report"); /* nothing permuted */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_in_order), cmocka_unit_test(test_refused),
        cmocka_unit_test(test_names),    cmocka_unit_test(test_dashdash),
        cmocka_unit_test(test_two_passes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
