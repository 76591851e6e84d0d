/* SAE dictionaries on disk: SAELens 6 written; SAELens 6, pre-6.0 and
 * sparsify read.  The rules and their sources are in sae_file.h. */
#include "workers/battery/sae_file.h"

#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common/json_err.h"
#include "common/path.h"
#include "workers/model/safetensors.h"
#include "workers/model/tensor.h"

const char *sae_format_name(enum sae_format f)
{
    static const char *const names[SAE_FORMAT_COUNT] = {"saelens", "saelens-legacy", "sparsify"};
    return (unsigned)f < SAE_FORMAT_COUNT ? names[f] : NULL;
}

/* ---- writing ---- */

/* metadata.model_from_pretrained_kwargs: the checkpoint, then the flags of
 * TransformerLens's from_pretrained_no_processing. */
static json_t *pretrained_kwargs(const struct sae_meta *m)
{
    json_t *kw = json_object();
    if (!kw)
        return NULL;
    if (m->revision)
        json_object_set_new(kw, "revision", json_string(m->revision));
    else if (m->step >= 0)
        json_object_set_new(kw, "checkpoint_value", json_integer(m->step));
    static const char *const flags[] = {"fold_ln", "center_writing_weights", "center_unembed",
                                        "fold_value_biases", "refactor_factored_attn_matrices"};
    for (size_t i = 0; i < sizeof flags / sizeof *flags; i++)
        json_object_set_new(kw, flags[i], json_false());
    return kw;
}

static json_t *str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

int sae_save(const struct sae *s, const char *dir, const struct sae_meta *meta,
             const float *log_sparsity, struct err *e)
{
    char path[4096];
    const int C = s->d_in, S = s->d_sae;
    if (!s->apply_b_dec)
        return err_set(e, ERR_INVALID, dir, "only dictionaries that subtract b_dec are written");
    struct st_write_tensor w[5] = {
        {"W_enc", ST_F32, 2, {C, S}, s->W_enc},
        {"W_dec", ST_F32, 2, {S, C}, s->W_dec},
        {"b_enc", ST_F32, 1, {S}, s->b_enc},
        {"b_dec", ST_F32, 1, {C}, s->b_dec},
        {"threshold", ST_F32, 1, {S}, s->threshold},
    };
    static const char *const fmt_pt[] = {"format", "pt", NULL};
    if (snprintf(path, sizeof path, "%s/%s", dir, SAE_WEIGHTS_FILE) >= (int)sizeof path)
        return err_set(e, ERR_IO, dir, "path too long");
    if (st_write(path, w, s->threshold ? 5 : 4, fmt_pt, e) < 0)
        return e ? e->code : ERR_IO;
    if (log_sparsity) {
        struct st_write_tensor sp = {"sparsity", ST_F32, 1, {S}, log_sparsity};
        snprintf(path, sizeof path, "%s/%s", dir, SAE_SPARSITY_FILE);
        if (st_write(path, &sp, 1, fmt_pt, e) < 0)
            return e ? e->code : ERR_IO;
    }
    /* cfg.json: SAELens 6's SAEConfig.to_dict(), fields in declaration
     * order, then architecture */
    json_t *c = json_object(), *md = json_object(), *ck = json_object(), *sl = json_array();
    json_t *kw = pretrained_kwargs(meta);
    char *text = NULL, *withnl = NULL;
    int rc = 0;
    if (!c || !md || !ck || !sl || !kw) {
        json_decref(c);
        json_decref(md);
        json_decref(ck);
        json_decref(sl);
        json_decref(kw);
        return err_set(e, ERR_NOMEM, dir, "out of memory for cfg.json");
    }
    json_object_set_new(c, "d_in", json_integer(C));
    json_object_set_new(c, "d_sae", json_integer(S));
    json_object_set_new(c, "dtype", json_string("float32"));
    json_object_set_new(c, "device", json_string("cpu"));
    json_object_set_new(c, "apply_b_dec_to_input", json_true());
    json_object_set_new(c, "normalize_activations", json_string("none"));
    json_object_set_new(c, "reshape_activations",
                        json_string(meta->hook_name && strstr(meta->hook_name, "hook_z") ? "hook_z"
                                                                                        : "none"));
    json_object_set_new(md, "sae_lens_version", json_string(SAE_SAELENS_VERSION));
    json_object_set_new(md, "sae_lens_training_version", json_null());
    json_object_set_new(md, "model_name", str_or_null(meta->model_name));
    json_object_set_new(md, "model_class_name", json_string("HookedTransformer"));
    json_object_set_new(md, "hook_name", str_or_null(meta->hook_name));
    json_object_set_new(md, "hook_head_index", json_null());
    json_object_set_new(md, "context_size", json_integer(meta->context_size));
    json_object_set_new(md, "prepend_bos", json_false());
    json_object_set_new(md, "dataset_path", str_or_null(meta->dataset_path));
    json_array_append_new(sl, json_null());
    json_object_set_new(md, "seqpos_slice", sl);
    json_object_set_new(md, "model_from_pretrained_kwargs", kw);
    json_object_set_new(ck, "run", str_or_null(meta->run));
    json_object_set_new(ck, "step", meta->step >= 0 ? json_integer(meta->step) : json_null());
    json_object_set_new(ck, "item", str_or_null(meta->item));
    json_object_set_new(ck, "item_version", json_integer(meta->item_version));
    json_object_set_new(ck, "train_tokens", json_integer(meta->train_tokens));
    json_object_set_new(ck, "seed", json_integer((json_int_t)meta->seed));
    json_object_set_new(ck, "norm_scaling_factor", json_real(meta->norm_scaling_factor));
    json_object_set_new(ck, "warm_start", json_boolean(meta->warm_start));
    json_object_set_new(md, "ckptd", ck);
    json_object_set_new(c, "metadata", md);
    if (s->arch == SAE_TOPK) {
        json_object_set_new(c, "k", json_integer(s->k));
        json_object_set_new(c, "rescale_acts_by_decoder_norm", json_false());
    }
    json_object_set_new(c, "architecture", json_string(sae_arch_name(s->arch)));
    text = json_dumps(c, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
    json_decref(c);
    size_t n = text ? strlen(text) : 0;
    if (!text || !(withnl = malloc(n + 2))) {
        rc = err_set(e, ERR_NOMEM, dir, "out of memory for cfg.json");
        goto out;
    }
    memcpy(withnl, text, n);
    withnl[n] = '\n';
    withnl[n + 1] = '\0';
    snprintf(path, sizeof path, "%s/%s", dir, SAE_CFG_FILE);
    rc = path_write_atomic(path, withnl, e);
out:
    free(withnl);
    free(text);
    return rc;
}

/* ---- PEP 440, as far as SAELens's test needs it ---- */

/* Skip an optional separator [-_.]. */
static const char *skip_sep(const char *p)
{
    return *p == '-' || *p == '_' || *p == '.' ? p + 1 : p;
}

/* A case-insensitive prefix among names; returns its length, 0 if none. */
static size_t match_word(const char *p, const char *const *names, int *which)
{
    for (int i = 0; names[i]; i++) {
        size_t n = strlen(names[i]);
        if (strncasecmp(p, names[i], n) == 0 && !isalpha((unsigned char)p[n])) {
            *which = i;
            return n;
        }
    }
    return 0;
}

static const char *read_num(const char *p, long long *v)
{
    if (!isdigit((unsigned char)*p))
        return NULL;
    *v = 0;
    while (isdigit((unsigned char)*p)) {
        if (*v < 1000000000000LL)
            *v = *v * 10 + (*p - '0');
        p++;
    }
    return p;
}

int sae_version_is_6(const char *v, int *is6, struct err *e)
{
    /* [v][N!]N(.N)*[{a|b|rc}[N]][.post[N]][.dev[N]][+local], with PEP 440's
     * separators and spellings */
    static const char *const pre_names[] = {"alpha", "beta", "preview", "pre", "rc", "a", "b", "c",
                                            NULL};
    static const int pre_rank[] = {0, 1, 2, 2, 2, 0, 1, 2}; /* a < b < rc */
    static const char *const post_names[] = {"post", "rev", "r", NULL};
    static const char *const dev_names[] = {"dev", NULL};
    const char *p = v, *q, *s;
    long long rel[3] = {0, 0, 0}, n = 0, epoch = 0, pre_n = 0;
    int nrel = 0, pre = -1, post = 0, dev = 0, w = 0, extra = 0;
    size_t len;
    while (isspace((unsigned char)*p))
        p++;
    if (*p == 'v' || *p == 'V')
        p++;
    if ((q = read_num(p, &n)) && *q == '!') {
        epoch = n;
        p = q + 1;
    }
    for (;;) { /* the release: 6.0.0.1 > 6.0.0, so later parts only count as "more" */
        if (!(q = read_num(p, &n)))
            goto bad;
        if (nrel < 3)
            rel[nrel] = n;
        else
            extra |= n > 0;
        nrel++;
        p = q;
        if (*p != '.' || !isdigit((unsigned char)p[1]))
            break;
        p++;
    }
    s = skip_sep(p);
    if ((len = match_word(s, pre_names, &w))) {
        pre = pre_rank[w];
        p = s + len;
        if ((q = read_num(skip_sep(p), &n))) {
            pre_n = n;
            p = q;
        }
    }
    s = skip_sep(p);
    if (*p == '-' && isdigit((unsigned char)p[1])) {
        post = 1;
        p = read_num(p + 1, &n);
    } else if ((len = match_word(s, post_names, &w))) {
        post = 1;
        p = s + len;
        if ((q = read_num(skip_sep(p), &n)))
            p = q;
    }
    s = skip_sep(p);
    if ((len = match_word(s, dev_names, &w))) {
        dev = 1;
        p = s + len;
        if ((q = read_num(skip_sep(p), &n)))
            p = q;
    }
    if (*p == '+') { /* a local label */
        p++;
        if (!isalnum((unsigned char)*p))
            goto bad;
        while (isalnum((unsigned char)*p) || *p == '.' || *p == '-' || *p == '_')
            p++;
    }
    while (isspace((unsigned char)*p))
        p++;
    if (*p)
        goto bad;
    /* compare with 6.0.0rc0 */
    int cmp = epoch > 0 ? 1 : 0;
    static const long long six[3] = {6, 0, 0};
    for (int i = 0; i < 3 && cmp == 0; i++)
        cmp = rel[i] > six[i] ? 1 : rel[i] < six[i] ? -1 : 0;
    if (cmp == 0 && extra)
        cmp = 1;
    if (cmp == 0) {
        if (pre < 0)       /* 6.0.0 and 6.0.0.postN above; 6.0.0.devN below all pre-releases */
            cmp = dev && !post ? -1 : 1;
        else if (pre < 2)  /* 6.0.0a, 6.0.0b */
            cmp = -1;
        else if (pre_n > 0)
            cmp = 1;
        else               /* rc0: rc0.devN below, rc0 and rc0.postN not */
            cmp = dev && !post ? -1 : 1;
    }
    *is6 = cmp >= 0;
    return 0;
bad:
    return err_set(e, ERR_FORMAT, NULL, "\"%s\" is not a PEP 440 version", v);
}

/* ---- reading: helpers ---- */

/* cfg[key] as a bool: absent -> def; otherwise it must be true/false. */
static int get_bool(json_t *o, const char *key, int def, const char *path, int *out, struct err *e)
{
    json_t *v = json_object_get(o, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v))
        return err_set(e, ERR_FORMAT, path, "\"%s\" is not true or false", key);
    *out = json_is_true(v);
    return 0;
}

/* cfg[key] as an int in [lo, hi]: absent -> def (or an error when
 * required). */
static int get_int(json_t *o, const char *key, int required, long long def, long long lo,
                   long long hi, const char *path, long long *out, struct err *e)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (required)
            return err_set(e, ERR_FORMAT, path, "\"%s\" is missing", key);
        *out = def;
        return 0;
    }
    if (!json_is_integer(v))
        return err_set(e, ERR_FORMAT, path, "\"%s\" is not an integer", key);
    long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return err_set(e, ERR_FORMAT, path, "\"%s\" is %lld, outside [%lld, %lld]", key, x, lo, hi);
    *out = x;
    return 0;
}

/* cfg[key] as a string: absent or null -> def; else it must be a string. */
static int get_str(json_t *o, const char *key, const char *def, const char *path, const char **out,
                   struct err *e)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_string(v))
        return err_set(e, ERR_FORMAT, path, "\"%s\" is not a string", key);
    *out = json_string_value(v);
    return 0;
}

/* SAELens's DTYPE_MAP: the dtype's canonical name, or NULL. */
static const char *dtype_canon(const char *d)
{
    static const char *const names[] = {"float32", "float64", "float16", "bfloat16"};
    if (strncmp(d, "torch.", 6) == 0)
        d += 6;
    for (size_t i = 0; i < 4; i++)
        if (strcmp(d, names[i]) == 0)
            return names[i];
    return NULL;
}

/* Round v (n) through the dtype SAELens casts to (a no-op for float32 and
 * float64, which ckptd computes in F32). */
static void cast_through(float *v, size_t n, const char *dtype)
{
    if (strcmp(dtype, "float16") == 0)
        for (size_t i = 0; i < n; i++)
            v[i] = f16_to_f32(f32_to_f16(v[i]));
    else if (strcmp(dtype, "bfloat16") == 0)
        for (size_t i = 0; i < n; i++)
            v[i] = bf16_to_f32(f32_to_bf16(v[i]));
}

/* Tensor `name` of st, shape dims (ndim), into dst as F32 cast through
 * dtype (NULL: the stored dtype), every value finite.  transpose: the file
 * holds the [dims[1], dims[0]] transpose (sparsify's encoder.weight).
 * dst NULL: only its presence, dtype and shape are checked. */
static int read_tensor(const struct st_file *st, const char *path, const char *name, int ndim,
                       const int64_t *dims, int transpose, const char *dtype, float *dst,
                       struct err *e)
{
    const struct st_tensor *t = st_find(st, name);
    if (!t)
        return err_set(e, ERR_FORMAT, path, "tensor %s is missing", name);
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16 && t->dtype != ST_F64)
        return err_set(e, ERR_UNSUPPORTED, path, "tensor %s is %s; F32, F16, BF16 or F64 is read",
                       name, st_dtype_name(t->dtype));
    int64_t want[2] = {dims[0], ndim > 1 ? dims[1] : 0};
    if (transpose) {
        want[0] = dims[1];
        want[1] = dims[0];
    }
    int ok = t->ndim == ndim;
    for (int d = 0; ok && d < ndim; d++)
        ok = t->shape[d] == want[d];
    if (!ok) {
        char got[64] = "", exp[64];
        for (int d = 0; d < t->ndim && d < 4; d++) {
            size_t l = strlen(got);
            snprintf(got + l, sizeof got - l, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
        }
        if (ndim == 2)
            snprintf(exp, sizeof exp, "%lld, %lld", (long long)want[0], (long long)want[1]);
        else
            snprintf(exp, sizeof exp, "%lld", (long long)want[0]);
        return err_set(e, ERR_FORMAT, path, "tensor %s has shape [%s]; cfg.json implies [%s]", name,
                       got, exp);
    }
    if (!dst)
        return 0; /* the check alone */
    const size_t n = t->nelem;
    float *tmp = transpose ? malloc(n * sizeof *tmp) : dst;
    if (!tmp)
        return err_set(e, ERR_NOMEM, path, "out of memory for tensor %s", name);
    if (t->dtype == ST_F64) {
        const unsigned char *src = t->data;
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, src + i * sizeof d, sizeof d);
            tmp[i] = (float)d;
        }
    } else if (tensor_to_f32(tmp, t->data, t->dtype, n) < 0) {
        if (transpose)
            free(tmp);
        return err_set(e, ERR_UNSUPPORTED, path, "tensor %s: dtype %s", name,
                       st_dtype_name(t->dtype));
    }
    if (dtype)
        cast_through(tmp, n, dtype);
    if (transpose) { /* file (R, Q) -> dst (Q, R) */
        const size_t R = (size_t)want[0], Q = (size_t)want[1];
        for (size_t r = 0; r < R; r++)
            for (size_t q = 0; q < Q; q++)
                dst[q * R + r] = tmp[r * Q + q];
        free(tmp);
    }
    size_t bad = tensor_find_nonfinite(dst, n);
    if (bad != (size_t)-1)
        return err_set(e, ERR_NUMERIC, path, "tensor %s holds a non-finite value at %zu%s", name,
                       bad, dtype && strcmp(dtype, "float32") != 0 && strcmp(dtype, "float64") != 0
                                ? " (after the cast to cfg.json's dtype)"
                                : "");
    return 0;
}

/* Every tensor of st is in names (NULL-terminated), or "scaling_factor" of
 * all ones (dropped, as SAELens drops it). */
static int check_tensor_set(const struct st_file *st, const char *path, const char *const *names,
                            const char *why, struct err *e)
{
    for (size_t i = 0; i < st_count(st); i++) {
        const struct st_tensor *t = st_get(st, i);
        int known = 0;
        for (int k = 0; names[k] && !known; k++)
            known = strcmp(t->name, names[k]) == 0;
        if (known)
            continue;
        if (strcmp(t->name, "scaling_factor") == 0) {
            int ones = t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16;
            float *v = ones ? malloc(t->nelem * sizeof *v + 1) : NULL;
            if (ones && !v)
                return err_set(e, ERR_NOMEM, path, "out of memory");
            if (v && tensor_to_f32(v, t->data, t->dtype, t->nelem) == 0)
                for (size_t k = 0; k < t->nelem && ones; k++)
                    ones = v[k] == 1.0f;
            free(v);
            if (ones)
                continue;
            return err_set(e, ERR_UNSUPPORTED, path,
                           "tensor scaling_factor is not all ones: a finetuning scaling factor, "
                           "which SAELens 6 does not load either");
        }
        return err_set(e, ERR_FORMAT, path, "unexpected tensor %s (%s)", t->name, why);
    }
    return 0;
}

/* ---- pre-6.0 -> 6.x, as handle_pre_6_0_config ---- */

static const char *const llm_metadata_keys[] = {
    "model_name", "hook_name", "model_class_name", "hook_head_index",
    "model_from_pretrained_kwargs", "prepend_bos", "exclude_special_tokens", "neuronpedia_id",
    "context_size", "seqpos_slice", "dataset_path", "sae_lens_version",
    "sae_lens_training_version", "hook_name_out", "hook_head_index_out", NULL};

/* A new 6.x-shaped object from a legacy cfg (borrowed), or NULL with e. */
static json_t *legacy_to_6(json_t *cfg, const char *path, struct err *e)
{
    static const char *const renames[][2] = {{"hook_point", "hook_name"},
                                             {"hook_point_head_index", "hook_head_index"},
                                             {"activation_fn_str", "activation_fn"}};
    json_t *n = json_object(), *md = json_object();
    if (!n || !md) {
        json_decref(n);
        json_decref(md);
        err_set(e, ERR_NOMEM, path, "out of memory");
        return NULL;
    }
    const char *key;
    json_t *v;
    json_t *src = json_object();
    if (!src) {
        json_decref(n);
        json_decref(md);
        err_set(e, ERR_NOMEM, path, "out of memory");
        return NULL;
    }
    json_object_foreach(cfg, key, v) {
        const char *k2 = key;
        for (size_t i = 0; i < sizeof renames / sizeof *renames; i++)
            if (strcmp(key, renames[i][0]) == 0)
                k2 = renames[i][1];
        json_object_set(src, k2, v);
    }
    const char *act = NULL, *arch = NULL, *hook = NULL;
    if (get_str(src, "activation_fn", "relu", path, &act, e) < 0 ||
        get_str(src, "architecture", "standard", path, &arch, e) < 0 ||
        get_str(src, "hook_name", "", path, &hook, e) < 0)
        goto fail;
    json_t *kw = json_object_get(src, "activation_fn_kwargs");
    json_t *kv = json_is_object(kw) ? json_object_get(kw, "k") : NULL;
    if (strcmp(act, "topk") == 0 && kv && !json_is_null(kv)) {
        arch = "topk";
        json_object_set(n, "k", kv);
    } else if (strcmp(act, "relu") != 0 || strcmp(arch, "topk") == 0) {
        err_set(e, ERR_UNSUPPORTED, path,
                "activation_fn \"%s\" with architecture \"%s\"%s: SAELens 6 reads a pre-6.0 "
                "dictionary as ReLU unless it is topk with activation_fn_kwargs.k",
                act, arch, strcmp(act, "topk") == 0 ? " and no activation_fn_kwargs.k" : "");
        goto fail;
    }
    static const char *const base[] = {"d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input",
                                       "rescale_acts_by_decoder_norm", NULL};
    for (int i = 0; base[i]; i++)
        if ((v = json_object_get(src, base[i])))
            json_object_set(n, base[i], v);
    if (strcmp(arch, "topk") != 0)
        json_object_del(n, "rescale_acts_by_decoder_norm");
    json_t *norm = json_object_get(src, "normalize_activations");
    if (json_is_boolean(norm))
        json_object_set_new(n, "normalize_activations",
                            json_string(json_is_true(norm) ? "expected_average_only_in" : "none"));
    else if (!norm || json_is_null(norm))
        json_object_set_new(n, "normalize_activations", json_string("none"));
    else
        json_object_set(n, "normalize_activations", norm);
    if ((v = json_object_get(src, "reshape_activations")))
        json_object_set(n, "reshape_activations", v);
    else
        json_object_set_new(n, "reshape_activations",
                            json_string(strstr(hook, "hook_z") ? "hook_z" : "none"));
    if (json_is_true(json_object_get(src, "finetuning_scaling_factor"))) {
        err_set(e, ERR_UNSUPPORTED, path,
                "finetuning_scaling_factor is true: a finetuning scaling factor is not read");
        goto fail;
    }
    for (int i = 0; llm_metadata_keys[i]; i++)
        if ((v = json_object_get(src, llm_metadata_keys[i])))
            json_object_set(md, llm_metadata_keys[i], v);
    json_object_set_new(n, "metadata", md);
    md = NULL;
    json_object_set_new(n, "architecture", json_string(arch));
    json_decref(src);
    return n;
fail:
    json_decref(src);
    json_decref(md);
    json_decref(n);
    return NULL;
}

/* ---- reading: SAELens ---- */

static int arch_of(const char *a, const char *path, enum sae_arch *out, struct err *e)
{
    static const char *const known[] = {"gated", "transcoder", "skip_transcoder",
                                        "jumprelu_transcoder", "batchtopk", "matryoshka_batchtopk",
                                        NULL};
    for (int i = 0; i < SAE_ARCH_COUNT; i++)
        if (strcmp(a, sae_arch_name((enum sae_arch)i)) == 0) {
            *out = (enum sae_arch)i;
            return 0;
        }
    for (int i = 0; known[i]; i++)
        if (strcmp(a, known[i]) == 0)
            return err_set(e, ERR_UNSUPPORTED, path,
                           "architecture \"%s\" is SAELens's but not read here (standard, topk, "
                           "jumprelu are)",
                           a);
    return err_set(e, ERR_FORMAT, path,
                   "architecture \"%s\" is not in SAELens's registry (standard, gated, topk, "
                   "jumprelu, transcoder, skip_transcoder, jumprelu_transcoder)",
                   a);
}

/* activation_scaler.json's factor, for normalize_activations
 * "expected_average_only_in". */
static int read_scaler(const char *dir, double *out, struct err *e)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, SAE_SCALER_FILE);
    if (access(path, F_OK) != 0)
        return err_set(e, ERR_UNSUPPORTED, path,
                       "normalize_activations \"expected_average_only_in\" needs the factor, and "
                       "there is no %s beside cfg.json: fold it into the weights "
                       "(SAE.fold_activation_norm_scaling_factor) or add the file",
                       SAE_SCALER_FILE);
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j)
        return err_set(e, ERR_FORMAT, path, "not JSON: %s (line %d)", je.text, je.line);
    json_t *v = json_object_get(j, "scaling_factor");
    double s = json_is_number(v) ? json_number_value(v) : NAN;
    json_decref(j);
    if (!(s > 0.0) || !isfinite(s))
        return err_set(e, ERR_FORMAT, path, "\"scaling_factor\" is not a positive number");
    *out = s;
    return 0;
}

/* A 6.x-shaped cfg (legacy ones converted) and its weights. */
static int load_saelens(struct sae **out, const char *dir, const char *path, const char *wpath,
                        json_t *c, struct sae_info *info, struct err *e)
{
    struct sae *s = NULL;
    struct st_file *st = NULL;
    long long C = 0, S = 0, k = 0;
    int apply = 1, rescale = 0, rc;
    const char *a = NULL, *dt = NULL, *norm = NULL, *reshape = NULL, *hook = NULL, *model = NULL;
    enum sae_arch arch = SAE_RELU;
    json_t *md = json_object_get(c, "metadata");
    if (md && !json_is_object(md) && !json_is_null(md))
        return err_set(e, ERR_FORMAT, path, "\"metadata\" is not an object");
    if (!json_is_object(md))
        md = NULL;
    if ((rc = get_str(c, "architecture", NULL, path, &a, e)) < 0)
        return rc;
    if (!a)
        return err_set(e, ERR_FORMAT, path, "\"architecture\" is missing");
    if ((rc = arch_of(a, path, &arch, e)) < 0 ||
        (rc = get_int(c, "d_in", 1, 0, 1, INT32_MAX, path, &C, e)) < 0 ||
        (rc = get_int(c, "d_sae", 1, 0, 1, INT32_MAX, path, &S, e)) < 0 ||
        (rc = get_str(c, "dtype", NULL, path, &dt, e)) < 0 ||
        (rc = get_bool(c, "apply_b_dec_to_input", 1, path, &apply, e)) < 0 ||
        (rc = get_str(c, "normalize_activations", "none", path, &norm, e)) < 0 ||
        (rc = get_str(c, "reshape_activations", "none", path, &reshape, e)) < 0)
        return rc;
    if (!dt)
        return err_set(e, ERR_FORMAT, path, "\"dtype\" is missing (SAELens casts the weights to it)");
    const char *dtype = dtype_canon(dt);
    if (!dtype)
        return err_set(e, ERR_FORMAT, path,
                       "dtype \"%s\" is not float32, float64, float16 or bfloat16", dt);
    if (strcmp(norm, "none") != 0 && strcmp(norm, "expected_average_only_in") != 0) {
        if (strcmp(norm, "constant_norm_rescale") == 0 || strcmp(norm, "layer_norm") == 0)
            return err_set(e, ERR_UNSUPPORTED, path,
                           "normalize_activations \"%s\" (a per-token normalisation at run time) "
                           "is not read; \"none\" and \"expected_average_only_in\" are",
                           norm);
        return err_set(e, ERR_FORMAT, path,
                       "normalize_activations \"%s\" is not none, expected_average_only_in, "
                       "constant_norm_rescale or layer_norm",
                       norm);
    }
    if (strcmp(reshape, "none") != 0 && strcmp(reshape, "hook_z") != 0)
        return err_set(e, ERR_FORMAT, path, "reshape_activations \"%s\" is not none or hook_z",
                       reshape);
    if (arch == SAE_TOPK &&
        ((rc = get_int(c, "k", 0, 100, 1, S, path, &k, e)) < 0 ||
         (rc = get_bool(c, "rescale_acts_by_decoder_norm", 0, path, &rescale, e)) < 0))
        return rc;
    if (md) {
        json_t *hi = json_object_get(md, "hook_head_index");
        if (hi && !json_is_null(hi))
            return err_set(e, ERR_UNSUPPORTED, path,
                           "metadata.hook_head_index is set: a dictionary of one head's hook_z "
                           "is not read");
        if ((rc = get_str(md, "hook_name", "", path, &hook, e)) < 0 ||
            (rc = get_str(md, "model_name", "", path, &model, e)) < 0)
            return rc;
    }
    const char *names[] = {"W_enc", "W_dec", "b_enc", "b_dec",
                           arch == SAE_JUMPRELU ? "threshold" : NULL, NULL};
    int64_t de[2] = {C, S}, dd[2] = {S, C}, dbe[1] = {S}, dbd[1] = {C};
    /* the sizes cfg.json claims are checked against the weights before
     * memory is taken for them (a cfg.json of 46341 x 46340 beside small
     * weights would otherwise cost 16 GB first) */
    if ((rc = st_open(&st, wpath, e)) < 0 ||
        (rc = check_tensor_set(st, wpath, names,
                               arch == SAE_JUMPRELU
                                   ? "a jumprelu state dict is W_enc, W_dec, b_enc, b_dec, threshold"
                                   : "the state dict is W_enc, W_dec, b_enc, b_dec",
                               e)) < 0 ||
        (rc = read_tensor(st, wpath, "W_enc", 2, de, 0, dtype, NULL, e)) < 0 ||
        (rc = read_tensor(st, wpath, "W_dec", 2, dd, 0, dtype, NULL, e)) < 0 ||
        (rc = read_tensor(st, wpath, "b_enc", 1, dbe, 0, dtype, NULL, e)) < 0 ||
        (rc = read_tensor(st, wpath, "b_dec", 1, dbd, 0, dtype, NULL, e)) < 0 ||
        (arch == SAE_JUMPRELU &&
         (rc = read_tensor(st, wpath, "threshold", 1, dbe, 0, dtype, NULL, e)) < 0))
        goto out;
    if ((rc = sae_create(&s, arch, (int)C, (int)S, (int)k, e)) < 0) {
        err_wrap(e, "%s", path);
        goto out;
    }
    s->apply_b_dec = apply;
    if ((rc = read_tensor(st, wpath, "W_enc", 2, de, 0, dtype, s->W_enc, e)) < 0 ||
        (rc = read_tensor(st, wpath, "W_dec", 2, dd, 0, dtype, s->W_dec, e)) < 0 ||
        (rc = read_tensor(st, wpath, "b_enc", 1, dbe, 0, dtype, s->b_enc, e)) < 0 ||
        (rc = read_tensor(st, wpath, "b_dec", 1, dbd, 0, dtype, s->b_dec, e)) < 0 ||
        (arch == SAE_JUMPRELU &&
         (rc = read_tensor(st, wpath, "threshold", 1, dbe, 0, dtype, s->threshold, e)) < 0))
        goto out;
    double scaler = 0.0;
    if (strcmp(norm, "expected_average_only_in") == 0) {
        if ((rc = read_scaler(dir, &scaler, e)) < 0)
            goto out;
        sae_fold_saelens(s, scaler);
    }
    if (rescale)
        sae_fold_decoder_norm(s);
    if (info) {
        snprintf(info->hook_name, sizeof info->hook_name, "%s", hook ? hook : "");
        snprintf(info->model_name, sizeof info->model_name, "%s", model ? model : "");
        snprintf(info->dtype, sizeof info->dtype, "%s", dtype);
        info->hook_z = strcmp(reshape, "hook_z") == 0;
        info->rescaled = rescale;
        info->scaler = scaler;
        json_t *ck = md ? json_object_get(md, "ckptd") : NULL;
        json_t *nsf = json_object_get(ck, "norm_scaling_factor");
        info->norm_scaling_factor = json_is_number(nsf) ? json_number_value(nsf) : 0.0;
        json_t *stp = json_object_get(ck, "step");
        info->step = json_is_integer(stp) ? json_integer_value(stp) : -1;
    }
    *out = s;
    s = NULL;
out:
    st_free(st);
    sae_free(s);
    return rc;
}

/* ---- reading: sparsify ---- */

int sae_sparsify_hook(const char *folder, char *hook, size_t n, struct err *e)
{
    if (strcmp(folder, "embed_in") == 0 || strcmp(folder, "embed_tokens") == 0) {
        snprintf(hook, n, "hook_embed");
        return 0;
    }
    if (strncmp(folder, "layers", 6) == 0 && (folder[6] == '.' || folder[6] == '_') &&
        isdigit((unsigned char)folder[7])) {
        char *end = NULL;
        long l = strtol(folder + 7, &end, 10);
        const char *suffix = *end == '\0' ? "hook_resid_post"
                             : strcmp(end, ".mlp") == 0 ? "hook_mlp_out"
                             : strcmp(end, ".attention") == 0 ? "hook_attn_out"
                                                               : NULL;
        if (suffix && l < 100000) {
            snprintf(hook, n, "blocks.%ld.%s", l, suffix);
            return 0;
        }
    }
    return err_set(e, ERR_UNSUPPORTED, folder,
                   "a sparsify dictionary's folder names its hookpoint: layers.N (or layers_N), "
                   "layers.N.mlp, layers.N.attention, embed_in or embed_tokens");
}

/* The folder name of dir (its last component, trailing slashes ignored). */
static void base_name(const char *dir, char *out, size_t n)
{
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/')
        len--;
    size_t b = len;
    while (b > 0 && dir[b - 1] != '/')
        b--;
    snprintf(out, n, "%.*s", (int)(len - b), dir + b);
}

static int load_sparsify(struct sae **out, const char *dir, const char *path, const char *wpath,
                         json_t *c, struct sae_info *info, struct err *e)
{
    struct sae *s = NULL;
    struct st_file *st = NULL;
    long long C = 0, S = 0, k = 0, nl = 0, ef = 0;
    int skip = 0, transcode = 0, rc;
    const char *act = NULL;
    char folder[256], hook[128];
    if ((rc = get_int(c, "d_in", 1, 0, 1, INT32_MAX, path, &C, e)) < 0 ||
        (rc = get_int(c, "num_latents", 0, 0, 0, INT32_MAX, path, &nl, e)) < 0 ||
        (rc = get_int(c, "expansion_factor", 0, 32, 1, INT32_MAX, path, &ef, e)) < 0 ||
        (rc = get_str(c, "activation", "topk", path, &act, e)) < 0 ||
        (rc = get_bool(c, "skip_connection", 0, path, &skip, e)) < 0 ||
        (rc = get_bool(c, "transcode", 0, path, &transcode, e)) < 0)
        return rc;
    S = nl ? nl : C * ef;
    if (S > INT32_MAX)
        return err_set(e, ERR_FORMAT, path, "d_in * expansion_factor = %lld latents", S);
    if ((rc = get_int(c, "k", 0, 32, 1, S, path, &k, e)) < 0)
        return rc;
    if (strcmp(act, "topk") != 0)
        return err_set(e, ERR_UNSUPPORTED, path,
                       "activation \"%s\": only sparsify's topk dictionaries are read", act);
    if (transcode || skip)
        return err_set(e, ERR_UNSUPPORTED, path,
                       "a %s: only sparsify's plain autoencoders are read",
                       transcode ? "transcoder (transcode true)" : "skip connection (W_skip)");
    base_name(dir, folder, sizeof folder);
    if ((rc = sae_sparsify_hook(folder, hook, sizeof hook, e)) < 0) {
        err_wrap(e, "%s", dir);
        return rc;
    }
    static const char *const names[] = {"encoder.weight", "encoder.bias", "W_dec", "b_dec", NULL};
    int64_t de[2] = {C, S}, dd[2] = {S, C}, dbe[1] = {S}, dbd[1] = {C};
    /* shapes first, memory after (as load_saelens) */
    if ((rc = st_open(&st, wpath, e)) < 0 ||
        (rc = check_tensor_set(st, wpath, names,
                               "a sparsify autoencoder is encoder.weight, encoder.bias, W_dec, b_dec",
                               e)) < 0 ||
        (rc = read_tensor(st, wpath, "encoder.weight", 2, de, 1, NULL, NULL, e)) < 0 ||
        (rc = read_tensor(st, wpath, "encoder.bias", 1, dbe, 0, NULL, NULL, e)) < 0 ||
        (rc = read_tensor(st, wpath, "W_dec", 2, dd, 0, NULL, NULL, e)) < 0 ||
        (rc = read_tensor(st, wpath, "b_dec", 1, dbd, 0, NULL, NULL, e)) < 0)
        goto out;
    if ((rc = sae_create(&s, SAE_TOPK, (int)C, (int)S, (int)k, e)) < 0) {
        err_wrap(e, "%s", path);
        goto out;
    }
    if ((rc = read_tensor(st, wpath, "encoder.weight", 2, de, 1, NULL, s->W_enc, e)) < 0 ||
        (rc = read_tensor(st, wpath, "encoder.bias", 1, dbe, 0, NULL, s->b_enc, e)) < 0 ||
        (rc = read_tensor(st, wpath, "W_dec", 2, dd, 0, NULL, s->W_dec, e)) < 0 ||
        (rc = read_tensor(st, wpath, "b_dec", 1, dbd, 0, NULL, s->b_dec, e)) < 0)
        goto out;
    if (info) {
        const struct st_tensor *t = st_find(st, "W_dec");
        snprintf(info->hook_name, sizeof info->hook_name, "%s", hook);
        snprintf(info->dtype, sizeof info->dtype, "%s",
                 t->dtype == ST_F16 ? "float16" : t->dtype == ST_BF16 ? "bfloat16"
                                                : t->dtype == ST_F64  ? "float64"
                                                                      : "float32");
        /* the run's config.json, one level up, names the model */
        char rpath[4096];
        snprintf(rpath, sizeof rpath, "%s/../config.json", dir);
        json_t *run = json_load_file(rpath, 0, NULL);
        const char *model = json_string_value(json_object_get(run, "model"));
        snprintf(info->model_name, sizeof info->model_name, "%s", model ? model : "");
        json_decref(run);
    }
    *out = s;
    s = NULL;
out:
    st_free(st);
    sae_free(s);
    return rc;
}

/* ---- reading ---- */

int sae_load(struct sae **out, const char *dir, struct sae_info *info, struct err *e)
{
    *out = NULL;
    char path[4096], wpath[4096], spath[4096];
    if (snprintf(path, sizeof path, "%s/%s", dir, SAE_CFG_FILE) >= (int)sizeof path ||
        snprintf(wpath, sizeof wpath, "%s/%s", dir, SAE_WEIGHTS_FILE) >= (int)sizeof wpath ||
        snprintf(spath, sizeof spath, "%s/%s", dir, SAE_SPARSIFY_WEIGHTS_FILE) >= (int)sizeof spath)
        return err_set(e, ERR_IO, dir, "path too long");
    if (info) {
        memset(info, 0, sizeof *info);
        info->step = -1;
    }
    int saelens = access(wpath, F_OK) == 0, sparsify = !saelens && access(spath, F_OK) == 0;
    if (access(path, F_OK) != 0)
        return err_set(e, ERR_NOTFOUND, path, "no such file (a dictionary directory holds "
                                              "cfg.json and its weights)");
    if (!saelens && !sparsify)
        return err_set(e, ERR_NOTFOUND, dir, "neither %s (SAELens) nor %s (sparsify) is there",
                       SAE_WEIGHTS_FILE, SAE_SPARSIFY_WEIGHTS_FILE);
    json_error_t je;
    errno = 0;
    json_t *cfg = json_load_file(path, 0, &je), *conv = NULL;
    int rc = 0;
    if (!cfg)
        return json_err_nomem(&je) ? err_set(e, ERR_NOMEM, path, "out of memory reading the JSON")
                                   : err_set(e, ERR_FORMAT, path, "not JSON: %s (line %d)", je.text,
                                             je.line);
    if (!json_is_object(cfg)) {
        rc = err_set(e, ERR_FORMAT, path, "not a JSON object");
        goto out;
    }
    if (sparsify) {
        if (info)
            info->format = SAE_FORMAT_SPARSIFY;
        rc = load_sparsify(out, dir, path, spath, cfg, info, e);
        goto out;
    }
    json_t *md = json_object_get(cfg, "metadata");
    if (md && !json_is_object(md) && !json_is_null(md)) {
        rc = err_set(e, ERR_FORMAT, path, "\"metadata\" is not an object");
        goto out;
    }
    /* SAELens's test: the top-level sae_lens_version, else metadata's; none,
     * or one below 6.0.0rc0, is the pre-6.0 dialect */
    json_t *v = json_object_get(cfg, "sae_lens_version");
    if (!v || json_is_null(v) || (json_is_string(v) && !json_string_value(v)[0]))
        v = json_object_get(json_object_get(cfg, "metadata"), "sae_lens_version");
    int is6 = 0;
    const char *vs = json_string_value(v);
    if (v && !json_is_null(v) && !json_is_string(v)) {
        rc = err_set(e, ERR_FORMAT, path, "\"sae_lens_version\" is not a string");
        goto out;
    }
    if (vs && vs[0] && (rc = sae_version_is_6(vs, &is6, e)) < 0) {
        err_wrap(e, "%s: sae_lens_version", path);
        goto out;
    }
    if (info) {
        info->format = is6 ? SAE_FORMAT_SAELENS : SAE_FORMAT_SAELENS_LEGACY;
        snprintf(info->version, sizeof info->version, "%s", vs ? vs : "");
    }
    if (!is6 && !(conv = legacy_to_6(cfg, path, e))) {
        rc = e ? e->code : ERR_FORMAT;
        goto out;
    }
    rc = load_saelens(out, dir, path, wpath, conv ? conv : cfg, info, e);
out:
    json_decref(conv);
    json_decref(cfg);
    return rc;
}
