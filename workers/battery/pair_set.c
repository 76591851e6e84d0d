/* Prompt-pair datasets: the JSON format, its validation, the canonical
 * token form and the built-in induction pairs (pair_set.h). */
#include "workers/battery/pair_set.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/path.h"
#include "common/sha256.h"
#include "common/rng.h"

/* A growable list of ints. */
struct ivec {
    int *v;
    size_t n, cap;
};

static int ivec_push(struct ivec *a, int x)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 64;
        int *v = realloc(a->v, cap * sizeof *v);
        if (!v)
            return ERR_NOMEM;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = x;
    return 0;
}

void pair_set_free(struct pair_set *ps)
{
    if (!ps)
        return;
    free(ps->path);
    free(ps->name);
    free(ps->description);
    free(ps->clean);
    free(ps->corrupted);
    free(ps->ans_off);
    free(ps->ans);
    free(ps->wrong_off);
    free(ps->wrong);
    free(ps->pos);
    free(ps);
}

static const char *const pair_keys[] = {"clean",  "corrupted", "clean_text",  "corrupted_text",
                                        "answer", "wrong",     "answer_text", "wrong_text"};

/* The ids of a prompt: `ids` (a list of non-negative integers) or `text`
 * tokenized; exactly one of the two is non-NULL.  *out (caller frees) and
 * *n.  `what` names the field for messages. */
static int read_prompt(json_t *ids, json_t *text, struct tokenizer *tok, const char *path,
                       size_t i, const char *what, int **out, size_t *n, struct err *e)
{
    *out = NULL;
    *n = 0;
    if ((ids != NULL) == (text != NULL))
        return err_set(e, ERR_FORMAT, path, "pair %zu: give either \"%s\" (token ids) or "
                       "\"%s_text\", not %s", i, what, what, ids ? "both" : "neither");
    if (ids) {
        size_t T = json_is_array(ids) ? json_array_size(ids) : 0;
        if (T == 0)
            return err_set(e, ERR_FORMAT, path, "pair %zu: \"%s\" must be a non-empty list of "
                           "token ids", i, what);
        int *v = malloc(T * sizeof *v);
        if (!v)
            return err_set(e, ERR_NOMEM, path, "out of memory");
        for (size_t t = 0; t < T; t++) {
            json_t *x = json_array_get(ids, t);
            if (!json_is_integer(x) || json_integer_value(x) < 0 ||
                json_integer_value(x) > 0x7fffffff) {
                free(v);
                return err_set(e, ERR_FORMAT, path, "pair %zu, \"%s\" position %zu: not a "
                               "token id (a non-negative integer)", i, what, t);
            }
            v[t] = (int)json_integer_value(x);
        }
        *out = v;
        *n = T;
        return 0;
    }
    if (!json_is_string(text) || json_string_length(text) == 0)
        return err_set(e, ERR_FORMAT, path, "pair %zu: \"%s_text\" must be a non-empty string",
                       i, what);
    if (!tok)
        return err_set(e, ERR_INVALID, path, "pair %zu gives \"%s_text\": texts need the run's "
                       "tokenizer (ckpt-worker pairs check FILE --tokenizer TOKENIZER.json --out "
                       "TOKENS.json writes the token form; ckptd add-run --pairs does it)", i, what);
    struct err te;
    size_t len = json_string_length(text);
    if (tokenizer_encode(tok, json_string_value(text), len, out, n, &te) < 0)
        return err_set(e, te.code, path, "pair %zu: \"%s_text\": %s", i, what, te.msg);
    if (*n == 0) {
        free(*out);
        *out = NULL;
        return err_set(e, ERR_FORMAT, path, "pair %zu: \"%s_text\" has no tokens", i, what);
    }
    return 0;
}

/* One answer id or text into `dst`; `k` its index in a list, or -1. */
static int read_answer(json_t *v, int is_text, struct tokenizer *tok, const char *path, size_t i,
                       const char *what, long k, struct ivec *dst, struct err *e)
{
    char where[64];
    if (k >= 0)
        snprintf(where, sizeof where, "\"%s%s\"[%ld]", what, is_text ? "_text" : "", k);
    else
        snprintf(where, sizeof where, "\"%s%s\"", what, is_text ? "_text" : "");
    if (!is_text) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 0x7fffffff)
            return err_set(e, ERR_FORMAT, path, "pair %zu: %s is not a token id (a non-negative "
                           "integer)", i, where);
        return ivec_push(dst, (int)json_integer_value(v)) < 0
                   ? err_set(e, ERR_NOMEM, path, "out of memory")
                   : 0;
    }
    if (!json_is_string(v) || json_string_length(v) == 0)
        return err_set(e, ERR_FORMAT, path, "pair %zu: %s must be a non-empty string", i, where);
    if (!tok)
        return err_set(e, ERR_INVALID, path, "pair %zu gives %s: texts need the run's tokenizer "
                       "(ckpt-worker pairs check FILE --tokenizer TOKENIZER.json --out "
                       "TOKENS.json writes the token form; ckptd add-run --pairs does it)", i,
                       where);
    int *ids = NULL;
    size_t n = 0;
    struct err te;
    if (tokenizer_encode(tok, json_string_value(v), json_string_length(v), &ids, &n, &te) < 0)
        return err_set(e, te.code, path, "pair %zu: %s: %s", i, where, te.msg);
    int id = n == 1 ? ids[0] : -1;
    free(ids);
    if (n != 1)
        return err_set(e, ERR_FORMAT, path, "pair %zu: %s \"%s\" is %zu tokens; an answer must "
                       "be exactly one token", i, where, json_string_value(v), n);
    return ivec_push(dst, id) < 0 ? err_set(e, ERR_NOMEM, path, "out of memory") : 0;
}

/* The answers of pair i (`what` "answer" or "wrong") appended to dst. */
static int read_answers(json_t *pair, struct tokenizer *tok, const char *path, size_t i,
                        const char *what, struct ivec *dst, struct err *e)
{
    char tkey[32];
    snprintf(tkey, sizeof tkey, "%s_text", what);
    json_t *ids = json_object_get(pair, what), *text = json_object_get(pair, tkey);
    if ((ids != NULL) == (text != NULL))
        return err_set(e, ERR_FORMAT, path, "pair %zu: give either \"%s\" (token ids) or \"%s\", "
                       "not %s", i, what, tkey, ids ? "both" : "neither");
    json_t *v = ids ? ids : text;
    size_t before = dst->n;
    int rc = 0;
    if (json_is_array(v)) {
        size_t n = json_array_size(v);
        if (n == 0 || n > PAIR_SET_MAX_ANSWERS)
            return err_set(e, ERR_FORMAT, path, "pair %zu: \"%s\" lists %zu answers (1 to %d)",
                           i, ids ? what : tkey, n, PAIR_SET_MAX_ANSWERS);
        for (size_t k = 0; k < n && rc == 0; k++)
            rc = read_answer(json_array_get(v, k), text != NULL, tok, path, i, what, (long)k, dst,
                             e);
    } else {
        rc = read_answer(v, text != NULL, tok, path, i, what, -1, dst, e);
    }
    for (size_t a = before; rc == 0 && a < dst->n; a++)
        for (size_t b = before; b < a; b++)
            if (dst->v[a] == dst->v[b])
                return err_set(e, ERR_FORMAT, path, "pair %zu: \"%s\" lists token %d twice", i,
                               ids ? what : tkey, dst->v[a]);
    return rc;
}

/* The content hash of a validated set (its canonical JSON). */
static json_t *canonical_json(const struct pair_set *ps);

static int set_digest(struct pair_set *ps, struct err *e)
{
    json_t *doc = canonical_json(ps);
    char *text = doc ? json_dumps(doc, JSON_SORT_KEYS | JSON_COMPACT) : NULL;
    json_decref(doc);
    if (!text)
        return err_set(e, ERR_NOMEM, ps->path, "out of memory");
    struct sha256 h;
    char hex[SHA256_HEX];
    int rc = sha256_init(&h, e);
    if (rc == 0) {
        sha256_update(&h, text, strlen(text));
        sha256_final(&h, hex);
        snprintf(ps->digest, sizeof ps->digest, "%.16s", hex);
    }
    free(text);
    return rc;
}

/* Positions (a JSON list, or NULL for the default [-1]) against T. */
static int read_positions(struct pair_set *ps, json_t *jp, struct err *e)
{
    size_t n = jp ? (json_is_array(jp) ? json_array_size(jp) : 0) : 1;
    if (n == 0 || n > PAIR_SET_MAX_POSITIONS)
        return err_set(e, ERR_FORMAT, ps->path, "\"positions\" must be a list of 1 to %d "
                       "positions (0-based; negative counts from the end)", PAIR_SET_MAX_POSITIONS);
    if (!(ps->pos = malloc(n * sizeof *ps->pos)))
        return err_set(e, ERR_NOMEM, ps->path, "out of memory");
    for (size_t k = 0; k < n; k++) {
        json_t *v = jp ? json_array_get(jp, k) : NULL;
        long long p = v ? (json_is_integer(v) ? json_integer_value(v) : (long long)1 << 40) : -1;
        if (p < -(long long)ps->T || p >= ps->T)
            return err_set(e, ERR_FORMAT, ps->path, "\"positions\"[%zu] is not a position of "
                           "prompts of %d tokens (an integer in [%d, %d))", k, ps->T, -ps->T,
                           ps->T);
        int q = (int)(p < 0 ? p + ps->T : p), at = (int)k;
        for (size_t j = 0; j < k; j++)
            if (ps->pos[j] == q)
                return err_set(e, ERR_FORMAT, ps->path, "\"positions\" names position %d twice",
                               q);
        while (at > 0 && ps->pos[at - 1] > q) { /* keep them sorted */
            ps->pos[at] = ps->pos[at - 1];
            at--;
        }
        ps->pos[at] = q;
    }
    ps->npos = (int)n;
    return 0;
}

/* Checks shared by files and arrays, on a filled set. */
static int validate(const struct pair_set *ps, struct err *e)
{
    for (int b = 0; b < ps->B; b++) {
        if (memcmp(ps->clean + (size_t)b * ps->T, ps->corrupted + (size_t)b * ps->T,
                   (size_t)ps->T * sizeof(int)) == 0)
            return err_set(e, ERR_FORMAT, ps->path, "pair %d: clean and corrupted prompts are "
                           "the same: nothing to patch", b);
        for (int a = ps->ans_off[b]; a < ps->ans_off[b + 1]; a++)
            for (int w = ps->wrong_off[b]; w < ps->wrong_off[b + 1]; w++)
                if (ps->ans[a] == ps->wrong[w])
                    return err_set(e, ERR_FORMAT, ps->path, "pair %d: token %d is both an answer "
                                   "and a wrong answer", b, ps->ans[a]);
    }
    return 0;
}

static int parse(struct pair_set *ps, json_t *root, struct tokenizer *tok, struct err *e)
{
    const char *path = ps->path, *key;
    json_t *val;
    if (!json_is_object(root))
        return err_set(e, ERR_FORMAT, path, "a pair set is a JSON object with \"name\" and "
                       "\"pairs\"");
    json_object_foreach(root, key, val)
    {
        if (strcmp(key, "name") && strcmp(key, "description") && strcmp(key, "positions") &&
            strcmp(key, "pairs"))
            return err_set(e, ERR_FORMAT, path, "unknown key \"%s\" (expected name, description, "
                           "positions, pairs)", key);
    }
    json_t *jn = json_object_get(root, "name"), *jd = json_object_get(root, "description");
    json_t *jp = json_object_get(root, "pairs");
    if (!json_is_string(jn) || json_string_length(jn) == 0)
        return err_set(e, ERR_FORMAT, path, "\"name\" must be a non-empty string");
    if (jd && !json_is_string(jd))
        return err_set(e, ERR_FORMAT, path, "\"description\" must be a string");
    if (!(ps->name = strdup(json_string_value(jn))) ||
        !(ps->description = strdup(jd ? json_string_value(jd) : "")))
        return err_set(e, ERR_NOMEM, path, "out of memory");
    size_t B = json_is_array(jp) ? json_array_size(jp) : 0;
    if (B == 0)
        return err_set(e, ERR_FORMAT, path, "\"pairs\" must be a non-empty list");
    if (B > PAIR_SET_MAX_PAIRS)
        return err_set(e, ERR_FORMAT, path, "%zu pairs: at most %d", B, PAIR_SET_MAX_PAIRS);
    struct ivec ans = {0}, wrong = {0};
    int *cl = NULL, *co = NULL, rc = 0;
    ps->B = (int)B;
    ps->ans_off = calloc(B + 1, sizeof *ps->ans_off);
    ps->wrong_off = calloc(B + 1, sizeof *ps->wrong_off);
    if (!ps->ans_off || !ps->wrong_off)
        return err_set(e, ERR_NOMEM, path, "out of memory");
    for (size_t i = 0; i < B && rc == 0; i++) {
        json_t *p = json_array_get(jp, i);
        if (!json_is_object(p)) {
            rc = err_set(e, ERR_FORMAT, path, "pair %zu is not an object", i);
            break;
        }
        json_object_foreach(p, key, val)
        {
            int known = 0;
            for (size_t k = 0; k < sizeof pair_keys / sizeof *pair_keys; k++)
                known |= strcmp(key, pair_keys[k]) == 0;
            if (!known) {
                rc = err_set(e, ERR_FORMAT, path, "pair %zu: unknown key \"%s\" (expected clean "
                             "or clean_text, corrupted or corrupted_text, answer or answer_text, "
                             "wrong or wrong_text)", i, key);
                break;
            }
        }
        size_t nc = 0, nk = 0;
        if (rc == 0)
            rc = read_prompt(json_object_get(p, "clean"), json_object_get(p, "clean_text"), tok,
                             path, i, "clean", &cl, &nc, e);
        if (rc == 0)
            rc = read_prompt(json_object_get(p, "corrupted"),
                             json_object_get(p, "corrupted_text"), tok, path, i, "corrupted", &co,
                             &nk, e);
        if (rc == 0 && nc != nk)
            rc = err_set(e, ERR_FORMAT, path, "pair %zu: the clean prompt has %zu tokens, the "
                         "corrupted %zu: they must be of equal length", i, nc, nk);
        if (rc == 0 && i == 0) {
            if (nc > 1000000) {
                rc = err_set(e, ERR_FORMAT, path, "pair 0: %zu tokens: too long", nc);
                break;
            }
            ps->T = (int)nc;
            ps->clean = malloc(B * nc * sizeof *ps->clean);
            ps->corrupted = malloc(B * nc * sizeof *ps->corrupted);
            if (!ps->clean || !ps->corrupted)
                rc = err_set(e, ERR_NOMEM, path, "out of memory for %zu pairs of %zu tokens", B,
                             nc);
        }
        if (rc == 0 && nc != (size_t)ps->T)
            rc = err_set(e, ERR_FORMAT, path, "pair %zu has prompts of %zu tokens, pair 0 of "
                         "%d: every prompt of a set has the same length", i, nc, ps->T);
        if (rc == 0) {
            memcpy(ps->clean + i * nc, cl, nc * sizeof *cl);
            memcpy(ps->corrupted + i * nc, co, nc * sizeof *co);
            rc = read_answers(p, tok, path, i, "answer", &ans, e);
        }
        if (rc == 0)
            rc = read_answers(p, tok, path, i, "wrong", &wrong, e);
        ps->ans_off[i + 1] = (int)ans.n;
        ps->wrong_off[i + 1] = (int)wrong.n;
        free(cl);
        free(co);
        cl = co = NULL;
    }
    ps->ans = ans.v;
    ps->wrong = wrong.v;
    if (rc == 0)
        rc = read_positions(ps, json_object_get(root, "positions"), e);
    if (rc == 0)
        rc = validate(ps, e);
    return rc;
}

int pair_set_load(struct pair_set **out, const char *path, struct tokenizer *tok, struct err *e)
{
    *out = NULL;
    struct pair_set *ps = calloc(1, sizeof *ps);
    if (!ps || !(ps->path = strdup(path))) {
        free(ps);
        return err_set(e, ERR_NOMEM, path, "out of memory");
    }
    json_t *root = NULL;
    int rc;
    FILE *f = fopen(path, "rb");
    if (!f) {
        int en = errno;
        rc = err_set(e, en == ENOENT ? ERR_NOTFOUND : ERR_IO, path, "cannot open pair set: %s",
                     strerror(en));
        goto out;
    }
    json_error_t je;
    root = json_loadf(f, JSON_REJECT_DUPLICATES, &je);
    fclose(f);
    if (!root)
        rc = err_set(e, ERR_FORMAT, path, "not valid JSON: %s (line %d, column %d)", je.text,
                     je.line, je.column);
    else if ((rc = parse(ps, root, tok, e)) == 0)
        rc = set_digest(ps, e);
out:
    json_decref(root);
    if (rc < 0) {
        pair_set_free(ps);
        return rc;
    }
    *out = ps;
    return 0;
}

int pair_set_check(const struct pair_set *ps, const struct gptneox_config *cfg, struct err *e)
{
    const char *src = ps->path[0] ? ps->path : ps->name;
    if (ps->T > cfg->max_positions)
        return err_set(e, ERR_INVALID, src, "prompts of %d tokens are longer than the model's "
                       "max_position_embeddings %d", ps->T, cfg->max_positions);
    const int V = cfg->vocab_size;
    for (int b = 0; b < ps->B; b++) {
        for (int t = 0; t < ps->T; t++) {
            int c = ps->clean[(size_t)b * ps->T + t], k = ps->corrupted[(size_t)b * ps->T + t];
            if (c >= V || k >= V)
                return err_set(e, ERR_INVALID, src, "pair %d, position %d: token %d of the %s "
                               "prompt is outside the vocabulary [0, %d)", b, t, c >= V ? c : k,
                               c >= V ? "clean" : "corrupted", V);
        }
        for (int a = ps->ans_off[b]; a < ps->ans_off[b + 1]; a++)
            if (ps->ans[a] >= V)
                return err_set(e, ERR_INVALID, src, "pair %d: answer %d is outside the "
                               "vocabulary [0, %d)", b, ps->ans[a], V);
        for (int w = ps->wrong_off[b]; w < ps->wrong_off[b + 1]; w++)
            if (ps->wrong[w] >= V)
                return err_set(e, ERR_INVALID, src, "pair %d: wrong answer %d is outside the "
                               "vocabulary [0, %d)", b, ps->wrong[w], V);
    }
    return 0;
}

static json_t *int_list(const int *v, int n)
{
    json_t *a = json_array();
    for (int i = 0; a && i < n; i++)
        if (json_array_append_new(a, json_integer(v[i])) != 0) {
            json_decref(a);
            return NULL;
        }
    return a;
}

static json_t *canonical_json(const struct pair_set *ps)
{
    json_t *pairs = json_array();
    for (int b = 0; pairs && b < ps->B; b++) {
        json_t *p = json_pack("{s:o, s:o, s:o, s:o}", "clean",
                              int_list(ps->clean + (size_t)b * ps->T, ps->T), "corrupted",
                              int_list(ps->corrupted + (size_t)b * ps->T, ps->T), "answer",
                              int_list(ps->ans + ps->ans_off[b], ps->ans_off[b + 1] - ps->ans_off[b]),
                              "wrong",
                              int_list(ps->wrong + ps->wrong_off[b],
                                       ps->wrong_off[b + 1] - ps->wrong_off[b]));
        if (!p || json_array_append_new(pairs, p) != 0) {
            json_decref(pairs);
            return NULL;
        }
    }
    if (!pairs)
        return NULL;
    json_t *doc = json_pack("{s:s, s:o, s:o}", "name", ps->name, "positions",
                            int_list(ps->pos, ps->npos), "pairs", pairs);
    if (doc && ps->description[0] &&
        json_object_set_new(doc, "description", json_string(ps->description)) != 0) {
        json_decref(doc);
        return NULL;
    }
    return doc;
}

/* Append text to a growing buffer; -1 when out of memory. */
static int buf_add(char **buf, size_t *len, size_t *cap, const char *text)
{
    size_t n = strlen(text);
    if (*len + n + 1 > *cap) {
        size_t c = (*cap ? *cap : 4096);
        while (c < *len + n + 1)
            c *= 2;
        char *b = realloc(*buf, c);
        if (!b)
            return -1;
        *buf = b;
        *cap = c;
    }
    memcpy(*buf + *len, text, n + 1);
    *len += n;
    return 0;
}

int pair_set_write(const struct pair_set *ps, const char *path, struct err *e)
{
    /* the canonical JSON, one pair per line: readable, diff-friendly */
    json_t *doc = canonical_json(ps), *pairs = doc ? json_object_get(doc, "pairs") : NULL;
    char *buf = NULL, *piece = NULL;
    size_t len = 0, cap = 0;
    int ok = doc != NULL;
    if (ok) {
        json_incref(pairs);
        json_object_del(doc, "pairs");
        piece = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
        ok = piece && piece[strlen(piece) - 1] == '}';
        if (ok) {
            piece[strlen(piece) - 1] = '\0'; /* reopened for "pairs" */
            ok = buf_add(&buf, &len, &cap, piece) == 0 &&
                 buf_add(&buf, &len, &cap, ",\n \"pairs\":[\n") == 0;
        }
        free(piece);
    }
    for (size_t b = 0; ok && b < json_array_size(pairs); b++) {
        piece = json_dumps(json_array_get(pairs, b), JSON_COMPACT | JSON_PRESERVE_ORDER);
        ok = piece && buf_add(&buf, &len, &cap, "  ") == 0 && buf_add(&buf, &len, &cap, piece) == 0 &&
             buf_add(&buf, &len, &cap, b + 1 < json_array_size(pairs) ? ",\n" : "\n") == 0;
        free(piece);
    }
    ok = ok && buf_add(&buf, &len, &cap, " ]}\n") == 0;
    json_decref(pairs);
    json_decref(doc);
    int rc = ok ? path_write_atomic(path, buf, e) : err_set(e, ERR_NOMEM, path, "out of memory");
    free(buf);
    return rc;
}

int pair_set_from_lists(struct pair_set **out, const char *name, const char *description, int B,
                        int T, const int *clean, const int *corrupted, const int *ans_off,
                        const int *ans, const int *wrong_off, const int *wrong, const int *pos,
                        int npos, struct err *e)
{
    *out = NULL;
    if (B <= 0 || T <= 0 || B > PAIR_SET_MAX_PAIRS || npos <= 0 || npos > PAIR_SET_MAX_POSITIONS)
        return err_set(e, ERR_FORMAT, name, "%d pairs of %d tokens with %d positions: not a set",
                       B, T, npos);
    for (int b = 0; b < B; b++) {
        int na = ans_off[b + 1] - ans_off[b], nw = wrong_off[b + 1] - wrong_off[b];
        if (na < 1 || nw < 1 || na > PAIR_SET_MAX_ANSWERS || nw > PAIR_SET_MAX_ANSWERS)
            return err_set(e, ERR_FORMAT, name, "pair %d: %d answers and %d wrong answers (1 to "
                           "%d each)", b, na, nw, PAIR_SET_MAX_ANSWERS);
    }
    struct pair_set *ps = calloc(1, sizeof *ps);
    int rc = ERR_NOMEM;
    if (!ps)
        return err_set(e, ERR_NOMEM, name, "out of memory");
    size_t n = (size_t)B * T, na = (size_t)ans_off[B], nw = (size_t)wrong_off[B];
    ps->B = B;
    ps->T = T;
    ps->path = strdup("");
    ps->name = strdup(name);
    ps->description = strdup(description ? description : "");
    ps->clean = malloc(n * sizeof *ps->clean);
    ps->corrupted = malloc(n * sizeof *ps->corrupted);
    ps->ans_off = malloc(((size_t)B + 1) * sizeof *ps->ans_off);
    ps->wrong_off = malloc(((size_t)B + 1) * sizeof *ps->wrong_off);
    ps->ans = malloc(na * sizeof *ps->ans);
    ps->wrong = malloc(nw * sizeof *ps->wrong);
    ps->pos = malloc((size_t)npos * sizeof *ps->pos);
    if (!ps->path || !ps->name || !ps->description || !ps->clean || !ps->corrupted ||
        !ps->ans_off || !ps->wrong_off || !ps->ans || !ps->wrong || !ps->pos) {
        rc = err_set(e, ERR_NOMEM, name, "out of memory");
        goto out;
    }
    memcpy(ps->clean, clean, n * sizeof *clean);
    memcpy(ps->corrupted, corrupted, n * sizeof *corrupted);
    memcpy(ps->ans_off, ans_off, ((size_t)B + 1) * sizeof *ans_off);
    memcpy(ps->wrong_off, wrong_off, ((size_t)B + 1) * sizeof *wrong_off);
    memcpy(ps->ans, ans, na * sizeof *ans);
    memcpy(ps->wrong, wrong, nw * sizeof *wrong);
    for (int k = 0; k < npos; k++) {
        int q = pos[k], at = k;
        if (q < 0 || q >= T) {
            rc = err_set(e, ERR_FORMAT, name, "position %d is outside [0, %d)", q, T);
            goto out;
        }
        for (int j = 0; j < k; j++)
            if (ps->pos[j] == q) {
                rc = err_set(e, ERR_FORMAT, name, "position %d given twice", q);
                goto out;
            }
        while (at > 0 && ps->pos[at - 1] > q) {
            ps->pos[at] = ps->pos[at - 1];
            at--;
        }
        ps->pos[at] = q;
    }
    ps->npos = npos;
    for (size_t i = 0; i < n; i++)
        if (clean[i] < 0 || corrupted[i] < 0) {
            rc = err_set(e, ERR_FORMAT, name, "pair %zu: a negative token id", i / (size_t)T);
            goto out;
        }
    for (size_t i = 0; i < na || i < nw; i++)
        if ((i < na && ans[i] < 0) || (i < nw && wrong[i] < 0)) {
            rc = err_set(e, ERR_FORMAT, name, "a negative answer id");
            goto out;
        }
    if ((rc = validate(ps, e)) == 0)
        rc = set_digest(ps, e);
out:
    if (rc < 0) {
        pair_set_free(ps);
        return rc;
    }
    *out = ps;
    return 0;
}

int pair_set_from_arrays(struct pair_set **out, const char *name, const char *description, int B,
                         int T, const int *clean, const int *corrupted, const int *ans,
                         const int *wrong, const int *pos, int npos, struct err *e)
{
    *out = NULL;
    if (B <= 0 || B > PAIR_SET_MAX_PAIRS)
        return err_set(e, ERR_FORMAT, name, "%d pairs: 1 to %d", B, PAIR_SET_MAX_PAIRS);
    int *off = malloc(((size_t)B + 1) * sizeof *off);
    if (!off)
        return err_set(e, ERR_NOMEM, name, "out of memory");
    for (int b = 0; b <= B; b++)
        off[b] = b;
    int rc = pair_set_from_lists(out, name, description, B, T, clean, corrupted, off, ans, off,
                                 wrong, pos, npos, e);
    free(off);
    return rc;
}

/* n distinct ids from [1, V) not in avoid[0..navoid) into dst. */
static void draw_distinct(int *dst, int n, const int *avoid, int navoid, int V, uint64_t *s)
{
    for (int j = 0; j < n; j++) {
        int id, seen;
        do {
            id = (int)rng_below(s, (uint32_t)V);
            seen = id == PAIR_IND_BOS;
            for (int k = 0; k < j && !seen; k++)
                seen = dst[k] == id;
            for (int k = 0; k < navoid && !seen; k++)
                seen = avoid[k] == id;
        } while (seen);
        dst[j] = id;
    }
}

int pair_set_induction(struct pair_set **out, int V, int max_positions, int npairs, int len,
                       uint64_t seed, struct err *e)
{
    *out = NULL;
    int L = len > 0 ? len : PAIR_IND_LEN;
    L = max_positions / 2 < L ? max_positions / 2 : L;
    L = (V - 1) / 2 < L ? (V - 1) / 2 : L;
    if (L < 2)
        return err_set(e, ERR_INVALID, NULL, "a vocabulary of %d ids and %d positions leave no "
                       "room for induction pairs (at least 5 ids and 4 positions)", V,
                       max_positions);
    if (npairs <= 0 || npairs > PAIR_SET_MAX_PAIRS)
        return err_set(e, ERR_INVALID, NULL, "%d induction pairs: 1 to %d", npairs,
                       PAIR_SET_MAX_PAIRS);
    const int T = 2 * L, B = npairs;
    int *clean = malloc((size_t)B * T * sizeof *clean);
    int *corr = malloc((size_t)B * T * sizeof *corr);
    int *ans = malloc((size_t)B * sizeof *ans), *wrong = malloc((size_t)B * sizeof *wrong);
    int *r = malloc(((size_t)L + 2) * sizeof *r);
    int rc;
    if (!clean || !corr || !ans || !wrong || !r) {
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory for induction pairs");
        goto out;
    }
    uint64_t s = seed ^ PAIR_IND_SALT;
    for (int b = 0; b < B; b++) {
        int *c = clean + (size_t)b * T, *k = corr + (size_t)b * T;
        draw_distinct(r, L, NULL, 0, V, &s);     /* R */
        draw_distinct(r + L, 2, r, L, V, &s);    /* Z, W: outside R */
        c[0] = PAIR_IND_BOS;
        for (int j = 0; j < L; j++)
            c[1 + j] = r[j];
        for (int j = 0; j + 1 < L; j++)
            c[1 + L + j] = r[j];
        memcpy(k, c, (size_t)T * sizeof *k);
        k[L - 1] = r[L];                         /* R[L-2] -> Z */
        ans[b] = r[L - 1];
        wrong[b] = r[L + 1];
    }
    int pos[3] = {L - 1, L, T - 1};
    char desc[200];
    snprintf(desc, sizeof desc, "induction: [BOS, R, R[0..L-2]] with L = %d; corrupted: the "
             "first copy's R[L-2] replaced by Z; answer R[L-1], wrong W (in neither); seed %llu",
             L, (unsigned long long)seed);
    rc = pair_set_from_arrays(out, "induction", desc, B, T, clean, corr, ans, wrong, pos, 3, e);
out:
    free(r);
    free(wrong);
    free(ans);
    free(corr);
    free(clean);
    return rc;
}
