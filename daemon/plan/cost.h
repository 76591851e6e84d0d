/*
 * cost.h - what a run will cost before it starts: seconds per battery item,
 * per checkpoint and per series, from the model's shape and the run's
 * settings.
 *
 * The model is measured, not guessed.  Each item's work is counted
 * analytically in FLOPs from the shape (layers, d_model, heads, d_mlp,
 * vocabulary, the eval set's sequences and length, SAE sites, ...), the
 * way the worker runs it: the eval set's shared forward, the lens's
 * unembeddings, ablation's taped forward, backward and exact variants, the
 * SAE's training steps.  A calibration table measured on a reference
 * machine by bench/battery_bench.sh holds, per item, how many seconds one
 * of its FLOPs costs relative to a FLOP of a plain forward (its "k"): 1.0
 * for work at the forward's rate, more for element-wise work and small
 * matrices.  Seconds are then
 *
 *     seconds(item) = k(item) * flops(item, shape, run) / rate
 *
 * with rate the plain forward's FLOP/s of the node (the table's reference
 * rate unless told otherwise: `ckptd plan --gflops`).  One number per
 * machine scales everything; the ratios between items travel.
 *
 * A run's checkpoints are not all alike: on a sparse skeleton (every
 * sweep_every-th checkpoint of the schedule and the last one,
 * cost_on_skeleton) items with a sparse exact part run it in full (the
 * ablation of every head), and the series sums both kinds.
 *
 * This module is pure (no database, no files): ckptd plan, ckptd status's
 * ETA and the scheduler all call the same functions.
 *
 *     struct cost_shape sh;
 *     if (cost_shape_from_json(&sh, config_json_text, &e) < 0) ...
 *     struct cost_run run = COST_RUN_DEFAULT;          // 16 x 128 eval set, one SAE site
 *     run.eval_seqs = 16; run.ctx = 512;
 *     double s = cost_item_seconds("lens", &sh, &run, 0, cost_reference_gflops());
 *     struct cost_series ser;
 *     cost_series(&sh, &run, items, nitems, 154, cost_reference_gflops(), &ser);
 *     // ser.checkpoint_s, ser.sweep_s, ser.sweeps, ser.total_s
 */
#ifndef CKPTD_COST_H
#define CKPTD_COST_H

#include "common/err.h"

#define COST_SWEEP_EVERY 32 /* default: a full sweep every 32nd checkpoint, and the last */

/* The model's shape, as config.json gives it. */
struct cost_shape {
    int n_layers, d_model, n_heads, d_mlp, vocab, max_pos;
};

/* A run's settings that change the work. */
struct cost_run {
    int eval_seqs, ctx;  /* the eval set: sequences and their length (capped at max_pos) */
    int sae_sites;       /* SAE sites (sae, sae_relu), at least 1 */
    int probe_sets;      /* user probe sets (probes) */
    int sweep_every;     /* full sweeps: every k-th checkpoint and the last; 0: none */
};
#define COST_RUN_DEFAULT ((struct cost_run){16, 128, 1, 0, COST_SWEEP_EVERY})

/* One item's projected cost per checkpoint. */
struct cost_item {
    char name[64];
    double gflop;     /* its analytic work on one (ordinary) checkpoint */
    double sweep_gflop; /* on a full-sweep checkpoint */
    double seconds;   /* on an ordinary checkpoint */
    double sweep_s;   /* on a full-sweep checkpoint */
    int known;        /* 0: no entry in the calibration table (counted as 0 s) */
};

/* A series: the per-item costs and the totals.  items is caller-sized. */
struct cost_series {
    double pass_s;        /* the eval set's shared forward (once per checkpoint) */
    double pass_gflop;    /* its work */
    double checkpoint_s;  /* an ordinary checkpoint, pass included */
    double sweep_s;       /* a full-sweep checkpoint */
    int checkpoints, sweeps;
    double total_s;       /* the whole series on one node */
};

/* The shape from a config.json document (HuggingFace GPTNeoX keys:
 * num_hidden_layers, hidden_size, num_attention_heads, intermediate_size
 * (default 4 * hidden_size), vocab_size, max_position_embeddings).
 * ERR_FORMAT for malformed JSON or a missing or non-positive value. */
int cost_shape_from_json(struct cost_shape *out, const char *json_text, struct err *e) CK_WUR;

/* The reference machine's plain forward rate (GFLOP/s) of the table. */
double cost_reference_gflops(void);

/* Is checkpoint `index` (0-based, in step order) of `count` on the
 * skeleton of full sweeps: index % every == 0, or the last?  0 when every
 * is 0 or index is out of range. */
int cost_on_skeleton(int index, int count, int every);

/* How many of `count` checkpoints are on the skeleton. */
int cost_skeleton_count(int count, int every);

/* The analytic work (GFLOP) and the projected seconds at `gflops` of one
 * item on one checkpoint (full_sweep: a skeleton checkpoint), the eval
 * set's shared forward excluded (cost_pass_seconds); fills *out.  Returns
 * 0, or ERR_NOTFOUND for an item the table does not know (out->known 0,
 * seconds 0). */
int cost_item(const char *item, const struct cost_shape *sh, const struct cost_run *run,
              int full_sweep, double gflops, struct cost_item *out);

/* Seconds of the eval set's shared forward for these items (0 when none of
 * them reads it; to the logits when one needs them); its work into *gflop
 * (may be NULL). */
double cost_pass_seconds(const char *const *items, int nitems, const struct cost_shape *sh,
                         const struct cost_run *run, double gflops, double *gflop);

/* The series of `checkpoints` checkpoints with these items: per item costs
 * into per_item (nitems entries, may be NULL) and the totals into *out. */
void cost_series(const struct cost_shape *sh, const struct cost_run *run,
                 const char *const *items, int nitems, int checkpoints, double gflops,
                 struct cost_item *per_item, struct cost_series *out);

/* FLOPs of a forward at (B,T) with or without the unembedding (the
 * worker's counting: 2 M N K per product, causal attention in blocks of
 * 128 query rows). */
double cost_forward_flops(const struct cost_shape *sh, int B, int T, int logits);

#endif
