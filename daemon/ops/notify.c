#include "daemon/ops/notify.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>

#include "common/log.h"

void notify_init(struct notify *n, double now)
{
    memset(n, 0, sizeof *n);
    const char *sock = getenv("NOTIFY_SOCKET");
    n->active = sock && *sock;
    uint64_t usec = 0;
    if (n->active && sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
        n->watchdog_s = (double)usec / 2e6;
        n->next_ping = now + n->watchdog_s;
    }
    if (n->active)
        log_info("systemd notification", "socket=%s watchdog_ping_s=%.3f", log_quote(sock), n->watchdog_s);
}

static void say(struct notify *n, const char *msg)
{
    if (!n->active)
        return;
    int rc = sd_notify(0, msg);
    if (rc < 0)
        log_warn("systemd notification failed", "message=%s error=%s", log_quote(msg), log_quote(strerror(-rc)));
}

void notify_ready(struct notify *n)
{
    n->ready = 1;
    say(n, "READY=1");
}

void notify_reloading(struct notify *n) { say(n, "RELOADING=1"); }

void notify_stopping(struct notify *n) { say(n, "STOPPING=1"); }

void notify_status(struct notify *n, double now, const char *fmt, ...)
{
    if (!n->active || now < n->next_status)
        return;
    char text[sizeof n->status];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    text[strcspn(text, "\n")] = '\0';
    if (strcmp(text, n->status) == 0)
        return;
    memcpy(n->status, text, sizeof text);
    char msg[sizeof text + 8];
    snprintf(msg, sizeof msg, "STATUS=%s", text);
    say(n, msg);
    n->next_status = now + 1.0;
}

int notify_watchdog_due(const struct notify *n, double now)
{
    return n->watchdog_s > 0 && now >= n->next_ping;
}

void notify_watchdog(struct notify *n, double now)
{
    say(n, "WATCHDOG=1");
    n->last_ping = now;
    /* on the schedule, so the loop's latency does not add up; after a
     * pause (no database) from now */
    n->next_ping = n->next_ping + n->watchdog_s > now ? n->next_ping + n->watchdog_s : now + n->watchdog_s;
}
