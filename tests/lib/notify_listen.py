#!/usr/bin/python3
"""notify_listen.py - stand in for systemd's notification socket, for the
tests of ckptd's sd_notify messages (tests/daemon_watchdog.sh).

    notify_listen.py SOCKET OUT

Binds a unix datagram socket at SOCKET (what NOTIFY_SOCKET names) and
appends one line per message to OUT: the Unix time it arrived, a tab, and
the message with its newlines shown as "|".  Runs until killed.  Standard
library only.
"""
import os
import socket
import sys
import time

if len(sys.argv) != 3:
    print(__doc__, file=sys.stderr)
    sys.exit(2)
path, out = sys.argv[1], sys.argv[2]
try:
    os.unlink(path)
except FileNotFoundError:
    pass
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
with open(out, "a", buffering=1) as f:
    print("%.6f\tlistening" % time.time(), file=f)
    while True:
        msg = s.recv(4096).decode("utf-8", "replace")
        print("%.6f\t%s" % (time.time(), msg.replace("\n", "|")), file=f)
