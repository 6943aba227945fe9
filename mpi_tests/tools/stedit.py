#!/usr/bin/env python3
"""stedit.py: damages a safetensors file in place, for tests of verify.
  stedit.py offset FILE NAME         absolute byte offset of tensor NAME's data
  stedit.py flip FILE NAME ELEM      flips the low bit of element ELEM's first byte
  stedit.py swap FILE NAME1 NAME2    exchanges the bytes of two tensors of one size"""
import json, struct, sys

def layout(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    return bytearray(raw), 8 + n, json.loads(raw[8:8 + n])

SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
cmd, path = sys.argv[1], sys.argv[2]
raw, start, hdr = layout(path)
if cmd == "offset":
    print(start + hdr[sys.argv[3]]["data_offsets"][0])
elif cmd == "flip":
    t = hdr[sys.argv[3]]
    raw[start + t["data_offsets"][0] + int(sys.argv[4]) * SIZE[t["dtype"]]] ^= 1
    open(path, "wb").write(raw)
elif cmd == "swap":
    a, b = (hdr[k]["data_offsets"] for k in sys.argv[3:5])
    assert a[1] - a[0] == b[1] - b[0]
    x, y = raw[start + a[0]:start + a[1]], raw[start + b[0]:start + b[1]]
    raw[start + a[0]:start + a[1]], raw[start + b[0]:start + b[1]] = y, x
    open(path, "wb").write(raw)
