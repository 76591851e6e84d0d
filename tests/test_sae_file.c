/*
 * test_sae_file - SAE dictionaries on disk (workers/battery/sae_file.h).
 *
 *   layout      sae_save's files for each architecture (topk, standard,
 *               jumprelu) against tests/golden/sae/saelens_cfg.json, the
 *               key list taken from SAELens 6.18.0: cfg.json's keys in
 *               SAEConfig.to_dict()'s order, the metadata keys,
 *               sae_lens_version >= 6.0.0rc0 (else SAELens reads the file
 *               as pre-6.0), model_from_pretrained_kwargs = the step as
 *               checkpoint_value (or the revision) plus the five
 *               no-processing flags false, metadata.ckptd's run, step,
 *               item, item_version, train_tokens, seed, norm_scaling_factor;
 *               tensor names, F32, shapes, bytes; the sparsity file; no
 *               temporary file left; sae_load gives back the same bits and
 *               format "saelens".
 *   versions    sae_version_is_6 on tests/golden/sae/pep440.json, answers
 *               from the `packaging` library SAELens uses
 *               (tests/reference/sae_version_ref.py), invalid ones included.
 *   cases       every tests/cases/sae/<case>/ (tests/cases/make_sae_cases.py):
 *               valid SAELens 6 (each architecture, F32/F16/BF16/F64, cfg
 *               dtype casts, default k, activation_scaler.json, hook_z),
 *               pre-6.0 and sparsify dictionaries report the expected
 *               format, architecture, sizes, hook and dtype; malformed
 *               ones fail with the expected code and message, *out NULL.
 *   values      a cfg dtype of float16 rounds F32 tensors as SAELens's cast
 *               does; sparsify's encoder.weight is transposed into W_enc
 *               and W_dec kept as stored; activation_scaler.json and
 *               rescale_acts_by_decoder_norm fold into the weights so the
 *               codes equal the unfolded computation's (1e-5).
 *   hooks       sae_sparsify_hook's names.
 */
#include <dirent.h>
#include <glob.h>
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

#include "tests/lib/test_files.h"
#include "common/rng.h"
#include "workers/battery/sae.h"
#include "workers/battery/sae_file.h"
#include "workers/model/safetensors.h"
#include "workers/model/tensor.h"

#define CASES_DIR "tests/cases/sae"

static char tmpdir[64];

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_sae_file-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static int code_by_name(const char *name)
{
    for (int c = 0; c > -ERR_CODE_COUNT; c--)
        if (strcmp(err_code_name(c), name) == 0)
            return c;
    return 1;
}

static struct sae *random_sae(enum sae_arch a, int C, int S, int k, uint64_t seed)
{
    struct sae *s = NULL;
    struct err e;
    if (sae_create(&s, a, C, S, k, &e) < 0)
        fail_msg("%s", err_str(&e));
    uint64_t st = seed;
    size_t n = (size_t)2 * C * S + S + C + (a == SAE_JUMPRELU ? (size_t)S : 0);
    for (size_t i = 0; i < n; i++)
        s->block[i] = rng_symmetric(&st);
    if (s->threshold)
        for (int i = 0; i < S; i++)
            s->threshold[i] = fabsf(s->threshold[i]) * 0.1f;
    return s;
}

/* ---- layout ---- */

static void test_layout(void **state)
{
    (void)state;
    struct err e;
    json_error_t je;
    json_t *ref = json_load_file("tests/golden/sae/saelens_cfg.json", 0, &je);
    assert_non_null(ref);
    for (int a = 0; a < SAE_ARCH_COUNT; a++) {
        const int C = 12, S = 40;
        const char *aname = sae_arch_name((enum sae_arch)a);
        struct sae *s = random_sae((enum sae_arch)a, C, S, 5, 5 + (uint64_t)a);
        float logsp[40];
        for (int i = 0; i < S; i++)
            logsp[i] = -(float)i / 10.0f;
        struct sae_meta meta = {.model_name = "pythia-70m-deduped",
                                .hook_name = "blocks.2.hook_resid_post",
                                .context_size = 128,
                                .dataset_path = "eval.u16",
                                .step = a == SAE_JUMPRELU ? -1 : 1000,
                                .revision = a == SAE_JUMPRELU ? "main" : NULL,
                                .run = "r70m",
                                .item = "sae",
                                .item_version = 1,
                                .norm_scaling_factor = 1.25,
                                .train_tokens = 4096,
                                .seed = 9,
                                .warm_start = 1};
        char *dir = xasprintf("%s/%s", tmpdir, aname);
        assert_int_equal(mkdir(dir, 0755), 0);
        if (sae_save(s, dir, &meta, logsp, &e) < 0)
            fail_msg("%s", err_str(&e));
        /* the weights, through the project's own reader */
        char *path = xasprintf("%s/%s", dir, json_string_value(json_object_get(ref, "weights_file")));
        struct st_file *f = NULL;
        if (st_open(&f, path, &e) < 0)
            fail_msg("%s", err_str(&e));
        json_t *tens = json_object_get(json_object_get(ref, "tensors"), aname);
        assert_int_equal(st_count(f), json_object_size(tens));
        const char *tname;
        json_t *dims;
        json_object_foreach(tens, tname, dims) {
            const struct st_tensor *t = st_find(f, tname);
            if (!t)
                fail_msg("%s: tensor %s missing", aname, tname);
            assert_string_equal(st_dtype_name(t->dtype),
                                json_string_value(json_object_get(ref, "tensor_dtype")));
            assert_int_equal(t->ndim, (int)json_array_size(dims));
            for (int d = 0; d < t->ndim; d++) {
                const char *dn = json_string_value(json_array_get(dims, (size_t)d));
                assert_int_equal(t->shape[d], strcmp(dn, "d_in") == 0 ? C : S);
            }
            const float *src = strcmp(tname, "W_enc") == 0   ? s->W_enc
                               : strcmp(tname, "W_dec") == 0 ? s->W_dec
                               : strcmp(tname, "b_enc") == 0 ? s->b_enc
                               : strcmp(tname, "b_dec") == 0 ? s->b_dec
                                                             : s->threshold;
            assert_memory_equal(t->data, src, t->nbytes);
        }
        st_free(f);
        free(path);
        path = xasprintf("%s/%s", dir, json_string_value(json_object_get(ref, "sparsity_file")));
        assert_int_equal(st_open(&f, path, &e), 0);
        const struct st_tensor *sp =
            st_find(f, json_string_value(json_object_get(ref, "sparsity_tensor")));
        assert_non_null(sp);
        assert_int_equal(sp->shape[0], S);
        assert_memory_equal(sp->data, logsp, sizeof logsp);
        st_free(f);
        free(path);
        /* cfg.json: the keys in SAEConfig.to_dict()'s order */
        path = xasprintf("%s/%s", dir, json_string_value(json_object_get(ref, "cfg_file")));
        json_t *cfg = json_load_file(path, JSON_PRESERVE_ORDER, &je);
        assert_non_null(cfg);
        json_t *order = json_object_get(json_object_get(ref, "key_order"), aname);
        assert_int_equal(json_object_size(cfg), json_array_size(order));
        void *it = json_object_iter(cfg);
        for (size_t i = 0; i < json_array_size(order); i++, it = json_object_iter_next(cfg, it))
            assert_string_equal(json_object_iter_key(it), json_string_value(json_array_get(order, i)));
        assert_int_equal(json_integer_value(json_object_get(cfg, "d_in")), C);
        assert_int_equal(json_integer_value(json_object_get(cfg, "d_sae")), S);
        assert_string_equal(json_string_value(json_object_get(cfg, "architecture")), aname);
        assert_string_equal(json_string_value(json_object_get(cfg, "dtype")),
                            json_string_value(json_object_get(ref, "dtype")));
        assert_string_equal(json_string_value(json_object_get(cfg, "normalize_activations")), "none");
        assert_string_equal(json_string_value(json_object_get(cfg, "reshape_activations")), "none");
        assert_true(json_is_true(json_object_get(cfg, "apply_b_dec_to_input")));
        if (a == SAE_TOPK) {
            assert_int_equal(json_integer_value(json_object_get(cfg, "k")), 5);
            assert_true(json_is_false(json_object_get(cfg, "rescale_acts_by_decoder_norm")));
        }
        json_t *md = json_object_get(cfg, "metadata");
        size_t i;
        json_t *k;
        json_array_foreach(json_object_get(ref, "metadata_keys"), i, k) {
            if (!json_object_get(md, json_string_value(k)))
                fail_msg("metadata lacks %s", json_string_value(k));
        }
        int is6 = 0;
        assert_int_equal(sae_version_is_6(json_string_value(json_object_get(md, "sae_lens_version")),
                                          &is6, &e),
                         0);
        assert_int_equal(is6, 1);
        assert_null(json_object_get(cfg, "sae_lens_version")); /* top level: would be read first */
        assert_true(json_is_null(json_object_get(md, "sae_lens_training_version")));
        assert_string_equal(json_string_value(json_object_get(md, "model_name")), "pythia-70m-deduped");
        assert_string_equal(json_string_value(json_object_get(md, "model_class_name")),
                            json_string_value(json_object_get(ref, "model_class_name")));
        assert_string_equal(json_string_value(json_object_get(md, "hook_name")),
                            "blocks.2.hook_resid_post");
        assert_true(json_is_null(json_object_get(md, "hook_head_index")));
        assert_int_equal(json_integer_value(json_object_get(md, "context_size")), 128);
        assert_string_equal(json_string_value(json_object_get(md, "dataset_path")), "eval.u16");
        json_t *kw = json_object_get(md, "model_from_pretrained_kwargs");
        const char *flag;
        json_t *fv;
        json_object_foreach(json_object_get(ref, "no_processing_flags"), flag, fv) {
            json_t *got = json_object_get(kw, flag);
            if (!got || !json_equal(got, fv))
                fail_msg("model_from_pretrained_kwargs.%s missing or not false", flag);
        }
        if (a == SAE_JUMPRELU) {
            assert_string_equal(json_string_value(json_object_get(kw, "revision")), "main");
            assert_null(json_object_get(kw, "checkpoint_value"));
        } else {
            assert_int_equal(json_integer_value(json_object_get(kw, "checkpoint_value")), 1000);
            assert_null(json_object_get(kw, "revision"));
        }
        assert_int_equal(json_object_size(kw), 6);
        json_t *ck = json_object_get(md, "ckptd");
        assert_string_equal(json_string_value(json_object_get(ck, "run")), "r70m");
        assert_string_equal(json_string_value(json_object_get(ck, "item")), "sae");
        assert_int_equal(json_integer_value(json_object_get(ck, "item_version")), 1);
        assert_int_equal(json_integer_value(json_object_get(ck, "train_tokens")), 4096);
        assert_int_equal(json_integer_value(json_object_get(ck, "seed")), 9);
        assert_true(json_real_value(json_object_get(ck, "norm_scaling_factor")) == 1.25);
        assert_true(json_is_true(json_object_get(ck, "warm_start")));
        if (a == SAE_JUMPRELU)
            assert_true(json_is_null(json_object_get(ck, "step")));
        else
            assert_int_equal(json_integer_value(json_object_get(ck, "step")), 1000);
        json_decref(cfg);
        free(path);
        /* read back: the same bits */
        struct sae *back = NULL;
        struct sae_info info;
        if (sae_load(&back, dir, &info, &e) < 0)
            fail_msg("%s", err_str(&e));
        assert_int_equal(info.format, SAE_FORMAT_SAELENS);
        assert_string_equal(info.hook_name, "blocks.2.hook_resid_post");
        assert_string_equal(info.model_name, "pythia-70m-deduped");
        assert_true(info.norm_scaling_factor == 1.25);
        assert_int_equal(info.step, a == SAE_JUMPRELU ? -1 : 1000);
        assert_int_equal(back->arch, a);
        assert_int_equal(back->k, s->k);
        assert_int_equal(back->apply_b_dec, 1);
        assert_memory_equal(back->block, s->block,
                            ((size_t)2 * C * S + S + C + (s->threshold ? (size_t)S : 0)) *
                                sizeof(float));
        sae_free(back);
        path = xasprintf("%s/cfg.json.tmp", dir);
        assert_int_not_equal(access(path, F_OK), 0);
        free(path);
        path = xasprintf("%s/*.tmp*", dir); /* common/atomic_file.h's names */
        glob_t g;
        assert_int_equal(glob(path, 0, NULL, &g), GLOB_NOMATCH);
        globfree(&g);
        free(path);
        free(dir);
        sae_free(s);
    }
    json_decref(ref);
}

/* ---- versions ---- */

static void test_versions(void **state)
{
    (void)state;
    json_error_t je;
    json_t *g = json_load_file("tests/golden/sae/pep440.json", 0, &je);
    assert_non_null(g);
    size_t i;
    json_t *c;
    int n = 0;
    json_array_foreach(json_object_get(g, "cases"), i, c) {
        const char *v = json_string_value(json_array_get(c, 0));
        json_t *want = json_array_get(c, 1);
        int is6 = -1;
        struct err e;
        int rc = sae_version_is_6(v, &is6, &e);
        if (json_is_string(want)) {
            if (rc != ERR_FORMAT || !strstr(err_str(&e), "PEP 440"))
                fail_msg("'%s': packaging says invalid, got rc %d is6 %d", v, rc, is6);
        } else if (rc != 0 || is6 != (int)json_integer_value(want)) {
            fail_msg("'%s': packaging says %d, got rc %d is6 %d", v,
                     (int)json_integer_value(want), rc, is6);
        }
        n++;
    }
    assert_true(n >= 40);
    json_decref(g);
}

/* ---- cases ---- */

static int check_ok(const char *name, const struct sae *s, const struct sae_info *info, char *spec)
{
    for (char *tok = strtok(spec, " \n"); tok; tok = strtok(NULL, " \n")) {
        char *eq = strchr(tok, '=');
        if (!eq)
            fail_msg("%s: bad expectation '%s'", name, tok);
        *eq = '\0';
        const char *k = tok, *v = eq + 1;
        char got[160];
        if (strcmp(k, "format") == 0)
            snprintf(got, sizeof got, "%s", sae_format_name(info->format));
        else if (strcmp(k, "architecture") == 0)
            snprintf(got, sizeof got, "%s", sae_arch_name(s->arch));
        else if (strcmp(k, "d_in") == 0)
            snprintf(got, sizeof got, "%d", s->d_in);
        else if (strcmp(k, "d_sae") == 0)
            snprintf(got, sizeof got, "%d", s->d_sae);
        else if (strcmp(k, "k") == 0)
            snprintf(got, sizeof got, "%d", s->k);
        else if (strcmp(k, "hook") == 0)
            snprintf(got, sizeof got, "%s", info->hook_name);
        else if (strcmp(k, "dtype") == 0)
            snprintf(got, sizeof got, "%s", info->dtype);
        else if (strcmp(k, "apply_b_dec") == 0)
            snprintf(got, sizeof got, "%d", s->apply_b_dec);
        else
            fail_msg("%s: unknown key %s", name, k);
        if (strcmp(got, v) != 0) {
            print_error("%s: %s is %s, expected %s\n", name, k, got, v);
            return 0;
        }
    }
    return 1;
}

static void test_cases(void **state)
{
    (void)state;
    DIR *d = opendir(CASES_DIR);
    assert_non_null(d);
    struct dirent *de;
    int ncases = 0, nok = 0, failed = 0;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char *cdir = xasprintf("%s/%s", CASES_DIR, de->d_name);
        char *epath = xasprintf("%s/expected", cdir);
        char *expected = slurp(epath, NULL);
        if (!expected)
            fail_msg("%s: no expected file", cdir);
        /* the case's one subdirectory is the dictionary */
        DIR *sd = opendir(cdir);
        assert_non_null(sd);
        struct dirent *se;
        char *sae_dir = NULL;
        while ((se = readdir(sd)))
            if (se->d_name[0] != '.' && strcmp(se->d_name, "expected") != 0)
                sae_dir = xasprintf("%s/%s", cdir, se->d_name);
        closedir(sd);
        assert_non_null(sae_dir);
        struct sae *s = NULL;
        struct sae_info info;
        struct err e;
        err_clear(&e);
        int rc = sae_load(&s, sae_dir, &info, &e);
        char *tab = strchr(expected, '\t');
        char *nl = strchr(expected, '\n');
        if (nl)
            *nl = '\0';
        if (tab)
            *tab = '\0';
        if (strcmp(expected, "ok") == 0) {
            if (rc != 0) {
                print_error("%s: expected ok, got %s\n", de->d_name, err_str(&e));
                failed++;
            } else if (!check_ok(de->d_name, s, &info, tab ? tab + 1 : (char *)"")) {
                failed++;
            }
            nok++;
        } else {
            int code = code_by_name(expected);
            if (rc != code || s || !tab || !strstr(err_str(&e), tab + 1)) {
                print_error("%s: expected %s '%s', got %s (%d) '%s'\n", de->d_name, expected,
                            tab ? tab + 1 : "", err_code_name(rc), rc, err_str(&e));
                failed++;
            }
        }
        sae_free(s);
        free(sae_dir);
        free(expected);
        free(epath);
        free(cdir);
        ncases++;
    }
    closedir(d);
    printf("%d cases (%d valid), %d failed\n", ncases, nok, failed);
    assert_true(ncases >= 60);
    assert_true(nok >= 15);
    assert_int_equal(failed, 0);
}

/* ---- values ---- */

static struct sae *load_case(const char *rel)
{
    struct sae *s = NULL;
    struct err e;
    char *dir = xasprintf("%s/%s", CASES_DIR, rel);
    if (sae_load(&s, dir, NULL, &e) < 0)
        fail_msg("%s: %s", dir, err_str(&e));
    free(dir);
    return s;
}

/* The case files' values: ((i * 37 + seed * 11) % 32 - 16) / 8. */
static float case_val(int i, int seed)
{
    return (float)(((i * 37 + seed * 11) % 32 - 16) / 8.0);
}

/* Codes of x (n, C) by s, into z (n, S). */
static void codes(const struct sae *s, const float *x, int n, float *z)
{
    float *xh = malloc((size_t)n * s->d_in * sizeof *xh);
    struct err e;
    assert_non_null(xh);
    assert_int_equal(sae_reconstruct(s, xh, z, x, (size_t)n, &e), 0);
    free(xh);
}

static void test_values(void **state)
{
    (void)state;
    const int C = 4, S = 6;
    /* sparsify: encoder.weight [S, C] transposed into W_enc [C, S] */
    struct sae *sp = load_case("ok_sparsify/layers.2");
    for (int i = 0; i < S; i++)
        for (int j = 0; j < C; j++) {
            assert_true(sp->W_enc[(size_t)j * S + i] == case_val(i * C + j, 1));
            assert_true(sp->W_dec[(size_t)i * C + j] == case_val(i * C + j, 2));
        }
    assert_int_equal(sp->apply_b_dec, 1);
    sae_free(sp);
    /* float16 cfg over F32 tensors: exactly the f16 rounding (the case
     * values are multiples of 1/8, exact in f16: compare with a rounded
     * random dictionary written here instead) */
    struct sae *r = random_sae(SAE_RELU, C, S, 0, 77);
    char *dir = xasprintf("%s/f16cast", tmpdir);
    assert_int_equal(mkdir(dir, 0755), 0);
    struct sae_meta meta = {.hook_name = "blocks.0.hook_resid_post", .step = -1};
    struct err e;
    assert_int_equal(sae_save(r, dir, &meta, NULL, &e), 0);
    char *cpath = xasprintf("%s/cfg.json", dir);
    json_t *cfg = json_load_file(cpath, JSON_PRESERVE_ORDER, NULL);
    json_object_set_new(cfg, "dtype", json_string("float16"));
    assert_int_equal(json_dump_file(cfg, cpath, 0), 0);
    json_decref(cfg);
    struct sae *h = NULL;
    struct sae_info info;
    assert_int_equal(sae_load(&h, dir, &info, &e), 0);
    assert_string_equal(info.dtype, "float16");
    int changed = 0;
    for (size_t i = 0; i < (size_t)2 * C * S + S + C; i++) {
        assert_true(h->block[i] == f16_to_f32(f32_to_f16(r->block[i])));
        changed += h->block[i] != r->block[i];
    }
    assert_true(changed > 0);
    sae_free(h);
    /* activation_scaler.json: the codes of x equal the unfolded ones of x * s */
    struct sae *plain = load_case("ok_standard_f32/sae");
    struct sae *scaled = load_case("ok_scaler_file/sae");
    float x[8 * 4], xs[8 * 4], z1[8 * 6], z2[8 * 6];
    uint64_t st = 3;
    for (int i = 0; i < 8 * C; i++) {
        x[i] = rng_symmetric(&st) * 3.0f;
        xs[i] = x[i] * 2.5f;
    }
    codes(plain, xs, 8, z1);
    codes(scaled, x, 8, z2);
    for (int i = 0; i < 8 * S; i++)
        assert_true(fabsf(z1[i] - z2[i]) <= 1e-5f * (1.0f + fabsf(z1[i])));
    sae_free(scaled);
    /* rescale_acts_by_decoder_norm: SAELens's computation (pre * ||W_dec
     * row||, TopK, decode acts / norm) against the folded dictionary */
    struct sae *tk = random_sae(SAE_TOPK, C, S, 2, 99);
    for (int i = 0; i < S; i++) /* rows of assorted norms */
        for (int j = 0; j < C; j++)
            tk->W_dec[(size_t)i * C + j] *= 0.5f + (float)i;
    char *rdir = xasprintf("%s/rescaled", tmpdir);
    assert_int_equal(mkdir(rdir, 0755), 0);
    assert_int_equal(sae_save(tk, rdir, &meta, NULL, &e), 0);
    free(cpath);
    cpath = xasprintf("%s/cfg.json", rdir);
    cfg = json_load_file(cpath, JSON_PRESERVE_ORDER, NULL);
    json_object_set_new(cfg, "rescale_acts_by_decoder_norm", json_true());
    assert_int_equal(json_dump_file(cfg, cpath, 0), 0);
    json_decref(cfg);
    struct sae *folded = NULL;
    assert_int_equal(sae_load(&folded, rdir, &info, &e), 0);
    assert_int_equal(info.rescaled, 1);
    float xh[8 * 4], xh2[8 * 4], pre[8 * 6], xc[8 * 4];
    sae_encode_pre(tk, pre, xc, x, 8);
    double norm[6];
    for (int i = 0; i < S; i++) {
        double ss = 0;
        for (int j = 0; j < C; j++)
            ss += (double)tk->W_dec[(size_t)i * C + j] * tk->W_dec[(size_t)i * C + j];
        norm[i] = sqrt(ss);
    }
    for (int t = 0; t < 8; t++)
        for (int i = 0; i < S; i++)
            pre[t * S + i] = (float)(pre[t * S + i] * norm[i]);
    sae_activate(tk, z1, pre, 8);
    for (int t = 0; t < 8; t++)
        for (int i = 0; i < S; i++)
            z2[t * S + i] = (float)(z1[t * S + i] / norm[i]);
    sae_decode(tk, xh, z2, 8);
    float zf[8 * 6];
    assert_int_equal(sae_reconstruct(folded, xh2, zf, x, 8, &e), 0);
    for (int i = 0; i < 8 * S; i++)
        assert_true(fabsf(zf[i] - z1[i]) <= 1e-5f * (1.0f + fabsf(z1[i])));
    for (int i = 0; i < 8 * C; i++)
        assert_true(fabsf(xh2[i] - xh[i]) <= 1e-5f * (1.0f + fabsf(xh[i])));
    sae_free(folded);
    sae_free(tk);
    sae_free(plain);
    sae_free(r);
    free(cpath);
    free(rdir);
    free(dir);
}

static void test_sparsify_hooks(void **state)
{
    (void)state;
    static const char *const cases[][2] = {
        {"layers.0", "blocks.0.hook_resid_post"}, {"layers_11", "blocks.11.hook_resid_post"},
        {"layers.3.mlp", "blocks.3.hook_mlp_out"}, {"layers.3.attention", "blocks.3.hook_attn_out"},
        {"embed_in", "hook_embed"}, {"embed_tokens", "hook_embed"},
        {"layers.x", NULL}, {"gpt_neox.layers.1", NULL}, {"layers.1.mlp.act", NULL},
        {"layers", NULL}, {"h.0", NULL}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char hook[128];
        struct err e;
        int rc = sae_sparsify_hook(cases[i][0], hook, sizeof hook, &e);
        if (cases[i][1]) {
            assert_int_equal(rc, 0);
            assert_string_equal(hook, cases[i][1]);
        } else {
            assert_int_equal(rc, ERR_UNSUPPORTED);
            assert_non_null(strstr(err_str(&e), cases[i][0]));
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_versions),
        cmocka_unit_test(test_cases),
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_sparsify_hooks),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
