/*
 * tokens.h - token id sequences as the worker reads and writes them: this
 * module owns the token-file formats.
 *
 * A batch is B equal-length sequences of T ids, stored row-major (B,T) as
 * int.  tokens_read_json reads the JSON form used by `ckpt-worker forward`:
 * a list of B lists of T non-negative integers.  tokens_read_file also
 * reads flat binary token streams (as tokenised corpora are stored, e.g.
 * Pythia's Pile `.bin` files of uint16) and cuts them into sequences:
 *
 *   .json          the JSON form above (the context length is ignored)
 *   .u16, .bin     little-endian uint16 ids
 *   .u32           little-endian uint32 ids (< 2^31)
 *   .npy           NumPy array of int32, int64, uint16 or uint32 ids: 1-D
 *                  (a stream, cut as below) or 2-D (B, T; ctx ignored)
 *
 * A stream of n ids becomes B = n / ctx sequences of T = ctx ids; a
 * trailing partial sequence is dropped.  Ids are not checked against a
 * vocabulary here (the model does that).
 *
 * tokens_write_file writes one stream of ids (`ckpt-worker tokenize`) as
 * .u16, .u32, .npy (int32, 1-D) or .json (a flat list of ids).
 *
 *     int *tok, B, T;
 *     if (tokens_read_file("pile_val.u16", 128, &tok, &B, &T, &e) < 0) ...
 *     if (tokens_write_file("copy.u32", tok, (size_t)B * T, &e) < 0) ...
 *     free(tok);
 */
#ifndef CKPTD_TOKENS_H
#define CKPTD_TOKENS_H

#include <stddef.h>

#include "common/err.h"

/* *tokens (B*T) is the caller's to free. On failure *tokens is NULL and e
 * names the file and the offending sequence/position. */
int tokens_read_json(const char *path, int **tokens, int *B, int *T, struct err *e) CK_WUR;

/* Read `path` by its extension (above), binary streams cut into sequences
 * of `ctx` ids.  *tokens (B*T) is the caller's to free.  On failure *tokens
 * is NULL and the error names the file: ERR_NOTFOUND / ERR_IO (cannot
 * open or read), ERR_UNSUPPORTED (unknown extension, .npy of another
 * dtype or in Fortran order), ERR_FORMAT (empty file, a byte count that
 * is not a multiple of the id size or disagrees with the .npy header, an
 * id < 0 or >= 2^31, fewer ids than one sequence, a .npy of 3+
 * dimensions), ERR_INVALID (ctx < 1), ERR_NOMEM. */
int tokens_read_file(const char *path, int ctx, int **tokens, int *B, int *T,
                     struct err *e) CK_WUR;

/* Write the n ids to `path` in the format of its extension (.u16, .u32,
 * .npy, otherwise a JSON list), atomically: a temporary file renamed over
 * path, removed on failure.  ERR_INVALID (an id >= 65536 for .u16, too many
 * ids for one .npy), ERR_IO (cannot create or write, naming the file). */
int tokens_write_file(const char *path, const int *ids, size_t n, struct err *e) CK_WUR;

#endif
