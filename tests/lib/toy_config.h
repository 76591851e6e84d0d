/*
 * toy_config.h - the small training configuration the toy-run tests share
 * (1 layer, d_model 32, 4 heads, d_mlp 64, AdamW lr 3e-3, seed 1): fast
 * enough for a unit test, big enough to learn a little.  The caller sets
 * the task, steps and checkpoints.  Header-only (static inline).
 */
#ifndef CKPTD_TESTS_TOY_CONFIG_H
#define CKPTD_TESTS_TOY_CONFIG_H

#include <string.h>

#include "workers/train/train.h"

static inline void toy_config(struct train_config *c, const char *out)
{
    memset(c, 0, sizeof *c);
    c->layers = 1;
    c->d_model = 32;
    c->heads = 4;
    c->d_mlp = 64;
    c->rotary_pct = 0.25;
    c->parallel_residual = 1;
    c->lr = 3e-3;
    c->weight_decay = 0.1;
    c->beta1 = 0.9;
    c->beta2 = 0.98;
    c->eps = 1e-8;
    c->warmup = 5;
    c->init_std = 0.14;
    c->seed = 1;
    c->out = out;
}

#endif
