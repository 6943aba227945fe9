#!/usr/bin/python3
"""Checks a model.h5 written by fsdpmerge --format hdf5 against reference tensors.

  check_h5.py MODEL.h5 --ref REF [--config CONFIG.json] [--world-size W]
              [--version V] [--h5py] [--h5dump]

REF is a .safetensors file or a folder holding model.safetensors (or a
model.safetensors.index.json and its files): the expected tensors. Read with
the standard library only (json + struct): the project has no safetensors
package.

--h5py (Debian's python3-h5py) checks, for every tensor:
  - a dataset of that full name at the root (f[name]), nothing else there;
  - its shape, contiguous layout, early allocation, fill time "never";
  - attributes dtype (torch name) and shape (int64[ndim], empty for 0-d);
  - the raw element bits (read with the file's own type) equal to REF's;
  - bf16: the HDF5 type is sign 15 / exponent 7..14 / mantissa 0..6, bias
    127, and HDF5's conversion to float32 (ds.astype('f4'), and what h5py
    returns by default) equals the exact bf16 -> fp32 widening, bit for bit;
  - root attributes: config (== CONFIG.json's text), format_version "1",
    source_world_size W, producer "fsdpmerge", producer_version V.
--h5dump (Debian's hdf5-tools) reads the file independently of h5py:
  - one DATASET per tensor with the expected DATATYPE and DATASPACE;
  - the values printed with %.17g (exact for fp32, fp64 and bf16/fp16
    converted to float) equal REF's values, bit for bit after parsing;
  - the dtype/shape attributes of every dataset and the root attributes.

Prints one line per failure (at most 30) and a summary; exit status 1 on
any failure.
"""
import argparse
import json
import os
import re
import struct
import subprocess
import sys

import numpy as np

# safetensors dtype -> (numpy dtype of the raw little-endian elements, torch name)
ST = {
    "F64": ("<f8", "float64"), "F32": ("<f4", "float32"), "F16": ("<u2", "float16"),
    "BF16": ("<u2", "bfloat16"), "I64": ("<i8", "int64"), "I32": ("<i4", "int32"),
    "I16": ("<i2", "int16"), "I8": ("i1", "int8"), "U8": ("u1", "uint8"), "BOOL": ("u1", "bool"),
    "U16": ("<u2", "uint16"), "U32": ("<u4", "uint32"), "U64": ("<u8", "uint64"),
}

# what h5dump prints as DATATYPE for each
H5DUMP_TYPE = {
    "F64": "H5T_IEEE_F64LE", "F32": "H5T_IEEE_F32LE",
    "F16": "16-bit little-endian floating-point 16-bit precision",
    "BF16": "16-bit little-endian floating-point 16-bit precision",
    "I64": "H5T_STD_I64LE", "I32": "H5T_STD_I32LE", "I16": "H5T_STD_I16LE", "I8": "H5T_STD_I8LE",
    "U8": "H5T_STD_U8LE", "BOOL": "H5T_STD_U8LE", "U16": "H5T_STD_U16LE", "U32": "H5T_STD_U32LE",
    "U64": "H5T_STD_U64LE",
}

failures = []


def fail(msg):
    failures.append(msg)
    if len(failures) <= 30:
        print("FAIL:", msg)


# ---- the reference: safetensors with the standard library ----

def st_files(ref):
    if os.path.isfile(ref):
        return [ref]
    single = os.path.join(ref, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    with open(os.path.join(ref, "model.safetensors.index.json")) as f:
        names = sorted(set(json.load(f)["weight_map"].values()))
    return [os.path.join(ref, n) for n in names]


def read_safetensors(path):
    """{name: (st_dtype, shape, raw bytes)} of one file."""
    out = {}
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            a, b = info["data_offsets"]
            f.seek(base + a)
            out[name] = (info["dtype"], tuple(info["shape"]), f.read(b - a))
    return out


def load_ref(ref):
    tensors = {}
    for p in st_files(ref):
        tensors.update(read_safetensors(p))
    return tensors


def ref_array(st_dtype, shape, raw):
    return np.frombuffer(raw, dtype=ST[st_dtype][0]).reshape(shape)


def widen_bf16(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def same_floats(got, want):
    """bit-equal float arrays, NaN matching any NaN (HDF5 does not keep payloads)"""
    got = np.ascontiguousarray(got).reshape(-1)
    want = np.ascontiguousarray(want).reshape(-1)
    ub = {4: np.uint32, 8: np.uint64}[got.dtype.itemsize]
    eq = got.view(ub) == want.view(ub)
    eq |= np.isnan(got) & np.isnan(want)
    return bool(eq.all()), int((~eq).sum())


# ---- h5py ----

def check_h5py(path, ref, args):
    import h5py

    with h5py.File(path, "r") as f:
        names = set(f.keys())
        if names != set(ref):
            fail(f"h5py: datasets at the root differ from the reference: missing {sorted(set(ref) - names)[:5]}, "
                 f"extra {sorted(names - set(ref))[:5]}")
        check_root_attrs_h5py(f, args)
        for name, (dt, shape, raw) in sorted(ref.items()):
            if name not in f:
                continue
            ds = f[name]
            if not isinstance(ds, h5py.Dataset):
                fail(f"h5py: {name} is not a dataset")
                continue
            check_dataset_h5py(h5py, ds, name, dt, shape, raw)


def check_root_attrs_h5py(f, args):
    a = f.attrs
    want = {"format_version": "1", "producer": "fsdpmerge"}
    if args.version:
        want["producer_version"] = args.version
    if args.config:
        with open(args.config, encoding="utf-8") as c:
            want["config"] = c.read()
    for k, v in want.items():
        if k not in a:
            fail(f"h5py: root attribute {k} missing")
        elif a[k] != v:
            fail(f"h5py: root attribute {k} = {a[k]!r:.80}, expected {v!r:.80}")
    if "source_world_size" not in a:
        fail("h5py: root attribute source_world_size missing")
    elif args.world_size is not None and int(a["source_world_size"]) != args.world_size:
        fail(f"h5py: source_world_size {a['source_world_size']}, expected {args.world_size}")


def check_dataset_h5py(h5py, ds, name, dt, shape, raw):
    if ds.shape != shape:
        fail(f"h5py: {name}: shape {ds.shape}, expected {shape}")
        return
    dcpl = ds.id.get_create_plist()
    if dcpl.get_layout() != h5py.h5d.CONTIGUOUS:
        fail(f"h5py: {name}: layout is not contiguous")
    if dcpl.get_fill_time() != h5py.h5d.FILL_TIME_NEVER:
        fail(f"h5py: {name}: fill time is not 'never'")
    if dcpl.get_alloc_time() != h5py.h5d.ALLOC_TIME_EARLY:
        fail(f"h5py: {name}: allocation time is not 'early'")
    if ds.attrs.get("dtype") != ST[dt][1]:
        fail(f"h5py: {name}: dtype attribute {ds.attrs.get('dtype')!r}, expected {ST[dt][1]!r}")
    ashape = ds.attrs.get("shape")
    if ashape is None or tuple(int(x) for x in ashape) != shape or ashape.dtype != np.int64:
        fail(f"h5py: {name}: shape attribute {ashape!r}, expected int64 {list(shape)}")
    want = ref_array(dt, shape, raw)
    # the raw bits, read with the file's own type (no conversion)
    got = np.empty(shape, dtype=ST[dt][0])
    if got.size:
        ds.id.read(h5py.h5s.ALL, h5py.h5s.ALL, got, mtype=ds.id.get_type())
    if got.tobytes() != want.tobytes():
        fail(f"h5py: {name}: raw bits differ from the reference "
             f"({int((got.reshape(-1) != want.reshape(-1)).sum())} elements)")
    if dt == "BF16":
        check_bf16_h5py(ds, name, want)


def check_bf16_h5py(ds, name, want_bits):
    t = ds.id.get_type()
    fields = (t.get_fields(), t.get_ebias(), t.get_size(), t.get_order())
    if fields != ((15, 7, 8, 0, 7), 127, 2, 0):
        fail(f"h5py: {name}: bf16 type (fields, ebias, size, order) = {fields}")
    want = widen_bf16(want_bits)
    conv = ds.astype("<f4")[()] if ds.size else np.empty(ds.shape, np.float32)
    ok, n = same_floats(conv, want)
    if not ok:
        fail(f"h5py: {name}: HDF5's bf16 -> float32 conversion differs from the widening in {n} elements")
    plain = ds[()]
    if plain.dtype != np.float32:
        fail(f"h5py: {name}: read as {plain.dtype}, expected float32")
    elif not same_floats(plain, want)[0]:
        fail(f"h5py: {name}: default read differs from the widening")


# ---- h5dump ----

def run_h5dump(*argv):
    r = subprocess.run(["h5dump", *argv], capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"h5dump {' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()[:200]}")
    return r.stdout


def parse_data_dump(text):
    """{name: (datatype, dataspace, [value strings])} from h5dump -A 0 -y -w 0"""
    out, name, vals, in_data = {}, None, None, False
    for line in text.splitlines():
        s = line.strip()
        if in_data:
            if s == "}":
                in_data = False
                out[name][2].extend(vals)
            else:
                vals.extend(v.strip() for v in s.split(",") if v.strip())
            continue
        m = re.match(r'DATASET "(.*)" \{$', s)
        if m:
            name = m.group(1)
            out[name] = ["", "", []]
        elif name and s.startswith("DATATYPE"):
            out[name][0] = s[len("DATATYPE"):].strip()
        elif name and s.startswith("DATASPACE"):
            out[name][1] = s[len("DATASPACE"):].strip()
        elif name and s == "DATA {":
            in_data, vals = True, []
    return out


def parse_attr_dump(text):
    """{dataset: {attribute: [value strings]}} from h5dump -A -y -w 0"""
    out, ds, attr, in_data = {}, None, None, False
    for line in text.splitlines():
        s = line.strip()
        if in_data:
            if s == "}":
                in_data = False
            elif ds is not None and attr is not None:
                out[ds][attr].extend(v.strip().strip('"') for v in s.split(",") if v.strip())
            continue
        m = re.match(r'DATASET "(.*)" \{$', s)
        if m and line.startswith("   DATASET"):
            ds, attr = m.group(1), None
            out[ds] = {}
            continue
        m = re.match(r'ATTRIBUTE "(.*)" \{$', s)
        if m and ds is not None:
            attr = m.group(1)
            out[ds][attr] = []
        elif s == "DATA {":
            in_data = True
    return out


def expected_dataspace(shape):
    if shape == ():
        return "SCALAR"
    dims = ", ".join(str(d) for d in shape)
    return f"SIMPLE {{ ( {dims} ) / ( {dims} ) }}"


def check_h5dump(path, ref, args):
    data = parse_data_dump(run_h5dump("-A", "0", "-m", "%.17g", "-y", "-w", "0", path))
    if set(data) != set(ref):
        fail(f"h5dump: datasets differ from the reference: missing {sorted(set(ref) - set(data))[:5]}, "
             f"extra {sorted(set(data) - set(ref))[:5]}")
    for name, (dt, shape, raw) in sorted(ref.items()):
        if name not in data:
            continue
        dtype_s, space, vals = data[name]
        if dtype_s != H5DUMP_TYPE[dt]:
            fail(f"h5dump: {name}: DATATYPE {dtype_s!r}, expected {H5DUMP_TYPE[dt]!r}")
        if space != expected_dataspace(shape):
            fail(f"h5dump: {name}: DATASPACE {space!r}, expected {expected_dataspace(shape)!r}")
        check_values_h5dump(name, dt, shape, raw, vals)
    attrs = parse_attr_dump(run_h5dump("-A", "-y", "-w", "0", path))
    for name, (dt, shape, raw) in sorted(ref.items()):
        a = attrs.get(name, {})
        if a.get("dtype") != [ST[dt][1]]:
            fail(f"h5dump: {name}: attribute dtype {a.get('dtype')}, expected {ST[dt][1]!r}")
        if a.get("shape") != [str(d) for d in shape]:
            fail(f"h5dump: {name}: attribute shape {a.get('shape')}, expected {list(shape)}")
    check_root_attrs_h5dump(path, args)


def check_values_h5dump(name, dt, shape, raw, vals):
    want = ref_array(dt, shape, raw).reshape(-1)
    if len(vals) != want.size:
        fail(f"h5dump: {name}: {len(vals)} values printed, expected {want.size}")
        return
    if dt in ("F32", "BF16", "F16", "F64"):
        got = np.array([float(v) for v in vals], dtype=np.float64)
        if dt == "F64":
            ok, n = same_floats(got, want)
        else:
            if dt == "BF16":
                want = widen_bf16(want)
            elif dt == "F16":
                want = want.view(np.float16).astype(np.float32)
            ok, n = same_floats(got.astype(np.float32), want)
    else:
        got = np.array([int(v) for v in vals], dtype=np.int64)
        n = int((got != want.astype(np.int64)).sum())
        ok = n == 0
    if not ok:
        fail(f"h5dump: {name}: {n} values differ from the reference")


def check_root_attrs_h5dump(path, args):
    want = {"format_version": "1", "producer": "fsdpmerge"}
    if args.version:
        want["producer_version"] = args.version
    if args.world_size is not None:
        want["source_world_size"] = str(args.world_size)
    for k, v in want.items():
        out = run_h5dump("-a", "/" + k, "-y", "-w", "0", path)
        m = re.search(r"DATA \{\s*(.*?)\s*\}", out, re.S)
        got = m.group(1).strip('"') if m else None
        if got != v:
            fail(f"h5dump: root attribute {k} = {got!r}, expected {v!r}")
    if args.config:
        out = run_h5dump("-a", "/config", "-H", path)
        if 'ATTRIBUTE "config"' not in out:
            fail("h5dump: root attribute config missing")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("h5")
    ap.add_argument("--ref", required=True)
    ap.add_argument("--config")
    ap.add_argument("--world-size", type=int)
    ap.add_argument("--version")
    ap.add_argument("--h5py", action="store_true")
    ap.add_argument("--h5dump", action="store_true")
    args = ap.parse_args()
    ref = load_ref(args.ref)
    if not ref:
        fail(f"no tensors in {args.ref}")
    if args.h5py:
        check_h5py(args.h5, ref, args)
    if args.h5dump:
        check_h5dump(args.h5, ref, args)
    tools = "+".join(t for t, on in (("h5py", args.h5py), ("h5dump", args.h5dump)) if on)
    if failures:
        print(f"{len(failures)} failures ({tools}, {len(ref)} tensors)")
        sys.exit(1)
    print(f"ok: {len(ref)} tensors equal to the reference ({tools})")


if __name__ == "__main__":
    main()
