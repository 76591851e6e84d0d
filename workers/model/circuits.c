/* Hand-built circuits (see circuits.h for what each head does).
 *
 * Residual layout (C = 1024):
 *   [  0, 256)  TOK   one-hot of the token                  (embedding)
 *   [256, 512)  PREV  one-hot of the previous token         (layer 0 head 0)
 *   [512, 768)  PRED  one-hot of the predicted next token   (layer 1 head 0)
 *   [768, 832)  BAL   each write's -sum/64, so every vector sums to zero
 *   832, 833    SINK  +16, -16 in every embedding: the bulk of the variance
 *   [834,1024)  SPARE pairs (+a, -a) written by the uniform heads
 * LayerNorm subtracts the mean (exactly 0 up to rounding) and divides by
 * sigma = sqrt(|x|^2 / C + eps); |x|^2 is 2*16^2 = 512 plus 1 to 3 from the
 * one-hots, so sigma varies by under 0.3 % across positions and the
 * normalised one-hot entries are 1/sigma ~ 1.41.  Head outputs are scaled
 * by sigma_nominal = sqrt((512 + 2) / C) so they write entries ~1.
 *
 * Query_key_value rows are (head, q/k/v, head dim); attention.dense is
 * (out, in) with in = head * HS + head dim (gptneox.h). */
#include "workers/model/circuits.h"

#include <math.h>
#include <string.h>

#define CV 256   /* vocabulary */
#define CC 1024  /* d_model */
#define CNH 2    /* heads */
#define CHS 512  /* head size */
#define CRD 8    /* rotary dims per head */
#define TOK 0
#define PREV 256
#define PRED 512
#define BAL 768
#define NBAL 64
#define SINK 832
#define SPARE 834
#define NSPARE 95 /* (+a, -a) pairs: 834 .. 1023 */
#define SINK_VALUE 16.0f
#define ROT_BASE 2.2   /* min over offsets != 1 of sum_i (1 - cos((k-1) theta_i)) is 1.15 */
#define PREV_A 18.0    /* score per rotary pair: peak 4 * 18, margin >= 20 */
#define MATCH_SCORE 30.0
#define SINK_SCORE 15.0
#define LOGIT 30.0
#define SPARE_SCALE 0.3f

static const char *const names[] = {"prev-token-circuit", "induction-circuit"};

int circuit_known(const char *name)
{
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (strcmp(name, names[i]) == 0)
            return 1;
    return 0;
}

/* qkv row of (head, part 0 q / 1 k / 2 v, head dim) */
static size_t qkv_row(int h, int part, int d) { return ((size_t)h * 3 + part) * CHS + d; }

/* Write z dims [z0, z0+n) of head h to residual dims [r0, r0+n) with weight
 * a, and -a/NBAL of their sum to each balance dim. */
static void write_onehot(float *attn_w, int h, int z0, int r0, int n, float a)
{
    for (int d = 0; d < n; d++) {
        size_t in = (size_t)h * CHS + z0 + d;
        attn_w[(size_t)(r0 + d) * CC + in] = a;
        for (int k = 0; k < NBAL; k++)
            attn_w[(size_t)(BAL + k) * CC + in] -= a / NBAL;
    }
}

/* A head with no query or key (uniform attention) whose value reads TOK
 * dims 0..NSPARE-1 and writes (+a, -a) pairs into SPARE. */
static void uniform_head(struct gptneox_layer *L, int h, float a)
{
    for (int d = 0; d < NSPARE; d++) {
        L->qkv_w[qkv_row(h, 2, d) * CC + TOK + d] = 1.0f;
        size_t in = (size_t)h * CHS + d;
        L->attn_w[(size_t)(SPARE + 2 * d) * CC + in] = a;
        L->attn_w[(size_t)(SPARE + 2 * d + 1) * CC + in] = -a;
    }
}

/* Layer 0: head 0 previous-token, head 1 uniform. */
static void layer0(struct gptneox_layer *L, float sig)
{
    const double scale = sqrt(PREV_A * sqrt((double)CHS)); /* a * b / sqrt(HS) = PREV_A */
    for (int i = 0; i < CRD / 2; i++) {
        double th = pow(ROT_BASE, -2.0 * i / CRD);
        L->qkv_b[qkv_row(0, 0, i)] = (float)scale;
        L->qkv_b[qkv_row(0, 1, i)] = (float)(scale * cos(th));
        L->qkv_b[qkv_row(0, 1, i + CRD / 2)] = (float)(scale * sin(th));
    }
    for (int d = 0; d < CV; d++)
        L->qkv_w[qkv_row(0, 2, d) * CC + TOK + d] = 1.0f;
    write_onehot(L->attn_w, 0, 0, PREV, CV, sig);
    uniform_head(L, 1, SPARE_SCALE * sig);
}

/* Layer 1: head 0 induction, head 1 uniform. */
static void layer1(struct gptneox_layer *L, float sig)
{
    const double inv = 1.0 / sig, rs = sqrt((double)CHS);
    const float s = (float)(sqrt(MATCH_SCORE * rs) / inv); /* s^2 inv^2 / sqrt(HS) = 30 */
    for (int d = 0; d < CV; d++) {
        L->qkv_w[qkv_row(0, 0, CRD + d) * CC + TOK + d] = s;  /* query: this token */
        L->qkv_w[qkv_row(0, 1, CRD + d) * CC + PREV + d] = s; /* key: its previous token */
    }
    /* every query has 1 on head dim CRD+CV; keys holding token 0 have the
     * matching entry, scaled for a score of SINK_SCORE */
    L->qkv_b[qkv_row(0, 0, CRD + CV)] = 1.0f;
    L->qkv_w[qkv_row(0, 1, CRD + CV) * CC + TOK + 0] = (float)(SINK_SCORE * rs / inv);
    for (int d = 1; d < CV; d++) /* token 0 is the resting place: no value */
        L->qkv_w[qkv_row(0, 2, d) * CC + TOK + d] = 1.0f;
    write_onehot(L->attn_w, 0, 0, PRED, CV, sig);
    uniform_head(L, 1, SPARE_SCALE * sig);
}

int circuit_build(struct gptneox **out, const char *name, struct err *e)
{
    *out = NULL;
    int nl = strcmp(name, "prev-token-circuit") == 0  ? 1
             : strcmp(name, "induction-circuit") == 0 ? 2
                                                      : 0;
    if (!nl)
        return err_set(e, ERR_NOTFOUND, name,
                       "unknown circuit (known: prev-token-circuit, induction-circuit)");
    struct gptneox_config cfg;
    gptneox_config_default(&cfg, CV, CC, nl, CNH, 16);
    cfg.max_positions = 33;
    cfg.rotary_pct = (double)CRD / CHS;
    cfg.rotary_base = ROT_BASE;
    cfg.parallel_residual = 1;
    cfg.tie_word_embeddings = 0;
    cfg.attention_bias = 1;
    int rc = gptneox_config_check(&cfg, name, e);
    if (rc < 0)
        return rc;
    struct gptneox *m = NULL;
    if ((rc = gptneox_create(&m, &cfg, e)) < 0)
        return rc;
    const float sig = (float)sqrt((2.0 * SINK_VALUE * SINK_VALUE + 2.0) / CC);
    for (int v = 0; v < CV; v++) {
        float *x = m->embed + (size_t)v * CC;
        x[TOK + v] = 1.0f;
        for (int k = 0; k < NBAL; k++)
            x[BAL + k] = -1.0f / NBAL;
        x[SINK] = SINK_VALUE;
        x[SINK + 1] = -SINK_VALUE;
        m->unembed[(size_t)v * CC + PRED + v] = (float)(LOGIT * sig);
    }
    layer0(&m->layers[0], sig);
    if (nl == 2)
        layer1(&m->layers[1], sig);
    *out = m;
    return 0;
}
