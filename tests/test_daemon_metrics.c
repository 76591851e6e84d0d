/*
 * test_daemon_metrics - the operating side of the daemon without a
 * database: the metrics listen-address rule (metrics_parse_listen), the
 * Prometheus text format 0.0.4 of metrics_render (every line parsed back:
 * HELP and TYPE before a family's samples, counters named *_total, label
 * values unescaped to what went in), the /healthz rule (metrics_health),
 * the HTTP server driven the way the serve loop drives it (one thread,
 * poll on metrics_server_fd, metrics_server_run; HTTP port 18479), the
 * config keys, and systemd notification (notify.h) into a datagram socket
 * of the test's own.
 */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cmocka.h>

#include "common/version.h"
#include "daemon/ops/config.h"
#include "daemon/ops/metrics.h"
#include "daemon/ops/notify.h"

#define TEST_PORT 18479

static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- metrics_parse_listen ---- */

static void expect_listen_ok(const char *addr, int allow, int family, int port)
{
    struct sockaddr_storage sa;
    socklen_t len = 0;
    struct err e;
    if (metrics_parse_listen(addr, allow, &sa, &len, &e) != 0)
        fail_msg("'%s' refused: %s", addr, err_str(&e));
    assert_int_equal(sa.ss_family, family);
    if (family == AF_INET) {
        assert_int_equal(len, sizeof(struct sockaddr_in));
        assert_int_equal(ntohs(((struct sockaddr_in *)&sa)->sin_port), port);
    } else {
        assert_int_equal(len, sizeof(struct sockaddr_in6));
        assert_int_equal(ntohs(((struct sockaddr_in6 *)&sa)->sin6_port), port);
    }
}

static void expect_listen_error(const char *addr, int allow, const char *needle)
{
    struct err e;
    err_clear(&e);
    int rc = metrics_parse_listen(addr, allow, NULL, NULL, &e);
    if (rc != ERR_INVALID)
        fail_msg("'%s': rc %d, expected ERR_INVALID", addr, rc);
    if (!strstr(e.msg, needle))
        fail_msg("'%s': message '%s' lacks '%s'", addr, e.msg, needle);
}

static void test_listen_rule(void **state)
{
    (void)state;
    expect_listen_ok("127.0.0.1:9464", 0, AF_INET, 9464);
    expect_listen_ok("127.3.2.1:1", 0, AF_INET, 1);
    expect_listen_ok("[::1]:9464", 0, AF_INET6, 9464);
    expect_listen_ok("[::ffff:127.0.0.1]:65535", 0, AF_INET6, 65535);
    /* not loopback: refused unless allowed, naming the setting */
    expect_listen_error("0.0.0.0:9464", 0, "metrics_allow_remote");
    expect_listen_error("10.1.2.3:9464", 0, "not a loopback address");
    expect_listen_error("[::]:9464", 0, "metrics_allow_remote");
    expect_listen_error("128.0.0.1:9464", 0, "not a loopback address");
    expect_listen_ok("0.0.0.0:9464", 1, AF_INET, 9464);
    expect_listen_ok("[::]:9464", 1, AF_INET6, 9464);
    /* malformed */
    expect_listen_error("", 0, "want HOST:PORT");
    expect_listen_error("9464", 0, "want HOST:PORT");
    expect_listen_error("localhost:9464", 0, "names are not resolved");
    expect_listen_error("127.0.0.1:", 0, "port must be a number");
    expect_listen_error("127.0.0.1:0", 0, "port must be a number");
    expect_listen_error("127.0.0.1:65536", 0, "port must be a number");
    expect_listen_error("127.0.0.1:94x", 0, "port must be a number");
    expect_listen_error(":9464", 0, "no host address");
    expect_listen_error("::1:9464", 0, "IPv6 in brackets");
    expect_listen_error("[::1]9464", 0, "want [IPV6]:PORT");
    expect_listen_error("[127.0.0.1]:9464", 0, "numeric IPv4 address or a bracketed IPv6");
    expect_listen_error("1.2.3:80", 0, "numeric IPv4");
}

/* ---- escaping ---- */

static void test_escape(void **state)
{
    (void)state;
    char out[64];
    metrics_escape_label(out, sizeof out, "a\"b\\c\nd");
    assert_string_equal(out, "a\\\"b\\\\c\\nd");
    metrics_escape_help(out, sizeof out, "a\"b\\c\nd");
    assert_string_equal(out, "a\"b\\\\c\\nd");
    /* cut short, never in the middle of an escape */
    char small[5];
    metrics_escape_label(small, sizeof small, "ab\"cd");
    assert_string_equal(small, "ab\\\"");
    metrics_escape_label(small, 4, "ab\"cd");
    assert_string_equal(small, "ab");
}

/* ---- metrics_render, parsed back ---- */

struct sample {
    char name[64];
    char labels[4][2][128]; /* name, unescaped value */
    int nlabels;
    double value;
};

/* Undo label escaping; -1 on an unknown escape. */
static int unescape(const char *in, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = in[i];
        if (c == '\\') {
            if (++i >= n)
                return -1;
            c = in[i] == 'n' ? '\n' : in[i] == '\\' ? '\\' : in[i] == '"' ? '"' : 0;
            if (!c)
                return -1;
        }
        if (o + 1 >= cap)
            return -1;
        out[o++] = c;
    }
    out[o] = '\0';
    return 0;
}

static int valid_name(const char *s, size_t n, int metric)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (metric && c == ':') ||
                 (i > 0 && c >= '0' && c <= '9');
        if (!ok)
            return 0;
    }
    return 1;
}

/* Parse one sample line; fails the test when it is not one. */
static void parse_sample(const char *line, struct sample *sm)
{
    memset(sm, 0, sizeof *sm);
    const char *p = line;
    size_t n = strcspn(p, "{ ");
    if (!valid_name(p, n, 1) || n >= sizeof sm->name)
        fail_msg("bad metric name in '%s'", line);
    memcpy(sm->name, p, n);
    p += n;
    if (*p == '{') {
        p++;
        while (*p != '}') {
            size_t ln = strcspn(p, "=");
            if (!valid_name(p, ln, 0) || p[ln] != '=' || p[ln + 1] != '"' || sm->nlabels >= 4)
                fail_msg("bad label in '%s'", line);
            memcpy(sm->labels[sm->nlabels][0], p, ln);
            p += ln + 2;
            const char *v = p;
            while (*p && *p != '"')
                p += *p == '\\' ? 2 : 1;
            if (*p != '"' || unescape(v, (size_t)(p - v), sm->labels[sm->nlabels][1], 128) < 0)
                fail_msg("bad label value in '%s'", line);
            sm->nlabels++;
            p++;
            if (*p == ',')
                p++;
            else if (*p != '}')
                fail_msg("bad label list in '%s'", line);
        }
        p++;
    }
    if (*p != ' ')
        fail_msg("no space before the value in '%s'", line);
    char *end;
    sm->value = strtod(p + 1, &end);
    if (end == p + 1 || *end)
        fail_msg("bad value in '%s'", line);
}

/* Check the whole text; return the samples (caller frees) in *out. */
static int parse_exposition(const char *text, struct sample **out)
{
    char help[32][64], type[32][64], types[32][32];
    int nhelp = 0, ntype = 0, ns = 0;
    struct sample *ss = calloc(256, sizeof *ss);
    assert_non_null(ss);
    char cur[64] = "";
    const char *p = text;
    assert_true(strlen(text) > 0 && text[strlen(text) - 1] == '\n');
    while (*p) {
        const char *nl = strchr(p, '\n');
        assert_non_null(nl);
        char line[1024];
        assert_true((size_t)(nl - p) < sizeof line);
        memcpy(line, p, (size_t)(nl - p));
        line[nl - p] = '\0';
        p = nl + 1;
        if (strncmp(line, "# HELP ", 7) == 0) {
            size_t n = strcspn(line + 7, " ");
            assert_true(valid_name(line + 7, n, 1) && line[7 + n] == ' ' && n < 64);
            for (int i = 0; i < nhelp; i++)
                if (strncmp(help[i], line + 7, n) == 0 && help[i][n] == '\0')
                    fail_msg("second HELP for %s", help[i]);
            snprintf(help[nhelp], sizeof help[nhelp], "%.*s", (int)n, line + 7);
            /* a HELP text has no raw backslash but as an escape */
            for (const char *c = line + 8 + n; *c; c++)
                if (*c == '\\' && c[1] != '\\' && c[1] != 'n')
                    fail_msg("bad escape in '%s'", line);
                else if (*c == '\\')
                    c++;
            nhelp++;
            continue;
        }
        if (strncmp(line, "# TYPE ", 7) == 0) {
            char name[64], t[32];
            assert_int_equal(sscanf(line + 7, "%63s %31s", name, t), 2);
            assert_true(strcmp(t, "counter") == 0 || strcmp(t, "gauge") == 0);
            for (int i = 0; i < ntype; i++)
                if (strcmp(type[i], name) == 0)
                    fail_msg("second TYPE for %s", name);
            if (strcmp(t, "counter") == 0 && (strlen(name) < 6 || strcmp(name + strlen(name) - 6, "_total") != 0))
                fail_msg("counter %s does not end in _total", name);
            snprintf(type[ntype], sizeof type[ntype], "%s", name);
            snprintf(types[ntype], sizeof types[ntype], "%s", t);
            ntype++;
            /* HELP came first, for the same family */
            assert_true(nhelp > 0 && strcmp(help[nhelp - 1], name) == 0);
            snprintf(cur, sizeof cur, "%s", name);
            continue;
        }
        assert_true(line[0] != '#');
        assert_true(ns < 256);
        parse_sample(line, &ss[ns]);
        /* a sample belongs to the family whose TYPE came last */
        if (strcmp(ss[ns].name, cur) != 0)
            fail_msg("sample %s outside its family (current %s)", ss[ns].name, cur);
        ns++;
    }
    assert_int_equal(nhelp, ntype);
    *out = ss;
    return ns;
}

static const struct sample *find(const struct sample *ss, int n, const char *name, const char *label,
                                 const char *value)
{
    for (int i = 0; i < n; i++) {
        if (strcmp(ss[i].name, name) != 0)
            continue;
        if (!label)
            return &ss[i];
        for (int k = 0; k < ss[i].nlabels; k++)
            if (strcmp(ss[i].labels[k][0], label) == 0 && strcmp(ss[i].labels[k][1], value) == 0)
                return &ss[i];
    }
    fail_msg("no sample %s{%s=\"%s\"}", name, label ? label : "", value ? value : "");
    return NULL;
}

static void test_render(void **state)
{
    (void)state;
    struct metrics m;
    metrics_init(&m, "gpu\"07\\a\nb");
    m.jobs_claimed = 12;
    m.jobs_done = 10;
    m.jobs_failed = 2;
    m.leases_lost = 1;
    m.fetch_bytes = 1234567890123LL;
    m.download_s = 1.5;
    m.worker_s = 42.25;
    m.db_reconnects = 3;
    m.workers = 2;
    m.slots_run = 2;
    m.slots_fetch = 1;
    m.ready = m.ever_ready = 1;
    double now = now_mono();
    m.db_last_ok = now - 1;
    m.queue_at = now - 2;
    m.nruns = 2;
    m.runs = calloc(2, sizeof *m.runs);
    assert_non_null(m.runs);
    snprintf(m.runs[0].run, sizeof m.runs[0].run, "pythia-70m");
    m.runs[0].queued = 7;
    m.runs[0].running = 2;
    snprintf(m.runs[1].run, sizeof m.runs[1].run, "odd\"name\\x");
    m.runs[1].queued = 0;
    char *text = metrics_render(&m, now);
    assert_non_null(text);
    struct sample *ss = NULL;
    int n = parse_exposition(text, &ss);
    assert_true(n >= 20);
    assert_int_equal(find(ss, n, "ckptd_jobs_claimed_total", NULL, NULL)->value, 12);
    assert_int_equal(find(ss, n, "ckptd_jobs_done_total", NULL, NULL)->value, 10);
    assert_int_equal(find(ss, n, "ckptd_jobs_failed_total", NULL, NULL)->value, 2);
    assert_int_equal(find(ss, n, "ckptd_lease_renewals_lost_total", NULL, NULL)->value, 1);
    assert_true(find(ss, n, "ckptd_fetch_bytes_total", NULL, NULL)->value == 1234567890123.0);
    assert_true(fabs(find(ss, n, "ckptd_download_seconds_total", NULL, NULL)->value - 1.5) < 1e-9);
    assert_true(fabs(find(ss, n, "ckptd_worker_seconds_total", NULL, NULL)->value - 42.25) < 1e-9);
    assert_int_equal(find(ss, n, "ckptd_db_reconnects_total", NULL, NULL)->value, 3);
    assert_int_equal(find(ss, n, "ckptd_database_up", NULL, NULL)->value, 1);
    assert_int_equal(find(ss, n, "ckptd_queue_depth", "run", "pythia-70m")->value, 7);
    assert_int_equal(find(ss, n, "ckptd_queue_depth", "run", "odd\"name\\x")->value, 0);
    assert_int_equal(find(ss, n, "ckptd_jobs_running", "run", "pythia-70m")->value, 2);
    assert_int_equal(find(ss, n, "ckptd_slots", "phase", "run")->value, 2);
    assert_int_equal(find(ss, n, "ckptd_slots", "phase", "fetch")->value, 1);
    assert_true(fabs(find(ss, n, "ckptd_queue_age_seconds", NULL, NULL)->value - 2) < 1e-3);
    const struct sample *bi = find(ss, n, "ckptd_build_info", "node", "gpu\"07\\a\nb");
    assert_int_equal(bi->value, 1);
    assert_string_equal(bi->labels[0][1], CKPTD_VERSION);
    printf("rendered %zu bytes, %d samples\n", strlen(text), n);
    free(ss);
    free(text);
    /* stale database: database_up 0 */
    m.db_last_ok = now - 100;
    text = metrics_render(&m, now);
    n = parse_exposition(text, &ss);
    assert_int_equal(find(ss, n, "ckptd_database_up", NULL, NULL)->value, 0);
    free(ss);
    free(text);
    metrics_free(&m);
}

/* ---- metrics_health ---- */

static void test_health(void **state)
{
    (void)state;
    struct metrics m;
    metrics_init(&m, "n");
    m.healthz_max_age_s = 10;
    char why[512];
    double now = 1000;
    snprintf(m.db_error, sizeof m.db_error, "database: cannot connect: no such socket");
    assert_int_equal(metrics_health(&m, now, why, sizeof why), 503);
    assert_non_null(strstr(why, "starting"));
    assert_non_null(strstr(why, "no such socket"));
    m.ever_ready = m.ready = 1;
    m.db_error[0] = '\0';
    m.db_last_ok = now - 9.5;
    assert_int_equal(metrics_health(&m, now, why, sizeof why), 200);
    assert_non_null(strstr(why, "ok: the database answered 9.5 s ago"));
    m.db_last_ok = now - 10.5;
    assert_int_equal(metrics_health(&m, now, why, sizeof why), 503);
    assert_non_null(strstr(why, "10.5 s (limit healthz_max_age_s 10 s)"));
    /* answers, but not ready for longer than the limit (schema refused) */
    m.db_last_ok = now - 1;
    m.ready = 0;
    m.unready_since = now - 5;
    assert_int_equal(metrics_health(&m, now, why, sizeof why), 200);
    m.unready_since = now - 11;
    snprintf(m.db_error, sizeof m.db_error, "run 'ckptd migrate'");
    assert_int_equal(metrics_health(&m, now, why, sizeof why), 503);
    assert_non_null(strstr(why, "not usable for 11.0 s"));
    assert_non_null(strstr(why, "run 'ckptd migrate'"));
    metrics_free(&m);
}

/* ---- the HTTP server, driven as the serve loop drives it ---- */

/* Send `req` to the server and pump it until the answer is complete
 * (the server closes); the answer in buf. */
static size_t http_exchange(struct metrics_server *ms, const char *req, char *buf, size_t cap)
{
    int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    assert_true(c >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(TEST_PORT)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rc = connect(c, (struct sockaddr *)&a, sizeof a);
    assert_true(rc == 0 || errno == EINPROGRESS);
    size_t sent = 0, got = 0, want = strlen(req);
    double deadline = now_mono() + 5;
    for (;;) {
        assert_true(now_mono() < deadline);
        struct pollfd p[2] = {{metrics_server_fd(ms), POLLIN, 0}, {c, POLLIN | (sent < want ? POLLOUT : 0), 0}};
        int t = metrics_server_timeout_ms(ms);
        poll(p, 2, t >= 0 && t < 100 ? t : 100);
        metrics_server_run(ms);
        if (sent < want) {
            ssize_t w = send(c, req + sent, want - sent, MSG_NOSIGNAL);
            if (w > 0)
                sent += (size_t)w;
        }
        ssize_t r = recv(c, buf + got, cap - 1 - got, 0);
        if (r == 0)
            break;
        if (r > 0)
            got += (size_t)r;
        assert_true(got < cap - 1);
    }
    close(c);
    buf[got] = '\0';
    return got;
}

static void test_server(void **state)
{
    (void)state;
    struct metrics m;
    metrics_init(&m, "node-t");
    m.ever_ready = m.ready = 1;
    m.db_last_ok = now_mono();
    m.jobs_done = 5;
    struct err e;
    char addr[32];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", TEST_PORT);
    struct metrics_server *ms = metrics_server_start(addr, 0, &m, &e);
    if (!ms)
        fail_msg("cannot start: %s", err_str(&e));
    /* the same port again: refused, naming the address */
    struct metrics_server *again = metrics_server_start(addr, 0, &m, &e);
    assert_null(again);
    assert_non_null(strstr(e.msg, "cannot listen on 127.0.0.1"));
    /* a public address is refused before anything is bound */
    assert_null(metrics_server_start("0.0.0.0:18478", 0, &m, &e));
    assert_non_null(strstr(e.msg, "metrics_allow_remote"));

    static char buf[65536];
    http_exchange(ms, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", buf, sizeof buf);
    assert_true(strncmp(buf, "HTTP/1.1 200", 12) == 0);
    assert_non_null(strstr(buf, "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
    assert_non_null(strstr(buf, "\nckptd_jobs_done_total 5\n"));
    /* the body parses */
    struct sample *ss = NULL;
    int n = parse_exposition(strstr(buf, "\r\n\r\n") + 4, &ss);
    assert_int_equal(find(ss, n, "ckptd_jobs_done_total", NULL, NULL)->value, 5);
    free(ss);
    /* live values: the handler reads m when asked */
    m.jobs_done = 6;
    http_exchange(ms, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", buf, sizeof buf);
    assert_non_null(strstr(buf, "\nckptd_jobs_done_total 6\n"));

    http_exchange(ms, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", buf, sizeof buf);
    assert_true(strncmp(buf, "HTTP/1.1 200", 12) == 0);
    assert_non_null(strstr(buf, "\r\n\r\nok: the database answered"));
    m.db_last_ok = now_mono() - 100;
    http_exchange(ms, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", buf, sizeof buf);
    assert_true(strncmp(buf, "HTTP/1.1 503", 12) == 0);
    assert_non_null(strstr(buf, "no database statement answered for 10"));
    http_exchange(ms, "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", buf, sizeof buf);
    assert_true(strncmp(buf, "HTTP/1.1 200", 12) == 0);
    assert_null(strstr(buf, "# HELP"));
    http_exchange(ms, "GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", buf, sizeof buf);
    assert_true(strncmp(buf, "HTTP/1.1 404", 12) == 0);
    http_exchange(ms, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc", buf,
                  sizeof buf);
    assert_true(strncmp(buf, "HTTP/1.1 405", 12) == 0);
    assert_true(metrics_server_requests(ms) >= 7);
    metrics_server_stop(ms);
    metrics_server_stop(NULL);
    metrics_free(&m);
}

/* ---- config keys ---- */

static int load_config(const char *json, struct daemon_config *c, struct err *e)
{
    char path[] = "/tmp/ckptd-metrics-cfg-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_true(write(fd, json, strlen(json)) == (ssize_t)strlen(json));
    close(fd);
    daemon_config_defaults(c);
    int rc = daemon_config_load(c, path, e);
    unlink(path);
    return rc;
}

static void test_config_keys(void **state)
{
    (void)state;
    struct daemon_config c;
    struct err e;
    daemon_config_defaults(&c);
    assert_string_equal(c.metrics_listen, "");
    assert_int_equal(c.metrics_allow_remote, 0);
    assert_true(c.healthz_max_age_s == 30);
    assert_int_equal(load_config("{\"metrics_listen\": \"127.0.0.1:9464\", \"healthz_max_age_s\": 12}", &c, &e), 0);
    assert_string_equal(c.metrics_listen, "127.0.0.1:9464");
    assert_true(c.healthz_max_age_s == 12);
    assert_int_equal(load_config("{\"metrics_listen\": \"0.0.0.0:9464\"}", &c, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "metrics_allow_remote"));
    assert_int_equal(load_config("{\"metrics_listen\": \"0.0.0.0:9464\", \"metrics_allow_remote\": true}", &c, &e), 0);
    assert_int_equal(c.metrics_allow_remote, 1);
    assert_int_equal(load_config("{\"metrics_allow_remote\": 1}", &c, &e), ERR_FORMAT);
    assert_non_null(strstr(e.msg, "must be true or false"));
    assert_int_equal(load_config("{\"healthz_max_age_s\": 5, \"heartbeat_s\": 5, \"lease_s\": 20}", &c, &e),
                     ERR_INVALID);
    assert_non_null(strstr(e.msg, "healthz_max_age_s must be more than heartbeat_s"));
    assert_int_equal(load_config("{\"metrics_listen\": \"localhost:9464\"}", &c, &e), ERR_INVALID);
}

/* ---- notify ---- */

/* A datagram socket standing in for systemd's; its path in *path. */
static int notify_socket(char *path, size_t n)
{
    snprintf(path, n, "/tmp/ckptd-notify-%d", (int)getpid());
    unlink(path);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    assert_true(fd >= 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

/* The next datagram, or "" when none is waiting. */
static const char *next_message(int fd)
{
    static char buf[512];
    ssize_t r = recv(fd, buf, sizeof buf - 1, 0);
    buf[r > 0 ? r : 0] = '\0';
    return buf;
}

static void test_notify(void **state)
{
    (void)state;
    struct notify n;
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    notify_init(&n, 100);
    assert_int_equal(n.active, 0);
    assert_true(n.watchdog_s == 0);
    assert_int_equal(notify_watchdog_due(&n, 1e9), 0);
    notify_ready(&n); /* a no-op, and no crash */

    char path[108];
    int fd = notify_socket(path, sizeof path);
    setenv("NOTIFY_SOCKET", path, 1);
    setenv("WATCHDOG_USEC", "2000000", 1);
    notify_init(&n, 100);
    assert_int_equal(n.active, 1);
    assert_true(fabs(n.watchdog_s - 1.0) < 1e-9);
    assert_string_equal(next_message(fd), "");
    notify_ready(&n);
    assert_string_equal(next_message(fd), "READY=1");
    assert_int_equal(notify_watchdog_due(&n, 100.5), 0);
    assert_int_equal(notify_watchdog_due(&n, 101.0), 1);
    notify_watchdog(&n, 101.0);
    assert_string_equal(next_message(fd), "WATCHDOG=1");
    assert_int_equal(notify_watchdog_due(&n, 101.9), 0);
    assert_int_equal(notify_watchdog_due(&n, 102.0), 1);
    notify_watchdog(&n, 102.1); /* late: the next stays on the schedule */
    assert_string_equal(next_message(fd), "WATCHDOG=1");
    assert_int_equal(notify_watchdog_due(&n, 102.99), 0);
    assert_int_equal(notify_watchdog_due(&n, 103.0), 1);
    notify_watchdog(&n, 110.0); /* after a pause: from now */
    assert_string_equal(next_message(fd), "WATCHDOG=1");
    assert_int_equal(notify_watchdog_due(&n, 110.9), 0);
    assert_int_equal(notify_watchdog_due(&n, 111.0), 1);
    notify_status(&n, 101.0, "%d/%d workers busy", 1, 2);
    assert_string_equal(next_message(fd), "STATUS=1/2 workers busy");
    notify_status(&n, 101.5, "%d/%d workers busy", 2, 2); /* within the second: waits */
    assert_string_equal(next_message(fd), "");
    notify_status(&n, 102.1, "%d/%d workers busy", 1, 2); /* unchanged: not sent */
    assert_string_equal(next_message(fd), "");
    notify_status(&n, 102.2, "%d/%d workers busy", 2, 2);
    assert_string_equal(next_message(fd), "STATUS=2/2 workers busy");
    notify_stopping(&n);
    assert_string_equal(next_message(fd), "STOPPING=1");
    /* a watchdog meant for another process is not ours */
    setenv("WATCHDOG_PID", "1", 1);
    notify_init(&n, 100);
    assert_true(n.watchdog_s == 0);
    unsetenv("WATCHDOG_PID");
    unsetenv("WATCHDOG_USEC");
    unsetenv("NOTIFY_SOCKET");
    close(fd);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_listen_rule), cmocka_unit_test(test_escape),
        cmocka_unit_test(test_render),      cmocka_unit_test(test_health),
        cmocka_unit_test(test_server),      cmocka_unit_test(test_config_keys),
        cmocka_unit_test(test_notify),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
