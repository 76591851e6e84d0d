/*
 * test_cpu - common/cpu.h: the kernel family is chosen only where nobody
 * chose one (a user's OPENBLAS_CORETYPE stays, CKPTD_BLAS_AUTO=0 leaves
 * the environment alone), and what is set is cpu_blas_coretype()'s answer;
 * cpu_blas_wanted (what `ckptd serve` gives its workers) changes nothing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/cpu.h"

static int clear_env(void **state)
{
    (void)state;
    unsetenv("OPENBLAS_CORETYPE");
    unsetenv("CKPTD_BLAS_AUTO");
    return 0;
}

static void test_chooses_when_unset(void **state)
{
    (void)state;
    const char *best = cpu_blas_coretype();
    const char *set = cpu_blas_choose();
    if (!best) { /* a CPU without AVX: nothing better than the library's own */
        assert_null(set);
        assert_null(getenv("OPENBLAS_CORETYPE"));
        return;
    }
    assert_non_null(set);
    assert_string_equal(set, best);
    assert_string_equal(getenv("OPENBLAS_CORETYPE"), best);
    /* a second call changes nothing and says so */
    assert_null(cpu_blas_choose());
    assert_string_equal(getenv("OPENBLAS_CORETYPE"), best);
}

static void test_wanted_changes_nothing(void **state)
{
    (void)state;
    const char *w = cpu_blas_wanted();
    assert_true((w != NULL) == (cpu_blas_coretype() != NULL));
    assert_null(getenv("OPENBLAS_CORETYPE"));
    setenv("OPENBLAS_CORETYPE", "Haswell", 1);
    assert_null(cpu_blas_wanted());
}

static void test_user_choice_stays(void **state)
{
    (void)state;
    setenv("OPENBLAS_CORETYPE", "Prescott", 1);
    assert_null(cpu_blas_choose());
    assert_string_equal(getenv("OPENBLAS_CORETYPE"), "Prescott");
}

static void test_auto_off(void **state)
{
    (void)state;
    setenv("CKPTD_BLAS_AUTO", "0", 1);
    assert_null(cpu_blas_choose());
    assert_null(getenv("OPENBLAS_CORETYPE"));
    setenv("CKPTD_BLAS_AUTO", "1", 1); /* anything but "0" leaves it on */
    assert_true((cpu_blas_choose() != NULL) == (cpu_blas_coretype() != NULL));
}

static void test_known_names(void **state)
{
    (void)state;
    const char *best = cpu_blas_coretype();
    if (best)
        assert_true(strcmp(best, "SkylakeX") == 0 || strcmp(best, "Haswell") == 0 ||
                    strcmp(best, "Sandybridge") == 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_chooses_when_unset, clear_env),
        cmocka_unit_test_setup(test_wanted_changes_nothing, clear_env),
        cmocka_unit_test_setup(test_user_choice_stays, clear_env),
        cmocka_unit_test_setup(test_auto_off, clear_env),
        cmocka_unit_test_setup(test_known_names, clear_env),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
