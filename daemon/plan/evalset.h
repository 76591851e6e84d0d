/*
 * evalset.h - a run's eval text, tokenized once.
 *
 * `ckptd add-run --eval-text FILE` turns a UTF-8 text into the token file
 * every worker of the run reads (`analyze --eval-tokens`).  The tokens are
 * made by the worker itself (`ckpt-worker tokenize`, the project's one
 * tokenizer) and kept in the data directory under a name derived from the
 * contents of the text and of the tokenizer, so the same pair is tokenized
 * once however many runs use it, and a changed text or tokenizer gets a new
 * file instead of silently reusing the old one:
 *
 *     DATA_DIR/eval-<first 16 hex digits of sha256(sha256(tokenizer) sha256(text))>.u32
 *
 * The worker writes the file under a temporary name and renames it into
 * place (common/atomic_file.h), so a concurrent add-run or a crash never
 * leaves a half-written token file.
 */
#ifndef CKPTD_EVALSET_H
#define CKPTD_EVALSET_H

#include <stddef.h>

#include "common/err.h"

/* The data directory: $CKPTD_DATA, else "var/data" (where
 * scripts/fetch-tokenizer and scripts/fetch-corpus put their files). */
const char *evalset_data_dir(void);

/* Tokenize `text` with `tokenizer` (a tokenizer.json) by running
 * `worker tokenize`, or find the file made earlier; its absolute path goes
 * to out (n bytes).  Errors: ERR_IO (a file cannot be read, the directory
 * cannot be written), ERR_CHILD (the worker failed: its message is logged
 * and named). */
int evalset_tokenize(const char *worker, const char *text, const char *tokenizer,
                     const char *data_dir, char *out, size_t n, struct err *e) CK_WUR;

#endif
