#include "npy.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int npy_write_f32(const char *path, const float *data, int ndim, const int *shape,
                  struct err *e)
{
    if (ndim < 0 || ndim > NPY_MAX_DIMS)
        return err_set(e, ERR_INVALID, path, "%d dimensions", ndim);
    char hdr[512];
    size_t n = 1;
    int o = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
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

    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return err_set(e, ERR_IO, path, "cannot create: %s", strerror(errno));
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                             (unsigned char)(hlen & 0xff), (unsigned char)(hlen >> 8)};
    int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(hdr, 1, hlen, f) == hlen &&
             fwrite(data, sizeof(float), n, f) == n;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        int rc = err_set(e, ERR_IO, path, "cannot write: %s", strerror(errno));
        remove(tmp);
        return rc;
    }
    return 0;
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
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || *ndim >= NPY_MAX_DIMS) {
            rc = err_set(e, ERR_FORMAT, path, "bad shape");
            goto out;
        }
        shape[(*ndim)++] = (int)v;
        n *= (size_t)v;
        p = end;
        while (*p == ',' || *p == ' ')
            p++;
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
