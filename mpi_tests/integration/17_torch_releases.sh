#!/usr/bin/env bash
# Checkpoints written by other PyTorch releases, whose DeviceMesh pickles differ
# (torchfmt/mesh): torch 2.14 (shared torch214_fsdp2_ws4, and the committed
# torch214_*) and torch 2.6 (torch26_*), FSDP2 Shard(0), Shard(1), HSDP 2x2 and
# bf16. Each merges at -np W and -np 1, bf16 and fp32, byte-equal to its
# reference/full_fp32.pt converted to the output dtype by torch 1.13; the
# merged optimizer moments byte-equal the same AdamW step run by that release
# on the unsharded model; extra_state_merged.pt loads in torch 1.13 as rank 0's;
# inspect prints every DTensor with its placements and mesh.
source "$(dirname "$0")/../lib.sh"
OWN=$FM_ROOT/mpi_tests/fixtures
PY=python3
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3 # Debian's, where python3-torch lives
TOOLS=$FM_ROOT/mpi_tests/tools

# checks LABEL CMD... : one pass/fail per OK/FAIL line the checker prints; fail if it prints none or exits non-zero
checks() {
    local label=$1 n=0 status rest rc
    shift
    "$@" > "$SCRATCH/check.log" 2>&1; rc=$?
    while read -r status rest; do
        n=$((n + 1))
        [ "$status" = OK ] && pass "$label: $rest" || fail "$label: $rest"
    done < <(grep -E '^(OK|FAIL)' "$SCRATCH/check.log")
    [ $n -gt 0 ] && [ $rc -eq 0 ] || { fail "$label: the checker exited $rc after $n results"; tail -3 "$SCRATCH/check.log"; }
}

# One fixture: DIR, world size, optimizer reference (a .pt of moments or a .json of their sha256).
release_fixture() {
    local dir=$1 W=$2 optref=$3 name np dt out ntypes
    name=$(basename "$dir")
    for np in "$W" 1; do
        for dt in bfloat16 float32; do
            out=$SCRATCH/rel-$name-$np-$dt
            if ! mpimerge "$np" "$dir/global_step_1" --output "$out" --dtype "$dt" --optimizer --progress none; then
                fail "$name -np $np $dt: exit $?"; tail -3 "$OUT_LOG"; continue
            fi
            if [ $dt = bfloat16 ] && [ -e "$optref" ]; then # the training state does not depend on --dtype
                checks "$name -np $np $dt" $PY "$TOOLS/check_release.py" "$out" "$dir" "$dt" "$optref"
            else
                checks "$name -np $np $dt" $PY "$TOOLS/check_release.py" "$out" "$dir" "$dt"
            fi
            [ $dt = bfloat16 ] && [ "$np" = "$W" ] || continue # extra_state: rank 0's; the merge itself is -np independent
            checks "$name -np $np: extra_state" $PY "$TOOLS/check_extra_state.py" "$out" "$dir/global_step_1/actor" "$W"
        done
    done
    # inspect: every DTensor of every rank, with placements and mesh
    ntypes=$(grep -c '"DTensor' "$dir/manifest.json")
    local r bad=0 got
    for r in $(seq 0 $((W - 1))); do
        got=$("$FM_BIN" inspect "$dir/global_step_1/actor/model_world_size_${W}_rank_$r.pt" \
            | grep -c 'DTensor(dtype=.*placements=(.*), mesh=\[.*\], coordinate=\[')
        "$FM_BIN" inspect "$dir/global_step_1/actor/model_world_size_${W}_rank_$r.pt" | grep -q unreadable && bad=1
        [ "$got" = "$ntypes" ] || bad=1
    done
    [ $bad = 0 ] && [ "$ntypes" -gt 0 ] && pass "$name: inspect prints all $ntypes DTensors of each of $W ranks with placements and mesh" \
        || fail "$name: inspect ($ntypes DTensors expected per rank)"
}

release_fixture "$FIX/torch214_fsdp2_ws4" 4 "$OWN/torch214_fsdp2_ws4.optim_sha256.json"
for d in "$OWN"/torch214_* "$OWN"/torch26_*; do
    [ -d "$d" ] || continue
    W=$(sed -n 's/.*"world_size": \([0-9]*\).*/\1/p' "$d/manifest.json")
    release_fixture "$d" "$W" "$d/reference/optim_ref.pt"
done
n=$(ls -d "$OWN"/torch214_* "$OWN"/torch26_* 2>/dev/null | grep -vc '\.json$')
[ "$n" -ge 7 ] && pass "$n committed fixtures of torch 2.6 and 2.14" || fail "only $n committed torch 2.6/2.14 fixtures"

# A 2.14 mesh whose _rank_map disagrees with its _coordinate_on_dim: the sources are cross-checked
rm -rf "$SCRATCH/ck"; cp -r "$FIX/torch214_fsdp2_ws4/global_step_1" "$SCRATCH/ck"; chmod -R u+w "$SCRATCH/ck"
key=5812000000$(printf '_coordinate_on_dim' | od -An -tx1 | tr -d ' \n')
python3 "$FM_ROOT/mpi_tests/tools/zipedit.py" patch-pkl "$SCRATCH/ck/actor/model_world_size_4_rank_2.pt" \
    "${key}714b4b0285" "${key}714b4b0185" >/dev/null 2>&1 || fail "patching _coordinate_on_dim of rank 2"
timeout 120 mpirun -np 2 "$FM_BIN" "$SCRATCH/ck" --output "$SCRATCH/bad" > "$OUT_LOG" 2>&1; rc=$?
[ $rc -ne 0 ] && grep -q "rank 2: .*model_world_size_4_rank_2.pt: key 'model.embed_tokens.weight': mesh coordinate \[2\] from the rank map and _layout disagrees with \[1\] from _coordinate_on_dim" "$OUT_LOG" \
    && [ ! -e "$SCRATCH/bad" ] && pass "2.14: a coordinate that disagrees with the rank map: exit $rc, names file, key and both sources" \
    || { fail "coordinate disagreement: exit $rc"; tail -3 "$OUT_LOG"; }
