#!/usr/bin/env bash
# check, verify, the manifest and merge --verify.
#  - check on every fixture: exit 0, nothing written, and every size it
#    prints equals the size of that file after the real merge;
#  - verify passes on every fixture's merge (against the checkpoint, the
#    manifest and the reference folder), and fails with exit 11 naming the
#    tensor and element after a flipped byte, a swapped pair of tensors, a
#    truncated shard of a sharded output, an edited config.json dtype, a changed
#    extra_state_merged.pt, lr_scheduler_state.json or model.h5, and
#    against another model's reference;
#  - merge --verify catches a byte flipped between the write and the rename
#    (a test-only hook of the sanitizer build) and leaves no output.
# (check on bad input: 30_errors.sh runs check on every case.)
source "$(dirname "$0")/../lib.sh"

SE="python3 $FM_ROOT/mpi_tests/tools/stedit.py"
FIXTURES="fsdp2_ws4_tied:4 fsdp1_ws4_mesh:4 fsdp1_ws2_nomesh:2 fsdp2_ws8_uneven_bf16:8 fsdp2_ws4_shard1:4 \
fsdp2_ws2_cudarng:2 plain_ws2_replicated:2 plain_ws2_dim0halves:2"

# sizes_match LOG OUT: every "    NAME   SIZE bytes" line of check's output is NAME's size in OUT
sizes_match() {
    local n=0 bad=0 name size
    while read -r name size; do
        n=$((n + 1))
        [ "$(stat -c %s "$2/$name" 2>/dev/null)" = "$size" ] || { bad=1; echo "    $name: check said $size, merge wrote $(stat -c %s "$2/$name" 2>&1)"; }
    done < <(grep -E '^    [^ ]+ +[0-9]+ bytes$' "$1" | awk '{print $1, $2}')
    [ $n -gt 0 ] && [ $bad = 0 ]
}

for spec in $FIXTURES; do
    name=${spec%%:*}
    W=${spec##*:}
    ck=$FIX/$name/global_step_1
    np=$(( W > 2 ? W / 2 : W ))
    extra=()
    [ "$name" = fsdp2_ws4_tied ] && extra=(--optimizer --max-shard-size 100KB)
    [ "$name" = fsdp2_ws4_shard1 ] && extra=(--max-shard-size 100KB)
    out=$SCRATCH/$name
    what="$name -np $np ${extra[*]}"
    timeout 300 mpirun -np "$np" "$FM_BIN" check "$ck" --output_path "$out" "${extra[@]}" > "$SCRATCH/check.log" 2>&1; rc=$?
    [ $rc -eq 0 ] && [ ! -e "$out" ] && no_leftovers "$SCRATCH" && grep -q "Check passed" "$SCRATCH/check.log" \
        && grep -qE 'checked its CRC-32: .* GB/s' "$SCRATCH/check.log" \
        && pass "$what: check exits 0, reports GB/s, writes nothing" || { fail "$what: check exit $rc"; tail -3 "$SCRATCH/check.log"; }
    if ! mpimerge "$np" "$ck" --output "$out" --progress none "${extra[@]}"; then fail "$what: merge failed"; continue; fi
    sizes_match "$SCRATCH/check.log" "$out" && pass "$what: every size check printed is the merged file's size" \
        || fail "$what: check's sizes differ from the merge's files"
    mpimerge "$np" verify "$out" --checkpoint_path "$ck" "${extra[@]}" \
        && grep -q "0 mismatches" "$OUT_LOG" && pass "$what: verify against the checkpoint passes" \
        || { fail "$what: verify --checkpoint_path (exit $?)"; tail -5 "$OUT_LOG"; }
    mpimerge 2 verify "$out" && pass "$what: verify against the manifest passes" || { fail "$what: verify OUT"; tail -3 "$OUT_LOG"; }
    ref=$FIX/$name/reference/bf16
    if [ -d "$ref" ]; then
        mpimerge 2 verify "$out" --reference "$ref" && pass "$what: verify --reference reference/bf16 passes (bytes)" \
            || { fail "$what: verify --reference"; tail -3 "$OUT_LOG"; }
    fi
    [ "$name" = fsdp2_ws4_shard1 ] || [ "$name" = fsdp2_ws4_tied ] || rm -rf "$out"
done

# ---- failures, on a sharded output (4 files) ----
ck=$FIX/fsdp2_ws4_shard1/global_step_1
good=$SCRATCH/fsdp2_ws4_shard1
f2=model-00002-of-00004.safetensors
# expect_diff NAME REGEX NP ARGS... : verify exits 11 and prints REGEX
expect_diff() {
    local what=$1 regex=$2 np=$3
    shift 3
    timeout 120 mpirun -np "$np" "$FM_BIN" verify "$@" > "$OUT_LOG" 2>&1; local rc=$?
    [ $rc -eq 11 ] && grep -Eq -- "$regex" "$OUT_LOG" && pass "verify: $what: exit 11, '$regex'" \
        || { fail "verify: $what: exit $rc, expected 11 and '$regex' (verify $*)"; tail -4 "$OUT_LOG"; }
}
fresh() { rm -rf "$SCRATCH/bad"; cp -r "$good" "$SCRATCH/bad"; }

fresh; $SE flip "$SCRATCH/bad/$f2" model.layers.0.mlp.up_proj.weight 1000
expect_diff "flipped byte (checkpoint)" "MISMATCH model.layers.0.mlp.up_proj.weight: first difference at element 1000 \[15, 40\]" 3 \
    "$SCRATCH/bad" --checkpoint_path "$ck" --max-shard-size 100KB
expect_diff "flipped byte (manifest)" "MISMATCH model.layers.0.mlp.up_proj.weight \($f2\): CRC-32C" 2 "$SCRATCH/bad"
expect_diff "flipped byte (reference)" "MISMATCH model.layers.0.mlp.up_proj.weight: first difference at element 1000 \[15, 40\]" 2 \
    "$SCRATCH/bad" --reference "$FIX/fsdp2_ws4_shard1/reference/bf16"

fresh; $SE swap "$SCRATCH/bad/$f2" model.layers.0.self_attn.q_proj.weight model.layers.0.self_attn.o_proj.weight
expect_diff "swapped tensors (checkpoint)" "MISMATCH model.layers.0.self_attn.o_proj.weight: first difference at element 0 \[0, 0\]" 4 \
    "$SCRATCH/bad" --checkpoint_path "$ck" --max-shard-size 100KB
grep -q "MISMATCH model.layers.0.self_attn.q_proj.weight: first difference" "$OUT_LOG" \
    && pass "verify: swapped tensors: both named" || fail "verify: swapped tensors: q_proj not named"
expect_diff "swapped tensors (manifest)" "MISMATCH model.layers.0.self_attn.q_proj.weight" 1 "$SCRATCH/bad"

fresh; truncate -s 5000 "$SCRATCH/bad/$f2"
expect_diff "truncated shard (checkpoint)" "$f2: .*(truncated|header describes)" 2 "$SCRATCH/bad" --checkpoint_path "$ck" --max-shard-size 100KB
expect_diff "truncated shard (manifest)" "$f2" 2 "$SCRATCH/bad"

fresh; sed -i 's/"dtype": "bfloat16"/"dtype": "float32"/' "$SCRATCH/bad/config.json"
# (no --max-shard-size: verify takes the merge's from the manifest)
expect_diff "edited config.json dtype" "MISMATCH config.json: line [0-9]+ is '  \"dtype\": \"float32\",' in the output, a merge writes '  \"dtype\": \"bfloat16\",'" \
    2 "$SCRATCH/bad" --checkpoint_path "$ck"
grep -q "MISMATCH.*merge puts it in" "$OUT_LOG" && fail "verify: --max-shard-size not taken from the manifest" \
    || pass "verify: --dtype and --max-shard-size default to the manifest's"

# the training state: extra_state_merged.pt (bytes) and lr_scheduler_state.json (lines), merged again and compared
fresh; python3 -c "import sys; p=sys.argv[1]; b=bytearray(open(p,'rb').read()); b[-300]^=1; open(p,'wb').write(b)" \
    "$SCRATCH/bad/extra_state_merged.pt"
expect_diff "flipped byte in extra_state_merged.pt" "MISMATCH extra_state_merged.pt: [0-9]+ bytes in the output, a merge writes [0-9]+; first difference at byte [0-9]+" \
    2 "$SCRATCH/bad" --checkpoint_path "$ck"
fresh; sed -i 's/"last_epoch": \([0-9]*\)/"last_epoch": 99\1/' "$SCRATCH/bad/lr_scheduler_state.json"
expect_diff "edited lr_scheduler_state.json" "MISMATCH lr_scheduler_state.json: line [0-9]+ is '  \"last_epoch\": 99" 2 "$SCRATCH/bad" --checkpoint_path "$ck"
ls /tmp | grep -q fsdpmerge-verify- && fail "verify left a scratch folder in /tmp" || pass "verify leaves no scratch folder"

# model.h5 (--format both and hdf5): every dataset's bytes against the re-derived tensors
h5o=$SCRATCH/h5both
mpirun -np 2 "$FM_BIN" "$ck" --output "$h5o" --format both -q > "$OUT_LOG" 2>&1
timeout 120 mpirun -np 3 "$FM_BIN" verify "$h5o" --checkpoint_path "$ck" > "$OUT_LOG" 2>&1 && grep -q "model.h5 compared too" "$OUT_LOG" \
    && pass "verify: --format both output: model.safetensors and model.h5 both compared, no mismatch" \
    || { fail "verify of a --format both output"; tail -3 "$OUT_LOG"; }
h5o=$SCRATCH/h5only
mpirun -np 2 "$FM_BIN" "$ck" --output "$h5o" --format hdf5 -q > "$OUT_LOG" 2>&1
/usr/bin/python3 -c "import h5py, sys
f = h5py.File(sys.argv[1] + '/model.h5', 'r'); off = f['model.layers.0.mlp.up_proj.weight'].id.get_offset(); f.close()
b = bytearray(open(sys.argv[1] + '/model.h5', 'rb').read()); b[off + 2 * 1000 + 1] ^= 0x40; open(sys.argv[1] + '/model.h5', 'wb').write(b)" "$h5o"
expect_diff "flipped byte in model.h5 (--format hdf5)" "MISMATCH model.layers.0.mlp.up_proj.weight: first difference at element 1000 \[15, 40\]" \
    3 "$h5o" --checkpoint_path "$ck"

# the optimizer state (verify --optimizer), on the tied fixture's sharded merge
tied=$SCRATCH/fsdp2_ws4_tied
# (earlier in this script verify --optimizer passed on this output: optimizer_state.json included)
sed -i '0,/"step": 1/s//"step": 7/' "$tied/optimizer/optimizer_state.json"
expect_diff "edited optimizer_state.json" "MISMATCH optimizer/optimizer_state.json: line [0-9]+ is .*\"step\": 7" 2 \
    "$tied" --checkpoint_path "$FIX/fsdp2_ws4_tied/global_step_1" --optimizer --max-shard-size 100KB
sed -i '0,/"step": 7/s//"step": 1/' "$tied/optimizer/optimizer_state.json"
$SE flip "$tied/optimizer/optimizer.safetensors" model.norm.weight.exp_avg 5
expect_diff "flipped byte in optimizer/" "MISMATCH model.norm.weight.exp_avg: first difference at element 5 \[5\]" 2 \
    "$tied" --checkpoint_path "$FIX/fsdp2_ws4_tied/global_step_1" --optimizer --max-shard-size 100KB

expect_diff "another model's reference" "MISMATCH" 2 "$good" --reference "$FIX/fsdp1_ws2_nomesh/reference/bf16"
expect_diff "wrong --dtype" "a merge writes F32" 2 "$good" --checkpoint_path "$ck" --max-shard-size 100KB --dtype float32

# across dtypes: bf16 output against the fp32 reference needs a tolerance
expect_diff "bf16 against fp32 without tolerance" "give --atol/--rtol" 2 "$good" --reference "$FIX/fsdp2_ws4_shard1/reference/fp32"
mpimerge 2 verify "$good" --reference "$FIX/fsdp2_ws4_shard1/reference/fp32" --atol 1e-6 --rtol 0.008 \
    && pass "verify: bf16 output against the fp32 reference within --rtol 0.008" || { fail "verify: bf16 vs fp32 with tolerance"; tail -3 "$OUT_LOG"; }
expect_diff "bf16 against fp32, tolerance too small" "first difference at element" 2 "$good" \
    --reference "$FIX/fsdp2_ws4_shard1/reference/fp32" --rtol 1e-5

# ---- merge --verify ----
out=$SCRATCH/v
mpimerge 2 "$ck" --output "$out" --verify --progress none && grep -q "Verified: read .* back from disk" "$OUT_LOG" \
    && pass "merge --verify: passes and says so" || { fail "merge --verify"; tail -3 "$OUT_LOG"; }
rm -rf "$out"
ASAN_BIN=$FM_ROOT/build-asan/bin/fsdpmerge
if [ -x "$ASAN_BIN" ]; then
    off=$(( $($SE offset "$ck/../reference/bf16/model.safetensors" model.layers.1.mlp.up_proj.weight) + 3 ))
    export ASAN_OPTIONS=detect_leaks=1:fast_unwind_on_malloc=0:intercept_tls_get_addr=0:abort_on_error=0
    export LSAN_OPTIONS=suppressions=$FM_ROOT/mpi_tests/lsan.supp:print_suppressions=0
    FSDPMERGE_TEST_CORRUPT=$off timeout 300 mpirun -np 2 -x FSDPMERGE_TEST_CORRUPT -x ASAN_OPTIONS -x LSAN_OPTIONS "$ASAN_BIN" "$ck" --output "$out" --verify \
        --progress none > "$OUT_LOG" 2>&1; rc=$?
    [ $rc -eq 11 ] && grep -q "\-\-verify: tensor 'model.layers.1.mlp.up_proj.weight' in model.safetensors read back from disk has CRC-32C" "$OUT_LOG" \
        && [ ! -e "$out" ] && no_leftovers "$SCRATCH" \
        && pass "merge --verify: a byte flipped before the rename fails the merge (exit 11), names the tensor, no output left" \
        || { fail "merge --verify with a corrupted byte: exit $rc"; tail -4 "$OUT_LOG"; }
else
    fail "merge --verify corruption test: $ASAN_BIN not built (make asan-bin)"
fi

# --no-manifest
mpimerge 1 "$ck" --output "$SCRATCH/nm" --no-manifest --progress none && [ ! -e "$SCRATCH/nm/fsdpmerge_manifest.json" ] \
    && [ -f "$SCRATCH/nm/model.safetensors" ] && pass "--no-manifest: no manifest" || fail "--no-manifest"
mpimerge 1 verify "$SCRATCH/nm"; rc=$?
[ $rc -eq 3 ] && grep -q "needs the manifest" "$OUT_LOG" && pass "verify OUT without a manifest: exit 3, says why" \
    || { fail "verify without manifest: exit $rc"; tail -2 "$OUT_LOG"; }
