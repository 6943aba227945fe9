#!/usr/bin/env python3
"""zip_same.py A B : two torch.save files have the same records at the same offsets with the same bytes,
except .data/serialization_id (torch hashes the record names with std::hash). Prints OK or DIFF."""
import zipfile,sys

a,b=zipfile.ZipFile(sys.argv[1]),zipfile.ZipFile(sys.argv[2])
la=[(i.filename,i.header_offset,i.file_size) for i in a.infolist()]
lb=[(i.filename,i.header_offset,i.file_size) for i in b.infolist()]
bad=[]
if la!=lb: bad.append("directory differs")
for n in a.namelist():
    if n.endswith('.data/serialization_id'): continue
    if n not in b.namelist() or a.read(n)!=b.read(n): bad.append(n)
print("OK" if not bad else "DIFF "+" ".join(bad[:5]))
sys.exit(1 if bad else 0)
