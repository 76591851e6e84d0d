# tests/lib/netns.sh - hosts on one machine, each its own network
# namespace, joined by a bridge; used by tests/cluster_netns.sh and
# tests/soak/soak.sh.  Sourced by bash scripts.
#
#     . tests/lib/netns.sh
#     ns_usable || skip "$NS_WHY"            # root, iproute2, ip netns add
#     declare -A ADDR=([db]=10.213.0.10 [n1]=10.213.0.21)
#     ns_build ckc-$$ "db n1" 24 2>err || fail   # $NS-sw holds bridge br0;
#                                             # $NS-db, $NS-n1 each an eth0 on it
#     ip netns exec "$NS-n1" cmd ...          # run on a host
#     ns_link n1 down; ns_link n1 up          # cut a host off, and back
#     ns_destroy                              # in the EXIT trap: every namespace
#
# Addresses come from the associative array ADDR (host -> IPv4), which the
# caller declares; ns_build sets NS.  Each host also has its loopback up.

# shellcheck shell=bash
NS=""
NS_MADE=""
NS_WHY=""

# ns_usable: 0 when namespaces can be made here, else 1 with NS_WHY set
ns_usable() {
    local err
    if ! command -v ip >/dev/null 2>&1; then
        NS_WHY="no ip command (iproute2, scripts/install-deps)"
        return 1
    fi
    if [ "$(id -u)" != 0 ]; then
        NS_WHY="network namespaces need root"
        return 1
    fi
    if ! err=$(ip netns add "nsprobe-$$" 2>&1); then
        NS_WHY="ip netns add failed: $err"
        return 1
    fi
    ip netns del "nsprobe-$$"
    return 0
}

# ns_build PREFIX "HOST..." PREFIXLEN: the bridge and one namespace per host
ns_build() {
    NS=$1
    local h
    ip netns add "$NS-sw" && NS_MADE="$NS_MADE $NS-sw" &&
        ip -n "$NS-sw" link add br0 type bridge && ip -n "$NS-sw" link set br0 up || return 1
    for h in $2; do
        ip netns add "$NS-$h" && NS_MADE="$NS_MADE $NS-$h" &&
            ip link add eth0 netns "$NS-$h" type veth peer name "$h" netns "$NS-sw" &&
            ip -n "$NS-sw" link set "$h" master br0 up &&
            ip -n "$NS-$h" addr add "${ADDR[$h]}/$3" dev eth0 &&
            ip -n "$NS-$h" link set eth0 up && ip -n "$NS-$h" link set lo up || return 1
    done
}

# ns_link HOST up|down: the host's link to the bridge
ns_link() { ip -n "$NS-$1" link set eth0 "$2"; }

# ns_destroy: every namespace ns_build made (their veths go with them)
ns_destroy() {
    local n
    for n in $NS_MADE; do ip netns del "$n" 2>/dev/null; done
    NS_MADE=""
}
