#!/usr/bin/env bash
# Gather and direct modes, auto selection, small buffers (many windows and
# rounds), fewer processes than ranks, writer rank != 0, and shards on
# "node-local" folders found through --shard-template: every output
# byte-identical to the reference.
source "$(dirname "$0")/../lib.sh"

check_ref() { # what out ref cmd
    cmp -s "$2/model.safetensors" "$3/model.safetensors" && pass "$1: byte-identical" || fail "$1: differs ($4)"
}

for spec in fsdp2_ws4_shard1:4 fsdp2_ws8_uneven_bf16:8 fsdp1_ws2_nomesh:2 fsdp1_ws4_mesh:4; do
    name=${spec%%:*}; W=${spec##*:}
    for mode in gather direct; do
        for np in "$W" 3; do
            [ "$np" -le "$W" ] || continue
            out=$SCRATCH/m-$name-$mode-$np
            args=("$FIX/$name/global_step_1" --output "$out" --mode "$mode" --buffer-size 64KiB --progress none)
            if mpimerge "$np" "${args[@]}"; then
                check_ref "$name --mode $mode -np $np --buffer-size 64KiB" "$out" "$FIX/$name/reference/bf16" \
                    "mpirun -np $np $FM_BIN ${args[*]}"
            else
                fail "$name --mode $mode -np $np: exit $?"; tail -3 "$OUT_LOG"
            fi
            rm -rf "$out"
        done
    done
done

# auto picks gather, the measured fast path, when every process runs on one host (here) and
# says why; mpi_tests/integration/90_multihost.sh checks direct across hosts
out=$SCRATCH/auto
mpimerge 4 "$FIX/fsdp2_ws4_tied/global_step_1" --output "$out" --progress none
grep -q "Mode: *gather (auto: every process runs on one host" "$OUT_LOG" && pass "auto mode chooses gather on one host" \
    || fail "auto mode: $(grep Mode "$OUT_LOG")"
check_ref "auto mode" "$out" "$FIX/fsdp2_ws4_tied/reference/bf16" "auto"
rm -rf "$out"

# the writer need not be process 0
out=$SCRATCH/w3
mpimerge 4 "$FIX/fsdp2_ws4_tied/global_step_1" --output "$out" --mode gather --writer-rank 3 --progress none \
    && check_ref "gather with --writer-rank 3" "$out" "$FIX/fsdp2_ws4_tied/reference/bf16" "writer 3" \
    || fail "gather with --writer-rank 3: exit $?"
rm -rf "$out"

# MPI-IO hints are passed through and shown
out=$SCRATCH/hints
mpimerge 2 "$FIX/fsdp1_ws2_nomesh/global_step_1" --output "$out" --mode direct --mpi-hint cb_buffer_size=1048576 --show-hints --progress none
grep -q "MPI-IO hints in effect" "$OUT_LOG" && pass "--show-hints prints the hints in effect" || fail "--show-hints"
check_ref "direct with --mpi-hint" "$out" "$FIX/fsdp1_ws2_nomesh/reference/bf16" "hints"
rm -rf "$out"

# Shards on node-local disks: each rank's file in a folder of its own, the
# checkpoint folder holding only fsdp_config.json and huggingface/.
ck=$SCRATCH/nodelocal-ckpt
mkdir -p "$ck/actor"
cp "$FIX/fsdp2_ws4_shard1/global_step_1/actor/fsdp_config.json" "$ck/actor/"
cp -r "$FIX/fsdp2_ws4_shard1/global_step_1/actor/huggingface" "$ck/actor/"
for r in 0 1 2 3; do
    mkdir -p "$SCRATCH/node$r/scratch"
    cp "$FIX/fsdp2_ws4_shard1/global_step_1/actor/model_world_size_4_rank_$r.pt" "$SCRATCH/node$r/scratch/"
done
tmpl="$SCRATCH/node%r/scratch/model_world_size_%w_rank_%r.pt"
for mode in gather direct; do
    out=$SCRATCH/nl-$mode
    if mpimerge 4 "$ck" --output "$out" --shard-template "$tmpl" --mode "$mode" --progress none; then
        check_ref "--shard-template, $mode mode" "$out" "$FIX/fsdp2_ws4_shard1/reference/bf16" "template $mode"
        cmp -s "$out/config.json" "$FIX/fsdp2_ws4_shard1/reference/bf16/config.json" && pass "--shard-template, $mode: config.json" \
            || fail "--shard-template, $mode: config.json"
    else
        fail "--shard-template $mode: exit $?"; tail -3 "$OUT_LOG"
    fi
    rm -rf "$out"
done
rm "$SCRATCH/node2/scratch/model_world_size_4_rank_2.pt"
mpimerge 4 "$ck" --output "$SCRATCH/nl-missing" --shard-template "$tmpl" --progress none; rc=$?
[ $rc -eq 3 ] && grep -q "rank 2: .*node2/scratch/model_world_size_4_rank_2.pt" "$OUT_LOG" && [ ! -e "$SCRATCH/nl-missing" ] \
    && pass "--shard-template: a missing rank file names the rank and path" || fail "--shard-template missing file: exit $rc"
