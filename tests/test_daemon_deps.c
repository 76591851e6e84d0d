/*
 * test_daemon_deps - job dependencies in the claim, the artifacts table and
 * SAE feature lineages, against a real PostgreSQL (tests/daemon_deps.sh).
 *
 * The battery here has loss (no needs), sae (needs artifacts and
 * prev_artifacts, no dependency: reads the previous checkpoint only with
 * the run option sae_warm_start) and sae_match (depends on sae, reads the
 * previous checkpoint), enqueued in the order loss, sae_match, sae so the
 * claim has to reorder them.
 *
 *  - cold start: each claim of a fresh checkpoint takes loss and sae but
 *    not sae_match (sae would see the --prev-artifacts that sae_match
 *    needs); sae_match of step s is claimable only once sae of s is done
 *    and sae of the previous step is not queued or running, and gets
 *    prev_step = that step when its sae job is done, -1 at the first step;
 *    a sae job that dies takes the same checkpoint's queued sae_match with
 *    it (last_error says why), and retrying the sae job by id brings both
 *    back.
 *  - warm start: sae and sae_match of step 0 in one claim, sae first; the
 *    next steps' sae wait for the previous sae (the claim takes loss
 *    alone); once it is done, sae and sae_match of step 1 come together
 *    with prev_step 0; when the previous sae is dead, the next sae runs
 *    with prev_step -1.
 *  - the previous checkpoint is the previous one not marked a duplicate;
 *    a previous checkpoint without a sae job means no prev_step.
 *  - ingest: the files under the claimed items' artifact directories are
 *    recorded (path, size, sha256 equal to `sha256sum`'s), in the
 *    transaction of the rows (a rejected ingest records none); recording a
 *    smaller set of files for a kind deletes the rows of the missing ones.
 *  - lineages: sae_match rows of three steps ingested through
 *    ingest_commit give the expected sae_features (density and mean
 *    activation joined from the sae rows, stored by an earlier claim),
 *    lineages (birth, death, last step and feature, length, splits,
 *    split_of); steps stored out of order (0, 2, 1) give the same roots
 *    and lineages as in order.
 *  - lineages extended step by step (steps stored in order) equal a
 *    recompute (lineage_refresh), on the small run and on the large one.
 *  - timing (printed, not asserted): lineage_refresh (a recompute) of one
 *    layer of 154 steps x 4096 features, and lineage_store of the 154th
 *    step (which extends), medians of 5 and 3 runs.
 *
 * Needs CKPTD_TEST_DB; skipped without it.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/path.h"
#include "daemon/base/db.h"
#include "daemon/plan/registry.h"
#include "daemon/plan/source.h"
#include "daemon/store/artifacts.h"
#include "daemon/store/ingest.h"
#include "daemon/store/lineage.h"
#include "daemon/work/queue.h"

static const char battery_json[] =
    "{\"items\": ["
    " {\"name\": \"loss\", \"version\": 1, \"needs\": [], \"metrics\": [{\"name\": \"loss\"}]},"
    " {\"name\": \"sae\", \"version\": 1, \"needs\": [\"eval_tokens\", \"artifacts\", \"prev_artifacts\"],"
    "  \"metrics\": [{\"name\": \"feature_density\"}, {\"name\": \"feature_mean_activation\"}]},"
    " {\"name\": \"sae_match\", \"version\": 1, \"needs\": [\"artifacts\", \"prev_artifacts\"],"
    "  \"depends_on\": \"sae\", \"metrics\": [{\"name\": \"matched_prev\"}, {\"name\": \"match_similarity\"},"
    "  {\"name\": \"best_prev\"}, {\"name\": \"split_parent\"}, {\"name\": \"features_matched\"},"
    "  {\"name\": \"features_born\"}, {\"name\": \"features_died\"}]}"
    "]}";
static const struct queue_item items3[3] = {{"loss", 1}, {"sae_match", 1}, {"sae", 1}};

static const char *conninfo;
static struct db *db;
static struct registry reg;
static char tmp[64];

static long long sql_num(const char *fmt, ...) CK_PRINTF(1, 2);
static long long sql_num(const char *fmt, ...)
{
    char sql[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    struct err e;
    PGresult *r = db_exec(db, sql, 0, NULL, &e);
    if (!r)
        fail_msg("%s: %s", sql, err_str(&e));
    if (PQntuples(r) != 1 || PQgetisnull(r, 0, 0))
        fail_msg("%s: %d rows or NULL", sql, PQntuples(r));
    long long v = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

static void sql_do(const char *fmt, ...) CK_PRINTF(1, 2);
static void sql_do(const char *fmt, ...)
{
    char sql[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    struct err e;
    if (db_run(db, sql, 0, NULL, &e) < 0)
        fail_msg("%s: %s", sql, err_str(&e));
}

/* One text value of a query ("NULL" for a null), for comparisons. */
static void sql_text(char *out, size_t n, const char *fmt, ...) CK_PRINTF(3, 4);
static void sql_text(char *out, size_t n, const char *fmt, ...)
{
    char sql[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    struct err e;
    PGresult *r = db_exec(db, sql, 0, NULL, &e);
    if (!r)
        fail_msg("%s: %s", sql, err_str(&e));
    if (PQntuples(r) != 1)
        fail_msg("%s: %d rows", sql, PQntuples(r));
    snprintf(out, n, "%s", PQgetisnull(r, 0, 0) ? "NULL" : PQgetvalue(r, 0, 0));
    PQclear(r);
}

static void add_run(const char *name, const char *schedule, const struct queue_item *it, int nit,
                    const char *options, int max_attempts)
{
    long long *steps = NULL;
    int n = 0;
    struct err e;
    assert_int_equal(schedule_parse(schedule, &steps, &n, NULL), 0);
    if (queue_add_run(db, name, "file:///nonexistent/step{step}", schedule, steps, n, it, nit,
                      options, max_attempts, NULL, NULL, &e) < 0)
        fail_msg("add run %s: %s", name, err_str(&e));
    free(steps);
}

/* Claim; the items as "a,b" in claim order ("" when nothing). */
static int claim(struct claim *c, char *items, size_t n)
{
    struct err e;
    int got = queue_claim(db, "n1", 600, c, &e);
    if (got < 0)
        fail_msg("claim: %s", err_str(&e));
    items[0] = '\0';
    for (int i = 0; got && i < c->njobs; i++)
        snprintf(items + strlen(items), n - strlen(items), "%s%s", i ? "," : "", c->items[i]);
    return got;
}

static void expect_claim(long long step, const char *want_items, long long want_prev)
{
    struct claim c;
    char items[256];
    if (!claim(&c, items, sizeof items))
        fail_msg("nothing claimed; expected step %lld with %s", step, want_items);
    if (c.step != step || strcmp(items, want_items) != 0 || c.prev_step != want_prev)
        fail_msg("claimed step %lld [%s] prev %lld; expected step %lld [%s] prev %lld", c.step,
                 items, c.prev_step, step, want_items, want_prev);
}

static void expect_nothing(void)
{
    struct claim c;
    char items[256];
    if (claim(&c, items, sizeof items))
        fail_msg("claimed step %lld [%s]; expected nothing", c.step, items);
}

/* Mark one job done (as ingest would). */
static void done(const char *run, long long step, const char *item)
{
    sql_do("UPDATE jobs j SET state = 'done', lease_owner = NULL, lease_expires = NULL,"
           " finished_at = now() FROM job_list l WHERE l.id = j.id AND l.run = '%s' AND l.step = %lld"
           " AND l.item = '%s'", run, step, item);
}

static long long job_id(const char *run, long long step, const char *item)
{
    return sql_num("SELECT id FROM job_list WHERE run = '%s' AND step = %lld AND item = '%s'", run,
                   step, item);
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
    snprintf(tmp, sizeof tmp, "/tmp/ckd-deps-XXXXXX");
    return mkdtemp(tmp) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmp);
    registry_free(&reg);
    db_free(db);
    return 0;
}

static int clean(void **state)
{
    (void)state;
    return db_run(db, "TRUNCATE runs, checkpoints, jobs, measurements, artifacts, sae_features,"
                      " feature_lineages CASCADE", 0, NULL, NULL) == 0 ? 0 : -1;
}

/* ---- the claim ---- */

static void test_registry_items(void **state)
{
    (void)state;
    const struct reg_item *ri = registry_item(&reg, "sae_match");
    assert_non_null(ri);
    assert_string_equal(ri->depends_on, "sae");
    assert_true(ri->needs_artifacts && ri->needs_prev_artifacts && !ri->needs_task);
    assert_string_equal(registry_item(&reg, "loss")->depends_on, "");
    assert_int_equal(sql_num("SELECT count(*) FROM battery_items WHERE item = 'sae_match'"
                             " AND depends_on = 'sae' AND needs = '{artifacts,prev_artifacts}'"), 1);
    assert_int_equal(sql_num("SELECT count(*) FROM battery_items WHERE item = 'loss' AND depends_on IS NULL"), 1);
    struct registry bad;
    struct err e;
    assert_int_equal(registry_parse(&bad, "{\"items\": [{\"name\": \"x\", \"version\": 1, \"depends_on\": 3}]}", &e),
                     ERR_FORMAT);
    assert_non_null(strstr(e.msg, "depends_on"));
}

static void test_cold(void **state)
{
    (void)state;
    struct err e;
    struct backoff none = {0, 0};
    add_run("cold", "0,1,2", items3, 3, "{}", 1);
    expect_claim(0, "loss,sae", -1);
    expect_claim(1, "loss,sae", -1);
    expect_claim(2, "loss,sae", -1);
    expect_nothing(); /* every sae_match waits for its sae */
    done("cold", 0, "sae");
    expect_claim(0, "sae_match", -1); /* the first step: no previous checkpoint */
    expect_nothing();                 /* sae_match 1: sae 1 still running */
    done("cold", 1, "sae");
    expect_claim(1, "sae_match", 0);

    /* sae 2 fails for good: sae_match 2 can never run */
    long long ids[2] = {job_id("cold", 2, "loss"), job_id("cold", 2, "sae")};
    assert_int_equal(queue_fail(db, "n1", ids, 2, "worker exited with status 1", &none, &e), 0);
    assert_int_equal(sql_num("SELECT count(*) FROM job_list WHERE run = 'cold' AND step = 2"
                             " AND item = 'sae_match' AND state = 'dead'"
                             " AND last_error LIKE 'depends on sae (job %lld) of this checkpoint,"
                             " which failed for good: worker exited with status 1'", ids[1]), 1);
    expect_nothing();
    /* retrying the sae job brings its dependant back, not the loss job */
    char id[32];
    snprintf(id, sizeof id, "%lld", ids[1]);
    assert_int_equal(queue_retry(db, id, &e), 2);
    expect_claim(2, "sae", -1);
    done("cold", 2, "sae");
    expect_claim(2, "sae_match", 1);
    expect_nothing();
}

static void test_warm(void **state)
{
    (void)state;
    struct err e;
    struct backoff none = {0, 0};
    add_run("warm", "0,1,2,3", items3, 3, "{\"sae_warm_start\": true}", 1);
    expect_claim(0, "loss,sae,sae_match", -1); /* sae before sae_match, though added after */
    expect_claim(1, "loss", -1);               /* sae 1 waits for sae 0, sae_match 1 for sae 1 */
    expect_claim(2, "loss", -1);
    expect_claim(3, "loss", -1);
    expect_nothing();
    done("warm", 0, "sae");
    done("warm", 0, "sae_match");
    expect_claim(1, "sae,sae_match", 0);
    expect_nothing(); /* step 2 waits for step 1's sae */
    /* sae 1 dies (and its sae_match with it, same claim): step 2 starts cold */
    long long ids[2] = {job_id("warm", 1, "sae"), job_id("warm", 1, "sae_match")};
    assert_int_equal(queue_fail(db, "n1", ids, 2, "killed", &none, &e), 0);
    assert_int_equal(sql_num("SELECT count(*) FROM job_list WHERE run = 'warm' AND step = 1"
                             " AND state = 'dead'"), 2);
    expect_claim(2, "sae,sae_match", -1);
    done("warm", 2, "sae");
    done("warm", 2, "sae_match");
    expect_claim(3, "sae,sae_match", 2);
}

static void test_prev_checkpoint(void **state)
{
    (void)state;
    add_run("dup", "0,1,2", items3, 3, "{}", 3);
    for (int s = 0; s < 3; s++)
        expect_claim(s, "loss,sae", -1);
    for (int s = 0; s < 3; s++)
        done("dup", s, "sae");
    /* step 1 has the weights of step 0: step 2's previous checkpoint is 0 */
    sql_do("UPDATE checkpoints c SET duplicate_of = o.id FROM checkpoints o, runs r"
           " WHERE r.name = 'dup' AND c.run_id = r.id AND o.run_id = r.id AND c.step = 1 AND o.step = 0");
    expect_claim(0, "sae_match", -1);
    expect_claim(1, "sae_match", 0);
    expect_claim(2, "sae_match", 0);

    /* a previous checkpoint without a sae job: runs without prev */
    static const struct queue_item two[2] = {{"loss", 1}, {"sae", 1}};
    add_run("nosae", "0", two, 2, "{}", 3);
    add_run("nosae", "0,1", items3, 3, "{}", 3); /* step 1 gets all three; step 0 sae_match */
    sql_do("DELETE FROM jobs j USING job_list l WHERE l.id = j.id AND l.run = 'nosae' AND l.step = 0");
    expect_claim(1, "loss,sae", -1);
    done("nosae", 1, "sae");
    expect_claim(1, "sae_match", -1);
}

/* ---- ingest: artifacts and lineages ---- */

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

/* sha256 of a file by the sha256sum tool, an implementation other than ours */
static void sha256sum(const char *path, char out[65])
{
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "sha256sum '%s'", path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    assert_int_equal(fscanf(p, "%64s", out), 1);
    pclose(p);
}

static void ingest(struct claim *c, const char *rows, int want_rc)
{
    char path[128];
    snprintf(path, sizeof path, "%s/rows.tsv", tmp);
    write_text(path, rows);
    struct err e;
    long n = 0;
    err_clear(&e);
    int rc = ingest_commit(db, &reg, "n1", c, path, 0.5, &n, &e);
    if (rc != want_rc)
        fail_msg("ingest: rc %d (%s), expected %d", rc, err_str(&e), want_rc);
}

static void test_artifacts(void **state)
{
    (void)state;
    static const struct queue_item two[2] = {{"loss", 1}, {"sae", 1}};
    add_run("org/arts", "0", two, 2, "{}", 3);
    struct claim c;
    char items[256], dir[1024], file[1200], sha[65];
    assert_int_equal(claim(&c, items, sizeof items), 1);
    assert_string_equal(items, "loss,sae");
    /* a stale file from an earlier attempt is removed before the worker */
    struct err e;
    snprintf(dir, sizeof dir, "%s/art/org/arts/step0/sae/old", tmp);
    assert_int_equal(path_mkdir_p(dir, &e), 0);
    snprintf(file, sizeof file, "%s/half.bin", dir);
    write_text(file, "half-written");
    char root[128], stepdir[512];
    snprintf(root, sizeof root, "%s/art", tmp);
    const char *its[1] = {"sae"};
    assert_int_equal(artifacts_prepare(root, c.run, c.step, its, 1, stepdir, sizeof stepdir, &e), 0);
    assert_int_equal(access(file, F_OK), -1);
    snprintf(dir, sizeof dir, "%s/sae/blocks.0.hook_resid_post", stepdir);
    assert_int_equal(path_mkdir_p(dir, &e), 0);
    snprintf(file, sizeof file, "%s/cfg.json", dir);
    write_text(file, "{\"d_in\": 4}\n");
    snprintf(file, sizeof file, "%s/sae_weights.safetensors", dir);
    write_text(file, "weights, as far as this test is concerned");
    snprintf(c.artifact_dir, sizeof c.artifact_dir, "%s", root);

    /* rejected rows: nothing recorded */
    ingest(&c, "loss\t1\tloss\t-1\t-1\t-1\t2.5\n", ERR_FORMAT);
    assert_int_equal(sql_num("SELECT count(*) FROM artifacts"), 0);
    ingest(&c, "loss\t1\tloss\t-1\t-1\t-1\t2.5\nsae\t1\tfeature_density\t0\t-1\t0\t0.5\n", 0);
    assert_int_equal(sql_num("SELECT count(*) FROM artifacts WHERE kind = 'sae' AND step = 0"
                             " AND job_id = %lld", job_id("org/arts", 0, "sae")), 2);
    sha256sum(file, sha);
    assert_int_equal(sql_num("SELECT count(*) FROM artifacts WHERE path ="
                             " 'org/arts/step0/sae/blocks.0.hook_resid_post/sae_weights.safetensors'"
                             " AND sha256 = '%s' AND size = 41", sha), 1);
    assert_int_equal(sql_num("SELECT count(*) FROM artifacts WHERE path ="
                             " 'org/arts/step0/sae/blocks.0.hook_resid_post/cfg.json' AND size = 12"), 1);

    /* a later job of the item with one file: the other row goes */
    assert_int_equal(unlink(file), 0);
    struct artifact_list l;
    memset(&l, 0, sizeof l);
    assert_int_equal(artifacts_scan(&l, root, c.run, 0, "sae", job_id("org/arts", 0, "sae"), &e), 0);
    assert_int_equal(l.n, 1);
    assert_int_equal(db_run(db, "BEGIN", 0, NULL, &e), 0);
    if (artifacts_record(db, c.run_id, 0, &l, &e) < 0)
        fail_msg("record: %s", err_str(&e));
    assert_int_equal(db_run(db, "COMMIT", 0, NULL, &e), 0);
    artifacts_list_free(&l);
    assert_int_equal(sql_num("SELECT count(*) FROM artifacts"), 1);
    assert_int_equal(sql_num("SELECT count(*) FROM artifacts WHERE path LIKE '%%cfg.json'"), 1);

    /* run names that are not relative paths */
    assert_int_equal(artifacts_step_dir(dir, sizeof dir, root, "a/../b", 1, &e), ERR_INVALID);
    assert_int_equal(artifacts_step_dir(dir, sizeof dir, root, "/abs", 1, &e), ERR_INVALID);
    assert_int_equal(artifacts_step_dir(dir, sizeof dir, root, "a//b", 1, &e), ERR_INVALID);
    assert_int_equal(artifacts_step_dir(dir, sizeof dir, root, "a/b", 7, &e), 0);
}

/* sae_match rows of one site (layer 0): matched/best/split per feature
 * (-1 for none), similarity */
static void match_rows(char *out, size_t n, int nf, const int *matched, const int *split)
{
    out[0] = '\0';
    for (int i = 0; i < nf; i++) {
        int m = matched ? matched[i] : -1, s = split ? split[i] : -1;
        const char *sim = !matched ? "NaN" : m >= 0 ? "0.95" : s >= 0 ? "0.75" : "0.3";
        int best = !matched ? -1 : m >= 0 ? m : s >= 0 ? s : 0;
        snprintf(out + strlen(out), n - strlen(out),
                 "sae_match\t1\tmatched_prev\t0\t-1\t%d\t%d\n"
                 "sae_match\t1\tmatch_similarity\t0\t-1\t%d\t%s\n"
                 "sae_match\t1\tbest_prev\t0\t-1\t%d\t%d\n"
                 "sae_match\t1\tsplit_parent\t0\t-1\t%d\t%d\n",
                 i, m, i, sim, i, best, i, s);
    }
    snprintf(out + strlen(out), n - strlen(out), "sae_match\t1\tfeatures_born\t0\t-1\t-1\t0\n");
}

static void sae_rows(char *out, size_t n, int nf)
{
    out[0] = '\0';
    for (int i = 0; i < nf; i++)
        snprintf(out + strlen(out), n - strlen(out),
                 "sae\t1\tfeature_density\t0\t-1\t%d\t%g\nsae\t1\tfeature_mean_activation\t0\t-1\t%d\t%g\n",
                 i, 0.01 * (i + 1), i, 1.0 + i);
}

/* The plan: step 0 has features 0,1,2 (all born); step 1: 0 <- prev 2,
 * 1 split off prev 2, 2 <- prev 0, 3 born; prev 1 died; step 2: 0 <- 0,
 * 1 <- 3, 2 <- 1 (feature 2 of step 1 died). */
static const int m1[4] = {2, -1, 0, -1}, s1[4] = {-1, 2, -1, -1};
static const int m2[3] = {0, 3, 1}, s2[3] = {-1, -1, -1};

static void check_lineages(const char *run)
{
    char got[2048];
    sql_text(got, sizeof got,
             "SELECT string_agg(format('%%s:%%s/%%s b%%s d%%s l%%s f%%s n%%s s%%s o%%s', lineage, root_step,"
             " root_feature, birth_step, coalesce(death_step::text, '-'), last_step, last_feature, length,"
             " splits, coalesce(split_of::text, '-')), ' ' ORDER BY lineage)"
             " FROM feature_lineages f JOIN runs r ON r.id = f.run_id WHERE r.name = '%s' AND f.layer = 0", run);
    const char *want = "1:0/0 b0 d20 l10 f2 n2 s0 o- "   /* 0@0 -> 2@10, gone at 20 */
                       "2:0/1 b0 d10 l0 f1 n1 s0 o- "    /* gone at 10 */
                       "3:0/2 b0 d- l20 f0 n3 s1 o- "    /* 2@0 -> 0@10 -> 0@20; split child 1@10 */
                       "4:10/1 b10 d- l20 f2 n2 s0 o3 "  /* the split child: 1@10 -> 2@20 */
                       "5:10/3 b10 d- l20 f1 n2 s0 o-";  /* born at 10: 3@10 -> 1@20 */
    if (strcmp(got, want) != 0)
        fail_msg("lineages of %s:\n  got  %s\n  want %s", run, got, want);
}

static void test_lineage_ingest(void **state)
{
    (void)state;
    static const struct queue_item two[2] = {{"sae_match", 1}, {"sae", 1}};
    add_run("lin", "0,10,20", two, 2, "{}", 3);
    char rows[16384], items[256];
    struct claim c;
    /* sae and sae_match in claims of their own (no warm start): the sae
     * rows were stored by an earlier transaction */
    int nsae = 0, nmatch = 0;
    while (claim(&c, items, sizeof items)) {
        int k = (int)(c.step / 10);
        if (strcmp(items, "sae") == 0) {
            sae_rows(rows, sizeof rows, k == 1 ? 4 : 3);
            nsae++;
        } else {
            assert_string_equal(items, "sae_match");
            assert_int_equal(nmatch, k); /* in step order, each after its sae */
            assert_int_equal(nsae, k + 1);
            assert_int_equal(c.prev_step, k ? 10 * (k - 1) : -1);
            match_rows(rows, sizeof rows, k == 1 ? 4 : 3, k == 0 ? NULL : k == 1 ? m1 : m2,
                       k == 0 ? NULL : k == 1 ? s1 : s2);
            nmatch++;
        }
        ingest(&c, rows, 0);
    }
    assert_int_equal(nmatch, 3);
    assert_int_equal(sql_num("SELECT count(*) FROM sae_features WHERE run_id = %lld", c.run_id), 10);
    /* step 0: born, no similarity; density from the sae rows */
    assert_int_equal(sql_num("SELECT count(*) FROM sae_features WHERE step = 0 AND prev_step IS NULL"
                             " AND matched_prev IS NULL AND similarity IS NULL AND best_prev IS NULL"
                             " AND root_step = 0 AND root_feature = feature"), 3);
    assert_int_equal(sql_num("SELECT count(*) FROM sae_features WHERE step = 10 AND feature = 1"
                             " AND prev_step = 0 AND matched_prev IS NULL AND split_parent = 2"
                             " AND similarity = 0.75 AND best_prev = 2 AND density = 0.02"
                             " AND mean_activation = 2"), 1);
    assert_int_equal(sql_num("SELECT count(*) FROM sae_features WHERE step = 20 AND feature = 0"
                             " AND root_step = 0 AND root_feature = 2 AND similarity = 0.95"), 1);
    check_lineages("lin"); /* extended step by step */
    struct err e;
    assert_int_equal(db_run(db, "BEGIN", 0, NULL, &e), 0);
    assert_int_equal(lineage_refresh(db, c.run_id, 0, &e), 0);
    assert_int_equal(db_run(db, "COMMIT", 0, NULL, &e), 0);
    check_lineages("lin"); /* recomputed: the same */
    /* the example query: born after the first step, alive at the end */
    assert_int_equal(sql_num("SELECT count(*) FROM lineages WHERE run = 'lin' AND birth_step BETWEEN 10 AND 20"
                             " AND death_step IS NULL"), 2);

    /* the same steps stored out of order: 0, 20, 10 */
    add_run("lin2", "0,10,20", two, 2, "{}", 3);
    long long rid = sql_num("SELECT id FROM runs WHERE name = 'lin2'");
    sql_do("INSERT INTO measurements (run_id, step, metric_id, layer, head, idx, value)"
           " SELECT %lld, m.step, m.metric_id, m.layer, m.head, m.idx, m.value FROM measurements m"
           " WHERE m.run_id = %lld", rid, c.run_id);
    const long long order[3] = {0, 20, 10};
    for (int k = 0; k < 3; k++) {
        assert_int_equal(db_run(db, "BEGIN", 0, NULL, &e), 0);
        if (lineage_store(db, rid, order[k], 1, order[k] ? order[k] - 10 : -1, &e) < 0)
            fail_msg("lineage_store: %s", err_str(&e));
        assert_int_equal(db_run(db, "COMMIT", 0, NULL, &e), 0);
    }
    check_lineages("lin2");
    assert_int_equal(sql_num("SELECT count(*) FROM sae_features a JOIN sae_features b USING (layer, step, feature)"
                             " WHERE a.run_id = %lld AND b.run_id = %lld AND a.root_step = b.root_step"
                             " AND a.root_feature = b.root_feature", c.run_id, rid), 10);
}

/* ---- timing ---- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

#define TS 154
#define TF 4096

/* Steps 0..TS-2 of one layer straight into sae_features (about 1 % of the
 * features born per step, a third of those split off), roots computed
 * here; step TS-1's sae_match rows into measurements. */
static void test_timing(void **state)
{
    (void)state;
    static const struct queue_item one[1] = {{"sae_match", 1}};
    add_run("perf", "0", one, 1, "{}", 3);
    long long rid = sql_num("SELECT id FROM runs WHERE name = 'perf'");
    PGconn *conn = db_conn(db);
    int *rs = malloc(sizeof(int) * TF), *rf = malloc(sizeof(int) * TF);
    int *ns = malloc(sizeof(int) * TF), *nfe = malloc(sizeof(int) * TF);
    assert_true(rs && rf && ns && nfe);
    PGresult *r = PQexec(conn, "COPY sae_features (run_id, layer, step, feature, density, mean_activation,"
                               " prev_step, matched_prev, similarity, best_prev, split_parent, root_step,"
                               " root_feature) FROM STDIN");
    assert_int_equal(PQresultStatus(r), PGRES_COPY_IN);
    PQclear(r);
    char line[256];
    for (int k = 0; k < TS - 1; k++) {
        long long step = 1000LL * k;
        for (int f = 0; f < TF; f++) {
            int mp = (f * 5 + k) % TF, born = k == 0 || (f + 31 * k) % 97 == 0;
            int split = k > 0 && born && f % 3 == 0;
            ns[f] = born ? k : rs[mp];
            nfe[f] = born ? f : rf[mp];
            char prev[32] = "\\N", mps[16] = "\\N", sim[8] = "\\N", bp[16] = "\\N", sp[16] = "\\N";
            if (k > 0) {
                snprintf(prev, sizeof prev, "%lld", step - 1000);
                snprintf(sim, sizeof sim, "0.9");
                snprintf(bp, sizeof bp, "%d", mp);
                if (!born)
                    snprintf(mps, sizeof mps, "%d", mp);
                if (split)
                    snprintf(sp, sizeof sp, "%d", mp);
            }
            int len = snprintf(line, sizeof line, "%lld\t0\t%lld\t%d\t0.01\t1\t%s\t%s\t%s\t%s\t%s\t%lld\t%d\n",
                               rid, step, f, prev, mps, sim, bp, sp, 1000LL * ns[f], nfe[f]);
            assert_int_equal(PQputCopyData(conn, line, len), 1);
        }
        memcpy(rs, ns, sizeof(int) * TF);
        memcpy(rf, nfe, sizeof(int) * TF);
    }
    assert_int_equal(PQputCopyEnd(conn, NULL), 1);
    while ((r = PQgetResult(conn))) {
        assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
        PQclear(r);
    }
    /* the last step's sae_match rows */
    r = PQexec(conn, "COPY measurements (run_id, step, metric_id, layer, head, idx, value) FROM STDIN");
    assert_int_equal(PQresultStatus(r), PGRES_COPY_IN);
    PQclear(r);
    const char *mn[4] = {"matched_prev", "match_similarity", "best_prev", "split_parent"};
    int mid[4];
    for (int m = 0; m < 4; m++)
        mid[m] = registry_metric_id(&reg, "sae_match", 1, mn[m]);
    long long last = 1000LL * (TS - 1);
    for (int f = 0; f < TF; f++) {
        int k = TS - 1, mp = (f * 5 + k) % TF, born = (f + 31 * k) % 97 == 0;
        double v[4] = {born ? -1 : mp, 0.9, mp, -1};
        for (int m = 0; m < 4; m++) {
            int len = snprintf(line, sizeof line, "%lld\t%lld\t%d\t0\t-1\t%d\t%g\n", rid, last, mid[m], f, v[m]);
            assert_int_equal(PQputCopyData(conn, line, len), 1);
        }
    }
    assert_int_equal(PQputCopyEnd(conn, NULL), 1);
    while ((r = PQgetResult(conn))) {
        assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
        PQclear(r);
    }
    free(rs);
    free(rf);
    free(ns);
    free(nfe);
    sql_do("ANALYZE sae_features");
    struct err e;
    double t_refresh[5], t_store[3];
    for (int i = 0; i < 5; i++) {
        assert_int_equal(db_run(db, "BEGIN", 0, NULL, &e), 0);
        double t0 = now_s();
        if (lineage_refresh(db, rid, 0, &e) < 0)
            fail_msg("refresh: %s", err_str(&e));
        t_refresh[i] = now_s() - t0;
        assert_int_equal(db_run(db, "COMMIT", 0, NULL, &e), 0);
    }
    long long nlin = sql_num("SELECT count(*) FROM feature_lineages WHERE run_id = %lld", rid);
    long long alive = sql_num("SELECT count(*) FROM feature_lineages WHERE run_id = %lld AND death_step IS NULL", rid);
    assert_int_equal(alive, TF); /* every feature of the last stored step heads a live lineage */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(db_run(db, "BEGIN", 0, NULL, &e), 0);
        double t0 = now_s();
        if (lineage_store(db, rid, last, 1, last - 1000, &e) < 0)
            fail_msg("store: %s", err_str(&e));
        t_store[i] = now_s() - t0;
        assert_int_equal(db_run(db, i == 2 ? "COMMIT" : "ROLLBACK", 0, NULL, &e), 0);
    }
    /* the extended table (the last store was committed) equals a recompute */
    char before[64], after[64];
#define DIGEST "SELECT md5(string_agg(concat_ws(',', lineage, root_step, root_feature, birth_step," \
               " death_step, last_step, length, splits, last_feature, split_of), ' ' ORDER BY lineage))" \
               " FROM feature_lineages WHERE run_id = %lld"
    sql_text(before, sizeof before, DIGEST, rid);
    assert_int_equal(db_run(db, "BEGIN", 0, NULL, &e), 0);
    assert_int_equal(lineage_refresh(db, rid, 0, &e), 0);
    assert_int_equal(db_run(db, "COMMIT", 0, NULL, &e), 0);
    sql_text(after, sizeof after, DIGEST, rid);
    assert_string_equal(before, after);
    assert_int_equal(sql_num("SELECT count(*) FROM sae_features WHERE run_id = %lld", rid), (long long)TS * TF);
    assert_int_equal(sql_num("SELECT count(*) FROM feature_lineages WHERE run_id = %lld AND death_step IS NULL",
                             rid), TF);
    assert_true(sql_num("SELECT max(length) FROM feature_lineages WHERE run_id = %lld", rid) > 1);
    qsort(t_refresh, 5, sizeof *t_refresh, cmp_d);
    qsort(t_store, 3, sizeof *t_store, cmp_d);
    double load[1] = {0};
    if (getloadavg(load, 1) < 1)
        load[0] = -1;
    printf("lineages of %d steps x %d features (%lld lineages before the last step): recompute"
           " (lineage_refresh) median %.3f s (min %.3f); lineage_store of step %d, extending, median"
           " %.3f s (min %.3f); load average %.1f\n",
           TS, TF, nlin, t_refresh[2], t_refresh[0], TS, t_store[1], t_store[0], load[0]);
}

int main(void)
{
    conninfo = getenv("CKPTD_TEST_DB");
    if (!conninfo) {
        printf("test_daemon_deps: skipped (needs CKPTD_TEST_DB; tests/daemon_deps.sh sets it)\n");
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_registry_items, clean),
        cmocka_unit_test_setup(test_cold, clean),
        cmocka_unit_test_setup(test_warm, clean),
        cmocka_unit_test_setup(test_prev_checkpoint, clean),
        cmocka_unit_test_setup(test_artifacts, clean),
        cmocka_unit_test_setup(test_lineage_ingest, clean),
        cmocka_unit_test_setup(test_timing, clean),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
