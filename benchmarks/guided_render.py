"""Benchmark: guided rendering with control heads, with and without the modulator cache.

Uses the `make demo` models (trained or loaded from the user cache by ``examples/demo.py``):

1. ``render`` — wall time of a full 40-step selective-TFG render (``N_iter = 4``, the head at
   ``t_curr`` and 4× at ``t = 0`` on every guided step; window σ ∈ [0, 1], i.e. all steps) at
   batch 1 and 4, three arms A/B interleaved in one process after a warm-up, medians of the
   repeats: uncached (``cache=False``), cached with a fresh cache per render (``cache=True``:
   includes attaching and warming), cached with caches reused across renders (steady state).
   Every arm's latents are checked bit-identical to the uncached ones (``torch.equal``).
2. ``control_error`` — closed-loop loudness error (dB, re-measured from the generated latent)
   unguided vs guided over ≥ 8 seeds, for the demo's guidance settings, Euler and ping-pong.

Run:  .venv/bin/python benchmarks/guided_render.py                  (CPU, ~10 min on 2 busy cores)
      .venv/bin/python benchmarks/guided_render.py --device cuda
Writes docs/benchmarks/guided_render.json and .md (atomically).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from _report import environment, interleaved_medians, md_table, write_report  # noqa: E402
from demo import DemoSettings, guidance_for, load_data, trained_models  # noqa: E402

from fusion_infer import (  # noqa: E402
    RenderCaches,
    compare_errors,
    control_error,
    loudness_extractor,
    rf_sigmas,
    rising_pause_falling,
    sample,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--cache-dir", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    env = environment() | {"device": str(device), "load_average_start": os.getloadavg()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)

    settings = DemoSettings(steps=args.steps)
    data = load_data(settings, args.cache_dir)
    base, head, stats, where = trained_models(settings, data, args.cache_dir)
    base, head = base.to(device), head.to(device)
    frames = data.latents.shape[-1]
    target_db = rising_pause_falling(frames, stats["p10"], stats["p90"])
    sigmas = rf_sigmas(args.steps)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # ------------------------------------------------------------------ 1. render time
    timing_settings = replace(settings, window=(0.0, 1.0), rho=1.0)  # every step guided, both terms
    tfg = guidance_for(head, target_db.to(device), stats, timing_settings)
    render_rows, render_data = [], []
    for batch in args.batches:
        noise = torch.randn(batch, 64, frames, generator=torch.Generator().manual_seed(batch)).to(device)
        reused = RenderCaches()
        outs: dict[str, torch.Tensor] = {}

        def arm(name: str, cache, noise=noise, outs=outs):
            def run() -> None:
                gen = torch.Generator(device=device).manual_seed(7)
                outs[name] = sample(base, noise, sigmas, guidance=tfg, cache=cache, generator=gen).latents
                sync()

            return run

        med = interleaved_medians(
            {"uncached": arm("uncached", False), "cached_fresh": arm("cached_fresh", True),
             "cached_reused": arm("cached_reused", reused)},
            repeats=args.repeats, warmup=1,
        )
        identical = all(torch.equal(outs[k], outs["uncached"]) for k in ("cached_fresh", "cached_reused"))
        head_calls = sample(base, noise, rf_sigmas(2), guidance=tfg, cache=False).head_calls * args.steps // 2
        render_data.append({"batch": batch, "seconds": med, "bit_identical": identical, "head_calls": head_calls})
        render_rows.append([
            batch, f"{med['uncached']:.2f}", f"{med['cached_fresh']:.2f}", f"{med['cached_reused']:.2f}",
            f"{med['uncached'] / med['cached_fresh']:.3f}×", f"{med['uncached'] / med['cached_reused']:.3f}×",
            identical,
        ])
        print(render_rows[-1], flush=True)

    # ------------------------------------------------------------------ 2. control error
    extractor = loudness_extractor(data.spec, data.latent_mean, data.latent_std).to(device)
    noise = torch.randn(args.seeds, 64, frames, generator=torch.Generator().manual_seed(0)).to(device)
    err_rows, err_data = [], []
    for sampler in ("euler", "pingpong"):
        s = replace(settings, sampler=sampler)
        tfg = guidance_for(head, target_db.to(device), stats, s)
        outs = {}
        for name, g in (("unguided", None), ("guided", tfg)):
            gen = torch.Generator(device=device).manual_seed(1234)
            x = sample(base, noise, sigmas, sampler=sampler, guidance=g, cache=True, generator=gen).latents
            with torch.no_grad():
                outs[name] = control_error(extractor(x)[:, :1], target_db.to(device)[None]).cpu().tolist()
        r = compare_errors(outs["unguided"], outs["guided"])
        err_data.append({"sampler": sampler, "per_seed": outs, "summary": r})
        err_rows.append([
            sampler, r["n"], f"{r['unguided']['mean']:.2f} ± {r['unguided']['std']:.2f}",
            f"{r['guided']['mean']:.2f} ± {r['guided']['std']:.2f}", f"{statistics.median(outs['guided']):.2f}",
            f"{r['ratio_of_means']:.3f}", f"{r['improved']}/{r['n']}",
        ])
        print(err_rows[-1], flush=True)

    env["load_average_end"] = os.getloadavg()
    cfg = {
        "steps": args.steps, "n_iter": settings.n_iter, "gamma": settings.gamma, "mu": settings.mu,
        "rho_timing": timing_settings.rho, "rho_error": settings.rho, "window_error": settings.window,
        "models": where, "base_params": sum(p.numel() for p in base.parameters()),
        "head_params": sum(p.numel() for p in head.parameters()),
    }
    md = [
        "# Guided rendering with control heads (`benchmarks/guided_render.py`)",
        "",
        f"Device: **{env['device']}**{' (' + env['gpu'] + ')' if 'gpu' in env else ''}, torch {env['torch']}, "
        f"{env['cpu_threads']} thread(s), load average at start {tuple(round(v, 1) for v in env['load_average_start'])} "
        "(shared, heavily loaded machine: absolute times are inflated; ratios are A/B interleaved in one process). "
        f"Models: the `make demo` base DiT ({cfg['base_params']:,} params) and loudness head "
        f"({cfg['head_params']:,} params), [64, 256] latents, {args.steps} Euler steps, N_iter = {settings.n_iter}.",
        "",
        "## Render time, cache vs no cache (every step guided, ρ and μ on; medians of "
        f"{args.repeats} interleaved repeats after a warm-up)",
        "",
        md_table(
            ["batch", "uncached s", "cached (fresh per render) s", "cached (reused) s",
             "speed-up fresh", "speed-up reused", "bit-identical"],
            render_rows,
        ),
        "",
        f"Head calls per render: {render_data[0]['head_calls']} (each a forward + backward w.r.t. x); "
        f"base-model calls: {args.steps}.",
        "",
        f"## Closed-loop loudness error, unguided vs guided ({args.seeds} seeds, dB, re-measured from the latent)",
        "",
        f"Guidance: μ = {settings.mu}, ρ = {settings.rho}, γ = {settings.gamma}, window σ ∈ {settings.window}, "
        "target rising–pause–falling between the data's 10th and 90th loudness percentiles.",
        "",
        md_table(["sampler", "seeds", "unguided mean ± std", "guided mean ± std", "guided median",
                  "guided / unguided", "improved seeds"], err_rows),
    ]
    write_report(
        "guided_render",
        {"environment": env, "config": cfg, "render": render_data, "control_error": err_data,
         "finished": time.strftime("%Y-%m-%d %H:%M:%S")},
        "\n".join(md),
    )


if __name__ == "__main__":
    main()
