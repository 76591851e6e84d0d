/*
 * fuzz_model_config.c - gptneox_config_parse (workers/model/config.c) on
 * arbitrary bytes as a checkpoint's config.json.
 *
 * Checked beyond "no crash": the error contract (and a zeroed config) on
 * failure; on success what the model relies on: every size positive and
 * within the documented bounds, d_head * n_heads == d_model, rotary_ndims
 * even and at most d_head, a finite positive rotary base and an eps in
 * (0, 1), and a parameter count that gptneox_config_nparams computes
 * without overflow (it is checked by gptneox_config_check).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "fuzz/fuzz_util.h"
#include "workers/model/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct gptneox_config cfg, zero;
    struct err e;
    memset(&zero, 0, sizeof zero);
    int rc = gptneox_config_parse(&cfg, (const char *)data, size, "config.json", &e);
    if (rc < 0) {
        fuzz_check_err("gptneox_config_parse", rc, &e);
        if (memcmp(&cfg, &zero, sizeof cfg) != 0)
            fuzz_fail("config not zeroed after a failure");
        return 0;
    }
    if (cfg.vocab_size < 1 || cfg.vocab_size > CONFIG_MAX_VOCAB || cfg.d_model < 1 ||
        cfg.d_model > CONFIG_MAX_D_MODEL || cfg.n_layers < 1 || cfg.n_layers > CONFIG_MAX_LAYERS ||
        cfg.n_heads < 1 || cfg.n_heads > cfg.d_model || cfg.d_mlp < 1 ||
        cfg.d_mlp > CONFIG_MAX_D_MLP || cfg.max_positions < 1 ||
        cfg.max_positions > CONFIG_MAX_POSITIONS)
        fuzz_fail("accepted sizes out of bounds: V %d C %d L %d NH %d F %d P %d", cfg.vocab_size,
                  cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_mlp, cfg.max_positions);
    if (cfg.d_head * cfg.n_heads != cfg.d_model)
        fuzz_fail("d_head %d x n_heads %d != d_model %d", cfg.d_head, cfg.n_heads, cfg.d_model);
    if (cfg.rotary_ndims < 0 || cfg.rotary_ndims % 2 || cfg.rotary_ndims > cfg.d_head)
        fuzz_fail("rotary_ndims %d with d_head %d", cfg.rotary_ndims, cfg.d_head);
    if (!(cfg.rotary_base > 0) || !isfinite(cfg.rotary_base) || !(cfg.layer_norm_eps > 0) ||
        !(cfg.layer_norm_eps < 1))
        fuzz_fail("rotary base %g / eps %g accepted", cfg.rotary_base, cfg.layer_norm_eps);
    if (gptneox_config_nparams(&cfg) == 0)
        fuzz_fail("zero parameters");
    return 0;
}
