#include "tokens.h"

#include <jansson.h>
#include <stdlib.h>

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

