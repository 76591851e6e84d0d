/* ckpt-worker train: train a small GPT-NeoX on a built-in toy task and
 * write its checkpoint series (workers/train/train.h). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "workers/cli.h"
#include "workers/train/train.h"

#define MAX_CKPTS 4096

static const char train_usage[] =
    "usage: ckpt-worker train --task modular-addition|induction --out DIR [options]\n"
    "\n"
    "Trains a GPT-NeoX from a seeded random init and writes DIR/stepN/{config.json,\n"
    "model.safetensors} on a Pythia-shaped schedule (0 1 2 4 ... then every K steps),\n"
    "DIR/task.json and DIR/train_log.jsonl (metrics per checkpoint).  Progress on stderr.\n"
    "Same settings, seed and --threads: bit-identical files.\n"
    "\n"
    "  --seed N            model init and data seed (default 1)\n"
    "  --steps N           optimiser steps (modular-addition 3000, induction 1000)\n"
    "  --lr X --wd X       AdamW rate and weight decay (2e-3 and 2.0 / 3e-3 and 0.01)\n"
    "  --beta1 X --beta2 X (0.9, 0.98)   --warmup N  linear warm-up steps (10)\n"
    "  --layers N --d-model N --heads N --d-mlp N\n"
    "                      (modular-addition 1 64 4 256; induction 2 64 4 64)\n"
    "  --init-std X        weight init std (default 0.8/sqrt(d-model))\n"
    "  --rotary-pct X      fraction of each head rotated (modular-addition 0.25,\n"
    "                      induction 1.0)\n"
    "  --sequential        sequential residual (default for modular-addition, whose\n"
    "                      1-layer MLP must read the attention output)\n"
    "  --parallel          parallel residual, as Pythia (default for induction)\n"
    "  --checkpoints LIST  steps to save, comma-separated, increasing (overrides the schedule)\n"
    "  --ckpt-every K      spacing of the even part of the schedule (default ~steps/32)\n"
    "  --log-every N       progress line every N steps (default steps/20)\n"
    "  --eval-every N      also evaluate every N steps into DIR/eval_log.jsonl (the dense\n"
    "                      curve; default 0: none)\n"
    "  --decay-start S --decay-steps K --decay-to F\n"
    "                      from step S the rate falls linearly over K steps (0: at once)\n"
    "                      to F x lr and stays there (default: no decay)\n"
    "  --lr-spike STEP:F   multiply the rate by F for optimiser step STEP (a loss spike)\n"
    "modular-addition: --p N (47)  --train-frac X (0.4); full batch\n"
    "induction:        --vocab N (256)  --seq-len N (32)  --batch N (64)\n"
    "                  --span-min N --span-max N  repeated span length (seq-len/4 and\n"
    "                  seq-len/2; a span and its copy at random places)\n";

static int bad(const char *flag, const char *val)
{
    fprintf(stderr, "ckpt-worker train: %s needs a number, got '%s'\n", flag, val);
    return EXIT_USAGE;
}

static int num_long(const char *s, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end)
        return -1;
    *out = v;
    return 0;
}

static int num_double(const char *s, double *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end)
        return -1;
    *out = v;
    return 0;
}

static int parse_list(const char *s, long *out, size_t cap, size_t *n)
{
    *n = 0;
    const char *p = s;
    while (*p) {
        char *end = NULL;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (errno || end == p || (*end && *end != ',') || *n >= cap)
            return -1;
        out[(*n)++] = v;
        p = *end ? end + 1 : end;
    }
    return *n ? 0 : -1;
}

int cmd_train(int argc, char **argv)
{
    static long ckpts[MAX_CKPTS];
    struct train_config c;
    memset(&c, 0, sizeof c);
    const char *task = NULL;
    long seed = 1, steps = -1, warmup = 10, layers = -1, dm = -1, heads = -1, dmlp = -1;
    long p = 47, vocab = 256, seq_len = 32, batch = 64, every = 0, log_every = -1;
    long span_min = 0, span_max = 0, eval_every = 0, decay_start = 0, decay_steps = 0;
    long spike_step = 0;
    double spike_factor = 1, decay_to = 1;
    double lr = -1, wd = -1, beta1 = 0.9, beta2 = 0.98, std = -1, train_frac = 0.4, rot = -1;
    int sequential = -1;
    size_t nck = 0;
    int have_list = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        struct { const char *name; long *l; double *d; } nums[] = {
            {"--seed", &seed, NULL},         {"--steps", &steps, NULL},
            {"--warmup", &warmup, NULL},     {"--layers", &layers, NULL},
            {"--d-model", &dm, NULL},        {"--heads", &heads, NULL},
            {"--d-mlp", &dmlp, NULL},        {"--p", &p, NULL},
            {"--vocab", &vocab, NULL},       {"--seq-len", &seq_len, NULL},
            {"--batch", &batch, NULL},       {"--ckpt-every", &every, NULL},
            {"--span-min", &span_min, NULL}, {"--span-max", &span_max, NULL},
            {"--log-every", &log_every, NULL}, {"--lr", NULL, &lr},
            {"--eval-every", &eval_every, NULL}, {"--decay-start", &decay_start, NULL},
            {"--decay-steps", &decay_steps, NULL}, {"--decay-to", NULL, &decay_to},
            {"--wd", NULL, &wd},             {"--beta1", NULL, &beta1},
            {"--beta2", NULL, &beta2},       {"--init-std", NULL, &std},
            {"--train-frac", NULL, &train_frac}, {"--rotary-pct", NULL, &rot},
        };
        int matched = 0;
        for (size_t k = 0; k < sizeof nums / sizeof *nums && !matched; k++) {
            if (strcmp(a, nums[k].name) != 0)
                continue;
            matched = 1;
            if (!v)
                return bad(a, "");
            if (nums[k].l ? num_long(v, nums[k].l) < 0 : num_double(v, nums[k].d) < 0)
                return bad(a, v);
            i++;
        }
        if (matched)
            continue;
        if (strcmp(a, "--help") == 0) {
            fputs(train_usage, stdout);
            return 0;
        } else if (strcmp(a, "--task") == 0 && v) {
            task = argv[++i];
        } else if (strcmp(a, "--out") == 0 && v) {
            c.out = argv[++i];
        } else if (strcmp(a, "--lr-spike") == 0 && v) {
            char *end = NULL;
            errno = 0;
            spike_step = strtol(argv[++i], &end, 10);
            if (errno || end == argv[i] || *end != ':' || num_double(end + 1, &spike_factor) < 0) {
                fprintf(stderr, "ckpt-worker train: --lr-spike needs STEP:FACTOR, got '%s'\n",
                        argv[i]);
                return EXIT_USAGE;
            }
        } else if (strcmp(a, "--sequential") == 0) {
            sequential = 1;
        } else if (strcmp(a, "--parallel") == 0) {
            sequential = 0;
        } else if (strcmp(a, "--checkpoints") == 0 && v) {
            if (parse_list(argv[++i], ckpts, MAX_CKPTS, &nck) < 0) {
                fprintf(stderr, "ckpt-worker train: --checkpoints needs comma-separated steps "
                                "(at most %d), got '%s'\n", MAX_CKPTS, argv[i]);
                return EXIT_USAGE;
            }
            have_list = 1;
        } else {
            fprintf(stderr, "ckpt-worker train: unexpected argument '%s'\n%s", a, train_usage);
            return EXIT_USAGE;
        }
    }
    int kind = task ? task_kind_parse(task) : -1;
    if (kind < 0 || !c.out) {
        fprintf(stderr, "ckpt-worker train: need --task modular-addition|induction and --out DIR\n%s",
                train_usage);
        return EXIT_USAGE;
    }
    int ma = kind == TASK_MODADD;
    if (steps < 0)
        steps = ma ? 3000 : 1000;
    if (layers < 0)
        layers = ma ? 1 : 2;
    if (dm < 0)
        dm = 64;
    if (heads < 0)
        heads = 4;
    if (dmlp < 0)
        dmlp = ma ? 256 : 64;
    if (lr < 0)
        lr = ma ? 2e-3 : 3e-3;
    /* induction: every dimension rotated, so a previous-token head is easy
     * to build and the copy must be found by content, not by a fixed offset */
    if (rot < 0)
        rot = ma ? 0.25 : 1.0;
    if (sequential < 0)
        sequential = ma;
    if (wd < 0)
        wd = ma ? 2.0 : 0.01;
    if (std < 0)
        std = dm > 0 ? 0.8 / sqrt((double)dm) : 0.02;
    if (log_every < 0)
        log_every = steps / 20 > 0 ? steps / 20 : 1;
    if (seed < 0 || steps < 0 || every < 0 || log_every < 0 || dm > 8192 || layers > 64 ||
        heads > 8192 || dmlp > 65536 || p > 1000 || vocab > 65536 || seq_len > 4096 ||
        batch > 65536) {
        fprintf(stderr, "ckpt-worker train: a size or count is out of range\n");
        return EXIT_USAGE;
    }
    if (!have_list) {
        nck = train_schedule(steps, every, ckpts, MAX_CKPTS);
        if (nck > MAX_CKPTS) {
            fprintf(stderr, "ckpt-worker train: the schedule has %zu checkpoints (at most %d); "
                            "raise --ckpt-every\n", nck, MAX_CKPTS);
            return EXIT_USAGE;
        }
    }
    c.task.kind = (enum task_kind)kind;
    c.task.seed = (uint64_t)seed;
    c.task.p = (int)p;
    c.task.train_frac = train_frac;
    c.task.vocab = (int)vocab;
    c.task.seq_len = (int)seq_len;
    c.task.batch = (int)batch;
    if (!ma && !span_min && !span_max) { /* spans of varying length at varying places */
        span_min = seq_len / 4;
        span_max = seq_len / 2;
    }
    if (span_min < 0 || span_max < 0 || span_min > 4096 || span_max > 4096) {
        fprintf(stderr, "ckpt-worker train: --span-min/--span-max out of range\n");
        return EXIT_USAGE;
    }
    if (span_min || span_max) { /* one given: the other defaults to it */
        c.task.span_min = (int)(span_min ? span_min : span_max);
        c.task.span_max = (int)(span_max ? span_max : span_min);
    }
    c.layers = (int)layers;
    c.d_model = (int)dm;
    c.heads = (int)heads;
    c.d_mlp = (int)dmlp;
    c.rotary_pct = rot;
    c.parallel_residual = !sequential;
    c.steps = steps;
    c.lr = lr;
    c.weight_decay = wd;
    c.beta1 = beta1;
    c.beta2 = beta2;
    c.eps = 1e-8;
    c.warmup = warmup;
    c.decay_start = decay_start;
    c.decay_steps = decay_steps;
    c.decay_to = decay_to;
    c.spike_step = spike_step;
    c.spike_factor = spike_factor;
    c.eval_every = eval_every;
    c.init_std = std;
    c.seed = (uint64_t)seed;
    c.checkpoints = ckpts;
    c.ncheckpoints = nck;
    c.log_every = log_every;
    c.progress = stderr;
    struct err e;
    err_clear(&e);
    int rc = train_run(&c, &e);
    if (rc < 0) {
        log_err("train failed", &e);
        return rc == ERR_INVALID ? EXIT_USAGE : EXIT_INPUT;
    }
    printf("wrote %s: %zu checkpoints, task.json, train_log.jsonl\n", c.out, nck);
    return 0;
}
