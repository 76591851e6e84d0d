/*
 * err.h - the error record every fallible function in ckptd fills.
 *
 * Fallible functions return int (0 on success, a negative ERR_* code on
 * failure) and take an optional `struct err *` as their last argument.  When
 * it is non-NULL, the function fills it with the code, a one-line message a
 * person can act on, and the context it was working in (a file, a tensor, a
 * job id).  Nothing is allocated: the record is plain storage the caller owns.
 *
 *     struct err e;
 *     if (st_open(&st, "model.safetensors", &e) < 0)
 *         fprintf(stderr, "%s\n", err_str(&e));   // "model.safetensors: ..."
 */
#ifndef CKPTD_ERR_H
#define CKPTD_ERR_H

#include <stddef.h>

/* Error codes: negative, grouped by what a caller would do about them. */
enum err_code {
    ERR_OK = 0,
    ERR_NOMEM = -1,        /* allocation failed */
    ERR_IO = -2,           /* open/read/write/mmap failed; errno in message */
    ERR_FORMAT = -3,       /* input is malformed (header, JSON, offsets) */
    ERR_UNSUPPORTED = -4,  /* well-formed but outside what we handle (dtype) */
    ERR_MISMATCH = -5,     /* inputs disagree (config vs tensor shapes) */
    ERR_NOTFOUND = -6,     /* a named thing is missing (tensor, file, hook) */
    ERR_INVALID = -7,      /* bad argument from the caller or the user */
    ERR_NUMERIC = -8,      /* NaN/Inf where finite numbers are required */
    ERR_DB = -9,           /* database error */
    ERR_NET = -10,         /* network / transfer error */
    ERR_CHILD = -11,       /* a child process failed */
    ERR_CODE_COUNT = 12
};

#define ERR_MSG_MAX 512
#define ERR_CTX_MAX 256

struct err {
    int code;                 /* one of enum err_code */
    char msg[ERR_MSG_MAX];    /* what went wrong */
    char ctx[ERR_CTX_MAX];    /* where: file, tensor, job; may be empty */
};

#if defined(__GNUC__)
#define CK_WUR __attribute__((warn_unused_result))
#define CK_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define CK_WUR
#define CK_PRINTF(f, a)
#endif

/* Fill `e` (if non-NULL) and return `code`, so callers can write
 * `return err_set(e, ERR_FORMAT, path, "bad header length %zu", n);`.
 * `ctx` may be NULL. */
int err_set(struct err *e, int code, const char *ctx, const char *fmt, ...)
    CK_PRINTF(4, 5);

/* Prefix the message of `e` with more context ("loading step1000: ...").
 * Does nothing when e is NULL. Returns e->code (or ERR_INVALID if NULL). */
int err_wrap(struct err *e, const char *fmt, ...) CK_PRINTF(2, 3);

/* Reset to ERR_OK with empty strings. Accepts NULL. */
void err_clear(struct err *e);

/* "ctx: msg", or "msg" when ctx is empty. Borrowed: lives as long as `e`
 * and until the next err_str call on any error (static buffer). */
const char *err_str(const struct err *e);

/* Short stable name of a code ("format", "io", ...), for logs and tests. */
const char *err_code_name(int code);

#endif
