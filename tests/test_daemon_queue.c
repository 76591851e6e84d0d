/*
 * test_daemon_queue - the job queue and ingestion against a real
 * PostgreSQL: queue_claim under concurrent claimers (each job claimed once,
 * a checkpoint never split, "nothing claimable" never said while work is
 * there, a checkpoint whose jobs became due at different moments claimed
 * whole, one checkpoint locked per claim under every plan, a checkpoint of
 * too many jobs refused and its jobs given back), the lease life cycle (heartbeat, fail with backoff, dead after
 * max_attempts, release, expiry, retry), and ingest_commit's exactly-once
 * rules (bad rows, truncated output, a missing item, a lost or expired
 * lease, a duplicate key: nothing stored; a second commit of the same claim
 * refused; the storing node recorded in done_by), ingest_settle item by
 * item (a done item stored while a failed one is retried alone with its own
 * error, rows of an unfinished item not stored, a count that disagrees
 * with the worker's refused, the retry's rows stored once), and the connection's
 * defaults (keepalives, TCP user timeout and connect timeout on the client,
 * the same timeouts asked of the server; a conninfo or PGCONNECT_TIMEOUT
 * overrides them), and statements prepared at their second use (the
 * same answers, again after a reconnect or a schema change).
 *
 * Needs a migrated, otherwise empty database named by CKPTD_TEST_DB (a
 * libpq conninfo); tests/daemon_queue.sh provides one.  Without it the
 * program says so and passes: `make unit` runs it bare too.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "daemon/base/db.h"
#include "daemon/plan/registry.h"
#include "daemon/plan/source.h"
#include "daemon/store/ingest.h"
#include "daemon/work/queue.h"
#include "daemon/work/supervise.h"

#define CLAIMERS 8

static const char battery_json[] =
    "{\"items\": ["
    " {\"name\": \"loss\", \"version\": 1, \"metrics\": [{\"name\": \"loss\"}, {\"name\": \"loss_by_pos\"}]},"
    " {\"name\": \"weights\", \"version\": 1, \"metrics\": [{\"name\": \"frobenius_norm\"}]}"
    "]}";
static const struct queue_item items[2] = {{"loss", 1}, {"weights", 1}};

static const char *conninfo;
static struct db *db;
static struct registry reg;

/* One number from a query; fails the test on error. */
static long long sql_num(const char *sql)
{
    struct err e;
    PGresult *r = db_exec(db, sql, 0, NULL, &e);
    if (!r)
        fail_msg("%s: %s", sql, err_str(&e));
    if (PQntuples(r) != 1 || PQgetisnull(r, 0, 0))
        fail_msg("%s: %d rows", sql, PQntuples(r));
    long long v = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

static double sql_float(const char *sql)
{
    PGresult *r = db_exec(db, sql, 0, NULL, NULL);
    assert_non_null(r);
    double v = atof(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

static void sql_do(const char *sql)
{
    struct err e;
    if (db_run(db, sql, 0, NULL, &e) < 0)
        fail_msg("%s: %s", sql, err_str(&e));
}

static void add_run(const char *name, const char *schedule, int max_attempts)
{
    long long *steps = NULL;
    int n = 0;
    long nc = 0, nj = 0;
    struct err e;
    assert_int_equal(schedule_parse(schedule, &steps, &n, NULL), 0);
    if (queue_add_run(db, name, "file:///nonexistent/step{step}", schedule, steps, n, items, 2, "{}",
                      max_attempts, &nc, &nj, &e) < 0)
        fail_msg("add run %s: %s", name, err_str(&e));
    assert_int_equal(nc, n);
    assert_int_equal(nj, 2L * n);
    free(steps);
}

static int setup(void **state)
{
    (void)state;
    struct err e;
    db = db_new(conninfo);
    if (!db || db_connect_wait(db, 10, &e) < 0) {
        fprintf(stderr, "cannot connect to %s: %s\n", conninfo, err_str(&e));
        return -1;
    }
    if (registry_parse(&reg, battery_json, &e) < 0 || registry_sync(&reg, db, &e) < 0) {
        fprintf(stderr, "registry: %s\n", err_str(&e));
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    registry_free(&reg);
    db_free(db);
    return 0;
}

/* Every test starts from an empty queue. */
static int clean(void **state)
{
    (void)state;
    return db_run(db, "TRUNCATE runs, checkpoints, jobs, measurements, transitions, artifacts, checkpoint_files, fetches CASCADE",
                  0, NULL, NULL) == 0 ? 0 : -1;
}

/* ---- concurrent claimers ---- */

/* A child: claim until nothing is claimable.  Exit status: 0 ok, 3 claim
 * error, 4 "nothing" while more jobs were queued than claimers could hold
 * locked, 5 a checkpoint split, 6 no connection. */
static int claimer(int k)
{
    char node[32];
    snprintf(node, sizeof node, "claimer-%d", k);
    struct db *cdb = db_new(conninfo);
    struct err e;
    if (!cdb || db_connect_wait(cdb, 10, &e) < 0)
        return 6;
    for (;;) {
        struct claim c;
        int rc = queue_claim(cdb, node, 600, &c, &e);
        if (rc < 0) {
            fprintf(stderr, "%s: %s\n", node, err_str(&e));
            return 3;
        }
        if (rc == 0)
            break;
        if (c.njobs != 2)
            return 5;
    }
    /* Jobs only go from queued to running here, so what is queued now was
     * queued when we were told there was nothing: only checkpoints other
     * claimers held locked at that moment could be skipped. */
    PGresult *r = db_exec(cdb, "SELECT count(DISTINCT checkpoint_id) FROM jobs WHERE state = 'queued'",
                          0, NULL, &e);
    long left = r ? atol(PQgetvalue(r, 0, 0)) : -1;
    PQclear(r);
    if (left < 0 || left > CLAIMERS - 1) {
        fprintf(stderr, "%s: told nothing is claimable with %ld checkpoints queued\n", node, left);
        return 4;
    }
    db_free(cdb);
    return 0;
}

static void test_claim_concurrent(void **state)
{
    (void)state;
    add_run("race", "0:1199:1", 5);
    pid_t pids[CLAIMERS];
    for (int k = 0; k < CLAIMERS; k++) {
        pids[k] = fork();
        assert_true(pids[k] >= 0);
        if (pids[k] == 0)
            _exit(claimer(k));
    }
    int bad = 0;
    for (int k = 0; k < CLAIMERS; k++) {
        int status = 0;
        waitpid(pids[k], &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "claimer %d: status %d\n", k, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
            bad++;
        }
    }
    assert_int_equal(bad, 0);
    assert_int_equal(sql_num("SELECT count(*) FROM jobs WHERE state = 'running'"), 2400);
    assert_int_equal(sql_num("SELECT count(*) FROM jobs WHERE attempts <> 1"), 0);
    assert_int_equal(sql_num("SELECT count(*) FROM (SELECT checkpoint_id FROM jobs GROUP BY checkpoint_id"
                             " HAVING count(DISTINCT lease_owner) > 1) s"), 0);
    /* the work was shared */
    assert_true(sql_num("SELECT count(DISTINCT lease_owner) FROM jobs") >= 2);
}

/* A claim locks the one checkpoint it takes, whatever the plan: with the
 * planner pushed to sort after scanning (as stale statistics do), a lock
 * taken per queued job would hold every checkpoint and leave other
 * claimers nothing. */
static void test_claim_locks_one(void **state)
{
    (void)state;
    static const char *const plans[] = {"", "enable_indexscan", "enable_bitmapscan", "enable_hashjoin"};
    struct err e;
    struct claim c;
    add_run("locks", "0:99:1", 5);
    struct db *other = db_new(conninfo);
    assert_int_equal(db_connect_wait(other, 10, &e), 0);
    for (size_t i = 0; i < sizeof plans / sizeof *plans; i++) {
        char set[64];
        if (i > 0) { /* each round turns one more plan node off */
            snprintf(set, sizeof set, "SET %s = off", plans[i]);
            sql_do(set);
        }
        sql_do("BEGIN"); /* the claim's locks stay until ROLLBACK */
        assert_int_equal(queue_claim(db, "n1", 60, &c, &e), 1);
        assert_int_equal(c.step, 0);
        PGresult *r = db_exec(other, "SELECT count(*) FROM (SELECT id FROM checkpoints"
                                     " FOR UPDATE SKIP LOCKED) s", 0, NULL, &e);
        assert_non_null(r);
        if (atoi(PQgetvalue(r, 0, 0)) != 99)
            fail_msg("planner settings up to '%s' off: %s of 100 checkpoints free, expected 99",
                     plans[i], PQgetvalue(r, 0, 0));
        PQclear(r);
        sql_do("ROLLBACK");
    }
    sql_do("RESET ALL");
    db_free(other);
}

/* A checkpoint with more jobs than a claim can hold is refused, and its
 * jobs go back as they were: queued, no lease, no attempt counted (not
 * left running to burn attempts through lease expiry). */
static void test_claim_too_many(void **state)
{
    (void)state;
    struct err e;
    struct claim c;
    add_run("big", "0", 5);
    char sql[256];
    snprintf(sql, sizeof sql,
             "INSERT INTO jobs (checkpoint_id, item, version) SELECT c.id, 'extra' || g, 1"
             " FROM checkpoints c, generate_series(1, %d) g", CLAIM_MAX_JOBS);
    sql_do(sql); /* 2 + CLAIM_MAX_JOBS jobs on the one checkpoint */
    err_clear(&e);
    assert_int_equal(queue_claim(db, "n1", 60, &c, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "more than"));
    assert_int_equal(sql_num("SELECT count(*) FROM jobs WHERE state <> 'queued'"), 0);
    assert_int_equal(sql_num("SELECT count(*) FROM jobs WHERE lease_owner IS NOT NULL"
                             " OR lease_expires IS NOT NULL"), 0);
    assert_int_equal(sql_num("SELECT count(*) FROM jobs WHERE attempts <> 0"), 0);
    assert_int_equal(sql_num("SELECT count(*) FROM jobs"), 2 + CLAIM_MAX_JOBS);
    /* one job fewer: the checkpoint is claimable whole */
    sql_do("DELETE FROM jobs WHERE item IN ('extra1', 'extra2')");
    assert_int_equal(queue_claim(db, "n1", 60, &c, &e), 1);
    assert_int_equal(c.njobs, CLAIM_MAX_JOBS);
    assert_int_equal(c.attempts, 1);
}

/* ---- lease life cycle ---- */

static void test_lifecycle(void **state)
{
    (void)state;
    struct err e;
    struct claim c;
    struct backoff slow = {30, 60}, none = {0, 0};
    add_run("life", "0,1", 2);

    /* oldest first; both jobs of the checkpoint together */
    assert_int_equal(queue_claim(db, "n1", 60, &c, &e), 1);
    assert_int_equal(c.step, 0);
    assert_int_equal(c.njobs, 2);
    assert_int_equal(c.attempts, 1);
    assert_string_equal(c.run, "life");
    assert_string_equal(c.url, "file:///nonexistent/step0");
    assert_string_equal(c.options, "{}");
    long long step0[2] = {c.job_ids[0], c.job_ids[1]};

    /* heartbeat: only the owner renews */
    assert_int_equal(queue_heartbeat(db, "n2", 60, step0, 2, &e), 0);
    assert_int_equal(queue_heartbeat(db, "n1", 60, step0, 2, &e), 2);

    /* another node's failure report changes nothing */
    assert_int_equal(queue_fail(db, "n2", step0, 2, "not mine", &slow, &e), 0);
    assert_int_equal(sql_num("SELECT count(*) FROM job_list WHERE step = 0 AND state = 'running'"), 2);

    /* a failure: back to the queue after base * 2^0, +-20% */
    assert_int_equal(queue_fail(db, "n1", step0, 2, "worker exited with status 1", &slow, &e), 0);
    assert_int_equal(sql_num("SELECT count(*) FROM job_list WHERE step = 0 AND state = 'queued'"
                             " AND attempts = 1 AND lease_owner IS NULL"
                             " AND last_error = 'worker exited with status 1'"), 2);
    double wait = sql_float("SELECT min(extract(epoch FROM not_before - now())) FROM job_list WHERE step = 0");
    assert_true(wait > 30 * 0.8 - 1 && wait < 30 * 1.2 + 1);

    /* step 0 is not due: step 1 comes next */
    assert_int_equal(queue_claim(db, "n1", 60, &c, &e), 1);
    assert_int_equal(c.step, 1);
    long long step1[2] = {c.job_ids[0], c.job_ids[1]};
    assert_int_equal(queue_claim(db, "n1", 60, &c, &e), 0);

    /* release: back at once, the attempt not counted */
    assert_int_equal(queue_release(db, "n1", step1, 2, &e), 0);
    assert_int_equal(sql_num("SELECT count(*) FROM job_list WHERE step = 1 AND state = 'queued'"
                             " AND attempts = 0 AND not_before <= now()"), 2);

    /* due again: step 0 first; its second failure is its last */
    sql_do("UPDATE jobs SET not_before = now()");
    assert_int_equal(queue_claim(db, "n1", 60, &c, &e), 1);
    assert_int_equal(c.step, 0);
    assert_int_equal(c.attempts, 2);
    assert_int_equal(queue_fail(db, "n1", c.job_ids, 2, "worker killed by signal 11", &none, &e), 0);
    assert_int_equal(sql_num("SELECT count(*) FROM job_list WHERE step = 0 AND state = 'dead'"
                             " AND attempts = 2 AND last_error = 'worker killed by signal 11'"), 2);

    /* an expired lease: no heartbeat renews it, expiry returns it */
    assert_int_equal(queue_claim(db, "n1", 60, &c, &e), 1);
    assert_int_equal(c.step, 1);
    assert_int_equal(queue_expire(db, &none, &e), 0); /* not expired yet */
    sql_do("UPDATE jobs SET lease_expires = now() - interval '1 second' WHERE state = 'running'");
    assert_int_equal(queue_heartbeat(db, "n1", 60, c.job_ids, 2, &e), 0);
    assert_int_equal(queue_expire(db, &none, &e), 2);
    assert_int_equal(sql_num("SELECT count(*) FROM job_list WHERE step = 1 AND state = 'queued'"
                             " AND attempts = 1 AND last_error LIKE 'lease of n1 expired%'"), 2);
    long queued = -1, running = -1;
    assert_int_equal(queue_counts(db, &queued, &running, &e), 0);
    assert_int_equal(queued, 2); /* dead jobs are not counted */
    assert_int_equal(running, 0);

    /* an expired lease on the last attempt: dead */
    sql_do("UPDATE jobs SET not_before = now() WHERE state = 'queued'");
    assert_int_equal(queue_claim(db, "n1", 60, &c, &e), 1);
    assert_int_equal(c.attempts, 2);
    sql_do("UPDATE jobs SET lease_expires = now() - interval '1 second' WHERE state = 'running'");
    assert_int_equal(queue_expire(db, &none, &e), 2);
    assert_int_equal(sql_num("SELECT count(*) FROM jobs WHERE state = 'dead'"), 4);

    /* retry: one job by id, then the run by name */
    char id[32];
    snprintf(id, sizeof id, "%lld", step0[0]);
    assert_int_equal(queue_retry(db, id, &e), 1);
    assert_int_equal(queue_retry(db, id, &e), 0); /* not dead any more */
    assert_int_equal(queue_retry(db, "life", &e), 3);
    assert_int_equal(queue_retry(db, "nosuchrun", &e), 0);
    assert_int_equal(sql_num("SELECT count(*) FROM jobs WHERE state = 'queued' AND attempts = 0"), 4);
}

/* After a failure the jobs of a checkpoint have slightly different
 * not_before (the jitter is per row): the first one due brings the others,
 * so the checkpoint is not split into two worker runs. */
static void test_claim_whole_checkpoint(void **state)
{
    (void)state;
    struct err e;
    struct claim c;
    struct backoff b = {60, 120};
    add_run("whole", "7", 5);
    assert_int_equal(queue_claim(db, "n1", 60, &c, &e), 1);
    assert_int_equal(queue_fail(db, "n1", c.job_ids, c.njobs, "boom", &b, &e), 0);
    assert_int_equal(queue_claim(db, "n1", 60, &c, &e), 0); /* none due */
    sql_do("UPDATE jobs SET not_before = now() WHERE item = 'loss'");
    assert_int_equal(queue_claim(db, "n1", 60, &c, &e), 1);
    assert_int_equal(c.njobs, 2);
    assert_int_equal(c.attempts, 2);
    assert_int_equal(sql_num("SELECT count(*) FROM jobs WHERE state = 'running' AND attempts = 2"), 2);
}

/* ---- ingestion ---- */

static char rows_path[64];

static void write_rows(const char *text)
{
    FILE *f = fopen(rows_path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static const char good_rows[] = "loss\t1\tloss\t-1\t-1\t-1\t2.5\n"
                                "loss\t1\tloss_by_pos\t-1\t-1\t0\tNaN\n"
                                "weights\t1\tfrobenius_norm\t0\t-1\t0\t1.5\n";

/* ingest must fail with `code`, store nothing, leave the jobs running and
 * the connection usable */
static void expect_refused(const struct claim *c, const char *rows, int code, const char *needle)
{
    struct err e;
    long n = -1;
    write_rows(rows);
    err_clear(&e);
    int rc = ingest_commit(db, &reg, "n1", c, rows_path, 1.0, &n, &e);
    if (rc != code)
        fail_msg("rc %d (%s), expected %d", rc, err_str(&e), code);
    if (!strstr(e.msg, needle))
        fail_msg("message '%s' lacks '%s'", e.msg, needle);
    assert_int_equal(n, 0);
    assert_non_null(db_conn(db));
    assert_int_equal(sql_num("SELECT count(*) FROM measurements"), 0);
    assert_int_equal(sql_num("SELECT count(*) FROM jobs WHERE state = 'done'"), 0);
}

static void test_ingest(void **state)
{
    (void)state;
    struct err e;
    struct claim c;
    long n = 0;
    snprintf(rows_path, sizeof rows_path, "/tmp/ckptd-rows-XXXXXX");
    int fd = mkstemp(rows_path);
    assert_true(fd >= 0);
    close(fd);
    add_run("ing", "5", 3);
    assert_int_equal(queue_claim(db, "n1", 60, &c, &e), 1);

    expect_refused(&c, "loss\t1\tloss\t-1\t-1\t-1\t2.5\nloss\t1\tperplexity\t-1\t-1\t-1\t3\n"
                       "weights\t1\tfrobenius_norm\t0\t-1\t0\t1.5\n", ERR_FORMAT, "unknown metric");
    expect_refused(&c, "loss\t1\tloss\t-1\t-1\t-1\t2.5\nweights\t1\tfrobenius_norm\t0\t-1\t0\t1.5",
                   ERR_FORMAT, "cut short");
    expect_refused(&c, "loss\t1\tloss\t-1\t-1\t-1\t2.5\n", ERR_FORMAT, "no rows for item weights");
    expect_refused(&c, "", ERR_FORMAT, "no rows for item");
    expect_refused(&c, "loss\t1\tloss\t-1\t-1\t-1\t2.5\nloss\t1\tloss\t-1\t-1\t-1\t2.6\n"
                       "weights\t1\tfrobenius_norm\t0\t-1\t0\t1.5\n", ERR_FORMAT, "duplicate key");
    sql_do("UPDATE jobs SET lease_owner = 'n2' WHERE state = 'running'");
    expect_refused(&c, good_rows, INGEST_LEASE_LOST, "no longer ours");
    sql_do("UPDATE jobs SET lease_owner = 'n1', lease_expires = now() - interval '1 second'"
           " WHERE state = 'running'");
    expect_refused(&c, good_rows, INGEST_LEASE_LOST, "no longer ours");
    sql_do("UPDATE jobs SET lease_expires = now() + interval '1 minute' WHERE state = 'running'");

    write_rows(good_rows);
    int rc = ingest_commit(db, &reg, "n1", &c, rows_path, 1.5, &n, &e);
    if (rc != 0)
        fail_msg("ingest: %s", err_str(&e));
    assert_int_equal(n, 3);
    assert_int_equal(sql_num("SELECT count(*) FROM measurements WHERE step = 5"), 3);
    assert_int_equal(sql_num("SELECT count(*) FROM series WHERE run = 'ing' AND metric = 'loss_by_pos'"
                             " AND idx = 0 AND value = 'NaN'"), 1);
    assert_int_equal(sql_num("SELECT count(*) FROM jobs WHERE state = 'done' AND lease_owner IS NULL"
                             " AND worker_seconds = 1.5 AND last_error IS NULL"), 2);
    assert_int_equal(sql_num("SELECT rows_written FROM jobs WHERE item = 'loss'"), 2);
    assert_int_equal(sql_num("SELECT rows_written FROM jobs WHERE item = 'weights'"), 1);
    assert_int_equal(sql_num("SELECT count(*) FROM jobs WHERE done_by = 'n1'"), 2);

    /* the same claim again: its jobs are done, nothing is stored twice */
    rc = ingest_commit(db, &reg, "n1", &c, rows_path, 1.5, &n, &e);
    assert_int_equal(rc, INGEST_LEASE_LOST);
    assert_int_equal(sql_num("SELECT count(*) FROM measurements"), 3);

    /* a missing rows file is a bad result, not a crash */
    assert_int_equal(ingest_commit(db, &reg, "n1", &c, "/nonexistent/rows", 1, &n, &e), ERR_FORMAT);
    unlink(rows_path);
}


/* outcome i: done with `rows` (-1: unknown), or failed with `msg` */
static void outcome(struct item_outcome *o, int done, long rows, const char *msg)
{
    o->state = done ? ITEM_DONE : ITEM_FAILED;
    o->rows = rows;
    snprintf(o->error, sizeof o->error, "%s", msg ? msg : "");
}

static void test_settle_items(void **state)
{
    (void)state;
    struct err e;
    struct claim c;
    struct item_outcome out[2];
    struct ingest_result res;
    struct backoff b = {0.01, 0.01};
    snprintf(rows_path, sizeof rows_path, "/tmp/ckptd-rows-XXXXXX");
    int fd = mkstemp(rows_path);
    assert_true(fd >= 0);
    close(fd);
    add_run("it", "7", 3);
    assert_int_equal(queue_claim(db, "n1", 60, &c, &e), 1);
    assert_int_equal(c.njobs, 2);
    int il = strcmp(c.items[0], "loss") == 0 ? 0 : 1, iw = 1 - il;

    /* loss done; weights failed, its rows half printed (a worker killed
     * while writing them): loss stored, weights queued again with its error */
    write_rows("loss\t1\tloss\t-1\t-1\t-1\t2.5\nloss\t1\tloss_by_pos\t-1\t-1\t0\t3\n"
               "weights\t1\tfrobenius_norm\t0\t-1\t0\t1.5\nweights\t1\tfrob");
    outcome(&out[il], 1, 2, NULL);
    outcome(&out[iw], 0, -1, "worker killed by signal 9 (Killed) while running item weights v1");
    if (ingest_settle(db, &reg, "n1", &c, rows_path, 0.5, out, &b, &res, &e) != 0)
        fail_msg("settle: %s", err_str(&e));
    assert_int_equal(res.done, 1);
    assert_int_equal(res.failed, 1);
    assert_int_equal(res.rows, 2);
    assert_int_equal(res.skipped, 2);
    assert_int_equal(sql_num("SELECT count(*) FROM measurements"), 2);
    assert_int_equal(sql_num("SELECT count(*) FROM jobs WHERE item = 'loss' AND state = 'done'"
                             " AND rows_written = 2 AND attempts = 1"), 1);
    assert_int_equal(sql_num("SELECT count(*) FROM jobs WHERE item = 'weights' AND state = 'queued'"
                             " AND lease_owner IS NULL AND last_error LIKE 'worker killed by signal 9%item weights v1'"), 1);

    /* the retry holds weights alone; its count disagrees with the rows:
     * refused, nothing stored, the error says why */
    sql_do("UPDATE jobs SET not_before = now()");
    assert_int_equal(queue_claim(db, "n1", 60, &c, &e), 1);
    assert_int_equal(c.njobs, 1);
    assert_string_equal(c.items[0], "weights");
    write_rows("weights\t1\tfrobenius_norm\t0\t-1\t0\t1.5\n");
    outcome(&out[0], 1, 2, NULL);
    assert_int_equal(ingest_settle(db, &reg, "n1", &c, rows_path, 0.5, out, &b, &res, &e), 0);
    assert_int_equal(res.failed, 1);
    assert_int_equal(out[0].state, ITEM_FAILED);
    assert_non_null(strstr(out[0].error, "results rejected: "));
    assert_non_null(strstr(out[0].error, "1 rows of item weights, the worker reported 2"));
    assert_int_equal(sql_num("SELECT count(*) FROM jobs WHERE item = 'weights' AND attempts = 2"
                             " AND last_error LIKE 'results rejected: %'"), 1);

    /* the third attempt is good: stored once, every job done */
    sql_do("UPDATE jobs SET not_before = now()");
    assert_int_equal(queue_claim(db, "n1", 60, &c, &e), 1);
    outcome(&out[0], 1, 1, NULL);
    if (ingest_settle(db, &reg, "n1", &c, rows_path, 0.5, out, &b, &res, &e) != 0)
        fail_msg("settle: %s", err_str(&e));
    assert_int_equal(res.done, 1);
    assert_int_equal(sql_num("SELECT count(*) FROM measurements"), 3);
    assert_int_equal(sql_num("SELECT count(*) FROM jobs WHERE state = 'done' AND last_error IS NULL"), 2);
    assert_int_equal(sql_num("SELECT attempts FROM jobs WHERE item = 'loss'"), 1);

    /* a row of an item nobody asked for: the whole output is refused */
    add_run("it2", "8", 3);
    assert_int_equal(queue_claim(db, "n1", 60, &c, &e), 1);
    write_rows("loss\t1\tloss\t-1\t-1\t-1\t2.5\nheads\t1\tx\t-1\t-1\t-1\t1\n");
    outcome(&out[0], 1, -1, NULL);
    outcome(&out[1], 1, -1, NULL);
    assert_int_equal(ingest_settle(db, &reg, "n1", &c, rows_path, 0.5, out, &b, &res, &e), ERR_FORMAT);
    assert_non_null(strstr(e.msg, "not asked for"));
    assert_int_equal(sql_num("SELECT count(*) FROM measurements WHERE step = 8"), 0);
    unlink(rows_path);
}

/* ---- connection defaults ---- */

/* The value libpq uses for a keyword on a live connection, copied. */
static void conn_option(PGconn *c, const char *key, char *out, size_t n)
{
    PQconninfoOption *opts = PQconninfo(c);
    assert_non_null(opts);
    snprintf(out, n, "(unset)");
    for (PQconninfoOption *o = opts; o->keyword; o++)
        if (strcmp(o->keyword, key) == 0 && o->val)
            snprintf(out, n, "%s", o->val);
    PQconninfoFree(opts);
}

static void expect_option(PGconn *c, const char *key, const char *want)
{
    char got[512];
    conn_option(c, key, got, sizeof got);
    if (strcmp(got, want) != 0)
        fail_msg("%s: '%s', expected '%s'", key, got, want);
}

static void test_conn_defaults(void **state)
{
    (void)state;
    struct err e;
    char opt[512];
    struct db *d = db_new(conninfo);
    assert_int_equal(db_connect_wait(d, 10, &e), 0);
    expect_option(db_conn(d), "keepalives", "1");
    expect_option(db_conn(d), "keepalives_idle", "10");
    expect_option(db_conn(d), "keepalives_interval", "5");
    expect_option(db_conn(d), "keepalives_count", "3");
    expect_option(db_conn(d), "tcp_user_timeout", "15000");
    expect_option(db_conn(d), "connect_timeout", "10");
    conn_option(db_conn(d), "options", opt, sizeof opt);
    assert_non_null(strstr(opt, "-c tcp_keepalives_idle=10"));
    assert_non_null(strstr(opt, "-c tcp_user_timeout=15000"));
    db_free(d);

    /* the conninfo names its own: they win, the rest stay */
    if (strncmp(conninfo, "postgres", 8) != 0) { /* key=value form: append */
        char ci[1200];
        snprintf(ci, sizeof ci, "%s keepalives_idle=42 tcp_user_timeout=2500 options='-c work_mem=8MB'", conninfo);
        d = db_new(ci);
        assert_int_equal(db_connect_wait(d, 10, &e), 0);
        expect_option(db_conn(d), "keepalives_idle", "42");
        expect_option(db_conn(d), "tcp_user_timeout", "2500");
        expect_option(db_conn(d), "keepalives_interval", "5");
        expect_option(db_conn(d), "options", "-c work_mem=8MB");
        PGresult *r = db_exec(d, "SHOW work_mem", 0, NULL, &e);
        assert_non_null(r);
        assert_string_equal(PQgetvalue(r, 0, 0), "8MB");
        PQclear(r);
        db_free(d);
    }

    /* so does the environment libpq reads */
    setenv("PGCONNECT_TIMEOUT", "7", 1);
    d = db_new(conninfo);
    assert_int_equal(db_connect_wait(d, 10, &e), 0);
    expect_option(db_conn(d), "connect_timeout", "7");
    db_free(d);
    unsetenv("PGCONNECT_TIMEOUT");
}

/* One value of a one-parameter statement on d. */
static long long exec_one(struct db *d, const char *sql, const char *arg)
{
    const char *p[1] = {arg};
    struct err e;
    PGresult *r = db_exec(d, sql, 1, p, &e);
    if (!r)
        fail_msg("%s: %s", sql, err_str(&e));
    long long v = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

/* How many statements the session of d has prepared with this text. */
static long long prepared_count(struct db *d, const char *sql)
{
    return exec_one(d, "SELECT count(*) FROM pg_prepared_statements WHERE statement = $1", sql);
}

/* db_exec prepares a statement with parameters at its second use and runs
 * it by name after: the answers are those of the text; a statement used
 * once is not prepared; a prepare inside a rolled-back transaction
 * survives; a new connection prepares again; a schema change that
 * outdates a prepared plan costs no failure outside a transaction. */
static void test_prepared(void **state)
{
    (void)state;
    struct err e;
    struct db *d = db_new(conninfo);
    assert_int_equal(db_connect_wait(d, 10, &e), 0);
    const char *twice = "SELECT $1::int * 2";
    assert_int_equal(exec_one(d, twice, "3"), 6);
    assert_int_equal(prepared_count(d, twice), 0);
    assert_int_equal(exec_one(d, twice, "4"), 8);
    assert_int_equal(prepared_count(d, twice), 1);
    assert_int_equal(exec_one(d, twice, "-5"), -10);
    assert_int_equal(prepared_count(d, twice), 1);
    /* prepared inside a transaction that is rolled back: still there */
    const char *tx = "SELECT $1::int + 1";
    assert_int_equal(db_run(d, "BEGIN", 0, NULL, &e), 0);
    assert_int_equal(exec_one(d, tx, "1"), 2);
    assert_int_equal(exec_one(d, tx, "2"), 3);
    db_rollback(d);
    assert_int_equal(exec_one(d, tx, "3"), 4);
    assert_int_equal(prepared_count(d, tx), 1);
    /* a new connection: nothing prepared on it, prepared again */
    db_lost(d);
    assert_int_equal(db_connect_wait(d, 10, &e), 0);
    assert_int_equal(prepared_count(d, twice), 0);
    assert_int_equal(exec_one(d, twice, "6"), 12);
    assert_int_equal(exec_one(d, twice, "7"), 14);
    assert_int_equal(prepared_count(d, twice), 1);
    /* the table's columns change under a prepared SELECT * */
    sql_do("DROP TABLE IF EXISTS prep_t");
    sql_do("CREATE TABLE prep_t (a int)");
    sql_do("INSERT INTO prep_t VALUES (1), (2)");
    const char *star = "SELECT * FROM prep_t WHERE a = $1";
    const char *p[1] = {"2"};
    for (int i = 0; i < 2; i++) {
        PGresult *r = db_exec(d, star, 1, p, &e);
        assert_non_null(r);
        assert_int_equal(PQnfields(r), 1);
        PQclear(r);
    }
    assert_int_equal(prepared_count(d, star), 1);
    sql_do("ALTER TABLE prep_t ADD COLUMN b int DEFAULT 7");
    PGresult *r = db_exec(d, star, 1, p, &e);
    if (!r)
        fail_msg("after the schema change: %s", err_str(&e));
    assert_int_equal(PQnfields(r), 2);
    assert_string_equal(PQgetvalue(r, 0, 1), "7");
    PQclear(r);
    sql_do("DROP TABLE prep_t");
    /* a statement's own error is its own */
    const char *bad = "SELECT 1 / $1::int";
    const char *zero[1] = {"0"};
    for (int i = 0; i < 3; i++) {
        assert_null(db_exec(d, bad, 1, zero, &e));
        assert_non_null(strstr(e.msg, "division by zero"));
    }
    assert_int_equal(exec_one(d, bad, "1"), 1);
    db_free(d);
}

int main(void)
{
    conninfo = getenv("CKPTD_TEST_DB");
    if (!conninfo) {
        printf("test_daemon_queue: skipped (needs CKPTD_TEST_DB; tests/daemon_queue.sh sets it)\n");
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_claim_concurrent, clean),
        cmocka_unit_test_setup(test_claim_locks_one, clean),
        cmocka_unit_test_setup(test_claim_too_many, clean),
        cmocka_unit_test_setup(test_lifecycle, clean),
        cmocka_unit_test_setup(test_claim_whole_checkpoint, clean),
        cmocka_unit_test_setup(test_ingest, clean),
        cmocka_unit_test_setup(test_settle_items, clean),
        cmocka_unit_test(test_conn_defaults),
        cmocka_unit_test(test_prepared),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
