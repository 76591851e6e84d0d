/*
 * sbuf.h - a growing text buffer for COPY data and other text built
 * piece by piece.
 *
 *     struct sbuf b = {0};
 *     if (sbuf_printf(&b, "%d\t%s\n", id, name) < 0)
 *         ... ERR_NOMEM; b keeps what it had
 *     use(b.p, b.len);
 *     sbuf_free(&b);
 */
#ifndef CKPTD_COMMON_SBUF_H
#define CKPTD_COMMON_SBUF_H

#include <stddef.h>

#include "common/err.h"

struct sbuf {
    char *p;         /* NUL-terminated once anything was written; NULL before */
    size_t len, cap; /* bytes used (without the NUL), bytes allocated */
};

/* Append printf-style text.  0, or ERR_NOMEM with b unchanged. */
int sbuf_printf(struct sbuf *b, const char *fmt, ...) CK_PRINTF(2, 3) CK_WUR;

/* Free the text and empty b. */
void sbuf_free(struct sbuf *b);

#endif
