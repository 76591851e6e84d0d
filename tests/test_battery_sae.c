/*
 * test_battery_sae - the `sae` and `sae_relu` battery items on a small
 * random GPT-NeoX (V 64, C 32, 2 layers, so the site is
 * blocks.1.hook_resid_post and d_sae = 128).
 *
 *   rows and files  every declared metric is written once per index with
 *                   values in range (fvu = 1 - explained_variance, l0 <= k
 *                   for TopK, densities and histogram fractions in [0, 1],
 *                   the histogram sums to 1, per-feature rows for every
 *                   latent); the dictionary directory holds exactly
 *                   cfg.json, sae_weights.safetensors, sparsity.safetensors,
 *                   readable by sae_load (SAELens 6, the site's hook, the
 *                   decoder rows of norm 1/s: SAELens's fold of the
 *                   scale) and the safetensors reader, whose
 *                   sparsity equals log10(feature_density + 1e-10); no
 *                   staging directory is left.
 *   splicing        an SAE that reconstructs exactly (ReLU, W_enc = [I, -I],
 *                   W_dec = [I; -I]) gives loss_recovered 1 (|1 - r| <= 1e-4)
 *                   and KL <= 1e-7; the zero SAE gives ce_spliced =
 *                   ce_zero_ablated exactly and loss_recovered 0; ce_clean
 *                   equals gptneox_loss on the same tokens (1e-12).
 *   warm start      a second run with --prev-artifacts starts from the first
 *                   run's dictionary unfolded with the scale in its
 *                   metadata (W_enc / s', W_dec * s': unit rows again),
 *                   biases at this run's scale; warm_start row 1; a
 *                   dictionary of another architecture, or one recording no
 *                   scale, gives a cold start.
 *   determinism     two runs give identical rows and identical files.
 *   bad input       NaN activations fail the item with ERR_NUMERIC and leave
 *                   no file; no --artifacts fails with a message naming it;
 *                   fewer than 5 eval sequences fail.
 *   sites           sae_sites_resolve: the default is blocks.1.hook_resid_post;
 *                   a hook that is not d_model-wide, a layer out of range,
 *                   hook_resid_mid in a parallel-residual model, two sites
 *                   of one layer and a name that is no hook are refused.
 *                   Zero-splicing at blocks.0.hook_resid_pre, at
 *                   blocks.0.hook_mlp_out and at blocks.1.hook_attn_out
 *                   gives exactly the loss of the model whose embedding, MLP
 *                   output projection or attention output projection is
 *                   zeroed (an independent way to remove the same term); an
 *                   exact SAE at those sites and at hook_resid_mid of a
 *                   sequential-residual model recovers the loss.  The item
 *                   with sites blocks.0.hook_mlp_out and
 *                   blocks.1.hook_attn_out writes each metric once per
 *                   site's layer and one dictionary per site whose cfg.json
 *                   names it; when the second site fails (NaN in layer 1)
 *                   the first site's dictionary is gone too.
 */
#include <cblas.h>
#include <dirent.h>
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
#include "tests/lib/test_files.h"
#include "workers/battery/battery.h"
#include "workers/battery/sae.h"
#include "workers/battery/sae_file.h"
#include "workers/model/gptneox.h"
#include "workers/model/safetensors.h"

#define HOOK "blocks.1.hook_resid_post"

static char tmpdir[64];

static struct gptneox *make_model(void)
{
    struct gptneox_config cfg;
    gptneox_config_default(&cfg, 64, 32, 2, 4, 64);
    cfg.max_positions = 64;
    struct gptneox *m = NULL;
    struct err e;
    if (gptneox_create(&m, &cfg, &e) < 0)
        fail_msg("gptneox_create: %s", err_str(&e));
    gptneox_init_random(m, 42, 0.2f);
    return m;
}

struct fixture {
    struct gptneox *m;
    int *tok, B, T;
};

static void fixture_init(struct fixture *f)
{
    struct err e;
    f->m = make_model();
    assert_int_equal(battery_eval_default(&f->tok, &f->B, &f->T, 64, 32, 1, &e), 0);
}

static void fixture_free(struct fixture *f)
{
    free(f->tok);
    gptneox_free(f->m);
}

static struct battery_ctx ctx_of(const struct fixture *f, const char *art, const char *prev)
{
    struct battery_ctx c = {.model = f->m, .eval_tokens = f->tok, .eval_B = f->B,
                            .eval_T = f->T, .eval_name = "test eval", .seed = 5,
                            .artifacts_dir = art, .prev_artifacts_dir = prev};
    return c;
}

static const struct grow *one_row(const struct grow *r, size_t n, const char *metric, int idx)
{
    const struct grow *hit = NULL;
    for (size_t i = 0; i < n; i++)
        if (strcmp(r[i].metric, metric) == 0 && r[i].idx == idx) {
            if (hit)
                fail_msg("two rows %s idx %d", metric, idx);
            hit = &r[i];
        }
    if (!hit)
        fail_msg("no row %s idx %d", metric, idx);
    assert_int_equal(hit->layer, 1);
    assert_int_equal(hit->head, -1);
    return hit;
}

static double val(const struct grow *r, size_t n, const char *metric, int idx)
{
    return one_row(r, n, metric, idx)->value;
}

/* Names in dir, sorted, joined by spaces. */
static void list_dir(const char *dir, char *out, size_t cap)
{
    struct dirent **ents = NULL;
    int n = scandir(dir, &ents, NULL, alphasort);
    out[0] = '\0';
    for (int i = 0; i < n; i++) {
        if (ents[i]->d_name[0] != '.' || (strcmp(ents[i]->d_name, ".") && strcmp(ents[i]->d_name, "..")))
            snprintf(out + strlen(out), cap - strlen(out), "%s%s", out[0] ? " " : "",
                     ents[i]->d_name);
        free(ents[i]);
    }
    free(ents);
}

/* ---- rows and files ---- */

static void check_item(const struct battery_item *it, enum sae_arch arch)
{
    struct fixture f;
    fixture_init(&f);
    char art[128], dir[256], names[512];
    snprintf(art, sizeof art, "%s/%s-a", tmpdir, it->name);
    struct battery_ctx c = ctx_of(&f, art, NULL);
    size_t n;
    struct grow *r = grows_run(it, &c, &n);
    const int S = 128;
    for (size_t i = 0; i < it->nmetrics; i++) {
        const char *mn = it->metrics[i].name;
        size_t cnt = 0;
        for (size_t j = 0; j < n; j++)
            cnt += strcmp(r[j].metric, mn) == 0;
        size_t want = strcmp(mn, "density_histogram") == 0 ? SAE_DENSITY_BINS
                      : strncmp(mn, "feature_", 8) == 0   ? (size_t)S
                                                          : 1;
        if (cnt != want)
            fail_msg("%s: %zu rows, expected %zu", mn, cnt, want);
    }
    double fvu = val(r, n, "fvu", -1);
    printf("%s: fvu %.4f l0 %.2f loss_recovered %.4f kl %.5f dead %.3f\n", it->name, fvu,
           val(r, n, "l0", -1), val(r, n, "loss_recovered", -1), val(r, n, "kl_spliced", -1),
           val(r, n, "dead_fraction", -1));
    assert_true(fvu >= 0.0 && fvu < 1.0);
    assert_true(val(r, n, "explained_variance", -1) == 1.0 - fvu);
    assert_true(val(r, n, "l0", -1) > 0.0);
    if (arch == SAE_TOPK)
        assert_true(val(r, n, "l0", -1) <= SAE_K);
    assert_true(val(r, n, "kl_spliced", -1) >= -1e-9);
    assert_true(isfinite(val(r, n, "loss_recovered", -1)));
    assert_true(val(r, n, "warm_start", -1) == 0.0);
    double hsum = 0.0;
    for (int b = 0; b < SAE_DENSITY_BINS; b++)
        hsum += val(r, n, "density_histogram", b);
    assert_true(fabs(hsum - 1.0) < 1e-9);
    for (int i = 0; i < S; i++) {
        double d = val(r, n, "feature_density", i);
        assert_true(d >= 0.0 && d <= 1.0);
        assert_true(val(r, n, "feature_mean_activation", i) >= 0.0);
    }
    /* files */
    snprintf(dir, sizeof dir, "%s/%s", art, it->name);
    list_dir(dir, names, sizeof names);
    assert_string_equal(names, HOOK); /* nothing staged is left */
    snprintf(dir, sizeof dir, "%s/%s/" HOOK, art, it->name);
    list_dir(dir, names, sizeof names);
    assert_string_equal(names, "cfg.json sae_weights.safetensors sparsity.safetensors");
    struct sae *s = NULL;
    struct sae_info info;
    struct err e;
    if (sae_load(&s, dir, &info, &e) < 0)
        fail_msg("%s", err_str(&e));
    assert_int_equal(info.format, SAE_FORMAT_SAELENS);
    assert_string_equal(info.hook_name, HOOK);
    assert_int_equal(s->arch, arch);
    assert_int_equal(s->d_in, 32);
    assert_int_equal(s->d_sae, S);
    /* SAELens's fold: unit rows trained, divided by s in the file */
    const double scale = val(r, n, "norm_scaling_factor", -1);
    assert_true(info.norm_scaling_factor == scale);
    for (int i = 0; i < S; i++) {
        double ss = 0.0;
        for (int j = 0; j < 32; j++)
            ss += (double)s->W_dec[i * 32 + j] * s->W_dec[i * 32 + j];
        assert_true(fabs(sqrt(ss) * scale - 1.0) < 1e-5);
    }
    sae_free(s);
    char path[320];
    snprintf(path, sizeof path, "%s/sparsity.safetensors", dir);
    struct st_file *sf = NULL;
    assert_int_equal(st_open(&sf, path, &e), 0);
    const struct st_tensor *sp = st_find(sf, "sparsity");
    assert_non_null(sp);
    assert_int_equal(sp->shape[0], S);
    for (int i = 0; i < S; i++) {
        float got;
        memcpy(&got, (const char *)sp->data + 4 * i, 4);
        assert_true(got == (float)log10(val(r, n, "feature_density", i) + 1e-10));
    }
    st_free(sf);
    free(r);
    fixture_free(&f);
}

static void test_sae_item(void **state)
{
    (void)state;
    check_item(&battery_item_sae, SAE_TOPK);
    assert_null(battery_item_sae.depends_on);
    assert_int_equal(battery_item_sae.opt_in, 0);
}

static void test_sae_relu_item(void **state)
{
    (void)state;
    check_item(&battery_item_sae_relu, SAE_RELU);
    assert_int_equal(battery_item_sae_relu.opt_in, 1);
}

/* ---- splicing ---- */

/* The exact ReLU SAE of width 2C (W_enc = [I, -I], W_dec = [I; -I]). */
static struct sae *exact_sae(int C)
{
    struct sae *id = NULL;
    struct err e;
    assert_int_equal(sae_create(&id, SAE_RELU, C, 2 * C, 0, &e), 0);
    for (int j = 0; j < C; j++) {
        id->W_enc[(size_t)j * 2 * C + j] = 1.0f;
        id->W_enc[(size_t)j * 2 * C + C + j] = -1.0f;
        id->W_dec[(size_t)j * C + j] = 1.0f;
        id->W_dec[(size_t)(C + j) * C + j] = -1.0f;
    }
    return id;
}

static void test_splice(void **state)
{
    (void)state;
    struct fixture f;
    fixture_init(&f);
    const int C = 32, B = 3, T = f.T;
    struct err e;
    struct sae *id = exact_sae(C), *zero = NULL;
    assert_int_equal(sae_create(&zero, SAE_RELU, C, 2 * C, 0, &e), 0);
    struct sae_splice a, z;
    if (sae_splice_eval(f.m, id, HOOK_RESID_POST, 1, f.tok, B, T, &a, &e) < 0 ||
        sae_splice_eval(f.m, zero, HOOK_RESID_POST, 1, f.tok, B, T, &z, &e) < 0)
        fail_msg("%s", err_str(&e));
    printf("identity: clean %.9f spliced %.9f zero %.9f recovered %.9f kl %.3g\n", a.ce_clean,
           a.ce_spliced, a.ce_zero, a.loss_recovered, a.kl_spliced);
    printf("zero:     spliced %.9f zero %.9f recovered %.9f kl %.3g\n", z.ce_spliced, z.ce_zero,
           z.loss_recovered, z.kl_spliced);
    assert_true(fabs(a.loss_recovered - 1.0) <= 1e-4);
    assert_true(fabs(a.kl_spliced) <= 1e-7);
    assert_true(z.ce_spliced == z.ce_zero);
    assert_true(z.loss_recovered == 0.0);
    assert_true(z.kl_spliced > 1e-3);
    assert_true(a.ce_clean == z.ce_clean);
    assert_int_equal(gptneox_forward(f.m, f.tok, B, T, NULL, 0, &e), 0);
    assert_true(fabs(gptneox_loss(f.m, f.tok, B, T, NULL, NULL) - a.ce_clean) <= 1e-12);
    assert_int_equal(sae_splice_eval(f.m, id, HOOK_RESID_POST, 2, f.tok, B, T, &a, &e), ERR_INVALID);
    /* other sites */
    struct gptneox_layer *L0 = &f.m->layers[0], *L1 = &f.m->layers[1];
    /* each site, and the weights whose zeroing removes the same term */
    struct {
        enum hook_kind kind;
        int layer;
        float *w[2];
        size_t n[2];
    } sites[] = {
        {HOOK_RESID_PRE, 0, {f.m->embed, NULL}, {(size_t)64 * C, 0}},
        {HOOK_MLP_OUT, 0, {L0->proj_w, L0->proj_b}, {(size_t)C * f.m->cfg.d_mlp, (size_t)C}},
        {HOOK_ATTN_OUT, 1, {L1->attn_w, L1->attn_b}, {(size_t)C * C, (size_t)C}},
    };
    for (size_t i = 0; i < sizeof sites / sizeof *sites; i++) {
        if (sae_splice_eval(f.m, id, sites[i].kind, sites[i].layer, f.tok, B, T, &a, &e) < 0 ||
            sae_splice_eval(f.m, zero, sites[i].kind, sites[i].layer, f.tok, B, T, &z, &e) < 0)
            fail_msg("%s", err_str(&e));
        float *keep[2] = {NULL, NULL};
        for (int k = 0; k < 2; k++)
            if (sites[i].w[k]) {
                keep[k] = malloc(sites[i].n[k] * sizeof(float));
                memcpy(keep[k], sites[i].w[k], sites[i].n[k] * sizeof(float));
                memset(sites[i].w[k], 0, sites[i].n[k] * sizeof(float));
            }
        assert_int_equal(gptneox_forward(f.m, f.tok, B, T, NULL, 0, &e), 0);
        const double removed = gptneox_loss(f.m, f.tok, B, T, NULL, NULL);
        for (int k = 0; k < 2; k++)
            if (keep[k]) {
                memcpy(sites[i].w[k], keep[k], sites[i].n[k] * sizeof(float));
                free(keep[k]);
            }
        printf("site %d.%d: clean %.9f zero %.9f (weights zeroed %.9f) exact recovered %.6f\n",
               (int)sites[i].kind, sites[i].layer, a.ce_clean, z.ce_zero, removed,
               a.loss_recovered);
        assert_true(fabs(z.ce_zero - removed) <= 1e-12);
        assert_true(fabs(z.ce_zero - a.ce_clean) > 1e-4); /* the site matters */
        assert_true(fabs(a.loss_recovered - 1.0) <= 1e-4);
    }
    /* hook_resid_mid exists in a sequential-residual model */
    struct gptneox_config cfg = f.m->cfg;
    cfg.parallel_residual = 0;
    struct gptneox *seq = NULL;
    assert_int_equal(gptneox_create(&seq, &cfg, &e), 0);
    gptneox_init_random(seq, 43, 0.2f);
    if (sae_splice_eval(seq, id, HOOK_RESID_MID, 1, f.tok, B, T, &a, &e) < 0 ||
        sae_splice_eval(seq, zero, HOOK_RESID_MID, 1, f.tok, B, T, &z, &e) < 0)
        fail_msg("%s", err_str(&e));
    assert_true(fabs(a.loss_recovered - 1.0) <= 1e-4);
    assert_true(fabs(z.ce_zero - a.ce_clean) > 1e-4);
    assert_int_equal(sae_splice_eval(f.m, id, HOOK_RESID_MID, 1, f.tok, B, T, &a, &e),
                     ERR_INVALID);
    gptneox_free(seq);
    sae_free(id);
    sae_free(zero);
    fixture_free(&f);
}

/* ---- warm start ---- */

static void test_warm_start(void **state)
{
    (void)state;
    struct fixture f;
    fixture_init(&f);
    char a1[128], a2[128], a3[128], dir[256];
    snprintf(a1, sizeof a1, "%s/warm-1", tmpdir);
    snprintf(a2, sizeof a2, "%s/warm-2", tmpdir);
    snprintf(a3, sizeof a3, "%s/warm-3", tmpdir);
    struct battery_ctx c1 = ctx_of(&f, a1, NULL), c2 = ctx_of(&f, a2, a1);
    size_t n1, n2;
    struct grow *r1 = grows_run(&battery_item_sae, &c1, &n1);
    struct grow *r2 = grows_run(&battery_item_sae, &c2, &n2);
    assert_true(val(r1, n1, "warm_start", -1) == 0.0);
    assert_true(val(r2, n2, "warm_start", -1) == 1.0);
    const double scale = val(r2, n2, "norm_scaling_factor", -1);
    printf("cold fvu %.4f, warm fvu %.4f\n", val(r1, n1, "fvu", -1), val(r2, n2, "fvu", -1));
    /* the start is the previous dictionary unfolded with its own s' (in
     * its metadata), biases at this checkpoint's scale */
    struct sae *prev = NULL, *s = NULL;
    struct sae_info info;
    struct err e;
    snprintf(dir, sizeof dir, "%s/sae/" HOOK, a1);
    assert_int_equal(sae_load(&prev, dir, &info, &e), 0);
    const double sp = val(r1, n1, "norm_scaling_factor", -1);
    assert_true(info.norm_scaling_factor == sp);
    assert_int_equal(sae_create(&s, SAE_TOPK, 32, 128, SAE_K, &e), 0);
    assert_int_equal(sae_warm_start(s, a1, "sae", HOOK, scale), 1);
    for (int i = 0; i < 32 * 128; i++) {
        assert_true(s->W_enc[i] == (float)(prev->W_enc[i] / sp));
        assert_true(s->W_dec[i] == (float)(prev->W_dec[i] * sp));
    }
    for (int i = 0; i < 128; i++) /* unit rows again */
        assert_true(fabs(cblas_snrm2(32, s->W_dec + i * 32, 1) - 1.0) < 1e-5);
    for (int i = 0; i < 128; i++)
        assert_true(s->b_enc[i] == (float)((float)(prev->b_enc[i] / sp) * scale));
    for (int j = 0; j < 32; j++)
        assert_true(s->b_dec[j] == (float)(prev->b_dec[j] * scale));
    /* the trained dictionary moved away from it */
    struct sae *trained = NULL;
    snprintf(dir, sizeof dir, "%s/sae/" HOOK, a2);
    assert_int_equal(sae_load(&trained, dir, NULL, &e), 0);
    assert_memory_not_equal(trained->W_dec, prev->W_dec, sizeof(float) * 32 * 128);
    sae_free(trained);
    /* nothing there, or another architecture: cold */
    struct sae *untouched = sae_clone(s);
    assert_int_equal(sae_warm_start(s, a3, "sae", HOOK, scale), 0);
    assert_int_equal(sae_warm_start(s, a1, "sae_relu", HOOK, scale), 0);
    assert_memory_equal(s->block, untouched->block, sizeof(float) * (2 * 32 * 128 + 128 + 32));
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "mkdir -p %s/sae_relu && cp -r %s/sae/" HOOK " %s/sae_relu/", a3, a1,
             a3);
    assert_int_equal(system(cmd), 0);
    struct sae *relu = NULL;
    assert_int_equal(sae_create(&relu, SAE_RELU, 32, 128, 0, &e), 0);
    assert_int_equal(sae_warm_start(relu, a3, "sae_relu", HOOK, scale), 0); /* a TopK file */
    /* a dictionary that does not record its scale: cold */
    snprintf(cmd, sizeof cmd,
             "mkdir -p %s/nos/sae && cp -r %s/sae/" HOOK " %s/nos/sae/ && sed -i "
             "'s/\"norm_scaling_factor\"/\"other\"/' %s/nos/sae/" HOOK "/cfg.json",
             a3, a1, a3, a3);
    assert_int_equal(system(cmd), 0);
    snprintf(dir, sizeof dir, "%s/nos", a3);
    assert_int_equal(sae_warm_start(s, dir, "sae", HOOK, scale), 0);
    assert_memory_equal(s->block, untouched->block, sizeof(float) * (2 * 32 * 128 + 128 + 32));
    struct battery_ctx c3 = ctx_of(&f, a2, a3);
    size_t n3;
    struct grow *r3 = grows_run(&battery_item_sae_relu, &c3, &n3);
    assert_true(val(r3, n3, "warm_start", -1) == 0.0);
    free(r3);
    sae_free(relu);
    sae_free(untouched);
    sae_free(s);
    sae_free(prev);
    free(r1);
    free(r2);
    fixture_free(&f);
}

/* ---- determinism ---- */

static void test_determinism(void **state)
{
    (void)state;
    struct fixture f;
    fixture_init(&f);
    char art[2][128];
    struct rows r[2];
    for (int k = 0; k < 2; k++) {
        snprintf(art[k], sizeof art[k], "%s/det-%d", tmpdir, k);
        struct battery_ctx c = ctx_of(&f, art[k], NULL);
        rows_init(&r[k]);
        struct err e;
        if (battery_run_item(&battery_item_sae, &c, &r[k], &e) < 0)
            fail_msg("%s", err_str(&e));
        /* a forward of another shape in between must not matter */
        assert_int_equal(gptneox_forward(f.m, f.tok, 1, 5, NULL, 0, &e), 0);
    }
    assert_int_equal(r[0].len, r[1].len);
    assert_memory_equal(r[0].buf, r[1].buf, r[0].len);
    const char *files[3] = {"cfg.json", "sae_weights.safetensors", "sparsity.safetensors"};
    for (int i = 0; i < 3; i++) {
        char p0[256], p1[256];
        snprintf(p0, sizeof p0, "%s/sae/" HOOK "/%s", art[0], files[i]);
        snprintf(p1, sizeof p1, "%s/sae/" HOOK "/%s", art[1], files[i]);
        size_t l0, l1;
        char *b0 = slurp(p0, &l0), *b1 = slurp(p1, &l1);
        assert_non_null(b0);
        assert_non_null(b1);
        assert_int_equal(l0, l1);
        assert_memory_equal(b0, b1, l0);
        free(b0);
        free(b1);
    }
    /* another seed, another dictionary */
    struct battery_ctx c = ctx_of(&f, art[1], NULL);
    c.seed = 6;
    struct rows r2;
    rows_init(&r2);
    struct err e;
    assert_int_equal(battery_run_item(&battery_item_sae, &c, &r2, &e), 0);
    assert_true(r2.len != r[0].len || memcmp(r2.buf, r[0].buf, r2.len) != 0);
    rows_free(&r2);
    rows_free(&r[0]);
    rows_free(&r[1]);
    fixture_free(&f);
}

/* ---- bad input ---- */

static void test_bad_input(void **state)
{
    (void)state;
    struct fixture f;
    fixture_init(&f);
    struct err e;
    struct rows r;
    rows_init(&r);
    /* no --artifacts */
    struct battery_ctx c = ctx_of(&f, NULL, NULL);
    assert_int_equal(battery_run_item(&battery_item_sae, &c, &r, &e), ERR_INVALID);
    assert_non_null(strstr(err_str(&e), "--artifacts"));
    assert_int_equal(r.n, 0);
    /* NaN activations: a NaN weight in layer 0 */
    char art[128], names[256];
    snprintf(art, sizeof art, "%s/nan", tmpdir);
    c = ctx_of(&f, art, NULL);
    f.m->layers[0].fc_b[3] = NAN;
    assert_int_equal(battery_run_item(&battery_item_sae, &c, &r, &e), ERR_NUMERIC);
    printf("NaN: %s\n", err_str(&e));
    assert_non_null(strstr(err_str(&e), "not finite"));
    assert_int_equal(r.n, 0);
    struct stat sb;
    if (stat(art, &sb) == 0) { /* created or not, it holds nothing */
        list_dir(art, names, sizeof names);
        assert_string_equal(names, "");
    }
    f.m->layers[0].fc_b[3] = 0.0f;
    /* fewer than 5 sequences */
    c = ctx_of(&f, art, NULL);
    c.eval_B = 4;
    assert_int_equal(battery_run_item(&battery_item_sae, &c, &r, &e), ERR_INVALID);
    assert_non_null(strstr(err_str(&e), "at least 5"));
    /* an artifacts path that cannot be a directory: the item fails, rows dropped */
    char file[160];
    snprintf(file, sizeof file, "%s/plainfile", tmpdir);
    FILE *fp = fopen(file, "w");
    assert_non_null(fp);
    fclose(fp);
    c = ctx_of(&f, file, NULL);
    assert_int_equal(battery_run_item(&battery_item_sae, &c, &r, &e), ERR_IO);
    assert_int_equal(r.n, 0);
    rows_free(&r);
    fixture_free(&f);
}

/* ---- sites ---- */

static void test_sites_resolve(void **state)
{
    (void)state;
    struct fixture f;
    fixture_init(&f);
    struct sae_site st[SAE_SITES_MAX];
    struct err e;
    assert_int_equal(sae_sites_resolve(&f.m->cfg, NULL, 0, st, &e), 1);
    assert_string_equal(st[0].name, HOOK);
    assert_int_equal(st[0].kind, HOOK_RESID_POST);
    assert_int_equal(st[0].layer, 1);
    const char *two[] = {"blocks.1.hook_attn_out", "blocks.0.hook_mlp_out"};
    assert_int_equal(sae_sites_resolve(&f.m->cfg, two, 2, st, &e), 2);
    assert_int_equal(st[0].kind, HOOK_ATTN_OUT);
    assert_int_equal(st[0].layer, 1);
    assert_int_equal(st[1].kind, HOOK_MLP_OUT);
    assert_int_equal(st[1].layer, 0);
    static const struct {
        const char *names[2];
        int n;
        const char *says;
    } bad[] = {
        {{"blocks.0.attn.hook_pattern"}, 1, "not an SAE site"},
        {{"blocks.0.mlp.hook_post"}, 1, "not an SAE site"},
        {{"blocks.2.hook_resid_post"}, 1, "outside the model's 2 layers"},
        {{"blocks.0.hook_resid_mid"}, 1, "no hook_resid_mid"},
        {{"blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"}, 2, "one SAE site per layer"},
        {{"resid_post"}, 1, "not a hook name"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(sae_sites_resolve(&f.m->cfg, bad[i].names, bad[i].n, st, &e),
                         ERR_INVALID);
        printf("%s: %s\n", bad[i].names[bad[i].n - 1], err_str(&e));
        assert_non_null(strstr(err_str(&e), bad[i].says));
    }
    fixture_free(&f);
}

static void test_item_sites(void **state)
{
    (void)state;
    struct fixture f;
    fixture_init(&f);
    char art[128], dir[256], names[512];
    snprintf(art, sizeof art, "%s/sites", tmpdir);
    const char *two[] = {"blocks.0.hook_mlp_out", "blocks.1.hook_attn_out"};
    struct battery_ctx c = ctx_of(&f, art, NULL);
    c.sae_sites = two;
    c.nsae_sites = 2;
    size_t n;
    struct grow *r = grows_run(&battery_item_sae, &c, &n);
    for (size_t i = 0; i < battery_item_sae.nmetrics; i++) {
        const char *mn = battery_item_sae.metrics[i].name;
        size_t want = strcmp(mn, "density_histogram") == 0 ? SAE_DENSITY_BINS
                      : strncmp(mn, "feature_", 8) == 0   ? 128
                                                          : 1;
        for (int layer = 0; layer < 2; layer++) {
            size_t cnt = 0;
            for (size_t j = 0; j < n; j++)
                cnt += strcmp(r[j].metric, mn) == 0 && r[j].layer == layer && r[j].head == -1;
            if (cnt != want)
                fail_msg("%s layer %d: %zu rows, expected %zu", mn, layer, cnt, want);
        }
    }
    assert_int_equal(n, 2 * (13 + SAE_DENSITY_BINS + 2 * 128));
    snprintf(dir, sizeof dir, "%s/sae", art);
    list_dir(dir, names, sizeof names);
    assert_string_equal(names, "blocks.0.hook_mlp_out blocks.1.hook_attn_out");
    for (int k = 0; k < 2; k++) {
        snprintf(dir, sizeof dir, "%s/sae/%s/cfg.json", art, two[k]);
        size_t len;
        char *js = slurp(dir, &len);
        assert_non_null(js);
        char want[96];
        snprintf(want, sizeof want, "\"hook_name\": \"%s\"", two[k]);
        if (!strstr(js, want))
            fail_msg("%s lacks %s", dir, want);
        free(js);
    }
    free(r);
    /* the second site fails: no dictionary is left, the first's included */
    snprintf(art, sizeof art, "%s/sites-fail", tmpdir);
    const char *late[] = {"blocks.0.hook_mlp_out", "blocks.1.hook_resid_post"};
    c = ctx_of(&f, art, NULL);
    c.sae_sites = late;
    c.nsae_sites = 2;
    f.m->layers[1].fc_b[3] = NAN;
    struct rows rr;
    rows_init(&rr);
    struct err e;
    assert_int_equal(battery_run_item(&battery_item_sae, &c, &rr, &e), ERR_NUMERIC);
    printf("second site: %s\n", err_str(&e));
    assert_non_null(strstr(err_str(&e), "blocks.1.hook_resid_post"));
    assert_int_equal(rr.n, 0);
    snprintf(dir, sizeof dir, "%s/sae", art);
    list_dir(dir, names, sizeof names);
    assert_string_equal(names, "");
    rows_free(&rr);
    fixture_free(&f);
}

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_battery_sae-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sae_item),
        cmocka_unit_test(test_sae_relu_item),
        cmocka_unit_test(test_splice),
        cmocka_unit_test(test_warm_start),
        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_sites_resolve),
        cmocka_unit_test(test_item_sites),
    };
    return cmocka_run_group_tests_name("battery_sae", tests, setup, teardown);
}
