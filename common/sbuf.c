#include "common/sbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

int sbuf_printf(struct sbuf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        size_t room = b->cap - b->len;
        int w = b->p ? vsnprintf(b->p + b->len, room, fmt, ap) : -1;
        va_end(ap);
        if (w >= 0 && (size_t)w < room) {
            b->len += (size_t)w;
            return 0;
        }
        size_t cap = b->cap ? 2 * b->cap : 4096;
        while (w >= 0 && cap - b->len <= (size_t)w)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return ERR_NOMEM;
        b->p = p;
        b->cap = cap;
    }
}

void sbuf_free(struct sbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}
