/*
 * test_status - daemon/read/status.h, `ckptd status`, on a real PostgreSQL
 * of its own (tests/lib/pg_fixture.h).  A run of five checkpoints is put in
 * every state by hand (two done within the hour, one running under a
 * lease, one dead, one retrying), with a download in progress, a duplicate,
 * and three nodes (working, silent for an hour, stopped); status_print must
 * say each of these as the header describes:
 *
 *   progress  "2/5 done, 1 running, 1 failed, 2 queued", the bar, the rate
 *             over the last hour and the ETA it gives
 *   failing   the dead job and the retrying one with their errors
 *   others    downloads, duplicates, workers with their lease
 *   nodes     up or STALE or stopped, and each held checkpoint's phase
 *   filter    status of one run shows that run only; of an unknown run says
 *             so; of an empty database "no runs"
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "daemon/base/db.h"
#include "daemon/ops/node.h"
#include "daemon/plan/registry.h"
#include "daemon/plan/source.h"
#include "daemon/read/status.h"
#include "daemon/work/queue.h"
#include "tests/lib/pg_fixture.h"

static struct db *db;

static const char battery_json[] =
    "{\"items\": ["
    " {\"name\": \"loss\", \"version\": 1, \"metrics\": [{\"name\": \"loss\"}]},"
    " {\"name\": \"weights\", \"version\": 1, \"metrics\": [{\"name\": \"frobenius_norm\"}]}"
    "]}";

static void add_run(const char *name, const char *schedule)
{
    static const struct queue_item items[2] = {{"loss", 1}, {"weights", 1}};
    long long *steps = NULL;
    int n = 0;
    long nc = 0, nj = 0;
    struct err e;
    assert_int_equal(schedule_parse(schedule, &steps, &n, NULL), 0);
    if (queue_add_run(db, name, "file:///nonexistent/step{step}", schedule, steps, n, items, 2, "{}", 5, &nc, &nj,
                      &e) < 0)
        fail_msg("add run %s: %s", name, err_str(&e));
    free(steps);
}

/* status_print into a string (caller frees). */
static char *status(const char *run_name)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    struct err e;
    if (status_print(db, run_name, f, &e) < 0)
        fail_msg("status_print: %s", err_str(&e));
    fclose(f);
    return buf;
}

static void expect(const char *text, const char *needle)
{
    if (!strstr(text, needle))
        fail_msg("status lacks \"%s\":\n%s", needle, text);
}

static void expect_not(const char *text, const char *needle)
{
    if (strstr(text, needle))
        fail_msg("status has \"%s\":\n%s", needle, text);
}

static void test_empty(void **state)
{
    (void)state;
    char *s = status(NULL);
    expect(s, "no runs");
    free(s);
    s = status("nope");
    expect(s, "no run named nope");
    free(s);
}

static void test_states(void **state)
{
    (void)state;
    struct err e;
    add_run("r1", "0,1,2,3,4");
    add_run("r2", "0,1");
    /* step 0 and 1 done, 30 minutes apart; 2 running on n1; 3 dead; 4 retrying */
    pg_run(db, "UPDATE jobs j SET state = 'done', finished_at = now() - interval '30 minutes', attempts = 1"
        " FROM checkpoints c, runs r WHERE j.checkpoint_id = c.id AND c.run_id = r.id AND r.name = 'r1' AND c.step = 0");
    pg_run(db, "UPDATE jobs j SET state = 'done', finished_at = now(), attempts = 1"
        " FROM checkpoints c, runs r WHERE j.checkpoint_id = c.id AND c.run_id = r.id AND r.name = 'r1' AND c.step = 1");
    pg_run(db, "UPDATE jobs j SET state = 'running', lease_owner = 'n1', lease_expires = now() + interval '50 seconds',"
        "   started_at = now() - interval '20 seconds', attempts = 1"
        " FROM checkpoints c, runs r WHERE j.checkpoint_id = c.id AND c.run_id = r.id AND r.name = 'r1' AND c.step = 2");
    pg_run(db, "UPDATE jobs j SET state = 'dead', attempts = 5, last_error = 'worker exited with status 1; stderr: boom'"
        " FROM checkpoints c, runs r WHERE j.checkpoint_id = c.id AND c.run_id = r.id AND r.name = 'r1' AND c.step = 3"
        "   AND j.item = 'loss'");
    pg_run(db, "UPDATE jobs j SET attempts = 2, last_error = 'fetch failed: GET x: 503',"
        "   not_before = now() + interval '90 seconds'"
        " FROM checkpoints c, runs r WHERE j.checkpoint_id = c.id AND c.run_id = r.id AND r.name = 'r1' AND c.step = 4"
        "   AND j.item = 'weights'");
    /* a download of r1's step 2 in progress, r2's step 1 a duplicate of its step 0 */
    pg_run(db, "INSERT INTO fetches (checkpoint_id, node, state, bytes_done, bytes_total, bytes_per_s)"
        " SELECT c.id, 'n1', 'fetching', 1000000, 4000000, 1000000 FROM checkpoints c JOIN runs r ON r.id = c.run_id"
        " WHERE r.name = 'r1' AND c.step = 2");
    pg_run(db, "UPDATE checkpoints c SET duplicate_of = (SELECT o.id FROM checkpoints o WHERE o.run_id = c.run_id AND o.step = 0)"
        " FROM runs r WHERE c.run_id = r.id AND r.name = 'r2' AND c.step = 1");
    /* three nodes: n1 works on r1's step 2; n2 went silent an hour ago; n3 stopped */
    PGresult *ids = db_exec(db, "SELECT string_agg(j.id::text, ',' ORDER BY j.id) FROM jobs j JOIN checkpoints c"
                                " ON c.id = j.checkpoint_id JOIN runs r ON r.id = c.run_id"
                                " WHERE r.name = 'r1' AND c.step = 2", 0, NULL, &e);
    assert_non_null(ids);
    char act[512];
    snprintf(act, sizeof act, "[{\"phase\": \"analysing\", \"run\": \"r1\", \"step\": 2, \"jobs\": [%s],"
             " \"items\": [\"loss\", \"weights\"], \"attempt\": 1, \"for_s\": 20, \"pid\": 4321}]",
             PQgetvalue(ids, 0, 0));
    PQclear(ids);
    struct node_info n1 = {"n1", "host1", "0.1.0", 111, 1, 10, 600};
    struct node_info n2 = {"n2", "host2", "0.1.0", 222, 2, 10, 7200};
    struct node_info n3 = {"n3", "host3", "0.1.0", 333, 1, 10, 60};
    assert_int_equal(node_heartbeat(db, &n1, act, "{\"jobs_done\": 7, \"jobs_failed\": 1}", &e), 0);
    assert_int_equal(node_heartbeat(db, &n2, "[]", "{}", &e), 0);
    assert_int_equal(node_heartbeat(db, &n3, "[]", "{}", &e), 0);
    assert_int_equal(node_stopped(db, "n3", 333, &e), 0);
    pg_run(db, "UPDATE nodes SET heartbeat_at = now() - interval '1 hour' WHERE node = 'n2'");

    char *s = status(NULL);
    /* 2 done in the last hour, 30 minutes apart: 4/h; 2 left (not the dead one): 30 minutes.
     * Step 3 has a dead job and a queued one: it is failed and queued. */
    expect(s, "r1  [############..................] 2/5 done, 1 running, 1 failed, 2 queued; "
              "4.0 checkpoints/h, ETA 30m");
    expect(s, "r2  [..............................] 0/2 done, 0 running, 0 failed, 2 queued");
    expect(s, "failing jobs:");
    expect(s, "r1 step 3 loss: DEAD after 5/5 attempts: worker exited with status 1; stderr: boom");
    expect(s, "r1 step 4 weights: retrying after 2/5 attempts, next in ");
    expect(s, ": fetch failed: GET x: 503");
    expect(s, "downloads:\n  n1: r1 step 2: 1.0 of 4.0 MB (25%), 1.0 MB/s, ETA 3s");
    expect(s, "duplicates (same weights; left out of series):\n  r2 step 1 = step 0");
    expect(s, "workers:\n  n1: r1 step 2 [loss,weights] for ");
    expect(s, "nodes:");
    expect(s, "n1 (host host1, pid 111, ckptd 0.1.0): up 10m, heartbeat "); /* seconds ago */
    expect(s, "s ago, 1 worker, 7 jobs done, 1 failed");
    expect(s, "analysing  r1 step 2 [loss,weights] jobs ");
    expect(s, "attempt 1, for 2"); /* 20 s and what has passed since */
    expect(s, "s (worker pid 4321), lease ");
    expect(s, "n2 (host host2, pid 222, ckptd 0.1.0): STALE: last heartbeat 60m ago (expected every 10s)");
    expect(s, "n3 (host host3, pid 333, ckptd 0.1.0): stopped ");
    free(s);

    /* one run: the other's lines are not there, and n1 is idle for it */
    s = status("r2");
    expect(s, "r2  [");
    expect_not(s, "r1  [");
    expect_not(s, "failing jobs:");
    expect_not(s, "downloads:");
    expect(s, "r2 step 1 = step 0");
    expect(s, "idle (for this run)");
    expect_not(s, "analysing");
    free(s);
}

static int setup(void **state)
{
    (void)state;
    struct err e;
    struct registry reg;
    if (!(db = pg_fixture_start(1)))
        return -1;
    if (registry_parse(&reg, battery_json, &e) < 0 || registry_sync(&reg, db, &e) < 0) {
        fprintf(stderr, "registry: %s\n", err_str(&e));
        return -1;
    }
    registry_free(&reg);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    pg_fixture_stop(db);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_states),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
