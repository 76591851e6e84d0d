#include "daemon/ops/metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/version.h"
#include "daemon/base/db.h"

#define CONTENT_TYPE_METRICS "text/plain; version=0.0.4; charset=utf-8"
#define CONTENT_TYPE_TEXT "text/plain; charset=utf-8"

struct metrics_server {
    struct MHD_Daemon *d;
    const struct metrics *m;
    int fd;
    long requests;
};

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void metrics_init(struct metrics *m, const char *node)
{
    memset(m, 0, sizeof *m);
    snprintf(m->node, sizeof m->node, "%s", node);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    m->start_time = (double)ts.tv_sec + ts.tv_nsec * 1e-9;
    m->healthz_max_age_s = 30;
}

void metrics_free(struct metrics *m)
{
    if (!m)
        return;
    free(m->runs);
    m->runs = NULL;
    m->nruns = 0;
}

int metrics_refresh_queue(struct metrics *m, struct db *db, double now, struct err *e)
{
    /* the partial index on state serves the inner scan; finished runs
     * still get their row (0, 0) so their series do not just vanish */
    PGresult *r = db_exec(db,
        "SELECT r.name, coalesce(q.queued, 0), coalesce(q.running, 0) FROM runs r"
        " LEFT JOIN (SELECT c.run_id, count(*) FILTER (WHERE j.state = 'queued') AS queued,"
        "                   count(*) FILTER (WHERE j.state = 'running') AS running"
        "            FROM jobs j JOIN checkpoints c ON c.id = j.checkpoint_id"
        "            WHERE j.state IN ('queued', 'running') GROUP BY c.run_id) q ON q.run_id = r.id"
        " ORDER BY r.name", 0, NULL, e);
    if (!r)
        return ERR_DB;
    int n = PQntuples(r);
    struct metrics_run *runs = calloc(n ? (size_t)n : 1, sizeof *runs);
    if (!runs) {
        PQclear(r);
        return err_set(e, ERR_NOMEM, "metrics", "out of memory");
    }
    for (int i = 0; i < n; i++) {
        snprintf(runs[i].run, sizeof runs[i].run, "%s", PQgetvalue(r, i, 0));
        runs[i].queued = atoll(PQgetvalue(r, i, 1));
        runs[i].running = atoll(PQgetvalue(r, i, 2));
    }
    PQclear(r);
    free(m->runs);
    m->runs = runs;
    m->nruns = n;
    m->queue_at = now;
    return 0;
}

static void escape(char *out, size_t n, const char *s, int quote)
{
    size_t o = 0;
    if (n == 0)
        return;
    for (; *s; s++) {
        const char *rep = NULL;
        char one[2] = {*s, '\0'};
        if (*s == '\\')
            rep = "\\\\";
        else if (*s == '\n')
            rep = "\\n";
        else if (*s == '"' && quote)
            rep = "\\\"";
        else
            rep = one;
        size_t len = strlen(rep);
        if (o + len >= n)
            break;
        memcpy(out + o, rep, len);
        o += len;
    }
    out[o] = '\0';
}

void metrics_escape_label(char *out, size_t n, const char *s) { escape(out, n, s, 1); }

void metrics_escape_help(char *out, size_t n, const char *s) { escape(out, n, s, 0); }

static void family(FILE *f, const char *name, const char *type, const char *help)
{
    char h[512];
    metrics_escape_help(h, sizeof h, help);
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, h, name, type);
}

static void counter_i(FILE *f, const char *name, const char *help, long long v)
{
    family(f, name, "counter", help);
    fprintf(f, "%s %lld\n", name, v);
}

static void counter_d(FILE *f, const char *name, const char *help, double v)
{
    family(f, name, "counter", help);
    fprintf(f, "%s %.6f\n", name, v);
}

char *metrics_render(const struct metrics *m, double now)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return NULL;
    char node[512], run[600];
    metrics_escape_label(node, sizeof node, m->node);

    family(f, "ckptd_build_info", "gauge", "The version of ckptd and the name of this node; always 1.");
    fprintf(f, "ckptd_build_info{version=\"%s\",node=\"%s\"} 1\n", CKPTD_VERSION, node);
    family(f, "ckptd_start_time_seconds", "gauge", "When this ckptd process started, in Unix seconds.");
    fprintf(f, "ckptd_start_time_seconds %.3f\n", m->start_time);

    counter_i(f, "ckptd_jobs_claimed_total",
              "Jobs this node claimed with a lease (one per battery item of a checkpoint; a job claimed again"
              " after a failure or an expired lease counts again).", m->jobs_claimed);
    counter_i(f, "ckptd_jobs_done_total", "Jobs whose results this node stored.", m->jobs_done);
    counter_i(f, "ckptd_jobs_failed_total",
              "Failed attempts of jobs on this node: the worker failed, the download failed, or the results"
              " were rejected; each attempt counts.", m->jobs_failed);
    counter_i(f, "ckptd_fetch_bytes_total",
              "HTTP body bytes received: checkpoint files and hub API answers.", m->fetch_bytes);
    counter_d(f, "ckptd_download_seconds_total",
              "Seconds from the claim of a checkpoint until its files were ready (downloaded, linked from a"
              " cache, or hashed in place), summed over checkpoints.", m->download_s);
    counter_d(f, "ckptd_download_wait_seconds_total",
              "Seconds a free worker slot waited for a download.", m->download_wait_s);
    counter_d(f, "ckptd_worker_seconds_total", "Wall-clock seconds of ckpt-worker processes that ended.",
              m->worker_s);
    counter_i(f, "ckptd_lease_renewals_lost_total",
              "Leases found taken by another node (at a heartbeat or when storing); the work was dropped.",
              m->leases_lost);
    counter_i(f, "ckptd_db_reconnects_total", "Times a lost database connection was made again.",
              m->db_reconnects);

    char reason[512];
    double age = m->db_last_ok > 0 ? now - m->db_last_ok : -1;
    family(f, "ckptd_database_up", "gauge", "1 while /healthz answers 200 (the database answered recently), else 0.");
    fprintf(f, "ckptd_database_up %d\n", metrics_health(m, now, reason, sizeof reason) == 200);
    family(f, "ckptd_database_last_success_age_seconds", "gauge",
           "Seconds since a database statement last got an answer; -1 before the first.");
    fprintf(f, "ckptd_database_last_success_age_seconds %.3f\n", age);
    family(f, "ckptd_workers", "gauge", "Worker processes this node runs at once (the workers setting).");
    fprintf(f, "ckptd_workers %d\n", m->workers);
    family(f, "ckptd_slots", "gauge",
           "Checkpoints this node holds, by phase: fetch (being staged), ready (staged, waiting for a worker),"
           " run (its worker runs or its results wait to be stored).");
    fprintf(f, "ckptd_slots{phase=\"fetch\"} %d\nckptd_slots{phase=\"ready\"} %d\nckptd_slots{phase=\"run\"} %d\n",
            m->slots_fetch, m->slots_ready, m->slots_run);

    family(f, "ckptd_queue_depth", "gauge",
           "Queued jobs per run (due now or backing off after a failure), over all nodes, as the database said"
           " ckptd_queue_age_seconds ago.");
    for (int i = 0; i < m->nruns; i++) {
        metrics_escape_label(run, sizeof run, m->runs[i].run);
        fprintf(f, "ckptd_queue_depth{run=\"%s\"} %lld\n", run, m->runs[i].queued);
    }
    family(f, "ckptd_jobs_running", "gauge", "Jobs per run leased by any node, as the database said.");
    for (int i = 0; i < m->nruns; i++) {
        metrics_escape_label(run, sizeof run, m->runs[i].run);
        fprintf(f, "ckptd_jobs_running{run=\"%s\"} %lld\n", run, m->runs[i].running);
    }
    family(f, "ckptd_queue_age_seconds", "gauge",
           "Seconds since the per-run job counts were read from the database; -1 before the first read.");
    fprintf(f, "ckptd_queue_age_seconds %.3f\n", m->queue_at > 0 ? now - m->queue_at : -1.0);

    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

int metrics_health(const struct metrics *m, double now, char *reason, size_t n)
{
    double max = m->healthz_max_age_s;
    if (!m->ever_ready || m->db_last_ok <= 0) {
        snprintf(reason, n, "starting: the database has not been reached and checked yet%s%s",
                 m->db_error[0] ? ": " : "", m->db_error);
        return 503;
    }
    double age = now - m->db_last_ok;
    if (age > max) {
        snprintf(reason, n, "no database statement answered for %.1f s (limit healthz_max_age_s %g s)%s%s", age,
                 max, m->db_error[0] ? ": " : "", m->db_error);
        return 503;
    }
    if (!m->ready && m->unready_since > 0 && now - m->unready_since > max) {
        snprintf(reason, n, "the database not usable for %.1f s (limit healthz_max_age_s %g s)%s%s",
                 now - m->unready_since, max, m->db_error[0] ? ": " : "", m->db_error);
        return 503;
    }
    snprintf(reason, n, "ok: the database answered %.1f s ago", age);
    return 200;
}

int metrics_parse_listen(const char *addr, int allow_remote, struct sockaddr_storage *sa, socklen_t *len,
                         struct err *e)
{
    char host[64];
    const char *colon, *hs;
    size_t hl;
    if (!addr || !*addr)
        return err_set(e, ERR_INVALID, "metrics_listen", "empty address: want HOST:PORT, e.g. 127.0.0.1:9464");
    if (addr[0] == '[') {
        const char *close = strchr(addr, ']');
        if (!close || close[1] != ':')
            return err_set(e, ERR_INVALID, "metrics_listen", "'%s': want [IPV6]:PORT, e.g. [::1]:9464", addr);
        hs = addr + 1;
        hl = (size_t)(close - hs);
        colon = close + 1;
    } else {
        colon = strrchr(addr, ':');
        if (!colon || strchr(addr, ':') != colon)
            return err_set(e, ERR_INVALID, "metrics_listen",
                           "'%s': want HOST:PORT, e.g. 127.0.0.1:9464 (IPv6 in brackets: [::1]:9464)", addr);
        hs = addr;
        hl = (size_t)(colon - addr);
    }
    if (hl == 0 || hl >= sizeof host)
        return err_set(e, ERR_INVALID, "metrics_listen", "'%s': no host address before the port", addr);
    memcpy(host, hs, hl);
    host[hl] = '\0';
    char *end;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end || errno || port < 1 || port > 65535)
        return err_set(e, ERR_INVALID, "metrics_listen", "'%s': the port must be a number from 1 to 65535", addr);
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t sl;
    int loopback;
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1 && addr[0] != '[') {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        sl = sizeof *v4;
        loopback = (ntohl(v4->sin_addr.s_addr) >> 24) == 127;
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1 && addr[0] == '[') {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        sl = sizeof *v6;
        const uint8_t *b = v6->sin6_addr.s6_addr;
        loopback = IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr) ||
                   (IN6_IS_ADDR_V4MAPPED(&v6->sin6_addr) && b[12] == 127);
    } else {
        return err_set(e, ERR_INVALID, "metrics_listen",
                       "'%s': the host must be a numeric IPv4 address or a bracketed IPv6 one (names are not"
                       " resolved)", addr);
    }
    if (!loopback && !allow_remote)
        return err_set(e, ERR_INVALID, "metrics_listen",
                       "'%s' is not a loopback address (127.0.0.0/8, ::1): /metrics and /healthz have no"
                       " authentication; set \"metrics_allow_remote\": true (serve --metrics-allow-remote)"
                       " to serve them beyond this host", addr);
    if (sa)
        *sa = ss;
    if (len)
        *len = sl;
    return 0;
}

/* A response from a malloc'd body (MHD frees it). */
static enum MHD_Result answer(struct MHD_Connection *c, unsigned code, const char *type, char *body)
{
    if (!body)
        return MHD_NO;
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    enum MHD_Result rc = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return rc;
}

static char *text(const char *fmt, ...) CK_PRINTF(1, 2);
static char *text(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_size,
                                  void **con_cls)
{
    struct metrics_server *ms = cls;
    (void)version;
    (void)upload_data;
    (void)con_cls;
    if (*upload_size) /* a body nobody asked for: drop it */
        *upload_size = 0;
    ms->requests++;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return answer(c, MHD_HTTP_METHOD_NOT_ALLOWED, CONTENT_TYPE_TEXT, text("only GET and HEAD\n"));
    double now = mono();
    if (strcmp(url, "/metrics") == 0)
        return answer(c, MHD_HTTP_OK, CONTENT_TYPE_METRICS, metrics_render(ms->m, now));
    if (strcmp(url, "/healthz") == 0) {
        char reason[512];
        int code = metrics_health(ms->m, now, reason, sizeof reason);
        return answer(c, (unsigned)code, CONTENT_TYPE_TEXT, text("%s\n", reason));
    }
    return answer(c, MHD_HTTP_NOT_FOUND, CONTENT_TYPE_TEXT, text("not found: /metrics and /healthz\n"));
}

/* libmicrohttpd's printf-style messages (format checked where it calls us) */
__attribute__((format(printf, 2, 0))) static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    msg[strcspn(msg, "\n")] = '\0';
    log_warn("metrics endpoint", "detail=%s", log_quote(msg));
}

struct metrics_server *metrics_server_start(const char *addr, int allow_remote, const struct metrics *m,
                                            struct err *e)
{
    struct sockaddr_storage sa;
    socklen_t sl;
    if (metrics_parse_listen(addr, allow_remote, &sa, &sl, e) < 0)
        return NULL;
    struct metrics_server *ms = calloc(1, sizeof *ms);
    if (!ms) {
        err_set(e, ERR_NOMEM, "metrics_listen", "out of memory");
        return NULL;
    }
    ms->m = m;
    unsigned flags = MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
    if (sa.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    errno = 0;
    ms->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, ms,
                             MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL,
                             MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                             MHD_OPTION_CONNECTION_LIMIT, (unsigned)32,
                             MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
                             MHD_OPTION_END);
    if (!ms->d) {
        int saved = errno;
        err_set(e, ERR_IO, "metrics_listen", "cannot listen on %s: %s", addr,
                saved ? strerror(saved) : "libmicrohttpd refused to start");
        free(ms);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(ms->d, MHD_DAEMON_INFO_EPOLL_FD);
    ms->fd = info ? info->epoll_fd : -1;
    if (ms->fd < 0) {
        MHD_stop_daemon(ms->d);
        free(ms);
        err_set(e, ERR_IO, "metrics_listen", "libmicrohttpd gave no epoll descriptor");
        return NULL;
    }
    return ms;
}

int metrics_server_fd(const struct metrics_server *ms) { return ms ? ms->fd : -1; }

int metrics_server_timeout_ms(struct metrics_server *ms)
{
    MHD_UNSIGNED_LONG_LONG t;
    if (!ms || MHD_get_timeout(ms->d, &t) != MHD_YES)
        return -1;
    return t > 60000 ? 60000 : (int)t;
}

void metrics_server_run(struct metrics_server *ms)
{
    if (ms)
        MHD_run(ms->d);
}

long metrics_server_requests(const struct metrics_server *ms) { return ms ? ms->requests : 0; }

void metrics_server_stop(struct metrics_server *ms)
{
    if (!ms)
        return;
    MHD_stop_daemon(ms->d);
    free(ms);
}
