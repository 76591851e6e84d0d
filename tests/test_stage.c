/*
 * test_stage - daemon/fetch/stage.h, one checkpoint brought into reach of
 * a worker, without the network (downloads are tests/fetch_*.sh's):
 *
 *   file://   read in place: the directory is the source's, the files
 *             chosen as the hub order says (config.json and the weights,
 *             shards through their index), each with its size and sha256
 *             (checked against sha256sum), nothing downloaded or cached;
 *             a step that is not there, or a directory without weights,
 *             fails naming what is missing
 *   hf cache  an hf:// source offline (HF_HUB_OFFLINE) whose revision is in
 *             the HuggingFace cache: its files linked into ckptd's cache by
 *             their hashes, the snapshot directory for the worker; staged
 *             again, it is a cache hit; the snapshot is pinned while staged
 *   offline   an hf:// revision in neither cache fails naming
 *             HF_HUB_OFFLINE, and so does discovering an hf:// run's steps;
 *             discovery of a file:// run is refused
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

#include "daemon/fetch/cache.h"
#include "daemon/fetch/fetch.h"
#include "daemon/fetch/stage.h"
#include "daemon/ops/config.h"
#include "tests/lib/test_files.h"

static char dir[64];
static struct fetcher *fetcher;
static struct cache *cache;

static void put(const char *path, const char *text)
{
    char *cmd = xasprintf("mkdir -p \"$(dirname '%s')\"", path);
    assert_int_equal(system(cmd), 0);
    free(cmd);
    put_text(path, text);
}

static void sha256sum(const char *path, char out[65])
{
    char *cmd = xasprintf("sha256sum < '%s' | cut -c1-64", path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    assert_non_null(fgets(out, 65, p));
    pclose(p);
    free(cmd);
}

/* Poll until done or failed; the last stage_poll result. */
static int run_stage(struct stage *st, struct err *e)
{
    int rc;
    for (int i = 0; (rc = stage_poll(st, e)) == 0; i++) {
        if (i > 2000)
            fail_msg("stage still working after 2000 polls");
        fetcher_run(fetcher, NULL, 0, 10);
    }
    return rc;
}

static void test_file_source(void **state)
{
    (void)state;
    struct err e;
    char *cfg = xasprintf("%s/ck/step3/config.json", dir), *w = xasprintf("%s/ck/step3/model.safetensors", dir);
    char *extra = xasprintf("%s/ck/step3/notes.txt", dir);
    put(cfg, "{\"model_type\": \"gpt_neox\"}");
    put(w, "not really weights, but bytes");
    put(extra, "not a checkpoint file");
    char *src = xasprintf("file://%s/ck/step{step}", dir);
    struct stage *st = stage_new(fetcher, cache, src, 3, 0, &e);
    if (!st)
        fail_msg("stage_new: %s", err_str(&e));
    assert_int_equal(run_stage(st, &e), 1);
    char *want_dir = xasprintf("%s/ck/step3", dir);
    assert_string_equal(stage_dir(st), want_dir);
    assert_string_equal(stage_key(st), "");
    const struct hub_files *fs = stage_files(st);
    assert_int_equal(fs->n, 2);
    char sha[65];
    const struct hub_file *m = hub_files_find(fs, "model.safetensors");
    assert_non_null(m);
    sha256sum(w, sha);
    assert_string_equal(m->sha256, sha);
    assert_int_equal(m->size, (long long)strlen("not really weights, but bytes"));
    sha256sum(cfg, sha);
    assert_string_equal(hub_files_find(fs, "config.json")->sha256, sha);
    assert_null(hub_files_find(fs, "notes.txt"));
    assert_int_equal(stage_downloaded(st), 0);
    assert_int_equal(stage_poll(st, &e), 1); /* done stays done */
    stage_free(st);
    /* a step that is not there; a directory without weights */
    st = stage_new(fetcher, cache, src, 4, 0, &e);
    err_clear(&e);
    assert_true(!st || run_stage(st, &e) < 0);
    assert_non_null(strstr(err_str(&e), "step4"));
    stage_free(st);
    char *cfg5 = xasprintf("%s/ck/step5/config.json", dir);
    put(cfg5, "{}");
    st = stage_new(fetcher, cache, src, 5, 0, &e);
    err_clear(&e);
    assert_true(!st || run_stage(st, &e) < 0);
    assert_true(e.msg[0] != '\0');
    stage_free(st);
    free(cfg5);
    free(want_dir);
    free(src);
    free(extra);
    free(w);
    free(cfg);
}

static void test_file_shards(void **state)
{
    (void)state;
    struct err e;
    char *base = xasprintf("%s/sh/step0", dir);
    char *p = xasprintf("%s/config.json", base);
    put(p, "{}");
    free(p);
    p = xasprintf("%s/model.safetensors.index.json", base);
    put(p, "{\"metadata\": {}, \"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\","
           " \"b\": \"model-00002-of-00002.safetensors\"}}");
    free(p);
    p = xasprintf("%s/model-00001-of-00002.safetensors", base);
    put(p, "shard one");
    free(p);
    p = xasprintf("%s/model-00002-of-00002.safetensors", base);
    put(p, "shard two");
    free(p);
    char *src = xasprintf("file://%s/sh/step{step}", dir);
    struct stage *st = stage_new(fetcher, cache, src, 0, 0, &e);
    assert_non_null(st);
    if (run_stage(st, &e) != 1)
        fail_msg("sharded: %s", err_str(&e));
    const struct hub_files *fs = stage_files(st);
    assert_int_equal(fs->n, 4);
    assert_non_null(hub_files_find(fs, "model-00002-of-00002.safetensors"));
    assert_non_null(hub_files_find(fs, "model.safetensors.index.json"));
    stage_free(st);
    free(src);
    free(base);
}

/* The HuggingFace cache's layout for Org/Name at revision step8. */
static void make_hf_cache(const char *hub)
{
    const char *commit = "0123456789abcdef0123456789abcdef01234567";
    char *p = xasprintf("%s/models--Org--Name/refs/step8", hub);
    put(p, commit);
    free(p);
    const char *files[2][2] = {{"config.json", "{\"model_type\": \"gpt_neox\"}"},
                               {"model.safetensors", "weights from the hub cache"}};
    for (int i = 0; i < 2; i++) {
        char *blob = xasprintf("%s/models--Org--Name/blobs/blob%d", hub, i);
        put(blob, files[i][1]);
        char sha[65];
        sha256sum(blob, sha);
        char *named = xasprintf("%s/models--Org--Name/blobs/%s", hub, sha);
        assert_int_equal(rename(blob, named), 0);
        char *link = xasprintf("%s/models--Org--Name/snapshots/%s/%s", hub, commit, files[i][0]);
        char *mk = xasprintf("mkdir -p \"$(dirname '%s')\"", link);
        assert_int_equal(system(mk), 0);
        assert_int_equal(symlink(named, link), 0);
        free(mk);
        free(link);
        free(named);
        free(blob);
    }
}

static void test_hf_cache_offline(void **state)
{
    (void)state;
    struct err e;
    char *hub = xasprintf("%s/hf/hub", dir);
    make_hf_cache(hub);
    setenv("HF_HUB_CACHE", hub, 1);
    struct stage *st = stage_new(fetcher, cache, "hf://Org/Name", 8, 1, &e);
    if (!st)
        fail_msg("stage_new: %s", err_str(&e));
    if (run_stage(st, &e) != 1)
        fail_msg("from the HF cache: %s", err_str(&e));
    assert_true(stage_key(st)[0] != '\0');
    assert_int_equal(strncmp(stage_dir(st), cache_root(cache), strlen(cache_root(cache))), 0);
    char *w = xasprintf("%s/model.safetensors", stage_dir(st));
    char *got = slurp(w, NULL);
    assert_string_equal(got, "weights from the hub cache");
    free(got);
    const struct hub_file *m = hub_files_find(stage_files(st), "model.safetensors");
    assert_non_null(m);
    char sha[65];
    sha256sum(w, sha);
    assert_string_equal(m->sha256, sha);
    assert_true(cache_has_blob(cache, sha));
    assert_int_equal(stage_downloaded(st), 0);
    char key[256];
    snprintf(key, sizeof key, "%s", stage_key(st));
    stage_free(st);
    /* again, with the HuggingFace cache gone: ckptd's own cache has it */
    unsetenv("HF_HUB_CACHE");
    setenv("HF_HOME", dir, 1); /* $dir/hub does not exist */
    st = stage_new(fetcher, cache, "hf://Org/Name", 8, 1, &e);
    assert_non_null(st);
    if (run_stage(st, &e) != 1)
        fail_msg("cache hit: %s", err_str(&e));
    assert_string_equal(stage_key(st), key);
    got = slurp(w, NULL);
    assert_string_equal(got, "weights from the hub cache");
    free(got);
    stage_free(st);
    /* a revision in neither cache, offline: says why */
    st = stage_new(fetcher, cache, "hf://Org/Name", 9, 1, &e);
    err_clear(&e);
    assert_true(!st || run_stage(st, &e) < 0);
    assert_non_null(strstr(err_str(&e), "HF_HUB_OFFLINE"));
    stage_free(st);
    unsetenv("HF_HOME");
    free(w);
    free(hub);
}

static void test_discover(void **state)
{
    (void)state;
    struct err e;
    long long *steps = NULL;
    int n = -1;
    err_clear(&e);
    assert_int_equal(stage_discover_steps(fetcher, "file:///x/step{step}", 0, &steps, &n, &e), ERR_INVALID);
    err_clear(&e);
    assert_int_equal(stage_discover_steps(fetcher, "hf://Org/Name", 1, &steps, &n, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "HF_HUB_OFFLINE"));
    assert_null(steps);
}

static int setup(void **state)
{
    (void)state;
    struct err e;
    if (scratch_make(dir, sizeof dir, "ckptd_test_stage_") < 0)
        return -1;
    struct daemon_config cfg;
    daemon_config_defaults(&cfg);
    struct fetch_opts fo;
    daemon_config_fetch_opts(&cfg, &fo);
    char *root = xasprintf("%s/cache", dir);
    fetcher = fetcher_new(&fo, &e);
    cache = cache_open(root, 0, &e);
    free(root);
    unsetenv("HF_HUB_CACHE");
    unsetenv("HF_HOME");
    return fetcher && cache ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    cache_close(cache);
    fetcher_free(fetcher);
    return scratch_remove(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_file_source),      cmocka_unit_test(test_file_shards),
        cmocka_unit_test(test_hf_cache_offline), cmocka_unit_test(test_discover),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
