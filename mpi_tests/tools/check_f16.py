#!/usr/bin/env python3
"""An fp16 merge equals the fp32 reference rounded to fp16 by numpy (IEEE
round-to-nearest-even, what torch does for non-NaN values).

  check_f16.py MERGED_F16.safetensors REFERENCE_F32.safetensors"""
import json
import struct
import sys

import numpy


def read(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    return {k: (v, data[8 + n + v["data_offsets"][0]: 8 + n + v["data_offsets"][1]]) for k, v in header.items()}


got, ref = read(sys.argv[1]), read(sys.argv[2])
assert got.keys() == ref.keys(), "different tensor names"
count = 0
for name, (meta, raw) in ref.items():
    gmeta, graw = got[name]
    assert gmeta["dtype"] == "F16" and gmeta["shape"] == meta["shape"], name
    want = numpy.frombuffer(raw, dtype="<f4").astype("<f2").tobytes()
    assert graw == want, f"{name}: fp16 bytes differ"
    count += numpy.frombuffer(raw, dtype="<f4").size
print(f"{len(ref)} tensors, {count} values")
