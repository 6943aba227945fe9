#!/usr/bin/env python3
"""One merge of a torch26_fixture-style checkpoint (shared/fixtures/make/torch26_fixture.py,
mpi_tests/fixtures/make/tiny_fixture.py) against its references, in one process (torch loads once).

  check_release.py OUT FIXTURE DTYPE [OPTIM_REF]

OUT/model.safetensors byte-equal to FIXTURE/reference/full_fp32.pt converted to DTYPE; with
OPTIM_REF (optim_ref.pt, or a .json of sha256), OUT/optimizer/optimizer.safetensors's moments
byte-equal to it and optimizer_state.json naming the parameters in the model's order, at step 1.
Prints "OK <what>" / "FAIL <what>" lines (the problems under a FAIL)."""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_vs_pt import compare  # noqa: E402


def report(probs, what):
    print(("FAIL " if probs else "OK ") + what)
    for p in probs[:5]:
        print("    " + p)


out, fix, dtype = sys.argv[1], sys.argv[2], sys.argv[3]
full = os.path.join(fix, "reference", "full_fp32.pt")
probs, summary = compare(os.path.join(out, "model.safetensors"), full, dtype)
report(probs, f"model.safetensors = full_fp32.pt as {dtype} ({summary})")
if len(sys.argv) > 4:
    probs, summary = compare(os.path.join(out, "optimizer", "optimizer.safetensors"), sys.argv[4], "auto",
                             ("exp_avg", "exp_avg_sq"))
    report(probs, f"optimizer moments = the release's AdamW step on the unsharded model ({summary})")
    st = json.load(open(os.path.join(out, "optimizer", "optimizer_state.json")))
    names = [n for g in st["param_groups"] for n in g["params"]]
    report([] if names == list(torch.load(full)) else ["order differs"], "optimizer_state.json: parameters in the model's order")
    report([] if all(st["state"][n].get("step") == 1 for n in names) else ["a step is not 1"],
           f"optimizer_state.json: step 1 for all {len(names)} parameters")
