#!/usr/bin/env bash
# Multi-host mpirun for real: three test hosts made of network namespaces
# (mpi_tests/cluster/netns.sh: veth pairs on a bridge in a namespace of its
# own, addresses 10.213.7.11-13/24, hostnames fmhost1-3 through UTS
# namespaces), mpirun run on fmhost1 and starting its daemons on fmhost2/3
# through an rsh agent (--mca plm_rsh_agent mpi_tests/cluster/rsh-agent.sh),
# Open MPI's TCP transport only (pml ob1, btl tcp,self) restricted to the test
# subnet. Each host also has a "node-local disk" (its own folder bound over a
# shared mount point), for --shard-template and a writer-only output folder.
#   - placement: ranks on the hosts and network namespaces the hostfile says
#   - merges with ranks spread over the hosts: gather, direct and auto modes,
#     through launch/fsdpmerge-run --hostfile, node-local shards, an output
#     folder only the writer's host sees; bytes really cross the veths
#   - the root namespace's links, addresses and routes are untouched; the
#     namespaces are removed at the end (also when a check fails)
# Needs root (CI runs as root); FSDPMERGE_SKIP_ROOT_TESTS=1 skips it.
source "$(dirname "$0")/../lib.sh"
source "$FM_ROOT/mpi_tests/cluster/netns.sh"

if [ "$(id -u)" -ne 0 ]; then
    if [ "${FSDPMERGE_SKIP_ROOT_TESTS:-}" = 1 ]; then echo "SKIP multi-host test: not root"; exit 0; fi
    fail "multi-host test: needs root for network namespaces (run the tests as root, or FSDPMERGE_SKIP_ROOT_TESTS=1 to skip)"
    exit 0
fi

cleanup() {
    mh_down
    rm -rf "$SCRATCH" "$OUT_LOG"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

root_net() { { ip -o link show; ip -o addr show; ip route show; } 2>&1 | sed 's/ qlen [0-9]*//'; }
root_before=$(root_net)
my_netns=$(readlink /proc/self/ns/net)

MH=$SCRATCH/mh
chmod 755 "$SCRATCH"
if ! MH_SLOTS="3 3 2" mh_up "$MH" 3 10.213.7; then
    fail "multi-host: could not make the network namespaces (ip netns, veth, bridge)"
    exit 0
fi
pass "3 test hosts (network namespaces, veth pairs on a bridge, 10.213.7.11-13/24)"

MCA=(--mca plm_rsh_agent "$MH_AGENT" --mca plm_rsh_no_tree_spawn 1 --mca pml ob1 --mca btl "tcp,self"
    --mca btl_tcp_if_include 10.213.7.0/24 --mca oob_tcp_if_include 10.213.7.0/24)
HF=$MH/hostfile # fmhost1 slots=3, fmhost2 slots=3, fmhost3 slots=2
# onhost1 CMD...: CMD on fmhost1 (where mpirun runs), output in $OUT_LOG
onhost1() { timeout 120 "$MH_AGENT" --exec fmhost1 "$@" > "$OUT_LOG" 2>&1; }
# mpimh NP MPIRUN-ARGS... -- FSDPMERGE-ARGS...
mpimh() {
    local np=$1 margs=()
    shift
    while [ "$1" != -- ]; do margs+=("$1"); shift; done
    shift
    onhost1 mpirun -np "$np" "${MCA[@]}" "${margs[@]}" "$FM_BIN" "$@"
}
tx_bytes() { ip netns exec "$(awk -v h="$1" '$1 == h {print $2}' "$FM_MH_MAP")" cat /sys/class/net/eth0/statistics/tx_bytes; }
check_ref() { # what out ref
    cmp -s "$2/model.safetensors" "$3/model.safetensors" && cmp -s "$2/config.json" "$3/config.json" \
        && pass "$1: byte-identical to the reference" || { fail "$1: output differs from $3"; tail -5 "$OUT_LOG"; }
}

# ---- placement: where do the ranks run? ----
onhost1 mpirun --hostfile "$HF" -np 8 "${MCA[@]}" \
    sh -c 'echo "rank $OMPI_COMM_WORLD_RANK $(hostname) $(readlink /proc/self/ns/net) $(ip -4 -o addr show eth0 | awk "{print \$4}")"'
rc=$?
got=$(grep '^rank' "$OUT_LOG" | sort -k2n | awk '{print $2 ":" $3}' | tr '\n' ' ')
want="0:fmhost1 1:fmhost1 2:fmhost1 3:fmhost2 4:fmhost2 5:fmhost2 6:fmhost3 7:fmhost3 "
nets=$(grep '^rank' "$OUT_LOG" | awk '{print $4}' | sort -u)
if [ $rc -eq 0 ] && [ "$got" = "$want" ] && [ "$(echo "$nets" | wc -l)" -eq 3 ] && ! echo "$nets" | grep -qx "$my_netns"; then
    pass "placement: mpirun --hostfile puts ranks 0-2 on fmhost1, 3-5 on fmhost2, 6-7 on fmhost3, 3 network namespaces"
else
    fail "placement: rc $rc, got '$got'"; cat "$OUT_LOG"
fi
grep '^rank' "$OUT_LOG" | sort -k2n | awk '{printf "     %s\n", $0}' | sort -u -k3,3
if grep -q '^fmhost2 rsh: .*orted' "$FM_MH_LOG" && grep -q '^fmhost3 rsh: .*orted' "$FM_MH_LOG" && ! grep -q '^fmhost1 rsh:' "$FM_MH_LOG"; then
    pass "the daemons of fmhost2 and fmhost3 were started through the rsh agent, fmhost1's ranks by mpirun itself"
else
    fail "rsh agent calls: $(cat "$FM_MH_LOG")"
fi

# ---- merges with the ranks spread over the hosts ----
T=$FIX/fsdp2_ws4_tied
for mode in gather direct; do
    out=$SCRATCH/ws4-$mode
    before2=$(tx_bytes fmhost2) before3=$(tx_bytes fmhost3)
    if mpimh 4 --host fmhost1:2,fmhost2:1,fmhost3:1 -- "$T/global_step_1" --output "$out" --mode "$mode" --progress none; then
        check_ref "ws4 over 3 hosts (2+1+1 ranks), --mode $mode" "$out" "$T/reference/bf16"
        sent2=$(($(tx_bytes fmhost2) - before2)) sent3=$(($(tx_bytes fmhost3) - before3))
        if [ "$mode" = gather ]; then
            # the ranks of fmhost2 and fmhost3 send their quarter of the weights (63 KB) to the writer
            [ $sent2 -gt 40000 ] && [ $sent3 -gt 40000 ] \
                && pass "gather: fmhost2 and fmhost3 sent their pieces over their veth ($sent2 and $sent3 bytes)" \
                || fail "gather: too little traffic from fmhost2/fmhost3 ($sent2, $sent3 bytes)"
        fi
    else
        fail "ws4 over 3 hosts, --mode $mode: exit $?"; tail -5 "$OUT_LOG"
    fi
done

out=$SCRATCH/ws8-auto
E=$FIX/fsdp2_ws8_uneven_bf16
if mpimh 8 --hostfile "$HF" -- "$E/global_step_1" --output "$out" --progress none --buffer-size 64KiB; then
    check_ref "ws8 uneven over 3 hosts (3+3+2 ranks), auto mode, 64KiB buffers" "$out" "$E/reference/bf16"
    grep -q "Mode: *direct (auto: processes on 3 hosts" "$OUT_LOG" && pass "auto picks direct when the processes span hosts that all see the output folder" \
        || fail "auto mode on a shared folder: $(grep Mode "$OUT_LOG")"
else
    fail "ws8 over 3 hosts: exit $?"; tail -5 "$OUT_LOG"
fi

# ---- launch/fsdpmerge-run with a hostfile ----
out=$SCRATCH/run-hostfile
if onhost1 "$FM_ROOT/launch/fsdpmerge-run" --hostfile "$HF" "${MCA[@]}" "$E/global_step_1/actor" --output "$out" --progress none; then
    check_ref "launch/fsdpmerge-run --hostfile over 3 hosts" "$out" "$E/reference/bf16"
    grep -q "^+ mpirun -np 8 --hostfile $HF --bind-to none --mca plm_rsh_agent" "$OUT_LOG" && ! grep -q -- --oversubscribe "$OUT_LOG" \
        && pass "fsdpmerge-run: prints mpirun -np 8 --hostfile ..., no --oversubscribe with a hostfile" \
        || fail "fsdpmerge-run printed: $(grep '^+' "$OUT_LOG")"
else
    fail "launch/fsdpmerge-run --hostfile: exit $?"; tail -5 "$OUT_LOG"
fi

# ---- shards on node-local disks ----
# the checkpoint folder (shared) holds fsdp_config.json and huggingface/; each
# rank file is on the disk of the host that runs that rank
ck=$SCRATCH/nodelocal/global_step_1
mkdir -p "$ck/actor"
cp "$T/global_step_1/actor/fsdp_config.json" "$ck/actor/"
cp -r "$T/global_step_1/actor/huggingface" "$ck/actor/"
place=(fmhost1 fmhost1 fmhost2 fmhost3) # --host fmhost1:2,fmhost2:1,fmhost3:1 maps by slot
for r in 0 1 2 3; do cp "$T/global_step_1/actor/model_world_size_4_rank_$r.pt" "$MH/disk-${place[r]}/"; done
tmpl=$MH/local/model_world_size_%w_rank_%r.pt
H=(--host "fmhost1:2,fmhost2:1,fmhost3:1")

out=$SCRATCH/nl-shared
if mpimh 4 "${H[@]}" -- "$ck" --shard-template "$tmpl" --output "$out" --progress none; then
    check_ref "node-local shards (--shard-template), shared output folder, auto mode" "$out" "$T/reference/bf16"
    grep -q "Mode: *direct" "$OUT_LOG" && pass "node-local shards, shared output: auto picks direct" || fail "auto: $(grep Mode "$OUT_LOG")"
else
    fail "node-local shards, shared output: exit $?"; tail -5 "$OUT_LOG"
fi

# output on fmhost1's own disk: only the writer sees it
if mpimh 4 "${H[@]}" -- "$ck" --shard-template "$tmpl" --output "$MH/local/merged" --progress none; then
    check_ref "node-local shards, output on the writer's node-local disk" "$MH/disk-fmhost1/merged" "$T/reference/bf16"
    grep -q "Mode: *gather (auto: not every process sees the output folder)" "$OUT_LOG" \
        && pass "output only the writer's host sees: auto falls back to gather" || fail "auto: $(grep Mode "$OUT_LOG")"
    [ ! -e "$MH/disk-fmhost2/merged" ] && [ ! -e "$MH/disk-fmhost3/merged" ] && no_leftovers "$MH/disk-fmhost2" \
        && no_leftovers "$MH/disk-fmhost3" && pass "nothing written on the other hosts' disks" || fail "files on other hosts' disks"
else
    fail "node-local shards, node-local output: exit $?"; tail -5 "$OUT_LOG"
fi
mpimh 4 "${H[@]}" -- "$ck" --shard-template "$tmpl" --output "$MH/local/merged-direct" --mode direct --progress none
rc=$?
[ $rc -eq 2 ] && grep -q "not every process can see the output folder" "$OUT_LOG" && no_leftovers "$MH/disk-fmhost1" \
    && pass "--mode direct on a folder only one host sees: exit 2, clear message, nothing left" \
    || { fail "--mode direct on a node-local folder: exit $rc"; tail -3 "$OUT_LOG"; }

# the disks are really separate: ranks placed where their files are not fail cleanly
mpimh 4 --host fmhost1:1,fmhost2:2,fmhost3:1 -- "$ck" --shard-template "$tmpl" --output "$out-misplaced" --progress none
rc=$?
[ $rc -eq 3 ] && grep -q "rank 1: .*model_world_size_4_rank_1.pt" "$OUT_LOG" && [ ! -e "$out-misplaced" ] \
    && pass "a rank placed on a host without its shard: exit 3 naming rank 1 and its path" \
    || { fail "misplaced ranks: exit $rc"; tail -3 "$OUT_LOG"; }

# ---- nothing outside the namespaces changed, and they go away ----
[ "$(root_net)" = "$root_before" ] && pass "root namespace: links, addresses and routes unchanged" \
    || { fail "root namespace network changed"; diff <(echo "$root_before") <(root_net) | head; }
names=$(printf '%s\n' "${MH_NAMESPACES[@]}")
mh_down
left=$(ip netns list 2>/dev/null | awk '{print $1}' | grep -xF "$names")
[ -z "$left" ] && pass "test namespaces removed" || fail "namespaces left: $left"
