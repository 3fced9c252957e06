"""Optimizer step cost on the reference control-head shapes (dim 256, depth 4, ~5 M parameters).

Measures, A/B interleaved in one process after warm-up (median of repeats):
  1. optimizer step only (fixed gradients): FusionOpt sf-normuon (bf16, fp32), torch.optim.AdamW
     (foreach), schedulefree.AdamWScheduleFree, torch.optim.Muon + AdamW for the rest,
     pytorch_optimizer.NorMuon (+ its AdamW groups) — as ratios to AdamW;
  2. the spectral part alone: FusionOpt recipe "muon" vs torch.optim.Muon on the same matrices;
  3. batched vs per-matrix Newton–Schulz over the head's spectral matrices;
  4. a whole training step (forward + backward + step, batch 32 × 256 tokens): sf-normuon vs AdamW.

    python benchmarks/optimizer_step.py [--repeats N] [--quick]
"""

from __future__ import annotations

import argparse
import copy

import torch
from _report import environment, interleaved_medians, md_table, write_report

from fusion_infer import ControlHead, ControlHeadConfig
from fusion_train import FusionOpt, build_param_groups, orthogonalize


def make_head(seed: int = 0) -> ControlHead:
    torch.manual_seed(seed)
    head = ControlHead(ControlHeadConfig(in_channels=64, out_channels=5, dim=256, depth=4, heads=8))
    for p in head.parameters():  # adaLN-zero init leaves zeros; benchmark a trained-looking state
        if p.ndim >= 2:
            torch.nn.init.normal_(p, std=0.02)
    return head


def with_grads(model: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = 1e-3 * torch.randn(p.shape, generator=g)


def split(model):
    groups = build_param_groups(model)
    spec = [p for g in groups if g["group_type"] == "spectral" for p in g["params"]]
    scal = [p for g in groups if g["group_type"] == "scalar" for p in g["params"]]
    return spec, scal


class Pair:
    """Several optimizers stepped together (e.g. Muon for matrices + AdamW for the rest)."""

    def __init__(self, *opts):
        self.opts = opts

    def step(self):
        for o in self.opts:
            o.step()


def build_optimizers(base: ControlHead) -> dict:
    import schedulefree
    from pytorch_optimizer import NorMuon

    out = {}

    def fresh():
        m = copy.deepcopy(base)
        with_grads(m)
        return m

    m = fresh()
    out["AdamW (torch, foreach)"] = (m, torch.optim.AdamW(m.parameters(), lr=1e-3, foreach=True))
    m = fresh()
    o = schedulefree.AdamWScheduleFree(m.parameters(), lr=1e-3)
    o.train()
    out["AdamWScheduleFree (schedulefree)"] = (m, o)
    m = fresh()
    spec, scal = split(m)
    out["torch Muon + AdamW"] = (m, Pair(torch.optim.Muon(spec, lr=0.02), torch.optim.AdamW(scal, lr=1e-3, foreach=True)))
    m = fresh()
    spec, scal = split(m)
    out["pytorch_optimizer NorMuon"] = (m, NorMuon([{"params": spec, "use_muon": True}, {"params": scal, "use_muon": False}], lr=0.02))
    for hd in ("bf16", "fp32"):
        m = fresh()
        out[f"FusionOpt sf-normuon ({hd})"] = (m, FusionOpt(build_param_groups(m), lr=1e-3, hot_dtype=hd))
    return out


def bench_steps(base, repeats):
    opts = build_optimizers(base)
    med = interleaved_medians({k: o.step for k, (_, o) in opts.items()}, repeats=repeats)
    ref = med["AdamW (torch, foreach)"]
    return {k: {"ms": 1e3 * v, "ratio_to_adamw": v / ref} for k, v in med.items()}


def bench_spectral(base, repeats):
    res = {}
    for hd in ("bf16", "fp32"):
        m1, m2 = copy.deepcopy(base), copy.deepcopy(base)
        with_grads(m1)
        with_grads(m2)
        s1, _ = split(m1)
        s2, _ = split(m2)
        ours = FusionOpt([{"params": s1, "group_type": "spectral"}], lr=0.02, recipe="muon", hot_dtype=hd,
                         lr_scale="original")
        fns = {"FusionOpt muon": ours.step}
        if hd == "bf16":  # torch.optim.Muon always iterates in bf16
            fns["torch.optim.Muon"] = torch.optim.Muon(s2, lr=0.02).step
        med = interleaved_medians(fns, repeats=repeats)
        res[hd] = {k: 1e3 * v for k, v in med.items()}
    res["speedup_vs_torch_muon_bf16"] = res["bf16"]["torch.optim.Muon"] / res["bf16"]["FusionOpt muon"]
    return res


def bench_ns_batching(base, repeats):
    spec, _ = split(base)
    buckets: dict = {}
    for p in spec:
        a, b = p.shape[0], p[0].numel()
        x = p.detach().reshape(a, b)
        buckets.setdefault((min(a, b), max(a, b)), []).append(x.mT if a > b else x)
    stacked = [torch.stack(v) for v in buckets.values()]
    mats = [x for v in buckets.values() for x in v]
    res = {}
    for hd in ("bf16", "fp32"):
        med = interleaved_medians({
            "batched": lambda hd=hd: [orthogonalize(X, hot_dtype=hd) for X in stacked],
            "per-matrix": lambda hd=hd: [orthogonalize(x, hot_dtype=hd) for x in mats],
        }, repeats=repeats)
        res[hd] = {"batched_ms": 1e3 * med["batched"], "per_matrix_ms": 1e3 * med["per-matrix"],
                   "speedup": med["per-matrix"] / med["batched"]}
    res["n_matrices"] = len(mats)
    res["n_batched_calls"] = len(stacked)
    return res


def bench_train_step(base, repeats, batch, tokens):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 64, tokens, generator=g)
    t = torch.rand(batch, generator=g)
    target = torch.randn(batch, 5, tokens, generator=g)
    fns = {}
    for name, make in {
        "AdamW": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3, foreach=True),
        "sf-normuon (bf16)": lambda m: FusionOpt(build_param_groups(m), lr=1e-3, hot_dtype="bf16"),
        "sf-normuon (fp32)": lambda m: FusionOpt(build_param_groups(m), lr=1e-3, hot_dtype="fp32"),
    }.items():
        m = copy.deepcopy(base)
        opt = make(m)

        def step(m=m, opt=opt):
            loss = torch.nn.functional.mse_loss(m(x, t), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        fns[name] = step
    med = interleaved_medians(fns, repeats=repeats, warmup=1)
    return {k: {"ms": 1e3 * v, "ratio_to_adamw": v / med["AdamW"]} for k, v in med.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and a smaller training batch")
    args = ap.parse_args()
    reps = 3 if args.quick else args.repeats
    base = make_head()
    n_params = sum(p.numel() for p in base.parameters())
    batch, tokens = (8, 256) if args.quick else (32, 256)
    steps = bench_steps(base, reps)
    spectral = bench_spectral(base, reps)
    ns = bench_ns_batching(base, reps)
    train = bench_train_step(base, max(3, reps // 2), batch, tokens)
    data = {"environment": environment(), "parameters": n_params, "repeats": reps,
            "optimizer_step": steps, "spectral_only": spectral, "ns_batching": ns,
            "train_step": {"batch": batch, "tokens": tokens, "results": train}}
    md = ["# Optimizer step on the control-head shapes", "",
          f"ControlHead dim 256, depth 4, {n_params:,} parameters; {environment()}", "",
          f"Command: `python benchmarks/optimizer_step.py{' --quick' if args.quick else ''}` "
          f"(median of {reps} interleaved repeats after warm-up).", "",
          "## Optimizer step only (fixed gradients)", "",
          md_table(["optimizer", "ms / step", "× AdamW"],
                   [[k, f"{v['ms']:.1f}", f"{v['ratio_to_adamw']:.2f}"] for k, v in steps.items()]), "",
          "## Spectral matrices only: FusionOpt `muon` vs torch.optim.Muon", "",
          md_table(["hot dtype", "FusionOpt muon ms", "torch.optim.Muon ms"],
                   [[hd, f"{spectral[hd]['FusionOpt muon']:.1f}", f"{spectral[hd].get('torch.optim.Muon', float('nan')):.1f}"]
                    for hd in ("bf16", "fp32")]), "",
          f"Speed-up over torch.optim.Muon (both bf16): **{spectral['speedup_vs_torch_muon_bf16']:.2f}×**", "",
          f"## Newton–Schulz: batched ({ns['n_batched_calls']} calls) vs per-matrix ({ns['n_matrices']} calls)", "",
          md_table(["hot dtype", "batched ms", "per-matrix ms", "speed-up"],
                   [[hd, f"{ns[hd]['batched_ms']:.1f}", f"{ns[hd]['per_matrix_ms']:.1f}", f"{ns[hd]['speedup']:.2f}×"]
                    for hd in ("bf16", "fp32")]), "",
          f"## Whole training step (forward + backward + step), batch {batch} × {tokens} tokens", "",
          md_table(["optimizer", "ms / step", "× AdamW"],
                   [[k, f"{v['ms']:.0f}", f"{v['ratio_to_adamw']:.3f}"] for k, v in train.items()])]
    write_report("optimizer_step", data, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
