/*
 * test_config - config.json parsing, data-driven.
 *
 * Each directory tests/cases/config/<case>/ holds config.json and expected:
 *   "ok key=value ..."          parse succeeds and each named field matches
 *   "<code>\t<substring>"       parse fails with that err_code_name and the
 *                               message contains the substring
 * Keys: rotary_ndims, rotary_base, parallel, d_head, act (gelu|gelu_tanh),
 * eps, tied.
 */
#include <dirent.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "workers/model/config.h"
#include "workers/model/gptneox.h"

#define CASES "tests/cases/config"

static void check_field(const char *c, const struct gptneox_config *cfg, const char *kv)
{
    char key[64];
    double want;
    char sval[32];
    if (sscanf(kv, "act=%31s", sval) == 1) {
        const char *got = cfg->act == ACT_GELU ? "gelu" : "gelu_tanh";
        if (strcmp(got, sval) != 0)
            fail_msg("%s: act %s, expected %s", c, got, sval);
        return;
    }
    if (sscanf(kv, "%63[^=]=%lf", key, &want) != 2)
        fail_msg("%s: bad expectation '%s'", c, kv);
    double got = strcmp(key, "rotary_ndims") == 0 ? cfg->rotary_ndims
                 : strcmp(key, "rotary_base") == 0 ? cfg->rotary_base
                 : strcmp(key, "parallel") == 0    ? cfg->parallel_residual
                 : strcmp(key, "d_head") == 0      ? cfg->d_head
                 : strcmp(key, "eps") == 0         ? cfg->layer_norm_eps
                 : strcmp(key, "tied") == 0        ? cfg->tie_word_embeddings
                                                   : NAN;
    if (isnan(got))
        fail_msg("%s: unknown key %s", c, key);
    if (fabs(got - want) > 1e-12 * fmax(1.0, fabs(want)))
        fail_msg("%s: %s = %g, expected %g", c, key, got, want);
}

static void test_cases(void **state)
{
    (void)state;
    DIR *d = opendir(CASES);
    assert_non_null(d);
    struct dirent *de;
    int ok = 0, bad = 0;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char path[1024], expected[512];
        snprintf(path, sizeof path, CASES "/%.255s/expected", de->d_name);
        FILE *f = fopen(path, "r");
        assert_non_null(f);
        if (!fgets(expected, sizeof expected, f))
            expected[0] = '\0';
        fclose(f);
        expected[strcspn(expected, "\n")] = '\0';
        snprintf(path, sizeof path, CASES "/%.255s/config.json", de->d_name);
        struct gptneox_config cfg;
        struct err e;
        err_clear(&e);
        int rc = gptneox_config_load(&cfg, path, &e);
        if (strncmp(expected, "ok", 2) == 0) {
            if (rc != 0)
                fail_msg("%s: expected success, got %s", de->d_name, err_str(&e));
            char *save = NULL;
            for (char *kv = strtok_r(expected + 2, " ", &save); kv; kv = strtok_r(NULL, " ", &save))
                check_field(de->d_name, &cfg, kv);
            ok++;
        } else {
            char *tab = strchr(expected, '\t');
            assert_non_null(tab);
            *tab = '\0';
            if (rc == 0)
                fail_msg("%s: expected %s error, parse succeeded", de->d_name, expected);
            if (strcmp(err_code_name(rc), expected) != 0 || !strstr(e.msg, tab + 1))
                fail_msg("%s: expected %s '%s', got %s: %s", de->d_name, expected, tab + 1,
                         err_code_name(rc), e.msg);
            /* the error names the file */
            assert_non_null(strstr(e.ctx, "config.json"));
            bad++;
        }
    }
    closedir(d);
    printf("[ config ] %d valid and %d invalid cases\n", ok, bad);
    assert_true(ok >= 5 && bad >= 10);
}

static void test_missing_file(void **state)
{
    (void)state;
    struct gptneox_config cfg;
    struct err e;
    assert_int_equal(gptneox_config_load(&cfg, "tests/cases/config/none/config.json", &e), ERR_IO);
}

/* save -> load is the identity on every field the model uses */
static void test_save_roundtrip(void **state)
{
    (void)state;
    struct gptneox_config a, b;
    struct err e;
    assert_int_equal(gptneox_config_preset(&a, "pythia-160m"), 0);
    a.rotary_pct = 0.5;
    a.rotary_base = 777.0;
    a.parallel_residual = 0;
    assert_int_equal(gptneox_config_check(&a, "x", &e), 0);
    char dir[] = "/tmp/ckptd-cfg-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[64];
    snprintf(path, sizeof path, "%s/config.json", dir);
    assert_int_equal(gptneox_config_save(&a, path, &e), 0);
    assert_int_equal(gptneox_config_load(&b, path, &e), 0);
    assert_int_equal(a.vocab_size, b.vocab_size);
    assert_int_equal(a.d_model, b.d_model);
    assert_int_equal(a.n_layers, b.n_layers);
    assert_int_equal(a.n_heads, b.n_heads);
    assert_int_equal(a.d_mlp, b.d_mlp);
    assert_int_equal(b.rotary_ndims, 32);
    assert_float_equal(b.rotary_base, 777.0, 0);
    assert_int_equal(b.parallel_residual, 0);
    remove(path);
    rmdir(dir);
    assert_int_equal(gptneox_config_preset(&a, "no-such-model"), ERR_NOTFOUND);
    /* Pythia-70m's published parameter count */
    assert_int_equal(gptneox_config_preset(&a, "pythia-70m"), 0);
    assert_int_equal(gptneox_config_nparams(&a), 70426624);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_save_roundtrip),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
