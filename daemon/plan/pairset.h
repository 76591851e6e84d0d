/*
 * pairset.h - a run's prompt-pair sets, checked and pinned when the run is
 * added.
 *
 * `ckptd add-run --pairs FILE` (repeatable) hands each file to the worker
 * (`ckpt-worker pairs check FILE [--tokenizer T] --out OUT`), which
 * validates it, tokenizes its texts with the run's tokenizer and writes its
 * token form; the run stores that file's absolute path in runs.options
 * ("pairs"), and every worker of the run gets it as `analyze --pairs`.  A
 * malformed file is refused before the run exists, with the worker's
 * message; a later edit of the original changes nothing for the run.  The
 * copy lives in the data directory under a name derived from the contents
 * of the file and of the tokenizer:
 *
 *     DATA_DIR/pairs-<first 16 hex digits of sha256(sha256(tokenizer) sha256(file))>.json
 *
 * (without a tokenizer, its hash is that of the empty string), written
 * under a temporary name and renamed into place.
 */
#ifndef CKPTD_PAIRSET_H
#define CKPTD_PAIRSET_H

#include <stddef.h>

#include "common/err.h"

/* Check `file` with `worker pairs check` (tokenizer may be NULL: then a set
 * with texts is refused) and put the absolute path of its token form into
 * out (n bytes), reusing an earlier one.  Errors: ERR_IO (a file cannot be
 * read, the directory cannot be written), ERR_CHILD (the worker refused
 * the file: its message is on stderr). */
int pairset_prepare(const char *worker, const char *file, const char *tokenizer,
                    const char *data_dir, char *out, size_t n, struct err *e) CK_WUR;

#endif
