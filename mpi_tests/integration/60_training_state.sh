#!/usr/bin/env bash
# The training state in the output folder: extra_state_merged.pt (checked by
# loading it with real PyTorch and comparing with torch.load of every rank's
# file), lr_scheduler_state.json, and with --optimizer the merged optimizer
# (byte-identical to the fixtures' optim_reference.safetensors), plus the
# FSDP1 refusal and bad extra_state files.
source "$(dirname "$0")/../lib.sh"
PY=python3
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3 # Debian's, where python3-torch lives

for spec in fsdp2_ws4_tied:4 fsdp1_ws4_mesh:4 fsdp1_ws2_nomesh:2 fsdp2_ws8_uneven_bf16:8 fsdp2_ws4_shard1:4 \
            fsdp2_ws2_cudarng:2 fsdp2_ws4_lora:4; do
    name=${spec%%:*}; W=${spec##*:}
    actor=$FIX/$name/global_step_1/actor
    out=$SCRATCH/ts-$name
    opt=""
    case $name in fsdp2_*) opt=--optimizer ;; esac
    for np in "$W" 1; do
        rm -rf "$out"
        if ! mpimerge "$np" "$FIX/$name/global_step_1" --output "$out" $opt --progress none; then
            fail "$name -np $np $opt: exit $?"; tail -3 "$OUT_LOG"; continue
        fi
        $PY "$FM_ROOT/mpi_tests/tools/check_extra_state.py" "$out" "$actor" "$W" > "$SCRATCH/check.log" 2>&1 \
            || echo "FAIL the checker crashed: $(tail -1 "$SCRATCH/check.log")" >> "$SCRATCH/check.log"
        while read -r status rest; do
            [ "$status" = OK ] && pass "$name -np $np: extra_state: $rest" || fail "$name -np $np: extra_state: $rest"
        done < <(grep -E '^(OK|FAIL)' "$SCRATCH/check.log")
        [ -n "$opt" ] || continue
        cmp -s "$out/optimizer/optimizer.safetensors" "$FIX/$name/reference/optim_reference.safetensors" \
            && pass "$name -np $np: optimizer.safetensors byte-identical to optim_reference.safetensors" \
            || fail "$name -np $np: optimizer.safetensors differs"
        while read -r status rest; do
            [ "$status" = OK ] && pass "$name -np $np: optimizer_state.json: $rest" || fail "$name -np $np: optimizer_state.json: $rest"
        done < <($PY "$FM_ROOT/mpi_tests/tools/check_optimizer.py" "$out" "$FIX/$name/reference/optim_reference.json" 2>&1)
    done
done

# direct mode writes the optimizer too
out=$SCRATCH/ts-direct
mpimerge 3 "$FIX/fsdp2_ws4_shard1/global_step_1" --output "$out" --optimizer --mode direct --buffer-size 64KiB --progress none \
    && cmp -s "$out/optimizer/optimizer.safetensors" "$FIX/fsdp2_ws4_shard1/reference/optim_reference.safetensors" \
    && pass "--optimizer in direct mode with small buffers, -np 3" || fail "--optimizer direct mode"

# plain checkpoints have no extra_state: nothing written, no error
out=$SCRATCH/ts-plain
mpimerge 2 "$FIX/plain_ws2_replicated/global_step_1" --output "$out" --progress none \
    && [ ! -e "$out/extra_state_merged.pt" ] && grep -q "no extra_state files" "$OUT_LOG" \
    && pass "no extra_state files: merge succeeds and says so" || fail "no extra_state files"

# FSDP1 optimizers cannot be split: refused before anything is written
out=$SCRATCH/ts-fsdp1
timeout 120 mpirun -np 4 "$FM_BIN" "$FIX/fsdp1_ws4_mesh/global_step_1" --output "$out" --optimizer > "$OUT_LOG" 2>&1; rc=$?
[ $rc -eq 5 ] && grep -q "FSDP1 checkpoint .* cannot be split per parameter" "$OUT_LOG" && [ ! -e "$out" ] && no_leftovers "$SCRATCH" \
    && pass "--optimizer on FSDP1: exit 5, clear message, nothing written" || fail "--optimizer on FSDP1: exit $rc"

# bad extra_state files
rm -rf "$SCRATCH/ck"; cp -r "$FIX/fsdp2_ws4_tied/global_step_1" "$SCRATCH/ck"; chmod -R u+w "$SCRATCH/ck"
rm "$SCRATCH/ck/actor/extra_state_world_size_4_rank_2.pt"
out=$SCRATCH/ts-bad
timeout 120 mpirun -np 4 "$FM_BIN" "$SCRATCH/ck" --output "$out" > "$OUT_LOG" 2>&1; rc=$?
[ $rc -eq 3 ] && grep -q "missing extra_state for rank 2: .*extra_state_world_size_4_rank_2.pt" "$OUT_LOG" && [ ! -e "$out" ] \
    && pass "a missing extra_state file: exit 3, names it, no output" || fail "missing extra_state: exit $rc"
cp "$FIX/fsdp2_ws4_tied/global_step_1/actor/extra_state_world_size_4_rank_2.pt" "$SCRATCH/ck/actor/"
chmod u+w "$SCRATCH/ck/actor/extra_state_world_size_4_rank_2.pt"
off=$(python3 "$FM_ROOT/mpi_tests/tools/zipedit.py" offset "$SCRATCH/ck/actor/extra_state_world_size_4_rank_2.pt" data.pkl)
printf '\x00' | dd of="$SCRATCH/ck/actor/extra_state_world_size_4_rank_2.pt" bs=1 seek=$((off + 5)) conv=notrunc status=none
timeout 120 mpirun -np 4 "$FM_BIN" "$SCRATCH/ck" --output "$out" > "$OUT_LOG" 2>&1; rc=$?
[ $rc -eq 4 ] && grep -q "rank 2: .*extra_state_world_size_4_rank_2.pt: .*CRC-32 mismatch" "$OUT_LOG" && [ ! -e "$out" ] && no_leftovers "$SCRATCH" \
    && pass "a corrupt extra_state file: exit 4, names it, no output" || fail "corrupt extra_state: exit $rc"
