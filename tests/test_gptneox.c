/*
 * test_gptneox - the forward pass against an independent PyTorch reference.
 *
 * Every directory under tests/golden/ holding golden.safetensors is a case:
 * the model is loaded from it, run on its tokens.json with every hook point
 * cached, and compared with the reference's logits, losses and hooks
 * (tests/reference/gptneox_ref.py made them; three fixtures hold
 * TransformerLens's whole set of hook points).  Tolerances:
 *   logits               max |diff| <= 1e-3
 *   attention patterns   max |diff| <= 1e-5
 *   attention scores     -inf exactly where the reference has -inf
 *   other hooks          max |diff| / max(1, |ref|) <= 2e-4
 *   per-sequence loss    max |diff| <= 1e-4
 * The maxdiffs are printed for every fixture, the largest per hook kind.
 * A second forward hooks hook_attn_in (one LayerNorm per head, as
 * TransformerLens's use_attn_in): the heads' copies and their ln1 hooks must
 * equal hook_resid_pre's and ln1's golden values, and the logits the first
 * forward's.
 *
 * Further tests use a random model built in memory: hooks that overwrite,
 * forward_until, batch independence, arena reuse, and load errors of
 * checkpoints written with a fault in them.
 */
#include <dirent.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "workers/model/blas.h"
#include "workers/model/gptneox.h"
#include "workers/model/pool.h"
#include "workers/model/safetensors.h"
#include "workers/model/tensor.h"
#include "workers/train/adamw.h"
#include "workers/text/tokens.h"

#define GOLDEN_DIR "tests/golden"

struct cache_entry {
    char name[64];
    float *data;
    size_t n;
};

struct cache {
    struct cache_entry e[256];
    int n;
};

static int cache_fn(void *ctx, struct hook_act *act, struct err *e)
{
    (void)e;
    struct cache *c = ctx;
    assert_true(c->n < 256);
    struct cache_entry *ce = &c->e[c->n++];
    snprintf(ce->name, sizeof ce->name, "%s", act->name);
    ce->n = act->n;
    ce->data = malloc(act->n * sizeof(float));
    assert_non_null(ce->data);
    memcpy(ce->data, act->data, act->n * sizeof(float));
    return 0;
}

static void cache_free(struct cache *c)
{
    for (int i = 0; i < c->n; i++)
        free(c->e[i].data);
    c->n = 0;
}

static const struct cache_entry *cache_find(const struct cache *c, const char *name)
{
    for (int i = 0; i < c->n; i++)
        if (strcmp(c->e[i].name, name) == 0)
            return &c->e[i];
    return NULL;
}

/* max |a-b| (rel=0) or max |a-b| / max(1,|b|) (rel=1) */
static double maxdiff(const float *a, const float *b, size_t n, int rel)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (rel)
            d /= fmax(1.0, fabs((double)b[i]));
        if (!(d <= m))
            m = isnan(d) ? INFINITY : d;
    }
    return m;
}

static int is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* hook_attn_in hooked: each head's copy of the residual, and its ln1
 * hooks (with a head axis), against resid_pre's and ln1's golden values;
 * the logits as without it. */
static void check_attn_in(struct gptneox *m, const struct st_file *g, const int *tok, int B,
                          int T, const float *logits1)
{
    struct err e;
    struct cache c = {.n = 0};
    struct gptneox_hook hk[3] = {{HOOK_ATTN_IN, -1, cache_fn, &c},
                                 {HOOK_LN1_SCALE, -1, cache_fn, &c},
                                 {HOOK_LN1_NORMALIZED, -1, cache_fn, &c}};
    assert_int_equal(gptneox_forward(m, tok, B, T, hk, 3, &e), 0);
    const int NH = m->cfg.n_heads, C = m->cfg.d_model, V = m->cfg.vocab_size;
    double worst = 0.0;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        static const char *const pair[3][2] = {{"hook_attn_in", "hook_resid_pre"},
                                               {"ln1.hook_scale", "ln1.hook_scale"},
                                               {"ln1.hook_normalized", "ln1.hook_normalized"}};
        for (int p = 0; p < 3; p++) {
            char mine[64], gold[64];
            snprintf(mine, sizeof mine, "blocks.%d.%s", l, pair[p][0]);
            snprintf(gold, sizeof gold, "blocks.%d.%s", l, pair[p][1]);
            const struct cache_entry *ce = cache_find(&c, mine);
            const struct st_tensor *t = st_find(g, gold);
            assert_non_null(ce);
            assert_non_null(t);
            const size_t w = p == 1 ? 1 : (size_t)C; /* per position, per head */
            assert_int_equal(ce->n, t->nelem * NH);
            float *r = malloc(t->nbytes);
            assert_int_equal(tensor_to_f32(r, t->data, t->dtype, t->nelem), 0);
            for (size_t n = 0; n < (size_t)B * T; n++)
                for (int h = 0; h < NH; h++)
                    worst = fmax(worst, maxdiff(ce->data + (n * NH + h) * w, r + n * w, w, 1));
            free(r);
        }
    }
    double dl = maxdiff(gptneox_logits(m), logits1, (size_t)B * T * V, 1);
    printf("[ gptneox ]   hook_attn_in: per-head copies and ln1 hooks %.2e, logits %.2e\n", worst, dl);
    assert_true(worst <= 1e-3);
    assert_true(dl <= 1e-5);
    cache_free(&c);
}

static void check_fixture(const char *name, int *nchecked)
{
    char dir[1024], path[1200];
    snprintf(dir, sizeof dir, GOLDEN_DIR "/%.255s", name);
    snprintf(path, sizeof path, "%s/golden.safetensors", dir);
    if (access(path, R_OK) != 0)
        return;
    struct err e;
    struct gptneox *m = NULL;
    struct st_file *g = NULL;
    int *tok = NULL, B, T;
    if (gptneox_load(&m, dir, 0, &e) < 0)
        fail_msg("%s: load: %s", name, err_str(&e));
    assert_int_equal(st_open(&g, path, &e), 0);
    snprintf(path, sizeof path, "%s/tokens.json", dir);
    assert_int_equal(tokens_read_json(path, &tok, &B, &T, &e), 0);

    struct cache c = {.n = 0};
    struct gptneox_hook hooks[HOOK_KIND_COUNT];
    size_t nh = 0;
    for (int k = 0; k < HOOK_KIND_COUNT; k++)
        if (k != HOOK_ATTN_IN)
            hooks[nh++] = (struct gptneox_hook){(enum hook_kind)k, -1, cache_fn, &c};
    if (gptneox_forward(m, tok, B, T, hooks, nh, &e) < 0)
        fail_msg("%s: forward: %s", name, err_str(&e));

    const struct st_tensor *gl = st_find(g, "logits");
    assert_non_null(gl);
    assert_int_equal(gl->nelem, (size_t)B * T * m->cfg.vocab_size);
    float *ref = malloc(gl->nbytes > 0 ? gl->nbytes : 4);
    assert_int_equal(tensor_to_f32(ref, gl->data, gl->dtype, gl->nelem), 0);
    double dl = maxdiff(gptneox_logits(m), ref, gl->nelem, 0);
    float *logits1 = malloc(gl->nelem * sizeof(float));
    memcpy(logits1, gptneox_logits(m), gl->nelem * sizeof(float));
    free(ref);

    const struct st_tensor *gloss = st_find(g, "loss");
    assert_non_null(gloss);
    float per_seq[64], lref[64];
    assert_true(B <= 64);
    gptneox_loss(m, tok, B, T, NULL, per_seq);
    assert_int_equal(tensor_to_f32(lref, gloss->data, gloss->dtype, gloss->nelem), 0);
    double dloss = maxdiff(per_seq, lref, (size_t)B, 0);

    double dpat = 0.0, dother = 0.0, dkind[HOOK_KIND_COUNT] = {0};
    int nhooks = 0, tl = 0;
    for (size_t i = 0; i < st_count(g); i++) {
        const struct st_tensor *t = st_get(g, i);
        if (strcmp(t->name, "logits") == 0 || strcmp(t->name, "loss") == 0)
            continue;
        const struct cache_entry *ce = cache_find(&c, t->name);
        if (!ce)
            fail_msg("%s: hook %s in the golden file was not produced", name, t->name);
        assert_int_equal(ce->n, t->nelem);
        float *r = malloc(t->nbytes);
        assert_int_equal(tensor_to_f32(r, t->data, t->dtype, t->nelem), 0);
        enum hook_kind kind;
        int layer;
        assert_int_equal(hook_parse(t->name, &kind, &layer), 0);
        double d;
        if (kind == HOOK_ATTN_PATTERN) {
            d = maxdiff(ce->data, r, ce->n, 0);
            dpat = fmax(dpat, d);
        } else {
            if (kind == HOOK_ATTN_SCORES) /* the causal mask: -inf exactly there */
                for (size_t j = 0; j < ce->n; j++) {
                    assert_true(isinf(r[j]) == isinf(ce->data[j]));
                    if (isinf(r[j]))
                        ce->data[j] = r[j] = 0.0f;
                }
            d = maxdiff(ce->data, r, ce->n, 1);
            dother = fmax(dother, d);
        }
        dkind[kind] = fmax(dkind[kind], d);
        tl += kind >= HOOK_ATTN_Q;
        free(r);
        nhooks++;
    }
    printf("[ gptneox ] %-24s B=%d T=%-3d maxdiff logits %.2e  pattern %.2e  hooks(rel) %.2e  loss %.2e  (%d hooks)\n",
           name, B, T, dl, dpat, dother, dloss, nhooks);
    if (tl) {
        printf("[ gptneox ]   per kind:");
        for (int k = 0; k < HOOK_KIND_COUNT; k++)
            if (dkind[k] > 0)
                printf(" %s %.1e", hook_kind_suffix((enum hook_kind)k), dkind[k]);
        printf("\n");
        /* every kind but hook_attn_in (checked below) has golden values */
        for (int k = 0; k < HOOK_KIND_COUNT; k++)
            if (k != HOOK_ATTN_IN && !(k == HOOK_RESID_MID && m->cfg.parallel_residual)) {
                char hn[64];
                assert_int_equal(hook_name(hn, sizeof hn, (enum hook_kind)k,
                                           hook_kind_per_layer((enum hook_kind)k) ? 0 : -1), 0);
                if (!st_find(g, hn))
                    fail_msg("%s: no golden value for %s", name, hn);
            }
        check_attn_in(m, g, tok, B, T, logits1);
    }
    free(logits1);
    assert_true(nhooks >= 8);
    assert_true(dl <= 1e-3);
    assert_true(dpat <= 1e-5);
    assert_true(dother <= 2e-4);
    assert_true(dloss <= 1e-4);
    (*nchecked)++;
    cache_free(&c);
    free(tok);
    st_free(g);
    gptneox_free(m);
}

static void test_golden_fixtures(void **state)
{
    (void)state;
    DIR *d = opendir(GOLDEN_DIR);
    assert_non_null(d);
    char names[64][256];
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) && n < 64) {
        char p[512];
        snprintf(p, sizeof p, GOLDEN_DIR "/%s", de->d_name);
        if (de->d_name[0] != '.' && is_dir(p))
            snprintf(names[n++], sizeof names[0], "%s", de->d_name);
    }
    closedir(d);
    int checked = 0;
    for (int i = 0; i < n; i++)
        check_fixture(names[i], &checked);
    /* the committed set: rotary 0.25/1.0, parallel/sequential, F32/F16/BF16,
     * sharded, peaky, newer config spelling */
    assert_true(checked >= 7);
}

/* ---- a random model in memory ---- */

static struct gptneox *random_model(int parallel, int tied)
{
    struct gptneox_config cfg;
    gptneox_config_default(&cfg, 50, 32, 2, 4, 64);
    cfg.parallel_residual = parallel;
    cfg.tie_word_embeddings = tied;
    struct gptneox *m = NULL;
    struct err e;
    assert_int_equal(gptneox_create(&m, &cfg, &e), 0);
    gptneox_init_random(m, 42, 0.2f);
    return m;
}

static void fill_tokens(int *tok, size_t n, int V, unsigned seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        tok[i] = (int)((seed >> 16) % (unsigned)V);
    }
}

static int zero_fn(void *ctx, struct hook_act *act, struct err *e)
{
    (void)ctx;
    (void)e;
    memset(act->data, 0, act->n * sizeof(float));
    return 0;
}

static int copy_fn(void *ctx, struct hook_act *act, struct err *e)
{
    (void)e;
    memcpy(ctx, act->data, act->n * sizeof(float));
    return 0;
}

/* Zeroing the last resid_post leaves LayerNorm(0) = its bias, so every
 * logit row must equal unembed @ lnf_b; zeroing hook_z makes attn_out the
 * dense bias exactly. */
static void test_hooks_overwrite(void **state)
{
    (void)state;
    struct gptneox *m = random_model(1, 0);
    const int B = 2, T = 5, C = m->cfg.d_model, V = m->cfg.vocab_size;
    int tok[10];
    fill_tokens(tok, 10, V, 1);
    struct err e;
    struct gptneox_hook h[1] = {{HOOK_RESID_POST, 1, zero_fn, NULL}};
    assert_int_equal(gptneox_forward(m, tok, B, T, h, 1, &e), 0);
    const float *lg = gptneox_logits(m);
    for (int v = 0; v < V; v++) {
        double want = 0.0;
        for (int i = 0; i < C; i++)
            want += (double)m->unembed[(size_t)v * C + i] * m->lnf_b[i];
        for (int n = 0; n < B * T; n++)
            assert_float_equal(lg[(size_t)n * V + v], want, 1e-4);
    }
    float *attn_out = malloc((size_t)B * T * C * sizeof(float));
    struct gptneox_hook h2[2] = {{HOOK_ATTN_Z, 0, zero_fn, NULL},
                                 {HOOK_ATTN_OUT, 0, copy_fn, attn_out}};
    assert_int_equal(gptneox_forward(m, tok, B, T, h2, 2, &e), 0);
    for (int n = 0; n < B * T; n++)
        for (int i = 0; i < C; i++)
            assert_float_equal(attn_out[(size_t)n * C + i], m->layers[0].attn_b[i], 1e-6);
    /* a hook error aborts the forward and is reported */
    free(attn_out);
    gptneox_free(m);
}

static int failing_fn(void *ctx, struct hook_act *act, struct err *e)
{
    (void)ctx;
    return err_set(e, ERR_INVALID, act->name, "refused");
}

static void test_hook_error_stops_forward(void **state)
{
    (void)state;
    struct gptneox *m = random_model(1, 0);
    int tok[4] = {1, 2, 3, 4};
    struct err e;
    struct gptneox_hook h = {HOOK_MLP_POST, 1, failing_fn, NULL};
    assert_int_equal(gptneox_forward(m, tok, 1, 4, &h, 1, &e), ERR_INVALID);
    assert_string_equal(e.ctx, "blocks.1.mlp.hook_post");
    assert_null(gptneox_logits(m));
    gptneox_free(m);
}

static void test_bad_tokens(void **state)
{
    (void)state;
    struct gptneox *m = random_model(1, 0);
    int tok[3] = {1, 50, 2};
    struct err e;
    assert_int_equal(gptneox_forward(m, tok, 1, 3, NULL, 0, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "outside the vocabulary"));
    tok[1] = -1;
    assert_int_equal(gptneox_forward(m, tok, 1, 3, NULL, 0, &e), ERR_INVALID);
    assert_int_equal(gptneox_forward(m, tok, 0, 3, NULL, 0, &e), ERR_INVALID);
    gptneox_free(m);
}

/* Each sequence of a batch gives the same logits alone; a bigger forward
 * after a smaller one (arena reuse and growth) changes nothing. */
static void test_batch_and_arena(void **state)
{
    (void)state;
    for (int par = 0; par <= 1; par++) {
        struct gptneox *m = random_model(par, par);
        const int B = 3, T = 7, V = m->cfg.vocab_size;
        int tok[21];
        fill_tokens(tok, 21, V, 7);
        struct err e;
        assert_int_equal(gptneox_forward(m, tok, B, T, NULL, 0, &e), 0);
        size_t n = (size_t)B * T * V;
        float *all = malloc(n * sizeof(float));
        memcpy(all, gptneox_logits(m), n * sizeof(float));
        for (int b = 0; b < B; b++) {
            assert_int_equal(gptneox_forward(m, tok + b * T, 1, T, NULL, 0, &e), 0);
            double d = maxdiff(gptneox_logits(m), all + (size_t)b * T * V, (size_t)T * V, 1);
            if (d > 1e-5)
                fail_msg("sequence %d alone differs from the batch by %g", b, d);
        }
        assert_int_equal(gptneox_forward(m, tok, B, T, NULL, 0, &e), 0);
        assert_true(maxdiff(gptneox_logits(m), all, n, 0) == 0.0);
        free(all);
        gptneox_free(m);
    }
}

static void test_forward_until(void **state)
{
    (void)state;
    struct gptneox *m = random_model(0, 0);
    const int C = m->cfg.d_model;
    int tok[8];
    fill_tokens(tok, 8, m->cfg.vocab_size, 3);
    float *full = malloc(8 * (size_t)C * sizeof(float)), *part = malloc(8 * (size_t)C * sizeof(float));
    struct err e;
    struct gptneox_hook h = {HOOK_RESID_POST, 0, copy_fn, full};
    assert_int_equal(gptneox_forward(m, tok, 2, 4, &h, 1, &e), 0);
    h.ctx = part;
    assert_int_equal(gptneox_forward_until(m, tok, 2, 4, &h, 1, 0, &e), 0);
    assert_true(maxdiff(full, part, 8 * (size_t)C, 0) == 0.0);
    assert_null(gptneox_logits(m));
    assert_int_equal(gptneox_forward_until(m, tok, 2, 4, &h, 1, 5, &e), ERR_INVALID);
    free(full);
    free(part);
    gptneox_free(m);
}

/* A hook caching blocks.L.hook_resid_pre of every layer into ctx (L,N,C). */
static int cache_resid_fn(void *ctx, struct hook_act *act, struct err *e)
{
    (void)e;
    memcpy((float *)ctx + (size_t)act->layer * act->n, act->data, act->n * sizeof(float));
    return 0;
}

/* Resuming at every layer from the cached residual gives the full forward's
 * logits bit for bit at the same (B,T); with the batch stacked three times
 * (a bigger sgemm) each copy within 1e-5 relative, as batch independence
 * allows; the hooks after the resume point run. */
static void test_forward_from(void **state)
{
    (void)state;
    for (int par = 0; par <= 1; par++) {
        struct gptneox *m = random_model(par, 0);
        const int B = 2, T = 5, C = m->cfg.d_model, V = m->cfg.vocab_size, NL = m->cfg.n_layers;
        const size_t N = (size_t)B * T;
        int tok[10];
        fill_tokens(tok, N, V, 11);
        float *res = malloc((size_t)(NL + 1) * N * C * sizeof(float));
        float *want = malloc(N * V * sizeof(float)), *last = malloc(N * C * sizeof(float));
        float *stack = malloc(3 * N * C * sizeof(float));
        struct err e;
        struct gptneox_hook h[2] = {{HOOK_RESID_PRE, -1, cache_resid_fn, res},
                                    {HOOK_RESID_POST, NL - 1, copy_fn, last}};
        assert_int_equal(gptneox_forward(m, tok, B, T, h, 2, &e), 0);
        memcpy(res + (size_t)NL * N * C, last, N * C * sizeof(float));
        memcpy(want, gptneox_logits(m), N * V * sizeof(float));
        for (int l = 0; l <= NL; l++) {
            const float *r = res + (size_t)l * N * C;
            assert_int_equal(gptneox_forward_from(m, l, r, B, T, NULL, 0, 0, &e), 0);
            double d = maxdiff(gptneox_logits(m), want, N * V, 0);
            if (d != 0.0)
                fail_msg("resumed at layer %d: logits differ by %g", l, d);
            for (int k = 0; k < 3; k++)
                memcpy(stack + k * N * C, r, N * C * sizeof(float));
            assert_int_equal(gptneox_forward_from(m, l, stack, 3 * B, T, NULL, 0, 0, &e), 0);
            for (int k = 0; k < 3; k++) {
                d = maxdiff(gptneox_logits(m) + k * N * V, want, N * V, 1);
                if (d > 1e-5)
                    fail_msg("resumed at layer %d, copy %d of 3: logits differ by %g", l, k, d);
            }
        }
        /* hooks from the resume point on run: zeroing the last resid_post
         * leaves unembed @ lnf_b in every row */
        struct gptneox_hook z = {HOOK_RESID_POST, NL - 1, zero_fn, NULL};
        assert_int_equal(gptneox_forward_from(m, NL - 1, res + (size_t)(NL - 1) * N * C, B, T,
                                              &z, 1, 0, &e), 0);
        const float *lg = gptneox_logits(m);
        for (int v = 0; v < V; v++) {
            double dot = 0;
            for (int c = 0; c < C; c++)
                dot += (double)m->lnf_b[c] * m->unembed[(size_t)v * C + c];
            assert_true(fabs(lg[(size_t)(N - 1) * V + v] - dot) < 1e-5);
        }
        /* without logits: the last resid_post as the full forward had it */
        memset(stack, 0, N * C * sizeof(float));
        struct gptneox_hook c1 = {HOOK_RESID_POST, NL - 1, copy_fn, stack};
        assert_int_equal(gptneox_forward_from(m, 1, res + N * C, B, T, &c1, 1,
                                              GPTNEOX_FWD_NO_LOGITS, &e), 0);
        assert_null(gptneox_logits(m));
        assert_true(maxdiff(stack, last, N * C, 0) == 0.0);
        /* bad arguments */
        assert_int_equal(gptneox_forward_from(m, NL + 1, res, B, T, NULL, 0, 0, &e), ERR_INVALID);
        assert_non_null(strstr(e.msg, "resume layer"));
        assert_int_equal(gptneox_forward_from(m, -1, res, B, T, NULL, 0, 0, &e), ERR_INVALID);
        assert_int_equal(gptneox_forward_from(m, 0, NULL, B, T, NULL, 0, 0, &e), ERR_INVALID);
        assert_int_equal(gptneox_forward_from(m, NL, res, B, T, NULL, 0, GPTNEOX_FWD_NO_LOGITS, &e),
                         ERR_INVALID);
        assert_int_equal(gptneox_forward_from(m, 0, res, 0, T, NULL, 0, 0, &e), ERR_INVALID);
        free(stack);
        free(last);
        free(want);
        free(res);
        gptneox_free(m);
    }
}

static void test_hook_names(void **state)
{
    (void)state;
    char buf[64];
    enum hook_kind k;
    int l;
    for (int i = 0; i < HOOK_KIND_COUNT; i++) {
        int layer = hook_kind_per_layer((enum hook_kind)i) ? 11 : -1;
        assert_int_equal(hook_name(buf, sizeof buf, (enum hook_kind)i, layer), 0);
        assert_int_equal(hook_parse(buf, &k, &l), 0);
        assert_int_equal(k, i);
        assert_int_equal(l, layer);
    }
    assert_int_equal(hook_name(buf, sizeof buf, HOOK_ATTN_PATTERN, 3), 0);
    assert_string_equal(buf, "blocks.3.attn.hook_pattern");
    assert_int_equal(hook_parse("blocks.x.hook_resid_post", &k, &l), ERR_NOTFOUND);
    assert_int_equal(hook_parse("blocks.1.hook_nothing", &k, &l), ERR_NOTFOUND);
    assert_int_equal(hook_parse("hook_embedx", &k, &l), ERR_NOTFOUND);
}

/* ---- load errors from checkpoints written with a fault ---- */

struct ckpt_fault {
    const char *what;
    const char *drop;       /* tensor left out */
    const char *reshape;    /* tensor written with a wrong shape */
    const char *nan;        /* tensor with a NaN in it */
    const char *i64;        /* tensor written as I64 */
    const char *config_extra; /* replaces hidden_size in config.json */
    int code;
    const char *needle;
};

static void write_ckpt(const char *dir, struct gptneox *m, const struct ckpt_fault *f)
{
    const struct gptneox_config *c = &m->cfg;
    struct st_write_tensor w[64];
    size_t n = 0;
    float *nanbuf = NULL;
    int64_t *ibuf = NULL;
    struct entry {
        const char *name;
        const float *p;
        int ndim;
        int64_t d0, d1;
    } all[40];
    size_t na = 0;
    int64_t V = c->vocab_size, C = c->d_model, F = c->d_mlp;
#define T2(nm, ptr, a, b) all[na++] = (struct entry){nm, ptr, 2, a, b}
#define T1(nm, ptr, a) all[na++] = (struct entry){nm, ptr, 1, a, 0}
    static char names[40][96];
    int k = 0;
    T2("gpt_neox.embed_in.weight", m->embed, V, C);
    for (int l = 0; l < c->n_layers; l++) {
        const struct gptneox_layer *L = &m->layers[l];
#define LN(suffix) (snprintf(names[k], 96, "gpt_neox.layers.%d.%s", l, suffix), names[k++])
        T1(LN("input_layernorm.weight"), L->ln1_w, C);
        T1(LN("input_layernorm.bias"), L->ln1_b, C);
        T2(LN("attention.query_key_value.weight"), L->qkv_w, 3 * C, C);
        T1(LN("attention.query_key_value.bias"), L->qkv_b, 3 * C);
        T2(LN("attention.dense.weight"), L->attn_w, C, C);
        T1(LN("attention.dense.bias"), L->attn_b, C);
        T1(LN("post_attention_layernorm.weight"), L->ln2_w, C);
        T1(LN("post_attention_layernorm.bias"), L->ln2_b, C);
        T2(LN("mlp.dense_h_to_4h.weight"), L->fc_w, F, C);
        T1(LN("mlp.dense_h_to_4h.bias"), L->fc_b, F);
        T2(LN("mlp.dense_4h_to_h.weight"), L->proj_w, C, F);
        T1(LN("mlp.dense_4h_to_h.bias"), L->proj_b, C);
#undef LN
    }
    T1("gpt_neox.final_layer_norm.weight", m->lnf_w, C);
    T1("gpt_neox.final_layer_norm.bias", m->lnf_b, C);
    T2("embed_out.weight", m->unembed, V, C);
#undef T1
#undef T2
    for (size_t i = 0; i < na; i++) {
        if (f && f->drop && strcmp(all[i].name, f->drop) == 0)
            continue;
        struct st_write_tensor *t = &w[n++];
        memset(t, 0, sizeof *t);
        t->name = all[i].name;
        t->dtype = ST_F32;
        t->ndim = all[i].ndim;
        t->shape[0] = all[i].d0;
        t->shape[1] = all[i].d1;
        t->data = all[i].p;
        size_t ne = (size_t)all[i].d0 * (all[i].ndim == 2 ? (size_t)all[i].d1 : 1);
        if (f && f->reshape && strcmp(all[i].name, f->reshape) == 0) {
            t->shape[0] = all[i].d1 ? all[i].d1 : all[i].d0; /* transposed, or halved */
            t->shape[1] = all[i].d0;
            if (all[i].ndim == 1) {
                t->shape[0] = all[i].d0 / 2;
            }
        }
        if (f && f->nan && strcmp(all[i].name, f->nan) == 0) {
            nanbuf = malloc(ne * sizeof(float));
            memcpy(nanbuf, all[i].p, ne * sizeof(float));
            nanbuf[ne / 2] = NAN;
            t->data = nanbuf;
        }
        if (f && f->i64 && strcmp(all[i].name, f->i64) == 0) {
            ibuf = calloc(ne, sizeof(int64_t));
            t->dtype = ST_I64;
            t->data = ibuf;
        }
    }
    struct err e;
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    assert_int_equal(st_write(path, w, n, NULL, &e), 0);
    struct gptneox_config cfg = *c;
    if (f && f->config_extra)
        cfg.d_model = atoi(f->config_extra), cfg.n_heads = 2;
    snprintf(path, sizeof path, "%s/config.json", dir);
    assert_int_equal(gptneox_config_save(&cfg, path, &e), 0);
    free(nanbuf);
    free(ibuf);
}

static void test_load_faults(void **state)
{
    (void)state;
    static const struct ckpt_fault faults[] = {
        {"ok", NULL, NULL, NULL, NULL, NULL, 0, NULL},
        {"missing tensor", "gpt_neox.layers.1.mlp.dense_4h_to_h.bias", NULL, NULL, NULL, NULL,
         ERR_NOTFOUND, "missing tensor \"gpt_neox.layers.1.mlp.dense_4h_to_h.bias\""},
        {"wrong shape", NULL, "gpt_neox.layers.0.mlp.dense_h_to_4h.weight", NULL, NULL, NULL,
         ERR_MISMATCH, "config implies shape [64, 32], checkpoint has [32, 64]"},
        {"nan", NULL, NULL, "gpt_neox.layers.1.attention.dense.weight", NULL, NULL, ERR_NUMERIC,
         "gpt_neox.layers.1.attention.dense.weight\" holds a non-finite value"},
        {"int dtype", NULL, NULL, NULL, "embed_out.weight", NULL, ERR_UNSUPPORTED,
         "dtype I64"},
        {"config contradicts tensors", NULL, NULL, NULL, NULL, "48", ERR_MISMATCH,
         "gpt_neox.embed_in.weight\": config implies shape [50, 48], checkpoint has [50, 32]"},
    };
    struct gptneox *m = random_model(1, 0);
    for (size_t i = 0; i < sizeof faults / sizeof *faults; i++) {
        char dir[] = "/tmp/ckptd-test-XXXXXX";
        assert_non_null(mkdtemp(dir));
        write_ckpt(dir, m, &faults[i]);
        struct gptneox *m2 = NULL;
        struct err e;
        err_clear(&e);
        int rc = gptneox_load(&m2, dir, 0, &e);
        printf("[ load ] %-28s -> %s\n", faults[i].what, rc ? err_str(&e) : "ok");
        assert_int_equal(rc, faults[i].code);
        if (rc) {
            assert_null(m2);
            assert_non_null(strstr(e.msg, faults[i].needle));
        } else {
            /* loaded back, the same model computes the same logits */
            int tok[6] = {1, 2, 3, 4, 5, 6};
            assert_int_equal(gptneox_forward(m, tok, 1, 6, NULL, 0, &e), 0);
            float *a = malloc(6 * 50 * sizeof(float));
            memcpy(a, gptneox_logits(m), 6 * 50 * sizeof(float));
            assert_int_equal(gptneox_forward(m2, tok, 1, 6, NULL, 0, &e), 0);
            assert_true(maxdiff(a, gptneox_logits(m2), 300, 0) == 0.0);
            free(a);
            gptneox_free(m2);
        }
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
        assert_int_equal(system(cmd), 0);
    }
    gptneox_free(m);
}

/* Threads do not change a bit of the logits: every product is split into
 * single-threaded sgemm on blocks of rows or columns, every element-wise
 * loop into blocks of rows.  (OpenBLAS's own threaded sgemm rounds
 * differently for some kernel families; the model does not use it.) */
static void test_threads_bitwise(void **state)
{
    (void)state;
    struct gptneox_config cfg;
    gptneox_config_default(&cfg, 300, 64, 2, 4, 256);
    struct gptneox *m = NULL;
    struct err e;
    assert_int_equal(gptneox_create(&m, &cfg, &e), 0);
    gptneox_init_random(m, 9, 0.2f);
    const int B = 3, T = 300, V = cfg.vocab_size;
    const size_t n = (size_t)B * T * V;
    int *tok = malloc((size_t)B * T * sizeof(int));
    fill_tokens(tok, (size_t)B * T, V, 5);
    float *one = malloc(n * sizeof(float));
    int th = blas_threads();
    blas_set_threads(1);
    assert_int_equal(gptneox_forward(m, tok, B, T, NULL, 0, &e), 0);
    memcpy(one, gptneox_logits(m), n * sizeof(float));
    blas_set_threads(2);
    assert_int_equal(pool_threads(), 2);
    assert_int_equal(gptneox_forward(m, tok, B, T, NULL, 0, &e), 0);
    assert_memory_equal(one, gptneox_logits(m), n * sizeof(float));
    blas_set_threads(th);
    free(one);
    free(tok);
    gptneox_free(m);
}

/* A read-only load maps the checkpoint read-only: the functions that write
 * weights refuse it with a message instead of crashing in the mapping. */
static void test_readonly_refused(void **state)
{
    (void)state;
    char dir[] = "/tmp/ckptd-ro-XXXXXX";
    assert_non_null(mkdtemp(dir));
    struct gptneox *m = random_model(1, 0), *ro = NULL, *rw = NULL;
    struct err e;
    assert_int_equal(gptneox_save(m, dir, ST_F32, &e), 0);
    assert_int_equal(gptneox_load(&ro, dir, 0, &e), 0);
    assert_int_equal(ro->writable, 0);
    float before = ro->layers[0].qkv_w[3];
    assert_int_equal(gptneox_init_random(ro, 1, 0.1f), ERR_INVALID);
    assert_true(ro->layers[0].qkv_w[3] == before);
    assert_int_equal(gptneox_require_writable(ro, "train it", &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "read-only"));
    assert_non_null(strstr(e.msg, "train it"));
    assert_non_null(strstr(e.ctx, "model.safetensors"));
    struct adamw *opt = NULL;
    struct adamw_config ac = {.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8,
                              .weight_decay = 0.0};
    assert_int_equal(adamw_create(&opt, ro, &ac, &e), ERR_INVALID);
    assert_null(opt);
    assert_non_null(strstr(e.msg, "GPTNEOX_LOAD_WRITABLE"));
    /* the writable load and a created model may be written */
    assert_int_equal(gptneox_load(&rw, dir, GPTNEOX_LOAD_WRITABLE, &e), 0);
    assert_int_equal(gptneox_require_writable(rw, "train it", &e), 0);
    assert_int_equal(gptneox_init_random(rw, 1, 0.1f), 0);
    assert_int_equal(gptneox_init_random(m, 1, 0.1f), 0);
    assert_int_equal(adamw_create(&opt, rw, &ac, &e), 0);
    adamw_free(opt);
    char p[256];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/config.json", dir);
    unlink(p);
    rmdir(dir);
    gptneox_free(rw);
    gptneox_free(ro);
    gptneox_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_fixtures),
        cmocka_unit_test(test_hooks_overwrite),
        cmocka_unit_test(test_hook_error_stops_forward),
        cmocka_unit_test(test_bad_tokens),
        cmocka_unit_test(test_batch_and_arena),
        cmocka_unit_test(test_forward_until),
        cmocka_unit_test(test_forward_from),
        cmocka_unit_test(test_hook_names),
        cmocka_unit_test(test_load_faults),
        cmocka_unit_test(test_readonly_refused),
        cmocka_unit_test(test_threads_bitwise),
    };
    return cmocka_run_group_tests_name("gptneox", tests, NULL, NULL);
}
