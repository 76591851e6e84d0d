/*
 * evalpass.h - the eval set's forward, run once per checkpoint and shared by
 * every item that reads it.
 *
 * loss, lens, probes and the SAE harvest all need a forward of the same
 * eval set: its logits and its residual streams.  Run separately, that is
 * four passes over the eval set; shared, it is one.
 * An item that reads the pass registers a consumer before it runs: the
 * hooks it needs on the forward (read-only: a consumer never writes an
 * activation), whether it needs the logits, and a function called after
 * each batch's forward.  The pass then runs the eval set EVALPASS_SEQS
 * sequences per forward (memory is bounded by the batch, not the set),
 * with the union of the consumers' hooks, to the logits when a consumer
 * asks for them and otherwise only to the deepest layer asked for.
 *
 * Consumers read only the residual stream and the branch outputs
 * (hook_embed, hook_resid_pre/mid/post, hook_attn_out, hook_mlp_out):
 * hooks elsewhere (the pattern, the scores, q/k/v, a LayerNorm's steps)
 * switch a layer to another code path (the materialised attention instead
 * of the fused kernel), whose rounding every reader of the pass would then
 * see; `heads`, which reads patterns, runs a forward of its own.
 *
 * A consumer's failure (a hook or its batch function returning an error)
 * is its own: the consumer is dropped from the rest of the pass, its error
 * kept for its item, and the others go on.  A failure of the forward itself
 * is every consumer's.
 *
 * The numbers a consumer sees are those of a forward of that batch alone:
 * a row of a forward does not depend on the other rows of its batch (the
 * same sgemm kernels run on every row), so items that ran their own
 * forwards of 8 sequences get the same bits from the shared pass.
 *
 *     struct evalpass *p = NULL;
 *     if (evalpass_create(&p, m, tokens, B, T, &e) < 0) ...
 *     struct gptneox_hook h = {HOOK_RESID_POST, -1, my_hook, st};
 *     struct evalpass_consumer c = {.name = "lens", .hooks = &h, .nhooks = 1,
 *                                   .last_layer = m->cfg.n_layers - 1,
 *                                   .done = my_batch_fn, .state = st, .state_free = free};
 *     if (evalpass_add(p, &c, &e) < 0) ...          // st is the pass's now
 *     if (evalpass_run(p, &e) < 0) ...               // the forward itself failed
 *     st = evalpass_state(p, "lens", &e);           // NULL: not added, or it failed (e says why)
 *     evalpass_free(p);
 */
#ifndef CKPTD_EVALPASS_H
#define CKPTD_EVALPASS_H

#include <stddef.h>

#include "common/err.h"
#include "workers/model/gptneox.h"

#define EVALPASS_SEQS 8        /* eval sequences per forward (BATTERY_LOSS_BATCH) */
#define EVALPASS_CONSUMERS 16  /* consumers of one pass, at most */
#define EVALPASS_HOOKS 8       /* hooks of one consumer, at most */

/* One batch of the pass, as a consumer sees it. */
struct evalpass_batch {
    const int *tokens;    /* (nb, T): sequences b0 .. b0+nb-1 of the eval set */
    int b0, nb, T;
    const float *logits;  /* (nb, T, V) when a consumer asked for logits, else NULL */
};

struct evalpass_consumer {
    const char *name;     /* the item; at most one consumer per name */
    const struct gptneox_hook *hooks; /* (nhooks), copied; read-only hooks */
    size_t nhooks;
    int needs_logits;     /* 1: run the forward to the logits */
    int last_layer;       /* the deepest layer its hooks read (ignored with logits) */
    /* Before each batch's forward (may be NULL), and after it (may be NULL). */
    int (*start)(void *state, const struct evalpass_batch *b, struct err *e);
    int (*done)(void *state, const struct evalpass_batch *b, struct err *e);
    void *state;          /* owned by the pass from evalpass_add on */
    void (*state_free)(void *state); /* may be NULL */
};

struct evalpass;

/* A pass over tokens (B,T) with model m, both borrowed until
 * evalpass_free.  Errors: ERR_INVALID (sizes), ERR_NOMEM. */
int evalpass_create(struct evalpass **out, struct gptneox *m, const int *tokens, int B, int T,
                    struct err *e) CK_WUR;

/* Register a consumer (before evalpass_run).  The pass takes its state
 * whatever the outcome: on error it is freed with c->state_free.  Errors:
 * ERR_INVALID (a hook off the residual stream and branch outputs, a second
 * consumer of the name, too many consumers or hooks, the pass already
 * run). */
int evalpass_add(struct evalpass *p, const struct evalpass_consumer *c, struct err *e) CK_WUR;

/* Run the pass (once: later calls return the first call's result).
 * Returns 0 when the forwards ran, even if consumers failed (each keeps
 * its error); a negative code when a forward failed, which every consumer
 * then reports. */
int evalpass_run(struct evalpass *p, struct err *e) CK_WUR;

/* Has a consumer of this name been added? */
int evalpass_has(const struct evalpass *p, const char *name);

/* The state of the consumer called name after the pass ran, borrowed
 * until evalpass_free; NULL with e filled when it failed (or the pass
 * failed), was not added, or the pass has not run. */
void *evalpass_state(const struct evalpass *p, const char *name, struct err *e);

/* Seconds spent in the consumer's own functions and hooks (its share of
 * the pass beyond the forward), and the CPU seconds into *cpu (may be
 * NULL); 0 when it was not added (or p is NULL). */
double evalpass_own_seconds(const struct evalpass *p, const char *name, double *cpu);

/* The whole pass: the forward's seconds and CPU seconds (hooks excluded),
 * its FLOPs, the number of consumers and forwards. */
void evalpass_totals(const struct evalpass *p, double *forward_s, double *forward_cpu,
                     double *forward_flop, int *consumers, int *forwards);

void evalpass_free(struct evalpass *p);

#endif
