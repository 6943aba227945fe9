#!/usr/bin/env python3
"""manifest_check.py OUT: checks fsdpmerge_manifest.json against the files,
independently of fsdpmerge (a CRC-32C written from its definition, the
safetensors headers parsed here). Prints one line per problem; exit 0 when
every tensor of every safetensors file is listed with the right file, dtype,
shape, offsets and CRC-32C, and the file sizes match."""
import json, os, struct, sys

TABLE = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    TABLE.append(c)

def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = (c >> 8) ^ TABLE[(c ^ b) & 0xFF]
    return c ^ 0xFFFFFFFF

def main(out):
    m = json.load(open(os.path.join(out, "fsdpmerge_manifest.json")))
    bad = 0
    seen = set()
    names = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    if sorted(m["files"]) != names:
        print("files differ: manifest %s, folder %s" % (sorted(m["files"]), names)); bad += 1
    for fn in names:
        raw = open(os.path.join(out, fn), "rb").read()
        if m["files"].get(fn, {}).get("size") != len(raw):
            print("%s: size %d, manifest %s" % (fn, len(raw), m["files"].get(fn))); bad += 1
        n = struct.unpack("<Q", raw[:8])[0]
        hdr = json.loads(raw[8:8 + n])
        for name, t in hdr.items():
            if name == "__metadata__":
                continue
            seen.add(name)
            e = m["tensors"].get(name)
            b, en = t["data_offsets"]
            want = dict(file=fn, dtype=t["dtype"], shape=t["shape"], data_offsets=[b, en])
            if e is None or any(e[k] != v for k, v in want.items()):
                print("%s: manifest %s, file %s" % (name, e, want)); bad += 1; continue
            c = "%08x" % crc32c(raw[8 + n + b:8 + n + en])
            if c != e["crc32c"]:
                print("%s: crc32c %s, manifest %s" % (name, c, e["crc32c"])); bad += 1
    extra = set(m["tensors"]) - seen
    if extra:
        print("manifest lists tensors not in the files: %s" % sorted(extra)); bad += 1
    print("%d tensors, %d problems" % (len(seen), bad))
    return 1 if bad or not seen else 0

sys.exit(main(sys.argv[1]))
