#!/usr/bin/env bash
# make_fixtures.sh DIR OUT_TAR - real checkpoints for configurations the shared
# fixtures lack, made with the shared fixture generator (gen_fixtures.py):
#   fsdp2_hsdp_ws4: FSDP2 over a 2x2 (ddp, fsdp) mesh: (Replicate, Shard(0))
#   fsdp2_ws2_critic: a value model (Qwen2ForTokenClassification, critic/)
set -u
D=$1
OUT=$2
cd "$D"
cat > gen_more.py <<'PY'
import sys
import gen_fixtures as g
g.FIXTURES["fsdp2_hsdp_ws4"] = dict(ws=4, mesh=(2, 2), kind="tiny_tied", dtype="float32", producer="fsdp2")
g.FIXTURES["fsdp2_ws2_critic"] = dict(ws=2, mesh=(2,), kind="critic", dtype="float32", producer="fsdp2")
sys.argv = [sys.argv[0]] + sys.argv[1:]
a = g.argparse.ArgumentParser(); a.add_argument("--fixture"); a.add_argument("--out"); ns = a.parse_args()
g.run_fixture(ns.fixture, ns.out)
PY
mkdir -p newfix
export CUDA_VISIBLE_DEVICES=
for spec in fsdp2_hsdp_ws4:4 fsdp2_ws2_critic:2; do
    name=${spec%%:*}; n=${spec##*:}
    timeout 240 python3 -m torch.distributed.run --standalone --nproc_per_node="$n" gen_more.py --fixture "$name" --out newfix \
        > "newfix/$name.log" 2>&1 && echo "made $name" || { echo "FAILED $name"; tail -20 "newfix/$name.log"; }
done
tar czf "$OUT" -C newfix .
ls -la "$OUT"
