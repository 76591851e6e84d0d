/*
 * notify.h - systemd's service notifications (sd_notify from libsystemd):
 * READY=1, RELOADING=1, STOPPING=1, STATUS=... and the watchdog's
 * WATCHDOG=1.  Outside systemd (no NOTIFY_SOCKET) every call does nothing,
 * so the serve loop calls them unconditionally.
 *
 * The watchdog: when systemd asks for one (WatchdogSec= sets
 * WATCHDOG_USEC, and WATCHDOG_PID when set names this process;
 * sd_watchdog_enabled), a ping is due every WATCHDOG_USEC / 2.  The serve
 * loop sends it only when a database statement got an answer since the
 * previous ping, running one itself when none did (serve.c, duty 10): a
 * node whose loop is stuck or whose database is gone stops pinging, and
 * systemd restarts it WatchdogSec later.
 *
 *     struct notify n;
 *     notify_init(&n, mono_now());
 *     notify_ready(&n);
 *     if (notify_watchdog_due(&n, now) && db_answered_since(n.last_ping)) notify_watchdog(&n, now);
 *     notify_status(&n, now, "2/2 workers busy");
 *     notify_stopping(&n);
 */
#ifndef CKPTD_NOTIFY_H
#define CKPTD_NOTIFY_H

#include "common/err.h"

struct notify {
    int active;          /* NOTIFY_SOCKET is set */
    double watchdog_s;   /* seconds between pings (WATCHDOG_USEC / 2); 0: no watchdog */
    double next_ping;    /* monotonic */
    double last_ping;    /* monotonic; 0 before the first */
    int ready;           /* READY=1 sent */
    char status[256];    /* the last STATUS= sent */
    double next_status;  /* monotonic: earliest next STATUS= */
};

/* Read NOTIFY_SOCKET and the watchdog settings of the environment. */
void notify_init(struct notify *n, double now);

void notify_ready(struct notify *n);
void notify_reloading(struct notify *n);
void notify_stopping(struct notify *n);

/* STATUS=<text> when it differs from the last one sent, at most once a
 * second (a change within the second waits for a later call). */
void notify_status(struct notify *n, double now, const char *fmt, ...) CK_PRINTF(3, 4);

/* A watchdog ping is due (never without a watchdog). */
int notify_watchdog_due(const struct notify *n, double now);

/* Send WATCHDOG=1 and schedule the next one. */
void notify_watchdog(struct notify *n, double now);

#endif
