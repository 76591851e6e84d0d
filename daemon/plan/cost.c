/* The cost model: analytic work per battery item from the model's shape,
 * scaled by a calibration table measured with bench/battery_bench.sh.
 *
 * The constants below mirror the worker's (workers/battery/battery.h:
 * BATTERY_REP_*, ABLATION_*, SAE_*, PROBES_*, LLC_*); the daemon never
 * includes the worker's headers, so a change there is mirrored here, and
 * bench/battery_bench.sh shows any drift as projection against measurement. */
#include "daemon/plan/cost.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- the worker's settings (battery.h) ---- */
#define REP_SEQS 8
#define REP_LEN 64
#define ABL_EVAL_SEQS 4
#define ABL_EVAL_TOKENS 1024 /* ablation's eval sequences: the fewest holding this many
                                tokens, at most ABL_EVAL_SEQS (ablation_exact: ABL_EVAL_SEQS) */
#define ABL_REP_SEQS 4
#define ABL_EXACT_PER_KIND 9 /* ABLATION_TOP_K 5 + ABLATION_TOP_DLA 1 + ABLATION_SAMPLE 3 */
#define SAE_EXPANSION 4
#define SAE_TRAIN_TOKENS 65536.0
#define SAE_HARVEST_BYTES (256.0 * 1048576.0)
#define PROBES_MAX_TRAIN 4096.0
#define PROBES_MAX_HELDOUT 1024.0
#define PROBES_ITERS 100.0 /* L-BFGS steps of a fit, typically (at most 200) */
#define LLC_STEPS (4.0 * (100 + 100)) /* chains x (burn-in + draws) */
#define LLC_BATCH_TOKENS 256
#define LENS_TOKENS 2048 /* the lens's sequences: the fewest holding this many tokens */
#define PAIR_PAIRS 8       /* PAIR_IND_PAIRS: the built-in induction pairs */
#define PAIR_LEN 16        /* PAIR_IND_LEN: T = 2 L */
#define PATCH_EXACT_PER_FAMILY 8 /* PATCH_TOP_K 5 + PATCH_SAMPLE 3 */
#define PATCH_FAMILIES 6
#define PATH_TOP_K 6

/* ---- the calibration table ----
 *
 * k: seconds per FLOP of the item's work relative to a FLOP of a plain
 * forward of the eval set: the item's CPU seconds over its FLOPs, times
 * the shared eval forward's GFLOP per CPU second in the same worker.
 * Fitted by bench/cost_fit.py (bench/data/cost_factors.tsv: the geometric
 * mean of the k measured on the pythia-70m and pythia-160m shapes by
 * bench/battery_bench.sh, 16 x 512 tokens of the eval text, 2 threads,
 * the shared 2-core machine, OpenBLAS SkylakeX kernels).  Fitted on one
 * size, the table predicts the other's CPU seconds per checkpoint within
 * 8 %; with both, within 4 % on each.  Items not measured there take
 * their sibling's k (ablation_exact: ablation's, sae_relu: sae's) or 1.
 * REFERENCE_GFLOPS: the plain forward rate of that machine (2 threads,
 * 8 x 512 tokens, 160m shape) when quiet. */
#define REFERENCE_GFLOPS 150.0

static const struct {
    const char *item;
    double k;
} table[] = {
    {"pass", 1.00}, /* the eval set's shared forward (the unit) */
    {"loss", 20.39},
    {"weights", 1.66},
    {"heads", 1.31},
    {"lens", 1.26},
    {"composition", 1.91},
    {"ablation", 1.22},
    {"ablation_exact", 1.22}, /* not measured: ablation's */
    {"probes", 5.03},
    {"task", 1.00}, /* not measured */
    {"sae", 1.43},
    {"sae_relu", 1.43}, /* not measured: sae's */
    {"sae_match", 1.00},
    {"llc", 1.00}, /* not measured */
    {"patching", 1.23},
    {"attribution", 0.91},
    {"path_patching", 0.92},
    {"circuit", 1.00}, /* reads score files: ~0 s */
};

static double table_k(const char *item)
{
    for (size_t i = 0; i < sizeof table / sizeof *table; i++)
        if (strcmp(table[i].item, item) == 0)
            return table[i].k;
    return -1.0;
}

double cost_reference_gflops(void)
{
    return REFERENCE_GFLOPS;
}

/* ---- shapes ---- */

static int get_int(json_t *doc, const char *key, int dflt, int *out)
{
    json_t *v = json_object_get(doc, key);
    if (!v) {
        *out = dflt;
        return dflt > 0 ? 0 : -1;
    }
    if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > 1 << 30)
        return -1;
    *out = (int)json_integer_value(v);
    return 0;
}

int cost_shape_from_json(struct cost_shape *out, const char *json_text, struct err *e)
{
    json_error_t je;
    json_t *doc = json_loads(json_text, 0, &je);
    if (!doc || !json_is_object(doc)) {
        json_decref(doc);
        return err_set(e, ERR_FORMAT, "config.json", "not a JSON object: %s",
                       doc ? "another type" : je.text);
    }
    static const char *const keys[] = {"num_hidden_layers", "hidden_size",
                                       "num_attention_heads", "vocab_size",
                                       "max_position_embeddings"};
    int *dst[] = {&out->n_layers, &out->d_model, &out->n_heads, &out->vocab, &out->max_pos};
    int rc = 0;
    for (size_t i = 0; i < sizeof keys / sizeof *keys && rc == 0; i++)
        if (get_int(doc, keys[i], 0, dst[i]) < 0)
            rc = err_set(e, ERR_FORMAT, "config.json", "%s is missing or not a positive integer",
                         keys[i]);
    if (rc == 0 && get_int(doc, "intermediate_size", 4 * out->d_model, &out->d_mlp) < 0)
        rc = err_set(e, ERR_FORMAT, "config.json", "intermediate_size is not a positive integer");
    if (rc == 0 && out->d_model % out->n_heads != 0)
        rc = err_set(e, ERR_FORMAT, "config.json", "hidden_size %d is not a multiple of %d heads",
                     out->d_model, out->n_heads);
    json_decref(doc);
    return rc;
}

/* ---- the skeleton ---- */

int cost_on_skeleton(int index, int count, int every)
{
    if (every <= 0 || index < 0 || index >= count)
        return 0;
    return index % every == 0 || index == count - 1;
}

int cost_skeleton_count(int count, int every)
{
    int n = 0;
    for (int i = 0; i < count; i++)
        n += cost_on_skeleton(i, count, every);
    return n;
}

/* ---- work ---- */

double cost_forward_flops(const struct cost_shape *sh, int B, int T, int logits)
{
    double N = (double)B * T, C = sh->d_model, F = sh->d_mlp, V = sh->vocab;
    double per_layer = 2 * N * C * 3 * C + 2 * N * C * C + 4 * N * C * F;
    double att = 0.0;
    for (int r0 = 0; r0 < T; r0 += 128) {
        int r1 = r0 + 128 < T ? r0 + 128 : T;
        att += 4.0 * (r1 - r0) * r1 * (sh->d_model / sh->n_heads);
    }
    att *= (double)B * sh->n_heads;
    return sh->n_layers * (per_layer + att) + (logits ? 2 * N * C * V : 0.0);
}

static double body(const struct cost_shape *sh, int B, int T)
{
    return cost_forward_flops(sh, B, T, 0);
}

static int eval_len(const struct cost_shape *sh, const struct cost_run *run)
{
    return run->ctx < sh->max_pos ? run->ctx : sh->max_pos;
}

static int rep_len(const struct cost_shape *sh)
{
    int L = (sh->max_pos - 1) / 2 < REP_LEN ? (sh->max_pos - 1) / 2 : REP_LEN;
    return sh->vocab - 1 < L ? sh->vocab - 1 : L;
}

/* Gram matrix and eigenvalues of an m x n matrix (battery_weights.c). */
static double gram(double m, double n)
{
    double lo = m < n ? m : n, hi = m < n ? n : m;
    return 2 * lo * lo * hi + 10 * lo * lo * lo;
}

/* ablation's exact variants of one set: nvar variants, nrows scored rows. */
static double exact_variants(const struct cost_shape *sh, int B, int T, int nrows, double nvar,
                             double depth)
{
    return nvar * (depth * body(sh, B, T) + 2.0 * nrows * sh->d_model * sh->vocab);
}

static double ablation_work(const struct cost_shape *sh, const struct cost_run *run, int atp,
                            int sweep)
{
    const int T = eval_len(sh, run), L = rep_len(sh), NL = sh->n_layers, NH = sh->n_heads;
    int B0 = atp ? (ABL_EVAL_TOKENS + T - 1) / T : ABL_EVAL_SEQS;
    B0 = B0 < ABL_EVAL_SEQS ? B0 : ABL_EVAL_SEQS;
    B0 = run->eval_seqs < B0 ? run->eval_seqs : B0;
    const int Bs[2] = {B0, ABL_REP_SEQS}, Ts[2] = {T, 2 * L + 1};
    const int nrows[2] = {B0 * (T - 1), ABL_REP_SEQS * (L - 1)};
    const double all = 2.0 * NL * NH, full_depth = (NL + 1) / (2.0 * NL);
    double w = 0;
    for (int i = 0; i < 2; i++) {
        double dla = 2.0 * NL * nrows[i] * sh->d_model * sh->d_model;
        if (atp) {
            double nvar = sweep ? all : fmin(all, 2.0 * ABL_EXACT_PER_KIND);
            w += 2 * cost_forward_flops(sh, Bs[i], Ts[i], 1) + dla +
                 exact_variants(sh, Bs[i], Ts[i], nrows[i], nvar, sweep ? full_depth : 0.5);
        } else {
            w += body(sh, Bs[i], Ts[i]) + dla + 2.0 * nrows[i] * sh->d_model * sh->vocab +
                 exact_variants(sh, Bs[i], Ts[i], nrows[i], all, full_depth);
        }
    }
    return w;
}

/* The built-in induction pairs' length (pair_set_induction): T = 2 L. */
static int pair_len(const struct cost_shape *sh)
{
    int L = PAIR_LEN < sh->max_pos / 2 ? PAIR_LEN : sh->max_pos / 2;
    return (sh->vocab - 1) / 2 < L ? (sh->vocab - 1) / 2 : L;
}

/* The patching items on the built-in pair set (user --pairs sets are not
 * counted).  Unit: a body forward of the set's prompts; a component
 * patched at layer l resumes there, (NL - l) / NL of one, (NL + 1) / (2 NL)
 * on average.  The estimates: per prompt a taped forward to the logits and
 * a backward to the activations (counted as 1.5 forwards). */
static double patching_work(const char *item, const struct cost_shape *sh, int sweep)
{
    const int L = pair_len(sh), T = 2 * L, NL = sh->n_layers, NH = sh->n_heads;
    const double unit = body(sh, PAIR_PAIRS, T), depth = (NL + 1) / (2.0 * NL);
    const double grads = 2 * 2.5 * cost_forward_flops(sh, PAIR_PAIRS, T, 1);
    if (strcmp(item, "patching") == 0) {
        /* the residual stream at the L + 1 positions from the corrupted
         * token on (the rest is the same in both runs), the heads at every
         * position and at the positions of interest, both directions */
        const double resid = (L + 1.0) * NL, heads = 2.0 * NL * NH;
        double nvar = 2 * (resid + heads);
        if (!sweep) {
            double per = PATCH_EXACT_PER_FAMILY;
            nvar = 4 * fmin(per, NL * NH) + 2 * fmin(per, resid);
        }
        return 2 * unit + grads + nvar * depth * unit;
    }
    if (strcmp(item, "attribution") == 0)
        return grads;
    if (strcmp(item, "path_patching") == 0) {
        const int K = PATH_TOP_K < NL * NH ? PATH_TOP_K : NL * NH;
        return 2 * unit + 2 * (K + K * (K - 1) / 2.0) * depth * unit;
    }
    return 1e6; /* circuit: reads the score files */
}

/* Sequences of the eval set an SAE harvests (whole, within its budget). */
static int sae_seqs(const struct cost_shape *sh, const struct cost_run *run)
{
    double cap = SAE_HARVEST_BYTES / (4.0 * eval_len(sh, run) * sh->d_model);
    return run->eval_seqs < cap ? run->eval_seqs : (int)cap;
}

static double item_work(const char *item, const struct cost_shape *sh, const struct cost_run *run,
                        int sweep)
{
    const double C = sh->d_model, V = sh->vocab, F = sh->d_mlp, NL = sh->n_layers;
    const double NH = sh->n_heads, HS = C / NH;
    const int T = eval_len(sh, run), B = run->eval_seqs;
    const double N = (double)B * T;
    if (strcmp(item, "loss") == 0)
        return 4 * N * V;
    if (strcmp(item, "lens") == 0) { /* the embedding and every layer but the last, on the
                                        first sequences holding LENS_TOKENS tokens */
        int nl = (LENS_TOKENS + T - 1) / T;
        const double Nl = (double)(nl < B ? nl : B) * T;
        return NL * 2 * Nl * C * V + 4 * Nl * V;
    }
    if (strcmp(item, "heads") == 0) {
        const int L = rep_len(sh);
        /* the repeated sequences, and its own body forward of the eval set:
         * its pattern hooks would move every other reader of the shared
         * forward onto the materialised attention path */
        int nl = (LENS_TOKENS + T - 1) / T; /* v2: the lens's sequences */
        const int Be = nl < B ? nl : B;
        return cost_forward_flops(sh, REP_SEQS, 2 * L + 1, 1) + body(sh, Be, T) +
               8 * NL * NH * Be * (double)T * T / 2;
    }
    if (strcmp(item, "probes") == 0) {
        double pos = (double)B * (T - 1), ntr = fmin(0.8 * pos, PROBES_MAX_TRAIN);
        double nte = fmin(0.2 * pos, PROBES_MAX_HELDOUT), n = ntr + nte;
        double site = (16 + 2) * 2 * 2 * PROBES_ITERS * 2 * ntr * C + 2 * (2 * n * C * C + C * C * C);
        return (NL + 1) * site * (1 + run->probe_sets);
    }
    if (strcmp(item, "sae") == 0 || strcmp(item, "sae_relu") == 0) {
        const double S = SAE_EXPANSION * C;
        const int Bh = sae_seqs(sh, run), nho = Bh / 5 > 0 ? Bh / 5 : 1;
        double site = SAE_TRAIN_TOKENS * 10 * C * S + 3 * cost_forward_flops(sh, nho, T, 1) +
                      4.0 * Bh * T * C * S;
        return (run->sae_sites > 0 ? run->sae_sites : 1) * site;
    }
    if (strcmp(item, "sae_match") == 0) {
        const double S = SAE_EXPANSION * C;
        return (run->sae_sites > 0 ? run->sae_sites : 1) * 2 * S * S * C;
    }
    if (strcmp(item, "weights") == 0)
        return NL * (gram(3 * C, C) + gram(C, C) + gram(F, C) + gram(C, F) +
                     NH * (4 * 4 * C * HS * HS + 2 * 20 * HS * HS * HS)) +
               2 * gram(V, C);
    if (strcmp(item, "composition") == 0) {
        const double pairs = NL * (NL - 1) / 2 + 2;
        return pairs * 3 * (2 * C * C * C + 4 * NH * NH * HS * HS * HS);
    }
    if (strcmp(item, "ablation") == 0)
        return ablation_work(sh, run, 1, sweep);
    if (strcmp(item, "ablation_exact") == 0)
        return ablation_work(sh, run, 0, 1);
    if (strcmp(item, "llc") == 0) {
        int m = LLC_BATCH_TOKENS / T;
        m = m < 1 ? 1 : m > B ? B : m;
        return LLC_STEPS * 3 * cost_forward_flops(sh, m, T, 1);
    }
    if (strcmp(item, "patching") == 0 || strcmp(item, "attribution") == 0 ||
        strcmp(item, "path_patching") == 0 || strcmp(item, "circuit") == 0)
        return patching_work(item, sh, sweep);
    if (strcmp(item, "task") == 0)
        return 1e9; /* a toy run's few small forwards */
    return -1;
}

int cost_item(const char *item, const struct cost_shape *sh, const struct cost_run *run,
              int full_sweep, double gflops, struct cost_item *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", item);
    double k = table_k(item), w = item_work(item, sh, run, 0);
    if (k < 0 || w < 0)
        return ERR_NOTFOUND;
    out->known = 1;
    out->gflop = w / 1e9;
    out->seconds = k * out->gflop / gflops;
    out->sweep_gflop = item_work(item, sh, run, 1) / 1e9;
    out->sweep_s = k * out->sweep_gflop / gflops;
    if (full_sweep)
        out->seconds = out->sweep_s;
    return 0;
}

/* 1: reads the pass to the logits; 2: reads it without; 0: does not read it. */
static int pass_reader(const char *item)
{
    static const char *const logits[] = {"loss", "lens"};
    static const char *const body_only[] = {"probes", "sae", "sae_relu"};
    for (size_t i = 0; i < sizeof logits / sizeof *logits; i++)
        if (strcmp(item, logits[i]) == 0)
            return 1;
    for (size_t i = 0; i < sizeof body_only / sizeof *body_only; i++)
        if (strcmp(item, body_only[i]) == 0)
            return 2;
    return 0;
}

double cost_pass_seconds(const char *const *items, int nitems, const struct cost_shape *sh,
                         const struct cost_run *run, double gflops, double *gflop)
{
    if (gflop)
        *gflop = 0.0;
    int readers = 0, logits = 0;
    for (int i = 0; i < nitems; i++) {
        int r = pass_reader(items[i]);
        readers += r != 0;
        logits |= r == 1;
    }
    if (!readers)
        return 0.0;
    double w = cost_forward_flops(sh, run->eval_seqs, eval_len(sh, run), logits);
    if (gflop)
        *gflop = w / 1e9;
    return table_k("pass") * w / (gflops * 1e9);
}

void cost_series(const struct cost_shape *sh, const struct cost_run *run,
                 const char *const *items, int nitems, int checkpoints, double gflops,
                 struct cost_item *per_item, struct cost_series *out)
{
    memset(out, 0, sizeof *out);
    out->pass_s = cost_pass_seconds(items, nitems, sh, run, gflops, &out->pass_gflop);
    out->checkpoint_s = out->sweep_s = out->pass_s;
    for (int i = 0; i < nitems; i++) {
        struct cost_item ci;
        (void)cost_item(items[i], sh, run, 0, gflops, &ci);
        out->checkpoint_s += ci.seconds;
        out->sweep_s += ci.sweep_s;
        if (per_item)
            per_item[i] = ci;
    }
    out->checkpoints = checkpoints;
    out->sweeps = cost_skeleton_count(checkpoints, run->sweep_every);
    out->total_s = (checkpoints - out->sweeps) * out->checkpoint_s + out->sweeps * out->sweep_s;
}
