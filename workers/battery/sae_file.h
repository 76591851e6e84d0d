/*
 * sae_file.h - SAE dictionaries on disk: written in SAELens 6's layout with
 * their provenance, read from SAELens 6, SAELens before 6.0 and EleutherAI's
 * sparsify.
 *
 * Written (sae_save), one directory per dictionary, what SAELens 6's
 * SAE.save_model writes and SAE.load_from_disk reads:
 *   cfg.json                 the SAEConfig.to_dict() keys in its order:
 *                            d_in, d_sae, dtype "float32", device "cpu",
 *                            apply_b_dec_to_input, normalize_activations
 *                            "none", reshape_activations, metadata, (topk: k,
 *                            rescale_acts_by_decoder_norm false),
 *                            architecture.  metadata: sae_lens_version
 *                            (SAE_SAELENS_VERSION, so SAELens does not take
 *                            the file for the pre-6.0 dialect),
 *                            sae_lens_training_version null (not trained by
 *                            SAELens), model_name, model_class_name
 *                            "HookedTransformer", hook_name, hook_head_index
 *                            null, context_size, prepend_bos false,
 *                            dataset_path, seqpos_slice [null],
 *                            model_from_pretrained_kwargs ({"checkpoint_value":
 *                            STEP} or {"revision": REV}, and the flags of
 *                            TransformerLens's from_pretrained_no_processing
 *                            — fold_ln, center_writing_weights,
 *                            center_unembed, fold_value_biases,
 *                            refactor_factored_attn_matrices, all false — so
 *                            the model is loaded as ckptd computes it), and
 *                            "ckptd": {run, step, item, item_version,
 *                            train_tokens, seed, norm_scaling_factor,
 *                            warm_start}
 *   sae_weights.safetensors  F32 W_enc [d_in, d_sae], W_dec [d_sae, d_in],
 *                            b_enc [d_sae], b_dec [d_in] (+ threshold [d_sae]
 *                            for jumprelu), as the dictionary holds them:
 *                            the caller folds its normalisation first
 *                            (sae_fold_saelens, sae.h)
 *   sparsity.safetensors     F32 sparsity [d_sae] = log10 feature density
 * Each file is written atomically; cfg.json last.
 *
 * Read (sae_load), the dialect told apart as SAELens tells it
 * (pretrained_sae_loaders.py, handle_config_defaulting):
 *   SAELens 6   sae_weights.safetensors beside a cfg.json whose
 *               sae_lens_version (top level, else metadata's) is a PEP 440
 *               version >= 6.0.0rc0.  architecture "standard", "topk" (k,
 *               default 100; rescale_acts_by_decoder_norm is folded into the
 *               weights, sae_fold_decoder_norm) or "jumprelu" (tensor
 *               threshold); the other architectures of SAELens's registry
 *               are refused by name.  dtype float32/float64/float16/
 *               bfloat16 (or "torch."-prefixed): tensors are F32, F64, F16
 *               or BF16 and are cast to that dtype as SAELens casts them,
 *               then computed in F32.  apply_b_dec_to_input as given.
 *               normalize_activations "none", or "expected_average_only_in"
 *               with activation_scaler.json ({"scaling_factor": s}, what
 *               SAELens writes beside training checkpoints) folded in
 *               (sae_fold_saelens); the runtime normalisations
 *               ("constant_norm_rescale", "layer_norm") are refused.
 *               reshape_activations "none" or "hook_z" (ckptd's hook_z rows
 *               are already [n_heads * d_head]).  hook_head_index must be
 *               null.  The state dict is loaded strictly: every tensor the
 *               architecture has, with its exact shape, and no other
 *               ("scaling_factor" of all ones is dropped, as SAELens does).
 *   pre-6.0     the same files with no version or an older one: converted
 *               as handle_pre_6_0_config converts it (hook_point ->
 *               hook_name, activation_fn_str -> activation_fn, topk with
 *               activation_fn_kwargs.k -> architecture "topk", boolean
 *               normalize_activations, the defaults), then read as above.
 *               An activation_fn other than relu/topk, which SAELens 6
 *               would silently read as ReLU, is refused.
 *   sparsify    sae.safetensors beside a cfg.json of sparsify's
 *               SparseCoderConfig (d_in, num_latents or expansion_factor,
 *               k, activation "topk"): encoder.weight [d_sae, d_in] is
 *               W_enc^T, encoder.bias is b_enc, W_dec [d_sae, d_in] is
 *               W_dec as it stands, b_dec is b_dec; b_dec is subtracted
 *               from the input (sparsify always does).  sparsify's encode
 *               (ReLU, then the k largest) and TopK's (the k largest, then
 *               ReLU) give the same codes.  The hook comes from the folder
 *               name: layers.N or layers_N -> blocks.N.hook_resid_post,
 *               layers.N.mlp -> blocks.N.hook_mlp_out, layers.N.attention ->
 *               blocks.N.hook_attn_out, embed_in or embed_tokens ->
 *               hook_embed.  groupmax, transcoders and skip connections are
 *               refused.
 * Every value must be finite.  Errors name the file and the key or tensor.
 *
 *     struct sae *s = NULL;
 *     struct sae_info info;
 *     if (sae_load(&s, "saes/layers.3", &info, &e) < 0) ...   // err_str(&e)
 *     // info.hook_name "blocks.3.hook_resid_post", info.format SAE_FORMAT_SPARSIFY
 *     sae_free(s);
 */
#ifndef CKPTD_SAE_FILE_H
#define CKPTD_SAE_FILE_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "workers/battery/sae.h"

/* The SAELens version whose loader the written files were checked against,
 * recorded as metadata.sae_lens_version. */
#define SAE_SAELENS_VERSION "6.18.0"

#define SAE_CFG_FILE "cfg.json"
#define SAE_WEIGHTS_FILE "sae_weights.safetensors"
#define SAE_SPARSITY_FILE "sparsity.safetensors"
#define SAE_SCALER_FILE "activation_scaler.json"
#define SAE_SPARSIFY_WEIGHTS_FILE "sae.safetensors"

/* Provenance written into cfg.json's metadata (NULL strings are null). */
struct sae_meta {
    const char *model_name;   /* TransformerLens's name of the model ("pythia-70m-deduped") */
    const char *hook_name;    /* "blocks.3.hook_resid_post" */
    int context_size;         /* tokens per eval sequence */
    const char *dataset_path; /* where the tokens came from */
    long long step;           /* the checkpoint's step, or -1 */
    const char *revision;     /* when non-NULL, {"revision": REV} instead of checkpoint_value */
    /* metadata.ckptd: */
    const char *run;
    const char *item;
    int item_version;
    double norm_scaling_factor; /* the s folded into the weights */
    long train_tokens;
    uint64_t seed;
    int warm_start;
};

/* Write s into directory dir (which must exist): sae_weights.safetensors,
 * sparsity.safetensors when log_sparsity (d_sae) is non-NULL, then cfg.json.
 * s must subtract b_dec (apply_b_dec 1).  Errors: ERR_IO naming the file,
 * ERR_NOMEM, ERR_INVALID (apply_b_dec 0). */
int sae_save(const struct sae *s, const char *dir, const struct sae_meta *meta,
             const float *log_sparsity, struct err *e) CK_WUR;

enum sae_format {
    SAE_FORMAT_SAELENS,        /* SAELens >= 6.0 */
    SAE_FORMAT_SAELENS_LEGACY, /* SAELens before 6.0 */
    SAE_FORMAT_SPARSIFY,       /* EleutherAI sparsify */
    SAE_FORMAT_COUNT
};
/* "saelens", "saelens-legacy", "sparsify". */
const char *sae_format_name(enum sae_format f);

/* What a dictionary's files say besides its weights. */
struct sae_info {
    enum sae_format format;
    char hook_name[128];  /* metadata.hook_name, or from sparsify's folder; "" unknown */
    char model_name[256]; /* metadata.model_name, or sparsify's ../config.json "model"; "" */
    char dtype[16];       /* what it is computed as: "float32", "float16", "bfloat16", "float64" */
    char version[64];     /* sae_lens_version, "" when none */
    int hook_z;           /* reshape_activations "hook_z" */
    int rescaled;         /* 1: rescale_acts_by_decoder_norm was folded in */
    double scaler;        /* activation_scaler.json's factor folded in, or 0 */
    double norm_scaling_factor; /* metadata.ckptd.norm_scaling_factor, or 0 */
    long long step;       /* metadata.ckptd.step, or -1 */
};

/* Read the dictionary in dir (see the header comment).  On success *out is
 * the caller's (sae_free) and *info (may be NULL) is filled; on failure
 * *out is NULL.  Errors: ERR_NOTFOUND (cfg.json or both weight files
 * missing), ERR_FORMAT (malformed JSON, keys, tensors, shapes),
 * ERR_UNSUPPORTED (valid for its tool but not read here: an architecture,
 * a normalisation, a dtype), ERR_NUMERIC (a non-finite value), ERR_IO,
 * ERR_NOMEM; the message names the file and the key or tensor. */
int sae_load(struct sae **out, const char *dir, struct sae_info *info, struct err *e) CK_WUR;

/* Is `v` a PEP 440 version >= 6.0.0rc0 (SAELens's test for its 6.x
 * dialect)?  *is6 gets 1 or 0.  ERR_FORMAT when v is not a version. */
int sae_version_is_6(const char *v, int *is6, struct err *e) CK_WUR;

/* The hook a sparsify hookpoint folder name stands for (see above), into
 * hook (n bytes); ERR_UNSUPPORTED naming it otherwise. */
int sae_sparsify_hook(const char *folder, char *hook, size_t n, struct err *e) CK_WUR;

#endif
