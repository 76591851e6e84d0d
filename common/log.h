/*
 * log.h - logfmt lines on stderr, filtered by level.
 *
 * Every line is `ts=... level=... msg="..." key=value ...`, one event per
 * line, so `grep`, `journalctl` and log shippers can read it.  The level comes
 * from log_set_level() or, when not set, from CKPTD_LOG (debug|info|warn|error).
 *
 *     log_info("checkpoint loaded", "path=%s tensors=%d", path, n);
 *     // ts=2026-11-21T07:00:00.123Z level=info msg="checkpoint loaded" path=/x tensors=76
 *
 * The second argument is a printf format for the key=value tail (may be "").
 * Values with spaces should be quoted by the caller with log_quote().
 */
#ifndef CKPTD_LOG_H
#define CKPTD_LOG_H

#include "common/err.h"

enum log_level {
    LOG_DEBUG,
    LOG_INFO,
    LOG_WARN,
    LOG_ERROR,
    LOG_LEVEL_COUNT
};

/* Set the minimum level printed. */
void log_set_level(enum log_level lvl);

/* Parse "debug|info|warn|error"; returns -1 on anything else. */
int log_level_parse(const char *s);

/* Name a component, printed as `comp=NAME` on every line (e.g. "worker"). */
void log_set_component(const char *name);

/* Emit one line at `lvl` with message `msg` and a key=value tail. */
void log_msg(enum log_level lvl, const char *msg, const char *kvfmt, ...)
    CK_PRINTF(3, 4);

#define log_debug(msg, ...) log_msg(LOG_DEBUG, msg, __VA_ARGS__)
#define log_info(msg, ...) log_msg(LOG_INFO, msg, __VA_ARGS__)
#define log_warn(msg, ...) log_msg(LOG_WARN, msg, __VA_ARGS__)
#define log_error(msg, ...) log_msg(LOG_ERROR, msg, __VA_ARGS__)

/* Log an error record at LOG_ERROR: msg, code and context as keys. */
void log_err(const char *msg, const struct err *e);

/* Quote a value for logfmt ("a b" -> "\"a b\""), into a static ring of
 * buffers: valid for the next 8 calls. */
const char *log_quote(const char *s);

#endif
