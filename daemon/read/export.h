/*
 * export.h - `ckptd export`: a run's series out of the database as files
 * for pandas, numpy or anything that reads CSV, streamed with COPY TO: the
 * rows pass through a small buffer, never the whole table in memory.
 *
 * What is exported is the rows of the `series` view for one run (duplicate
 * checkpoints left out), in the measurements' key order: metric by metric
 * (by metric id), then layer, head, idx, step.  Filters: --metric NAME
 * (the metric's name, or ITEM.NAME) and --item ITEM, each repeatable; a
 * filter that matches nothing in the run is an error, and nothing is
 * written.  One read-only snapshot of the database serves the whole export.
 *
 *   csv    header run,step,item,version,metric,layer,head,idx,value,unit,
 *          then one line per row (PostgreSQL's CSV: text quoted when it
 *          needs to be).  layer/head/idx are -1 where they do not apply.
 *   jsonl  one JSON object per row with the same keys, in that order.
 *   npy    a directory: one little-endian float64 .npy file per metric
 *          (numpy's format 1.0, C order) and index.json describing them.
 *          An array's axes are step, then those of layer, head and idx the
 *          metric uses (a coordinate that is -1 in every row is dropped);
 *          each axis runs over the sorted distinct values of its
 *          coordinate, listed in index.json; a cell without a measurement
 *          is NaN.  So heads' induction_score is (steps, layers, heads),
 *          loss's loss_by_pos (steps, positions), loss's loss (steps,).
 *          Files are ITEM.METRIC.npy (ITEM.METRIC.vN.npy when the export
 *          holds several versions of one item); characters other than
 *          letters, digits, '.', '-' and '_' become '_'.
 *
 * Output: --out PATH; csv and jsonl default to standard output, npy to
 * ./export-RUN.  A file is written under a temporary name and renamed into
 * place; an npy directory likewise (it must not exist yet, or be empty),
 * so a failed export leaves nothing behind.  On standard output the rows
 * are streamed as they come; a failure part-way is reported and the exit
 * status is 1.
 *
 *     ckptd export pythia-70m --metric induction_score --format npy --out ind/
 *     ckptd export pythia-70m --item loss > loss.csv
 */
#ifndef CKPTD_EXPORT_H
#define CKPTD_EXPORT_H

#include <stdio.h>

#include "common/err.h"

struct db;

enum export_format {
    EXPORT_CSV,
    EXPORT_JSONL,
    EXPORT_NPY,
    EXPORT_FORMAT_COUNT
};

#define EXPORT_FILTERS_MAX 64
#define EXPORT_NPY_MAX_CELLS (1LL << 31) /* 16 GiB of float64 in one array */

struct export_opts {
    const char *run;
    const char *metrics[EXPORT_FILTERS_MAX];
    int nmetrics;
    const char *items[EXPORT_FILTERS_MAX];
    int nitems;
    enum export_format format;
    const char *out;            /* NULL: standard output (csv, jsonl) or ./export-RUN (npy) */
};

/* What an export wrote. */
struct export_stats {
    long long rows;             /* values exported */
    int arrays;                 /* npy: files written */
    long long bytes;            /* bytes written */
};

/* Parse `export RUN [options]` (argv[0] is "export").  ERR_INVALID with
 * the reason on a usage error.  o borrows argv's strings. */
int export_parse_args(int argc, char **argv, struct export_opts *o, struct err *e) CK_WUR;

/* Run an export.  `out` is where csv/jsonl go when o->out is NULL (the
 * command passes stdout).  ERR_NOTFOUND for an unknown run or a filter
 * that matches nothing; ERR_DB, ERR_IO otherwise.  *st (may be NULL) gets
 * what was written. */
int export_run(struct db *db, const struct export_opts *o, FILE *out, struct export_stats *st,
               struct err *e) CK_WUR;

/* The command: parse, connect (conninfo; the statement and idle-in-
 * transaction timeouts in seconds), export, print a summary on stderr.
 * Returns the exit status: 0, 1 failure, 2 usage. */
int export_main(const char *conninfo, double statement_s, double idle_tx_s, int argc, char **argv);

/* The header of a version 1.0 .npy file of little-endian float64 in C
 * order with the given shape (ndim 0..8), padded so the data starts at a
 * multiple of 64 bytes: its length, or -1 when it does not fit in n. */
int export_npy_header(char *buf, size_t n, const long long *shape, int ndim);

#endif
