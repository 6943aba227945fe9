#!/usr/bin/env python3
"""Compares `fsdpmerge inspect --json` of misc.pt with torch's expected.json.

Prints one line per tensor: "OK <name>" or "FAIL <name>: <why>"."""
import json
import sys

got = json.load(open(sys.argv[1]))
want = json.load(open(sys.argv[2]))
for name, exp in want.items():
    t = got.get(name)
    if not isinstance(t, dict):
        print(f"FAIL {name}: missing from the inspect output")
        continue
    why = []
    for field in ("dtype", "shape", "stride", "storage_offset"):
        if t.get(field) != exp[field]:
            why.append(f"{field} {t.get(field)!r} != {exp[field]!r}")
    vals = [float(v) for v in t.get("values", [])]
    if vals != [float(v) for v in exp["values"]]:
        why.append(f"values {vals!r} != {exp['values']!r}")
    print(f"FAIL {name}: " + "; ".join(why) if why else f"OK {name}: dtype, shape, stride, offset, values")
