"""Benchmark: TimeConditioningCache on the LatCH guidance access pattern.

Pattern (LatCH's selective TFG, arXiv 2603.04366): 40 sampler steps; per step one head call at
``t_curr`` and 4 mean-guidance calls at ``t = 0``; batch 1 and 4; T = 256; forward only
(``inference_mode``) and forward + backward w.r.t. the input (frozen head, grad mode).

Measured, each A/B interleaved in one process after a warm-up, medians reported:

1. ``render``   — per-call wall time uncached vs cached (steady state: cache warmed, as after
   the first render of a schedule) over a full 40-step render; ratio and projected render time.
2. ``modulator_path`` — the model's modulator step alone (``_resolve_modulators``: validation +
   lookup or computation) uncached vs cached → share of the modulator time the cache removes.
3. ``profile``  — torch.profiler over uncached calls: share of wall time inside the modulator path.
4. ``warm``     — ``cache.warm`` of 41 timesteps (one batched computation) vs 41 separate
   ``compute_modulators`` calls, and vs 41 separate single-timestep ``warm`` calls.
5. ``invalidation_cost`` — per-lookup weight check (fingerprint + tripwire), fingerprint only,
   and one bitwise probe.

Run:  .venv/bin/python benchmarks/head_cache.py            (CPU; ~10 min on 2 busy cores)
      .venv/bin/python benchmarks/head_cache.py --device cuda
Writes docs/benchmarks/head_cache.json and docs/benchmarks/head_cache.md (atomically).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from _report import atomic_write  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from fusion_infer import ControlHead, ControlHeadConfig, TimeConditioningCache

ROOT = Path(__file__).resolve().parents[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def guidance_ts(steps: int) -> list[torch.Tensor]:
    sched = torch.linspace(1.0, 1.0 / steps, steps)
    out = []
    for t in sched:
        out.append(t.clone())
        out.extend(torch.tensor(0.0) for _ in range(4))
    return out


def one_call(head, x0, t, backward: bool, device) -> float:
    sync(device)
    start = time.perf_counter()
    if backward:
        x = x0.clone().requires_grad_(True)
        y = head(x, t)
        torch.autograd.grad(y.square().sum(), x)
    else:
        with torch.inference_mode():
            head(x0, t)
    sync(device)
    return time.perf_counter() - start


def bench_render(head_u, head_c, cache, args, device) -> list[dict]:
    rows = []
    ts = [t.to(device) for t in guidance_ts(args.steps)]
    for batch in args.batches:
        x0 = torch.randn(batch, head_u.config.in_channels, args.seq_len, device=device)
        for backward in (False, True):
            for _ in range(args.warmup):  # warm-up: allocator, kernels, cache rows
                one_call(head_u, x0, ts[0], backward, device)
                one_call(head_c, x0, ts[0], backward, device)
            sync(device)
            t0 = time.perf_counter()
            with cache.render():  # render boundary: the probe's cost is part of the cached render
                pass
            probe_s = time.perf_counter() - t0
            tu, tc = [], []
            for i, t in enumerate(ts):
                order = ((head_u, tu), (head_c, tc)) if i % 2 == 0 else ((head_c, tc), (head_u, tu))
                for head, sink in order:
                    sink.append(one_call(head, x0, t, backward, device))
            mu, mc = statistics.median(tu), statistics.median(tc)
            pair = statistics.median(c / u for u, c in zip(tu, tc))
            rows.append(
                {
                    "batch": batch,
                    "mode": "fwd+bwd(x)" if backward else "fwd",
                    "calls_per_render": len(ts),
                    "uncached_call_ms": mu * 1e3,
                    "cached_call_ms": mc * 1e3,
                    "ratio_cached_over_uncached": mc / mu,
                    "median_pair_ratio": pair,
                    "uncached_render_s": sum(tu),
                    "cached_render_s": sum(tc) + probe_s,
                    "render_probe_ms": probe_s * 1e3,
                }
            )
            print(f"render   batch={batch} {rows[-1]['mode']:>10}: uncached {mu*1e3:8.2f} ms/call, "
                  f"cached {mc*1e3:8.2f} ms/call, ratio {mc/mu:.3f}", flush=True)
    return rows


def bench_modulator_path(head_u, head_c, args, device) -> list[dict]:
    rows = []
    ts = [t.to(device) for t in guidance_ts(args.steps)]
    for batch in args.batches:
        for _ in range(args.warmup):
            head_u._resolve_modulators(ts[0], None, batch)
            head_c._resolve_modulators(ts[0], None, batch)
        tu, tc = [], []
        for i, t in enumerate(ts):
            order = ((head_u, tu), (head_c, tc)) if i % 2 == 0 else ((head_c, tc), (head_u, tu))
            for head, sink in order:
                sync(device)
                s = time.perf_counter()
                head._resolve_modulators(t, None, batch)
                sync(device)
                sink.append(time.perf_counter() - s)
        mu, mc = statistics.median(tu), statistics.median(tc)
        rows.append(
            {
                "batch": batch,
                "uncached_us": mu * 1e6,
                "cached_us": mc * 1e6,
                "removed_fraction": 1.0 - mc / mu,
            }
        )
        print(f"mod path batch={batch}: uncached {mu*1e6:8.1f} us, cached {mc*1e6:8.1f} us, "
              f"removed {1 - mc/mu:.1%}", flush=True)
    return rows


def bench_profile(head_u, args, device) -> list[dict]:
    rows = []
    label = "fusion_infer.modulator_path"
    orig = head_u._resolve_modulators

    def wrapped(*a, **k):
        with torch.profiler.record_function(label):
            return orig(*a, **k)

    head_u._resolve_modulators = wrapped
    ts = [t.to(device) for t in guidance_ts(args.steps)][: 5 * args.profile_steps]
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    try:
        for batch in args.batches:
            x0 = torch.randn(batch, head_u.config.in_channels, args.seq_len, device=device)
            one_call(head_u, x0, ts[0], False, device)
            with torch.profiler.profile(activities=activities) as prof:
                sync(device)
                s = time.perf_counter()
                for t in ts:
                    one_call(head_u, x0, t, False, device)
                sync(device)
                wall = time.perf_counter() - s
            ev = [e for e in prof.key_averages() if e.key == label]
            mod_us = ev[0].cpu_time_total if ev else float("nan")
            rows.append(
                {
                    "batch": batch,
                    "calls": len(ts),
                    "wall_ms": wall * 1e3,
                    "modulator_path_ms": mod_us / 1e3,
                    "modulator_share": (mod_us / 1e6) / wall,
                }
            )
            print(f"profile  batch={batch}: modulator path {rows[-1]['modulator_share']:.2%} of "
                  f"uncached fwd wall time", flush=True)
    finally:
        del head_u._resolve_modulators
    return rows


def bench_warm(head_u, args, device) -> dict:
    ts41 = torch.linspace(1.0, 0.0, 41, device=device)
    singles = [ts41[i : i + 1] for i in range(41)]

    def batched():
        TimeConditioningCache(head_u, max_entries=64).warm(ts41)

    def separate_compute():
        for t in singles:
            head_u.compute_modulators(t)

    def separate_warm():
        c = TimeConditioningCache(head_u, max_entries=64)
        for t in singles:
            c.warm(t)

    fns = {"batched_warm": batched, "separate_compute": separate_compute, "separate_warm": separate_warm}
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for _ in range(args.warmup):
            for f in fns.values():
                f()
        for r in range(args.warm_repeats):
            names = list(fns) if r % 2 == 0 else list(reversed(fns))
            for name in names:
                sync(device)
                s = time.perf_counter()
                fns[name]()
                sync(device)
                times[name].append(time.perf_counter() - s)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "timesteps": 41,
        "modulator_rows_per_chunk": head_u.config.modulator_rows,
        **{f"{k}_ms": v * 1e3 for k, v in med.items()},
        "speedup_vs_separate_compute": med["separate_compute"] / med["batched_warm"],
        "speedup_vs_separate_warm": med["separate_warm"] / med["batched_warm"],
    }
    print(f"warm 41: batched {med['batched_warm']*1e3:.2f} ms, separate compute "
          f"{med['separate_compute']*1e3:.2f} ms ({out['speedup_vs_separate_compute']:.2f}x), "
          f"separate warm {med['separate_warm']*1e3:.2f} ms ({out['speedup_vs_separate_warm']:.2f}x)",
          flush=True)
    return out


def bench_invalidation(head_c, cache, args, device) -> dict:
    params = head_c.modulator_parameters()
    no_trip = TimeConditioningCache(head_c, samples_per_tensor=0, probe_every=None)
    no_trip.warm([0.0])
    cache.warm([0.0])
    fns = {
        "validate_fingerprint_and_tripwire": lambda: cache.core.validate(params),
        "validate_fingerprint_only": lambda: no_trip.core.validate(params),
        "bitwise_probe": cache.core.run_probe,
    }
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for r in range(args.micro_repeats):
            for name in (list(fns) if r % 2 == 0 else list(reversed(fns))):
                sync(device)
                s = time.perf_counter()
                for _ in range(20):
                    fns[name]()
                sync(device)
                times[name].append((time.perf_counter() - s) / 20)
    out = {f"{k}_us": statistics.median(v) * 1e6 for k, v in times.items()}
    out["watched_tensors"] = len(params)
    out["tripwire_samples_per_tensor"] = cache.core.watcher.samples_per_tensor
    print("invalidation: " + ", ".join(f"{k} {v:.1f}" for k, v in out.items()), flush=True)
    return out


def to_markdown(res: dict) -> str:
    m = res["meta"]
    lines = [
        "# TimeConditioningCache on the guidance access pattern (`benchmarks/head_cache.py`)",
        "",
        f"Device: **{m['device_name']}**, torch {m['torch']}, {m['threads']} thread(s), "
        f"load average at start {m['loadavg']}. Head: {m['params']/1e6:.2f} M parameters "
        f"(dim {m['config']['dim']}, depth {m['config']['depth']}), T = {m['seq_len']}, "
        f"{m['steps']} steps × (1 call at t_curr + 4 at t = 0). A/B interleaved per call, "
        "warm-up first, medians. Cached = steady state (cache warmed, as after the first render).",
        "",
        "## Per-call wall time",
        "",
        "| batch | mode | uncached ms/call | cached ms/call | cached/uncached | median pair ratio | uncached render s | cached render s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["render"]:
        lines.append(
            f"| {r['batch']} | {r['mode']} | {r['uncached_call_ms']:.2f} | {r['cached_call_ms']:.2f} | "
            f"{r['ratio_cached_over_uncached']:.3f} | {r['median_pair_ratio']:.3f} | "
            f"{r['uncached_render_s']:.2f} | {r['cached_render_s']:.2f} |"
        )
    lines += [
        "",
        "## Modulator path (validation + lookup vs. computation), per call",
        "",
        "| batch | uncached µs | cached µs | removed | target ≥ 90 % |",
        "|---|---|---|---|---|",
    ]
    for r in res["modulator_path"]:
        ok = "met" if r["removed_fraction"] >= 0.9 else "**missed**"
        lines.append(f"| {r['batch']} | {r['uncached_us']:.1f} | {r['cached_us']:.1f} | "
                     f"{r['removed_fraction']:.1%} | {ok} |")
    lines += [
        "",
        "## Profile: uncached modulator-path share of forward wall time (torch.profiler)",
        "",
        "| batch | calls | wall ms | modulator path ms | share |",
        "|---|---|---|---|---|",
    ]
    for r in res["profile"]:
        lines.append(f"| {r['batch']} | {r['calls']} | {r['wall_ms']:.1f} | "
                     f"{r['modulator_path_ms']:.2f} | {r['modulator_share']:.2%} |")
    w = res["warm"]
    ok = "met" if w["speedup_vs_separate_compute"] >= 3 else "**missed**"
    lines += [
        "",
        "## Batched warm of 41 timesteps",
        "",
        "| batched `warm(41)` ms | 41 × `compute_modulators` ms | speed-up (target ≥ 3×) | 41 × `warm([t])` ms | speed-up |",
        "|---|---|---|---|---|",
        f"| {w['batched_warm_ms']:.2f} | {w['separate_compute_ms']:.2f} | "
        f"{w['speedup_vs_separate_compute']:.2f}× ({ok}) | {w['separate_warm_ms']:.2f} | "
        f"{w['speedup_vs_separate_warm']:.2f}× |",
        "",
        "## Never-stale machinery, per lookup",
        "",
        "| fingerprint + tripwire µs | fingerprint only µs | one bitwise probe µs | watched tensors |",
        "|---|---|---|---|",
    ]
    iv = res["invalidation_cost"]
    lines.append(
        f"| {iv['validate_fingerprint_and_tripwire_us']:.1f} | {iv['validate_fingerprint_only_us']:.1f} | "
        f"{iv['bitwise_probe_us']:.1f} | {iv['watched_tensors']} |"
    )
    lines += ["", f"Command: `{m['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on shared machines)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--warm-repeats", type=int, default=9)
    p.add_argument("--micro-repeats", type=int, default=15)
    p.add_argument("--profile-steps", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    p.add_argument("--tag", default="", help="suffix for the output names (e.g. _h100)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ControlHeadConfig(in_channels=64, out_channels=4)
    head_u = ControlHead(cfg)
    with torch.no_grad():  # random weights: zero-initialised adaLN layers would be unrepresentative
        for prm in head_u.parameters():
            prm.normal_(0.0, 0.02)
    head_u = head_u.to(device).requires_grad_(False)
    head_c = copy.deepcopy(head_u)
    cache = TimeConditioningCache(head_c, max_entries=256).attach()
    cache.warm(torch.cat([torch.linspace(1.0, 1.0 / args.steps, args.steps), torch.zeros(1)]).to(device))

    res = {
        "meta": {
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "params": sum(q.numel() for q in head_u.parameters()),
            "config": cfg.to_dict(),
            "seq_len": args.seq_len,
            "steps": args.steps,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
        }
    }
    res["warm"] = bench_warm(head_u, args, device)
    res["invalidation_cost"] = bench_invalidation(head_c, cache, args, device)
    res["modulator_path"] = bench_modulator_path(head_u, head_c, args, device)
    res["profile"] = bench_profile(head_u, args, device)
    res["render"] = bench_render(head_u, head_c, cache, args, device)
    res["cache_stats"] = cache.stats.as_dict()
    res["targets"] = {
        "warm_speedup_ge_3x": res["warm"]["speedup_vs_separate_compute"] >= 3.0,
        "modulator_time_removed_ge_90pct": all(r["removed_fraction"] >= 0.9 for r in res["modulator_path"]),
    }
    name = f"head_cache{args.tag}"
    atomic_write(args.out / f"{name}.json", json.dumps(res, indent=2, default=str) + "\n")
    atomic_write(args.out / f"{name}.md", to_markdown(res))
    print(f"wrote {args.out / (name + '.json')} and .md; targets: {res['targets']}")
    return res


if __name__ == "__main__":
    main()
