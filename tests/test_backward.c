/*
 * test_backward - gradients of the GPT-NeoX loss.
 *
 * Golden: each tests/golden/grad/<case>.safetensors holds the loss and the
 * gradient of every parameter computed by torch autograd through the
 * independent reference forward (tests/reference/grad_ref.py), on a
 * committed fixture: parallel residual with rotary 0.25, sequential with
 * rotary 1.0 (base 500), and the peaky fixture with a loss mask.  Tolerance
 * per tensor: max |g - g_ref| <= 1e-4 * max |g_ref| + 1e-6; loss within 1e-5.
 * Max abs and max relative diffs are printed per tensor.
 *
 * Finite differences: random models built in memory for what the golden
 * files do not cover (tied embeddings, tanh GELU, rotary 0.5, no attention
 * biases, T = 160 so the attention backward runs over two blocks of query
 * rows), a loss mask on each.  On sampled coordinates (per tensor, its
 * largest-gradient entry and random ones) the central difference
 * (L(w+h) - L(w-h)) / 2h with h = 1e-2, L accumulated in double, must agree:
 * |fd - g| <= 2e-2 * |g| + 2e-3 * max|g| of the tensor + 1e-4 (float32
 * logits leave ~1e-6 of noise in L, i.e. ~1e-4 in fd).
 *
 * Also: the training forward's logits equal gptneox_forward's bit for bit;
 * bad inputs fail with the right code.
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

#include "workers/model/backward.h"
#include "workers/model/gptneox.h"
#include "workers/model/safetensors.h"
#include "workers/model/tensor.h"
#include "workers/text/tokens.h"

#define MAXP 256

static void check_golden(const char *fixture, const char *gradfile)
{
    char dir[256], path[512];
    snprintf(dir, sizeof dir, "tests/golden/%s", fixture);
    snprintf(path, sizeof path, "tests/golden/grad/%s.safetensors", gradfile);
    struct err e;
    struct gptneox *m = NULL, *g = NULL;
    struct gptneox_tape *tape = NULL;
    struct st_file *gold = NULL;
    int *tok = NULL, B, T;
    if (gptneox_load(&m, dir, GPTNEOX_LOAD_WRITABLE, &e) < 0)
        fail_msg("%s: %s", fixture, err_str(&e));
    assert_int_equal(st_open(&gold, path, &e), 0);
    char tp[512];
    snprintf(tp, sizeof tp, "%s/tokens.json", dir);
    assert_int_equal(tokens_read_json(tp, &tok, &B, &T, &e), 0);
    const struct st_tensor *tt = st_find(gold, "targets");
    assert_non_null(tt);
    assert_int_equal(tt->nelem, (size_t)B * T);
    float *tf = malloc(tt->nelem * sizeof(float));
    int *targets = malloc(tt->nelem * sizeof(int));
    assert_int_equal(tensor_to_f32(tf, tt->data, tt->dtype, tt->nelem), 0);
    for (size_t i = 0; i < tt->nelem; i++)
        targets[i] = (int)tf[i];
    assert_int_equal(gptneox_grads_create(&g, m, &e), 0);
    assert_int_equal(gptneox_tape_create(&tape, &e), 0);
    double loss = 0.0;
    if (gptneox_forward_backward(m, g, tape, tok, targets, B, T, &loss, &e) < 0)
        fail_msg("%s: %s", fixture, err_str(&e));
    float lref;
    const struct st_tensor *tl = st_find(gold, "loss");
    assert_int_equal(tensor_to_f32(&lref, tl->data, tl->dtype, 1), 0);
    printf("[ backward ] %s (%s): loss %.6f ref %.6f\n", gradfile, fixture, loss, (double)lref);
    assert_true(fabs(loss - lref) <= 1e-5);

    struct gptneox_param gp[MAXP];
    size_t np = gptneox_params(g, gp, MAXP);
    assert_true(np <= MAXP && np >= 16);
    size_t checked = 0;
    double worst_ratio = 0.0;
    for (size_t i = 0; i < np; i++) {
        const struct st_tensor *r = st_find(gold, gp[i].name);
        if (!r)
            fail_msg("%s: no reference gradient for %s", gradfile, gp[i].name);
        assert_int_equal(r->nelem, gp[i].n);
        float *ref = malloc(r->nelem * sizeof(float));
        assert_int_equal(tensor_to_f32(ref, r->data, r->dtype, r->nelem), 0);
        double gmax = 0.0, dmax = 0.0, rel = 0.0;
        for (size_t j = 0; j < r->nelem; j++)
            gmax = fmax(gmax, fabs(ref[j]));
        for (size_t j = 0; j < r->nelem; j++) {
            double d = fabs((double)gp[i].data[j] - ref[j]);
            if (!(d <= dmax))
                dmax = isnan(d) ? INFINITY : d;
            if (fabs(ref[j]) > 1e-3 * gmax)
                rel = fmax(rel, d / fabs(ref[j]));
        }
        double tol = 1e-4 * gmax + 1e-6;
        printf("  %-52s max|g| %.3e  max|d| %.2e  max rel %.2e\n", gp[i].name, gmax, dmax, rel);
        worst_ratio = fmax(worst_ratio, dmax / tol);
        if (!(dmax <= tol))
            fail_msg("%s: %s differs by %g (tolerance %g)", gradfile, gp[i].name, dmax, tol);
        assert_true(gmax > 0.0); /* every parameter gets a gradient */
        free(ref);
        checked++;
    }
    printf("[ backward ] %s: %zu tensors, worst max|d| / tolerance = %.3f\n", gradfile, checked,
           worst_ratio);
    free(tf);
    free(targets);
    free(tok);
    st_free(gold);
    gptneox_tape_free(tape);
    gptneox_free(g);
    gptneox_free(m);
}

static void test_golden_parallel(void **s)
{
    (void)s;
    check_golden("f32_parallel_rot025", "parallel_rot025");
}

static void test_golden_sequential(void **s)
{
    (void)s;
    check_golden("f32_sequential_rot100", "sequential_rot100");
}

static void test_golden_masked(void **s)
{
    (void)s;
    check_golden("peaky", "peaky_masked");
}

/* ---- finite differences ---- */

static uint64_t rng_next(uint64_t *st)
{
    uint64_t z = (*st += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

struct fd_case {
    const char *what;
    int parallel, tied, tanh_gelu, bias;
    double rot;
    int V, C, L, NH, F, B, T;
};

static double loss_at(struct gptneox *m, struct gptneox_tape *tape, const int *tok,
                      const int *tgt, int B, int T)
{
    double l = 0.0;
    struct err e;
    if (gptneox_train_forward(m, tape, tok, tgt, B, T, &l, &e) < 0)
        fail_msg("%s", err_str(&e));
    return l;
}

static void check_fd(const struct fd_case *k)
{
    struct gptneox_config cfg;
    gptneox_config_default(&cfg, k->V, k->C, k->L, k->NH, k->F);
    cfg.parallel_residual = k->parallel;
    cfg.tie_word_embeddings = k->tied;
    cfg.act = k->tanh_gelu ? ACT_GELU_TANH : ACT_GELU;
    cfg.attention_bias = k->bias;
    cfg.rotary_pct = k->rot;
    struct err e;
    struct gptneox *m = NULL, *g = NULL;
    struct gptneox_tape *tape = NULL;
    if (gptneox_create(&m, &cfg, &e) < 0)
        fail_msg("%s", err_str(&e));
    gptneox_init_random(m, 7, 0.15f);
    assert_int_equal(gptneox_grads_create(&g, m, &e), 0);
    assert_int_equal(gptneox_tape_create(&tape, &e), 0);
    size_t N = (size_t)k->B * k->T;
    int *tok = malloc(N * sizeof(int)), *tgt = malloc(N * sizeof(int));
    uint64_t s = 99;
    for (size_t i = 0; i < N; i++)
        tok[i] = (int)(rng_next(&s) % (uint64_t)k->V);
    gptneox_next_token_targets(tgt, tok, k->B, k->T);
    for (size_t i = 0; i < N; i++) /* a loss mask: keep about half */
        if (rng_next(&s) & 1)
            tgt[i] = -1;
    double loss;
    assert_int_equal(gptneox_forward_backward(m, g, tape, tok, tgt, k->B, k->T, &loss, &e), 0);
    struct gptneox_param wp[MAXP], gp[MAXP];
    size_t np = gptneox_params(m, wp, MAXP);
    assert_int_equal(gptneox_params(g, gp, MAXP), np);
    const float h = 1e-2f;
    int nchk = 0;
    double worst = 0.0;
    for (size_t i = 0; i < np; i++) {
        size_t imax = 0;
        double gmax = 0.0;
        for (size_t j = 0; j < gp[i].n; j++)
            if (fabs(gp[i].data[j]) > gmax) {
                gmax = fabs(gp[i].data[j]);
                imax = j;
            }
        for (int r = 0; r < 4; r++) {
            size_t j = r == 0 ? imax : (size_t)(rng_next(&s) % gp[i].n);
            float w0 = wp[i].data[j];
            wp[i].data[j] = w0 + h;
            double lp = loss_at(m, tape, tok, tgt, k->B, k->T);
            wp[i].data[j] = w0 - h;
            double lm = loss_at(m, tape, tok, tgt, k->B, k->T);
            wp[i].data[j] = w0;
            double fd = (lp - lm) / (2.0 * ((double)(w0 + h) - (double)w0));
            double an = gp[i].data[j];
            double tol = 2e-2 * fabs(an) + 2e-3 * gmax + 1e-4;
            worst = fmax(worst, fabs(fd - an) / tol);
            if (!(fabs(fd - an) <= tol))
                fail_msg("%s: %s[%zu]: finite difference %.6g, backward %.6g (tol %.2g)", k->what,
                         wp[i].name, j, fd, an, tol);
            nchk++;
        }
    }
    printf("[ backward ] fd %-40s %d coordinates, worst |fd-g|/tol = %.3f\n", k->what, nchk, worst);
    free(tok);
    free(tgt);
    gptneox_tape_free(tape);
    gptneox_free(g);
    gptneox_free(m);
}

static void test_fd_tied_tanh(void **s)
{
    (void)s;
    struct fd_case k = {"parallel, tied, tanh GELU, rotary 0.5", 1, 1, 1, 1, 0.5,
                        23, 16, 2, 2, 24, 2, 9};
    check_fd(&k);
}

static void test_fd_sequential_nobias(void **s)
{
    (void)s;
    struct fd_case k = {"sequential, no attention bias, rotary 1.0", 0, 0, 0, 0, 1.0,
                        19, 16, 2, 4, 32, 3, 7};
    check_fd(&k);
}

static void test_fd_two_blocks(void **s)
{
    (void)s;
    struct fd_case k = {"T=160 (two attention blocks)", 1, 0, 0, 1, 0.25, 17, 16, 1, 2, 16, 1, 160};
    check_fd(&k);
}

/* ---- the training forward is the inference forward ---- */

static void test_logits_match_forward(void **s)
{
    (void)s;
    struct err e;
    struct gptneox *m = NULL;
    struct gptneox_tape *tape = NULL;
    if (gptneox_load(&m, "tests/golden/f32_sequential_rot100", 0, &e) < 0)
        fail_msg("%s", err_str(&e));
    int *tok = NULL, B, T;
    assert_int_equal(tokens_read_json("tests/golden/f32_sequential_rot100/tokens.json", &tok, &B, &T, &e), 0);
    int *tgt = malloc((size_t)B * T * sizeof(int));
    gptneox_next_token_targets(tgt, tok, B, T);
    assert_int_equal(tgt[T - 1], -1);
    assert_int_equal(tgt[0], tok[1]);
    assert_int_equal(gptneox_tape_create(&tape, &e), 0);
    double loss;
    assert_int_equal(gptneox_train_forward(m, tape, tok, tgt, B, T, &loss, &e), 0);
    assert_int_equal(gptneox_forward(m, tok, B, T, NULL, 0, &e), 0);
    size_t n = (size_t)B * T * m->cfg.vocab_size;
    assert_non_null(gptneox_tape_logits(tape));
    assert_memory_equal(gptneox_tape_logits(tape), gptneox_logits(m), n * sizeof(float));
    double ref = gptneox_loss(m, tok, B, T, NULL, NULL);
    assert_true(fabs(loss - ref) < 1e-6);
    free(tgt);
    free(tok);
    gptneox_tape_free(tape);
    gptneox_free(m);
}

static void test_bad_inputs(void **s)
{
    (void)s;
    struct gptneox_config cfg, other;
    gptneox_config_default(&cfg, 10, 16, 1, 2, 16);
    gptneox_config_default(&other, 10, 16, 2, 2, 16);
    struct err e;
    struct gptneox *m = NULL, *g = NULL, *m2 = NULL, *g2 = NULL;
    struct gptneox_tape *tape = NULL;
    assert_int_equal(gptneox_create(&m, &cfg, &e), 0);
    assert_int_equal(gptneox_create(&m2, &other, &e), 0);
    assert_int_equal(gptneox_grads_create(&g, m, &e), 0);
    assert_int_equal(gptneox_grads_create(&g2, m2, &e), 0);
    assert_int_equal(gptneox_tape_create(&tape, &e), 0);
    int tok[4] = {1, 2, 3, 4}, tgt[4] = {2, 3, 4, -1};
    double loss;
    assert_int_equal(gptneox_forward_backward(m, g2, tape, tok, tgt, 1, 4, &loss, &e), ERR_MISMATCH);
    int none[4] = {-1, -1, -1, -1};
    assert_int_equal(gptneox_forward_backward(m, g, tape, tok, none, 1, 4, &loss, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "no position has a target"));
    int badt[4] = {2, 10, 4, -1};
    assert_int_equal(gptneox_forward_backward(m, g, tape, tok, badt, 1, 4, &loss, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "target 10"));
    int badtok[4] = {1, -3, 3, 4};
    assert_int_equal(gptneox_train_forward(m, tape, badtok, tgt, 1, 4, &loss, &e), ERR_INVALID);
    assert_int_equal(gptneox_forward_backward(m, g, tape, tok, tgt, 0, 4, &loss, &e), ERR_INVALID);
    /* after errors the tape still works, and holds no stale logits */
    assert_null(gptneox_tape_logits(tape));
    assert_int_equal(gptneox_forward_backward(m, g, tape, tok, tgt, 1, 4, &loss, &e), 0);
    assert_true(isfinite(loss));
    assert_null(gptneox_tape_logits(tape)); /* consumed by the backward */
    gptneox_tape_free(tape);
    gptneox_free(g);
    gptneox_free(g2);
    gptneox_free(m);
    gptneox_free(m2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_parallel),
        cmocka_unit_test(test_golden_sequential),
        cmocka_unit_test(test_golden_masked),
        cmocka_unit_test(test_fd_tied_tanh),
        cmocka_unit_test(test_fd_sequential_nobias),
        cmocka_unit_test(test_fd_two_blocks),
        cmocka_unit_test(test_logits_match_forward),
        cmocka_unit_test(test_bad_inputs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
