"""Everything that needs an accelerator, in one call of at most ~8 minutes.

Sections (each guarded: a failing section is recorded with its error and the rest still run;
each has a time budget and the whole run stops starting sections after ``--budget`` seconds):

1. ``dit_cache``: a DiT-XL/2 256² (32×32 latent, 28 layers, bf16, batch 2) 28-step render with
   and without the modulator cache (fusion_diffusers), median of interleaved repeats, and the
   cached render checked bit-equal to the uncached one.
2. ``offload``: modulator weight offload at FLUX.1 / SD3 / Qwen-Image shapes at reduced depth
   (builders of benchmarks/offload_memory.py): ``torch.cuda.max_memory_allocated`` of a render
   with and without offload, and the precompute overhead. Models the installed fusion_diffusers
   cannot cache are reported as unsupported, not faked.
3. ``newton_schulz``: fp16 vs bf16 vs fp32 ``orthogonalize`` on Gaussian, low-rank and
   large-norm (‖G‖_F ≫ 65504) matrices at head and DiT shapes: error of the singular values
   against fp64 SVD, non-finite or all-zero outputs (where, if anywhere, fp16 fails on NVIDIA),
   and the time per call; standard vs Gram backend.
4. ``optimizer_step``: the reference control head (dim 256, depth 4): FusionOpt defaults
   (``hot_dtype="auto"`` → bf16 on CUDA), Gram backend and ``compile=True`` vs torch AdamW (fused),
   torch.optim.Muon + AdamW; optimizer step only and a whole training step (batch 8 × 128).

Writes ``docs/benchmarks/gpu/gpu_suite.json`` and ``.md`` labelled with the device name.

    python benchmarks/gpu_suite.py                       # on a machine with CUDA
    python benchmarks/gpu_suite.py --dry-run             # CPU, tiny sizes, exercises every code path
                                                         # (writes to --out, default a temp dir)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import OUT_DIR, atomic_write, environment, md_table  # noqa: E402

from fusion_train import FusionOpt, build_param_groups, orthogonalize  # noqa: E402

GPU_OUT = OUT_DIR / "gpu"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def interleaved(fns: dict, repeats: int, device, warmup: int = 1) -> dict[str, float]:
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            times[k].append(_timed(f, device))
    return {k: statistics.median(v) for k, v in times.items()}


# ------------------------------------------------------------------ 1. DiT-XL/2 cache
def section_dit_cache(device, dtype, dry: bool) -> dict:
    from fusion_diffusers import apply_modulator_cache, remove_modulator_cache
    from offload_memory import _inputs, dit_xl

    layers, steps, repeats = (1, 2, 1) if dry else (28, 28, 3)
    torch.manual_seed(0)
    model = dit_xl(layers).to(device, dtype).eval()
    schedule = [_inputs("DiT-XL/2", 2, t, device, dtype) for t in torch.linspace(999, 20, steps).tolist()]

    def render():
        with torch.no_grad():
            return [model(**x).sample for x in schedule]

    ref = render()
    cache = apply_modulator_cache(model)
    cached = render()
    bit_equal = all(torch.equal(a, b) for a, b in zip(ref, cached))

    def uncached():
        with cache.disabled():
            render()

    med = interleaved({"uncached": uncached, "cached": render}, repeats, device)
    remove_modulator_cache(model)
    return {"layers": layers, "steps": steps, "batch": 2, "dtype": str(dtype), "bit_equal": bit_equal,
            "uncached_s": med["uncached"], "cached_s": med["cached"], "speedup": med["uncached"] / med["cached"]}


# ------------------------------------------------------------------ 2. offload memory
def section_offload(device, dtype, dry: bool) -> dict:
    import offload_memory as om

    names = ["DiT-XL/2"] if dry else ["FLUX.1-dev", "SD3-medium", "Qwen-Image"]
    out = {}
    for name in names:
        if name not in om.MODELS:
            out[name] = {"status": "unsupported: no builder in benchmarks/offload_memory.py / no family in fusion_diffusers"}
            continue
        try:
            out[name] = om.precompute_overhead(name, 2 if dry else 28, 1 if dry else 2, device, dtype)
        except Exception as exc:  # a family the installed fusion_diffusers refuses
            out[name] = {"status": f"error: {type(exc).__name__}: {exc}"}
    return out


# ------------------------------------------------------------------ 3. Newton–Schulz precision
def _matrices(shape, dry: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    m, n = shape
    low = torch.randn(m, 8, generator=g) @ torch.randn(8, n, generator=g)
    return {"gaussian": torch.randn(m, n, generator=g), "low-rank(8)": low,
            "large-norm (x1e4)": 1e4 * torch.randn(m, n, generator=g)}


def section_newton_schulz(device, dtype, dry: bool) -> dict:
    shapes = [(64, 192)] if dry else [(256, 1536), (1152, 4608), (3072, 12288)]
    rows = []
    for shape in shapes:
        for kind, G in _matrices(shape, dry).items():
            G = G.to(device)
            exact = torch.linalg.svdvals(G.double().cpu())
            rank = int((exact > exact[0] * 1e-6).sum())
            for hot in ("fp32", "bf16", "fp16"):
                for backend in ("standard", "gram"):
                    O = orthogonalize(G, hot_dtype=hot, backend=backend)
                    finite = bool(torch.isfinite(O).all())
                    s = torch.linalg.svdvals(O.double().cpu())[:rank] if finite else torch.tensor([float("nan")])
                    t = interleaved({"ns": lambda G=G, hot=hot, backend=backend: orthogonalize(G, hot_dtype=hot, backend=backend)},
                                    1 if dry else 5, device)["ns"]
                    rows.append({"shape": list(shape), "matrix": kind, "hot_dtype": hot, "backend": backend,
                                 "finite": finite, "all_zero": bool((O == 0).all()),
                                 "sv_min": float(s.min()), "sv_max": float(s.max()), "ms": 1e3 * t})
    return {"rows": rows}


# ------------------------------------------------------------------ 4. optimizer step
def section_optimizer(device, dtype, dry: bool) -> dict:
    from fusion_infer import ControlHead, ControlHeadConfig

    dim, depth, frames = (64, 1, 16) if dry else (256, 4, 128)
    torch.manual_seed(0)
    base = ControlHead(ControlHeadConfig(in_channels=64, out_channels=5, dim=dim, depth=depth, heads=8)).to(device)
    for p in base.parameters():
        if p.ndim >= 2:
            torch.nn.init.normal_(p, std=0.02)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 64, frames, generator=g).to(device)
    t = torch.rand(8, generator=g).to(device)
    target = torch.randn(8, 5, frames, generator=g).to(device)

    def spectral_split(m):
        groups = build_param_groups(m)
        return ([p for gr in groups if gr["group_type"] == "spectral" for p in gr["params"]],
                [p for gr in groups if gr["group_type"] == "scalar" for p in gr["params"]])

    class Pair:
        def __init__(self, *o):
            self.o = o

        def step(self):
            for o in self.o:
                o.step()

        def zero_grad(self, set_to_none=True):
            for o in self.o:
                o.zero_grad(set_to_none=set_to_none)

    makers = {
        "AdamW (fused)" if device.type == "cuda" else "AdamW (foreach)":
            lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3, **({"fused": True} if device.type == "cuda" else {"foreach": True})),
        "torch Muon + AdamW": lambda m: Pair(torch.optim.Muon(spectral_split(m)[0], lr=0.02),
                                             torch.optim.AdamW(spectral_split(m)[1], lr=1e-3)),
        "FusionOpt defaults": lambda m: FusionOpt(build_param_groups(m), lr=1e-3),
        "FusionOpt gram": lambda m: FusionOpt(build_param_groups(m), lr=1e-3, ns_backend="gram"),
        "FusionOpt compile": lambda m: FusionOpt(build_param_groups(m), lr=1e-3, compile=True),
    }
    step_fns, train_fns, resolved = {}, {}, None
    for name, make in makers.items():
        m = copy.deepcopy(base)
        opt = make(m)
        resolved = getattr(opt, "hot_dtype_resolved", resolved)
        for p in m.parameters():
            p.grad = 1e-3 * torch.randn_like(p)
        step_fns[name] = opt.step
        m2 = copy.deepcopy(base)
        opt2 = make(m2)

        def train_step(m2=m2, opt2=opt2):
            loss = torch.nn.functional.mse_loss(m2(x, t), target)
            opt2.zero_grad(set_to_none=True)
            loss.backward()
            opt2.step()

        train_fns[name] = train_step
    reps = 1 if dry else 7
    steps = interleaved(step_fns, reps, device, warmup=2)
    train = interleaved(train_fns, reps, device, warmup=2)
    ref = next(iter(steps))
    return {"dim": dim, "depth": depth, "frames": frames, "hot_dtype_resolved": resolved,
            "step_ms": {k: 1e3 * v for k, v in steps.items()},
            "step_ratio": {k: v / steps[ref] for k, v in steps.items()},
            "train_ms": {k: 1e3 * v for k, v in train.items()},
            "train_ratio": {k: v / train[ref] for k, v in train.items()}}


SECTIONS = {"dit_cache": section_dit_cache, "offload": section_offload,
            "newton_schulz": section_newton_schulz, "optimizer_step": section_optimizer}


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores)"


def markdown(data: dict) -> str:
    lines = [f"# GPU suite on {data['device_label']}", "",
             f"{'DRY RUN (CPU, tiny sizes; numbers are not measurements of anything)' if data['dry_run'] else ''}",
             f"Environment: {data['environment']}; total {data['seconds']:.0f} s; loadavg {data['loadavg']}.", "",
             "Command: `python benchmarks/gpu_suite.py" + (" --dry-run" if data["dry_run"] else "") + "`", ""]
    for name, sec in data["sections"].items():
        lines += [f"## {name} ({sec.get('seconds', 0):.0f} s)", ""]
        if "error" in sec:
            lines += [f"error: `{sec['error']}`", ""]
            continue
        r = sec["result"]
        if name == "newton_schulz":
            lines.append(md_table(["shape", "matrix", "dtype", "backend", "finite", "all zero", "σ min", "σ max", "ms"],
                                  [[tuple(x["shape"]), x["matrix"], x["hot_dtype"], x["backend"], x["finite"], x["all_zero"],
                                    f"{x['sv_min']:.3f}", f"{x['sv_max']:.3f}", f"{x['ms']:.2f}"] for x in r["rows"]]))
        elif name == "optimizer_step":
            lines.append(f"hot_dtype resolved: {r['hot_dtype_resolved']}")
            lines.append("")
            lines.append(md_table(["optimizer", "step ms", "× AdamW", "train step ms", "× AdamW"],
                                  [[k, f"{r['step_ms'][k]:.2f}", f"{r['step_ratio'][k]:.2f}", f"{r['train_ms'][k]:.2f}",
                                    f"{r['train_ratio'][k]:.2f}"] for k in r["step_ms"]]))
        else:
            lines.append("```json\n" + json.dumps(r, indent=1, default=str) + "\n```")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: check that every section runs")
    ap.add_argument("--out", type=Path, help="output folder (default docs/benchmarks/gpu, or a temp dir with --dry-run)")
    ap.add_argument("--budget", type=float, help="start no section after this many seconds "
                    "(default 450 on a GPU; none with --dry-run, which must exercise every section)")
    ap.add_argument("--sections", nargs="*", choices=list(SECTIONS), default=list(SECTIONS))
    args = ap.parse_args(argv)
    if args.dry_run:
        device, dtype = torch.device("cpu"), torch.float32
    else:
        if not torch.cuda.is_available():
            raise SystemExit("error: no CUDA device; run with --dry-run to check the script on a CPU")
        device, dtype = torch.device("cuda"), torch.bfloat16
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="gpu_suite_")) if args.dry_run else GPU_OUT)
    budget = args.budget if args.budget is not None else (float("inf") if args.dry_run else 450.0)
    t0 = time.perf_counter()
    data = {"device_label": device_label(device), "dry_run": args.dry_run, "environment": environment(),
            "sections": {}}
    data["environment"]["device"] = str(device)
    for name in args.sections:
        if time.perf_counter() - t0 > budget:
            data["sections"][name] = {"error": f"skipped: budget of {budget:.0f} s used up", "seconds": 0.0}
            continue
        ts = time.perf_counter()
        try:
            data["sections"][name] = {"result": SECTIONS[name](device, dtype, args.dry_run)}
        except Exception as exc:
            data["sections"][name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        data["sections"][name]["seconds"] = time.perf_counter() - ts
        print(f"{name}: {data['sections'][name]['seconds']:.1f} s {'ERROR' if 'error' in data['sections'][name] else 'ok'}",
              flush=True)
    data["seconds"] = time.perf_counter() - t0
    data["loadavg"] = os.getloadavg()
    atomic_write(out_dir / "gpu_suite.json", json.dumps(data, indent=2, default=str) + "\n")
    atomic_write(out_dir / "gpu_suite.md", markdown(data) + "\n")
    print(f"wrote {out_dir / 'gpu_suite.json'} and .md")
    return data


if __name__ == "__main__":
    main()
