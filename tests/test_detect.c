/*
 * test_detect - daemon/detect/detect.h, transitions in the database, on a
 * real PostgreSQL of its own (tests/lib/pg_fixture.h).  A run of Pythia's
 * 154 steps gets simulated series (tests/lib/series_sim.h): `loss`
 * falling by 3 around step 40000 under noise, one head's
 * `induction_score` rising at the same place, another head's flat noise,
 * and `llc`'s `trace_loss` (whose idx is an SGLD draw, not a series over
 * steps) with a jump; one checkpoint is a duplicate holding wild values.
 *
 *   run       detect_run_named examines every series but trace_loss, leaves
 *             the duplicate out (its points not counted), finds the loss
 *             drop and the head's rise near step 40000 with the right sign
 *             and size, and nothing in the flat head or trace_loss
 *   again     a second pass replaces the rows with the same ones
 *   items     detect_run over one item's series leaves the others' rows
 *   list      the table and the JSON (keys, the two in one group, the
 *             metric filter by NAME and ITEM/NAME, min_score)
 *   unknown   an unknown run is ERR_NOTFOUND for both
 */
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "daemon/base/db.h"
#include "daemon/detect/detect.h"
#include "daemon/detect/transitions.h"
#include "daemon/plan/registry.h"
#include "daemon/plan/source.h"
#include "daemon/work/queue.h"
#include "tests/lib/pg_fixture.h"
#include "tests/lib/series_sim.h"

static struct db *db;
static struct registry reg;
static long long run_id;

static const char battery_json[] =
    "{\"items\": ["
    " {\"name\": \"loss\", \"version\": 2, \"metrics\": [{\"name\": \"loss\"}]},"
    " {\"name\": \"heads\", \"version\": 1, \"metrics\": [{\"name\": \"induction_score\"}]},"
    " {\"name\": \"llc\", \"version\": 1, \"metrics\": [{\"name\": \"trace_loss\"}]}"
    "]}";

/* Insert one series: metric (item, name), layer, head, idx, values per step. */
static void put_series(const char *item, int version, const char *metric, int layer, int head, int idx,
                       const long long *s, const double *v, int n)
{
    int id = registry_metric_id(&reg, item, version, metric);
    assert_true(id > 0);
    for (int i = 0; i < n; i++) {
        char sql[256];
        snprintf(sql, sizeof sql, "INSERT INTO measurements VALUES (%lld, %lld, %d, %d, %d, %d, %.17g)", run_id,
                 s[i], id, layer, head, idx, v[i]);
        pg_run(db, sql);
    }
}

static int series_transitions(const char *metric, int head)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM transitions t JOIN metrics m ON m.id = t.metric_id WHERE m.name = '%s'"
             " AND t.head = %d", metric, head);
    return (int)pg_num(db, sql);
}

static void test_run_and_again(void **state)
{
    (void)state;
    struct err e;
    struct detect_stats st;
    assert_int_equal(detect_run_named(db, "sim", &st, &e), 0);
    assert_int_equal(st.series, 3);           /* loss, two heads; not trace_loss */
    assert_int_equal(st.points, 3 * 153);     /* 154 steps, one a duplicate */
    assert_int_equal(series_transitions("loss", -1), 1);
    assert_int_equal(series_transitions("induction_score", 0), 1);
    assert_int_equal(series_transitions("induction_score", 1), 0);
    assert_int_equal(series_transitions("trace_loss", -1), 0);
    assert_int_equal(st.transitions, 2);
    long long peak = pg_num(db, "SELECT t.peak_step FROM transitions t JOIN metrics m ON m.id = t.metric_id"
                         " WHERE m.name = 'loss'");
    assert_true(peak >= 37000 && peak <= 43000);
    double mag = (double)pg_num(db, "SELECT round(t.magnitude * 1000) FROM transitions t JOIN metrics m"
                             " ON m.id = t.metric_id WHERE m.name = 'loss'") / 1000;
    assert_true(mag < -2.4 && mag > -3.6);
    assert_true(pg_num(db, "SELECT count(*) FROM transitions t JOIN metrics m ON m.id = t.metric_id"
                    " WHERE m.name = 'induction_score' AND t.magnitude > 0.5 AND t.method = '" TR_METHOD "'") == 1);
    /* again: the same rows, replaced */
    long long first = pg_num(db, "SELECT min(id) FROM transitions");
    char before[1024];
    PGresult *r = db_exec(db, "SELECT string_agg(metric_id || ':' || head || ':' || peak_step || ':' || score, ','"
                              " ORDER BY metric_id, head) FROM transitions", 0, NULL, &e);
    snprintf(before, sizeof before, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    assert_int_equal(detect_run_named(db, "sim", &st, &e), 0);
    r = db_exec(db, "SELECT string_agg(metric_id || ':' || head || ':' || peak_step || ':' || score, ','"
                    " ORDER BY metric_id, head) FROM transitions", 0, NULL, &e);
    assert_string_equal(PQgetvalue(r, 0, 0), before);
    PQclear(r);
    assert_true(pg_num(db, "SELECT min(id) FROM transitions") > first);
}

static void test_items(void **state)
{
    (void)state;
    struct err e;
    struct detect_stats st;
    assert_int_equal(detect_run_named(db, "sim", &st, &e), 0);
    long long loss_id = pg_num(db, "SELECT t.id FROM transitions t JOIN metrics m ON m.id = t.metric_id WHERE m.name = 'loss'");
    const char *items[] = {"heads"};
    int versions[] = {1};
    assert_int_equal(detect_run(db, run_id, items, versions, 1, &st, &e), 0);
    assert_int_equal(st.series, 2);
    /* loss's row is the same row: untouched */
    assert_int_equal(pg_num(db, "SELECT t.id FROM transitions t JOIN metrics m ON m.id = t.metric_id WHERE m.name = 'loss'"),
                     loss_id);
    assert_int_equal(series_transitions("induction_score", 0), 1);
}

static char *list(const char *metric, double min_score, int json)
{
    struct detect_list_opts o = {metric, min_score, json, NULL, NULL};
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    struct err e;
    if (detect_list(db, "sim", &o, f, &e) < 0)
        fail_msg("detect_list: %s", err_str(&e));
    fclose(f);
    return buf;
}

static void test_list(void **state)
{
    (void)state;
    struct err e;
    assert_int_equal(detect_run_named(db, "sim", NULL, &e), 0);
    char *t = list(NULL, 0, 0);
    assert_non_null(strstr(t, "group"));
    assert_non_null(strstr(t, "metric"));
    assert_non_null(strstr(t, "loss"));
    assert_non_null(strstr(t, "induction_score"));
    free(t);
    t = list(NULL, 0, 1);
    json_error_t je;
    json_t *a = json_loads(t, 0, &je);
    if (!a)
        fail_msg("not JSON: %s\n%s", je.text, t);
    assert_int_equal(json_array_size(a), 2);
    static const char *const keys[] = {"run", "metric", "item", "version", "layer", "head", "idx", "start_step",
                                       "peak_step", "end_step", "magnitude", "score", "method", "group"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        assert_non_null(json_object_get(json_array_get(a, 0), keys[i]));
    /* the two moved together: one group */
    assert_int_equal(json_integer_value(json_object_get(json_array_get(a, 0), "group")),
                     json_integer_value(json_object_get(json_array_get(a, 1), "group")));
    json_decref(a);
    free(t);
    t = list("heads/induction_score", 0, 1);
    a = json_loads(t, 0, &je);
    assert_int_equal(json_array_size(a), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(a, 0), "item")), "heads");
    json_decref(a);
    free(t);
    t = list("loss", 0, 1);
    a = json_loads(t, 0, &je);
    assert_int_equal(json_array_size(a), 1);
    json_decref(a);
    free(t);
    t = list(NULL, 1e9, 1);
    a = json_loads(t, 0, &je);
    assert_int_equal(json_array_size(a), 0);
    json_decref(a);
    free(t);
}

static void test_unknown(void **state)
{
    (void)state;
    struct err e;
    struct detect_list_opts o = {NULL, 0, 0, NULL, NULL};
    assert_int_equal(detect_run_named(db, "no-such-run", NULL, &e), ERR_NOTFOUND);
    assert_int_equal(detect_list(db, "no-such-run", &o, stdout, &e), ERR_NOTFOUND);
}

static int setup(void **state)
{
    (void)state;
    struct err e;
    if (!(db = pg_fixture_start(1)))
        return -1;
    if (registry_parse(&reg, battery_json, &e) < 0 || registry_sync(&reg, db, &e) < 0) {
        fprintf(stderr, "registry: %s\n", err_str(&e));
        return -1;
    }
    static const struct queue_item items[3] = {{"loss", 2}, {"heads", 1}, {"llc", 1}};
    long long *steps = NULL;
    int n = 0;
    long nc, nj;
    if (schedule_parse("pythia", &steps, &n, &e) < 0 ||
        queue_add_run(db, "sim", "file:///x/step{step}", "pythia", steps, n, items, 3, "{}", 5, &nc, &nj, &e) < 0) {
        fprintf(stderr, "add run: %s\n", err_str(&e));
        return -1;
    }
    free(steps);
    run_id = pg_num(db, "SELECT id FROM runs WHERE name = 'sim'");
    long long s[SIM_MAX];
    double v[SIM_MAX];
    struct sim_rng r = {7};
    int ns = sim_pythia(s);
    sim_noise(&r, SIM_GAUSS, s, v, ns, 0.05);
    sim_add_sigmoid(s, v, ns, 40000, 4000, -3.0);
    v[100] = 1e6; /* the duplicate's value: left out */
    put_series("loss", 2, "loss", -1, -1, -1, s, v, ns);
    sim_noise(&r, SIM_GAUSS, s, v, ns, 0.02);
    for (int i = 0; i < ns; i++)
        v[i] -= 5.0; /* around 0 */
    sim_add_sigmoid(s, v, ns, 40000, 4000, 0.8);
    put_series("heads", 1, "induction_score", 1, 0, -1, s, v, ns);
    sim_noise(&r, SIM_GAUSS, s, v, ns, 0.02);
    put_series("heads", 1, "induction_score", 1, 1, -1, s, v, ns);
    sim_noise(&r, SIM_GAUSS, s, v, ns, 0.05);
    sim_add_sigmoid(s, v, ns, 60000, 0, 4.0);
    put_series("llc", 1, "trace_loss", 0, -1, 3, s, v, ns);
    char sql[256];
    snprintf(sql, sizeof sql, "UPDATE checkpoints SET duplicate_of = (SELECT id FROM checkpoints WHERE run_id = %lld"
             " AND step = %lld) WHERE run_id = %lld AND step = %lld", run_id, s[99], run_id, s[100]);
    pg_run(db, sql);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    registry_free(&reg);
    pg_fixture_stop(db);
    return 0;
}

int main(void)
{
    (void)sim_toy; /* series_sim.h's other schedules */
    (void)sim_even;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_and_again),
        cmocka_unit_test(test_items),
        cmocka_unit_test(test_list),
        cmocka_unit_test(test_unknown),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
