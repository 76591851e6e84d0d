/*
 * rows.h - the row writer: one battery item's measurements as PostgreSQL
 * COPY text.
 *
 * `ckpt-worker analyze` prints every measurement as one line
 *
 *     item \t version \t metric \t layer \t head \t idx \t value \n
 *
 * which the daemon feeds to `COPY ... FROM STDIN` (text format) unchanged.
 * layer, head and idx are -1 where they do not apply.  Values are printed
 * with "%.17g", enough digits to give back the same double; NaN and the
 * infinities use PostgreSQL's float8 spellings `NaN`, `Infinity` and
 * `-Infinity`; negative zero stays `-0` (float8 reads it back as -0).
 * Text fields (item, metric) are escaped as the COPY text format requires
 * (backslash, and the control characters as \b \f \n \r \t \v), so no
 * name can break a line or a column, nor form the end marker `\.`.
 *
 * Rows are buffered per item: an item's rows go out only after the whole
 * item has succeeded, so a failing item never leaves half its rows.
 *
 * The status file (`analyze --status FILE`) says what became of each item,
 * one tab-separated line per event, each written with one write(2) after
 * the rows it vouches for were flushed:
 *
 *     ckpt-worker-status <TAB> 1                      first line: the format
 *     started <TAB> item <TAB> version                the item begins
 *     done <TAB> item <TAB> version <TAB> rows        its rows are all on stdout
 *     failed <TAB> item <TAB> version <TAB> message   it failed; no rows of it
 *
 * An item with a `done` line has exactly `rows` rows on stdout; any other
 * rows of an item (a worker killed while writing them) are not vouched for.
 * The message is one line (control characters become spaces).
 *
 *     struct rows r;
 *     rows_init(&r);
 *     rows_begin(&r, "weights", 1);
 *     if (rows_add(&r, "total_norm", -1, -1, -1, 12.5, &e) < 0) ...
 *     if (rows_write(&r, stdout, &e) < 0) ...   // "weights\t1\ttotal_norm\t-1\t-1\t-1\t12.5\n"
 *     rows_free(&r);
 */
#ifndef CKPTD_BATTERY_ROWS_H
#define CKPTD_BATTERY_ROWS_H

#include <stddef.h>
#include <stdio.h>

#include "common/err.h"

/* Longest text rows_format_value writes, with its NUL. */
#define ROWS_VALUE_MAX 32

/* First line of a status file; bump the number when the format changes. */
#define ROWS_STATUS_MAGIC "ckpt-worker-status"
#define ROWS_STATUS_VERSION 1

struct rows {
    char *buf;          /* COPY text of the rows added since rows_begin */
    size_t len, cap;
    size_t n;           /* rows in buf */
    const char *item;   /* borrowed from rows_begin's caller */
    int version;
};

/* ---- lifetime ---- */

/* An empty writer (no allocation until the first row). */
void rows_init(struct rows *r);

/* Release the buffer; the writer may be rows_init'ed again. Accepts NULL. */
void rows_free(struct rows *r);

/* Start the rows of one item: drop what is buffered and tag the rows that
 * follow with `item` (borrowed: it must outlive the rows) and `version`. */
void rows_begin(struct rows *r, const char *item, int version);

/* ---- adding and writing ---- */

/* Append one row.  layer, head and idx are >= -1.  Returns 0, ERR_INVALID
 * (no rows_begin, an empty metric name, an index below -1) or ERR_NOMEM;
 * on failure the buffer is unchanged. */
int rows_add(struct rows *r, const char *metric, int layer, int head, int idx,
             double value, struct err *e) CK_WUR;

/* Write the buffered rows to `f` (no flush).  ERR_IO if fwrite fails. */
int rows_write(const struct rows *r, FILE *f, struct err *e) CK_WUR;

/* ---- the status file ---- */

/* Where item outcomes go: an open status file, or nowhere (fd -1). */
struct rows_status {
    int fd;
};

/* Create (truncate) `path` and write the first line; path NULL: a status
 * that writes nothing.  ERR_IO naming the file on failure (s->fd is then
 * -1). */
int rows_status_open(struct rows_status *s, const char *path, struct err *e) CK_WUR;

/* One line each (see above); no-ops without a file.  ERR_IO on a failed
 * write.  `why` of failed may be NULL ("unknown error"). */
int rows_status_started(struct rows_status *s, const char *item, int version, struct err *e) CK_WUR;
int rows_status_done(struct rows_status *s, const char *item, int version, size_t rows,
                     struct err *e) CK_WUR;
int rows_status_failed(struct rows_status *s, const char *item, int version, const char *why,
                       struct err *e) CK_WUR;

/* Close the file (its lines are already written). Accepts fd -1. */
void rows_status_close(struct rows_status *s);

/* ---- formatting (exposed for tests) ---- */

/* A value as COPY text into buf (n >= ROWS_VALUE_MAX): "%.17g", `NaN`,
 * `Infinity`, `-Infinity`.  Returns the length written. */
size_t rows_format_value(char *buf, size_t n, double v);

#endif
