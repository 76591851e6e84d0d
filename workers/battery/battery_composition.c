/* composition v1: Q-, K- and V-composition scores between attention heads.
 *
 * Definition (Elhage et al. 2021, "A Mathematical Framework for
 * Transformer Circuits", sec. "Virtual weights and composition"; computed
 * as TransformerLens's `all_composition_scores` does on a model loaded with
 * its defaults fold_ln and center_writing_weights): for a head h1 in layer
 * L1 that writes into the residual stream and a head h2 in a later layer
 * L2 > L1 that reads from it,
 *
 *     score(A, B) = |A B|_F / (|A|_F |B|_F)
 *
 *     Q-composition:  |OV1^T QK2|  (h1's output read by h2's query side)
 *     K-composition:  |QK2 OV1|    (read by h2's key side)
 *     V-composition:  |OV2 OV1|    (read by h2's values)
 *
 * In the column-vector convention (x in R^C a residual-stream vector):
 *   query_key_value weight W (3C, C): rows ordered head, then q/k/v, then
 *     head dim (HuggingFace's fused layout), so head h's query map is
 *     Q_h = W[(3h+0)HS .. +HS, :] (HS, C), keys K_h = W[(3h+1)HS ..],
 *     values V_h = W[(3h+2)HS ..];
 *   attention.dense weight D (C, C) maps the concatenated z (head-major) to
 *     the residual: head h's output map is O_h = D[:, h HS .. +HS] (C, HS);
 *   W_OV^h = O_h V_h (C, C): what h writes, given what it reads;
 *   W_QK^h = Q_h^T K_h (C, C): score = x_query^T W_QK x_key.
 * Rotary embedding is ignored (TransformerLens does the same): W_QK is the
 * bilinear form before the position-dependent rotation, and attention's
 * 1/sqrt(HS) scale cancels in the normalised score.
 *
 * LayerNorm folding (TransformerLens fold_ln): a head reads ln1(x) =
 * w * (x - mean x) / std(x) + b of its own layer (input_layernorm).  The
 * weight w is multiplied into the reading maps (Q_h, K_h, V_h <- X diag(w)),
 * and since the LayerNorm only passes the centred part of x, each reading
 * row is then centred (its mean over the C inputs subtracted, fold_ln's
 * centre_weights).  The writing maps are centred over their C outputs
 * (O_h <- O_h - mean over rows, TransformerLens's center_writing_weights):
 * the component along (1, .., 1) is removed by every LayerNorm that reads
 * it.  The LayerNorm bias b and 1/std become a query/key/value bias and a
 * per-token scale: neither enters a composition score, so biases
 * (query_key_value's, attention.dense's, the LayerNorm's) are not used.
 *
 * Computation: never a (C, C) product per pair.  With A = X2 O1 (HS, HS)
 * for X2 the reading map of h2 (Q2 for Q-, K2 for K-, V2 for V-composition)
 * and the Gram matrices G_X = X X^T, G_O = O^T O (HS, HS):
 *     |OV1^T QK2|^2 = tr(A G_V1 A^T G_K2)    with A = Q2 O1
 *     |QK2 OV1|^2   = tr(A G_V1 A^T G_Q2)    with A = K2 O1
 *     |OV2 OV1|^2   = tr(A G_V1 A^T G_O2)    with A = V2 O1
 *     |OV|^2 = <G_O, G_V>,  |QK|^2 = <G_Q, G_K>   (Frobenius inner products)
 * and tr(A G A^T G') = <A G, G' A>.  Per layer pair, all the A of all
 * head pairs and types are one sgemm, W_qkv(L2) (3C, C) times D(L1)
 * (C, C); A G is n_heads sgemms of (3C, HS, HS), G' A 3 n_heads sgemms of
 * (HS, HS, C).  Products in float, the inner products in double.  A head
 * whose folded maps are all zero has no defined score: NaN.
 *
 * Random baseline: the same computation on COMPOSITION_DRAWS pairs of
 * random layers of the model's shapes (query_key_value (3C, C) and
 * attention.dense (C, C) with N(0, 1) entries, LayerNorm weight 1), every
 * head pair of every draw, averaged.  The normal variates are Box-Muller
 * pairs, r cos(2 pi u2) then r sin(2 pi u2) with r = sqrt(-2 ln u1), in
 * float (logf, sincosf: the sampler is a large share of this item's time
 * outside BLAS), with u1 = ((next >> 11) + 1) 2^-53 and
 * u2 = (next >> 11) 2^-53 from splitmix64
 * seeded with COMPOSITION_SEED + draw; each draw fills layer L1's
 * query_key_value, then its dense, then L2's, row-major.  Fixed, not
 * --seed, so it depends only on the shapes.  For iid Gaussian factors
 * E|AB|^2 / (E|A|^2 E|B|^2) = 1/C exactly, so the baseline is close to
 * 1/sqrt(C) (1/sqrt(C-1) after centring); the sampler gives the mean of
 * the ratio itself. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "workers/battery/battery.h"
#include "common/rng.h"

#define COMPOSITION_SEED 0x636f6d706f736521ull /* "compose!" */

#define PAIR_LAYER "L2: layer of the reading head (1 .. n_layers-1)"
#define PAIR_HEAD "h2: the reading head in layer L2"
#define PAIR_IDX "L1 * n_heads + h1: the writing head h1 in an earlier layer L1 < L2"

static const struct metric_def composition_metrics[] = {
    {"q_composition", "dimensionless",
     "Q-composition |W_OV1^T W_QK2|_F / (|W_OV1|_F |W_QK2|_F), LayerNorm folded, rotary "
     "ignored: how much head h1's output feeds head h2's queries",
     PAIR_LAYER, PAIR_HEAD, PAIR_IDX},
    {"k_composition", "dimensionless",
     "K-composition |W_QK2 W_OV1|_F / (|W_QK2|_F |W_OV1|_F), LayerNorm folded, rotary "
     "ignored: how much head h1's output feeds head h2's keys",
     PAIR_LAYER, PAIR_HEAD, PAIR_IDX},
    {"v_composition", "dimensionless",
     "V-composition |W_OV2 W_OV1|_F / (|W_OV2|_F |W_OV1|_F), LayerNorm folded: how much "
     "head h1's output feeds head h2's values",
     PAIR_LAYER, PAIR_HEAD, PAIR_IDX},
    {"q_composition_baseline", "dimensionless",
     "mean Q-composition score of random Gaussian layers of this model's shapes (fixed "
     "seed, 8 layer pairs, every head pair), about 1/sqrt(d_model)", "", "", ""},
    {"k_composition_baseline", "dimensionless",
     "mean K-composition score of random Gaussian layers of this model's shapes (fixed "
     "seed, 8 layer pairs, every head pair), about 1/sqrt(d_model)", "", "", ""},
    {"v_composition_baseline", "dimensionless",
     "mean V-composition score of random Gaussian layers of this model's shapes (fixed "
     "seed, 8 layer pairs, every head pair), about 1/sqrt(d_model)", "", "", ""},
};

static const char *const score_names[3] = {"q_composition", "k_composition", "v_composition"};
static const char *const baseline_names[3] = {"q_composition_baseline", "k_composition_baseline",
                                              "v_composition_baseline"};

/* Gram slots per head */
enum { G_Q, G_K, G_V, G_O, G_COUNT };

/* One layer, folded and centred: the reading maps (3C, C) in HF's row
 * order, the centred dense (C, C), and per head the four (HS, HS) Grams. */
struct comp_layer {
    float *qkv;  /* (3C, C); NULL once no longer needed */
    float *o;    /* (C, C) */
    float *gram; /* (NH, G_COUNT, HS, HS) */
};

struct comp_dims {
    int C, NH, HS;
};

/* qkv_out (3C, C) = qkv (3C, C) diag(w) with each row centred; w NULL
 * means ones.  o_out (C, C) = dense with each column centred; colsum (C)
 * is scratch. */
static void fold_layer(float *qkv_out, float *o_out, const float *qkv, const float *dense,
                       const float *w, int C, double *colsum)
{
    for (int r = 0; r < 3 * C; r++) {
        const float *src = qkv + (size_t)r * C;
        float *dst = qkv_out + (size_t)r * C;
        double s = 0.0;
        for (int j = 0; j < C; j++) {
            dst[j] = w ? src[j] * w[j] : src[j];
            s += dst[j];
        }
        const float mean = (float)(s / C);
        for (int j = 0; j < C; j++)
            dst[j] -= mean;
    }
    memset(colsum, 0, (size_t)C * sizeof *colsum);
    for (int i = 0; i < C; i++)
        for (int j = 0; j < C; j++)
            colsum[j] += dense[(size_t)i * C + j];
    for (int i = 0; i < C; i++)
        for (int j = 0; j < C; j++)
            o_out[(size_t)i * C + j] = dense[(size_t)i * C + j] - (float)(colsum[j] / C);
}

/* The four Grams of every head of a folded layer. */
static void layer_grams(struct comp_layer *L, const struct comp_dims *d)
{
    const int C = d->C, HS = d->HS;
    for (int h = 0; h < d->NH; h++) {
        float *g = L->gram + (size_t)h * G_COUNT * HS * HS;
        for (int t = 0; t < 3; t++) {
            const float *x = L->qkv + (size_t)(3 * h + t) * HS * C;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, HS, HS, C, 1.0f, x, C, x, C,
                        0.0f, g + (size_t)t * HS * HS, HS);
        }
        const float *o = L->o + (size_t)h * HS;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, HS, HS, C, 1.0f, o, C, o, C, 0.0f,
                    g + (size_t)G_O * HS * HS, HS);
    }
}

static const float *gram(const struct comp_layer *L, const struct comp_dims *d, int h, int slot)
{
    return L->gram + ((size_t)h * G_COUNT + slot) * d->HS * d->HS;
}

/* <a, b> of two (HS, HS) blocks with leading dimensions lda, ldb. */
static double inner(const float *a, int lda, const float *b, int ldb, int HS)
{
    double s = 0.0;
    for (int i = 0; i < HS; i++) {
        float acc = 0.0f;
        for (int j = 0; j < HS; j++)
            acc += a[(size_t)i * lda + j] * b[(size_t)i * ldb + j];
        s += acc;
    }
    return s;
}

/* scores (3, NH2 = NH, NH1 = NH), index [t][h2][h1], of writer layer w
 * (needs o, gram) and reader layer r (needs qkv, gram).  Scratch p, ag,
 * ga: 3C*C floats each. */
static void pair_scores(double *scores, const struct comp_layer *w, const struct comp_layer *r,
                        const struct comp_dims *d, float *p, float *ag, float *ga)
{
    const int C = d->C, NH = d->NH, HS = d->HS;
    /* p (3C, C): block ((h2,t), h1) = X2 O1 */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 3 * C, C, C, 1.0f, r->qkv, C, w->o, C,
                0.0f, p, C);
    for (int h1 = 0; h1 < NH; h1++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 3 * C, HS, HS, 1.0f,
                    p + (size_t)h1 * HS, C, gram(w, d, h1, G_V), HS, 0.0f, ag + (size_t)h1 * HS, C);
    static const int partner[3] = {G_K, G_Q, G_O}; /* Q-comp pairs with G_K2, ... */
    for (int h2 = 0; h2 < NH; h2++)
        for (int t = 0; t < 3; t++) {
            size_t off = (size_t)(3 * h2 + t) * HS * C;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, HS, C, HS, 1.0f,
                        gram(r, d, h2, partner[t]), HS, p + off, C, 0.0f, ga + off, C);
        }
    double ov1s[NH];
    for (int h1 = 0; h1 < NH; h1++)
        ov1s[h1] = inner(gram(w, d, h1, G_O), HS, gram(w, d, h1, G_V), HS, HS);
    for (int h2 = 0; h2 < NH; h2++) {
        const double qk2 = inner(gram(r, d, h2, G_Q), HS, gram(r, d, h2, G_K), HS, HS);
        const double ov2 = inner(gram(r, d, h2, G_O), HS, gram(r, d, h2, G_V), HS, HS);
        for (int h1 = 0; h1 < NH; h1++) {
            const double ov1 = ov1s[h1];
            for (int t = 0; t < 3; t++) {
                size_t off = (size_t)(3 * h2 + t) * HS * C + (size_t)h1 * HS;
                double num = inner(ag + off, C, ga + off, C, HS);
                double den = ov1 * (t == 2 ? ov2 : qk2);
                num = num > 0.0 ? num : 0.0;
                scores[((size_t)t * NH + h2) * NH + h1] = den > 0.0 ? sqrt(num / den) : NAN;
            }
        }
    }
}

static int composition_run(const struct battery_ctx *ctx, struct rows *out, struct err *e)
{
    const struct gptneox *m = ctx->model;
    const struct gptneox_config *cfg = &m->cfg;
    const struct comp_dims d = {cfg->d_model, cfg->n_heads, cfg->d_head};
    const int C = d.C, NH = d.NH, HS = d.HS, NL = cfg->n_layers;
    const size_t CC = (size_t)C * C, GS = (size_t)NH * G_COUNT * HS * HS;
    int rc = 0;
    struct comp_layer *layers = calloc((size_t)NL, sizeof *layers);
    struct comp_layer rnd[2] = {{0}};
    float *qkv = malloc(3 * CC * sizeof *qkv), *p = malloc(3 * CC * sizeof *p),
          *ag = malloc(3 * CC * sizeof *ag), *ga = malloc(3 * CC * sizeof *ga);
    float *raw_qkv = NULL, *raw_o = NULL;
    double *scores = malloc((size_t)3 * NH * NH * sizeof *scores);
    double *colsum = malloc((size_t)C * sizeof *colsum);
    int ok = layers && qkv && p && ag && ga && scores && colsum;
    for (int l = 0; ok && l < NL; l++) {
        layers[l].o = malloc(CC * sizeof(float));
        layers[l].gram = malloc(GS * sizeof(float));
        ok = layers[l].o && layers[l].gram;
    }
    if (!ok) {
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory for %d layers of (%d x %d)", NL, C, C);
        goto out;
    }
    /* layer by layer: fold the reader, then score it against every earlier
     * writer (whose centred dense and Grams are kept) */
    for (int l2 = 0; l2 < NL; l2++) {
        const struct gptneox_layer *W = &m->layers[l2];
        struct comp_layer *r = &layers[l2];
        fold_layer(qkv, r->o, W->qkv_w, W->attn_w, W->ln1_w, C, colsum);
        r->qkv = qkv;
        layer_grams(r, &d);
        for (int l1 = 0; l1 < l2; l1++) {
            pair_scores(scores, &layers[l1], r, &d, p, ag, ga);
            for (int t = 0; t < 3; t++)
                for (int h2 = 0; h2 < NH; h2++)
                    for (int h1 = 0; h1 < NH; h1++)
                        if ((rc = rows_add(out, score_names[t], l2, h2, l1 * NH + h1,
                                           scores[((size_t)t * NH + h2) * NH + h1], e)) < 0)
                            goto out;
        }
        r->qkv = NULL;
    }
    /* the random baseline */
    raw_qkv = malloc(3 * CC * sizeof *raw_qkv);
    raw_o = malloc(CC * sizeof *raw_o);
    for (int k = 0; k < 2; k++) {
        rnd[k].qkv = malloc(3 * CC * sizeof(float));
        rnd[k].o = malloc(CC * sizeof(float));
        rnd[k].gram = malloc(GS * sizeof(float));
        ok = ok && rnd[k].qkv && rnd[k].o && rnd[k].gram;
    }
    if (!ok || !raw_qkv || !raw_o) {
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory for the random baseline");
        goto out;
    }
    double sum[3] = {0, 0, 0};
    for (int draw = 0; draw < COMPOSITION_DRAWS; draw++) {
        uint64_t s = COMPOSITION_SEED + (uint64_t)draw;
        for (int k = 0; k < 2; k++) {
            rng_normals_f(raw_qkv, 3 * CC, &s);
            rng_normals_f(raw_o, CC, &s);
            fold_layer(rnd[k].qkv, rnd[k].o, raw_qkv, raw_o, NULL, C, colsum);
            layer_grams(&rnd[k], &d);
        }
        pair_scores(scores, &rnd[0], &rnd[1], &d, p, ag, ga);
        for (int t = 0; t < 3; t++)
            for (int i = 0; i < NH * NH; i++)
                sum[t] += scores[(size_t)t * NH * NH + i];
    }
    for (int t = 0; t < 3; t++)
        if ((rc = rows_add(out, baseline_names[t], -1, -1, -1,
                           sum[t] / ((double)COMPOSITION_DRAWS * NH * NH), e)) < 0)
            goto out;
out:
    for (int k = 0; k < 2; k++) {
        free(rnd[k].gram);
        free(rnd[k].o);
        free(rnd[k].qkv);
    }
    free(raw_o);
    free(raw_qkv);
    for (int l = 0; layers && l < NL; l++) {
        free(layers[l].gram);
        free(layers[l].o);
    }
    free(layers);
    free(colsum);
    free(scores);
    free(ga);
    free(ag);
    free(p);
    free(qkv);
    return rc;
}

const struct battery_item battery_item_composition = {
    .name = "composition",
    .version = 1,
    .needs = 0,
    .metrics = composition_metrics,
    .nmetrics = sizeof composition_metrics / sizeof *composition_metrics,
    .run = composition_run,
};
