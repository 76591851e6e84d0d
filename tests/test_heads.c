/*
 * test_heads - the `heads`, `ablation` and `ablation_exact` battery items,
 * the repeated sequences, and the hand-built circuits that prove the items
 * right.
 *
 * Against an independent reference: tests/reference/heads_ref.py computed
 * every row of heads and ablation_exact in float64 with torch
 * (tests/golden/heads/, one JSON file per checkpoint) for two golden
 * fixtures (parallel and sequential residual) and the two circuits; each C
 * row must be within 1e-5 * max(1, |ref|) of it (measured: under 2e-7), and
 * the two sets of rows must name the same measurements.  ablation v4: its
 * exact rows (clean loss, the deltas of the heads it ablates, DLA) against
 * the same reference (1e-5 * max(1, |ref|)), its attribution patching
 * estimates against the reference's autograd ones (ATP_TOL * max(1e-3,
 * |ref|) absolute: float32 gradients against float64), each *_error row is
 * estimate - delta exactly, the heads marked 1 are the top k by
 * |estimate|, the sample has its size, every head has an estimate and the
 * exact rows come in threes; a full sweep ablates every head exactly with
 * ablation_exact's numbers, bit for bit, whatever OpenBLAS kernels run
 * (the clean loss from the same products).  On 4 sequences of 520 tokens
 * ablation v4 scores the first 2 (ablation_seqs): its rows, ordinary and
 * full sweep, equal byte for byte those of an eval set of only those 2
 * sequences (what v2 computed there), and differ from 4 sequences'.
 *
 * By construction (workers/model/circuits.h):
 *   prev-token-circuit  head 0.0 prev_token_score > 0.95, its other scores
 *                       < 0.05; the uniform head's scores < 0.15
 *   induction-circuit   head 1.0 induction_score > 0.9; induction_loss
 *                       < 0.1 nats and first_copy_loss within 0.05 of log V;
 *                       zero-ablating 1.0 (or the previous-token head 0.0)
 *                       raises the induction loss to first_copy_loss (within
 *                       0.05); the uniform heads move it by < 0.01; DLA of
 *                       1.0 is > 0.95 of logit_diff and every other term is
 *                       < 0.01 in size
 * Internal consistency: the dla_* rows sum to logit_diff (1e-5 * max(1, |x|)),
 * logit_diff and clean_loss agree with a plain gptneox_forward of the same
 * sequences (1e-5), and the same inputs twice give identical bytes.
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

#include <cmocka.h>

#include "common/rng.h"
#include "workers/battery/battery.h"
#include "workers/model/circuits.h"
#include "workers/model/gptneox.h"
#include "workers/model/kernels.h"

#define REF_TOL 1e-5
#define ATP_TOL 1e-4

/* ---- rows ---- */

struct row {
    char item[16], metric[32];
    int layer, head, idx;
    double value;
};

struct run {
    struct row *rows;
    size_t n;
    char *text; /* both items' COPY text */
    size_t len;
};

static void parse_into(struct run *r, const struct rows *w)
{
    const char *p = w->buf, *end = w->buf + w->len;
    r->rows = realloc(r->rows, (r->n + w->n + 1) * sizeof *r->rows);
    r->text = realloc(r->text, r->len + w->len + 1);
    assert_non_null(r->rows);
    assert_non_null(r->text);
    memcpy(r->text + r->len, w->buf, w->len);
    r->len += w->len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        assert_non_null(nl);
        char line[256], val[64];
        int ver;
        assert_true((size_t)(nl - p) < sizeof line);
        memcpy(line, p, (size_t)(nl - p));
        line[nl - p] = '\0';
        struct row *x = &r->rows[r->n++];
        if (sscanf(line, "%15[^\t]\t%d\t%31[^\t]\t%d\t%d\t%d\t%63s", x->item, &ver, x->metric,
                   &x->layer, &x->head, &x->idx, val) != 7)
            fail_msg("malformed row '%s'", line);
        x->value = strtod(val, NULL);
        p = nl + 1;
    }
}

static void run_free(struct run *r)
{
    free(r->rows);
    free(r->text);
    memset(r, 0, sizeof *r);
}

/* Run items (n of them) on m with the generated eval set of `seed`. */
static void run_list(struct gptneox *m, uint64_t seed, const struct battery_item *const *items,
                     int n, int full_sweep, struct run *out)
{
    memset(out, 0, sizeof *out);
    int *tok = NULL, B, T;
    struct err e;
    assert_int_equal(battery_eval_default(&tok, &B, &T, m->cfg.vocab_size, m->cfg.max_positions,
                                          seed, &e),
                     0);
    struct battery_ctx c = {.model = m, .eval_tokens = tok, .eval_B = B, .eval_T = T,
                            .eval_name = "test", .seed = seed, .full_sweep = full_sweep};
    struct rows w;
    rows_init(&w);
    for (int i = 0; i < n; i++) {
        if (battery_run_item(items[i], &c, &w, &e) < 0)
            fail_msg("%s: %s", items[i]->name, err_str(&e));
        parse_into(out, &w);
    }
    rows_free(&w);
    free(tok);
}

/* heads and ablation_exact (the v1 rows the reference holds). */
static void run_items(struct gptneox *m, uint64_t seed, struct run *out)
{
    const struct battery_item *items[2] = {&battery_item_heads, &battery_item_ablation_exact};
    run_list(m, seed, items, 2, 0, out);
}

static double get(const struct run *r, const char *metric, int layer, int head, int idx)
{
    const struct row *hit = NULL;
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->rows[i].metric, metric) == 0 && r->rows[i].layer == layer &&
            r->rows[i].head == head && r->rows[i].idx == idx) {
            if (hit)
                fail_msg("row %s %d %d %d twice", metric, layer, head, idx);
            hit = &r->rows[i];
        }
    if (!hit)
        fail_msg("no row %s %d %d %d", metric, layer, head, idx);
    return hit->value;
}

/* A model of cfg's shape with random weights (scale 0.3) from seed. */
static struct gptneox *random_model(const struct gptneox_config *cfg, uint64_t seed)
{
    struct gptneox *m = NULL;
    struct err e;
    assert_int_equal(gptneox_create(&m, cfg, &e), 0);
    gptneox_init_random(m, seed, 0.3f);
    return m;
}

static struct gptneox *circuit(const char *name)
{
    struct gptneox *m = NULL;
    struct err e;
    if (circuit_build(&m, name, &e) < 0)
        fail_msg("%s: %s", name, err_str(&e));
    return m;
}

/* ---- against the torch reference ---- */

static void check_reference(const char *name, struct gptneox *m)
{
    char path[256];
    snprintf(path, sizeof path, "tests/golden/heads/%s.json", name);
    json_error_t je;
    json_t *doc = json_load_file(path, 0, &je);
    if (!doc)
        fail_msg("%s: %s", path, je.text);
    struct run r;
    run_items(m, 0, &r);
    size_t nref = 0;
    double worst = 0;
    const char *worst_metric = "";
    const char *items[2] = {"heads", "ablation"}; /* the reference's keys */
    for (int i = 0; i < 2; i++) {
        json_t *rows = json_object_get(doc, items[i]), *jr;
        size_t k;
        assert_true(json_is_array(rows));
        json_array_foreach(rows, k, jr) {
            const char *metric = json_string_value(json_array_get(jr, 0));
            int l = (int)json_integer_value(json_array_get(jr, 1));
            int h = (int)json_integer_value(json_array_get(jr, 2));
            int idx = (int)json_integer_value(json_array_get(jr, 3));
            double want = json_number_value(json_array_get(jr, 4));
            double got = get(&r, metric, l, h, idx);
            double d = fabs(got - want) / fmax(1.0, fabs(want));
            if (!(d <= REF_TOL))
                fail_msg("%s: %s %s layer %d head %d idx %d: %.17g, reference %.17g", name,
                         items[i], metric, l, h, idx, got, want);
            if (d > worst) {
                worst = d;
                worst_metric = metric;
            }
            nref++;
        }
    }
    assert_int_equal(nref, r.n); /* no row the reference does not have */
    printf("%-22s %3zu rows, max |diff| / max(1, |ref|) = %.2e (%s)\n", name, nref, worst,
           worst_metric);
    run_free(&r);
    json_decref(doc);
}

static const double *find_value(const struct run *r, const char *metric, int layer, int head,
                                int idx)
{
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->rows[i].metric, metric) == 0 && r->rows[i].layer == layer &&
            r->rows[i].head == head && r->rows[i].idx == idx)
            return &r->rows[i].value;
    return NULL;
}

/* ablation v4's rules (v2's) on its rows r of model m: every head has its
 * estimates, an exact head has its delta, error (estimate - delta,
 * exactly) and selection, the heads marked 1 are the top k by |estimate|,
 * the sample has its size. */
static void check_rules(const struct run *rr, const struct gptneox *m)
{
    const struct run r = *rr;
    const int NL = m->cfg.n_layers, NH = m->cfg.n_heads, n = NL * NH;
    static const char *const kinds[2] = {"zero", "mean"};
    for (int idx = 0; idx < 2; idx++)
        for (int kind = 0; kind < 2; kind++) {
            char est_m[40], del_m[40], err_m[40], sel_m[40];
            snprintf(est_m, sizeof est_m, "%s_ablation_estimate", kinds[kind]);
            snprintf(del_m, sizeof del_m, "%s_ablation_delta", kinds[kind]);
            snprintf(err_m, sizeof err_m, "%s_ablation_error", kinds[kind]);
            snprintf(sel_m, sizeof sel_m, "%s_ablation_selection", kinds[kind]);
            int top = 0, sample = 0, other = 0;
            double kth = INFINITY, rest_max = 0;
            for (int l = 0; l < NL; l++)
                for (int h = 0; h < NH; h++) {
                    double est = get(&r, est_m, l, h, idx);
                    const double *del = find_value(&r, del_m, l, h, idx);
                    const double *er = find_value(&r, err_m, l, h, idx);
                    const double *sel = find_value(&r, sel_m, l, h, idx);
                    assert_true((del != NULL) == (sel != NULL) && (er != NULL) == (sel != NULL));
                    if (!sel) {
                        rest_max = fmax(rest_max, fabs(est));
                        continue;
                    }
                    assert_true(*er == est - *del);
                    if (*sel == 1) {
                        top++;
                        kth = fmin(kth, fabs(est));
                    } else if (*sel == 2) {
                        sample++;
                        rest_max = fmax(rest_max, fabs(est));
                    } else {
                        assert_true(*sel == 4);
                        other++;
                        rest_max = fmax(rest_max, fabs(est));
                    }
                }
            int k_top = ABLATION_TOP_K < n ? ABLATION_TOP_K : n;
            assert_int_equal(top, k_top);
            assert_true(kth >= rest_max);
            int left = n - k_top - other;
            assert_int_equal(sample, ABLATION_SAMPLE < left ? ABLATION_SAMPLE : left);
        }
}

/* ablation v4 against the reference and its own rules. */
static void check_atp(const char *name, struct gptneox *m)
{
    char path[256];
    snprintf(path, sizeof path, "tests/golden/heads/%s.json", name);
    json_error_t je;
    json_t *doc = json_load_file(path, 0, &je);
    if (!doc)
        fail_msg("%s: %s", path, je.text);
    const struct battery_item *v2[1] = {&battery_item_ablation};
    struct run r;
    run_list(m, 0, v2, 1, 0, &r);
    const int NL = m->cfg.n_layers, NH = m->cfg.n_heads, n = NL * NH;
    double worst_exact = 0, worst_est = 0;
    int exact_rows = 0;
    /* the exact rows it writes are the reference's */
    json_t *jr;
    size_t k;
    json_array_foreach(json_object_get(doc, "ablation"), k, jr) {
        const char *metric = json_string_value(json_array_get(jr, 0));
        int l = (int)json_integer_value(json_array_get(jr, 1));
        int h = (int)json_integer_value(json_array_get(jr, 2));
        int idx = (int)json_integer_value(json_array_get(jr, 3));
        double want = json_number_value(json_array_get(jr, 4));
        const double *got = find_value(&r, metric, l, h, idx);
        if (!got) {
            assert_true(strstr(metric, "_ablation_delta") != NULL); /* not ablated exactly */
            continue;
        }
        double d = fabs(*got - want) / fmax(1.0, fabs(want));
        if (!(d <= REF_TOL))
            fail_msg("%s: ablation %s %d %d %d: %.17g, reference %.17g", name, metric, l, h, idx,
                     *got, want);
        worst_exact = fmax(worst_exact, d);
        exact_rows++;
    }
    /* the estimates are autograd's */
    size_t nest = 0;
    json_array_foreach(json_object_get(doc, "ablation_atp"), k, jr) {
        const char *metric = json_string_value(json_array_get(jr, 0));
        int l = (int)json_integer_value(json_array_get(jr, 1));
        int h = (int)json_integer_value(json_array_get(jr, 2));
        int idx = (int)json_integer_value(json_array_get(jr, 3));
        double want = json_number_value(json_array_get(jr, 4));
        double got = get(&r, metric, l, h, idx);
        double d = fabs(got - want) / fmax(1e-3, fabs(want));
        if (!(d <= ATP_TOL))
            fail_msg("%s: %s %d %d %d: %.9g, autograd %.9g", name, metric, l, h, idx, got, want);
        worst_est = fmax(worst_est, d);
        nest++;
    }
    assert_int_equal(nest, (size_t)2 * 2 * n);
    check_rules(&r, m);
    printf("%-22s ablation v4: %d exact rows within %.2e, %zu estimates within %.2e of autograd\n",
           name, exact_rows, worst_exact, nest, worst_est);
    run_free(&r);
    json_decref(doc);
}

static void test_atp(void **state)
{
    (void)state;
    const char *fixtures[2] = {"f32_parallel_rot025", "f32_sequential_rot100"};
    for (int i = 0; i < 2; i++) {
        char dir[128];
        snprintf(dir, sizeof dir, "tests/golden/%s", fixtures[i]);
        struct gptneox *m = NULL;
        struct err e;
        if (gptneox_load(&m, dir, 0, &e) < 0)
            fail_msg("%s: %s", dir, err_str(&e));
        check_atp(fixtures[i], m);
        gptneox_free(m);
    }
    const char *circuits[2] = {"prev-token-circuit", "induction-circuit"};
    for (int i = 0; i < 2; i++) {
        struct gptneox *m = circuit(circuits[i]);
        check_atp(circuits[i], m);
        gptneox_free(m);
    }
    /* more heads than the exact budget: the top k, the DLA heads and the
     * sample are a choice */
    struct gptneox_config cfg;
    gptneox_config_default(&cfg, 61, 64, 3, 8, 96);
    cfg.max_positions = 24;
    struct gptneox *m = random_model(&cfg, 11);
    const struct battery_item *v2[1] = {&battery_item_ablation};
    struct run r;
    run_list(m, 2, v2, 1, 0, &r);
    check_rules(&r, m);
    int exact = 0;
    for (size_t i = 0; i < r.n; i++)
        exact += strstr(r.rows[i].metric, "_ablation_delta") != NULL;
    printf("random 3x8 heads: %d of %d (head, kind, set) ablated exactly\n", exact, 4 * 24);
    assert_true(exact < 4 * 24);
    run_free(&r);
    gptneox_free(m);
}

/* A full sweep ablates every head, with ablation_exact's numbers. */
static void test_full_sweep(void **state)
{
    (void)state;
    struct gptneox *m = NULL;
    struct err e;
    assert_int_equal(gptneox_load(&m, "tests/golden/f32_sequential_rot100", 0, &e), 0);
    const struct battery_item *v2[1] = {&battery_item_ablation};
    const struct battery_item *v1[1] = {&battery_item_ablation_exact};
    struct run sw, ex;
    run_list(m, 4, v2, 1, 1, &sw);
    run_list(m, 4, v1, 1, 0, &ex);
    const int NL = m->cfg.n_layers, NH = m->cfg.n_heads;
    for (int idx = 0; idx < 2; idx++) {
        for (int l = 0; l < NL; l++)
            for (int h = 0; h < NH; h++) {
                assert_true(get(&sw, "zero_ablation_delta", l, h, idx) ==
                            get(&ex, "zero_ablation_delta", l, h, idx));
                assert_true(get(&sw, "mean_ablation_delta", l, h, idx) ==
                            get(&ex, "mean_ablation_delta", l, h, idx));
                double sel = get(&sw, "zero_ablation_selection", l, h, idx);
                assert_true(sel == 1 || sel == 3 || sel == 4);
            }
        assert_true(get(&sw, "clean_loss", -1, -1, idx) == get(&ex, "clean_loss", -1, -1, idx));
        double rec = get(&sw, "zero_ablation_topk_recall", -1, -1, idx);
        assert_true(rec >= 0 && rec <= 1);
        printf("full sweep idx %d: top-%d recall zero %.2f mean %.2f, sample mae zero %.2e\n", idx,
               ABLATION_TOP_K, rec, get(&sw, "mean_ablation_topk_recall", -1, -1, idx),
               get(&sw, "zero_ablation_sample_mae", -1, -1, idx));
    }
    run_free(&sw);
    run_free(&ex);
    gptneox_free(m);
}

/* Run items on m with the eval set tok (B x T). */
static void run_tokens(struct gptneox *m, const int *tok, int B, int T, int full_sweep,
                       const struct battery_item *item, struct run *out)
{
    memset(out, 0, sizeof *out);
    struct battery_ctx c = {.model = m, .eval_tokens = tok, .eval_B = B, .eval_T = T,
                            .eval_name = "test", .seed = 5, .full_sweep = full_sweep};
    struct rows w;
    struct err e;
    rows_init(&w);
    if (battery_run_item(item, &c, &w, &e) < 0)
        fail_msg("%s: %s", item->name, err_str(&e));
    parse_into(out, &w);
    rows_free(&w);
}

/* ablation v4 on sequences longer than ABLATION_EVAL_TOKENS / ABLATION_EVAL_SEQS
 * scores the first ablation_seqs(B, T) of them (2 of 4 x 520): its rows,
 * on ordinary and full-sweep checkpoints, are byte for byte v2's (which
 * took min(B, ABLATION_EVAL_SEQS)) computed on an eval set of only those
 * sequences, and differ from what 4 sequences give; ablation_exact keeps
 * 4 sequences. */
static void test_eval_subset(void **state)
{
    (void)state;
    struct gptneox_config cfg;
    gptneox_config_default(&cfg, 61, 32, 2, 4, 64);
    cfg.max_positions = 520;
    struct gptneox *m = random_model(&cfg, 3);
    const int B = 4, T = 520, nb = ablation_seqs(B, T);
    assert_int_equal(nb, 2);
    assert_int_equal(ablation_seqs(16, 128), ABLATION_EVAL_SEQS);
    assert_int_equal(ablation_seqs(1, 4096), 1);
    int *tok = malloc((size_t)B * T * sizeof *tok);
    assert_non_null(tok);
    uint64_t st = 77;
    for (int i = 0; i < B * T; i++)
        tok[i] = (int)rng_below(&st, 61);
    for (int sweep = 0; sweep < 2; sweep++) {
        struct run all, first;
        run_tokens(m, tok, B, T, sweep, &battery_item_ablation, &all);
        run_tokens(m, tok, nb, T, sweep, &battery_item_ablation, &first);
        assert_int_equal(all.len, first.len);
        assert_memory_equal(all.text, first.text, all.len);
        run_free(&first);
        /* four sequences (ablation_exact, as v1) give another clean loss */
        run_tokens(m, tok, B, T, 0, &battery_item_ablation_exact, &first);
        assert_true(get(&first, "clean_loss", -1, -1, 0) != get(&all, "clean_loss", -1, -1, 0));
        if (sweep) /* a sweep's deltas are ablation_exact's on the same sequences */
            assert_true(get(&first, "zero_ablation_delta", 1, 2, 0) !=
                        get(&all, "zero_ablation_delta", 1, 2, 0));
        run_free(&first);
        run_free(&all);
    }
    free(tok);
    gptneox_free(m);
}

static void test_reference(void **state)
{
    (void)state;
    const char *fixtures[2] = {"f32_parallel_rot025", "f32_sequential_rot100"};
    for (int i = 0; i < 2; i++) {
        char dir[128];
        snprintf(dir, sizeof dir, "tests/golden/%s", fixtures[i]);
        struct gptneox *m = NULL;
        struct err e;
        if (gptneox_load(&m, dir, 0, &e) < 0)
            fail_msg("%s: %s", dir, err_str(&e));
        check_reference(fixtures[i], m);
        gptneox_free(m);
    }
    const char *circuits[2] = {"prev-token-circuit", "induction-circuit"};
    for (int i = 0; i < 2; i++) {
        struct gptneox *m = circuit(circuits[i]);
        check_reference(circuits[i], m);
        gptneox_free(m);
    }
}

/* ---- the circuits ---- */

static void test_prev_token_circuit(void **state)
{
    (void)state;
    struct gptneox *m = circuit("prev-token-circuit");
    struct run r;
    run_items(m, 0, &r);
    double prev = get(&r, "prev_token_score", 0, 0, -1);
    printf("prev-token head: prev %.6f induction %.2e duplicate %.2e; uniform head: prev %.4f "
           "induction %.4f\n",
           prev, get(&r, "induction_score", 0, 0, -1), get(&r, "duplicate_token_score", 0, 0, -1),
           get(&r, "prev_token_score", 0, 1, -1), get(&r, "induction_score", 0, 1, -1));
    assert_true(prev > 0.95);
    assert_true(get(&r, "induction_score", 0, 0, -1) < 0.05);
    assert_true(get(&r, "duplicate_token_score", 0, 0, -1) < 0.05);
    /* the previous-token head is sharp; the uniform one is spread out */
    assert_true(get(&r, "attention_entropy", 0, 0, -1) < 0.01);
    assert_true(get(&r, "attention_entropy", 0, 1, -1) > 2.0);
    const char *scores[3] = {"induction_score", "prev_token_score", "duplicate_token_score"};
    for (int k = 0; k < 3; k++)
        assert_true(get(&r, scores[k], 0, 1, -1) < 0.15);
    run_free(&r);
    gptneox_free(m);
}

static void test_induction_circuit(void **state)
{
    (void)state;
    struct gptneox *m = circuit("induction-circuit");
    struct run r;
    run_items(m, 0, &r);
    const double logV = log(m->cfg.vocab_size);
    double ind = get(&r, "induction_score", 1, 0, -1);
    double second = get(&r, "induction_loss", -1, -1, -1), first = get(&r, "first_copy_loss", -1, -1, -1);
    double clean = get(&r, "clean_loss", -1, -1, 1);
    double zero_ind = get(&r, "zero_ablation_delta", 1, 0, 1);
    double zero_prev = get(&r, "zero_ablation_delta", 0, 0, 1);
    double dla = get(&r, "dla_head", 1, 0, 1), diff = get(&r, "logit_diff", -1, -1, 1);
    printf("induction head: score %.6f; loss second copy %.3g, first copy %.4f (log V %.4f); "
           "zero-ablation +%.4f (prev-token head +%.4f); DLA %.3f of logit_diff %.3f\n",
           ind, second, first, logV, zero_ind, zero_prev, dla, diff);
    assert_true(ind > 0.9);
    assert_true(get(&r, "prev_token_score", 0, 0, -1) > 0.95);
    assert_true(second < 0.1);
    assert_true(fabs(first - logV) < 0.05);
    assert_true(fabs(get(&r, "induction_loss_drop", -1, -1, -1) - (first - second)) < 1e-12);
    /* the ablation item's repeated set is a subset of the heads item's */
    assert_true(clean < 0.1);
    /* removing either half of the circuit undoes the induction */
    assert_true(fabs(clean + zero_ind - first) < 0.05);
    assert_true(fabs(clean + zero_prev - first) < 0.05);
    assert_true(get(&r, "mean_ablation_delta", 1, 0, 1) > 0.5 * logV);
    /* the uniform heads do little */
    for (int l = 0; l < 2; l++) {
        assert_true(fabs(get(&r, "zero_ablation_delta", l, 1, 1)) < 0.01);
        assert_true(fabs(get(&r, "mean_ablation_delta", l, 1, 1)) < 0.01);
    }
    /* the induction head writes the logit; nothing else does */
    assert_true(dla > 0.95 * diff && diff > 20);
    assert_true(fabs(get(&r, "dla_head", 0, 0, 1)) < 0.01);
    assert_true(fabs(get(&r, "dla_head", 0, 1, 1)) < 0.01);
    assert_true(fabs(get(&r, "dla_head", 1, 1, 1)) < 0.01);
    assert_true(fabs(get(&r, "dla_embed", -1, -1, 1)) < 0.01);
    for (int l = 0; l < 2; l++)
        assert_true(fabs(get(&r, "dla_mlp", l, -1, 1)) < 0.01);
    run_free(&r);
    gptneox_free(m);
}

/* ---- consistency ---- */

/* The dla_* rows sum to logit_diff; logit_diff and clean_loss of the eval
 * set agree with a plain forward of its first sequences. */
static void check_dla_sum(struct gptneox *m, const char *what)
{
    struct run r;
    run_items(m, 3, &r);
    for (int idx = 0; idx < 2; idx++) {
        double sum = 0;
        for (size_t i = 0; i < r.n; i++)
            if (strncmp(r.rows[i].metric, "dla_", 4) == 0 && r.rows[i].idx == idx)
                sum += r.rows[i].value;
        double diff = get(&r, "logit_diff", -1, -1, idx);
        printf("%s idx %d: sum of DLA terms %.9f, logit_diff %.9f\n", what, idx, sum, diff);
        if (!(fabs(sum - diff) <= 1e-5 * fmax(1.0, fabs(diff))))
            fail_msg("%s idx %d: DLA terms sum to %.9g, logit_diff is %.9g", what, idx, sum, diff);
    }
    /* the eval set's first ABLATION_EVAL_SEQS sequences, directly */
    int *tok = NULL, B, T;
    struct err e;
    const int V = m->cfg.vocab_size;
    assert_int_equal(battery_eval_default(&tok, &B, &T, V, m->cfg.max_positions, 3, &e), 0);
    int nb = B < ABLATION_EVAL_SEQS ? B : ABLATION_EVAL_SEQS;
    assert_int_equal(gptneox_forward(m, tok, nb, T, NULL, 0, &e), 0);
    const float *lg = gptneox_logits(m);
    double d = 0;
    for (int b = 0; b < nb; b++)
        for (int t = 0; t + 1 < T; t++) {
            const float *row = lg + ((size_t)b * T + t) * V;
            double mean = 0;
            for (int v = 0; v < V; v++)
                mean += row[v];
            d += row[tok[(size_t)b * T + t + 1]] - mean / V;
        }
    d /= (double)nb * (T - 1);
    double loss = gptneox_loss(m, tok, nb, T, NULL, NULL);
    assert_true(fabs(d - get(&r, "logit_diff", -1, -1, 0)) <= 1e-5 * fmax(1.0, fabs(d)));
    assert_true(fabs(loss - get(&r, "clean_loss", -1, -1, 0)) <= 1e-5 * fmax(1.0, loss));
    free(tok);
    run_free(&r);
}

static void test_dla_sum(void **state)
{
    (void)state;
    for (int par = 0; par <= 1; par++) {
        struct gptneox_config cfg;
        gptneox_config_default(&cfg, 61, 64, 3, 4, 96);
        cfg.parallel_residual = par;
        cfg.max_positions = 24;
        struct gptneox *m = random_model(&cfg, 5 + par);
        check_dla_sum(m, par ? "random parallel" : "random sequential");
        gptneox_free(m);
    }
    struct gptneox *m = circuit("induction-circuit");
    check_dla_sum(m, "induction-circuit");
    gptneox_free(m);
}

static void test_deterministic(void **state)
{
    (void)state;
    struct gptneox *m = NULL;
    struct err e;
    assert_int_equal(gptneox_load(&m, "tests/golden/f32_parallel_rot025", 0, &e), 0);
    struct run a, b, c;
    const struct battery_item *items[3] = {&battery_item_heads, &battery_item_ablation,
                                           &battery_item_ablation_exact};
    run_list(m, 7, items, 3, 0, &a);
    run_list(m, 7, items, 3, 0, &b);
    run_list(m, 8, items, 3, 0, &c);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.text, b.text, a.len);
    /* another seed, other repeated sequences and eval set: other numbers */
    assert_true(get(&a, "induction_score", 0, 0, -1) != get(&c, "induction_score", 0, 0, -1));
    run_free(&a);
    run_free(&b);
    run_free(&c);
    gptneox_free(m);
}

/* v2's attention_entropy reads the lens's sequences (lens_seqs): on an
 * eval set larger than 2048 tokens the rows are, byte for byte, those of
 * a set of only those sequences. */
static void test_entropy_subset(void **state)
{
    (void)state;
    struct gptneox *m = NULL;
    struct err e;
    assert_int_equal(gptneox_load(&m, "tests/golden/f32_parallel_rot025", 0, &e), 0);
    const int B = 40, T = 64, sub = lens_seqs(B, T);
    assert_true(sub < B && sub * T >= LENS_TOKENS);
    int *tok = malloc((size_t)B * T * sizeof *tok);
    assert_non_null(tok);
    uint64_t st = 99;
    for (int i = 0; i < B * T; i++)
        tok[i] = (int)rng_below(&st, (uint32_t)m->cfg.vocab_size);
    struct rows w[3];
    const int bs[3] = {B, sub, B - 1};
    for (int k = 0; k < 3; k++) {
        struct battery_ctx c = {.model = m, .eval_tokens = tok, .eval_B = bs[k], .eval_T = T,
                                .eval_name = "subset", .seed = 1};
        rows_init(&w[k]);
        assert_int_equal(battery_run_item(&battery_item_heads, &c, &w[k], &e), 0);
    }
    assert_true(w[0].len > 0);
    for (int k = 1; k < 3; k++) {
        assert_int_equal(w[0].len, w[k].len);
        assert_memory_equal(w[0].buf, w[k].buf, w[0].len);
        rows_free(&w[k]);
    }
    rows_free(&w[0]);
    free(tok);
    gptneox_free(m);
}

/* ---- the repeated sequences ---- */

static void test_repeated_tokens(void **state)
{
    (void)state;
    int *tok = NULL, B, T, L;
    struct err e;
    int caps[4][3] = {{50304, 2048, 64}, {256, 33, 16}, {5, 100, 4}, {3, 5, 2}}; /* V, max, L */
    for (int k = 0; k < 4; k++) {
        int V = caps[k][0];
        assert_int_equal(battery_repeated_tokens(&tok, &B, &T, &L, V, caps[k][1], 9, &e), 0);
        assert_int_equal(L, caps[k][2]);
        assert_int_equal(B, BATTERY_REP_SEQS);
        assert_int_equal(T, 2 * L + 1);
        for (int b = 0; b < B; b++) {
            const int *row = tok + (size_t)b * T;
            assert_int_equal(row[0], BATTERY_REP_BOS);
            for (int j = 0; j < L; j++) {
                assert_int_equal(row[1 + j], row[1 + L + j]);
                assert_true(row[1 + j] > 0 && row[1 + j] < V);
                for (int i = 0; i < j; i++)
                    assert_true(row[1 + i] != row[1 + j]);
            }
        }
        int *again = NULL, B2, T2, L2;
        assert_int_equal(battery_repeated_tokens(&again, &B2, &T2, &L2, V, caps[k][1], 9, &e), 0);
        assert_memory_equal(tok, again, (size_t)B * T * sizeof *tok);
        free(again);
        free(tok);
    }
    assert_int_equal(battery_repeated_tokens(&tok, &B, &T, &L, 2, 100, 0, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "vocabulary"));
    assert_null(tok);
    assert_int_equal(battery_repeated_tokens(&tok, &B, &T, &L, 100, 4, 0, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "max_position_embeddings 4"));
}

static void test_errors(void **state)
{
    (void)state;
    struct gptneox *m = NULL;
    struct err e;
    assert_int_equal(gptneox_load(&m, "tests/golden/f32_parallel_rot025", 0, &e), 0);
    int tok[2 * 65] = {0};
    struct battery_ctx c = {.model = m, .eval_tokens = tok, .eval_B = 2, .eval_T = 65,
                            .eval_name = "long.json"};
    struct rows w;
    rows_init(&w);
    const struct battery_item *items[3] = {&battery_item_heads, &battery_item_ablation,
                                           &battery_item_ablation_exact};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(battery_run_item(items[i], &c, &w, &e), ERR_INVALID);
        assert_non_null(strstr(e.msg, "max_position_embeddings 64"));
        assert_int_equal(w.n, 0);
    }
    c.eval_B = 130;
    c.eval_T = 1;
    assert_int_equal(battery_run_item(&battery_item_ablation, &c, &w, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "at least 2"));
    c.eval_T = 2;
    c.eval_B = 65;
    tok[7] = m->cfg.vocab_size; /* outside the vocabulary */
    assert_int_equal(battery_run_item(&battery_item_heads, &c, &w, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "vocabulary"));
    struct gptneox *x = NULL;
    assert_int_equal(circuit_build(&x, "no-such-circuit", &e), ERR_NOTFOUND);
    assert_null(x);
    assert_true(circuit_known("induction-circuit") && !circuit_known("tiny"));
    rows_free(&w);
    gptneox_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_repeated_tokens),
        cmocka_unit_test(test_prev_token_circuit),
        cmocka_unit_test(test_induction_circuit),
        cmocka_unit_test(test_reference),
        cmocka_unit_test(test_atp),
        cmocka_unit_test(test_full_sweep),
        cmocka_unit_test(test_eval_subset),
        cmocka_unit_test(test_dla_sum),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_entropy_subset),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
