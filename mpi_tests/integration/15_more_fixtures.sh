#!/usr/bin/env bash
# The project's own real fixtures (mpi_tests/fixtures, made with the shared
# generator): HSDP (Replicate, Shard(0)) over a 2x2 mesh, whose replicas are
# deduplicated and compared, and a critic (value model). Outputs and merged
# optimizers byte-identical to the references; a replica whose bytes differ
# (a consistent, re-CRC'd file) is an error.
source "$(dirname "$0")/../lib.sh"
OWN=$FM_ROOT/mpi_tests/fixtures

check() { # what out ref
    cmp -s "$2" "$3" && pass "$1" || fail "$1: $2 differs from $3"
}

for np in 4 2 1; do
    for dt in bfloat16 float32; do
        d=$([ $dt = bfloat16 ] && echo bf16 || echo fp32)
        out=$SCRATCH/hsdp-$np-$dt
        if mpimerge "$np" "$OWN/fsdp2_hsdp_ws4/global_step_1" --output "$out" --dtype "$dt" --optimizer --progress none; then
            check "HSDP 2x2 -np $np $dt: model.safetensors" "$out/model.safetensors" "$OWN/fsdp2_hsdp_ws4/reference/$d/model.safetensors"
            check "HSDP 2x2 -np $np $dt: config.json" "$out/config.json" "$OWN/fsdp2_hsdp_ws4/reference/$d/config.json"
            check "HSDP 2x2 -np $np: optimizer" "$out/optimizer/optimizer.safetensors" "$OWN/fsdp2_hsdp_ws4/reference/optim_reference.safetensors"
        else
            fail "HSDP -np $np $dt: exit $?"; tail -3 "$OUT_LOG"
        fi
        rm -rf "$out"
    done
done
grep -q "26 sharded parameters" "$OUT_LOG" || mpimerge 4 "$OWN/fsdp2_hsdp_ws4/global_step_1" --output "$SCRATCH/hs" --progress none
grep -q "26 sharded parameters" "$OUT_LOG" && pass "HSDP: replicas are counted once (26 sharded parameters)" || fail "HSDP summary"

for np in 2 1; do
    out=$SCRATCH/critic-$np
    if mpimerge "$np" "$OWN/fsdp2_ws2_critic/global_step_1" --actor-dir critic --output "$out" --optimizer --progress none; then
        check "critic -np $np: model.safetensors" "$out/model.safetensors" "$OWN/fsdp2_ws2_critic/reference/bf16/model.safetensors"
        check "critic -np $np: config.json (Qwen2ForTokenClassification)" "$out/config.json" "$OWN/fsdp2_ws2_critic/reference/bf16/config.json"
        check "critic -np $np: optimizer" "$out/optimizer/optimizer.safetensors" "$OWN/fsdp2_ws2_critic/reference/optim_reference.safetensors"
    else
        fail "critic -np $np: exit $?"; tail -3 "$OUT_LOG"
    fi
done

# rank 3 holds a replica of rank 1's blocks: change one value of its embedding shard, CRCs rewritten
rm -rf "$SCRATCH/ck"; cp -r "$OWN/fsdp2_hsdp_ws4/global_step_1" "$SCRATCH/ck"; chmod -R u+w "$SCRATCH/ck"
python3 "$FM_ROOT/mpi_tests/tools/zipedit.py" patch-record "$SCRATCH/ck/actor/model_world_size_4_rank_3.pt" data/0 8 00008040
out=$SCRATCH/bad-replica
timeout 120 mpirun -np 4 "$FM_BIN" "$SCRATCH/ck" --output "$out" > "$OUT_LOG" 2>&1; rc=$?
[ $rc -eq 6 ] && grep -q "key 'model.embed_tokens.weight': rank 1 and rank 3 hold replicas of the same block with different bytes" "$OUT_LOG" \
    && [ ! -e "$out" ] && pass "HSDP: a replica with different bytes: exit 6, names both ranks" || { fail "bad replica: exit $rc"; tail -2 "$OUT_LOG"; }

# A DTensor whose mesh has no pickled coordinate (_coordinate_on_dim = None, as a mesh
# pickled from a rank outside it would have): the coordinate is found in the mesh's
# rank map instead (_rank_map + _layout), and the merge is unchanged.
rm -rf "$SCRATCH/ck"; cp -r "$FIX/fsdp2_ws4_tied/global_step_1" "$SCRATCH/ck"; chmod -R u+w "$SCRATCH/ck"
key=5812000000$(printf '_coordinate_on_dim' | od -An -tx1 | tr -d ' \n')
patched=0
for r in 0 1 2 3; do
    python3 "$FM_ROOT/mpi_tests/tools/zipedit.py" patch-pkl "$SCRATCH/ck/actor/model_world_size_4_rank_$r.pt" \
        "${key}71464b0${r}85" "${key}71464e" && patched=$((patched + 1))
done
[ $patched -eq 4 ] && pass "removed the pickled mesh coordinate from all 4 rank files" || fail "coordinate patch ($patched of 4)"
out=$SCRATCH/nocoord
mpimerge 4 "$SCRATCH/ck" --output "$out" --progress none \
    && check "no pickled mesh coordinate: found in the rank map, output unchanged" "$out/model.safetensors" \
        "$FIX/fsdp2_ws4_tied/reference/bf16/model.safetensors" || fail "no pickled coordinate: exit $?"
"$FM_BIN" inspect "$SCRATCH/ck/actor/model_world_size_4_rank_2.pt" | grep -q "coordinate=\[2\]" \
    && pass "inspect: coordinate from the rank map" || fail "inspect coordinate from the rank map"
