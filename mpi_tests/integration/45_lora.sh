#!/usr/bin/env bash
# LoRA checkpoints (fixture fsdp2_ws4_lora: PEFT r=4, alpha=8, q_proj/v_proj).
# fused (the default): names, shapes, dtypes of reference/{fp32,bf16}
# (merge_and_unload); fp32 within 2 ulp of reference/fp32 (the count of
# elements that differ at all is printed); bf16 equal to reference/fp32
# rounded once to bf16, and within 1 bf16 ulp (at the tensor's scale) of
# reference/bf16, which PEFT rounded twice. adapter: lora_adapter/ byte-
# identical to reference/*_adapter, model.safetensors the base model with
# clean names. Both engines, -np 4, 2, 1.
source "$(dirname "$0")/../lib.sh"
PY=/usr/bin/python3 # Debian's, where numpy lives
CMP=$FM_ROOT/mpi_tests/tools/st_compare.py
ck=$FIX/fsdp2_ws4_lora/global_step_1
ref=$FIX/fsdp2_ws4_lora/reference

# check LABEL COMMAND... : the helper's OK/FAIL line becomes a test result
check() {
    local label=$1 line
    shift
    line=$("$PY" "$CMP" "$@" 2>&1 | tail -1)
    case $line in OK*) pass "$label: ${line#OK }" ;; *) fail "$label: $line" ;; esac
}

for np in 4 2 1; do
    for dt in fp32 bf16; do
        dtype=float32; [ $dt = bf16 ] && dtype=bfloat16
        mode=gather; [ $np = 2 ] && mode=direct
        out=$SCRATCH/lora-$np-$dt
        if ! mpimerge $np "$ck" --output "$out" --dtype $dtype --mode $mode --lora both --progress none; then
            fail "lora -np $np $dt: exit $?"; tail -3 "$OUT_LOG"; continue
        fi
        grep -q "LoRA adapter 'default' found: r=4, alpha=8, targets: q_proj, v_proj" "$OUT_LOG" \
            && pass "lora -np $np $dt: the console names r, alpha and the targets" \
            || fail "lora -np $np $dt: no LoRA line on the console"
        if [ $dt = fp32 ]; then
            check "lora -np $np fp32 fused vs reference/fp32" "$out/model.safetensors" "$ref/fp32/model.safetensors" --ulp 2
        else
            check "lora -np $np bf16 fused = reference/fp32 rounded once" "$out/model.safetensors" \
                "$ref/fp32/model.safetensors" --round-ref bf16
            check "lora -np $np bf16 fused vs reference/bf16 (PEFT's bf16 merge)" "$out/model.safetensors" \
                "$ref/bf16/model.safetensors" --ulp 1 --tensor-scale
        fi
        for f in adapter_model.safetensors adapter_config.json; do
            cmp -s "$out/lora_adapter/$f" "$ref/${dt}_adapter/$f" \
                && pass "lora -np $np $dt: lora_adapter/$f byte-identical to reference/${dt}_adapter" \
                || fail "lora -np $np $dt: lora_adapter/$f differs from reference/${dt}_adapter"
        done
        cmp -s "$out/config.json" "$ref/$dt/config.json" && pass "lora -np $np $dt: config.json as the reference" \
            || fail "lora -np $np $dt: config.json differs"
    done
done

# the default is fused; adapter alone: base model with clean names, no LoRA tensors
out=$SCRATCH/lora-default
mpimerge 4 "$ck" --output "$out" --dtype float32 --progress none \
    && cmp -s "$out/model.safetensors" "$ref/fp32/model.safetensors" && [ ! -e "$out/lora_adapter" ] \
    && pass "lora: fused by default (no --lora), bit-identical to reference/fp32, no lora_adapter/" \
    || fail "lora: the default run is not the fused model"
out=$SCRATCH/lora-adapter
if mpimerge 2 "$ck" --output "$out" --dtype float32 --lora adapter --progress none; then
    check "lora --lora adapter: base model names/shapes/dtypes as the reference" "$out/model.safetensors" \
        "$ref/fp32/model.safetensors" --ulp 99999999999
    "$PY" -c "import json,struct,sys; b=open(sys.argv[1],'rb').read(); h=json.loads(b[8:8+struct.unpack('<Q',b[:8])[0]]); \
sys.exit(any('lora' in k or 'base_layer' in k or 'base_model' in k for k in h))" "$out/model.safetensors" \
        && pass "lora --lora adapter: no PEFT name in model.safetensors" || fail "lora --lora adapter: PEFT names left"
    cmp -s "$out/lora_adapter/adapter_model.safetensors" "$ref/fp32_adapter/adapter_model.safetensors" \
        && pass "lora --lora adapter: the adapter byte-identical" || fail "lora --lora adapter: the adapter differs"
else
    fail "lora --lora adapter: exit $?"; tail -3 "$OUT_LOG"
fi

# --lora on a checkpoint without LoRA, a missing adapter name
mpimerge 1 "$FIX/plain_ws2_replicated/global_step_1" --output "$SCRATCH/nolora" --lora fused --progress none
rc=$?
[ $rc = 2 ] && grep -q "holds no LoRA keys" "$OUT_LOG" && pass "--lora on a checkpoint without LoRA: exit 2 and a message" \
    || fail "--lora without LoRA keys: exit $rc: $(tail -1 "$OUT_LOG")"
mpimerge 2 "$ck" --output "$SCRATCH/noname" --lora-name other --progress none
rc=$?
[ $rc = 2 ] && grep -q "no adapter named 'other'; it holds 'default'" "$OUT_LOG" && [ ! -e "$SCRATCH/noname" ] \
    && pass "--lora-name of a missing adapter: exit 2, names the adapters, nothing written" \
    || fail "--lora-name other: exit $rc: $(tail -1 "$OUT_LOG")"
