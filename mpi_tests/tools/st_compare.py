#!/usr/bin/python3
"""Compares two safetensors files tensor by tensor, within a tolerance in ulp.

  st_compare.py OUT REF [--ulp N] [--tensor-scale] [--round-ref bf16]
Names, dtypes and shapes must be equal; values may differ by at most N units
in the last place of the dtype (default 0: bit-equal). --tensor-scale
measures the ulp at the tensor's largest magnitude instead of element by
element (a sum that cancels to near zero is then not counted in thousands of
ulps). --round-ref bf16: REF is fp32 and is first rounded to bf16 (nearest,
ties to even), as torch's .to(torch.bfloat16). Prints one line
"OK ..." or "FAIL ..." with the number of elements that differ at all and
the largest difference in ulp. A safetensors file is an 8-byte little-endian
header length, a JSON header, then the raw data."""
import json
import struct
import sys

import numpy as np

UINT = {"F32": np.uint32, "BF16": np.uint16, "F16": np.uint16}


def load(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    head = json.loads(b[8:8 + n])
    head.pop("__metadata__", None)
    data = memoryview(b)[8 + n:]
    return {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in head.items()}


def ordered(bits, dt):
    """Sign-magnitude float bits -> integers whose difference counts ulps."""
    width = 32 if dt == "F32" else 16
    x = bits.astype(np.int64)
    neg = x >> (width - 1) == 1
    mag = x & ((1 << (width - 1)) - 1)
    return np.where(neg, -mag, mag)


def round_bf16(ref):
    for k, (dt, sh, d) in list(ref.items()):
        if dt != "F32":
            continue
        u = np.frombuffer(d, np.uint32).astype(np.uint64)
        u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        ref[k] = ("BF16", sh, memoryview(u.astype(np.uint16).tobytes()))


def as_float(bits, dt):
    return (bits.astype(np.uint32) << 16).view(np.float32) if dt == "BF16" else \
        bits.view(np.float16).astype(np.float32) if dt == "F16" else bits.view(np.float32)


def ulp_at(mag, dt):
    mant = {"F32": 23, "BF16": 7, "F16": 10}[dt]
    return np.ldexp(1.0, np.frexp(np.maximum(mag, np.finfo(np.float32).tiny))[1] - 1 - mant)


def main():
    out, ref = load(sys.argv[1]), load(sys.argv[2])
    if "--round-ref" in sys.argv:
        round_bf16(ref)
    scale = "--tensor-scale" in sys.argv
    tol = int(sys.argv[sys.argv.index("--ulp") + 1]) if "--ulp" in sys.argv else 0
    what = f"{sys.argv[1]} vs {sys.argv[2]}"
    if sorted(out) != sorted(ref):
        print(f"FAIL {what}: names differ: only in output {sorted(set(out) - set(ref))[:5]}, "
              f"only in reference {sorted(set(ref) - set(out))[:5]}")
        return 1
    ndiff = total = worst = 0
    for k in sorted(ref):
        (dt, sh, d), (rdt, rsh, rd) = out[k], ref[k]
        if dt != rdt or sh != rsh:
            print(f"FAIL {what}: {k}: {dt}{sh} but the reference has {rdt}{rsh}")
            return 1
        if dt not in UINT:
            if bytes(d) != bytes(rd):
                print(f"FAIL {what}: {k} ({dt}) differs")
                return 1
            continue
        ab, bb = np.frombuffer(d, UINT[dt]), np.frombuffer(rd, UINT[dt])
        if scale:
            x, y = as_float(ab, dt).astype(np.float64), as_float(bb, dt).astype(np.float64)
            top = max(np.abs(x).max(), np.abs(y).max()) if x.size else 0.0
            diff = np.ceil(np.abs(x - y) / ulp_at(top, dt)).astype(np.int64)
        else:
            diff = np.abs(ordered(ab, dt) - ordered(bb, dt))
        total += diff.size
        ndiff += int(np.count_nonzero(diff))
        worst = max(worst, int(diff.max()) if diff.size else 0)
    ok = worst <= tol
    print(f"{'OK' if ok else 'FAIL'} {what}: {len(ref)} tensors, {ndiff} of {total} elements differ, "
          f"at most {worst} ulp{' of the tensor scale' if scale else ''} (allowed {tol})")
    return 0 if ok else 1


sys.exit(main())
