#include "workers/model/config.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/atomic_file.h"
#include "common/json_err.h"

/* The size fields: config.json name, where in the struct, allowed range. */
static const struct {
    const char *name;
    size_t off;
    int max;
} size_fields[] = {
    {"vocab_size", offsetof(struct gptneox_config, vocab_size), CONFIG_MAX_VOCAB},
    {"hidden_size", offsetof(struct gptneox_config, d_model), CONFIG_MAX_D_MODEL},
    {"num_hidden_layers", offsetof(struct gptneox_config, n_layers), CONFIG_MAX_LAYERS},
    {"num_attention_heads", offsetof(struct gptneox_config, n_heads), CONFIG_MAX_HEADS},
    {"intermediate_size", offsetof(struct gptneox_config, d_mlp), CONFIG_MAX_D_MLP},
    {"max_position_embeddings", offsetof(struct gptneox_config, max_positions),
     CONFIG_MAX_POSITIONS},
};

static int size_max(const char *key)
{
    for (size_t i = 0; i < sizeof size_fields / sizeof *size_fields; i++)
        if (strcmp(size_fields[i].name, key) == 0)
            return size_fields[i].max;
    return 1 << 30;
}

static int out_of_range(struct err *e, const char *ctx, const char *key, long long x, int max)
{
    return err_set(e, ERR_FORMAT, ctx, "\"%s\" = %lld is out of range: allowed 1 to %d", key, x,
                   max);
}

static int get_int(json_t *root, const char *key, int required, int def, int *out,
                   const char *ctx, struct err *e)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (required)
            return err_set(e, ERR_FORMAT, ctx, "missing required field \"%s\"", key);
        *out = def;
        return 0;
    }
    if (!json_is_integer(v))
        return err_set(e, ERR_FORMAT, ctx, "field \"%s\" must be an integer", key);
    json_int_t x = json_integer_value(v);
    int max = size_max(key);
    if (x < 1 || x > max)
        return out_of_range(e, ctx, key, (long long)x, max);
    *out = (int)x;
    return 0;
}

/* A number field that may be absent (*present = 0). */
static int get_num(json_t *obj, const char *key, double *out, int *present,
                   const char *ctx, struct err *e)
{
    json_t *v = obj ? json_object_get(obj, key) : NULL;
    *present = 0;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_number(v))
        return err_set(e, ERR_FORMAT, ctx, "field \"%s\" must be a number", key);
    *out = json_number_value(v);
    *present = 1;
    return 0;
}

static int get_bool(json_t *root, const char *key, int def, int *out, const char *ctx,
                    struct err *e)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v))
        return err_set(e, ERR_FORMAT, ctx, "field \"%s\" must be true or false", key);
    *out = json_is_true(v);
    return 0;
}

/* Pick one value among several spellings; all present ones must agree. */
static int pick(const char *what, const char *const *names, const double *vals,
                const int *present, int n, double def, double *out, const char *ctx,
                struct err *e)
{
    int first = -1;
    for (int i = 0; i < n; i++) {
        if (!present[i])
            continue;
        if (first < 0) {
            first = i;
            continue;
        }
        if (fabs(vals[i] - vals[first]) > 1e-9 * fmax(1.0, fabs(vals[first])))
            return err_set(e, ERR_FORMAT, ctx, "%s given twice and differently: %s = %g, %s = %g",
                           what, names[first], vals[first], names[i], vals[i]);
    }
    *out = first < 0 ? def : vals[first];
    return 0;
}

int gptneox_config_check(struct gptneox_config *cfg, const char *ctx, struct err *e)
{
    for (size_t i = 0; i < sizeof size_fields / sizeof *size_fields; i++) {
        int v = *(const int *)((const char *)cfg + size_fields[i].off);
        if (v < 1 || v > size_fields[i].max)
            return out_of_range(e, ctx, size_fields[i].name, v, size_fields[i].max);
    }
    if (cfg->d_model % cfg->n_heads != 0)
        return err_set(e, ERR_FORMAT, ctx,
                       "hidden_size %d is not divisible by num_attention_heads %d: the "
                       "head count must divide hidden_size",
                       cfg->d_model, cfg->n_heads);
    cfg->d_head = cfg->d_model / cfg->n_heads;
    if (!(cfg->rotary_pct >= 0.0 && cfg->rotary_pct <= 1.0))
        return err_set(e, ERR_FORMAT, ctx,
                       "rotary fraction (rotary_pct / partial_rotary_factor) %g is outside "
                       "the allowed range [0, 1]",
                       cfg->rotary_pct);
    /* HuggingFace truncates: int(head_size * rotary_pct). */
    cfg->rotary_ndims = (int)(cfg->d_head * cfg->rotary_pct);
    if (cfg->rotary_ndims % 2 != 0)
        return err_set(e, ERR_UNSUPPORTED, ctx,
                       "rotary dims %d (head size %d x %g) must be even",
                       cfg->rotary_ndims, cfg->d_head, cfg->rotary_pct);
    if (!(cfg->rotary_base > 0.0) || !isfinite(cfg->rotary_base))
        return err_set(e, ERR_FORMAT, ctx,
                       "rotary base (rotary_emb_base / rope_theta) %g must be a finite "
                       "positive number",
                       cfg->rotary_base);
    if (!(cfg->layer_norm_eps > 0.0) || !(cfg->layer_norm_eps < 1.0))
        return err_set(e, ERR_FORMAT, ctx, "layer_norm_eps %g must be in (0, 1)",
                       cfg->layer_norm_eps);
    return 0;
}

int gptneox_config_parse(struct gptneox_config *cfg, const char *text, size_t len,
                         const char *ctx, struct err *e)
{
    json_error_t je;
    int rc = 0;
    memset(cfg, 0, sizeof *cfg);
    errno = 0;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return json_err_nomem(&je)
                   ? err_set(e, ERR_NOMEM, ctx, "out of memory reading the config")
                   : err_set(e, ERR_FORMAT, ctx, "config is not valid JSON: %s (line %d)", je.text,
                             je.line);
    if (!json_is_object(root)) {
        rc = err_set(e, ERR_FORMAT, ctx, "config must be a JSON object");
        goto out;
    }
    json_t *mt = json_object_get(root, "model_type");
    if (mt && (!json_is_string(mt) || strcmp(json_string_value(mt), "gpt_neox") != 0)) {
        rc = err_set(e, ERR_UNSUPPORTED, ctx, "model_type is %s, expected \"gpt_neox\"",
                     json_is_string(mt) ? json_string_value(mt) : "not a string");
        goto out;
    }
    if ((rc = get_int(root, "vocab_size", 1, 0, &cfg->vocab_size, ctx, e)) < 0 ||
        (rc = get_int(root, "hidden_size", 1, 0, &cfg->d_model, ctx, e)) < 0 ||
        (rc = get_int(root, "num_hidden_layers", 1, 0, &cfg->n_layers, ctx, e)) < 0 ||
        (rc = get_int(root, "num_attention_heads", 1, 0, &cfg->n_heads, ctx, e)) < 0 ||
        (rc = get_int(root, "intermediate_size", 1, 0, &cfg->d_mlp, ctx, e)) < 0 ||
        (rc = get_int(root, "max_position_embeddings", 0, 2048, &cfg->max_positions, ctx, e)) < 0)
        goto out;
    if ((rc = get_bool(root, "use_parallel_residual", 1, &cfg->parallel_residual, ctx, e)) < 0 ||
        (rc = get_bool(root, "tie_word_embeddings", 0, &cfg->tie_word_embeddings, ctx, e)) < 0 ||
        (rc = get_bool(root, "attention_bias", 1, &cfg->attention_bias, ctx, e)) < 0)
        goto out;

    json_t *rp = json_object_get(root, "rope_parameters");
    if (rp && !json_is_null(rp) && !json_is_object(rp)) {
        rc = err_set(e, ERR_FORMAT, ctx, "rope_parameters must be an object");
        goto out;
    }
    if (rp && json_is_object(rp)) {
        json_t *rt = json_object_get(rp, "rope_type");
        if (rt && json_is_string(rt) && strcmp(json_string_value(rt), "default") != 0) {
            rc = err_set(e, ERR_UNSUPPORTED, ctx, "rope_type \"%s\" is not supported (only \"default\")",
                         json_string_value(rt));
            goto out;
        }
    }
    json_t *rs = json_object_get(root, "rope_scaling");
    if (rs && !json_is_null(rs)) {
        rc = err_set(e, ERR_UNSUPPORTED, ctx, "rope_scaling is not supported");
        goto out;
    }
    {
        static const char *const pct_names[] = {"rope_parameters.partial_rotary_factor",
                                                "partial_rotary_factor", "rotary_pct"};
        static const char *const base_names[] = {"rope_parameters.rope_theta", "rope_theta",
                                                 "rotary_emb_base"};
        double pv[3] = {0}, bv[3] = {0};
        int pp[3], bp[3];
        if ((rc = get_num(json_is_object(rp) ? rp : NULL, "partial_rotary_factor", &pv[0], &pp[0], ctx, e)) < 0 ||
            (rc = get_num(root, "partial_rotary_factor", &pv[1], &pp[1], ctx, e)) < 0 ||
            (rc = get_num(root, "rotary_pct", &pv[2], &pp[2], ctx, e)) < 0 ||
            (rc = get_num(json_is_object(rp) ? rp : NULL, "rope_theta", &bv[0], &bp[0], ctx, e)) < 0 ||
            (rc = get_num(root, "rope_theta", &bv[1], &bp[1], ctx, e)) < 0 ||
            (rc = get_num(root, "rotary_emb_base", &bv[2], &bp[2], ctx, e)) < 0)
            goto out;
        if ((rc = pick("rotary fraction", pct_names, pv, pp, 3, 0.25, &cfg->rotary_pct, ctx, e)) < 0 ||
            (rc = pick("rotary base", base_names, bv, bp, 3, 10000.0, &cfg->rotary_base, ctx, e)) < 0)
            goto out;
    }
    {
        double eps = 1e-5;
        int present;
        if ((rc = get_num(root, "layer_norm_eps", &eps, &present, ctx, e)) < 0)
            goto out;
        cfg->layer_norm_eps = present ? eps : 1e-5;
    }
    json_t *act = json_object_get(root, "hidden_act");
    const char *as = act && json_is_string(act) ? json_string_value(act) : (act ? NULL : "gelu");
    if (!as) {
        rc = err_set(e, ERR_FORMAT, ctx, "hidden_act must be a string");
        goto out;
    }
    if (strcmp(as, "gelu") == 0)
        cfg->act = ACT_GELU;
    else if (strcmp(as, "gelu_new") == 0 || strcmp(as, "gelu_pytorch_tanh") == 0 ||
             strcmp(as, "gelu_fast") == 0)
        cfg->act = ACT_GELU_TANH;
    else {
        rc = err_set(e, ERR_UNSUPPORTED, ctx, "hidden_act \"%s\" is not supported", as);
        goto out;
    }
    json_t *td = json_object_get(root, "torch_dtype");
    if (!td)
        td = json_object_get(root, "dtype");
    if (td && json_is_string(td))
        snprintf(cfg->torch_dtype, sizeof cfg->torch_dtype, "%s", json_string_value(td));
    rc = gptneox_config_check(cfg, ctx, e);
out:
    json_decref(root);
    if (rc < 0)
        memset(cfg, 0, sizeof *cfg);
    return rc;
}

int gptneox_config_load(struct gptneox_config *cfg, const char *path, struct err *e)
{
    memset(cfg, 0, sizeof *cfg);
    FILE *f = fopen(path, "rb");
    if (!f)
        return err_set(e, ERR_IO, path, "cannot open config: %s", strerror(errno));
    char *buf = NULL;
    int rc = 0;
    if (fseek(f, 0, SEEK_END) != 0) {
        rc = err_set(e, ERR_IO, path, "cannot seek: %s", strerror(errno));
        goto out;
    }
    long n = ftell(f);
    if (n < 0 || n > (64l << 20)) {
        rc = err_set(e, ERR_FORMAT, path, "config size %ld is not plausible", n);
        goto out;
    }
    rewind(f);
    buf = malloc((size_t)n + 1);
    if (!buf) {
        rc = err_set(e, ERR_NOMEM, path, "out of memory");
        goto out;
    }
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
        rc = err_set(e, ERR_IO, path, "short read");
        goto out;
    }
    rc = gptneox_config_parse(cfg, buf, (size_t)n, path, e);
out:
    free(buf);
    fclose(f);
    return rc;
}

void gptneox_config_default(struct gptneox_config *cfg, int V, int C, int L, int NH, int F)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->vocab_size = V;
    cfg->d_model = C;
    cfg->n_layers = L;
    cfg->n_heads = NH;
    cfg->d_mlp = F;
    cfg->max_positions = 2048;
    cfg->rotary_pct = 0.25;
    cfg->rotary_base = 10000.0;
    cfg->layer_norm_eps = 1e-5;
    cfg->parallel_residual = 1;
    cfg->attention_bias = 1;
    cfg->act = ACT_GELU;
    snprintf(cfg->torch_dtype, sizeof cfg->torch_dtype, "float32");
    cfg->d_head = NH > 0 ? C / NH : 0;
    cfg->rotary_ndims = (int)(cfg->d_head * cfg->rotary_pct) & ~1;
}

size_t gptneox_config_nparams(const struct gptneox_config *c)
{
    size_t C = (size_t)c->d_model, F = (size_t)c->d_mlp, V = (size_t)c->vocab_size;
    size_t per_layer = 4 * C                           /* two LayerNorms */
                       + 3 * C * C + (c->attention_bias ? 3 * C : 0)
                       + C * C + (c->attention_bias ? C : 0)
                       + F * C + F + C * F + C;
    return V * C * (c->tie_word_embeddings ? 1 : 2) + (size_t)c->n_layers * per_layer + 2 * C;
}

int gptneox_config_save(const struct gptneox_config *c, const char *path, struct err *e)
{
    json_t *o = json_pack("{s:[s], s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:f, s:b, s:b, s:b, s:s, s:s}",
                          "architectures", "GPTNeoXForCausalLM", "model_type", "gpt_neox",
                          "vocab_size", c->vocab_size, "hidden_size", c->d_model,
                          "num_hidden_layers", c->n_layers, "num_attention_heads", c->n_heads,
                          "intermediate_size", c->d_mlp, "max_position_embeddings", c->max_positions,
                          "rotary_pct", c->rotary_pct, "rotary_emb_base", c->rotary_base,
                          "layer_norm_eps", c->layer_norm_eps,
                          "use_parallel_residual", c->parallel_residual,
                          "tie_word_embeddings", c->tie_word_embeddings,
                          "attention_bias", c->attention_bias,
                          "hidden_act", c->act == ACT_GELU ? "gelu" : "gelu_new",
                          "torch_dtype", c->torch_dtype[0] ? c->torch_dtype : "float32");
    if (!o)
        return err_set(e, ERR_NOMEM, path, "cannot build config JSON");
    struct atomic_file af;
    int rc = atomic_file_open(&af, path, e);
    if (rc == 0 && json_dumpf(o, af.f, JSON_INDENT(2) | JSON_SORT_KEYS) != 0) {
        rc = err_set(e, ERR_IO, path, "cannot write config: %s", strerror(errno));
        atomic_file_abort(&af);
    } else if (rc == 0) {
        rc = atomic_file_commit(&af, e);
    }
    json_decref(o);
    return rc;
}

int gptneox_config_preset(struct gptneox_config *cfg, const char *name)
{
    static const struct {
        const char *name;
        int V, C, L, NH, F;
    } presets[] = {
        {"tiny", 512, 64, 2, 4, 256},
        {"pythia-14m", 50304, 128, 6, 4, 512},
        {"pythia-70m", 50304, 512, 6, 8, 2048},
        {"pythia-160m", 50304, 768, 12, 12, 3072},
        {"pythia-410m", 50304, 1024, 24, 16, 4096},
    };
    for (size_t i = 0; i < sizeof presets / sizeof *presets; i++)
        if (strcmp(name, presets[i].name) == 0) {
            gptneox_config_default(cfg, presets[i].V, presets[i].C, presets[i].L, presets[i].NH,
                                   presets[i].F);
            return 0;
        }
    return ERR_NOTFOUND;
}
