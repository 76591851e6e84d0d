/*
 * test_battery_sae_fixed - the sae_fixed item: one fixed dictionary,
 * written in each format a researcher may have (tests/lib/sae_formats.h),
 * followed through a planted checkpoint series.
 *
 * The series (plant_model): a small GPT-NeoX (V 64, d_model 32, 2 layers)
 * whose block 0 writes nothing (attention and MLP output projections zero),
 * so blocks.0.hook_resid_post is the token embedding.  A unit direction u
 * is absent from every embedding before step PLANT_BIRTH (projected out)
 * and added with amplitude PLANT_A to the tokens v % 4 == 0 from
 * PLANT_BIRTH on; every step also perturbs the embeddings (orthogonally to
 * u) so no two checkpoints are alike.  The dictionary (plant_dict): 16
 * latents at blocks.0.hook_resid_post, latent 0 along u (b_enc -A/2, or
 * JumpReLU threshold A/2), the others random unit directions orthogonal to
 * u; written as SAELens 6 standard, topk (k 4) and jumprelu with F32, F16
 * and BF16 tensors, SAELens pre-6.0 standard and topk, and sparsify (F32,
 * BF16) — 13 dictionaries passed together.
 *
 *   planted     for every dictionary, latent 0's feature_density is exactly
 *               0 at every step before PLANT_BIRTH and within [0.15, 0.35]
 *               (the planted tokens' share of the eval set) from it on, so
 *               the first step above SAE_FIXED_TEST_BIRTH_DENSITY is
 *               PLANT_BIRTH; its mean activation there is A/2 (A for
 *               JumpReLU, which keeps the whole pre-activation) within 2e-2;
 *               rows are keyed head = dictionary index, layer 0.
 *   invariants  l0 = sum of the densities (1e-9), explained_variance =
 *               1 - fvu, the histogram sums to 1 and its bin 0 is
 *               inactive_fraction; all dictionaries' ce_clean equal.
 *   splice      an exact ReLU dictionary ([I, -I]) gives fvu < 1e-9 and
 *               loss_recovered 1 (1e-4); the zero dictionary gives
 *               ce_spliced = ce_zero_ablated exactly; mlp.hook_post and
 *               attn.hook_z dictionaries of their widths run.
 *   errors      no --sae, a missing directory, a hook the model does not
 *               have, a hook not applied at (attn.hook_pattern), a d_in
 *               other than the hook's width, no hook name: each fails the
 *               item with its message and no rows.
 *
 * Modes for the shell tests:
 *   --zoo DIR           the 13 dictionaries (and an exact one's variants
 *                       with activation_scaler.json and
 *                       rescale_acts_by_decoder_norm) in DIR/dicts/<name>/,
 *                       activations DIR/acts.npy, and DIR/names.txt
 *   --plant-series DIR  the checkpoints DIR/ck/step<N>/ and the
 *                       dictionaries DIR/dicts/<name>/
 */
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

#include "tests/lib/battery_golden.h"
#include "tests/lib/sae_formats.h"
#include "tests/lib/test_files.h"
#include "workers/battery/battery.h"
#include "common/rng.h"
#include "workers/battery/sae.h"
#include "workers/model/gptneox.h"
#include "workers/model/npy.h"

#define PLANT_V 64
#define PLANT_C 32
#define PLANT_S 16
#define PLANT_A 1.0f
#define PLANT_BIRTH 2000LL
#define PLANT_NSTEPS 5
static const long long plant_steps[PLANT_NSTEPS] = {0, 1000, 2000, 3000, 4000};
#define SAE_FIXED_TEST_BIRTH_DENSITY 1e-3 /* schema/008_sae_fixed.sql's default */
#define HOOK0 "blocks.0.hook_resid_post"

static char tmpdir[64];

/* ---- the planted series ---- */

static void unit(float *v, int n)
{
    double ss = 0.0;
    for (int i = 0; i < n; i++)
        ss += (double)v[i] * v[i];
    for (int i = 0; i < n; i++)
        v[i] = (float)(v[i] / sqrt(ss));
}

static void project_out(float *v, const float *u, int n)
{
    double d = 0.0;
    for (int i = 0; i < n; i++)
        d += (double)v[i] * u[i];
    for (int i = 0; i < n; i++)
        v[i] = (float)(v[i] - d * u[i]);
}

static void plant_direction(float *u)
{
    uint64_t st = 7;
    for (int i = 0; i < PLANT_C; i++)
        u[i] = rng_symmetric(&st);
    unit(u, PLANT_C);
}

static void zero_if(float *p, size_t n)
{
    if (p)
        memset(p, 0, n * sizeof *p);
}

/* The checkpoint of step index k. */
static struct gptneox *plant_model(int k)
{
    struct gptneox_config cfg;
    gptneox_config_default(&cfg, PLANT_V, PLANT_C, 2, 4, 64);
    cfg.max_positions = 64;
    struct gptneox *m = NULL;
    struct err e;
    if (gptneox_create(&m, &cfg, &e) < 0)
        fail_msg("gptneox_create: %s", err_str(&e));
    gptneox_init_random(m, 11, 0.05f);
    struct gptneox_layer *l0 = &m->layers[0];
    zero_if(l0->attn_w, (size_t)PLANT_C * PLANT_C);
    zero_if(l0->attn_b, PLANT_C);
    zero_if(l0->proj_w, (size_t)PLANT_C * cfg.d_mlp);
    zero_if(l0->proj_b, PLANT_C);
    float u[PLANT_C];
    plant_direction(u);
    uint64_t st = 100 + (uint64_t)k;
    for (int v = 0; v < PLANT_V; v++) {
        float *row = m->embed + (size_t)v * PLANT_C;
        for (int i = 0; i < PLANT_C; i++)
            row[i] += 0.01f * rng_symmetric(&st);
        project_out(row, u, PLANT_C);
        if (plant_steps[k] >= PLANT_BIRTH && v % 4 == 0)
            for (int i = 0; i < PLANT_C; i++)
                row[i] += PLANT_A * u[i];
    }
    return m;
}

/* The fixed dictionary: latent 0 along u, the rest orthogonal to it. */
static struct sae *plant_dict(enum sae_arch arch)
{
    struct sae *s = NULL;
    struct err e;
    if (sae_create(&s, arch, PLANT_C, PLANT_S, 4, &e) < 0)
        fail_msg("%s", err_str(&e));
    float u[PLANT_C], r[PLANT_C];
    plant_direction(u);
    uint64_t st = 8;
    for (int i = 0; i < PLANT_S; i++) {
        if (i == 0) {
            memcpy(r, u, sizeof r);
        } else {
            for (int j = 0; j < PLANT_C; j++)
                r[j] = rng_symmetric(&st);
            project_out(r, u, PLANT_C);
            unit(r, PLANT_C);
        }
        for (int j = 0; j < PLANT_C; j++) {
            s->W_enc[(size_t)j * PLANT_S + i] = r[j];
            s->W_dec[(size_t)i * PLANT_C + j] = r[j];
        }
    }
    if (arch == SAE_JUMPRELU)
        s->threshold[0] = PLANT_A / 2;
    else
        s->b_enc[0] = -PLANT_A / 2;
    return s;
}

/* The 13 dictionaries of the same plant_dict. */
struct zoo_entry {
    const char *name; /* directory under dicts/ (sparsify: the folder names the hook) */
    enum sae_arch arch;
    enum sae_fmt_kind kind;
    enum st_dtype dt;
};
static const struct zoo_entry zoo[] = {
    {"standard_f32", SAE_RELU, SAE_FMT_SAELENS, ST_F32},
    {"standard_f16", SAE_RELU, SAE_FMT_SAELENS, ST_F16},
    {"standard_bf16", SAE_RELU, SAE_FMT_SAELENS, ST_BF16},
    {"topk_f32", SAE_TOPK, SAE_FMT_SAELENS, ST_F32},
    {"topk_f16", SAE_TOPK, SAE_FMT_SAELENS, ST_F16},
    {"topk_bf16", SAE_TOPK, SAE_FMT_SAELENS, ST_BF16},
    {"jumprelu_f32", SAE_JUMPRELU, SAE_FMT_SAELENS, ST_F32},
    {"jumprelu_f16", SAE_JUMPRELU, SAE_FMT_SAELENS, ST_F16},
    {"jumprelu_bf16", SAE_JUMPRELU, SAE_FMT_SAELENS, ST_BF16},
    {"legacy_standard", SAE_RELU, SAE_FMT_LEGACY, ST_F32},
    {"legacy_topk_f16", SAE_TOPK, SAE_FMT_LEGACY, ST_F16},
    {"sparsify/layers.0", SAE_TOPK, SAE_FMT_SPARSIFY, ST_F32},
    {"sparsify_bf16/layers_0", SAE_TOPK, SAE_FMT_SPARSIFY, ST_BF16},
};
#define NZOO ((int)(sizeof zoo / sizeof *zoo))

static int write_zoo(const char *root, char **dirs, struct err *e)
{
    for (int z = 0; z < NZOO; z++) {
        struct sae *s = plant_dict(zoo[z].arch);
        dirs[z] = xasprintf("%s/dicts/%s", root, zoo[z].name);
        int rc = sae_fmt_write(s, dirs[z], zoo[z].kind, zoo[z].dt, HOOK0, e);
        sae_free(s);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* ---- the planted test ---- */

static double rowv(const struct grow *g, size_t n, const char *metric, int layer, int head, int idx)
{
    const struct grow *r = grows_find(g, n, metric, layer, head, idx);
    if (!r)
        fail_msg("no row %s layer %d head %d idx %d", metric, layer, head, idx);
    return r->value;
}

static void test_planted(void **state)
{
    (void)state;
    struct err e;
    char root[128], *dirs[NZOO];
    snprintf(root, sizeof root, "%s/planted", tmpdir);
    if (write_zoo(root, dirs, &e) < 0)
        fail_msg("%s", err_str(&e));
    int *tok = NULL, B, T;
    assert_int_equal(battery_eval_default(&tok, &B, &T, PLANT_V, 64, 3, &e), 0);
    long long birth[NZOO];
    for (int z = 0; z < NZOO; z++)
        birth[z] = -1;
    double ce_clean0 = NAN;
    for (int k = 0; k < PLANT_NSTEPS; k++) {
        struct gptneox *m = plant_model(k);
        struct battery_ctx c = {.model = m, .eval_tokens = tok, .eval_B = B, .eval_T = T,
                                .eval_name = "planted", .sae_fixed_dirs = (const char *const *)dirs,
                                .nsae_fixed = NZOO};
        size_t n;
        struct grow *g = grows_run(&battery_item_sae_fixed, &c, &n);
        assert_int_equal(n, (size_t)NZOO * (2 * PLANT_S + 9 + SAE_DENSITY_BINS));
        for (int z = 0; z < NZOO; z++) {
            const double d0 = rowv(g, n, "feature_density", 0, z, 0);
            if (plant_steps[k] < PLANT_BIRTH) {
                if (d0 != 0.0)
                    fail_msg("%s step %lld: planted latent density %g before its birth",
                             zoo[z].name, plant_steps[k], d0);
            } else {
                if (!(d0 >= 0.15 && d0 <= 0.35))
                    fail_msg("%s step %lld: planted latent density %g", zoo[z].name,
                             plant_steps[k], d0);
                /* pre = A - A/2 (b_enc), or A kept whole above JumpReLU's A/2 */
                const double m0 = rowv(g, n, "feature_mean_activation", 0, z, 0);
                const double want = zoo[z].arch == SAE_JUMPRELU ? PLANT_A : PLANT_A / 2;
                if (fabs(m0 - want) > 2e-2)
                    fail_msg("%s: mean activation %g, want %g", zoo[z].name, m0, want);
            }
            if (birth[z] < 0 && d0 > SAE_FIXED_TEST_BIRTH_DENSITY)
                birth[z] = plant_steps[k];
            /* invariants */
            double dsum = 0.0, hsum = 0.0;
            for (int i = 0; i < PLANT_S; i++)
                dsum += rowv(g, n, "feature_density", 0, z, i);
            for (int b = 0; b < SAE_DENSITY_BINS; b++)
                hsum += rowv(g, n, "density_histogram", 0, z, b);
            assert_true(fabs(rowv(g, n, "l0", 0, z, -1) - dsum) < 1e-9);
            assert_true(fabs(hsum - 1.0) < 1e-9);
            assert_true(fabs(rowv(g, n, "density_histogram", 0, z, 0) -
                             rowv(g, n, "inactive_fraction", 0, z, -1)) < 1e-12);
            assert_true(fabs(rowv(g, n, "explained_variance", 0, z, -1) +
                             rowv(g, n, "fvu", 0, z, -1) - 1.0) < 1e-12);
            const double cc = rowv(g, n, "ce_clean", 0, z, -1);
            if (z == 0)
                ce_clean0 = cc;
            assert_true(cc == ce_clean0);
            assert_true(isfinite(rowv(g, n, "loss_recovered", 0, z, -1)));
        }
        free(g);
        gptneox_free(m);
    }
    for (int z = 0; z < NZOO; z++) {
        printf("%-24s born at step %lld\n", zoo[z].name, birth[z]);
        assert_int_equal(birth[z], PLANT_BIRTH);
        free(dirs[z]);
    }
    free(tok);
}

/* ---- splicing and other hooks ---- */

static void test_splice(void **state)
{
    (void)state;
    struct err e;
    struct gptneox *m = plant_model(3);
    int *tok = NULL, B, T;
    assert_int_equal(battery_eval_default(&tok, &B, &T, PLANT_V, 64, 4, &e), 0);
    const int C = PLANT_C, F = m->cfg.d_mlp;
    /* exact: ReLU with W_enc = [I, -I], W_dec = [I; -I], at blocks.1.hook_resid_pre */
    struct sae *x = NULL, *zero = NULL, *mlp = NULL, *z = NULL;
    assert_int_equal(sae_create(&x, SAE_RELU, C, 2 * C, 0, &e), 0);
    for (int j = 0; j < C; j++) {
        x->W_enc[(size_t)j * 2 * C + j] = 1.0f;
        x->W_enc[(size_t)j * 2 * C + C + j] = -1.0f;
        x->W_dec[(size_t)j * C + j] = 1.0f;
        x->W_dec[(size_t)(C + j) * C + j] = -1.0f;
    }
    assert_int_equal(sae_create(&zero, SAE_RELU, C, 8, 0, &e), 0);
    assert_int_equal(sae_create(&mlp, SAE_TOPK, F, 2 * F, 8, &e), 0);
    assert_int_equal(sae_create(&z, SAE_JUMPRELU, C, 3 * C, 0, &e), 0);
    uint64_t st = 21;
    for (size_t i = 0; i < (size_t)F * 2 * F * 2; i++)
        mlp->block[i] = rng_symmetric(&st) * 0.2f;
    for (size_t i = 0; i < (size_t)C * 3 * C * 2; i++)
        z->block[i] = rng_symmetric(&st) * 0.2f;
    char *d[4];
    const char *hooks[4] = {"blocks.1.hook_resid_pre", "blocks.1.hook_resid_pre",
                            "blocks.1.mlp.hook_post", "blocks.0.attn.hook_z"};
    const struct sae *ss[4] = {x, zero, mlp, z};
    for (int k = 0; k < 4; k++) {
        d[k] = xasprintf("%s/splice/%d", tmpdir, k);
        if (sae_fmt_write(ss[k], d[k], SAE_FMT_SAELENS, ST_F32, hooks[k], &e) < 0)
            fail_msg("%s", err_str(&e));
    }
    struct battery_ctx c = {.model = m, .eval_tokens = tok, .eval_B = B, .eval_T = T,
                            .eval_name = "splice", .sae_fixed_dirs = (const char *const *)d,
                            .nsae_fixed = 4};
    size_t n;
    struct grow *g = grows_run(&battery_item_sae_fixed, &c, &n);
    printf("exact: fvu %.3g loss_recovered %.6f; zero: ce_spliced %.6f ce_zero %.6f; mlp.hook_post "
           "fvu %.3f; attn.hook_z fvu %.3f\n",
           rowv(g, n, "fvu", 1, 0, -1), rowv(g, n, "loss_recovered", 1, 0, -1),
           rowv(g, n, "ce_spliced", 1, 1, -1), rowv(g, n, "ce_zero_ablated", 1, 1, -1),
           rowv(g, n, "fvu", 1, 2, -1), rowv(g, n, "fvu", 0, 3, -1));
    assert_true(rowv(g, n, "fvu", 1, 0, -1) < 1e-9);
    assert_true(fabs(rowv(g, n, "loss_recovered", 1, 0, -1) - 1.0) < 1e-4);
    assert_true(rowv(g, n, "kl_spliced", 1, 0, -1) < 1e-7);
    assert_true(rowv(g, n, "ce_spliced", 1, 1, -1) == rowv(g, n, "ce_zero_ablated", 1, 1, -1));
    assert_true(rowv(g, n, "loss_recovered", 1, 1, -1) == 0.0);
    assert_true(rowv(g, n, "inactive_fraction", 1, 1, -1) == 1.0);
    assert_true(isfinite(rowv(g, n, "fvu", 1, 2, -1)) && rowv(g, n, "fvu", 1, 2, -1) > 0.0);
    assert_true(isfinite(rowv(g, n, "fvu", 0, 3, -1)) && rowv(g, n, "fvu", 0, 3, -1) > 0.0);
    free(g);
    for (int k = 0; k < 4; k++) {
        sae_free((struct sae *)ss[k]);
        free(d[k]);
    }
    free(tok);
    gptneox_free(m);
}

/* ---- errors ---- */

static void expect_fail(struct battery_ctx *c, int code, const char *needle)
{
    struct rows r;
    rows_init(&r);
    struct err e;
    int rc = battery_run_item(&battery_item_sae_fixed, c, &r, &e);
    if (rc != code || !strstr(err_str(&e), needle))
        fail_msg("expected %d '%s', got %d '%s'", code, needle, rc, err_str(&e));
    assert_int_equal(r.n, 0);
    rows_free(&r);
}

static void test_errors(void **state)
{
    (void)state;
    struct err e;
    struct gptneox *m = plant_model(0);
    int *tok = NULL, B, T;
    assert_int_equal(battery_eval_default(&tok, &B, &T, PLANT_V, 64, 4, &e), 0);
    struct sae *s = plant_dict(SAE_RELU);
    char *good = xasprintf("%s/err/good", tmpdir), *deep = xasprintf("%s/err/deep", tmpdir);
    char *pat = xasprintf("%s/err/pattern", tmpdir), *wide = xasprintf("%s/err/wide", tmpdir);
    char *nohook = xasprintf("%s/err/nohook", tmpdir), *none = xasprintf("%s/err/none", tmpdir);
    assert_int_equal(sae_fmt_write(s, good, SAE_FMT_SAELENS, ST_F32, HOOK0, &e), 0);
    assert_int_equal(sae_fmt_write(s, deep, SAE_FMT_SAELENS, ST_F32, "blocks.9.hook_resid_post", &e), 0);
    assert_int_equal(sae_fmt_write(s, pat, SAE_FMT_SAELENS, ST_F32, "blocks.0.attn.hook_pattern", &e), 0);
    assert_int_equal(sae_fmt_write(s, wide, SAE_FMT_SAELENS, ST_F32, "blocks.0.mlp.hook_post", &e), 0);
    assert_int_equal(sae_fmt_write(s, nohook, SAE_FMT_SAELENS, ST_F32, HOOK0, &e), 0);
    char *cfgp = xasprintf("%s/cfg.json", nohook);
    char *text = slurp(cfgp, NULL);
    char *h = strstr(text, "\"hook_name\"");
    assert_non_null(h);
    memcpy(h, "\"hook_nome\"", 11);
    FILE *f = fopen(cfgp, "w");
    fputs(text, f);
    fclose(f);
    struct battery_ctx c = {.model = m, .eval_tokens = tok, .eval_B = B, .eval_T = T,
                            .eval_name = "errors"};
    expect_fail(&c, ERR_INVALID, "--sae DIR");
    const char *one[2];
    c.sae_fixed_dirs = one;
    c.nsae_fixed = 2;
    one[0] = good;
    one[1] = none;
    expect_fail(&c, ERR_NOTFOUND, "cfg.json");
    one[1] = deep;
    expect_fail(&c, ERR_UNSUPPORTED, "blocks.9.hook_resid_post: not a per-token activation");
    one[1] = pat;
    expect_fail(&c, ERR_UNSUPPORTED, "blocks.0.attn.hook_pattern: not a per-token activation");
    one[1] = wide;
    expect_fail(&c, ERR_MISMATCH, "d_in 32, but blocks.0.mlp.hook_post is 64 wide");
    one[1] = nohook;
    expect_fail(&c, ERR_FORMAT, "names no hook");
    free(text);
    free(cfgp);
    free(good);
    free(deep);
    free(pat);
    free(wide);
    free(nohook);
    free(none);
    sae_free(s);
    free(tok);
    gptneox_free(m);
}

/* ---- modes for the shell tests ---- */

static int mode_zoo(const char *root)
{
    struct err e;
    char *dirs[NZOO], path[4096];
    if (path_mkdir_p(root, &e) < 0 || write_zoo(root, dirs, &e) < 0) {
        fprintf(stderr, "%s\n", err_str(&e));
        return 1;
    }
    /* activations: embeddings of the planted step, and noise */
    struct gptneox *m = plant_model(PLANT_NSTEPS - 1);
    enum { N = 96 };
    float *x = malloc(sizeof(float) * N * PLANT_C);
    uint64_t st = 31;
    for (int t = 0; t < N; t++)
        for (int j = 0; j < PLANT_C; j++)
            x[t * PLANT_C + j] = t < PLANT_V ? m->embed[(size_t)t * PLANT_C + j]
                                             : rng_symmetric(&st) * 0.3f;
    int shape[2] = {N, PLANT_C};
    snprintf(path, sizeof path, "%s/acts.npy", root);
    int rc = npy_write_f32(path, x, 2, shape, &e);
    /* random dictionaries too: every latent in play, with scaler and rescaling */
    FILE *names = NULL;
    snprintf(path, sizeof path, "%s/names.txt", root);
    if (rc == 0 && !(names = fopen(path, "w")))
        rc = err_set(&e, ERR_IO, path, "cannot write");
    for (int z = 0; rc == 0 && z < NZOO; z++)
        fprintf(names, "%s\n", zoo[z].name);
    static const enum sae_arch rarch[3] = {SAE_RELU, SAE_TOPK, SAE_JUMPRELU};
    static const char *const rname[3] = {"random_standard", "random_topk", "random_jumprelu"};
    for (int a = 0; rc == 0 && a < 3; a++) {
        struct sae *s = NULL;
        if ((rc = sae_create(&s, rarch[a], PLANT_C, 48, 6, &e)) < 0)
            break;
        for (size_t i = 0; i < (size_t)2 * PLANT_C * 48 + 48 + PLANT_C; i++)
            s->block[i] = rng_symmetric(&st) * 0.5f;
        if (s->threshold)
            for (int i = 0; i < 48; i++)
                s->threshold[i] = fabsf(rng_symmetric(&st)) * 0.2f;
        for (int dt = 0; rc == 0 && dt < 3; dt++) {
            static const enum st_dtype dts[3] = {ST_F32, ST_F16, ST_BF16};
            static const char *const dn[3] = {"f32", "f16", "bf16"};
            char d[4096];
            snprintf(d, sizeof d, "%s/dicts/%s_%s", root, rname[a], dn[dt]);
            rc = sae_fmt_write(s, d, SAE_FMT_SAELENS, dts[dt], HOOK0, &e);
            fprintf(names, "%s_%s\n", rname[a], dn[dt]);
        }
        if (rc == 0 && rarch[a] != SAE_JUMPRELU) {
            char d[4096];
            snprintf(d, sizeof d, "%s/dicts/legacy_%s", root, rname[a]);
            rc = sae_fmt_write(s, d, SAE_FMT_LEGACY, ST_F32, HOOK0, &e);
            fprintf(names, "legacy_%s\n", rname[a]);
        }
        if (rc == 0 && rarch[a] == SAE_TOPK) {
            char d[4096];
            snprintf(d, sizeof d, "%s/dicts/random_sparsify/layers.0", root);
            rc = sae_fmt_write(s, d, SAE_FMT_SPARSIFY, ST_F32, NULL, &e);
            fprintf(names, "random_sparsify/layers.0\n");
            /* rescale_acts_by_decoder_norm, with rows of assorted norms */
            for (int i = 0; i < 48; i++)
                for (int j = 0; j < PLANT_C; j++)
                    s->W_dec[(size_t)i * PLANT_C + j] *= 0.25f + 0.1f * (float)i;
            snprintf(d, sizeof d, "%s/dicts/random_topk_rescaled", root);
            if (rc == 0 && (rc = sae_fmt_write(s, d, SAE_FMT_SAELENS, ST_F32, HOOK0, &e)) == 0) {
                char cp[4200];
                snprintf(cp, sizeof cp, "%s/cfg.json", d);
                char *txt = slurp(cp, NULL);
                char *r = txt ? strstr(txt, "\"rescale_acts_by_decoder_norm\": false") : NULL;
                FILE *o = r ? fopen(cp, "w") : NULL;
                if (!o)
                    rc = err_set(&e, ERR_IO, cp, "cannot rewrite");
                else {
                    fprintf(o, "%.*s\"rescale_acts_by_decoder_norm\": true%s", (int)(r - txt), txt,
                            r + strlen("\"rescale_acts_by_decoder_norm\": false"));
                    fclose(o);
                }
                free(txt);
                fprintf(names, "random_topk_rescaled\n");
            }
        }
        if (rc == 0 && rarch[a] == SAE_RELU) { /* expected_average_only_in + activation_scaler.json */
            char d[4096], cp[4200];
            snprintf(d, sizeof d, "%s/dicts/random_standard_scaler", root);
            if ((rc = sae_fmt_write(s, d, SAE_FMT_SAELENS, ST_F32, HOOK0, &e)) == 0) {
                snprintf(cp, sizeof cp, "%s/cfg.json", d);
                char *txt = slurp(cp, NULL);
                char *r = txt ? strstr(txt, "\"normalize_activations\": \"none\"") : NULL;
                FILE *o = r ? fopen(cp, "w") : NULL;
                if (!o)
                    rc = err_set(&e, ERR_IO, cp, "cannot rewrite");
                else {
                    fprintf(o, "%.*s\"normalize_activations\": \"expected_average_only_in\"%s",
                            (int)(r - txt), txt, r + strlen("\"normalize_activations\": \"none\""));
                    fclose(o);
                }
                free(txt);
                snprintf(cp, sizeof cp, "%s/activation_scaler.json", d);
                o = fopen(cp, "w");
                if (!o)
                    rc = err_set(&e, ERR_IO, cp, "cannot write");
                else {
                    fputs("{\"scaling_factor\": 3.25}\n", o);
                    fclose(o);
                }
                fprintf(names, "random_standard_scaler\n");
            }
        }
        sae_free(s);
    }
    if (names && fclose(names) != 0 && rc == 0)
        rc = err_set(&e, ERR_IO, path, "cannot write");
    for (int z = 0; z < NZOO; z++)
        free(dirs[z]);
    free(x);
    gptneox_free(m);
    if (rc < 0)
        fprintf(stderr, "%s\n", err_str(&e));
    return rc < 0;
}

static int mode_series(const char *root)
{
    struct err e;
    char *dirs[NZOO], path[4096];
    if (path_mkdir_p(root, &e) < 0 || write_zoo(root, dirs, &e) < 0) {
        fprintf(stderr, "%s\n", err_str(&e));
        return 1;
    }
    for (int z = 0; z < NZOO; z++)
        free(dirs[z]);
    snprintf(path, sizeof path, "%s/ck", root);
    if (path_mkdir_p(path, &e) < 0) {
        fprintf(stderr, "%s\n", err_str(&e));
        return 1;
    }
    for (int k = 0; k < PLANT_NSTEPS; k++) {
        struct gptneox *m = plant_model(k);
        snprintf(path, sizeof path, "%s/ck/step%lld", root, plant_steps[k]);
        int rc = gptneox_save(m, path, ST_F32, &e);
        gptneox_free(m);
        if (rc < 0) {
            fprintf(stderr, "%s\n", err_str(&e));
            return 1;
        }
    }
    printf("birth %lld\n", PLANT_BIRTH);
    return 0;
}

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_sae_fixed-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--zoo") == 0)
        return mode_zoo(argv[2]);
    if (argc == 3 && strcmp(argv[1], "--plant-series") == 0)
        return mode_series(argv[2]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_planted),
        cmocka_unit_test(test_splice),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
