#!/usr/bin/env python3
"""Small edits of torch.save zip files, for the bad-input tests.

  zipedit.py offset FILE RECORD          absolute offset of RECORD's data (e.g. data.pkl, data/0)
  zipedit.py patch-pkl FILE HEX_OLD HEX_NEW [COUNT]
                                          rewrites FILE in place with data.pkl's bytes HEX_OLD
                                          replaced by HEX_NEW (all, or the first COUNT), CRCs right
  zipedit.py patch-record FILE RECORD OFFSET HEX
                                          rewrites FILE in place with RECORD's bytes at OFFSET
                                          replaced by HEX, CRCs right (a consistent but different file)
"""
import struct
import sys
import zipfile


def find(zf, record):
    for info in zf.infolist():
        if info.filename.split("/", 1)[-1] == record:
            return info
    sys.exit(f"no record {record}")


def offset(path, record):
    with zipfile.ZipFile(path) as zf:
        info = find(zf, record)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        hdr = f.read(30)
        name_len, extra_len = struct.unpack("<HH", hdr[26:30])
    print(info.header_offset + 30 + name_len + extra_len)


def rewrite(path, edit):
    with zipfile.ZipFile(path) as zf:
        items = [(i.filename, zf.read(i.filename)) for i in zf.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in items:
            zf.writestr(name, edit(name, data))


def patch_record(path, record, offset, new):
    def edit(name, data):
        if name.split("/", 1)[-1] != record:
            return data
        return data[:offset] + new + data[offset + len(new):]
    rewrite(path, edit)


def patch_pkl(path, old, new, count):
    with zipfile.ZipFile(path) as zf:
        items = [(i.filename, zf.read(i.filename)) for i in zf.infolist()]
    out = []
    for name, data in items:
        if name.endswith("/data.pkl"):
            n = data.count(old)
            if n == 0:
                sys.exit("pattern not found in data.pkl")
            data = data.replace(old, new, count if count else -1)
        out.append((name, data))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in out:
            zf.writestr(name, data)


if __name__ == "__main__":
    if sys.argv[1] == "offset":
        offset(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "patch-record":
        patch_record(sys.argv[2], sys.argv[3], int(sys.argv[4]), bytes.fromhex(sys.argv[5]))
    elif sys.argv[1] == "patch-pkl":
        patch_pkl(sys.argv[2], bytes.fromhex(sys.argv[3]), bytes.fromhex(sys.argv[4]),
                  int(sys.argv[5]) if len(sys.argv) > 5 else 0)
    else:
        sys.exit(__doc__)
