#!/usr/bin/env bash
# fsdpmerge reshard checked by real PyTorch 2.6 (Debian trixie's, in a chroot
# built by shared/fixtures/make/trixie_up.sh when it is not there yet): N gloo
# processes fully_shard the fixture's model on a mesh of N, torch.load the
# resharded rank files, load_state_dict the model and AdamW, take a step, and
# compare the full weights with the unsharded reference (make/reshard_load.py).
# A chroot that cannot be built is a FAIL, never a pass (set
# FSDPMERGE_NO_CHROOT=1 to skip it knowingly: then nothing is counted).
source "$(dirname "$0")/../lib.sh"
CH=${FSDPMERGE_TRIXIE:-/tmp/trixie}
MAKE=$FIX/make

have_torch() { [ -x "$CH/usr/bin/python3" ] && chroot "$CH" python3 -c "import torch" > /dev/null 2>&1; }
if ! have_torch; then
    if [ "${FSDPMERGE_NO_CHROOT:-}" = 1 ]; then
        echo "SKIP torch 2.6 resume check: no chroot at $CH and FSDPMERGE_NO_CHROOT=1 (not counted as passed)"
        exit 0
    fi
    echo "building the torch 2.6 chroot at $CH (a few minutes) ..."
    if ! flock /tmp/chroot.lock bash "$MAKE/trixie_up.sh" "$CH" trixie > "$SCRATCH/chroot.log" 2>&1 || ! have_torch; then
        fail "torch 2.6 resume check NOT RUN: cannot build the trixie chroot at $CH ($(tail -1 "$SCRATCH/chroot.log"))"
        exit 0
    fi
fi

W=$(mktemp -d "$CH/tmp/fsdpmerge-reshard.XXXXXX")
trap 'rm -rf "$SCRATCH" "$OUT_LOG" "$W"' EXIT
cp "$MAKE/reshard_load.py" "$MAKE/torch26_fixture.py" "$W/"
inner=/tmp/$(basename "$W")
for spec in torch26_fsdp2_shard1_ws4:3:shard1 torch26_fsdp2_shard1_ws4:8:shard1 torch26_hsdp2x2_ws4:2:hsdp; do
    name=${spec%%:*}; rest=${spec#*:}; N=${rest%%:*}; kind=${rest#*:}
    src=$FM_ROOT/mpi_tests/fixtures/$name
    out=$W/$name-$N
    if ! mpimerge 2 reshard "$src/global_step_1" --world-size "$N" --output_path "$out" --progress none; then
        fail "torch 2.6: reshard $name -> $N: $(tail -1 "$OUT_LOG")"; continue
    fi
    cp "$src/reference/full_fp32.pt" "$W/ref-$name.pt"
    res=$(timeout 900 chroot "$CH" env USE_LIBUV=0 python3 "$inner/reshard_load.py" "$inner/$name-$N/actor" "$N" \
          "$inner/ref-$name.pt" "$kind" 2>&1 | grep '^RESUME')
    case $res in
        "RESUME ok"*) pass "torch 2.6 loads $name resharded to $N ranks: $res" ;;
        *) fail "torch 2.6 resume of $name -> $N ranks: ${res:-no RESUME line (crashed or timed out)}" ;;
    esac
done
