#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int g_level = -1;
static char g_comp[32];

static const char *level_names[LOG_LEVEL_COUNT] = {"debug", "info", "warn", "error"};

void log_set_level(enum log_level lvl) { g_level = (int)lvl; }

int log_level_parse(const char *s)
{
    for (int i = 0; s && i < LOG_LEVEL_COUNT; i++)
        if (strcmp(s, level_names[i]) == 0)
            return i;
    return -1;
}

void log_set_component(const char *name)
{
    snprintf(g_comp, sizeof g_comp, "%s", name ? name : "");
}

static int current_level(void)
{
    if (g_level < 0) {
        int l = log_level_parse(getenv("CKPTD_LOG"));
        g_level = l < 0 ? LOG_INFO : l;
    }
    return g_level;
}

const char *log_quote(const char *s)
{
    static char ring[8][512];
    static int next;
    char *out = ring[next++ & 7];
    size_t o = 0;
    out[o++] = '"';
    for (; s && *s && o + 3 < 512; s++) {
        if (*s == '"' || *s == '\\')
            out[o++] = '\\';
        out[o++] = (*s == '\n') ? ' ' : *s;
    }
    out[o++] = '"';
    out[o] = '\0';
    return out;
}

void log_msg(enum log_level lvl, const char *msg, const char *kvfmt, ...)
{
    if ((int)lvl < current_level())
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char line[2048];
    int n = snprintf(line, sizeof line,
                     "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s%s%s msg=%s",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                     tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, level_names[lvl],
                     g_comp[0] ? " comp=" : "", g_comp, log_quote(msg));
    if (kvfmt && kvfmt[0] && n > 0 && (size_t)n < sizeof line - 2) {
        line[n++] = ' ';
        va_list ap;
        va_start(ap, kvfmt);
        int m = vsnprintf(line + n, sizeof line - (size_t)n, kvfmt, ap);
        va_end(ap);
        if (m > 0)
            n += m;
        if ((size_t)n >= sizeof line)
            n = sizeof line - 1;
    }
    line[n < 0 ? 0 : n] = '\0';
    fprintf(stderr, "%s\n", line);
}

void log_err(const char *msg, const struct err *e)
{
    if (!e) {
        log_error(msg, "%s", "");
        return;
    }
    log_error(msg, "code=%s ctx=%s error=%s", err_code_name(e->code),
              log_quote(e->ctx), log_quote(e->msg));
}
