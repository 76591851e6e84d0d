/*
 * fuzz_probe_set.c - probe_set_load and probe_set_check
 * (workers/battery/probe_set.c) on arbitrary bytes as a probe dataset.
 *
 * Checked beyond "no crash": the error contract on failure; on success the
 * promises of probe_set.h: at least 5 sequences, offsets increasing from 0,
 * every id non-negative, every labelled position inside its sequence, a
 * class index (classification) in [0, nclasses) with nclasses >= 2, and
 * labelled positions on both sides of the held-out split; then the set is
 * checked against the "tiny" preset's model and Pythia-70m's.
 */
#include <stdint.h>

#include "fuzz/fuzz_util.h"
#include "workers/battery/probe_set.h"
#include "workers/model/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write("probe.json", data, size);
    struct probe_set *ps = NULL;
    struct err e;
    int rc = probe_set_load(&ps, path, &e);
    if (rc < 0) {
        if (ps)
            fuzz_fail("probe_set_load failed but returned a set");
        fuzz_check_err("probe_set_load", rc, &e);
        return 0;
    }
    if (ps->nseq < PROBE_SET_HOLDOUT_EVERY || ps->offsets[0] != 0)
        fuzz_fail("%d sequences, first offset %d", ps->nseq, ps->offsets[0]);
    for (int i = 0; i < ps->nseq; i++) {
        if (ps->offsets[i + 1] <= ps->offsets[i])
            fuzz_fail("sequence %d is empty or offsets decrease", i);
        for (int t = ps->offsets[i]; t < ps->offsets[i + 1]; t++)
            if (ps->tokens[t] < 0)
                fuzz_fail("negative token id in sequence %d", i);
    }
    int held = 0, fit = 0;
    for (int k = 0; k < ps->nlab; k++) {
        int s = ps->lab_seq[k], p = ps->lab_pos[k];
        if (s < 0 || s >= ps->nseq || p < 0 || p >= ps->offsets[s + 1] - ps->offsets[s])
            fuzz_fail("label %d at sequence %d position %d is outside the data", k, s, p);
        if (ps->kind == PROBE_KIND_CLASSIFICATION &&
            (ps->lab_class[k] < 0 || ps->lab_class[k] >= ps->nclasses))
            fuzz_fail("label %d has class %d of %d", k, ps->lab_class[k], ps->nclasses);
        if (probe_set_heldout(ps, k))
            held++;
        else
            fit++;
    }
    if (!held || !fit)
        fuzz_fail("%d held-out and %d fitting labels", held, fit);
    if (ps->kind == PROBE_KIND_CLASSIFICATION && ps->nclasses < 2)
        fuzz_fail("%d classes", ps->nclasses);
    struct gptneox_config cfg;
    if (gptneox_config_preset(&cfg, "tiny") != 0)
        fuzz_fail("no tiny preset");
    rc = probe_set_check(ps, &cfg, &e);
    if (rc < 0)
        fuzz_check_err("probe_set_check", rc, &e);
    if (gptneox_config_preset(&cfg, "pythia-70m") != 0)
        fuzz_fail("no pythia-70m preset");
    rc = probe_set_check(ps, &cfg, &e);
    if (rc < 0)
        fuzz_check_err("probe_set_check", rc, &e);
    probe_set_free(ps);
    return 0;
}
