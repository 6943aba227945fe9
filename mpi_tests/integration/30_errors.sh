#!/usr/bin/env bash
# Bad input: every case must give a non-zero exit with the documented code,
# one error message naming the file/rank and what is wrong (printed once,
# by rank 0), end every rank promptly (no hang: each run has a time limit),
# and leave no output folder and no temporary folder behind.
source "$(dirname "$0")/../lib.sh"

SRC=$FIX/fsdp2_ws4_tied/global_step_1
ZE="python3 $FM_ROOT/mpi_tests/tools/zipedit.py"

# fresh writable copy of a fixture step folder
copy_ckpt() {
    rm -rf "$SCRATCH/ck"
    cp -r "${1:-$SRC}" "$SCRATCH/ck"
    chmod -R u+w "$SCRATCH/ck"
}

# expect NAME CODE REGEX NP ARGS... : runs, checks code, message, no output.
expect() {
    local name=$1 code=$2 regex=$3 np=$4
    shift 4
    local out=$SCRATCH/out
    rm -rf "$out"
    timeout 120 mpirun -np "$np" "$FM_BIN" "$@" --output "$out" > "$OUT_LOG" 2>&1
    local rc=$?
    local cmd="mpirun -np $np $FM_BIN $* --output $out"
    if [ $rc -eq 124 ]; then fail "$name: timed out (hang?) ($cmd)"; return; fi
    [ $rc -eq "$code" ] && pass "$name: exit code $code" || { fail "$name: exit $rc, expected $code ($cmd)"; tail -3 "$OUT_LOG"; }
    grep -Eq -- "$regex" "$OUT_LOG" && pass "$name: message matches '$regex'" || { fail "$name: message ($cmd)"; tail -3 "$OUT_LOG"; }
    [ "$(grep -c 'fsdpmerge: error' "$OUT_LOG")" -eq 1 ] && pass "$name: one error message" || fail "$name: error printed $(grep -c 'fsdpmerge: error' "$OUT_LOG") times"
    [ ! -e "$out" ] && no_leftovers "$SCRATCH" && pass "$name: no output folder left" || fail "$name: output or temporary folder left behind"
    # check: the same exit code and error message, nothing written
    local merge_msg
    merge_msg=$(grep 'fsdpmerge: error' "$OUT_LOG")
    timeout 120 mpirun -np "$np" "$FM_BIN" check "$@" --output "$out" > "$OUT_LOG" 2>&1
    local crc=$?
    [ $crc -eq $rc ] && [ "$(grep 'fsdpmerge: error' "$OUT_LOG")" = "$merge_msg" ] && [ ! -e "$out" ] && no_leftovers "$SCRATCH" \
        && pass "$name: check gives the merge's exit code and message, writes nothing" \
        || { fail "$name: check exit $crc (merge $rc) or message differs ($FM_BIN check $* --output $out)"; tail -3 "$OUT_LOG"; }
}

copy_ckpt; rm "$SCRATCH/ck/actor/model_world_size_4_rank_2.pt"
expect "missing rank file" 3 "missing checkpoint for rank 2: .*model_world_size_4_rank_2.pt does not exist" 4 "$SCRATCH/ck"

copy_ckpt; echo '{"FSDP_version": 2, "world_size": 8}' > "$SCRATCH/ck/actor/fsdp_config.json"
expect "world size mismatch" 6 "world size mismatch: .*fsdp_config.json says 8 but the files are model_world_size_4_rank_" 4 "$SCRATCH/ck"

copy_ckpt; cp "$SCRATCH/ck/actor/model_world_size_4_rank_0.pt" "$SCRATCH/ck/actor/model_world_size_4_rank_4.pt"
expect "extra rank file" 6 "extra checkpoint file model_world_size_4_rank_4.pt" 4 "$SCRATCH/ck"

copy_ckpt; cp "$SCRATCH/ck/actor/model_world_size_4_rank_0.pt" "$SCRATCH/ck/actor/model_world_size_2_rank_0.pt"
expect "two world sizes" 6 "rank files of two world sizes" 4 "$SCRATCH/ck"

expect "world size too small for -np" 2 "8 processes for a checkpoint of world size 4" 8 "$SRC"
expect "writer rank out of range" 2 "--writer-rank 5 but only 4 processes" 4 "$SRC" --writer-rank 5
expect "checkpoint missing" 3 "checkpoint folder .*/nope does not exist" 2 "$SCRATCH/nope"

copy_ckpt; f=$SCRATCH/ck/actor/model_world_size_4_rank_1.pt; truncate -s $(( $(stat -c %s "$f") / 2 )) "$f"
expect "truncated file" 4 "rank 1: .*model_world_size_4_rank_1.pt: .*(truncated|not a torch.save zip)" 4 "$SCRATCH/ck"

copy_ckpt; f=$SCRATCH/ck/actor/model_world_size_4_rank_3.pt; off=$($ZE offset "$f" data.pkl)
printf '\x7f' | dd of="$f" bs=1 seek="$off" conv=notrunc status=none
expect "corrupt data.pkl (CRC)" 4 "rank 3: .*model_world_size_4_rank_3.pt: .*CRC-32 mismatch in .*data.pkl" 4 "$SCRATCH/ck"
expect "corrupt data.pkl (--no-crc: the pickle)" 4 "rank 3: .*model_world_size_4_rank_3.pt: data.pkl: .*(unknown opcode|opcode 0x7f)" 4 "$SCRATCH/ck" --no-crc

copy_ckpt; f=$SCRATCH/ck/actor/model_world_size_4_rank_0.pt; off=$($ZE offset "$f" data/2)
printf '\xff\xff' | dd of="$f" bs=1 seek=$(( off + 100 )) conv=notrunc status=none
expect "corrupt tensor bytes (CRC)" 4 "rank 0: .*model_world_size_4_rank_0.pt: .*CRC-32 mismatch in .*data/2" 4 "$SCRATCH/ck"

# the first storage view of rank 1 starts at element 127 of a 128x64 storage
copy_ckpt; f=$SCRATCH/ck/actor/model_world_size_4_rank_1.pt
$ZE patch-pkl "$f" 514b004b804b40 514b7f4b804b40 1
expect "storage view out of range" 4 "rank 1: .*key 'model.embed_tokens.weight': view .*reaches past the end of storage data/0" 4 "$SCRATCH/ck"

# rank 1 of an FSDP1 ShardedTensor checkpoint claims a vocab of 530 instead of 520
copy_ckpt "$FIX/fsdp1_ws2_nomesh/global_step_1"; f=$SCRATCH/ck/actor/model_world_size_2_rank_1.pt
$ZE patch-pkl "$f" 4d08024b40 4d12024b40
expect "inconsistent shapes across ranks" 6 "key 'model.embed_tokens.weight': global shape \[520, 64\] on rank 0 but \[530, 64\] on rank 1" 2 "$SCRATCH/ck"

rm -rf "$SCRATCH/legacy"; mkdir -p "$SCRATCH/legacy"; cp "$FIX/legacy_format/model_world_size_1_rank_0.pt" "$SCRATCH/legacy/"
expect "legacy format" 5 "model_world_size_1_rank_0.pt.*legacy \(pre-1.6\) torch.save format" 1 "$SCRATCH/legacy"

# existing output: refused, and left untouched
out=$SCRATCH/exists; rm -rf "$out"; mkdir -p "$out"; echo keep > "$out/marker"
timeout 120 mpirun -np 2 "$FM_BIN" "$SRC" --output "$out" > "$OUT_LOG" 2>&1; rc=$?
[ $rc -eq 7 ] && pass "existing output: exit code 7" || fail "existing output: exit $rc"
grep -q "output .*exists (use --force to replace it)" "$OUT_LOG" && pass "existing output: message" || fail "existing output: message"
[ "$(cat "$out/marker")" = keep ] && no_leftovers "$SCRATCH" && pass "existing output: left untouched" || fail "existing output: modified"
timeout 120 mpirun -np 2 "$FM_BIN" "$SRC" --output "$out" --force --progress none > "$OUT_LOG" 2>&1; rc=$?
[ $rc -eq 0 ] && [ ! -e "$out/marker" ] && [ -f "$out/model.safetensors" ] && no_leftovers "$SCRATCH" \
    && pass "existing output: --force replaces it" || fail "existing output: --force (exit $rc)"

# unwritable output location (a regular file where a folder is needed; root ignores permissions)
touch "$SCRATCH/afile"
timeout 120 mpirun -np 2 "$FM_BIN" "$SRC" --output "$SCRATCH/afile/out" > "$OUT_LOG" 2>&1; rc=$?
[ $rc -eq 3 ] && grep -q "cannot create directory .*afile" "$OUT_LOG" && pass "unwritable output location: exit 3 and message" \
    || fail "unwritable output location: exit $rc"

# usage errors
"$FM_BIN" "$SRC" --dtype float64 > "$OUT_LOG" 2>&1; rc=$?
[ $rc -eq 2 ] && grep -q -- "--dtype must be bfloat16, float16, float32 or auto" "$OUT_LOG" && pass "bad --dtype: usage error" || fail "bad --dtype: exit $rc"
"$FM_BIN" "$SRC" --bogus > "$OUT_LOG" 2>&1; rc=$?
[ $rc -eq 2 ] && grep -q "unknown option '--bogus'" "$OUT_LOG" && pass "unknown option: usage error" || fail "unknown option: exit $rc"
"$FM_BIN" "$SRC" --output "$SCRATCH/x" --dtype nope > "$OUT_LOG" 2>&1; rc=$?
[ $rc -eq 2 ] && grep -q -- "--dtype must be" "$OUT_LOG" && pass "usage error after --output: exit 2 (no crash)" || fail "usage error after --output: exit $rc"
"$FM_BIN" > "$OUT_LOG" 2>&1; rc=$?
[ $rc -eq 2 ] && grep -q "no checkpoint given" "$OUT_LOG" && pass "no arguments: usage error" || fail "no arguments: exit $rc"
