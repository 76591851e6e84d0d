/*
 * test_torchzip.c - PyTorch zip checkpoints: the reader, the format choice
 * of checkpoint directories, and the model loaded from either format.
 *
 * Data: tests/golden/torchzip/ (one tiny GPT-NeoX saved by torch.save as
 * pytorch_model.bin in F32 protocol 2, F16 protocol 4 and sharded, and by
 * an independent writer as model.safetensors) and tests/cases/torchzip/
 * <case>/{input.bin, expected[, tensors.safetensors]}, both written by
 * tests/reference/make_torchzip_fixtures.py.  `expected` is `ok` or
 * "<err_code_name>\t<substring of err_str()>".  Run from the repo root.
 *
 * Tolerance: the model loaded from pytorch_model.bin must give logits
 * bit-identical to the same model loaded from model.safetensors, and within
 * 1e-3 (max |Δ|) of the PyTorch reference in st_f32/golden.safetensors.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zip.h>

#include "tests/lib/test_files.h"
#include "workers/model/checkpoint.h"
#include "workers/model/gptneox.h"
#include "workers/model/safetensors.h"
#include "workers/model/torchzip.h"
#include "workers/text/tokens.h"

#define CASES_DIR "tests/cases/torchzip"
#define GOLD "tests/golden/torchzip"

/* ---- helpers ---- */

static void copy_file(const char *from, const char *to)
{
    size_t n = 0;
    uint8_t *b = slurp(from, &n);
    assert_non_null(b);
    FILE *f = fopen(to, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
    free(b);
}

static int code_by_name(const char *name)
{
    for (int c = 0; c > -ERR_CODE_COUNT; c--)
        if (strcmp(err_code_name(c), name) == 0)
            return c;
    return 1;
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static int setup_tmp(void **state)
{
    char tmpl[] = "/tmp/ckptd-tz-XXXXXX";
    char *d = mkdtemp(tmpl);
    assert_non_null(d);
    *state = strdup(d);
    return 0;
}

static int teardown_tmp(void **state)
{
    nftw(*state, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(*state);
    return 0;
}

/* Same tensor names, dtypes, shapes and bytes, whatever the order. */
static void same_tensors_file(const struct st_file *a, const struct st_file *b, const char *what)
{
    if (st_count(a) != st_count(b))
        fail_msg("%s: %zu tensors vs %zu", what, st_count(a), st_count(b));
    for (size_t i = 0; i < st_count(a); i++) {
        const struct st_tensor *x = st_get(a, i), *y = st_find(b, x->name);
        if (!y)
            fail_msg("%s: tensor \"%s\" missing from the reference", what, x->name);
        assert_int_equal(x->dtype, y->dtype);
        assert_int_equal(x->ndim, y->ndim);
        for (int d = 0; d < x->ndim; d++)
            assert_int_equal(x->shape[d], y->shape[d]);
        assert_int_equal(x->nelem, y->nelem);
        assert_int_equal(x->nbytes, y->nbytes);
        if (x->nbytes && memcmp(x->data, y->data, x->nbytes) != 0)
            fail_msg("%s: tensor \"%s\" differs from the reference", what, x->name);
        assert_ptr_equal(st_find(a, x->name), x);
    }
}

static void same_tensors_set(const struct st_set *a, const struct st_set *b, const char *what)
{
    if (st_set_count(a) != st_set_count(b))
        fail_msg("%s: %zu tensors vs %zu", what, st_set_count(a), st_set_count(b));
    for (size_t i = 0; i < st_set_count(a); i++) {
        const struct st_tensor *x = st_set_get(a, i), *y = st_set_find(b, x->name);
        if (!y)
            fail_msg("%s: tensor \"%s\" missing from the reference", what, x->name);
        assert_int_equal(x->dtype, y->dtype);
        assert_int_equal(x->ndim, y->ndim);
        for (int d = 0; d < x->ndim; d++)
            assert_int_equal(x->shape[d], y->shape[d]);
        assert_int_equal(x->nbytes, y->nbytes);
        if (x->nbytes && memcmp(x->data, y->data, x->nbytes) != 0)
            fail_msg("%s: tensor \"%s\" differs from the reference", what, x->name);
    }
}

static int cmp_strp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ---- data-driven cases ---- */

static void test_cases(void **state)
{
    (void)state;
    DIR *d = opendir(CASES_DIR);
    if (!d)
        fail_msg("cannot open %s (run from the repo root): %s", CASES_DIR, strerror(errno));
    char *names[512];
    size_t nn = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        assert_true(nn < 512);
        names[nn++] = strdup(de->d_name);
    }
    closedir(d);
    qsort(names, nn, sizeof *names, cmp_strp);

    int nok = 0, nerr = 0, compared = 0;
    for (size_t i = 0; i < nn; i++) {
        char *input = xasprintf("%s/%s/input.bin", CASES_DIR, names[i]);
        char *exp_path = xasprintf("%s/%s/expected", CASES_DIR, names[i]);
        char *ref_path = xasprintf("%s/%s/tensors.safetensors", CASES_DIR, names[i]);
        size_t elen = 0;
        char *expected = (char *)slurp(exp_path, &elen);
        if (!expected)
            fail_msg("%s: no expected file", names[i]);
        expected = realloc(expected, elen + 1);
        expected[elen] = '\0';
        expected[strcspn(expected, "\n")] = '\0';

        struct st_file *tz = (struct st_file *)1;
        struct err e;
        err_clear(&e);
        int rc = torchzip_open(&tz, input, &e);
        if (strcmp(expected, "ok") == 0) {
            if (rc != 0)
                fail_msg("%s: want ok, got %s", names[i], err_str(&e));
            struct st_file *ref = NULL;
            if (access(ref_path, R_OK) == 0) {
                if (st_open(&ref, ref_path, &e) < 0)
                    fail_msg("%s: reference: %s", names[i], err_str(&e));
                same_tensors_file(tz, ref, names[i]);
                compared++;
                st_free(ref);
            }
            for (size_t k = 0; k < st_count(tz); k++)
                assert_string_equal(st_get(tz, k)->path, input);
            st_free(tz);
            nok++;
        } else {
            char *tab = strchr(expected, '\t');
            if (!tab)
                fail_msg("%s: expected file needs 'code<TAB>substring'", names[i]);
            *tab = '\0';
            int code = code_by_name(expected);
            if (code > 0)
                fail_msg("%s: unknown code name '%s'", names[i], expected);
            if (rc != code || !strstr(err_str(&e), tab + 1))
                fail_msg("%s: want %s containing '%s', got %s: %s", names[i], expected, tab + 1,
                         err_code_name(rc), err_str(&e));
            assert_null(tz);
            assert_int_equal(e.code, code);
            assert_string_equal(e.ctx, input);
            assert_int_equal(torchzip_open(&tz, input, NULL), code);
            assert_null(tz);
            nerr++;
        }
        free(expected);
        free(ref_path);
        free(exp_path);
        free(input);
        free(names[i]);
    }
    print_message("%d valid (%d compared with safetensors) and %d invalid torchzip cases\n", nok,
                  compared, nerr);
    assert_true(compared >= 4);
    assert_true(nerr >= 30);
}

/* valid_handmade, by value: offsets into a shared storage, _rebuild_tensor
 * (v1) and _rebuild_parameter, a folder not called "archive". */
static void test_handmade_values(void **state)
{
    (void)state;
    struct st_file *tz = NULL;
    struct err e;
    if (torchzip_open(&tz, CASES_DIR "/valid_handmade/input.bin", &e) < 0)
        fail_msg("%s", err_str(&e));
    assert_int_equal(st_count(tz), 3);
    const char *order[3] = {"a", "p", "v1"};
    for (int i = 0; i < 3; i++)
        assert_string_equal(st_get(tz, (size_t)i)->name, order[i]);
    const struct st_tensor *a = st_find(tz, "a"), *v1 = st_find(tz, "v1");
    assert_int_equal(a->ndim, 2);
    assert_int_equal(a->shape[0], 2);
    assert_int_equal(a->shape[1], 3);
    assert_int_equal(v1->ndim, 1);
    assert_int_equal(v1->shape[0], 4);
    /* v1 is elements 2..5 of the storage that `a` starts at: same bytes */
    assert_ptr_equal((const float *)v1->data, (const float *)a->data + 2);
    float f;
    memcpy(&f, v1->data, sizeof f);
    assert_true(f == 2.0f);
    struct stat sb;
    assert_int_equal(stat(CASES_DIR "/valid_handmade/input.bin", &sb), 0);
    assert_int_equal(st_file_size(tz), (size_t)sb.st_size);
    st_free(tz);
}

/* ---- the golden checkpoints ---- */

static void open_pair(const char *bin, const char *st, struct st_set **a, struct st_set **b)
{
    struct err e;
    char *pb = xasprintf("%s/%s", GOLD, bin), *ps = xasprintf("%s/%s", GOLD, st);
    assert_int_equal(checkpoint_format(pb), CHECKPOINT_TORCHZIP);
    assert_int_equal(checkpoint_format(ps), CHECKPOINT_SAFETENSORS);
    if (checkpoint_open(a, pb, &e) < 0)
        fail_msg("%s: %s", bin, err_str(&e));
    if (checkpoint_open(b, ps, &e) < 0)
        fail_msg("%s: %s", st, err_str(&e));
    free(pb);
    free(ps);
}

static void test_golden_tensors(void **state)
{
    (void)state;
    static const char *const pairs[][2] = {
        {"bin_f32_p2", "st_f32"}, {"bin_sharded", "st_f32"}, {"bin_f16_p4", "st_f16"}};
    for (size_t i = 0; i < 3; i++) {
        struct st_set *a = NULL, *b = NULL;
        open_pair(pairs[i][0], pairs[i][1], &a, &b);
        same_tensors_set(a, b, pairs[i][0]);
        /* 2 layers x 12 weights + 4 + 3 legacy buffers per layer */
        assert_int_equal(st_set_count(a), 34);
        assert_int_equal(st_set_nfiles(a), strcmp(pairs[i][0], "bin_sharded") == 0 ? 2 : 1);
        /* torch.save aligns records to 64 bytes and they are mapped in
         * place: every tensor that starts its storage is aligned. */
        if (strcmp(pairs[i][0], "bin_f32_p2") == 0)
            for (size_t k = 0; k < st_set_count(a); k++)
                assert_int_equal((uintptr_t)st_set_get(a, k)->data % 64, 0);
        st_set_free(a);
        st_set_free(b);
    }
}

static float *forward_logits(const char *dir, const int *tok, int B, int T)
{
    struct gptneox *m = NULL;
    struct err e;
    if (gptneox_load(&m, dir, 0, &e) < 0)
        fail_msg("%s: %s", dir, err_str(&e));
    if (gptneox_forward(m, tok, B, T, NULL, 0, &e) < 0)
        fail_msg("%s: %s", dir, err_str(&e));
    size_t n = (size_t)B * T * m->cfg.vocab_size;
    float *out = malloc(n * sizeof *out);
    assert_non_null(out);
    memcpy(out, gptneox_logits(m), n * sizeof *out);
    gptneox_free(m);
    return out;
}

static void test_forward_same_logits(void **state)
{
    (void)state;
    struct err e;
    int *tok = NULL, B = 0, T = 0;
    assert_int_equal(tokens_read_json(GOLD "/st_f32/tokens.json", &tok, &B, &T, &e), 0);
    struct st_file *gold = NULL;
    if (st_open(&gold, GOLD "/st_f32/golden.safetensors", &e) < 0)
        fail_msg("%s", err_str(&e));
    const struct st_tensor *gl = st_find(gold, "logits");
    assert_non_null(gl);
    size_t n = gl->nelem;
    assert_int_equal(n, (size_t)B * T * 64);

    static const char *const pairs[][2] = {
        {"bin_f32_p2", "st_f32"}, {"bin_sharded", "st_f32"}, {"bin_f16_p4", "st_f16"}};
    for (size_t i = 0; i < 3; i++) {
        char *pb = xasprintf("%s/%s", GOLD, pairs[i][0]), *ps = xasprintf("%s/%s", GOLD, pairs[i][1]);
        float *lb = forward_logits(pb, tok, B, T), *ls = forward_logits(ps, tok, B, T);
        if (memcmp(lb, ls, n * sizeof *lb) != 0)
            fail_msg("%s: logits differ from %s", pairs[i][0], pairs[i][1]);
        if (strcmp(pairs[i][1], "st_f32") == 0) {
            double maxd = 0;
            for (size_t k = 0; k < n; k++) {
                float g;
                memcpy(&g, (const float *)gl->data + k, sizeof g);
                double d = fabs((double)lb[k] - g);
                if (d > maxd)
                    maxd = d;
            }
            print_message("%s: max |dlogit| vs PyTorch reference %.3g\n", pairs[i][0], maxd);
            assert_true(maxd <= 1e-3);
        }
        free(lb);
        free(ls);
        free(pb);
        free(ps);
    }
    st_free(gold);
    free(tok);
}

/* The writable load copies everything out of the mapping; the weights
 * stay equal after the set is freed. */
static void test_writable_load(void **state)
{
    (void)state;
    struct gptneox *a = NULL, *b = NULL;
    struct err e;
    assert_int_equal(gptneox_load(&a, GOLD "/bin_f16_p4", GPTNEOX_LOAD_WRITABLE, &e), 0);
    assert_int_equal(gptneox_load(&b, GOLD "/st_f16", 0, &e), 0);
    size_t C = (size_t)a->cfg.d_model, V = (size_t)a->cfg.vocab_size;
    assert_memory_equal(a->embed, b->embed, V * C * sizeof(float));
    assert_memory_equal(a->lnf_b, b->lnf_b, C * sizeof(float));
    assert_memory_equal(a->layers[1].qkv_b, b->layers[1].qkv_b, 3 * C * sizeof(float));
    gptneox_free(a);
    gptneox_free(b);
}

/* ---- directories ---- */

static void test_format_choice(void **state)
{
    const char *dir = *state;
    struct st_set *set = (struct st_set *)1;
    struct err e;

    assert_int_equal(checkpoint_format(dir), CHECKPOINT_NONE);
    assert_int_equal(checkpoint_open(&set, dir, &e), ERR_NOTFOUND);
    assert_null(set);
    assert_non_null(strstr(e.msg, "no model.safetensors, model.safetensors.index.json, "
                                  "pytorch_model.bin or pytorch_model.bin.index.json"));

    char *bin = xasprintf("%s/pytorch_model.bin", dir);
    char *st = xasprintf("%s/model.safetensors", dir);
    copy_file(GOLD "/bin_f16_p4/pytorch_model.bin", bin);
    assert_int_equal(checkpoint_format(dir), CHECKPOINT_TORCHZIP);
    assert_int_equal(checkpoint_open(&set, dir, &e), 0);
    assert_int_equal(st_set_get(set, 0)->dtype, ST_F16);
    assert_string_equal(st_set_file_path(set, 0), bin);
    st_set_free(set);

    /* safetensors wins when both are there */
    copy_file(GOLD "/st_f32/model.safetensors", st);
    assert_int_equal(checkpoint_format(dir), CHECKPOINT_SAFETENSORS);
    assert_int_equal(checkpoint_open(&set, dir, &e), 0);
    assert_int_equal(st_set_find(set, "embed_out.weight")->dtype, ST_F32);
    st_set_free(set);
    assert_int_equal(unlink(st), 0);

    /* an index naming a shard that is not there */
    char *idx = xasprintf("%s/pytorch_model.bin.index.json", dir);
    FILE *f = fopen(idx, "w");
    assert_non_null(f);
    fputs("{\"weight_map\": {\"a\": \"pytorch_model-00001-of-00002.bin\"}}", f);
    fclose(f);
    assert_int_equal(unlink(bin), 0);
    assert_int_equal(torchzip_set_open(&set, dir, &e), ERR_NOTFOUND);
    assert_non_null(strstr(e.msg, "shard named by pytorch_model.bin.index.json"));
    /* a shard present but lacking the tensor the index promises */
    char *shard = xasprintf("%s/pytorch_model-00001-of-00002.bin", dir);
    copy_file(GOLD "/bin_f16_p4/pytorch_model.bin", shard);
    assert_int_equal(torchzip_set_open(&set, dir, &e), ERR_FORMAT);
    assert_non_null(strstr(e.msg, "tensor \"a\" listed in weight_map is not in shard"));
    assert_null(set);
    free(shard);
    free(idx);
    free(st);
    free(bin);
}

/* ---- robustness: data.pkl cut and mutated ---- */

/* Write a zip like torch.save's with `pkl` as archive/data.pkl and the
 * records of valid_handmade: data/0 (6 floats) and data/1 (4 floats). */
static void write_zip(const char *path, const uint8_t *pkl, size_t n)
{
    static const float six[6] = {0, 1, 2, 3, 4, 5}, four[4] = {9, 8, 7, 6};
    int zerr = 0;
    zip_t *z = zip_open(path, ZIP_CREATE | ZIP_TRUNCATE, &zerr);
    assert_non_null(z);
    struct {
        const char *name;
        const void *data;
        size_t len;
    } ent[4] = {{"archive/data.pkl", pkl, n}, {"archive/data/0", six, sizeof six},
                {"archive/data/1", four, sizeof four}, {"archive/version", "3\n", 2}};
    for (int i = 0; i < 4; i++) {
        zip_source_t *s = zip_source_buffer(z, ent[i].data, ent[i].len, 0);
        assert_non_null(s);
        zip_int64_t idx = zip_file_add(z, ent[i].name, s, ZIP_FL_OVERWRITE);
        assert_true(idx >= 0);
        assert_int_equal(zip_set_file_compression(z, (zip_uint64_t)idx, ZIP_CM_STORE, 0), 0);
    }
    assert_int_equal(zip_close(z), 0);
}

/* Open `path`; either it fails cleanly or every tensor's bytes are
 * readable (the sanitizers catch a pointer outside the mapping). */
static int open_and_touch(const char *path, unsigned *sum)
{
    struct st_file *tz = (struct st_file *)1;
    struct err e;
    err_clear(&e);
    int rc = torchzip_open(&tz, path, &e);
    if (rc < 0) {
        assert_null(tz);
        assert_true(e.msg[0] != '\0');
        return rc;
    }
    for (size_t i = 0; i < st_count(tz); i++) {
        const struct st_tensor *t = st_get(tz, i);
        for (size_t k = 0; k < t->nbytes; k++)
            *sum += ((const uint8_t *)t->data)[k];
    }
    st_free(tz);
    return 0;
}

static void test_pickle_mutations(void **state)
{
    const char *dir = *state;
    size_t zlen = 0;
    struct st_file *ok = NULL;
    struct err e;
    /* the data.pkl of valid_handmade, read back through libzip */
    uint8_t *zbytes = slurp(CASES_DIR "/valid_handmade/input.bin", &zlen);
    assert_non_null(zbytes);
    zip_error_t zer;
    zip_source_t *src = zip_source_buffer_create(zbytes, zlen, 0, &zer);
    zip_t *za = zip_open_from_source(src, ZIP_RDONLY, &zer);
    assert_non_null(za);
    zip_stat_t zs;
    assert_int_equal(zip_stat(za, "step1000/data.pkl", 0, &zs), 0);
    size_t n = (size_t)zs.size;
    uint8_t *pkl = malloc(n), *mut = malloc(n);
    zip_file_t *zf = zip_fopen(za, "step1000/data.pkl", 0);
    assert_int_equal(zip_fread(zf, pkl, n), (zip_int64_t)n);
    zip_fclose(zf);
    zip_close(za);
    free(zbytes);

    char *path = xasprintf("%s/m.bin", dir);
    write_zip(path, pkl, n);
    if (torchzip_open(&ok, path, &e) < 0)
        fail_msg("unmutated: %s", err_str(&e));
    st_free(ok);

    unsigned sum = 0;
    int failed = 0, passed = 0;
    /* every proper prefix fails */
    for (size_t len = 0; len < n; len++) {
        write_zip(path, pkl, len);
        assert_true(open_and_touch(path, &sum) < 0);
    }
    /* every byte replaced by a few values: a clean error or valid tensors */
    static const uint8_t vals[] = {0x00, 0x01, 0x7f, 0x80, 0xff, 'R', 'Q', 'h', 't'};
    for (size_t i = 0; i < n; i++)
        for (size_t v = 0; v < sizeof vals; v++) {
            if (pkl[i] == vals[v])
                continue;
            memcpy(mut, pkl, n);
            mut[i] = vals[v];
            write_zip(path, mut, n);
            if (open_and_touch(path, &sum) < 0)
                failed++;
            else
                passed++;
        }
    print_message("%zu prefixes refused; %d mutations refused, %d still valid (sum %u)\n", n,
                  failed, passed, sum);
    assert_true(failed > 0);
    free(path);
    free(mut);
    free(pkl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases),
        cmocka_unit_test(test_handmade_values),
        cmocka_unit_test(test_golden_tensors),
        cmocka_unit_test(test_forward_same_logits),
        cmocka_unit_test(test_writable_load),
        cmocka_unit_test_setup_teardown(test_format_choice, setup_tmp, teardown_tmp),
        cmocka_unit_test_setup_teardown(test_pickle_mutations, setup_tmp, teardown_tmp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
