#!/usr/bin/env bash
# torch.distributed.checkpoint (DCP) folders written by real PyTorch (2.6 and
# 2.14): accelerate's pytorch_model_fsdp_0/ and torchtitan's step-1/. Merged
# at -np 4, 2 and 1 in bf16 and fp32, every tensor byte-equal to the
# reference converted by torch (check_dcp.py, torch 1.13).
source "$(dirname "$0")/../lib.sh"
CHECK=$FM_ROOT/mpi_tests/tools/check_dcp.py

merge_and_check() { # fixture np dtype [check args]
    local fx=$1 np=$2 dt=$3
    shift 3
    local out=$SCRATCH/$fx-$np-$dt
    if mpimerge "$np" "$FIX/$fx" --output "$out" --dtype "$dt" --progress none; then
        "$CHECK" "$out" "$FIX/$fx/reference/full_fp32.pt" "$dt" "$@" | sed -E "s/^(OK|FAIL) /\1 $fx -np $np $dt: /" > "$SCRATCH/res"
        while read -r st msg; do [ "$st" = OK ] && pass "$msg" || fail "$msg"; done < "$SCRATCH/res"
        cmp -s "$out/config.json" "$FIX/$fx/huggingface/config.json" && fail "$fx: config.json not rewritten" \
            || [ -s "$out/config.json" ] && pass "$fx -np $np $dt: config.json from huggingface/" || fail "$fx: no config.json"
    else
        fail "$fx -np $np $dt: exit $?"; tail -3 "$OUT_LOG"
    fi
    rm -rf "$out"
}

for np in 4 2 1; do
    for dt in bfloat16 float32; do
        merge_and_check dcp_accelerate_ws4 $np $dt
        merge_and_check dcp214_accelerate_ws4 $np $dt
        merge_and_check dcp_titan_ws4 $np $dt --adamw-step
    done
done

# naming the DCP folder itself, gather mode, --hf-config from elsewhere
out=$SCRATCH/named
if mpimerge 3 "$FIX/dcp_titan_ws4/step-1" --output "$out" --mode gather --hf-config "$FIX/dcp_accelerate_ws4/huggingface" --progress none; then
    "$CHECK" "$out" "$FIX/dcp_titan_ws4/reference/full_fp32.pt" bfloat16 --adamw-step | grep -q FAIL && fail "step-1 -np 3 gather" \
        || pass "the step-1 folder itself, -np 3, gather mode, --hf-config: byte-equal"
    grep -q "Detected a torch.distributed.checkpoint folder: 4 data files, 120 keys (model: the 'model.' keys)" "$OUT_LOG" \
        && pass "banner names the DCP folder, its files and the model entry" || fail "DCP banner"
else
    fail "step-1 -np 3 gather: exit $?"; tail -3 "$OUT_LOG"
fi

# without any config: the weights alone, with a note
rm -rf "$SCRATCH/ck"; mkdir -p "$SCRATCH/ck"; cp -r "$FIX/dcp_accelerate_ws4/pytorch_model_fsdp_0" "$SCRATCH/ck/"
out=$SCRATCH/noconf
if mpimerge 2 "$SCRATCH/ck" --output "$out" --progress none && [ -f "$out/model.safetensors" ] && [ ! -e "$out/config.json" ] \
    && grep -q "note: no config.json" "$OUT_LOG"; then pass "no config anywhere: weights alone, with a note"
else fail "no config: $(tail -2 "$OUT_LOG")"; fi

# --dcp-key: another entry of the nested dict; an unknown one is a usage error
mpimerge 2 "$FIX/dcp_titan_ws4" --output "$SCRATCH/k" --dcp-key nosuch --progress none; rc=$?
[ $rc -eq 2 ] && grep -q "dcp-key nosuch: no such entry (the entries are 'model', 'optimizer', 'train_state')" "$OUT_LOG" \
    && [ ! -e "$SCRATCH/k" ] && pass "--dcp-key nosuch: exit 2, lists the entries" || { fail "--dcp-key nosuch: exit $rc"; tail -2 "$OUT_LOG"; }
mpimerge 2 "$FIX/dcp_titan_ws4" --output "$SCRATCH/k" --dcp-key optimizer --dtype float32 --progress none; rc=$?
[ $rc -eq 0 ] && grep -q "Merged 81 parameters" "$OUT_LOG" && pass "--dcp-key optimizer: the 81 optimizer tensors (exp_avg, exp_avg_sq, step of 27)" \
    || { fail "--dcp-key optimizer: exit $rc"; tail -3 "$OUT_LOG"; }
rm -rf "$SCRATCH/k"

# HDF5 output of a DCP checkpoint
if "$FM_BIN" --help | grep -q . && mpimerge 2 "$FIX/dcp_accelerate_ws4" --output "$SCRATCH/h5" --format both --dtype float32 --progress none; then
    "$CHECK" "$SCRATCH/h5" "$FIX/dcp_accelerate_ws4/reference/full_fp32.pt" float32 | grep -q FAIL && fail "DCP --format both: safetensors" \
        || pass "DCP --format both: safetensors byte-equal"
    [ -s "$SCRATCH/h5/model.h5" ] && pass "DCP --format both: model.h5 written" || fail "DCP: no model.h5"
elif grep -q "built without parallel HDF5" "$OUT_LOG"; then
    pass "DCP --format both: refused cleanly (no parallel HDF5 in this build)"
else
    fail "DCP --format both: $(tail -2 "$OUT_LOG")"
fi

# --optimizer: torchtitan's AdamW state (optimizer.state.<fqn>.exp_avg, ...) written like the verl path's
for np in 4 3; do
    out=$SCRATCH/opt-$np
    if mpimerge $np "$FIX/dcp_titan_ws4" --output "$out" --optimizer --progress none; then
        "$CHECK" "$out" "$FIX/dcp_titan_ws4/reference/full_fp32.pt" bfloat16 --adamw-step --optimizer \
            | sed -E "s/^(OK|FAIL) /\1 titan --optimizer -np $np: /" > "$SCRATCH/res"
        while read -r st msg; do [ "$st" = OK ] && pass "$msg" || fail "$msg"; done < "$SCRATCH/res"
    else
        fail "titan --optimizer -np $np: exit $?"; tail -3 "$OUT_LOG"
    fi
    rm -rf "$out"
done
mpimerge 2 "$FIX/dcp_accelerate_ws4" --output "$SCRATCH/noopt" --optimizer --progress none; rc=$?
[ $rc -eq 5 ] && grep -q "holds no optimizer state ('optimizer.state.' keys)" "$OUT_LOG" && [ ! -e "$SCRATCH/noopt" ] \
    && pass "--optimizer on a DCP folder without optimizer state: exit 5" || { fail "--optimizer without state: exit $rc"; tail -2 "$OUT_LOG"; }

# --hf-config naming an original model folder (with weights, an index, sub-folders): only its side files are copied
mkdir -p "$SCRATCH/orig/sub"
cp "$FIX/dcp_accelerate_ws4/huggingface/config.json" "$SCRATCH/orig/"
echo '{"x": 1}' > "$SCRATCH/orig/tokenizer_config.json"
echo junk > "$SCRATCH/orig/model.safetensors"; echo '{}' > "$SCRATCH/orig/model.safetensors.index.json"
echo junk > "$SCRATCH/orig/pytorch_model.bin"; echo junk > "$SCRATCH/orig/sub/x"
out=$SCRATCH/origcfg
if mpimerge 2 "$FIX/dcp_accelerate_ws4" --output "$out" --hf-config "$SCRATCH/orig" --dtype float32 --progress none \
    && [ -f "$out/tokenizer_config.json" ] && [ ! -e "$out/pytorch_model.bin" ] && [ ! -e "$out/sub" ] \
    && [ ! -e "$out/model.safetensors.index.json" ] \
    && ! "$CHECK" "$out" "$FIX/dcp_accelerate_ws4/reference/full_fp32.pt" float32 | grep -q FAIL; then
    pass "--hf-config of a model folder: tokenizer copied, its weights/index/sub-folders not; weights byte-equal"
else
    fail "--hf-config of a model folder: $(ls "$out" 2>&1 | tr '\n' ' ')"; tail -2 "$OUT_LOG"
fi
