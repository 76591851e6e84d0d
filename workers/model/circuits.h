/*
 * circuits.h - hand-built GPT-NeoX models whose mechanism is known by
 * construction: a previous-token head, and a two-layer induction circuit
 * (Elhage et al. 2021, "A Mathematical Framework for Transformer
 * Circuits"; Olsson et al. 2022, "In-context Learning and Induction
 * Heads").  They are the fixed points the `heads` and `ablation` battery
 * items are checked against, and a demo checkpoint whose heads everyone can
 * name (`ckpt-worker init DIR --preset induction-circuit`).
 *
 * Both models: V 256, d_model 1024, 2 heads of 512, max 33 positions,
 * rotary on 8 dims of each head with rotary_emb_base 2.2, parallel
 * residual, LayerNorm weights 1 and biases 0, MLPs all zero.  The residual
 * stream is cut into named subspaces (token one-hot, previous-token
 * one-hot, predicted-token one-hot, balance, sink, spare; circuits.c lays
 * them out), every write is zero-sum and the two sink dimensions hold +-16,
 * so LayerNorm only rescales by a nearly constant factor.
 *
 *   prev-token-circuit  1 layer.  Head 0: query and key are query_key_value
 *                       biases on the rotary dims, so the score depends on
 *                       the offset only and peaks (by a margin of about 20
 *                       before the softmax) at offset 1; it copies the
 *                       attended token's one-hot into the previous-token
 *                       subspace.  Head 1: no query or key (uniform
 *                       attention), writes a small zero-sum signal into
 *                       spare dimensions nothing reads.
 *   induction-circuit   the same layer 0, then layer 1.  Head 0 (induction):
 *                       query = the current token's one-hot, key = the key
 *                       position's previous-token one-hot (score 30 on a
 *                       match, 0 otherwise), plus a constant score of 15 on
 *                       keys holding token 0 (the BOS of the repeated
 *                       sequences): with no match the head rests there.
 *                       Its value is the key's token one-hot (token 0's
 *                       left out, so resting writes nothing), written into
 *                       the predicted-token subspace that the unembedding
 *                       reads (logit 30 for the predicted token).  Head 1:
 *                       as layer 0's head 1.
 *
 *     struct gptneox *m = NULL;
 *     if (circuit_build(&m, "induction-circuit", &e) < 0) ...
 *     ... gptneox_save(m, dir, ST_F32, &e) ...
 *     gptneox_free(m);
 */
#ifndef CKPTD_CIRCUITS_H
#define CKPTD_CIRCUITS_H

#include "common/err.h"
#include "workers/model/gptneox.h"

/* Build the model called `name` ("prev-token-circuit", "induction-circuit")
 * into *out (writable; the caller frees it with gptneox_free).  ERR_NOTFOUND
 * for another name, ERR_NOMEM; *out is NULL on failure. */
int circuit_build(struct gptneox **out, const char *name, struct err *e) CK_WUR;

/* 1 if `name` is a circuit circuit_build knows. */
int circuit_known(const char *name);

#endif
