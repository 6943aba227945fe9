#!/usr/bin/python3
"""Compares a merged HuggingFace folder with a reference state dict, byte for byte.

  check_dcp.py OUTPUT_DIR REFERENCE.pt DTYPE [--tied] [--adamw-step [--optimizer]]

REFERENCE.pt is a torch.save of the unsharded state dict (plain tensors, as the
DCP fixtures' reference/full_fp32.pt). Every float tensor is converted with
torch's .to(DTYPE) and its bytes compared with the tensor's bytes in the
model*.safetensors files (8-byte header length, JSON header, raw data),
read without the safetensors library. With --tied, a missing lm_head.weight
is expected (tie_word_embeddings). With --adamw-step the reference is first
taken one torch.optim.AdamW(lr=1e-3) step with grad = 0.01 * p: the
dcp_titan_ws4 fixture saves its model after that step (make/torch26_dcp.py)
but its full_fp32.pt before it. With --optimizer, that step's AdamW state is
also compared: optimizer/optimizer.safetensors ("<name>.exp_avg",
"<name>.exp_avg_sq", fp32, byte for byte) and the step counts in
optimizer/optimizer_state.json. Prints one OK/FAIL line per check."""
import glob
import json
import struct
import sys

import torch

DT = {"bfloat16": (torch.bfloat16, "BF16"), "float32": (torch.float32, "F32"), "float16": (torch.float16, "F16")}


def read_safetensors(out, pattern="model*.safetensors"):
    tensors = {}
    for path in sorted(glob.glob(f"{out}/{pattern}")):
        with open(path, "rb") as f:
            data = f.read()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        base = 8 + n
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            b, e = meta["data_offsets"]
            tensors[name] = (meta["dtype"], meta["shape"], data[base + b:base + e], path)
    return tensors


def check_optimizer(out, params, opt):
    got = read_safetensors(f"{out}/optimizer", "optimizer.safetensors")
    want = {}
    for k, p in params.items():
        for st in ("exp_avg", "exp_avg_sq"):
            want[f"{k}.{st}"] = opt.state[p][st]
    bad = [k for k, t in want.items() if k not in got or got[k][2] != t.contiguous().view(torch.uint8).numpy().tobytes()]
    ok = not bad and sorted(got) == sorted(want)
    print(("OK" if ok else "FAIL") + f" optimizer: {len(want)} AdamW states equal torch's, byte for byte"
          + ("" if ok else f": {bad[:4]} {sorted(set(got) - set(want))[:4]}"))
    state = json.load(open(f"{out}/optimizer/optimizer_state.json"))
    steps = [state["state"].get(k, {}).get("step") for k in params]
    names = state["param_groups"][0].get("params") if state.get("param_groups") else None
    ok = all(s == 1 for s in steps) and names == list(params)
    print(("OK" if ok else "FAIL") + " optimizer_state.json: step 1 for every parameter, param_groups name them in order")


def main():
    out, ref_path, dtype = sys.argv[1], sys.argv[2], sys.argv[3]
    tied = "--tied" in sys.argv[4:]
    tdt, stname = DT[dtype]
    ref = torch.load(ref_path, map_location="cpu")
    if "--adamw-step" in sys.argv[4:]:
        params = {k: torch.nn.Parameter(v.clone()) for k, v in ref.items()}
        opt = torch.optim.AdamW(list(params.values()), lr=1e-3)
        for p in params.values():
            p.grad = p.detach().clone() * 0.01
        opt.step()
        ref = {k: p.detach() for k, p in params.items()}
        if "--optimizer" in sys.argv[4:]:
            check_optimizer(out, params, opt)
    got = read_safetensors(out)
    expect = dict(ref)
    if tied:
        expect.pop("lm_head.weight", None)
    ok = sorted(got) == sorted(expect)
    print(("OK" if ok else "FAIL") + f" {len(got)} tensors, the reference's names"
          + ("" if ok else f": missing {sorted(set(expect) - set(got))[:5]} extra {sorted(set(got) - set(expect))[:5]}"))
    bad = []
    for name, t in expect.items():
        if name not in got:
            continue
        st_dtype, shape, raw, _ = got[name]
        want = t.to(tdt) if t.is_floating_point() else t
        want_dt = stname if t.is_floating_point() else st_dtype
        wbytes = want.contiguous().view(torch.uint8).numpy().tobytes() if want.numel() else b""
        if st_dtype != want_dt or list(shape) != list(want.shape) or raw != wbytes:
            bad.append(name)
    print(("OK" if not bad and ok else "FAIL") + f" every tensor equals the reference converted to {dtype}, byte for byte"
          + (f": differ: {bad[:5]}" if bad else ""))
    return 0 if ok and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
