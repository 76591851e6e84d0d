#include "daemon/read/report.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/atomic_file.h"
#include "common/log.h"
#include "common/path.h"
#include "daemon/base/db.h"
#include "daemon/detect/transitions.h"

/* ---- pure pieces ---- */

void report_axis_init(struct report_axis *a, int has_zero, long long min_pos, long long max_step,
                      double left, double width)
{
    a->left = left;
    a->width = width;
    a->gap = has_zero ? REPORT_ZERO_GAP : 0;
    if (min_pos <= 0 || max_step <= 0) {
        a->lo = 0;
        a->hi = 1;
        return;
    }
    a->lo = floor(log10((double)min_pos) + 1e-9);
    a->hi = log10((double)max_step);
    if (a->hi < a->lo + 1)
        a->hi = a->lo + 1;
}

double report_axis_x(const struct report_axis *a, long long step)
{
    if (step <= 0)
        return a->left;
    double t = (log10((double)step) - a->lo) / (a->hi - a->lo);
    if (t < 0)
        t = 0;
    if (t > 1)
        t = 1;
    return a->left + a->gap + t * (a->width - a->gap);
}

void report_html_escape(FILE *out, const char *s)
{
    if (!s)
        return;
    for (; *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", out); break;
        case '<': fputs("&lt;", out); break;
        case '>': fputs("&gt;", out); break;
        case '"': fputs("&quot;", out); break;
        case '\'': fputs("&#39;", out); break;
        default: fputc(*s, out);
        }
    }
}

/* nine anchors after matplotlib's viridis (perceptually ordered: luminance rises) */
static const unsigned char ramp[9][3] = {
    {0x44, 0x01, 0x54}, {0x47, 0x2d, 0x7b}, {0x3b, 0x52, 0x8b}, {0x2c, 0x72, 0x8e}, {0x21, 0x91, 0x8c},
    {0x28, 0xae, 0x80}, {0x5e, 0xc9, 0x62}, {0xad, 0xdc, 0x30}, {0xfd, 0xe7, 0x25}};

void report_color(char out[8], double t)
{
    if (isnan(t)) {
        memcpy(out, "#ffffff", 8);
        return;
    }
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    double u = t * 8;
    int k = (int)u;
    if (k > 7)
        k = 7;
    double f = u - k;
    int c[3];
    for (int i = 0; i < 3; i++)
        c[i] = (int)lround(ramp[k][i] + f * (ramp[k + 1][i] - ramp[k][i]));
    snprintf(out, 8, "#%02x%02x%02x", c[0], c[1], c[2]);
}

int report_nice_ticks(double lo, double hi, int want, double *ticks, int max)
{
    if (!isfinite(lo) || !isfinite(hi) || max <= 0)
        return 0;
    if (hi < lo) {
        double t = lo;
        lo = hi;
        hi = t;
    }
    double range = hi - lo;
    if (range <= 0)
        range = fabs(hi) > 0 ? fabs(hi) : 1;
    double raw = range / (want > 1 ? want : 1);
    double mag = pow(10, floor(log10(raw)));
    double norm = raw / mag, step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
    double first = ceil(lo / step - 1e-9) * step;
    int n = 0;
    for (int k = 0; n < max; k++) {
        double v = first + k * step;
        if (v > hi + step * 1e-9)
            break;
        if (fabs(v) < step * 1e-9)
            v = 0;
        ticks[n++] = v;
    }
    return n;
}

void report_fmt_double(char *buf, size_t n, double v)
{
    if (isnan(v)) {
        snprintf(buf, n, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(buf, n, v > 0 ? "Infinity" : "-Infinity");
        return;
    }
    for (int p = 15; p <= 17; p++) {
        snprintf(buf, n, "%.*g", p, v);
        if (strtod(buf, NULL) == v)
            return;
    }
}

void report_default_dir(char *buf, size_t n, const char *run)
{
    snprintf(buf, n, "report-%s", run);
    for (char *c = buf; *c; c++)
        if (*c == '/')
            *c = '_';
}

/* ---- the page ---- */

enum chart_kind {
    KIND_LINE,    /* one key: value against step */
    KIND_PROFILE, /* only idx varies: value against idx at a few steps */
    KIND_HEAT,    /* heads, or several layers: rows against step */
    KIND_COUNT
};

static const char *const kind_names[KIND_COUNT] = {"line", "profile", "heatmap"};

struct ckpt {
    long long step;
    long long dup_of; /* the step it repeats, or -1 */
    char suspect[24]; /* why it is suspect (integrity.h), or "" */
    int measured;
};

struct trans {
    int metric_id, layer, head, idx;
    long long start, peak, end;
    double magnitude, score, p_value; /* p_value NaN when the row has none */
    const char *method; /* borrowed from page.tr_res */
    int spike;          /* kind 'spike': one or two checkpoints away and back */
};

struct page {
    FILE *f;
    struct db *db;
    char run_id[32];
    struct ckpt *ck;
    int nck;
    int has_zero;
    long long min_pos, max_step;
    struct trans *tr;
    int ntr;
    PGresult *tr_res;
    long budget; /* heatmap cells still allowed */
    struct report_stats *st;
};

#define PR(pg, ...) fprintf((pg)->f, __VA_ARGS__)

static void esc(struct page *pg, const char *s) { report_html_escape(pg->f, s); }

static double num(const char *s) { return strtod(s, NULL); }

static const struct ckpt *find_ckpt(const struct page *pg, long long step)
{
    int lo = 0, hi = pg->nck - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (pg->ck[mid].step == step)
            return &pg->ck[mid];
        if (pg->ck[mid].step < step)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}

static long long dup_of(const struct page *pg, long long step)
{
    const struct ckpt *c = find_ckpt(pg, step);
    if (c && c->dup_of < 0 && c->suspect[0])
        return c->step; /* left out like a duplicate */
    return c ? c->dup_of : -1;
}

/* "1k", "10k" … for the decade 10^k */
static void decade_label(char *buf, size_t n, int k)
{
    static const char *const suffix[] = {"", "k", "M", "G", "T"};
    if (k < 0 || k / 3 >= 5)
        snprintf(buf, n, "1e%d", k);
    else {
        int z = k % 3;
        snprintf(buf, n, "%s%s", z == 0 ? "1" : z == 1 ? "10" : "100", suffix[k / 3]);
    }
}

/* The step axis under a plot whose bottom is at y: decades labelled, the
 * steps between them as small ticks, step 0 left of a break mark. */
void report_step_axis(FILE *out, const struct report_axis *ax, double y)
{
    fprintf(out, "<g class=\"xaxis\">");
    fprintf(out, "<line class=\"ax\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>", ax->left + ax->gap, y,
       ax->left + ax->width, y);
    if (ax->gap > 0) {
        double b = ax->left + ax->gap / 2;
        fprintf(out, "<line class=\"ax\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>", ax->left - 4, y, b - 3, y);
        fprintf(out, "<path class=\"brk\" d=\"M%.1f %.1fl4 -8M%.1f %.1fl4 -8\"/>", b - 4, y + 4, b, y + 4);
        fprintf(out, "<line class=\"tk\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>", ax->left, y, ax->left, y + 4);
        fprintf(out, "<text class=\"tl\" x=\"%.1f\" y=\"%.1f\">0</text>", ax->left, y + 14);
    }
    for (int k = (int)ceil(ax->lo - 1e-9); k <= (int)floor(ax->hi + 1e-9); k++) {
        for (int m = 1; m <= 9; m++) {
            double s = m * pow(10, k);
            if (log10(s) > ax->hi + 1e-9)
                break;
            double x = report_axis_x(ax, (long long)llround(s));
            if (m == 1) {
                char lab[16];
                decade_label(lab, sizeof lab, k);
                fprintf(out, "<line class=\"tk\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>"
                       "<text class=\"tl\" x=\"%.1f\" y=\"%.1f\">%s</text>", x, y, x, y + 4, x, y + 14, lab);
            } else
                fprintf(out, "<line class=\"tk\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>", x, y, x, y + 2);
        }
    }
    fprintf(out, "<text class=\"al\" x=\"%.1f\" y=\"%.1f\">step</text></g>", ax->left + ax->width, y + 26);
}

static void draw_step_axis(struct page *pg, const struct report_axis *ax, double y)
{
    report_step_axis(pg->f, ax, y);
}

static void fmt_short(char *buf, size_t n, double v)
{
    if (!isfinite(v))
        report_fmt_double(buf, n, v);
    else
        snprintf(buf, n, "%.4g", v);
}

/* The transitions of one series, in the order loaded (by peak). */
static int series_transitions(const struct page *pg, int metric_id, int layer, int head, int idx,
                              const struct trans **out, int max)
{
    int n = 0;
    for (int i = 0; i < pg->ntr && n < max; i++) {
        const struct trans *t = &pg->tr[i];
        if (t->metric_id == metric_id && t->layer == layer && t->head == head && t->idx == idx)
            out[n++] = t;
    }
    return n;
}

static void trans_title(struct page *pg, const struct trans *t)
{
    char m[32], s[32], pv[32] = "";
    fmt_short(m, sizeof m, t->magnitude);
    fmt_short(s, sizeof s, t->score);
    if (isfinite(t->p_value))
        snprintf(pv, sizeof pv, ", p %.2g", t->p_value);
    PR(pg, "<title>%s (", t->spike ? "spike" : "transition");
    esc(pg, t->method);
    if (t->spike)
        PR(pg, "): steps %lld \xe2\x80\x93 %lld, farthest %lld; excursion %s, score %s</title>", t->start, t->end,
           t->peak, m, s);
    else
        PR(pg, "): steps %lld \xe2\x80\x93 %lld, peak %lld; magnitude %s, score %s%s</title>", t->start, t->end,
           t->peak, m, s, pv);
}

static void trans_data(struct page *pg, const struct trans *t)
{
    PR(pg, " data-start=\"%lld\" data-peak=\"%lld\" data-end=\"%lld\" data-method=\"", t->start, t->peak, t->end);
    esc(pg, t->method);
    PR(pg, "\"");
}

struct metric {
    int id, version;
    const char *item, *name, *unit, *desc, *layer_m, *head_m, *idx_m; /* borrowed from the result */
    long rows, keys;
    int has_head, nlayers, nidx;
    enum chart_kind kind;
};

static void metric_open(struct page *pg, const struct metric *m)
{
    PR(pg, "<div class=\"metric %s\" id=\"m%d\" data-metric=\"", kind_names[m->kind], m->id);
    esc(pg, m->name);
    PR(pg, "\" data-item=\"");
    esc(pg, m->item);
    PR(pg, "\" data-version=\"%d\" data-kind=\"%s\">\n<h3>", m->version, kind_names[m->kind]);
    esc(pg, m->name);
    PR(pg, " <span class=\"v\">v%d</span>", m->version);
    if (m->unit[0]) {
        PR(pg, " <span class=\"u\">");
        esc(pg, m->unit);
        PR(pg, "</span>");
    }
    PR(pg, "</h3>\n<p class=\"d\">");
    esc(pg, m->desc);
    const char *const what[3] = {"layer", "head", "idx"};
    const char *const mean[3] = {m->layer_m, m->head_m, m->idx_m};
    for (int i = 0; i < 3; i++)
        if (mean[i][0] && m->kind != KIND_LINE) {
            PR(pg, " <i>%s</i>: ", what[i]);
            esc(pg, mean[i]);
            PR(pg, ".");
        }
    PR(pg, "</p>\n");
}

/* ---- line chart: one series against step ---- */

#define LW 460
#define LH 230
#define LML 58
#define LMR 14
#define LMT 10
#define LMB 36

static int draw_line_chart(struct page *pg, const struct metric *m, struct err *e)
{
    char mid[16];
    snprintf(mid, sizeof mid, "%d", m->id);
    const char *p[2] = {pg->run_id, mid};
    PGresult *r = db_exec(pg->db,
        "SELECT layer, head, idx, step, value FROM measurements"
        " WHERE run_id = $1 AND metric_id = $2 ORDER BY step", 2, p, e);
    if (!r)
        return ERR_DB;
    int n = PQntuples(r);
    int layer = n ? atoi(PQgetvalue(r, 0, 0)) : -1, head = n ? atoi(PQgetvalue(r, 0, 1)) : -1;
    int idx = n ? atoi(PQgetvalue(r, 0, 2)) : -1;
    double ymin = INFINITY, ymax = -INFINITY;
    int nonfinite = 0, ndup = 0;
    for (int i = 0; i < n; i++) {
        double v = num(PQgetvalue(r, i, 4));
        if (!isfinite(v)) {
            nonfinite++;
            continue;
        }
        ymin = fmin(ymin, v);
        ymax = fmax(ymax, v);
    }
    if (!(ymin <= ymax)) {
        ymin = 0;
        ymax = 1;
    } else if (ymin == ymax) {
        double d = ymin != 0 ? fabs(ymin) * 0.1 : 1;
        ymin -= d;
        ymax += d;
    } else {
        double pad = (ymax - ymin) * 0.05;
        ymin -= pad;
        ymax += pad;
    }
    struct report_axis ax;
    report_axis_init(&ax, pg->has_zero, pg->min_pos, pg->max_step, LML, LW - LML - LMR);
    const double y0 = LMT, y1 = LH - LMB;
#define YMAP(v) (y1 - ((v) - ymin) / (ymax - ymin) * (y1 - y0))
    PR(pg, "<figure class=\"chart line\" data-layer=\"%d\" data-head=\"%d\" data-idx=\"%d\">"
           "<svg width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" role=\"img\">", layer, head, idx, LW, LH, LW, LH);
    /* y axis */
    double ticks[12];
    int nt = report_nice_ticks(ymin, ymax, 5, ticks, 12);
    PR(pg, "<g class=\"yaxis\">");
    for (int i = 0; i < nt; i++) {
        double y = YMAP(ticks[i]);
        char lab[32];
        snprintf(lab, sizeof lab, "%g", ticks[i]);
        PR(pg, "<line class=\"grid\" x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\"/>"
               "<text class=\"yl\" x=\"%d\" y=\"%.1f\">%s</text>", LML - 4, y, LW - LMR, y, LML - 6, y + 3, lab);
    }
    PR(pg, "</g>");
    /* transitions under the data */
    const struct trans *ts[64];
    int ntr = series_transitions(pg, m->id, layer, head, idx, ts, 64);
    int nspk = 0;
    for (int i = 0; i < ntr; i++) {
        if (ts[i]->spike) {
            nspk++;
            continue;
        }
        double xa = report_axis_x(&ax, ts[i]->start), xb = report_axis_x(&ax, ts[i]->end);
        double xp = report_axis_x(&ax, ts[i]->peak);
        PR(pg, "<g class=\"tr\"");
        trans_data(pg, ts[i]);
        PR(pg, ">");
        trans_title(pg, ts[i]);
        PR(pg, "<rect class=\"band\" x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" height=\"%.1f\"/>"
               "<line class=\"peak\" x1=\"%.2f\" y1=\"%.1f\" x2=\"%.2f\" y2=\"%.1f\"/></g>",
           xa, y0, fmax(xb - xa, 1.5), y1 - y0, xp, y0, xp, y1);
    }
    draw_step_axis(pg, &ax, y1);
    /* the line through the checkpoints that are not duplicates */
    PR(pg, "<polyline class=\"series\" points=\"");
    for (int i = 0; i < n; i++) {
        double v = num(PQgetvalue(r, i, 4));
        long long s = atoll(PQgetvalue(r, i, 3));
        if (isfinite(v) && dup_of(pg, s) < 0)
            PR(pg, "%.2f,%.2f ", report_axis_x(&ax, s), YMAP(v));
    }
    PR(pg, "\"/>");
    PR(pg, "<g class=\"pts\">");
    for (int i = 0; i < n; i++) {
        double v = num(PQgetvalue(r, i, 4));
        long long s = atoll(PQgetvalue(r, i, 3)), d = dup_of(pg, s);
        if (!isfinite(v))
            continue;
        char vs[40];
        report_fmt_double(vs, sizeof vs, v);
        PR(pg, "<circle class=\"pt%s\" cx=\"%.2f\" cy=\"%.2f\" r=\"%s\" data-step=\"%lld\" data-value=\"%s\">"
               "<title>step %lld: %s", d >= 0 ? " dup" : "", report_axis_x(&ax, s), YMAP(v), d >= 0 ? "2.5" : "2",
           s, vs, s, vs);
        if (d >= 0) {
            const struct ckpt *ck = find_ckpt(pg, s);
            if (ck && ck->suspect[0])
                PR(pg, " (suspect: %s; left out)", ck->suspect);
            else
                PR(pg, " (duplicate of step %lld)", d);
            ndup++;
        }
        PR(pg, "</title></circle>");
        pg->st->points++;
    }
    PR(pg, "</g>");
    /* spikes over the data: a ring on their farthest point, a tick under
     * the axis at every checkpoint of theirs */
    for (int i = 0; i < ntr; i++) {
        if (!ts[i]->spike)
            continue;
        double xp = report_axis_x(&ax, ts[i]->peak), yv = NAN;
        for (int k = 0; k < n && !isfinite(yv); k++)
            if (atoll(PQgetvalue(r, k, 3)) == ts[i]->peak)
                yv = num(PQgetvalue(r, k, 4));
        PR(pg, "<g class=\"spike\"");
        trans_data(pg, ts[i]);
        PR(pg, ">");
        trans_title(pg, ts[i]);
        if (isfinite(yv))
            PR(pg, "<circle class=\"spk\" cx=\"%.2f\" cy=\"%.2f\" r=\"5\"/>", xp, YMAP(yv));
        PR(pg, "<line class=\"spk\" x1=\"%.2f\" y1=\"%.1f\" x2=\"%.2f\" y2=\"%.1f\"/>", xp, y1 - 6, xp, y1);
        if (ts[i]->end != ts[i]->start) {
            double xo = report_axis_x(&ax, ts[i]->peak == ts[i]->start ? ts[i]->end : ts[i]->start);
            PR(pg, "<line class=\"spk\" x1=\"%.2f\" y1=\"%.1f\" x2=\"%.2f\" y2=\"%.1f\"/>", xo, y1 - 6, xo, y1);
        }
        PR(pg, "</g>");
    }
    PR(pg, "</svg>");
#undef YMAP
    int keyed = layer >= 0 || head >= 0 || idx >= 0;
    if (nonfinite || ndup || ntr || keyed) {
        PR(pg, "<figcaption>");
        if (keyed) {
            const char *const what[3] = {"layer", "head", "idx"};
            const int val[3] = {layer, head, idx};
            const char *const mean[3] = {m->layer_m, m->head_m, m->idx_m};
            for (int k = 0; k < 3; k++)
                if (val[k] >= 0) {
                    PR(pg, "%s %d", what[k], val[k]);
                    if (mean[k][0]) {
                        PR(pg, " (");
                        esc(pg, mean[k]);
                        PR(pg, ")");
                    }
                    PR(pg, ". ");
                }
        }
        if (ntr - nspk)
            PR(pg, "%d transition%s shaded. ", ntr - nspk, ntr - nspk == 1 ? "" : "s");
        if (nspk)
            PR(pg, "%d spike%s ringed. ", nspk, nspk == 1 ? "" : "s");
        if (ndup)
            PR(pg, "%d duplicate or suspect checkpoint%s in grey, not joined. ", ndup, ndup == 1 ? "" : "s");
        if (nonfinite)
            PR(pg, "<span class=\"warn\">%d value%s not finite (NaN or infinite), not drawn.</span>",
               nonfinite, nonfinite == 1 ? "" : "s");
        PR(pg, "</figcaption>");
    }
    PR(pg, "</figure>\n");
    PQclear(r);
    pg->st->line_charts++;
    return 0;
}

/* ---- profile: value against idx at a few steps ---- */

static int draw_profile(struct page *pg, const struct metric *m, struct err *e)
{
    char mid[16];
    snprintf(mid, sizeof mid, "%d", m->id);
    const char *p[3] = {pg->run_id, mid, NULL};
    PGresult *r = db_exec(pg->db,
        "SELECT DISTINCT step FROM measurements WHERE run_id = $1 AND metric_id = $2 ORDER BY step", 2, p, e);
    if (!r)
        return ERR_DB;
    struct report_axis ax;
    report_axis_init(&ax, pg->has_zero, pg->min_pos, pg->max_step, 0, 1000);
    long long cand[4096], pick[REPORT_PROFILE_STEPS];
    int nc = 0, np = 0;
    for (int i = 0; i < PQntuples(r) && nc < 4096; i++) {
        long long s = atoll(PQgetvalue(r, i, 0));
        if (dup_of(pg, s) < 0)
            cand[nc++] = s;
    }
    PQclear(r);
    if (nc <= REPORT_PROFILE_STEPS) {
        memcpy(pick, cand, (size_t)nc * sizeof *cand);
        np = nc;
    } else { /* evenly spread on the log-step axis */
        double xa = report_axis_x(&ax, cand[0]), xb = report_axis_x(&ax, cand[nc - 1]);
        int used[4096] = {0};
        for (int k = 0; k < REPORT_PROFILE_STEPS; k++) {
            double target = xa + k * (xb - xa) / (REPORT_PROFILE_STEPS - 1);
            int best = -1;
            for (int i = 0; i < nc; i++)
                if (!used[i] && (best < 0 || fabs(report_axis_x(&ax, cand[i]) - target) <
                                                 fabs(report_axis_x(&ax, cand[best]) - target)))
                    best = i;
            used[best] = 1;
        }
        for (int i = 0; i < nc; i++)
            if (used[i])
                pick[np++] = cand[i];
    }
    char arr[REPORT_PROFILE_STEPS * 24 + 4];
    db_int_array(arr, sizeof arr, pick, np);
    p[2] = arr;
    r = db_exec(pg->db,
        "SELECT step, idx, value FROM measurements WHERE run_id = $1 AND metric_id = $2"
        " AND step = ANY($3::bigint[]) ORDER BY step, idx", 3, p, e);
    if (!r)
        return ERR_DB;
    int n = PQntuples(r);
    double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
    int nonfinite = 0;
    for (int i = 0; i < n; i++) {
        double x = atof(PQgetvalue(r, i, 1)), v = num(PQgetvalue(r, i, 2));
        xmin = fmin(xmin, x);
        xmax = fmax(xmax, x);
        if (!isfinite(v)) {
            nonfinite++;
            continue;
        }
        ymin = fmin(ymin, v);
        ymax = fmax(ymax, v);
    }
    if (!(xmin < xmax)) {
        xmin = n ? xmin - 1 : 0;
        xmax = xmin + 2;
    }
    if (!(ymin < ymax)) {
        ymin = ymin <= ymax ? ymin - 1 : 0;
        ymax = ymin + 2;
    }
    const double y0 = LMT, y1 = LH - LMB, x0 = LML, x1 = LW - LMR;
#define XMAP(v) (x0 + ((v) - xmin) / (xmax - xmin) * (x1 - x0))
#define YMAP(v) (y1 - ((v) - ymin) / (ymax - ymin) * (y1 - y0))
    PR(pg, "<figure class=\"chart profile\"><svg width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" role=\"img\">",
       LW, LH + 16, LW, LH + 16);
    double ticks[12];
    int nt = report_nice_ticks(ymin, ymax, 5, ticks, 12);
    for (int i = 0; i < nt; i++)
        PR(pg, "<line class=\"grid\" x1=\"%.0f\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\"/>"
               "<text class=\"yl\" x=\"%.0f\" y=\"%.1f\">%g</text>", x0 - 4, YMAP(ticks[i]), x1, YMAP(ticks[i]),
           x0 - 6, YMAP(ticks[i]) + 3, ticks[i]);
    nt = report_nice_ticks(xmin, xmax, 6, ticks, 12);
    PR(pg, "<line class=\"ax\" x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\"/>", x0, y1, x1, y1);
    for (int i = 0; i < nt; i++)
        PR(pg, "<line class=\"tk\" x1=\"%.1f\" y1=\"%.0f\" x2=\"%.1f\" y2=\"%.0f\"/>"
               "<text class=\"tl\" x=\"%.1f\" y=\"%.0f\">%g</text>", XMAP(ticks[i]), y1, XMAP(ticks[i]), y1 + 4,
           XMAP(ticks[i]), y1 + 14, ticks[i]);
    PR(pg, "<text class=\"al\" x=\"%.0f\" y=\"%.0f\">idx</text><text class=\"lg\" x=\"%.0f\" y=\"%d\">steps:</text>",
       x1, y1 + 26, x0, LH + 11);
    int thinned = 0;
    for (int k = 0, i = 0; k < np; k++) {
        int a = i;
        while (i < n && atoll(PQgetvalue(r, i, 0)) == pick[k])
            i++;
        int cnt = i - a, stride = (cnt + REPORT_PROFILE_POINTS - 1) / REPORT_PROFILE_POINTS;
        if (stride < 1)
            stride = 1;
        if (stride > 1)
            thinned = stride;
        char col[8];
        report_color(col, np > 1 ? 0.9 * k / (np - 1) : 0);
        PR(pg, "<polyline class=\"prof\" stroke=\"%s\" data-step=\"%lld\" points=\"", col, pick[k]);
        for (int j = a; j < i; j++)
            if (((j - a) % stride == 0 || j == i - 1) && isfinite(num(PQgetvalue(r, j, 2))))
                PR(pg, "%.2f,%.2f ", XMAP(atof(PQgetvalue(r, j, 1))), YMAP(num(PQgetvalue(r, j, 2))));
        PR(pg, "\" data-idx=\"");
        for (int j = a; j < i; j++)
            if (((j - a) % stride == 0 || j == i - 1) && isfinite(num(PQgetvalue(r, j, 2))))
                PR(pg, "%s%s", j > a ? " " : "", PQgetvalue(r, j, 1));
        PR(pg, "\" data-values=\"");
        for (int j = a; j < i; j++)
            if (((j - a) % stride == 0 || j == i - 1) && isfinite(num(PQgetvalue(r, j, 2)))) {
                char vs[40];
                report_fmt_double(vs, sizeof vs, num(PQgetvalue(r, j, 2)));
                PR(pg, "%s%s", j > a ? " " : "", vs);
            }
        PR(pg, "\"><title>step %lld</title></polyline>", pick[k]);
        double lx = x0 + 34 + k * (x1 - x0 - 34) / (np > 0 ? np : 1);
        PR(pg, "<rect x=\"%.1f\" y=\"%d\" width=\"10\" height=\"4\" fill=\"%s\"/>"
               "<text class=\"lg\" x=\"%.1f\" y=\"%d\">%lld</text>", lx, LH + 6, col, lx + 13, LH + 11, pick[k]);
    }
#undef XMAP
#undef YMAP
    PR(pg, "</svg><figcaption>At %d of %d step%s, spread evenly on the log-step axis.", np, nc, nc == 1 ? "" : "s");
    if (thinned)
        PR(pg, " Every %d-th idx drawn (at most %d points a line).", thinned, REPORT_PROFILE_POINTS);
    if (nonfinite)
        PR(pg, " <span class=\"warn\">%d value%s not finite, not drawn.</span>", nonfinite, nonfinite == 1 ? "" : "s");
    PR(pg, "</figcaption></figure>\n");
    PQclear(r);
    pg->st->profiles++;
    return 0;
}

/* ---- heatmap: rows (layer, head or idx) against step ---- */

#define HW 760
#define HML 78
#define HMR 16
#define HMT 8

static void row_label(char *buf, size_t n, const struct metric *m, int layer, int head, int idx)
{
    if (m->has_head)
        snprintf(buf, n, "L%d H%d", layer, head);
    else if (m->nidx > 1 && m->nlayers > 1)
        snprintf(buf, n, "L%d i%d", layer, idx);
    else if (m->nlayers > 1)
        snprintf(buf, n, "L%d", layer);
    else
        snprintf(buf, n, "i%d", idx);
}

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

/* One heatmap of metric m; idx_filter NULL: every idx. */
static int draw_heatmap(struct page *pg, const struct metric *m, const char *idx_filter, struct err *e)
{
    char mid[16], cap[16];
    snprintf(mid, sizeof mid, "%d", m->id);
    snprintf(cap, sizeof cap, "%d", REPORT_HEAT_ROWS);
    const char *p[4] = {pg->run_id, mid, idx_filter, cap};
    /* the rows whose values change most, then every cell of them */
    PGresult *r = db_exec(pg->db,
        "WITH k AS (SELECT layer, head, idx, count(*) OVER () AS nkeys FROM measurements"
        "   WHERE run_id = $1 AND metric_id = $2 AND ($3::int IS NULL OR idx = $3::int)"
        "   GROUP BY layer, head, idx"
        "   ORDER BY max(value) - min(value) DESC, layer, head, idx LIMIT $4::int)"
        " SELECT m.layer, m.head, m.idx, m.step, m.value, k.nkeys FROM measurements m"
        " JOIN k ON k.layer = m.layer AND k.head = m.head AND k.idx = m.idx"
        " WHERE m.run_id = $1 AND m.metric_id = $2 ORDER BY m.layer, m.head, m.idx, m.step", 4, p, e);
    if (!r)
        return ERR_DB;
    int n = PQntuples(r);
    long nkeys = n ? atol(PQgetvalue(r, 0, 5)) : 0;
    PR(pg, "<figure class=\"chart heat\"%s%s%s>", idx_filter ? " data-idx=\"" : "", idx_filter ? idx_filter : "",
       idx_filter ? "\"" : "");
    if (idx_filter && (m->nidx > 1 || strcmp(idx_filter, "-1") != 0))
        PR(pg, "<figcaption class=\"top\">idx %s</figcaption>", idx_filter);
    if (n > pg->budget) {
        PR(pg, "<p class=\"warn\">Not drawn: %d cells would pass the page's budget of %d heatmap cells "
               "(query the <code>series</code> view).</p></figure>\n", n, REPORT_HEAT_BUDGET);
        PQclear(r);
        return 0;
    }
    /* columns: the steps present */
    long long *steps = malloc(((size_t)n + 1) * sizeof *steps);
    double *bx = malloc(((size_t)n + 2) * sizeof *bx);
    if (!steps || !bx) {
        free(steps);
        free(bx);
        PQclear(r);
        return err_set(e, ERR_NOMEM, "report", "out of memory for a heatmap of %d cells", n);
    }
    for (int i = 0; i < n; i++)
        steps[i] = atoll(PQgetvalue(r, i, 3));
    qsort(steps, (size_t)n, sizeof *steps, cmp_ll);
    int ns = 0;
    for (int i = 0; i < n; i++)
        if (ns == 0 || steps[ns - 1] != steps[i])
            steps[ns++] = steps[i];
    struct report_axis ax;
    report_axis_init(&ax, pg->has_zero, pg->min_pos, pg->max_step, HML, HW - HML - HMR);
    /* column i spans [bx[i], bx[i+1]): halfway to its neighbours */
    for (int i = 0; i <= ns; i++) {
        if (ns == 1)
            bx[i] = report_axis_x(&ax, steps[0]) + (i ? 4 : -4);
        else if (i == 0)
            bx[i] = report_axis_x(&ax, steps[0]) - (report_axis_x(&ax, steps[1]) - report_axis_x(&ax, steps[0])) / 2;
        else if (i == ns)
            bx[i] = report_axis_x(&ax, steps[ns - 1]) +
                    (report_axis_x(&ax, steps[ns - 1]) - report_axis_x(&ax, steps[ns - 2])) / 2;
        else
            bx[i] = (report_axis_x(&ax, steps[i - 1]) + report_axis_x(&ax, steps[i])) / 2;
    }
    double vmin = INFINITY, vmax = -INFINITY;
    int nrows = 0;
    for (int i = 0; i < n; i++) {
        double v = num(PQgetvalue(r, i, 4));
        if (i == 0 || strcmp(PQgetvalue(r, i, 0), PQgetvalue(r, i - 1, 0)) ||
            strcmp(PQgetvalue(r, i, 1), PQgetvalue(r, i - 1, 1)) || strcmp(PQgetvalue(r, i, 2), PQgetvalue(r, i - 1, 2)))
            nrows++;
        if (isfinite(v) && dup_of(pg, atoll(PQgetvalue(r, i, 3))) < 0) {
            vmin = fmin(vmin, v);
            vmax = fmax(vmax, v);
        }
    }
    if (!(vmin <= vmax))
        vmin = vmax = 0;
    int rh = nrows ? 300 / nrows : 14;
    rh = rh < 4 ? 4 : rh > 14 ? 14 : rh;
    const int label_all = rh >= 9;
    double top = HMT, bottom = top + nrows * rh;
    int h = (int)bottom + 34 + 30;
    PR(pg, "<svg width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" role=\"img\">", HW, h, HW, h);
    int row = -1, nonfinite = 0, prev_layer = -99999;
    for (int i = 0; i < n; i++) {
        int layer = atoi(PQgetvalue(r, i, 0)), head = atoi(PQgetvalue(r, i, 1)), idx = atoi(PQgetvalue(r, i, 2));
        int start = i == 0 || strcmp(PQgetvalue(r, i, 0), PQgetvalue(r, i - 1, 0)) ||
                    strcmp(PQgetvalue(r, i, 1), PQgetvalue(r, i - 1, 1)) ||
                    strcmp(PQgetvalue(r, i, 2), PQgetvalue(r, i - 1, 2));
        if (start) {
            if (row >= 0)
                PR(pg, "</g>");
            row++;
            double y = top + row * rh;
            char lab[48];
            row_label(lab, sizeof lab, m, layer, head, idx);
            if (layer != prev_layer && row > 0 && !label_all)
                PR(pg, "<line class=\"sep\" x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\"/>", HML - 30, y, HW - HMR, y);
            if (!label_all)
                snprintf(lab, sizeof lab, "L%d", layer);
            if (label_all || layer != prev_layer)
                PR(pg, "<text class=\"rl\" x=\"%d\" y=\"%.1f\">%s</text>", HML - 14,
                   y + (rh < 9 ? 7 : rh / 2.0 + 3), lab);
            prev_layer = layer;
            /* a summary of the row as its tooltip */
            double best = -INFINITY, low = INFINITY;
            long long at = -1;
            for (int j = i; j < n && atoi(PQgetvalue(r, j, 0)) == layer && atoi(PQgetvalue(r, j, 1)) == head &&
                            atoi(PQgetvalue(r, j, 2)) == idx; j++) {
                double v = num(PQgetvalue(r, j, 4));
                if (isfinite(v) && v > best) {
                    best = v;
                    at = atoll(PQgetvalue(r, j, 3));
                }
                if (isfinite(v))
                    low = fmin(low, v);
            }
            char b[32], l[32];
            fmt_short(b, sizeof b, best);
            fmt_short(l, sizeof l, low);
            row_label(lab, sizeof lab, m, layer, head, idx);
            PR(pg, "<g class=\"row\" data-layer=\"%d\" data-head=\"%d\" data-idx=\"%d\" transform=\"translate(0 %.1f)\">"
                   "<title>%s: min %s, max %s at step %lld</title>", layer, head, idx, y, lab, l, b, at);
        }
        long long s = atoll(PQgetvalue(r, i, 3));
        double v = num(PQgetvalue(r, i, 4));
        int c = 0, hi = ns - 1;
        while (c < hi) { /* the column of s */
            int mcol = (c + hi) / 2;
            if (steps[mcol] < s)
                c = mcol + 1;
            else
                hi = mcol;
        }
        char col[8], vs[40];
        const char *cls = "";
        if (dup_of(pg, s) >= 0) {
            memcpy(col, "#bdbdbd", 8);
            cls = " class=\"dup\"";
        } else if (!isfinite(v)) {
            memcpy(col, "#ffffff", 8);
            cls = " class=\"nf\"";
            nonfinite++;
        } else
            report_color(col, vmax > vmin ? (v - vmin) / (vmax - vmin) : 0.5);
        report_fmt_double(vs, sizeof vs, v);
        PR(pg, "<rect%s x=\"%.2f\" width=\"%.2f\" height=\"%d\" fill=\"%s\" data-step=\"%lld\" data-value=\"%s\"/>",
           cls, bx[c], bx[c + 1] - bx[c], rh, col, s, vs);
        pg->st->cells++;
        pg->budget--;
        int last = i == n - 1 || atoi(PQgetvalue(r, i + 1, 0)) != layer || atoi(PQgetvalue(r, i + 1, 1)) != head ||
                   atoi(PQgetvalue(r, i + 1, 2)) != idx;
        if (last) { /* the row's transitions, outlined over it */
            const struct trans *ts[32];
            int nt = series_transitions(pg, m->id, layer, head, idx, ts, 32);
            for (int k = 0; k < nt; k++) {
                double xa = report_axis_x(&ax, ts[k]->start), xb = report_axis_x(&ax, ts[k]->end);
                PR(pg, "<rect class=\"%s\" x=\"%.2f\" width=\"%.2f\" height=\"%d\"", ts[k]->spike ? "sph" : "trh",
                   xa, fmax(xb - xa, 2), rh);
                trans_data(pg, ts[k]);
                PR(pg, ">");
                trans_title(pg, ts[k]);
                PR(pg, "</rect>");
            }
        }
    }
    if (row >= 0)
        PR(pg, "</g>");
    draw_step_axis(pg, &ax, bottom + 2);
    /* legend: the ramp, its ends, duplicates, not finite */
    double ly = bottom + 40;
    PR(pg, "<g class=\"legend\"><rect x=\"%d\" y=\"%.1f\" width=\"200\" height=\"10\" fill=\"url(#ramp)\"/>", HML, ly);
    char a[32], b[32];
    fmt_short(a, sizeof a, vmin);
    fmt_short(b, sizeof b, vmax);
    PR(pg, "<text class=\"lg yl\" x=\"%d\" y=\"%.1f\" data-min=\"%s\">%s</text>", HML - 4, ly + 9, a, a);
    PR(pg, "<text class=\"lg\" x=\"%d\" y=\"%.1f\" data-max=\"%s\">%s</text>", HML + 204, ly + 9, b, b);
    PR(pg, "<rect x=\"%d\" y=\"%.1f\" width=\"10\" height=\"10\" fill=\"#bdbdbd\"/>"
           "<text class=\"lg\" x=\"%d\" y=\"%.1f\">duplicate checkpoint</text>", HML + 300, ly, HML + 314, ly + 9);
    PR(pg, "<rect x=\"%d\" y=\"%.1f\" width=\"10\" height=\"10\" fill=\"#ffffff\" stroke=\"#999\"/>"
           "<text class=\"lg\" x=\"%d\" y=\"%.1f\">not finite</text></g>", HML + 450, ly, HML + 464, ly + 9);
    PR(pg, "</svg>");
    if (nkeys > nrows || nonfinite)
        PR(pg, "<figcaption>");
    if (nkeys > nrows)
        PR(pg, "%d of %ld rows drawn: those whose values change most (max &#8722; min). ", nrows, nkeys);
    if (nonfinite)
        PR(pg, "<span class=\"warn\">%d value%s not finite (white).</span>", nonfinite, nonfinite == 1 ? "" : "s");
    if (nkeys > nrows || nonfinite)
        PR(pg, "</figcaption>");
    PR(pg, "</figure>\n");
    free(steps);
    free(bx);
    PQclear(r);
    pg->st->heatmaps++;
    return 0;
}

static int draw_heat_metric(struct page *pg, const struct metric *m, struct err *e)
{
    if (!m->has_head) /* rows (layer, idx): one heatmap */
        return draw_heatmap(pg, m, NULL, e);
    char mid[16], lim[16];
    snprintf(mid, sizeof mid, "%d", m->id);
    snprintf(lim, sizeof lim, "%d", REPORT_HEAT_IDX);
    const char *p[3] = {pg->run_id, mid, lim};
    PGresult *r = db_exec(pg->db,
        "SELECT DISTINCT idx FROM measurements WHERE run_id = $1 AND metric_id = $2 ORDER BY idx LIMIT $3::int",
        3, p, e);
    if (!r)
        return ERR_DB;
    int rc = 0;
    for (int i = 0; i < PQntuples(r) && rc == 0; i++)
        rc = draw_heatmap(pg, m, PQgetvalue(r, i, 0), e);
    if (rc == 0 && m->nidx > PQntuples(r))
        PR(pg, "<p class=\"note\">Heatmaps of the first %d of %d idx values drawn.</p>\n", PQntuples(r), m->nidx);
    PQclear(r);
    return rc;
}

/* ---- SAE lineages ---- */

static int draw_lineages(struct page *pg, const char *items, struct err *e)
{
    PGresult *r = db_exec(pg->db, "SELECT to_regclass('feature_lineages') IS NOT NULL", 0, NULL, e);
    if (!r)
        return ERR_DB;
    int exists = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    int wants = strstr(items, "sae") != NULL;
    if (!exists) {
        if (wants)
            PR(pg, "<section id=\"sae-lineages\"><h2>SAE lineages</h2><p class=\"note\">This database has no "
                   "<code>feature_lineages</code> table: no lineages to draw.</p></section>\n");
        return 0;
    }
    if (db_run(pg->db, "SAVEPOINT lineages", 0, NULL, e) < 0)
        return ERR_DB;
    char lim[16];
    snprintf(lim, sizeof lim, "%d", REPORT_LINEAGES);
    const char *q[2] = {pg->run_id, lim};
    struct err le;
    r = db_exec(pg->db,
        "SELECT layer, lineage::text AS lineage_text, birth_step, death_step, last_step, length::text, splits::text, n"
        " FROM (SELECT *, row_number() OVER (PARTITION BY layer ORDER BY birth_step, lineage) AS rn,"
        "              count(*) OVER (PARTITION BY layer) AS n"
        "       FROM feature_lineages WHERE run_id = $1) s"
        " WHERE rn <= $2::int ORDER BY layer, birth_step, lineage", 2, q, &le);
    if (!r) { /* a table of another shape: say so, draw the rest */
        if (db_run(pg->db, "ROLLBACK TO SAVEPOINT lineages", 0, NULL, e) < 0)
            return ERR_DB;
        PR(pg, "<section id=\"sae-lineages\"><h2>SAE lineages</h2><p class=\"warn\">Cannot read "
               "<code>feature_lineages</code>: ");
        esc(pg, le.msg);
        PR(pg, "</p></section>\n");
        return 0;
    }
    int n = PQntuples(r);
    if (n == 0) {
        if (wants)
            PR(pg, "<section id=\"sae-lineages\"><h2>SAE lineages</h2><p class=\"note\">No lineages recorded "
                   "for this run yet.</p></section>\n");
        PQclear(r);
        return db_run(pg->db, "RELEASE SAVEPOINT lineages", 0, NULL, e);
    }
    PR(pg, "<section id=\"sae-lineages\"><h2>SAE lineages</h2><p class=\"d\">One bar per feature lineage (an SAE "
           "feature matched from checkpoint to checkpoint), from the step it was born to the step it died; "
           "a lineage still alive reaches its last step and ends in an arrow. Darker bars split. Sorted by birth.</p>\n");
    for (int i = 0; i < n;) {
        int layer = atoi(PQgetvalue(r, i, 0)), a = i;
        while (i < n && atoi(PQgetvalue(r, i, 0)) == layer)
            i++;
        int cnt = i - a;
        long total = atol(PQgetvalue(r, a, 7));
        int bh = 300 / cnt;
        bh = bh < 2 ? 2 : bh > 10 ? 10 : bh;
        double top = 8, bottom = top + cnt * bh;
        int h = (int)bottom + 34;
        struct report_axis ax;
        report_axis_init(&ax, pg->has_zero, pg->min_pos, pg->max_step, HML, HW - HML - HMR);
        PR(pg, "<figure class=\"chart lineages\" data-layer=\"%d\"><figcaption class=\"top\">layer %d</figcaption>"
               "<svg width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" role=\"img\">", layer, layer, HW, h, HW, h);
        for (int j = a; j < i; j++) {
            long long birth = atoll(PQgetvalue(r, j, 2)), last = atoll(PQgetvalue(r, j, 4));
            int alive = PQgetisnull(r, j, 3);
            long long death = alive ? -1 : atoll(PQgetvalue(r, j, 3));
            long long end = alive ? last : death;
            double xa = report_axis_x(&ax, birth), xb = report_axis_x(&ax, end), y = top + (j - a) * bh;
            int splits = atoi(PQgetvalue(r, j, 6));
            PR(pg, "<rect class=\"lin%s%s\" x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" height=\"%d\" data-lineage=\"",
               alive ? " alive" : "", splits > 0 ? " split" : "", xa, y, fmax(xb - xa, 1.5), bh > 2 ? bh - 1 : bh);
            esc(pg, PQgetvalue(r, j, 1));
            PR(pg, "\" data-birth=\"%lld\" data-death=\"%s\" data-last=\"%lld\" data-splits=\"%d\"><title>lineage ",
               birth, alive ? "" : PQgetvalue(r, j, 3), last, splits);
            esc(pg, PQgetvalue(r, j, 1));
            PR(pg, ": born at step %lld, ", birth);
            if (alive)
                PR(pg, "alive at step %lld", last);
            else
                PR(pg, "died at step %lld", death);
            PR(pg, ", %s checkpoints, %d split%s</title></rect>", PQgetvalue(r, j, 5), splits, splits == 1 ? "" : "s");
            if (alive)
                PR(pg, "<path class=\"arrow\" d=\"M%.2f %.1fl4 %.1fl-4 %.1fz\"/>", xb + 1, y, bh / 2.0, bh / 2.0);
            pg->st->lineages++;
        }
        draw_step_axis(pg, &ax, bottom + 2);
        PR(pg, "</svg>");
        if (total > cnt)
            PR(pg, "<figcaption>%d of %ld lineages drawn: the earliest born.</figcaption>", cnt, total);
        PR(pg, "</figure>\n");
    }
    PR(pg, "</section>\n");
    PQclear(r);
    return db_run(pg->db, "RELEASE SAVEPOINT lineages", 0, NULL, e);
}

/* ---- header, transitions table, sections ---- */

static const char css[] =
    "body{font:14px/1.4 system-ui,sans-serif;margin:16px 24px;color:#222;background:#fff}"
    "h1{font-size:22px;margin:0 0 8px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}"
    "h3{font-size:14px;margin:0}.v,.u{color:#777;font-weight:normal;font-size:12px}"
    "p.d{color:#555;font-size:12px;margin:2px 0 4px;max-width:760px}"
    "dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px;margin:0}dt{color:#666}dd{margin:0}"
    "table{border-collapse:collapse;font-size:12px}td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:right}"
    "td:nth-child(-n+2),th:nth-child(-n+2),td:last-child,th:last-child{text-align:left}"
    ".grid2{display:flex;flex-wrap:wrap;gap:12px 18px}.metric{margin:10px 0}"
    "figure{margin:4px 0}figcaption{font-size:12px;color:#555}.warn{color:#b35806}.note{color:#555}"
    "nav a{margin-right:10px}.empty{font-size:16px;color:#555;margin:24px 0}"
    "svg text{font:10px system-ui,sans-serif;fill:#444}.tl{text-anchor:middle}.yl,.rl{text-anchor:end}"
    ".al{text-anchor:end;fill:#777}.lg{fill:#333}"
    ".ax,.tk{stroke:#888;stroke-width:1}.grid{stroke:#eee}.brk{stroke:#888;fill:none}.sep{stroke:#fff;stroke-width:1}"
    ".series{fill:none;stroke:#1f5fa8;stroke-width:1.5}.pt{fill:#1f5fa8}.pt.dup{fill:#b0b0b0;stroke:#888}"
    ".band{fill:#e41a1c;fill-opacity:.12}.peak{stroke:#e41a1c;stroke-width:1;stroke-dasharray:3 2}"
    "circle.spk{fill:none;stroke:#ff7f00;stroke-width:1.5}line.spk{stroke:#ff7f00;stroke-width:1.5}"
    ".sph{fill:none;stroke:#ff7f00;stroke-width:1}"
    ".row rect{shape-rendering:crispEdges}.prof{fill:none;stroke-width:1.3}.trh{fill:none;stroke:#e41a1c;stroke-width:1.2}"
    ".lin{fill:#6a8fc4}.lin.split{fill:#2b4f8a}.lin.alive{fill:#5aae61}.arrow{fill:#5aae61}";

static void ramp_defs(struct page *pg)
{
    PR(pg, "<svg width=\"0\" height=\"0\" style=\"position:absolute\" aria-hidden=\"true\"><defs>"
           "<linearGradient id=\"ramp\">");
    for (int k = 0; k <= 8; k++) {
        char c[8];
        report_color(c, k / 8.0);
        PR(pg, "<stop offset=\"%g\" stop-color=\"%s\"/>", k / 8.0, c);
    }
    PR(pg, "</linearGradient></defs></svg>\n");
}

static const char *const item_order[] = {"loss", "task", "heads", "lens", "llc", "sae", "weights",
                                          "ablation", "composition", "probes"};

static int item_rank(const char *item)
{
    for (size_t i = 0; i < sizeof item_order / sizeof *item_order; i++)
        if (strcmp(item, item_order[i]) == 0)
            return (int)i;
    return 100;
}

static int write_transitions_table(struct page *pg, PGresult *tr)
{
    int n = PQntuples(tr);
    int nspikes = 0;
    for (int i = 0; i < n; i++)
        nspikes += strcmp(PQgetvalue(tr, i, 13), "spike") == 0;
    PR(pg, "<section id=\"transitions\"><h2>Transitions (%d) and spikes (%d)</h2>\n", n - nspikes, nspikes);
    if (n == 0) {
        PR(pg, "<p class=\"note\">No transitions detected yet.</p></section>\n");
        return 0;
    }
    PR(pg, "<table class=\"transitions\"><tr><th>kind</th><th>item</th><th>metric</th><th>layer</th><th>head</th>"
           "<th>idx</th><th>start</th><th>peak</th><th>end</th><th>magnitude</th><th>score</th><th>p-value</th>"
           "<th>method</th></tr>\n");
    for (int i = 0; i < n && i < REPORT_TRANSITION_ROWS; i++) {
        char m[32], s[32], pv[32] = "";
        fmt_short(m, sizeof m, num(PQgetvalue(tr, i, 7)));
        fmt_short(s, sizeof s, num(PQgetvalue(tr, i, 8)));
        if (!PQgetisnull(tr, i, 14))
            snprintf(pv, sizeof pv, "%.2g", num(PQgetvalue(tr, i, 14)));
        PR(pg, "<tr class=\"%s\"><td>%s</td><td>", PQgetvalue(tr, i, 13), PQgetvalue(tr, i, 13));
        esc(pg, PQgetvalue(tr, i, 10));
        PR(pg, "</td><td><a href=\"#m%s\">", PQgetvalue(tr, i, 0));
        esc(pg, PQgetvalue(tr, i, 11));
        PR(pg, "</a> v%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td>"
               "<td>%s</td><td>",
           PQgetvalue(tr, i, 12), PQgetvalue(tr, i, 1), PQgetvalue(tr, i, 2), PQgetvalue(tr, i, 3),
           PQgetvalue(tr, i, 4), PQgetvalue(tr, i, 5), PQgetvalue(tr, i, 6), m, s, pv);
        esc(pg, PQgetvalue(tr, i, 9));
        PR(pg, "</td></tr>\n");
    }
    PR(pg, "</table>\n");
    if (n > REPORT_TRANSITION_ROWS)
        PR(pg, "<p class=\"note\">The first %d of %d, by peak step (all are in the <code>transitions</code> "
               "table).</p>\n", REPORT_TRANSITION_ROWS, n);
    PR(pg, "</section>\n");
    return 0;
}

static int cmp_metric(const void *a, const void *b)
{
    const struct metric *x = a, *y = b;
    int rx = item_rank(x->item), ry = item_rank(y->item);
    if (rx != ry)
        return rx - ry;
    int c = strcmp(x->item, y->item);
    if (c)
        return c;
    if (x->kind != y->kind)
        return (int)x->kind - (int)y->kind;
    c = strcmp(x->name, y->name);
    return c ? c : x->version - y->version;
}

static int write_page(struct page *pg, PGresult *run, struct err *e)
{
    const char *p[1] = {pg->run_id};
    PGresult *jobs = NULL, *mres = NULL, *tr = NULL;
    struct metric *ms = NULL;
    int rc = ERR_DB;
    if (!(jobs = db_exec(pg->db,
              "SELECT count(*) FILTER (WHERE j.state = 'done'), count(*) FILTER (WHERE j.state = 'running'),"
              " count(*) FILTER (WHERE j.state = 'queued'), count(*) FILTER (WHERE j.state = 'dead'),"
              " (SELECT count(*) FROM measurements WHERE run_id = $1)"
              " FROM jobs j JOIN checkpoints c ON c.id = j.checkpoint_id WHERE c.run_id = $1", 1, p, e)))
        goto out;
    if (!(mres = db_exec(pg->db,
              "SELECT mt.id, mt.item, mt.version, mt.name, mt.unit, mt.description, mt.layer_meaning,"
              " mt.head_meaning, mt.idx_meaning, s.nrows, s.nkeys, s.has_head, s.nlayers, s.nidx"
              " FROM (SELECT metric_id, count(*) AS nrows, count(DISTINCT (layer, head, idx)) AS nkeys,"
              "        bool_or(head >= 0) AS has_head, count(DISTINCT layer) AS nlayers, count(DISTINCT idx) AS nidx"
              "       FROM measurements WHERE run_id = $1 GROUP BY metric_id) s"
              " JOIN metrics mt ON mt.id = s.metric_id"
              /* the integrity item's sketches are random projections, for the
               * daemon's check (integrity.h), not pictures */
              " WHERE (mt.item, mt.name) NOT IN (('integrity', 'sketch'), ('integrity', 'tensor_sketch'))", 1, p, e)))
        goto out;
    /* the rows of the current method; a run detected only by an older one
     * shows those */
    const char *pm[2] = {pg->run_id, TR_METHOD};
    if (!(tr = db_exec(pg->db,
              "SELECT t.metric_id, t.layer, t.head, t.idx, t.start_step, t.peak_step, t.end_step, t.magnitude,"
              " t.score, t.method, mt.item, mt.name, mt.version, t.kind, t.p_value"
              " FROM transitions t JOIN metrics mt ON mt.id = t.metric_id"
              " WHERE t.run_id = $1 AND (t.method = $2 OR NOT EXISTS"
              "  (SELECT 1 FROM transitions x WHERE x.run_id = $1 AND x.method = $2))"
              " ORDER BY t.peak_step, mt.item, mt.name, t.layer, t.head, t.idx, t.method, t.kind DESC", 2, pm, e)))
        goto out;
    int nm = PQntuples(mres), ntr = PQntuples(tr);
    ms = calloc((size_t)nm + 1, sizeof *ms);
    pg->tr = calloc((size_t)ntr + 1, sizeof *pg->tr);
    if (!ms || !pg->tr) {
        rc = err_set(e, ERR_NOMEM, "report", "out of memory");
        goto out;
    }
    for (int i = 0; i < ntr; i++) {
        struct trans *t = &pg->tr[i];
        t->metric_id = atoi(PQgetvalue(tr, i, 0));
        t->layer = atoi(PQgetvalue(tr, i, 1));
        t->head = atoi(PQgetvalue(tr, i, 2));
        t->idx = atoi(PQgetvalue(tr, i, 3));
        t->start = atoll(PQgetvalue(tr, i, 4));
        t->peak = atoll(PQgetvalue(tr, i, 5));
        t->end = atoll(PQgetvalue(tr, i, 6));
        t->magnitude = num(PQgetvalue(tr, i, 7));
        t->score = num(PQgetvalue(tr, i, 8));
        t->method = PQgetvalue(tr, i, 9);
        t->spike = strcmp(PQgetvalue(tr, i, 13), "spike") == 0;
        t->p_value = PQgetisnull(tr, i, 14) ? NAN : num(PQgetvalue(tr, i, 14));
    }
    pg->ntr = ntr;
    pg->st->transitions = ntr;
    for (int i = 0; i < nm; i++) {
        struct metric *m = &ms[i];
        m->id = atoi(PQgetvalue(mres, i, 0));
        m->item = PQgetvalue(mres, i, 1);
        m->version = atoi(PQgetvalue(mres, i, 2));
        m->name = PQgetvalue(mres, i, 3);
        m->unit = PQgetvalue(mres, i, 4);
        m->desc = PQgetvalue(mres, i, 5);
        m->layer_m = PQgetvalue(mres, i, 6);
        m->head_m = PQgetvalue(mres, i, 7);
        m->idx_m = PQgetvalue(mres, i, 8);
        m->rows = atol(PQgetvalue(mres, i, 9));
        m->keys = atol(PQgetvalue(mres, i, 10));
        m->has_head = strcmp(PQgetvalue(mres, i, 11), "t") == 0;
        m->nlayers = atoi(PQgetvalue(mres, i, 12));
        m->nidx = atoi(PQgetvalue(mres, i, 13));
        m->kind = m->keys <= 1 ? KIND_LINE : (m->has_head || m->nlayers > 1) ? KIND_HEAT : KIND_PROFILE;
    }
    qsort(ms, (size_t)nm, sizeof *ms, cmp_metric);

    /* header */
    int ndup = 0, nmeasured = 0, nsus = 0;
    for (int i = 0; i < pg->nck; i++) {
        ndup += pg->ck[i].dup_of >= 0;
        nsus += pg->ck[i].suspect[0] != 0;
        nmeasured += pg->ck[i].measured;
    }
    PR(pg, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>ckptd report: ");
    esc(pg, PQgetvalue(run, 0, 1));
    PR(pg, "</title><style>%s</style></head><body>\n", css);
    ramp_defs(pg);
    PR(pg, "<header><h1>");
    esc(pg, PQgetvalue(run, 0, 1));
    PR(pg, "</h1><dl>");
    const char *const keys[5] = {"source", "schedule", "items", "options", "created"};
    for (int k = 0; k < 5; k++) {
        PR(pg, "<dt>%s</dt><dd class=\"%s\">", keys[k], keys[k]);
        esc(pg, PQgetvalue(run, 0, 2 + k));
        PR(pg, "</dd>");
    }
    PR(pg, "<dt>checkpoints</dt><dd class=\"counts\" data-checkpoints=\"%d\" data-measured=\"%d\" "
           "data-duplicates=\"%d\">%d, %d with measurements, %d duplicate%s</dd>",
       pg->nck, nmeasured, ndup, pg->nck, nmeasured, ndup, ndup == 1 ? "" : "s");
    PR(pg, "<dt>jobs</dt><dd>%s done, %s running, %s queued, %s failed</dd>", PQgetvalue(jobs, 0, 0),
       PQgetvalue(jobs, 0, 1), PQgetvalue(jobs, 0, 2), PQgetvalue(jobs, 0, 3));
    PR(pg, "<dt>measurements</dt><dd>%s rows in %d metrics</dd>", PQgetvalue(jobs, 0, 4), nm);
    if (ndup) {
        PR(pg, "<dt>duplicates</dt><dd>");
        for (int i = 0, k = 0; i < pg->nck; i++)
            if (pg->ck[i].dup_of >= 0)
                PR(pg, "%sstep %lld = step %lld", k++ ? ", " : "", pg->ck[i].step, pg->ck[i].dup_of);
        PR(pg, " (drawn grey, left out of lines)</dd>");
    }
    if (nsus) { /* integrity.h: not what their label says */
        PR(pg, "<dt>suspect</dt><dd class=\"suspects\" data-suspects=\"%d\">", nsus);
        for (int i = 0, k = 0; i < pg->nck; i++)
            if (pg->ck[i].suspect[0])
                PR(pg, "%sstep %lld: %s", k++ ? ", " : "", pg->ck[i].step, pg->ck[i].suspect);
        PR(pg, " (drawn grey, left out of lines and of detection; <code>ckptd integrity</code> says why)</dd>");
    }
    PR(pg, "</dl><p class=\"note\">x axis: the step on a log<sub>10</sub> scale; step 0 sits at the left edge, "
           "left of the axis break. Hover a point, row or band for its values.</p>");
    if (nm == 0) {
        PR(pg, "</header>\n<p class=\"empty\">No data yet: no measurements have been stored for this run "
               "(<code>ckptd status</code> shows its jobs).</p>\n");
        pg->st->empty = 1;
    } else {
        PR(pg, "<nav><a href=\"#transitions\">transitions</a>");
        for (int i = 0; i < nm; i++)
            if (i == 0 || strcmp(ms[i].item, ms[i - 1].item)) {
                PR(pg, "<a href=\"#item-");
                esc(pg, ms[i].item);
                PR(pg, "\">");
                esc(pg, ms[i].item);
                PR(pg, "</a>");
            }
        PR(pg, "</nav></header>\n");
        write_transitions_table(pg, tr);
        for (int i = 0; i < nm; i++) {
            const struct metric *m = &ms[i];
            if (i == 0 || strcmp(m->item, ms[i - 1].item)) {
                PR(pg, "<section class=\"item\" id=\"item-");
                esc(pg, m->item);
                PR(pg, "\" data-item=\"");
                esc(pg, m->item);
                PR(pg, "\"><h2>");
                esc(pg, m->item);
                PR(pg, "</h2>\n");
            }
            if (m->kind == KIND_LINE && (i == 0 || strcmp(m->item, ms[i - 1].item) || ms[i - 1].kind != KIND_LINE))
                PR(pg, "<div class=\"grid2\">\n");
            metric_open(pg, m);
            if (m->kind == KIND_LINE)
                rc = draw_line_chart(pg, m, e);
            else if (m->kind == KIND_PROFILE)
                rc = draw_profile(pg, m, e);
            else
                rc = draw_heat_metric(pg, m, e);
            if (rc < 0)
                goto out;
            PR(pg, "</div>\n");
            int item_ends = i == nm - 1 || strcmp(m->item, ms[i + 1].item);
            if (m->kind == KIND_LINE && (item_ends || ms[i + 1].kind != KIND_LINE))
                PR(pg, "</div>\n");
            if (item_ends)
                PR(pg, "</section>\n");
        }
    }
    if (nm > 0 && (rc = draw_lineages(pg, PQgetvalue(run, 0, 4), e)) < 0)
        goto out;
    PR(pg, "<footer class=\"note\"><p>Written by ckptd report from a single snapshot of the database. "
           "Caps: %d rows per heatmap, %d heatmaps per per-head metric, %d heatmap cells per page, "
           "%d profiles per metric, %d lineages per layer, %d rows in the transitions table.</p></footer>\n"
           "</body></html>\n",
       REPORT_HEAT_ROWS, REPORT_HEAT_IDX, REPORT_HEAT_BUDGET, REPORT_PROFILE_STEPS, REPORT_LINEAGES,
       REPORT_TRANSITION_ROWS);
    rc = 0;
out:
    free(ms);
    PQclear(jobs);
    PQclear(mres);
    pg->tr_res = tr; /* pg->tr borrows its strings; freed by the caller */
    return rc;
}

static int load_checkpoints(struct page *pg, struct err *e)
{
    const char *p[1] = {pg->run_id};
    PGresult *r = db_exec(pg->db,
        "SELECT s.step, coalesce(o.step, -1), s.measured, coalesce(c.suspect, '') FROM ("
        "  SELECT step, bool_or(m) AS measured FROM ("
        "    SELECT step, false AS m FROM checkpoints WHERE run_id = $1"
        "    UNION ALL SELECT DISTINCT step, true FROM measurements WHERE run_id = $1) u"
        "  GROUP BY step) s"
        " LEFT JOIN checkpoints c ON c.run_id = $1 AND c.step = s.step"
        " LEFT JOIN checkpoints o ON o.id = c.duplicate_of ORDER BY s.step", 1, p, e);
    if (!r)
        return ERR_DB;
    int n = PQntuples(r);
    pg->ck = calloc((size_t)n + 1, sizeof *pg->ck);
    if (!pg->ck) {
        PQclear(r);
        return err_set(e, ERR_NOMEM, "report", "out of memory for %d checkpoints", n);
    }
    pg->nck = n;
    for (int i = 0; i < n; i++) {
        struct ckpt *c = &pg->ck[i];
        c->step = atoll(PQgetvalue(r, i, 0));
        c->dup_of = atoll(PQgetvalue(r, i, 1));
        c->measured = strcmp(PQgetvalue(r, i, 2), "t") == 0;
        snprintf(c->suspect, sizeof c->suspect, "%s", PQgetvalue(r, i, 3));
        if (c->step == 0)
            pg->has_zero = 1;
        else if (pg->min_pos == 0 || c->step < pg->min_pos)
            pg->min_pos = c->step;
        if (c->step > pg->max_step)
            pg->max_step = c->step;
    }
    PQclear(r);
    return 0;
}

int report_write(struct db *db, const char *run, const char *dir, struct report_stats *st, struct err *e)
{
    struct report_stats local;
    if (!st)
        st = &local;
    memset(st, 0, sizeof *st);
    struct page pg;
    memset(&pg, 0, sizeof pg);
    pg.db = db;
    pg.st = st;
    pg.budget = REPORT_HEAT_BUDGET;
    char path[4200];
    struct atomic_file af = {0};
    PGresult *runr = NULL;
    int rc, in_tx = 0;
    if (db_ensure(db, e) < 0)
        return ERR_DB;
    /* one snapshot: the counts and the charts agree while the daemon writes */
    if ((rc = db_run(db, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", 0, NULL, e)) < 0)
        return rc;
    in_tx = 1;
    const char *p[1] = {run};
    runr = db_exec(db,
        "SELECT id, name, source, schedule, array_to_string(items, ', '), options::text,"
        " to_char(created_at, 'YYYY-MM-DD HH24:MI:SS TZ') FROM runs WHERE name = $1", 1, p, e);
    if (!runr) {
        rc = ERR_DB;
        goto out;
    }
    if (PQntuples(runr) == 0) {
        rc = err_set(e, ERR_NOTFOUND, run, "no run named '%s' (ckptd status lists the runs)", run);
        goto out;
    }
    snprintf(pg.run_id, sizeof pg.run_id, "%s", PQgetvalue(runr, 0, 0));
    if ((rc = load_checkpoints(&pg, e)) < 0)
        goto out;
    if ((rc = path_mkdir_p(dir, e)) < 0)
        goto out;
    snprintf(path, sizeof path, "%s/index.html", dir);
    if ((rc = atomic_file_open(&af, path, e)) < 0)
        goto out;
    pg.f = af.f;
    if ((rc = write_page(&pg, runr, e)) < 0)
        goto out;
    if (fflush(pg.f) != 0 || ferror(pg.f)) {
        rc = err_set(e, ERR_IO, af.tmp, "cannot write: %s", strerror(errno));
        goto out;
    }
    st->bytes = ftell(pg.f);
    rc = atomic_file_commit(&af, e);
out:
    atomic_file_abort(&af); /* nothing half-written stays; after a commit, nothing to do */
    if (in_tx)
        db_rollback(db); /* read only: nothing to keep */
    free(pg.ck);
    free(pg.tr);
    PQclear(pg.tr_res);
    PQclear(runr);
    return rc;
}
