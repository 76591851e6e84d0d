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

/* ---- formatting (exposed for tests) ---- */

/* A value as COPY text into buf (n >= ROWS_VALUE_MAX): "%.17g", `NaN`,
 * `Infinity`, `-Infinity`.  Returns the length written. */
size_t rows_format_value(char *buf, size_t n, double v);

#endif
