#include "tokens.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int tokens_read_json(const char *path, int **tokens, int *B, int *T, struct err *e)
{
    json_error_t je;
    *tokens = NULL;
    json_t *root = json_load_file(path, 0, &je);
    if (!root)
        return err_set(e, ERR_FORMAT, path, "not valid JSON: %s (line %d)", je.text, je.line);
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
    unsigned char buf[65536];
    for (size_t done = 0; done < keep;) {
        size_t want = (keep - done) * (size_t)w;
        if (want > sizeof buf)
            want = sizeof buf;
        if (fread(buf, 1, want, f) != want) {
            rc = err_set(e, ERR_IO, path, "read failed after %zu ids%s", done,
                         ferror(f) ? "" : " (file shrank)");
            goto out;
        }
        for (size_t i = 0; i < want; i += (size_t)w, done++) {
            const unsigned char *p = buf + i;
            uint32_t v = w == 2 ? (uint32_t)p[0] | (uint32_t)p[1] << 8
                                : (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                                      (uint32_t)p[3] << 24;
            if (v > INT_MAX) {
                rc = err_set(e, ERR_FORMAT, path, "token id %" PRIu32 " at index %zu is not below 2^31",
                             v, done);
                goto out;
            }
            tok[done] = (int)v;
        }
    }
    *tokens = tok;
    tok = NULL;
    *B = (int)b;
    *T = ctx;
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
    int w = has_suffix(path, ".u16") || has_suffix(path, ".bin") ? 2 : has_suffix(path, ".u32") ? 4 : 0;
    if (!w)
        return err_set(e, ERR_UNSUPPORTED, path,
                       "unknown token file type: expected .json, .u16, .bin (uint16) or .u32");
    if (ctx < 1)
        return err_set(e, ERR_INVALID, path, "context length %d: must be at least 1", ctx);
    return read_binary(path, w, ctx, tokens, B, T, e);
}
