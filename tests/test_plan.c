/*
 * test_plan - daemon/plan/plan.h: what a run is, checked before anything
 * is written (no database, no hub).
 *
 *   sites     plan_sae_site against the worker's own check (hook_parse,
 *             then sae_site_check on a sequential model as deep as the
 *             daemon allows): every hook name the worker knows at several
 *             layers, and malformed names, must get the same answer and
 *             the same layer.  This program links both sides for that
 *             comparison only; it is how the two copies are kept in step.
 *   add       plan_add_sae_site / plan_add_probe: one site per layer, the
 *             limits, absolute probe paths, nothing added on failure
 *   args      plan_check_args: every rule of the combination
 *   steps     plan_check_source and plan_set_steps, lists and refs
 *   items     plan_choose_items on a parsed battery: the default set, an
 *             explicit list, unknown items, missing dependencies, fixed
 *             dictionaries and the sae_fixed item
 *   options   plan_find_eval and plan_options_json (sweep_every too), byte for byte
 */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "daemon/plan/plan.h"
#include "daemon/plan/registry.h"
#include "workers/battery/battery.h"
#include "workers/model/gptneox.h"

/* ---- sites: the daemon's check and the worker's agree ---- */

/* The worker's answer: a hook of a sequential-residual model with
 * PLAN_SITE_MAX_LAYER + 1 layers that is an SAE site; its layer. */
static int worker_site(const char *name, long *layer)
{
    struct gptneox_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.n_layers = PLAN_SITE_MAX_LAYER + 1;
    cfg.parallel_residual = 0;
    enum hook_kind k;
    int l = -1;
    if (hook_parse(name, &k, &l) < 0 || sae_site_check(&cfg, k, l, NULL) < 0)
        return 0;
    *layer = l;
    return 1;
}

static void expect_agree(const char *name, int *accepted)
{
    long ld = -7, lw = -8;
    int d = plan_sae_site(name, &ld), w = worker_site(name, &lw);
    if (d != w)
        fail_msg("'%s': the daemon says %d, the worker %d", name, d, w);
    if (d && ld != lw)
        fail_msg("'%s': layer %ld for the daemon, %ld for the worker", name, ld, lw);
    *accepted += d;
}

static void test_sites_agree(void **state)
{
    (void)state;
    static const char *const layers[] = {"0", "3", "01", "007", "32767", "32768", "100000",
                                         "100001", "99999999999999999999", "-1", "-0", "+1",
                                         " 1", "1 ", "", "x", "1x", "0x1"};
    int accepted = 0, tried = 0;
    char name[128], hook[64];
    for (int k = 0; k < HOOK_KIND_COUNT; k++) {
        if (hook_name(hook, sizeof hook, (enum hook_kind)k, 5) < 0)
            fail_msg("no name for hook kind %d", k);
        /* the suffix after "blocks.5." (or the whole name of a model-wide hook) */
        const char *suffix = strncmp(hook, "blocks.5.", 9) == 0 ? hook + 9 : NULL;
        expect_agree(hook, &accepted);
        tried++;
        if (!suffix)
            continue;
        for (size_t i = 0; i < sizeof layers / sizeof *layers; i++) {
            snprintf(name, sizeof name, "blocks.%s.%s", layers[i], suffix);
            expect_agree(name, &accepted);
            snprintf(name, sizeof name, "blocks.%s.%s.x", layers[i], suffix);
            expect_agree(name, &accepted);
            snprintf(name, sizeof name, "blocks.%s.%sx", layers[i], suffix);
            expect_agree(name, &accepted);
            tried += 3;
        }
    }
    static const char *const odd[] = {"", "blocks", "blocks.", "blocks..hook_resid_pre",
                                      "blocks.1", "blocks.1.", "Blocks.1.hook_resid_pre",
                                      "blocks.1.HOOK_RESID_PRE", "blocks.1..hook_resid_pre",
                                      "blocks.1.hook_resid_pre ", "hook_embed", "ln_final.hook_normalized",
                                      "blocks.1.attn.hook_pattern", "blocks.1.mlp.hook_post"};
    for (size_t i = 0; i < sizeof odd / sizeof *odd; i++, tried++)
        expect_agree(odd[i], &accepted);
    /* the five site kinds at layer 5 (the worker's own names) and at 0, 3,
     * 01, 007 and 32767 */
    assert_int_equal(accepted, 30);
    assert_true(tried > 400);
}

/* ---- plan_add_sae_site, plan_add_probe ---- */

static void test_add_sites(void **state)
{
    (void)state;
    struct plan p;
    struct err e;
    plan_init(&p);
    assert_int_equal(plan_add_sae_site(&p, "blocks.1.hook_resid_pre", &e), 0);
    assert_int_equal(plan_add_sae_site(&p, "blocks.2.hook_mlp_out", &e), 0);
    assert_int_equal(plan_add_sae_site(&p, "blocks.1.hook_mlp_out", &e), ERR_INVALID);
    assert_string_equal(e.msg, "cannot use SAE site 'blocks.1.hook_mlp_out': one site per layer "
                               "(rows are keyed by layer)");
    assert_int_equal(plan_add_sae_site(&p, "blocks.3.attn.hook_z", &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "a site is blocks.L.hook_resid_pre"));
    assert_int_equal(p.nsae_sites, 2);
    char name[64];
    for (int l = 3; p.nsae_sites < PLAN_MAX_SAE_SITES; l++) {
        snprintf(name, sizeof name, "blocks.%d.hook_resid_post", l);
        assert_int_equal(plan_add_sae_site(&p, name, &e), 0);
    }
    assert_int_equal(plan_add_sae_site(&p, "blocks.99.hook_resid_post", &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "too many sites"));
    assert_int_equal(p.nsae_sites, PLAN_MAX_SAE_SITES);
    assert_string_equal(p.sae_sites[1], "blocks.2.hook_mlp_out");
    plan_free(&p);
    assert_int_equal(p.nsae_sites, 0);
}

static void test_add_probes(void **state)
{
    (void)state;
    struct plan p;
    struct err e;
    char cwd[PATH_MAX], want[PATH_MAX + 32];
    assert_non_null(getcwd(cwd, sizeof cwd));
    plan_init(&p);
    assert_int_equal(plan_add_probe(&p, "tests/test_plan.c", &e), 0);
    snprintf(want, sizeof want, "%s/tests/test_plan.c", cwd);
    assert_string_equal(p.probes[0], want);
    assert_int_equal(plan_add_probe(&p, "tests/no-such-probe-set.json", &e), ERR_INVALID);
    assert_string_equal(e.msg, "cannot use probe set 'tests/no-such-probe-set.json'");
    assert_int_equal(p.nprobes, 1);
    while (p.nprobes < PLAN_MAX_PROBES)
        assert_int_equal(plan_add_probe(&p, "Makefile", &e), 0);
    assert_int_equal(plan_add_probe(&p, "Makefile", &e), ERR_INVALID);
    assert_string_equal(e.msg, "cannot use probe set 'Makefile': too many");
    plan_free(&p);
}

/* ---- plan_check_args ---- */

static void test_check_args(void **state)
{
    (void)state;
    struct plan p;
    struct err e;
    plan_init(&p);
    assert_int_equal(plan_check_args(&p, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "need NAME, --source and --schedule"));
    p.name = "r";
    p.source = "file:///x/step{step}";
    p.schedule = "0,1";
    assert_int_equal(plan_check_args(&p, NULL), 0);
    p.max_attempts = 0;
    assert_int_equal(plan_check_args(&p, NULL), ERR_INVALID);
    p.max_attempts = 1;
    p.ctx = 64; /* without an eval set */
    assert_int_equal(plan_check_args(&p, NULL), ERR_INVALID);
    p.eval_tokens = "t.u32";
    assert_int_equal(plan_check_args(&p, NULL), 0);
    p.ctx = (long long)INT32_MAX + 1;
    assert_int_equal(plan_check_args(&p, NULL), ERR_INVALID);
    p.ctx = -1;
    assert_int_equal(plan_check_args(&p, NULL), ERR_INVALID);
    p.ctx = 0;
    p.eval_seqs = -1;
    assert_int_equal(plan_check_args(&p, NULL), ERR_INVALID);
    p.eval_seqs = 8;
    assert_int_equal(plan_check_args(&p, NULL), 0);
    p.eval_text = "t.txt"; /* both */
    assert_int_equal(plan_check_args(&p, NULL), ERR_INVALID);
    p.eval_tokens = NULL;
    p.tokenizer = "tok.json";
    assert_int_equal(plan_check_args(&p, NULL), 0);
    p.eval_text = NULL; /* a tokenizer without a text */
    p.eval_tokens = "t.u32";
    assert_int_equal(plan_check_args(&p, NULL), ERR_INVALID);
    p.tokenizer = NULL;
    p.sweep_every = 0; /* never */
    assert_int_equal(plan_check_args(&p, NULL), 0);
    p.sweep_every = -2;
    assert_int_equal(plan_check_args(&p, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "--sweep-every"));
    p.sweep_every = (long long)INT32_MAX + 1;
    assert_int_equal(plan_check_args(&p, NULL), ERR_INVALID);
    plan_free(&p);
}

/* ---- steps ---- */

static void test_steps(void **state)
{
    (void)state;
    struct plan p;
    struct err e;
    plan_init(&p);
    p.source = "file:///x/step{step}";
    p.schedule = "0,4,2";
    assert_int_equal(plan_check_source(&p, &e), 0);
    assert_false(plan_needs_refs(&p));
    assert_int_equal(plan_set_steps(&p, NULL, 0, &e), 0);
    assert_int_equal(p.nsteps, 3);
    assert_int_equal(p.steps[0], 0);
    assert_int_equal(p.steps[1], 2);
    assert_int_equal(p.steps[2], 4);
    p.schedule = "refs";
    assert_true(plan_needs_refs(&p));
    assert_int_equal(plan_check_source(&p, &e), 0);
    const long long refs[] = {3000, 0, 1000};
    assert_int_equal(plan_set_steps(&p, refs, 3, &e), 0);
    assert_int_equal(p.nsteps, 3);
    assert_int_equal(p.steps[2], 3000);
    p.schedule = "0,,x";
    assert_true(plan_check_source(&p, &e) < 0);
    assert_true(plan_set_steps(&p, NULL, 0, &e) < 0);
    assert_int_equal(p.nsteps, 3); /* unchanged */
    p.schedule = "0";
    p.source = "gopher://x";
    assert_int_equal(plan_check_source(&p, &e), ERR_INVALID);
    plan_free(&p);
}

/* ---- plan_choose_items ---- */

static const char battery_json[] =
    "{\"items\": ["
    " {\"name\": \"loss\", \"version\": 2, \"metrics\": [{\"name\": \"loss\"}]},"
    " {\"name\": \"heads\", \"version\": 1, \"metrics\": [{\"name\": \"prev\"}]},"
    " {\"name\": \"task\", \"version\": 1, \"needs\": [\"task\"], \"metrics\": [{\"name\": \"acc\"}]},"
    " {\"name\": \"sae\", \"version\": 3, \"needs\": [\"artifacts\"], \"metrics\": [{\"name\": \"fvu\"}]},"
    " {\"name\": \"sae_relu\", \"version\": 1, \"opt_in\": true, \"metrics\": [{\"name\": \"fvu\"}]},"
    " {\"name\": \"sae_match\", \"version\": 1, \"depends_on\": \"sae\", \"metrics\": [{\"name\": \"m\"}]},"
    " {\"name\": \"orphan\", \"version\": 1, \"depends_on\": \"gone\", \"metrics\": [{\"name\": \"o\"}]},"
    " {\"name\": \"sae_fixed\", \"version\": 1, \"opt_in\": true, \"metrics\": [{\"name\": \"fvu\"}]}"
    "]}";

static void expect_items(const struct plan *p, const char *want)
{
    char got[512] = "";
    size_t o = 0;
    for (int i = 0; i < p->nitems; i++)
        o += (size_t)snprintf(got + o, sizeof got - o, "%s%s:%d", i ? "," : "", p->items[i].name,
                              p->items[i].version);
    assert_string_equal(got, want);
}

static void test_items(void **state)
{
    (void)state;
    struct registry reg;
    struct plan p;
    struct err e;
    assert_int_equal(registry_parse(&reg, battery_json, &e), 0);
    plan_init(&p);
    assert_int_equal(plan_choose_items(&p, &reg, &e), 0);
    expect_items(&p, "loss:2,heads:1,sae:3,sae_match:1");
    p.items_arg = "sae_relu,,loss,task";
    assert_int_equal(plan_choose_items(&p, &reg, &e), 0);
    expect_items(&p, "sae_relu:1,loss:2,task:1");
    p.items_arg = "loss,nope";
    assert_int_equal(plan_choose_items(&p, &reg, &e), ERR_INVALID);
    assert_string_equal(e.msg, "the battery has no item 'nope'");
    assert_int_equal(p.nitems, 0);
    p.items_arg = "loss,sae_match";
    assert_int_equal(plan_choose_items(&p, &reg, &e), ERR_INVALID);
    assert_string_equal(e.msg, "item 'sae_match' reads what 'sae' writes: add 'sae' to --items");
    p.items_arg = "sae_match,sae";
    assert_int_equal(plan_choose_items(&p, &reg, &e), 0);
    expect_items(&p, "sae_match:1,sae:3");
    /* fixed dictionaries: sae_fixed joins the default items; with --items,
     * both or neither */
    p.items_arg = "sae_fixed";
    assert_int_equal(plan_choose_items(&p, &reg, &e), ERR_INVALID);
    assert_string_equal(e.msg, "item sae_fixed follows fixed dictionaries: give --sae DIR");
    assert_int_equal(plan_add_sae_dict(&p, "tests", &e), 0);
    assert_int_equal(plan_choose_items(&p, &reg, &e), 0);
    expect_items(&p, "sae_fixed:1");
    p.items_arg = "loss";
    assert_int_equal(plan_choose_items(&p, &reg, &e), ERR_INVALID);
    assert_string_equal(e.msg, "--sae is read by the item sae_fixed: add it to --items");
    p.items_arg = NULL;
    assert_int_equal(plan_choose_items(&p, &reg, &e), 0);
    expect_items(&p, "loss:2,heads:1,sae:3,sae_match:1,sae_fixed:1");
    assert_int_equal(plan_add_sae_dict(&p, "tests/no-such-dictionary", &e), ERR_INVALID);
    assert_string_equal(e.msg, "cannot use SAE dictionary 'tests/no-such-dictionary': no such directory");
    plan_free(&p);
    registry_free(&reg);
}

/* ---- the eval set and the options ---- */

static void test_options(void **state)
{
    (void)state;
    struct plan p;
    struct err e;
    char cwd[PATH_MAX], json[PATH_MAX * 3];
    assert_non_null(getcwd(cwd, sizeof cwd));
    plan_init(&p);
    char *o = plan_options_json(&p);
    assert_string_equal(o, "{}");
    free(o);
    assert_int_equal(plan_find_eval(&p, &e), 0);
    assert_string_equal(p.eval_path, "");
    p.eval_tokens = "tests/no-such-tokens.u32";
    assert_int_equal(plan_find_eval(&p, &e), ERR_NOTFOUND);
    assert_string_equal(e.msg, "cannot find eval tokens 'tests/no-such-tokens.u32'");
    p.eval_tokens = "./Makefile";
    p.ctx = 64;
    p.seed = 7;
    p.sae_warm_start = 1;
    assert_int_equal(plan_find_eval(&p, &e), 0);
    assert_int_equal(plan_add_probe(&p, "tests/test_plan.c", &e), 0);
    assert_int_equal(plan_add_sae_site(&p, "blocks.0.hook_resid_post", &e), 0);
    p.sweep_every = 16;
    o = plan_options_json(&p);
    snprintf(json, sizeof json,
             "{\"ctx\":64,\"eval_tokens\":\"%s/Makefile\",\"probes\":[\"%s/tests/test_plan.c\"],"
             "\"sae_sites\":[\"blocks.0.hook_resid_post\"],\"sae_warm_start\":true,\"seed\":7,"
             "\"sweep_every\":16}",
             cwd, cwd);
    assert_string_equal(o, json);
    free(o);
    plan_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sites_agree), cmocka_unit_test(test_add_sites),
        cmocka_unit_test(test_add_probes),  cmocka_unit_test(test_check_args),
        cmocka_unit_test(test_steps),       cmocka_unit_test(test_items),
        cmocka_unit_test(test_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
