/* probes v1: linear probes on the residual stream, layer by layer.
 *
 * Definitions.  A linear classifier (or regressor) probe fitted on one
 * layer's activations and scored on held-out data measures how linearly
 * readable a property is there (Alain & Bengio 2016, "Understanding
 * intermediate layers using linear classifier probes").  A probe's score is
 * read against baselines (Hewitt & Liang 2019, "Designing and Interpreting
 * Probes with Control Tasks"): the train split's majority class scored on
 * the held-out split, and the same probe fitted on the train labels
 * shuffled.  The fits are probe_fit.h's: features standardised with the
 * train split's statistics, L2 softmax regression (lambda 1e-3) by L-BFGS
 * for classes, ridge (lambda 1e-3) for numbers.
 *
 * Sites: hook_embed (layer -1) and blocks.L.hook_resid_post (layer L).
 * Split: sequence b is held out when b % 5 == 4 (20 % of the sequences), so
 * no held-out position shares its context with a train position.
 * Positions: t >= 1 of every sequence (built-in tasks; user sets: their
 * labelled positions); when a split has more than PROBES_MAX_TRAIN /
 * PROBES_MAX_HELDOUT, a sample of that many is drawn (partial Fisher-Yates
 * from splitmix64 seeded by PROBES_SAMPLE_SEED + the dataset's index, not
 * by --seed, so the sample follows the eval set and nothing else).  The
 * shuffled-label baseline uses PROBES_SHUFFLE_SEED + the task's index.
 *
 * Built-in tasks on the eval set:
 *   prev_token   class = the index of token t-1 among the PROBES_TOP_K most
 *                frequent ids of the train sequences (count, then lower
 *                id); positions whose previous token is not among them are
 *                dropped.
 *   seen_before  1 when token t also occurs at some position < t.
 *   position     t, by ridge; scored by held-out R^2.
 *
 * Cost: the activations of the sampled positions are harvested with
 * forward hooks, at most PROBES_HARVEST_BYTES at a time: the built-in
 * tasks' first group of sites from the eval set's shared forward
 * (evalpass.h); when all sites do not fit, and for user sets, a forward of
 * BATTERY_LOSS_BATCH sequences at a time, stopping after the last layer
 * needed, is run per group.
 * Each site then costs two softmax fits per classification task (L-BFGS, at
 * most PROBE_LBFGS_MAX_ITERS steps of two (n,C)x(C,K) sgemm) and two ridge
 * solves (a CxC Cholesky) per regression task. */
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "workers/battery/battery.h"
#include "workers/battery/probe_fit.h"
#include "common/rng.h"

#define PROBES_SAMPLE_SEED 0x70726f6265730000ull
#define PROBES_SHUFFLE_SEED 0x73687566666c6500ull

static const struct metric_def probes_metrics[] = {
    {"prev_token_acc", "fraction",
     "held-out accuracy of a linear probe for the previous token's identity (among the 16 most "
     "frequent train tokens)",
     "site: -1 hook_embed, L blocks.L.hook_resid_post", "", ""},
    {"prev_token_majority_acc", "fraction",
     "held-out accuracy of always answering the train split's most frequent previous token", "",
     "", ""},
    {"prev_token_shuffled_acc", "fraction",
     "held-out accuracy of the previous-token probe fitted on shuffled train labels",
     "site: -1 hook_embed, L blocks.L.hook_resid_post", "", ""},
    {"seen_before_acc", "fraction",
     "held-out accuracy of a linear probe for 'this token occurred earlier in the context'",
     "site: -1 hook_embed, L blocks.L.hook_resid_post", "", ""},
    {"seen_before_majority_acc", "fraction",
     "held-out accuracy of always answering the train split's majority seen-before class", "",
     "", ""},
    {"seen_before_shuffled_acc", "fraction",
     "held-out accuracy of the seen-before probe fitted on shuffled train labels",
     "site: -1 hook_embed, L blocks.L.hook_resid_post", "", ""},
    {"position_r2", "R^2", "held-out R^2 of a ridge probe for the token's position t",
     "site: -1 hook_embed, L blocks.L.hook_resid_post", "", ""},
    {"position_shuffled_r2", "R^2",
     "held-out R^2 of the position probe fitted on shuffled train positions",
     "site: -1 hook_embed, L blocks.L.hook_resid_post", "", ""},
    {"user_acc", "fraction", "held-out accuracy of the linear probe of a user classification set",
     "site: -1 hook_embed, L blocks.L.hook_resid_post", "",
     "the set's position in the --probe list (0-based)"},
    {"user_majority_acc", "fraction",
     "held-out accuracy of a user classification set's train majority class", "", "",
     "the set's position in the --probe list (0-based)"},
    {"user_shuffled_acc", "fraction",
     "held-out accuracy of a user set's probe fitted on shuffled train labels",
     "site: -1 hook_embed, L blocks.L.hook_resid_post", "",
     "the set's position in the --probe list (0-based)"},
    {"user_r2", "R^2", "held-out R^2 of the ridge probe of a user regression set",
     "site: -1 hook_embed, L blocks.L.hook_resid_post", "",
     "the set's position in the --probe list (0-based)"},
    {"user_shuffled_r2", "R^2",
     "held-out R^2 of a user regression set's probe fitted on shuffled train targets",
     "site: -1 hook_embed, L blocks.L.hook_resid_post", "",
     "the set's position in the --probe list (0-based)"},
};

/* ---- built-in labels ---- */

void probes_labels(const int *tok, int T, const int *top, int K, int *prev, int *seen)
{
    for (int t = 0; t < T; t++) {
        prev[t] = -1;
        for (int k = 0; t > 0 && k < K; k++)
            if (top[k] == tok[t - 1])
                prev[t] = k;
        seen[t] = 0;
        for (int u = 0; u < t && !seen[t]; u++)
            seen[t] = tok[u] == tok[t];
    }
}

int probes_top_tokens(const int *tok, size_t n, int V, int K, int *top)
{
    int *count = calloc((size_t)V, sizeof *count);
    if (!count)
        return err_set(NULL, ERR_NOMEM, NULL, "out of memory");
    for (size_t i = 0; i < n; i++)
        count[tok[i]]++;
    int found = 0;
    for (int k = 0; k < K; k++) {
        int best = -1;
        for (int v = 0; v < V; v++)
            if (count[v] > 0 && (best < 0 || count[v] > count[best]))
                best = v;
        if (best < 0)
            break;
        top[found++] = best;
        count[best] = 0;
    }
    free(count);
    return found;
}

/* ---- a dataset: sequences, sampled positions, harvested activations ---- */

struct dataset {
    int nseq;
    const int *tokens;
    const int *offsets; /* (nseq+1), or NULL: sequence i at tokens + i*T, length T */
    int T;
    /* sampled rows, sorted by (sequence, position) */
    int n;
    int *seq, *pos, *test;
    int *first; /* (nseq+1): rows of sequence s are first[s] .. first[s+1]-1 */
};

static int ds_len(const struct dataset *d, int s)
{
    return d->offsets ? d->offsets[s + 1] - d->offsets[s] : d->T;
}

static const int *ds_tok(const struct dataset *d, int s)
{
    return d->tokens + (d->offsets ? (size_t)d->offsets[s] : (size_t)s * d->T);
}

static int heldout_seq(int s)
{
    return s % PROBE_SET_HOLDOUT_EVERY == PROBE_SET_HOLDOUT_EVERY - 1;
}

/* Keep at most `cap` of the n indices idx[] (a seeded sample), in order. */
static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

static int sample_cap(int *idx, int n, int cap, uint64_t seed)
{
    if (n <= cap)
        return n;
    uint64_t s = seed;
    for (int i = 0; i < cap; i++) {
        int j = i + (int)rng_below(&s, (uint32_t)(n - i));
        int t = idx[i];
        idx[i] = idx[j];
        idx[j] = t;
    }
    qsort(idx, (size_t)cap, sizeof *idx, cmp_int);
    return cap;
}

/* Choose the rows of d from candidates (cseq, cpos) (nc, sorted): every
 * candidate, or a capped sample per split.  *kept (caller frees) gets the
 * candidate index of each row. */
static int ds_sample(struct dataset *d, const int *cseq, const int *cpos, int nc, uint64_t seed,
                     int **kept, struct err *e)
{
    int *tr = malloc(((size_t)nc + 1) * sizeof *tr), *te = malloc(((size_t)nc + 1) * sizeof *te);
    int ntr = 0, nte = 0, rc = 0;
    *kept = malloc(((size_t)nc + 1) * sizeof **kept);
    d->seq = malloc(((size_t)nc + 1) * sizeof *d->seq);
    d->pos = malloc(((size_t)nc + 1) * sizeof *d->pos);
    d->test = malloc(((size_t)nc + 1) * sizeof *d->test);
    d->first = calloc((size_t)d->nseq + 1, sizeof *d->first);
    if (!tr || !te || !*kept || !d->seq || !d->pos || !d->test || !d->first) {
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory for %d probe positions", nc);
        goto out;
    }
    for (int i = 0; i < nc; i++) {
        if (heldout_seq(cseq[i]))
            te[nte++] = i;
        else
            tr[ntr++] = i;
    }
    ntr = sample_cap(tr, ntr, PROBES_MAX_TRAIN, seed);
    nte = sample_cap(te, nte, PROBES_MAX_HELDOUT, seed ^ 1);
    /* merge the two sorted lists back into candidate order */
    int a = 0, b = 0;
    d->n = 0;
    while (a < ntr || b < nte) {
        int i = (b >= nte || (a < ntr && tr[a] < te[b])) ? tr[a++] : te[b++];
        (*kept)[d->n] = i;
        d->seq[d->n] = cseq[i];
        d->pos[d->n] = cpos[i];
        d->test[d->n] = heldout_seq(cseq[i]);
        d->n++;
    }
    for (int r = 0; r < d->n; r++)
        d->first[d->seq[r] + 1]++;
    for (int s = 0; s < d->nseq; s++)
        d->first[s + 1] += d->first[s];
out:
    free(tr);
    free(te);
    return rc;
}

static void ds_free(struct dataset *d)
{
    free(d->seq);
    free(d->pos);
    free(d->test);
    free(d->first);
}

/* Hook state: copy the sampled rows of the batch into the site matrices. */
struct harvest {
    const struct dataset *d;
    float **act;          /* (nslots): (d->n, C) or NULL when the site is not held */
    const int *batch_seq; /* sequence of each batch row */
    int nb;
};

static int harvest_hook(void *ctx, struct hook_act *act, struct err *e)
{
    (void)e;
    struct harvest *h = ctx;
    float *dst = h->act[act->layer + 1];
    if (!dst)
        return 0;
    const int T = act->shape[1], C = act->shape[2];
    for (int b = 0; b < h->nb; b++) {
        int s = h->batch_seq[b];
        for (int r = h->d->first[s]; r < h->d->first[s + 1]; r++)
            memcpy(dst + (size_t)r * C, act->data + ((size_t)b * T + h->d->pos[r]) * C,
                   (size_t)C * sizeof *dst);
    }
    return 0;
}

static int cmp_len_idx(const void *a, const void *b, void *arg)
{
    const struct dataset *d = arg;
    int x = *(const int *)a, y = *(const int *)b;
    int lx = ds_len(d, x), ly = ds_len(d, y);
    if (lx != ly)
        return (lx > ly) - (lx < ly);
    return (x > y) - (x < y);
}

/* Fill act[slot] (allocated, non-NULL entries) for every sampled row: one
 * forward per batch of up to BATTERY_LOSS_BATCH equal-length sequences,
 * stopping after the highest layer held. */
static int harvest(struct gptneox *m, const struct dataset *d, float **act, int nslots,
                   struct err *e)
{
    int top = -1;
    for (int sl = 0; sl < nslots; sl++)
        if (act[sl])
            top = sl;
    if (top < 0)
        return 0;
    int last_layer = top >= 1 ? top - 1 : 0;
    int *order = malloc((size_t)d->nseq * sizeof *order), nord = 0;
    int maxT = 0;
    for (int s = 0; s < d->nseq; s++)
        maxT = ds_len(d, s) > maxT ? ds_len(d, s) : maxT;
    int *buf = malloc((size_t)BATTERY_LOSS_BATCH * maxT * sizeof *buf);
    int rc = 0;
    if (!order || !buf) {
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory for probe batches");
        goto out;
    }
    for (int s = 0; s < d->nseq; s++)
        if (d->first[s + 1] > d->first[s])
            order[nord++] = s;
    qsort_r(order, (size_t)nord, sizeof *order, cmp_len_idx, (void *)d);
    int bseq[BATTERY_LOSS_BATCH];
    struct harvest h = {.d = d, .act = act, .batch_seq = bseq};
    struct gptneox_hook hooks[2] = {{HOOK_EMBED, -1, harvest_hook, &h},
                                    {HOOK_RESID_POST, -1, harvest_hook, &h}};
    for (int i = 0; i < nord;) {
        int T = ds_len(d, order[i]), nb = 0;
        while (i < nord && nb < BATTERY_LOSS_BATCH && ds_len(d, order[i]) == T) {
            bseq[nb] = order[i];
            memcpy(buf + (size_t)nb * T, ds_tok(d, order[i]), (size_t)T * sizeof *buf);
            nb++;
            i++;
        }
        h.nb = nb;
        if ((rc = gptneox_forward_until(m, buf, nb, T, hooks, 2, last_layer, e)) < 0)
            goto out;
    }
out:
    free(order);
    free(buf);
    return rc;
}

/* ---- tasks ---- */

/* One probe task over a dataset's rows: class labels (cls, -1 = not in the
 * task) or regression targets (val). */
struct task {
    const char *what;       /* for logs */
    const char *m_score, *m_majority, *m_shuffled;
    int idx;                /* row idx (-1 for built-ins) */
    int K;                  /* classes; 0 for regression */
    const int *cls;         /* (d->n) */
    const float *val;       /* (d->n) */
    uint64_t seed;
    int ntr, nte;           /* rows taking part */
};

static int task_member(const struct task *t, int r)
{
    return t->K ? t->cls[r] >= 0 : 1;
}

static void task_count(struct task *t, const struct dataset *d)
{
    t->ntr = t->nte = 0;
    for (int r = 0; r < d->n; r++)
        if (task_member(t, r)) {
            if (d->test[r])
                t->nte++;
            else
                t->ntr++;
        }
}

/* Fit and score the task on one site's activations X (d->n, C); add rows. */
static int task_fit(const struct task *t, const struct dataset *d, const float *X, int C,
                    int layer, struct rows *out, struct err *e)
{
    float *Xtr = malloc((size_t)t->ntr * C * sizeof *Xtr);
    float *Xte = malloc((size_t)t->nte * C * sizeof *Xte);
    int *ytr = malloc((size_t)t->ntr * sizeof *ytr), *yte = malloc((size_t)t->nte * sizeof *yte);
    float *vtr = malloc((size_t)t->ntr * sizeof *vtr), *vte = malloc((size_t)t->nte * sizeof *vte);
    int rc = 0;
    if (!Xtr || !Xte || !ytr || !yte || !vtr || !vte) {
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory for the %s probe", t->what);
        goto out;
    }
    int a = 0, b = 0;
    for (int r = 0; r < d->n; r++) {
        if (!task_member(t, r))
            continue;
        int k = d->test[r] ? b++ : a++;
        memcpy((d->test[r] ? Xte : Xtr) + (size_t)k * C, X + (size_t)r * C, (size_t)C * sizeof *X);
        if (t->K)
            (d->test[r] ? yte : ytr)[k] = t->cls[r];
        else
            (d->test[r] ? vte : vtr)[k] = t->val[r];
    }
    struct probe_result res;
    if (t->K)
        rc = probe_classify(Xtr, ytr, t->ntr, Xte, yte, t->nte, C, t->K, t->seed, &res, e);
    else
        rc = probe_regress(Xtr, vtr, t->ntr, Xte, vte, t->nte, C, t->seed, &res, e);
    if (rc < 0) {
        err_wrap(e, "%s probe, layer %d", t->what, layer);
        goto out;
    }
    log_debug("probe fitted", "task=%s layer=%d score=%.4f shuffled=%.4f steps=%d/%d", t->what,
              layer, res.score, res.shuffled, res.iters, res.shuffled_iters);
    if ((rc = rows_add(out, t->m_score, layer, -1, t->idx, res.score, e)) < 0 ||
        (rc = rows_add(out, t->m_shuffled, layer, -1, t->idx, res.shuffled, e)) < 0)
        goto out;
out:
    free(Xtr);
    free(Xte);
    free(ytr);
    free(yte);
    free(vtr);
    free(vte);
    return rc;
}

/* The majority baseline of a classification task (no activations). */
static int task_majority(const struct task *t, const struct dataset *d, struct rows *out,
                         struct err *e)
{
    int *ytr = malloc(((size_t)t->ntr + 1) * sizeof *ytr);
    if (!ytr)
        return err_set(e, ERR_NOMEM, NULL, "out of memory");
    int a = 0;
    for (int r = 0; r < d->n; r++)
        if (task_member(t, r) && !d->test[r])
            ytr[a++] = t->cls[r];
    int maj = probe_majority(ytr, a, t->K), hit = 0;
    for (int r = 0; r < d->n; r++)
        hit += task_member(t, r) && d->test[r] && t->cls[r] == maj;
    free(ytr);
    return rows_add(out, t->m_majority, -1, -1, t->idx, (double)hit / t->nte, e);
}

/* Sites per harvest group: as many as fit PROBES_HARVEST_BYTES. */
static int harvest_group(const struct dataset *d, int C, int nslots)
{
    size_t per_site = (size_t)d->n * C * sizeof(float);
    int group = per_site ? (int)(PROBES_HARVEST_BYTES / per_site) : nslots;
    return group < 1 ? 1 : group;
}

/* The end of the group of wanted sites starting at slot lo. */
static int group_end(const int *want, int nslots, int lo, int group)
{
    int held = 0, hi = lo;
    for (; hi < nslots && held < group; hi++)
        held += want[hi] != 0;
    return hi;
}

/* Harvest the sites in groups that fit PROBES_HARVEST_BYTES and fit every
 * task at every wanted site (want[slot], slot = layer + 1).  pre (nslots
 * entries, or NULL) holds the first group already harvested (slots before
 * pre_hi, those wanted), taken over and freed here. */
static int run_tasks(struct gptneox *m, const struct dataset *d, const struct task *tasks,
                     int ntasks, const int *want, float **pre, int pre_hi, struct rows *out,
                     struct err *e)
{
    const int C = m->cfg.d_model, nslots = m->cfg.n_layers + 1;
    int rc = 0;
    float **act = calloc((size_t)nslots, sizeof *act);
    if (!act)
        return err_set(e, ERR_NOMEM, NULL, "out of memory");
    size_t per_site = (size_t)d->n * C * sizeof(float);
    const int group = harvest_group(d, C, nslots);
    for (int sl = 0; pre && sl < pre_hi; sl++) {
        act[sl] = pre[sl];
        pre[sl] = NULL;
    }
    for (int lo = 0; lo < nslots;) {
        int hi = group_end(want, nslots, lo, group), held = 0;
        if (!(pre && lo == 0 && hi == pre_hi))
            for (int sl = lo; sl < hi; sl++)
                if (want[sl]) {
                    if (!(act[sl] = malloc(per_site + 1))) {
                        rc = err_set(e, ERR_NOMEM, NULL,
                                     "out of memory for the activations of %d positions", d->n);
                        goto out;
                    }
                    held++;
                }
        if (held && (rc = harvest(m, d, act, nslots, e)) < 0)
            goto out;
        for (int sl = lo; sl < hi; sl++) {
            if (!act[sl])
                continue;
            for (int k = 0; k < ntasks; k++)
                if ((rc = task_fit(&tasks[k], d, act[sl], C, sl - 1, out, e)) < 0)
                    goto out;
            free(act[sl]);
            act[sl] = NULL;
        }
        lo = hi;
    }
out:
    for (int sl = 0; sl < nslots; sl++)
        free(act[sl]);
    free(act);
    return rc;
}

/* ---- the built-in tasks on the eval set ---- */

static int builtin_viable(const struct task *t, const struct dataset *d)
{
    if (t->ntr < PROBES_MIN_TRAIN || t->nte < PROBES_MIN_HELDOUT)
        return 0;
    if (!t->K)
        return 1;
    int first = -1;
    for (int r = 0; r < d->n; r++)
        if (task_member(t, r) && !d->test[r]) {
            if (first < 0)
                first = t->cls[r];
            else if (t->cls[r] != first)
                return 1;
        }
    return 0;
}

/* The built-in tasks on the eval set, prepared before the eval pass: the
 * sampled positions, their labels, the viable tasks, and the first group
 * of sites, harvested by the pass. */
struct builtin {
    struct dataset d;
    int *kept, *cls_prev, *cls_seen;
    float *val_pos;
    int K, top[PROBES_TOP_K];
    struct task all[3];
    int ok[3];
    int *want;          /* (nslots) */
    int nslots, pre_hi; /* the pass harvests the wanted slots before pre_hi */
    float **act;        /* (nslots) */
    int bseq[EVALPASS_SEQS];
    struct harvest h;
};

static void builtin_free(void *p)
{
    struct builtin *s = p;
    if (!s)
        return;
    ds_free(&s->d);
    free(s->kept);
    free(s->cls_prev);
    free(s->cls_seen);
    free(s->val_pos);
    free(s->want);
    for (int sl = 0; s->act && sl < s->nslots; sl++)
        free(s->act[sl]);
    free(s->act);
    free(s);
}

/* Before each batch of the pass: its rows are sequences b0 .. b0+nb-1. */
static int builtin_start(void *state, const struct evalpass_batch *b, struct err *e)
{
    (void)e;
    struct builtin *s = state;
    for (int i = 0; i < b->nb; i++)
        s->bseq[i] = b->b0 + i;
    s->h.nb = b->nb;
    return 0;
}

static int probes_attach(const struct battery_ctx *c, struct evalpass *p, struct err *e)
{
    struct gptneox *m = c->model;
    const int B = c->eval_B, T = c->eval_T, V = m->cfg.vocab_size, C = m->cfg.d_model;
    const char *src = c->eval_name ? c->eval_name : "eval tokens";
    if (B < PROBE_SET_HOLDOUT_EVERY)
        return err_set(e, ERR_INVALID, src,
                       "%d sequence%s: probes need at least %d (every %dth is held out)", B,
                       B == 1 ? "" : "s", PROBE_SET_HOLDOUT_EVERY, PROBE_SET_HOLDOUT_EVERY);
    int rc = battery_check_eval(c, e);
    if (rc < 0)
        return rc;
    struct builtin *s = calloc(1, sizeof *s);
    int *cseq = NULL, *cpos = NULL, *trtok = NULL, *prev = NULL, *seen = NULL;
    if (!s)
        return err_set(e, ERR_NOMEM, NULL, "out of memory");
    s->d = (struct dataset){.nseq = B, .tokens = c->eval_tokens, .T = T};
    s->nslots = m->cfg.n_layers + 1;
    size_t nc = (size_t)B * (T - 1);
    cseq = malloc(nc * sizeof *cseq);
    cpos = malloc(nc * sizeof *cpos);
    trtok = calloc((size_t)B * T, sizeof *trtok);
    prev = malloc((size_t)T * sizeof *prev);
    seen = malloc((size_t)T * sizeof *seen);
    s->want = calloc((size_t)s->nslots, sizeof *s->want);
    s->act = calloc((size_t)s->nslots, sizeof *s->act);
    if (!cseq || !cpos || !trtok || !prev || !seen || !s->want || !s->act) {
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory");
        goto out;
    }
    size_t ntt = 0;
    for (int b = 0; b < B; b++)
        if (!heldout_seq(b)) {
            memcpy(trtok + ntt, c->eval_tokens + (size_t)b * T, (size_t)T * sizeof *trtok);
            ntt += T;
        }
    s->K = probes_top_tokens(trtok, ntt, V, PROBES_TOP_K, s->top);
    if (s->K < 0) {
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory counting tokens");
        goto out;
    }
    size_t k = 0;
    for (int b = 0; b < B; b++)
        for (int t = 1; t < T; t++) {
            cseq[k] = b;
            cpos[k] = t;
            k++;
        }
    struct dataset *d = &s->d;
    if ((rc = ds_sample(d, cseq, cpos, (int)nc, PROBES_SAMPLE_SEED, &s->kept, e)) < 0)
        goto out;
    s->cls_prev = malloc(((size_t)d->n + 1) * sizeof *s->cls_prev);
    s->cls_seen = malloc(((size_t)d->n + 1) * sizeof *s->cls_seen);
    s->val_pos = malloc(((size_t)d->n + 1) * sizeof *s->val_pos);
    if (!s->cls_prev || !s->cls_seen || !s->val_pos) {
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory");
        goto out;
    }
    for (int q = 0; q < B; q++) {
        if (d->first[q + 1] == d->first[q])
            continue;
        probes_labels(c->eval_tokens + (size_t)q * T, T, s->top, s->K, prev, seen);
        for (int r = d->first[q]; r < d->first[q + 1]; r++) {
            s->cls_prev[r] = prev[d->pos[r]];
            s->cls_seen[r] = seen[d->pos[r]];
            s->val_pos[r] = (float)d->pos[r];
        }
    }
    struct task all[3] = {
        {"prev_token", "prev_token_acc", "prev_token_majority_acc", "prev_token_shuffled_acc", -1,
         s->K, s->cls_prev, NULL, PROBES_SHUFFLE_SEED + 0, 0, 0},
        {"seen_before", "seen_before_acc", "seen_before_majority_acc",
         "seen_before_shuffled_acc", -1, 2, s->cls_seen, NULL, PROBES_SHUFFLE_SEED + 1, 0, 0},
        {"position", "position_r2", NULL, "position_shuffled_r2", -1, 0, NULL, s->val_pos,
         PROBES_SHUFFLE_SEED + 2, 0, 0},
    };
    int ntasks = 0;
    for (int i = 0; i < 3; i++) {
        s->all[i] = all[i];
        task_count(&s->all[i], d);
        s->ok[i] = (i != 0 || s->K >= 2) && builtin_viable(&s->all[i], d);
        ntasks += s->ok[i];
    }
    for (int sl = 0; sl < s->nslots; sl++)
        s->want[sl] = ntasks > 0;
    /* the first group of sites is harvested by the pass */
    s->pre_hi = group_end(s->want, s->nslots, 0, harvest_group(d, C, s->nslots));
    int top = -1;
    for (int sl = 0; sl < s->pre_hi; sl++)
        if (s->want[sl]) {
            if (!(s->act[sl] = malloc((size_t)d->n * C * sizeof(float) + 1))) {
                rc = err_set(e, ERR_NOMEM, NULL, "out of memory for the activations of %d "
                             "positions", d->n);
                goto out;
            }
            top = sl;
        }
    s->h = (struct harvest){.d = d, .act = s->act, .batch_seq = s->bseq};
    const struct gptneox_hook hooks[2] = {{HOOK_EMBED, -1, harvest_hook, &s->h},
                                          {HOOK_RESID_POST, -1, harvest_hook, &s->h}};
    struct evalpass_consumer kc = {.name = "probes", .hooks = hooks, .nhooks = top >= 0 ? 2 : 0,
                                   .last_layer = top >= 1 ? top - 1 : 0,
                                   .start = builtin_start, .state = s,
                                   .state_free = builtin_free};
    s = NULL; /* the pass's now */
    rc = evalpass_add(p, &kc, e);
out:
    builtin_free(s);
    free(cseq);
    free(cpos);
    free(trtok);
    free(prev);
    free(seen);
    return rc;
}

/* The built-in tasks: majority baselines, then every site's fits. */
static int run_builtin(const struct battery_ctx *c, struct builtin *s, struct rows *out,
                       struct err *e)
{
    struct task tasks[3];
    int ntasks = 0, rc;
    for (int i = 0; i < 3; i++) {
        const struct task *t = &s->all[i];
        log_info("probe task", "task=%s classes=%d train=%d heldout=%d%s", t->what, t->K, t->ntr,
                 t->nte, s->ok[i] ? "" : " skipped=\"too few examples or one class\"");
        if (!s->ok[i])
            continue;
        tasks[ntasks++] = *t;
        if (t->K && (rc = task_majority(t, &s->d, out, e)) < 0)
            return rc;
    }
    return run_tasks(c->model, &s->d, tasks, ntasks, s->want, s->act, s->pre_hi, out, e);
}

/* ---- user probe sets ---- */

static int run_user(const struct battery_ctx *c, int idx, struct rows *out, struct err *e)
{
    const struct probe_set *ps = c->probe_sets[idx];
    struct gptneox *m = c->model;
    int rc = probe_set_check(ps, &m->cfg, e);
    if (rc < 0)
        return rc;
    struct dataset d = {.nseq = ps->nseq, .tokens = ps->tokens, .offsets = ps->offsets};
    int *kept = NULL, *cls = NULL, *want = NULL;
    float *val = NULL;
    if ((rc = ds_sample(&d, ps->lab_seq, ps->lab_pos, ps->nlab,
                        PROBES_SAMPLE_SEED + 1 + (uint64_t)idx, &kept, e)) < 0)
        goto out;
    cls = malloc(((size_t)d.n + 1) * sizeof *cls);
    val = malloc(((size_t)d.n + 1) * sizeof *val);
    want = calloc((size_t)m->cfg.n_layers + 1, sizeof *want);
    if (!cls || !val || !want) {
        rc = err_set(e, ERR_NOMEM, ps->path, "out of memory");
        goto out;
    }
    const int classify = ps->kind == PROBE_KIND_CLASSIFICATION;
    for (int r = 0; r < d.n; r++) {
        if (classify)
            cls[r] = ps->lab_class[kept[r]];
        else
            val[r] = ps->lab_value[kept[r]];
    }
    struct task t = {ps->name,
                     classify ? "user_acc" : "user_r2",
                     "user_majority_acc",
                     classify ? "user_shuffled_acc" : "user_shuffled_r2",
                     idx,
                     classify ? ps->nclasses : 0,
                     cls,
                     val,
                     PROBES_SHUFFLE_SEED + 3 + (uint64_t)idx,
                     0,
                     0};
    task_count(&t, &d);
    for (int sl = 0; sl <= m->cfg.n_layers; sl++)
        want[sl] = ps->nlayers == 0;
    for (int j = 0; j < ps->nlayers; j++)
        want[ps->layers[j] + 1] = 1;
    log_info("probe set", "idx=%d name=%s file=%s kind=%s classes=%d train=%d heldout=%d", idx,
             log_quote(ps->name), log_quote(ps->path), classify ? "classification" : "regression",
             ps->nclasses, t.ntr, t.nte);
    if (classify && (rc = task_majority(&t, &d, out, e)) < 0)
        goto out;
    rc = run_tasks(m, &d, &t, 1, want, NULL, 0, out, e);
out:
    if (rc < 0)
        err_wrap(e, "probe set %d (%s)", idx, ps->name);
    ds_free(&d);
    free(kept);
    free(cls);
    free(val);
    free(want);
    return rc;
}

static int probes_run(const struct battery_ctx *c, struct rows *out, struct err *e)
{
    struct builtin *s = evalpass_state(c->pass, "probes", e);
    if (!s)
        return e ? e->code : ERR_INVALID;
    int rc = run_builtin(c, s, out, e);
    for (int k = 0; rc == 0 && k < c->nprobe_sets; k++)
        rc = run_user(c, k, out, e);
    return rc;
}

const struct battery_item battery_item_probes = {
    .name = "probes",
    .version = 1,
    .needs = BATTERY_NEEDS(BATTERY_NEED_EVAL_TOKENS) | BATTERY_NEEDS(BATTERY_NEED_PROBE_SETS),
    .metrics = probes_metrics,
    .nmetrics = sizeof probes_metrics / sizeof *probes_metrics,
    .run = probes_run,
    .attach = probes_attach,
};
