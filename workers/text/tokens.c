#include "workers/text/tokens.h"

#include "common/atomic_file.h"
#include "workers/model/npy.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/json_err.h"

int tokens_read_json(const char *path, int **tokens, int *B, int *T, struct err *e)
{
    json_error_t je;
    *tokens = NULL;
    errno = 0;
    json_t *root = json_load_file(path, 0, &je);
    if (!root)
        return json_err_nomem(&je) ? err_set(e, ERR_NOMEM, path, "out of memory reading the JSON")
                                   : err_set(e, ERR_FORMAT, path, "not valid JSON: %s (line %d)",
                                             je.text, je.line);
    int rc = 0;
    size_t b = json_is_array(root) ? json_array_size(root) : 0;
    size_t t = b ? json_array_size(json_array_get(root, 0)) : 0;
    if (!b || !t) {
        rc = err_set(e, ERR_FORMAT, path, "expected a non-empty list of non-empty lists of token ids");
        goto out;
    }
    *tokens = malloc(b * t * sizeof **tokens);
    if (!*tokens) {
        rc = err_set(e, ERR_NOMEM, path, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < b; i++) {
        json_t *row = json_array_get(root, i);
        if (!json_is_array(row) || json_array_size(row) != t) {
            rc = err_set(e, ERR_FORMAT, path, "sequence %zu: expected a list of %zu token ids", i, t);
            goto out;
        }
        for (size_t j = 0; j < t; j++) {
            json_t *v = json_array_get(row, j);
            if (!json_is_integer(v) || json_integer_value(v) < 0 ||
                json_integer_value(v) > 0x7fffffff) {
                rc = err_set(e, ERR_FORMAT, path, "sequence %zu position %zu: not a token id", i, j);
                goto out;
            }
            (*tokens)[i * t + j] = (int)json_integer_value(v);
        }
    }
    *B = (int)b;
    *T = (int)t;
out:
    if (rc < 0) {
        free(*tokens);
        *tokens = NULL;
    }
    json_decref(root);
    return rc;
}


static int has_suffix(const char *s, const char *suf)
{
    size_t n = strlen(s), k = strlen(suf);
    return n >= k && strcmp(s + n - k, suf) == 0;
}

/* Read n little-endian ids of w bytes (2, 4 or 8; signed when sgn) from f
 * into tok, each checked to be in [0, 2^31). */
static int read_ids(FILE *f, const char *path, int w, int sgn, size_t n, int *tok, struct err *e)
{
    unsigned char buf[65536];
    for (size_t done = 0; done < n;) {
        size_t want = (n - done) * (size_t)w;
        if (want > sizeof buf)
            want = sizeof buf;
        if (fread(buf, 1, want, f) != want)
            return err_set(e, ERR_IO, path, "read failed after %zu ids%s", done,
                           ferror(f) ? "" : " (file shrank)");
        for (size_t i = 0; i < want; i += (size_t)w, done++) {
            const unsigned char *p = buf + i;
            uint64_t v = 0;
            for (int k = w - 1; k >= 0; k--)
                v = v << 8 | p[k];
            int neg = sgn && (p[w - 1] & 0x80);
            if (neg || v > INT_MAX) {
                if (neg)
                    return err_set(e, ERR_FORMAT, path, "token id at index %zu is negative", done);
                return err_set(e, ERR_FORMAT, path, "token id %" PRIu64 " at index %zu is not below 2^31",
                               v, done);
            }
            tok[done] = (int)v;
        }
    }
    return 0;
}

/* A little-endian stream of `w`-byte ids (2 or 4). */
static int read_binary(const char *path, int w, int ctx, int **tokens, int *B, int *T,
                       struct err *e)
{
    int rc = 0;
    int *tok = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return err_set(e, errno == ENOENT ? ERR_NOTFOUND : ERR_IO, path, "cannot open: %s",
                       strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0) {
        rc = err_set(e, ERR_IO, path, "cannot stat: %s", strerror(errno));
        goto out;
    }
    size_t bytes = (size_t)st.st_size;
    if (bytes == 0) {
        rc = err_set(e, ERR_FORMAT, path, "empty token file");
        goto out;
    }
    if (bytes % (size_t)w) {
        rc = err_set(e, ERR_FORMAT, path, "%zu bytes is not a whole number of %d-byte token ids",
                     bytes, w);
        goto out;
    }
    size_t n = bytes / (size_t)w, b = n / (size_t)ctx;
    if (b == 0) {
        rc = err_set(e, ERR_FORMAT, path, "%zu token ids: fewer than one sequence of %d", n, ctx);
        goto out;
    }
    if (b > INT_MAX || b * (size_t)ctx > SIZE_MAX / sizeof *tok) {
        rc = err_set(e, ERR_FORMAT, path, "%zu sequences of %d ids are too many", b, ctx);
        goto out;
    }
    size_t keep = b * (size_t)ctx;
    tok = malloc(keep * sizeof *tok);
    if (!tok) {
        rc = err_set(e, ERR_NOMEM, path, "out of memory for %zu token ids", keep);
        goto out;
    }
    if ((rc = read_ids(f, path, w, 0, keep, tok, e)) < 0)
        goto out;
    *tokens = tok;
    tok = NULL;
    *B = (int)b;
    *T = ctx;
out:
    free(tok);
    fclose(f);
    return rc;
}

/* A .npy array of ids: 1-D (cut into sequences of ctx) or 2-D (B,T). */
static int read_npy(const char *path, int ctx, int **tokens, int *B, int *T, struct err *e)
{
    int rc = 0, ndim = 0, *tok = NULL;
    char descr[16];
    int64_t shape[NPY_MAX_DIMS];
    size_t off = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return err_set(e, errno == ENOENT ? ERR_NOTFOUND : ERR_IO, path, "cannot open: %s",
                       strerror(errno));
    if ((rc = npy_read_header(f, path, descr, &ndim, shape, &off, e)) < 0)
        goto out;
    static const struct {
        const char *descr;
        int w, sgn;
    } types[] = {{"<i4", 4, 1}, {"<i8", 8, 1}, {"<u2", 2, 0}, {"<u4", 4, 0}};
    int w = 0, sgn = 0;
    for (size_t i = 0; i < sizeof types / sizeof *types; i++)
        if (strcmp(descr, types[i].descr) == 0) {
            w = types[i].w;
            sgn = types[i].sgn;
        }
    if (!w) {
        rc = err_set(e, ERR_UNSUPPORTED, path,
                     ".npy dtype '%s': token ids must be int32, int64, uint16 or uint32", descr);
        goto out;
    }
    if (ndim != 1 && ndim != 2) {
        rc = err_set(e, ERR_FORMAT, path, ".npy array has %d dimensions: expected 1 (a stream) or 2 (B, T)",
                     ndim);
        goto out;
    }
    if (ndim == 1 && ctx < 1) {
        rc = err_set(e, ERR_INVALID, path, "context length %d: must be at least 1", ctx);
        goto out;
    }
    /* B x T: checked before it is multiplied (a header may say anything) */
    int64_t n = shape[0];
    if (ndim == 2 && __builtin_mul_overflow(shape[0], shape[1], &n)) {
        rc = err_set(e, ERR_FORMAT, path, "%" PRId64 " x %" PRId64 " token ids are too many", shape[0], shape[1]);
        goto out;
    }
    int64_t b = ndim == 1 ? shape[0] / ctx : shape[0], t = ndim == 1 ? ctx : shape[1];
    if (n == 0 || b == 0 || t == 0) {
        rc = err_set(e, ERR_FORMAT, path, "%" PRId64 " token ids: fewer than one sequence%s", n,
                     ndim == 1 ? " of the context length" : "");
        goto out;
    }
    if (b > INT_MAX || t > INT_MAX || (uint64_t)(b * t) > SIZE_MAX / sizeof *tok ||
        shape[0] > ((int64_t)1 << 40) || (ndim == 2 && shape[1] > ((int64_t)1 << 40))) {
        rc = err_set(e, ERR_FORMAT, path, "%" PRId64 " x %" PRId64 " token ids are too many", b, t);
        goto out;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0) {
        rc = err_set(e, ERR_IO, path, "cannot stat: %s", strerror(errno));
        goto out;
    }
    if ((uint64_t)st.st_size != off + (uint64_t)n * (uint64_t)w) {
        rc = err_set(e, ERR_FORMAT, path, ".npy data is %lld bytes, the header says %" PRId64 " x %d",
                     (long long)st.st_size - (long long)off, n, w);
        goto out;
    }
    tok = malloc((size_t)(b * t) * sizeof *tok);
    if (!tok) {
        rc = err_set(e, ERR_NOMEM, path, "out of memory for %" PRId64 " token ids", b * t);
        goto out;
    }
    if ((rc = read_ids(f, path, w, sgn, (size_t)(b * t), tok, e)) < 0)
        goto out;
    *tokens = tok;
    tok = NULL;
    *B = (int)b;
    *T = (int)t;
out:
    free(tok);
    fclose(f);
    return rc;
}

int tokens_read_file(const char *path, int ctx, int **tokens, int *B, int *T, struct err *e)
{
    *tokens = NULL;
    if (has_suffix(path, ".json"))
        return tokens_read_json(path, tokens, B, T, e);
    if (has_suffix(path, ".npy"))
        return read_npy(path, ctx, tokens, B, T, e);
    int w = has_suffix(path, ".u16") || has_suffix(path, ".bin") ? 2 : has_suffix(path, ".u32") ? 4 : 0;
    if (!w)
        return err_set(e, ERR_UNSUPPORTED, path,
                       "unknown token file type: expected .json, .npy, .u16, .bin (uint16) or .u32");
    if (ctx < 1)
        return err_set(e, ERR_INVALID, path, "context length %d: must be at least 1", ctx);
    return read_binary(path, w, ctx, tokens, B, T, e);
}

int tokens_write_file(const char *path, const int *ids, size_t n, struct err *e)
{
    if (has_suffix(path, ".npy")) {
        if (n > INT32_MAX)
            return err_set(e, ERR_INVALID, path, "%zu ids are too many for one .npy", n);
        int shape[1] = {(int)n};
        return npy_write_i32(path, (const int32_t *)ids, 1, shape, e);
    }
    int w = has_suffix(path, ".u16") ? 2 : has_suffix(path, ".u32") ? 4 : 0;
    if (w == 2)
        for (size_t i = 0; i < n; i++)
            if (ids[i] > 0xffff)
                return err_set(e, ERR_INVALID, path,
                               "token id %d (position %zu) does not fit in uint16: use .u32 or .npy",
                               ids[i], i);
    struct atomic_file af;
    int rc = atomic_file_open(&af, path, e);
    if (rc < 0)
        return rc;
    FILE *f = af.f;
    int ok = 1;
    if (w) {
        unsigned char buf[4096];
        size_t k = 0;
        for (size_t i = 0; i < n && ok; i++) {
            uint32_t v = (uint32_t)ids[i];
            for (int b = 0; b < w; b++)
                buf[k++] = (unsigned char)(v >> (8 * b));
            if (k + 4 > sizeof buf || i + 1 == n) {
                ok = fwrite(buf, 1, k, f) == k;
                k = 0;
            }
        }
    } else {
        ok = fputc('[', f) != EOF;
        for (size_t i = 0; i < n && ok; i++)
            ok = fprintf(f, "%s%d", i ? ", " : "", ids[i]) > 0;
        ok = ok && fputs("]\n", f) != EOF;
    }
    if (!ok) {
        rc = err_set(e, ERR_IO, path, "cannot write: %s", strerror(errno));
        atomic_file_abort(&af);
        return rc;
    }
    return atomic_file_commit(&af, e);
}
