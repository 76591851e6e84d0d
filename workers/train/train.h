/*
 * train.h - a toy training run: a GPT-NeoX trained from a seeded random
 * init on a built-in task (task.h) with AdamW (adamw.h), writing a
 * checkpoint series in the HuggingFace layout the rest of ckptd reads:
 *
 *     OUT/task.json           the task (task_write_json) and the run's settings
 *     OUT/stepN/config.json   one directory per scheduled step (gptneox_save, F32)
 *     OUT/stepN/model.safetensors
 *     OUT/train_log.jsonl     one line per checkpoint: {"step":N, metric: value, ...}
 *     OUT/eval_log.jsonl      with eval_every > 0: the same every eval_every steps
 *                             (and at every checkpoint): the dense curve
 *
 * stepN holds the weights after N optimiser steps (step0: the init).  The
 * run is deterministic: the same settings, seed and BLAS thread count give
 * bit-identical files.  Progress goes to `progress` (may be NULL).
 *
 *     long sched[256];
 *     size_t n = train_schedule(3000, 0, sched, 256);   // 0 1 2 4 ... 64 100 200 ... 3000
 *     struct train_config tc = {...};
 *     if (train_run(&tc, &e) < 0) ...
 */
#ifndef CKPTD_TRAIN_H
#define CKPTD_TRAIN_H

#include <stdint.h>
#include <stdio.h>

#include "common/err.h"
#include "workers/train/task.h"

struct train_config {
    struct task_config task;
    int layers, d_model, heads, d_mlp;
    double rotary_pct;
    int parallel_residual;
    long steps;
    double lr, weight_decay, beta1, beta2, eps;
    long warmup;             /* linear warm-up of the rate over this many steps */
    long decay_start;        /* from this step (0: never) the rate falls linearly ... */
    long decay_steps;        /* ... over this many steps (0: at once) ... */
    double decay_to;         /* ... to this fraction of lr, and stays there */
    long spike_step;         /* at this step (0: none) the rate is multiplied ... */
    double spike_factor;     /* ... by this, for that one step (a loss spike) */
    long eval_every;         /* evaluate every N steps into eval_log.jsonl (0: none) */
    double init_std;
    uint64_t seed;           /* model init */
    const long *checkpoints; /* strictly increasing, in [0, steps] */
    size_t ncheckpoints;
    const char *out;
    long log_every;          /* progress line every N steps (0: only at checkpoints) */
    FILE *progress;
};

/* The Pythia-shaped schedule for a run of `steps` steps: 0 and powers of
 * two below `every`, then every multiple of `every` up to steps, and steps
 * itself.  every <= 0 picks a round number near steps/32 (1, 2 or 5 times
 * a power of ten).  Fills up to cap entries, returns the count. */
size_t train_schedule(long steps, long every, long *out, size_t cap);

/* The learning rate of optimiser step `step` (0-based): lr, times the
 * warm-up ramp (step+1)/warmup while step < warmup, times the decay factor
 * (1 before decay_start, then linear to decay_to over decay_steps), times
 * spike_factor at spike_step. */
double train_lr_at(const struct train_config *c, long step);

/* Run the training. Errors: ERR_INVALID (a setting, with its flag name),
 * ERR_IO (writing OUT), ERR_NUMERIC (the loss became non-finite), ERR_NOMEM.
 * Checkpoints written before a failure stay. */
int train_run(const struct train_config *c, struct err *e) CK_WUR;

#endif
