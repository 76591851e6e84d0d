#include "workers/model/gptneox.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cblas.h>

#include "common/log.h"
#include "common/rng.h"
#include "workers/model/attention.h"
#include "workers/model/checkpoint.h"
#include "workers/model/kernels.h"
#include "workers/model/pool.h"
#include "workers/model/safetensors.h"
#include "workers/model/tape.h"
#include "workers/model/tensor.h"

/* The model's arena for forwards without a tape: sized for the largest
 * (B,T) and hook set seen, reused by every layer and every forward.
 * N = B*T. */
struct gptneox_acts {
    size_t cap;         /* floats allocated at mem */
    float *mem;
    int B, T;           /* of the last forward */
    int has_logits;     /* the last forward ran to the logits */
    float *x;           /* (B,T,C) residual stream, updated in place */
    float *ln;          /* (B,T,C) LayerNorm output (ln1, then ln_final); (B,T,NH,C)
                         * when a layer's hook_attn_in is hooked */
    float *hbuf;        /* (B,T,NH,C) hook_attn_in / attn.hook_result values, or
                         * (B,T,NH,HS) a q/k/v hook's; NULL when none is hooked */
    float *mean, *scale; /* (B,T,NH) statistics of a hooked LayerNorm; NULL if none */
    float *qkv;         /* (B,T,NH,3,HS) query_key_value output, q and k rotated */
    float *scores;      /* (B,NH,T,T) materialised scores, then pattern; NULL unless
                         * hook_attn_scores or hook_pattern is hooked */
    float *z;           /* (B,T,NH,HS) */
    float *attn_out;    /* (B,T,C) */
    float *mlp_in;      /* (B,T,C) hook_mlp_in's copy; NULL unless hooked */
    float *ln2;         /* (B,T,C) */
    float *h;           /* (B,T,F) MLP pre-activation, then its GELU in place */
    float *mlp_out;     /* (B,T,C) */
    float *logits;      /* (B,T,V); NULL for a forward that stops early */
    float *cosv, *sinv; /* (T,RD/2) rotary tables */
    float *att;         /* (threads, attention_scratch_floats) fused attention */
};

/* ---- hook names ---- */

static const char *const hook_suffix[HOOK_KIND_COUNT] = {
    "hook_embed",          "hook_resid_pre",      "attn.hook_pattern",
    "attn.hook_z",         "hook_attn_out",       "hook_resid_mid",
    "mlp.hook_post",       "hook_mlp_out",        "hook_resid_post",
    "ln_final.hook_normalized", "attn.hook_q",    "attn.hook_k",
    "attn.hook_v",         "attn.hook_rot_q",     "attn.hook_rot_k",
    "attn.hook_attn_scores", "mlp.hook_pre",      "ln1.hook_scale",
    "ln1.hook_normalized", "ln2.hook_scale",      "ln2.hook_normalized",
    "ln_final.hook_scale", "attn.hook_result",    "hook_attn_in",
    "hook_mlp_in",
};

const char *hook_kind_suffix(enum hook_kind k)
{
    return (unsigned)k < HOOK_KIND_COUNT ? hook_suffix[k] : "?";
}

int hook_kind_per_layer(enum hook_kind k)
{
    return k != HOOK_EMBED && k != HOOK_LN_FINAL && k != HOOK_LN_FINAL_SCALE;
}

int hook_name(char *buf, size_t n, enum hook_kind k, int layer)
{
    if ((unsigned)k >= HOOK_KIND_COUNT)
        return ERR_INVALID;
    int w = hook_kind_per_layer(k) ? snprintf(buf, n, "blocks.%d.%s", layer, hook_suffix[k])
                                   : snprintf(buf, n, "%s", hook_suffix[k]);
    return (w < 0 || (size_t)w >= n) ? ERR_INVALID : 0;
}

int hook_parse(const char *name, enum hook_kind *k, int *layer)
{
    for (int i = 0; i < HOOK_KIND_COUNT; i++)
        if (!hook_kind_per_layer((enum hook_kind)i) && strcmp(name, hook_suffix[i]) == 0) {
            *k = (enum hook_kind)i;
            *layer = -1;
            return 0;
        }
    if (strncmp(name, "blocks.", 7) != 0 || name[7] < '0' || name[7] > '9')
        return ERR_NOTFOUND; /* the layer in digits: no sign, no blank */
    char *end = NULL;
    long l = strtol(name + 7, &end, 10);
    if (end == name + 7 || *end != '.' || l < 0 || l > 100000 || !isdigit((unsigned char)name[7]))
        return ERR_NOTFOUND;
    for (int i = 0; i < HOOK_KIND_COUNT; i++)
        if (hook_kind_per_layer((enum hook_kind)i) && strcmp(end + 1, hook_suffix[i]) == 0) {
            *k = (enum hook_kind)i;
            *layer = (int)l;
            return 0;
        }
    return ERR_NOTFOUND;
}

int gptneox_hook_shape(const struct gptneox_config *c, enum hook_kind k, int B, int T,
                       int shape[4])
{
    shape[0] = B;
    shape[1] = T;
    switch (k) {
    case HOOK_ATTN_PATTERN:
    case HOOK_ATTN_SCORES:
        shape[1] = c->n_heads;
        shape[2] = T;
        shape[3] = T;
        return 4;
    case HOOK_ATTN_Z:
    case HOOK_ATTN_Q:
    case HOOK_ATTN_K:
    case HOOK_ATTN_V:
    case HOOK_ROT_Q:
    case HOOK_ROT_K:
        shape[2] = c->n_heads;
        shape[3] = c->d_head;
        return 4;
    case HOOK_ATTN_RESULT:
    case HOOK_ATTN_IN:
        shape[2] = c->n_heads;
        shape[3] = c->d_model;
        return 4;
    case HOOK_MLP_POST:
    case HOOK_MLP_PRE:
        shape[2] = c->d_mlp;
        return 3;
    case HOOK_LN1_SCALE:
    case HOOK_LN2_SCALE:
    case HOOK_LN_FINAL_SCALE:
        shape[2] = 1;
        return 3;
    default:
        shape[2] = c->d_model;
        return 3;
    }
}

/* ---- weights ---- */

struct wspec {
    char name[128];
    int ndim;
    int64_t shape[2];
    float **dst;
};

/* The tensors the model reads, in a fixed order, with their shapes. Returns
 * the count; specs must hold gptneox_nspecs() entries. */
static size_t nspecs(const struct gptneox_config *c) { return 4 + (size_t)c->n_layers * 12; }

static void add_spec(struct wspec *s, size_t *n, float **dst, int ndim, int64_t d0, int64_t d1,
                     const char *fmt, ...) CK_PRINTF(7, 8);
static void add_spec(struct wspec *s, size_t *n, float **dst, int ndim, int64_t d0, int64_t d1,
                     const char *fmt, ...)
{
    struct wspec *w = &s[(*n)++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->name, sizeof w->name, fmt, ap);
    va_end(ap);
    w->ndim = ndim;
    w->shape[0] = d0;
    w->shape[1] = d1;
    w->dst = dst;
}

static size_t build_specs(struct gptneox *m, struct wspec *s)
{
    const struct gptneox_config *c = &m->cfg;
    int64_t V = c->vocab_size, C = c->d_model, F = c->d_mlp;
    size_t n = 0;
    add_spec(s, &n, &m->embed, 2, V, C, "gpt_neox.embed_in.weight");
    for (int l = 0; l < c->n_layers; l++) {
        struct gptneox_layer *L = &m->layers[l];
        add_spec(s, &n, &L->ln1_w, 1, C, 0, "gpt_neox.layers.%d.input_layernorm.weight", l);
        add_spec(s, &n, &L->ln1_b, 1, C, 0, "gpt_neox.layers.%d.input_layernorm.bias", l);
        add_spec(s, &n, &L->qkv_w, 2, 3 * C, C, "gpt_neox.layers.%d.attention.query_key_value.weight", l);
        if (c->attention_bias)
            add_spec(s, &n, &L->qkv_b, 1, 3 * C, 0, "gpt_neox.layers.%d.attention.query_key_value.bias", l);
        add_spec(s, &n, &L->attn_w, 2, C, C, "gpt_neox.layers.%d.attention.dense.weight", l);
        if (c->attention_bias)
            add_spec(s, &n, &L->attn_b, 1, C, 0, "gpt_neox.layers.%d.attention.dense.bias", l);
        add_spec(s, &n, &L->ln2_w, 1, C, 0, "gpt_neox.layers.%d.post_attention_layernorm.weight", l);
        add_spec(s, &n, &L->ln2_b, 1, C, 0, "gpt_neox.layers.%d.post_attention_layernorm.bias", l);
        add_spec(s, &n, &L->fc_w, 2, F, C, "gpt_neox.layers.%d.mlp.dense_h_to_4h.weight", l);
        add_spec(s, &n, &L->fc_b, 1, F, 0, "gpt_neox.layers.%d.mlp.dense_h_to_4h.bias", l);
        add_spec(s, &n, &L->proj_w, 2, C, F, "gpt_neox.layers.%d.mlp.dense_4h_to_h.weight", l);
        add_spec(s, &n, &L->proj_b, 1, C, 0, "gpt_neox.layers.%d.mlp.dense_4h_to_h.bias", l);
    }
    add_spec(s, &n, &m->lnf_w, 1, C, 0, "gpt_neox.final_layer_norm.weight");
    add_spec(s, &n, &m->lnf_b, 1, C, 0, "gpt_neox.final_layer_norm.bias");
    if (!c->tie_word_embeddings)
        add_spec(s, &n, &m->unembed, 2, V, C, "embed_out.weight");
    return n;
}

static size_t spec_nelem(const struct wspec *w)
{
    return (size_t)w->shape[0] * (w->ndim == 2 ? (size_t)w->shape[1] : 1);
}

int gptneox_tensor_role(const struct gptneox_config *cfg, const char *name)
{
    static const char *const ignored[] = {".attention.bias", ".attention.masked_bias",
                                          ".attention.rotary_emb.inv_freq"};
    struct gptneox tmp;
    memset(&tmp, 0, sizeof tmp);
    tmp.cfg = *cfg;
    struct gptneox_layer *layers = calloc((size_t)cfg->n_layers, sizeof *layers);
    struct wspec *specs = malloc(nspecs(cfg) * sizeof *specs);
    int role = 0;
    if (layers && specs) {
        tmp.layers = layers;
        size_t n = build_specs(&tmp, specs);
        for (size_t i = 0; i < n && !role; i++)
            if (strcmp(specs[i].name, name) == 0)
                role = 1;
    }
    free(layers);
    free(specs);
    if (!role && strncmp(name, "gpt_neox.layers.", 16) == 0) {
        size_t len = strlen(name);
        for (size_t i = 0; i < sizeof ignored / sizeof *ignored; i++) {
            size_t sl = strlen(ignored[i]);
            if (len > sl && strcmp(name + len - sl, ignored[i]) == 0)
                role = 2;
        }
    }
    return role;
}

static void shape_str(char *buf, size_t n, int ndim, const int64_t *shape)
{
    size_t o = 0;
    o += (size_t)snprintf(buf + o, n - o, "[");
    for (int i = 0; i < ndim && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < n)
        snprintf(buf + o, n - o, "]");
}

static struct gptneox *model_alloc(const struct gptneox_config *cfg, struct err *e)
{
    struct gptneox *m = calloc(1, sizeof *m);
    if (!m) {
        err_set(e, ERR_NOMEM, NULL, "out of memory for the model");
        return NULL;
    }
    m->cfg = *cfg;
    m->layers = calloc((size_t)cfg->n_layers, sizeof *m->layers);
    m->acts = calloc(1, sizeof *m->acts);
    if (!m->layers || !m->acts) {
        gptneox_free(m);
        err_set(e, ERR_NOMEM, NULL, "out of memory for the model");
        return NULL;
    }
    return m;
}

static float *alloc_floats(size_t n)
{
    void *p = NULL;
    if (n == 0)
        n = 1;
    if (posix_memalign(&p, 64, n * sizeof(float)) != 0)
        return NULL;
    return p;
}

int gptneox_create(struct gptneox **out, const struct gptneox_config *cfg, struct err *e)
{
    *out = NULL;
    struct gptneox_config c = *cfg;
    int rc = gptneox_config_check(&c, "config", e);
    if (rc < 0)
        return rc;
    struct gptneox *m = model_alloc(&c, e);
    struct wspec *specs = NULL;
    if (!m)
        return ERR_NOMEM;
    specs = malloc(nspecs(&c) * sizeof *specs);
    if (!specs) {
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory");
        goto out;
    }
    size_t n = build_specs(m, specs), total = 0;
    for (size_t i = 0; i < n; i++)
        total += spec_nelem(&specs[i]);
    m->block = alloc_floats(total);
    if (!m->block) {
        rc = err_set(e, ERR_NOMEM, NULL, "cannot allocate %zu weights", total);
        goto out;
    }
    m->block_floats = total;
    memset(m->block, 0, total * sizeof(float));
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        *specs[i].dst = m->block + off;
        if (strstr(specs[i].name, "layernorm.weight") || strstr(specs[i].name, "layer_norm.weight"))
            for (size_t j = 0; j < spec_nelem(&specs[i]); j++)
                m->block[off + j] = 1.0f;
        off += spec_nelem(&specs[i]);
    }
    if (c.tie_word_embeddings)
        m->unembed = m->embed;
    m->writable = 1;
out:
    free(specs);
    if (rc < 0) {
        gptneox_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

/* An aligned F32 tensor of a read-only load is used in place in the mapping. */
static int can_map(const struct st_tensor *t, unsigned flags)
{
    return !(flags & GPTNEOX_LOAD_WRITABLE) && t->dtype == ST_F32 &&
           ((uintptr_t)t->data % sizeof(float)) == 0;
}

int gptneox_load(struct gptneox **out, const char *dir, unsigned flags, struct err *e)
{
    *out = NULL;
    char path[4096];
    struct gptneox_config cfg;
    struct gptneox *m = NULL;
    struct wspec *specs = NULL;
    const struct st_tensor **found = NULL;
    int rc;

    snprintf(path, sizeof path, "%s/config.json", dir);
    if ((rc = gptneox_config_load(&cfg, path, e)) < 0)
        return rc;
    if (!(m = model_alloc(&cfg, e)))
        return ERR_NOMEM;
    if ((rc = checkpoint_open(&m->st, dir, e)) < 0) /* safetensors or pytorch_model.bin */
        goto out;
    specs = malloc(nspecs(&cfg) * sizeof *specs);
    found = calloc(nspecs(&cfg), sizeof *found);
    if (!specs || !found) {
        rc = err_set(e, ERR_NOMEM, dir, "out of memory");
        goto out;
    }
    size_t n = build_specs(m, specs), need = 0;
    for (size_t i = 0; i < n; i++) {
        const struct st_tensor *t = st_set_find(m->st, specs[i].name);
        if (!t) {
            rc = err_set(e, ERR_NOTFOUND, dir, "missing tensor \"%s\"", specs[i].name);
            goto out;
        }
        if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16) {
            rc = err_set(e, ERR_UNSUPPORTED, t->path,
                         "tensor \"%s\" has dtype %s; only F32, F16 and BF16 are supported",
                         t->name, st_dtype_name(t->dtype));
            goto out;
        }
        int ok = t->ndim == specs[i].ndim;
        for (int d = 0; ok && d < t->ndim; d++)
            ok = t->shape[d] == specs[i].shape[d];
        if (!ok) {
            char want[64], got[128];
            shape_str(want, sizeof want, specs[i].ndim, specs[i].shape);
            shape_str(got, sizeof got, t->ndim, t->shape);
            rc = err_set(e, ERR_MISMATCH, t->path,
                         "tensor \"%s\": config implies shape %s, checkpoint has %s",
                         t->name, want, got);
            goto out;
        }
        found[i] = t;
        int zero_copy = can_map(t, flags);
        if (!zero_copy)
            need += t->nelem;
    }
    m->block = alloc_floats(need);
    if (!m->block) {
        rc = err_set(e, ERR_NOMEM, dir, "cannot allocate %zu weights", need);
        goto out;
    }
    m->block_floats = need;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const struct st_tensor *t = found[i];
        int zero_copy = can_map(t, flags);
        float *p;
        if (zero_copy) {
            p = (float *)(uintptr_t)t->data; /* read-only mapping; see `writable` */
        } else {
            p = m->block + off;
            off += t->nelem;
            if ((rc = tensor_to_f32(p, t->data, t->dtype, t->nelem)) < 0) {
                rc = err_set(e, rc, t->path, "tensor \"%s\": cannot convert %s", t->name,
                             st_dtype_name(t->dtype));
                goto out;
            }
        }
        size_t bad = tensor_find_nonfinite(p, t->nelem);
        if (bad != (size_t)-1) {
            rc = err_set(e, ERR_NUMERIC, t->path,
                         "tensor \"%s\" holds a non-finite value (%g) at flat index %zu",
                         t->name, (double)p[bad], bad);
            goto out;
        }
        *specs[i].dst = p;
    }
    if (cfg.tie_word_embeddings)
        m->unembed = m->embed;
    m->writable = (flags & GPTNEOX_LOAD_WRITABLE) != 0;
    if (m->writable) { /* nothing points into the mapping any more */
        st_set_free(m->st);
        m->st = NULL;
    }
    rc = 0;
out:
    free(specs);
    free(found);
    if (rc < 0) {
        gptneox_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

void gptneox_free(struct gptneox *m)
{
    if (!m)
        return;
    if (m->acts)
        free(m->acts->mem);
    free(m->acts);
    free(m->block);
    free(m->layers);
    st_set_free(m->st);
    free(m);
}

int gptneox_save(const struct gptneox *m, const char *dir, enum st_dtype dtype, struct err *e)
{
    if (dtype != ST_F32 && dtype != ST_F16 && dtype != ST_BF16)
        return err_set(e, ERR_UNSUPPORTED, dir, "cannot save weights as %s", st_dtype_name(dtype));
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return err_set(e, ERR_IO, dir, "cannot create directory: %s", strerror(errno));
    struct gptneox tmp = *m; /* specs point at tmp's fields; values are m's */
    struct gptneox_layer *layers = malloc((size_t)m->cfg.n_layers * sizeof *layers);
    struct wspec *specs = malloc(nspecs(&m->cfg) * sizeof *specs);
    struct st_write_tensor *w = NULL;
    uint16_t *half = NULL;
    int rc = 0;
    if (!layers || !specs) {
        rc = err_set(e, ERR_NOMEM, dir, "out of memory");
        goto out;
    }
    memcpy(layers, m->layers, (size_t)m->cfg.n_layers * sizeof *layers);
    tmp.layers = layers;
    size_t n = build_specs(&tmp, specs), total = 0;
    w = calloc(n, sizeof *w);
    for (size_t i = 0; i < n; i++)
        total += spec_nelem(&specs[i]);
    if (dtype != ST_F32)
        half = malloc(total * sizeof *half);
    if (!w || (dtype != ST_F32 && !half)) {
        rc = err_set(e, ERR_NOMEM, dir, "out of memory");
        goto out;
    }
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const float *src = *specs[i].dst;
        size_t ne = spec_nelem(&specs[i]);
        w[i].name = specs[i].name;
        w[i].dtype = dtype;
        w[i].ndim = specs[i].ndim;
        w[i].shape[0] = specs[i].shape[0];
        w[i].shape[1] = specs[i].shape[1];
        if (dtype == ST_F32) {
            w[i].data = src;
        } else {
            if (dtype == ST_F16)
                tensor_f32_to_f16(half + off, src, ne);
            else
                tensor_f32_to_bf16(half + off, src, ne);
            w[i].data = half + off;
            off += ne;
        }
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if ((rc = st_write(path, w, n, NULL, e)) < 0)
        goto out;
    struct gptneox_config cfg = m->cfg;
    snprintf(cfg.torch_dtype, sizeof cfg.torch_dtype, "%s",
             dtype == ST_F32 ? "float32" : dtype == ST_F16 ? "float16" : "bfloat16");
    snprintf(path, sizeof path, "%s/config.json", dir);
    rc = gptneox_config_save(&cfg, path, e);
out:
    free(half);
    free(w);
    free(specs);
    free(layers);
    return rc;
}

/* n draws of N(mean, std^2) from the normal stream of common/rng.h. */
static void fill(float *p, size_t n, uint64_t *s, float mean, float std)
{
    for (size_t i = 0; p && i < n; i++)
        p[i] = mean + std * (float)rng_normal(s);
}

int gptneox_require_writable(const struct gptneox *m, const char *what, struct err *e)
{
    if (m->writable)
        return 0;
    const char *path = m->st && st_set_nfiles(m->st) > 0 ? st_set_file_path(m->st, 0) : NULL;
    return err_set(e, ERR_INVALID, path,
                   "the model's weights are read-only (mapped from the checkpoint): load it "
                   "with GPTNEOX_LOAD_WRITABLE to %s",
                   what);
}

int gptneox_init_random(struct gptneox *m, uint64_t seed, float std)
{
    if (gptneox_require_writable(m, "initialise it", NULL) < 0)
        return ERR_INVALID;
    const struct gptneox_config *c = &m->cfg;
    size_t V = (size_t)c->vocab_size, C = (size_t)c->d_model, F = (size_t)c->d_mlp;
    uint64_t s = seed;
    fill(m->embed, V * C, &s, 0.0f, std);
    for (int l = 0; l < c->n_layers; l++) {
        struct gptneox_layer *L = &m->layers[l];
        fill(L->ln1_w, C, &s, 1.0f, std / 10);
        fill(L->ln1_b, C, &s, 0.0f, std / 10);
        fill(L->qkv_w, 3 * C * C, &s, 0.0f, std);
        fill(L->qkv_b, 3 * C, &s, 0.0f, std / 10);
        fill(L->attn_w, C * C, &s, 0.0f, std);
        fill(L->attn_b, C, &s, 0.0f, std / 10);
        fill(L->ln2_w, C, &s, 1.0f, std / 10);
        fill(L->ln2_b, C, &s, 0.0f, std / 10);
        fill(L->fc_w, F * C, &s, 0.0f, std);
        fill(L->fc_b, F, &s, 0.0f, std / 10);
        fill(L->proj_w, C * F, &s, 0.0f, std);
        fill(L->proj_b, C, &s, 0.0f, std / 10);
    }
    fill(m->lnf_w, C, &s, 1.0f, std / 10);
    fill(m->lnf_b, C, &s, 0.0f, std / 10);
    if (m->unembed != m->embed)
        fill(m->unembed, V * C, &s, 0.0f, std);
    return 0;
}

/* ---- forward ---- */

unsigned gptneox_layer_plan(const struct gptneox_hook *hooks, size_t nh, int l)
{
    unsigned p = 0;
#define W(k) hooks_want(hooks, nh, k, l)
    if (W(HOOK_ATTN_IN))
        p |= LP_ATTN_IN;
    if (W(HOOK_LN1_SCALE) || W(HOOK_LN1_NORMALIZED))
        p |= LP_LN1;
    if (W(HOOK_ATTN_Q) || W(HOOK_ATTN_K) || W(HOOK_ATTN_V) || W(HOOK_ROT_Q) || W(HOOK_ROT_K))
        p |= LP_QKV;
    if (W(HOOK_ATTN_SCORES) || W(HOOK_ATTN_PATTERN))
        p |= LP_MAT;
    if (W(HOOK_ATTN_PATTERN))
        p |= LP_PAT;
    if (W(HOOK_ATTN_Z))
        p |= LP_Z;
    if (W(HOOK_ATTN_RESULT))
        p |= LP_RESULT;
    if (W(HOOK_MLP_IN))
        p |= LP_MLP_IN;
    if (W(HOOK_LN2_SCALE) || W(HOOK_LN2_NORMALIZED))
        p |= LP_LN2;
    if (W(HOOK_MLP_POST))
        p |= LP_POST;
#undef W
    return p;
}

/* Carves one float arena into 64-byte aligned buffers: a pass with base
 * NULL measures, a pass with the memory assigns.  n == 0 gives NULL. */
struct carve {
    float *base;
    size_t off;
};

static float *take(struct carve *cv, size_t n)
{
    float *p = cv->base && n ? cv->base + cv->off : NULL;
    cv->off += (n + 15) & ~(size_t)15;
    return p;
}

static void acts_carve(struct gptneox_acts *a, struct carve *cv, const struct gptneox_config *c,
                       int B, int T, unsigned any, int lnf, int full)
{
    const size_t N = (size_t)B * T, C = (size_t)c->d_model, F = (size_t)c->d_mlp;
    const size_t NH = (size_t)c->n_heads, HS = (size_t)c->d_head, half = c->rotary_ndims / 2;
    const size_t heads = (any & LP_ATTN_IN) ? NH : 1;
    a->x = take(cv, N * C);
    a->ln = take(cv, N * heads * C);
    a->hbuf = take(cv, (any & (LP_ATTN_IN | LP_RESULT)) ? N * NH * C : (any & LP_QKV) ? N * NH * HS : 0);
    a->mean = take(cv, (any & (LP_LN1 | LP_LN2)) || lnf ? N * heads : 0);
    a->scale = take(cv, (any & (LP_LN1 | LP_LN2)) || lnf ? N * heads : 0);
    a->qkv = take(cv, N * 3 * C);
    a->scores = take(cv, (any & LP_MAT) ? (size_t)B * NH * T * T : 0);
    a->z = take(cv, N * C);
    a->attn_out = take(cv, N * C);
    a->mlp_in = take(cv, (any & LP_MLP_IN) ? N * C : 0);
    a->ln2 = take(cv, N * C);
    a->h = take(cv, N * F);
    a->mlp_out = take(cv, N * C);
    a->logits = take(cv, full ? N * (size_t)c->vocab_size : 0);
    a->cosv = take(cv, (size_t)T * half + 1);
    a->sinv = take(cv, (size_t)T * half + 1);
    a->att = take(cv, (size_t)pool_threads() * attention_scratch_floats(T, c->d_head));
}

static int arena_prepare(struct gptneox *m, int B, int T, unsigned any, int lnf, int full,
                         struct err *e)
{
    const struct gptneox_config *c = &m->cfg;
    struct gptneox_acts *a = m->acts;
    struct carve cv = {NULL, 0};
    acts_carve(a, &cv, c, B, T, any, lnf, full);
    if (cv.off > a->cap) {
        free(a->mem);
        a->cap = 0;
        a->mem = alloc_floats(cv.off);
        if (!a->mem)
            return err_set(e, ERR_NOMEM, NULL, "cannot allocate %zu MiB of activations for B=%d T=%d",
                           cv.off * sizeof(float) >> 20, B, T);
        a->cap = cv.off;
    }
    cv = (struct carve){a->mem, 0};
    acts_carve(a, &cv, c, B, T, any, lnf, full);
    /* buffer offsets move with (B,T), so the small tables are rebuilt */
    rotary_tables(a->cosv, a->sinv, T, c->rotary_ndims, c->rotary_base);
    return 0;
}

/* The tape's layout (tape.h): what each layer keeps depends on its plan. */
static void tape_carve(struct gptneox_tape *t, struct carve *cv, const struct gptneox_config *c,
                       int B, int T, const unsigned *plan, unsigned any, int lnf)
{
    const size_t N = (size_t)B * T, C = (size_t)c->d_model, F = (size_t)c->d_mlp;
    const size_t NH = (size_t)c->n_heads, HS = (size_t)c->d_head, half = c->rotary_ndims / 2;
    const size_t V = (size_t)c->vocab_size, TT = (size_t)B * NH * T * T;
    for (int l = 0; l < c->n_layers; l++) {
        struct tape_layer *y = &t->layers[l];
        const unsigned p = plan[l];
        const size_t rows = N * ((p & LP_ATTN_IN) ? NH : 1);
        y->plan = p;
        y->x_in = take(cv, N * C);
        y->ain = take(cv, (p & LP_ATTN_IN) ? rows * C : 0);
        y->ln1 = take(cv, rows * C);
        y->mean1 = take(cv, rows);
        y->rstd1 = take(cv, rows);
        y->scale1 = take(cv, (p & LP_LN1) ? rows : 0);
        y->ln1n = take(cv, (p & LP_LN1) ? rows * C : 0);
        y->qkv = take(cv, N * 3 * C);
        y->lse = take(cv, (p & LP_MAT) ? 0 : (size_t)B * NH * T);
        y->pattern = take(cv, (p & LP_MAT) ? TT : 0);
        y->psoft = (p & LP_PAT) ? take(cv, TT) : y->pattern;
        y->z = take(cv, N * C);
        y->zraw = (p & LP_Z) && !(p & LP_MAT) ? take(cv, N * C) : y->z;
        y->x_mid = take(cv, c->parallel_residual ? 0 : N * C);
        y->mlp_in = take(cv, (p & LP_MLP_IN) ? N * C : 0);
        y->ln2 = take(cv, N * C);
        y->mean2 = take(cv, N);
        y->rstd2 = take(cv, N);
        y->scale2 = take(cv, (p & LP_LN2) ? N : 0);
        y->ln2n = take(cv, (p & LP_LN2) ? N * C : 0);
        y->hpre = take(cv, N * F);
        y->h = (p & LP_POST) ? take(cv, N * F) : NULL;
    }
    const size_t heads = (any & LP_ATTN_IN) ? NH : 1;
    t->x_fin = take(cv, N * C);
    t->lnf = take(cv, N * C);
    t->meanf = take(cv, N);
    t->rstdf = take(cv, N);
    t->scalef = take(cv, lnf ? N : 0);
    t->lnfn = take(cv, lnf ? N * C : 0);
    t->logits = take(cv, N * V);
    t->x = take(cv, N * C);
    t->attn_out = take(cv, N * C);
    t->mlp_out = take(cv, N * C);
    t->hbuf = take(cv, (any & (LP_ATTN_IN | LP_RESULT)) ? N * NH * C : N * NH * HS);
    t->cosv = take(cv, (size_t)T * half + 1);
    t->sinv = take(cv, (size_t)T * half + 1);
    t->att = take(cv, (size_t)pool_threads() * attention_scratch_floats(T, c->d_head));
    t->dres = take(cv, N * C);
    t->dbranch = take(cv, N * C);
    t->dln1 = take(cv, N * heads * C);
    t->dln1_heads = heads > 1;
    t->dln2 = take(cv, N * C);
    t->dz = take(cv, N * C);
    t->dqkv = take(cv, N * 3 * C);
    t->dh = take(cv, N * F);
    t->hre = take(cv, N * F);
    t->dP = take(cv, (size_t)T * T);
}

static int tape_prepare(struct gptneox_tape *t, const struct gptneox_config *c, int B, int T,
                        const unsigned *plan, unsigned any, int lnf, struct err *e)
{
    if (t->nlayers != c->n_layers) {
        struct tape_layer *nl = calloc((size_t)c->n_layers, sizeof *nl);
        if (!nl)
            return err_set(e, ERR_NOMEM, NULL, "out of memory for a tape");
        free(t->layers);
        t->layers = nl;
        t->nlayers = c->n_layers;
    }
    if ((size_t)B * T > t->tokens_cap) {
        int *tk = malloc((size_t)B * T * sizeof *tk);
        if (!tk)
            return err_set(e, ERR_NOMEM, NULL, "out of memory for a tape");
        free(t->tokens);
        t->tokens = tk;
        t->tokens_cap = (size_t)B * T;
    }
    struct carve cv = {NULL, 0};
    tape_carve(t, &cv, c, B, T, plan, any, lnf);
    if (cv.off > t->cap) {
        free(t->mem);
        t->cap = 0;
        t->mem = alloc_floats(cv.off);
        if (!t->mem)
            return err_set(e, ERR_NOMEM, NULL, "cannot allocate %zu MiB of taped activations for B=%d T=%d",
                           cv.off * sizeof(float) >> 20, B, T);
        t->cap = cv.off;
    }
    cv = (struct carve){t->mem, 0};
    tape_carve(t, &cv, c, B, T, plan, any, lnf);
    t->B = B;
    t->T = T;
    t->lnf_hooked = lnf;
    rotary_tables(t->cosv, t->sinv, T, c->rotary_ndims, c->rotary_base);
    return 0;
}

int hooks_want(const struct gptneox_hook *hooks, size_t nh, enum hook_kind k, int layer)
{
    for (size_t i = 0; i < nh; i++)
        if (hooks[i].kind == k && (hooks[i].layer < 0 || hooks[i].layer == layer))
            return 1;
    return 0;
}

int hooks_call_shaped(const struct gptneox *m, const struct gptneox_hook *hooks, size_t nh,
                      enum hook_kind k, int layer, float *data, int ndim, const int *shape,
                      int grad, struct err *e)
{
    (void)m;
    for (size_t i = 0; i < nh; i++) {
        if (hooks[i].kind != k || (hooks[i].layer >= 0 && hooks[i].layer != layer))
            continue;
        char name[64];
        struct hook_act act;
        act.kind = k;
        act.layer = layer;
        act.data = data;
        act.ndim = ndim;
        act.n = 1;
        for (int d = 0; d < 4; d++)
            act.shape[d] = d < ndim ? shape[d] : 0;
        for (int d = 0; d < ndim; d++)
            act.n *= (size_t)act.shape[d];
        act.grad = grad;
        if (hook_name(name, sizeof name, k, layer) < 0)
            return err_set(e, ERR_INVALID, NULL, "bad hook");
        act.name = name;
        int rc = hooks[i].fn(hooks[i].ctx, &act, e);
        if (rc < 0) {
            if (e && e->code == ERR_OK)
                err_set(e, rc, name, "%s hook failed", grad ? "gradient" : "forward");
            return rc;
        }
    }
    return 0;
}

int hooks_call(const struct gptneox *m, const struct gptneox_hook *hooks, size_t nh,
               enum hook_kind k, int layer, float *data, int B, int T, int grad, struct err *e)
{
    if (!hooks_want(hooks, nh, k, layer))
        return 0;
    int shape[4];
    int ndim = gptneox_hook_shape(&m->cfg, k, B, T, shape);
    return hooks_call_shaped(m, hooks, nh, k, layer, data, ndim, shape, grad, e);
}

void hooks_ln_shape(const struct gptneox_config *c, int B, int T, int heads, int scale,
                    int *ndim, int shape[4])
{
    shape[0] = B;
    shape[1] = T;
    if (heads) {
        shape[2] = c->n_heads;
        shape[3] = scale ? 1 : c->d_model;
        *ndim = 4;
    } else {
        shape[2] = scale ? 1 : c->d_model;
        *ndim = 3;
    }
}

/* A LayerNorm hook point: out (R,C) = LN(x (R,C)) * w + b with R = B*T
 * rows (B*T*NH with heads).  Without hooks at it, the fused kernel
 * (storing mean and rstd when they are not NULL).  With them: mean (R),
 * scale (R) = sqrt(var + eps), hook_scale, out = (x - mean) / scale,
 * hook_normalized, then the weight and bias; rstd (R) gets 1/scale before
 * the hook, nrm (R,C) (if not NULL) the normalized values after it. */
struct ln_point {
    enum hook_kind kscale, knorm;
    int layer, heads;
};

static int ln_forward(struct gptneox *m, const struct ln_point *pt, float *out, float *mean,
                      float *rstd, float *scale, float *nrm, const float *x, const float *w,
                      const float *b, int B, int T, const struct gptneox_hook *hooks, size_t nh,
                      struct err *e)
{
    const struct gptneox_config *c = &m->cfg;
    const int C = c->d_model, R = B * T * (pt->heads ? c->n_heads : 1);
    const float eps = (float)c->layer_norm_eps;
    int rc, ndim, shape[4];
    if (!hooks_want(hooks, nh, pt->kscale, pt->layer) &&
        !hooks_want(hooks, nh, pt->knorm, pt->layer)) {
        layernorm_forward_stats(out, mean, rstd, x, w, b, R, C, eps);
        return 0;
    }
    layernorm_scale(mean, scale, rstd, x, R, C, eps);
    hooks_ln_shape(c, B, T, pt->heads, 1, &ndim, shape);
    if ((rc = hooks_call_shaped(m, hooks, nh, pt->kscale, pt->layer, scale, ndim, shape, 0, e)) < 0)
        return rc;
    layernorm_normalize(out, x, mean, scale, R, C);
    hooks_ln_shape(c, B, T, pt->heads, 0, &ndim, shape);
    if ((rc = hooks_call_shaped(m, hooks, nh, pt->knorm, pt->layer, out, ndim, shape, 0, e)) < 0)
        return rc;
    if (nrm)
        memcpy(nrm, out, (size_t)R * C * sizeof(float));
    layernorm_affine(out, w, b, R, C);
    return 0;
}

/* out (N,NH,HS) <- part `which` (0 q, 1 k, 2 v) of qkv (N,NH,3,HS); and back. */
static void qkv_gather(float *out, const float *qkv, int which, int N, int NH, int HS)
{
    for (size_t r = 0; r < (size_t)N * NH; r++)
        memcpy(out + r * HS, qkv + r * 3 * HS + (size_t)which * HS, (size_t)HS * sizeof(float));
}

static void qkv_scatter(float *qkv, const float *in, int which, int N, int NH, int HS)
{
    for (size_t r = 0; r < (size_t)N * NH; r++)
        memcpy(qkv + r * 3 * HS + (size_t)which * HS, in + r * HS, (size_t)HS * sizeof(float));
}

/* Hook points on one part of qkv (B,T,NH,3,HS): gather, call, scatter. */
static int qkv_hook(struct gptneox *m, enum hook_kind k, int l, int which, float *qkv, float *buf,
                    int B, int T, const struct gptneox_hook *hooks, size_t nh, int grad,
                    struct err *e)
{
    if (!hooks_want(hooks, nh, k, l))
        return 0;
    const int NH = m->cfg.n_heads, HS = m->cfg.d_head;
    qkv_gather(buf, qkv, which, B * T, NH, HS);
    int rc = hooks_call(m, hooks, nh, k, l, buf, B, T, grad, e);
    if (rc < 0)
        return rc;
    qkv_scatter(qkv, buf, which, B * T, NH, HS);
    return 0;
}

static void add_inplace(float *x, const float *y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] += y[i];
}

/* Where one forward keeps its activations.  Without a tape every layer
 * reuses the model's arena; with one, each layer writes what the backward
 * reads into its own tape buffers. */
struct fwd_bufs {
    float *x;              /* (B,T,C) residual stream, updated in place */
    float *attn_out;       /* (B,T,C) */
    float *mlp_out;        /* (B,T,C) */
    float *hbuf;           /* hook re-layouts (gptneox_acts.hbuf) */
    float *cosv, *sinv;    /* (T,RD/2) */
    float *att;            /* fused attention scratch */
    float *lnf;            /* (B,T,C) final LayerNorm output */
    float *meanf, *rstdf, *scalef, *lnfn; /* its statistics, or NULL */
    float *logits;         /* (B,T,V) or NULL when the forward stops early */
    struct gptneox_acts *a;    /* the arena (no tape) */
    struct gptneox_tape *tape; /* or the tape */
};

/* One layer's buffers (struct tape_layer's fields): the tape layer's, or
 * the arena's (shared by all layers; NULL where nothing is kept). */
static void layer_bufs_get(struct tape_layer *lb, const struct fwd_bufs *fb, int l, unsigned p)
{
    if (fb->tape) {
        *lb = fb->tape->layers[l];
        return;
    }
    const struct gptneox_acts *a = fb->a;
    memset(lb, 0, sizeof *lb);
    lb->plan = p;
    lb->ain = a->hbuf;
    lb->ln1 = a->ln;
    lb->mean1 = (p & LP_LN1) ? a->mean : NULL;
    lb->scale1 = a->scale;
    lb->qkv = a->qkv;
    lb->pattern = lb->psoft = a->scores;
    lb->z = lb->zraw = a->z;
    lb->mlp_in = a->mlp_in;
    lb->ln2 = a->ln2;
    lb->mean2 = (p & LP_LN2) ? a->mean : NULL;
    lb->scale2 = a->scale;
    lb->hpre = lb->h = a->h;
}

/* The attention of layer l from the residual x (B,T,C) into fb->attn_out. */
static int attn_forward(struct gptneox *m, const struct fwd_bufs *fb, struct tape_layer *lb,
                        int l, int B, int T, const struct gptneox_hook *hooks, size_t nh,
                        struct err *e)
{
    const struct gptneox_config *c = &m->cfg;
    const struct gptneox_layer *L = &m->layers[l];
    const int C = c->d_model, NH = c->n_heads, HS = c->d_head, N = B * T;
    const unsigned p = lb->plan;
    const int heads = (p & LP_ATTN_IN) != 0;
    const struct ln_point ln1 = {HOOK_LN1_SCALE, HOOK_LN1_NORMALIZED, l, heads};
    int rc;
    if (heads) {
        /* TransformerLens's use_attn_in: each head reads its own copy of
         * the residual through its own LayerNorm */
        float *ain = lb->ain;
        for (int n = 0; n < N; n++)
            for (int h = 0; h < NH; h++)
                memcpy(ain + ((size_t)n * NH + h) * C, fb->x + (size_t)n * C,
                       (size_t)C * sizeof(float));
        if ((rc = hooks_call(m, hooks, nh, HOOK_ATTN_IN, l, ain, B, T, 0, e)) < 0)
            return rc;
        if ((rc = ln_forward(m, &ln1, lb->ln1, lb->mean1, lb->rstd1, lb->scale1, lb->ln1n, ain,
                             L->ln1_w, L->ln1_b, B, T, hooks, nh, e)) < 0)
            return rc;
        for (int h = 0; h < NH; h++) {
            float *out = lb->qkv + (size_t)h * 3 * HS;
            const float *bias = L->qkv_b ? L->qkv_b + (size_t)h * 3 * HS : NULL;
            for (int n = 0; n < N && bias; n++)
                memcpy(out + (size_t)n * 3 * C, bias, 3 * (size_t)HS * sizeof(float));
            sgemm_par(0, 1, N, 3 * HS, C, 1.0f, lb->ln1 + (size_t)h * C, NH * C,
                      L->qkv_w + (size_t)h * 3 * HS * C, C, bias ? 1.0f : 0.0f, out, 3 * C);
        }
    } else {
        if ((rc = ln_forward(m, &ln1, lb->ln1, lb->mean1, lb->rstd1, lb->scale1, lb->ln1n, fb->x,
                             L->ln1_w, L->ln1_b, B, T, hooks, nh, e)) < 0)
            return rc;
        matmul_forward(lb->qkv, lb->ln1, L->qkv_w, L->qkv_b, N, C, 3 * C);
    }
    if (p & LP_QKV) {
        if ((rc = qkv_hook(m, HOOK_ATTN_Q, l, 0, lb->qkv, fb->hbuf, B, T, hooks, nh, 0, e)) < 0 ||
            (rc = qkv_hook(m, HOOK_ATTN_K, l, 1, lb->qkv, fb->hbuf, B, T, hooks, nh, 0, e)) < 0 ||
            (rc = qkv_hook(m, HOOK_ATTN_V, l, 2, lb->qkv, fb->hbuf, B, T, hooks, nh, 0, e)) < 0)
            return rc;
    }
    rotary_forward(lb->qkv, fb->cosv, fb->sinv, B, T, NH, HS, c->rotary_ndims);
    if (p & LP_QKV) {
        if ((rc = qkv_hook(m, HOOK_ROT_Q, l, 0, lb->qkv, fb->hbuf, B, T, hooks, nh, 0, e)) < 0 ||
            (rc = qkv_hook(m, HOOK_ROT_K, l, 1, lb->qkv, fb->hbuf, B, T, hooks, nh, 0, e)) < 0)
            return rc;
    }
    if (p & LP_MAT) {
        attention_scores(lb->pattern, lb->qkv, B, T, NH, HS);
        if ((rc = hooks_call(m, hooks, nh, HOOK_ATTN_SCORES, l, lb->pattern, B, T, 0, e)) < 0)
            return rc;
        attention_softmax(lb->pattern, lb->pattern, B, NH, T);
        if (lb->psoft != lb->pattern)
            memcpy(lb->psoft, lb->pattern, (size_t)B * NH * T * T * sizeof(float));
        if ((rc = hooks_call(m, hooks, nh, HOOK_ATTN_PATTERN, l, lb->pattern, B, T, 0, e)) < 0)
            return rc;
        attention_z_pattern(lb->z, lb->pattern, lb->qkv, B, T, NH, HS);
    } else {
        attention_forward(lb->zraw, lb->lse, lb->qkv, fb->att, B, T, NH, HS);
        if (lb->zraw != lb->z)
            memcpy(lb->z, lb->zraw, (size_t)N * C * sizeof(float));
    }
    if ((rc = hooks_call(m, hooks, nh, HOOK_ATTN_Z, l, lb->z, B, T, 0, e)) < 0)
        return rc;
    if (p & LP_RESULT) {
        /* result[:, h] = z[:, h] W_O[:, h]^T; attn_out = sum over heads + b_O */
        float *res = fb->hbuf;
        for (int h = 0; h < NH; h++)
            sgemm_par(0, 1, N, C, HS, 1.0f, lb->z + (size_t)h * HS, C, L->attn_w + (size_t)h * HS,
                      C, 0.0f, res + (size_t)h * C, NH * C);
        if ((rc = hooks_call(m, hooks, nh, HOOK_ATTN_RESULT, l, res, B, T, 0, e)) < 0)
            return rc;
        for (int n = 0; n < N; n++) {
            float *o = fb->attn_out + (size_t)n * C;
            if (L->attn_b)
                memcpy(o, L->attn_b, (size_t)C * sizeof(float));
            else
                memset(o, 0, (size_t)C * sizeof(float));
            for (int h = 0; h < NH; h++)
                add_inplace(o, res + ((size_t)n * NH + h) * C, (size_t)C);
        }
    } else {
        matmul_forward(fb->attn_out, lb->z, L->attn_w, L->attn_b, N, C, C);
    }
    return hooks_call(m, hooks, nh, HOOK_ATTN_OUT, l, fb->attn_out, B, T, 0, e);
}

/* Layer l on the residual fb->x (B,T,C), hooks from hook_resid_pre to
 * hook_resid_post. */
static int layer_forward(struct gptneox *m, const struct fwd_bufs *fb, int l, int B, int T,
                         const struct gptneox_hook *hooks, size_t nh, struct err *e)
{
    const struct gptneox_config *c = &m->cfg;
    const struct gptneox_layer *L = &m->layers[l];
    const int C = c->d_model, F = c->d_mlp, N = B * T;
    const size_t NC = (size_t)N * C;
    struct tape_layer lb;
    float *x = fb->x;
    int rc;
    layer_bufs_get(&lb, fb, l, fb->tape ? 0 : gptneox_layer_plan(hooks, nh, l));

    if ((rc = hooks_call(m, hooks, nh, HOOK_RESID_PRE, l, x, B, T, 0, e)) < 0)
        return rc;
    if (lb.x_in)
        memcpy(lb.x_in, x, NC * sizeof(float));
    if ((rc = attn_forward(m, fb, &lb, l, B, T, hooks, nh, e)) < 0)
        return rc;
    /* MLP: on the layer's input (parallel) or after the attention (sequential) */
    if (!c->parallel_residual) {
        vadd(x, fb->attn_out, NULL, NC);
        if ((rc = hooks_call(m, hooks, nh, HOOK_RESID_MID, l, x, B, T, 0, e)) < 0)
            return rc;
        if (lb.x_mid)
            memcpy(lb.x_mid, x, NC * sizeof(float));
    }
    const float *mlp_in = x;
    if (lb.plan & LP_MLP_IN) {
        memcpy(lb.mlp_in, x, NC * sizeof(float));
        if ((rc = hooks_call(m, hooks, nh, HOOK_MLP_IN, l, lb.mlp_in, B, T, 0, e)) < 0)
            return rc;
        mlp_in = lb.mlp_in;
    }
    const struct ln_point ln2 = {HOOK_LN2_SCALE, HOOK_LN2_NORMALIZED, l, 0};
    if ((rc = ln_forward(m, &ln2, lb.ln2, lb.mean2, lb.rstd2, lb.scale2, lb.ln2n, mlp_in,
                         L->ln2_w, L->ln2_b, B, T, hooks, nh, e)) < 0)
        return rc;
    matmul_forward(lb.hpre, lb.ln2, L->fc_w, L->fc_b, N, C, F);
    if ((rc = hooks_call(m, hooks, nh, HOOK_MLP_PRE, l, lb.hpre, B, T, 0, e)) < 0)
        return rc;
    float *h = lb.h ? lb.h : fb->tape->hre; /* a tape keeps h only when hooked */
    if (h != lb.hpre)
        memcpy(h, lb.hpre, (size_t)N * F * sizeof(float));
    if (c->act == ACT_GELU)
        gelu_forward(h, (size_t)N * F);
    else
        gelu_tanh_forward(h, (size_t)N * F);
    if ((rc = hooks_call(m, hooks, nh, HOOK_MLP_POST, l, h, B, T, 0, e)) < 0)
        return rc;
    matmul_forward(fb->mlp_out, h, L->proj_w, L->proj_b, N, F, C);
    if ((rc = hooks_call(m, hooks, nh, HOOK_MLP_OUT, l, fb->mlp_out, B, T, 0, e)) < 0)
        return rc;
    /* parallel: x = (x + attn_out) + mlp_out; sequential: x += mlp_out */
    vadd(x, c->parallel_residual ? fb->attn_out : fb->mlp_out,
         c->parallel_residual ? fb->mlp_out : NULL, NC);
    return hooks_call(m, hooks, nh, HOOK_RESID_POST, l, x, B, T, 0, e);
}

struct embed_job {
    float *x;
    const float *embed;
    const int *tokens;
    int C;
};

static void embed_rows(const void *ctx, size_t lo, size_t hi)
{
    const struct embed_job *j = ctx;
    for (size_t n = lo; n < hi; n++)
        memcpy(j->x + n * j->C, j->embed + (size_t)j->tokens[n] * j->C,
               (size_t)j->C * sizeof(float));
}

/* The forward from tokens (resid NULL, first_layer 0) or resumed at
 * blocks.<first_layer>.hook_resid_pre from the residual `resid` (B,T,C);
 * into the model's arena, or into `tape` (then from tokens, to the logits). */
static int forward_impl(struct gptneox *m, struct gptneox_tape *tape, const int *tokens,
                        const float *resid, int first_layer, int B, int T,
                        const struct gptneox_hook *hooks, size_t nh, int last_layer,
                        struct err *e)
{
    const struct gptneox_config *c = &m->cfg;
    const int C = c->d_model, V = c->vocab_size;
    const int full = last_layer >= c->n_layers - 1 && last_layer == INT32_MAX;
    const int lnf = hooks_want(hooks, nh, HOOK_LN_FINAL, -1) ||
                    hooks_want(hooks, nh, HOOK_LN_FINAL_SCALE, -1);
    unsigned plan_small[64], *plan = plan_small, any = 0;
    struct fwd_bufs fb;
    int rc;
    if (B <= 0 || T <= 0 || (size_t)B * T > (1u << 26))
        return err_set(e, ERR_INVALID, NULL, "batch %d x %d tokens is not a valid size", B, T);
    for (size_t i = 0; !resid && i < (size_t)B * T; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return err_set(e, ERR_INVALID, NULL, "token %d at position %zu is outside the vocabulary [0, %d)",
                           tokens[i], i, V);
    if (c->n_layers > 64 && !(plan = malloc((size_t)c->n_layers * sizeof *plan)))
        return err_set(e, ERR_NOMEM, NULL, "out of memory");
    for (int l = 0; l < c->n_layers; l++) {
        plan[l] = gptneox_layer_plan(hooks, nh, l);
        any |= plan[l];
    }
    memset(&fb, 0, sizeof fb);
    if (tape) {
        tape->has_logits = 0;
        tape->forward_done = 0;
        if ((rc = tape_prepare(tape, c, B, T, plan, any, lnf, e)) < 0)
            goto out;
        memcpy(tape->tokens, tokens, (size_t)B * T * sizeof *tokens);
        fb = (struct fwd_bufs){tape->x, tape->attn_out, tape->mlp_out, tape->hbuf, tape->cosv,
                               tape->sinv, tape->att, tape->lnf, tape->meanf, tape->rstdf,
                               tape->scalef, tape->lnfn, tape->logits, NULL, tape};
    } else {
        struct gptneox_acts *a = m->acts;
        a->has_logits = 0;
        if ((rc = arena_prepare(m, B, T, any, lnf, full, e)) < 0)
            goto out;
        a->B = B;
        a->T = T;
        fb = (struct fwd_bufs){a->x, a->attn_out, a->mlp_out, a->hbuf, a->cosv, a->sinv,
                               a->att, a->ln, a->mean, NULL, a->scale, NULL,
                               full ? a->logits : NULL, a, NULL};
    }
    const int N = B * T;

    if (resid) {
        memcpy(fb.x, resid, (size_t)N * C * sizeof(float));
    } else {
        struct embed_job ej = {fb.x, m->embed, tokens, C};
        pool_rows((size_t)N, (size_t)C, embed_rows, &ej);
        if ((rc = hooks_call(m, hooks, nh, HOOK_EMBED, -1, fb.x, B, T, 0, e)) < 0)
            goto out;
    }

    int stop = last_layer < c->n_layers - 1 ? last_layer : c->n_layers - 1;
    const double unembed_flop = 2.0 * N * C * V;
    const double layer_flop = (gptneox_forward_flops(c, B, T) - unembed_flop) / c->n_layers;
    for (int l = first_layer; l <= stop; l++) {
        if ((rc = layer_forward(m, &fb, l, B, T, hooks, nh, e)) < 0)
            goto out;
        m->forward_flop += layer_flop;
    }
    rc = 0;
    if (!full)
        goto out;
    if (tape)
        memcpy(tape->x_fin, fb.x, (size_t)N * C * sizeof(float));
    const struct ln_point lpf = {HOOK_LN_FINAL_SCALE, HOOK_LN_FINAL, -1, 0};
    if ((rc = ln_forward(m, &lpf, fb.lnf, fb.meanf, fb.rstdf, fb.scalef, fb.lnfn, fb.x, m->lnf_w,
                         m->lnf_b, B, T, hooks, nh, e)) < 0)
        goto out;
    matmul_forward(fb.logits, fb.lnf, m->unembed, NULL, N, C, V);
    m->forward_flop += unembed_flop;
    if (tape)
        tape->has_logits = tape->forward_done = 1;
    else
        m->acts->has_logits = 1;
out:
    if (plan != plan_small)
        free(plan);
    return rc;
}

int gptneox_forward_taped(struct gptneox *m, struct gptneox_tape *t, const int *tokens, int B,
                          int T, const struct gptneox_hook *hooks, size_t nhooks, struct err *e)
{
    return forward_impl(m, t, tokens, NULL, 0, B, T, hooks, nhooks, INT32_MAX, e);
}

int gptneox_forward(struct gptneox *m, const int *tokens, int B, int T,
                    const struct gptneox_hook *hooks, size_t nhooks, struct err *e)
{
    return forward_impl(m, NULL, tokens, NULL, 0, B, T, hooks, nhooks, INT32_MAX, e);
}

int gptneox_forward_until(struct gptneox *m, const int *tokens, int B, int T,
                          const struct gptneox_hook *hooks, size_t nhooks, int last_layer,
                          struct err *e)
{
    if (last_layer < 0 || last_layer >= m->cfg.n_layers)
        return err_set(e, ERR_INVALID, NULL, "layer %d is outside [0, %d)", last_layer,
                       m->cfg.n_layers);
    return forward_impl(m, NULL, tokens, NULL, 0, B, T, hooks, nhooks, last_layer, e);
}

int gptneox_forward_from(struct gptneox *m, int layer, const float *resid, int B, int T,
                         const struct gptneox_hook *hooks, size_t nhooks, unsigned flags,
                         struct err *e)
{
    const int nl = m->cfg.n_layers;
    if (layer < 0 || layer > nl)
        return err_set(e, ERR_INVALID, NULL, "resume layer %d is outside [0, %d]", layer, nl);
    if (!resid)
        return err_set(e, ERR_INVALID, NULL, "no residual to resume from");
    if ((flags & GPTNEOX_FWD_NO_LOGITS) && layer == nl)
        return err_set(e, ERR_INVALID, NULL,
                       "resuming after the last layer without logits computes nothing");
    return forward_impl(m, NULL, NULL, resid, layer, B, T, hooks, nhooks,
                        (flags & GPTNEOX_FWD_NO_LOGITS) ? nl - 1 : INT32_MAX, e);
}

const float *gptneox_logits(const struct gptneox *m)
{
    return m->acts && m->acts->has_logits ? m->acts->logits : NULL;
}

double gptneox_loss(const struct gptneox *m, const int *tokens, int B, int T, float *out,
                    float *per_seq)
{
    const float *logits = gptneox_logits(m);
    if (!logits || B != m->acts->B || T != m->acts->T || T < 2)
        return NAN;
    const int V = m->cfg.vocab_size;
    double total = 0.0;
    for (int b = 0; b < B; b++) {
        float tmp[1];
        double seq = 0.0;
        for (int t = 0; t + 1 < T; t++) {
            int target = tokens[(size_t)b * T + t + 1];
            crossentropy_forward(tmp, logits + ((size_t)b * T + t) * V, &target, 1, V);
            if (out)
                out[(size_t)b * (T - 1) + t] = tmp[0];
            seq += tmp[0];
        }
        if (per_seq)
            per_seq[b] = (float)(seq / (T - 1));
        total += seq;
    }
    return total / ((double)B * (T - 1));
}

double gptneox_forward_flops(const struct gptneox_config *c, int B, int T)
{
    double N = (double)B * T, C = c->d_model, F = c->d_mlp, V = c->vocab_size;
    double per_layer = 2 * N * C * 3 * C + 2 * N * C * C + 2 * N * C * F + 2 * N * F * C;
    double att = attention_flops(B, T, c->n_heads, c->d_head);
    return c->n_layers * (per_layer + att) + 2 * N * C * V;
}
