#!/usr/bin/env bash
# fsdpmerge reshard: for every FSDP2 fixture and N in {1, 2, 3, W, 2W, 8},
# merging the resharded checkpoint (weights and --optimizer) gives exactly the
# bytes merging the original gives; resharding to W reproduces the input rank
# files record for record; the new pickles parse into the DTensor layout
# FSDP2's rules give (expected values worked out by hand below); and the
# refusals (FSDP1 --optimizer, ShardedTensor, unknown mesh layout, bad
# --mesh) are clear and leave nothing behind.
source "$(dirname "$0")/../lib.sh"
# same_manifest A B : the two outputs' fsdpmerge_manifest.json list the same tensors (file, dtype, shape,
# offsets, CRC-32C) and files; only the provenance (source, command line) may differ
same_manifest() {
    python3 -c 'import json, sys
a, b = (json.load(open(d + "/fsdpmerge_manifest.json")) for d in sys.argv[1:3])
sys.exit(0 if a["tensors"] == b["tensors"] and a["files"] == b["files"] and a["tensors"] else 1)' "$1" "$2"
}
PY=python3
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3

# merged NAME CKPT OUT ACTOR : merges (weights + optimizer) into OUT (one process, no mpirun: faster)
merged() {
    "$FM_BIN" "$2" --output "$3" --actor-dir "$4" --optimizer --progress none > "$OUT_LOG" 2>&1
}

fm1() { "$FM_BIN" "$@" > "$OUT_LOG" 2>&1; } # one process without mpirun (quicker)

for spec in fsdp2_ws4_tied:4:actor fsdp2_ws4_shard1:4:actor fsdp2_ws8_uneven_bf16:8:actor fsdp2_ws2_cudarng:2:actor \
            fsdp2_ws4_lora:4:actor local/fsdp2_hsdp_ws4:4:actor local/fsdp2_ws2_critic:2:critic \
            local/torch26_fsdp2_shard1_ws4:4:actor local/torch26_hsdp2x2_ws4:4:actor; do
    name=${spec%%:*}; rest=${spec#*:}; W=${rest%%:*}; actor=${rest#*:}
    case $name in local/*) name=${name#local/}; src=$FM_ROOT/mpi_tests/fixtures/$name ;; *) src=$FIX/$name ;; esac
    ref=$SCRATCH/ref-$name
    merged "$name" "$src/global_step_1" "$ref" "$actor" || { fail "$name: merging the original: $(tail -1 "$OUT_LOG")"; continue; }
    for N in $(printf '%s\n' 1 2 3 "$W" $((2 * W)) 8 | sort -nu); do
        out=$SCRATCH/rs-$name-$N/global_step_1
        np=$(( N < 3 ? N : 3 )); [ "$np" -gt "$W" ] && [ "$np" -gt "$N" ] && np=$W
        mesh=""
        case $name in *hsdp*) ;; *) false ;; esac && [ $((N % 2)) -ne 0 ] && mesh="--mesh 1,$N"
        run=(mpimerge "$np"); [ "$np" -eq 1 ] && run=(fm1)
        if ! "${run[@]}" reshard "$src/global_step_1" --world-size "$N" --output_path "$out" --actor-dir "$actor" \
                $mesh --progress none; then
            fail "$name -> $N ranks (-np $np): exit $?: $(tail -1 "$OUT_LOG")"; continue
        fi
        n_files=$(ls "$out/$actor" | grep -c "_world_size_${N}_rank_")
        [ "$n_files" -eq $((3 * N)) ] && [ -f "$out/$actor/huggingface/config.json" ] \
            && grep -q "\"world_size\": $N" "$out/$actor/fsdp_config.json" \
            && pass "$name -> $N: $n_files rank files, huggingface/, fsdp_config.json world_size $N" \
            || fail "$name -> $N: files ($n_files rank files)"
        got=$SCRATCH/got-$name-$N
        # extra_state_merged.pt lists every rank's device RNG state: N of them now (checked below);
        # the manifests name different sources: their tensors (CRC-32C, offsets) and files must agree
        if merged "$name" "$out" "$got" "$actor" && diff -r -x extra_state_merged.pt -x fsdpmerge_manifest.json "$ref" "$got" > /dev/null \
            && same_manifest "$ref" "$got"; then
            pass "$name -> $N: merge(reshard) byte-identical to merge(original), optimizer and scheduler included"
        else
            fail "$name -> $N: merge(reshard) differs from merge(original) (rerun: $FM_BIN reshard $src/global_step_1 --world-size $N --output_path /tmp/x $mesh)"
        fi
        no_leftovers "$(dirname "$out")" || fail "$name -> $N: temporary folder left"
        if [ "$N" -eq "$W" ] && [ -z "$mesh" ]; then
            bad=0
            for f in "$src/global_step_1/$actor"/*_world_size_*.pt; do
                $PY "$FM_ROOT/mpi_tests/tools/zip_same.py" "$f" "$out/$actor/$(basename "$f")" > /dev/null || bad=$((bad + 1))
            done
            [ "$bad" -eq 0 ] && pass "$name -> $W (same world size): every rank file reproduced record for record" \
                || fail "$name -> $W: $bad rank files differ from the input"
        fi
        rm -rf "$SCRATCH/rs-$name-$N" "$got"
    done
done

# The pickles parse into FSDP2's layout. Expected values from FSDP2's rules:
# ceil(n/N) rows per rank, padded chunk-0 storages for parameters, exact
# storages for the moments, verl's first-dim-divisible rule.
expect() { # FILE KEY TEXT WHAT
    if "$FM_BIN" inspect "$1" 2>&1 | grep -F "$2: " | grep -qF "$3"; then pass "$4"; else
        fail "$4: $("$FM_BIN" inspect "$1" 2>&1 | grep -F "$2: " | head -1)"; fi
}
o=$SCRATCH/lay
mpimerge 2 reshard "$FIX/fsdp2_ws8_uneven_bf16/global_step_1" --world-size 3 --output_path "$o/u3" --progress none
expect "$o/u3/actor/model_world_size_3_rank_2.pt" model.embed_tokens.weight \
    "placements=(Shard(dim=0),), mesh=[3], coordinate=[2], local=Tensor(dtype=bfloat16, shape=[333, 36], stride=[36, 1], storage=data/0 (24120 bytes)" \
    "uneven bf16 -> 3: rank 2 holds 333 of 1003 rows in a padded 335-row storage"
expect "$o/u3/actor/optim_world_size_3_rank_2.pt" exp_avg \
    "mesh=[3], coordinate=[2], local=Tensor(dtype=bfloat16, shape=[333, 36], stride=[36, 1], storage=data/1 (23976 bytes)" \
    "uneven bf16 -> 3: exp_avg of rank 2 in an exact 333-row storage"
mpimerge 3 reshard "$FIX/fsdp2_ws4_shard1/global_step_1" --world-size 8 --output_path "$o/s8" --progress none
expect "$o/s8/actor/model_world_size_8_rank_5.pt" model.embed_tokens.weight \
    "placements=(Shard(dim=1),), mesh=[8], coordinate=[5], local=Tensor(dtype=float32, shape=[1002, 8], stride=[8, 1]" \
    "verl rule, 8 ranks: [1002, 64] (1002 % 8 != 0) is Shard(1), 8 columns"
mpimerge 3 reshard "$FIX/fsdp2_ws4_shard1/global_step_1" --world-size 3 --output_path "$o/s3" --progress none
expect "$o/s3/actor/model_world_size_3_rank_1.pt" model.embed_tokens.weight \
    "placements=(Shard(dim=0),), mesh=[3], coordinate=[1], local=Tensor(dtype=float32, shape=[334, 64]" \
    "verl rule, 3 ranks: [1002, 64] (1002 % 3 == 0) is Shard(0)"
mpimerge 3 reshard "$FIX/fsdp2_ws4_shard1/global_step_1" --world-size 8 --placement dim0 --output_path "$o/d8" --progress none
expect "$o/d8/actor/model_world_size_8_rank_7.pt" model.embed_tokens.weight \
    "placements=(Shard(dim=0),), mesh=[8], coordinate=[7], local=Tensor(dtype=float32, shape=[120, 64], stride=[64, 1], storage=data/0 (32256 bytes)" \
    "--placement dim0, 8 ranks: rank 7 holds 120 rows of a 126-row padded storage"
mpimerge 2 reshard "$FM_ROOT/mpi_tests/fixtures/fsdp2_hsdp_ws4/global_step_1" --world-size 8 --output_path "$o/h8" --progress none
expect "$o/h8/actor/model_world_size_8_rank_6.pt" model.embed_tokens.weight \
    "placements=(Replicate(),Shard(dim=0),), mesh=[2, 4], coordinate=[1, 2], local=Tensor(dtype=float32, shape=[128, 64]" \
    "HSDP -> 8: mesh [2, 4] (replicas kept), rank 6 at (1, 2)"
mpimerge 2 reshard "$FM_ROOT/mpi_tests/fixtures/fsdp2_hsdp_ws4/global_step_1" --world-size 8 --mesh 4,2 --output_path "$o/h42" --progress none
expect "$o/h42/actor/model_world_size_8_rank_5.pt" model.embed_tokens.weight \
    "placements=(Replicate(),Shard(dim=0),), mesh=[4, 2], coordinate=[2, 1], local=Tensor(dtype=float32, shape=[256, 64]" \
    "--mesh 4,2: rank 5 at (2, 1)"
mpimerge 2 reshard "$FM_ROOT/mpi_tests/fixtures/torch26_fsdp2_shard1_ws4/global_step_1" --world-size 3 --output_path "$o/v3" --progress none
expect "$o/v3/actor/model_world_size_3_rank_2.pt" model.embed_tokens.weight \
    "placements=(Shard(dim=1),), mesh=[3], coordinate=[2], local=Tensor(dtype=float32, shape=[1003, 12], stride=[12, 1], storage=data/0 (48144 bytes)" \
    "torch 2.6 pickles, verl rule, 3 ranks: [1003, 36] is Shard(1), 12 columns"
mpimerge 2 reshard "$FIX/fsdp2_ws4_tied/global_step_1" --world-size 3 --output_path "$o/t3" --progress none
"$FM_BIN" inspect "$o/t3/actor/model_world_size_3_rank_0.pt" > "$SCRATCH/t3.txt" 2>&1
[ "$(grep -E '^(model.embed_tokens|lm_head).weight:' "$SCRATCH/t3.txt" | grep -c 'storage=data/0 ')" -eq 2 ] \
    && pass "tied -> 3: lm_head and embed_tokens share storage data/0" || fail "tied -> 3: storage sharing lost"
[ -f "$o/t3/global_step_1/data.pt" ] || [ -f "$o/t3/data.pt" ] && pass "the step folder's data.pt is copied" || fail "data.pt not copied"
# same_extra OLD NEW WHAT : NEW holds OLD's records (archive renamed)
same_extra() {
    $PY - "$1" "$2" <<'PYEOF' && pass "$3" || fail "$3"
import os, sys, zipfile
a, b = zipfile.ZipFile(sys.argv[1]), zipfile.ZipFile(sys.argv[2])
ra = {n.split('/', 1)[1]: a.read(n) for n in a.namelist() if 'serialization_id' not in n}
rb = {n.split('/', 1)[1]: b.read(n) for n in b.namelist() if 'serialization_id' not in n}
prefix = os.path.basename(sys.argv[2])[:-3] + '/'
sys.exit(0 if ra == rb and all(n.startswith(prefix) for n in b.namelist()) else 1)
PYEOF
}
same_extra "$FIX/fsdp2_ws4_tied/global_step_1/actor/extra_state_world_size_4_rank_2.pt" \
    "$o/t3/actor/extra_state_world_size_3_rank_2.pt" "extra_state of new rank 2 = old rank 2's (RNG states, scheduler)"
mpimerge 2 reshard "$FIX/fsdp2_ws2_cudarng/global_step_1" --world-size 3 --output_path "$o/c3" --progress none
same_extra "$FIX/fsdp2_ws2_cudarng/global_step_1/actor/extra_state_world_size_2_rank_0.pt" \
    "$o/c3/actor/extra_state_world_size_3_rank_2.pt" "cuda RNG, 2 -> 3: new rank 2 takes old rank 0's states (2 mod 2)"
# a step folder as OUT gets verl's tracker file next to it
mpimerge 2 reshard "$FIX/fsdp2_ws4_tied/global_step_1" --world-size 2 --output_path "$o/root/global_step_1" --progress none \
    && cmp -s "$o/root/latest_checkpointed_iteration.txt" "$FIX/fsdp2_ws4_tied/latest_checkpointed_iteration.txt" \
    && [ -f "$o/root/global_step_1/data.pt" ] \
    && pass "OUT named global_step_1: latest_checkpointed_iteration.txt next to it, data.pt inside" || fail "step folder layout"

# refusals: one clear message, the right exit code, no output
refuse() { # CODE TEXT WHAT ARGS...
    local code=$1 text=$2 what=$3; shift 3
    rm -rf "$SCRATCH/ref-out"
    mpimerge 2 reshard "$@" --output_path "$SCRATCH/ref-out" --progress none
    local rc=$?
    if [ "$rc" -eq "$code" ] && grep -qF -- "$text" "$OUT_LOG" && [ ! -e "$SCRATCH/ref-out" ] && no_leftovers "$SCRATCH"; then
        pass "$what: exit $code, '$text'"
    else
        fail "$what: exit $rc: $(grep error "$OUT_LOG" | head -1)"
    fi
}
refuse 5 "FSDP1 optimizer files hold flat per-rank shards" "FSDP1 --optimizer" "$FIX/fsdp1_ws4_mesh/global_step_1" --world-size 2 --optimizer
refuse 5 "ShardedTensor (FSDP1 without a device mesh) cannot be resharded" "ShardedTensor" "$FIX/fsdp1_ws2_nomesh/global_step_1" --world-size 4
refuse 2 "--mesh 3,3 does not have --world-size 8 ranks" "bad --mesh" "$FM_ROOT/mpi_tests/fixtures/fsdp2_hsdp_ws4/global_step_1" --world-size 8 --mesh 3,3
refuse 2 "do not divide 3 ranks" "HSDP replicas vs N" "$FM_ROOT/mpi_tests/fixtures/fsdp2_hsdp_ws4/global_step_1" --world-size 3
refuse 2 "--mesh: the input's mesh is 1-D" "--mesh on a 1-D input" "$FIX/fsdp2_ws4_tied/global_step_1" --world-size 4 --mesh 2,2
mpimerge 1 reshard "$FIX/fsdp2_ws4_tied/global_step_1" --output_path "$SCRATCH/x" --progress none
[ $? -eq 2 ] && grep -qF "reshard needs --world-size N" "$OUT_LOG" && pass "reshard without --world-size: usage error" || fail "reshard without --world-size"

# FSDP1 with a device mesh: the model alone is resharded (exact chunks) and merges the same
mpimerge 2 reshard "$FIX/fsdp1_ws4_mesh/global_step_1" --world-size 3 --output_path "$o/f1" --progress none \
    && [ ! -e "$o/f1/actor/optim_world_size_3_rank_0.pt" ] && grep -q "FSDP1 optimizer files" "$OUT_LOG" \
    && mpimerge 2 "$o/f1" --output "$SCRATCH/f1m" --progress none && mpimerge 2 "$FIX/fsdp1_ws4_mesh/global_step_1" --output "$SCRATCH/f1r" --progress none \
    && diff -r -x fsdpmerge_manifest.json "$SCRATCH/f1m" "$SCRATCH/f1r" > /dev/null && same_manifest "$SCRATCH/f1m" "$SCRATCH/f1r" \
    && pass "FSDP1 (mesh) -> 3: model resharded, optimizer left out with a note, merges byte-identical" || fail "FSDP1 -> 3"
