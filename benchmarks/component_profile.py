"""Per-component time share of a FusionOpt full-recipe step on control-head shapes, and the
full vs sf-normuon step-time ratio.

Shapes: a d=256, depth-4 control head. Per block qkv 768×256, attention out 256×256, MLP
1024×256 and 256×1024, adaLN 1536×256; plus the t-embedder's two 256×256 and the final adaLN
512×256 (spectral); biases, norms and small in/out projections on the scalar path. Gradients are
random (the optimizer's cost does not depend on their values).

Two measurements, both A/B interleaved in one process after warm-up, median of repeats
(benchmarks/_report.py):

1. whole ``FusionOpt.step()`` for ``recipe="sf-normuon"`` and ``recipe="full"`` with the given
   ``max_precond_dim`` values (the KL seed step is part of the warm-up: it is one-off);
2. each component of the full recipe called the way the optimizer calls it (same shapes, same
   functions): MONA, KL factor update, eigenbasis refresh amortised over
   ``precondition_frequency``, KL preconditioner apply, Newton–Schulz (batched per canonical
   shape), NorMuon row scaling, Schedule-Free averaging — eager, and compiled with ``--compile``.

Run:  .venv/bin/python benchmarks/component_profile.py [--repeats 5] [--compile] [--device cpu]
Writes docs/benchmarks/component_profile{,_<device>}.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _report import environment, interleaved_medians, md_table, write_report  # noqa: E402

from fusion_train import FusionOpt, orthogonalize  # noqa: E402
from fusion_train.optim.compilation import compile_pure  # noqa: E402
from fusion_train.optim.kl_shampoo import (  # noqa: E402
    KLShampooConfig,
    kl_shampoo_init_state,
    kl_shampoo_precondition,
    kl_shampoo_refresh_eigenbasis,
    kl_shampoo_update_state,
)
from fusion_train.optim.mona import mona_gated_step, mona_init_buffers  # noqa: E402
from fusion_train.optim.normuon import normuon_rows  # noqa: E402
from fusion_train.optim.schedule_free import sf_update_  # noqa: E402

DIM, DEPTH = 256, 4


def spectral_shapes() -> list[tuple[int, int]]:
    per_block = [(3 * DIM, DIM), (DIM, DIM), (4 * DIM, DIM), (DIM, 4 * DIM), (6 * DIM, DIM)]
    return per_block * DEPTH + [(DIM, DIM), (DIM, DIM), (2 * DIM, DIM)]


def scalar_shapes() -> list[tuple[int, ...]]:
    per_block = [(3 * DIM,), (DIM,), (4 * DIM,), (DIM,), (6 * DIM,), (DIM,), (DIM,)]
    return per_block * DEPTH + [(DIM, 64), (DIM,), (64, DIM), (64,), (DIM,), (DIM,), (2 * DIM,)]


def make_params(device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    spectral = [torch.nn.Parameter((torch.randn(s, generator=gen) * 0.02).to(device)) for s in spectral_shapes()]
    scalar = [torch.nn.Parameter((torch.randn(s, generator=gen) * 0.02).to(device)) for s in scalar_shapes()]
    grads = [torch.randn(p.shape, generator=gen).to(device) for p in spectral + scalar]
    return spectral, scalar, grads


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step_fn(opt: FusionOpt, params, grads, device):
    def run():
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        sync(device)

    return run


def whole_step(device: str, repeats: int, dims: list[int], compile_: bool) -> dict[str, float]:
    fns = {}
    for name, kw in [("sf-normuon", dict(recipe="sf-normuon"))] + [
        (f"full(max_precond_dim={d})", dict(recipe="full", max_precond_dim=d)) for d in dims
    ]:
        spectral, scalar, grads = make_params(device)
        groups = [{"params": spectral, "group_type": "spectral"}, {"params": scalar, "group_type": "scalar"}]
        opt = FusionOpt(groups, lr=1e-3, compile=compile_, **kw)
        fns[name] = step_fn(opt, spectral + scalar, grads, device)
        t0 = time.perf_counter()
        fns[name]()  # the KL seed step (one-off eigh per matrix) and compile happen here
        print(f"  {name}: first step {time.perf_counter() - t0:.1f} s", flush=True)
    # warm-up 2 more steps so every compiled graph (refresh flag included via frequency) exists
    return interleaved_medians(fns, repeats=repeats, warmup=1)


def components(device: str, repeats: int, max_precond_dim: int, compile_: bool) -> dict[str, float]:
    """Seconds per full-recipe step spent in each component, over all spectral matrices."""
    cfg = KLShampooConfig(max_precond_dim=max_precond_dim)
    gen = torch.Generator().manual_seed(1)
    shapes = spectral_shapes()
    grads = [torch.randn(s, generator=gen).to(device) for s in shapes]
    moms = [torch.randn(s, generator=gen).to(device) for s in shapes]
    # Timing does not depend on the values, so skip the one-off eigh seed (minutes for 1536² on a
    # loaded CPU): start from the initial state and do one update so every field is populated.
    kl = [kl_shampoo_init_state(g.shape, cfg, device=device) for g in grads]
    kl = [kl_shampoo_update_state(g, st, cfg, refresh=False) for g, st in zip(grads, kl)]
    mona = [(*mona_init_buffers(g), torch.ones((), device=device)) for g in grads]
    one = torch.ones((), device=device)
    buckets: dict[tuple[int, int], list[torch.Tensor]] = {}
    for m in moms:
        a, b = m.shape
        buckets.setdefault((min(a, b), max(a, b)), []).append(m.mT if a > b else m)
    stacks = [torch.stack(v) for v in buckets.values()]
    row_vars = [torch.zeros(s[0], device=device) for s in shapes]
    ys = [torch.randn(s, generator=gen).to(device) for s in shapes]
    zs = [y.clone() for y in ys]

    f_mona, f_update, f_refresh, f_pre, f_ns = (
        mona_gated_step, kl_shampoo_update_state, kl_shampoo_refresh_eigenbasis, kl_shampoo_precondition, orthogonalize,
    )
    if compile_:
        f_mona, f_update, f_refresh, f_pre, f_ns = (
            compile_pure(f, f.__name__) for f in (f_mona, f_update, f_refresh, f_pre, f_ns)
        )
    freq = cfg.precondition_frequency

    def wrap(fn):
        def run():
            fn()
            sync(device)

        return run

    fns = {
        "MONA": wrap(lambda: [f_mona(g, a, p, s, one, alpha=-20.0, beta=0.975) for g, (a, p, s) in zip(grads, mona)]),
        "KL factor update": wrap(lambda: [f_update(g, st, cfg, refresh=False) for g, st in zip(grads, kl)]),
        "eigen refresh (×1/freq)": wrap(lambda: [f_refresh(st) for st in kl]),
        "KL preconditioner apply": wrap(lambda: [f_pre(m, st, cfg) for m, st in zip(moms, kl)]),
        "Newton–Schulz": wrap(lambda: [f_ns(x) for x in stacks]),
        "NorMuon rows": wrap(lambda: [normuon_rows(o, v, beta2=0.95, eps=1e-8) for o, v in zip(moms, row_vars)]),
        "SF averaging": wrap(lambda: [sf_update_(y, z, g * 1e-3, 0.01, 0.9) for y, z, g in zip(ys, zs, grads)]),
    }
    t = interleaved_medians(fns, repeats=repeats, warmup=2)
    t["eigen refresh (×1/freq)"] /= freq
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="also profile torch.compile'd functions")
    ap.add_argument("--dims", default="2048,512", help="max_precond_dim values for the whole-step A/B")
    ap.add_argument("--step-dims", default=None, help="max_precond_dim values for the whole step (default: --dims)")
    args = ap.parse_args()
    step_dims = [int(d) for d in (args.step_dims or args.dims).split(",")]
    dims = [int(d) for d in args.dims.split(",")]
    env = environment() | {"device": args.device}
    if args.device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
    try:
        env["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    modes = [False, True] if args.compile else [False]
    data: dict = {"env": env, "repeats": args.repeats, "shapes": spectral_shapes(), "step": {}, "components": {}}
    for c in modes:
        label = "compiled" if c else "eager"
        for d in dims:  # cheap part first; the report is rewritten after each part
            print(f"components ({label}, max_precond_dim={d})", flush=True)
            data["components"][f"{label}, max_precond_dim={d}"] = components(args.device, args.repeats, d, c)
            report(args, env, data)
        print(f"whole step ({label})", flush=True)
        data["step"][label] = whole_step(args.device, args.repeats, step_dims, c)
        report(args, env, data)


def report(args, env: dict, data: dict) -> None:
    try:
        env["loadavg_end"] = os.getloadavg()
    except OSError:
        pass

    lines = [
        "# FusionOpt full-recipe component profile (control-head shapes)",
        "",
        f"`benchmarks/component_profile.py`; torch {env['torch']}, {args.device}"
        + (f" ({env['gpu']})" if "gpu" in env else f" ({env['machine']}, {env['cpu_threads']} threads)")
        + f"; d={DIM}, depth {DEPTH}: {len(spectral_shapes())} spectral matrices; median of "
        f"{args.repeats} interleaved rounds after warm-up. Load average "
        f"{env.get('loadavg_start', ('?',))[0]} → {env.get('loadavg_end', ('?',))[0]} "
        "(shared machine: absolute times are inflated, ratios less so).",
        "",
        "## Whole step: full vs sf-normuon",
        "",
    ]
    rows = []
    for label, t in data["step"].items():
        base = t["sf-normuon"]
        for name, v in t.items():
            rows.append([label, name, f"{v * 1e3:.1f}", f"{v / base:.2f}×"])
    lines.append(md_table(["mode", "recipe", "ms / step", "vs sf-normuon"], rows))
    data["ratios"] = {
        label: {name: v / t["sf-normuon"] for name, v in t.items()} for label, t in data["step"].items()
    }
    lines += ["", "Target: full ≤ 1.6× sf-normuon.", "", "## Components of a full-recipe step", ""]
    for key, t in data["components"].items():
        total = sum(t.values())
        lines += [f"### {key}", "", md_table(
            ["component", "ms / step", "share"],
            [[k, f"{v * 1e3:.1f}", f"{100 * v / total:.0f}%"] for k, v in t.items()]
            + [["**sum**", f"{total * 1e3:.1f}", "100%"]],
        ), ""]
    suffix = "" if args.device == "cpu" else "_" + args.device.replace(":", "")
    write_report("component_profile" + suffix, data, "\n".join(lines))
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
