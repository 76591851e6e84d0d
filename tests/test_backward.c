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
 * Activation gradients: each tests/golden/grad/act_<case>.safetensors holds
 * d metric / d activation at every hook point, by torch autograd
 * (retain_grad) on the reference forward, for the mean next-token loss and
 * for a logit difference at one position per sequence.  The C side runs
 * gptneox_tape_forward, builds d metric / d logits, and caches every
 * gradient hook of gptneox_backward.  Tolerance per tensor:
 * max |g - g_ref| <= 1e-4 * max |g_ref| + 1e-7 (printed per fixture).
 * Finite differences on a random model at T = 160 check the same
 * gradients through forward hooks that add h = 1e-2 to one activation
 * element (a LayerNorm scale: multiply it by 1 +- 1e-3).
 * Without a gradient model the activation gradients are the same bit for
 * bit; a gradient hook that writes changes what flows further back.
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

/* ---- activation gradients ---- */

#define GCACHE_MAX 256

struct gcache {
    char name[GCACHE_MAX][64];
    float *data[GCACHE_MAX];
    size_t n[GCACHE_MAX];
    int count;
};

static int gcache_fn(void *ctx, struct hook_act *act, struct err *e)
{
    (void)e;
    struct gcache *c = ctx;
    assert_true(act->grad == 1);
    for (int i = 0; i < c->count; i++)
        assert_true(strcmp(c->name[i], act->name) != 0); /* each point once */
    assert_true(c->count < GCACHE_MAX);
    int i = c->count++;
    snprintf(c->name[i], sizeof c->name[i], "%s", act->name);
    c->n[i] = act->n;
    c->data[i] = malloc(act->n * sizeof(float));
    assert_non_null(c->data[i]);
    memcpy(c->data[i], act->data, act->n * sizeof(float));
    return 0;
}

static void gcache_free(struct gcache *c)
{
    for (int i = 0; i < c->count; i++)
        free(c->data[i]);
    c->count = 0;
}

static const float *gcache_find(const struct gcache *c, const char *name, size_t *n)
{
    for (int i = 0; i < c->count; i++)
        if (strcmp(c->name[i], name) == 0) {
            *n = c->n[i];
            return c->data[i];
        }
    return NULL;
}

/* The gradient hooks of every kind, all layers, into c. */
static size_t all_hooks(struct gptneox_hook *h, struct gcache *c)
{
    size_t n = 0;
    for (int k = 0; k < HOOK_KIND_COUNT; k++)
        h[n++] = (struct gptneox_hook){(enum hook_kind)k, -1, gcache_fn, c};
    return n;
}

static float gold_scalar(const struct st_file *g, const char *name)
{
    const struct st_tensor *t = st_find(g, name);
    assert_non_null(t);
    float v;
    assert_int_equal(tensor_to_f32(&v, t->data, t->dtype, 1), 0);
    return v;
}

/* d metric / d logits (B,T,V) of `metric` ("loss" or "logitdiff") into d;
 * returns the metric. */
static double metric_dlogits(float *d, const float *logits, const struct st_file *g,
                             const char *metric, const int *tok, int B, int T, int V)
{
    size_t N = (size_t)B * T;
    if (strcmp(metric, "loss") == 0) {
        int *tgt = malloc(N * sizeof(int));
        gptneox_next_token_targets(tgt, tok, B, T);
        double v = gptneox_xent_dlogits(d, logits, tgt, (int)N, V);
        free(tgt);
        return v;
    }
    memset(d, 0, N * V * sizeof(float));
    double v = 0.0;
    for (int b = 0; b < B; b++) {
        char nm[64];
        float p, a, w;
        const struct st_tensor *t;
        snprintf(nm, sizeof nm, "logitdiff.pos");
        t = st_find(g, nm);
        assert_non_null(t);
        p = ((const float *)t->data)[b];
        a = ((const float *)st_find(g, "logitdiff.ans")->data)[b];
        w = ((const float *)st_find(g, "logitdiff.wrong")->data)[b];
        size_t row = ((size_t)b * T + (size_t)p) * V;
        d[row + (size_t)a] += 1.0f;
        d[row + (size_t)w] -= 1.0f;
        v += (double)logits[row + (size_t)a] - logits[row + (size_t)w];
    }
    return v;
}

static void check_act_golden(const char *fixture, const char *gradfile)
{
    char dir[256], path[512];
    snprintf(dir, sizeof dir, "tests/golden/%s", fixture);
    snprintf(path, sizeof path, "tests/golden/grad/%s.safetensors", gradfile);
    struct err e;
    struct gptneox *m = NULL, *g = NULL;
    struct gptneox_tape *tape = NULL;
    struct st_file *gold = NULL;
    int *tok = NULL, B, T;
    if (gptneox_load(&m, dir, 0, &e) < 0)
        fail_msg("%s: %s", fixture, err_str(&e));
    assert_int_equal(st_open(&gold, path, &e), 0);
    snprintf(path, sizeof path, "%s/tokens.json", dir);
    assert_int_equal(tokens_read_json(path, &tok, &B, &T, &e), 0);
    assert_int_equal(gptneox_tape_create(&tape, &e), 0);
    assert_int_equal(gptneox_grads_create(&g, m, &e), 0);
    const int V = m->cfg.vocab_size;
    float *d = malloc((size_t)B * T * V * sizeof(float));
    const char *metrics[2] = {"loss", "logitdiff"};
    for (int mi = 0; mi < 2; mi++) {
        struct gcache c = {.count = 0}, c2 = {.count = 0};
        struct gptneox_hook h[HOOK_KIND_COUNT], h2[HOOK_KIND_COUNT];
        char vn[64];
        snprintf(vn, sizeof vn, "%s.value", metrics[mi]);
        if (!st_find(gold, vn))
            continue; /* this file has the other metric only */
        size_t nh = all_hooks(h, &c);
        all_hooks(h2, &c2);
        assert_int_equal(gptneox_tape_forward(m, tape, tok, B, T, NULL, 0, &e), 0);
        double v = metric_dlogits(d, gptneox_tape_logits(tape), gold, metrics[mi], tok, B, T, V);
        char nm[128];
        snprintf(nm, sizeof nm, "%s.value", metrics[mi]);
        assert_true(fabs(v - gold_scalar(gold, nm)) <= 1e-4 * fmax(1.0, fabs(v)));
        if (gptneox_backward(m, tape, d, h, nh, NULL, &e) < 0)
            fail_msg("%s: %s", gradfile, err_str(&e));
        /* with parameter gradients: the same activation gradients, bit for bit */
        assert_int_equal(gptneox_backward(m, tape, d, h2, nh, g, &e), 0);
        assert_int_equal(c.count, c2.count);
        for (int i = 0; i < c.count; i++)
            assert_memory_equal(c.data[i], c2.data[i], c.n[i] * sizeof(float));
        size_t prefix = strlen(metrics[mi]) + 1;
        int checked = 0, bad = 0;
        double worst = 0.0;
        for (size_t i = 0; i < st_count(gold); i++) {
            const struct st_tensor *t = st_get(gold, i);
            if (strncmp(t->name, metrics[mi], prefix - 1) != 0 || t->name[prefix - 1] != '.')
                continue;
            const char *hn = t->name + prefix;
            if (strcmp(hn, "value") == 0 || strcmp(hn, "pos") == 0 || strcmp(hn, "ans") == 0 ||
                strcmp(hn, "wrong") == 0)
                continue;
            size_t n = 0;
            const float *mine = gcache_find(&c, t->name + prefix, &n);
            if (!mine)
                fail_msg("%s: no gradient hook call for %s", gradfile, t->name + prefix);
            assert_int_equal(n, t->nelem);
            float *ref = malloc(t->nelem * sizeof(float));
            assert_int_equal(tensor_to_f32(ref, t->data, t->dtype, t->nelem), 0);
            double gmax = 0.0, dmax = 0.0;
            for (size_t j = 0; j < n; j++) {
                gmax = fmax(gmax, fabs(ref[j]));
                double dd = fabs((double)mine[j] - ref[j]);
                if (!(dd <= dmax))
                    dmax = isnan(dd) ? INFINITY : dd;
            }
            double tol = 1e-4 * gmax + 1e-7;
            worst = fmax(worst, dmax / tol);
            if (!(dmax <= tol)) {
                printf("MISMATCH %s: d %s / d %s differs by %g (max |g| %g)\n", gradfile, metrics[mi],
                         t->name + prefix, dmax, gmax);
                bad++;
            }
            free(ref);
            checked++;
        }
        printf("[ backward ] %s %-9s %d hook gradients, worst max|d| / tolerance = %.3f\n",
               gradfile, metrics[mi], checked, worst);
        assert_true(checked >= 16);
        assert_int_equal(bad, 0);
        assert_int_equal(checked, c.count); /* every hook call has a reference */
        gcache_free(&c);
        gcache_free(&c2);
    }
    free(d);
    free(tok);
    st_free(gold);
    gptneox_tape_free(tape);
    gptneox_free(g);
    gptneox_free(m);
}

static void test_act_golden(void **s)
{
    (void)s;
    check_act_golden("f32_parallel_rot025", "act_parallel_rot025");
    check_act_golden("f32_sequential_rot100", "act_sequential_rot100");
    check_act_golden("peaky", "act_peaky");
}

/* A forward hook adding `delta` to element `idx` of one activation. */
struct bump {
    enum hook_kind kind;
    int layer;
    size_t idx;
    float delta;
    int rel;       /* delta is relative to the value (a LayerNorm scale) */
    double step;   /* out: the step taken */
};

static int bump_fn(void *ctx, struct hook_act *act, struct err *e)
{
    (void)e;
    struct bump *b = ctx;
    assert_true(b->idx < act->n);
    float v = act->data[b->idx];
    act->data[b->idx] = b->rel ? v * (1.0f + b->delta) : v + b->delta;
    b->step = (double)act->data[b->idx] - v;
    return 0;
}

static int noop_fn(void *ctx, struct hook_act *act, struct err *e)
{
    (void)ctx;
    (void)act;
    (void)e;
    return 0;
}

/* sum_n w[n] * logits[n, cls[n]] over rows n: a metric touching every row. */
static double fd_metric(const float *logits, const float *wt, const int *cls, size_t N, int V)
{
    double v = 0.0;
    for (size_t n = 0; n < N; n++)
        v += (double)wt[n] * logits[n * V + (size_t)cls[n]];
    return v;
}

/* Finite differences through forward hooks: metric(act + h e_i) against
 * the gradient hook's value at i, on a random model at T = 160 (two blocks
 * of query rows), for every hook kind of both residual forms. */
static void test_act_fd(void **s)
{
    (void)s;
    for (int par = 0; par <= 1; par++) {
        struct gptneox_config cfg;
        gptneox_config_default(&cfg, 21, 16, 2, 2, 24);
        cfg.parallel_residual = par;
        cfg.rotary_pct = 0.5;
        struct err e;
        struct gptneox *m = NULL;
        struct gptneox_tape *tape = NULL;
        assert_int_equal(gptneox_create(&m, &cfg, &e), 0);
        gptneox_init_random(m, 3 + (uint64_t)par, 0.3f);
        assert_int_equal(gptneox_tape_create(&tape, &e), 0);
        const int B = 1, T = 160, V = cfg.vocab_size;
        const size_t N = (size_t)B * T;
        int *tok = malloc(N * sizeof(int)), *cls = malloc(N * sizeof(int));
        float *wt = malloc(N * sizeof(float)), *d = malloc(N * V * sizeof(float));
        uint64_t st = 5;
        for (size_t i = 0; i < N; i++) {
            tok[i] = (int)(rng_next(&st) % (uint64_t)V);
            cls[i] = (int)(rng_next(&st) % (uint64_t)V);
            wt[i] = (float)((double)(rng_next(&st) >> 11) / 9007199254740992.0 - 0.5);
        }
        assert_int_equal(gptneox_tape_forward(m, tape, tok, B, T, NULL, 0, &e), 0);
        memset(d, 0, N * V * sizeof(float));
        for (size_t n = 0; n < N; n++)
            d[n * V + (size_t)cls[n]] = wt[n];
        struct gcache c = {.count = 0};
        struct gptneox_hook h[HOOK_KIND_COUNT];
        size_t nh = all_hooks(h, &c);
        assert_int_equal(gptneox_backward(m, tape, d, h, nh, NULL, &e), 0);
        int nchk = 0;
        double worst = 0.0;
        char wname[64] = "";
        for (int i = 0; i < c.count; i++) {
            enum hook_kind k;
            int layer;
            assert_int_equal(hook_parse(c.name[i], &k, &layer), 0);
            /* its largest gradient entry and two random ones; the pattern
             * only below the diagonal (above it the softmax would not
             * have put mass, but a written value reaches z) */
            double gmax = 0.0;
            size_t imax = 0;
            for (size_t j = 0; j < c.n[i]; j++)
                if (fabs(c.data[i][j]) > gmax) {
                    gmax = fabs(c.data[i][j]);
                    imax = j;
                }
            for (int r = 0; r < 3; r++) {
                size_t j = r == 0 ? imax : (size_t)(rng_next(&st) % c.n[i]);
                const int rel = k == HOOK_LN1_SCALE || k == HOOK_LN2_SCALE ||
                                k == HOOK_LN_FINAL_SCALE;
                const float hstep = rel ? 1e-3f : 1e-2f;
                struct bump bp = {k, layer, j, hstep, rel, 0.0};
                /* hook_attn_in (hooked for its gradient) gives ln1 a head
                 * axis: the forward must take the same shape */
                struct gptneox_hook fh[2] = {{k, layer, bump_fn, &bp},
                                             {HOOK_ATTN_IN, layer, noop_fn, NULL}};
                size_t nf = (k == HOOK_LN1_SCALE || k == HOOK_LN1_NORMALIZED) ? 2 : 1;
                assert_int_equal(gptneox_forward(m, tok, B, T, fh, nf, &e), 0);
                double mp = fd_metric(gptneox_logits(m), wt, cls, N, V), sp = bp.step;
                if (!isfinite(sp)) /* a masked score: -inf stays -inf */
                    continue;
                bp.delta = -hstep;
                assert_int_equal(gptneox_forward(m, tok, B, T, fh, nf, &e), 0);
                double mm = fd_metric(gptneox_logits(m), wt, cls, N, V);
                double fd = (mp - mm) / (sp - bp.step), an = c.data[i][j];
                double tol = 2e-2 * fabs(an) + 2e-3 * gmax + 2e-4;
                if (fabs(fd - an) / tol > worst) {
                    worst = fabs(fd - an) / tol;
                    snprintf(wname, sizeof wname, "%s", c.name[i]);
                }
                if (!(fabs(fd - an) <= tol))
                    fail_msg("%s[%zu]: finite difference %.6g, gradient hook %.6g", c.name[i], j,
                             fd, an);
                nchk++;
            }
        }
        printf("[ backward ] fd activations (%s): %d hook points, %d coordinates, worst |fd-g|/tol = %.3f (%s)\n",
               par ? "parallel" : "sequential", c.count, nchk, worst, wname);
        /* ln_final's two and hook_embed, and every per-layer kind */
        assert_int_equal(c.count, 3 + 2 * (HOOK_KIND_COUNT - 3 - (par ? 1 : 0)));
        gcache_free(&c);
        free(tok);
        free(cls);
        free(wt);
        free(d);
        gptneox_tape_free(tape);
        gptneox_free(m);
    }
}

static int zero_fn(void *ctx, struct hook_act *act, struct err *e)
{
    (void)ctx;
    (void)e;
    memset(act->data, 0, act->n * sizeof(float));
    return 0;
}

static int fail_fn(void *ctx, struct hook_act *act, struct err *e)
{
    (void)ctx;
    return err_set(e, ERR_IO, act->name, "stop here");
}

static double max_abs(const float *x, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs(x[i]));
    return m;
}

/* Gradient hooks that write; errors of the backward. */
static void test_backward_hooks_write(void **s)
{
    (void)s;
    struct gptneox_config cfg;
    gptneox_config_default(&cfg, 13, 16, 2, 2, 32);
    struct err e;
    struct gptneox *m = NULL, *g = NULL, *g2 = NULL, *m2 = NULL;
    struct gptneox_tape *tape = NULL;
    assert_int_equal(gptneox_create(&m, &cfg, &e), 0);
    gptneox_init_random(m, 11, 0.3f);
    struct gptneox_config other = cfg;
    other.n_layers = 1;
    assert_int_equal(gptneox_create(&m2, &other, &e), 0);
    assert_int_equal(gptneox_grads_create(&g2, m2, &e), 0);
    assert_int_equal(gptneox_tape_create(&tape, &e), 0);
    int tok[6] = {1, 5, 2, 7, 7, 3};
    float d[6 * 13];
    /* no forward yet */
    assert_int_equal(gptneox_backward(m, tape, d, NULL, 0, NULL, &e), ERR_INVALID);
    assert_null(gptneox_tape_dlogits(tape));
    assert_int_equal(gptneox_tape_forward(m, tape, tok, 1, 6, NULL, 0, &e), 0);
    assert_non_null(gptneox_tape_dlogits(tape));
    int tgt[6];
    gptneox_next_token_targets(tgt, tok, 1, 6);
    double loss = gptneox_xent_dlogits(d, gptneox_tape_logits(tape), tgt, 6, 13);
    assert_true(isfinite(loss) && loss > 0);
    int none[6] = {-1, -1, -1, -1, -1, -1};
    float d2[6 * 13];
    assert_true(isnan(gptneox_xent_dlogits(d2, gptneox_tape_logits(tape), none, 6, 13)));
    assert_int_equal(gptneox_backward(m, tape, NULL, NULL, 0, NULL, &e), ERR_INVALID);
    assert_int_equal(gptneox_backward(m, tape, d, NULL, 0, g2, &e), ERR_MISMATCH);
    assert_int_equal(gptneox_backward(m2, tape, d, NULL, 0, NULL, &e), ERR_INVALID);
    struct gptneox_hook f = {HOOK_ATTN_Z, 0, fail_fn, NULL};
    assert_int_equal(gptneox_backward(m, tape, d, &f, 1, NULL, &e), ERR_IO);
    assert_non_null(strstr(e.ctx, "blocks.0.attn.hook_z"));

    /* zeroing d/d hook_resid_post of the last layer: nothing reaches the embedding */
    struct gcache c = {.count = 0};
    struct gptneox_hook h[2] = {{HOOK_RESID_POST, 1, zero_fn, NULL},
                                {HOOK_EMBED, -1, gcache_fn, &c}};
    assert_int_equal(gptneox_backward(m, tape, d, h, 2, NULL, &e), 0);
    assert_int_equal(c.count, 1);
    assert_true(max_abs(c.data[0], c.n[0]) == 0.0);
    gcache_free(&c);
    /* zeroing layer 0's attention output gradient: its z gets none, while
     * the residual before it still does (the MLP branch, the skip) */
    struct gptneox_hook h2[3] = {{HOOK_ATTN_OUT, 0, zero_fn, NULL},
                                 {HOOK_ATTN_Z, 0, gcache_fn, &c},
                                 {HOOK_RESID_PRE, 0, gcache_fn, &c}};
    assert_int_equal(gptneox_backward(m, tape, d, h2, 3, NULL, &e), 0);
    assert_int_equal(c.count, 2);
    size_t n = 0;
    assert_true(max_abs(gcache_find(&c, "blocks.0.attn.hook_z", &n), n) == 0.0);
    assert_true(max_abs(gcache_find(&c, "blocks.0.hook_resid_pre", &n), n) > 0.0);
    gcache_free(&c);
    /* without the zeroing, z gets a gradient: the test above can fail */
    struct gptneox_hook h3 = {HOOK_ATTN_Z, 0, gcache_fn, &c};
    assert_int_equal(gptneox_backward(m, tape, d, &h3, 1, NULL, &e), 0);
    assert_true(max_abs(c.data[0], c.n[0]) > 0.0);
    gcache_free(&c);
    gptneox_tape_free(tape);
    gptneox_free(g);
    gptneox_free(g2);
    gptneox_free(m2);
    gptneox_free(m);
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
        cmocka_unit_test(test_act_golden),
        cmocka_unit_test(test_act_fd),
        cmocka_unit_test(test_backward_hooks_write),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
