/* integrity v1: a fingerprint of the weights from which the daemon judges
 * whether a checkpoint is what its label says (daemon/detect/integrity.h).
 *
 * The sketch is a count sketch (Charikar, Chen & Farach-Colton 2002; as a
 * sparse Johnson-Lindenstrauss transform, Kane & Nelson 2014): element i of
 * a tensor adds sign(i) * w_i to bucket(i), both drawn from a hash of the
 * tensor's name and i, so the same tensor gets the same projection at every
 * checkpoint of every run.  The map is linear, hence the sketch of a
 * difference is the difference of the sketches, and for a difference
 * vector v, E |S v|^2 = |v|^2 with a relative spread of about sqrt(2 / K)
 * when v is spread over many elements (8.8 % of the squared distance, 4.4 %
 * of the distance at K = 256): distances and cosines between sketches stand
 * for distances and cosines between checkpoints, at one pass over the
 * weights (no matrix of K x parameters, which a dense Gaussian projection
 * of a 160M model would need 40 G multiply-adds for).
 *
 * The hash: state = FNV-1a 64 of the tensor's HuggingFace name (bytes, no
 * NUL) xor INTEGRITY_SALT; element i (row-major, 0-based) takes the
 * (i+1)-th splitmix64 output z of that state (rng.h), its bucket in the
 * whole-model sketch is z & (INTEGRITY_K - 1), in the tensor's own sketch
 * (z >> 8) & (INTEGRITY_TENSOR_K - 1), and its sign is - when bit 63 of z
 * is set.  Sums are in double, element by element in row-major order.
 * tests/reference/integrity_ref.py computes the same with numpy.
 *
 * Tensors, with their (layer, head) keys: per layer L, head 0..11 =
 * input_layernorm.weight, .bias, attention.query_key_value.weight, .bias,
 * attention.dense.weight, .bias, post_attention_layernorm.weight, .bias,
 * mlp.dense_h_to_4h.weight, .bias, mlp.dense_4h_to_h.weight, .bias (under
 * gpt_neox.layers.L.); layer -1: head 0 gpt_neox.embed_in.weight,
 * 1 gpt_neox.final_layer_norm.weight, 2 .bias, 3 embed_out.weight (absent
 * when tied).  A bias the model lacks is left out. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "workers/battery/battery.h"
#include "common/rng.h"

#define TENSOR_HEAD_MEANING                                                                       \
    "tensor: with layer L, 0 input_layernorm.weight, 1 .bias, 2 attention.query_key_value.weight, " \
    "3 .bias, 4 attention.dense.weight, 5 .bias, 6 post_attention_layernorm.weight, 7 .bias, "     \
    "8 mlp.dense_h_to_4h.weight, 9 .bias, 10 mlp.dense_4h_to_h.weight, 11 .bias; with layer -1, "  \
    "0 embed_in, 1 final_layer_norm.weight, 2 final_layer_norm.bias, 3 embed_out (untied only)"
#define TENSOR_LAYER_MEANING "layer L, or -1 for the embeddings and the final LayerNorm"

static const struct metric_def integrity_metrics[] = {
    {"sketch", "dimensionless", "count sketch of every parameter (daemon/detect/integrity.h): "
     "distances and cosines between two checkpoints' sketches approximate those of their weights",
     "", "", "bucket k of INTEGRITY_K"},
    {"tensor_sketch", "dimensionless", "count sketch of one tensor (INTEGRITY_TENSOR_K buckets)",
     TENSOR_LAYER_MEANING, TENSOR_HEAD_MEANING, "bucket k"},
    {"tensor_norm", "dimensionless", "L2 norm of one tensor (every element, in double)",
     TENSOR_LAYER_MEANING, TENSOR_HEAD_MEANING, ""},
    {"param_norm", "dimensionless", "L2 norm of every parameter (a tied embedding once)", "", "", ""},
};

static const char *const layer_tensors[INTEGRITY_LAYER_TENSORS] = {
    "input_layernorm.weight", "input_layernorm.bias", "attention.query_key_value.weight",
    "attention.query_key_value.bias", "attention.dense.weight", "attention.dense.bias",
    "post_attention_layernorm.weight", "post_attention_layernorm.bias", "mlp.dense_h_to_4h.weight",
    "mlp.dense_h_to_4h.bias", "mlp.dense_4h_to_h.weight", "mlp.dense_4h_to_h.bias",
};

uint64_t integrity_name_hash(const char *name)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a 64 */
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        h ^= *p;
        h *= 0x100000001b3ull;
    }
    return h ^ INTEGRITY_SALT;
}

void integrity_sketch_add(const float *x, size_t n, const char *name, double *whole, double *own,
                          double *sumsq)
{
    uint64_t state = integrity_name_hash(name);
    double ss = 0.0;
    for (size_t i = 0; i < n; i++) {
        uint64_t z = rng_next(&state);
        double v = (z >> 63) ? -(double)x[i] : (double)x[i];
        whole[z & (INTEGRITY_K - 1)] += v;
        own[(z >> 8) & (INTEGRITY_TENSOR_K - 1)] += v;
        ss += (double)x[i] * x[i];
    }
    *sumsq = ss;
}

/* Sketch one tensor (absent: nothing) and write its rows. */
static int add_tensor(struct rows *out, const float *x, size_t n, const char *name, int layer, int head,
                      double *whole, double *total, struct err *e)
{
    if (!x)
        return 0;
    double own[INTEGRITY_TENSOR_K] = {0}, ss = 0.0;
    integrity_sketch_add(x, n, name, whole, own, &ss);
    *total += ss;
    for (int k = 0; k < INTEGRITY_TENSOR_K; k++) {
        int rc = rows_add(out, "tensor_sketch", layer, head, k, own[k], e);
        if (rc < 0)
            return rc;
    }
    return rows_add(out, "tensor_norm", layer, head, -1, sqrt(ss), e);
}

static int integrity_run(const struct battery_ctx *ctx, struct rows *out, struct err *e)
{
    const struct gptneox *m = ctx->model;
    const struct gptneox_config *c = &m->cfg;
    const size_t C = (size_t)c->d_model, F = (size_t)c->d_mlp, V = (size_t)c->vocab_size;
    double whole[INTEGRITY_K] = {0}, total = 0.0;
    char name[128];
    int rc = add_tensor(out, m->embed, V * C, "gpt_neox.embed_in.weight", -1, 0, whole, &total, e);
    for (int l = 0; rc == 0 && l < c->n_layers; l++) {
        const struct gptneox_layer *L = &m->layers[l];
        const float *t[INTEGRITY_LAYER_TENSORS] = {L->ln1_w, L->ln1_b, L->qkv_w, L->qkv_b, L->attn_w,
                                                   L->attn_b, L->ln2_w, L->ln2_b, L->fc_w, L->fc_b,
                                                   L->proj_w, L->proj_b};
        const size_t len[INTEGRITY_LAYER_TENSORS] = {C, C, 3 * C * C, 3 * C, C * C, C,
                                                     C, C, F * C, F, C * F, C};
        for (int k = 0; rc == 0 && k < INTEGRITY_LAYER_TENSORS; k++) {
            snprintf(name, sizeof name, "gpt_neox.layers.%d.%s", l, layer_tensors[k]);
            rc = add_tensor(out, t[k], len[k], name, l, k, whole, &total, e);
        }
    }
    if (rc == 0)
        rc = add_tensor(out, m->lnf_w, C, "gpt_neox.final_layer_norm.weight", -1, 1, whole, &total, e);
    if (rc == 0)
        rc = add_tensor(out, m->lnf_b, C, "gpt_neox.final_layer_norm.bias", -1, 2, whole, &total, e);
    if (rc == 0 && !c->tie_word_embeddings)
        rc = add_tensor(out, m->unembed, V * C, "embed_out.weight", -1, 3, whole, &total, e);
    for (int k = 0; rc == 0 && k < INTEGRITY_K; k++)
        rc = rows_add(out, "sketch", -1, -1, k, whole[k], e);
    if (rc == 0)
        rc = rows_add(out, "param_norm", -1, -1, -1, sqrt(total), e);
    return rc;
}

const struct battery_item battery_item_integrity = {
    .name = "integrity",
    .version = 1,
    .needs = 0,
    .metrics = integrity_metrics,
    .nmetrics = sizeof integrity_metrics / sizeof *integrity_metrics,
    .run = integrity_run,
};
