#!/usr/bin/env python3
"""Checks extra_state_merged.pt and lr_scheduler_state.json with real PyTorch.

  check_extra_state.py OUTPUT_DIR ACTOR_DIR WORLD_SIZE

Loads the merged file and every rank's extra_state_world_size_W_rank_R.pt with
torch.load and prints "OK <what>" / "FAIL <what>" lines: the scheduler state and
the cpu/numpy/random RNG states are rank 0's, the device key (if any) lists every
rank's state in rank order, and the JSON equals the loaded scheduler state.
The fixtures' numpy RNG states were pickled under numpy 2 (numpy._core); on
numpy 1.x that module is aliased to numpy.core before loading - only here, the
merged file keeps the original names (checked on the raw pickle).
"""
import json
import math
import sys
import zipfile

import numpy
import torch

if not hasattr(numpy, "_core"):
    import numpy.core.multiarray
    sys.modules["numpy._core"] = numpy.core
    sys.modules["numpy._core.multiarray"] = numpy.core.multiarray

out, actor, W = sys.argv[1], sys.argv[2], int(sys.argv[3])


def report(ok, what):
    print(("OK " if ok else "FAIL ") + what)


def same(a, b):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype \
            and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, numpy.ndarray) or isinstance(b, numpy.ndarray):
        return isinstance(a, numpy.ndarray) and isinstance(b, numpy.ndarray) and a.dtype == b.dtype \
            and a.shape == b.shape and numpy.array_equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a.keys()) == list(b.keys()) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) == type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) == type(b) and a == b


merged = torch.load(f"{out}/extra_state_merged.pt", map_location="cpu")
ranks = [torch.load(f"{actor}/extra_state_world_size_{W}_rank_{r}.pt", map_location="cpu") for r in range(W)]
report(set(merged.keys()) == set(ranks[0].keys()), "merged file has the keys of rank 0's extra_state")
report(same(merged["lr_scheduler"], ranks[0]["lr_scheduler"]), "lr_scheduler is rank 0's")
for k in ("cpu", "numpy", "random"):
    report(same(merged["rng"][k], ranks[0]["rng"][k]), f"rng['{k}'] is rank 0's")
devices = [k for k in ranks[0]["rng"] if k not in ("cpu", "numpy", "random")]
for d in devices:
    states = merged["rng"][d]
    report(isinstance(states, list) and len(states) == W, f"rng['{d}'] is a list of {W} states")
    report(all(same(states[r], ranks[r]["rng"][d]) for r in range(W)), f"rng['{d}'][r] is rank r's state, every r")
if not devices:
    report(set(merged["rng"].keys()) == {"cpu", "numpy", "random"}, "no device key when the ranks have none")
with zipfile.ZipFile(f"{out}/extra_state_merged.pt") as z:
    pkl = z.read([n for n in z.namelist() if n.endswith("/data.pkl")][0])
report(b"numpy._core.multiarray" in pkl, "the numpy module names are kept as pickled (numpy._core)")
j = json.load(open(f"{out}/lr_scheduler_state.json"))
report(same(j, json.loads(json.dumps(ranks[0]["lr_scheduler"]))), "lr_scheduler_state.json equals the scheduler state")
