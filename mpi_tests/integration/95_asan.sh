#!/usr/bin/env bash
# The whole program under AddressSanitizer + UndefinedBehaviorSanitizer with
# leak checking (build-asan/bin/fsdpmerge, Open MPI's own allocations
# suppressed: mpi_tests/lsan.supp): every engine and format on real fixtures,
# and error paths (a failing rank must leak nothing either). A sanitizer
# report anywhere fails the check.
source "$(dirname "$0")/../lib.sh"
ABIN=$FM_ROOT/build-asan/bin/fsdpmerge
[ -x "$ABIN" ] || { fail "build-asan/bin/fsdpmerge missing (make asan-bin)"; exit 0; }
export ASAN_OPTIONS=detect_leaks=1:fast_unwind_on_malloc=0:intercept_tls_get_addr=0:abort_on_error=0
export LSAN_OPTIONS=suppressions=$FM_ROOT/mpi_tests/lsan.supp:print_suppressions=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

run() { # what expected-exit np args...
    local what=$1 want=$2 np=$3
    shift 3
    rm -rf "$SCRATCH/out"
    timeout 300 mpirun -x ASAN_OPTIONS -x LSAN_OPTIONS -x UBSAN_OPTIONS -np "$np" "$ABIN" "$@" --output "$SCRATCH/out" \
        --progress none > "$OUT_LOG" 2>&1
    local rc=$?
    if grep -Eq "ERROR: (Address|Leak)Sanitizer|runtime error:" "$OUT_LOG"; then
        fail "ASan: $what: sanitizer report"; grep -E -m5 "ERROR:|runtime error:|SUMMARY" "$OUT_LOG"
    elif [ $rc -ne "$want" ]; then
        fail "ASan: $what: exit $rc, expected $want"; tail -3 "$OUT_LOG"
    else
        pass "ASan: $what: exit $want, no sanitizer report"
    fi
}

run "gather, FSDP1 ShardedTensor" 0 2 "$FIX/fsdp1_ws2_nomesh/global_step_1" --mode gather
run "direct, Shard(1), --optimizer, 64KiB buffers, -np 3" 0 3 "$FIX/fsdp2_ws4_shard1/global_step_1" --optimizer --mode direct --buffer-size 64KiB
run "--format both, cuda RNG states" 0 2 "$FIX/fsdp2_ws2_cudarng/global_step_1" --format both
run "uneven bf16, empty shards, -np 4" 0 4 "$FIX/fsdp2_ws8_uneven_bf16/global_step_1" --mode gather --buffer-size 64KiB
run "HSDP replicas" 0 4 "$FM_ROOT/mpi_tests/fixtures/fsdp2_hsdp_ws4/global_step_1" --optimizer
run "DCP titan (nested, objects skipped), -np 3, gather" 0 3 "$FIX/dcp_titan_ws4" --mode gather
run "DCP torch 2.14, direct, 64KiB buffers, --format both" 0 4 "$FIX/dcp214_accelerate_ws4" --mode direct --buffer-size 64KiB --format both
rm -rf "$SCRATCH/dcp"; cp -r "$FIX/dcp_accelerate_ws4" "$SCRATCH/dcp"; chmod -R u+w "$SCRATCH/dcp"
truncate -s -100 "$SCRATCH/dcp/pytorch_model_fsdp_0/__2_0.distcp"
run "DCP: a truncated .distcp file (error path)" 4 4 "$SCRATCH/dcp"
run "DCP --optimizer (objects read as JSON), -np 3" 0 3 "$FIX/dcp_titan_ws4" --optimizer
rm -rf "$SCRATCH/ck"; cp -r "$FIX/fsdp2_ws4_tied/global_step_1" "$SCRATCH/ck"; chmod -R u+w "$SCRATCH/ck"
f=$SCRATCH/ck/actor/model_world_size_4_rank_2.pt
off=$(python3 "$FM_ROOT/mpi_tests/tools/zipedit.py" offset "$f" data/0)
printf '\xff' | dd of="$f" bs=1 seek=$((off + 7)) conv=notrunc status=none
run "a CRC mismatch on rank 2 (error path)" 4 4 "$SCRATCH/ck"
rm "$SCRATCH/ck/actor/model_world_size_4_rank_3.pt"
run "a missing rank file (error path)" 3 4 "$SCRATCH/ck"
run "inconsistent plan: --writer-rank out of range" 2 2 "$FIX/fsdp1_ws2_nomesh/global_step_1" --writer-rank 7
run "LoRA fused + adapter, --optimizer, -np 3" 0 3 "$FIX/fsdp2_ws4_lora/global_step_1" --lora both --optimizer --mode gather
run "LoRA --format both, -np 2" 0 2 "$FIX/fsdp2_ws4_lora/global_step_1" --format both --lora adapter
run "LoRA: no adapter of that name (error path)" 2 4 "$FIX/fsdp2_ws4_lora/global_step_1" --lora-name nope

# check, verify, merge --verify
S1=$FIX/fsdp2_ws4_shard1/global_step_1
run "check --optimizer" 0 2 check "$S1" --optimizer
run "merge --verify, direct, sharded" 0 3 "$S1" --verify --mode direct --max-shard-size 100KB
mpirun -np 2 "$FM_BIN" "$S1" --output "$SCRATCH/v" --max-shard-size 100KB --optimizer -q
run "verify --checkpoint_path --optimizer" 0 3 verify "$SCRATCH/v" --checkpoint_path "$S1" --optimizer
run "verify against the manifest" 0 2 verify "$SCRATCH/v"
run "verify --reference across dtypes" 0 2 verify "$SCRATCH/v" --reference "$FIX/fsdp2_ws4_shard1/reference/fp32" --rtol 0.008
python3 "$FM_ROOT/mpi_tests/tools/stedit.py" flip "$SCRATCH/v/model-00004-of-00004.safetensors" model.norm.weight 3
run "verify finds a difference (error path)" 11 2 verify "$SCRATCH/v" --checkpoint_path "$S1" --optimizer
mpirun -np 2 "$FM_BIN" "$S1" --output "$SCRATCH/vh" --format both -q
run "verify of --format both (model.h5 read back, training state merged again)" 0 2 verify "$SCRATCH/vh" --checkpoint_path "$S1"
