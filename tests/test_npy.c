/*
 * test_npy - .npy files: write, read back, header layout as NumPy's format
 * specifies (magic, version 1.0, header padded to 64 bytes, '\n' last).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "workers/model/npy.h"

static void test_roundtrip(void **state)
{
    (void)state;
    char path[] = "/tmp/ckptd-npy-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    float data[2 * 3 * 4];
    for (int i = 0; i < 24; i++)
        data[i] = (float)i * 0.5f - 3.0f;
    int shape[3] = {2, 3, 4};
    struct err e;
    assert_int_equal(npy_write_f32(path, data, 3, shape, &e), 0);
    FILE *f = fopen(path, "rb");
    unsigned char hdr[128];
    assert_int_equal(fread(hdr, 1, 128, f), 128);
    fclose(f);
    assert_memory_equal(hdr, "\x93NUMPY\x01\x00", 8);
    size_t hlen = hdr[8] | (hdr[9] << 8);
    assert_int_equal((10 + hlen) % 64, 0);
    assert_int_equal(hdr[10 + hlen - 1], '\n');
    assert_non_null(strstr((char *)hdr + 10, "'shape': (2, 3, 4)"));
    float *back = NULL;
    int nd, sh[NPY_MAX_DIMS];
    assert_int_equal(npy_read_f32(path, &back, &nd, sh, &e), 0);
    assert_int_equal(nd, 3);
    assert_int_equal(sh[2], 4);
    assert_memory_equal(back, data, sizeof data);
    free(back);
    /* 1-d shapes are written as (n,) */
    int one[1] = {5};
    assert_int_equal(npy_write_f32(path, data, 1, one, &e), 0);
    assert_int_equal(npy_read_f32(path, &back, &nd, sh, &e), 0);
    assert_int_equal(nd, 1);
    assert_int_equal(sh[0], 5);
    free(back);
    unlink(path);
}

static void test_errors(void **state)
{
    (void)state;
    struct err e;
    float x = 1;
    int shape[1] = {1};
    assert_int_equal(npy_write_f32("/nonexistent/dir/x.npy", &x, 1, shape, &e), ERR_IO);
    assert_int_equal(access("/nonexistent/dir/x.npy.tmp", F_OK), -1);
    char path[] = "/tmp/ckptd-npy-XXXXXX";
    int fd = mkstemp(path);
    assert_true(write(fd, "not numpy at all", 16) == 16);
    close(fd);
    float *d = NULL;
    int nd, sh[NPY_MAX_DIMS];
    assert_int_equal(npy_read_f32(path, &d, &nd, sh, &e), ERR_FORMAT);
    assert_null(d);
    /* a header whose shape needs more data than the file holds is refused
     * before memory is taken for it (found by fuzz/fuzz_npy.c: a terabyte was
     * asked of malloc), and a shape whose product overflows is refused */
    static const char *const shapes[] = {"(300000000,)", "(2000000000, 2000000000, 2000000000, 16)",
                                         "(3, 3, 99999999999999999999)"};
    static const char *const needles[] = {"truncated data", "too large", "bad shape"};
    for (int i = 0; i < 3; i++) {
        char hdr[128];
        int n = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }",
                         shapes[i]);
        unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(n + 1), 0};
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        fwrite(pre, 1, 10, f);
        fprintf(f, "%s\n", hdr);
        fwrite(&x, sizeof x, 1, f);
        fclose(f);
        assert_int_equal(npy_read_f32(path, &d, &nd, sh, &e), ERR_FORMAT);
        assert_null(d);
        if (!strstr(e.msg, needles[i]))
            fail_msg("shape %s: '%s' lacks '%s'", shapes[i], e.msg, needles[i]);
    }
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests_name("npy", tests, NULL, NULL);
}
