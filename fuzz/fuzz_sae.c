/*
 * fuzz_sae.c - sae_load (workers/battery/sae.c) with an arbitrary cfg.json
 * beside a fixed, valid sae_weights.safetensors (d_in 4, d_sae 8, written
 * once with st_write).
 *
 * Checked beyond "no crash": the error contract on failure; on success the
 * dictionary has d_in 4 and d_sae 8 (what the weights hold: a cfg.json
 * claiming other sizes must be refused), a TopK k in [1, d_sae], and the
 * weights are those of the file.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "fuzz/fuzz_util.h"
#include "workers/battery/sae.h"
#include "workers/model/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define DIN 4
#define DSAE 8

static float w_enc[DIN * DSAE], w_dec[DSAE * DIN], b_enc[DSAE], b_dec[DIN];

static void write_weights(void)
{
    for (int i = 0; i < DIN * DSAE; i++) {
        w_enc[i] = (float)i / 32.0f;
        w_dec[i] = (float)(DIN * DSAE - i) / 32.0f;
    }
    for (int i = 0; i < DSAE; i++)
        b_enc[i] = -(float)i / 8.0f;
    for (int i = 0; i < DIN; i++)
        b_dec[i] = (float)i;
    const struct st_write_tensor t[4] = {
        {"W_enc", ST_F32, 2, {DIN, DSAE}, w_enc},
        {"W_dec", ST_F32, 2, {DSAE, DIN}, w_dec},
        {"b_enc", ST_F32, 1, {DSAE}, b_enc},
        {"b_dec", ST_F32, 1, {DIN}, b_dec},
    };
    char path[4200];
    snprintf(path, sizeof path, "%s/sae/%s", fuzz_dir(), SAE_WEIGHTS_FILE);
    fuzz_write("sae/placeholder", "", 0);
    struct err e;
    if (st_write(path, t, 4, NULL, &e) < 0)
        fuzz_fail("cannot write the weights: %s", err_str(&e));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        write_weights();
        ready = 1;
    }
    fuzz_write("sae/" SAE_CFG_FILE, data, size);
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/sae", fuzz_dir());
    struct sae *s = NULL;
    int layer = -7;
    struct err e;
    int rc = sae_load(&s, dir, &layer, &e);
    if (rc < 0) {
        if (s)
            fuzz_fail("sae_load failed but returned a dictionary");
        fuzz_check_err("sae_load", rc, &e);
        return 0;
    }
    if (s->d_in != DIN || s->d_sae != DSAE)
        fuzz_fail("loaded d_in %d, d_sae %d from %d x %d weights", s->d_in, s->d_sae, DIN, DSAE);
    if (s->arch == SAE_TOPK ? s->k < 1 || s->k > DSAE : s->k != 0)
        fuzz_fail("k %d", s->k);
    if (memcmp(s->W_enc, w_enc, sizeof w_enc) || memcmp(s->W_dec, w_dec, sizeof w_dec) ||
        memcmp(s->b_enc, b_enc, sizeof b_enc) || memcmp(s->b_dec, b_dec, sizeof b_dec))
        fuzz_fail("weights differ from the file's");
    if (layer < -1)
        fuzz_fail("hook_layer %d", layer);
    sae_free(s);
    return 0;
}
