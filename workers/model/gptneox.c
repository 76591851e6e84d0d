#include "workers/model/gptneox.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/log.h"
#include "workers/model/checkpoint.h"
#include "workers/model/kernels.h"
#include "workers/model/safetensors.h"
#include "workers/model/tape.h"
#include "workers/model/tensor.h"

/* The activation arena of one forward.  Sizes grow to the largest (B,T)
 * seen and are reused; nothing is allocated per layer. */
struct gptneox_acts {
    size_t cap;      /* floats allocated */
    float *mem;
    int B, T;        /* of the last forward */
    int has_logits;  /* last forward ran to the logits */
    float *x, *ln, *qkv, *pattern, *z, *attn_out, *ln2, *h, *mlp_out, *logits;
    float *cosv, *sinv;
};

/* ---- hook names ---- */

static const char *const hook_suffix[HOOK_KIND_COUNT] = {
    "hook_embed",      "hook_resid_pre", "attn.hook_pattern", "attn.hook_z",
    "hook_attn_out",   "hook_resid_mid", "mlp.hook_post",     "hook_mlp_out",
    "hook_resid_post", "ln_final.hook_normalized",
};

const char *hook_kind_suffix(enum hook_kind k)
{
    return (unsigned)k < HOOK_KIND_COUNT ? hook_suffix[k] : "?";
}

int hook_kind_per_layer(enum hook_kind k) { return k != HOOK_EMBED && k != HOOK_LN_FINAL; }

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
    if (strcmp(name, hook_suffix[HOOK_EMBED]) == 0) {
        *k = HOOK_EMBED;
        *layer = -1;
        return 0;
    }
    if (strcmp(name, hook_suffix[HOOK_LN_FINAL]) == 0) {
        *k = HOOK_LN_FINAL;
        *layer = -1;
        return 0;
    }
    if (strncmp(name, "blocks.", 7) != 0)
        return ERR_NOTFOUND;
    char *end = NULL;
    long l = strtol(name + 7, &end, 10);
    if (end == name + 7 || *end != '.' || l < 0 || l > 100000)
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
        shape[1] = c->n_heads;
        shape[2] = T;
        shape[3] = T;
        return 4;
    case HOOK_ATTN_Z:
        shape[2] = c->n_heads;
        shape[3] = c->d_head;
        return 4;
    case HOOK_MLP_POST:
        shape[2] = c->d_mlp;
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

/* splitmix64 and Box-Muller: a deterministic normal stream. */
static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float normal(uint64_t *s)
{
    double u1 = ((splitmix(s) >> 11) + 1.0) / 9007199254740993.0;
    double u2 = (splitmix(s) >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static void fill(float *p, size_t n, uint64_t *s, float mean, float std)
{
    for (size_t i = 0; p && i < n; i++)
        p[i] = mean + std * normal(s);
}

void gptneox_init_random(struct gptneox *m, uint64_t seed, float std)
{
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
}

/* ---- forward ---- */

static int arena_prepare(struct gptneox *m, int B, int T, int full, struct err *e)
{
    const struct gptneox_config *c = &m->cfg;
    struct gptneox_acts *a = m->acts;
    size_t N = (size_t)B * T, C = (size_t)c->d_model, F = (size_t)c->d_mlp;
    size_t V = (size_t)c->vocab_size, NH = (size_t)c->n_heads, half = (size_t)c->rotary_ndims / 2;
    size_t sizes[12] = {
        N * C, N * C, N * 3 * C, (size_t)B * NH * T * T, N * C, N * C, N * C, N * F, N * C,
        full ? N * V : 0, (size_t)T * half, (size_t)T * half,
    };
    size_t total = 0;
    for (int i = 0; i < 12; i++)
        total += (sizes[i] + 15) & ~(size_t)15; /* keep each buffer 64-byte aligned */
    if (total > a->cap) {
        free(a->mem);
        a->cap = 0;
        a->mem = alloc_floats(total);
        if (!a->mem)
            return err_set(e, ERR_NOMEM, NULL, "cannot allocate %zu MiB of activations for B=%d T=%d",
                           total * sizeof(float) >> 20, B, T);
        a->cap = total;
    }
    float **ptrs[12] = {&a->x,  &a->ln, &a->qkv,     &a->pattern, &a->z,    &a->attn_out,
                        &a->ln2, &a->h, &a->mlp_out, &a->logits,  &a->cosv, &a->sinv};
    size_t off = 0;
    for (int i = 0; i < 12; i++) {
        *ptrs[i] = a->mem + off;
        off += (sizes[i] + 15) & ~(size_t)15;
    }
    /* buffer offsets move with (B,T), so the small tables are rebuilt */
    rotary_tables(a->cosv, a->sinv, T, c->rotary_ndims, c->rotary_base);
    return 0;
}

int hooks_want(const struct gptneox_hook *hooks, size_t nh, enum hook_kind k, int layer)
{
    for (size_t i = 0; i < nh; i++)
        if (hooks[i].kind == k && (hooks[i].layer < 0 || hooks[i].layer == layer))
            return 1;
    return 0;
}

int hooks_call(const struct gptneox *m, const struct gptneox_hook *hooks, size_t nh,
               enum hook_kind k, int layer, float *data, int B, int T, int grad, struct err *e)
{
    for (size_t i = 0; i < nh; i++) {
        if (hooks[i].kind != k || (hooks[i].layer >= 0 && hooks[i].layer != layer))
            continue;
        char name[64];
        struct hook_act act;
        act.kind = k;
        act.layer = layer;
        act.data = data;
        act.ndim = gptneox_hook_shape(&m->cfg, k, B, T, act.shape);
        act.n = 1;
        for (int d = 0; d < act.ndim; d++)
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

static void add_inplace(float *x, const float *y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] += y[i];
}

/* Where one forward keeps its activations.  Without a tape every layer
 * reuses the model's arena; with one, each layer writes the activations
 * the backward reads into its own tape buffers. */
struct fwd_bufs {
    float *x;              /* (B,T,C) residual stream, updated in place */
    float *attn_out;       /* (B,T,C) */
    float *mlp_out;        /* (B,T,C) */
    float *cosv, *sinv;    /* (T,RD/2) */
    float *lnf;            /* (B,T,C) final LayerNorm output */
    float *meanf, *rstdf;  /* (B,T) or NULL */
    float *logits;         /* (B,T,V) or NULL when the forward stops early */
    struct gptneox_acts *a;    /* the arena (no tape) */
    struct gptneox_tape *tape; /* or the tape */
};

/* One layer's buffers: the arena's, or tape layer l's. */
struct layer_bufs {
    float *ln1, *mean1, *rstd1, *qkv, *pattern, *z, *ln2, *mean2, *rstd2, *hpre, *h;
};

static void layer_bufs_get(struct layer_bufs *lb, const struct fwd_bufs *fb, int l)
{
    if (fb->tape) {
        const struct tape_layer *y = &fb->tape->layers[l];
        *lb = (struct layer_bufs){y->ln1, y->mean1, y->rstd1, y->qkv, y->pattern, y->z,
                                  y->ln2, y->mean2, y->rstd2, y->hpre, y->h};
    } else {
        const struct gptneox_acts *a = fb->a;
        *lb = (struct layer_bufs){a->ln, NULL, NULL, a->qkv, a->pattern, a->z,
                                  a->ln2, NULL, NULL, a->h, a->h};
    }
}

/* Layer l on the residual fb->x (B,T,C), hooks from hook_resid_pre to
 * hook_resid_post. */
static int layer_forward(struct gptneox *m, const struct fwd_bufs *fb, int l, int B, int T,
                         const struct gptneox_hook *hooks, size_t nh, struct err *e)
{
    const struct gptneox_config *c = &m->cfg;
    const struct gptneox_layer *L = &m->layers[l];
    const int C = c->d_model, NH = c->n_heads, HS = c->d_head, F = c->d_mlp, N = B * T;
    const size_t NC = (size_t)N * C;
    const float eps = (float)c->layer_norm_eps;
    struct tape_layer *y = fb->tape ? &fb->tape->layers[l] : NULL;
    struct layer_bufs lb;
    float *x = fb->x;
    int rc;
    layer_bufs_get(&lb, fb, l);

    if ((rc = hooks_call(m, hooks, nh, HOOK_RESID_PRE, l, x, B, T, 0, e)) < 0)
        return rc;
    if (y)
        memcpy(y->x_in, x, NC * sizeof(float));
    /* attention */
    layernorm_forward_stats(lb.ln1, lb.mean1, lb.rstd1, x, L->ln1_w, L->ln1_b, N, C, eps);
    matmul_forward(lb.qkv, lb.ln1, L->qkv_w, L->qkv_b, N, C, 3 * C);
    rotary_forward(lb.qkv, fb->cosv, fb->sinv, B, T, NH, HS, c->rotary_ndims);
    attention_pattern(lb.pattern, lb.qkv, B, T, NH, HS);
    if (hooks_want(hooks, nh, HOOK_ATTN_PATTERN, l)) {
        /* what a hook writes anywhere in the pattern reaches z */
        if ((rc = hooks_call(m, hooks, nh, HOOK_ATTN_PATTERN, l, lb.pattern, B, T, 0, e)) < 0)
            return rc;
        attention_z_all(lb.z, lb.pattern, lb.qkv, B, T, NH, HS);
        if (y)
            y->pattern_all = 1;
    } else {
        attention_z(lb.z, lb.pattern, lb.qkv, B, T, NH, HS);
        if (y)
            y->pattern_all = 0;
    }
    if ((rc = hooks_call(m, hooks, nh, HOOK_ATTN_Z, l, lb.z, B, T, 0, e)) < 0)
        return rc;
    matmul_forward(fb->attn_out, lb.z, L->attn_w, L->attn_b, N, C, C);
    if ((rc = hooks_call(m, hooks, nh, HOOK_ATTN_OUT, l, fb->attn_out, B, T, 0, e)) < 0)
        return rc;
    /* MLP: on the layer's input (parallel) or after the attention (sequential) */
    if (!c->parallel_residual) {
        add_inplace(x, fb->attn_out, NC);
        if ((rc = hooks_call(m, hooks, nh, HOOK_RESID_MID, l, x, B, T, 0, e)) < 0)
            return rc;
        if (y)
            memcpy(y->x_mid, x, NC * sizeof(float));
    }
    layernorm_forward_stats(lb.ln2, lb.mean2, lb.rstd2, x, L->ln2_w, L->ln2_b, N, C, eps);
    matmul_forward(lb.hpre, lb.ln2, L->fc_w, L->fc_b, N, C, F);
    if (lb.h != lb.hpre)
        memcpy(lb.h, lb.hpre, (size_t)N * F * sizeof(float));
    if (c->act == ACT_GELU)
        gelu_forward(lb.h, (size_t)N * F);
    else
        gelu_tanh_forward(lb.h, (size_t)N * F);
    if ((rc = hooks_call(m, hooks, nh, HOOK_MLP_POST, l, lb.h, B, T, 0, e)) < 0)
        return rc;
    matmul_forward(fb->mlp_out, lb.h, L->proj_w, L->proj_b, N, F, C);
    if ((rc = hooks_call(m, hooks, nh, HOOK_MLP_OUT, l, fb->mlp_out, B, T, 0, e)) < 0)
        return rc;
    if (c->parallel_residual)
        add_inplace(x, fb->attn_out, NC);
    add_inplace(x, fb->mlp_out, NC);
    return hooks_call(m, hooks, nh, HOOK_RESID_POST, l, x, B, T, 0, e);
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
    struct fwd_bufs fb;
    int rc;
    if (B <= 0 || T <= 0 || (size_t)B * T > (1u << 26))
        return err_set(e, ERR_INVALID, NULL, "batch %d x %d tokens is not a valid size", B, T);
    for (size_t i = 0; !resid && i < (size_t)B * T; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return err_set(e, ERR_INVALID, NULL, "token %d at position %zu is outside the vocabulary [0, %d)",
                           tokens[i], i, V);
    memset(&fb, 0, sizeof fb);
    if (tape) {
        tape->has_logits = 0;
        tape->forward_done = 0;
        if ((rc = tape_prepare(tape, c, B, T, e)) < 0)
            return rc;
        memcpy(tape->tokens, tokens, (size_t)B * T * sizeof *tokens);
        fb = (struct fwd_bufs){tape->x, tape->attn_out, tape->mlp_out, tape->cosv, tape->sinv,
                               tape->lnf, tape->meanf, tape->rstdf, tape->logits, NULL, tape};
    } else {
        struct gptneox_acts *a = m->acts;
        a->has_logits = 0;
        if ((rc = arena_prepare(m, B, T, full, e)) < 0)
            return rc;
        a->B = B;
        a->T = T;
        fb = (struct fwd_bufs){a->x, a->attn_out, a->mlp_out, a->cosv, a->sinv,
                               a->ln, NULL, NULL, full ? a->logits : NULL, a, NULL};
    }
    const int N = B * T;
    const float eps = (float)c->layer_norm_eps;

    if (resid) {
        memcpy(fb.x, resid, (size_t)N * C * sizeof(float));
    } else {
        for (int n = 0; n < N; n++)
            memcpy(fb.x + (size_t)n * C, m->embed + (size_t)tokens[n] * C,
                   (size_t)C * sizeof(float));
        if ((rc = hooks_call(m, hooks, nh, HOOK_EMBED, -1, fb.x, B, T, 0, e)) < 0)
            return rc;
    }

    int stop = last_layer < c->n_layers - 1 ? last_layer : c->n_layers - 1;
    const double unembed_flop = 2.0 * N * C * V;
    const double layer_flop = (gptneox_forward_flops(c, B, T) - unembed_flop) / c->n_layers;
    for (int l = first_layer; l <= stop; l++) {
        if ((rc = layer_forward(m, &fb, l, B, T, hooks, nh, e)) < 0)
            return rc;
        m->forward_flop += layer_flop;
    }
    if (!full)
        return 0;
    if (tape)
        memcpy(tape->x_fin, fb.x, (size_t)N * C * sizeof(float));
    layernorm_forward_stats(fb.lnf, fb.meanf, fb.rstdf, fb.x, m->lnf_w, m->lnf_b, N, C, eps);
    if ((rc = hooks_call(m, hooks, nh, HOOK_LN_FINAL, -1, fb.lnf, B, T, 0, e)) < 0)
        return rc;
    matmul_forward(fb.logits, fb.lnf, m->unembed, NULL, N, C, V);
    m->forward_flop += unembed_flop;
    if (tape)
        tape->has_logits = tape->forward_done = 1;
    else
        m->acts->has_logits = 1;
    return 0;
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
    double att = 0.0; /* causal blocks as kernels.c computes them */
    for (int r0 = 0; r0 < T; r0 += ATT_BLOCK) {
        int r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T;
        att += 2.0 * 2.0 * (r1 - r0) * r1 * c->d_head;
    }
    att *= (double)B * c->n_heads;
    return c->n_layers * (per_layer + att) + 2 * N * C * V;
}
