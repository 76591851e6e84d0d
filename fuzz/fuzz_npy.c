/*
 * fuzz_npy.c - the .npy readers of workers/model/npy.c on arbitrary bytes:
 * npy_read_f32 (float32 arrays) and npy_read_header (any dtype; the token
 * reader's first step).
 *
 * Checked beyond "no crash": the error contract on failure; on success at
 * most NPY_MAX_DIMS non-negative dimensions, the data read is exactly
 * prod(shape) floats (each touched), and the header's data offset lies
 * inside the file.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "fuzz/fuzz_util.h"
#include "workers/model/npy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write("array.npy", data, size);
    float *x = NULL;
    int ndim = 0, shape[NPY_MAX_DIMS];
    struct err e;
    int rc = npy_read_f32(path, &x, &ndim, shape, &e);
    if (rc < 0) {
        fuzz_check_err("npy_read_f32", rc, &e);
        if (x)
            fuzz_fail("npy_read_f32 failed but returned data");
    } else {
        if (ndim < 0 || ndim > NPY_MAX_DIMS)
            fuzz_fail("ndim %d", ndim);
        size_t n = 1;
        for (int d = 0; d < ndim; d++) {
            if (shape[d] < 0)
                fuzz_fail("negative dimension %d", shape[d]);
            n *= (size_t)shape[d];
        }
        if (n * sizeof(float) > size)
            fuzz_fail("%zu floats read from a %zu-byte file", n, size);
        fuzz_touch(x, n * sizeof *x);
        free(x);
    }

    FILE *f = fopen(path, "rb");
    if (!f)
        fuzz_fail("cannot reopen %s", path);
    char descr[16];
    int64_t shape64[NPY_MAX_DIMS];
    size_t off = 0;
    rc = npy_read_header(f, path, descr, &ndim, shape64, &off, &e);
    fclose(f);
    if (rc < 0) {
        fuzz_check_err("npy_read_header", rc, &e);
        return 0;
    }
    if (ndim < 0 || ndim > NPY_MAX_DIMS || off > size)
        fuzz_fail("header: ndim %d, data offset %zu in a %zu-byte file", ndim, off, size);
    for (int d = 0; d < ndim; d++)
        if (shape64[d] < 0)
            fuzz_fail("negative dimension %lld", (long long)shape64[d]);
    return 0;
}
