/*
 * test_daemon_cost - the cost model (daemon/plan/cost.h) and the run
 * settings the forecast reads (forecast_run_settings, forecast_offline),
 * no database:
 *   shape        config.json's keys; intermediate_size defaults to 4 x
 *                hidden_size; a missing or bad key is named
 *   skeleton     Pythia's 154 checkpoints every 16: 0, 16, ..., 144 and
 *                153 (11); by default (every 32) 6; every 0: none; one
 *                checkpoint: itself
 *   flops        the forward's count by hand on a small shape (matrix
 *                products and causal blocks of 128 query rows)
 *   items        every item of the default battery is priced, an unknown
 *                one is ERR_NOTFOUND; seconds scale as 1 / rate; work grows
 *                with the eval set, a full sweep costs more ablation and
 *                patching only,
 *                the lens costs one unembedding per layer of its 2048
 *                tokens, patching's sweep more than its sparse part
 *   series       total = ordinary x (n - sweeps) + sweep x sweeps; the
 *                shared forward is counted once, to the logits only when
 *                an item needs them
 *   settings     the eval set's size from a .u16 / .json token file
 *                (capped by eval_seqs), sae_sites, probes, sweep_every;
 *                malformed options and a missing file are errors
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "daemon/plan/cost.h"
#include "daemon/plan/forecast.h"

static const char cfg160[] =
    "{\"num_hidden_layers\": 12, \"hidden_size\": 768, \"num_attention_heads\": 12,"
    " \"intermediate_size\": 3072, \"vocab_size\": 50304, \"max_position_embeddings\": 2048,"
    " \"rotary_pct\": 0.25}";

static struct cost_shape shape160(void)
{
    struct cost_shape sh;
    struct err e;
    assert_int_equal(cost_shape_from_json(&sh, cfg160, &e), 0);
    return sh;
}

static void test_shape(void **state)
{
    (void)state;
    struct cost_shape sh = shape160();
    assert_int_equal(sh.n_layers, 12);
    assert_int_equal(sh.d_model, 768);
    assert_int_equal(sh.n_heads, 12);
    assert_int_equal(sh.d_mlp, 3072);
    assert_int_equal(sh.vocab, 50304);
    assert_int_equal(sh.max_pos, 2048);
    struct err e;
    assert_int_equal(cost_shape_from_json(&sh,
                                           "{\"num_hidden_layers\": 2, \"hidden_size\": 64, "
                                           "\"num_attention_heads\": 4, \"vocab_size\": 100, "
                                           "\"max_position_embeddings\": 32}",
                                           &e),
                     0);
    assert_int_equal(sh.d_mlp, 256);
    assert_int_equal(cost_shape_from_json(&sh, "{\"hidden_size\": 64}", &e), ERR_FORMAT);
    assert_non_null(strstr(e.msg, "num_hidden_layers"));
    assert_int_equal(cost_shape_from_json(&sh,
                                           "{\"num_hidden_layers\": 2, \"hidden_size\": 64, "
                                           "\"num_attention_heads\": 5, \"vocab_size\": 100, "
                                           "\"max_position_embeddings\": 32}",
                                           &e),
                     ERR_FORMAT);
    assert_non_null(strstr(e.msg, "multiple"));
    assert_int_equal(cost_shape_from_json(&sh, "[1, 2", &e), ERR_FORMAT);
    assert_int_equal(cost_shape_from_json(&sh,
                                           "{\"num_hidden_layers\": -1, \"hidden_size\": 64, "
                                           "\"num_attention_heads\": 4, \"vocab_size\": 100, "
                                           "\"max_position_embeddings\": 32}",
                                           &e),
                     ERR_FORMAT);
}

static void test_skeleton(void **state)
{
    (void)state;
    int want[11] = {0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 153}, k = 0;
    for (int i = 0; i < 154; i++)
        if (cost_on_skeleton(i, 154, 16))
            assert_int_equal(i, want[k++]);
    assert_int_equal(k, 11);
    assert_int_equal(cost_skeleton_count(154, 16), 11);
    assert_int_equal(cost_skeleton_count(154, COST_SWEEP_EVERY), 6);
    assert_int_equal(cost_skeleton_count(154, 0), 0);
    assert_int_equal(cost_skeleton_count(1, 16), 1);
    assert_int_equal(cost_skeleton_count(3, 2), 2);
    assert_false(cost_on_skeleton(154, 154, 16));
    assert_false(cost_on_skeleton(-1, 154, 16));
    assert_int_equal(cost_skeleton_count(5, 1), 5);
}

static void test_flops(void **state)
{
    (void)state;
    /* 1 layer, C 4, 2 heads (HS 2), F 8, V 10; B 1, T 3: one block of 3 rows */
    struct cost_shape sh = {1, 4, 2, 8, 10, 16};
    double N = 3, C = 4, F = 8, V = 10;
    double layer = 2 * N * C * 3 * C + 2 * N * C * C + 4 * N * C * F;
    double att = 4.0 * 3 * 3 * 2 * 2; /* 4 rows r1 HS, times heads */
    assert_true(fabs(cost_forward_flops(&sh, 1, 3, 0) - (layer + att)) < 1e-9);
    assert_true(fabs(cost_forward_flops(&sh, 1, 3, 1) - (layer + att + 2 * N * C * V)) < 1e-9);
    /* T 200: blocks of 128 and 72 query rows, against 128 and 200 keys */
    double att2 = 4.0 * (128.0 * 128 + 72.0 * 200) * 2 * 2;
    double N2 = 200, layer2 = 2 * N2 * C * 3 * C + 2 * N2 * C * C + 4 * N2 * C * F;
    assert_true(fabs(cost_forward_flops(&sh, 1, 200, 0) - (layer2 + att2)) < 1e-6);
}

static void test_items(void **state)
{
    (void)state;
    struct cost_shape sh = shape160();
    struct cost_run run = COST_RUN_DEFAULT;
    run.ctx = 512;
    const char *items[] = {"loss",     "weights",     "heads",         "lens",
                           "composition", "ablation", "probes",       "sae",
                           "sae_match", "ablation_exact", "llc",     "sae_relu",
                           "patching", "attribution", "path_patching", "circuit"};
    for (size_t i = 0; i < sizeof items / sizeof *items; i++) {
        struct cost_item a, b;
        assert_int_equal(cost_item(items[i], &sh, &run, 0, 100.0, &a), 0);
        assert_int_equal(cost_item(items[i], &sh, &run, 0, 200.0, &b), 0);
        assert_true(a.known && a.seconds > 0 && a.gflop > 0);
        assert_true(fabs(a.seconds - 2 * b.seconds) <= 1e-12 * a.seconds);
        if (strcmp(items[i], "ablation") == 0 || strcmp(items[i], "patching") == 0)
            assert_true(a.sweep_s > 3 * a.seconds); /* every head / component exactly */
        else
            assert_true(a.sweep_s == a.seconds);
    }
    struct cost_item x;
    assert_int_equal(cost_item("no_such_item", &sh, &run, 0, 100.0, &x), ERR_NOTFOUND);
    assert_false(x.known);
    assert_true(x.seconds == 0);
    /* more eval tokens, more work */
    struct cost_run big = run;
    big.eval_seqs = 32;
    struct cost_item l1, l2;
    assert_int_equal(cost_item("loss", &sh, &run, 0, 100.0, &l1), 0);
    assert_int_equal(cost_item("loss", &sh, &big, 0, 100.0, &l2), 0);
    assert_true(fabs(l2.gflop / l1.gflop - 2.0) < 1e-9);
    /* the lens: one unembedding per layer, and the last layer's
     * logsumexp, of the first sequences holding 2048 tokens (4 of 512),
     * however many more the eval set has */
    assert_int_equal(cost_item("lens", &sh, &run, 0, 100.0, &l1), 0);
    assert_int_equal(cost_item("lens", &sh, &big, 0, 100.0, &l2), 0);
    assert_true(l1.gflop == l2.gflop);
    double N = 4.0 * 512, unemb = 2 * N * 768 * 50304;
    assert_true(fabs(l1.gflop * 1e9 - (12 * unemb + 4 * N * 50304)) < 1e-6 * l1.gflop * 1e9);
    struct cost_run small = run; /* 16 x 128: every sequence */
    small.ctx = 128;
    assert_int_equal(cost_item("lens", &sh, &small, 0, 100.0, &l2), 0);
    assert_true(fabs(l2.gflop - l1.gflop) < 1e-9 * l1.gflop);
    /* ablation: the first sequences holding 1024 tokens (2 of 512, 4 of
     * 128: at most 4), however many more the eval set has; ablation_exact
     * keeps 4 of any length */
    struct cost_run two = run;
    two.eval_seqs = 2;
    assert_int_equal(cost_item("ablation", &sh, &run, 0, 100.0, &l1), 0);
    assert_int_equal(cost_item("ablation", &sh, &two, 0, 100.0, &l2), 0);
    assert_true(l1.gflop == l2.gflop && l1.sweep_gflop == l2.sweep_gflop);
    struct cost_run one = run;
    one.eval_seqs = 1;
    assert_int_equal(cost_item("ablation", &sh, &one, 0, 100.0, &l2), 0);
    assert_true(l2.gflop < l1.gflop);
    assert_int_equal(cost_item("ablation_exact", &sh, &run, 0, 100.0, &l1), 0);
    assert_int_equal(cost_item("ablation_exact", &sh, &two, 0, 100.0, &l2), 0);
    assert_true(l2.gflop < l1.gflop);
    struct cost_run s128 = run, s128x2 = run;
    s128.ctx = s128x2.ctx = 128;
    s128x2.eval_seqs = 2;
    assert_int_equal(cost_item("ablation", &sh, &s128, 0, 100.0, &l1), 0);
    assert_int_equal(cost_item("ablation", &sh, &s128x2, 0, 100.0, &l2), 0);
    assert_true(l2.gflop < l1.gflop);
    /* the eval set is capped at max_position_embeddings */
    struct cost_run longer = run;
    longer.ctx = 4096;
    struct cost_run capped = run;
    capped.ctx = 2048;
    assert_int_equal(cost_item("lens", &sh, &longer, 0, 100.0, &l1), 0);
    assert_int_equal(cost_item("lens", &sh, &capped, 0, 100.0, &l2), 0);
    assert_true(l1.gflop == l2.gflop);
}

static void test_series(void **state)
{
    (void)state;
    struct cost_shape sh = shape160();
    struct cost_run run = COST_RUN_DEFAULT;
    const char *items[] = {"loss", "lens", "ablation", "weights"};
    struct cost_item per[4];
    struct cost_series s;
    cost_series(&sh, &run, items, 4, 154, 150.0, per, &s);
    assert_int_equal(s.checkpoints, 154);
    assert_int_equal(s.sweeps, 6);
    double sum = s.pass_s, sweep = s.pass_s;
    for (int i = 0; i < 4; i++) {
        sum += per[i].seconds;
        sweep += per[i].sweep_s;
    }
    assert_true(fabs(sum - s.checkpoint_s) <= 1e-9 * sum);
    assert_true(fabs(sweep - s.sweep_s) <= 1e-9 * sweep);
    assert_true(fabs(s.total_s - (148 * s.checkpoint_s + 6 * s.sweep_s)) <= 1e-9 * s.total_s);
    /* the shared forward: to the logits with loss or lens, once */
    double g1, g2, g3;
    const char *logits[] = {"loss", "lens", "probes"}, *body[] = {"sae", "probes"};
    const char *none[] = {"weights", "composition", "heads"};
    (void)cost_pass_seconds(logits, 3, &sh, &run, 150.0, &g1);
    (void)cost_pass_seconds(body, 2, &sh, &run, 150.0, &g2);
    assert_true(cost_pass_seconds(none, 3, &sh, &run, 150.0, &g3) == 0 && g3 == 0);
    assert_true(fabs(g1 * 1e9 - cost_forward_flops(&sh, 16, 128, 1)) < 1);
    assert_true(fabs(g2 * 1e9 - cost_forward_flops(&sh, 16, 128, 0)) < 1);
    /* no sweeps */
    run.sweep_every = 0;
    cost_series(&sh, &run, items, 4, 154, 150.0, NULL, &s);
    assert_int_equal(s.sweeps, 0);
    assert_true(fabs(s.total_s - 154 * s.checkpoint_s) <= 1e-9 * s.total_s);
}

static void test_settings(void **state)
{
    (void)state;
    char dir[] = "/tmp/cost-test-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char u16[64], js[64], opt[512];
    snprintf(u16, sizeof u16, "%s/eval.u16", dir);
    snprintf(js, sizeof js, "%s/eval.json", dir);
    FILE *f = fopen(u16, "wb");
    assert_non_null(f);
    for (int i = 0; i < 20 * 512 + 7; i++) /* 20 sequences of 512 and a partial one */
        fputc(0, f), fputc(1, f);
    fclose(f);
    f = fopen(js, "w");
    assert_non_null(f);
    fputs("[[1,2,3],[4,5,6],[7,8,9]]", f);
    fclose(f);
    struct cost_run r;
    struct err e;
    snprintf(opt, sizeof opt, "{\"eval_tokens\": \"%s\", \"ctx\": 512}", u16);
    assert_int_equal(forecast_run_settings(opt, &r, &e), 0);
    assert_int_equal(r.eval_seqs, 20);
    assert_int_equal(r.ctx, 512);
    snprintf(opt, sizeof opt,
             "{\"eval_tokens\": \"%s\", \"ctx\": 512, \"eval_seqs\": 8, \"sae_sites\": "
             "[\"blocks.1.hook_resid_post\", \"blocks.3.hook_mlp_out\"], \"probes\": [\"/p.json\"], "
             "\"sweep_every\": 4}",
             u16);
    assert_int_equal(forecast_run_settings(opt, &r, &e), 0);
    assert_int_equal(r.eval_seqs, 8);
    assert_int_equal(r.sae_sites, 2);
    assert_int_equal(r.probe_sets, 1);
    assert_int_equal(r.sweep_every, 4);
    snprintf(opt, sizeof opt, "{\"eval_tokens\": \"%s\"}", js);
    assert_int_equal(forecast_run_settings(opt, &r, &e), 0);
    assert_int_equal(r.eval_seqs, 3);
    /* the generated set */
    assert_int_equal(forecast_run_settings("{}", &r, &e), 0);
    assert_int_equal(r.eval_seqs, 16);
    assert_int_equal(r.ctx, 128);
    assert_int_equal(r.sweep_every, COST_SWEEP_EVERY);
    assert_int_equal(forecast_run_settings("[1]", &r, &e), ERR_FORMAT);
    assert_int_equal(forecast_run_settings("{\"eval_tokens\": \"/no/such/file.u16\"}", &r, &e),
                     ERR_IO);
    assert_non_null(strstr(e.ctx, "/no/such/file.u16"));
    /* offline: the forecast of a run not started */
    struct forecast fc;
    const char *items[] = {"loss", "ablation"};
    struct cost_run def = COST_RUN_DEFAULT;
    assert_int_equal(forecast_offline(&fc, "x", cfg160, items, 2, &def, 154, &e), 0);
    assert_int_equal(fc.left, 154);
    assert_int_equal(fc.left_sweeps, 6);
    double eta = forecast_eta(&fc, 150.0);
    struct cost_series s;
    cost_series(&fc.shape, &def, items, 2, 154, 150.0, NULL, &s);
    assert_true(fabs(eta - s.total_s) <= 1e-9 * s.total_s);
    assert_true(isnan(forecast_ratio(&fc, 150.0)));
    assert_int_equal(forecast_offline(&fc, "x", "{}", items, 2, &def, 154, &e), ERR_FORMAT);
    unlink(u16);
    unlink(js);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shape),     cmocka_unit_test(test_skeleton),
        cmocka_unit_test(test_flops),     cmocka_unit_test(test_items),
        cmocka_unit_test(test_series),    cmocka_unit_test(test_settings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
