#!/usr/bin/env bash
# Merges every checkpoint fixture (all but LoRA) at -np W, -np 1 and one
# count in between, in bf16 and fp32, and compares the output folder byte
# for byte with the fixture's reference/ (model.safetensors, config.json)
# and with the source huggingface/ folder (the other files are copies).
# Does not check: LoRA fusing (not supported), optimizer/extra state.
source "$(dirname "$0")/../lib.sh"

FIXTURES="fsdp2_ws4_tied:4 fsdp1_ws4_mesh:4 fsdp1_ws2_nomesh:2 fsdp2_ws8_uneven_bf16:8 fsdp2_ws4_shard1:4 \
fsdp2_ws2_cudarng:2 plain_ws2_replicated:2 plain_ws2_dim0halves:2"

for spec in $FIXTURES; do
    name=${spec%%:*}
    W=${spec##*:}
    mid=$(( (W + 1) / 2 ))
    [ "$mid" -eq "$W" ] && mid=1
    nps=$(printf '%s\n' "$W" 1 "$mid" | awk '!seen[$0]++')
    for np in $nps; do
        for dtype in bfloat16 float32; do
            ref=$FIX/$name/reference/$([ $dtype = bfloat16 ] && echo bf16 || echo fp32)
            [ -d "$ref" ] || continue
            out=$SCRATCH/$name-$np-$dtype
            what="$name -np $np --dtype $dtype"
            cmd="mpirun -np $np $FM_BIN $FIX/$name/global_step_1 --output $out --dtype $dtype"
            if ! mpimerge "$np" "$FIX/$name/global_step_1" --output "$out" --dtype "$dtype" --progress none; then
                fail "$what: exit $? ($cmd)"; sed 's/^/    /' "$OUT_LOG" | tail -5; continue
            fi
            cmp -s "$out/model.safetensors" "$ref/model.safetensors" \
                && pass "$what: model.safetensors byte-identical to reference" \
                || fail "$what: model.safetensors differs from $ref ($cmd)"
            cmp -s "$out/config.json" "$ref/config.json" \
                && pass "$what: config.json byte-identical to reference" \
                || fail "$what: config.json differs from $ref ($cmd)"
            hf=$FIX/$name/global_step_1/actor/huggingface
            bad=0
            for f in "$hf"/*; do
                b=$(basename "$f")
                [ "$b" = config.json ] && continue
                cmp -s "$f" "$out/$b" || { bad=1; echo "    $b not copied unchanged"; }
            done
            [ $bad = 0 ] && pass "$what: tokenizer/generation files copied unchanged" || fail "$what: side files ($cmd)"
            python3 "$FM_ROOT/mpi_tests/tools/manifest_check.py" "$out" > "$SCRATCH/mf.log" 2>&1 \
                && pass "$what: fsdpmerge_manifest.json: every tensor's file, dtype, shape, offsets and CRC-32C right" \
                || { fail "$what: manifest ($cmd)"; tail -3 "$SCRATCH/mf.log"; }
            no_leftovers "$SCRATCH" && pass "$what: no temporary folder left" || fail "$what: temporary folder left in $SCRATCH"
            rm -rf "$out"
        done
    done
done
