/*
 * tokens.h - token id sequences as the worker reads them.
 *
 * A batch is B equal-length sequences of T ids, stored row-major (B,T) as
 * int.  tokens_read_json reads the JSON form used by `ckpt-worker forward`:
 * a list of B lists of T non-negative integers.
 *
 *     int *tok, B, T;
 *     if (tokens_read_json("batch.json", &tok, &B, &T, &e) < 0) ...
 *     free(tok);
 */
#ifndef CKPTD_TOKENS_H
#define CKPTD_TOKENS_H

#include "../../common/err.h"

/* *tokens (B*T) is the caller's to free. On failure *tokens is NULL and e
 * names the file and the offending sequence/position. */
int tokens_read_json(const char *path, int **tokens, int *B, int *T, struct err *e) CK_WUR;

#endif
