/*
 * test_battery_llc - the battery item `llc` (workers/battery/battery_llc.c).
 *
 *  - Against tests/reference/llc_ref.py (torch autograd on the
 *    f32_parallel_rot025 fixture, the same splitmix64 noise and minibatch
 *    order re-derived in Python, the update in numpy float32;
 *    tests/golden/llc/trace.json; 112384 parameters, two noise blocks):
 *    init_loss within 1e-6, every trace_loss within 1e-5 (2 chains x 12
 *    draws; observed max |diff| 7e-7, printed), llc_chain, llc and llc_std
 *    within 2e-4 (nbeta 20 times the trace tolerance).  The reference's own
 *    float32-vs-float64 distance is 7e-7, so 1e-5 leaves room for the two
 *    float32 implementations' different summation orders and no more: a
 *    wrong noise value, minibatch or update term moves the trace by 1e-3
 *    or more.
 *  - Determinism: the same checkpoint and seed give the same bytes twice;
 *    another seed gives other bytes.
 *  - The checkpoint's model is left as it was: every parameter byte equal
 *    after the item (a writable model, which the item could have written).
 *  - Divergence: epsilon 10 stops every chain: chains_diverged = chains,
 *    a chain_diverged_step row per chain, no llc / llc_std / llc_chain rows,
 *    every value written finite, every row a declared metric.
 *  - A NaN weight is refused with ERR_NUMERIC naming the tensor, and
 *    through battery_run_item nothing is written.
 *  - Toy runs: with a modular-addition run's task.json the data set is its
 *    training pairs: init_loss equals the task item's train_loss (1e-6);
 *    an induction run's task.json gives LLC_TASK_SEQS sequences; a
 *    checkpoint of another vocabulary is ERR_INVALID.
 *  - The default item runs through battery_run_item on the fixture: the
 *    registry has it after `task`, opt-in, needing eval tokens and reading
 *    the task optionally; LLC_CHAINS x LLC_DRAWS trace rows.
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
#include "workers/model/backward.h"
#include "workers/model/gptneox.h"
#include "workers/train/task.h"
#include "workers/train/train.h"

#define FIXTURE "tests/golden/f32_parallel_rot025"
#define GOLDEN "tests/golden/llc/trace.json"

/* ---- rows ---- */

struct row {
    char metric[32];
    int layer, head, idx;
    double value;
};

static struct row *parse_rows(const struct rows *r, size_t *n)
{
    struct row *out = calloc(r->n ? r->n : 1, sizeof *out);
    assert_non_null(out);
    size_t k = 0;
    const char *p = r->buf, *end = r->buf + r->len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        assert_non_null(nl);
        char line[256], item[32], val[64];
        int ver;
        assert_true((size_t)(nl - p) < sizeof line);
        memcpy(line, p, (size_t)(nl - p));
        line[nl - p] = '\0';
        assert_int_equal(sscanf(line, "%31[^\t]\t%d\t%31[^\t]\t%d\t%d\t%d\t%63s", item, &ver,
                                out[k].metric, &out[k].layer, &out[k].head, &out[k].idx, val),
                         7);
        assert_string_equal(item, "llc");
        assert_int_equal(ver, 1);
        out[k].value = strtod(val, NULL);
        k++;
        p = nl + 1;
    }
    assert_int_equal(k, r->n);
    *n = k;
    return out;
}

static int count_metric(const struct row *rs, size_t n, const char *metric)
{
    int c = 0;
    for (size_t i = 0; i < n; i++)
        c += strcmp(rs[i].metric, metric) == 0;
    return c;
}

/* value of (metric, layer, idx), failing when absent */
static double need(const struct row *rs, size_t n, const char *metric, int layer, int idx)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(rs[i].metric, metric) == 0 && rs[i].layer == layer && rs[i].idx == idx)
            return rs[i].value;
    fail_msg("no row %s layer %d idx %d", metric, layer, idx);
    return NAN;
}

/* ---- fixtures ---- */

struct golden {
    json_t *doc;
    struct llc_params p;
    uint64_t seed;
    int *tokens, B, T;
};

static void golden_load(struct golden *g)
{
    json_error_t je;
    g->doc = json_load_file(GOLDEN, 0, &je);
    if (!g->doc)
        fail_msg("%s: %s (make golden writes it)", GOLDEN, je.text);
    json_t *p = json_object_get(g->doc, "params");
    g->p = (struct llc_params){
        .nbeta = json_number_value(json_object_get(p, "nbeta")),
        .gamma = json_number_value(json_object_get(p, "gamma")),
        .epsilon = json_number_value(json_object_get(p, "epsilon")),
        .chains = (int)json_integer_value(json_object_get(p, "chains")),
        .draws = (int)json_integer_value(json_object_get(p, "draws")),
        .burnin = (int)json_integer_value(json_object_get(p, "burnin")),
        .batch_tokens = (int)json_integer_value(json_object_get(p, "batch_tokens")),
    };
    g->seed = (uint64_t)json_integer_value(json_object_get(g->doc, "seed"));
    json_t *tok = json_object_get(g->doc, "tokens");
    g->B = (int)json_array_size(tok);
    g->T = (int)json_array_size(json_array_get(tok, 0));
    assert_true(g->B > 0 && g->T > 1 && g->p.chains >= 2);
    g->tokens = malloc(sizeof(int) * (size_t)g->B * g->T);
    assert_non_null(g->tokens);
    for (int b = 0; b < g->B; b++)
        for (int t = 0; t < g->T; t++)
            g->tokens[b * g->T + t] =
                (int)json_integer_value(json_array_get(json_array_get(tok, b), t));
}

static void golden_free(struct golden *g)
{
    json_decref(g->doc);
    free(g->tokens);
}

static struct gptneox *load(unsigned flags)
{
    struct gptneox *m = NULL;
    struct err e;
    if (gptneox_load(&m, FIXTURE, flags, &e) < 0)
        fail_msg("%s", err_str(&e));
    return m;
}

static void run_ok(const struct battery_ctx *ctx, const struct llc_params *p, struct rows *r)
{
    struct err e;
    rows_init(r);
    rows_begin(r, "llc", 1);
    if (battery_llc_run(ctx, p, r, &e) < 0)
        fail_msg("%s", err_str(&e));
}

/* ---- against the reference ---- */

static void test_matches_reference(void **s)
{
    (void)s;
    struct golden g;
    golden_load(&g);
    struct gptneox *m = load(0);
    struct battery_ctx ctx = {.model = m, .eval_tokens = g.tokens, .eval_B = g.B,
                              .eval_T = g.T, .eval_name = GOLDEN, .seed = g.seed};
    struct rows r;
    run_ok(&ctx, &g.p, &r);
    size_t n;
    struct row *rs = parse_rows(&r, &n);
    double d_init = fabs(need(rs, n, "init_loss", -1, -1) -
                         json_number_value(json_object_get(g.doc, "init_loss")));
    double d_trace = 0.0, d_llc = 0.0;
    json_t *tr = json_object_get(g.doc, "trace");
    assert_int_equal(json_array_size(tr), g.p.chains);
    assert_int_equal(count_metric(rs, n, "trace_loss"), g.p.chains * g.p.draws);
    for (int c = 0; c < g.p.chains; c++) {
        assert_int_equal(json_array_size(json_array_get(tr, c)), g.p.draws);
        for (int t = 0; t < g.p.draws; t++) {
            double want = json_number_value(json_array_get(json_array_get(tr, c), t));
            d_trace = fmax(d_trace, fabs(need(rs, n, "trace_loss", c, t) - want));
        }
        double want = json_number_value(json_array_get(json_object_get(g.doc, "llc_chain"), c));
        d_llc = fmax(d_llc, fabs(need(rs, n, "llc_chain", c, -1) - want));
    }
    d_llc = fmax(d_llc, fabs(need(rs, n, "llc", -1, -1) -
                             json_number_value(json_object_get(g.doc, "llc"))));
    d_llc = fmax(d_llc, fabs(need(rs, n, "llc_std", -1, -1) -
                             json_number_value(json_object_get(g.doc, "llc_std"))));
    print_message("llc vs torch reference: init_loss |d| %.2e, trace max |d| %.2e, "
                  "llc/llc_chain/llc_std max |d| %.2e\n", d_init, d_trace, d_llc);
    assert_true(d_init <= 1e-6);
    assert_true(d_trace <= 1e-5);
    assert_true(d_llc <= 2e-4);
    assert_true(need(rs, n, "chains_diverged", -1, -1) == 0);
    free(rs);
    rows_free(&r);
    gptneox_free(m);
    golden_free(&g);
}

/* ---- determinism, model unchanged ---- */

static unsigned char *param_bytes(const struct gptneox *m, size_t *len)
{
    size_t np = gptneox_params(m, NULL, 0), tot = 0;
    struct gptneox_param *ps = calloc(np, sizeof *ps);
    assert_non_null(ps);
    gptneox_params(m, ps, np);
    for (size_t i = 0; i < np; i++)
        tot += ps[i].n * sizeof(float);
    unsigned char *buf = malloc(tot), *q = buf;
    assert_non_null(buf);
    for (size_t i = 0; i < np; i++) {
        memcpy(q, ps[i].data, ps[i].n * sizeof(float));
        q += ps[i].n * sizeof(float);
    }
    free(ps);
    *len = tot;
    return buf;
}

static void test_deterministic_model_unchanged(void **s)
{
    (void)s;
    struct golden g;
    golden_load(&g);
    struct gptneox *m = load(GPTNEOX_LOAD_WRITABLE);
    assert_true(m->writable);
    size_t len0, len1;
    unsigned char *before = param_bytes(m, &len0);
    struct battery_ctx ctx = {.model = m, .eval_tokens = g.tokens, .eval_B = g.B,
                              .eval_T = g.T, .seed = 3};
    struct rows a, b, c;
    run_ok(&ctx, &g.p, &a);
    unsigned char *after = param_bytes(m, &len1);
    assert_int_equal(len0, len1);
    assert_memory_equal(before, after, len0);
    run_ok(&ctx, &g.p, &b);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.buf, b.buf, a.len);
    ctx.seed = 4;
    run_ok(&ctx, &g.p, &c);
    assert_true(a.len != c.len || memcmp(a.buf, c.buf, a.len) != 0);
    free(before);
    free(after);
    rows_free(&a);
    rows_free(&b);
    rows_free(&c);
    gptneox_free(m);
    golden_free(&g);
}

/* ---- divergence and bad weights ---- */

static void test_divergence_gives_finite_rows(void **s)
{
    (void)s;
    struct golden g;
    golden_load(&g);
    struct gptneox *m = load(0);
    struct battery_ctx ctx = {.model = m, .eval_tokens = g.tokens, .eval_B = g.B,
                              .eval_T = g.T, .seed = 1};
    struct llc_params p = g.p;
    p.epsilon = 10.0;
    struct rows r;
    run_ok(&ctx, &p, &r);
    size_t n;
    struct row *rs = parse_rows(&r, &n);
    const struct battery_item *it = battery_find("llc");
    assert_non_null(it);
    for (size_t i = 0; i < n; i++) {
        assert_true(isfinite(rs[i].value));
        assert_non_null(battery_metric(it, rs[i].metric));
    }
    assert_true(need(rs, n, "chains_diverged", -1, -1) == p.chains);
    for (int c = 0; c < p.chains; c++) {
        double st = need(rs, n, "chain_diverged_step", c, -1);
        assert_true(st >= 0 && st < p.burnin + p.draws);
    }
    assert_int_equal(count_metric(rs, n, "llc"), 0);
    assert_int_equal(count_metric(rs, n, "llc_std"), 0);
    assert_int_equal(count_metric(rs, n, "llc_chain"), 0);
    assert_int_equal(count_metric(rs, n, "init_loss"), 1);
    free(rs);
    rows_free(&r);
    gptneox_free(m);
    golden_free(&g);
}

static void test_nan_weight_refused(void **s)
{
    (void)s;
    struct golden g;
    golden_load(&g);
    struct gptneox *m = load(GPTNEOX_LOAD_WRITABLE);
    m->layers[1].fc_w[17] = NAN;
    struct battery_ctx ctx = {.model = m, .eval_tokens = g.tokens, .eval_B = g.B,
                              .eval_T = g.T};
    struct rows r;
    struct err e;
    rows_init(&r);
    assert_int_equal(battery_run_item(battery_find("llc"), &ctx, &r, &e), ERR_NUMERIC);
    assert_non_null(strstr(e.ctx, "gpt_neox.layers.1.mlp.dense_h_to_4h.weight"));
    assert_non_null(strstr(e.msg, "flat index 17"));
    assert_non_null(strstr(e.msg, "item llc v1"));
    assert_int_equal(r.n, 0);
    rows_free(&r);
    gptneox_free(m);
    golden_free(&g);
}

/* ---- toy runs ---- */

static void train_small(struct train_config *c, const char *out, struct task_config tc,
                        long steps, const long *ck, size_t nck)
{
    toy_config(c, out);
    c->task = tc;
    c->steps = steps;
    c->checkpoints = ck;
    c->ncheckpoints = nck;
    struct err e;
    if (train_run(c, &e) < 0)
        fail_msg("%s", err_str(&e));
}

static void rm_dir(const char *dir)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static const struct llc_params short_params = {.nbeta = 50, .gamma = 1e4, .epsilon = 1e-5,
                                               .chains = 2, .draws = 8, .burnin = 2,
                                               .batch_tokens = 64};

/* value of a metric (idx -1) among another item's rows */
static double item_value(const struct rows *r, const char *metric)
{
    char key[64];
    snprintf(key, sizeof key, "\t%s\t", metric);
    const char *p = strstr(r->buf, key);
    if (!p)
        fail_msg("no row %s", metric);
    const char *nl = memchr(p, '\n', (size_t)(r->buf + r->len - p));
    assert_non_null(nl);
    const char *tab = p;
    for (const char *q = p; q < nl; q++)
        if (*q == '\t')
            tab = q;
    return strtod(tab + 1, NULL);
}

static void test_toy_runs(void **s)
{
    (void)s;
    char dir[] = "/tmp/ckptd-llc-XXXXXX", dir2[] = "/tmp/ckptd-llc-XXXXXX";
    assert_non_null(mkdtemp(dir));
    assert_non_null(mkdtemp(dir2));
    struct train_config c;
    long ck[2] = {0, 30}, ck1[1] = {0};
    train_small(&c, dir, (struct task_config){.kind = TASK_MODADD, .seed = 3, .p = 7,
                                              .train_frac = 0.6},
                30, ck, 2);
    train_small(&c, dir2, (struct task_config){.kind = TASK_INDUCTION, .seed = 2, .vocab = 16,
                                               .seq_len = 8, .batch = 24},
                0, ck1, 1);
    char path[600], task_path[600], task2_path[600];
    snprintf(path, sizeof path, "%s/step30", dir);
    snprintf(task_path, sizeof task_path, "%s/task.json", dir);
    snprintf(task2_path, sizeof task2_path, "%s/task.json", dir2);
    struct gptneox *m = NULL;
    struct err e;
    assert_int_equal(gptneox_load(&m, path, 0, &e), 0);

    /* modular addition: the data set is the training pairs */
    struct battery_ctx ctx = {.model = m, .task_path = task_path};
    struct rows r, rt;
    run_ok(&ctx, &short_params, &r);
    rows_init(&rt);
    assert_int_equal(battery_run_item(battery_find("task"), &ctx, &rt, &e), 0);
    size_t n;
    struct row *rs = parse_rows(&r, &n);
    double init = need(rs, n, "init_loss", -1, -1), train_loss = item_value(&rt, "train_loss");
    print_message("modular addition: llc init_loss %.9f, task train_loss %.9f\n", init,
                  train_loss);
    assert_true(fabs(init - train_loss) <= 1e-6);
    assert_int_equal(count_metric(rs, n, "trace_loss"), 2 * 8);
    free(rs);
    rows_free(&r);
    rows_free(&rt);

    /* the same checkpoint against another task's vocabulary */
    ctx.task_path = task2_path;
    rows_init(&r);
    rows_begin(&r, "llc", 1);
    assert_int_equal(battery_llc_run(&ctx, &short_params, &r, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "was not made for this task"));
    rows_free(&r);
    gptneox_free(m);

    /* induction: LLC_TASK_SEQS sequences from several training batches */
    snprintf(path, sizeof path, "%s/step0", dir2);
    assert_int_equal(gptneox_load(&m, path, 0, &e), 0);
    ctx.model = m;
    struct llc_params p = short_params;
    p.batch_tokens = 8 * LLC_TASK_SEQS; /* one minibatch: the whole data set */
    p.chains = 1;
    p.burnin = 0;
    p.draws = 1;
    run_ok(&ctx, &p, &r);
    rs = parse_rows(&r, &n);
    /* the first draw is the loss at w* on every sequence: init_loss itself */
    double d0 = need(rs, n, "trace_loss", 0, 0), i0 = need(rs, n, "init_loss", -1, -1);
    assert_true(fabs(d0 - i0) <= 1e-6 * i0);
    assert_true(i0 > 1.0 && i0 < 2 * log(16.0));
    /* a minibatch of fewer sequences gives another first draw */
    free(rs);
    rows_free(&r);
    p.batch_tokens = 8 * (LLC_TASK_SEQS / 2);
    run_ok(&ctx, &p, &r);
    rs = parse_rows(&r, &n);
    assert_true(need(rs, n, "trace_loss", 0, 0) != need(rs, n, "init_loss", -1, -1));
    free(rs);
    rows_free(&r);
    gptneox_free(m);
    rm_dir(dir);
    rm_dir(dir2);
}

/* ---- the registered item ---- */

static void test_default_item(void **s)
{
    (void)s;
    const struct battery_item *it = battery_find("llc");
    assert_non_null(it);
    assert_int_equal(it->version, 1);
    assert_true(it->opt_in);
    assert_true(it->needs & BATTERY_NEEDS(BATTERY_NEED_EVAL_TOKENS));
    assert_true(it->needs & BATTERY_NEEDS(BATTERY_NEED_TASK_OPTIONAL));
    assert_false(it->needs & BATTERY_NEEDS(BATTERY_NEED_TASK));
    size_t ti = battery_count(), li = battery_count();
    for (size_t i = 0; i < battery_count(); i++) {
        if (battery_get(i) == battery_find("task"))
            ti = i;
        if (battery_get(i) == it)
            li = i;
    }
    assert_true(ti < li && li < battery_count());
    assert_string_equal(battery_need_name(BATTERY_NEED_TASK_OPTIONAL), "task_optional");

    struct golden g;
    golden_load(&g);
    struct gptneox *m = load(0);
    struct battery_ctx ctx = {.model = m, .eval_tokens = g.tokens, .eval_B = g.B,
                              .eval_T = g.T};
    struct rows r;
    struct err e;
    rows_init(&r);
    if (battery_run_item(it, &ctx, &r, &e) < 0)
        fail_msg("%s", err_str(&e));
    size_t n;
    struct row *rs = parse_rows(&r, &n);
    assert_int_equal(count_metric(rs, n, "trace_loss"), LLC_CHAINS * LLC_DRAWS);
    assert_true(need(rs, n, "chains_diverged", -1, -1) == 0);
    assert_true(isfinite(need(rs, n, "llc", -1, -1)));
    assert_true(need(rs, n, "llc_std", -1, -1) >= 0);
    free(rs);
    rows_free(&r);
    gptneox_free(m);
    golden_free(&g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_reference),
        cmocka_unit_test(test_deterministic_model_unchanged),
        cmocka_unit_test(test_divergence_gives_finite_rows),
        cmocka_unit_test(test_nan_weight_refused),
        cmocka_unit_test(test_toy_runs),
        cmocka_unit_test(test_default_item),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
