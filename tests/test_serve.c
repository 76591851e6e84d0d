/*
 * test_serve - daemon/ops/serve.h, a node's loop, in this process against
 * a real PostgreSQL of its own (tests/lib/pg_fixture.h), with a stand-in
 * worker (a shell script answering `battery --json` and `analyze`) and a
 * file:// run of five checkpoints:
 *
 *   until idle  serve_run(--until-idle) claims every checkpoint, stores the
 *               worker's rows exactly once (the values the worker printed,
 *               done_by this node), retries a checkpoint whose worker
 *               fails until max_attempts and leaves it dead with the
 *               worker's stderr in last_error, removes its spool files,
 *               leaves its nodes row stopped, and returns 0
 *   prefetch    the same with two workers and prefetch: each checkpoint
 *               once, nothing left running or leased
 *   start       the ways a node cannot start return their code without
 *               serving: a database not migrated (ERR_DB), a worker that
 *               cannot be run (ERR_CHILD), an artifact directory that cannot
 *               be made (ERR_IO)
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "daemon/base/db.h"
#include "daemon/ops/config.h"
#include "daemon/ops/serve.h"
#include "daemon/plan/source.h"
#include "daemon/work/queue.h"
#include "tests/lib/pg_fixture.h"
#include "tests/lib/test_files.h"

static struct db *db;
static char dir[64];
static char worker[128];

/* The stand-in worker: its battery is one item (`loss` v1, metric loss);
 * analyze prints loss = 1000 + the step of its directory, except for step
 * 3, which fails on stderr. */
static void make_worker(void)
{
    snprintf(worker, sizeof worker, "%s/worker", dir);
    put_text(worker,
        "#!/bin/sh\n"
        "for a; do [ \"$a\" = battery ] && {\n"
        "  echo '{\"items\": [{\"name\": \"loss\", \"version\": 1, \"metrics\": [{\"name\": \"loss\"}]}]}'; exit 0; }; done\n"
        "while [ $# -gt 0 ]; do case \"$1\" in analyze) d=$2; shift ;; esac; shift; done\n"
        "step=${d##*step}\n"
        "[ \"$step\" = 3 ] && { echo 'level=error msg=\"checkpoint 3 is cursed\"' >&2; exit 1; }\n"
        "printf 'loss\\t1\\tloss\\t-1\\t-1\\t-1\\t%d\\n' $((1000 + step))\n");
    assert_int_equal(chmod(worker, 0755), 0);
}

static void make_checkpoints(void)
{
    for (int s = 0; s < 5; s++) {
        char *d = xasprintf("%s/ck/step%d", dir, s);
        char *cmd = xasprintf("mkdir -p '%s'", d);
        assert_int_equal(system(cmd), 0);
        char *p = xasprintf("%s/config.json", d);
        put_text(p, "{}");
        free(p);
        p = xasprintf("%s/model.safetensors", d);
        char w[32];
        snprintf(w, sizeof w, "weights of step %d", s); /* equal files would be duplicates */
        put_text(p, w);
        free(p);
        free(cmd);
        free(d);
    }
}

static void add_run(const char *name)
{
    static const struct queue_item items[1] = {{"loss", 1}};
    long long *steps = NULL;
    int n = 0;
    long nc, nj;
    struct err e;
    char *src = xasprintf("file://%s/ck/step{step}", dir);
    assert_int_equal(schedule_parse("0:4:1", &steps, &n, NULL), 0);
    if (queue_add_run(db, name, src, "0:4:1", steps, n, items, 1, "{}", 2, &nc, &nj, &e) < 0)
        fail_msg("add run: %s", err_str(&e));
    free(steps);
    free(src);
}

static void config(struct daemon_config *c, const char *node, int workers, int prefetch)
{
    daemon_config_defaults(c);
    snprintf(c->database, sizeof c->database, "%.1000s", pg_fixture_conn());
    snprintf(c->node, sizeof c->node, "%s", node);
    snprintf(c->worker_path, sizeof c->worker_path, "%s", worker);
    snprintf(c->spool_dir, sizeof c->spool_dir, "%s/spool", dir);
    snprintf(c->cache_dir, sizeof c->cache_dir, "%s/cache", dir);
    snprintf(c->artifact_dir, sizeof c->artifact_dir, "%s/art", dir);
    c->workers = workers;
    c->prefetch = prefetch;
    c->worker_threads = 1;
    c->lease_s = 10;
    c->heartbeat_s = 0.5;
    c->poll_s = 0.2;
    c->backoff_base_s = 0.05;
    c->backoff_max_s = 0.1;
    c->shutdown_grace_s = 5;
    struct err e;
    if (daemon_config_check(c, &e) < 0)
        fail_msg("config: %s", err_str(&e));
}

static void check_run(const char *name, const char *node)
{
    char sql[512];
    /* steps 0, 1, 2, 4: one row each, the worker's value */
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM series WHERE run = '%s' AND metric = 'loss' AND value = 1000 + step", name);
    assert_int_equal(pg_num(db, sql), 4);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM measurements m JOIN runs r ON r.id = m.run_id WHERE r.name = '%s'",
             name);
    assert_int_equal(pg_num(db, sql), 4);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM job_list j JOIN jobs x ON x.id = j.id WHERE j.run = '%s' AND j.state = 'done'"
             " AND x.done_by = '%s'", name, node);
    assert_int_equal(pg_num(db, sql), 4);
    /* step 3: dead after its two attempts, the worker's stderr kept */
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM job_list WHERE run = '%s' AND step = 3 AND state = 'dead' AND attempts = 2"
             " AND last_error LIKE 'worker exited with status 1; stderr: %%checkpoint 3 is cursed%%'", name);
    assert_int_equal(pg_num(db, sql), 1);
    assert_int_equal(pg_num(db, "SELECT count(*) FROM jobs WHERE state IN ('running', 'queued')"), 0);
    assert_int_equal(pg_num(db, "SELECT count(*) FROM jobs WHERE lease_owner IS NOT NULL"), 0);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM nodes WHERE node = '%s' AND stopped_at IS NOT NULL", node);
    assert_int_equal(pg_num(db, sql), 1);
    /* the spool holds no file once the rows are stored and the node stopped */
    char *cmd = xasprintf("find '%s/spool' -type f | wc -l", dir);
    FILE *p = popen(cmd, "r");
    char line[32] = "";
    assert_non_null(fgets(line, sizeof line, p));
    pclose(p);
    assert_int_equal(atoi(line), 0);
    free(cmd);
}

static void test_until_idle(void **state)
{
    (void)state;
    add_run("one");
    struct daemon_config c;
    config(&c, "node-a", 1, 0);
    struct serve_opts o = {&c, NULL, 1};
    assert_int_equal(serve_run(&o), 0);
    check_run("one", "node-a");
}

static void test_prefetch(void **state)
{
    (void)state;
    pg_run(db, "TRUNCATE runs, checkpoints, jobs, measurements, transitions, artifacts, checkpoint_files, fetches CASCADE");
    add_run("two");
    struct daemon_config c;
    config(&c, "node-b", 2, 1);
    struct serve_opts o = {&c, NULL, 1};
    assert_int_equal(serve_run(&o), 0);
    check_run("two", "node-b");
    /* each checkpoint's files recorded once */
    assert_int_equal(pg_num(db, "SELECT count(*) FROM checkpoint_files"), 5 * 2);
}

static void test_start_failures(void **state)
{
    (void)state;
    struct daemon_config c;
    /* a database that exists but was never migrated */
    pg_run(db, "DROP DATABASE IF EXISTS bare");
    pg_run(db, "CREATE DATABASE bare");
    config(&c, "node-c", 1, 0);
    char *conn = xasprintf("%s", pg_fixture_conn());
    char *at = strstr(conn, "dbname=ckptd");
    assert_non_null(at);
    snprintf(c.database, sizeof c.database, "%.*sdbname=bare", (int)(at - conn), conn);
    struct serve_opts o = {&c, NULL, 1};
    assert_int_equal(serve_run(&o), ERR_DB);
    free(conn);
    /* no worker */
    config(&c, "node-c", 1, 0);
    snprintf(c.worker_path, sizeof c.worker_path, "%s/no-such-worker", dir);
    assert_int_equal(serve_run(&o), ERR_CHILD);
    /* an artifact directory under a regular file */
    config(&c, "node-c", 1, 0);
    snprintf(c.artifact_dir, sizeof c.artifact_dir, "%s/worker/art", dir);
    assert_int_equal(serve_run(&o), ERR_IO);
    assert_int_equal(pg_num(db, "SELECT count(*) FROM nodes WHERE node = 'node-c'"), 0);
}

static int setup(void **state)
{
    (void)state;
    if (scratch_make(dir, sizeof dir, "ckptd_test_serve_") < 0)
        return -1;
    make_worker();
    make_checkpoints();
    return (db = pg_fixture_start(1)) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    pg_fixture_stop(db);
    return scratch_remove(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_until_idle),
        cmocka_unit_test(test_prefetch),
        cmocka_unit_test(test_start_failures),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
