/* task v1: the metrics of a toy training run (workers/train/task.h),
 * recomputed from a checkpoint and the run's task.json, and the progress
 * measures of Nanda et al. 2023 ("Progress measures for grokking via
 * mechanistic interpretability") for modular addition.
 *
 * Task metrics: task_load_json rebuilds the task (the split, or the
 * held-out induction batch) and task_eval computes the four metrics
 * exactly as `ckpt-worker train` logged them in train_log.jsonl:
 * train_loss, train_acc, test_loss, test_acc (modular addition) or loss,
 * acc, icl_loss, icl_acc (induction).
 *
 * Modular addition, with p the modulus, x in [0, p) a number token and
 * w_k = 2 pi k / p:
 *
 *   Fourier spectrum of the embedding.  The orthonormal Fourier basis of
 *   functions of x: the constant 1/sqrt(p); for 1 <= k < p/2 the pair
 *   sqrt(2/p) cos(w_k x), sqrt(2/p) sin(w_k x); for even p, k = p/2 has
 *   only the cosine (-1)^x / sqrt(p).  embed_fourier_norm idx k is the
 *   Frobenius norm of the projection of W_E's rows 0..p-1 (the `=` row
 *   excluded) on frequency k's basis functions, so the squares over
 *   k = 0 .. floor(p/2) sum to ||W_E[0:p]||_F^2.
 *
 *   Key frequencies: the TASK_KEY_FREQS non-constant frequencies of
 *   largest embed_fourier_norm (ties: lower k); key_frequency idx k is
 *   written for each with the value norm_k^2 / sum_{j>=1} norm_j^2, and
 *   fourier_key_fraction is their sum: the fraction of the embedding's
 *   non-constant squared norm in the key frequencies (1 for an embedding
 *   that uses only them, about TASK_KEY_FREQS / floor(p/2) for a random
 *   one).
 *
 *   Restricted and excluded loss (the paper's section 5.1, taken on the
 *   logits, which here pass a final LayerNorm and so are not linear in the
 *   neurons).  Let L(a,b,c), c in [0, p), be the answer logits at the `=`
 *   position over the full p^2 grid of inputs.  For each output c, the
 *   vector L(., ., c) in R^{p^2} is split by the orthogonal projection P
 *   onto S = span{cos(w_k (a+b)), sin(w_k (a+b)) : k key} and the
 *   projection P0 onto the constant:
 *     restricted logits  P0 L + P L     (only the key frequencies of a+b)
 *     excluded logits    L - P L        (the key frequencies removed)
 *   restricted_loss and excluded_loss are the mean cross-entropy of these
 *   logits over the training pairs, with the softmax over the p answer
 *   tokens; answer_loss is the same for L itself (train_loss but without
 *   the `=` token's logit), the reference both are read against.  A model
 *   that computes with the key frequencies has restricted_loss close to
 *   answer_loss and excluded_loss far above it; one that memorises has the
 *   reverse.  The grid is run twice (sums per residue of a+b, then the
 *   training pairs), so memory is O(p^2), not O(p^3).
 *
 *   weight_norm: sqrt of the sum of squares of every parameter (the
 *   weights item's total_norm; with weight decay it falls as the model
 *   moves from memorising to the Fourier algorithm).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "workers/battery/battery.h"
#include "workers/model/backward.h"
#include "workers/model/kernels.h"
#include "workers/train/task.h"

#define GRID_CHUNK 2048 /* sequences per forward over the p^2 grid */

static const struct metric_def task_metrics[] = {
    {"train_loss", "nats", "modular addition: mean cross-entropy at `=` over the training "
     "pairs, as train_log.jsonl", "", "", ""},
    {"train_acc", "fraction", "modular addition: argmax accuracy over the training pairs",
     "", "", ""},
    {"test_loss", "nats", "modular addition: mean cross-entropy over the test pairs", "", "",
     ""},
    {"test_acc", "fraction", "modular addition: argmax accuracy over the test pairs", "", "",
     ""},
    {"loss", "nats", "induction: mean next-token cross-entropy over every position of the "
     "held-out sequences, as train_log.jsonl", "", "", ""},
    {"acc", "fraction", "induction: next-token argmax accuracy over every position", "", "",
     ""},
    {"icl_loss", "nats", "induction: cross-entropy on the repeated span's predictable "
     "positions", "", "", ""},
    {"icl_acc", "fraction", "induction: argmax accuracy on the repeated span's predictable "
     "positions", "", "", ""},
    {"embed_fourier_norm", "dimensionless", "modular addition: norm of the projection of the "
     "number tokens' embeddings on the Fourier basis functions of frequency k", "", "",
     "frequency k, 0 .. floor(p/2)"},
    {"key_frequency", "fraction", "modular addition: a key frequency (one of the "
     "TASK_KEY_FREQS largest embed_fourier_norm, k >= 1) and its share of the embedding's "
     "non-constant squared Fourier norm", "", "", "frequency k"},
    {"fourier_key_fraction", "fraction", "modular addition: share of the embedding's "
     "non-constant squared Fourier norm in the key frequencies (sparsity)", "", "", ""},
    {"answer_loss", "nats", "modular addition: train-set cross-entropy with the softmax over "
     "the p answer tokens only (the reference of restricted_loss and excluded_loss)", "", "",
     ""},
    {"restricted_loss", "nats", "modular addition: train-set loss of the logits projected on "
     "the constant and the key frequencies' cos/sin(w_k (a+b)) (Nanda et al. 2023)", "", "",
     ""},
    {"excluded_loss", "nats", "modular addition: train-set loss of the logits with the key "
     "frequencies' cos/sin(w_k (a+b)) components removed (Nanda et al. 2023)", "", "", ""},
    {"weight_norm", "dimensionless", "sqrt of the sum of squares of every parameter", "", "",
     ""},
};

/* ---- Fourier helpers (battery.h) ---- */

int modadd_nfreqs(int p) { return p / 2 + 1; }

int modadd_fourier_norms(const float *embed, int p, int C, double *norms, struct err *e)
{
    const int nf = modadd_nfreqs(p);
    double *pc = malloc(sizeof(double) * 2 * (size_t)C);
    if (!pc)
        return err_set(e, ERR_NOMEM, NULL, "out of memory for the embedding's spectrum");
    for (int k = 0; k < nf; k++) {
        int has_sin = k > 0 && 2 * k != p;
        double scale = has_sin ? sqrt(2.0 / p) : 1.0 / sqrt((double)p);
        double ss = 0.0;
        for (int part = 0; part < 1 + has_sin; part++) {
            double *acc = pc + (size_t)part * C;
            for (int c = 0; c < C; c++)
                acc[c] = 0.0;
            for (int x = 0; x < p; x++) {
                int r = (int)(((long)k * x) % p); /* exact angle w_k x mod 2 pi */
                double ang = 2.0 * M_PI * r / p;
                double b = scale * (part == 0 ? cos(ang) : sin(ang));
                const float *row = embed + (size_t)x * C;
                for (int c = 0; c < C; c++)
                    acc[c] += b * row[c];
            }
            for (int c = 0; c < C; c++)
                ss += acc[c] * acc[c];
        }
        norms[k] = sqrt(ss);
    }
    free(pc);
    return 0;
}

int modadd_key_freqs(const double *norms, int p, int K, int *keys)
{
    const int nf = modadd_nfreqs(p);
    int n = 0;
    for (int k = 1; k < nf; k++) {
        /* insertion into keys, kept sorted by norm desc then k asc */
        int pos = n;
        while (pos > 0 && norms[keys[pos - 1]] < norms[k])
            pos--;
        if (pos >= K)
            continue;
        int last = n < K ? n : K - 1;
        for (int i = last; i > pos; i--)
            keys[i] = keys[i - 1];
        keys[pos] = k;
        if (n < K)
            n++;
    }
    return n;
}

struct modadd_proj {
    int p, nkeys;
    int *keys;
    double *cosr, *sinr;   /* (nkeys, p): cos/sin(w_k r), r = (a+b) mod p */
    double *ncos, *nsin;   /* (nkeys): squared norms over the grid, 0: no direction */
    double *ysum;          /* (p, p): [r][c] sum of L(a,b,c) over a+b = r mod p */
    double *alpha, *beta;  /* (nkeys, p): coefficients per output c */
    double *mean;          /* (p): projection on the constant */
    long added;
};

void modadd_proj_free(struct modadd_proj *q)
{
    if (!q)
        return;
    free(q->keys);
    free(q->cosr);
    free(q->sinr);
    free(q->ncos);
    free(q->nsin);
    free(q->ysum);
    free(q->alpha);
    free(q->beta);
    free(q->mean);
    free(q);
}

int modadd_proj_create(struct modadd_proj **out, int p, const int *keys, int nkeys,
                       struct err *e)
{
    *out = NULL;
    if (p < 2 || nkeys < 0)
        return err_set(e, ERR_INVALID, NULL, "modulus %d / %d key frequencies", p, nkeys);
    struct modadd_proj *q = calloc(1, sizeof *q);
    size_t kp = (size_t)(nkeys ? nkeys : 1) * p;
    if (q) {
        q->p = p;
        q->nkeys = nkeys;
        q->keys = malloc(sizeof(int) * (nkeys ? nkeys : 1));
        q->cosr = malloc(sizeof(double) * kp);
        q->sinr = malloc(sizeof(double) * kp);
        q->ncos = calloc(nkeys ? nkeys : 1, sizeof(double));
        q->nsin = calloc(nkeys ? nkeys : 1, sizeof(double));
        q->ysum = calloc((size_t)p * p, sizeof(double));
        q->alpha = calloc(kp, sizeof(double));
        q->beta = calloc(kp, sizeof(double));
        q->mean = calloc((size_t)p, sizeof(double));
    }
    if (!q || !q->keys || !q->cosr || !q->sinr || !q->ncos || !q->nsin || !q->ysum ||
        !q->alpha || !q->beta || !q->mean) {
        modadd_proj_free(q);
        return err_set(e, ERR_NOMEM, NULL, "out of memory for the Fourier projection (p %d)", p);
    }
    for (int i = 0; i < nkeys; i++) {
        q->keys[i] = keys[i];
        for (int r = 0; r < p; r++) {
            double ang = 2.0 * M_PI * (double)(((long)keys[i] * r) % p) / p;
            double cv = cos(ang), sv = sin(ang);
            if (fabs(sv) < 1e-12)
                sv = 0.0;
            q->cosr[(size_t)i * p + r] = cv;
            q->sinr[(size_t)i * p + r] = sv;
            /* each residue r occurs for p pairs (a, b) */
            q->ncos[i] += p * cv * cv;
            q->nsin[i] += p * sv * sv;
        }
        if (q->nsin[i] < 1e-9) /* k = p/2 or a multiple of p: no sine direction */
            q->nsin[i] = 0.0;
        if (q->ncos[i] < 1e-9)
            q->ncos[i] = 0.0;
    }
    *out = q;
    return 0;
}

void modadd_proj_add(struct modadd_proj *q, int a, int b, const float *logits)
{
    const int p = q->p;
    double *row = q->ysum + (size_t)((a + b) % p) * p;
    for (int c = 0; c < p; c++)
        row[c] += logits[c];
    q->added++;
}

void modadd_proj_finish(struct modadd_proj *q)
{
    const int p = q->p;
    for (int c = 0; c < p; c++) {
        double tot = 0.0;
        for (int r = 0; r < p; r++)
            tot += q->ysum[(size_t)r * p + c];
        q->mean[c] = tot / ((double)p * p);
        for (int i = 0; i < q->nkeys; i++) {
            double sc = 0.0, ssn = 0.0;
            for (int r = 0; r < p; r++) {
                sc += q->cosr[(size_t)i * p + r] * q->ysum[(size_t)r * p + c];
                ssn += q->sinr[(size_t)i * p + r] * q->ysum[(size_t)r * p + c];
            }
            q->alpha[(size_t)i * p + c] = q->ncos[i] > 0 ? sc / q->ncos[i] : 0.0;
            q->beta[(size_t)i * p + c] = q->nsin[i] > 0 ? ssn / q->nsin[i] : 0.0;
        }
    }
}

/* cross-entropy of logits z (p) at target t, in double */
static double ce(const double *z, int p, int t)
{
    double mx = z[0];
    for (int c = 1; c < p; c++)
        if (z[c] > mx)
            mx = z[c];
    double s = 0.0;
    for (int c = 0; c < p; c++)
        s += exp(z[c] - mx);
    return log(s) + mx - z[t];
}

void modadd_proj_loss(const struct modadd_proj *q, int a, int b, const float *logits,
                      double *scratch, double *full, double *restricted, double *excluded)
{
    const int p = q->p, r = (a + b) % p;
    double *z = scratch, *zr = scratch + p, *zx = scratch + 2 * p;
    for (int c = 0; c < p; c++) {
        double pl = 0.0;
        for (int i = 0; i < q->nkeys; i++)
            pl += q->alpha[(size_t)i * p + c] * q->cosr[(size_t)i * p + r] +
                  q->beta[(size_t)i * p + c] * q->sinr[(size_t)i * p + r];
        z[c] = logits[c];
        zr[c] = q->mean[c] + pl;
        zx[c] = z[c] - pl;
    }
    *full = ce(z, p, r);
    *restricted = ce(zr, p, r);
    *excluded = ce(zx, p, r);
}

/* ---- the item ---- */

static int weight_norm(const struct gptneox *m, double *out, struct err *e)
{
    size_t np = gptneox_params(m, NULL, 0);
    struct gptneox_param *ps = malloc(np * sizeof *ps);
    if (!ps)
        return err_set(e, ERR_NOMEM, NULL, "out of memory listing %zu parameters", np);
    gptneox_params(m, ps, np);
    double ss = 0.0;
    for (size_t i = 0; i < np; i++)
        for (size_t j = 0; j < ps[i].n; j++)
            ss += (double)ps[i].data[j] * ps[i].data[j];
    free(ps);
    *out = sqrt(ss);
    return 0;
}

/* Run the first n pairs (a, b) through m, GRID_CHUNK sequences per
 * forward.  With `q` (pass 1, every pair of the grid) add each pair's
 * answer logits to it; otherwise add each pair's answer, restricted and
 * excluded losses under the finished projection `qc` to sums. */
static int modadd_pass(struct gptneox *m, const struct modadd_proj *qc, struct modadd_proj *q,
                       const int *pairs, int n, int *tok, double *scratch, double sums[3],
                       struct err *e)
{
    const int p = q ? q->p : qc->p, V = m->cfg.vocab_size;
    for (int s0 = 0; s0 < n; s0 += GRID_CHUNK) {
        int B = n - s0 < GRID_CHUNK ? n - s0 : GRID_CHUNK;
        for (int i = 0; i < B; i++) {
            tok[3 * i] = pairs[2 * (s0 + i)];
            tok[3 * i + 1] = pairs[2 * (s0 + i) + 1];
            tok[3 * i + 2] = p;
        }
        int rc = gptneox_forward(m, tok, B, 3, NULL, 0, e);
        if (rc < 0)
            return rc;
        const float *logits = gptneox_logits(m);
        for (int i = 0; i < B; i++) {
            const float *l = logits + ((size_t)i * 3 + 2) * V;
            int a = pairs[2 * (s0 + i)], b = pairs[2 * (s0 + i) + 1];
            if (q) {
                modadd_proj_add(q, a, b, l);
            } else {
                double f, r, x;
                modadd_proj_loss(qc, a, b, l, scratch, &f, &r, &x);
                sums[0] += f;
                sums[1] += r;
                sums[2] += x;
            }
        }
    }
    return 0;
}

static int modadd_rows(const struct battery_ctx *ctx, const struct task *t, struct rows *out,
                       struct err *e)
{
    struct gptneox *m = ctx->model;
    const int p = task_get_config(t)->p, C = m->cfg.d_model, nf = modadd_nfreqs(p);
    int ntrain, npairs, rc = 0;
    const int *pairs = task_modadd_pairs(t, &ntrain, &npairs);
    double *norms = malloc(sizeof(double) * nf), *scratch = malloc(sizeof(double) * 3 * p);
    int keys[TASK_KEY_FREQS];
    int *tok = malloc(sizeof(int) * 3 * GRID_CHUNK);
    struct modadd_proj *q = NULL;
    if (!norms || !scratch || !tok) {
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory for the Fourier metrics");
        goto out;
    }
    if ((rc = modadd_fourier_norms(m->embed, p, C, norms, e)) < 0)
        goto out;
    double nonconst = 0.0, keyss = 0.0;
    for (int k = 0; k < nf; k++)
        if ((rc = rows_add(out, "embed_fourier_norm", -1, -1, k, norms[k], e)) < 0)
            goto out;
    for (int k = 1; k < nf; k++)
        nonconst += norms[k] * norms[k];
    int nk = modadd_key_freqs(norms, p, TASK_KEY_FREQS, keys);
    for (int i = 0; i < nk; i++) {
        keyss += norms[keys[i]] * norms[keys[i]];
        double share = nonconst > 0 ? norms[keys[i]] * norms[keys[i]] / nonconst : NAN;
        if ((rc = rows_add(out, "key_frequency", -1, -1, keys[i], share, e)) < 0)
            goto out;
    }
    if ((rc = rows_add(out, "fourier_key_fraction", -1, -1, -1,
                       nonconst > 0 ? keyss / nonconst : NAN, e)) < 0)
        goto out;
    if ((rc = modadd_proj_create(&q, p, keys, nk, e)) < 0)
        goto out;
    /* pass 1: the whole grid (the pairs array holds every pair once) */
    if ((rc = modadd_pass(m, NULL, q, pairs, npairs, tok, scratch, NULL, e)) < 0)
        goto out;
    modadd_proj_finish(q);
    double sums[3] = {0, 0, 0};
    if ((rc = modadd_pass(m, q, NULL, pairs, ntrain, tok, scratch, sums, e)) < 0)
        goto out;
    if ((rc = rows_add(out, "answer_loss", -1, -1, -1, sums[0] / ntrain, e)) < 0 ||
        (rc = rows_add(out, "restricted_loss", -1, -1, -1, sums[1] / ntrain, e)) < 0 ||
        (rc = rows_add(out, "excluded_loss", -1, -1, -1, sums[2] / ntrain, e)) < 0)
        goto out;
out:
    modadd_proj_free(q);
    free(tok);
    free(scratch);
    free(norms);
    return rc;
}

static int task_run(const struct battery_ctx *ctx, struct rows *out, struct err *e)
{
    struct gptneox *m = ctx->model;
    struct task *t = NULL;
    int rc = task_load_json(&t, ctx->task_path, e);
    if (rc < 0)
        return rc;
    if (m->cfg.vocab_size != task_vocab(t) || m->cfg.max_positions < task_seq_len(t)) {
        rc = err_set(e, ERR_INVALID, ctx->task_path,
                     "the checkpoint (vocabulary %d, %d positions) was not made for this task "
                     "(vocabulary %d, sequences of %d)", m->cfg.vocab_size,
                     m->cfg.max_positions, task_vocab(t), task_seq_len(t));
        goto out;
    }
    struct task_metrics mt;
    if ((rc = task_eval(t, m, &mt, e)) < 0)
        goto out;
    const char *const *names = task_metric_names(t);
    const double v[4] = {mt.train_loss, mt.train_acc, mt.test_loss, mt.test_acc};
    for (int i = 0; i < 4; i++)
        if ((rc = rows_add(out, names[i], -1, -1, -1, v[i], e)) < 0)
            goto out;
    if (task_get_config(t)->kind == TASK_MODADD && (rc = modadd_rows(ctx, t, out, e)) < 0)
        goto out;
    double wn = 0.0;
    if ((rc = weight_norm(m, &wn, e)) < 0)
        goto out;
    rc = rows_add(out, "weight_norm", -1, -1, -1, wn, e);
out:
    task_free(t);
    return rc;
}

const struct battery_item battery_item_task = {
    .name = "task",
    .version = 1,
    .needs = BATTERY_NEEDS(BATTERY_NEED_TASK),
    .metrics = task_metrics,
    .nmetrics = sizeof task_metrics / sizeof *task_metrics,
    .run = task_run,
};
