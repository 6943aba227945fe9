#!/usr/bin/env bash
# prepare.sh DIR - the merged outputs and references check_with_torch.py needs.
set -euo pipefail
cd "$(dirname "$0")/../.."
source mpi_tests/lib.sh >/dev/null
D=$1
rm -rf "$D"
mkdir -p "$D"
merge() { mpirun -np "$1" bin/fsdpmerge "${@:2}" -q; }
for spec in fsdp2_ws4_tied:4:bfloat16 fsdp2_ws8_uneven_bf16:8:bfloat16 fsdp2_ws4_shard1:4:float32 fsdp1_ws2_nomesh:2:bfloat16 \
            fsdp2_ws2_cudarng:2:float32; do
    IFS=: read -r name W dt <<< "$spec"
    merge "$W" "$FIX/$name/global_step_1" --output "$D/$name/merged" --dtype "$dt" --optimizer 2>/dev/null \
        || merge "$W" "$FIX/$name/global_step_1" --output "$D/$name/merged" --dtype "$dt"
    ref=$([ "$dt" = bfloat16 ] && echo bf16 || echo fp32)
    cp -r "$FIX/$name/reference/$ref" "$D/$name/reference"
    cp "$FIX/$name/reference/optim_reference.safetensors" "$D/$name/" 2>/dev/null || true
    mkdir -p "$D/$name/actor"
    cp "$FIX/$name/global_step_1/actor/"extra_state_* "$D/$name/actor/"
done
bin/fsdpsynth --out "$D/synth" --world-size 4 --vocab 1000 --hidden 64 --intermediate 176 --layers 2 --heads 4 --kv-heads 2 \
    --placement verl --expected "$D/synth/expected" -q
merge 4 "$D/synth/global_step_1" --output "$D/synth/merged"
cp "$FIX/../fixtures/make/gen_fixtures.py" "$D/" 2>/dev/null || cp "$FIX/make/gen_fixtures.py" "$D/"
du -sh "$D"
