#!/usr/bin/env bash
# Synthesized checkpoints (bin/fsdpsynth writes FSDP2 pickles like torch
# 2.11 and, independently, the expected merge): shapes and world sizes the
# fixtures do not cover, sharded output with an index, a critic, and every
# fault kind, each rejected with its exit code and no output left.
source "$(dirname "$0")/../lib.sh"

synth() { # dir args...
    local d=$1
    shift
    rm -rf "$d"
    mpirun -np 2 "$FM_SYNTH" --out "$d" -q "$@" > "$OUT_LOG" 2>&1 || { fail "fsdpsynth $* (exit $?)"; tail -3 "$OUT_LOG"; return 1; }
}

merge_check() { # what np ckpt expected-dir dtype-dir args...
    local what=$1 np=$2 ck=$3 exp=$4 dd=$5
    shift 5
    local out=$SCRATCH/out
    rm -rf "$out"
    if ! mpimerge "$np" "$ck" --output "$out" --progress none "$@"; then
        fail "$what: exit $? (mpirun -np $np $FM_BIN $ck $*)"; tail -3 "$OUT_LOG"; return
    fi
    local bad=0 f
    for f in "$exp/$dd"/*.safetensors "$exp/$dd"/*.index.json; do
        [ -e "$f" ] || continue
        cmp -s "$f" "$out/$(basename "$f")" || { bad=1; echo "    $(basename "$f") differs"; }
    done
    [ $bad = 0 ] && pass "$what: identical to the expected output" || fail "$what (mpirun -np $np $FM_BIN $ck $*)"
}

S=$SCRATCH/s

# world sizes and process counts the fixtures do not cover; Shard(1) via verl's rule
synth "$S" --world-size 6 --vocab 1000 --hidden 96 --intermediate 250 --layers 2 --heads 6 --kv-heads 2 --placement verl --expected "$S/ref" && {
    merge_check "W=6 verl placement, -np 6, gather" 6 "$S/global_step_1" "$S/ref" bf16 --mode gather
    merge_check "W=6 verl placement, -np 4, direct, small buffers" 4 "$S/global_step_1" "$S/ref" bf16 --mode direct --buffer-size 64KiB
    merge_check "W=6 verl placement, -np 5, fp32" 5 "$S/global_step_1" "$S/ref" fp32 --dtype float32
}

synth "$S" --world-size 16 --vocab 333 --hidden 48 --intermediate 100 --layers 1 --heads 4 --kv-heads 1 --untied --expected "$S/ref" && {
    merge_check "W=16 (many empty shards), -np 8" 8 "$S/global_step_1" "$S/ref" bf16
    merge_check "W=16, -np 3, direct" 3 "$S/global_step_1" "$S/ref" bf16 --mode direct
}

synth "$S" --world-size 4 --dtype bfloat16 --vocab 2048 --hidden 128 --intermediate 352 --layers 3 --heads 4 --kv-heads 2 \
    --expected "$S/ref" --expected-max-shard-size 300KB && {
    merge_check "bf16 parameters, output split at 300KB (+ index), gather" 4 "$S/global_step_1" "$S/ref" bf16 --max-shard-size 300KB --mode gather
    merge_check "bf16 parameters, output split at 300KB, direct" 2 "$S/global_step_1" "$S/ref" bf16 --max-shard-size 300KB --mode direct
    merge_check "bf16 -> fp32 split at 300KB" 3 "$S/global_step_1" "$S/ref" fp32 --max-shard-size 300KB --dtype float32
}

synth "$S" --world-size 4 --critic --expected "$S/ref" && {
    merge_check "critic (value model), --actor-dir critic" 4 "$S/global_step_1" "$S/ref" bf16 --actor-dir critic
    grep -q '"Qwen2ForTokenClassification"' "$SCRATCH/out/config.json" && pass "critic: architectures kept" || fail "critic: architectures"
}

# fault injection: one rank's file is wrong, and the merge must say so
fault() { # kind code regex
    synth "$S" --world-size 4 --fault "$1" || return
    local out=$SCRATCH/fault-out
    rm -rf "$out"
    timeout 120 mpirun -np 4 "$FM_BIN" "$S/global_step_1" --output "$out" > "$OUT_LOG" 2>&1
    local rc=$?
    [ $rc -eq "$2" ] && grep -Eq -- "$3" "$OUT_LOG" && [ ! -e "$out" ] && no_leftovers "$SCRATCH" \
        && pass "fault $1: exit $2, message, no output" \
        || { fail "fault $1: exit $rc (expected $2 and /$3/)"; tail -2 "$OUT_LOG"; }
}
fault shape:2 6 "global shape .* on rank 2"
fault dtype:1 6 "dtype float32 on rank 0 but bfloat16 on rank 1"
fault missing-key:3 6 "rank 3 .* has no key"
fault extra-key:1 6 "rank 1 .* has key .* which rank 0 does not have"
fault view-range:2 4 "rank 2: .*reaches past the end of storage"
fault placement:1 6 "placements \(Shard\(dim=0\),\) on rank 0 but \(Shard\(dim=1\),\) on rank 1"
