/*
 * test_battery_sae_match - the battery item `sae_match`.
 *
 *  - tests/golden/sae_match/match.json (tests/reference/sae_match_ref.py:
 *    float64 similarity matrix, np.argmax both ways): every matched_prev,
 *    best_prev and split_parent equal, match_similarity within 1e-5, the
 *    three counts equal; the dictionaries are written as SAELens sites and
 *    read back by the item.
 *  - The planted series of tests/lib/sae_plant.h (permuted rows, noisy
 *    copies with other norms, features that appear, one removed, one split
 *    into two rotated children), each step against the one before: every
 *    feature present at both steps is matched to itself, a new one is
 *    born (matched_prev and split_parent -1), nothing is matched to a
 *    removed one, the split's closer child continues the parent and the
 *    other has split_parent = the parent; features_born / _matched / _died
 *    equal the counts of the plan; layer 1 (unchanged features) all
 *    matched.  The first step, a missing --prev-artifacts and a site the
 *    previous checkpoint lacks: every feature born, match_similarity NaN.
 *    Two runs on the same inputs print the same bytes.
 *  - Blocked similarity: 3000 x 3000 features (more than one block of
 *    SAE_MATCH_BLOCK_FLOATS) whose current rows are a permutation of noisy
 *    previous rows: the permutation is recovered exactly, no deaths.
 *  - Errors, each a negative code naming the problem and no rows: no sae
 *    directory, no cfg.json, cfg.json not JSON, hook_name not the
 *    directory, hook_layer contradicting blocks.N, W_dec missing, W_dec
 *    F16, W_dec shape against cfg.json, NaN in W_dec, d_in of the previous
 *    dictionary different, two sites of one layer, a malformed previous
 *    dictionary.
 *
 * `test_battery_sae_match --plant DIR` writes the planted series (and its
 * manifest) for tests/daemon_lineage.sh instead of running the tests.
 */
#include <ftw.h>
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
#include <jansson.h>

#include "tests/lib/battery_golden.h"
#include "tests/lib/sae_plant.h"
#include "workers/battery/battery.h"
#include "common/rng.h"

static char tmp[64];

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int make_tmp(void **state)
{
    (void)state;
    snprintf(tmp, sizeof tmp, "/tmp/sae-match-XXXXXX");
    return mkdtemp(tmp) ? 0 : -1;
}

static int remove_tmp(void **state)
{
    (void)state;
    return nftw(tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- reading the rows back ---- */

/* Per-feature values of one layer: m[metric][feature], metric in the order
 * of `names`; counts the summary rows. */
#define NPER 4
static const char *const per_names[NPER] = {"matched_prev", "match_similarity", "best_prev",
                                            "split_parent"};
struct site_rows {
    int n;                 /* features seen */
    double *v[NPER];       /* (n) */
    double matched, born, died;
};

static void site_rows_free(struct site_rows *s)
{
    for (int k = 0; k < NPER; k++)
        free(s->v[k]);
    memset(s, 0, sizeof *s);
}

/* Run sae_match on (cur, prev) and collect layer L's rows (d_sae n). */
static void run_match(const char *cur, const char *prev, int L, int n, struct site_rows *s)
{
    struct battery_ctx c = {.artifacts_dir = cur, .prev_artifacts_dir = prev};
    size_t nr = 0;
    struct grow *g = grows_run(&battery_item_sae_match, &c, &nr);
    memset(s, 0, sizeof *s);
    s->n = n;
    for (int k = 0; k < NPER; k++) {
        s->v[k] = malloc((size_t)n * sizeof *s->v[k]);
        assert_non_null(s->v[k]);
        for (int i = 0; i < n; i++)
            s->v[k][i] = -999; /* "no row" */
    }
    s->matched = s->born = s->died = -999;
    for (size_t r = 0; r < nr; r++) {
        if (g[r].layer != L)
            continue;
        assert_int_equal(g[r].head, -1);
        int k = 0;
        while (k < NPER && strcmp(per_names[k], g[r].metric) != 0)
            k++;
        if (k < NPER) {
            assert_true(g[r].idx >= 0 && g[r].idx < n);
            assert_true(s->v[k][g[r].idx] == -999); /* once */
            s->v[k][g[r].idx] = g[r].value;
            continue;
        }
        assert_int_equal(g[r].idx, -1);
        double *dst = strcmp(g[r].metric, "features_matched") == 0 ? &s->matched
                      : strcmp(g[r].metric, "features_born") == 0  ? &s->born
                      : strcmp(g[r].metric, "features_died") == 0  ? &s->died
                                                                   : NULL;
        if (!dst)
            fail_msg("unexpected metric %s", g[r].metric);
        *dst = g[r].value;
    }
    for (int k = 0; k < NPER; k++)
        for (int i = 0; i < n; i++)
            if (s->v[k][i] == -999)
                fail_msg("no %s row for feature %d of layer %d", per_names[k], i, L);
    free(g);
}

/* ---- the golden pair ---- */

static float *json_matrix(json_t *a, int *rows, int cols)
{
    *rows = (int)json_array_size(a);
    float *m = malloc((size_t)*rows * cols * sizeof *m);
    assert_non_null(m);
    for (int i = 0; i < *rows; i++) {
        json_t *r = json_array_get(a, (size_t)i);
        assert_int_equal(json_array_size(r), cols);
        for (int k = 0; k < cols; k++)
            m[(size_t)i * cols + k] = (float)json_number_value(json_array_get(r, (size_t)k));
    }
    return m;
}

static void test_golden(void **state)
{
    (void)state;
    const char *path = "tests/golden/sae_match/match.json";
    json_error_t je;
    json_t *doc = json_load_file(path, 0, &je);
    if (!doc)
        fail_msg("%s: %s", path, je.text);
    int D = (int)json_integer_value(json_object_get(doc, "d_in")), n = 0, m = 0;
    assert_true(fabs(json_number_value(json_object_get(doc, "threshold")) - SAE_MATCH_THRESHOLD) < 1e-12);
    float *prev = json_matrix(json_object_get(doc, "prev"), &m, D);
    float *cur = json_matrix(json_object_get(doc, "cur"), &n, D);
    char pdir[128], cdir[128];
    snprintf(pdir, sizeof pdir, "%s/prev", tmp);
    snprintf(cdir, sizeof cdir, "%s/cur", tmp);
    struct err e;
    assert_int_equal(plant_write_site(pdir, "blocks.2.hook_mlp_out", 2, m, D, prev, &e), 0);
    assert_int_equal(plant_write_site(cdir, "blocks.2.hook_mlp_out", 2, n, D, cur, &e), 0);
    struct site_rows s;
    run_match(cdir, pdir, 2, n, &s);
    double worst = 0;
    const char *ints[3] = {"matched_prev", "best_prev", "split_parent"};
    const int kint[3] = {0, 2, 3};
    for (int t = 0; t < 3; t++) {
        json_t *want = json_object_get(doc, ints[t]);
        assert_int_equal(json_array_size(want), n);
        for (int i = 0; i < n; i++)
            if (s.v[kint[t]][i] != (double)json_integer_value(json_array_get(want, (size_t)i)))
                fail_msg("%s of feature %d: %g, reference %lld", ints[t], i, s.v[kint[t]][i],
                         (long long)json_integer_value(json_array_get(want, (size_t)i)));
    }
    json_t *sims = json_object_get(doc, "match_similarity");
    for (int i = 0; i < n; i++) {
        double want = json_number_value(json_array_get(sims, (size_t)i));
        double d = fabs(s.v[1][i] - want);
        if (!(d <= 1e-5))
            fail_msg("match_similarity of feature %d: %.9g, reference %.9g", i, s.v[1][i], want);
        worst = fmax(worst, d);
    }
    assert_true(s.matched == (double)json_integer_value(json_object_get(doc, "features_matched")));
    assert_true(s.born == (double)json_integer_value(json_object_get(doc, "features_born")));
    assert_true(s.died == (double)json_integer_value(json_object_get(doc, "features_died")));
    printf("%s: %d features against %d: indices equal, match_similarity max |diff| %.3g\n", path,
           n, m, worst);
    site_rows_free(&s);
    free(prev);
    free(cur);
    json_decref(doc);
}

/* ---- the planted series ---- */

static int present(int n, int k)
{
    long long step = PLANT_STEP(k);
    return plant_named[n].first <= step && step <= plant_named[n].last;
}

static void test_planted(void **state)
{
    (void)state;
    struct plant_map map;
    struct err e;
    if (plant_series(tmp, &map, &e) < 0)
        fail_msg("plant: %s", err_str(&e));
    char cur[128], prev[128];
    int split_seen = 0;
    for (int k = 0; k < PLANT_STEPS; k++) {
        snprintf(cur, sizeof cur, "%s/step%lld", tmp, PLANT_STEP(k));
        snprintf(prev, sizeof prev, "%s/step%lld", tmp, PLANT_STEP(k - 1));
        struct site_rows s;
        run_match(cur, k ? prev : NULL, 0, map.d_sae0[k], &s);
        if (k == 0) {
            for (int i = 0; i < s.n; i++) {
                assert_true(s.v[0][i] == -1 && s.v[2][i] == -1 && s.v[3][i] == -1);
                assert_true(isnan(s.v[1][i]));
            }
            assert_true(s.born == s.n && s.matched == 0 && s.died == 0);
            site_rows_free(&s);
            continue;
        }
        int want_born = 0, want_died = 0;
        for (int n = 0; n < PLANT_NNAMED; n++) {
            int here = map.idx[k][n], before = map.idx[k - 1][n];
            assert_true((here >= 0) == present(n, k));
            if (here >= 0 && before >= 0) { /* carried over */
                if (s.v[0][here] != before)
                    fail_msg("step %lld: %s (feature %d) matched to %g, not %d", PLANT_STEP(k),
                             plant_named[n].name, here, s.v[0][here], before);
                assert_true(s.v[1][here] > 0.97);
            } else if (here >= 0 && plant_named[n].parent >= 0) { /* a child of a split */
                int p = map.idx[k - 1][plant_named[n].parent];
                assert_true(p >= 0);
                if (plant_named[n].cos_parent > 0.85) { /* the closer one continues it */
                    assert_true(s.v[0][here] == p);
                    assert_true(s.v[3][here] == -1);
                } else {
                    assert_true(s.v[0][here] == -1);
                    assert_true(s.v[3][here] == p);
                    assert_true(s.v[2][here] == p);
                    assert_true(s.v[1][here] >= SAE_MATCH_THRESHOLD && s.v[1][here] < 0.85);
                    want_born++;
                    split_seen++;
                }
            } else if (here >= 0) { /* new */
                assert_true(s.v[0][here] == -1);
                assert_true(s.v[3][here] == -1);
                assert_true(s.v[1][here] < SAE_MATCH_THRESHOLD);
                want_born++;
            } else if (before >= 0) { /* gone: nothing is matched to it */
                int continued = 0;
                for (int c = 0; c < PLANT_NNAMED; c++)
                    continued |= plant_named[c].parent == n && present(c, k);
                for (int i = 0; i < s.n && !continued; i++)
                    if (s.v[0][i] == before)
                        fail_msg("step %lld: feature %d matched to removed %s", PLANT_STEP(k), i,
                                 plant_named[n].name);
                want_died += !continued;
            }
        }
        /* every feature not born was matched, and only the plan's changes */
        for (int i = 0; i < s.n; i++)
            if (s.v[0][i] < 0) {
                int named = 0;
                for (int n = 0; n < PLANT_NNAMED; n++)
                    named |= map.idx[k][n] == i;
                if (!named)
                    fail_msg("step %lld: background feature %d was not matched", PLANT_STEP(k), i);
            }
        if (s.born != want_born || s.died != want_died || s.matched != s.n - want_born)
            fail_msg("step %lld: born %g died %g matched %g; the plan says %d, %d, %d",
                     PLANT_STEP(k), s.born, s.died, s.matched, want_born, want_died, s.n - want_born);
        site_rows_free(&s);
        run_match(cur, prev, 1, PLANT_BG1, &s);
        assert_true(s.matched == PLANT_BG1 && s.born == 0 && s.died == 0);
        site_rows_free(&s);
    }
    assert_int_equal(split_seen, 1);

    /* the same inputs give the same bytes */
    snprintf(cur, sizeof cur, "%s/step4000", tmp);
    snprintf(prev, sizeof prev, "%s/step3000", tmp);
    struct battery_ctx c = {.artifacts_dir = cur, .prev_artifacts_dir = prev};
    struct rows r[2];
    for (int k = 0; k < 2; k++) {
        rows_init(&r[k]);
        assert_int_equal(battery_run_item(&battery_item_sae_match, &c, &r[k], &e), 0);
    }
    assert_true(r[0].len > 0);
    assert_int_equal(r[0].len, r[1].len);
    assert_memory_equal(r[0].buf, r[1].buf, r[0].len);
    rows_free(&r[0]);
    rows_free(&r[1]);

    /* no --prev-artifacts, and a previous checkpoint without the site */
    snprintf(cur, sizeof cur, "%s/step3000", tmp);
    struct site_rows s;
    run_match(cur, NULL, 0, map.d_sae0[3], &s);
    assert_true(s.born == s.n && s.died == 0);
    site_rows_free(&s);
    char empty[128];
    snprintf(empty, sizeof empty, "%s/nosite", tmp);
    assert_int_equal(plant_write_site(empty, "blocks.5.hook_resid_post", 5, 3, PLANT_DIN,
                                      (float[3 * PLANT_DIN]){1}, &e), 0);
    run_match(cur, empty, 1, PLANT_BG1, &s);
    assert_true(s.born == PLANT_BG1 && s.died == 0);
    for (int i = 0; i < s.n; i++)
        assert_true(isnan(s.v[1][i]) && s.v[2][i] == -1);
    site_rows_free(&s);
}

/* ---- blocking ---- */

static void test_blocked(void **state)
{
    (void)state;
    const int N = 3000, D = 64;
    assert_true((size_t)N * N > 2 * SAE_MATCH_BLOCK_FLOATS);
    float *prev = malloc((size_t)N * D * sizeof *prev), *cur = malloc((size_t)N * D * sizeof *cur);
    int *perm = malloc((size_t)N * sizeof *perm), *matched = malloc((size_t)N * sizeof *matched);
    int *best = malloc((size_t)N * sizeof *best), *split = malloc((size_t)N * sizeof *split);
    float *sim = malloc((size_t)N * sizeof *sim);
    assert_true(prev && cur && perm && matched && best && split && sim);
    uint64_t s = 77;
    for (int i = 0; i < N; i++)
        plant_random_unit(&s, prev + (size_t)i * D, D);
    plant_shuffle(&s, perm, N);
    for (int i = 0; i < N; i++) { /* cur[perm[i]] = prev[i] + noise, unit */
        float *r = cur + (size_t)perm[i] * D;
        for (int k = 0; k < D; k++)
            r[k] = prev[(size_t)i * D + k] + PLANT_NOISE * rng_symmetric(&s);
        plant_unit(r, D);
    }
    int died = -1;
    struct err e;
    assert_int_equal(sae_match_dicts(cur, N, prev, N, D, SAE_MATCH_THRESHOLD, matched, best, split,
                                     sim, &died, &e), 0);
    for (int i = 0; i < N; i++) {
        if (matched[perm[i]] != i)
            fail_msg("feature %d matched to %d, not %d", perm[i], matched[perm[i]], i);
        assert_int_equal(split[perm[i]], -1);
    }
    assert_int_equal(died, 0);
    free(prev);
    free(cur);
    free(perm);
    free(matched);
    free(best);
    free(split);
    free(sim);
}

/* ---- errors ---- */

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* The item fails with `code`, a message containing `needle`, no rows. */
static void expect_error(const char *cur, const char *prev, int code, const char *needle)
{
    struct battery_ctx c = {.artifacts_dir = cur, .prev_artifacts_dir = prev};
    struct rows r;
    rows_init(&r);
    struct err e;
    err_clear(&e);
    int rc = battery_run_item(&battery_item_sae_match, &c, &r, &e);
    if (rc != code || !strstr(err_str(&e), needle))
        fail_msg("rc %d '%s'; expected %d with '%s'", rc, err_str(&e), code, needle);
    assert_int_equal(r.n, 0);
    rows_free(&r);
}

static void test_errors(void **state)
{
    (void)state;
    struct err e;
    char a[128], b[128], site[256], path[300], aside[128];
    float dec[4 * 8];
    for (int i = 0; i < 4 * 8; i++)
        dec[i] = (float)((i * 7) % 5) - 2.0f;
    snprintf(a, sizeof a, "%s/a", tmp);
    snprintf(b, sizeof b, "%s/b", tmp);
    snprintf(aside, sizeof aside, "%s/cfg-aside.json", tmp);

    expect_error(a, NULL, ERR_NOTFOUND, "run sae first");
    assert_int_equal(plant_write_site(a, "blocks.0.hook_resid_post", 0, 4, 8, dec, &e), 0);
    snprintf(site, sizeof site, "%s/sae/blocks.0.hook_resid_post", a);

    snprintf(path, sizeof path, "%s/cfg.json", site);
    assert_int_equal(rename(path, aside), 0);
    expect_error(a, NULL, ERR_NOTFOUND, "no SAE config");
    write_file(path, "{\"d_in\": 8, \"d_sae\": ");
    expect_error(a, NULL, ERR_FORMAT, "cannot read the SAE config");
    write_file(path, "{\"d_in\": 8, \"d_sae\": 4, \"hook_name\": \"blocks.1.hook_resid_post\", \"hook_layer\": 0}");
    expect_error(a, NULL, ERR_MISMATCH, "directory name");
    write_file(path, "{\"d_in\": 8, \"d_sae\": 4, \"hook_name\": \"blocks.0.hook_resid_post\", \"hook_layer\": 3}");
    expect_error(a, NULL, ERR_MISMATCH, "contradicts hook_name");
    write_file(path, "{\"d_in\": 8, \"d_sae\": 5, \"hook_name\": \"blocks.0.hook_resid_post\", \"hook_layer\": 0}");
    expect_error(a, NULL, ERR_MISMATCH, "cfg.json says [d_sae 5, d_in 8]");
    write_file(path, "{\"d_in\": 8, \"d_sae\": -4, \"hook_name\": \"blocks.0.hook_resid_post\", \"hook_layer\": 0}");
    expect_error(a, NULL, ERR_FORMAT, "positive integers");
    assert_int_equal(rename(aside, path), 0);

    /* the weights file: no W_dec, F16, NaN */
    snprintf(path, sizeof path, "%s/sae_weights.safetensors", site);
    struct st_write_tensor t = {"W_enc", ST_F32, 2, {8, 4}, dec};
    assert_int_equal(st_write(path, &t, 1, NULL, &e), 0);
    expect_error(a, NULL, ERR_NOTFOUND, "no tensor W_dec");
    uint16_t half[4 * 8] = {0};
    t = (struct st_write_tensor){"W_dec", ST_F16, 2, {4, 8}, half};
    assert_int_equal(st_write(path, &t, 1, NULL, &e), 0);
    expect_error(a, NULL, ERR_UNSUPPORTED, "W_dec is F16");
    dec[9] = NAN;
    assert_int_equal(plant_write_site(a, "blocks.0.hook_resid_post", 0, 4, 8, dec, &e), 0);
    expect_error(a, NULL, ERR_NUMERIC, "W_dec row 1");
    dec[9] = 1.0f;
    assert_int_equal(plant_write_site(a, "blocks.0.hook_resid_post", 0, 4, 8, dec, &e), 0);

    /* the previous dictionary: another d_in, malformed */
    assert_int_equal(plant_write_site(b, "blocks.0.hook_resid_post", 0, 2, 16, dec, &e), 0);
    expect_error(a, b, ERR_MISMATCH, "d_in 8 here but 16");
    snprintf(path, sizeof path, "%s/sae/blocks.0.hook_resid_post/cfg.json", b);
    write_file(path, "[]");
    expect_error(a, b, ERR_FORMAT, "previous checkpoint's dictionary");

    /* two sites of one layer */
    assert_int_equal(plant_write_site(a, "blocks.0.hook_mlp_out", 0, 4, 8, dec, &e), 0);
    expect_error(a, NULL, ERR_UNSUPPORTED, "both have hook_layer 0");
}

static void test_registry(void **state)
{
    (void)state;
    const struct battery_item *it = battery_find("sae_match");
    assert_ptr_equal(it, &battery_item_sae_match);
    assert_string_equal(it->depends_on, "sae");
    assert_true(it->needs & BATTERY_NEEDS(BATTERY_NEED_ARTIFACTS));
    assert_true(it->needs & BATTERY_NEEDS(BATTERY_NEED_PREV_ARTIFACTS));
    /* without --artifacts the run wrapper refuses it */
    struct battery_ctx c = {0};
    struct rows r;
    rows_init(&r);
    struct err e;
    assert_int_equal(battery_run_item(it, &c, &r, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "--artifacts"));
    rows_free(&r);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--plant") == 0) {
        struct plant_map map;
        struct err e;
        if (plant_series(argv[2], &map, &e) < 0) {
            fprintf(stderr, "plant: %s\n", err_str(&e));
            return 1;
        }
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry),
        cmocka_unit_test_setup_teardown(test_golden, make_tmp, remove_tmp),
        cmocka_unit_test_setup_teardown(test_planted, make_tmp, remove_tmp),
        cmocka_unit_test(test_blocked),
        cmocka_unit_test_setup_teardown(test_errors, make_tmp, remove_tmp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
