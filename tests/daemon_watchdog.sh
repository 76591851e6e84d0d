#!/bin/bash
# daemon_watchdog.sh - ckptd's systemd notifications without systemd:
# NOTIFY_SOCKET names a unix datagram socket that tests/lib/notify_listen.py
# reads, WATCHDOG_USEC=1000000 asks for a ping every 0.5 s.  ckptd starts
# while PostgreSQL is down: no READY=1 until the database is up (READY=1
# arrives after `pg-local start` returned), no WATCHDOG=1 before READY=1;
# then WATCHDOG=1 every 0.5 s (no gap over 0.9 s, at least 5 in 3 s) with
# STATUS= saying "database ok"; PostgreSQL stopped: at most one more ping
# (for a statement answered before the stop), none for the 3 s after, and
# STATUS= says "database unreachable"; PostgreSQL back: pings resume;
# SIGHUP: RELOADING=1 then READY=1; SIGTERM: STOPPING=1, exit 0.
# Outside systemd (no NOTIFY_SOCKET) nothing is sent and serve works.
# PostgreSQL port 54386.
. tests/lib/daemon.sh
dl_init watchdog 54386
unset NOTIFY_SOCKET WATCHDOG_USEC WATCHDOG_PID
dl_migrate
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
SOCK=$T/notify.sock
MSGS=$T/notify.log
"$PY" "$ROOT/tests/lib/notify_listen.py" "$SOCK" "$MSGS" 2>"$T/listen.err" &
LISTEN_PID=$!
DL_DAEMONS="$DL_DAEMONS $LISTEN_PID"
dl_wait "listener up" 10 grep -qs listening "$MSGS"
dl_config "$T/cfg.json" '"heartbeat_s": 0.5' '"poll_s": 5'
now() { date +%s.%N; }
# count MSG [FROM [TO]]: messages equal to MSG that arrived in [FROM, TO)
count() { awk -F'\t' -v m="$1" -v a="${2:-0}" -v b="${3:-9e12}" '$2 == m && $1 >= a && $1 < b { n++ } END { print n + 0 }' "$MSGS"; }
# first MSG: the arrival time of its first occurrence (empty if none)
first() { awk -F'\t' -v m="$1" '$2 == m { print $1; exit }' "$MSGS"; }
has() { [ -n "$(first "$1")" ]; }

"$ROOT/scripts/pg-local" stop >/dev/null 2>&1
NOTIFY_SOCKET=$SOCK WATCHDOG_USEC=1000000 dl_serve S --config "$T/cfg.json" serve --node wd
dl_wait "ckptd up, waiting for the database" 20 grep -q 'msg="systemd notification"' "$T/S.log"
dl_grep "it saw the watchdog (ping every 0.5 s)" "$T/S.log" 'msg="systemd notification" socket=.* watchdog_ping_s=0.500'
sleep 2 # the database stays down: nothing may be READY
dl_eq "no READY=1 while the database is down" 0 "$(count READY=1)"
dl_eq "no WATCHDOG=1 before READY=1" 0 "$(count WATCHDOG=1)"
"$ROOT/scripts/pg-local" start >/dev/null 2>&1 || dl_fail "pg-local start"
t_up=$(now)
if dl_wait "READY=1" 20 has READY=1; then
    dl_true "READY=1 came after the database was up" awk -v r="$(first READY=1)" -v u="$t_up" 'BEGIN { exit !(r >= u - 0.5) }'
fi
dl_wait "first WATCHDOG=1" 5 has WATCHDOG=1
dl_true "READY=1 before the first WATCHDOG=1" awk -v r="$(first READY=1)" -v w="$(first WATCHDOG=1)" 'BEGIN { exit !(r <= w) }'
t0=$(now)
sleep 3
t1=$(now)
n=$(count WATCHDOG=1 "$t0" "$t1")
dl_true "pings while the database is up: $n in 3 s (every 0.5 s)" [ "$n" -ge 5 ]
gap=$(awk -F'\t' -v a="$t0" -v b="$t1" '$2 == "WATCHDOG=1" && $1 >= a && $1 < b { if (p) { d = $1 - p; if (d > g) g = d } p = $1 }
      END { printf "%.3f", g }' "$MSGS")
dl_true "largest gap between pings ${gap} s <= 0.9 s" awk -v g="$gap" 'BEGIN { exit !(g <= 0.9) }'
dl_true "STATUS= says the database is ok" grep -q $'\tSTATUS=.*database ok' "$MSGS"

# the database goes away: the pings stop
"$ROOT/scripts/pg-local" stop >/dev/null 2>&1
t_down=$(now)
sleep 3.5
t_end=$(now)
after=$(count WATCHDOG=1 "$t_down" "$t_end")
dl_true "at most one ping after PostgreSQL stopped ($after)" [ "$after" -le 1 ]
late=$(awk -F'\t' -v a="$t_down" -v b="$t_end" '$2 == "WATCHDOG=1" && $1 >= a + 0.6 && $1 < b { n++ } END { print n + 0 }' "$MSGS")
dl_eq "no ping from 0.6 s after the stop on" 0 "$late"
dl_true "STATUS= says the database is unreachable" grep -q $'\tSTATUS=.*database unreachable' "$MSGS"

# back: the pings resume
"$ROOT/scripts/pg-local" start >/dev/null 2>&1 || dl_fail "pg-local start"
t_back=$(now)
resumed() { [ "$(count WATCHDOG=1 "$t_back")" -ge 2 ]; }
dl_wait "pings resume once the database is back" 20 resumed && dl_ok "pings resumed"

kill -HUP "$S_PID"
dl_wait "RELOADING=1 on SIGHUP" 10 has RELOADING=1
dl_true "READY=1 again after the reload" awk -F'\t' '$2 == "RELOADING=1" { r = 1; next } r && $2 == "READY=1" { ok = 1 } END { exit !ok }' "$MSGS"
kill -TERM "$S_PID"
dl_wait_exit "$S_PID" 30
dl_eq "daemon stopped cleanly" 0 "$DL_STATUS"
dl_eq "STOPPING=1 once" 1 "$(count STOPPING=1)"
dl_true "nothing but notifications arrived" awk -F'\t' '$2 !~ /^(listening|READY=1|RELOADING=1|STOPPING=1|WATCHDOG=1|STATUS=.*)$/ { exit 1 }' "$MSGS"

# outside systemd: no socket, nothing sent, the node serves
lines=$(wc -l <"$MSGS")
dl_serve P --config "$T/cfg.json" serve --node plain --until-idle
dl_wait_exit "$P_PID" 30
dl_eq "without NOTIFY_SOCKET serve runs (exit)" 0 "$DL_STATUS"
dl_eq "and sends nothing" "$lines" "$(wc -l <"$MSGS")"
dl_eq "and logs no notification socket" 0 "$(dl_log_count "$T/P.log" "systemd notification")"
kill "$LISTEN_PID"
wait "$LISTEN_PID" 2>/dev/null
dl_finish
