/* ckpt-worker init: write a randomly initialised checkpoint of a named
 * shape, for demos, benchmarks and tests that need a real directory. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/args.h"
#include "common/log.h"
#include "workers/cli.h"
#include "workers/model/circuits.h"
#include "workers/model/gptneox.h"

static const char init_usage[] =
    "usage: ckpt-worker init CKPT_DIR [--preset NAME] [--seed N] [--std X] [--dtype f32|f16|bf16]\n"
    "\n"
    "Writes CKPT_DIR/config.json and CKPT_DIR/model.safetensors holding a GPT-NeoX\n"
    "model with random weights (N(0, std), default std 0.02, seed 1).\n"
    "Presets: tiny (default), pythia-14m, pythia-70m, pythia-160m, pythia-410m.\n"
    "Hand-built circuits (weights set by construction, --seed and --std unused):\n"
    "prev-token-circuit (1 layer, a previous-token head), induction-circuit (2 layers,\n"
    "a previous-token head feeding an induction head).\n";

int cmd_init(int argc, char **argv)
{
    const char *dir = NULL, *preset = "tiny", *dtype = "f32";
    unsigned long long seed = 1;
    double std = 0.02;
    enum { O_HELP = 256, O_PRESET, O_SEED, O_STD, O_DTYPE };
    static const struct option opts[] = {
        {"help", no_argument, NULL, O_HELP},
        {"preset", required_argument, NULL, O_PRESET},
        {"seed", required_argument, NULL, O_SEED},
        {"std", required_argument, NULL, O_STD},
        {"dtype", required_argument, NULL, O_DTYPE},
        {NULL, 0, NULL, 0},
    };
    struct args c;
    args_start(&c, argc, argv, "", opts);
    for (int k; (k = args_next(&c)) != ARGS_END;) {
        if (k == O_HELP) {
            fputs(init_usage, stdout);
            return 0;
        } else if (k == O_PRESET) {
            preset = c.arg;
        } else if (k == O_SEED) {
            seed = strtoull(c.arg, NULL, 10);
        } else if (k == O_STD) {
            std = atof(c.arg);
        } else if (k == O_DTYPE) {
            dtype = c.arg;
        } else if (k == ARGS_WORD && !dir) {
            dir = c.arg;
        } else {
            fprintf(stderr, "ckpt-worker init: unexpected argument '%s'\n%s", c.word, init_usage);
            return EXIT_USAGE;
        }
    }
    enum st_dtype dt = strcmp(dtype, "f32") == 0   ? ST_F32
                       : strcmp(dtype, "f16") == 0 ? ST_F16
                       : strcmp(dtype, "bf16") == 0 ? ST_BF16
                                                    : ST_DTYPE_COUNT;
    struct gptneox_config cfg;
    int circuit = circuit_known(preset);
    if (!dir || dt == ST_DTYPE_COUNT || !(std > 0.0) ||
        (!circuit && gptneox_config_preset(&cfg, preset) < 0)) {
        fprintf(stderr, "ckpt-worker init: need CKPT_DIR, a known preset, dtype and std > 0\n%s",
                init_usage);
        return EXIT_USAGE;
    }
    struct err e;
    struct gptneox *m = NULL;
    int status = EXIT_INPUT;
    if (circuit) {
        if (circuit_build(&m, preset, &e) < 0)
            goto out;
        cfg = m->cfg;
    } else {
        if (gptneox_create(&m, &cfg, &e) < 0)
            goto out;
        gptneox_init_random(m, seed, (float)std);
    }
    if (gptneox_save(m, dir, dt, &e) < 0)
        goto out;
    printf("wrote %s: %s, %zu parameters, %s\n", dir, preset, gptneox_config_nparams(&cfg), dtype);
    status = 0;
out:
    if (status)
        log_err("init failed", &e);
    gptneox_free(m);
    return status;
}
