#include "workers/model/npy.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/atomic_file.h"

/* Write prod(shape) elements of `size` bytes under dtype `descr`. */
static int npy_write(const char *path, const char *descr, const void *data, size_t size, int ndim,
                     const int *shape, struct err *e)
{
    if (ndim < 0 || ndim > NPY_MAX_DIMS)
        return err_set(e, ERR_INVALID, path, "%d dimensions", ndim);
    char hdr[512];
    size_t n = 1;
    int o = snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
    for (int i = 0; i < ndim; i++) {
        /* as NumPy writes it: (5,) for one dimension, (2, 3) for more */
        o += snprintf(hdr + o, sizeof hdr - (size_t)o, "%s%d%s", i ? ", " : "", shape[i],
                      ndim == 1 ? "," : "");
        n *= (size_t)shape[i];
    }
    o += snprintf(hdr + o, sizeof hdr - (size_t)o, "), }");
    size_t total = 10 + (size_t)o + 1; /* magic(6)+ver(2)+len(2) + dict + '\n' */
    size_t pad = (64 - total % 64) % 64;
    size_t hlen = (size_t)o + pad + 1;
    memset(hdr + o, ' ', pad);
    hdr[(size_t)o + pad] = '\n';

    struct atomic_file af;
    int rc = atomic_file_open(&af, path, e);
    if (rc < 0)
        return rc;
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                             (unsigned char)(hlen & 0xff), (unsigned char)(hlen >> 8)};
    if (fwrite(pre, 1, 10, af.f) != 10 || fwrite(hdr, 1, hlen, af.f) != hlen ||
        fwrite(data, size, n, af.f) != n) {
        rc = err_set(e, ERR_IO, path, "cannot write: %s", strerror(errno));
        atomic_file_abort(&af);
        return rc;
    }
    return atomic_file_commit(&af, e);
}

int npy_write_f32(const char *path, const float *data, int ndim, const int *shape,
                  struct err *e)
{
    return npy_write(path, "<f4", data, sizeof *data, ndim, shape, e);
}

int npy_write_i32(const char *path, const int32_t *data, int ndim, const int *shape,
                  struct err *e)
{
    return npy_write(path, "<i4", data, sizeof *data, ndim, shape, e);
}

int npy_read_f32(const char *path, float **data, int *ndim, int shape[NPY_MAX_DIMS],
                 struct err *e)
{
    *data = NULL;
    *ndim = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return err_set(e, ERR_IO, path, "cannot open: %s", strerror(errno));
    unsigned char pre[10];
    char hdr[4096];
    int rc = 0;
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0 || pre[6] != 1) {
        rc = err_set(e, ERR_FORMAT, path, "not a version 1 .npy file");
        goto out;
    }
    size_t hlen = (size_t)pre[8] | ((size_t)pre[9] << 8);
    if (hlen >= sizeof hdr || fread(hdr, 1, hlen, f) != hlen) {
        rc = err_set(e, ERR_FORMAT, path, "bad header");
        goto out;
    }
    hdr[hlen] = '\0';
    if (!strstr(hdr, "'descr': '<f4'") || !strstr(hdr, "'fortran_order': False")) {
        rc = err_set(e, ERR_UNSUPPORTED, path, "only little-endian float32 in C order is read");
        goto out;
    }
    char *p = strstr(hdr, "'shape': (");
    if (!p) {
        rc = err_set(e, ERR_FORMAT, path, "no shape");
        goto out;
    }
    p += 10;
    size_t n = 1;
    while (*p && *p != ')') {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || errno || *ndim >= NPY_MAX_DIMS) {
            rc = err_set(e, ERR_FORMAT, path, "bad shape");
            goto out;
        }
        if (v > INT_MAX || __builtin_mul_overflow(n, (size_t)v, &n)) {
            rc = err_set(e, ERR_FORMAT, path, "shape: dimension %ld makes the array too large", v);
            goto out;
        }
        shape[(*ndim)++] = (int)v;
        p = end;
        while (*p == ',' || *p == ' ')
            p++;
    }
    /* the data must be in the file before memory is taken for it */
    struct stat sb;
    long at = ftell(f);
    if (fstat(fileno(f), &sb) != 0 || at < 0) {
        rc = err_set(e, ERR_IO, path, "cannot stat: %s", strerror(errno));
        goto out;
    }
    if (n > ((uint64_t)sb.st_size - (uint64_t)at) / sizeof(float)) {
        rc = err_set(e, ERR_FORMAT, path,
                     "truncated data: the shape needs %zu floats, the file holds %lld bytes after "
                     "its header",
                     n, (long long)sb.st_size - at);
        goto out;
    }
    *data = malloc(n ? n * sizeof(float) : 1);
    if (!*data) {
        rc = err_set(e, ERR_NOMEM, path, "out of memory");
        goto out;
    }
    if (fread(*data, sizeof(float), n, f) != n) {
        free(*data);
        *data = NULL;
        rc = err_set(e, ERR_FORMAT, path, "truncated data");
    }
out:
    fclose(f);
    return rc;
}

int npy_read_header(FILE *f, const char *path, char descr[16], int *ndim,
                    int64_t shape[NPY_MAX_DIMS], size_t *data_offset, struct err *e)
{
    unsigned char pre[12];
    *ndim = 0;
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0 || pre[6] < 1 || pre[6] > 3)
        return err_set(e, ERR_FORMAT, path, "not a .npy file (no \\x93NUMPY magic of version 1-3)");
    size_t hlen = (size_t)pre[8] | (size_t)pre[9] << 8, pre_len = 10;
    if (pre[6] >= 2) {
        if (fread(pre + 10, 1, 2, f) != 2)
            return err_set(e, ERR_FORMAT, path, "truncated .npy header");
        hlen |= (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
        pre_len = 12;
    }
    if (hlen > 65536)
        return err_set(e, ERR_FORMAT, path, ".npy header of %zu bytes is too long", hlen);
    char *h = malloc(hlen + 1);
    if (!h)
        return err_set(e, ERR_NOMEM, path, "out of memory");
    int rc = 0;
    if (fread(h, 1, hlen, f) != hlen) {
        rc = err_set(e, ERR_FORMAT, path, "truncated .npy header");
        goto out;
    }
    h[hlen] = '\0';
    const char *p = strstr(h, "'descr':");
    const char *q = p ? strchr(p + 8, '\'') : NULL;
    const char *qe = q ? strchr(q + 1, '\'') : NULL;
    if (!qe || qe - q - 1 >= 16) {
        rc = err_set(e, ERR_FORMAT, path, ".npy header has no 'descr'");
        goto out;
    }
    memcpy(descr, q + 1, (size_t)(qe - q - 1));
    descr[qe - q - 1] = '\0';
    if (strstr(h, "'fortran_order': True")) {
        rc = err_set(e, ERR_UNSUPPORTED, path, "Fortran-order .npy arrays are not read; save in C order");
        goto out;
    }
    p = strstr(h, "'shape':");
    p = p ? strchr(p, '(') : NULL;
    if (!p) {
        rc = err_set(e, ERR_FORMAT, path, ".npy header has no 'shape'");
        goto out;
    }
    for (p++;;) {
        while (*p == ' ' || *p == ',')
            p++;
        if (*p == ')')
            break;
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (end == p || v < 0 || errno || *ndim >= NPY_MAX_DIMS) {
            rc = err_set(e, ERR_FORMAT, path, ".npy header has a bad 'shape'");
            goto out;
        }
        shape[(*ndim)++] = v;
        p = end;
    }
    *data_offset = pre_len + hlen;
out:
    free(h);
    return rc;
}
