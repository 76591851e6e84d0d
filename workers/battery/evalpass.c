/* The shared eval-set forward: consumers, their hooks behind a trampoline
 * that keeps one consumer's failure its own, and the batched run. */
#include "workers/battery/evalpass.h"

#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"

/* A consumer's hook as the forward calls it: the trampoline skips a failed
 * consumer and turns its error into the consumer's, not the forward's. */
struct tramp {
    struct evalpass *p;
    int ci;                   /* consumer index */
    struct gptneox_hook hook; /* the consumer's own */
};

struct consumer {
    struct evalpass_consumer c;
    int failed;
    struct err err;
    double own_s, own_cpu;
};

struct evalpass {
    struct gptneox *m;
    const int *tokens;
    int B, T;
    struct consumer cons[EVALPASS_CONSUMERS];
    int ncons;
    struct tramp tramps[EVALPASS_CONSUMERS * EVALPASS_HOOKS];
    struct gptneox_hook hooks[EVALPASS_CONSUMERS * EVALPASS_HOOKS];
    int nhooks;
    int ran, rc;              /* evalpass_run's result, once ran */
    struct err err;           /* the forward's error */
    double forward_s, forward_cpu, forward_flop, hook_s, hook_cpu;
    int forwards;
};

int evalpass_create(struct evalpass **out, struct gptneox *m, const int *tokens, int B, int T,
                    struct err *e)
{
    *out = NULL;
    if (!m || !tokens || B <= 0 || T <= 0)
        return err_set(e, ERR_INVALID, "eval pass", "no model or an empty eval set (%d x %d)", B,
                       T);
    struct evalpass *p = calloc(1, sizeof *p);
    if (!p)
        return err_set(e, ERR_NOMEM, "eval pass", "out of memory");
    p->m = m;
    p->tokens = tokens;
    p->B = B;
    p->T = T;
    *out = p;
    return 0;
}

static int find(const struct evalpass *p, const char *name)
{
    for (int i = 0; p && i < p->ncons; i++)
        if (strcmp(p->cons[i].c.name, name) == 0)
            return i;
    return -1;
}

static void consumer_fail(struct consumer *c, const struct err *why)
{
    c->failed = 1;
    c->err = *why;
    log_debug("eval pass consumer failed", "item=%s error=%s", c->c.name, log_quote(err_str(why)));
}

static int tramp_fn(void *ctx, struct hook_act *act, struct err *e)
{
    (void)e;
    struct tramp *t = ctx;
    struct consumer *c = &t->p->cons[t->ci];
    if (c->failed)
        return 0;
    double t0 = mono_now(), c0 = cpu_now();
    struct err mine;
    err_clear(&mine);
    int rc = t->hook.fn(t->hook.ctx, act, &mine);
    double dt = mono_now() - t0, dc = cpu_now() - c0;
    c->own_s += dt;
    c->own_cpu += dc;
    t->p->hook_s += dt;
    t->p->hook_cpu += dc;
    if (rc < 0) {
        if (mine.code == ERR_OK)
            err_set(&mine, rc, act->name, "hook failed");
        consumer_fail(c, &mine);
    }
    return 0;
}

/* The residual stream and the branch outputs: hooks there leave the
 * forward's path as it is (a hook on the pattern, the scores, q/k/v or a
 * LayerNorm's steps moves the layer onto another path, and every reader of
 * the pass would see other rounding than its own forward gives). */
static int hook_on_path(enum hook_kind k)
{
    return k == HOOK_EMBED || k == HOOK_RESID_PRE || k == HOOK_ATTN_OUT || k == HOOK_RESID_MID ||
           k == HOOK_MLP_OUT || k == HOOK_RESID_POST;
}

int evalpass_add(struct evalpass *p, const struct evalpass_consumer *c, struct err *e)
{
    int rc = 0;
    if (p->ran)
        rc = err_set(e, ERR_INVALID, c->name, "the eval pass has already run");
    else if (find(p, c->name) >= 0)
        rc = err_set(e, ERR_INVALID, c->name, "a second consumer of the eval pass by this name");
    else if (p->ncons >= EVALPASS_CONSUMERS || c->nhooks > EVALPASS_HOOKS)
        rc = err_set(e, ERR_INVALID, c->name,
                     "too many eval pass consumers or hooks (at most %d and %d)",
                     EVALPASS_CONSUMERS, EVALPASS_HOOKS);
    else if (!c->needs_logits && (c->last_layer < 0 || c->last_layer >= p->m->cfg.n_layers))
        rc = err_set(e, ERR_INVALID, c->name, "layer %d is outside the model's %d layers",
                     c->last_layer, p->m->cfg.n_layers);
    for (size_t i = 0; rc == 0 && i < c->nhooks; i++)
        if (!hook_on_path(c->hooks[i].kind))
            rc = err_set(e, ERR_INVALID, c->name,
                         "a consumer of the eval pass reads the residual stream and branch "
                         "outputs only, not hook kind %d (it would change the forward's path "
                         "for every reader)",
                         (int)c->hooks[i].kind);
    if (rc < 0) {
        if (c->state_free)
            c->state_free(c->state);
        return rc;
    }
    int ci = p->ncons++;
    struct consumer *k = &p->cons[ci];
    memset(k, 0, sizeof *k);
    k->c = *c;
    k->c.hooks = NULL; /* copied below, behind trampolines */
    for (size_t i = 0; i < c->nhooks; i++) {
        struct tramp *t = &p->tramps[p->nhooks];
        t->p = p;
        t->ci = ci;
        t->hook = c->hooks[i];
        p->hooks[p->nhooks] = (struct gptneox_hook){c->hooks[i].kind, c->hooks[i].layer, tramp_fn, t};
        p->nhooks++;
    }
    return 0;
}

int evalpass_has(const struct evalpass *p, const char *name)
{
    return find(p, name) >= 0;
}

/* Call fn (start or done) of every live consumer. */
static void call_all(struct evalpass *p, int done, const struct evalpass_batch *b)
{
    for (int i = 0; i < p->ncons; i++) {
        struct consumer *c = &p->cons[i];
        int (*fn)(void *, const struct evalpass_batch *, struct err *) = done ? c->c.done : c->c.start;
        if (c->failed || !fn)
            continue;
        struct err mine;
        err_clear(&mine);
        double t0 = mono_now(), c0 = cpu_now();
        int rc = fn(c->c.state, b, &mine);
        c->own_s += mono_now() - t0;
        c->own_cpu += cpu_now() - c0;
        if (rc < 0) {
            if (mine.code == ERR_OK)
                err_set(&mine, rc, c->c.name, "failed on the eval pass");
            consumer_fail(c, &mine);
        }
    }
}

int evalpass_run(struct evalpass *p, struct err *e)
{
    if (p->ran) {
        if (p->rc < 0 && e)
            *e = p->err;
        return p->rc;
    }
    p->ran = 1;
    err_clear(&p->err);
    int logits = 0, last = -1, rc = 0;
    for (int i = 0; i < p->ncons; i++) {
        logits |= p->cons[i].c.needs_logits;
        last = p->cons[i].c.last_layer > last ? p->cons[i].c.last_layer : last;
    }
    if (p->ncons == 0)
        return p->rc = 0;
    const double flop0 = p->m->forward_flop;
    for (int b0 = 0; b0 < p->B; b0 += EVALPASS_SEQS) {
        int live = 0;
        for (int i = 0; i < p->ncons; i++)
            live += !p->cons[i].failed;
        if (!live)
            break;
        const int nb = p->B - b0 < EVALPASS_SEQS ? p->B - b0 : EVALPASS_SEQS;
        struct evalpass_batch b = {p->tokens + (size_t)b0 * p->T, b0, nb, p->T, NULL};
        call_all(p, 0, &b);
        const double t0 = mono_now(), h0 = p->hook_s, c0 = cpu_now(), hc0 = p->hook_cpu;
        rc = logits ? gptneox_forward(p->m, b.tokens, nb, p->T, p->hooks, (size_t)p->nhooks, &p->err)
                    : gptneox_forward_until(p->m, b.tokens, nb, p->T, p->hooks, (size_t)p->nhooks,
                                            last, &p->err);
        p->forward_s += mono_now() - t0 - (p->hook_s - h0);
        p->forward_cpu += cpu_now() - c0 - (p->hook_cpu - hc0);
        p->forwards++;
        if (rc < 0)
            break;
        b.logits = logits ? gptneox_logits(p->m) : NULL;
        call_all(p, 1, &b);
    }
    p->forward_flop = p->m->forward_flop - flop0;
    if (rc < 0) {
        err_wrap(&p->err, "eval pass, sequences from %d", p->forwards > 0 ? (p->forwards - 1) * EVALPASS_SEQS : 0);
        for (int i = 0; i < p->ncons; i++)
            if (!p->cons[i].failed)
                consumer_fail(&p->cons[i], &p->err);
        if (e)
            *e = p->err;
    }
    return p->rc = rc;
}

void *evalpass_state(const struct evalpass *p, const char *name, struct err *e)
{
    int i = find(p, name);
    if (i < 0 || !p->ran) {
        err_set(e, ERR_INVALID, name, "not a consumer of an eval pass that ran");
        return NULL;
    }
    const struct consumer *c = &p->cons[i];
    if (c->failed) {
        if (e)
            *e = c->err;
        return NULL;
    }
    return c->c.state;
}

double evalpass_own_seconds(const struct evalpass *p, const char *name, double *cpu)
{
    int i = p ? find(p, name) : -1;
    if (cpu)
        *cpu = i < 0 ? 0.0 : p->cons[i].own_cpu;
    return i < 0 ? 0.0 : p->cons[i].own_s;
}

void evalpass_totals(const struct evalpass *p, double *forward_s, double *forward_cpu,
                     double *forward_flop, int *consumers, int *forwards)
{
    *forward_s = p->forward_s;
    *forward_cpu = p->forward_cpu;
    *forward_flop = p->forward_flop;
    *consumers = p->ncons;
    *forwards = p->forwards;
}

void evalpass_free(struct evalpass *p)
{
    if (!p)
        return;
    for (int i = 0; i < p->ncons; i++)
        if (p->cons[i].c.state_free)
            p->cons[i].c.state_free(p->cons[i].c.state);
    free(p);
}
