#!/usr/bin/env python3
"""A merged safetensors file equals a torch.save'd reference converted to the output dtype, byte for byte.

  check_vs_pt.py MERGED.safetensors REFERENCE.pt DTYPE [SUFFIXES]

REFERENCE.pt is a torch.save of plain tensors (the torch26_fixture generator's reference/full_fp32.pt,
or tiny_fixture.py's reference/optim_ref.pt); torch 1.13 loads it. DTYPE: bfloat16, float16, float32,
or auto (each tensor keeps its dtype). Conversion is torch's own .to() (round-to-nearest-even for
bf16 and fp16), done here, not by the merge. SUFFIXES (comma-separated, e.g. "exp_avg,exp_avg_sq")
restricts the check to reference keys ending in one of them. A REFERENCE ending in .json holds
{"sha256": {key: hex}} of the expected little-endian bytes instead (tiny_fixture.py --optim-hashes,
for a fixture too big to commit a copy of); DTYPE must then be auto. Prints one line per problem and a
summary; exit 0 only if every tensor matches and no key is missing or extra."""
import hashlib
import json
import struct
import sys

import torch

ST_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64",
             torch.int32: "I32"}


def read_st(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    return {k: (v, data[8 + n + v["data_offsets"][0]: 8 + n + v["data_offsets"][1]]) for k, v in header.items()}


def raw_bytes(t):
    t = t.contiguous()
    if t.dtype in (torch.bfloat16, torch.float16):
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    return t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()


def compare(merged, ref_path, dtype, suffixes=None):
    """Problems (a list of lines) and a summary of one merged file against one reference."""
    got = read_st(merged)
    if ref_path.endswith(".json"):
        want = json.load(open(ref_path))["sha256"]
        if suffixes:
            want = {k: v for k, v in want.items() if k.endswith(suffixes)}
            got = {k: v for k, v in got.items() if k.endswith(suffixes)}
        probs = [("extra in merge: " if k in got else "missing from merge: ") + k for k in sorted(set(got) ^ set(want))]
        probs += [f"{k}: bytes differ (sha256)" for k in sorted(set(got) & set(want))
                  if hashlib.sha256(got[k][1]).hexdigest() != want[k]]
        return probs, f"{len(want)} tensors by sha256, {len(probs)} problems"
    ref = torch.load(ref_path)
    if suffixes:
        ref = {k: v for k, v in ref.items() if k.endswith(suffixes)}
        got = {k: v for k, v in got.items() if k.endswith(suffixes)}
    probs = [("extra in merge: " if k in got else "missing from merge: ") + k for k in sorted(set(got) ^ set(ref))]
    values = 0
    for name, t in ref.items():
        if name not in got:
            continue
        if dtype != "auto" and t.is_floating_point():
            t = t.to(getattr(torch, dtype))
        meta, raw = got[name]
        if meta["dtype"] != ST_DTYPES.get(t.dtype) or meta["shape"] != list(t.shape):
            probs.append(f"{name}: merged {meta['dtype']} {meta['shape']}, expected {ST_DTYPES.get(t.dtype)} {list(t.shape)}")
        elif raw != raw_bytes(t):
            probs.append(f"{name}: bytes differ")
        values += t.numel()
    return probs, f"{len(ref)} tensors, {values} values, {len(probs)} problems"


def main():
    merged, ref_path, dtype = sys.argv[1], sys.argv[2], sys.argv[3]
    suffixes = tuple(sys.argv[4].split(",")) if len(sys.argv) > 4 else None
    probs, summary = compare(merged, ref_path, dtype, suffixes)
    for p in probs:
        print(p)
    print(summary)
    sys.exit(1 if probs else 0)


if __name__ == "__main__":
    main()
