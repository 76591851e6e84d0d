/*
 * sae_formats.h - write an SAE dictionary the way other tools leave one on
 * disk, for the tests of sae_load and sae_fixed: SAELens 6 (standard, topk,
 * jumprelu; tensors F32, F16 or BF16, cfg dtype to match), SAELens before
 * 6.0 (activation_fn_str, activation_fn_kwargs, hook_point) and sparsify
 * (cfg.json + sae.safetensors with encoder.weight [d_sae, d_in]).  Written
 * here by hand, not by sae_save, so the reader meets files it did not
 * write.  Header-only (static), for test_battery_sae_fixed.c, whose --zoo
 * and --plant-series modes write them for tests/sae_saelens.sh and
 * tests/daemon_sae_fixed.sh.
 *
 *     sae_fmt_write(s, "dicts/jumprelu_bf16", SAE_FMT_SAELENS, ST_BF16,
 *                   "blocks.0.hook_resid_post", &e);
 *     sae_fmt_write(s, "dicts/layers.0", SAE_FMT_SPARSIFY, ST_F32, NULL, &e); // TopK only
 */
#ifndef CKPTD_TESTS_SAE_FORMATS_H
#define CKPTD_TESTS_SAE_FORMATS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/path.h"
#include "workers/battery/sae.h"
#include "workers/model/safetensors.h"
#include "workers/model/tensor.h"

enum sae_fmt_kind {
    SAE_FMT_SAELENS,  /* SAELens 6 */
    SAE_FMT_LEGACY,   /* SAELens before 6.0 (standard/relu or topk) */
    SAE_FMT_SPARSIFY, /* EleutherAI sparsify (TopK); the folder names the hook */
};

/* src (n) as dtype dt into a malloc'd buffer (F32: a copy). */
static inline void *sae_fmt_convert(const float *src, size_t n, enum st_dtype dt)
{
    if (dt == ST_F32) {
        float *o = malloc(n * sizeof *o);
        if (o)
            memcpy(o, src, n * sizeof *o);
        return o;
    }
    uint16_t *o = malloc(n * sizeof *o);
    if (o) {
        if (dt == ST_F16)
            tensor_f32_to_f16(o, src, n);
        else
            tensor_f32_to_bf16(o, src, n);
    }
    return o;
}

static inline const char *sae_fmt_dtype_name(enum st_dtype dt)
{
    return dt == ST_F16 ? "float16" : dt == ST_BF16 ? "bfloat16" : "float32";
}

/* Write s into dir (created) as kind, tensors as dt, naming hook (unused
 * for sparsify).  0 or a negative code. */
static inline int sae_fmt_write(const struct sae *s, const char *dir, enum sae_fmt_kind kind,
                                enum st_dtype dt, const char *hook, struct err *e)
{
    const int C = s->d_in, S = s->d_sae;
    char path[4096];
    int rc = path_mkdir_p(dir, e);
    if (rc < 0)
        return rc;
    float *enc_t = NULL; /* sparsify's encoder.weight [S, C] */
    if (kind == SAE_FMT_SPARSIFY) {
        enc_t = malloc((size_t)C * S * sizeof *enc_t);
        if (!enc_t)
            return err_set(e, ERR_NOMEM, dir, "out of memory");
        for (int i = 0; i < S; i++)
            for (int j = 0; j < C; j++)
                enc_t[(size_t)i * C + j] = s->W_enc[(size_t)j * S + i];
    }
    const char *names[5] = {kind == SAE_FMT_SPARSIFY ? "encoder.weight" : "W_enc",
                            kind == SAE_FMT_SPARSIFY ? "encoder.bias" : "b_enc", "W_dec", "b_dec",
                            "threshold"};
    const float *srcs[5] = {enc_t ? enc_t : s->W_enc, s->b_enc, s->W_dec, s->b_dec, s->threshold};
    const size_t counts[5] = {(size_t)C * S, (size_t)S, (size_t)C * S, (size_t)C, (size_t)S};
    struct st_write_tensor w[5];
    void *bufs[5] = {NULL, NULL, NULL, NULL, NULL};
    const int nt = s->threshold && kind == SAE_FMT_SAELENS ? 5 : 4;
    for (int t = 0; t < nt; t++) {
        bufs[t] = sae_fmt_convert(srcs[t], counts[t], dt);
        if (!bufs[t]) {
            rc = err_set(e, ERR_NOMEM, dir, "out of memory");
            goto out;
        }
        w[t] = (struct st_write_tensor){names[t], dt, 1, {(int64_t)counts[t]}, bufs[t]};
    }
    if (kind == SAE_FMT_SPARSIFY) {
        w[0].ndim = 2, w[0].shape[0] = S, w[0].shape[1] = C;
    } else {
        w[0].ndim = 2, w[0].shape[0] = C, w[0].shape[1] = S;
    }
    w[2].ndim = 2, w[2].shape[0] = S, w[2].shape[1] = C;
    static const char *const fmt_pt[] = {"format", "pt", NULL};
    snprintf(path, sizeof path, "%s/%s", dir,
             kind == SAE_FMT_SPARSIFY ? "sae.safetensors" : "sae_weights.safetensors");
    if ((rc = st_write(path, w, (size_t)nt, fmt_pt, e)) < 0)
        goto out;
    snprintf(path, sizeof path, "%s/cfg.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        rc = err_set(e, ERR_IO, path, "cannot write");
        goto out;
    }
    const char *dtn = sae_fmt_dtype_name(dt);
    if (kind == SAE_FMT_SAELENS) {
        fprintf(f,
                "{\"d_in\": %d, \"d_sae\": %d, \"dtype\": \"%s\", \"device\": \"cuda\", "
                "\"apply_b_dec_to_input\": %s, \"normalize_activations\": \"none\", "
                "\"reshape_activations\": \"none\", \"metadata\": {\"sae_lens_version\": \"6.5.1\", "
                "\"sae_lens_training_version\": \"6.5.1\", \"model_name\": \"pythia-70m-deduped\", "
                "\"hook_name\": \"%s\", \"hook_head_index\": null, \"context_size\": 1024, "
                "\"prepend_bos\": true, \"dataset_path\": \"monology/pile-uncopyrighted\", "
                "\"model_from_pretrained_kwargs\": {}}",
                C, S, dtn, s->apply_b_dec ? "true" : "false", hook);
        if (s->arch == SAE_TOPK)
            fprintf(f, ", \"k\": %d, \"rescale_acts_by_decoder_norm\": false", s->k);
        fprintf(f, ", \"architecture\": \"%s\"}\n", sae_arch_name(s->arch));
    } else if (kind == SAE_FMT_LEGACY) {
        char kw[32] = "";
        if (s->arch == SAE_TOPK)
            snprintf(kw, sizeof kw, "\"k\": %d", s->k);
        fprintf(f,
                "{\"architecture\": \"standard\", \"d_in\": %d, \"d_sae\": %d, \"dtype\": \"%s\", "
                "\"device\": \"cpu\", \"model_name\": \"pythia-70m-deduped\", \"hook_point\": \"%s\", "
                "\"hook_point_layer\": 0, \"hook_point_head_index\": null, "
                "\"activation_fn_str\": \"%s\", \"activation_fn_kwargs\": {%s}, "
                "\"apply_b_dec_to_input\": true, \"finetuning_scaling_factor\": false, "
                "\"context_size\": 128, \"prepend_bos\": true, \"normalize_activations\": false, "
                "\"sae_lens_training_version\": \"3.13.0\"}\n",
                C, S, dtn, hook, s->arch == SAE_TOPK ? "topk" : "relu", kw);
    } else {
        fprintf(f,
                "{\"activation\": \"topk\", \"expansion_factor\": 32, \"normalize_decoder\": true, "
                "\"num_latents\": %d, \"k\": %d, \"multi_topk\": false, \"skip_connection\": false, "
                "\"transcode\": false, \"d_in\": %d}\n",
                S, s->k, C);
    }
    if (fclose(f) != 0)
        rc = err_set(e, ERR_IO, path, "cannot write");
out:
    for (int t = 0; t < 5; t++)
        free(bufs[t]);
    free(enc_t);
    return rc;
}

#endif
