/*
 * test_daemon_units - the daemon's pure functions, no database needed:
 * step schedules (schedule_parse), sources (source_checkpoint_url,
 * source_local_path, source_check), the battery registry (registry_parse,
 * registry_metric_id, registry_item_version, registry_from_worker when
 * CKPT_WORKER names the real worker, and its deadline with a worker that
 * hangs), the translation of worker rows into measurement rows
 * (ingest_translate), the item outcomes read from a worker's status file
 * (supervise_outcomes), the config file
 * (daemon_config_load, daemon_config_check), db_int_array and the
 * reconnect backoff's cap (db_set_backoff_max, against a socket that is
 * not there).
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/clock.h"
#include "daemon/base/db.h"
#include "daemon/ops/config.h"
#include "daemon/plan/registry.h"
#include "daemon/plan/source.h"
#include "daemon/store/ingest.h"
#include "daemon/work/queue.h"
#include "daemon/work/supervise.h"

/* ---- supervise_outcomes ---- */

static const char items3[4][64] = {"loss", "weights", "heads", "lens"};
static const int versions3[4] = {2, 2, 1, 1};

/* A worker that ended as `ok`/`how` with stderr "boom", whose status file
 * holds `status` (NULL: no file). */
static void ended_worker(struct worker *w, int ok, const char *how, const char *status)
{
    memset(w, 0, sizeof *w);
    snprintf(w->status_path, sizeof w->status_path, "/tmp/ckptd-status-%d", (int)getpid());
    unlink(w->status_path);
    if (status) {
        FILE *f = fopen(w->status_path, "w");
        assert_non_null(f);
        fputs(status, f);
        fclose(f);
    }
    w->done = 1;
    w->ok = ok;
    if (!ok) {
        snprintf(w->how, sizeof w->how, "%s", how);
        snprintf(w->error, sizeof w->error, "%s; stderr: boom", how);
    }
}

static void test_outcomes(void **state)
{
    (void)state;
    struct worker w;
    struct item_outcome out[4];
    /* killed after loss was done, while heads ran; weights failed on its own */
    ended_worker(&w, 0, "worker killed by signal 9 (Killed)",
                 "ckpt-worker-status\t1\nstarted\tloss\t2\ndone\tloss\t2\t129\n"
                 "started\tweights\t2\nfailed\tweights\t2\titem weights v2: bad\tthing\n"
                 "started\theads\t1\ndone\tlens\t9\t5\n" /* another version: not ours */
                 "done\theads\t1\t3"); /* cut: not written whole */
    supervise_outcomes(&w, items3, versions3, 4, out);
    assert_int_equal(out[0].state, ITEM_DONE);
    assert_int_equal(out[0].rows, 129);
    assert_int_equal(out[1].state, ITEM_FAILED);
    assert_string_equal(out[1].error, "worker killed by signal 9 (Killed); item weights v2: bad\tthing");
    assert_int_equal(out[2].state, ITEM_FAILED);
    assert_string_equal(out[2].error, "worker killed by signal 9 (Killed) while running item heads v1; stderr: boom");
    assert_int_equal(out[3].state, ITEM_FAILED);
    assert_string_equal(out[3].error, "worker killed by signal 9 (Killed) before starting item lens v1; stderr: boom");

    /* exit 0: everything not reported failed is done (a worker that
     * writes no status file: all of it) */
    ended_worker(&w, 1, NULL, "ckpt-worker-status\t1\ndone\tloss\t2\t7\n");
    supervise_outcomes(&w, items3, versions3, 4, out);
    assert_true(out[0].state == ITEM_DONE && out[0].rows == 7);
    assert_true(out[1].state == ITEM_DONE && out[1].rows == -1);
    ended_worker(&w, 1, NULL, NULL);
    supervise_outcomes(&w, items3, versions3, 4, out);
    for (int i = 0; i < 4; i++)
        assert_true(out[i].state == ITEM_DONE && out[i].rows == -1);

    /* no status file, or not this format: how the worker ended, for all */
    ended_worker(&w, 0, "worker exited with status 1", NULL);
    supervise_outcomes(&w, items3, versions3, 4, out);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(out[i].state, ITEM_FAILED);
        assert_string_equal(out[i].error, "worker exited with status 1; stderr: boom");
    }
    ended_worker(&w, 0, "worker exited with status 1", "ckpt-worker-status\t2\ndone\tloss\t2\t1\n");
    supervise_outcomes(&w, items3, versions3, 4, out);
    assert_int_equal(out[0].state, ITEM_FAILED);
    assert_string_equal(out[0].error, "worker exited with status 1; stderr: boom");
    unlink(w.status_path);
}

/* ---- schedule_parse ---- */

static void expect_steps(const char *spec, const long long *want, int nwant)
{
    long long *steps = NULL;
    int n = -1;
    struct err e;
    int rc = schedule_parse(spec, &steps, &n, &e);
    if (rc != 0)
        fail_msg("schedule '%s': %s", spec, err_str(&e));
    if (n != nwant)
        fail_msg("schedule '%s': %d steps, expected %d", spec, n, nwant);
    for (int i = 0; i < n; i++)
        if (steps[i] != want[i])
            fail_msg("schedule '%s': step[%d] = %lld, expected %lld", spec, i, steps[i], want[i]);
    free(steps);
}

static void expect_schedule_error(const char *spec, const char *needle)
{
    long long *steps = (long long *)1;
    int n = -1;
    struct err e;
    err_clear(&e);
    int rc = schedule_parse(spec, &steps, &n, &e);
    if (rc != ERR_INVALID)
        fail_msg("schedule '%s': rc %d, expected ERR_INVALID", spec ? spec : "(null)", rc);
    assert_null(steps);
    assert_int_equal(n, 0);
    if (needle && !strstr(e.msg, needle))
        fail_msg("schedule '%s': message '%s' lacks '%s'", spec ? spec : "(null)", e.msg, needle);
}

static void test_schedule_pythia(void **state)
{
    (void)state;
    long long *steps = NULL;
    int n = 0;
    assert_int_equal(schedule_parse("pythia", &steps, &n, NULL), 0);
    assert_int_equal(n, 154);
    const long long head[] = {0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 3000};
    for (size_t i = 0; i < sizeof head / sizeof *head; i++)
        assert_int_equal(steps[i], head[i]);
    assert_int_equal(steps[153], 143000);
    assert_int_equal(steps[152], 142000);
    for (int i = 1; i < n; i++)
        assert_true(steps[i] > steps[i - 1]);
    free(steps);
}

static void test_schedule_lists_and_ranges(void **state)
{
    (void)state;
    const long long a[] = {7};
    expect_steps("7", a, 1);
    const long long b[] = {1, 3, 5};
    expect_steps("5,1,3,3", b, 3); /* sorted, duplicates removed */
    const long long c[] = {0, 1, 2, 4, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10000};
    expect_steps("0,1,2,4,1000:10000:1000", c, 14);
    const long long d[] = {0, 3, 6, 9};
    expect_steps("0:10:3", d, 4); /* STOP inclusive only when hit */
    const long long e[] = {7};
    expect_steps("7:7:1", e, 1);
    const long long f[] = {0, 2, 4, 5, 6, 8};
    expect_steps("0:8:2,5,4", f, 6); /* overlap of a range and a list */
    const long long g[] = {143000};
    expect_steps("143000", g, 1);
    long long *steps = NULL;
    int n = 0;
    assert_int_equal(schedule_parse("0:99999:1", &steps, &n, NULL), 0);
    assert_int_equal(n, SCHEDULE_MAX_STEPS);
    free(steps);
}

static void test_schedule_refs(void **state)
{
    (void)state;
    const long long refs[] = {0, 3, 1000, 143500};
    long long *steps = NULL;
    int n = 0;
    struct err e;
    assert_int_equal(schedule_uses_refs("refs"), 1);
    assert_int_equal(schedule_uses_refs("0,refs"), 1);
    assert_int_equal(schedule_uses_refs("pythia"), 0);
    assert_int_equal(schedule_uses_refs("refsx,1"), 0);
    assert_int_equal(schedule_parse_refs("refs", refs, 4, &steps, &n, &e), 0);
    assert_int_equal(n, 4);
    assert_true(steps[0] == 0 && steps[1] == 3 && steps[2] == 1000 && steps[3] == 143500);
    free(steps);
    /* the union with pythia: 154 + the two steps pythia lacks */
    assert_int_equal(schedule_parse_refs("refs,pythia", refs, 4, &steps, &n, &e), 0);
    assert_int_equal(n, 156);
    assert_true(steps[2] == 2 && steps[3] == 3 && steps[155] == 143500 && steps[154] == 143000);
    free(steps);
    assert_int_equal(schedule_parse_refs("7,refs,2:4:1", refs, 4, &steps, &n, &e), 0);
    assert_int_equal(n, 7);
    free(steps);
    /* pythia is a list element too */
    assert_int_equal(schedule_parse("5,pythia", &steps, &n, &e), 0);
    assert_int_equal(n, 155);
    free(steps);
    expect_schedule_error("refs", "not looked up");
    expect_schedule_error("1,refs", "'refs' means the step<N> branches");
    expect_schedule_error("refsx", "'refsx' is not a step number");
    assert_int_equal(schedule_parse_refs("refs", refs, 0, &steps, &n, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "no steps"));
}

static void test_schedule_errors(void **state)
{
    (void)state;
    expect_schedule_error(NULL, "empty");
    expect_schedule_error("", "empty");
    expect_schedule_error("a", "not a step number");
    expect_schedule_error("1,two", "'two' is not a step number");
    expect_schedule_error("-5", "not a step number");
    expect_schedule_error("1,,2", "not a step number");
    expect_schedule_error(",1", "not a step number");
    expect_schedule_error("1,2,", "comma");
    expect_schedule_error("1 2", "not a step number");
    expect_schedule_error("99999999999999999999", "not a step number");
    expect_schedule_error("10:5:1", "START:STOP:STRIDE");
    expect_schedule_error("0:10:0", "START:STOP:STRIDE");
    expect_schedule_error("0:10", "START:STOP:STRIDE");
    expect_schedule_error("0:10:1:2", "START:STOP:STRIDE");
    expect_schedule_error(":10:1", "START:STOP:STRIDE");
    expect_schedule_error("0:x:1", "START:STOP:STRIDE");
    expect_schedule_error("Pythia", "not a step number");
    expect_schedule_error("0:100000:1", "more than");
}

/* ---- sources ---- */

static void expect_url(const char *source, long long step, const char *want)
{
    char out[256];
    struct err e;
    if (source_checkpoint_url(source, step, out, sizeof out, &e) != 0)
        fail_msg("source '%s': %s", source, err_str(&e));
    if (strcmp(out, want) != 0)
        fail_msg("source '%s' step %lld: '%s', expected '%s'", source, step, out, want);
}

static void test_source_checkpoint_url(void **state)
{
    (void)state;
    expect_url("file:///runs/a", 1000, "file:///runs/a/step1000");
    expect_url("file:///runs/a/", 1000, "file:///runs/a/step1000");
    expect_url("file:///shared/run7/step{step}/", 0, "file:///shared/run7/step0/");
    expect_url("https://host/ckpts/step{step}", 143000, "https://host/ckpts/step143000");
    expect_url("https://host/ckpts/{step}/model", 42, "https://host/ckpts/42/model");
    expect_url("hf://EleutherAI/pythia-70m-deduped", 512, "hf://EleutherAI/pythia-70m-deduped/step512");
    expect_url("/plain/path", 5, "/plain/path/step5");
    expect_url("./rel", 5, "./rel/step5");

    char out[256], small[12];
    struct err e;
    assert_int_equal(source_checkpoint_url("ftp://host/x", 1, out, sizeof out, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "unknown source"));
    assert_int_equal(source_checkpoint_url("file:///a/{step}/b{step}", 1, out, sizeof out, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "only once"));
    assert_int_equal(source_checkpoint_url("", 1, out, sizeof out, &e), ERR_INVALID);
    assert_int_equal(source_checkpoint_url("relative/dir", 1, out, sizeof out, &e), ERR_INVALID);
    assert_int_equal(source_checkpoint_url("file:///runs/a", 1000, small, sizeof small, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "too long"));

    assert_int_equal(source_check("file:///x/step{step}", NULL), 0);
    assert_int_equal(source_check("http://h/x", NULL), 0);
    assert_int_equal(source_check("s3://bucket/x", NULL), ERR_INVALID);
    assert_int_equal(source_check(NULL, NULL), ERR_INVALID);
}

static void expect_local(const char *url, const char *want)
{
    char out[256];
    struct err e;
    if (source_local_path(url, out, sizeof out, &e) != 0)
        fail_msg("url '%s': %s", url, err_str(&e));
    if (strcmp(out, want) != 0)
        fail_msg("url '%s': '%s', expected '%s'", url, out, want);
}

static void test_source_local_path(void **state)
{
    (void)state;
    expect_local("file:///tmp/x/step1", "/tmp/x/step1");
    expect_local("file:///tmp/x/step1/", "/tmp/x/step1");
    expect_local("file:///tmp/x/step1///", "/tmp/x/step1");
    expect_local("/abs/p", "/abs/p");
    expect_local("./rel/p/", "./rel/p");
    expect_local("file:///", "/");
    expect_local("file:///tmp/with space/%20", "/tmp/with space/%20"); /* taken literally */

    char out[256], small[8];
    struct err e;
    assert_int_equal(source_local_path("https://host/ckpts/step1", out, sizeof out, &e), ERR_UNSUPPORTED);
    assert_non_null(strstr(e.msg, "fetched"));
    assert_int_equal(source_local_path("hf://EleutherAI/pythia-14m/step1", out, sizeof out, &e),
                     ERR_UNSUPPORTED);
    assert_int_equal(source_local_path("file://", out, sizeof out, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "empty"));
    assert_int_equal(source_local_path("file:///a/long/path", small, sizeof small, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "too long"));
}

/* ---- registry ---- */

static const char battery_json[] =
    "{\"items\": ["
    " {\"name\": \"weights\", \"version\": 2, \"needs\": [], \"metrics\": ["
    "   {\"name\": \"spectral_norm\", \"unit\": \"\", \"description\": \"s\", \"layer\": \"L\","
    "    \"head\": \"\", \"idx\": \"matrix\"},"
    "   {\"name\": \"frobenius_norm\", \"unit\": \"\", \"description\": \"f\", \"layer\": \"L\","
    "    \"head\": \"\", \"idx\": \"matrix\"}]},"
    " {\"name\": \"loss\", \"version\": 1, \"needs\": [\"eval_tokens\"], \"metrics\": ["
    "   {\"name\": \"loss_by_pos\", \"unit\": \"nats\"},"
    "   {\"name\": \"loss\", \"unit\": \"nats\"}]}"
    "]}";

/* ids by hand, as registry_sync would set them from the database */
static void set_ids(struct registry *r)
{
    for (int i = 0; i < r->nmetrics; i++) {
        struct reg_metric *m = &r->metrics[i];
        m->id = strcmp(m->item, "loss") == 0 ? (strcmp(m->name, "loss") == 0 ? 11 : 12)
                                              : (strcmp(m->name, "frobenius_norm") == 0 ? 21 : 22);
    }
}

/* "needs": ["task"] and "opt_in": true both keep an item out of
 * add-run's default battery; "task_optional" and "opt_in": false do not */
static void test_registry_default_battery(void **state)
{
    (void)state;
    static const char json[] =
        "{\"items\": ["
        " {\"name\": \"loss\", \"version\": 2, \"needs\": [\"eval_tokens\"], \"metrics\": []},"
        " {\"name\": \"task\", \"version\": 1, \"needs\": [\"task\"], \"metrics\": []},"
        " {\"name\": \"llc\", \"version\": 1, \"needs\": [\"eval_tokens\", \"task_optional\"],"
        "  \"opt_in\": true, \"metrics\": []},"
        " {\"name\": \"x\", \"version\": 1, \"needs\": [], \"opt_in\": false, \"metrics\": []}"
        "]}";
    struct registry r;
    struct err e;
    assert_int_equal(registry_parse(&r, json, &e), 0);
    assert_int_equal(r.nitems, 4);
    int want_task[4] = {0, 1, 0, 0}, want_opt[4] = {0, 0, 1, 0};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(r.items[i].needs_task, want_task[i]);
        assert_int_equal(r.items[i].opt_in, want_opt[i]);
    }
    registry_free(&r);
}

static void test_registry_parse(void **state)
{
    (void)state;
    struct registry r;
    struct err e;
    assert_int_equal(registry_parse(&r, battery_json, &e), 0);
    assert_int_equal(r.nitems, 2);
    assert_string_equal(r.items[0].name, "weights"); /* the worker's order */
    assert_int_equal(r.items[0].version, 2);
    assert_string_equal(r.items[1].name, "loss");
    assert_int_equal(r.nmetrics, 4);
    /* sorted by (item, version, name) for bsearch */
    assert_string_equal(r.metrics[0].item, "loss");
    assert_string_equal(r.metrics[0].name, "loss");
    assert_string_equal(r.metrics[1].name, "loss_by_pos");
    assert_string_equal(r.metrics[2].name, "frobenius_norm");
    assert_int_equal(r.metrics[2].version, 2);
    assert_string_equal(r.metrics[3].name, "spectral_norm");

    assert_int_equal(registry_item_version(&r, "weights"), 2);
    assert_int_equal(registry_item_version(&r, "loss"), 1);
    assert_int_equal(registry_item_version(&r, "heads"), -1);

    /* not synced yet: no ids */
    assert_int_equal(registry_metric_id(&r, "loss", 1, "loss"), -1);
    set_ids(&r);
    assert_int_equal(registry_metric_id(&r, "loss", 1, "loss"), 11);
    assert_int_equal(registry_metric_id(&r, "loss", 1, "loss_by_pos"), 12);
    assert_int_equal(registry_metric_id(&r, "weights", 2, "frobenius_norm"), 21);
    assert_int_equal(registry_metric_id(&r, "weights", 2, "spectral_norm"), 22);
    assert_int_equal(registry_metric_id(&r, "weights", 1, "spectral_norm"), -1); /* old version */
    assert_int_equal(registry_metric_id(&r, "loss", 1, "nonesuch"), -1);
    assert_int_equal(registry_metric_id(&r, "nonesuch", 1, "loss"), -1);
    char longname[200];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    assert_int_equal(registry_metric_id(&r, longname, 1, "loss"), -1);
    assert_int_equal(registry_metric_id(&r, "loss", 1, longname), -1);
    registry_free(&r);
    assert_int_equal(r.nitems, 0);
    assert_null(r.items);
    registry_free(&r); /* twice is harmless */
    registry_free(NULL);
}

static void expect_registry_error(const char *json, const char *needle)
{
    struct registry r;
    struct err e;
    int rc = registry_parse(&r, json, &e);
    if (rc != ERR_FORMAT)
        fail_msg("registry '%s': rc %d, expected ERR_FORMAT", json, rc);
    if (!strstr(e.msg, needle))
        fail_msg("registry '%s': message '%s' lacks '%s'", json, e.msg, needle);
    assert_int_equal(r.nitems, 0);
    assert_int_equal(r.nmetrics, 0);
    assert_null(r.items);
    assert_null(r.metrics);
    assert_null(r.doc);
}

static void test_registry_errors(void **state)
{
    (void)state;
    expect_registry_error("{", "invalid");
    expect_registry_error("[]", "no \"items\"");
    expect_registry_error("{\"items\": []}", "no \"items\"");
    expect_registry_error("{\"items\": {}}", "no \"items\"");
    expect_registry_error("{\"items\": [{\"name\": \"loss\"}]}", "positive version");
    expect_registry_error("{\"items\": [{\"name\": \"loss\", \"version\": 0}]}", "positive version");
    expect_registry_error("{\"items\": [{\"name\": \"loss\", \"version\": \"1\"}]}", "positive version");
    expect_registry_error("{\"items\": [{\"version\": 1}]}", "positive version");
    expect_registry_error("{\"items\": [{\"name\": \"loss\", \"version\": 1, \"metrics\": [{\"unit\": \"x\"}]}]}",
                          "no usable name");
}

static void test_registry_from_worker(void **state)
{
    (void)state;
    struct registry r;
    struct err e;
    assert_int_equal(registry_from_worker(&r, "/nonexistent/ckpt-worker", &e), ERR_CHILD);
    assert_non_null(strstr(e.msg, "not found"));
    assert_int_equal(r.nitems, 0);
    const char *w = getenv("CKPT_WORKER");
    if (!w || access(w, X_OK) != 0) {
        fprintf(stderr, "# CKPT_WORKER not set: the real worker's battery is not read\n");
        return;
    }
    if (registry_from_worker(&r, w, &e) != 0)
        fail_msg("%s battery --json: %s", w, err_str(&e));
    assert_true(r.nitems >= 1);
    assert_true(registry_item_version(&r, "loss") >= 1);
    assert_true(r.nmetrics >= r.nitems);
    registry_free(&r);
}

/* A worker that hangs instead of answering `battery --json` is killed at
 * the deadline: the daemon's start or add-run fails instead of waiting
 * for ever.  One that prints garbage, or fails, says so. */
static void test_registry_worker_deadline(void **state)
{
    (void)state;
    char dir[] = "/tmp/ckptd_test_registry_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[64];
    snprintf(path, sizeof path, "%s/w", dir);
    struct registry r;
    struct err e;
    static const char *const scripts[] = {
        "#!/bin/sh\necho '{\"items\": ['\nexec sleep 30\n",
        "#!/bin/sh\necho 'not json'\n",
        "#!/bin/sh\necho 'broken' >&2\nexit 3\n",
    };
    for (int i = 0; i < 3; i++) {
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fputs(scripts[i], f);
        fclose(f);
        assert_int_equal(chmod(path, 0755), 0);
        err_clear(&e);
        double t0 = mono_now();
        int rc = registry_from_worker_within(&r, path, 0.5, &e);
        assert_true(mono_now() - t0 < 10);
        assert_int_equal(r.nitems, 0);
        if (i == 0) {
            assert_int_equal(rc, ERR_CHILD);
            assert_non_null(strstr(e.msg, "timed out"));
        } else if (i == 1) {
            assert_int_equal(rc, ERR_FORMAT);
        } else {
            assert_int_equal(rc, ERR_CHILD);
            assert_non_null(strstr(e.msg, "exited with status 3"));
        }
    }
    unlink(path);
    rmdir(dir);
}

/* ---- ingest_translate ---- */

struct fixture {
    struct registry reg;
    struct claim c;
};

static int setup_ingest(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    if (!f || registry_parse(&f->reg, battery_json, NULL) != 0)
        return -1;
    set_ids(&f->reg);
    f->c.run_id = 7;
    f->c.step = 143000;
    f->c.njobs = 2;
    f->c.job_ids[0] = 100;
    f->c.job_ids[1] = 101;
    snprintf(f->c.items[0], sizeof f->c.items[0], "loss");
    f->c.versions[0] = 1;
    snprintf(f->c.items[1], sizeof f->c.items[1], "weights");
    f->c.versions[1] = 2;
    *state = f;
    return 0;
}

static int teardown_ingest(void **state)
{
    struct fixture *f = *state;
    registry_free(&f->reg);
    free(f);
    return 0;
}

/* Translate `row`; expect success with output `want` and job index `job`. */
static void expect_row(struct fixture *f, const char *row, const char *want, int job)
{
    char line[256], out[256];
    snprintf(line, sizeof line, "%s", row);
    int j = -1;
    struct err e;
    int w = ingest_translate(&f->reg, &f->c, line, out, sizeof out, &j, &e);
    if (w < 0)
        fail_msg("row '%s': %s", row, err_str(&e));
    if (strcmp(out, want) != 0)
        fail_msg("row '%s': '%s', expected '%s'", row, out, want);
    assert_int_equal(w, (int)strlen(want));
    assert_int_equal(j, job);
}

static void expect_bad_row(struct fixture *f, const char *row, const char *needle)
{
    char line[256], out[256];
    snprintf(line, sizeof line, "%s", row);
    int j = -7;
    struct err e;
    err_clear(&e);
    int rc = ingest_translate(&f->reg, &f->c, line, out, sizeof out, &j, &e);
    if (rc != ERR_FORMAT)
        fail_msg("row '%s': rc %d, expected ERR_FORMAT", row, rc);
    if (!strstr(e.msg, needle))
        fail_msg("row '%s': message '%s' lacks '%s'", row, e.msg, needle);
    assert_int_equal(j, -7); /* untouched */
}

static void test_ingest_good_rows(void **state)
{
    struct fixture *f = *state;
    expect_row(f, "loss\t1\tloss\t-1\t-1\t-1\t2.5", "7\t143000\t11\t-1\t-1\t-1\t2.5\n", 0);
    expect_row(f, "loss\t1\tloss_by_pos\t-1\t-1\t126\t6.25", "7\t143000\t12\t-1\t-1\t126\t6.25\n", 0);
    expect_row(f, "weights\t2\tspectral_norm\t5\t-1\t3\t-0.5", "7\t143000\t22\t5\t-1\t3\t-0.5\n", 1);
    expect_row(f, "weights\t2\tfrobenius_norm\t32767\t32767\t2147483647\t1e300",
               "7\t143000\t21\t32767\t32767\t2147483647\t1.0000000000000001e+300\n", 1);
    expect_row(f, "loss\t1\tloss\t-1\t-1\t-1\t0", "7\t143000\t11\t-1\t-1\t-1\t0\n", 0);

    /* every double survives the text round trip */
    char line[128], out[128];
    snprintf(line, sizeof line, "loss\t1\tloss\t-1\t-1\t-1\t0.1");
    int j;
    assert_true(ingest_translate(&f->reg, &f->c, line, out, sizeof out, &j, NULL) > 0);
    const char *v = strrchr(out, '\t') + 1;
    assert_true(strtod(v, NULL) == 0.1);
    snprintf(line, sizeof line, "loss\t1\tloss\t-1\t-1\t-1\t4.9406564584124654e-324");
    assert_true(ingest_translate(&f->reg, &f->c, line, out, sizeof out, &j, NULL) > 0);
    assert_true(strtod(strrchr(out, '\t') + 1, NULL) == 4.9406564584124654e-324);
}

static void test_ingest_nan_inf(void **state)
{
    struct fixture *f = *state;
    /* PostgreSQL's float8 spellings, whatever the worker wrote */
    expect_row(f, "loss\t1\tloss\t-1\t-1\t-1\tNaN", "7\t143000\t11\t-1\t-1\t-1\tNaN\n", 0);
    expect_row(f, "loss\t1\tloss\t-1\t-1\t-1\tnan", "7\t143000\t11\t-1\t-1\t-1\tNaN\n", 0);
    expect_row(f, "loss\t1\tloss\t-1\t-1\t-1\t-nan", "7\t143000\t11\t-1\t-1\t-1\tNaN\n", 0);
    expect_row(f, "loss\t1\tloss\t-1\t-1\t-1\tInfinity", "7\t143000\t11\t-1\t-1\t-1\tInfinity\n", 0);
    expect_row(f, "loss\t1\tloss\t-1\t-1\t-1\tinf", "7\t143000\t11\t-1\t-1\t-1\tInfinity\n", 0);
    expect_row(f, "loss\t1\tloss\t-1\t-1\t-1\t-Infinity", "7\t143000\t11\t-1\t-1\t-1\t-Infinity\n", 0);
    expect_row(f, "loss\t1\tloss\t-1\t-1\t-1\t-inf", "7\t143000\t11\t-1\t-1\t-1\t-Infinity\n", 0);
    expect_row(f, "loss\t1\tloss\t-1\t-1\t-1\t1e999", "7\t143000\t11\t-1\t-1\t-1\tInfinity\n", 0);
}

static void test_ingest_bad_rows(void **state)
{
    struct fixture *f = *state;
    /* field count */
    expect_bad_row(f, "loss\t1\tloss\t-1\t-1\t2.5", "found 6");
    expect_bad_row(f, "loss\t1\tloss\t-1\t-1\t-1\t2.5\textra", "found 8");
    expect_bad_row(f, "loss\t1\tloss\t-1\t-1\t-1\t2.5\t\t\t", "found 8");
    expect_bad_row(f, "", "found 1");
    expect_bad_row(f, "loss 1 loss -1 -1 -1 2.5", "found 1");
    /* items and versions that were not claimed */
    expect_bad_row(f, "heads\t1\tinduction\t0\t0\t-1\t0.5", "not asked for");
    expect_bad_row(f, "loss\t2\tloss\t-1\t-1\t-1\t2.5", "not asked for");
    expect_bad_row(f, "weights\t1\tspectral_norm\t0\t-1\t0\t1", "not asked for");
    /* a metric the registry does not know */
    expect_bad_row(f, "loss\t1\tperplexity\t-1\t-1\t-1\t2.5", "unknown metric loss/1/perplexity");
    expect_bad_row(f, "weights\t2\tloss\t-1\t-1\t-1\t2.5", "unknown metric");
    /* indices out of range or not integers */
    expect_bad_row(f, "weights\t2\tspectral_norm\t32768\t-1\t0\t1", "bad version/layer/head/idx");
    expect_bad_row(f, "weights\t2\tspectral_norm\t-2\t-1\t0\t1", "bad version/layer/head/idx");
    expect_bad_row(f, "weights\t2\tspectral_norm\t0\t40000\t0\t1", "bad version/layer/head/idx");
    expect_bad_row(f, "weights\t2\tspectral_norm\t0\t-1\t-2\t1", "bad version/layer/head/idx");
    expect_bad_row(f, "weights\t2\tspectral_norm\t0\t-1\t2147483648\t1", "bad version/layer/head/idx");
    expect_bad_row(f, "weights\t2\tspectral_norm\tx\t-1\t0\t1", "bad version/layer/head/idx");
    expect_bad_row(f, "weights\t2\tspectral_norm\t1.5\t-1\t0\t1", "bad version/layer/head/idx");
    expect_bad_row(f, "weights\t2\tspectral_norm\t\t-1\t0\t1", "bad version/layer/head/idx");
    expect_bad_row(f, "loss\t0\tloss\t-1\t-1\t-1\t2.5", "bad version/layer/head/idx");
    expect_bad_row(f, "loss\tv1\tloss\t-1\t-1\t-1\t2.5", "bad version/layer/head/idx");
    /* values */
    expect_bad_row(f, "loss\t1\tloss\t-1\t-1\t-1\tabc", "not a number");
    expect_bad_row(f, "loss\t1\tloss\t-1\t-1\t-1\t", "not a number");
    expect_bad_row(f, "loss\t1\tloss\t-1\t-1\t-1\t2.5x", "not a number");
    expect_bad_row(f, "loss\t1\tloss\t-1\t-1\t-1\t\\N", "not a number");

    /* an output buffer too small is an error, not an overflow */
    char line[64], out[12];
    snprintf(line, sizeof line, "loss\t1\tloss\t-1\t-1\t-1\t2.5");
    int j;
    struct err e;
    assert_int_equal(ingest_translate(&f->reg, &f->c, line, out, sizeof out, &j, &e), ERR_FORMAT);
    assert_non_null(strstr(e.msg, "too long"));
}

/* ---- config ---- */

static char *write_tmp(const char *text)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/ckptd-cfg-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static void expect_config_error(const char *text, int code, const char *needle)
{
    struct daemon_config c, before;
    daemon_config_defaults(&c);
    before = c;
    char *path = write_tmp(text);
    struct err e;
    err_clear(&e);
    int rc = daemon_config_load(&c, path, &e);
    unlink(path);
    if (rc != code)
        fail_msg("config '%s': rc %d (%s), expected %d", text, rc, e.msg, code);
    if (!strstr(e.msg, needle))
        fail_msg("config '%s': message '%s' lacks '%s'", text, e.msg, needle);
    assert_memory_equal(&c, &before, sizeof c); /* unchanged */
}

static void test_config(void **state)
{
    (void)state;
    struct daemon_config c;
    daemon_config_defaults(&c);
    assert_int_equal(daemon_config_check(&c, NULL), 0);
    assert_int_equal(c.workers, 1);
    assert_true(c.lease_s == 60 && c.heartbeat_s == 10);
    assert_non_null(strchr(c.node, ':')); /* host:pid */

    char *path = write_tmp("{\"workers\": 3, \"lease_s\": 20, \"heartbeat_s\": 10, \"node\": \"gpu07\","
                           " \"spool_dir\": \"/var/spool/x\", \"worker_memory_mb\": 4096,"
                           " \"backoff_base_s\": 0.5, \"database\": \"dbname=x\"}");
    struct err e;
    int rc = daemon_config_load(&c, path, &e);
    unlink(path);
    if (rc != 0)
        fail_msg("good config: %s", err_str(&e));
    assert_int_equal(c.workers, 3);
    assert_true(c.lease_s == 20 && c.heartbeat_s == 10); /* heartbeat == lease/2 is allowed */
    assert_string_equal(c.node, "gpu07");
    assert_string_equal(c.spool_dir, "/var/spool/x");
    assert_string_equal(c.database, "dbname=x");
    assert_int_equal(c.worker_memory_mb, 4096);
    assert_true(c.backoff_base_s == 0.5);
    assert_true(c.poll_s == 5 && c.shutdown_grace_s == 30); /* defaults kept */

    expect_config_error("{\"workerz\": 2}", ERR_FORMAT, "unknown setting \"workerz\"");
    expect_config_error("{\"lease_s\": 10, \"heartbeat_s\": 6}", ERR_INVALID, "heartbeat_s <= lease_s / 2");
    expect_config_error("{\"heartbeat_s\": 31}", ERR_INVALID, "heartbeat"); /* default lease 60 */
    expect_config_error("{\"lease_s\": 0.5, \"heartbeat_s\": 0.1}", ERR_INVALID,
                        "\"lease_s\" = 0.5 is out of range: allowed 1 to 31622400 seconds");
    expect_config_error("{\"workers\": 0}", ERR_INVALID, "workers");
    /* serve keeps two slots per worker for 256 workers: the config says so
     * rather than serve cutting the count silently */
    expect_config_error("{\"workers\": 257}", ERR_INVALID,
                        "\"workers\" = 257 is out of range: allowed 1 to 256 processes");
    expect_config_error("{\"workers\": 1024}", ERR_INVALID, "allowed 1 to 256");
    expect_config_error("{\"workers\": \"2\"}", ERR_FORMAT, "\"workers\" must be an integer");
    expect_config_error("{\"workers\": 2.5}", ERR_FORMAT, "\"workers\" must be an integer");
    expect_config_error("{\"lease_s\": \"60\"}", ERR_FORMAT, "\"lease_s\" must be a number");
    expect_config_error("{\"node\": 7}", ERR_FORMAT, "\"node\" must be a string");
    expect_config_error("{\"node\": \"\"}", ERR_INVALID, "node name");
    expect_config_error("{\"poll_s\": 0}", ERR_INVALID, "\"poll_s\" = 0 is out of range: allowed more than 0 to");
    expect_config_error("{\"backoff_base_s\": 700}", ERR_INVALID,
                        "backoff_max_s (600) must be at least backoff_base_s (700)");
    expect_config_error("{\"worker_memory_mb\": -1}", ERR_INVALID,
                        "\"worker_memory_mb\" = -1 is out of range: allowed 0 to 16777216 MB");
    /* every numeric setting has a range, named with the setting; a value
     * beyond an int is refused before it is narrowed to one */
    expect_config_error("{\"workers\": 4294967297}", ERR_INVALID,
                        "\"workers\" = 4294967297 is out of range: allowed 1 to 256");
    expect_config_error("{\"fetch_retries\": -5}", ERR_INVALID, "\"fetch_retries\" = -5 is out of range");
    expect_config_error("{\"worker_cpu_s\": 99999999999}", ERR_INVALID, "\"worker_cpu_s\" = 99999999999");
    expect_config_error("{\"lease_s\": 1e300}", ERR_INVALID, "\"lease_s\" = 1.0000000000000001e+300 is out");
    expect_config_error("{\"worker_timeout_s\": 0}", ERR_INVALID, "\"worker_timeout_s\" = 0 is out of range");
    expect_config_error("{\"cache_budget_gb\": -1}", ERR_INVALID, "\"cache_budget_gb\" = -1 is out of range");
    expect_config_error("{\"prefetch\": 2}", ERR_INVALID, "\"prefetch\" = 2 is out of range: allowed 0 to 1");
    expect_config_error("{\"fetch_parallel\": 0}", ERR_INVALID, "\"fetch_parallel\" = 0 is out of range");
    expect_config_error("{\"db_statement_timeout_s\": 90000}", ERR_INVALID,
                        "\"db_statement_timeout_s\" = 90000 is out of range: allowed 0 to 86400");
    expect_config_error("{\"spool_dir\": \"\"}", ERR_INVALID, "spool_dir must not be empty");
    expect_config_error("{\"disk_min_free_mb\": -1}", ERR_INVALID,
                        "\"disk_min_free_mb\" = -1 is out of range: allowed 0 to 16777216 MB (0: no check)");
    expect_config_error("{\"workers\": 2, \"workers\": 3}", ERR_FORMAT, "duplicate");
    expect_config_error("[1, 2]", ERR_FORMAT, "JSON object");
    expect_config_error("{\"workers\": 2", ERR_FORMAT, "cannot read config");
    expect_config_error("", ERR_FORMAT, "cannot read config");

    daemon_config_defaults(&c);
    assert_int_equal(daemon_config_load(&c, "/nonexistent/ckptd.json", &e), ERR_FORMAT);
    assert_non_null(strstr(e.msg, "cannot read config"));
}

static void test_db_int_array(void **state)
{
    (void)state;
    char buf[64];
    const long long ids[] = {1, 22, -3, 9007199254740993LL};
    db_int_array(buf, sizeof buf, ids, 4);
    assert_string_equal(buf, "{1,22,-3,9007199254740993}");
    db_int_array(buf, sizeof buf, ids, 0);
    assert_string_equal(buf, "{}");
}

/* text[] literals quote every element and escape quotes and backslashes,
 * so URLs and names reach PostgreSQL unchanged */
static void test_db_text_array(void **state)
{
    (void)state;
    const char *v[4] = {"loss", "file:///a b/step{x}", "q\"uote", "back\\slash"};
    char *s = db_text_array(v, 4);
    assert_non_null(s);
    assert_string_equal(s, "{\"loss\",\"file:///a b/step{x}\",\"q\\\"uote\",\"back\\\\slash\"}");
    free(s);
    s = db_text_array(v, 0);
    assert_string_equal(s, "{}");
    free(s);
}

/* ---- db: reconnect backoff ---- */

/* Seconds db_ensure says it waits before the next attempt; -1 if it tried. */
static double next_attempt_in(struct db *d)
{
    struct err e;
    err_clear(&e);
    assert_int_equal(db_ensure(d, &e), ERR_DB);
    const char *p = strstr(e.msg, "next attempt in ");
    return p ? atof(p + strlen("next attempt in ")) : -1;
}

static void test_db_backoff_max(void **state)
{
    (void)state;
    struct err e;
    struct db *d = db_new("host=/nonexistent/ckptd-test-socket-dir dbname=x connect_timeout=2");
    assert_non_null(d);
    db_set_backoff_max(d, 1.5);
    /* first attempt fails at once: the next one in 1 s */
    assert_int_equal(db_ensure(d, &e), ERR_DB);
    assert_non_null(strstr(e.msg, "cannot connect"));
    double w = next_attempt_in(d);
    assert_true(w > 0.5 && w <= 1.0);
    usleep((useconds_t)(w * 1e6) + 50000);
    /* second failure: 2 s doubled from 1, capped at 1.5 */
    assert_int_equal(db_ensure(d, &e), ERR_DB);
    assert_non_null(strstr(e.msg, "cannot connect"));
    w = next_attempt_in(d);
    assert_true(w > 1.0 && w <= 1.5);
    /* out-of-range caps are clamped to 1..30 s */
    db_set_backoff_max(d, 0.01);
    db_free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schedule_pythia),
        cmocka_unit_test(test_schedule_lists_and_ranges),
        cmocka_unit_test(test_schedule_errors),
        cmocka_unit_test(test_schedule_refs),
        cmocka_unit_test(test_source_checkpoint_url),
        cmocka_unit_test(test_source_local_path),
        cmocka_unit_test(test_registry_parse),
        cmocka_unit_test(test_registry_worker_deadline),
        cmocka_unit_test(test_registry_default_battery),
        cmocka_unit_test(test_registry_errors),
        cmocka_unit_test(test_registry_from_worker),
        cmocka_unit_test_setup_teardown(test_ingest_good_rows, setup_ingest, teardown_ingest),
        cmocka_unit_test_setup_teardown(test_ingest_nan_inf, setup_ingest, teardown_ingest),
        cmocka_unit_test_setup_teardown(test_ingest_bad_rows, setup_ingest, teardown_ingest),
        cmocka_unit_test(test_outcomes),
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_db_int_array),
        cmocka_unit_test(test_db_text_array),
        cmocka_unit_test(test_db_backoff_max),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
