/*
 * family_report.h - `ckptd report --family NAME`: one self-contained HTML
 * page for a family of runs that differ by seed (daemon/detect/family.h),
 * drawn like the run report (report.h: the same step axis, inline CSS and
 * SVG, no script, nothing fetched).
 *
 * The page holds, read in one read-only snapshot:
 *   - a header: the members (checkpoints, jobs done, suspect checkpoints),
 *     when the family was last analysed;
 *   - the family's transitions (found in how many members, their peaks'
 *     spread) and the outlier members, as tables;
 *   - per series drawn (every metric with a single series, then the series
 *     with a family transition or an outlier, at most REPORT_FAMILY_CHARTS
 *     charts): the family's band, min to max (light) and mean +- one
 *     standard deviation (darker), its median (dashed), every member's line
 *     in its own colour, every member's transitions (a window in its colour
 *     and a triangle at its peak on the top edge), and the family's
 *     transitions outlined with how many members show them.  Points come
 *     from `series` and `family_bands`: duplicates and suspect checkpoints
 *     are left out.
 *
 *     struct report_stats st;
 *     if (report_family_write(db, "grok-seeds", "report-family-grok-seeds", &st, &e) < 0) ...
 */
#ifndef CKPTD_FAMILY_REPORT_H
#define CKPTD_FAMILY_REPORT_H

#include <stddef.h>

#include "common/err.h"
#include "daemon/read/report.h"

#define REPORT_FAMILY_CHARTS 60 /* band charts on one family page */
#define REPORT_FAMILY_COLORS 10 /* member colours before they repeat */

struct db;

/* Write DIR/index.html for the family (atomically, as report_write).
 * st->line_charts counts the band charts, st->points the members' points,
 * st->transitions the members' transitions drawn.  ERR_NOTFOUND for an
 * unknown family, ERR_DB, ERR_IO. */
int report_family_write(struct db *db, const char *family, const char *dir, struct report_stats *st,
                        struct err *e) CK_WUR;

/* "report-family-<name>", '/' turned into '_'. */
void report_family_default_dir(char *buf, size_t n, const char *family);

#endif
