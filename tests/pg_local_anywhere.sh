#!/bin/bash
# pg_local_anywhere.sh - the embedded PostgreSQL (scripts/pg-local) works
# from a checkout wherever a newcomer clones the project.
#
# The repository is cloned (git clone of HEAD; the working tree's
# scripts/pg-local is copied over it, so uncommitted edits are what is
# tested) into a mode-700 directory (mktemp -d) under a path with spaces,
# and there, as the invoking user:
#   start; a table written through `eval "$(scripts/pg-local env)"` and psql;
#   status; stop (status says stopped, psql cannot connect); start again
#   and the row is still there; as root, the server's files live in a
#   runtime directory owned by postgres outside the checkout (`where`), and
#   a second clone started on the same port gets its own server and data;
#   the permissions of every directory above the checkout are unchanged;
#   destroy removes the data, the socket, the log and the runtime
#   directory, and status then fails.
# As root it also checks that an unsafe PGLOCAL_RUNTIME (writable by others)
# is refused with nothing created, and runs the ordinary user's layout as
# `nobody` (runuser) in a directory nobody owns, with an apostrophe and
# spaces in its path: data in place, the same start/query/stop/start/
# destroy, and root's pg-local finds that user's server.  A socket path over
# the kernel's 107 bytes is refused with a message naming it.
# PostgreSQL port 54420 (unix sockets only).
. tests/lib/daemon.sh

DL_NAME=pg_local_anywhere
PORT=54420
PGL=scripts/pg-local
W=""
W2=""
NB=""
SERVERS=() # checkout directories whose servers the cleanup destroys, as "user:dir"

cleanup() {
    local rc=$? s u d
    for s in "${SERVERS[@]}"; do
        u=${s%%:*}
        d=${s#*:}
        if [ "$u" = "$(id -un)" ]; then
            (cd "$d" && PGLOCAL_PORT=$PORT "$PGL" destroy) >/dev/null 2>&1
        else
            runuser -u "$u" -- sh -c 'cd "$1" && PGLOCAL_PORT=$2 "$3" destroy' _ "$d" "$PORT" "$PGL" >/dev/null 2>&1
        fi
    done
    for d in "$W" "$W2" "$NB"; do [ -n "$d" ] && rm -rf "$d"; done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP
unset PGHOST PGPORT PGUSER PGDATABASE PGSERVICE PGPASSWORD CKPTD_VAR PGLOCAL_RUNTIME PGLOCAL_TCP \
    PGLOCAL_LISTEN PGLOCAL_TRUST
export PGLOCAL_PORT=$PORT

# clone_to DIR: the repository at DIR (made here), with this tree's pg-local
clone_to() {
    if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
        git clone -q "$ROOT" "$1" || return 1
    else
        mkdir -p "$1/scripts" || return 1
    fi
    cp "$ROOT/scripts/pg-local" "$1/scripts/pg-local"
}

# modes DIR: "mode owner path" of DIR and every directory above it
modes() {
    local d=$1
    while :; do
        printf '%s; ' "$(stat -c '%a %U %n' "$d")"
        [ "$d" = / ] && break
        d=$(dirname "$d")
    done
}

# long_socket CHECKOUT DIR [RUNNER...]: CHECKOUT's pg-local start (run by
# RUNNER) with CKPTD_VAR under DIR so long that the socket's path exceeds
# 107 bytes: refused, nothing made
long_socket() {
    local co=$1 dir=$2 long
    shift 2
    long="$dir/$(printf 'd%.0s' $(seq 90))"
    if "$@" env CKPTD_VAR="$long" "$co/$PGL" start >"$dir/long.out" 2>&1; then
        dl_fail "a socket path over 107 bytes was accepted"
    else
        dl_grep "a socket path over 107 bytes is refused" "$dir/long.out" "socket path too long"
    fi
    dl_eq "nothing made for it" no "$( [ -e "$long" ] && echo yes || echo no)"
}

# q SQL: one value from the server pg-local env names (run in a checkout)
q() { (eval "$("$PGL" env)" && psql -X -q -t -A -v ON_ERROR_STOP=1 -c "$1" 2>&1); }

W=$(mktemp -d) || exit 1 # mode 700
C="$W/a dir with spaces/ckptd"
if clone_to "$C" >"$W/clone.out" 2>&1; then dl_ok "cloned into $C"; else
    dl_fail "git clone into $C: $(cat "$W/clone.out")"
    dl_finish
fi
MODES_BEFORE=$(modes "$C")
cd "$C" || exit 1

SERVERS+=("$(id -un):$C")
if "$PGL" start >"$W/start1.out" 2>&1; then dl_ok "start under a mode-700 path with spaces"; else
    dl_fail "start: $(cat "$W/start1.out")"
    tail -n 5 "$("$PGL" where log)" 2>/dev/null | sed 's/^/    | /'
fi
dl_eq "env names an existing socket directory" yes \
    "$(eval "$("$PGL" env)" && [ -d "$PGHOST" ] && [ "$PGPORT" = $PORT ] && echo yes)"
dl_eq "a table written through psql" 1 \
    "$(q "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before stop'); SELECT count(*) FROM kept")"
dl_true "status: running" "$PGL" status
DATA=$("$PGL" where data)
SOCK=$("$PGL" where socket)
RT=$("$PGL" where runtime)
if [ "$(id -u)" = 0 ]; then
    case "$RT" in
    /*) dl_ok "root: a runtime directory outside the checkout ($RT)" ;;
    *) dl_fail "root: no runtime directory" ;;
    esac
    dl_eq "root: the runtime directory belongs to postgres, mode 700" "700 postgres" "$(stat -c '%a %U' "$RT")"
    dl_eq "root: it names its checkout" "$C/var" "$(cat "$RT/checkout")"
    dl_eq "root: the server runs as postgres" postgres "$(q "SELECT current_setting('data_directory')" >/dev/null &&
        ps -o user= -p "$(head -n 1 "$DATA/postmaster.pid")" | tr -d ' ')"
else
    dl_eq "user: data in place" "$C/var/pg" "$DATA"
fi

if "$PGL" stop >"$W/stop.out" 2>&1; then dl_ok "stop"; else dl_fail "stop: $(cat "$W/stop.out")"; fi
if "$PGL" status; then dl_fail "status after stop: still running"; else dl_ok "status after stop: not running"; fi
if q "SELECT 1" >/dev/null; then dl_fail "psql connected to a stopped server"; else dl_ok "psql cannot connect after stop"; fi
if "$PGL" start >"$W/start2.out" 2>&1; then dl_ok "second start"; else dl_fail "second start: $(cat "$W/start2.out")"; fi
dl_eq "the second start finds the same data" "before stop" "$(q "SELECT v FROM kept")"

if [ "$(id -u)" = 0 ]; then
    # another checkout, same port: its own runtime directory, socket and data
    W2=$(mktemp -d) || exit 1
    C2="$W2/other clone"
    if clone_to "$C2" >"$W2/clone.out" 2>&1 && (cd "$C2" && "$PGL" start) >"$W2/start.out" 2>&1; then
        SERVERS+=("root:$C2")
        dl_ok "a second checkout starts on the same port"
        dl_eq "two checkouts, two runtime directories" different \
            "$( [ "$(cd "$C2" && "$PGL" where runtime)" != "$RT" ] && echo different)"
        dl_eq "the second checkout's database is its own" 0 \
            "$(cd "$C2" && q "SELECT count(*) FROM pg_tables WHERE tablename = 'kept'")"
        dl_eq "the first checkout's data is untouched" "before stop" "$(q "SELECT v FROM kept")"
        (cd "$C2" && "$PGL" destroy) >/dev/null 2>&1
    else
        dl_fail "second checkout: $(cat "$W2/clone.out" "$W2/start.out" 2>/dev/null)"
    fi

    # an unsafe runtime parent is refused before anything is made in it
    mkdir "$W/open" && chmod 1777 "$W/open" # ours
    if (cd "$C2" && PGLOCAL_RUNTIME="$W/open" "$PGL" start) >"$W/open.out" 2>&1; then
        dl_fail "a runtime parent writable by others was accepted"
        (cd "$C2" && PGLOCAL_RUNTIME="$W/open" "$PGL" destroy) >/dev/null 2>&1
    else
        dl_grep "a runtime parent writable by others is refused" "$W/open.out" "writable by others"
    fi
    dl_eq "nothing made in it" "" "$(ls -A "$W/open")"
fi

if "$PGL" destroy >"$W/destroy.out" 2>&1; then dl_ok "destroy"; else dl_fail "destroy: $(cat "$W/destroy.out")"; fi
if "$PGL" status; then dl_fail "status after destroy: still running"; else dl_ok "status after destroy: not running"; fi
left=""
for p in "$DATA" "$SOCK" "$("$PGL" where log)" $([ -n "$RT" ] && echo "$RT"); do
    [ -e "$p" ] && left="$left $p"
done
dl_eq "destroy removed data, socket, log and runtime directory" "" "$left"
dl_eq "the checkout is still there" yes "$( [ -x "$C/$PGL" ] && echo yes)"
dl_eq "the modes of the directories above the checkout are unchanged" "$MODES_BEFORE" "$(modes "$C")"
cd "$ROOT" || exit 1

# ---- the ordinary user's layout, as nobody
if [ "$(id -u)" != 0 ]; then
    echo "# not root: the ordinary user's layout ran above; root's runtime layout not exercised"
    long_socket "$C" "$W"
elif ! id nobody >/dev/null 2>&1 || ! runuser -u nobody -- true 2>/dev/null; then
    echo "# no user nobody usable with runuser: the ordinary user's layout not exercised"
else
    NB=$(mktemp -d) || exit 1
    chown nobody "$NB" # ours, mode 700: only nobody may enter
    CN="$NB/nobody's dir with spaces/ckptd"
    clone_to "$CN" >"$NB/clone.out" 2>&1 && chown -R nobody "$NB/nobody's dir with spaces" ||
        dl_fail "clone for nobody: $(cat "$NB/clone.out")"
    SERVERS+=("nobody:$CN")
    # nb CMD...: a pg-local command (or q) as nobody in that checkout
    nb() {
        runuser -u nobody -- bash -c 'cd "$1" && shift && PGL=$0 && q() { (eval "$("$PGL" env)" &&
            psql -X -q -t -A -v ON_ERROR_STOP=1 -c "$1" 2>&1); } && "$@"' "$PGL" "$CN" "$@"
    }
    if nb "$PGL" start >"$NB/start.out" 2>&1; then dl_ok "nobody: start"; else dl_fail "nobody: start: $(cat "$NB/start.out")"; fi
    dl_eq "nobody: data in place" "$CN/var/pg" "$(nb "$PGL" where data)"
    dl_eq "nobody: no runtime directory" "" "$(nb "$PGL" where runtime)"
    dl_eq "nobody: the server runs as nobody" nobody "$(stat -c %U "$CN/var/pg/postmaster.pid" 2>/dev/null)"
    dl_eq "nobody: a table written through psql" 1 \
        "$(nb q "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('x'); SELECT count(*) FROM kept")"
    dl_eq "root finds nobody's server in that checkout" yes \
        "$( (cd "$CN" && "$PGL" status) && echo yes)"
    nb "$PGL" stop >/dev/null 2>&1
    if nb "$PGL" status; then dl_fail "nobody: status after stop"; else dl_ok "nobody: stopped"; fi
    nb "$PGL" start >"$NB/start2.out" 2>&1 || dl_fail "nobody: second start: $(cat "$NB/start2.out")"
    dl_eq "nobody: the second start finds the same data" x "$(nb q "SELECT v FROM kept")"
    nb "$PGL" destroy >/dev/null 2>&1
    dl_eq "nobody: destroy removed data, socket and log" "" \
        "$(ls -A "$CN/var" 2>/dev/null)"
    long_socket "$CN" "$NB" runuser -u nobody --
fi

dl_finish
