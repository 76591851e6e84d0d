/*
 * sae_opts.h - what a run tells the worker about SAE files: the model's
 * name recorded in them (metadata.model_name), and the fixed dictionaries
 * `sae_fixed` follows (`add-run --sae DIR`), checked before the run is
 * registered.
 *
 * The model name is what TransformerLens and SAELens call the model: the
 * run's --model-name when given, else the hub repository's name of an
 * hf://ORG/NAME source (hf://EleutherAI/pythia-70m-deduped ->
 * pythia-70m-deduped, a name HookedTransformer.from_pretrained accepts),
 * else the run's name (file:// and http(s):// series are the researcher's
 * own).  A dictionary is checked by the worker itself (`ckpt-worker sae
 * DIR --json`, the reader the jobs will use): what it says is wrong is the
 * error.
 *
 *     char model[256];
 *     sae_opts_model_name("hf://EleutherAI/pythia-70m-deduped", "p70", model, sizeof model);
 *     char hook[128];
 *     if (sae_opts_check_dict(worker, "/saes/layers.3", hook, sizeof hook, &e) < 0) ...
 */
#ifndef CKPTD_SAE_OPTS_H
#define CKPTD_SAE_OPTS_H

#include <stddef.h>

#include "common/err.h"

/* The model name of a run with this source and name (see above) into out
 * (n bytes, truncated). */
void sae_opts_model_name(const char *source, const char *run, char *out, size_t n);

/* How long `ckpt-worker sae DIR --json` may take (it reads one file's header). */
#define SAE_OPTS_TIMEOUT_S 60.0

/* Run `WORKER sae DIR --json` (common/child.h, stdout and stderr captured,
 * killed after SAE_OPTS_TIMEOUT_S); on success the dictionary's hook into
 * hook (n bytes; "" when the files name none).  Errors: ERR_INVALID with
 * the worker's own message (the dictionary cannot be read), ERR_CHILD (the
 * worker cannot be run, or ran past the deadline), ERR_NOMEM. */
int sae_opts_check_dict(const char *worker, const char *dir, char *hook, size_t n,
                        struct err *e) CK_WUR;

#endif
