/*
 * fuzz_sae.c - sae_load (workers/battery/sae.c) with an arbitrary cfg.json
 * beside a fixed, valid sae_weights.safetensors (d_in 4, d_sae 6, written
 * once with st_write, the sizes of tests/cases/sae).
 *
 * Checked beyond "no crash": the error contract on failure; on success the
 * dictionary has d_in 4 and d_sae 6 (what the weights hold: a cfg.json
 * claiming other sizes must be refused, before memory is taken for them),
 * a TopK k in [1, d_sae], the SAELens format (there is no sparsify file),
 * every weight finite.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "fuzz/fuzz_util.h"
#include "workers/battery/sae.h"
#include "workers/battery/sae_file.h"
#include "workers/model/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define DIN 4
#define DSAE 6

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
    struct sae_info info;
    struct err e;
    int rc = sae_load(&s, dir, &info, &e);
    if (rc < 0) {
        if (s)
            fuzz_fail("sae_load failed but returned a dictionary");
        fuzz_check_err("sae_load", rc, &e);
        return 0;
    }
    if (s->d_in != DIN || s->d_sae != DSAE)
        fuzz_fail("loaded d_in %d, d_sae %d from %d x %d weights", s->d_in, s->d_sae, DIN, DSAE);
    if (s->arch == SAE_TOPK && (s->k < 1 || s->k > DSAE))
        fuzz_fail("TopK k %d with d_sae %d", s->k, DSAE);
    if (info.format == SAE_FORMAT_SPARSIFY)
        fuzz_fail("read as sparsify without sae.safetensors");
    /* the weights as written, up to cfg.json's dtype cast and folds: at
     * least finite, as sae_load promises */
    const float *w[4] = {s->W_enc, s->W_dec, s->b_enc, s->b_dec};
    const size_t n[4] = {DIN * DSAE, DSAE * DIN, DSAE, DIN};
    for (int t = 0; t < 4; t++)
        for (size_t i = 0; i < n[t]; i++)
            if (!isfinite(w[t][i]))
                fuzz_fail("tensor %d holds a non-finite value at %zu", t, i);
    sae_free(s);
    return 0;
}
