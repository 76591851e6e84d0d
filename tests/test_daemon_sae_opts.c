/*
 * test_daemon_sae_opts - daemon/plan/sae_opts.h.
 *
 *   model names   hf://ORG/NAME gives NAME (a trailing slash ignored);
 *                 file://, a plain path and http(s):// sources give the
 *                 run's name; a long name is truncated, never overrun.
 *   dictionaries  the real worker (CKPT_WORKER, default
 *                 build/bin/ckpt-worker) reads a dictionary written by
 *                 tests/cases/sae (its hook comes back), refuses a
 *                 directory without one with its own reason (ERR_INVALID),
 *                 and a worker that cannot be run is ERR_CHILD.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "daemon/plan/sae_opts.h"

static void test_model_name(void **state)
{
    (void)state;
    static const char *const cases[][3] = {
        {"hf://EleutherAI/pythia-70m-deduped", "r", "pythia-70m-deduped"},
        {"hf://EleutherAI/pythia-160m-seed3/", "r", "pythia-160m-seed3"},
        {"file:///shared/run7/step{step}", "run7", "run7"},
        {"/shared/run7", "toy", "toy"},
        {"https://host/ckpts/step{step}/", "remote", "remote"},
        {"hf://broken", "r", "r"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char out[64];
        sae_opts_model_name(cases[i][0], cases[i][1], out, sizeof out);
        assert_string_equal(out, cases[i][2]);
    }
    char small[8];
    sae_opts_model_name("hf://EleutherAI/pythia-70m-deduped", "r", small, sizeof small);
    assert_string_equal(small, "pythia-");
}

static void test_check_dict(void **state)
{
    (void)state;
    const char *w = getenv("CKPT_WORKER") ? getenv("CKPT_WORKER") : "build/bin/ckpt-worker";
    char hook[128];
    struct err e;
    assert_int_equal(sae_opts_check_dict(w, "tests/cases/sae/ok_sparsify/layers.2", hook,
                                         sizeof hook, &e),
                     0);
    assert_string_equal(hook, "blocks.2.hook_resid_post");
    assert_int_equal(sae_opts_check_dict(w, "tests/cases/sae/ok_legacy_topk/sae", hook,
                                         sizeof hook, &e),
                     0);
    assert_string_equal(hook, "blocks.1.hook_resid_pre");
    int rc = sae_opts_check_dict(w, "tests/cases/sae/architecture_gated/sae", hook, sizeof hook, &e);
    assert_int_equal(rc, ERR_INVALID);
    assert_non_null(strstr(err_str(&e), "architecture \"gated\""));
    rc = sae_opts_check_dict(w, "tests/cases", hook, sizeof hook, &e);
    assert_int_equal(rc, ERR_INVALID);
    assert_non_null(strstr(err_str(&e), "cfg.json"));
    rc = sae_opts_check_dict("/nonexistent/ckpt-worker", "tests/cases", hook, sizeof hook, &e);
    assert_int_equal(rc, ERR_CHILD);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model_name),
        cmocka_unit_test(test_check_dict),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
