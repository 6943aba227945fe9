#!/usr/bin/env bash
# `fsdpmerge inspect`: the JSON of misc_tensors/misc.pt must give, for every
# tensor of expected.json (written by torch), the same dtype, shape, stride,
# storage offset and values; the text form names DTensor placements.
source "$(dirname "$0")/../lib.sh"

out=$SCRATCH/misc.json
if "$FM_BIN" inspect "$FIX/misc_tensors/misc.pt" --json --values -1 > "$out" 2> "$OUT_LOG"; then
    pass "inspect --json misc.pt exits 0"
else
    fail "inspect --json misc.pt: exit $? ($FM_BIN inspect $FIX/misc_tensors/misc.pt --json --values -1)"
fi
python3 "$FM_ROOT/mpi_tests/tools/check_inspect.py" "$out" "$FIX/misc_tensors/expected.json" > "$OUT_LOG" 2>&1
while read -r status rest; do
    if [ "$status" = OK ]; then pass "inspect: $rest"; else fail "inspect: $rest"; fi
done < "$OUT_LOG"

f=$FIX/fsdp2_ws4_shard1/global_step_1/actor/model_world_size_4_rank_2.pt
"$FM_BIN" inspect "$f" > "$OUT_LOG" 2>&1
grep -q "model.embed_tokens.weight: DTensor(dtype=float32, shape=\[1002, 64\], placements=(Shard(dim=1),), mesh=\[4\], coordinate=\[2\]" "$OUT_LOG" \
    && pass "inspect text: Shard(1) DTensor with mesh and coordinate" || fail "inspect text of $f"
f=$FIX/fsdp1_ws2_nomesh/global_step_1/actor/model_world_size_2_rank_1.pt
"$FM_BIN" inspect "$f" > "$OUT_LOG" 2>&1
grep -q "ShardedTensor(dtype=float32, shape=\[520, 64\], local_shards=\[at \[260, 0\]" "$OUT_LOG" \
    && pass "inspect text: ShardedTensor shard offsets" || fail "inspect text of $f"
f=$FIX/fsdp2_ws4_tied/global_step_1/actor/optim_world_size_4_rank_0.pt
"$FM_BIN" inspect "$f" > "$OUT_LOG" 2>&1 && grep -q "exp_avg" "$OUT_LOG" \
    && pass "inspect works on an optimizer file" || fail "inspect $f"
f=$FIX/fsdp2_ws2_cudarng/global_step_1/actor/extra_state_world_size_2_rank_0.pt
"$FM_BIN" inspect "$f" --json > "$OUT_LOG" 2>&1 && grep -q '"lr_scheduler"' "$OUT_LOG" \
    && pass "inspect --json works on an extra_state file" || fail "inspect --json $f"
