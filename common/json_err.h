/*
 * json_err.h - telling a jansson load that ran out of memory from one that
 * read malformed JSON.
 *
 * json_loadb and friends return NULL for both, and an allocation that
 * fails inside the lexer even comes back as a syntax error ("string or '}'
 * expected").  So out of memory is: the error code json_error_out_of_memory,
 * no error text at all (jansson fails before it starts reading when it
 * cannot allocate its lexer), or errno ENOMEM, left by the allocator that
 * failed - which is why the caller sets errno to 0 before the load.  A
 * loader reports it as ERR_NOMEM, not as malformed input, so that the
 * message blames the machine rather than the file:
 *
 *     errno = 0;
 *     json_t *root = json_loadb(text, len, 0, &je);
 *     if (!root)
 *         return json_err_nomem(&je) ? err_set(e, ERR_NOMEM, path, "out of memory reading JSON")
 *                                    : err_set(e, ERR_FORMAT, path, "not valid JSON: %s", je.text);
 */
#ifndef CKPTD_JSON_ERR_H
#define CKPTD_JSON_ERR_H

#include <errno.h>
#include <jansson.h>

/* 1 if the failed load `je` describes ran out of memory (errno was set to 0
 * before the load). */
static inline int json_err_nomem(const json_error_t *je)
{
    return json_error_code(je) == json_error_out_of_memory || je->text[0] == '\0' ||
           errno == ENOMEM;
}

#endif
