#!/usr/bin/env bash
# The command line: --help/--version, both converters' spellings, default
# output path, the actor folder named directly, --dtype auto/float16,
# --report, and the documentation listing every option --help shows.
source "$(dirname "$0")/../lib.sh"

"$FM_BIN" --help > "$OUT_LOG" 2>&1 && grep -q "^usage:" "$OUT_LOG" && pass "--help exits 0 and prints usage" || fail "--help"
"$FM_BIN" --version | grep -Eq "^fsdpmerge [0-9]+\.[0-9]+\.[0-9]+$" && pass "--version" || fail "--version"
missing=""
for opt in $("$FM_BIN" --help | grep -oE -- '--[a-z_-]+' | sort -u); do
    grep -q -- "$opt" "$FM_ROOT/docs/cli.md" || missing="$missing $opt"
done
[ -z "$missing" ] && pass "docs/cli.md mentions every option of --help" || fail "docs/cli.md lacks:$missing"

# the simple script's form, one process, default output CKPT_merged
ck=$SCRATCH/plainck
cp -r "$FIX/fsdp2_ws2_cudarng/global_step_1" "$ck"
if "$FM_BIN" "$ck" --progress none > "$OUT_LOG" 2>&1 && cmp -s "${ck}_merged/model.safetensors" "$FIX/fsdp2_ws2_cudarng/reference/bf16/model.safetensors"; then
    pass "one process, positional checkpoint, default output <checkpoint>_merged"
else
    fail "default output path ($FM_BIN $ck)"
fi
# the torchrun converter's flags, naming the actor folder itself
out=$SCRATCH/torchrun-form
mpimerge 2 --checkpoint_path "$ck/actor" --output_path "$out" --dtype float32 --progress none \
    && cmp -s "$out/model.safetensors" "$FIX/fsdp2_ws2_cudarng/reference/fp32/model.safetensors" \
    && pass "--checkpoint_path ACTOR_DIR --output_path, float32" || fail "torchrun-style flags"
# --dtype auto keeps bf16 parameters as bf16; config.json says so
out=$SCRATCH/auto-bf16
mpimerge 4 "$FIX/fsdp2_ws8_uneven_bf16/global_step_1" --output "$out" --dtype auto --progress none \
    && cmp -s "$out/model.safetensors" "$FIX/fsdp2_ws8_uneven_bf16/reference/bf16/model.safetensors" \
    && grep -q '"dtype": "bfloat16"' "$out/config.json" && pass "--dtype auto keeps bfloat16" || fail "--dtype auto"
# --dtype float16: every value is the fp32 reference rounded as torch does (checked with numpy's IEEE rounding)
out=$SCRATCH/f16
PY=python3; [ -x /usr/bin/python3 ] && PY=/usr/bin/python3
mpimerge 2 "$FIX/fsdp1_ws2_nomesh/global_step_1" --output "$out" --dtype float16 --progress none \
    && $PY "$FM_ROOT/mpi_tests/tools/check_f16.py" "$out/model.safetensors" "$FIX/fsdp1_ws2_nomesh/reference/fp32/model.safetensors" > "$SCRATCH/f16.log" 2>&1 \
    && pass "--dtype float16 equals numpy's float32->float16 rounding of the reference ($(tail -1 "$SCRATCH/f16.log"))" \
    || { fail "--dtype float16"; tail -3 "$SCRATCH/f16.log"; }
grep -q '"dtype": "float16"' "$out/config.json" && pass "--dtype float16: config.json dtype" || fail "float16 config"
# --report
out=$SCRATCH/rep
mpimerge 4 "$FIX/fsdp2_ws4_tied/global_step_1" --output "$out" --report "$SCRATCH/report.json" --progress none
python3 - "$SCRATCH/report.json" "$FIX/fsdp2_ws4_tied/reference/bf16/model.safetensors" > "$SCRATCH/rep.log" 2>&1 <<'PYEOF'
import json, math, struct, sys
r = json.load(open(sys.argv[1]))
ref = open(sys.argv[2], "rb").read()
hdr = json.loads(ref[8:8 + struct.unpack("<Q", ref[:8])[0]])
numel = sum(math.prod(v["shape"]) for k, v in hdr.items() if k != "__metadata__")
assert r["world_size"] == 4 and r["processes"] == 4, r
assert r["tensors"] == 26 and r["dropped_tied"] == 1 and r["sharded"] == 26, r
assert r["files"][0]["name"] == "model.safetensors" and r["bytes_written"] == 253688, r
assert r["parameters"] == numel and r["tensor_bytes"] == 2 * numel, (r["parameters"], numel)
assert set(r["seconds"]) == {"discover", "index", "plan", "data", "finalize", "total"}
assert r["mode"] in ("gather", "direct") and r["dtype"] == "bfloat16"
print("ok")
PYEOF
grep -q '^ok$' "$SCRATCH/rep.log" && pass "--report: world size, tensors, bytes, phases" || { fail "--report"; cat "$SCRATCH/rep.log"; }

# the older verl layout (before June 2025): config and tokenizer files straight in actor/, no
# fsdp_config.json: the world size comes from the file names; only the HuggingFace files are copied
old=$SCRATCH/oldlayout
mkdir -p "$old/actor"
cp "$FIX/fsdp2_ws4_tied/global_step_1/actor/"model_world_size_4_rank_*.pt "$old/actor/"
cp "$FIX/fsdp2_ws4_tied/global_step_1/actor/huggingface/"* "$old/actor/"
out=$SCRATCH/oldlayout-out
mpimerge 4 "$old" --output "$out" --progress none
cmp -s "$out/model.safetensors" "$FIX/fsdp2_ws4_tied/reference/bf16/model.safetensors" \
    && cmp -s "$out/config.json" "$FIX/fsdp2_ws4_tied/reference/bf16/config.json" \
    && [ -f "$out/tokenizer.json" ] && ! ls "$out" | grep -q '\.pt$' && grep -q "world_size=4 from checkpoint (file names)" "$OUT_LOG" \
    && pass "older verl layout (files in actor/, no fsdp_config.json): merged, only HF files copied" \
    || fail "older verl layout: $(ls "$out" | tr '\n' ' ')"

# on one host fsdpmerge picks Open MPI's shared-memory transport itself (no TCP probing at start-up),
# unless the user chose transports or set FSDPMERGE_KEEP_MPI_TRANSPORTS
btls() { OMPI_MCA_btl_base_verbose=100 "$@" 2>&1 | grep -o "select: init of component [a-z]*" | sort -u | awk '{ print $NF }' | tr '\n' ' '; }
one=$(btls mpirun --allow-run-as-root --oversubscribe -np 2 "$FM_BIN" --version)
kept=$(FSDPMERGE_KEEP_MPI_TRANSPORTS=1 btls mpirun --allow-run-as-root --oversubscribe -np 2 "$FM_BIN" --version)
mine=$(btls mpirun --allow-run-as-root --oversubscribe -np 2 -x OMPI_MCA_btl=self,tcp "$FM_BIN" --version)
[ "$one" = "self vader " ] && [[ " $kept" == *" tcp "* ]] && [ "$mine" = "self tcp " ] \
    && pass "one host: shared memory only ('$one'); kept: '$kept'; the user's choice wins: '$mine'" \
    || fail "transport choice: one host '$one', kept '$kept', user '$mine'"
