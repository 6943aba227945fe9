#!/usr/bin/env bash
# example.sh - the built-in example (`make example`): synthesize a small FSDP2
# checkpoint like verl saves it (world size 4, Shard(0) DTensors, padded
# storages, tied embeddings), merge it with mpirun -np 4, and check the
# result against the synthesizer's independently generated expected output.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1

dir=${EXAMPLE_DIR:-build/example}
# the binaries: the tree's bin/, or an installed copy (FSDPMERGE_BINDIR=/usr/bin)
bindir=${FSDPMERGE_BINDIR:-bin}
rm -rf "$dir"
mkdir -p "$dir"
echo "== 1. a small checkpoint: 4 ranks, a Qwen2-shaped model (vocab 4096, hidden 256, 4 layers)"
mpirun -np 4 "$bindir/fsdpsynth" --out "$dir/ckpt" --world-size 4 --vocab 4096 --hidden 256 --intermediate 688 \
    --layers 4 --heads 8 --kv-heads 2 --expected "$dir/expected" -q
find "$dir/ckpt" -type f | sort | sed 's/^/   /'
echo
echo "== 2. merge it: mpirun -np 4 $bindir/fsdpmerge $dir/ckpt/global_step_1 --output $dir/merged"
mpirun -np 4 "$bindir/fsdpmerge" "$dir/ckpt/global_step_1" --output "$dir/merged"
echo
echo "== 3. the result"
ls -l "$dir/merged"
if cmp "$dir/merged/model.safetensors" "$dir/expected/bf16/model.safetensors"; then
    echo "model.safetensors is byte-identical to the expected output ($dir/expected/bf16)"
else
    echo "example: the merged weights differ from the expected output" >&2
    exit 1
fi
