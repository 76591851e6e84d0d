/*
 * test_tokens - .npy token files in tokens_read_file (the other formats
 * are covered in test_battery): every accepted dtype, 1-D streams cut at
 * the context length, 2-D (B,T) arrays, header versions 1 and 2, and each
 * malformed file's error.  npy_write_i32 output is read back the same way.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "workers/model/npy.h"
#include "workers/text/tokens.h"

static char tmpdir[64];

/* Write a .npy file with header dict `dict` (padded as NumPy does) and
 * `n` raw data bytes; version 1 or 2. */
static const char *write_npy(const char *name, int version, const char *dict, const void *data,
                             size_t n)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    size_t pre = version == 1 ? 10 : 12, dl = strlen(dict);
    size_t pad = (64 - (pre + dl + 1) % 64) % 64, hlen = dl + pad + 1;
    unsigned char p[12] = {0x93, 'N', 'U', 'M', 'P', 'Y', (unsigned char)version, 0,
                           (unsigned char)hlen, (unsigned char)(hlen >> 8), 0, 0};
    assert_int_equal(fwrite(p, 1, pre, f), pre);
    fputs(dict, f);
    for (size_t i = 0; i < pad; i++)
        fputc(' ', f);
    fputc('\n', f);
    if (n)
        assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
    return path;
}

static void expect_error(const char *path, int ctx, int code, const char *needle)
{
    int *tok = (int *)1, B = -5, T = -5;
    struct err e;
    err_clear(&e);
    assert_int_equal(tokens_read_file(path, ctx, &tok, &B, &T, &e), code);
    assert_null(tok);
    if (!strstr(err_str(&e), needle))
        fail_msg("%s: error '%s' lacks '%s'", path, err_str(&e), needle);
}

static void test_npy_tokens(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ckptd-test-tokens-XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    int *tok = NULL, B = 0, T = 0;
    struct err e;

    /* the same 7 ids in each dtype; ctx 3 -> 2 sequences, the 7th dropped */
    const int want[6] = {0, 1, 50276, 65535, 7, 300};
    const uint16_t u2[7] = {0, 1, 50276, 65535, 7, 300, 9};
    const uint32_t u4[7] = {0, 1, 50276, 65535, 7, 300, 9};
    const int32_t i4[7] = {0, 1, 50276, 65535, 7, 300, 9};
    const int64_t i8[7] = {0, 1, 50276, 65535, 7, 300, 9};
    const struct {
        const char *descr;
        const void *data;
        size_t n;
    } kinds[] = {{"<u2", u2, sizeof u2}, {"<u4", u4, sizeof u4}, {"<i4", i4, sizeof i4},
                 {"<i8", i8, sizeof i8}};
    for (size_t k = 0; k < 4; k++)
        for (int v = 1; v <= 2; v++) {
            char dict[128], name[32];
            snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (7,), }",
                     kinds[k].descr);
            snprintf(name, sizeof name, "k%zu_v%d.npy", k, v);
            const char *p = write_npy(name, v, dict, kinds[k].data, kinds[k].n);
            assert_int_equal(tokens_read_file(p, 3, &tok, &B, &T, &e), 0);
            assert_int_equal(B, 2);
            assert_int_equal(T, 3);
            assert_memory_equal(tok, want, sizeof want);
            free(tok);
        }

    /* 2-D: (B, T) as stored, whatever the context length */
    const char *p2 = write_npy("two.npy", 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (3, 2), }",
                               i4, 6 * sizeof *i4);
    assert_int_equal(tokens_read_file(p2, 128, &tok, &B, &T, &e), 0);
    assert_int_equal(B, 3);
    assert_int_equal(T, 2);
    assert_memory_equal(tok, want, sizeof want);
    free(tok);

    /* what npy_write_i32 writes reads back */
    char path[128];
    snprintf(path, sizeof path, "%s/w.npy", tmpdir);
    int shape[1] = {7};
    assert_int_equal(npy_write_i32(path, i4, 1, shape, &e), 0);
    assert_int_equal(tokens_read_file(path, 2, &tok, &B, &T, &e), 0);
    assert_int_equal(B, 3);
    assert_int_equal(T, 2);
    assert_memory_equal(tok, want, sizeof want);
    free(tok);

    /* errors */
    const int32_t neg[2] = {5, -1};
    expect_error(write_npy("neg.npy", 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", neg,
                           sizeof neg),
                 1, ERR_FORMAT, "index 1 is negative");
    const int64_t huge[1] = {(int64_t)1 << 31};
    expect_error(write_npy("huge.npy", 1, "{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }", huge,
                           sizeof huge),
                 1, ERR_FORMAT, "not below 2^31");
    expect_error(write_npy("f4.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (7,), }", i4,
                           sizeof i4),
                 1, ERR_UNSUPPORTED, "dtype '<f4'");
    expect_error(write_npy("be.npy", 1, "{'descr': '>i4', 'fortran_order': False, 'shape': (7,), }", i4,
                           sizeof i4),
                 1, ERR_UNSUPPORTED, "dtype '>i4'");
    expect_error(write_npy("fo.npy", 1, "{'descr': '<i4', 'fortran_order': True, 'shape': (3, 2), }", i4,
                           6 * sizeof *i4),
                 1, ERR_UNSUPPORTED, "Fortran");
    expect_error(write_npy("3d.npy", 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (1, 3, 2), }",
                           i4, 6 * sizeof *i4),
                 1, ERR_FORMAT, "3 dimensions");
    expect_error(write_npy("short.npy", 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (8,), }", i4,
                           sizeof i4),
                 1, ERR_FORMAT, "the header says 8 x 4");
    expect_error(write_npy("few.npy", 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (7,), }", i4,
                           sizeof i4),
                 8, ERR_FORMAT, "fewer than one sequence");
    expect_error(write_npy("noshape.npy", 1, "{'descr': '<i4', 'fortran_order': False, }", i4, sizeof i4),
                 1, ERR_FORMAT, "no 'shape'");
    expect_error(write_npy("ctx0.npy", 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (7,), }", i4,
                           sizeof i4),
                 0, ERR_INVALID, "context length 0");
    snprintf(path, sizeof path, "%s/notnpy.npy", tmpdir);
    FILE *f = fopen(path, "wb");
    fputs("hello, this is not numpy", f);
    fclose(f);
    expect_error(path, 1, ERR_FORMAT, "not a .npy file");
    snprintf(path, sizeof path, "%s/missing.npy", tmpdir);
    expect_error(path, 1, ERR_NOTFOUND, "missing.npy");

    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_npy_tokens),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
