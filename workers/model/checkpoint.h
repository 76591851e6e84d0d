/*
 * checkpoint.h - the tensors of a checkpoint directory, whatever format it
 * was saved in.
 *
 * HuggingFace directories hold safetensors (`model.safetensors`, or shards
 * named by `model.safetensors.index.json`) or PyTorch zip files
 * (`pytorch_model.bin`, or shards named by `pytorch_model.bin.index.json`);
 * Pythia's step revisions are often only the latter.  Safetensors wins when
 * both are present.  Either way the result is one st_set (safetensors.h).
 *
 *     struct st_set *set = NULL;
 *     if (checkpoint_open(&set, "step1000", &e) < 0) ...
 *     const struct st_tensor *t = st_set_find(set, "embed_out.weight");
 *     st_set_free(set);
 */
#ifndef CKPTD_CHECKPOINT_H
#define CKPTD_CHECKPOINT_H

#include "common/err.h"
#include "workers/model/safetensors.h"

/* Which format checkpoint_open reads in a directory. */
enum checkpoint_format {
    CHECKPOINT_NONE,        /* none of the four files */
    CHECKPOINT_SAFETENSORS, /* model.safetensors or its index */
    CHECKPOINT_TORCHZIP,    /* pytorch_model.bin or its index */
    CHECKPOINT_FORMAT_COUNT
};

enum checkpoint_format checkpoint_format(const char *dir);

/* Open the weights of `dir` (see above).  ERR_NOTFOUND naming all four
 * file names when none is there; otherwise st_set_open's or
 * torchzip_set_open's errors.  Caller frees with st_set_free. */
int checkpoint_open(struct st_set **out, const char *dir, struct err *e) CK_WUR;

#endif
