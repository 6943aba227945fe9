#!/usr/bin/env python3
"""Checks fsdpmerge's outputs with real PyTorch, transformers and safetensors.

  check_with_torch.py DIR      (DIR made by prepare.sh)
Prints OK/FAIL lines and a summary; exits non-zero on any FAIL.
"""
import glob
import os
import sys
import traceback

import torch

D = sys.argv[1]
fails = 0


def report(ok, what):
    global fails
    print(("OK   " if ok else "FAIL ") + what, flush=True)
    fails += 0 if ok else 1


def guard(what):
    def deco(fn):
        def run(*a):
            try:
                fn(*a)
            except Exception as exc:  # one check's crash must not hide the others
                report(False, f"{what}: {type(exc).__name__}: {exc}")
                traceback.print_exc()
        return run
    return deco


print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu", flush=True)
dev = "cuda" if torch.cuda.is_available() else "cpu"


@guard("transformers load")
def check_model(name):
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification
    merged, ref = f"{D}/{name}/merged", f"{D}/{name}/reference"
    cfg = AutoConfig.from_pretrained(merged)
    arch = (cfg.architectures or ["?"])[0]
    cls = AutoModelForTokenClassification if arch.endswith("TokenClassification") else AutoModelForCausalLM
    a = cls.from_pretrained(merged, dtype="auto").to(dev).eval()
    b = cls.from_pretrained(ref, dtype="auto").to(dev).eval()
    sa, sb = a.state_dict(), b.state_dict()
    same = sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    report(same, f"{name}: transformers {transformers.__version__} loads the merge ({arch}, {next(a.parameters()).dtype}); "
                 f"every weight equals the reference's ({len(sa)} tensors)")
    torch.manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (2, 16), device=dev)
    with torch.no_grad():
        la, lb = a(ids).logits, b(ids).logits
    report(torch.equal(la, lb), f"{name}: logits on fixed inputs identical to the reference model's")
    tied = getattr(cfg, "tie_word_embeddings", False)
    if tied and hasattr(a, "lm_head"):
        report(a.lm_head.weight.data_ptr() == a.get_input_embeddings().weight.data_ptr(),
               f"{name}: lm_head re-tied to the embedding after loading")


@guard("extra_state")
def check_extra(name):
    import numpy
    merged = torch.load(f"{D}/{name}/merged/extra_state_merged.pt", weights_only=False)
    ranks = sorted(glob.glob(f"{D}/{name}/actor/extra_state_world_size_*_rank_*.pt"),
                   key=lambda p: int(p.rsplit("_", 1)[1].split(".")[0]))
    states = [torch.load(p, weights_only=False) for p in ranks]
    report(merged["lr_scheduler"] == states[0]["lr_scheduler"], f"{name}: extra_state lr_scheduler is rank 0's")
    report(torch.equal(merged["rng"]["cpu"], states[0]["rng"]["cpu"]), f"{name}: rng cpu is rank 0's")
    np0, npm = states[0]["rng"]["numpy"], merged["rng"]["numpy"]
    report(np0[0] == npm[0] and numpy.array_equal(np0[1], npm[1]) and np0[2:] == npm[2:], f"{name}: rng numpy is rank 0's")
    report(merged["rng"]["random"] == states[0]["rng"]["random"], f"{name}: rng random is rank 0's")
    torch.set_rng_state(merged["rng"]["cpu"])
    if "cuda" in states[0]["rng"]:
        cuda = merged["rng"]["cuda"]
        report(len(cuda) == len(states) and all(torch.equal(cuda[r], states[r]["rng"]["cuda"]) for r in range(len(states))),
               f"{name}: rng cuda lists every rank's state ({len(cuda)})")
        if torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
            report(torch.equal(torch.cuda.get_rng_state(0).cpu(), cuda[0]), f"{name}: torch.cuda.set_rng_state_all accepts it")


@guard("optimizer")
def check_optim(name):
    from safetensors.torch import load_file
    path = f"{D}/{name}/merged/optimizer/optimizer.safetensors"
    if not os.path.exists(path):
        return
    a, b = load_file(path), load_file(f"{D}/{name}/optim_reference.safetensors")
    report(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a),
           f"{name}: optimizer.safetensors loads with safetensors and equals the reference ({len(a)} tensors)")


@guard("synthesizer")
def check_synth():
    """torch.load of the synthesizer's rank files: DTensors whose local tensors hold the expected slices."""
    from safetensors.torch import load_file
    full = load_file(f"{D}/synth/expected/fp32/model.safetensors")
    files = sorted(glob.glob(f"{D}/synth/global_step_1/actor/model_world_size_4_rank_*.pt"))
    ok, n = True, 0
    for r, p in enumerate(files):
        sd = torch.load(p, weights_only=False)
        for k, v in sd.items():
            if k not in full:
                continue
            local = v.to_local() if hasattr(v, "to_local") else v
            (pl,) = v.placements
            d = pl.dim
            chunk = full[k].chunk(4, dim=d)
            want = chunk[r] if r < len(chunk) else full[k].narrow(d, 0, 0)
            ok &= torch.equal(local, want) and tuple(v.shape) == tuple(full[k].shape)
            n += 1
    report(ok, f"synth: torch {torch.__version__} loads the synthesizer's rank files; {n} DTensor local tensors "
               f"equal the expected slices")
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM
    a = AutoModelForCausalLM.from_pretrained(f"{D}/synth/merged", dtype="auto")
    report(a.config.architectures == ["Qwen2ForCausalLM"], "synth: the merged synthetic model loads with transformers")


for name in ("fsdp2_ws4_tied", "fsdp2_ws8_uneven_bf16", "fsdp2_ws4_shard1", "fsdp1_ws2_nomesh", "fsdp2_ws2_cudarng"):
    check_model(name)
    check_extra(name)
    check_optim(name)
check_synth()
print(f"{fails} failed", flush=True)
sys.exit(1 if fails else 0)
