#include "daemon/read/export.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/path.h"
#include "daemon/base/db.h"

#define AXES 4 /* step, layer, head, idx */

static const char *const axis_names[AXES] = {"step", "layer", "head", "idx"};
static const char *const format_names[EXPORT_FORMAT_COUNT] = {"csv", "jsonl", "npy"};

/* One metric of the export. */
struct xmetric {
    long long id;
    char item[128], metric[256], unit[64], file[512];
    int version;
    json_t *meta;               /* description and the meaning of layer/head/idx */
    long long *coord[AXES];     /* sorted distinct values (NULL: no rows) */
    int ncoord[AXES];
    int use[AXES];              /* the axis is in the array */
    long long rows;
};

struct xplan {
    long long run_id;
    struct xmetric *m;
    int n;
    char ids[8192 + 64];        /* "{1,2,3}" */
};

static void plan_free(struct xplan *p)
{
    for (int i = 0; i < p->n; i++) {
        for (int a = 0; a < AXES; a++)
            free(p->m[i].coord[a]);
        json_decref(p->m[i].meta);
    }
    free(p->m);
    memset(p, 0, sizeof *p);
}

int export_parse_args(int argc, char **argv, struct export_opts *o, struct err *e)
{
    static const struct option longs[] = {{"metric", required_argument, NULL, 'm'},
                                          {"item", required_argument, NULL, 'i'},
                                          {"format", required_argument, NULL, 'f'},
                                          {"out", required_argument, NULL, 'o'},
                                          {NULL, 0, NULL, 0}};
    memset(o, 0, sizeof *o);
    o->format = EXPORT_CSV;
    optind = 0; /* glibc: start afresh (main may have used getopt) */
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":", longs, NULL)) != -1) {
        switch (c) {
        case 'm':
        case 'i': {
            const char **list = c == 'm' ? o->metrics : o->items;
            int *n = c == 'm' ? &o->nmetrics : &o->nitems;
            if (*n == EXPORT_FILTERS_MAX)
                return err_set(e, ERR_INVALID, "export", "more than %d --%s filters", EXPORT_FILTERS_MAX,
                               c == 'm' ? "metric" : "item");
            if (!*optarg)
                return err_set(e, ERR_INVALID, "export", "--%s needs a name", c == 'm' ? "metric" : "item");
            list[(*n)++] = optarg;
            break;
        }
        case 'f': {
            int k = 0;
            while (k < EXPORT_FORMAT_COUNT && strcmp(optarg, format_names[k]) != 0)
                k++;
            if (k == EXPORT_FORMAT_COUNT)
                return err_set(e, ERR_INVALID, "export", "unknown format '%s' (csv, jsonl or npy)", optarg);
            o->format = (enum export_format)k;
            break;
        }
        case 'o':
            if (!*optarg)
                return err_set(e, ERR_INVALID, "export", "--out needs a path");
            o->out = optarg;
            break;
        case ':':
            return err_set(e, ERR_INVALID, "export", "%s needs a value", argv[optind - 1]);
        default:
            return err_set(e, ERR_INVALID, "export", "unknown option '%s'", argv[optind - 1]);
        }
    }
    for (int i = optind; i < argc; i++) {
        if (o->run)
            return err_set(e, ERR_INVALID, "export", "unexpected argument '%s' (one RUN)", argv[i]);
        o->run = argv[i];
    }
    if (!o->run || !*o->run)
        return err_set(e, ERR_INVALID, "export", "need RUN");
    return 0;
}

int export_npy_header(char *buf, size_t n, const long long *shape, int ndim)
{
    char dict[512], dims[400] = "";
    size_t o = 0;
    if (ndim < 0 || ndim > 8)
        return -1;
    for (int i = 0; i < ndim; i++)
        o += (size_t)snprintf(dims + o, sizeof dims - o, "%lld,%s", shape[i], i + 1 < ndim ? " " : "");
    if (ndim > 1) /* "(3,)" for one axis, "(3, 4)" for more, "()" for none */
        dims[--o] = '\0';
    int dl = snprintf(dict, sizeof dict, "{'descr': '<f8', 'fortran_order': False, 'shape': (%s), }", dims);
    size_t total = 10 + (size_t)dl + 1; /* magic, version, length, dict, newline */
    size_t padded = (total + 63) / 64 * 64;
    if (padded > n || padded - 10 > 65535)
        return -1;
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    buf[8] = (char)((padded - 10) & 0xff);
    buf[9] = (char)((padded - 10) >> 8);
    memcpy(buf + 10, dict, (size_t)dl);
    memset(buf + 10 + dl, ' ', padded - total);
    buf[padded - 1] = '\n';
    return (int)padded;
}

/* "{1,2,3}" into an array of long long (the caller's); -1 on a bad text. */
static int parse_int_array(const char *s, long long **out, int *n)
{
    *out = NULL;
    *n = 0;
    if (*s++ != '{')
        return -1;
    int cap = 16, k = 0;
    long long *v = malloc((size_t)cap * sizeof *v);
    if (!v)
        return -1;
    while (*s && *s != '}') {
        char *end;
        errno = 0;
        long long x = strtoll(s, &end, 10);
        if (end == s || errno) {
            free(v);
            return -1;
        }
        if (k == cap) {
            long long *q = realloc(v, (size_t)(cap *= 2) * sizeof *v);
            if (!q) {
                free(v);
                return -1;
            }
            v = q;
        }
        v[k++] = x;
        s = end;
        if (*s == ',')
            s++;
    }
    *out = v;
    *n = k;
    return 0;
}

static void safe_name(char *s)
{
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '.' ||
              *s == '-' || *s == '_'))
            *s = '_';
}

/* The run, its metrics (filtered), every filter matched; for npy each
 * metric's coordinates. */
static int make_plan(struct db *db, const struct export_opts *o, struct xplan *p, struct err *e)
{
    int rc = db_run_id(db, o->run, &p->run_id, e);
    if (rc < 0)
        return rc;
    char *mf = db_text_array(o->metrics, o->nmetrics), *itf = db_text_array(o->items, o->nitems);
    char rid[32];
    snprintf(rid, sizeof rid, "%lld", p->run_id);
    const char *p2[3] = {rid, mf, itf};
    PGresult *r = NULL;
    if (!mf || !itf) {
        rc = err_set(e, ERR_NOMEM, "export", "out of memory");
        goto out;
    }
    /* the run's metrics: those of the item versions it has results of */
    if (!(r = db_exec(db,
            "SELECT mt.id, mt.item, mt.version, mt.name, mt.unit, mt.description, mt.layer_meaning,"
            "   mt.head_meaning, mt.idx_meaning,"
            "   cardinality($3::text[]) = 0 OR mt.item = ANY($3::text[]),"
            "   cardinality($2::text[]) = 0 OR mt.name = ANY($2::text[]) OR mt.item || '.' || mt.name = ANY($2::text[])"
            " FROM metrics mt"
            " WHERE (mt.item, mt.version) IN (SELECT DISTINCT j.item, j.version FROM jobs j"
            "   JOIN checkpoints c ON c.id = j.checkpoint_id WHERE c.run_id = $1 AND j.state = 'done')"
            " ORDER BY mt.id", 3, p2, e))) {
        rc = ERR_DB;
        goto out;
    }
    int nr = PQntuples(r);
    /* every filter must match one of the run's metrics (with the other filter) */
    for (int f = 0; f < o->nmetrics + o->nitems; f++) {
        int is_metric = f < o->nmetrics, hit = 0;
        const char *want = is_metric ? o->metrics[f] : o->items[f - o->nmetrics];
        for (int i = 0; i < nr && !hit; i++) {
            char full[512];
            snprintf(full, sizeof full, "%s.%s", PQgetvalue(r, i, 1), PQgetvalue(r, i, 3));
            if (is_metric)
                hit = strcmp(PQgetvalue(r, i, 9), "t") == 0 &&
                      (strcmp(want, PQgetvalue(r, i, 3)) == 0 || strcmp(want, full) == 0);
            else
                hit = strcmp(PQgetvalue(r, i, 10), "t") == 0 && strcmp(want, PQgetvalue(r, i, 1)) == 0;
        }
        if (!hit) {
            char names[400] = "";
            size_t w = 0;
            for (int i = 0; i < nr && w + 80 < sizeof names; i++)
                if (i == 0 || strcmp(PQgetvalue(r, i, 1), PQgetvalue(r, i - 1, 1)) != 0 || is_metric)
                    w += (size_t)snprintf(names + w, sizeof names - w, "%s%s%s%s", w ? ", " : "",
                                          is_metric ? PQgetvalue(r, i, 1) : "", is_metric ? "." : "",
                                          is_metric ? PQgetvalue(r, i, 3) : PQgetvalue(r, i, 1));
            rc = err_set(e, ERR_NOTFOUND, o->run, "--%s %s matches nothing in run %s%s%s (it has: %s%s)",
                         is_metric ? "metric" : "item", want, o->run, o->nitems && is_metric ? " with --item" : "",
                         o->nmetrics && !is_metric ? " with --metric" : "", names[0] ? names : "no results yet",
                         w + 80 >= sizeof names ? ", ..." : "");
            PQclear(r);
            goto out;
        }
    }
    p->m = calloc((size_t)nr + 1, sizeof *p->m);
    if (!p->m) {
        PQclear(r);
        rc = err_set(e, ERR_NOMEM, "export", "out of memory");
        goto out;
    }
    size_t w = (size_t)snprintf(p->ids, sizeof p->ids, "{");
    for (int i = 0; i < nr; i++) {
        if (strcmp(PQgetvalue(r, i, 9), "t") != 0 || strcmp(PQgetvalue(r, i, 10), "t") != 0)
            continue;
        if (w + 24 >= sizeof p->ids) {
            PQclear(r);
            rc = err_set(e, ERR_INVALID, o->run, "too many metrics in one export: filter with --item or --metric");
            goto out;
        }
        struct xmetric *m = &p->m[p->n++];
        m->id = atoll(PQgetvalue(r, i, 0));
        snprintf(m->item, sizeof m->item, "%s", PQgetvalue(r, i, 1));
        m->version = atoi(PQgetvalue(r, i, 2));
        snprintf(m->metric, sizeof m->metric, "%s", PQgetvalue(r, i, 3));
        snprintf(m->unit, sizeof m->unit, "%s", PQgetvalue(r, i, 4));
        m->meta = json_pack("{s:s, s:s, s:s, s:s}", "description", PQgetvalue(r, i, 5), "layer_meaning",
                            PQgetvalue(r, i, 6), "head_meaning", PQgetvalue(r, i, 7), "idx_meaning",
                            PQgetvalue(r, i, 8));
        w += (size_t)snprintf(p->ids + w, sizeof p->ids - w, "%s%lld", p->n > 1 ? "," : "", m->id);
    }
    snprintf(p->ids + w, sizeof p->ids - w, "}");
    PQclear(r);
    /* file names: ITEM.METRIC, with .vN when the item comes in several versions */
    for (int i = 0; i < p->n; i++) {
        struct xmetric *m = &p->m[i];
        int versions = 0;
        for (int k = 0; k < p->n; k++)
            versions += strcmp(p->m[k].item, m->item) == 0 && strcmp(p->m[k].metric, m->metric) == 0;
        if (versions > 1)
            snprintf(m->file, sizeof m->file, "%s.%s.v%d.npy", m->item, m->metric, m->version);
        else
            snprintf(m->file, sizeof m->file, "%s.%s.npy", m->item, m->metric);
        safe_name(m->file);
    }
out:
    free(mf);
    free(itf);
    return rc;
}

/* npy: the distinct step, layer, head and idx of each metric, in one pass
 * on the server. */
static int plan_coords(struct db *db, struct xplan *p, struct err *e)
{
    char rid[32];
    snprintf(rid, sizeof rid, "%lld", p->run_id);
    const char *pr[2] = {rid, p->ids};
    PGresult *r = db_exec(db,
        "SELECT m.metric_id, array_agg(DISTINCT m.step ORDER BY m.step), array_agg(DISTINCT m.layer ORDER BY m.layer),"
        "   array_agg(DISTINCT m.head ORDER BY m.head), array_agg(DISTINCT m.idx ORDER BY m.idx), count(*)"
        " FROM measurements m JOIN checkpoints c ON c.run_id = m.run_id AND c.step = m.step"
        " WHERE m.run_id = $1 AND c.duplicate_of IS NULL AND m.metric_id = ANY($2::int[])"
        " GROUP BY m.metric_id ORDER BY m.metric_id", 2, pr, e);
    if (!r)
        return ERR_DB;
    int rc = 0;
    for (int i = 0; i < PQntuples(r) && rc == 0; i++) {
        long long id = atoll(PQgetvalue(r, i, 0));
        struct xmetric *m = NULL;
        for (int k = 0; k < p->n && !m; k++)
            if (p->m[k].id == id)
                m = &p->m[k];
        if (!m)
            continue;
        long long cells = 1;
        for (int a = 0; a < AXES; a++) {
            if (parse_int_array(PQgetvalue(r, i, 1 + a), &m->coord[a], &m->ncoord[a]) < 0) {
                rc = err_set(e, ERR_NOMEM, "export", "cannot read the coordinates of %s", m->metric);
                break;
            }
            m->use[a] = a == 0 || !(m->ncoord[a] == 1 && m->coord[a][0] == -1);
            if (m->use[a])
                cells = cells > EXPORT_NPY_MAX_CELLS ? cells : cells * m->ncoord[a];
        }
        if (rc == 0 && cells > EXPORT_NPY_MAX_CELLS)
            rc = err_set(e, ERR_INVALID, m->metric,
                         "%s.%s would be an array of more than %lld cells (its steps x layers x heads x idx);"
                         " export it as csv or jsonl", m->item, m->metric, EXPORT_NPY_MAX_CELLS);
    }
    PQclear(r);
    return rc;
}

/* Stream a COPY ... TO STDOUT into f: *lines gets the lines. */
static int copy_out(struct db *db, const char *sql, FILE *f, long long *lines, long long *bytes, struct err *e)
{
    PGconn *conn = db_conn(db);
    if (!conn)
        return err_set(e, ERR_DB, "database", "not connected");
    PGresult *r = PQexec(conn, sql);
    if (PQresultStatus(r) != PGRES_COPY_OUT) {
        int rc = err_set(e, ERR_DB, "database", "COPY refused: %s", PQresultErrorMessage(r));
        PQclear(r);
        return rc;
    }
    PQclear(r);
    int rc = 0;
    char *buf;
    int n;
    while ((n = PQgetCopyData(conn, &buf, 0)) > 0) {
        if (rc == 0 && fwrite(buf, 1, (size_t)n, f) != (size_t)n)
            rc = err_set(e, ERR_IO, "export", "cannot write: %s", strerror(errno));
        *lines += 1;
        *bytes += n;
        PQfreemem(buf);
    }
    if (n == -2)
        rc = err_set(e, ERR_DB, "database", "COPY failed: %s", PQerrorMessage(conn));
    while ((r = PQgetResult(conn))) {
        if (PQresultStatus(r) != PGRES_COMMAND_OK && rc == 0)
            rc = err_set(e, ERR_DB, "database", "COPY failed: %s", PQresultErrorMessage(r));
        PQclear(r);
    }
    return rc;
}

/* the series view's rows of one run and some metrics (run id, metric ids) */
#define ROWS_JOIN                                                                                             \
    " FROM measurements m JOIN metrics mt ON mt.id = m.metric_id JOIN runs r ON r.id = m.run_id"              \
    " JOIN checkpoints c ON c.run_id = m.run_id AND c.step = m.step"
#define ROWS_WHERE " WHERE m.run_id = %lld AND c.duplicate_of IS NULL AND m.metric_id = ANY('%s'::int[])"
#define ROWS_FROM ROWS_JOIN ROWS_WHERE
#define ROW_COLS "r.name AS run, m.step, mt.item, mt.version, mt.name AS metric, m.layer, m.head, m.idx, m.value, mt.unit"

static int export_text(struct db *db, const struct export_opts *o, const struct xplan *p, FILE *f,
                       struct export_stats *st, struct err *e)
{
    char *sql = malloc(sizeof p->ids + 2048);
    if (!sql)
        return err_set(e, ERR_NOMEM, "export", "out of memory");
    if (o->format == EXPORT_CSV)
        snprintf(sql, sizeof p->ids + 2048,
                 "COPY (SELECT " ROW_COLS ROWS_FROM " ORDER BY m.metric_id, m.layer, m.head, m.idx, m.step)"
                 " TO STDOUT WITH (FORMAT csv, HEADER)", p->run_id, p->ids);
    else /* CSV quoting that never applies: each line is the JSON text as it is */
        snprintf(sql, sizeof p->ids + 2048,
                 "COPY (SELECT row_to_json(x)" ROWS_JOIN " CROSS JOIN LATERAL (SELECT " ROW_COLS ") x" ROWS_WHERE
                 " ORDER BY m.metric_id, m.layer, m.head, m.idx, m.step)"
                 " TO STDOUT WITH (FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01')", p->run_id, p->ids);
    long long lines = 0;
    int rc = copy_out(db, sql, f, &lines, &st->bytes, e);
    free(sql);
    st->rows = o->format == EXPORT_CSV && lines > 0 ? lines - 1 : lines;
    return rc;
}

static int find_coord(const long long *v, int n, long long x)
{
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (v[mid] == x)
            return mid;
        if (v[mid] < x)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

/* Create DIR/file: the header, then NaN in every cell.  The fd, and the
 * header's length in *hdr. */
static int npy_create(const char *dir, struct xmetric *m, int *hdr, long long *bytes, struct err *e)
{
    char path[PATH_MAX * 2 + 600], head[1024];
    long long shape[AXES];
    int nd = 0;
    long long cells = 1;
    for (int a = 0; a < AXES; a++)
        if (m->use[a]) {
            shape[nd++] = m->ncoord[a];
            cells *= m->ncoord[a];
        }
    int hl = export_npy_header(head, sizeof head, shape, nd);
    snprintf(path, sizeof path, "%s/%s", dir, m->file);
    if (hl < 0)
        return err_set(e, ERR_INVALID, path, "cannot create: the .npy header does not fit");
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        return err_set(e, ERR_IO, path, "cannot create: %s", strerror(errno));
    double nanbuf[4096];
    for (int i = 0; i < 4096; i++)
        nanbuf[i] = NAN;
    int rc = write(fd, head, (size_t)hl) == hl ? 0 : -1;
    for (long long left = cells; rc == 0 && left > 0;) {
        size_t k = (size_t)(left < 4096 ? left : 4096);
        if (write(fd, nanbuf, k * sizeof *nanbuf) != (ssize_t)(k * sizeof *nanbuf))
            rc = -1;
        left -= (long long)k;
    }
    if (rc < 0) {
        rc = err_set(e, ERR_IO, path, "cannot write: %s", strerror(errno));
        close(fd);
        return rc;
    }
    *hdr = hl;
    *bytes += hl + cells * 8;
    return fd;
}

static int npy_close(int fd, const char *file, struct err *e)
{
    if (fd < 0)
        return 0;
    int bad = fsync(fd) != 0;
    bad |= close(fd) != 0;
    return bad ? err_set(e, ERR_IO, file, "cannot write: %s", strerror(errno)) : 0;
}

/* One COPY line "metric_id\tstep\tlayer\thead\tidx\tvalue" into its cell. */
static int npy_row(struct xplan *p, const char *dir, char *line, int *cur, int *fd, int *hdr, long long *bytes,
                   struct err *e)
{
    long long v[5];
    char *s = line, *end;
    for (int k = 0; k < 5; k++) {
        v[k] = strtoll(s, &end, 10);
        if (end == s || *end != '\t')
            return err_set(e, ERR_DB, "export", "unexpected COPY line from the server");
        s = end + 1;
    }
    double value = strtod(s, &end);
    if (*cur < 0 || p->m[*cur].id != v[0]) {
        int rc = npy_close(*fd, *cur >= 0 ? p->m[*cur].file : "", e);
        *fd = -1;
        if (rc < 0)
            return rc;
        int k = *cur + 1;
        while (k < p->n && p->m[k].id != v[0])
            k++;
        if (k == p->n)
            return err_set(e, ERR_DB, "export", "rows out of order from the server (metric %lld)", v[0]);
        *cur = k;
        if ((*fd = npy_create(dir, &p->m[k], hdr, bytes, e)) < 0)
            return *fd;
    }
    struct xmetric *m = &p->m[*cur];
    long long flat = 0;
    for (int a = 0; a < AXES; a++) {
        if (!m->use[a])
            continue;
        int at = find_coord(m->coord[a], m->ncoord[a], v[1 + a]);
        if (at < 0)
            return err_set(e, ERR_DB, m->file, "a %s the coordinates do not hold (%lld): the data changed during"
                           " the export", axis_names[a], v[1 + a]);
        flat = flat * m->ncoord[a] + at;
    }
    unsigned char le[8];
    unsigned long long bits;
    memcpy(&bits, &value, 8);
    for (int b = 0; b < 8; b++)
        le[b] = (unsigned char)(bits >> (8 * b));
    if (pwrite(*fd, le, 8, (off_t)(*hdr + flat * 8)) != 8)
        return err_set(e, ERR_IO, m->file, "cannot write: %s", strerror(errno));
    m->rows++;
    return 0;
}

static json_t *coords_json(const struct xmetric *m, int a)
{
    json_t *arr = json_array();
    for (int i = 0; arr && i < m->ncoord[a]; i++)
        json_array_append_new(arr, json_integer((json_int_t)m->coord[a][i]));
    return arr;
}

static int write_index(const char *dir, const struct export_opts *o, const struct xplan *p, long long *bytes,
                       struct err *e)
{
    json_t *arrays = json_array(), *root = NULL;
    for (int i = 0; arrays && i < p->n; i++) {
        const struct xmetric *m = &p->m[i];
        if (!m->rows)
            continue;
        json_t *axes = json_array(), *shape = json_array(), *coords = json_object();
        for (int a = 0; a < AXES; a++)
            if (m->use[a]) {
                json_array_append_new(axes, json_string(axis_names[a]));
                json_array_append_new(shape, json_integer(m->ncoord[a]));
                json_object_set_new(coords, axis_names[a], coords_json(m, a));
            }
        json_t *one = json_pack("{s:s, s:s, s:i, s:s, s:s, s:s, s:o, s:o, s:o, s:I}", "file", m->file, "item",
                                m->item, "version", m->version, "metric", m->metric, "unit", m->unit, "dtype",
                                "float64", "axes", axes, "shape", shape, "coords", coords, "values",
                                (json_int_t)m->rows);
        if (one)
            json_object_update(one, m->meta);
        json_array_append_new(arrays, one);
    }
    root = json_pack("{s:s, s:s, s:s, s:o}", "run", o->run, "format", "ckptd-npy-1", "source",
                     "the series view: duplicate checkpoints left out; NaN where a cell has no value", "arrays",
                     arrays);
    char *text = root ? json_dumps(root, JSON_INDENT(1)) : NULL;
    json_decref(root);
    if (!text)
        return err_set(e, ERR_NOMEM, "export", "out of memory");
    char path[PATH_MAX * 2];
    snprintf(path, sizeof path, "%s/index.json", dir);
    size_t len = strlen(text);
    int rc = path_write_atomic(path, text, e);
    *bytes += (long long)len;
    free(text);
    return rc;
}

static int export_npy(struct db *db, const struct export_opts *o, struct xplan *p, const char *dir,
                      struct export_stats *st, struct err *e)
{
    int rc = plan_coords(db, p, e);
    if (rc < 0)
        return rc;
    char *sql = malloc(sizeof p->ids + 1024);
    if (!sql)
        return err_set(e, ERR_NOMEM, "export", "out of memory");
    snprintf(sql, sizeof p->ids + 1024,
             "COPY (SELECT m.metric_id, m.step, m.layer, m.head, m.idx, m.value" ROWS_FROM
             " ORDER BY m.metric_id, m.step, m.layer, m.head, m.idx) TO STDOUT", p->run_id, p->ids);
    PGconn *conn = db_conn(db);
    PGresult *r = conn ? PQexec(conn, sql) : NULL;
    free(sql);
    if (PQresultStatus(r) != PGRES_COPY_OUT) {
        rc = err_set(e, ERR_DB, "database", "COPY refused: %s", conn ? PQresultErrorMessage(r) : "not connected");
        PQclear(r);
        return rc;
    }
    PQclear(r);
    int cur = -1, fd = -1, hdr = 0, n;
    char *buf;
    while ((n = PQgetCopyData(conn, &buf, 0)) > 0) {
        if (rc == 0) {
            if (buf[n - 1] == '\n')
                buf[n - 1] = '\0';
            rc = npy_row(p, dir, buf, &cur, &fd, &hdr, &st->bytes, e);
            st->rows += rc == 0;
        }
        PQfreemem(buf);
    }
    if (n == -2 && rc == 0)
        rc = err_set(e, ERR_DB, "database", "COPY failed: %s", PQerrorMessage(conn));
    while ((r = PQgetResult(conn))) {
        if (PQresultStatus(r) != PGRES_COMMAND_OK && rc == 0)
            rc = err_set(e, ERR_DB, "database", "COPY failed: %s", PQresultErrorMessage(r));
        PQclear(r);
    }
    int crc = npy_close(fd, cur >= 0 ? p->m[cur].file : "", e);
    if (rc == 0)
        rc = crc;
    for (int i = 0; i < p->n; i++)
        st->arrays += p->m[i].rows > 0;
    if (rc == 0)
        rc = write_index(dir, o, p, &st->bytes, e);
    return rc;
}

/* A failed npy export's temporary directory: the files it made (it is
 * flat), then itself. */
static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (de->d_name[0] == '.' && (!de->d_name[1] || (de->d_name[1] == '.' && !de->d_name[2])))
            continue;
        char p[PATH_MAX + 300];
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        unlink(p);
    }
    if (d)
        closedir(d);
    rmdir(dir);
}

int export_run(struct db *db, const struct export_opts *o, FILE *out, struct export_stats *st_out,
               struct err *e)
{
    struct xplan p;
    struct export_stats st = {0, 0, 0};
    char dest[PATH_MAX], tmp[PATH_MAX + 40];
    FILE *f = NULL;
    int rc, made = 0;
    memset(&p, 0, sizeof p);
    if (o->out)
        snprintf(dest, sizeof dest, "%s", o->out);
    else if (o->format == EXPORT_NPY) {
        snprintf(dest, sizeof dest, "export-%s", o->run);
        safe_name(dest);
    } else
        dest[0] = '\0';
    size_t dl = strlen(dest);
    while (dl > 1 && dest[dl - 1] == '/')
        dest[--dl] = '\0';
    snprintf(tmp, sizeof tmp, "%s.tmp-%d", dest, (int)getpid());
    if (o->format == EXPORT_NPY) {
        struct stat sb;
        if (stat(dest, &sb) == 0 && !(S_ISDIR(sb.st_mode) && rmdir(dest) == 0))
            return err_set(e, ERR_INVALID, dest, "%s exists: the npy export writes a new directory", dest);
    }
    /* one snapshot for the plan and the rows */
    if ((rc = db_run(db, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", 0, NULL, e)) < 0)
        return rc;
    if ((rc = db_run(db, "SET LOCAL extra_float_digits = 3", 0, NULL, e)) < 0 || (rc = make_plan(db, o, &p, e)) < 0)
        goto out;
    if (o->format == EXPORT_NPY) {
        if (mkdir(tmp, 0755) != 0) {
            rc = err_set(e, ERR_IO, tmp, "cannot create: %s", strerror(errno));
            goto out;
        }
        made = 1;
        rc = export_npy(db, o, &p, tmp, &st, e);
    } else {
        if (dest[0] && !(f = fopen(tmp, "w"))) {
            rc = err_set(e, ERR_IO, tmp, "cannot create: %s", strerror(errno));
            goto out;
        }
        made = dest[0] != '\0';
        rc = export_text(db, o, &p, f ? f : out, &st, e);
        if (f) {
            int bad = fflush(f) != 0 || fsync(fileno(f)) != 0;
            bad |= fclose(f) != 0;
            f = NULL;
            if (bad && rc == 0)
                rc = err_set(e, ERR_IO, tmp, "cannot write: %s", strerror(errno));
        } else if (fflush(out) != 0 && rc == 0) {
            rc = err_set(e, ERR_IO, "stdout", "cannot write: %s", strerror(errno));
        }
    }
    if (rc == 0 && made && rename(tmp, dest) != 0)
        rc = err_set(e, ERR_IO, dest, "cannot put the export in place: %s", strerror(errno));
    if (rc == 0)
        made = 0;
out:
    if (rc < 0)
        db_rollback(db);
    else if ((rc = db_run(db, "COMMIT", 0, NULL, e)) < 0)
        db_rollback(db);
    if (f)
        fclose(f);
    if (made && rc < 0) {
        if (o->format == EXPORT_NPY)
            remove_dir(tmp);
        else
            unlink(tmp);
    }
    plan_free(&p);
    if (st_out)
        *st_out = st;
    return rc;
}

int export_main(const char *conninfo, double statement_s, double idle_tx_s, int argc, char **argv)
{
    struct export_opts o;
    struct err e;
    err_clear(&e);
    if (export_parse_args(argc, argv, &o, &e) < 0) {
        fprintf(stderr, "ckptd export: %s\nusage: ckptd export RUN [--metric NAME]... [--item ITEM]..."
                        " [--format csv|jsonl|npy] [--out PATH]\n", e.msg);
        return 2;
    }
    struct db *db = db_new(conninfo);
    if (!db)
        return 1;
    db_set_timeouts(db, statement_s, idle_tx_s);
    if (db_connect_wait(db, 5.0, &e) < 0) {
        log_err("cannot connect to the database", &e);
        db_free(db);
        return 1;
    }
    struct export_stats st;
    double t0 = mono_now();
    int rc = export_run(db, &o, stdout, &st, &e);
    double secs = mono_now() - t0;
    db_free(db);
    if (rc < 0) {
        fprintf(stderr, "ckptd export: %s\n", err_str(&e));
        return 1;
    }
    char where[PATH_MAX + 20];
    if (o.out)
        snprintf(where, sizeof where, "%s", o.out);
    else if (o.format == EXPORT_NPY) {
        snprintf(where, sizeof where, "export-%s", o.run);
        safe_name(where);
    } else
        snprintf(where, sizeof where, "standard output");
    if (o.format == EXPORT_NPY)
        fprintf(stderr, "exported %lld values of run %s as %d array%s (%lld bytes) to %s in %.2f s\n", st.rows,
                o.run, st.arrays, st.arrays == 1 ? "" : "s", st.bytes, where, secs);
    else
        fprintf(stderr, "exported %lld values of run %s as %s (%lld bytes) to %s in %.2f s\n", st.rows, o.run,
                format_names[o.format], st.bytes, where, secs);
    return 0;
}
