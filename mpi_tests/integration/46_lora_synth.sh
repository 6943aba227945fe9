#!/usr/bin/env bash
# LoRA checkpoints made by the synthesizer, whose expected output (the first
# adapter fused into the base weights, clean names) is computed by fsdpsynth
# from its value generator, not by the merger: Shard(1) factors (verl
# placement, and a Shard(1) weight), uneven shards, r not dividing the world size, rslora,
# rank_pattern/alpha_pattern, fan_in_fan_out, bf16 parameters, the
# hyper-parameters from lora_train_meta.json or the command line, a missing
# alpha and DoRA (clear errors, nothing written), two adapters.
source "$(dirname "$0")/../lib.sh"

# case NAME NP "SYNTH ARGS" "MERGE ARGS" : synthesize W=$W, merge, compare bytes
W=4
lcase() {
    local name=$1 np=$2 sargs=$3 margs=$4 ck=$SCRATCH/$1 exp=$SCRATCH/$1-exp out
    rm -rf "$ck" "$exp"
    # shellcheck disable=SC2086
    if ! "$FM_SYNTH" --out "$ck" --world-size $W --expected "$exp" -q $sargs > "$SCRATCH/synth.log" 2>&1; then
        fail "lora synth $name: fsdpsynth failed: $(tail -1 "$SCRATCH/synth.log")"; return
    fi
    for dt in fp32 bf16; do
        local dtype=float32; [ $dt = bf16 ] && dtype=bfloat16
        out=$SCRATCH/$name-out-$dt
        # shellcheck disable=SC2086
        if ! mpimerge "$np" "$ck/global_step_1" --output "$out" --dtype $dtype --progress none $margs; then
            fail "lora synth $name -np $np $dt: exit $?: $(grep -m1 -i error "$OUT_LOG")"; continue
        fi
        cmp -s "$out/model.safetensors" "$exp/$dt/model.safetensors" \
            && pass "lora synth $name -np $np $dt: fused model byte-identical to the synthesizer's expected output" \
            || fail "lora synth $name -np $np $dt: model.safetensors differs from $exp/$dt"
    done
}

lcase basic 4 "--lora 4 --lora-alpha 8" ""
lcase shard1-r6 4 "--lora 6 --lora-alpha 12 --placement verl" ""         # A [6, H]: Shard(1); 6 rows on 4 ranks
lcase shard1-r6-np2 2 "--lora 6 --lora-alpha 12 --placement verl" "--mode gather"
W=8 lcase shard1-weight 4 "--lora 4 --lora-alpha 8 --placement verl --hidden 48 --heads 4 --kv-heads 1" "" # v_proj W [12, 48]: Shard(1)
W=3 lcase uneven-w3 3 "--lora 4 --lora-alpha 8 --lora-targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj" ""
W=3 lcase uneven-w3-np1 1 "--lora 5 --lora-alpha 7.5" ""
lcase rslora-patterns 4 "--lora 4 --lora-alpha 16 --lora-rslora --lora-rank-pattern v_proj=2 --lora-alpha-pattern layers.1.self_attn.q_proj=40" "--mode direct"
lcase fan-in-fan-out 2 "--lora 3 --lora-alpha 6 --lora-fan-in-fan-out" ""
lcase bf16-params 4 "--lora 4 --lora-alpha 8 --dtype bfloat16" ""
lcase meta-config 4 "--lora 4 --lora-alpha 32 --lora-config meta" ""
lcase cli-alpha 2 "--lora 4 --lora-alpha 24 --lora-config none" "--lora-alpha 24 --lora-rank 4"
lcase two-adapters 4 "--lora 4 --lora-alpha 8 --lora-adapters default,other" ""
grep -q "holds 2 adapters (default, other); only 'default' is merged" "$OUT_LOG" \
    && pass "lora synth two adapters: the console names the other adapter" || fail "lora synth two adapters: no note of 'other'"
out=$SCRATCH/two-other
mpimerge 4 "$SCRATCH/two-adapters/global_step_1" --output "$out" --dtype float32 --lora-name other --progress none \
    && ! cmp -s "$out/model.safetensors" "$SCRATCH/two-adapters-exp/fp32/model.safetensors" \
    && pass "lora synth two adapters: --lora-name other fuses the other adapter (output differs from 'default')" \
    || fail "lora synth two adapters: --lora-name other"

# errors before anything is written
W=4
"$FM_SYNTH" --out "$SCRATCH/noalpha" --world-size 4 --lora 4 --lora-config none -q
mpimerge 2 "$SCRATCH/noalpha/global_step_1" --output "$SCRATCH/noalpha-out" --progress none
rc=$?
[ $rc = 2 ] && grep -q "lora_alpha is not known.*--lora-alpha" "$OUT_LOG" && [ ! -e "$SCRATCH/noalpha-out" ] && no_leftovers "$SCRATCH" \
    && pass "lora synth missing alpha: exit 2, says to pass --lora-alpha, nothing written" \
    || fail "lora synth missing alpha: exit $rc: $(grep -m1 -i error "$OUT_LOG")"
"$FM_SYNTH" --out "$SCRATCH/dora" --world-size 4 --lora 4 --lora-dora -q
mpimerge 4 "$SCRATCH/dora/global_step_1" --output "$SCRATCH/dora-out" --progress none
rc=$?
[ $rc = 5 ] && grep -q "lora_magnitude_vector.*DoRA" "$OUT_LOG" && [ ! -e "$SCRATCH/dora-out" ] && no_leftovers "$SCRATCH" \
    && pass "lora synth DoRA: exit 5, names the magnitude vector, nothing written" \
    || fail "lora synth DoRA: exit $rc: $(grep -m1 -i error "$OUT_LOG")"
mpimerge 2 "$SCRATCH/basic/global_step_1" --output "$SCRATCH/badrank" --lora-rank 8 --progress none
rc=$?
[ $rc = 6 ] && grep -q "lora_A has 4 rows but the configuration" "$OUT_LOG" && [ ! -e "$SCRATCH/badrank" ] \
    && pass "lora synth --lora-rank that contradicts lora_A: exit 6, nothing written" \
    || fail "lora synth --lora-rank 8: exit $rc: $(grep -m1 -i error "$OUT_LOG")"

# adapter output of a synthetic checkpoint: names without the adapter, the base model clean
out=$SCRATCH/adapter-out
if mpimerge 3 "$SCRATCH/two-adapters/global_step_1" --output "$out" --lora adapter --progress none; then
    /usr/bin/python3 - "$out" <<'PY' && pass "lora synth --lora adapter: PEFT adapter names, base model clean" || fail "lora synth --lora adapter: names"
import json, struct, sys
def keys(p):
    b = open(p, "rb").read()
    return [k for k in json.loads(b[8:8 + struct.unpack("<Q", b[:8])[0]]) if k != "__metadata__"]
a = keys(sys.argv[1] + "/lora_adapter/adapter_model.safetensors")
m = keys(sys.argv[1] + "/model.safetensors")
ok = len(a) == 8 and all(k.startswith("base_model.model.model.layers.") and (k.endswith(".lora_A.weight") or k.endswith(".lora_B.weight")) for k in a)
ok = ok and not any("lora" in k or "base_layer" in k or k.startswith("base_model") for k in m) and "model.layers.0.self_attn.q_proj.weight" in m
cfg = json.load(open(sys.argv[1] + "/lora_adapter/adapter_config.json"))
ok = ok and cfg["r"] == 4 and cfg["lora_alpha"] == 8
sys.exit(0 if ok else 1)
PY
else
    fail "lora synth --lora adapter: exit $?"
fi
