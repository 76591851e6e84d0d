/*
 * test_fault_alloc - the loaders under allocation failure, SQLite-style:
 * each operation is run with its Nth allocation failing, for N = 1, 2, ...
 * until a run no longer reaches N (tests/lib/failalloc.h), once with only
 * that allocation failing and once with every allocation from the Nth on
 * failing.  Every run must succeed or fail with ERR_NOMEM and a message,
 * its outputs NULL, and leave the bytes held through the allocator where
 * they were (a leak would not); under SANITIZE=address LeakSanitizer and
 * ASan watch every run as well.
 *
 * And an absurd size in a config (a billion layers, 4096 heads, a
 * vocabulary beyond 2^24) is refused by gptneox_create naming the field and
 * its range before a single allocation is made.
 *
 * Operations: st_open and st_set_open (single and sharded safetensors),
 * torchzip_open and the sharded PyTorch set, gptneox_config_load,
 * gptneox_load (config and weights to a model), tokenizer_load with an
 * encode and a decode (a hand-written tokenizer in full; GPT-NeoX-20B's,
 * which makes hundreds of thousands of allocations, at 40 points spread
 * over its load), tokens_read_file (.u16, .npy, .json), npy_read_f32,
 * probe_set_load, sae_load and task_load_json.  Each sweep prints how many
 * allocations a clean run makes and how many runs it took.
 *
 * The files are the tests' own: tests/golden, tests/cases, var/data (the
 * real tokenizer; its sweep is skipped with a message when it is absent).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/lib/failalloc.h"
#include "tests/lib/test_files.h"
#include "workers/battery/probe_set.h"
#include "workers/battery/sae.h"
#include "workers/battery/sae_file.h"
#include "workers/model/config.h"
#include "workers/model/gptneox.h"
#include "workers/model/npy.h"
#include "workers/model/safetensors.h"
#include "workers/model/torchzip.h"
#include "workers/text/tokenizer.h"
#include "workers/text/tokens.h"
#include "workers/train/task.h"

static char tmpdir[64];

/* One operation: does its work, checks and frees what it made on success,
 * checks its outputs are NULL on failure; returns the code. */
typedef int (*op_fn)(const void *arg, struct err *e);

/* Run op with allocation n failing (persist: and every one after); check
 * the outcome.  Returns 1 if the failure was reached. */
static int run_once(const char *what, op_fn op, const void *arg, long n, int persist)
{
    struct err e;
    err_clear(&e);
    long long live = failalloc_live();
    failalloc_arm(n, persist);
    int rc = op(arg, &e);
    int hit = failalloc_disarm();
    if (rc != 0 && rc != ERR_NOMEM)
        fail_msg("%s, allocation %ld failing%s: code %s (%d), expected ok or nomem: %s", what, n,
                 persist ? " and after" : "", err_code_name(rc), rc, err_str(&e));
    if (rc == ERR_NOMEM && (e.code != rc || !e.msg[0]))
        fail_msg("%s, allocation %ld failing: ERR_NOMEM without its message", what, n);
    if (failalloc_live() != live)
        fail_msg("%s, allocation %ld failing%s: %lld bytes %s", what, n, persist ? " and after" : "",
                 failalloc_live() - live, failalloc_live() > live ? "leaked" : "freed twice");
    return hit;
}

/* The whole sweep, transient and then persistent: a clean run to count,
 * then every n (or `samples` points spread over the count when it is
 * larger), then one past the end (a clean run again). */
static void sweep(const char *what, op_fn op, const void *arg, long samples)
{
    long totals[2], runs = 0;
    for (int persist = 0; persist < 2; persist++) {
        struct err e;
        err_clear(&e);
        long long live = failalloc_live();
        failalloc_arm(0, persist);
        int rc = op(arg, &e);
        long total = failalloc_count();
        if (rc != 0)
            fail_msg("%s: the clean run fails: %s", what, err_str(&e));
        assert_int_equal(failalloc_live(), live);
        long step = samples > 0 && total > samples ? total / samples : 1;
        for (long n = 1; n <= total; n += step) {
            if (!run_once(what, op, arg, n, persist))
                fail_msg("%s: allocation %ld of %ld not reached", what, n, total);
            runs++;
        }
        assert_int_equal(run_once(what, op, arg, total + 1, persist), 0);
        totals[persist] = total;
    }
    printf("[ fault ] %-34s %7ld allocations (%ld with jansson's), %5ld failing runs%s\n", what,
           totals[0], totals[1], runs, samples > 0 && totals[1] > samples ? " (sampled)" : "");
}

/* ---- the operations ---- */

static int op_st_open(const void *arg, struct err *e)
{
    struct st_file *st = NULL;
    int rc = st_open(&st, arg, e);
    if (rc < 0) {
        assert_null(st);
        return rc;
    }
    assert_true(st_count(st) > 0);
    st_free(st);
    return 0;
}

static int op_st_set(const void *arg, struct err *e)
{
    struct st_set *set = NULL;
    int rc = st_set_open(&set, arg, e);
    if (rc < 0) {
        assert_null(set);
        return rc;
    }
    assert_true(st_set_count(set) > 0);
    st_set_free(set);
    return 0;
}

static int op_torchzip(const void *arg, struct err *e)
{
    struct st_file *st = NULL;
    int rc = torchzip_open(&st, arg, e);
    if (rc < 0) {
        assert_null(st);
        return rc;
    }
    assert_true(st_count(st) > 0);
    st_free(st);
    return 0;
}

static int op_torchzip_set(const void *arg, struct err *e)
{
    struct st_set *set = NULL;
    int rc = torchzip_set_open(&set, arg, e);
    if (rc < 0) {
        assert_null(set);
        return rc;
    }
    st_set_free(set);
    return 0;
}

static int op_config(const void *arg, struct err *e)
{
    struct gptneox_config cfg;
    return gptneox_config_load(&cfg, arg, e);
}

static int op_model(const void *arg, struct err *e)
{
    struct gptneox *m = NULL;
    int rc = gptneox_load(&m, arg, 0, e);
    if (rc < 0) {
        assert_null(m);
        return rc;
    }
    gptneox_free(m);
    return 0;
}

static int op_tokenizer(const void *arg, struct err *e)
{
    struct tokenizer *tok = NULL;
    int rc = tokenizer_load(&tok, arg, e);
    if (rc < 0) {
        assert_null(tok);
        return rc;
    }
    static const char text[] = "abc ab! b!cd 12<|endoftext|>a   \xc3\xa9";
    int *ids = NULL;
    size_t n = 0;
    char *back = NULL;
    size_t len = 0;
    if ((rc = tokenizer_encode(tok, text, sizeof text - 1, &ids, &n, e)) < 0) {
        assert_null(ids);
    } else if ((rc = tokenizer_decode(tok, ids, n, &back, &len, e)) < 0) {
        assert_null(back);
    } else {
        assert_int_equal(len, sizeof text - 1);
        assert_memory_equal(back, text, len);
    }
    free(back);
    free(ids);
    tokenizer_free(tok);
    return rc;
}

static int op_tokens(const void *arg, struct err *e)
{
    int *tok = NULL, B = 0, T = 0;
    int rc = tokens_read_file(arg, 2, &tok, &B, &T, e);
    if (rc < 0) {
        assert_null(tok);
        return rc;
    }
    assert_true(B >= 1 && T >= 1);
    free(tok);
    return 0;
}

static int op_npy(const void *arg, struct err *e)
{
    float *x = NULL;
    int nd, shape[NPY_MAX_DIMS];
    int rc = npy_read_f32(arg, &x, &nd, shape, e);
    if (rc < 0) {
        assert_null(x);
        return rc;
    }
    free(x);
    return 0;
}

static int op_probe_set(const void *arg, struct err *e)
{
    struct probe_set *ps = NULL;
    int rc = probe_set_load(&ps, arg, e);
    if (rc < 0) {
        assert_null(ps);
        return rc;
    }
    probe_set_free(ps);
    return 0;
}

static int op_sae(const void *arg, struct err *e)
{
    struct sae *s = NULL;
    int rc = sae_load(&s, arg, NULL, e);
    if (rc < 0) {
        assert_null(s);
        return rc;
    }
    sae_free(s);
    return 0;
}

static int op_task(const void *arg, struct err *e)
{
    struct task *t = NULL;
    int rc = task_load_json(&t, arg, e);
    if (rc < 0) {
        assert_null(t);
        return rc;
    }
    task_free(t);
    return 0;
}

/* ---- the tests ---- */

static void test_checkpoints(void **state)
{
    (void)state;
    sweep("st_open", op_st_open, "tests/golden/f32_parallel_rot025/model.safetensors", 0);
    sweep("st_set_open (sharded)", op_st_set, "tests/golden/sharded", 0);
    sweep("torchzip_open", op_torchzip, "tests/golden/torchzip/bin_f32_p2/pytorch_model.bin", 0);
    sweep("torchzip_set_open (sharded)", op_torchzip_set, "tests/golden/torchzip/bin_sharded", 0);
    sweep("torchzip_open (deflated records)", op_torchzip,
          "tests/cases/torchzip/valid_deflated/input.bin", 0);
    sweep("gptneox_config_load", op_config, "tests/golden/f32_parallel_rot025/config.json", 0);
    sweep("gptneox_load", op_model, "tests/golden/f32_parallel_rot025", 0);
    sweep("gptneox_load (pytorch, sharded)", op_model, "tests/golden/torchzip/bin_sharded", 0);
}

static void test_tokenizers(void **state)
{
    (void)state;
    sweep("tokenizer_load + encode + decode", op_tokenizer, "tests/cases/tokenizer/tiny/input.json", 0);
    char path[4096];
    const char *dir = getenv("CKPTD_DATA");
    snprintf(path, sizeof path, "%s/20B_tokenizer.json", dir && *dir ? dir : "var/data");
    if (access(path, R_OK) != 0) {
        printf("[ fault ] %s absent (make tokenizer-data): its sweep is skipped\n", path);
        return;
    }
    sweep("tokenizer_load (GPT-NeoX-20B)", op_tokenizer, path, 40);
}

static void test_inputs(void **state)
{
    (void)state;
    char path[256];
    const int ids[6] = {5, 1, 2, 3, 4, 65535};
    struct err e;
    snprintf(path, sizeof path, "%s/t.u16", tmpdir);
    assert_int_equal(tokens_write_file(path, ids, 6, &e), 0);
    sweep("tokens_read_file (.u16)", op_tokens, path, 0);
    snprintf(path, sizeof path, "%s/t.npy", tmpdir);
    assert_int_equal(tokens_write_file(path, ids, 6, &e), 0);
    sweep("tokens_read_file (.npy)", op_tokens, path, 0);
    snprintf(path, sizeof path, "%s/t.json", tmpdir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("[[1, 2, 3], [4, 5, 6]]", f);
    fclose(f);
    sweep("tokens_read_file (.json)", op_tokens, path, 0);
    sweep("npy_read_f32", op_npy, "tests/golden/probe/binary_Xtr.npy", 0);
    sweep("probe_set_load", op_probe_set, "fuzz/corpus/probe_set/parity", 0);
    sweep("task_load_json (modular addition)", op_task, "fuzz/corpus/task/modadd_p7", 0);
    sweep("task_load_json (induction)", op_task, "fuzz/corpus/task/induction", 0);

    /* an SAE on disk, written by sae_save */
    struct sae *s = NULL;
    assert_int_equal(sae_create(&s, SAE_TOPK, 4, 8, 2, &e), 0);
    sae_init_cold(s, NULL, 0, 3);
    snprintf(path, sizeof path, "%s/sae", tmpdir);
    assert_int_equal(mkdir(path, 0755), 0);
    struct sae_meta meta;
    memset(&meta, 0, sizeof meta);
    meta.hook_name = "blocks.0.hook_resid_post";
    meta.norm_scaling_factor = 1;
    assert_int_equal(sae_save(s, path, &meta, NULL, &e), 0);
    sae_free(s);
    sweep("sae_load", op_sae, path, 0);
}

/* An absurd size in a config filled by hand is refused by gptneox_create,
 * naming the field and its range, before a single allocation. */
static void test_bounds_before_allocation(void **state)
{
    (void)state;
    static const struct {
        const char *field;
        size_t off;
        int value;
    } cases[] = {
        {"\"num_hidden_layers\" = 1073741824 is out of range: allowed 1 to 1024",
         offsetof(struct gptneox_config, n_layers), 1 << 30},
        {"\"num_attention_heads\" = 4096 is out of range: allowed 1 to 1024",
         offsetof(struct gptneox_config, n_heads), 4096},
        {"\"vocab_size\" = 2147483647 is out of range: allowed 1 to 16777216",
         offsetof(struct gptneox_config, vocab_size), 2147483647},
        {"\"hidden_size\" = -64 is out of range", offsetof(struct gptneox_config, d_model), -64},
        {"\"intermediate_size\" = 0 is out of range", offsetof(struct gptneox_config, d_mlp), 0},
        {"\"max_position_embeddings\" = 1073741824 is out of range",
         offsetof(struct gptneox_config, max_positions), 1 << 30},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        struct gptneox_config cfg;
        assert_int_equal(gptneox_config_preset(&cfg, "tiny"), 0);
        *(int *)((char *)&cfg + cases[i].off) = cases[i].value;
        struct gptneox *m = NULL;
        struct err e;
        failalloc_arm(0, 1);
        int rc = gptneox_create(&m, &cfg, &e);
        long n = failalloc_count();
        assert_int_equal(rc, ERR_FORMAT);
        assert_null(m);
        if (!strstr(e.msg, cases[i].field))
            fail_msg("'%s' lacks '%s'", e.msg, cases[i].field);
        if (n != 0)
            fail_msg("%s: %ld allocations before the check", cases[i].field, n);
    }
}

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ckptd-failalloc-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    failalloc_jansson();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checkpoints),
        cmocka_unit_test(test_tokenizers),
        cmocka_unit_test(test_inputs),
        cmocka_unit_test(test_bounds_before_allocation),
    };
    return cmocka_run_group_tests_name("fault_alloc", tests, setup, teardown);
}
