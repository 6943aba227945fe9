#!/usr/bin/env bash
# Synthesized DCP folders (fsdpsynth --dcp): uneven and empty chunks, many
# files, 2-D chunking, HSDP deduplication, the three layouts, merged and
# compared byte for byte with the synthesizer's independent expected output;
# inspect on .metadata and on one item; and broken folders, each refused
# with a clear message, its exit code, and nothing left behind.
source "$(dirname "$0")/../lib.sh"

synth() { # dir world [fsdpsynth options]
    local d=$1 w=$2
    shift 2
    rm -rf "$SCRATCH/$d" "$SCRATCH/$d.exp"
    mpirun -np 2 "$FM_SYNTH" --out "$SCRATCH/$d" --world-size "$w" --expected "$SCRATCH/$d.exp" -q "$@" > "$OUT_LOG" 2>&1
}

merged_ok() { # what dir np [merge options]
    local what=$1 d=$2 np=$3
    shift 3
    local out=$SCRATCH/$d.out
    rm -rf "$out"
    if mpimerge "$np" "$SCRATCH/$d" --output "$out" --progress none "$@"; then
        local dt=bf16
        [[ " $* " == *" float32 "* ]] && dt=fp32
        cmp -s "$out/model.safetensors" "$SCRATCH/$d.exp/$dt/model.safetensors" && pass "$what" || fail "$what: differs from the expected output"
    else
        fail "$what: exit $?"; tail -3 "$OUT_LOG"
    fi
    rm -rf "$out"
}

synth acc 4 --dcp accelerate && merged_ok "accelerate layout, W=4, -np 4, tied lm_head dropped" acc 4 \
    && merged_ok "accelerate layout, W=4, -np 3, float32" acc 3 --dtype float32
grep -q "lm_head.weight dropped" "$OUT_LOG" && pass "the tied lm_head is dropped" || fail "tied lm_head not dropped"
synth bf 4 --dcp titan --dtype bfloat16 --untied && merged_ok "titan layout (step-1/), bf16 parameters, untied" bf 2
synth flat 2 --dcp flat && merged_ok "flat state dict (any sub-folder with .metadata: dcp/), -np 1" flat 1
# k_proj: 32 rows over 24 files = 16 chunks of 2 and 8 empty ones; 176 rows: uneven
synth many 24 --dcp accelerate && merged_ok "24 files (uneven and empty chunks), -np 3" many 3
grep -q '"model.model.layers.0.self_attn.k_proj.bias"' <("$FM_BIN" inspect "$SCRATCH/many/pytorch_model_fsdp_0" --json) \
    && pass "inspect --json on the DCP folder lists the keys" || fail "inspect --json"
"$FM_BIN" inspect "$SCRATCH/many/pytorch_model_fsdp_0/.metadata" > "$SCRATCH/ins" 2>&1
grep -q "at \[32\] size \[0\] -> __23_0.distcp" "$SCRATCH/ins" && grep -q "24 data files, state dict nested" "$SCRATCH/ins" \
    && pass "inspect .metadata: chunks with offsets, sizes, file, item (an empty chunk at the end)" || fail "inspect .metadata: $(head -3 "$SCRATCH/ins")"
off=$(sed -n 's/.*at \[0, 0\] size \[22, 64\] -> __0_0.distcp @\([0-9]*\) .*/\1/p' "$SCRATCH/ins" | head -1)
"$FM_BIN" inspect "$SCRATCH/many/pytorch_model_fsdp_0/__0_0.distcp@${off:-x}" > "$SCRATCH/ins" 2>&1
grep -q "Tensor(dtype=float32, shape=\[22, 64\]" "$SCRATCH/ins" && pass "inspect FILE.distcp@OFFSET shows the item's tensor" \
    || fail "inspect item: $(head -3 "$SCRATCH/ins")"
synth grid 6 --dcp accelerate --dcp-chunks 2d && merged_ok "2-D chunking (2 x 3 grid), -np 6" grid 6 \
    && merged_ok "2-D chunking, -np 4 (files not a multiple of processes), gather" grid 4 --mode gather
synth hsdp 4 --dcp accelerate --dcp-hsdp 2 && merged_ok "HSDP 2 x 2: each chunk stored once, spread over the groups" hsdp 4
"$FM_BIN" inspect "$SCRATCH/hsdp/pytorch_model_fsdp_0/__3_0.distcp" | grep -q "^model.model.layers.0.mlp.up_proj.weight" \
    && ! "$FM_BIN" inspect "$SCRATCH/hsdp/pytorch_model_fsdp_0/__3_0.distcp" | grep -q "^model.model.embed_tokens.weight" \
    && pass "HSDP: file 3 holds some tensors and not others" || fail "HSDP spread"
mpimerge 5 "$SCRATCH/hsdp" --output "$SCRATCH/x" --progress none; rc=$?
[ $rc -eq 2 ] && grep -q "5 processes for a checkpoint of world size 4" "$OUT_LOG" && pass "more processes than files: exit 2" \
    || fail "-np 5 of 4 files: exit $rc"

bad() { # what fault code pattern [np]
    local what=$1 fault=$2 code=$3 pat=$4 np=${5:-4}
    synth bad 4 --dcp accelerate --dcp-fault "$fault" || { fail "$what: fsdpsynth"; return; }
    local out=$SCRATCH/bad.out
    timeout 120 mpirun -np "$np" "$FM_BIN" "$SCRATCH/bad" --output "$out" --progress none > "$OUT_LOG" 2>&1
    local rc=$?
    if [ $rc -eq "$code" ] && grep -q -- "$pat" "$OUT_LOG" && [ ! -e "$out" ] && no_leftovers "$SCRATCH"; then
        pass "$what: exit $code, names it, nothing left behind"
    else
        fail "$what: exit $rc (want $code)"; tail -2 "$OUT_LOG"
    fi
}
bad "missing .distcp file" missing-file:2 3 "cannot open .*pytorch_model_fsdp_0/__2_0.distcp"
bad "truncated item" truncate:1 4 "__1_0.distcp: the item at \[.*) lies past the end of the file"
bad "corrupt .metadata" metadata 4 "pytorch_model_fsdp_0/.metadata"
bad "overlapping chunks" overlap 6 "key 'model.embed_tokens.weight': the blocks of rank 0 and rank 1 overlap"
bad "a missing chunk" gap 6 "key 'model.embed_tokens.weight': the shards cover 24576 of 32768 elements"
bad "transform_descriptors (zstd)" transform 5 "key 'model.model.embed_tokens.weight': the item at \[0, +[0-9]*) of __0_0.distcp is stored with transform_descriptors \['stream.zstd'\].*unsupported" 2
