#!/usr/bin/env python3
"""Checks optimizer/optimizer_state.json against the fixture's optim_reference.json.

  check_optimizer.py OUTPUT_DIR REFERENCE_JSON
Prints "OK <what>" / "FAIL <what>" lines."""
import json
import sys

state = json.load(open(f"{sys.argv[1]}/optimizer/optimizer_state.json"))
ref = json.load(open(sys.argv[2]))
groups = state["param_groups"]
names = [n for g in groups for n in g["params"]]
print(("OK" if names == ref["param_order"] else "FAIL") + " param_groups name the parameters in the optimizer's order")
g = groups[0]
print(("OK" if g.get("initial_lr") == ref["lr"] and g.get("betas") == ref["betas"] else "FAIL")
      + " hyper-parameters (initial_lr, betas) as saved")
steps = [state["state"][n].get("step") for n in names]
print(("OK" if all(s == 1 for s in steps) else "FAIL") + f" step counts of every parameter ({len(steps)})")
