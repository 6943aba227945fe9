# shellcheck shell=bash
# netns.sh - test "hosts" made of network namespaces (sourced, not run).
#
#   mh_up DIR N [SUBNET]  makes hosts fmhost1..fmhostN: one network namespace
#                         each, its eth0 (a veth pair) on a bridge that lives in
#                         a namespace of its own, addresses SUBNET.11, .12, ...
#                         (default SUBNET 10.213.7, a /24), lo up. Nothing is
#                         added to the root namespace: no bridge, no route, no
#                         address, so no packet can leave the test's hosts.
#                         Writes DIR/hosts.map (for rsh-agent.sh), DIR/hostfile
#                         (one line per host, slots=1 unless MH_SLOTS is set,
#                         e.g. MH_SLOTS="2 1 1"), a node-local "disk" per
#                         host DIR/disk-HOST, and the shared mount point
#                         DIR/local over which rsh-agent.sh binds each host's
#                         disk. Exports FM_MH_MAP and FM_MH_LOG.
#   mh_exec HOST CMD...   runs CMD on HOST (through rsh-agent.sh --exec)
#   mh_down               ends the processes still inside the namespaces (by
#                         pid: `ip netns pids`), deletes the namespaces (the
#                         veth pairs and the bridge go with them). Safe to call
#                         twice.
# Namespace names carry this shell's pid, so concurrent runs do not collide.

FM_CLUSTER_LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MH_AGENT=$FM_CLUSTER_LIB/rsh-agent.sh
MH_NAMESPACES=()
MH_HOSTS=()
MH_ADDRS=()
MH_SUBNET=10.213.7

mh_up() {
    local dir=$1 n=$2 i ns host slots
    local tag=fm$$
    local br=$tag-br
    MH_SUBNET=${3:-10.213.7}
    read -r -a slots <<< "${MH_SLOTS:-}"
    mkdir -p "$dir/local"
    : > "$dir/hosts.map"
    : > "$dir/hostfile"
    ip netns add "$br" || return 1
    MH_NAMESPACES+=("$br")
    ip -n "$br" link add fmbr type bridge || return 1
    ip -n "$br" link set fmbr up || return 1
    for ((i = 1; i <= n; i++)); do
        ns=$tag-h$i
        host=fmhost$i
        ip netns add "$ns" || return 1
        MH_NAMESPACES+=("$ns")
        # both ends are created directly in their namespaces
        ip link add eth0 netns "$ns" type veth peer name p$i netns "$br" || return 1
        ip -n "$br" link set p$i master fmbr && ip -n "$br" link set p$i up || return 1
        ip -n "$ns" link set lo up || return 1
        ip -n "$ns" addr add "$MH_SUBNET.$((10 + i))/24" dev eth0 || return 1
        ip -n "$ns" link set eth0 up || return 1
        mkdir -p "$dir/disk-$host"
        echo "$host $ns $dir/disk-$host $dir/local" >> "$dir/hosts.map"
        echo "$host slots=${slots[i - 1]:-1}" >> "$dir/hostfile"
        MH_HOSTS+=("$host")
        MH_ADDRS+=("$MH_SUBNET.$((10 + i))")
    done
    export FM_MH_MAP=$dir/hosts.map FM_MH_LOG=$dir/agent.log
    : > "$FM_MH_LOG"
    return 0
}

mh_exec() {
    "$MH_AGENT" --exec "$@"
}

mh_down() {
    local ns p i
    for ((i = ${#MH_NAMESPACES[@]} - 1; i >= 0; i--)); do
        ns=${MH_NAMESPACES[i]}
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$p" 2>/dev/null; done
    done
    for ((i = ${#MH_NAMESPACES[@]} - 1; i >= 0; i--)); do
        ns=${MH_NAMESPACES[i]}
        for p in $(ip netns pids "$ns" 2>/dev/null); do
            for ((j = 0; j < 20; j++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$p" 2>/dev/null
        done
        ip netns del "$ns" 2>/dev/null
    done
    MH_NAMESPACES=()
}
