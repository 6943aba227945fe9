#!/usr/bin/env bash
# seeds.sh FIXTURES OUT - the seed corpus of each harness, made from the
# fixtures (real torch.save files, reference outputs, configs):
#   OUT/ptz   small torch.save zips (rank 0's model/optim/extra_state files, data.pt)
#   OUT/pkl   their data.pkl records
#   OUT/st    the header (8 + N bytes) of each reference model.safetensors
#   OUT/json  config.json, fsdp_config.json and the other small JSON files
# Plus the committed inputs in mpi_tests/fuzz/corpus/<harness>/ (crashes
# found, hand-made edge cases), copied as they are.
set -eu
fix=$1 out=$2
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"/{ptz,pkl,st,json}
n=0
while IFS= read -r f; do
    n=$((n + 1))
    cp "$f" "$out/ptz/$n.pt"
    # the pickle: the zip entry ending in /data.pkl (stored, never compressed by torch.save)
    python3 - "$f" "$out/pkl/$n.pkl" <<'PY' || true
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
names = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
if names:
    open(sys.argv[2], "wb").write(z.read(names[0]))
PY
done < <(find "$fix" \( -name '*_rank_0.pt' -o -name 'data.pt' -o -name '*.pt' -path '*misc*' -o -name '*.pt' -path '*legacy*' \) \
             -size -400k | sort)
n=0
while IFS= read -r f; do
    n=$((n + 1))
    python3 - "$f" "$out/st/$n.st" <<'PY'
import sys, struct
b = open(sys.argv[1], "rb").read(1 << 20)
hl = struct.unpack("<Q", b[:8])[0] if len(b) >= 8 else 0
open(sys.argv[2], "wb").write(b[: 8 + hl] if 8 + hl <= len(b) else b)
PY
done < <(find "$fix" -name '*.safetensors' | sort)
n=0
while IFS= read -r f; do
    n=$((n + 1))
    cp "$f" "$out/json/$n.json"
done < <(find "$fix" -name '*.json' -size -64k | sort)
for h in ptz pkl st json; do
    [ -d "$here/corpus/$h" ] && cp "$here/corpus/$h"/* "$out/$h/" 2>/dev/null || true
done
echo "seeds: $(ls "$out/ptz" | wc -l) ptz, $(ls "$out/pkl" | wc -l) pkl, $(ls "$out/st" | wc -l) st, $(ls "$out/json" | wc -l) json"
