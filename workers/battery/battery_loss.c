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
 * then positions), so the same inputs give the same bits.  The eval set is
 * run BATTERY_LOSS_BATCH sequences per forward, so memory is bounded by the
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

static int loss_run(const struct battery_ctx *c, struct rows *out, struct err *e)
{
    struct gptneox *m = c->model;
    const int B = c->eval_B, T = c->eval_T;
    const char *src = c->eval_name ? c->eval_name : "eval tokens";
    int rc = battery_check_eval(c, e);
    if (rc < 0)
        return rc;
    double *pos_sum = calloc((size_t)T - 1, sizeof *pos_sum);
    float *tok_loss = malloc((size_t)BATTERY_LOSS_BATCH * (T - 1) * sizeof *tok_loss);
    if (!pos_sum || !tok_loss) {
        rc = err_set(e, ERR_NOMEM, src, "out of memory");
        goto out;
    }
    for (int b0 = 0; b0 < B; b0 += BATTERY_LOSS_BATCH) {
        int nb = B - b0 < BATTERY_LOSS_BATCH ? B - b0 : BATTERY_LOSS_BATCH;
        const int *tok = c->eval_tokens + (size_t)b0 * T;
        if ((rc = gptneox_forward(m, tok, nb, T, NULL, 0, e)) < 0)
            goto out;
        gptneox_loss(m, tok, nb, T, tok_loss, NULL);
        for (int b = 0; b < nb; b++)
            for (int t = 0; t + 1 < T; t++)
                pos_sum[t] += tok_loss[(size_t)b * (T - 1) + t];
    }
    double total = 0.0;
    for (int t = 0; t + 1 < T; t++)
        total += pos_sum[t];
    if ((rc = rows_add(out, "loss", -1, -1, -1, total / ((double)B * (T - 1)), e)) < 0)
        goto out;
    for (int t = 0; t + 1 < T; t++)
        if ((rc = rows_add(out, "loss_by_pos", -1, -1, t, pos_sum[t] / B, e)) < 0)
            goto out;
    /* token index k's loss is pos_sum[k-1] / B */
    if (T >= LOSS_ICL_LATE + 1 &&
        (rc = rows_add(out, "icl_score", -1, -1, -1,
                       pos_sum[LOSS_ICL_LATE - 1] / B - pos_sum[LOSS_ICL_EARLY - 1] / B, e)) < 0)
        goto out;
    if (T >= 11) {
        int hi = T - 1, lo = hi / 10;
        if ((rc = rows_add(out, "icl_score_scaled", -1, -1, hi,
                           pos_sum[hi - 1] / B - pos_sum[lo - 1] / B, e)) < 0)
            goto out;
    }
out:
    free(tok_loss);
    free(pos_sum);
    return rc;
}

const struct battery_item battery_item_loss = {
    .name = "loss",
    .version = 2,
    .needs = BATTERY_NEEDS(BATTERY_NEED_EVAL_TOKENS),
    .metrics = loss_metrics,
    .nmetrics = sizeof loss_metrics / sizeof *loss_metrics,
    .run = loss_run,
};
