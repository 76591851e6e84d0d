/*
 * test_lens - the battery item `lens` (the logit lens).
 *
 *   golden      on two golden fixtures, against tests/reference/lens_ref.py
 *               (numpy, float64, from the PyTorch reference's own residual
 *               streams): lens_loss and lens_kl within 1e-5 nats absolute,
 *               lens_top1_agreement exactly (the fixtures' smallest top-1
 *               margin is 7e-3 nats).
 *   last layer  the lens of the last layer is the model's output: its
 *               lens_loss equals the `loss` item's loss (relative 1e-6),
 *               lens_kl is within 1e-6 of 0, agreement is 1.
 *   direct      every layer against a plain double-precision computation in
 *               this file from hooked residual streams, on an eval set that
 *               needs two forwards and several sgemm chunks: loss and KL
 *               within 1e-5, agreement within the share of positions whose
 *               top-1 margin is below 1e-4.
 *   subset      v3 lenses the first sequences holding LENS_TOKENS tokens:
 *               the rows equal, byte for byte, the lens of a set of only
 *               those sequences.
 *   determinism the same inputs twice give the same bytes.
 *   errors      too-short sequences and ids outside the vocabulary.
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

#include "tests/lib/battery_golden.h"
#include "workers/battery/battery.h"
#include "common/rng.h"
#include "workers/model/gptneox.h"
#include "workers/text/tokens.h"

static void test_lens_golden(void **state)
{
    (void)state;
    const char *fixtures[2] = {"f32_parallel_rot025", "f32_sequential_rot100"};
    const struct gtol tol[] = {{"lens_loss", 1e-5, 0},
                               {"lens_kl", 1e-5, 0},
                               {"lens_top1_agreement", 0, 0},
                               {NULL, 0, 0}};
    for (int f = 0; f < 2; f++) {
        char dir[128], tokpath[160], golden[160];
        snprintf(dir, sizeof dir, "tests/golden/%s", fixtures[f]);
        snprintf(tokpath, sizeof tokpath, "%s/tokens.json", dir);
        snprintf(golden, sizeof golden, "tests/golden/battery/lens_%s.json", fixtures[f]);
        struct gptneox *m = NULL;
        struct err e;
        if (gptneox_load(&m, dir, 0, &e) < 0)
            fail_msg("%s", err_str(&e));
        int *tok = NULL, B, T;
        if (tokens_read_file(tokpath, 128, &tok, &B, &T, &e) < 0)
            fail_msg("%s", err_str(&e));
        struct battery_ctx c = {.model = m, .eval_tokens = tok, .eval_B = B, .eval_T = T};
        size_t n = 0;
        struct grow *g = grows_run(&battery_item_lens, &c, &n);
        assert_int_equal(n, 3 * (size_t)(m->cfg.n_layers + 1));
        grows_compare_golden(g, n, golden, tol);
        free(g);
        free(tok);
        gptneox_free(m);
    }
}

static struct gptneox *make_model(int V, int C, int L, int NH, int F, int maxpos, uint64_t seed)
{
    struct gptneox_config cfg;
    gptneox_config_default(&cfg, V, C, L, NH, F);
    cfg.max_positions = maxpos;
    struct gptneox *m = NULL;
    struct err e;
    if (gptneox_create(&m, &cfg, &e) < 0)
        fail_msg("gptneox_create: %s", err_str(&e));
    gptneox_init_random(m, seed, 0.3f);
    return m;
}

static int *random_tokens(int B, int T, int V, uint64_t seed)
{
    int *tok = malloc((size_t)B * T * sizeof *tok);
    assert_non_null(tok);
    for (size_t i = 0; i < (size_t)B * T; i++)
        tok[i] = (int)rng_below(&seed, (uint32_t)V);
    return tok;
}

/* every residual stream of one forward: slot 0 embed, slot l+1 resid_post */
struct cache {
    float *x;
    size_t stride;
};

static int cache_fn(void *ctx, struct hook_act *act, struct err *e)
{
    (void)e;
    struct cache *c = ctx;
    int slot = act->kind == HOOK_EMBED ? 0 : act->layer + 1;
    memcpy(c->x + (size_t)slot * c->stride, act->data, act->n * sizeof(float));
    return 0;
}

/* log-softmax (V) in double of LayerNorm_final(x (C)) @ unembed^T */
static void lens_row(const struct gptneox *m, const float *x, double *lp)
{
    const int C = m->cfg.d_model, V = m->cfg.vocab_size;
    double mu = 0, var = 0;
    for (int i = 0; i < C; i++)
        mu += x[i];
    mu /= C;
    for (int i = 0; i < C; i++)
        var += (x[i] - mu) * (x[i] - mu);
    var /= C;
    double y[256];
    assert_true(C <= 256);
    for (int i = 0; i < C; i++)
        y[i] = (x[i] - mu) / sqrt(var + m->cfg.layer_norm_eps) * m->lnf_w[i] + m->lnf_b[i];
    double mx = -INFINITY;
    for (int v = 0; v < V; v++) {
        double s = 0;
        for (int i = 0; i < C; i++)
            s += y[i] * m->unembed[(size_t)v * C + i];
        lp[v] = s;
        mx = fmax(mx, s);
    }
    double se = 0;
    for (int v = 0; v < V; v++)
        se += exp(lp[v] - mx);
    for (int v = 0; v < V; v++)
        lp[v] -= mx + log(se);
}

static void test_lens_direct_and_last_layer(void **state)
{
    (void)state;
    const int V = 64, C = 32, L = 3, NH = 4, F = 64;
    /* T 64: LENS_BATCH_TOKENS / 64 = 16 sequences per forward, so B 20
     * takes two forwards; LENS_GEMM_ROWS / (L+1) = 128 tokens per sgemm */
    const int B = 20, T = 64, S = L + 1;
    struct gptneox *m = make_model(V, C, L, NH, F, 64, 7);
    int *tok = random_tokens(B, T, V, 11);
    struct battery_ctx c = {.model = m, .eval_tokens = tok, .eval_B = B, .eval_T = T};
    size_t n = 0, nl = 0;
    struct grow *g = grows_run(&battery_item_lens, &c, &n);
    struct grow *lg = grows_run(&battery_item_loss, &c, &nl);
    assert_int_equal(n, 3 * (size_t)S);

    /* the last layer is the model's output */
    const struct grow *loss = grows_find(lg, nl, "loss", -1, -1, -1);
    const struct grow *ll = grows_find(g, n, "lens_loss", L - 1, -1, -1);
    const struct grow *lk = grows_find(g, n, "lens_kl", L - 1, -1, -1);
    const struct grow *la = grows_find(g, n, "lens_top1_agreement", L - 1, -1, -1);
    assert_non_null(loss);
    assert_non_null(ll);
    assert_non_null(lk);
    assert_non_null(la);
    printf("last layer: lens_loss %.9g, loss item %.9g; lens_kl %.3g; agreement %g\n", ll->value,
           loss->value, lk->value, la->value);
    if (fabs(ll->value - loss->value) > 1e-6 * loss->value)
        fail_msg("last-layer lens_loss %.9g differs from the loss item's %.9g", ll->value,
                 loss->value);
    assert_true(fabs(lk->value) <= 1e-6);
    assert_true(la->value == 1.0);

    /* every layer against double precision from the hooked streams */
    const size_t N = (size_t)B * T;
    struct cache cc = {malloc((size_t)S * N * C * sizeof(float)), N * C};
    assert_non_null(cc.x);
    const struct gptneox_hook hooks[2] = {{HOOK_EMBED, -1, cache_fn, &cc},
                                          {HOOK_RESID_POST, -1, cache_fn, &cc}};
    struct err e;
    assert_int_equal(gptneox_forward(m, tok, B, T, hooks, 2, &e), 0);
    double *lpf = malloc((size_t)V * sizeof *lpf), *lp = malloc((size_t)V * sizeof *lp);
    double *want_loss = calloc(S, sizeof(double)), *want_kl = calloc(S, sizeof(double));
    double *want_agree = calloc(S, sizeof(double));
    int near_ties = 0;
    for (size_t i = 0; i < N; i++) {
        lens_row(m, cc.x + (size_t)L * cc.stride + i * C, lpf);
        int af = 0;
        for (int v = 1; v < V; v++)
            af = lpf[v] > lpf[af] ? v : af;
        for (int s = 0; s < S; s++) {
            lens_row(m, cc.x + (size_t)s * cc.stride + i * C, lp);
            int a = 0;
            for (int v = 1; v < V; v++)
                a = lp[v] > lp[a] ? v : a;
            double second = -INFINITY;
            for (int v = 0; v < V; v++)
                if (v != a)
                    second = fmax(second, lp[v]);
            near_ties += lp[a] - second < 1e-4;
            if ((int)(i % T) + 1 < T)
                want_loss[s] -= lp[tok[i + 1]];
            for (int v = 0; v < V; v++)
                want_kl[s] += exp(lpf[v]) * (lpf[v] - lp[v]);
            want_agree[s] += a == af;
        }
    }
    for (int s = 0; s < S; s++) {
        const struct grow *gl = grows_find(g, n, "lens_loss", s - 1, -1, -1);
        const struct grow *gk = grows_find(g, n, "lens_kl", s - 1, -1, -1);
        const struct grow *ga = grows_find(g, n, "lens_top1_agreement", s - 1, -1, -1);
        assert_non_null(gl);
        assert_non_null(gk);
        assert_non_null(ga);
        double wl = want_loss[s] / ((double)B * (T - 1)), wk = want_kl[s] / N,
               wa = want_agree[s] / N;
        printf("layer %2d: loss %.6f (direct %.6f), kl %.6f (%.6f), agreement %.4f (%.4f)\n",
               s - 1, gl->value, wl, gk->value, wk, ga->value, wa);
        if (fabs(gl->value - wl) > 1e-5 || fabs(gk->value - wk) > 1e-5)
            fail_msg("layer %d: loss %.9g / %.9g, kl %.9g / %.9g", s - 1, gl->value, wl, gk->value,
                     wk);
        if (fabs(ga->value - wa) > (double)near_ties / N + 1e-12)
            fail_msg("layer %d: agreement %.9g, direct %.9g", s - 1, ga->value, wa);
    }
    /* the lens is not trivially the output: early layers disagree */
    assert_true(grows_find(g, n, "lens_kl", -1, -1, -1)->value > 1e-3);
    free(want_agree);
    free(want_kl);
    free(want_loss);
    free(lp);
    free(lpf);
    free(cc.x);
    free(lg);
    free(g);
    free(tok);
    gptneox_free(m);
}

/* v3 lenses the first lens_seqs(B, T) sequences: on a set larger than
 * LENS_TOKENS, the rows are those of the whole computation on a set of
 * only those sequences (here 32 of 40 sequences of 64 tokens, the same
 * batches of the shared forward: the same bytes). */
static void test_lens_subset(void **state)
{
    (void)state;
    const int B = 40, T = 64, sub = lens_seqs(B, T);
    assert_int_equal(sub, LENS_TOKENS / T);
    struct gptneox *m = make_model(64, 32, 2, 4, 64, 64, 5);
    int *tok = random_tokens(B, T, 64, 6);
    struct battery_ctx c = {.model = m, .eval_tokens = tok, .eval_B = B, .eval_T = T};
    struct battery_ctx cs = {.model = m, .eval_tokens = tok, .eval_B = sub, .eval_T = T};
    assert_int_equal(lens_seqs(sub, T), sub); /* the smaller set is lensed whole */
    struct rows r[2];
    struct err e;
    rows_init(&r[0]);
    rows_init(&r[1]);
    assert_int_equal(battery_run_item(&battery_item_lens, &c, &r[0], &e), 0);
    assert_int_equal(battery_run_item(&battery_item_lens, &cs, &r[1], &e), 0);
    assert_true(r[0].len > 0);
    assert_int_equal(r[0].len, r[1].len);
    assert_memory_equal(r[0].buf, r[1].buf, r[0].len);
    /* and not the whole set's: the other sequences are left out */
    struct battery_ctx call = c;
    call.eval_B = B - 1; /* 39 sequences: still the same first 32 */
    struct rows r2;
    rows_init(&r2);
    assert_int_equal(battery_run_item(&battery_item_lens, &call, &r2, &e), 0);
    assert_memory_equal(r[0].buf, r2.buf, r[0].len);
    rows_free(&r2);
    rows_free(&r[0]);
    rows_free(&r[1]);
    free(tok);
    gptneox_free(m);
}

static void test_lens_deterministic(void **state)
{
    (void)state;
    struct gptneox *m = make_model(64, 32, 2, 4, 64, 64, 3);
    int *tok = random_tokens(5, 40, 64, 4);
    struct battery_ctx c = {.model = m, .eval_tokens = tok, .eval_B = 5, .eval_T = 40};
    struct rows r[2];
    struct err e;
    for (int k = 0; k < 2; k++) {
        rows_init(&r[k]);
        assert_int_equal(battery_run_item(&battery_item_lens, &c, &r[k], &e), 0);
        /* a forward of another shape in between must not matter */
        assert_int_equal(gptneox_forward(m, tok, 1, 7, NULL, 0, &e), 0);
    }
    assert_true(r[0].len > 0);
    assert_int_equal(r[0].len, r[1].len);
    assert_memory_equal(r[0].buf, r[1].buf, r[0].len);
    rows_free(&r[0]);
    rows_free(&r[1]);
    free(tok);
    gptneox_free(m);
}

static void expect_error(struct gptneox *m, const int *tok, int B, int T, const char *needle)
{
    struct battery_ctx c = {.model = m, .eval_tokens = tok, .eval_B = B, .eval_T = T,
                            .eval_name = "evalfile"};
    struct rows r;
    rows_init(&r);
    struct err e;
    err_clear(&e);
    assert_int_equal(battery_run_item(&battery_item_lens, &c, &r, &e), ERR_INVALID);
    if (!strstr(err_str(&e), needle) || !strstr(err_str(&e), "evalfile"))
        fail_msg("error '%s' lacks '%s' or the file name", err_str(&e), needle);
    assert_int_equal(r.len, 0);
    rows_free(&r);
}

static void test_lens_errors(void **state)
{
    (void)state;
    struct gptneox *m = make_model(50, 32, 1, 4, 64, 16, 1);
    int *tok = random_tokens(2, 17, 50, 2);
    expect_error(m, tok, 2, 17, "max_position_embeddings 16");
    expect_error(m, tok, 2, 1, "at least 2");
    tok[7] = 50;
    expect_error(m, tok, 2, 5, "token 50 (sequence 1, position 2) is outside");
    free(tok);
    gptneox_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lens_golden),
        cmocka_unit_test(test_lens_subset),
        cmocka_unit_test(test_lens_direct_and_last_layer),
        cmocka_unit_test(test_lens_deterministic),
        cmocka_unit_test(test_lens_errors),
    };
    return cmocka_run_group_tests_name("lens", tests, NULL, NULL);
}
