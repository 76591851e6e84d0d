#include "workers/train/task.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/atomic_file.h"
#include "common/rng.h"
#include "common/json_err.h"
#include "workers/model/kernels.h"

#define EVAL_CHUNK 2048  /* sequences per evaluation forward */
#define INDUCTION_EVAL 256

struct task {
    struct task_config c;
    int V, T;
    /* modular addition: pairs in split order, train first */
    int npairs, ntrain;
    int *pairs;              /* (npairs, 2) */
    int *train_tok, *train_tgt, *test_tok, *test_tgt;
    /* induction */
    int *batch_tok, *batch_tgt;
    int *eval_tok, *eval_tgt, *eval_icl; /* eval_icl: 1 at in-context positions */
    float *loss_row;
};

static const char *const kind_names[TASK_KIND_COUNT] = {"modular-addition", "induction"};
static const char *const modadd_metrics[4] = {"train_loss", "train_acc", "test_loss", "test_acc"};
static const char *const induction_metrics[4] = {"loss", "acc", "icl_loss", "icl_acc"};

int task_kind_parse(const char *name)
{
    for (int i = 0; i < TASK_KIND_COUNT; i++)
        if (strcmp(name, kind_names[i]) == 0)
            return i;
    return -1;
}

const char *task_kind_name(enum task_kind k)
{
    return (unsigned)k < TASK_KIND_COUNT ? kind_names[k] : "?";
}

const char *const *task_metric_names(const struct task *t)
{
    return t->c.kind == TASK_MODADD ? modadd_metrics : induction_metrics;
}

int task_vocab(const struct task *t) { return t->V; }
int task_seq_len(const struct task *t) { return t->T; }

/* uniform in [0, n) (n small: the modulo bias is below 2^-40) */
static int draw_below(uint64_t *s, int n) { return (int)rng_mod(s, (uint64_t)n); }

void task_free(struct task *t)
{
    if (!t)
        return;
    free(t->pairs);
    free(t->train_tok);
    free(t->train_tgt);
    free(t->test_tok);
    free(t->test_tgt);
    free(t->batch_tok);
    free(t->batch_tgt);
    free(t->eval_tok);
    free(t->eval_tgt);
    free(t->eval_icl);
    free(t->loss_row);
    free(t);
}

static void modadd_fill(const struct task *t, const int *pairs, int n, int *tok, int *tgt)
{
    int p = t->c.p;
    for (int i = 0; i < n; i++) {
        int a = pairs[2 * i], b = pairs[2 * i + 1];
        tok[3 * i] = a;
        tok[3 * i + 1] = b;
        tok[3 * i + 2] = p;
        tgt[3 * i] = tgt[3 * i + 1] = -1;
        tgt[3 * i + 2] = (a + b) % p;
    }
}

static int modadd_create(struct task *t, struct err *e)
{
    const int p = t->c.p;
    if (p < 2 || p > 1000)
        return err_set(e, ERR_INVALID, NULL, "--p must be in [2, 1000], got %d", p);
    if (!(t->c.train_frac > 0.0 && t->c.train_frac < 1.0))
        return err_set(e, ERR_INVALID, NULL, "--train-frac must be in (0, 1), got %g",
                       t->c.train_frac);
    t->V = p + 1;
    t->T = 3;
    t->npairs = p * p;
    t->ntrain = (int)floor(t->c.train_frac * t->npairs);
    if (t->ntrain < 1 || t->ntrain >= t->npairs)
        return err_set(e, ERR_INVALID, NULL,
                       "--train-frac %g of %d pairs leaves an empty training or test set",
                       t->c.train_frac, t->npairs);
    int ntest = t->npairs - t->ntrain;
    t->pairs = malloc((size_t)t->npairs * 2 * sizeof(int));
    t->train_tok = malloc((size_t)t->ntrain * 3 * sizeof(int));
    t->train_tgt = malloc((size_t)t->ntrain * 3 * sizeof(int));
    t->test_tok = malloc((size_t)ntest * 3 * sizeof(int));
    t->test_tgt = malloc((size_t)ntest * 3 * sizeof(int));
    if (!t->pairs || !t->train_tok || !t->train_tgt || !t->test_tok || !t->test_tgt)
        return err_set(e, ERR_NOMEM, NULL, "out of memory for %d pairs", t->npairs);
    for (int i = 0; i < t->npairs; i++) {
        t->pairs[2 * i] = i / p;
        t->pairs[2 * i + 1] = i % p;
    }
    uint64_t s = t->c.seed ^ 0x6d6f64616464ull; /* Fisher-Yates with the split seed */
    for (int i = t->npairs - 1; i > 0; i--) {
        int j = draw_below(&s, i + 1);
        int a = t->pairs[2 * i], b = t->pairs[2 * i + 1];
        t->pairs[2 * i] = t->pairs[2 * j];
        t->pairs[2 * i + 1] = t->pairs[2 * j + 1];
        t->pairs[2 * j] = a;
        t->pairs[2 * j + 1] = b;
    }
    modadd_fill(t, t->pairs, t->ntrain, t->train_tok, t->train_tgt);
    modadd_fill(t, t->pairs + 2 * t->ntrain, ntest, t->test_tok, t->test_tgt);
    return 0;
}

/* One induction sequence of length T from stream s, its span S in
 * [smin, smax]: tok (T), tgt (T), icl (T) marks the in-context positions
 * (may be NULL). */
static void induction_seq(uint64_t *s, int V, int T, int smin, int smax, int *tok, int *tgt,
                          int *icl)
{
    for (int i = 0; i < T; i++)
        tok[i] = draw_below(s, V);
    int S = smin + draw_below(s, smax - smin + 1);
    int a = draw_below(s, T - 2 * S + 1);      /* a + S <= d <= T - S */
    int d = a + S + draw_below(s, T - S - (a + S) + 1);
    for (int i = 0; i < S; i++)
        tok[d + i] = tok[a + i];
    for (int i = 0; i < T; i++) {
        tgt[i] = i + 1 < T ? tok[i + 1] : -1;
        if (icl)
            icl[i] = i >= d && i <= d + S - 2;
    }
}

static int induction_create(struct task *t, struct err *e)
{
    const int V = t->c.vocab, T = t->c.seq_len, B = t->c.batch;
    if (V < 4 || V > 65536)
        return err_set(e, ERR_INVALID, NULL, "--vocab must be in [4, 65536], got %d", V);
    if (T < 8 || T > 1024)
        return err_set(e, ERR_INVALID, NULL, "--seq-len must be in [8, 1024], got %d", T);
    if (B < 1 || B > 65536)
        return err_set(e, ERR_INVALID, NULL, "--batch must be in [1, 65536], got %d", B);
    if (t->c.span_min == 0 && t->c.span_max == 0) {
        t->c.span_min = T / 8 > 2 ? T / 8 : 2;
        t->c.span_max = T / 4 > t->c.span_min ? T / 4 : t->c.span_min;
    }
    if (t->c.span_min < 2 || t->c.span_max < t->c.span_min || 2 * t->c.span_max > T)
        return err_set(e, ERR_INVALID, NULL,
                       "--span-min %d / --span-max %d: need 2 <= min <= max <= seq-len/2 (%d)",
                       t->c.span_min, t->c.span_max, T / 2);
    t->V = V;
    t->T = T;
    size_t nb = (size_t)B * T, ne = (size_t)INDUCTION_EVAL * T;
    t->batch_tok = malloc(nb * sizeof(int));
    t->batch_tgt = malloc(nb * sizeof(int));
    t->eval_tok = malloc(ne * sizeof(int));
    t->eval_tgt = malloc(ne * sizeof(int));
    t->eval_icl = malloc(ne * sizeof(int));
    if (!t->batch_tok || !t->batch_tgt || !t->eval_tok || !t->eval_tgt || !t->eval_icl)
        return err_set(e, ERR_NOMEM, NULL, "out of memory for induction batches");
    uint64_t s = t->c.seed ^ 0x6576616c0000ull; /* the held-out stream */
    for (int b = 0; b < INDUCTION_EVAL; b++)
        induction_seq(&s, V, T, t->c.span_min, t->c.span_max, t->eval_tok + (size_t)b * T, t->eval_tgt + (size_t)b * T,
                      t->eval_icl + (size_t)b * T);
    return 0;
}

int task_create(struct task **out, const struct task_config *c, struct err *e)
{
    *out = NULL;
    if ((unsigned)c->kind >= TASK_KIND_COUNT)
        return err_set(e, ERR_INVALID, NULL, "unknown task");
    struct task *t = calloc(1, sizeof *t);
    if (!t)
        return err_set(e, ERR_NOMEM, NULL, "out of memory for the task");
    t->c = *c;
    int rc = c->kind == TASK_MODADD ? modadd_create(t, e) : induction_create(t, e);
    if (rc < 0) {
        task_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void task_batch(struct task *t, long step, const int **tokens, const int **targets, int *B)
{
    if (t->c.kind == TASK_MODADD) {
        *tokens = t->train_tok;
        *targets = t->train_tgt;
        *B = t->ntrain;
        return;
    }
    uint64_t s = t->c.seed * 0x9e3779b97f4a7c15ull + (uint64_t)step;
    rng_next(&s);
    for (int b = 0; b < t->c.batch; b++)
        induction_seq(&s, t->V, t->T, t->c.span_min, t->c.span_max, t->batch_tok + (size_t)b * t->T,
                      t->batch_tgt + (size_t)b * t->T, NULL);
    *tokens = t->batch_tok;
    *targets = t->batch_tgt;
    *B = t->c.batch;
}

/* Mean loss and accuracy (argmax) over the positions with a target, over n
 * sequences, in chunks; with mask, also over the positions with a target
 * and mask set (*mloss, *macc), from the same forward. */
static int eval_set(struct task *t, struct gptneox *m, const int *tok, const int *tgt, int n,
                    double *loss, double *acc, const int *mask, double *mloss, double *macc, struct err *e)
{
    const int T = t->T, V = t->V;
    double lsum = 0.0, msum = 0.0;
    long correct = 0, count = 0, mcorrect = 0, mcount = 0;
    for (int s0 = 0; s0 < n; s0 += EVAL_CHUNK) {
        int B = n - s0 < EVAL_CHUNK ? n - s0 : EVAL_CHUNK;
        int rc = gptneox_forward(m, tok + (size_t)s0 * T, B, T, NULL, 0, e);
        if (rc < 0)
            return rc;
        const float *logits = gptneox_logits(m);
        for (size_t i = 0; i < (size_t)B * T; i++) {
            size_t gi = (size_t)s0 * T + i;
            if (tgt[gi] < 0)
                continue;
            const float *l = logits + i * V;
            float one;
            crossentropy_forward(&one, l, &tgt[gi], 1, V);
            int best = 0;
            for (int v = 1; v < V; v++)
                if (l[v] > l[best])
                    best = v;
            lsum += one;
            correct += best == tgt[gi];
            count++;
            if (mask && mask[gi]) {
                msum += one;
                mcorrect += best == tgt[gi];
                mcount++;
            }
        }
    }
    *loss = count ? lsum / count : NAN;
    *acc = count ? (double)correct / count : NAN;
    if (mask) {
        *mloss = mcount ? msum / mcount : NAN;
        *macc = mcount ? (double)mcorrect / mcount : NAN;
    }
    return 0;
}

int task_eval(struct task *t, struct gptneox *m, struct task_metrics *o, struct err *e)
{
    if (t->c.kind == TASK_MODADD) {
        int rc = eval_set(t, m, t->train_tok, t->train_tgt, t->ntrain, &o->train_loss, &o->train_acc, NULL,
                          NULL, NULL, e);
        if (rc < 0)
            return rc;
        return eval_set(t, m, t->test_tok, t->test_tgt, t->npairs - t->ntrain, &o->test_loss, &o->test_acc,
                        NULL, NULL, NULL, e);
    }
    /* induction: every position, and the in-context ones (eval_icl), of one
     * forward of the eval sequences */
    return eval_set(t, m, t->eval_tok, t->eval_tgt, INDUCTION_EVAL, &o->train_loss, &o->train_acc, t->eval_icl,
                    &o->test_loss, &o->test_acc, e);
}

int task_write_json(const struct task *t, const char *path, json_t *extra, struct err *e)
{
    json_t *o = json_object();
    int rc = 0;
    if (!o)
        return err_set(e, ERR_NOMEM, path, "out of memory");
    json_object_set_new(o, "task", json_string(task_kind_name(t->c.kind)));
    json_object_set_new(o, "seed", json_integer((json_int_t)t->c.seed));
    json_object_set_new(o, "vocab_size", json_integer(t->V));
    json_object_set_new(o, "seq_len", json_integer(t->T));
    if (t->c.kind == TASK_MODADD) {
        json_object_set_new(o, "p", json_integer(t->c.p));
        json_object_set_new(o, "train_frac", json_real(t->c.train_frac));
        json_object_set_new(o, "split_seed", json_integer((json_int_t)t->c.seed));
        json_object_set_new(o, "format", json_string("a b = ; a, b in [0, p), '=' is token p; "
                                                     "target (a + b) mod p at position 2 only"));
        json_object_set_new(o, "eq_token", json_integer(t->c.p));
        json_object_set_new(o, "answer_position", json_integer(2));
        json_object_set_new(o, "n_train", json_integer(t->ntrain));
        json_object_set_new(o, "n_test", json_integer(t->npairs - t->ntrain));
        json_t *pairs = json_array();
        for (int i = 0; i < t->ntrain; i++)
            json_array_append_new(pairs, json_pack("[ii]", t->pairs[2 * i], t->pairs[2 * i + 1]));
        json_object_set_new(o, "train_pairs", pairs);
    } else {
        json_object_set_new(o, "batch", json_integer(t->c.batch));
        json_object_set_new(o, "span_min", json_integer(t->c.span_min));
        json_object_set_new(o, "span_max", json_integer(t->c.span_max));
        json_object_set_new(o, "format",
                            json_string("T uniform random tokens; a span of S tokens, "
                                        "span_min <= S <= span_max, at a is copied to "
                                        "d >= a + S; loss on every next-token position"));
        json_object_set_new(o, "eval_sequences", json_integer(INDUCTION_EVAL));
        json_object_set_new(o, "icl_positions", json_string("d .. d+S-2 (predicting the copy)"));
    }
    json_t *names = json_array();
    for (int i = 0; i < 4; i++)
        json_array_append_new(names, json_string(task_metric_names(t)[i]));
    json_object_set_new(o, "metrics", names);
    if (extra)
        json_object_update(o, extra);
    struct atomic_file af;
    if ((rc = atomic_file_open(&af, path, e)) == 0 &&
        json_dumpf(o, af.f, JSON_COMPACT | JSON_PRESERVE_ORDER) != 0) {
        rc = err_set(e, ERR_IO, af.tmp, "cannot write: %s", strerror(errno));
        atomic_file_abort(&af);
    } else if (rc == 0) {
        rc = atomic_file_commit(&af, e);
    }
    json_decref(o);
    return rc;
}

const struct task_config *task_get_config(const struct task *t) { return &t->c; }

const int *task_modadd_pairs(const struct task *t, int *ntrain, int *npairs)
{
    if (t->c.kind != TASK_MODADD) {
        *ntrain = *npairs = 0;
        return NULL;
    }
    *ntrain = t->ntrain;
    *npairs = t->npairs;
    return t->pairs;
}

/* The integer field `key` of o into *out; ERR_INVALID naming it if absent. */
static int json_int_field(const json_t *o, const char *key, const char *path, long long lo,
                          long long hi, long long *out, struct err *e)
{
    const json_t *v = json_object_get(o, key);
    if (!json_is_integer(v))
        return err_set(e, ERR_INVALID, path, "task.json: \"%s\" must be an integer", key);
    long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return err_set(e, ERR_INVALID, path, "task.json: \"%s\" %lld is outside [%lld, %lld]",
                       key, x, lo, hi);
    *out = x;
    return 0;
}

static int check_modadd_json(const struct task *t, const json_t *o, const char *path,
                             struct err *e)
{
    long long ntr, nte;
    int rc;
    if ((rc = json_int_field(o, "n_train", path, 0, INT32_MAX, &ntr, e)) < 0 ||
        (rc = json_int_field(o, "n_test", path, 0, INT32_MAX, &nte, e)) < 0)
        return rc;
    if (ntr != t->ntrain || nte != t->npairs - t->ntrain)
        return err_set(e, ERR_INVALID, path,
                       "task.json: n_train %lld / n_test %lld, but p %d and train_frac %g "
                       "give %d / %d", ntr, nte, t->c.p, t->c.train_frac, t->ntrain,
                       t->npairs - t->ntrain);
    const json_t *pairs = json_object_get(o, "train_pairs");
    if (!json_is_array(pairs) || json_array_size(pairs) != (size_t)t->ntrain)
        return err_set(e, ERR_INVALID, path,
                       "task.json: \"train_pairs\" must be a list of n_train (%d) pairs",
                       t->ntrain);
    for (int i = 0; i < t->ntrain; i++) {
        const json_t *pr = json_array_get(pairs, (size_t)i);
        const json_t *a = json_array_get(pr, 0), *b = json_array_get(pr, 1);
        if (!json_is_array(pr) || json_array_size(pr) != 2 || !json_is_integer(a) ||
            !json_is_integer(b) || json_integer_value(a) != t->pairs[2 * i] ||
            json_integer_value(b) != t->pairs[2 * i + 1])
            return err_set(e, ERR_INVALID, path,
                           "task.json: train pair %d is not the split seed %llu gives "
                           "([%d, %d]): the file was not written for this split", i,
                           (unsigned long long)t->c.seed, t->pairs[2 * i], t->pairs[2 * i + 1]);
    }
    return 0;
}

int task_load_json(struct task **out, const char *path, struct err *e)
{
    *out = NULL;
    json_error_t je;
    FILE *f = fopen(path, "r");
    if (!f)
        return err_set(e, ERR_IO, path, "cannot open the task metadata: %s", strerror(errno));
    errno = 0;
    json_t *o = json_loadf(f, 0, &je);
    fclose(f);
    struct task *t = NULL;
    int rc = 0;
    if (!o)
        return json_err_nomem(&je)
                   ? err_set(e, ERR_NOMEM, path, "out of memory reading task.json")
                   : err_set(e, ERR_INVALID, path, "task.json is not JSON: %s (line %d)", je.text,
                             je.line);
    struct task_config c;
    memset(&c, 0, sizeof c);
    long long seed, v, T;
    const char *kind = json_string_value(json_object_get(o, "task"));
    int k = kind ? task_kind_parse(kind) : -1;
    if (!json_is_object(o) || k < 0) {
        rc = err_set(e, ERR_INVALID, path,
                     "task.json: \"task\" must be \"modular-addition\" or \"induction\"");
        goto out;
    }
    c.kind = (enum task_kind)k;
    if ((rc = json_int_field(o, "seed", path, 0, INT64_MAX, &seed, e)) < 0 ||
        (rc = json_int_field(o, "vocab_size", path, 1, INT32_MAX, &v, e)) < 0 ||
        (rc = json_int_field(o, "seq_len", path, 1, INT32_MAX, &T, e)) < 0)
        goto out;
    c.seed = (uint64_t)seed;
    if (c.kind == TASK_MODADD) {
        long long p;
        const json_t *fr = json_object_get(o, "train_frac");
        if ((rc = json_int_field(o, "p", path, 2, 1000, &p, e)) < 0)
            goto out;
        if (!json_is_number(fr)) {
            rc = err_set(e, ERR_INVALID, path, "task.json: \"train_frac\" must be a number");
            goto out;
        }
        c.p = (int)p;
        c.train_frac = json_number_value(fr);
    } else {
        long long batch;
        if ((rc = json_int_field(o, "batch", path, 1, 65536, &batch, e)) < 0)
            goto out;
        c.vocab = (int)v;
        c.seq_len = (int)T;
        c.batch = (int)batch;
        /* absent in files written before the span was configurable: the defaults */
        long long smin = 0, smax = 0;
        if (json_object_get(o, "span_min") &&
            ((rc = json_int_field(o, "span_min", path, 2, T / 2, &smin, e)) < 0 ||
             (rc = json_int_field(o, "span_max", path, smin, T / 2, &smax, e)) < 0))
            goto out;
        c.span_min = (int)smin;
        c.span_max = (int)smax;
    }
    if ((rc = task_create(&t, &c, e)) < 0) {
        err_wrap(e, "task.json %s", path);
        goto out;
    }
    if (t->V != v || t->T != T) {
        rc = err_set(e, ERR_INVALID, path,
                     "task.json: vocab_size %lld / seq_len %lld, but the task has %d / %d", v, T,
                     t->V, t->T);
        goto out;
    }
    if (c.kind == TASK_MODADD && (rc = check_modadd_json(t, o, path, e)) < 0)
        goto out;
    *out = t;
    t = NULL;
out:
    task_free(t);
    json_decref(o);
    return rc;
}
