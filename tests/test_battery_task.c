/*
 * test_battery_task - the battery item `task` and its Fourier helpers.
 *
 *  - On a modular-addition run trained here (p = 7, 1 layer), the item's
 *    train/test loss and accuracy at every checkpoint equal the values
 *    train_log.jsonl recorded (1e-5 absolute; the log has 7 digits), and
 *    weight_norm equals the weights item's total_norm (1e-12 relative).
 *    The same for an induction run (loss, acc, icl_loss, icl_acc).
 *  - An embedding built from cosines and sines of known frequencies gives
 *    the closed-form spectrum (1e-9), those frequencies as the key ones
 *    with their shares, and fourier_key_fraction 1.
 *  - Logits that compute sum_k A_k cos(w_k (a+b-c)) on two frequencies
 *    plus a non-key frequency and noise: restricted_loss is within 0.05 of
 *    the loss of the clean logits, excluded_loss is above log(p) - 0.1
 *    (chance), far above the full loss.
 *  - tests/golden/task/fourier.json (tests/reference/task_ref.py: rfft
 *    spectrum, least-squares projection): norms, keys, shares, fraction
 *    and the three losses agree to 1e-9 relative.
 *  - Errors: no task.json, a train pair that is not the seed's split, a
 *    checkpoint of another vocabulary: ERR_INVALID naming the problem,
 *    no rows.
 */
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

#include "tests/lib/toy_config.h"
#include "workers/battery/battery.h"
#include "workers/battery/rows.h"
#include "workers/model/gptneox.h"
#include "workers/train/task.h"
#include "workers/train/train.h"

/* ---- helpers ---- */

/* value of (metric, idx) among r's rows; NAN and *found = 0 when absent */
static double row_value(const struct rows *r, const char *metric, int idx, int *found)
{
    const char *p = r->buf, *end = r->buf + r->len;
    *found = 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        assert_non_null(nl);
        char line[256], item[32], m[64], val[64];
        int ver, layer, head, ix;
        assert_true((size_t)(nl - p) < sizeof line);
        memcpy(line, p, (size_t)(nl - p));
        line[nl - p] = '\0';
        assert_int_equal(sscanf(line, "%31[^\t]\t%d\t%63[^\t]\t%d\t%d\t%d\t%63s", item, &ver, m,
                                &layer, &head, &ix, val),
                         7);
        if (strcmp(m, metric) == 0 && ix == idx) {
            *found = 1;
            return strtod(val, NULL);
        }
        p = nl + 1;
    }
    return NAN;
}

static double need_value(const struct rows *r, const char *metric, int idx)
{
    int found;
    double v = row_value(r, metric, idx, &found);
    if (!found)
        fail_msg("no row %s idx %d", metric, idx);
    return v;
}

static void rm_run(const char *dir)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}


/* Train with c, then for every line of train_log.jsonl run `task` on that
 * step's checkpoint and compare the four logged metrics. */
static void check_run_against_log(struct train_config *c, const char *dir)
{
    struct err e;
    if (train_run(c, &e) < 0)
        fail_msg("%s", err_str(&e));
    char path[512], task_path[512], line[1024];
    snprintf(path, sizeof path, "%s/train_log.jsonl", dir);
    snprintf(task_path, sizeof task_path, "%s/task.json", dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    const struct battery_item *it = battery_find("task");
    const struct battery_item *wt = battery_find("weights");
    assert_non_null(it);
    int lines = 0;
    while (fgets(line, sizeof line, f)) {
        json_error_t je;
        json_t *j = json_loads(line, 0, &je);
        assert_non_null(j);
        long step = (long)json_integer_value(json_object_get(j, "step"));
        snprintf(path, sizeof path, "%s/step%ld", dir, step);
        struct gptneox *m = NULL;
        if (gptneox_load(&m, path, 0, &e) < 0)
            fail_msg("%s", err_str(&e));
        struct battery_ctx ctx = {.model = m, .task_path = task_path};
        struct rows r, rw;
        rows_init(&r);
        rows_init(&rw);
        if (battery_run_item(it, &ctx, &r, &e) < 0 || battery_run_item(wt, &ctx, &rw, &e) < 0)
            fail_msg("%s", err_str(&e));
        int n = 0;
        const char *key;
        json_t *v;
        json_object_foreach(j, key, v) {
            if (strcmp(key, "step") == 0)
                continue;
            double got = need_value(&r, key, -1), want = json_number_value(v);
            if (!(fabs(got - want) <= 1e-5))
                fail_msg("step %ld %s: item %.9g, log %.9g", step, key, got, want);
            n++;
        }
        assert_int_equal(n, 4);
        double wn = need_value(&r, "weight_norm", -1), tn = need_value(&rw, "total_norm", -1);
        assert_true(fabs(wn - tn) <= 1e-12 * tn);
        rows_free(&r);
        rows_free(&rw);
        gptneox_free(m);
        json_decref(j);
        lines++;
    }
    fclose(f);
    assert_true(lines >= 3);
}

/* ---- the item against the training log ---- */

static void test_modadd_matches_log(void **s)
{
    (void)s;
    char dir[] = "/tmp/ckptd-task-XXXXXX";
    assert_non_null(mkdtemp(dir));
    struct train_config c;
    toy_config(&c, dir);
    c.task = (struct task_config){.kind = TASK_MODADD, .seed = 3, .p = 7, .train_frac = 0.6};
    c.steps = 60;
    long ck[3] = {0, 20, 60};
    c.checkpoints = ck;
    c.ncheckpoints = 3;
    check_run_against_log(&c, dir);

    /* the Fourier rows are there: every frequency, TASK_KEY_FREQS or fewer keys */
    char path[512], task_path[512];
    snprintf(path, sizeof path, "%s/step60", dir);
    snprintf(task_path, sizeof task_path, "%s/task.json", dir);
    struct gptneox *m = NULL;
    struct err e;
    assert_int_equal(gptneox_load(&m, path, 0, &e), 0);
    struct battery_ctx ctx = {.model = m, .task_path = task_path};
    struct rows r;
    rows_init(&r);
    assert_int_equal(battery_run_item(battery_find("task"), &ctx, &r, &e), 0);
    for (int k = 0; k <= 3; k++)
        assert_true(need_value(&r, "embed_fourier_norm", k) > 0);
    int found;
    row_value(&r, "embed_fourier_norm", 4, &found);
    assert_false(found);
    double frac = need_value(&r, "fourier_key_fraction", -1);
    assert_true(fabs(frac - 1.0) < 1e-12); /* p = 7: 3 frequencies, all key */
    assert_true(isfinite(need_value(&r, "answer_loss", -1)));
    assert_true(isfinite(need_value(&r, "restricted_loss", -1)));
    assert_true(isfinite(need_value(&r, "excluded_loss", -1)));
    rows_free(&r);
    gptneox_free(m);
    rm_run(dir);
}

static void test_induction_matches_log(void **s)
{
    (void)s;
    char dir[] = "/tmp/ckptd-task-XXXXXX";
    assert_non_null(mkdtemp(dir));
    struct train_config c;
    toy_config(&c, dir);
    c.layers = 2;
    c.task = (struct task_config){.kind = TASK_INDUCTION, .seed = 4, .vocab = 16, .seq_len = 16,
                                  .batch = 8};
    c.steps = 10;
    long ck[3] = {0, 5, 10};
    c.checkpoints = ck;
    c.ncheckpoints = 3;
    check_run_against_log(&c, dir);
    rm_run(dir);
}

/* ---- Fourier spectrum of a constructed embedding ---- */

static void test_fourier_constructed(void **s)
{
    (void)s;
    const int p = 11, C = 4, V = p + 1;
    float *embed = calloc((size_t)V * C, sizeof(float));
    assert_non_null(embed);
    for (int x = 0; x < p; x++) {
        double t3 = 2 * M_PI * 3 * x / p, t5 = 2 * M_PI * 5 * x / p;
        embed[x * C + 0] = (float)(2 * cos(t3));
        embed[x * C + 1] = (float)(2 * sin(t3));
        embed[x * C + 2] = (float)cos(t5);
        embed[x * C + 3] = 0.5f;
    }
    for (int c = 0; c < C; c++)
        embed[p * C + c] = 100.0f; /* the `=` row does not count */
    double norms[6];
    struct err e;
    assert_int_equal(modadd_nfreqs(p), 6);
    assert_int_equal(modadd_fourier_norms(embed, p, C, norms, &e), 0);
    /* sum_x (2 cos)^2 = 2p: norm^2 = 2p + 2p for k = 3; p/2 for k = 5 */
    const double want[6] = {0.5 * sqrt(p), 0, 0, sqrt(4.0 * p), 0, sqrt(p / 2.0)};
    for (int k = 0; k < 6; k++)
        if (fabs(norms[k] - want[k]) > 1e-6)
            fail_msg("k %d: norm %.12g, expected %.12g", k, norms[k], want[k]);
    int keys[5];
    assert_int_equal(modadd_key_freqs(norms, p, 5, keys), 5);
    assert_int_equal(keys[0], 3);
    assert_int_equal(keys[1], 5);

    /* through the item, on a model with this embedding */
    struct gptneox_config cfg;
    gptneox_config_default(&cfg, V, C, 1, 2, 8);
    cfg.max_positions = 3;
    struct gptneox *m = NULL;
    assert_int_equal(gptneox_create(&m, &cfg, &e), 0);
    memcpy(m->embed, embed, sizeof(float) * V * C);
    char dir[] = "/tmp/ckptd-task-XXXXXX", path[128];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/task.json", dir);
    struct task_config tc = {.kind = TASK_MODADD, .seed = 9, .p = p, .train_frac = 0.5};
    struct task *t = NULL;
    assert_int_equal(task_create(&t, &tc, &e), 0);
    assert_int_equal(task_write_json(t, path, NULL, &e), 0);
    task_free(t);
    struct battery_ctx ctx = {.model = m, .task_path = path};
    struct rows r;
    rows_init(&r);
    if (battery_run_item(battery_find("task"), &ctx, &r, &e) < 0)
        fail_msg("%s", err_str(&e));
    for (int k = 0; k < 6; k++)
        assert_true(fabs(need_value(&r, "embed_fourier_norm", k) - want[k]) < 1e-6);
    double tot = 4.0 * p + p / 2.0;
    assert_true(fabs(need_value(&r, "key_frequency", 3) - 4.0 * p / tot) < 1e-9);
    assert_true(fabs(need_value(&r, "key_frequency", 5) - p / 2.0 / tot) < 1e-9);
    assert_true(fabs(need_value(&r, "fourier_key_fraction", -1) - 1.0) < 1e-9);
    rows_free(&r);
    gptneox_free(m);
    free(embed);
    rm_run(dir);
}

/* ---- restricted and excluded loss on constructed logits ---- */

static void test_restricted_excluded_constructed(void **s)
{
    (void)s;
    const int p = 23, keys[2] = {4, 9};
    struct modadd_proj *q = NULL;
    struct err e;
    assert_int_equal(modadd_proj_create(&q, p, keys, 2, &e), 0);
    float *grid = malloc(sizeof(float) * p * p * p), *clean = malloc(sizeof(float) * p * p * p);
    assert_non_null(grid);
    assert_non_null(clean);
    uint64_t st = 12345;
    for (int a = 0; a < p; a++)
        for (int b = 0; b < p; b++)
            for (int c = 0; c < p; c++) {
                int d = ((a + b - c) % p + p) % p;
                double v = 4.0 * cos(2 * M_PI * 4 * d / p) + 3.0 * cos(2 * M_PI * 9 * d / p);
                st = st * 6364136223846793005ull + 1442695040888963407ull;
                double noise = ((double)(st >> 11) / 9007199254740992.0 - 0.5) * 0.2;
                double off = 2.0 * sin(2 * M_PI * 6 * (a + 2 * c) / p); /* non-key, a only */
                clean[(a * p + b) * p + c] = (float)v;
                grid[(a * p + b) * p + c] = (float)(v + off + noise);
            }
    for (int a = 0; a < p; a++)
        for (int b = 0; b < p; b++)
            modadd_proj_add(q, a, b, grid + (a * p + b) * p);
    modadd_proj_finish(q);
    double sc[3 * 23], f, r, x, sf = 0, sr = 0, sx = 0, sclean = 0;
    int n = 0;
    for (int a = 0; a < p; a++)
        for (int b = 0; b < p; b += 2) { /* a "training set": half the pairs */
            modadd_proj_loss(q, a, b, grid + (a * p + b) * p, sc, &f, &r, &x);
            sf += f;
            sr += r;
            sx += x;
            modadd_proj_loss(q, a, b, clean + (a * p + b) * p, sc, &f, &r, &x);
            sclean += f;
            n++;
        }
    sf /= n, sr /= n, sx /= n, sclean /= n;
    printf("[ task ] constructed: full %.4f clean %.4f restricted %.4f excluded %.4f (log p %.4f)\n",
           sf, sclean, sr, sx, log(p));
    assert_true(fabs(sr - sclean) < 0.05);
    assert_true(sx > log(p) - 0.1);
    assert_true(sx > sf + 1.0);
    modadd_proj_free(q);
    free(grid);
    free(clean);
}

/* ---- against the numpy reference ---- */

static double max_rel; /* largest relative difference seen by assert_rel */

static void assert_rel(double got, double want, double tol, const char *what)
{
    double rel = fabs(got - want) / fmax(1e-300, fabs(want));
    if (rel > max_rel)
        max_rel = rel;
    if (!(fabs(got - want) <= tol * fmax(1e-300, fabs(want))))
        fail_msg("%s: got %.17g, expected %.17g", what, got, want);
}

static void test_golden_reference(void **s)
{
    (void)s;
    json_error_t je;
    json_t *g = json_load_file("tests/golden/task/fourier.json", 0, &je);
    if (!g)
        fail_msg("tests/golden/task/fourier.json: %s", je.text);
    const int p = (int)json_integer_value(json_object_get(g, "p"));
    const int C = (int)json_integer_value(json_object_get(g, "C"));
    const int K = (int)json_integer_value(json_object_get(g, "K"));
    const int nf = modadd_nfreqs(p);
    json_t *je_ = json_object_get(g, "embed"), *jl = json_object_get(g, "logits");
    assert_int_equal(json_array_size(je_), (size_t)(p + 1) * C);
    assert_int_equal(json_array_size(jl), (size_t)p * p * p);
    float *embed = malloc(sizeof(float) * (p + 1) * C), *lg = malloc(sizeof(float) * p * p * p);
    assert_non_null(embed);
    assert_non_null(lg);
    for (size_t i = 0; i < json_array_size(je_); i++)
        embed[i] = (float)json_number_value(json_array_get(je_, i));
    for (size_t i = 0; i < json_array_size(jl); i++)
        lg[i] = (float)json_number_value(json_array_get(jl, i));
    double *norms = malloc(sizeof(double) * nf);
    struct err e;
    assert_int_equal(modadd_fourier_norms(embed, p, C, norms, &e), 0);
    double nonconst = 0;
    for (int k = 0; k < nf; k++) {
        assert_rel(norms[k], json_number_value(json_array_get(json_object_get(g, "norms"),
                                                              (size_t)k)), 1e-9, "norm");
        if (k)
            nonconst += norms[k] * norms[k];
    }
    int keys[16];
    assert_int_equal(modadd_key_freqs(norms, p, K, keys), K);
    double frac = 0;
    for (int i = 0; i < K; i++) {
        assert_int_equal(keys[i],
                         json_integer_value(json_array_get(json_object_get(g, "keys"), (size_t)i)));
        double share = norms[keys[i]] * norms[keys[i]] / nonconst;
        assert_rel(share, json_number_value(json_array_get(json_object_get(g, "shares"), (size_t)i)),
                   1e-9, "share");
        frac += share;
    }
    assert_rel(frac, json_number_value(json_object_get(g, "key_fraction")), 1e-9, "fraction");
    struct modadd_proj *q = NULL;
    assert_int_equal(modadd_proj_create(&q, p, keys, K, &e), 0);
    for (int i = 0; i < p * p; i++)
        modadd_proj_add(q, i / p, i % p, lg + (size_t)i * p);
    modadd_proj_finish(q);
    json_t *tr = json_object_get(g, "train");
    double *sc = malloc(sizeof(double) * 3 * p), sum[3] = {0, 0, 0};
    for (size_t i = 0; i < json_array_size(tr); i++) {
        int a = (int)json_integer_value(json_array_get(json_array_get(tr, i), 0));
        int b = (int)json_integer_value(json_array_get(json_array_get(tr, i), 1));
        double f, r, x;
        modadd_proj_loss(q, a, b, lg + (size_t)(a * p + b) * p, sc, &f, &r, &x);
        sum[0] += f;
        sum[1] += r;
        sum[2] += x;
    }
    double n = (double)json_array_size(tr);
    assert_rel(sum[0] / n, json_number_value(json_object_get(g, "answer_loss")), 1e-9, "answer");
    assert_rel(sum[1] / n, json_number_value(json_object_get(g, "restricted_loss")), 1e-9,
               "restricted");
    assert_rel(sum[2] / n, json_number_value(json_object_get(g, "excluded_loss")), 1e-9,
               "excluded");
    printf("[ task ] golden: max relative difference %.3g\n", max_rel);
    modadd_proj_free(q);
    free(sc);
    free(norms);
    free(embed);
    free(lg);
    json_decref(g);
}

/* ---- errors ---- */

static void expect_fail(const struct battery_ctx *ctx, const char *needle)
{
    struct rows r;
    struct err e;
    rows_init(&r);
    err_clear(&e);
    assert_true(battery_run_item(battery_find("task"), ctx, &r, &e) < 0);
    assert_int_equal(r.n, 0);
    if (!strstr(err_str(&e), needle))
        fail_msg("error '%s' does not mention '%s'", err_str(&e), needle);
    rows_free(&r);
}

static void test_errors(void **s)
{
    (void)s;
    const int p = 5;
    struct gptneox_config cfg;
    gptneox_config_default(&cfg, p + 1, 16, 1, 2, 16);
    cfg.max_positions = 3;
    struct gptneox *m = NULL;
    struct err e;
    assert_int_equal(gptneox_create(&m, &cfg, &e), 0);
    struct battery_ctx ctx = {.model = m};
    expect_fail(&ctx, "task.json");

    char dir[] = "/tmp/ckptd-task-XXXXXX", path[128], cmd[512];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/task.json", dir);
    ctx.task_path = path;
    expect_fail(&ctx, "cannot open");
    struct task_config tc = {.kind = TASK_MODADD, .seed = 9, .p = p, .train_frac = 0.5};
    struct task *t = NULL;
    assert_int_equal(task_create(&t, &tc, &e), 0);
    assert_int_equal(task_write_json(t, path, NULL, &e), 0);
    task_free(t);
    /* the first train pair replaced by one the seed does not put first */
    int ntr, np;
    assert_int_equal(task_create(&t, &tc, &e), 0);
    const int *pairs = task_modadd_pairs(t, &ntr, &np);
    snprintf(cmd, sizeof cmd, "sed -i 's/\"train_pairs\":\\[\\[%d,%d\\]/\"train_pairs\":[[%d,%d]/' %s",
             pairs[0], pairs[1], pairs[2 * (np - 1)], pairs[2 * (np - 1) + 1], path);
    task_free(t);
    assert_int_equal(system(cmd), 0);
    expect_fail(&ctx, "train pair 0");
    /* a valid task.json for another modulus */
    tc.p = 6;
    assert_int_equal(task_create(&t, &tc, &e), 0);
    assert_int_equal(task_write_json(t, path, NULL, &e), 0);
    task_free(t);
    expect_fail(&ctx, "was not made for this task");
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"task\":\"modular-addition\",\"seed\":1}", f);
    fclose(f);
    expect_fail(&ctx, "vocab_size");
    gptneox_free(m);
    rm_run(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fourier_constructed),
        cmocka_unit_test(test_restricted_excluded_constructed),
        cmocka_unit_test(test_golden_reference),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_modadd_matches_log),
        cmocka_unit_test(test_induction_matches_log),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
