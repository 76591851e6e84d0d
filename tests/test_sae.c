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
 *   folding       a dictionary trained on x * s and folded computes xhat / s
 *                 and z / s on raw x (relative 1e-5).
 *   files         sae_save's files read back with the project's safetensors
 *                 reader: tensor names, dtypes, shapes; cfg.json keys and
 *                 values against tests/golden/sae/saelens_cfg.json (taken
 *                 from SAELens's loader); sae_load gives back the same bits;
 *                 malformed files give errors naming the problem.
 *   bad input     NaN activations: ERR_NUMERIC from the scale and the trainer.
 */
#include <jansson.h>
#include <glob.h>
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

/* ---- files ---- */

static char tmpdir[64];

static void test_files(void **state)
{
    (void)state;
    struct err e;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_sae-XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    json_error_t je;
    json_t *ref = json_load_file("tests/golden/sae/saelens_cfg.json", 0, &je);
    assert_non_null(ref);
    for (int a = 0; a < SAE_ARCH_COUNT; a++) {
        const int C = 12, S = 40;
        struct sae *s = NULL;
        assert_int_equal(sae_create(&s, (enum sae_arch)a, C, S, 5, &e), 0);
        uint64_t st = 5;
        for (size_t i = 0; i < (size_t)2 * C * S + S + C; i++)
            s->block[i] = rng_symmetric(&st);
        float logsp[40];
        for (int i = 0; i < S; i++)
            logsp[i] = -(float)i / 10.0f;
        struct sae_meta meta = {.hook_name = "blocks.2.hook_resid_post", .hook_layer = 2,
                                .context_size = 128, .dataset_path = "eval.u16",
                                .norm_scaling_factor = 1.25, .train_tokens = 4096, .seed = 9};
        char dir[128];
        snprintf(dir, sizeof dir, "%s/%s", tmpdir, sae_arch_name((enum sae_arch)a));
        assert_int_equal(mkdir(dir, 0755), 0);
        if (sae_save(s, dir, &meta, logsp, &e) < 0)
            fail_msg("%s", err_str(&e));
        /* the weights, through the project's own reader */
        char path[256];
        snprintf(path, sizeof path, "%s/%s", dir,
                 json_string_value(json_object_get(ref, "weights_file")));
        struct st_file *f = NULL;
        if (st_open(&f, path, &e) < 0)
            fail_msg("%s", err_str(&e));
        assert_int_equal(st_count(f), 4);
        json_t *tens = json_object_get(ref, "tensors");
        const char *tname;
        json_t *dims;
        const float *src[4] = {s->W_enc, s->W_dec, s->b_enc, s->b_dec};
        int ti = 0;
        json_object_foreach(tens, tname, dims) {
            const struct st_tensor *t = st_find(f, tname);
            if (!t)
                fail_msg("tensor %s missing", tname);
            assert_string_equal(st_dtype_name(t->dtype),
                                json_string_value(json_object_get(ref, "tensor_dtype")));
            assert_int_equal(t->ndim, (int)json_array_size(dims));
            for (int d = 0; d < t->ndim; d++) {
                const char *dn = json_string_value(json_array_get(dims, (size_t)d));
                assert_int_equal(t->shape[d], strcmp(dn, "d_in") == 0 ? C : S);
            }
            assert_memory_equal(t->data, src[ti], t->nbytes);
            ti++;
        }
        assert_string_equal(st_metadata(f, "format"), "pt");
        st_free(f);
        snprintf(path, sizeof path, "%s/%s", dir,
                 json_string_value(json_object_get(ref, "sparsity_file")));
        assert_int_equal(st_open(&f, path, &e), 0);
        const struct st_tensor *sp =
            st_find(f, json_string_value(json_object_get(ref, "sparsity_tensor")));
        assert_non_null(sp);
        assert_int_equal(sp->ndim, 1);
        assert_int_equal(sp->shape[0], S);
        assert_memory_equal(sp->data, logsp, sizeof logsp);
        st_free(f);
        /* cfg.json against the key list of SAELens's loader */
        snprintf(path, sizeof path, "%s/%s", dir, json_string_value(json_object_get(ref, "cfg_file")));
        json_t *cfg = json_load_file(path, 0, &je);
        assert_non_null(cfg);
        json_t *k;
        size_t i;
        json_array_foreach(json_object_get(ref, "required_keys"), i, k) {
            if (!json_object_get(cfg, json_string_value(k)))
                fail_msg("cfg.json lacks required key %s", json_string_value(k));
        }
        json_array_foreach(json_object_get(ref, "absent_keys"), i, k) {
            if (json_object_get(cfg, json_string_value(k)))
                fail_msg("cfg.json has %s, which would make SAELens 6 skip the pre-6.0 path",
                         json_string_value(k));
        }
        const char *arch = json_string_value(json_object_get(cfg, "architecture"));
        json_t *act = json_object_get(json_object_get(ref, "architectures"), arch);
        assert_non_null(act);
        assert_string_equal(json_string_value(json_object_get(cfg, "activation_fn_str")),
                            json_string_value(act));
        if (a == SAE_TOPK)
            assert_int_equal(json_integer_value(json_object_get(
                                 json_object_get(cfg, "activation_fn_kwargs"), "k")),
                             5);
        assert_int_equal(json_integer_value(json_object_get(cfg, "d_in")), C);
        assert_int_equal(json_integer_value(json_object_get(cfg, "d_sae")), S);
        assert_int_equal(json_integer_value(json_object_get(cfg, "hook_layer")), 2);
        assert_true(json_is_null(json_object_get(cfg, "hook_head_index")));
        assert_string_equal(json_string_value(json_object_get(cfg, "hook_name")),
                            "blocks.2.hook_resid_post");
        assert_string_equal(json_string_value(json_object_get(cfg, "dtype")),
                            json_string_value(json_object_get(ref, "dtype")));
        assert_string_equal(json_string_value(json_object_get(cfg, "normalize_activations")),
                            "none");
        assert_true(json_is_true(json_object_get(cfg, "apply_b_dec_to_input")));
        assert_true(json_is_false(json_object_get(cfg, "finetuning_scaling_factor")));
        assert_true(json_real_value(json_object_get(json_object_get(cfg, "ckptd"),
                                                    "norm_scaling_factor")) == 1.25);
        json_decref(cfg);
        /* sae_load gives back the same bits */
        struct sae *back = NULL;
        int layer = -5;
        if (sae_load(&back, dir, &layer, &e) < 0)
            fail_msg("%s", err_str(&e));
        assert_int_equal(layer, 2);
        assert_int_equal(back->arch, a);
        assert_int_equal(back->k, s->k);
        assert_memory_equal(back->block, s->block, ((size_t)2 * C * S + S + C) * sizeof(float));
        sae_free(back);
        /* no temporary file is left */
        snprintf(path, sizeof path, "%s/cfg.json.tmp", dir);
        assert_int_not_equal(access(path, F_OK), 0);
        snprintf(path, sizeof path, "%s/*.tmp*", dir); /* common/atomic_file.h's names */
        glob_t g;
        assert_int_equal(glob(path, 0, NULL, &g), GLOB_NOMATCH);
        globfree(&g);
        sae_free(s);
    }
    json_decref(ref);
}

/* Write text to DIR/cfg.json. */
static void put_cfg(const char *dir, const char *text)
{
    char path[256];
    snprintf(path, sizeof path, "%s/cfg.json", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void expect_load_error(const char *dir, int code, const char *needle)
{
    struct sae *s = NULL;
    struct err e;
    int rc = sae_load(&s, dir, NULL, &e);
    assert_null(s);
    if (rc != code || !strstr(err_str(&e), needle))
        fail_msg("sae_load: got %d '%s', expected %d with '%s'", rc, err_str(&e), code, needle);
}

static void test_load_errors(void **state)
{
    (void)state;
    char dir[128];
    snprintf(dir, sizeof dir, "%s/topk", tmpdir); /* written by test_files */
    char bad[128];
    snprintf(bad, sizeof bad, "%s/bad", tmpdir);
    assert_int_equal(mkdir(bad, 0755), 0);
    expect_load_error(bad, ERR_NOTFOUND, "cfg.json");
    put_cfg(bad, "{\"architecture\": \"topk\", \"activation_fn_str\": \"topk\", \"d_in\": 12, "
                 "\"d_sae\": 40, \"apply_b_dec_to_input\": true}");
    expect_load_error(bad, ERR_FORMAT, "activation_fn_kwargs.k");
    put_cfg(bad, "{\"architecture\": \"jumprelu\", \"activation_fn_str\": \"relu\"}");
    expect_load_error(bad, ERR_UNSUPPORTED, "jumprelu");
    put_cfg(bad, "{\"architecture\": \"standard\", \"activation_fn_str\": \"relu\", \"d_in\": 12,"
                 " \"d_sae\": 40, \"apply_b_dec_to_input\": true, "
                 "\"normalize_activations\": \"expected_average_only_in\"}");
    expect_load_error(bad, ERR_UNSUPPORTED, "normalize_activations");
    put_cfg(bad, "not json");
    expect_load_error(bad, ERR_FORMAT, "not JSON");
    /* weights of other shapes than cfg.json says */
    put_cfg(bad, "{\"architecture\": \"topk\", \"activation_fn_str\": \"topk\", "
                 "\"activation_fn_kwargs\": {\"k\": 5}, \"d_in\": 12, \"d_sae\": 41, "
                 "\"apply_b_dec_to_input\": true}");
    char cmd[512];
    snprintf(cmd, sizeof cmd, "cp %s/sae_weights.safetensors %s/", dir, bad);
    assert_int_equal(system(cmd), 0);
    expect_load_error(bad, ERR_MISMATCH, "W_enc");
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

static int teardown(void **state)
{
    (void)state;
    if (tmpdir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
        if (system(cmd) != 0)
            return -1;
    }
    return 0;
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
        cmocka_unit_test(test_files),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_nan_input),
    };
    return cmocka_run_group_tests_name("sae", tests, NULL, teardown);
}
