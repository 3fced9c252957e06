"""Benchmark: optimizer quality on a workload nobody here designed for — scikit-learn's bundled
8×8 digits (1797 images, no download), a small MLP and a small CNN (conv kernels on the spectral
path, flattened to ``(out, in·kh·kw)``).

Protocol (the same as benchmarks/head_quality.py):
  * recipes: AdamW (torch), FusionOpt ``muon``, ``sf-normuon`` (the default), ``full``, and the MONA
    audit — ``muon+mona`` with α = −1/(2(1−β_a)) (−20, the reimplementations' "paper" default),
    α = 0 (MONA off: plain Muon through the same code path) and α = +1/(2(1−β_a)) (+20, the
    extrapolating sign of Adan/NAG gradient-difference forms);
  * a learning-rate sweep on seed 0 over a ×2 grid, **widened** (one more ×2 step at that end)
    until every recipe's best value is interior or a hard limit is reached; the edge hits are
    reported;
  * the best lr then runs on every seed; results at equal steps (mean ± std of the final
    validation error rate and cross-entropy over seeds) and at equal wall clock (each recipe gets
    AdamW's median wall time);
  * runs interleaved across recipes (seed-major) so machine load hits all alike; loadavg printed.

    python benchmarks/digits_quality.py                # full protocol: 1000 steps, 3 seeds
    python benchmarks/digits_quality.py --reduced      # CPU-share run: 150 steps, 2 seeds, smaller sweep

Writes docs/benchmarks/digits_quality.json/.md. Needs ``scikit-learn`` (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import environment, md_table, write_report  # noqa: E402
from _sweep import add_centre_argument, non_negative_int, parse_centres, positive_int  # noqa: E402

from fusion_train import FusionOpt, build_param_groups  # noqa: E402

MONA_BETA = 0.975
RECIPES = {
    "adamw": None,
    "muon": dict(recipe="muon"),
    "sf-normuon": dict(recipe="sf-normuon"),
    "full": dict(recipe="full"),
    "mona α=-20": dict(recipe="muon+mona", mona_alpha=-1 / (2 * (1 - MONA_BETA))),
    "mona α=0": dict(recipe="muon+mona", mona_alpha=0.0),
    "mona α=+20": dict(recipe="muon+mona", mona_alpha=+1 / (2 * (1 - MONA_BETA))),
}
BASE_LR = {"adamw": 3e-3, "muon": 1e-2, "sf-normuon": 1e-2, "full": 1e-2,
           "mona α=-20": 1e-2, "mona α=0": 1e-2, "mona α=+20": 1e-2}
FULL = dict(steps=1000, seeds=3, batch=64, grid=(0.25, 0.5, 1.0, 2.0, 4.0), max_widen=3, eval_every=100,
            recipes=tuple(RECIPES))
# What fits a ~30 min share of a loaded 2-core machine: fewer steps, 2 seeds, a 3-point grid widened
# once, and no "full" recipe (its KL-Shampoo step is the slowest); the report says so.
REDUCED = dict(steps=150, seeds=2, batch=64, grid=(0.5, 1.0, 2.0), max_widen=1, eval_every=50,
               recipes=("adamw", "muon", "sf-normuon", "mona α=-20", "mona α=0", "mona α=+20"))


def load_digits_tensors():
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no network

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    g = torch.Generator().manual_seed(1234)
    perm = torch.randperm(len(y), generator=g)
    x, y = x[perm], y[perm]
    n_val = 397
    mean, std = x[n_val:].mean(0), x[n_val:].std(0).clamp_min(1e-3)
    x = (x - mean) / std
    return (x[n_val:], y[n_val:]), (x[:n_val], y[:n_val])


class MLP(nn.Module):
    def __init__(self, width: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, width), nn.GELU(), nn.Linear(width, width), nn.GELU(),
                                 nn.Linear(width, width), nn.GELU(), nn.Linear(width, 10))

    def forward(self, x):
        return self.net(x)


class CNN(nn.Module):
    def __init__(self, ch: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, ch, 3, padding=1), nn.GELU(),
            nn.Conv2d(ch, ch, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(ch, 2 * ch, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * ch * 4, 128), nn.GELU(), nn.Linear(128, 10),
        )

    def forward(self, x):
        return self.net(x.view(-1, 1, 8, 8))


MODELS = {"mlp": MLP, "cnn": CNN}


def make_opt(name: str, model: nn.Module, lr: float):
    if RECIPES[name] is None:
        return torch.optim.AdamW(model.parameters(), lr=lr)
    return FusionOpt(build_param_groups(model), lr=lr, **RECIPES[name])  # all other defaults


@torch.no_grad()
def evaluate(model, opt, val) -> tuple[float, float]:
    if isinstance(opt, FusionOpt):
        opt.eval()
    model.eval()
    logits = model(val[0])
    ce = float(nn.functional.cross_entropy(logits, val[1]))
    err = float((logits.argmax(1) != val[1]).float().mean())
    model.train()
    if isinstance(opt, FusionOpt):
        opt.train()
    return err, ce


def run(arch: str, name: str, lr: float, seed: int, cfg: dict, data, max_seconds: float | None = None) -> dict:
    (xt, yt), val = data
    torch.manual_seed(seed)
    model = MODELS[arch]()
    opt = make_opt(name, model, lr)
    g = torch.Generator().manual_seed(10_000 + seed)
    t0 = time.perf_counter()
    train_s, steps, curve = 0.0, 0, []
    for step in range(1, cfg["steps"] + 1):
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            break
        ts = time.perf_counter()
        idx = torch.randint(0, len(yt), (cfg["batch"],), generator=g)
        loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        train_s += time.perf_counter() - ts
        steps = step
        if step % cfg["eval_every"] == 0:
            curve.append((step, *evaluate(model, opt, val)))
    err, ce = evaluate(model, opt, val)
    finite = math.isfinite(ce)
    return {"arch": arch, "recipe": name, "lr": lr, "seed": seed, "steps": steps, "val_err": err,
            "val_ce": ce if finite else math.inf, "diverged": not finite, "wall": time.perf_counter() - t0,
            "it_per_s": steps / max(train_s, 1e-9), "curve": curve}


def score(r: dict) -> float:
    return r["val_ce"] if not r["diverged"] else math.inf


def mean_std(v):
    v = [x for x in v if math.isfinite(x)]
    if not v:
        return math.nan, math.nan
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def sweep(arch: str, cfg: dict, data, names) -> tuple[dict, dict, dict]:
    """lr sweep on seed 0, widened at an edge until every recipe's best lr is interior."""
    grids = {n: [cfg["centre"][n] * m for m in cfg["grid"]] for n in names}
    results: dict[str, dict[float, dict]] = {n: {} for n in names}
    edge: dict[str, str] = {}
    for widen in range(cfg["max_widen"] + 1):
        todo = [(n, lr) for n in names for lr in grids[n] if lr not in results[n]]
        for lr_i in range(max((len(grids[n]) for n in names), default=0)):  # interleave recipes
            for n in names:
                if lr_i < len(grids[n]) and (n, grids[n][lr_i]) in todo:
                    r = run(arch, n, grids[n][lr_i], 0, cfg, data)
                    results[n][grids[n][lr_i]] = r
                    print(f"  [{arch}] {n:<11} lr={grids[n][lr_i]:.2e} err={r['val_err']:.3f} "
                          f"ce={r['val_ce']:.4f} {r['it_per_s']:.0f} it/s load={os.getloadavg()[0]:.1f}", flush=True)
        grow = False
        for n in names:
            lrs = sorted(results[n])
            best = min(lrs, key=lambda lr: score(results[n][lr]))
            if best == lrs[0] or best == lrs[-1]:
                side = "low" if best == lrs[0] else "high"
                edge[n] = side
                if widen < cfg["max_widen"]:
                    grids[n] = lrs + ([lrs[0] / 2] if side == "low" else [lrs[-1] * 2])
                    grow = True
            else:
                edge.pop(n, None)
        if not grow:
            break
    best_lr = {n: min(results[n], key=lambda lr: score(results[n][lr])) for n in names}
    return results, best_lr, edge


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reduced", action="store_true")
    ap.add_argument("--arch", choices=list(MODELS), action="append")
    ap.add_argument("--recipes", nargs="*", choices=list(RECIPES))
    ap.add_argument("--threads", type=positive_int, default=1)
    ap.add_argument("--max-widen", type=non_negative_int, help="override how many times a sweep may widen at an edge")
    add_centre_argument(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = dict(REDUCED if args.reduced else FULL)
    if args.max_widen is not None:
        cfg["max_widen"] = args.max_widen
    cfg["centre"] = parse_centres(ap, args.centre, BASE_LR)
    names = args.recipes or list(cfg["recipes"])
    archs = args.arch or list(MODELS)
    data = load_digits_tensors()
    load0 = os.getloadavg()
    print(f"digits: {len(data[0][1])} train / {len(data[1][1])} val; cfg={cfg}; loadavg={load0}", flush=True)
    out = {"environment": environment(), "config": cfg, "reduced": args.reduced, "recipes": names,
           "argv": list(sys.argv[1:] if argv is None else argv),
           "loadavg_start": load0, "archs": {}}
    for arch in archs:
        results, best_lr, edge = sweep(arch, cfg, data, names)
        seeds: dict[str, list[dict]] = {n: [results[n][best_lr[n]]] for n in names}
        for seed in range(1, cfg["seeds"]):
            for n in names:
                seeds[n].append(run(arch, n, best_lr[n], seed, cfg, data))
        budget = statistics.median(r["wall"] for r in seeds["adamw"]) if "adamw" in seeds else None
        timed = {}
        if budget is not None:
            for n in names:
                timed[n] = run(arch, n, best_lr[n], 0, dict(cfg, steps=10 * cfg["steps"]), data, max_seconds=budget)
        out["archs"][arch] = {
            "sweep": {n: {str(lr): {k: v for k, v in r.items() if k != "curve"} for lr, r in results[n].items()} for n in names},
            "best_lr": best_lr, "edge": edge, "seeds": seeds, "equal_time_budget_s": budget, "equal_time": timed,
        }
    out["loadavg_end"] = os.getloadavg()
    write_report("digits_quality" + ("_" + "_".join(archs) if args.arch else ""), out, markdown(out))


def centred(cfg: dict) -> str:
    moved = {n: lr for n, lr in cfg.get("centre", {}).items() if lr != BASE_LR[n]}
    return f" (sweep centred instead at {', '.join(f'{n} {lr:.3g}' for n, lr in moved.items())})" if moved else ""


def markdown(out: dict) -> str:
    cfg = out["config"]
    lines = [
        "# Optimizer quality on scikit-learn digits (MLP and CNN)",
        "",
        f"{'REDUCED run (CPU share): ' if out['reduced'] else ''}{cfg['steps']} steps, batch {cfg['batch']}, "
        f"{cfg['seeds']} seeds, lr grid ×{cfg['grid']} around each recipe's base lr"
        f"{centred(cfg)}, widened up to "
        f"{cfg['max_widen']} times at an edge. Validation: 397 held-out images, the averaged weights x for "
        "Schedule-Free recipes. FusionOpt with all defaults except the recipe (and MONA's α).",
        "",
        f"Environment: {out['environment']}; loadavg at start {tuple(round(v, 2) for v in out['loadavg_start'])}, "
        f"at end {tuple(round(v, 2) for v in out['loadavg_end'])} (machine shared with other jobs).",
        "",
        f"Command: `{shlex.join(['python', 'benchmarks/digits_quality.py', *out.get('argv', [])])}`",
    ]
    for arch, a in out["archs"].items():
        lines += ["", f"## {arch.upper()}", "", "### Equal steps (best lr per recipe; mean ± std over seeds)", ""]
        rows = []
        ref = mean_std([r["val_ce"] for r in a["seeds"].get("adamw", [])])[0]
        for n, rs in a["seeds"].items():
            ce, ce_s = mean_std([r["val_ce"] for r in rs])
            err, err_s = mean_std([r["val_err"] for r in rs])
            its = statistics.fmean(r["it_per_s"] for r in rs)
            edge = a["edge"].get(n, "")
            rows.append([n, f"{a['best_lr'][n]:.2e}" + (f" ({edge} edge)" if edge else ""),
                         f"{100 * err:.2f} ± {100 * err_s:.2f}", f"{ce:.4f} ± {ce_s:.4f}",
                         f"{100 * (ce / ref - 1):+.1f} %" if ref and math.isfinite(ref) else "–", f"{its:.0f}",
                         sum(r["diverged"] for r in rs)])
        lines.append(md_table(["recipe", "best lr", "val error %", "val CE", "Δ CE vs AdamW", "it/s", "diverged"], rows))
        if a["equal_time"]:
            lines += ["", f"### Equal wall clock ({a['equal_time_budget_s']:.1f} s each, seed 0)", ""]
            rows = [[n, r["steps"], f"{100 * r['val_err']:.2f}", f"{r['val_ce']:.4f}"] for n, r in a["equal_time"].items()]
            lines.append(md_table(["recipe", "steps done", "val error %", "val CE"], rows))
        lines += ["", "### lr sweep (seed 0, val CE)", ""]
        rows = [[n, ", ".join(f"{float(lr):.1e}: {r['val_ce']:.4f}" for lr, r in sorted(s.items(), key=lambda kv: float(kv[0])))]
                for n, s in a["sweep"].items()]
        lines.append(md_table(["recipe", "lr: val CE"], rows))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
