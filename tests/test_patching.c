/*
 * test_patching - the patching engine (workers/battery/patching.h) and the
 * patching items: `patching`, `path_patching`'s path matrix and `circuit`.
 *
 * Against an independent reference (tests/reference/patching_ref.py,
 * float64 torch; tests/golden/patching/): every row of `patching` on two
 * golden fixtures (parallel and sequential residual) with the built-in
 * induction pairs (idx 0, seed 0) and the reference's pair file (idx 1):
 * |C - ref| <= 2e-4 + 1e-4 |ref| for the normalised scores (the built-in
 * set of the parallel fixture has a clean-corrupted gap of 0.02 logits,
 * which multiplies float32 rounding by 50) and 1e-5 + 1e-5 |ref| for the
 * logit differences; and the path matrix of every (sender, receiver) pair
 * and every direct path, both directions, within the same tolerance.
 *
 * `attribution` against autograd's gradients in the same reference, within
 * the same tolerance (the error rows against the reference's exact
 * scores).
 *
 * On the hand-built induction circuit (workers/model/circuits.h; the
 * built-in pairs corrupt the token before the answer in the first copy,
 * so only an induction mechanism separates the answer from the wrong one):
 *   - the baselines: clean LD ~ 30 logits, corrupted ~ 0;
 *   - denoising the induction head 1.0 or the previous-token head 0.0
 *     restores the behaviour (> 0.95, at every position and at the
 *     positions of interest); noising either removes it (< 0.05); the
 *     uniform heads 0.1 and 1.1 restore nothing (|.| < 0.02) and remove
 *     nothing (> 0.98);
 *   - the residual stream at the corrupted position L-1 restores it at
 *     layer 0 (> 0.95) and not at layer 1 (|.| < 0.02): the previous-token
 *     head has moved the token to L, where layer 1's stream restores it
 *     (> 0.95); the embedding at L, the same in both prompts, does nothing;
 *   - path patching: the previous-token head reaches the logits only
 *     through the induction head: the path 0.0 -> 1.0 carries the whole
 *     effect (noising < 0.05, denoising > 0.95) while the direct path
 *     0.0 -> logits carries none (noising > 0.98, denoising < 0.02 in
 *     size); 0.0 -> 1.1 and the uniform head 0.1 -> 1.0 change nothing;
 *   - attribution estimates the induction head (within 0.05 of 1) but not
 *     the previous-token head (|.| < 0.05, exact 1: the induction head's
 *     saturated pattern hides it), and says so (atp_error_max_abs > 0.9);
 *     path_patching, ranking by both, still picks 0.0 and 1.0 first and
 *     finds the path;
 *   - the circuit is {0.0, 1.0}.
 * The circuit item on score files written by hand: size, members, Jaccard,
 * added, removed; an absent behaviour (gap below CIRCUIT_MIN_GAP) gives the
 * empty circuit; another pair set's previous scores give no Jaccard row;
 * no scores of this checkpoint is an error naming the patching item.
 * Errors: a pair set the model cannot run, no artifact directory.  The
 * same inputs twice give the same bytes.
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
#include <unistd.h>

#include <cmocka.h>

#include "tests/lib/battery_golden.h"
#include "tests/lib/test_files.h"
#include "workers/battery/battery_patching.h"
#include "workers/model/circuits.h"

static char *tmpdir(void)
{
    char *d = strdup("/tmp/test_patching.XXXXXX");
    assert_non_null(d);
    assert_non_null(mkdtemp(d));
    return d;
}

static void rm_rf(const char *d)
{
    char *cmd = xasprintf("rm -rf '%s'", d);
    assert_int_equal(system(cmd), 0);
    free(cmd);
}

static struct gptneox *load_model(const char *dir)
{
    struct gptneox *m = NULL;
    struct err e;
    if (gptneox_load(&m, dir, 0, &e) < 0)
        fail_msg("%s: %s", dir, err_str(&e));
    return m;
}

static struct gptneox *circuit(void)
{
    struct gptneox *m = NULL;
    struct err e;
    if (circuit_build(&m, "induction-circuit", &e) < 0)
        fail_msg("%s", err_str(&e));
    return m;
}

static double get(const struct grow *g, size_t n, const char *metric, int l, int h, int idx)
{
    const struct grow *r = grows_find(g, n, metric, l, h, idx);
    if (!r)
        fail_msg("no row %s %d %d %d", metric, l, h, idx);
    return r->value;
}

/* ---- against the torch reference ---- */

static const struct gtol tol[] = {
    {"clean_logit_diff", 1e-5, 1e-5},
    {"corrupted_logit_diff", 1e-5, 1e-5},
    {"*", 2e-4, 1e-4},
};

static void check_path_golden(struct gptneox *m, const struct pair_set *ps, const char *path)
{
    json_error_t je;
    json_t *doc = json_load_file(path, 0, &je);
    if (!doc)
        fail_msg("%s: %s", path, je.text);
    const int n = m->cfg.n_layers * m->cfg.n_heads;
    int *heads = malloc((size_t)n * sizeof *heads);
    double *res = malloc((size_t)n * (n + 1) * sizeof *res);
    assert_non_null(heads);
    assert_non_null(res);
    for (int i = 0; i < n; i++)
        heads[i] = i;
    struct patch_base pb;
    struct err e;
    if (patch_base_run(&pb, m, ps, 0, &e) < 0)
        fail_msg("%s", err_str(&e));
    const char *dirs[2] = {"denoise", "noise"};
    double worst = 0;
    for (int d = 0; d < 2; d++) {
        if (patch_path(&pb, (enum patch_dir)d, heads, n, heads, n, res, &e) < 0)
            fail_msg("%s", err_str(&e));
        json_t *mat = json_object_get(doc, dirs[d]);
        assert_int_equal(json_array_size(mat), n);
        for (int s = 0; s < n; s++)
            for (int r = 0; r <= n; r++) {
                json_t *v = json_array_get(json_array_get(mat, s), r);
                double got = patch_normalise(&pb, res[s * (n + 1) + r]);
                if (json_is_null(v)) {
                    assert_true(isnan(res[s * (n + 1) + r]));
                    continue;
                }
                double want = json_number_value(v), dd = fabs(got - want);
                if (!(dd <= 2e-4 + 1e-4 * fabs(want)))
                    fail_msg("%s %s: sender %d receiver %d: %.10g, reference %.10g", path,
                             dirs[d], s, r, got, want);
                worst = fmax(worst, dd);
            }
    }
    printf("%s: path matrix max |diff| %.3g\n", path, worst);
    patch_base_free(&pb);
    free(res);
    free(heads);
    json_decref(doc);
}

/* The rows of patching v1's metrics (the baselines and the exact scores
 * of each family), in place; their number. */
static size_t v1_rows(struct grow *g, size_t n)
{
    static const char *const keep[] = {"clean_logit_diff", "corrupted_logit_diff",
                                       "head_denoise",     "head_noise",
                                       "head_denoise_poi", "head_noise_poi",
                                       "resid_denoise",    "resid_noise"};
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < sizeof keep / sizeof *keep; j++)
            if (strcmp(g[i].metric, keep[j]) == 0) {
                g[k++] = g[i];
                break;
            }
    return k;
}

/* patching v2 off a sweep (g0, n0) against the full sweep of the same
 * checkpoint (g, n) and the attribution item's rows (ga, na): the exact
 * entries are the sweep's, bit for bit; the estimates are attribution's;
 * the selections follow the rules; errors and sample_mae are what the
 * rows say.  Returns the number of exact components off the sweep, and in
 * *worst the largest difference from the sweep (measured: 0 or 4e-8 on
 * the SkylakeX kernels, 0 on Sandybridge's and Prescott's, 2.3e-5 on
 * Haswell's, whose edge tiles round differently; the tolerance, 1e-4 +
 * 1e-4 relative, is inside the reference's). */
static int check_sparse(const struct grow *g0, size_t n0, const struct grow *g, size_t n,
                        const struct grow *ga, size_t na, double *worst)
{
    int exact = 0;
    for (int f = 0; f < PATCH_FAM_COUNT; f++) {
        const char *fam = patch_family_name((enum patch_family)f);
        char m_est[64], m_err[64], m_sel[64], m_atp[64];
        snprintf(m_est, sizeof m_est, "%s_estimate", fam);
        snprintf(m_err, sizeof m_err, "%s_error", fam);
        snprintf(m_sel, sizeof m_sel, "%s_selection", fam);
        snprintf(m_atp, sizeof m_atp, "atp_%s", fam);
        int top[4] = {0}, sample[4] = {0}, nest[4] = {0};
        double mae[4] = {0};
        for (size_t i = 0; i < n0; i++) {
            const struct grow *r = &g0[i];
            assert_true(r->idx >= 0 && r->idx < 4);
            if (strcmp(r->metric, m_est) == 0) {
                nest[r->idx]++;
                /* every component estimated, as attribution does, and the
                 * same estimate on the sweep */
                const struct grow *a = grows_find(ga, na, m_atp, r->layer, r->head, r->idx);
                const struct grow *w = grows_find(g, n, m_est, r->layer, r->head, r->idx);
                assert_non_null(a);
                assert_non_null(w);
                assert_memory_equal(&a->value, &r->value, sizeof r->value);
                assert_memory_equal(&w->value, &r->value, sizeof r->value);
                continue;
            }
            if (strcmp(r->metric, fam) != 0)
                continue;
            const struct grow *w = grows_find(g, n, fam, r->layer, r->head, r->idx);
            const struct grow *sel = grows_find(g0, n0, m_sel, r->layer, r->head, r->idx);
            const struct grow *er = grows_find(g0, n0, m_err, r->layer, r->head, r->idx);
            const struct grow *es = grows_find(g0, n0, m_est, r->layer, r->head, r->idx);
            assert_non_null(w);
            assert_non_null(sel);
            assert_non_null(er);
            assert_non_null(es);
            /* the same component, stacked with other variants: the same
             * number up to the kernels' rounding (an OpenBLAS edge tile
             * may hold a row in one stack and not in the other) */
            double d = fabs(w->value - r->value);
            if (!(d <= 1e-4 * (1 + fabs(w->value))) && !(isnan(w->value) && isnan(r->value)))
                fail_msg("%s %d %d %d: %.17g off the sweep, %.17g on it", fam, r->layer, r->head,
                         r->idx, r->value, w->value);
            *worst = d > *worst ? d : *worst;
            assert_true(er->value == es->value - r->value ||
                        (isnan(er->value) && isnan(es->value - r->value)));
            assert_true(sel->value == 1 || sel->value == 2 || sel->value == 4);
            assert_true(sel->value != 4 || f >= PATCH_FAM_RESID_DENOISE);
            top[r->idx] += sel->value == 1;
            if (sel->value == 2) {
                sample[r->idx]++;
                mae[r->idx] += fabs(er->value);
            }
            exact += sel->value != 4;
        }
        for (int k = 0; k < 4; k++) {
            if (!nest[k])
                continue;
            assert_true(top[k] <= PATCH_TOP_K && sample[k] <= PATCH_SAMPLE);
            assert_true(top[k] == PATCH_TOP_K || sample[k] == 0); /* a sample beyond the top k */
            const struct grow *m = grows_find(g0, n0, "sample_mae", -1, f, k);
            if (sample[k])
                assert_true(m && fabs(m->value - mae[k] / sample[k]) <= 1e-12 * (1 + mae[k]));
            assert_null(grows_find(g0, n0, "topk_recall", -1, f, k)); /* sweeps only */
        }
    }
    return exact;
}

static void test_reference(void **state)
{
    (void)state;
    const char *fixtures[2] = {"f32_parallel_rot025", "f32_sequential_rot100"};
    for (int i = 0; i < 2; i++) {
        char *dir = xasprintf("tests/golden/%s", fixtures[i]);
        char *pairs = xasprintf("tests/golden/patching/pairs_%s.json", fixtures[i]);
        char *golden = xasprintf("tests/golden/patching/%s_patching.json", fixtures[i]);
        char *pgold = xasprintf("tests/golden/patching/%s_path.json", fixtures[i]);
        char *agold = xasprintf("tests/golden/patching/%s_attribution.json", fixtures[i]);
        char *art = tmpdir();
        struct gptneox *m = load_model(dir);
        struct pair_set *ps = NULL;
        struct err e;
        if (pair_set_load(&ps, pairs, NULL, &e) < 0)
            fail_msg("%s", err_str(&e));
        const struct pair_set *sets[1] = {ps};
        struct battery_ctx c = {.model = m, .seed = 0, .pair_sets = sets, .npair_sets = 1,
                                .artifacts_dir = art, .full_sweep = 1};
        size_t n = 0, n2 = 0, na = 0, n0 = 0;
        /* off the sweep: the top k and a sample exact, the rest estimated */
        struct grow *g0 = grows_run(&battery_item_patching, &(struct battery_ctx){
                                        .model = m, .seed = 0, .pair_sets = sets,
                                        .npair_sets = 1, .artifacts_dir = art}, &n0);
        /* a full sweep: every component exact, v1's rows as before */
        struct grow *g = grows_run(&battery_item_patching, &c, &n);
        struct grow *gv1 = malloc(n * sizeof *gv1);
        assert_non_null(gv1);
        memcpy(gv1, g, n * sizeof *g);
        grows_compare_golden(gv1, v1_rows(gv1, n), golden, tol);
        free(gv1);
        for (int f = 0; f < PATCH_FAM_COUNT; f++) /* on a sweep every recall is there */
            assert_non_null(grows_find(g, n, "topk_recall", -1, f, 1));
        /* attribution: the estimates against autograd's, the errors against
         * the reference's exact scores */
        struct grow *ga = grows_run(&battery_item_attribution, &c, &na);
        grows_compare_golden(ga, na, agold, tol);
        double worst = 0;
        int exact = check_sparse(g0, n0, g, n, ga, na, &worst);
        printf("%s: %d components exact off the sweep, max |diff| from the sweep %.3g\n",
               fixtures[i], exact, worst);
        assert_true(exact > 0);
        free(ga);
        free(g0);
        /* the same inputs, the same bytes */
        struct grow *g2 = grows_run(&battery_item_patching, &c, &n2);
        assert_int_equal(n, n2);
        assert_memory_equal(g, g2, n * sizeof *g);
        /* the score file holds what the rows say */
        struct patch_scores s;
        assert_int_equal(patch_scores_read(&s, art, "patching", 1, &e), 0);
        assert_string_equal(s.digest, ps->digest);
        assert_true(s.v[PATCH_FAM_HEAD_NOISE][1] == get(g, n, "head_noise", 0, 1, 1));
        assert_true(s.v[PATCH_FAM_RESID_DENOISE][3] == get(g, n, "resid_denoise", 0, 3, 1));
        patch_scores_free(&s);
        check_path_golden(m, ps, pgold);
        free(g2);
        free(g);
        pair_set_free(ps);
        gptneox_free(m);
        rm_rf(art);
        free(art);
        free(agold);
        free(pgold);
        free(golden);
        free(pairs);
        free(dir);
    }
}

/* ---- the hand-built induction circuit ---- */

static void test_induction_circuit(void **state)
{
    (void)state;
    struct gptneox *m = circuit();
    char *art = tmpdir();
    struct battery_ctx c = {.model = m, .seed = 3, .artifacts_dir = art, .full_sweep = 1};
    size_t n = 0;
    struct grow *g = grows_run(&battery_item_patching, &c, &n);
    double clean = get(g, n, "clean_logit_diff", -1, -1, 0);
    double corr = get(g, n, "corrupted_logit_diff", -1, -1, 0);
    printf("induction circuit: LD clean %.4f, corrupted %.4g\n", clean, corr);
    assert_true(clean > 25 && fabs(corr) < 0.5);
    const char *den[2] = {"head_denoise", "head_denoise_poi"};
    const char *noi[2] = {"head_noise", "head_noise_poi"};
    for (int k = 0; k < 2; k++) {
        for (int l = 0; l < 2; l++) { /* the induction and the previous-token head */
            assert_true(get(g, n, den[k], l, 0, 0) > 0.95); /* restore it */
            assert_true(get(g, n, noi[k], l, 0, 0) < 0.05); /* and are needed */
        }
        for (int l = 0; l < 2; l++) {                    /* the uniform heads do nothing */
            assert_true(fabs(get(g, n, den[k], l, 1, 0)) < 0.02);
            assert_true(get(g, n, noi[k], l, 1, 0) > 0.98);
        }
    }
    const int L = PAIR_IND_LEN;
    assert_true(get(g, n, "resid_denoise", 1, L, 0) > 0.95);
    assert_true(get(g, n, "resid_denoise", 0, L - 1, 0) > 0.95);
    /* by layer 1 the corrupted token has moved on to L: L-1 no longer matters */
    assert_true(fabs(get(g, n, "resid_denoise", 1, L - 1, 0)) < 0.02);
    assert_true(fabs(get(g, n, "resid_denoise", 0, L, 0)) < 1e-6);
    assert_true(get(g, n, "resid_noise", 0, L - 1, 0) < 0.05);
    for (int t = L + 1; t < 2 * L - 1; t++) /* the second copy is the same in both prompts */
        assert_true(fabs(get(g, n, "resid_denoise", 1, t, 0)) < 1e-6);
    free(g);
    /* attribution: right where the path to the logits is linear, blind
     * where a saturated pattern lies on it (the induction head's keys) */
    g = grows_run(&battery_item_attribution, &c, &n);
    assert_true(fabs(get(g, n, "atp_head_denoise", 1, 0, 0) - 1) < 0.05);
    assert_true(fabs(get(g, n, "atp_head_denoise", 0, 0, 0)) < 0.05);
    assert_true(get(g, n, "atp_error_max_abs", -1, PATCH_FAM_HEAD_DENOISE, 0) > 0.9);
    printf("induction circuit attribution: 1.0 %.4f, 0.0 %.4g (exact 1 and 1)\n",
           get(g, n, "atp_head_denoise", 1, 0, 0), get(g, n, "atp_head_denoise", 0, 0, 0));
    free(g);
    /* path patching picks its heads from both and finds the path */
    g = grows_run(&battery_item_path_patching, &c, &n);
    assert_true(get(g, n, "path_noise", 1, 0, 0 * 4 + 0) < 0.05);     /* 0.0 -> 1.0 */
    assert_true(get(g, n, "path_noise", -1, -1, 0 * 4 + 0) > 0.98);  /* 0.0 -> logits */
    assert_true(get(g, n, "path_denoise", 1, 0, 0 * 4 + 0) > 0.95);
    assert_true(get(g, n, "path_component", 1, 0, 0) <= 1); /* ranked first or second */
    assert_true(get(g, n, "path_component", 0, 0, 0) <= 1);
    free(g);
    /* the circuit item reads what patching left */
    g = grows_run(&battery_item_circuit, &c, &n);
    assert_true(get(g, n, "circuit_size", -1, -1, 0) == 2);
    assert_true(get(g, n, "circuit_member", 0, 0, 0) == 1);
    assert_true(get(g, n, "circuit_member", 1, 0, 0) == 1);
    assert_true(get(g, n, "circuit_member", 0, 1, 0) == 0);
    assert_true(get(g, n, "circuit_member", 1, 1, 0) == 0);
    assert_null(grows_find(g, n, "circuit_jaccard", -1, -1, 0)); /* no previous checkpoint */
    free(g);
    rm_rf(art);
    free(art);
    gptneox_free(m);
}

static void test_path_circuit(void **state)
{
    (void)state;
    struct gptneox *m = circuit();
    struct pair_set *ps = NULL;
    struct err e;
    assert_int_equal(pair_set_induction(&ps, 256, 33, PAIR_IND_PAIRS, 0, 5, &e), 0);
    struct patch_base pb;
    assert_int_equal(patch_base_run(&pb, m, ps, 0, &e), 0);
    const int snd[2] = {0, 1}, rcv[2] = {2, 3}; /* 0.0, 0.1 -> 1.0, 1.1 */
    double res[2][2 * 3];
    for (int d = 0; d < 2; d++)
        assert_int_equal(patch_path(&pb, (enum patch_dir)d, snd, 2, rcv, 2, res[d], &e), 0);
#define PN(d, s, r) patch_normalise(&pb, res[d][(s) * 3 + (r)])
    /* noising: the previous-token head matters through the induction head only */
    assert_true(PN(PATCH_NOISE, 0, 0) < 0.05);
    assert_true(PN(PATCH_NOISE, 0, 2) > 0.98); /* direct path to the logits */
    assert_true(PN(PATCH_NOISE, 0, 1) > 0.98); /* through the uniform head 1.1 */
    assert_true(PN(PATCH_NOISE, 1, 0) > 0.98); /* the uniform head 0.1 */
    /* denoising: the clean previous token at the key is all it takes */
    assert_true(PN(PATCH_DENOISE, 0, 0) > 0.95);
    assert_true(fabs(PN(PATCH_DENOISE, 0, 2)) < 0.02);
    assert_true(fabs(PN(PATCH_DENOISE, 1, 0)) < 0.02);
    printf("induction circuit paths (noise): 0.0->1.0 %.4f, 0.0->logits %.4f\n",
           PN(PATCH_NOISE, 0, 0), PN(PATCH_NOISE, 0, 2));
#undef PN
    /* a receiver in the sender's layer is not a path */
    const int same[1] = {1};
    assert_int_equal(patch_path(&pb, PATCH_NOISE, snd, 1, same, 1, res[0], &e), 0);
    assert_true(isnan(res[0][0]));
    const int bad[1] = {4};
    assert_int_equal(patch_path(&pb, PATCH_NOISE, snd, 1, bad, 1, res[0], &e), ERR_INVALID);
    patch_base_free(&pb);
    pair_set_free(ps);
    gptneox_free(m);
}

/* ---- the circuit item on score files written by hand ---- */

static void write_scores(const char *dir, const struct pair_set *ps, double clean, double corr,
                         const double *den, const double *noi)
{
    struct patch_scores s;
    struct err e;
    assert_int_equal(patch_scores_init(&s, 0, ps, 2, 2, &e), 0);
    s.ld_clean = clean;
    s.ld_corrupted = corr;
    for (int i = 0; i < 4; i++) {
        s.v[PATCH_FAM_HEAD_DENOISE][i] = den[i];
        s.v[PATCH_FAM_HEAD_NOISE][i] = noi[i];
    }
    if (patch_scores_write(&s, dir, "patching", &e) < 0)
        fail_msg("%s", err_str(&e));
    patch_scores_free(&s);
}

static void test_circuit_item(void **state)
{
    (void)state;
    struct gptneox *m = circuit(); /* 2 layers x 2 heads: only its shape is read */
    struct pair_set *ps = NULL, *other = NULL;
    struct err e;
    assert_int_equal(pair_set_induction(&ps, 256, 33, PAIR_IND_PAIRS, 0, 0, &e), 0);
    assert_int_equal(pair_set_induction(&other, 256, 33, PAIR_IND_PAIRS, 0, 1, &e), 0);
    char *cur = tmpdir(), *prev = tmpdir();
    /* previous: heads 0 and 3 in (0.5 restores, 0.7 noised) */
    const double pd[4] = {0.5, 0.0, 0.1, 0.05}, pn[4] = {1.0, 1.0, 0.9, 0.7};
    /* current: heads 0, 1, 2 in; 3 out; NaN counts as 0 */
    const double cd[4] = {-0.3, 0.25, NAN, 0.1}, cn[4] = {0.95, 1.0, 0.75, NAN};
    write_scores(prev, ps, 5.0, 1.0, pd, pn);
    write_scores(cur, ps, 4.0, 2.5, cd, cn);
    struct battery_ctx c = {.model = m, .artifacts_dir = cur, .prev_artifacts_dir = prev};
    size_t n = 0;
    struct grow *g = grows_run(&battery_item_circuit, &c, &n);
    assert_true(get(g, n, "circuit_size", -1, -1, 0) == 3);
    assert_true(get(g, n, "circuit_gap", -1, -1, 0) == 1.5);
    assert_true(get(g, n, "circuit_member", 1, 1, 0) == 0);
    assert_true(get(g, n, "circuit_member", 1, 0, 0) == 1);
    assert_true(fabs(get(g, n, "circuit_jaccard", -1, -1, 0) - 1.0 / 4.0) < 1e-15);
    assert_true(get(g, n, "circuit_added", -1, -1, 0) == 2);
    assert_true(get(g, n, "circuit_removed", -1, -1, 0) == 1);
    free(g);
    /* an absent behaviour: the circuit is empty; both empty: Jaccard 1 */
    write_scores(cur, ps, 2.0, 1.5, cd, cn);
    write_scores(prev, ps, 0.1, 0.2, pd, pn);
    g = grows_run(&battery_item_circuit, &c, &n);
    assert_true(get(g, n, "circuit_size", -1, -1, 0) == 0);
    assert_true(get(g, n, "circuit_jaccard", -1, -1, 0) == 1.0);
    free(g);
    /* the previous scores are of another pair set: no comparison */
    write_scores(prev, other, 5.0, 1.0, pd, pn);
    g = grows_run(&battery_item_circuit, &c, &n);
    assert_null(grows_find(g, n, "circuit_jaccard", -1, -1, 0));
    assert_non_null(grows_find(g, n, "circuit_size", -1, -1, 0));
    free(g);
    /* no scores of this checkpoint */
    rm_rf(cur);
    struct rows r;
    rows_init(&r);
    assert_int_equal(battery_run_item(&battery_item_circuit, &c, &r, &e), ERR_NOTFOUND);
    assert_non_null(strstr(e.msg, "run the patching item first"));
    assert_int_equal(r.n, 0);
    rows_free(&r);
    rm_rf(prev);
    free(prev);
    free(cur);
    pair_set_free(other);
    pair_set_free(ps);
    gptneox_free(m);
}

static void test_errors(void **state)
{
    (void)state;
    struct gptneox *m = load_model("tests/golden/f32_parallel_rot025");
    struct pair_set *ps = NULL;
    struct err e;
    /* ids of a 256-token vocabulary in a 96-token model */
    assert_int_equal(pair_set_induction(&ps, 256, 64, 2, 0, 0, &e), 0);
    const struct pair_set *sets[1] = {ps};
    char *art = tmpdir();
    struct battery_ctx c = {.model = m, .pair_sets = sets, .npair_sets = 1, .artifacts_dir = art};
    struct rows r;
    rows_init(&r);
    assert_int_equal(battery_run_item(&battery_item_patching, &c, &r, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "outside the vocabulary [0, 96)"));
    assert_int_equal(r.n, 0); /* the built-in set's rows are dropped with the rest */
    c.npair_sets = 0;
    c.artifacts_dir = NULL;
    assert_int_equal(battery_run_item(&battery_item_patching, &c, &r, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "--artifacts"));
    rows_free(&r);
    rm_rf(art);
    free(art);
    pair_set_free(ps);
    gptneox_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference),
        cmocka_unit_test(test_induction_circuit),
        cmocka_unit_test(test_path_circuit),
        cmocka_unit_test(test_circuit_item),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
