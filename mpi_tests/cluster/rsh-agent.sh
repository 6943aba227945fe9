#!/bin/sh
# rsh-agent.sh - the "ssh" of the test hosts made by mpi_tests/cluster/netns.sh.
#
#   rsh-agent.sh [SSH-OPTIONS] HOST COMMAND...   as Open MPI calls its rsh agent
#                                                (--mca plm_rsh_agent): COMMAND's
#                                                words are joined and run by sh -c,
#                                                as ssh does
#   rsh-agent.sh --exec HOST PROGRAM ARGS...     runs PROGRAM with ARGS unchanged
#
# HOST is looked up in $FM_MH_MAP (lines "HOST NETNS DISK MOUNTPOINT"). The
# command runs inside HOST's network namespace (ip netns exec), in a UTS
# namespace of its own whose hostname is HOST, and in a mount namespace of its
# own where DISK (the host's "node-local disk") is bound over MOUNTPOINT, a
# folder every host shares the path of. Nothing leaves the namespaces: when
# the command ends, its UTS and mount namespaces go with it.
# Every call is appended to $FM_MH_LOG when set.
set -u
mode=rsh
if [ "${1:-}" = "--exec" ]; then mode="exec"; shift; fi
while [ $# -gt 0 ]; do # ssh options Open MPI may add (-x, -o ..., -T)
    case $1 in
    -o | -l | -p) shift 2 ;;
    -*) shift ;;
    *) break ;;
    esac
done
[ $# -ge 2 ] || { echo "rsh-agent.sh: usage: rsh-agent.sh [--exec] HOST COMMAND..." >&2; exit 255; }
host=$1
shift
[ -n "${FM_MH_MAP:-}" ] && [ -r "$FM_MH_MAP" ] || { echo "rsh-agent.sh: FM_MH_MAP is not set or unreadable" >&2; exit 255; }
line=$(awk -v h="$host" '$1 == h { print; exit }' "$FM_MH_MAP")
[ -n "$line" ] || { echo "rsh-agent.sh: unknown host $host (not in $FM_MH_MAP)" >&2; exit 255; }
ns=$(echo "$line" | awk '{print $2}')
disk=$(echo "$line" | awk '{print $3}')
mnt=$(echo "$line" | awk '{print $4}')
[ -n "${FM_MH_LOG:-}" ] && echo "$host $mode: $*" >> "$FM_MH_LOG"
# shellcheck disable=SC2016
exec ip netns exec "$ns" unshare --uts --mount --propagation private sh -c '
    hostname "$1" && mount --bind "$2" "$3" || { echo "rsh-agent.sh: cannot set up host $1" >&2; exit 255; }
    mode=$4
    shift 4
    if [ "$mode" = exec ]; then exec "$@"; else exec sh -c "$*"; fi' rsh-agent "$host" "$disk" "$mnt" "$mode" "$@"
