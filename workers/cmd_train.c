/* ckpt-worker train: train a small GPT-NeoX on a built-in toy task and
 * write its checkpoint series (workers/train/train.h). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/args.h"
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

/* What the command line gives; -1 (or 0) where the task's default applies. */
struct train_args {
    const char *task, *out;
    long seed, steps, warmup, layers, dm, heads, dmlp, p, vocab, seq_len, batch, every, log_every;
    long span_min, span_max, eval_every, decay_start, decay_steps, spike_step;
    double lr, wd, beta1, beta2, std, train_frac, rot, decay_to, spike_factor;
    int sequential;  /* -1: the task's default */
    size_t nck;      /* --checkpoints, into the caller's list */
    int have_list;
};

/* argv into a (ckpts: room for MAX_CKPTS steps); -1 to go on, else the
 * exit status (0 after --help, EXIT_USAGE after saying what is wrong). */
static int train_args(struct train_args *a, long *ckpts, int argc, char **argv)
{
    *a = (struct train_args){.seed = 1, .steps = -1, .warmup = 10, .layers = -1, .dm = -1, .heads = -1,
                             .dmlp = -1, .p = 47, .vocab = 256, .seq_len = 32, .batch = 64, .log_every = -1,
                             .lr = -1, .wd = -1, .beta1 = 0.9, .beta2 = 0.98, .std = -1, .train_frac = 0.4,
                             .rot = -1, .sequential = -1, .decay_to = 1, .spike_factor = 1};
    /* the numeric options: their val is O_NUM + their index here */
    const struct { const char *name; long *l; double *d; } nums[] = {
        {"seed", &a->seed, NULL},         {"steps", &a->steps, NULL},
        {"warmup", &a->warmup, NULL},     {"layers", &a->layers, NULL},
        {"d-model", &a->dm, NULL},        {"heads", &a->heads, NULL},
        {"d-mlp", &a->dmlp, NULL},        {"p", &a->p, NULL},
        {"vocab", &a->vocab, NULL},       {"seq-len", &a->seq_len, NULL},
        {"batch", &a->batch, NULL},       {"ckpt-every", &a->every, NULL},
        {"span-min", &a->span_min, NULL}, {"span-max", &a->span_max, NULL},
        {"log-every", &a->log_every, NULL}, {"lr", NULL, &a->lr},
        {"eval-every", &a->eval_every, NULL}, {"decay-start", &a->decay_start, NULL},
        {"decay-steps", &a->decay_steps, NULL}, {"decay-to", NULL, &a->decay_to},
        {"wd", NULL, &a->wd},             {"beta1", NULL, &a->beta1},
        {"beta2", NULL, &a->beta2},       {"init-std", NULL, &a->std},
        {"train-frac", NULL, &a->train_frac}, {"rotary-pct", NULL, &a->rot},
    };
    enum { O_HELP = 256, O_TASK, O_OUT, O_SEQUENTIAL, O_PARALLEL, O_CHECKPOINTS, O_LR_SPIKE, O_NUM };
    enum { NNUM = sizeof nums / sizeof *nums };
    struct option opts[7 + NNUM + 1] = {
        {"help", no_argument, NULL, O_HELP},
        {"task", required_argument, NULL, O_TASK},
        {"out", required_argument, NULL, O_OUT},
        {"sequential", no_argument, NULL, O_SEQUENTIAL},
        {"parallel", no_argument, NULL, O_PARALLEL},
        {"checkpoints", required_argument, NULL, O_CHECKPOINTS},
        {"lr-spike", required_argument, NULL, O_LR_SPIKE},
    };
    for (int k = 0; k < NNUM; k++)
        opts[7 + k] = (struct option){nums[k].name, required_argument, NULL, O_NUM + k};
    struct args cl;
    args_start(&cl, argc, argv, "", opts);
    for (int k; (k = args_next(&cl)) != ARGS_END;) {
        if (k >= O_NUM) {
            const char *v = cl.arg;
            if (nums[k - O_NUM].l ? num_long(v, nums[k - O_NUM].l) < 0 : num_double(v, nums[k - O_NUM].d) < 0)
                return bad(cl.word, v);
        } else if (k == ARGS_MISSING && cl.opt >= O_NUM) {
            return bad(cl.word, "");
        } else if (k == O_HELP) {
            fputs(train_usage, stdout);
            return 0;
        } else if (k == O_TASK) {
            a->task = cl.arg;
        } else if (k == O_OUT) {
            a->out = cl.arg;
        } else if (k == O_LR_SPIKE) {
            char *end = NULL;
            errno = 0;
            a->spike_step = strtol(cl.arg, &end, 10);
            if (errno || end == cl.arg || *end != ':' || num_double(end + 1, &a->spike_factor) < 0) {
                fprintf(stderr, "ckpt-worker train: --lr-spike needs STEP:FACTOR, got '%s'\n", cl.arg);
                return EXIT_USAGE;
            }
        } else if (k == O_SEQUENTIAL) {
            a->sequential = 1;
        } else if (k == O_PARALLEL) {
            a->sequential = 0;
        } else if (k == O_CHECKPOINTS) {
            if (parse_list(cl.arg, ckpts, MAX_CKPTS, &a->nck) < 0) {
                fprintf(stderr, "ckpt-worker train: --checkpoints needs comma-separated steps "
                                "(at most %d), got '%s'\n", MAX_CKPTS, cl.arg);
                return EXIT_USAGE;
            }
            a->have_list = 1;
        } else {
            fprintf(stderr, "ckpt-worker train: unexpected argument '%s'\n%s", cl.word, train_usage);
            return EXIT_USAGE;
        }
    }
    return -1;
}

/* The task's defaults (train_usage's) where nothing was given. */
static void train_defaults(struct train_args *a, int ma)
{
    if (a->steps < 0)
        a->steps = ma ? 3000 : 1000;
    if (a->layers < 0)
        a->layers = ma ? 1 : 2;
    if (a->dm < 0)
        a->dm = 64;
    if (a->heads < 0)
        a->heads = 4;
    if (a->dmlp < 0)
        a->dmlp = ma ? 256 : 64;
    if (a->lr < 0)
        a->lr = ma ? 2e-3 : 3e-3;
    /* induction: every dimension rotated, so a previous-token head is easy
     * to build and the copy must be found by content, not by a fixed offset */
    if (a->rot < 0)
        a->rot = ma ? 0.25 : 1.0;
    if (a->sequential < 0)
        a->sequential = ma;
    if (a->wd < 0)
        a->wd = ma ? 2.0 : 0.01;
    if (a->std < 0)
        a->std = a->dm > 0 ? 0.8 / sqrt((double)a->dm) : 0.02;
    if (a->log_every < 0)
        a->log_every = a->steps / 20 > 0 ? a->steps / 20 : 1;
    if (!ma && !a->span_min && !a->span_max) { /* spans of varying length at varying places */
        a->span_min = a->seq_len / 4;
        a->span_max = a->seq_len / 2;
    }
}

/* a (defaults applied) into c; EXIT_USAGE after saying what is out of
 * range, else 0.  The schedule goes into ckpts unless --checkpoints gave it. */
static int train_config(struct train_config *c, struct train_args *a, enum task_kind kind, long *ckpts)
{
    if (a->seed < 0 || a->steps < 0 || a->every < 0 || a->log_every < 0 || a->dm > 8192 || a->layers > 64 ||
        a->heads > 8192 || a->dmlp > 65536 || a->p > 1000 || a->vocab > 65536 || a->seq_len > 4096 ||
        a->batch > 65536) {
        fprintf(stderr, "ckpt-worker train: a size or count is out of range\n");
        return EXIT_USAGE;
    }
    if (!a->have_list) {
        a->nck = train_schedule(a->steps, a->every, ckpts, MAX_CKPTS);
        if (a->nck > MAX_CKPTS) {
            fprintf(stderr, "ckpt-worker train: the schedule has %zu checkpoints (at most %d); "
                            "raise --ckpt-every\n", a->nck, MAX_CKPTS);
            return EXIT_USAGE;
        }
    }
    if (a->span_min < 0 || a->span_max < 0 || a->span_min > 4096 || a->span_max > 4096) {
        fprintf(stderr, "ckpt-worker train: --span-min/--span-max out of range\n");
        return EXIT_USAGE;
    }
    memset(c, 0, sizeof *c);
    c->out = a->out;
    c->task.kind = kind;
    c->task.seed = (uint64_t)a->seed;
    c->task.p = (int)a->p;
    c->task.train_frac = a->train_frac;
    c->task.vocab = (int)a->vocab;
    c->task.seq_len = (int)a->seq_len;
    c->task.batch = (int)a->batch;
    if (a->span_min || a->span_max) { /* one given: the other defaults to it */
        c->task.span_min = (int)(a->span_min ? a->span_min : a->span_max);
        c->task.span_max = (int)(a->span_max ? a->span_max : a->span_min);
    }
    c->layers = (int)a->layers;
    c->d_model = (int)a->dm;
    c->heads = (int)a->heads;
    c->d_mlp = (int)a->dmlp;
    c->rotary_pct = a->rot;
    c->parallel_residual = !a->sequential;
    c->steps = a->steps;
    c->lr = a->lr;
    c->weight_decay = a->wd;
    c->beta1 = a->beta1;
    c->beta2 = a->beta2;
    c->eps = 1e-8;
    c->warmup = a->warmup;
    c->decay_start = a->decay_start;
    c->decay_steps = a->decay_steps;
    c->decay_to = a->decay_to;
    c->spike_step = a->spike_step;
    c->spike_factor = a->spike_factor;
    c->eval_every = a->eval_every;
    c->init_std = a->std;
    c->seed = (uint64_t)a->seed;
    c->checkpoints = ckpts;
    c->ncheckpoints = a->nck;
    c->log_every = a->log_every;
    c->progress = stderr;
    return 0;
}

int cmd_train(int argc, char **argv)
{
    static long ckpts[MAX_CKPTS];
    struct train_args a;
    int status = train_args(&a, ckpts, argc, argv);
    if (status >= 0)
        return status;
    int kind = a.task ? task_kind_parse(a.task) : -1;
    if (kind < 0 || !a.out) {
        fprintf(stderr, "ckpt-worker train: need --task modular-addition|induction and --out DIR\n%s",
                train_usage);
        return EXIT_USAGE;
    }
    train_defaults(&a, kind == TASK_MODADD);
    struct train_config c;
    if ((status = train_config(&c, &a, (enum task_kind)kind, ckpts)) != 0)
        return status;
    struct err e;
    err_clear(&e);
    int rc = train_run(&c, &e);
    if (rc < 0) {
        log_err("train failed", &e);
        return rc == ERR_INVALID ? EXIT_USAGE : EXIT_INPUT;
    }
    printf("wrote %s: %zu checkpoints, task.json, train_log.jsonl\n", c.out, a.nck);
    return 0;
}
