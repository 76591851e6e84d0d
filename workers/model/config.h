/*
 * config.h - the GPT-NeoX hyper-parameters a checkpoint's config.json gives.
 *
 * Reads HuggingFace's config.json for `GPTNeoXForCausalLM` (Pythia) with
 * jansson and checks every field the model uses.  Both spellings of the
 * rotary settings are understood: the original `rotary_pct` and
 * `rotary_emb_base`, and the newer `partial_rotary_factor` / `rope_theta`,
 * top-level or inside `rope_parameters`.  When two spellings are present
 * they must agree.  Defaults are HuggingFace's GPTNeoXConfig defaults for
 * the optional fields; the five size fields are required.
 *
 *     struct gptneox_config cfg;
 *     if (gptneox_config_load(&cfg, "step1000/config.json", &e) < 0) ...
 *     // cfg.d_model, cfg.n_heads, cfg.rotary_ndims, ...
 */
#ifndef CKPTD_CONFIG_H
#define CKPTD_CONFIG_H

#include <stddef.h>

#include "common/err.h"

enum gptneox_act {
    ACT_GELU,       /* exact erf GELU ("gelu") */
    ACT_GELU_TANH,  /* tanh approximation ("gelu_new", "gelu_pytorch_tanh", "gelu_fast") */
    ACT_COUNT
};

/* Bounds on the sizes, checked when a config is parsed or checked, before
 * anything is allocated for a model.  GPT-NeoX-20B, the largest GPT-NeoX
 * model, has vocab_size 50432, hidden_size 6144, 44 layers, 64 heads,
 * intermediate_size 24576 and 2048 positions; the bounds leave ample room
 * above it while keeping token ids (int32) and the products the model
 * forms (3 * hidden_size, heads x positions) far from overflow.  A value
 * outside is an error naming the field and the allowed range. */
#define CONFIG_MAX_VOCAB (1 << 24)     /* vocab_size */
#define CONFIG_MAX_D_MODEL (1 << 16)   /* hidden_size */
#define CONFIG_MAX_LAYERS 1024         /* num_hidden_layers */
#define CONFIG_MAX_HEADS 1024          /* num_attention_heads (and <= hidden_size) */
#define CONFIG_MAX_D_MLP (1 << 18)     /* intermediate_size */
#define CONFIG_MAX_POSITIONS (1 << 20) /* max_position_embeddings */

struct gptneox_config {
    int vocab_size;          /* V: rows of embed_in / embed_out */
    int d_model;             /* C: hidden_size */
    int n_layers;            /* L: num_hidden_layers */
    int n_heads;             /* NH: num_attention_heads */
    int d_head;              /* HS = C / NH */
    int d_mlp;               /* F: intermediate_size */
    int max_positions;       /* max_position_embeddings */
    double rotary_pct;       /* fraction of each head's dims rotated */
    int rotary_ndims;        /* int(HS * rotary_pct), even */
    double rotary_base;      /* rotary_emb_base / rope_theta */
    double layer_norm_eps;
    int parallel_residual;   /* use_parallel_residual */
    int tie_word_embeddings; /* embed_out shares embed_in */
    int attention_bias;      /* query_key_value and dense carry biases */
    enum gptneox_act act;
    char torch_dtype[16];    /* informational: "float16", "float32", ... or "" */
};

/* Parse and validate config JSON text. `ctx` names the source in errors.
 * On failure cfg is left zeroed and ERR_FORMAT / ERR_UNSUPPORTED returned. */
int gptneox_config_parse(struct gptneox_config *cfg, const char *text, size_t len,
                         const char *ctx, struct err *e) CK_WUR;

/* Read and parse a config.json file. */
int gptneox_config_load(struct gptneox_config *cfg, const char *path,
                        struct err *e) CK_WUR;

/* A small valid config (tests, benchmarks): every optional field at its
 * default, rotary_pct 0.25. */
void gptneox_config_default(struct gptneox_config *cfg, int V, int C, int L,
                            int NH, int F);

/* The shapes of a named model: "tiny" (V 512, C 64, 2 layers, 4 heads),
 * "pythia-14m", "pythia-70m", "pythia-160m", "pythia-410m" (Pythia's
 * published configs).  Returns 0, or ERR_NOTFOUND for an unknown name. */
int gptneox_config_preset(struct gptneox_config *cfg, const char *name) CK_WUR;

/* Recompute derived fields (d_head, rotary_ndims) and check consistency:
 * each size within its bound above, num_attention_heads dividing
 * hidden_size, the rotary fraction in [0, 1] giving an even number of
 * dims, a finite positive rotary base, layer_norm_eps in (0, 1).  Errors
 * (ERR_FORMAT; ERR_UNSUPPORTED for odd rotary dims) name the field by its
 * config.json name and the allowed range.  Used by gptneox_config_parse
 * and after filling a config by hand. */
int gptneox_config_check(struct gptneox_config *cfg, const char *ctx,
                         struct err *e) CK_WUR;

/* Parameter count of the model the config describes. */
size_t gptneox_config_nparams(const struct gptneox_config *cfg);

/* Write a config.json a HuggingFace loader accepts. */
int gptneox_config_save(const struct gptneox_config *cfg, const char *path,
                        struct err *e) CK_WUR;

#endif
