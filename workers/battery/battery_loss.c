/* loss v2: next-token loss on the eval token set, and the in-context
 * learning score.
 *
 * Definition: the standard autoregressive language-modelling loss, the
 * cross-entropy of the next token in nats, -log softmax(logits[t])[x[t+1]],
 * as HuggingFace's GPTNeoXForCausalLM computes it with shifted labels
 * (Radford et al. 2019, "Language Models are Unsupervised Multitask
 * Learners"; per-position loss as in Olsson et al. 2022, "In-context
 * Learning and Induction Heads").  gptneox_loss computes it per
 * token; this item averages:
 *   loss         = sum over b, t of loss[b][t] / (B (T-1))
 *   loss_by_pos t = sum over b of loss[b][t] / B,  t = 0 .. T-2
 * Sums are in double, in a fixed order (batches in order, then sequences,
 * then positions), so the same inputs give the same bits.  The losses
 * come from the eval set's shared forward (evalpass.h, EVALPASS_SEQS =
 * BATTERY_LOSS_BATCH sequences per forward), so memory is bounded by the
 * batch, not the set.
 *
 * In-context learning score (Olsson et al. 2022, section "Defining
 * in-context learning"): "the loss of the 500th token in the context minus
 * the average loss of the 50th token in the context, averaged over dataset
 * examples".  A token's loss is the loss of predicting it; token 0 has
 * none, so the k-th token that has a loss is token index k (0-based),
 * predicted from tokens 0..k-1, which is loss_by_pos idx k-1:
 *   icl_score = loss_by_pos[499] - loss_by_pos[49]      (needs T >= 501)
 * For shorter contexts the same comparison is scaled: the last token,
 * index hi = T-1, against index lo = floor(hi/10), keeping the paper's
 * 10:1 ratio of positions (one decade of position, the axis on which
 * per-token loss falls roughly linearly in their plots), over the widest
 * span the context allows:
 *   icl_score_scaled (idx hi) = loss_by_pos[hi-1] - loss_by_pos[lo-1]
 * written for every T >= 11 (lo >= 1), also when icl_score is.
 *
 * Version 2 adds icl_score and icl_score_scaled; loss and loss_by_pos are
 * the same numbers as in version 1. */
#include <stdlib.h>

#include "workers/battery/battery.h"
#include "workers/model/kernels.h"

static const struct metric_def loss_metrics[] = {
    {"loss", "nats",
     "mean next-token cross-entropy over every predicted token of the eval set", "", "", ""},
    {"loss_by_pos", "nats",
     "next-token cross-entropy at one position, averaged over the eval sequences", "", "",
     "position t of the last context token: the loss of predicting token t+1 from tokens "
     "0..t (0 .. T-2)"},
    {"icl_score", "nats",
     "in-context learning score (Olsson et al. 2022): loss of token index 500 minus loss of "
     "token index 50 (loss_by_pos 499 - loss_by_pos 49); only when T >= 501",
     "", "", ""},
    {"icl_score_scaled", "nats",
     "in-context learning score scaled to the context: loss of the last token (index "
     "hi = T-1) minus loss of token index floor(hi/10); only when T >= 11",
     "", "", "hi, the later token index; the earlier one is floor(hi/10)"},
};

/* What the eval pass leaves: per-position sums of the token losses. */
struct loss_state {
    int V;
    double *pos_sum; /* (T-1) */
};

static void loss_state_free(void *p)
{
    struct loss_state *s = p;
    if (s)
        free(s->pos_sum);
    free(s);
}

/* After each batch's forward: add its token losses per position. */
static int loss_batch(void *state, const struct evalpass_batch *b, struct err *e)
{
    (void)e;
    struct loss_state *s = state;
    const int T = b->T, V = s->V;
    for (int i = 0; i < b->nb; i++)
        for (int t = 0; t + 1 < T; t++) {
            const size_t row = (size_t)i * T + t;
            int target = b->tokens[row + 1];
            float tl;
            crossentropy_forward(&tl, b->logits + row * V, &target, 1, V);
            s->pos_sum[t] += tl;
        }
    return 0;
}

static int loss_attach(const struct battery_ctx *c, struct evalpass *p, struct err *e)
{
    int rc = battery_check_eval(c, e);
    if (rc < 0)
        return rc;
    struct loss_state *s = calloc(1, sizeof *s);
    if (!s || !(s->pos_sum = calloc((size_t)c->eval_T - 1, sizeof *s->pos_sum))) {
        loss_state_free(s);
        return err_set(e, ERR_NOMEM, c->eval_name, "out of memory");
    }
    s->V = c->model->cfg.vocab_size;
    struct evalpass_consumer k = {.name = "loss", .needs_logits = 1, .done = loss_batch,
                                  .state = s, .state_free = loss_state_free};
    return evalpass_add(p, &k, e);
}

static int loss_run(const struct battery_ctx *c, struct rows *out, struct err *e)
{
    const int B = c->eval_B, T = c->eval_T;
    const struct loss_state *s = evalpass_state(c->pass, "loss", e);
    if (!s)
        return e ? e->code : ERR_INVALID;
    const double *pos_sum = s->pos_sum;
    double total = 0.0;
    int rc;
    for (int t = 0; t + 1 < T; t++)
        total += pos_sum[t];
    if ((rc = rows_add(out, "loss", -1, -1, -1, total / ((double)B * (T - 1)), e)) < 0)
        return rc;
    for (int t = 0; t + 1 < T; t++)
        if ((rc = rows_add(out, "loss_by_pos", -1, -1, t, pos_sum[t] / B, e)) < 0)
            return rc;
    /* token index k's loss is pos_sum[k-1] / B */
    if (T >= LOSS_ICL_LATE + 1 &&
        (rc = rows_add(out, "icl_score", -1, -1, -1,
                       pos_sum[LOSS_ICL_LATE - 1] / B - pos_sum[LOSS_ICL_EARLY - 1] / B, e)) < 0)
        return rc;
    if (T >= 11) {
        int hi = T - 1, lo = hi / 10;
        if ((rc = rows_add(out, "icl_score_scaled", -1, -1, hi,
                           pos_sum[hi - 1] / B - pos_sum[lo - 1] / B, e)) < 0)
            return rc;
    }
    return 0;
}

const struct battery_item battery_item_loss = {
    .name = "loss",
    .version = 2,
    .needs = BATTERY_NEEDS(BATTERY_NEED_EVAL_TOKENS),
    .metrics = loss_metrics,
    .nmetrics = sizeof loss_metrics / sizeof *loss_metrics,
    .run = loss_run,
    .attach = loss_attach,
};
