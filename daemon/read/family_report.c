#include "daemon/read/family_report.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/path.h"
#include "daemon/base/db.h"

/* a chart: plot area */
#define W 760
#define H 230
#define ML 64
#define MR 16
#define MT 22
#define MB 36

static const char *const colors[REPORT_FAMILY_COLORS] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e",
                                                        "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"};

static const char css[] =
    "body{font:14px/1.4 system-ui,sans-serif;margin:16px 24px;color:#222;background:#fff}"
    "h1{font-size:22px;margin:0 0 8px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}"
    "h3{font-size:14px;margin:0}.u{color:#777;font-weight:normal;font-size:12px}"
    "table{border-collapse:collapse;font-size:12px}td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}"
    "figure{margin:6px 0 14px}figcaption{font-size:12px;color:#555}.note{color:#555}"
    "svg text{font:10px system-ui,sans-serif;fill:#444}.tl{text-anchor:middle}.yl{text-anchor:end}"
    ".al{text-anchor:end;fill:#777}.ax,.tk{stroke:#888;stroke-width:1}.grid{stroke:#eee}.brk{stroke:#888;fill:none}"
    ".mm{fill:#9ecae1;fill-opacity:.35}.sd{fill:#3182bd;fill-opacity:.28}.med{fill:none;stroke:#08519c;"
    "stroke-width:1.2;stroke-dasharray:4 2}.mem{fill:none;stroke-width:1.1;stroke-opacity:.9}"
    ".win{fill-opacity:.10}.pk{stroke:#fff;stroke-width:.5}.fam{fill:none;stroke:#000;stroke-width:1.2;"
    "stroke-dasharray:2 2}.key span{display:inline-block;width:12px;height:3px;margin:0 4px 3px 10px}";

struct fpage {
    FILE *f;
    struct db *db;
    char family[256];
    int nm;
    char **members;         /* names, borrowed from mres */
    PGresult *mres;
    struct report_axis ax;
    struct report_stats *st;
};

#define PR(pg, ...) fprintf((pg)->f, __VA_ARGS__)

static void esc(struct fpage *pg, const char *s) { report_html_escape(pg->f, s); }

static int member_index(const struct fpage *pg, const char *run)
{
    for (int i = 0; i < pg->nm; i++)
        if (strcmp(pg->members[i], run) == 0)
            return i;
    return -1;
}

void report_family_default_dir(char *buf, size_t n, const char *family)
{
    snprintf(buf, n, "report-family-%s", family);
    for (char *c = buf; *c; c++)
        if (*c == '/')
            *c = '_';
}

static void key_text(char *buf, size_t n, int layer, int head, int idx)
{
    buf[0] = '\0';
    if (layer >= 0 || head >= 0 || idx >= 0)
        snprintf(buf, n, " layer %d head %d idx %d", layer, head, idx);
}

/* One band chart of series (metric_id, layer, head, idx). */
static int draw_series(struct fpage *pg, const char *metric_id, const char *item, const char *name,
                       const char *unit, int layer, int head, int idx, struct err *e)
{
    char l[16], h[16], x[16];
    snprintf(l, sizeof l, "%d", layer);
    snprintf(h, sizeof h, "%d", head);
    snprintf(x, sizeof x, "%d", idx);
    const char *p[5] = {pg->family, metric_id, l, h, x};
    PGresult *band = db_exec(pg->db,
        "SELECT b.step, b.members, b.mean, coalesce(b.stddev, 0), b.median, b.min, b.max FROM family_bands b"
        " JOIN metrics mt ON mt.item = b.item AND mt.version = b.version AND mt.name = b.metric"
        " WHERE b.family = $1 AND mt.id = $2::int AND b.layer = $3::int AND b.head = $4::int AND b.idx = $5::int"
        " ORDER BY b.step", 5, p, e);
    PGresult *pts = band ? db_exec(pg->db,
        "SELECT s.run, s.step, s.value FROM series s JOIN metrics mt ON mt.item = s.item AND mt.version = s.version"
        "   AND mt.name = s.metric"
        " WHERE s.run IN (SELECT run FROM family_runs WHERE family = $1) AND mt.id = $2::int AND s.layer = $3::int"
        "   AND s.head = $4::int AND s.idx = $5::int AND s.value > '-Infinity'::float8 AND s.value < 'Infinity'::float8"
        " ORDER BY s.run, s.step", 5, p, e) : NULL;
    PGresult *tr = pts ? db_exec(pg->db,
        "SELECT r.name, t.start_step, t.peak_step, t.end_step, t.magnitude, t.score, t.method FROM transitions t"
        " JOIN runs r ON r.id = t.run_id"
        " WHERE t.run_id IN (SELECT fm.run_id FROM family_members fm JOIN families f ON f.id = fm.family_id"
        "   WHERE f.name = $1) AND t.metric_id = $2::int AND t.layer = $3::int AND t.head = $4::int"
        "   AND t.idx = $5::int ORDER BY r.name, t.peak_step", 5, p, e) : NULL;
    PGresult *ft = tr ? db_exec(pg->db,
        "SELECT t.start_step, t.end_step, t.members_found, t.members_total, t.peak_min, t.peak_max, t.is_family"
        " FROM family_transitions t JOIN families f ON f.id = t.family_id"
        " WHERE f.name = $1 AND t.metric_id = $2::int AND t.layer = $3::int AND t.head = $4::int AND t.idx = $5::int"
        "   AND t.members_found >= 2", 5, p, e) : NULL;
    int rc = 0;
    if (!ft) {
        rc = ERR_DB;
        goto out;
    }
    int nb = PQntuples(band), np = PQntuples(pts);
    if (nb == 0 && np == 0)
        goto out;
    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < nb; i++) {
        lo = fmin(lo, strtod(PQgetvalue(band, i, 5), NULL));
        hi = fmax(hi, strtod(PQgetvalue(band, i, 6), NULL));
    }
    for (int i = 0; i < np; i++) {
        double v = strtod(PQgetvalue(pts, i, 2), NULL);
        lo = fmin(lo, v);
        hi = fmax(hi, v);
    }
    if (!(hi > lo)) {
        lo -= 0.5;
        hi += 0.5;
    }
    double pad = 0.05 * (hi - lo);
    lo -= pad;
    hi += pad;
    const double y0 = MT, y1 = H - MB;
#define YMAP(v) (y1 - ((v) - lo) / (hi - lo) * (y1 - y0))
    char key[64];
    key_text(key, sizeof key, layer, head, idx);
    PR(pg, "<figure class=\"band-chart\" data-metric=\"");
    esc(pg, name);
    PR(pg, "\" data-item=\"");
    esc(pg, item);
    PR(pg, "\" data-layer=\"%d\" data-head=\"%d\" data-idx=\"%d\"><h3>", layer, head, idx);
    esc(pg, item);
    PR(pg, "/");
    esc(pg, name);
    PR(pg, "%s <span class=\"u\">", key);
    esc(pg, unit);
    PR(pg, "</span></h3><svg width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" role=\"img\">", W, H, W, H);
    double ticks[8];
    int nt = report_nice_ticks(lo, hi, 5, ticks, 8);
    for (int i = 0; i < nt; i++) {
        char lab[32];
        snprintf(lab, sizeof lab, "%.4g", ticks[i]);
        PR(pg, "<line class=\"grid\" x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\"/><text class=\"yl\" x=\"%d\" "
               "y=\"%.1f\">%s</text>", ML - 4, YMAP(ticks[i]), W - MR, YMAP(ticks[i]), ML - 6, YMAP(ticks[i]) + 3, lab);
    }
    /* the members' transitions under everything: their windows */
    for (int i = 0; i < PQntuples(tr); i++) {
        int m = member_index(pg, PQgetvalue(tr, i, 0));
        double xa = report_axis_x(&pg->ax, atoll(PQgetvalue(tr, i, 1)));
        double xb = report_axis_x(&pg->ax, atoll(PQgetvalue(tr, i, 3)));
        PR(pg, "<rect class=\"win\" x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" height=\"%.1f\" fill=\"%s\"/>", xa, y0,
           fmax(xb - xa, 1.5), y1 - y0, colors[(m < 0 ? 0 : m) % REPORT_FAMILY_COLORS]);
    }
    /* the band: min..max, mean +- sd, median */
    if (nb > 0) {
        for (int kind = 0; kind < 2; kind++) {
            PR(pg, "<polygon class=\"%s\" points=\"", kind == 0 ? "mm" : "sd");
            for (int i = 0; i < nb; i++) {
                double v = kind == 0 ? strtod(PQgetvalue(band, i, 6), NULL)
                                     : strtod(PQgetvalue(band, i, 2), NULL) + strtod(PQgetvalue(band, i, 3), NULL);
                PR(pg, "%.2f,%.2f ", report_axis_x(&pg->ax, atoll(PQgetvalue(band, i, 0))), YMAP(fmin(v, hi)));
            }
            for (int i = nb - 1; i >= 0; i--) {
                double v = kind == 0 ? strtod(PQgetvalue(band, i, 5), NULL)
                                     : strtod(PQgetvalue(band, i, 2), NULL) - strtod(PQgetvalue(band, i, 3), NULL);
                PR(pg, "%.2f,%.2f ", report_axis_x(&pg->ax, atoll(PQgetvalue(band, i, 0))), YMAP(fmax(v, lo)));
            }
            PR(pg, "\"/>");
        }
        PR(pg, "<polyline class=\"med\" points=\"");
        for (int i = 0; i < nb; i++)
            PR(pg, "%.2f,%.2f ", report_axis_x(&pg->ax, atoll(PQgetvalue(band, i, 0))),
               YMAP(strtod(PQgetvalue(band, i, 4), NULL)));
        PR(pg, "\"/>");
        /* the band's values, for readers of the page's data */
        PR(pg, "<g class=\"bandpts\">");
        for (int i = 0; i < nb; i++) {
            PR(pg, "<circle r=\"0\" cx=\"%.2f\" cy=\"%.2f\" data-step=\"%s\" data-members=\"%s\" data-mean=\"%s\" "
                   "data-sd=\"%s\" data-median=\"%s\" data-min=\"%s\" data-max=\"%s\"/>",
               report_axis_x(&pg->ax, atoll(PQgetvalue(band, i, 0))), YMAP(strtod(PQgetvalue(band, i, 4), NULL)),
               PQgetvalue(band, i, 0), PQgetvalue(band, i, 1), PQgetvalue(band, i, 2), PQgetvalue(band, i, 3),
               PQgetvalue(band, i, 4), PQgetvalue(band, i, 5), PQgetvalue(band, i, 6));
        }
        PR(pg, "</g>");
    }
    report_step_axis(pg->f, &pg->ax, y1);
    /* every member's line */
    for (int i = 0; i < np;) {
        const char *run = PQgetvalue(pts, i, 0);
        int m = member_index(pg, run);
        PR(pg, "<polyline class=\"mem\" data-run=\"");
        esc(pg, run);
        PR(pg, "\" stroke=\"%s\" points=\"", colors[(m < 0 ? 0 : m) % REPORT_FAMILY_COLORS]);
        for (; i < np && strcmp(PQgetvalue(pts, i, 0), run) == 0; i++) {
            PR(pg, "%.2f,%.2f ", report_axis_x(&pg->ax, atoll(PQgetvalue(pts, i, 1))),
               YMAP(strtod(PQgetvalue(pts, i, 2), NULL)));
            pg->st->points++;
        }
        PR(pg, "\"><title>");
        esc(pg, run);
        PR(pg, "</title></polyline>");
    }
    /* the members' peaks on the top edge, the family's windows outlined */
    for (int i = 0; i < PQntuples(tr); i++) {
        int m = member_index(pg, PQgetvalue(tr, i, 0));
        double xp = report_axis_x(&pg->ax, atoll(PQgetvalue(tr, i, 2)));
        PR(pg, "<path class=\"pk\" d=\"M%.2f %.1fl-4 -7h8z\" fill=\"%s\" data-run=\"", xp, y0,
           colors[(m < 0 ? 0 : m) % REPORT_FAMILY_COLORS]);
        esc(pg, PQgetvalue(tr, i, 0));
        PR(pg, "\" data-start=\"%s\" data-peak=\"%s\" data-end=\"%s\"><title>", PQgetvalue(tr, i, 1),
           PQgetvalue(tr, i, 2), PQgetvalue(tr, i, 3));
        esc(pg, PQgetvalue(tr, i, 0));
        PR(pg, ": transition (");
        esc(pg, PQgetvalue(tr, i, 6));
        PR(pg, "), steps %s \xe2\x80\x93 %s, peak %s; magnitude %.4g, score %.4g</title></path>", PQgetvalue(tr, i, 1),
           PQgetvalue(tr, i, 3), PQgetvalue(tr, i, 2), strtod(PQgetvalue(tr, i, 4), NULL),
           strtod(PQgetvalue(tr, i, 5), NULL));
        pg->st->transitions++;
    }
    for (int i = 0; i < PQntuples(ft); i++) {
        double xa = report_axis_x(&pg->ax, atoll(PQgetvalue(ft, i, 0)));
        double xb = report_axis_x(&pg->ax, atoll(PQgetvalue(ft, i, 1)));
        int fam = strcmp(PQgetvalue(ft, i, 6), "t") == 0;
        PR(pg, "<rect class=\"fam\" x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" height=\"%.1f\"%s data-found=\"%s\" "
               "data-total=\"%s\"><title>%s transition: in %s of %s members, peaks %s \xe2\x80\x93 %s</title></rect>"
               "<text x=\"%.2f\" y=\"%.1f\">%s/%s</text>",
           xa, y0, fmax(xb - xa, 2.0), y1 - y0, fam ? "" : " stroke-opacity=\".35\"", PQgetvalue(ft, i, 2),
           PQgetvalue(ft, i, 3), fam ? "the family's" : "a minority", PQgetvalue(ft, i, 2), PQgetvalue(ft, i, 3),
           PQgetvalue(ft, i, 4), PQgetvalue(ft, i, 5), xa + 2, y0 + 10, PQgetvalue(ft, i, 2), PQgetvalue(ft, i, 3));
    }
#undef YMAP
    PR(pg, "</svg><figcaption>Band: min \xe2\x80\x93 max (light) and mean \xc2\xb1 one standard deviation "
           "(darker) of the members at each step, median dashed; %d member transition%s (windows in the "
           "member's colour, peaks as triangles); family transitions outlined (found in k of n).</figcaption>"
           "</figure>\n", PQntuples(tr), PQntuples(tr) == 1 ? "" : "s");
    pg->st->line_charts++;
out:
    PQclear(band);
    PQclear(pts);
    PQclear(tr);
    PQclear(ft);
    return rc;
}

static int write_page(struct fpage *pg, struct err *e)
{
    const char *p[1] = {pg->family};
    PGresult *ft = NULL, *ol = NULL, *ser = NULL, *sus = NULL;
    int rc = 0;
    ft = db_exec(pg->db,
        "SELECT item, metric, layer, head, idx, sign, members_found, members_total, is_family, peak_min, peak_median,"
        "   peak_max, peak_spread_ckpts, magnitude_median, array_to_string(members, ', '),"
        "   array_to_string(peaks, ', ') FROM family_transitions_named WHERE family = $1"
        " ORDER BY is_family DESC, peak_median, item, metric, layer, head, idx", 1, p, e);
    ol = ft ? db_exec(pg->db, "SELECT run, item, metric, layer, head, idx, reason, detail FROM family_outliers_named"
                              " WHERE family = $1 ORDER BY run, reason, item, metric, layer, head, idx", 1, p, e) : NULL;
    /* the series drawn: every metric with a single series, then the
     * series with a family transition or an outlier */
    ser = ol ? db_exec(pg->db,
        "WITH k AS (SELECT b.item, b.version, b.metric, b.layer, b.head, b.idx FROM family_bands b WHERE b.family = $1"
        "   GROUP BY 1, 2, 3, 4, 5, 6),"
        " single AS (SELECT item, version, metric FROM k GROUP BY 1, 2, 3 HAVING count(*) = 1),"
        " marked AS (SELECT mt.item, mt.version, mt.name AS metric, t.layer, t.head, t.idx FROM family_transitions t"
        "   JOIN families f ON f.id = t.family_id JOIN metrics mt ON mt.id = t.metric_id"
        "   WHERE f.name = $1 AND t.members_found >= 2"
        "   UNION SELECT mt.item, mt.version, mt.name, o.layer, o.head, o.idx FROM family_outliers o"
        "   JOIN families f ON f.id = o.family_id JOIN metrics mt ON mt.id = o.metric_id WHERE f.name = $1)"
        " SELECT mt.id, k.item, k.metric, mt.unit, k.layer, k.head, k.idx, (s.metric IS NOT NULL) AS single"
        " FROM k JOIN metrics mt ON mt.item = k.item AND mt.version = k.version AND mt.name = k.metric"
        " LEFT JOIN single s ON s.item = k.item AND s.version = k.version AND s.metric = k.metric"
        " WHERE s.metric IS NOT NULL OR (k.item, k.version, k.metric, k.layer, k.head, k.idx) IN (SELECT * FROM marked)"
        " ORDER BY (s.metric IS NULL), k.item, k.metric, k.layer, k.head, k.idx", 1, p, e) : NULL;
    sus = ser ? db_exec(pg->db,
        "SELECT fr.run, (SELECT count(*) FROM checkpoints c JOIN runs r ON r.id = c.run_id WHERE r.name = fr.run),"
        "   (SELECT count(*) FROM job_list j WHERE j.run = fr.run AND j.state = 'done'),"
        "   (SELECT count(*) FROM job_list j WHERE j.run = fr.run),"
        "   (SELECT coalesce(string_agg(step || ' ' || reason, ', ' ORDER BY step), '') FROM suspect_checkpoints s"
        "     WHERE s.run = fr.run),"
        "   (SELECT coalesce(to_char(analysed_at, 'YYYY-MM-DD HH24:MI:SS TZ'), 'never') FROM families WHERE name = $1)"
        " FROM family_runs fr WHERE fr.family = $1 ORDER BY fr.run", 1, p, e) : NULL;
    if (!sus) {
        rc = ERR_DB;
        goto out;
    }
    PR(pg, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>ckptd family report: ");
    esc(pg, pg->family);
    PR(pg, "</title><style>%s</style></head><body>\n<header><h1>family ", css);
    esc(pg, pg->family);
    PR(pg, "</h1><table class=\"members\"><tr><th>member</th><th>checkpoints</th><th>jobs done</th>"
           "<th>suspect checkpoints (left out)</th></tr>\n");
    for (int i = 0; i < PQntuples(sus); i++) {
        int m = member_index(pg, PQgetvalue(sus, i, 0));
        PR(pg, "<tr data-run=\"");
        esc(pg, PQgetvalue(sus, i, 0));
        PR(pg, "\"><td><span style=\"color:%s\">\xe2\x96\xa0</span> ", colors[(m < 0 ? 0 : m) % REPORT_FAMILY_COLORS]);
        esc(pg, PQgetvalue(sus, i, 0));
        PR(pg, "</td><td>%s</td><td>%s of %s</td><td>", PQgetvalue(sus, i, 1), PQgetvalue(sus, i, 2),
           PQgetvalue(sus, i, 3));
        esc(pg, PQgetvalue(sus, i, 4));
        PR(pg, "</td></tr>\n");
    }
    PR(pg, "</table><p class=\"note\">Analysed %s. x axis: the step on a log<sub>10</sub> scale, step 0 at the "
           "left edge. A transition is the family's when found in at least 2/3 of the members whose series "
           "the detector could read; the spread of its peaks is counted in checkpoints of the family's "
           "schedule.</p></header>\n", PQntuples(sus) ? PQgetvalue(sus, 0, 5) : "never");
    PR(pg, "<section id=\"transitions\"><h2>Transitions (%d)</h2>\n", PQntuples(ft));
    if (PQntuples(ft) == 0)
        PR(pg, "<p class=\"note\">No transitions in the members yet.</p>");
    else
        PR(pg, "<table class=\"family-transitions\"><tr><th>family's</th><th>series</th><th>direction</th>"
               "<th>members</th><th>peak min</th><th>median</th><th>max</th><th>spread (checkpoints)</th>"
               "<th>magnitude (median)</th><th>peaks</th></tr>\n");
    for (int i = 0; i < PQntuples(ft) && i < REPORT_TRANSITION_ROWS; i++) {
        char key[64];
        key_text(key, sizeof key, atoi(PQgetvalue(ft, i, 2)), atoi(PQgetvalue(ft, i, 3)), atoi(PQgetvalue(ft, i, 4)));
        PR(pg, "<tr data-family=\"%s\"><td>%s</td><td>", PQgetvalue(ft, i, 8), strcmp(PQgetvalue(ft, i, 8), "t") ? "" : "\xe2\x9c\x93");
        esc(pg, PQgetvalue(ft, i, 0));
        PR(pg, "/");
        esc(pg, PQgetvalue(ft, i, 1));
        PR(pg, "%s</td><td>%s</td><td>%s of %s</td><td>%s</td><td>%.0f</td><td>%s</td><td>%s</td><td>%.4g</td><td>", key,
           atoi(PQgetvalue(ft, i, 5)) < 0 ? "down" : "up", PQgetvalue(ft, i, 6), PQgetvalue(ft, i, 7),
           PQgetvalue(ft, i, 9), strtod(PQgetvalue(ft, i, 10), NULL), PQgetvalue(ft, i, 11), PQgetvalue(ft, i, 12),
           strtod(PQgetvalue(ft, i, 13), NULL));
        char *rs = strdup(PQgetvalue(ft, i, 14)), *ps = strdup(PQgetvalue(ft, i, 15)), *s1 = NULL, *s2 = NULL;
        char *w1 = rs ? strtok_r(rs, ", ", &s1) : NULL, *w2 = ps ? strtok_r(ps, ", ", &s2) : NULL;
        for (int k = 0; w1 && w2; k++, w1 = strtok_r(NULL, ", ", &s1), w2 = strtok_r(NULL, ", ", &s2)) {
            PR(pg, "%s", k ? ", " : "");
            esc(pg, w1);
            PR(pg, " @ %s", w2);
        }
        free(rs);
        free(ps);
        PR(pg, "</td></tr>\n");
    }
    if (PQntuples(ft) > 0)
        PR(pg, "</table>");
    PR(pg, "</section>\n<section id=\"outliers\"><h2>Outlier members (%d)</h2>\n", PQntuples(ol));
    if (PQntuples(ol) == 0)
        PR(pg, "<p class=\"note\">None: every member stays in the others' band and shows the family's "
               "transitions near the others' peaks.</p>");
    else
        PR(pg, "<table class=\"outliers\"><tr><th>member</th><th>series</th><th>reason</th><th>detail</th></tr>\n");
    for (int i = 0; i < PQntuples(ol) && i < REPORT_TRANSITION_ROWS; i++) {
        char key[64];
        key_text(key, sizeof key, atoi(PQgetvalue(ol, i, 3)), atoi(PQgetvalue(ol, i, 4)), atoi(PQgetvalue(ol, i, 5)));
        PR(pg, "<tr><td>");
        esc(pg, PQgetvalue(ol, i, 0));
        PR(pg, "</td><td>");
        esc(pg, PQgetvalue(ol, i, 1));
        PR(pg, "/");
        esc(pg, PQgetvalue(ol, i, 2));
        PR(pg, "%s</td><td>%s</td><td>", key, PQgetvalue(ol, i, 6));
        esc(pg, PQgetvalue(ol, i, 7));
        PR(pg, "</td></tr>\n");
    }
    if (PQntuples(ol) > 0)
        PR(pg, "</table>");
    PR(pg, "</section>\n<section id=\"bands\"><h2>Bands</h2><p class=\"key\">");
    for (int m = 0; m < pg->nm; m++) {
        PR(pg, "<span style=\"background:%s\"></span>", colors[m % REPORT_FAMILY_COLORS]);
        esc(pg, pg->members[m]);
    }
    PR(pg, "</p>\n");
    int nser = PQntuples(ser);
    if (nser == 0)
        PR(pg, "<p class=\"note\">No measurements yet.</p>\n");
    for (int i = 0; i < nser && i < REPORT_FAMILY_CHARTS; i++)
        if ((rc = draw_series(pg, PQgetvalue(ser, i, 0), PQgetvalue(ser, i, 1), PQgetvalue(ser, i, 2),
                              PQgetvalue(ser, i, 3), atoi(PQgetvalue(ser, i, 4)), atoi(PQgetvalue(ser, i, 5)),
                              atoi(PQgetvalue(ser, i, 6)), e)) < 0)
            goto out;
    if (nser > REPORT_FAMILY_CHARTS)
        PR(pg, "<p class=\"note\">%d more series with a family transition or an outlier are not drawn (at most %d "
               "charts a page).</p>\n", nser - REPORT_FAMILY_CHARTS, REPORT_FAMILY_CHARTS);
    PR(pg, "</section>\n<footer class=\"note\"><p>Written by ckptd report --family from a single snapshot of the "
           "database.</p></footer>\n</body></html>\n");
out:
    PQclear(ft);
    PQclear(ol);
    PQclear(ser);
    PQclear(sus);
    return rc;
}

int report_family_write(struct db *db, const char *family, const char *dir, struct report_stats *st,
                        struct err *e)
{
    struct report_stats local;
    if (!st)
        st = &local;
    memset(st, 0, sizeof *st);
    struct fpage pg;
    memset(&pg, 0, sizeof pg);
    pg.db = db;
    pg.st = st;
    snprintf(pg.family, sizeof pg.family, "%s", family);
    char path[4200], tmp[4300] = "";
    PGresult *steps = NULL;
    int rc, in_tx = 0;
    if (db_ensure(db, e) < 0)
        return ERR_DB;
    if ((rc = db_run(db, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", 0, NULL, e)) < 0)
        return rc;
    in_tx = 1;
    const char *p[1] = {family};
    pg.mres = db_exec(db, "SELECT f.id, r.name FROM families f LEFT JOIN family_members fm ON fm.family_id = f.id"
                          " LEFT JOIN runs r ON r.id = fm.run_id WHERE f.name = $1 ORDER BY r.name", 1, p, e);
    if (!pg.mres) {
        rc = ERR_DB;
        goto out;
    }
    if (PQntuples(pg.mres) == 0) {
        rc = err_set(e, ERR_NOTFOUND, family, "no family named '%s' (ckptd status lists the families)", family);
        goto out;
    }
    pg.members = calloc((size_t)PQntuples(pg.mres) + 1, sizeof *pg.members);
    if (!pg.members) {
        rc = err_set(e, ERR_NOMEM, family, "out of memory");
        goto out;
    }
    for (int i = 0; i < PQntuples(pg.mres); i++)
        if (!PQgetisnull(pg.mres, i, 1))
            pg.members[pg.nm++] = PQgetvalue(pg.mres, i, 1);
    steps = db_exec(db, "SELECT coalesce(bool_or(step = 0), false), coalesce(min(step) FILTER (WHERE step > 0), 0),"
                        " coalesce(max(step), 0) FROM checkpoints c JOIN family_runs fr ON fr.family = $1"
                        " JOIN runs r ON r.name = fr.run AND r.id = c.run_id", 1, p, e);
    if (!steps) {
        rc = ERR_DB;
        goto out;
    }
    report_axis_init(&pg.ax, strcmp(PQgetvalue(steps, 0, 0), "t") == 0, atoll(PQgetvalue(steps, 0, 1)),
                     atoll(PQgetvalue(steps, 0, 2)), ML, W - ML - MR);
    if ((rc = path_mkdir_p(dir, e)) < 0)
        goto out;
    snprintf(path, sizeof path, "%s/index.html", dir);
    snprintf(tmp, sizeof tmp, "%s/.index.html.%ld.tmp", dir, (long)getpid());
    if (!(pg.f = fopen(tmp, "w"))) {
        rc = err_set(e, ERR_IO, tmp, "cannot create: %s", strerror(errno));
        goto out;
    }
    if ((rc = write_page(&pg, e)) < 0)
        goto out;
    if (fflush(pg.f) != 0 || ferror(pg.f) || fsync(fileno(pg.f)) != 0) {
        rc = err_set(e, ERR_IO, tmp, "cannot write: %s", strerror(errno));
        goto out;
    }
    st->bytes = ftell(pg.f);
    FILE *f = pg.f;
    pg.f = NULL;
    if (fclose(f) != 0) {
        rc = err_set(e, ERR_IO, tmp, "cannot write: %s", strerror(errno));
        goto out;
    }
    if (rename(tmp, path) != 0) {
        rc = err_set(e, ERR_IO, path, "cannot rename %s into place: %s", tmp, strerror(errno));
        goto out;
    }
    rc = 0;
out:
    if (pg.f)
        fclose(pg.f);
    if (rc < 0 && tmp[0])
        unlink(tmp);
    if (in_tx)
        db_rollback(db);
    free(pg.members);
    PQclear(pg.mres);
    PQclear(steps);
    return rc;
}
