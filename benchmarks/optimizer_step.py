"""Optimizer step cost on the reference control-head shapes (dim 256, depth 4, ~5 M parameters).

Measures, A/B interleaved in one process after warm-up (median of repeats), on 2 threads:
  1. optimizer step only (fixed gradients): FusionOpt sf-normuon with all defaults
     (``hot_dtype="auto"``), forced bf16 / fp32, the Gram Newton–Schulz backend, ``compile=True``;
     torch.optim.AdamW (foreach), schedulefree.AdamWScheduleFree, torch.optim.Muon + AdamW for the
     rest, pytorch_optimizer.NorMuon (+ its AdamW groups) — as ratios to AdamW;
  2. the spectral part alone: FusionOpt recipe "muon" vs torch.optim.Muon on the same matrices;
  3. batched vs per-matrix Newton–Schulz over the head's spectral matrices, standard vs Gram, and
     the matrix products alone (the arithmetic floor);
  4. a whole training step (forward + backward + step) of the reference head at batch 8 × 128
     frames: the same optimizers as 1, as ratios to AdamW (target: defaults ≤ 1.15×), and forward +
     backward alone, which with the matmul floor of 3 bounds what any Muon-type optimizer can reach.

The load average is printed and recorded: the machine may be shared.

    python benchmarks/optimizer_step.py [--repeats N] [--quick] [--no-compile]
"""

from __future__ import annotations

import argparse
import copy
import os

import torch
from _report import environment, interleaved_medians, md_table, write_report

from fusion_infer import ControlHead, ControlHeadConfig
from fusion_train import FusionOpt, build_param_groups, orthogonalize
from fusion_train.optim.hot_dtype import auto_hot_dtype, auto_hot_dtype_measurement


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

    def zero_grad(self, set_to_none: bool = True):
        for o in self.opts:
            o.zero_grad(set_to_none=set_to_none)


def fusion_variants(compile_: bool) -> dict:
    """FusionOpt configurations compared everywhere (name → constructor for a model)."""
    out = {
        "FusionOpt defaults (auto)": lambda m: FusionOpt(build_param_groups(m), lr=1e-3),
        "FusionOpt bf16": lambda m: FusionOpt(build_param_groups(m), lr=1e-3, hot_dtype="bf16"),
        "FusionOpt fp32": lambda m: FusionOpt(build_param_groups(m), lr=1e-3, hot_dtype="fp32"),
        "FusionOpt auto + gram": lambda m: FusionOpt(build_param_groups(m), lr=1e-3, ns_backend="gram"),
    }
    if compile_:
        out["FusionOpt auto + compile"] = lambda m: FusionOpt(build_param_groups(m), lr=1e-3, compile=True)
    return out


def peers() -> dict:
    import schedulefree
    from pytorch_optimizer import NorMuon

    def sf(m):
        o = schedulefree.AdamWScheduleFree(m.parameters(), lr=1e-3)
        o.train()
        return o

    def muon(m):
        spec, scal = split(m)
        return Pair(torch.optim.Muon(spec, lr=0.02), torch.optim.AdamW(scal, lr=1e-3, foreach=True))

    def normuon(m):
        spec, scal = split(m)
        return NorMuon([{"params": spec, "use_muon": True}, {"params": scal, "use_muon": False}], lr=0.02)

    return {
        "AdamW (torch, foreach)": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3, foreach=True),
        "AdamWScheduleFree (schedulefree)": sf,
        "torch Muon + AdamW": muon,
        "pytorch_optimizer NorMuon": normuon,
    }


def build_optimizers(base: ControlHead, compile_: bool) -> dict:
    out = {}

    def fresh():
        m = copy.deepcopy(base)
        with_grads(m)
        return m

    for name, make in {**peers(), **fusion_variants(compile_)}.items():
        m = fresh()
        out[name] = (m, make(m))
    return out


def bench_steps(base, repeats, compile_):
    opts = build_optimizers(base, compile_)
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


def ns_matmuls_only(stacked: list[torch.Tensor], steps: int = 5) -> None:
    """Only the matrix products of a 5-step Newton–Schulz on each batch (no normalisation, no
    casts, fixed coefficients): the arithmetic floor of any optimizer that orthogonalises these
    matrices every step in this dtype."""
    for X in stacked:
        tall = X.shape[-2] > X.shape[-1]
        for _ in range(steps):
            A = torch.bmm(X.mT, X) if tall else torch.bmm(X, X.mT)
            B = torch.baddbmm(A, A, A, beta=-4.7750, alpha=2.0315)
            X = torch.baddbmm(X, X, B, beta=3.4445) if tall else torch.baddbmm(X, B, X, beta=3.4445)


def bench_ns_batching(base, repeats):
    spec, _ = split(base)
    buckets: dict = {}
    for p in spec:  # batched per shape as stored, as FusionOpt does
        x = p.detach().reshape(p.shape[0], -1)
        buckets.setdefault(tuple(x.shape), []).append(x)
    stacked = [torch.stack(v) for v in buckets.values()]
    mats = [x for v in buckets.values() for x in v]
    res = {}
    for hd in ("bf16", "fp32"):
        dt = torch.bfloat16 if hd == "bf16" else torch.float32
        hot = [(X / torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True)).to(dt) for X in stacked]
        med = interleaved_medians({
            "batched": lambda hd=hd: [orthogonalize(X, hot_dtype=hd) for X in stacked],
            "batched gram": lambda hd=hd: [orthogonalize(X, hot_dtype=hd, backend="gram") for X in stacked],
            "per-matrix": lambda hd=hd: [orthogonalize(x, hot_dtype=hd) for x in mats],
            "matmuls only": lambda hot=hot: ns_matmuls_only(hot),
        }, repeats=repeats)
        res[hd] = {"batched_ms": 1e3 * med["batched"], "gram_ms": 1e3 * med["batched gram"],
                   "per_matrix_ms": 1e3 * med["per-matrix"], "speedup": med["per-matrix"] / med["batched"],
                   "gram_speedup": med["batched"] / med["batched gram"], "matmuls_only_ms": 1e3 * med["matmuls only"]}
    res["n_matrices"] = len(mats)
    res["n_batched_calls"] = len(stacked)
    return res


def bench_train_step(base, repeats, batch, frames, compile_):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 64, frames, generator=g)
    t = torch.rand(batch, generator=g)
    target = torch.randn(batch, 5, frames, generator=g)
    fb_model = copy.deepcopy(base)

    def forward_backward(m=fb_model):
        loss = torch.nn.functional.mse_loss(m(x, t), target)
        m.zero_grad(set_to_none=True)
        loss.backward()

    fns = {"forward + backward only (no step)": forward_backward}
    for name, make in {**peers(), **fusion_variants(compile_)}.items():
        m = copy.deepcopy(base)
        opt = make(m)

        def step(m=m, opt=opt):
            loss = torch.nn.functional.mse_loss(m(x, t), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        fns[name] = step
    med = interleaved_medians(fns, repeats=repeats, warmup=2)
    ref = med["AdamW (torch, foreach)"]
    return {k: {"ms": 1e3 * v, "ratio_to_adamw": v / ref} for k, v in med.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--no-compile", action="store_true", help="leave out the compile=True variant")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reps = 3 if args.quick else args.repeats
    compile_ = not args.no_compile
    base = make_head()
    n_params = sum(p.numel() for p in base.parameters())
    batch, frames = 8, 128
    load0 = os.getloadavg()
    auto = auto_hot_dtype("cpu")  # the one decision every FusionOpt in this process uses
    bf16_speedup = auto_hot_dtype_measurement("cpu")
    print(f"loadavg {load0}; bf16 NS speed-up {bf16_speedup:.2f}x -> auto = {auto}", flush=True)
    train = bench_train_step(base, max(3, reps), batch, frames, compile_)
    print("train step done", flush=True)
    steps = bench_steps(base, reps, compile_)
    spectral = bench_spectral(base, reps)
    ns = bench_ns_batching(base, reps)
    load1 = os.getloadavg()
    data = {"environment": environment(), "parameters": n_params, "repeats": reps, "threads": args.threads,
            "loadavg_start": load0, "loadavg_end": load1,
            "auto_hot_dtype": {"cpu": auto, "measured_bf16_speedup": bf16_speedup},
            "optimizer_step": steps, "spectral_only": spectral, "ns_batching": ns,
            "train_step": {"batch": batch, "frames": frames, "results": train}}
    target = train["FusionOpt defaults (auto)"]["ratio_to_adamw"]
    # The floor of any optimizer that orthogonalises every spectral matrix every step in bf16:
    # forward + backward + the Newton–Schulz matmuls alone, over AdamW's whole step.
    fb = train["forward + backward only (no step)"]["ms"]
    floor = (fb + ns["bf16"]["matmuls_only_ms"]) / train["AdamW (torch, foreach)"]["ms"]
    data["floor"] = {"forward_backward_ms": fb, "ns_matmuls_bf16_ms": ns["bf16"]["matmuls_only_ms"],
                     "ratio_to_adamw": floor}
    md = ["# Optimizer step on the control-head shapes", "",
          f"ControlHead dim 256, depth 4, {n_params:,} parameters; {environment()}; {args.threads} threads.", "",
          f"Load average at start {tuple(round(v, 2) for v in load0)}, at end {tuple(round(v, 2) for v in load1)} "
          "(ratios are measured side by side, interleaved, so load changes hit every optimizer alike; absolute "
          "times depend on the load).", "",
          f"`hot_dtype=\"auto\"` on this CPU: bf16 Newton–Schulz measured {bf16_speedup:.2f}× fp32 → **{auto}**.", "",
          f"Command: `python benchmarks/optimizer_step.py{' --quick' if args.quick else ''}"
          f"{' --no-compile' if not compile_ else ''}` (median of {reps} interleaved repeats after warm-up).", "",
          f"## Whole training step (forward + backward + step), batch {batch} × {frames} frames", "",
          md_table(["optimizer", "ms / step", "× AdamW"],
                   [[k, f"{v['ms']:.0f}", f"{v['ratio_to_adamw']:.3f}"] for k, v in train.items()]), "",
          f"Target: defaults ≤ 1.15× AdamW. Measured: **{target:.2f}×**"
          f" ({'met' if target <= 1.15 else 'not met'}).", "",
          f"Floor for any optimizer that orthogonalises all {ns['n_matrices']} spectral matrices every step in bf16 "
          f"on this machine: forward + backward ({fb:.0f} ms) + the Newton–Schulz matrix products alone "
          f"({ns['bf16']['matmuls_only_ms']:.1f} ms, nothing else) = **{floor:.2f}×** AdamW's whole step.", "",
          "## Optimizer step only (fixed gradients)", "",
          md_table(["optimizer", "ms / step", "× AdamW"],
                   [[k, f"{v['ms']:.1f}", f"{v['ratio_to_adamw']:.2f}"] for k, v in steps.items()]), "",
          "## Spectral matrices only: FusionOpt `muon` vs torch.optim.Muon", "",
          md_table(["hot dtype", "FusionOpt muon ms", "torch.optim.Muon ms"],
                   [[hd, f"{spectral[hd]['FusionOpt muon']:.1f}", f"{spectral[hd].get('torch.optim.Muon', float('nan')):.1f}"]
                    for hd in ("bf16", "fp32")]), "",
          f"Speed-up over torch.optim.Muon (both bf16): **{spectral['speedup_vs_torch_muon_bf16']:.2f}×**", "",
          f"## Newton–Schulz: batched ({ns['n_batched_calls']} calls) vs per-matrix ({ns['n_matrices']} calls), standard vs Gram", "",
          md_table(["hot dtype", "batched ms", "batched Gram ms", "per-matrix ms", "matmuls only ms",
                    "batching speed-up", "Gram speed-up"],
                   [[hd, f"{ns[hd]['batched_ms']:.1f}", f"{ns[hd]['gram_ms']:.1f}", f"{ns[hd]['per_matrix_ms']:.1f}",
                     f"{ns[hd]['matmuls_only_ms']:.1f}", f"{ns[hd]['speedup']:.2f}×", f"{ns[hd]['gram_speedup']:.2f}×"]
                    for hd in ("bf16", "fp32")])]
    write_report("optimizer_step", data, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
