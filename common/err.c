#include "common/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int err_set(struct err *e, int code, const char *ctx, const char *fmt, ...)
{
    if (!e)
        return code;
    e->code = code;
    snprintf(e->ctx, sizeof e->ctx, "%s", ctx ? ctx : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return code;
}

int err_wrap(struct err *e, const char *fmt, ...)
{
    if (!e)
        return ERR_INVALID;
    char buf[2 * ERR_MSG_MAX + 2];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, ERR_MSG_MAX, fmt, ap);
    va_end(ap);
    if (n < 0)
        return e->code;
    size_t o = strlen(buf);
    memcpy(buf + o, ": ", 2);
    memcpy(buf + o + 2, e->msg, strnlen(e->msg, ERR_MSG_MAX - 1) + 1);
    buf[o + 2 + strnlen(e->msg, ERR_MSG_MAX - 1)] = '\0';
    memcpy(e->msg, buf, ERR_MSG_MAX - 1);
    e->msg[ERR_MSG_MAX - 1] = '\0';
    return e->code;
}

void err_clear(struct err *e)
{
    if (!e)
        return;
    e->code = ERR_OK;
    e->msg[0] = '\0';
    e->ctx[0] = '\0';
}

const char *err_str(const struct err *e)
{
    static char buf[ERR_MSG_MAX + ERR_CTX_MAX + 4];
    if (!e)
        return "(no error)";
    if (e->ctx[0])
        snprintf(buf, sizeof buf, "%s: %s", e->ctx, e->msg);
    else
        snprintf(buf, sizeof buf, "%s", e->msg);
    return buf;
}

const char *err_code_name(int code)
{
    static const char *names[] = {
        "ok", "nomem", "io", "format", "unsupported", "mismatch",
        "notfound", "invalid", "numeric", "db", "net", "child",
    };
    if (code > 0 || -code >= ERR_CODE_COUNT)
        return "unknown";
    return names[-code];
}
