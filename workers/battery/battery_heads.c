/* heads v2: what each attention head attends to, on random repeated
 * sequences and on the eval set, and how much the model gains from the
 * repetition.
 *
 * Definitions.  The scores are those of Olsson et al. 2022 ("In-context
 * Learning and Induction Heads", Anthropic), as TransformerLens's head
 * detectors (`transformer_lens.head_detector`: induction, previous-token,
 * duplicate-token) and its induction-score tutorial compute them from
 * attn.hook_pattern.  On the BATTERY_REP_SEQS sequences [BOS, R, R] of
 * battery_repeated_tokens (T = 2L+1; R[j] at position 1+j and 1+L+j), with
 * P = blocks.l.attn.hook_pattern of head h:
 *   induction_score       = mean over b and i = L+1 .. 2L of P[b,h,i,i-L+1]
 *                           (query: the second copy; key: the token after
 *                           the query token's first occurrence)
 *   duplicate_token_score = mean over b and i = L+1 .. 2L of P[b,h,i,i-L]
 *                           (key: the first occurrence of the query token)
 *   prev_token_score      = mean over b and i = 1 .. 2L   of P[b,h,i,i-1]
 *                           (every query that has a previous token)
 * attention_entropy (nats) = mean over the eval sequences and queries
 * t = 1 .. T-1 of -sum_{s<=t} P[t,s] log P[t,s] (0 log 0 = 0; query 0 sees
 * one key, its entropy is always 0 and is left out).  Version 2 (from v1):
 * over the lens's sequences only (lens_seqs, battery.h: the first whole
 * sequences holding 2048 tokens, the whole set when it is smaller, as the
 * default 16 x 128 set), so the eval set's forward of this item costs
 * 2048 tokens, not 8192 for 16 x 512; the other rows are v1's.  The rows
 * equal v1's on an eval set of only those sequences (tests/test_heads.c).
 * Losses (nats, next-token cross-entropy on the repeated sequences):
 *   induction_loss      mean over b and j = 1 .. L-1 of -log p(R[j] at 1+L+j)
 *   first_copy_loss     mean over b and j = 1 .. L-1 of -log p(R[j] at 1+j)
 *   induction_loss_drop first_copy_loss - induction_loss
 * R[0] is left out of both: nothing before it predicts it in either copy,
 * so the two losses differ only by what the first copy teaches.
 *
 * Cost: one full forward of the repeated sequences and one forward of the
 * eval set without the unembedding (HEADS_BATCH sequences at a time).  The
 * scores are accumulated inside attn.hook_pattern hooks, reading only the
 * diagonals they need; nothing is copied.  Sums are in double in a fixed
 * order, so the same inputs give the same bits. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "workers/battery/battery.h"
#include "workers/model/kernels.h"

static const char head_layer[] = "layer of the head";
static const char head_head[] = "head index within the layer";

static const struct metric_def heads_metrics[] = {
    {"induction_score", "probability",
     "mean attention from a token of the second copy of a random repeated sequence to the "
     "token after its first occurrence (i -> i-L+1)",
     head_layer, head_head, ""},
    {"prev_token_score", "probability",
     "mean attention from each token of a random repeated sequence to the previous token "
     "(i -> i-1, i >= 1)",
     head_layer, head_head, ""},
    {"duplicate_token_score", "probability",
     "mean attention from a token of the second copy of a random repeated sequence to its "
     "first occurrence (i -> i-L)",
     head_layer, head_head, ""},
    {"attention_entropy", "nats",
     "mean entropy of the attention pattern rows on the eval set's first sequences holding "
     "2048 tokens (query positions t >= 1)",
     head_layer, head_head, ""},
    {"induction_loss", "nats",
     "next-token loss on the second copy of random repeated sequences (R[1..L-1])", "", "",
     ""},
    {"first_copy_loss", "nats",
     "next-token loss on the first copy of random repeated sequences (R[1..L-1])", "", "", ""},
    {"induction_loss_drop", "nats",
     "first_copy_loss - induction_loss: what repeating the sequence saves", "", "", ""},
};

/* Accumulators per (layer, head), in double. */
struct heads_acc {
    int NH, L;      /* heads; half-length L of the repeated sequences */
    double *ind, *prev, *dup, *ent; /* (n_layers, NH) each */
};

/* attn.hook_pattern on the repeated sequences: add the three diagonals. */
static int rep_hook(void *ctx, struct hook_act *act, struct err *e)
{
    (void)e;
    struct heads_acc *a = ctx;
    const int B = act->shape[0], NH = act->shape[1], T = act->shape[2], L = a->L;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const float *P = act->data + ((size_t)b * NH + h) * T * T;
            double ind = 0, dup = 0, prev = 0;
            for (int i = 1; i < T; i++)
                prev += P[(size_t)i * T + i - 1];
            for (int i = L + 1; i <= 2 * L; i++) {
                ind += P[(size_t)i * T + i - L + 1];
                dup += P[(size_t)i * T + i - L];
            }
            size_t k = (size_t)act->layer * NH + h;
            a->ind[k] += ind;
            a->dup[k] += dup;
            a->prev[k] += prev;
        }
    return 0;
}

/* attn.hook_pattern on the eval set: add the row entropies of queries >= 1. */
static int ent_hook(void *ctx, struct hook_act *act, struct err *e)
{
    (void)e;
    struct heads_acc *a = ctx;
    const int B = act->shape[0], NH = act->shape[1], T = act->shape[2];
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const float *P = act->data + ((size_t)b * NH + h) * T * T;
            double sum = 0;
            for (int t = 1; t < T; t++) {
                const float *row = P + (size_t)t * T;
                float s = 0.0f;
                for (int j = 0; j <= t; j++)
                    if (row[j] > 0.0f)
                        s -= row[j] * logf(row[j]);
                sum += s;
            }
            a->ent[(size_t)act->layer * NH + h] += sum;
        }
    return 0;
}

static int heads_run(const struct battery_ctx *c, struct rows *out, struct err *e)
{
    struct gptneox *m = c->model;
    const struct gptneox_config *cfg = &m->cfg;
    const int NL = cfg->n_layers, NH = cfg->n_heads, V = cfg->vocab_size;
    const int EB = lens_seqs(c->eval_B, c->eval_T), ET = c->eval_T;
    int *rep = NULL, RB = 0, RT = 0, L = 0, rc;
    if ((rc = battery_check_eval(c, e)) < 0)
        return rc;
    float *tok_loss = NULL;
    int *targets = NULL;
    struct heads_acc a = {.NH = NH};
    size_t nlh = (size_t)NL * NH;
    if ((rc = battery_repeated_tokens(&rep, &RB, &RT, &L, V, cfg->max_positions, c->seed, e)) < 0)
        return rc;
    a.L = L;
    a.ind = calloc(4 * nlh, sizeof(double));
    targets = malloc((size_t)RB * RT * sizeof *targets);
    tok_loss = malloc((size_t)RB * RT * sizeof *tok_loss);
    if (!a.ind || !targets || !tok_loss) {
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory");
        goto out;
    }
    a.prev = a.ind + nlh;
    a.dup = a.prev + nlh;
    a.ent = a.dup + nlh;

    /* the repeated sequences: scores and losses */
    struct gptneox_hook hr = {HOOK_ATTN_PATTERN, -1, rep_hook, &a};
    if ((rc = gptneox_forward(m, rep, RB, RT, &hr, 1, e)) < 0)
        goto out;
    /* row b*T + t predicts position t+1: R[j] of the first copy (position
     * 1+j) from row j, of the second copy (1+L+j) from row L+j */
    for (int b = 0; b < RB; b++)
        for (int t = 0; t < RT; t++) {
            int p = t + 1, j1 = p - 1, j2 = p - 1 - L;
            int scored = (j1 >= 1 && j1 <= L - 1) || (j2 >= 1 && j2 <= L - 1);
            targets[(size_t)b * RT + t] = scored ? rep[(size_t)b * RT + p] : -1;
        }
    crossentropy_forward(tok_loss, gptneox_logits(m), targets, RB * RT, V);
    double first = 0, second = 0;
    for (int b = 0; b < RB; b++)
        for (int j = 1; j <= L - 1; j++) {
            first += tok_loss[(size_t)b * RT + j];
            second += tok_loss[(size_t)b * RT + L + j];
        }
    first /= (double)RB * (L - 1);
    second /= (double)RB * (L - 1);

    /* the eval set: entropies */
    struct gptneox_hook he = {HOOK_ATTN_PATTERN, -1, ent_hook, &a};
    for (int b0 = 0; b0 < EB; b0 += HEADS_BATCH) {
        int nb = EB - b0 < HEADS_BATCH ? EB - b0 : HEADS_BATCH;
        if ((rc = gptneox_forward_until(m, c->eval_tokens + (size_t)b0 * ET, nb, ET, &he, 1,
                                        NL - 1, e)) < 0)
            goto out;
    }

    const double n_ind = (double)RB * L, n_prev = (double)RB * (RT - 1);
    const double n_ent = (double)EB * (ET - 1);
    for (int l = 0; l < NL; l++)
        for (int h = 0; h < NH; h++) {
            size_t k = (size_t)l * NH + h;
            if ((rc = rows_add(out, "induction_score", l, h, -1, a.ind[k] / n_ind, e)) < 0 ||
                (rc = rows_add(out, "prev_token_score", l, h, -1, a.prev[k] / n_prev, e)) < 0 ||
                (rc = rows_add(out, "duplicate_token_score", l, h, -1, a.dup[k] / n_ind, e)) < 0 ||
                (rc = rows_add(out, "attention_entropy", l, h, -1, a.ent[k] / n_ent, e)) < 0)
                goto out;
        }
    if ((rc = rows_add(out, "induction_loss", -1, -1, -1, second, e)) < 0 ||
        (rc = rows_add(out, "first_copy_loss", -1, -1, -1, first, e)) < 0 ||
        (rc = rows_add(out, "induction_loss_drop", -1, -1, -1, first - second, e)) < 0)
        goto out;
out:
    free(tok_loss);
    free(targets);
    free(a.ind);
    free(rep);
    return rc;
}

const struct battery_item battery_item_heads = {
    .name = "heads",
    .version = 2,
    .needs = BATTERY_NEEDS(BATTERY_NEED_EVAL_TOKENS),
    .metrics = heads_metrics,
    .nmetrics = sizeof heads_metrics / sizeof *heads_metrics,
    .run = heads_run,
};
