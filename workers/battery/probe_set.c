/* User probe datasets: the JSON format and its validation (probe_set.h). */
#include "workers/battery/probe_set.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json_err.h"

/* A classification label while reading: its JSON type and value. */
struct raw_label {
    int type; /* JSON_STRING, JSON_INTEGER, JSON_TRUE (booleans) */
    const char *s;
    long long i;
};

static const char *type_word(int type, int plural)
{
    if (plural)
        return type == JSON_STRING ? "strings" : type == JSON_INTEGER ? "integers" : "booleans";
    return type == JSON_STRING ? "a string" : type == JSON_INTEGER ? "an integer" : "a boolean";
}

static int raw_cmp(const struct raw_label *a, const struct raw_label *b)
{
    if (a->type == JSON_STRING)
        return strcmp(a->s, b->s);
    return (a->i > b->i) - (a->i < b->i);
}

static int raw_cmp_q(const void *a, const void *b)
{
    return raw_cmp(a, b);
}

static char *raw_text(const struct raw_label *r)
{
    char buf[32];
    if (r->type == JSON_STRING)
        return strdup(r->s);
    if (r->type == JSON_INTEGER)
        snprintf(buf, sizeof buf, "%lld", r->i);
    else
        snprintf(buf, sizeof buf, "%s", r->i ? "true" : "false");
    return strdup(buf);
}

void probe_set_free(struct probe_set *ps)
{
    if (!ps)
        return;
    free(ps->path);
    free(ps->name);
    free(ps->offsets);
    free(ps->tokens);
    free(ps->lab_seq);
    free(ps->lab_pos);
    free(ps->lab_class);
    free(ps->lab_value);
    for (int k = 0; ps->class_names && k < ps->nclasses; k++)
        free(ps->class_names[k]);
    free(ps->class_names);
    free(ps->layers);
    free(ps);
}

int probe_set_heldout(const struct probe_set *ps, int k)
{
    return ps->lab_seq[k] % PROBE_SET_HOLDOUT_EVERY == PROBE_SET_HOLDOUT_EVERY - 1;
}

/* One label value of sequence i, position t (classification): type and
 * value into *r, checked against the first label's type *type0 (0 before
 * any). */
static int read_class_label(json_t *v, int i, int t, int *type0, struct raw_label *r,
                            const char *path, struct err *e)
{
    if (json_is_string(v)) {
        r->type = JSON_STRING;
        r->s = json_string_value(v);
    } else if (json_is_integer(v)) {
        r->type = JSON_INTEGER;
        r->i = json_integer_value(v);
    } else if (json_is_boolean(v)) {
        r->type = JSON_TRUE;
        r->i = json_is_true(v);
    } else {
        return err_set(e, ERR_FORMAT, path,
                       "sequence %d, position %d: a classification label must be a string, an "
                       "integer or a boolean",
                       i, t);
    }
    if (!*type0)
        *type0 = r->type;
    else if (*type0 != r->type)
        return err_set(e, ERR_FORMAT, path,
                       "sequence %d, position %d: label is %s but earlier labels are %s "
                       "(labels of mixed types)",
                       i, t, type_word(r->type, 0), type_word(*type0, 1));
    return 0;
}

/* The classes of the raw labels: sorted distinct values, each label's
 * index, the per-class minimum. */
static int build_classes(struct probe_set *ps, struct raw_label *raw, struct err *e)
{
    int rc = 0;
    struct raw_label *uniq = malloc((size_t)ps->nlab * sizeof *uniq);
    int *count = NULL;
    ps->lab_class = malloc((size_t)ps->nlab * sizeof *ps->lab_class);
    if (!uniq || !ps->lab_class) {
        rc = err_set(e, ERR_NOMEM, ps->path, "out of memory for %d labels", ps->nlab);
        goto out;
    }
    memcpy(uniq, raw, (size_t)ps->nlab * sizeof *uniq);
    qsort(uniq, (size_t)ps->nlab, sizeof *uniq, raw_cmp_q);
    int nu = 0;
    for (int k = 0; k < ps->nlab; k++)
        if (nu == 0 || raw_cmp(&uniq[nu - 1], &uniq[k]) != 0)
            uniq[nu++] = uniq[k];
    if (nu < 2) {
        char *only = raw_text(&uniq[0]);
        rc = err_set(e, ERR_FORMAT, ps->path,
                     "only one class (%s): a classification probe needs at least 2",
                     only ? only : "?");
        free(only);
        goto out;
    }
    count = calloc((size_t)nu, sizeof *count);
    ps->class_names = calloc((size_t)nu, sizeof *ps->class_names);
    if (!count || !ps->class_names) {
        rc = err_set(e, ERR_NOMEM, ps->path, "out of memory for %d classes", nu);
        goto out;
    }
    ps->nclasses = nu;
    for (int c = 0; c < nu; c++)
        if (!(ps->class_names[c] = raw_text(&uniq[c]))) {
            rc = err_set(e, ERR_NOMEM, ps->path, "out of memory for class names");
            goto out;
        }
    for (int k = 0; k < ps->nlab; k++) {
        int lo = 0, hi = nu - 1;
        while (lo < hi) { /* the first class >= raw[k]; it exists */
            int mid = (lo + hi) / 2;
            if (raw_cmp(&uniq[mid], &raw[k]) < 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        ps->lab_class[k] = lo;
        count[lo]++;
    }
    for (int c = 0; c < nu; c++)
        if (count[c] < PROBE_SET_MIN_PER_CLASS) {
            rc = err_set(e, ERR_FORMAT, ps->path,
                         "class \"%s\" has %d labelled position%s; each class needs at least %d "
                         "(too few examples)",
                         ps->class_names[c], count[c], count[c] == 1 ? "" : "s",
                         PROBE_SET_MIN_PER_CLASS);
            goto out;
        }
out:
    free(uniq);
    free(count);
    return rc;
}

static int read_layers(struct probe_set *ps, json_t *jl, struct err *e)
{
    size_t n = json_is_array(jl) ? json_array_size(jl) : 0;
    if (n == 0)
        return err_set(e, ERR_FORMAT, ps->path,
                       "\"layers\" must be a non-empty list of integers (-1 is hook_embed)");
    if (!(ps->layers = malloc(n * sizeof *ps->layers)))
        return err_set(e, ERR_NOMEM, ps->path, "out of memory");
    for (size_t j = 0; j < n; j++) {
        json_t *v = json_array_get(jl, j);
        if (!json_is_integer(v) || json_integer_value(v) < -1 || json_integer_value(v) > 1000000)
            return err_set(e, ERR_FORMAT, ps->path,
                           "\"layers\"[%zu] is not a layer (an integer >= -1; -1 is hook_embed)",
                           j);
        ps->layers[j] = (int)json_integer_value(v);
        for (size_t k = 0; k < j; k++)
            if (ps->layers[k] == ps->layers[j])
                return err_set(e, ERR_FORMAT, ps->path, "\"layers\" lists layer %d twice",
                               ps->layers[j]);
    }
    ps->nlayers = (int)n;
    return 0;
}

/* The whole document into ps (root borrowed). */
static int parse(struct probe_set *ps, json_t *root, struct err *e)
{
    const char *path = ps->path;
    if (!json_is_object(root))
        return err_set(e, ERR_FORMAT, path, "a probe set is a JSON object with \"name\", "
                                            "\"kind\" and \"sequences\"");
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val)
    {
        if (strcmp(key, "name") && strcmp(key, "kind") && strcmp(key, "layers") &&
            strcmp(key, "sequences"))
            return err_set(e, ERR_FORMAT, path,
                           "unknown key \"%s\" (expected name, kind, layers, sequences)", key);
    }
    json_t *jn = json_object_get(root, "name"), *jk = json_object_get(root, "kind");
    json_t *js = json_object_get(root, "sequences"), *jl = json_object_get(root, "layers");
    if (!json_is_string(jn) || !json_string_value(jn)[0])
        return err_set(e, ERR_FORMAT, path, "\"name\" must be a non-empty string");
    if (!(ps->name = strdup(json_string_value(jn))))
        return err_set(e, ERR_NOMEM, path, "out of memory");
    if (json_is_string(jk) && strcmp(json_string_value(jk), "classification") == 0)
        ps->kind = PROBE_KIND_CLASSIFICATION;
    else if (json_is_string(jk) && strcmp(json_string_value(jk), "regression") == 0)
        ps->kind = PROBE_KIND_REGRESSION;
    else
        return err_set(e, ERR_FORMAT, path,
                       "\"kind\" must be \"classification\" or \"regression\"");
    int rl = jl ? read_layers(ps, jl, e) : 0;
    if (rl < 0)
        return rl;
    if (!json_is_array(js))
        return err_set(e, ERR_FORMAT, path, "\"sequences\" must be a list");
    size_t nseq = json_array_size(js);
    if (nseq < PROBE_SET_HOLDOUT_EVERY)
        return err_set(e, ERR_FORMAT, path,
                       "%zu sequence%s: at least %d are needed (every %dth is held out)", nseq,
                       nseq == 1 ? "" : "s", PROBE_SET_HOLDOUT_EVERY, PROBE_SET_HOLDOUT_EVERY);
    if (nseq > 10000000)
        return err_set(e, ERR_FORMAT, path, "%zu sequences: too many", nseq);

    /* sizes first */
    size_t ntok = 0;
    for (size_t i = 0; i < nseq; i++) {
        json_t *s = json_array_get(js, i);
        if (!json_is_object(s))
            return err_set(e, ERR_FORMAT, path, "sequence %zu is not an object", i);
        json_object_foreach(s, key, val)
        {
            if (strcmp(key, "tokens") && strcmp(key, "labels") && strcmp(key, "label"))
                return err_set(e, ERR_FORMAT, path,
                               "sequence %zu: unknown key \"%s\" (expected tokens and labels or "
                               "label)",
                               i, key);
        }
        json_t *jt = json_object_get(s, "tokens");
        if (!json_is_array(jt) || json_array_size(jt) == 0)
            return err_set(e, ERR_FORMAT, path, "sequence %zu: \"tokens\" must be a non-empty list",
                           i);
        ntok += json_array_size(jt);
        if (ntok > 0x7fffffff)
            return err_set(e, ERR_FORMAT, path, "more than 2^31 tokens");
    }
    ps->nseq = (int)nseq;
    ps->offsets = malloc((nseq + 1) * sizeof *ps->offsets);
    ps->tokens = malloc(ntok * sizeof *ps->tokens);
    ps->lab_seq = malloc(ntok * sizeof *ps->lab_seq);
    ps->lab_pos = malloc(ntok * sizeof *ps->lab_pos);
    struct raw_label *raw = NULL;
    if (ps->kind == PROBE_KIND_CLASSIFICATION)
        raw = malloc(ntok * sizeof *raw);
    else
        ps->lab_value = malloc(ntok * sizeof *ps->lab_value);
    if (!ps->offsets || !ps->tokens || !ps->lab_seq || !ps->lab_pos || (!raw && !ps->lab_value)) {
        free(raw);
        return err_set(e, ERR_NOMEM, path, "out of memory for %zu tokens", ntok);
    }
    int rc = 0, type0 = 0, o = 0, nlab = 0;
    for (size_t i = 0; i < nseq && rc == 0; i++) {
        json_t *s = json_array_get(js, i), *jt = json_object_get(s, "tokens");
        json_t *jls = json_object_get(s, "labels"), *jl1 = json_object_get(s, "label");
        int T = (int)json_array_size(jt);
        ps->offsets[i] = o;
        for (int t = 0; t < T; t++) {
            json_t *v = json_array_get(jt, (size_t)t);
            if (!json_is_integer(v) || json_integer_value(v) < 0 ||
                json_integer_value(v) > 0x7fffffff) {
                rc = err_set(e, ERR_FORMAT, path,
                             "sequence %zu, position %d: token is not a non-negative integer", i,
                             t);
                break;
            }
            ps->tokens[o + t] = (int)json_integer_value(v);
        }
        o += T;
        if (rc)
            break;
        if ((jls != NULL) == (jl1 != NULL)) {
            rc = err_set(e, ERR_FORMAT, path,
                         "sequence %zu: give either \"labels\" (one per token) or \"label\" (the "
                         "last token's), not %s",
                         i, jls ? "both" : "neither");
            break;
        }
        if (jls && (!json_is_array(jls) || json_array_size(jls) != (size_t)T)) {
            rc = err_set(e, ERR_FORMAT, path, "sequence %zu: %zu labels for %d tokens", i,
                         json_is_array(jls) ? json_array_size(jls) : 0, T);
            break;
        }
        for (int t = jls ? 0 : T - 1; t < T && rc == 0; t++) {
            json_t *v = jls ? json_array_get(jls, (size_t)t) : jl1;
            if (json_is_null(v)) {
                if (!jls)
                    rc = err_set(e, ERR_FORMAT, path, "sequence %zu: \"label\" is null", i);
                continue;
            }
            if (raw) {
                rc = read_class_label(v, (int)i, t, &type0, &raw[nlab], path, e);
            } else if (!json_is_number(v)) {
                rc = err_set(e, ERR_FORMAT, path,
                             "sequence %zu, position %d: a regression label must be a number", i,
                             t);
            } else {
                ps->lab_value[nlab] = (float)json_number_value(v);
            }
            ps->lab_seq[nlab] = (int)i;
            ps->lab_pos[nlab] = t;
            nlab++;
        }
    }
    ps->offsets[nseq] = o;
    ps->nlab = nlab;
    if (rc == 0 && nlab == 0)
        rc = err_set(e, ERR_FORMAT, path, "no labelled positions");
    int ntest = 0;
    for (int k = 0; rc == 0 && k < nlab; k++)
        ntest += probe_set_heldout(ps, k);
    if (rc == 0 && ntest == 0)
        rc = err_set(e, ERR_FORMAT, path,
                     "no labelled positions in the held-out sequences (index %% %d == %d)",
                     PROBE_SET_HOLDOUT_EVERY, PROBE_SET_HOLDOUT_EVERY - 1);
    if (rc == 0 && ntest == nlab)
        rc = err_set(e, ERR_FORMAT, path, "no labelled positions in the train sequences");
    if (rc == 0 && raw)
        rc = build_classes(ps, raw, e);
    if (rc == 0 && !raw) {
        int same = 1;
        for (int k = 1; k < nlab; k++)
            same &= ps->lab_value[k] == ps->lab_value[0];
        if (nlab < PROBE_SET_MIN_EXAMPLES)
            rc = err_set(e, ERR_FORMAT, path,
                         "%d labelled position%s: a regression probe needs at least %d (too few "
                         "examples)",
                         nlab, nlab == 1 ? "" : "s", PROBE_SET_MIN_EXAMPLES);
        else if (same)
            rc = err_set(e, ERR_FORMAT, path, "every regression label is %g: nothing to predict",
                         ps->lab_value[0]);
    }
    free(raw);
    return rc;
}

int probe_set_load(struct probe_set **out, const char *path, struct err *e)
{
    *out = NULL;
    struct probe_set *ps = calloc(1, sizeof *ps);
    if (!ps || !(ps->path = strdup(path))) {
        free(ps);
        return err_set(e, ERR_NOMEM, path, "out of memory");
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        int en = errno;
        probe_set_free(ps);
        return err_set(e, en == ENOENT ? ERR_NOTFOUND : ERR_IO, path, "cannot open probe set: %s",
                       strerror(en));
    }
    json_error_t je;
    errno = 0;
    json_t *root = json_loadf(f, JSON_REJECT_DUPLICATES, &je);
    fclose(f);
    int rc;
    if (!root)
        rc = json_err_nomem(&je)
                 ? err_set(e, ERR_NOMEM, path, "out of memory reading the JSON")
                 : err_set(e, ERR_FORMAT, path, "not valid JSON: %s (line %d, column %d)", je.text,
                           je.line, je.column);
    else
        rc = parse(ps, root, e);
    json_decref(root);
    if (rc < 0) {
        probe_set_free(ps);
        return rc;
    }
    *out = ps;
    return 0;
}

int probe_set_check(const struct probe_set *ps, const struct gptneox_config *cfg,
                    struct err *e)
{
    for (int i = 0; i < ps->nseq; i++) {
        int T = ps->offsets[i + 1] - ps->offsets[i];
        if (T > cfg->max_positions)
            return err_set(e, ERR_INVALID, ps->path,
                           "sequence %d has %d tokens, more than the model's "
                           "max_position_embeddings %d",
                           i, T, cfg->max_positions);
        for (int t = 0; t < T; t++)
            if (ps->tokens[ps->offsets[i] + t] >= cfg->vocab_size)
                return err_set(e, ERR_INVALID, ps->path,
                               "sequence %d, position %d: token %d is outside the vocabulary "
                               "[0, %d)",
                               i, t, ps->tokens[ps->offsets[i] + t], cfg->vocab_size);
    }
    for (int j = 0; j < ps->nlayers; j++)
        if (ps->layers[j] >= cfg->n_layers)
            return err_set(e, ERR_INVALID, ps->path,
                           "layer %d: the model has layers -1 (hook_embed) .. %d", ps->layers[j],
                           cfg->n_layers - 1);
    return 0;
}
