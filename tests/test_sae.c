/*
 * test_sae - the sparse autoencoder module (workers/battery/sae.h).
 *
 *   adam golden   loss terms, gradients and two Adam steps of both trainers
 *                 against tests/reference/sae_ref.py (float64 PyTorch,
 *                 tests/golden/sae/adam_step.json): loss terms relative
 *                 1e-5; gradients |diff| <= 1e-5 * max(1, max |g|) per
 *                 tensor; parameters after each step |diff| <= 1e-5.
 *   toy recovery  "Toy Models of Superposition"-style data: 64 sparse
 *                 features (each on with probability 0.05, magnitude in
 *                 [0.5, 1.5)) along random unit directions in 32 dimensions;
 *                 TopK (k 4) and ReLU (L1 2) dictionaries of 128 latents
 *                 must each have a decoder row with cosine >= 0.9 for at
 *                 least 90% of the planted directions (the fraction is
 *                 printed).
 *   determinism   the same seed gives bit-identical dictionaries, another
 *                 seed a different one.
 *   folding       a dictionary trained on x * s and folded (biases) computes
 *                 xhat / s and z / s on raw x (relative 1e-5); SAELens's
 *                 fold (W_enc * s, W_dec / s, b_dec / s) computes z and
 *                 xhat / s, for TopK, ReLU and JumpReLU, and unfolds back.
 *   jumprelu      the activation (pre > threshold strictly, and > 0),
 *                 apply_b_dec 0, the trainer's refusal.
 * (The files are tests/test_sae_file.c's.)
 *   bad input     NaN activations: ERR_NUMERIC from the scale and the trainer.
 */
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/rng.h"
#include "workers/battery/sae.h"
#include "workers/model/safetensors.h"

/* ---- helpers ---- */

static void load_floats(json_t *a, float *dst, size_t n)
{
    /* a: a list, or a list of lists, of n numbers in row-major order */
    size_t k = 0;
    for (size_t i = 0; i < json_array_size(a); i++) {
        json_t *v = json_array_get(a, i);
        if (json_is_array(v))
            for (size_t j = 0; j < json_array_size(v); j++)
                dst[k++] = (float)json_number_value(json_array_get(v, j));
        else
            dst[k++] = (float)json_number_value(v);
    }
    assert_int_equal(k, n);
}

static double max_abs_diff_json(json_t *a, const float *got, size_t n, double *maxref)
{
    float *want = malloc(n * sizeof *want);
    load_floats(a, want, n);
    double md = 0.0, mr = 0.0;
    for (size_t i = 0; i < n; i++) {
        md = fmax(md, fabs((double)got[i] - want[i]));
        mr = fmax(mr, fabs((double)want[i]));
    }
    free(want);
    if (maxref)
        *maxref = mr;
    return md;
}

static void set_params(struct sae *s, json_t *p)
{
    const size_t C = (size_t)s->d_in, S = (size_t)s->d_sae;
    load_floats(json_array_get(p, 0), s->W_enc, C * S);
    load_floats(json_array_get(p, 1), s->W_dec, S * C);
    load_floats(json_array_get(p, 2), s->b_enc, S);
    load_floats(json_array_get(p, 3), s->b_dec, C);
}

static void check_params(const struct sae *s, json_t *p, const char *what)
{
    const size_t C = (size_t)s->d_in, S = (size_t)s->d_sae;
    const float *t[4] = {s->W_enc, s->W_dec, s->b_enc, s->b_dec};
    const size_t n[4] = {C * S, S * C, S, C};
    static const char *const name[4] = {"W_enc", "W_dec", "b_enc", "b_dec"};
    for (int i = 0; i < 4; i++) {
        double md = max_abs_diff_json(json_array_get(p, (size_t)i), t[i], n[i], NULL);
        printf("  %s %s maxdiff %.3g\n", what, name[i], md);
        if (!(md <= 1e-5))
            fail_msg("%s %s: max |diff| %g > 1e-5", what, name[i], md);
    }
}

/* ---- the torch reference ---- */

static void test_adam_golden(void **state)
{
    (void)state;
    json_error_t je;
    json_t *doc = json_load_file("tests/golden/sae/adam_step.json", 0, &je);
    if (!doc)
        fail_msg("tests/golden/sae/adam_step.json: %s", je.text);
    const int C = (int)json_integer_value(json_object_get(doc, "d_in"));
    const int S = (int)json_integer_value(json_object_get(doc, "d_sae"));
    const int N = (int)json_integer_value(json_object_get(doc, "n"));
    unsigned char dead[64] = {0};
    json_t *dl = json_object_get(doc, "dead");
    for (size_t i = 0; i < json_array_size(dl); i++)
        dead[json_integer_value(json_array_get(dl, i))] = 1;
    json_t *cases = json_object_get(doc, "cases");
    assert_int_equal(json_array_size(cases), 2);
    for (size_t ci = 0; ci < json_array_size(cases); ci++) {
        json_t *cs = json_array_get(cases, ci);
        const char *arch = json_string_value(json_object_get(cs, "arch"));
        enum sae_arch a = strcmp(arch, "topk") == 0 ? SAE_TOPK : SAE_RELU;
        printf("case %s\n", arch);
        struct sae *s = NULL;
        struct err e;
        assert_int_equal(sae_create(&s, a, C, S, (int)json_integer_value(json_object_get(doc, "k")),
                                    &e), 0);
        set_params(s, json_object_get(cs, "start"));
        struct sae_train_config tc;
        sae_train_config_default(&tc, a);
        tc.lr = json_number_value(json_object_get(doc, "lr"));
        tc.beta1 = json_number_value(json_object_get(doc, "beta1"));
        tc.beta2 = json_number_value(json_object_get(doc, "beta2"));
        tc.eps = json_number_value(json_object_get(doc, "eps"));
        tc.k_aux = (int)json_integer_value(json_object_get(doc, "k_aux"));
        tc.aux_coeff = a == SAE_TOPK ? json_number_value(json_object_get(doc, "aux_coeff")) : 0;
        tc.l1_coeff = a == SAE_RELU ? json_number_value(json_object_get(doc, "l1_coeff")) : 0;
        tc.batch = N;
        struct sae_trainer *tr = NULL;
        assert_int_equal(sae_trainer_create(&tr, s, &tc, &e), 0);
        float *x = malloc((size_t)N * C * sizeof *x);
        for (int step = 0; step < 2; step++) {
            load_floats(json_array_get(json_object_get(cs, "x"), (size_t)step), x, (size_t)N * C);
            struct sae_step_stats st;
            if (sae_trainer_grad(tr, x, N, dead, &st, &e) < 0)
                fail_msg("%s", err_str(&e));
            if (step == 0) {
                json_t *terms = json_object_get(cs, "terms");
                const char *tn[5] = {"loss", "mse", "aux", "l1", "l0"};
                double got[5] = {st.loss, st.mse, st.aux, st.l1, st.l0};
                for (int i = 0; i < 5; i++) {
                    double want = json_number_value(json_object_get(terms, tn[i]));
                    printf("  %s %.9g ref %.9g\n", tn[i], got[i], want);
                    if (!(fabs(got[i] - want) <= 1e-5 * fmax(1.0, fabs(want))))
                        fail_msg("%s %s: %.9g vs reference %.9g", arch, tn[i], got[i], want);
                }
                const struct sae_grads *g = sae_trainer_grads(tr);
                const float *gt[4] = {g->W_enc, g->W_dec, g->b_enc, g->b_dec};
                const size_t n[4] = {(size_t)C * S, (size_t)S * C, (size_t)S, (size_t)C};
                for (int i = 0; i < 4; i++) {
                    double mr;
                    double md = max_abs_diff_json(json_array_get(json_object_get(cs, "grads"),
                                                                 (size_t)i), gt[i], n[i], &mr);
                    printf("  grad %d maxdiff %.3g (max |g| %.3g)\n", i, md, mr);
                    if (!(md <= 1e-5 * fmax(1.0, mr)))
                        fail_msg("%s gradient %d: max |diff| %g", arch, i, md);
                }
            }
            sae_trainer_apply(tr);
            check_params(s, json_object_get(cs, step == 0 ? "after1" : "after2"),
                         step == 0 ? "step1" : "step2");
        }
        free(x);
        sae_trainer_free(tr);
        sae_free(s);
    }
    json_decref(doc);
}

/* ---- toy models of superposition ---- */

static double uniform01(uint64_t *st)
{
    return (rng_next(st) >> 11) / 9007199254740992.0;
}

static double gauss(uint64_t *st)
{
    double u1 = ((rng_next(st) >> 11) + 1.0) / 9007199254740993.0, u2 = uniform01(st);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

#define TOY_D 32
#define TOY_F 64
#define TOY_N 16384

/* F (TOY_F, TOY_D) unit directions and x (TOY_N, TOY_D) sparse sums of them,
 * already normalised (sae_norm_scale). */
static void toy_data(float *F, float *x, uint64_t seed)
{
    uint64_t st = seed;
    for (int i = 0; i < TOY_F; i++) {
        double ss = 0.0;
        for (int j = 0; j < TOY_D; j++) {
            F[i * TOY_D + j] = (float)gauss(&st);
            ss += (double)F[i * TOY_D + j] * F[i * TOY_D + j];
        }
        for (int j = 0; j < TOY_D; j++)
            F[i * TOY_D + j] = (float)(F[i * TOY_D + j] / sqrt(ss));
    }
    memset(x, 0, sizeof(float) * TOY_N * TOY_D);
    for (size_t t = 0; t < TOY_N; t++)
        for (int i = 0; i < TOY_F; i++)
            if (uniform01(&st) < 0.05) {
                double a = 0.5 + uniform01(&st);
                for (int j = 0; j < TOY_D; j++)
                    x[t * TOY_D + j] += (float)(a * F[i * TOY_D + j]);
            }
    double s;
    struct err e;
    assert_int_equal(sae_norm_scale(x, TOY_N, TOY_D, &s, &e), 0);
    for (size_t i = 0; i < (size_t)TOY_N * TOY_D; i++)
        x[i] = (float)(x[i] * s);
}

static struct sae *toy_train(enum sae_arch a, const float *x, uint64_t seed)
{
    struct sae *s = NULL;
    struct err e;
    assert_int_equal(sae_create(&s, a, TOY_D, 128, 4, &e), 0);
    struct sae_train_config tc;
    sae_train_config_default(&tc, a);
    tc.lr = 2e-3;
    tc.l1_coeff = a == SAE_RELU ? 2.0 : 0.0;
    tc.batch = 256;
    tc.dead_window = 2048;
    tc.seed = seed;
    sae_init_cold(s, x, TOY_N, seed);
    struct sae_trainer *tr = NULL;
    assert_int_equal(sae_trainer_create(&tr, s, &tc, &e), 0);
    struct sae_step_stats st;
    if (sae_train(tr, x, TOY_N, 300000, &st, &e) < 0)
        fail_msg("%s", err_str(&e));
    printf("  %s: loss %.4f mse %.4f l0 %.2f\n", sae_arch_name(a), st.loss, st.mse, st.l0);
    sae_trainer_free(tr);
    return s;
}

static double recovered(const struct sae *s, const float *F)
{
    int rec = 0;
    for (int i = 0; i < TOY_F; i++) {
        double best = -2.0;
        for (int l = 0; l < s->d_sae; l++) {
            double dot = 0.0, nn = 0.0;
            for (int j = 0; j < TOY_D; j++) {
                dot += (double)F[i * TOY_D + j] * s->W_dec[(size_t)l * TOY_D + j];
                nn += (double)s->W_dec[(size_t)l * TOY_D + j] * s->W_dec[(size_t)l * TOY_D + j];
            }
            best = fmax(best, dot / sqrt(nn));
        }
        rec += best >= 0.9;
    }
    return (double)rec / TOY_F;
}

static void toy_case(enum sae_arch a)
{
    float *F = malloc(sizeof(float) * TOY_F * TOY_D), *x = malloc(sizeof(float) * TOY_N * TOY_D);
    toy_data(F, x, 42);
    struct sae *s = toy_train(a, x, 7);
    double r = recovered(s, F);
    printf("toy superposition (%d features in %d dims), %s: %.3f of the planted directions "
           "recovered with cosine >= 0.9\n",
           TOY_F, TOY_D, sae_arch_name(a), r);
    if (!(r >= 0.9))
        fail_msg("%s recovered %.3f < 0.9 of the planted directions", sae_arch_name(a), r);
    /* a dictionary that never trained recovers (almost) nothing: the check can fail */
    struct sae *c = NULL;
    struct err e;
    assert_int_equal(sae_create(&c, a, TOY_D, 128, 4, &e), 0);
    sae_init_cold(c, x, TOY_N, 7);
    assert_true(recovered(c, F) < 0.2);
    sae_free(c);
    sae_free(s);
    free(F);
    free(x);
}

static void test_toy_topk(void **state)
{
    (void)state;
    toy_case(SAE_TOPK);
}

static void test_toy_relu(void **state)
{
    (void)state;
    toy_case(SAE_RELU);
}

/* ---- determinism, folding, TopK ties ---- */

static void test_determinism(void **state)
{
    (void)state;
    float *F = malloc(sizeof(float) * TOY_F * TOY_D), *x = malloc(sizeof(float) * TOY_N * TOY_D);
    toy_data(F, x, 3);
    for (int a = 0; a < SAE_ARCH_COUNT; a++) {
        if (a == SAE_JUMPRELU) /* not trained */
            continue;
        struct sae *s[3] = {NULL, NULL, NULL};
        uint64_t seeds[3] = {11, 11, 12};
        for (int r = 0; r < 3; r++) {
            struct err e;
            assert_int_equal(sae_create(&s[r], (enum sae_arch)a, TOY_D, 64, 4, &e), 0);
            struct sae_train_config tc;
            sae_train_config_default(&tc, (enum sae_arch)a);
            tc.batch = 128;
            tc.seed = seeds[r];
            sae_init_cold(s[r], x, TOY_N, seeds[r]);
            struct sae_trainer *tr = NULL;
            assert_int_equal(sae_trainer_create(&tr, s[r], &tc, &e), 0);
            assert_int_equal(sae_train(tr, x, TOY_N, 5000, NULL, &e), 0);
            assert_int_equal(sae_trainer_tokens(tr), 5000);
            sae_trainer_free(tr);
        }
        size_t nb = ((size_t)2 * TOY_D * 64 + 64 + TOY_D) * sizeof(float);
        assert_memory_equal(s[0]->block, s[1]->block, nb);
        assert_memory_not_equal(s[0]->block, s[2]->block, nb);
        for (int r = 0; r < 3; r++)
            sae_free(s[r]);
    }
    free(F);
    free(x);
}

static void test_fold_scaling(void **state)
{
    (void)state;
    const int C = 8, S = 16, n = 5;
    struct err e;
    for (int a = 0; a < SAE_ARCH_COUNT; a++) {
        if (a == SAE_JUMPRELU) /* not positively homogeneous: its threshold is absolute */
            continue;
        struct sae *s = NULL;
        assert_int_equal(sae_create(&s, (enum sae_arch)a, C, S, 3, &e), 0);
        uint64_t st = 9;
        float x[5 * 8], xs[5 * 8], xh1[5 * 8], xh2[5 * 8], z1[5 * 16], z2[5 * 16];
        for (int i = 0; i < n * C; i++)
            x[i] = rng_symmetric(&st) * 3.0f;
        sae_init_cold(s, x, 0, 4);
        for (int i = 0; i < S; i++)
            s->b_enc[i] = rng_symmetric(&st) * 0.3f;
        for (int j = 0; j < C; j++)
            s->b_dec[j] = rng_symmetric(&st);
        const double sc = 2.7;
        for (int i = 0; i < n * C; i++)
            xs[i] = (float)(x[i] * sc);
        assert_int_equal(sae_reconstruct(s, xh1, z1, xs, (size_t)n, &e), 0);
        sae_fold_scaling(s, sc);
        assert_int_equal(sae_reconstruct(s, xh2, z2, x, (size_t)n, &e), 0);
        for (int i = 0; i < n * C; i++)
            assert_true(fabs(xh2[i] - xh1[i] / sc) <= 1e-5 * fmax(1.0, fabs(xh1[i] / sc)));
        for (int i = 0; i < n * S; i++)
            assert_true(fabs(z2[i] - z1[i] / sc) <= 1e-5 * fmax(1.0, fabs(z1[i] / sc)));
        sae_free(s);
    }
}

/* SAELens's fold: the folded dictionary's codes of x are the unfolded
 * one's of x * s, its reconstruction that of x * s divided by s; the
 * unfold gives the weights back (relative 1e-6). */
static void test_fold_saelens(void **state)
{
    (void)state;
    const int C = 8, S = 16, n = 6;
    struct err e;
    for (int a = 0; a < SAE_ARCH_COUNT; a++) {
        struct sae *s = NULL;
        assert_int_equal(sae_create(&s, (enum sae_arch)a, C, S, 3, &e), 0);
        uint64_t st = 19;
        float x[6 * 8], xs[6 * 8], xh1[6 * 8], xh2[6 * 8], z1[6 * 16], z2[6 * 16];
        for (int i = 0; i < n * C; i++)
            x[i] = rng_symmetric(&st) * 3.0f;
        sae_init_cold(s, x, 0, 4);
        for (int i = 0; i < S; i++)
            s->b_enc[i] = rng_symmetric(&st) * 0.3f;
        for (int j = 0; j < C; j++)
            s->b_dec[j] = rng_symmetric(&st);
        if (s->threshold)
            for (int i = 0; i < S; i++)
                s->threshold[i] = fabsf(rng_symmetric(&st)) * 0.5f;
        struct sae *orig = sae_clone(s);
        assert_non_null(orig);
        const double sc = 2.7;
        for (int i = 0; i < n * C; i++)
            xs[i] = (float)(x[i] * sc);
        assert_int_equal(sae_reconstruct(s, xh1, z1, xs, (size_t)n, &e), 0);
        sae_fold_saelens(s, sc);
        assert_int_equal(sae_reconstruct(s, xh2, z2, x, (size_t)n, &e), 0);
        int active = 0;
        for (int i = 0; i < n * S; i++) {
            assert_true(fabs(z2[i] - z1[i]) <= 1e-5 * fmax(1.0, fabs(z1[i])));
            active += z1[i] > 0;
        }
        assert_true(active > 0);
        for (int i = 0; i < n * C; i++)
            assert_true(fabs(xh2[i] - xh1[i] / sc) <= 1e-5 * fmax(1.0, fabs(xh1[i] / sc)));
        for (int i = 0; i < S; i++)
            assert_true(s->b_enc[i] == orig->b_enc[i]); /* b_enc and thresholds untouched */
        if (s->threshold)
            assert_memory_equal(s->threshold, orig->threshold, (size_t)S * sizeof(float));
        sae_unfold_saelens(s, sc);
        for (size_t i = 0; i < (size_t)2 * C * S + S + C; i++)
            assert_true(fabsf(s->block[i] - orig->block[i]) <= 1e-6f * fmaxf(1.0f, fabsf(orig->block[i])));
        sae_free(orig);
        sae_free(s);
    }
}

/* JumpReLU keeps pre where pre > threshold (strictly) and pre > 0;
 * apply_b_dec 0 encodes x itself; neither is trained. */
static void test_jumprelu(void **state)
{
    (void)state;
    struct sae *s = NULL;
    struct err e;
    assert_int_equal(sae_create(&s, SAE_JUMPRELU, 2, 5, 0, &e), 0);
    assert_non_null(s->threshold);
    const float th[5] = {0.5f, 0.5f, -1.0f, 0.0f, 2.0f};
    memcpy(s->threshold, th, sizeof th);
    const float pre[5] = {0.5f, 0.75f, -0.5f, 0.25f, 1.0f};
    float z[5];
    sae_activate(s, z, pre, 1);
    const float want[5] = {0.0f, 0.75f, 0.0f, 0.25f, 0.0f};
    assert_memory_equal(z, want, sizeof want);
    struct sae *c = sae_clone(s);
    assert_non_null(c);
    assert_memory_equal(c->threshold, th, sizeof th);
    sae_free(c);
    /* apply_b_dec */
    for (int j = 0; j < 2; j++)
        s->b_dec[j] = 10.0f;
    for (int i = 0; i < 5; i++)
        s->W_enc[i] = 1.0f; /* row 0 of W_enc: x_0 feeds every latent */
    float x[2] = {3.0f, 0.0f}, p[5], xc[2];
    sae_encode_pre(s, p, xc, x, 1);
    assert_true(p[0] == -7.0f);
    s->apply_b_dec = 0;
    sae_encode_pre(s, p, xc, x, 1);
    assert_true(p[0] == 3.0f);
    struct sae_train_config tc;
    sae_train_config_default(&tc, SAE_RELU);
    struct sae_trainer *tr = NULL;
    assert_int_equal(sae_trainer_create(&tr, s, &tc, &e), ERR_UNSUPPORTED);
    assert_null(tr);
    sae_free(s);
}

static void test_topk_ties(void **state)
{
    (void)state;
    struct sae *s = NULL;
    struct err e;
    assert_int_equal(sae_create(&s, SAE_TOPK, 2, 6, 2, &e), 0);
    float pre[6] = {1.0f, 3.0f, 2.0f, 3.0f, 3.0f, -1.0f}, z[6];
    sae_activate(s, z, pre, 1);
    const float want[6] = {0, 3, 0, 3, 0, 0}; /* ties go to the lower index */
    assert_memory_equal(z, want, sizeof want);
    float neg[6] = {-1, -2, -3, -4, -5, -6};
    sae_activate(s, z, neg, 1);
    for (int i = 0; i < 6; i++)
        assert_true(z[i] == 0.0f); /* ReLU after TopK */
    sae_free(s);
}

/* ---- bad input ---- */

static void test_nan_input(void **state)
{
    (void)state;
    struct err e;
    float x[4 * 6];
    for (int i = 0; i < 24; i++)
        x[i] = (float)i * 0.1f;
    double sc;
    assert_int_equal(sae_norm_scale(x, 4, 6, &sc, &e), 0);
    x[13] = NAN;
    assert_int_equal(sae_norm_scale(x, 4, 6, &sc, &e), ERR_NUMERIC);
    assert_non_null(strstr(err_str(&e), "row 2"));
    float zero[12] = {0};
    assert_int_equal(sae_norm_scale(zero, 2, 6, &sc, &e), ERR_NUMERIC);
    struct sae *s = NULL;
    assert_int_equal(sae_create(&s, SAE_TOPK, 6, 12, 3, &e), 0);
    sae_init_cold(s, NULL, 0, 1);
    struct sae_train_config tc;
    sae_train_config_default(&tc, SAE_TOPK);
    tc.batch = 4;
    struct sae_trainer *tr = NULL;
    assert_int_equal(sae_trainer_create(&tr, s, &tc, &e), 0);
    struct sae_step_stats st;
    assert_int_equal(sae_trainer_step(tr, x, 4, &st, &e), ERR_NUMERIC);
    assert_non_null(strstr(err_str(&e), "not finite"));
    assert_int_equal(sae_trainer_step(tr, x, 5, &st, &e), ERR_INVALID);
    sae_trainer_free(tr);
    tc.lr = -1;
    assert_int_equal(sae_trainer_create(&tr, s, &tc, &e), ERR_INVALID);
    assert_null(tr);
    sae_free(s);
    assert_int_equal(sae_create(&s, SAE_TOPK, 6, 12, 13, &e), ERR_INVALID); /* k > d_sae */
    assert_null(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adam_golden),
        cmocka_unit_test(test_toy_topk),
        cmocka_unit_test(test_toy_relu),
        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_fold_scaling),
        cmocka_unit_test(test_topk_ties),
        cmocka_unit_test(test_fold_saelens),
        cmocka_unit_test(test_jumprelu),
        cmocka_unit_test(test_nan_input),
    };
    return cmocka_run_group_tests_name("sae", tests, NULL, NULL);
}
