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
