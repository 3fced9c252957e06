"""`make demo`: a base DiT generates log-mel latents, a loudness control head steers them.

What it does, on CPU, from nothing:

1. builds a 16-piece slice of the music21 reference data (``fusion_train.data``);
2. trains — or loads from the user cache dir — a small rectified-flow base DiT and a LatCH-F
   loudness head with FusionOpt (``examples/demo_models.py``);
3. generates latents for several seeds without guidance and with selective TFG toward a
   rising–pause–falling loudness curve, with the modulator cache on and off;
4. re-measures the loudness of every generated latent with the deterministic extractor (the
   latent *is* a log-mel, so no vocoder is needed) and prints: control error unguided vs guided,
   render time with vs without the cache, and whether cached and uncached renders are
   bit-identical (``torch.equal``);
5. saves a PNG of target vs achieved curves and a JSON summary, and prints where.

Every long phase shows a progress bar (data build, training with ETA, renders). The cache
speed-up is the median of ``--repeats`` interleaved uncached/cached render pairs (after a warm-up
pair), printed with its min–max spread and the machine's load average: a single render pair on a
shared machine can land anywhere (``benchmarks/guided_render.py`` is the full measurement).

Run ``python examples/demo.py --help`` for the knobs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo_models import (  # noqa: E402  (examples/ is not a package)
    BASE_CONFIG,
    HEAD_CONFIG,
    TrainSettings,
    base_model_samples,
    load_checkpoint,
    save_checkpoint,
    settings_key,
    train_base_rectified_flow,
    train_loudness_head,
)

from fusion_infer import (  # noqa: E402
    HeadGuidance,
    SelectiveTFG,
    compare_errors,
    control_error,
    loudness_extractor,
    rf_sigmas,
    rising_pause_falling,
    sample,
)
from fusion_infer.files import atomic_write  # noqa: E402
from fusion_train.data import (  # noqa: E402
    ReferenceData,
    ReferenceDataConfig,
    build_reference_data,
    synthetic_data,
)
from fusion_train.data.cache import resolve_cache_root  # noqa: E402


@dataclass
class DemoSettings:
    """Everything the demo's result depends on (defaults: the `make demo` run)."""

    pieces: int = 16
    synthetic: bool = False  # the synthetic twin instead of music21 (tests)
    synthetic_frames: int = 256
    base: TrainSettings = field(default_factory=lambda: TrainSettings(steps=300, batch=16, lr=2e-3))
    head: TrainSettings = field(default_factory=lambda: TrainSettings(steps=300, batch=16, lr=1e-2))
    pool: int = 64  # base-model samples added to the head's training set
    steps: int = 40
    sampler: str = "euler"
    seeds: int = 4
    rho: float = 0.0
    mu: float = 50.0
    n_iter: int = 4
    gamma: float = 0.1
    window: tuple[float, float] = (0.2, 1.0)
    repeats: int = 3  # interleaved uncached/cached render pairs timed for the speed-up


# ----------------------------------------------------------------------------- pieces
def load_data(settings: DemoSettings, cache_dir: Path | None, progress: bool = False) -> ReferenceData:
    """The reference-data slice (or its synthetic twin)."""
    if settings.synthetic:
        return synthetic_data(max(8, settings.pieces), frames=settings.synthetic_frames, seed=0)
    return build_reference_data(ReferenceDataConfig(n_pieces=settings.pieces), cache_dir=cache_dir, progress=progress)


def loudness_stats(data: ReferenceData) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Train latents, their loudness ``[N, 1, T]`` in dB and its mean/std/10th/90th percentiles."""
    latents, _ = data.split("train")
    extractor = loudness_extractor(data.spec, data.latent_mean, data.latent_std)
    with torch.no_grad():
        loud = extractor(latents)[:, :1]
    stats = {
        "mean": float(loud.mean()),
        "std": float(loud.std()),
        "p10": float(loud.quantile(0.1)),
        "p90": float(loud.quantile(0.9)),
    }
    return latents, loud, stats


def trained_models(
    settings: DemoSettings, data: ReferenceData, cache_dir: Path | None, log=print
) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, float], str]:
    """Load the base model and loudness head from the cache, or train and cache them.

    Returns ``(base, head, loudness stats, where)``; ``where`` is "cache" or "trained".
    """
    latents, loud, stats = loudness_stats(data)
    digest = hashlib.sha256(latents.numpy().tobytes()).hexdigest()[:16]
    key = settings_key(
        base=BASE_CONFIG.to_dict(), head=HEAD_CONFIG.to_dict(), b=asdict(settings.base), h=asdict(settings.head),
        pool=settings.pool, data=digest, torch=torch.__version__,
    )
    folder = resolve_cache_root(cache_dir) / "demo_models" / key
    base_path, head_path = folder / "base.safetensors", folder / "loudness_head.safetensors"
    if base_path.exists() and head_path.exists():
        try:
            base, _ = load_checkpoint(base_path)
            head, meta = load_checkpoint(head_path)
            return base, head, meta["loudness"], "cache"
        except (ValueError, KeyError, RuntimeError) as exc:
            log(f"  cached checkpoints unusable ({exc}); retraining")
    log(f"training the base DiT ({settings.base.steps} steps) and the loudness head ({settings.head.steps} steps)")
    base, base_losses = train_base_rectified_flow(latents, settings.base, log)
    extractor = loudness_extractor(data.spec, data.latent_mean, data.latent_std)

    def standardised_loudness(x: torch.Tensor) -> torch.Tensor:
        return (extractor(x)[:, :1] - stats["mean"]) / stats["std"]

    # LatCH-B-style: the head also sees the base model's own (off-manifold) samples, labelled by
    # the exact extractor (demo_models.base_model_samples explains why).
    pool = base_model_samples(base, settings.pool, latents.shape[-1], progress=log is print)
    head, head_losses = train_loudness_head(
        torch.cat([latents, pool]), standardised_loudness, data.latent_std, settings.head, log
    )
    save_checkpoint(base_path, base, {"objective": "rectified_flow", "final_loss": base_losses[-1]})
    save_checkpoint(
        head_path,
        head,
        {"noise_schedule": "rectified_flow", "loss": "mse", "loudness": stats, "final_loss": head_losses[-1]},
    )
    return base, head, stats, "trained"


def guidance_for(head: torch.nn.Module, target_db: torch.Tensor, stats: dict[str, float], s: DemoSettings) -> SelectiveTFG:
    """Selective TFG toward ``target_db`` (the head predicts standardised loudness)."""
    target = ((target_db - stats["mean"]) / stats["std"])[None]
    term = HeadGuidance(head, target, rho=s.rho, mu=s.mu, window=s.window, loss="mse")
    return SelectiveTFG([term], n_iter=s.n_iter, gamma=s.gamma)


def render(base, noise, s: DemoSettings, guidance=None, cache=True) -> tuple[torch.Tensor, float]:
    """One render; returns the latents and its wall time in seconds."""
    t0 = time.perf_counter()
    out = sample(
        base, noise, rf_sigmas(s.steps), sampler=s.sampler, guidance=guidance, cache=cache,
        generator=torch.Generator().manual_seed(1234),
    )
    return out.latents, time.perf_counter() - t0


def timed_speedup(base, noise, s: DemoSettings, tfg, progress: bool) -> dict[str, Any]:
    """Median and spread of ``uncached / cached`` guided render time over ``s.repeats`` pairs.

    The pairs are interleaved and alternate which side goes first, so a slow phase of a shared
    machine hits both sides alike; the caller's first (bit-identity) pair is the warm-up.
    """
    from tqdm.auto import tqdm

    uncached, cached = [], []
    with tqdm(total=2 * s.repeats, desc="timing renders (cache off/on)", unit="render", disable=not progress) as bar:
        for i in range(s.repeats):
            for use_cache in ((False, True) if i % 2 == 0 else (True, False)):
                seconds = render(base, noise, s, tfg, cache=use_cache)[1]
                (cached if use_cache else uncached).append(seconds)
                bar.update(1)
    ratios = [u / c for u, c in zip(uncached, cached)]
    return {
        "median": statistics.median(ratios),
        "min": min(ratios),
        "max": max(ratios),
        "pairs": len(ratios),
        "uncached_seconds": uncached,
        "cached_seconds": cached,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def run_demo(
    settings: DemoSettings, out_dir: Path, cache_dir: Path | None = None, log=print, progress: bool = True
) -> dict[str, Any]:
    """The whole demo; returns the summary it also writes to ``out_dir/guided_demo.json``."""
    from tqdm.auto import tqdm

    if settings.repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {settings.repeats}")
    t_start = time.perf_counter()
    data = load_data(settings, cache_dir, progress=progress)
    log(f"data: {data.latents.shape[0]} excerpts of {tuple(data.latents.shape[1:])} ({data.source})"
        + (f", cached in {data.cache_folder}" if data.cache_folder else ""))
    base, head, stats, where = trained_models(settings, data, cache_dir, log if progress else (lambda _: None))
    log(f"models: {where}")
    frames = data.latents.shape[-1]
    target_db = rising_pause_falling(frames, stats["p10"], stats["p90"])
    noise = torch.randn(settings.seeds, data.latents.shape[1], frames, generator=torch.Generator().manual_seed(0))
    tfg = guidance_for(head, target_db, stats, settings)

    with tqdm(total=4, desc="rendering (unguided, guided off/on cache)", unit="render", disable=not progress) as bar:
        unguided, t_unguided = render(base, noise, settings)
        bar.update(1)
        guided_uncached, t_uncached = render(base, noise, settings, tfg, cache=False)
        bar.update(1)
        guided_cached, t_cached = render(base, noise, settings, tfg, cache=True)
        bar.update(1)
        identical = torch.equal(guided_cached, guided_uncached)
        identical_unguided = torch.equal(unguided, render(base, noise, settings, cache=False)[0])
        bar.update(1)
    speedup = timed_speedup(base, noise, settings, tfg, progress)

    extractor = loudness_extractor(data.spec, data.latent_mean, data.latent_std)
    with torch.no_grad():
        curve_u = extractor(unguided)[:, :1]
        curve_g = extractor(guided_cached)[:, :1]
    err_u = control_error(curve_u, target_db[None]).tolist()
    err_g = control_error(curve_g, target_db[None]).tolist()
    errors = compare_errors(err_u, err_g)
    summary = {
        "settings": asdict(settings),
        "models": where,
        "target": {"shape": "rising-pause-falling", "low_db": stats["p10"], "high_db": stats["p90"]},
        "control_error_db": {"metric": "mean absolute error over frames (dB)", "unguided": err_u, "guided": err_g,
                             "summary": errors},
        "render_seconds": {"unguided": t_unguided, "guided_uncached": statistics.median(speedup["uncached_seconds"]),
                           "guided_cached": statistics.median(speedup["cached_seconds"])},
        "cache_speedup": speedup,
        "bit_identical": {"guided": identical, "unguided": identical_unguided},
        "threads": torch.get_num_threads(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_path = out_dir / "guided_demo.png"
    to_db = (data.latent_std[:, None], data.latent_mean[:, None])
    plot_curves(plot_path, target_db, curve_u, curve_g, err_u, err_g,
                spectrograms=(unguided[0] * to_db[0] + to_db[1], guided_cached[0] * to_db[0] + to_db[1]),
                frame_rate=data.spec.frame_rate)
    json_path = out_dir / "guided_demo.json"
    _atomic_text(json_path, json.dumps(summary, indent=2))
    summary["files"] = {"plot": str(plot_path), "json": str(json_path)}
    summary["total_seconds"] = time.perf_counter() - t_start
    log("")
    log(format_table(summary))
    log(f"\nplot:    {plot_path}\nsummary: {json_path}\ntotal:   {summary['total_seconds']:.0f} s")
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """The demo's result table (markdown)."""
    e = summary["control_error_db"]["summary"]
    r = summary["render_seconds"]
    s = summary["settings"]
    sp = summary["cache_speedup"]
    load = sp.get("load_average")
    load_note = f"; load average {load[0]:.1f}" if load else ""
    rows = [
        "| quantity | value |",
        "|---|---|",
        f"| loudness mean absolute error, unguided (dB, mean ± std over {e['n']} seeds) | {e['unguided']['mean']:.2f} ± {e['unguided']['std']:.2f} |",
        f"| loudness mean absolute error, guided (dB) | {e['guided']['mean']:.2f} ± {e['guided']['std']:.2f} |",
        f"| guided / unguided error | {e['ratio_of_means']:.2f} (lower on {e['improved']}/{e['n']} seeds) |",
        f"| render time, unguided ({s['steps']} steps, batch {s['seeds']}) | {r['unguided']:.2f} s |",
        f"| render time, guided, no cache (median) | {r['guided_uncached']:.2f} s |",
        f"| render time, guided, cache (median) | {r['guided_cached']:.2f} s |",
        f"| cache speed-up (uncached / cached), median of {sp['pairs']} interleaved pairs | {sp['median']:.2f}× (range {sp['min']:.2f}–{sp['max']:.2f}×{load_note}) |",
        f"| cached == uncached, bit for bit (guided / unguided) | {summary['bit_identical']['guided']} / {summary['bit_identical']['unguided']} |",
    ]
    return "\n".join(rows)


def plot_curves(path: Path, target, curve_u, curve_g, err_u, err_g, spectrograms=None, frame_rate: float = 21.533) -> None:
    """PNG: per seed, the target loudness and the re-measured unguided and guided curves (one
    shared y-range); seed 0's unguided and guided log-mel spectrograms on one colour scale; and
    a summary panel of every seed's mean absolute error, unguided vs guided."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = curve_u.shape[0]
    rows = max(n, 3)
    fig = plt.figure(figsize=(12, 1.9 * rows + 0.6), constrained_layout=True)
    grid = fig.add_gridspec(rows, 2, width_ratios=(1.4, 1.0))
    seconds = torch.arange(target.shape[-1]) / frame_rate
    lo = float(min(target.min(), curve_u.min(), curve_g.min())) - 2.0
    hi = float(max(target.max(), curve_u.max(), curve_g.max())) + 2.0
    first = None
    for i in range(n):
        ax = fig.add_subplot(grid[i, 0], sharex=first, sharey=first)
        first = first or ax
        ax.plot(seconds, curve_u[i, 0], color="tab:gray", lw=1, label="unguided")
        ax.plot(seconds, curve_g[i, 0], color="tab:red", lw=1, label="guided")
        ax.plot(seconds, target, "k--", lw=1.5, label="target")
        ax.set_ylim(lo, hi + 0.12 * (hi - lo))  # headroom for the per-seed error line
        ax.set_ylabel(f"seed {i}\nloudness (dB)")
        ax.text(0.01, 0.97, f"mean absolute error: unguided {err_u[i]:.1f} dB, guided {err_g[i]:.1f} dB",
                transform=ax.transAxes, va="top", fontsize=8)
        if i == 0:  # one legend for all seed panels, above them (never over a curve)
            fig.legend(*ax.get_legend_handles_labels(), loc="outside upper left", ncol=3, fontsize=8)
        ax.grid(alpha=0.3)
        if i < n - 1:
            ax.tick_params(labelbottom=False)
        else:
            ax.set_xlabel("time (s)")
    right = [fig.add_subplot(grid[r, 1]) for r in range(3)]
    if spectrograms is not None:
        spec_u, spec_g = (x.detach().float() for x in spectrograms)
        vmin = float(torch.quantile(torch.cat([spec_u.flatten(), spec_g.flatten()]), 0.02))
        vmax = float(max(spec_u.max(), spec_g.max()))
        extent = (0.0, float(seconds[-1]), 0, spec_u.shape[0])
        for ax, spec, name in ((right[0], spec_u, "unguided"), (right[1], spec_g, "guided")):
            im = ax.imshow(spec, origin="lower", aspect="auto", extent=extent, vmin=vmin, vmax=vmax, cmap="magma")
            ax.set_title(f"seed 0, {name}: log-mel latent", fontsize=9)
            ax.set_ylabel("mel band")
        right[1].set_xlabel("time (s)")
        fig.colorbar(im, ax=right[:2], label="dB", shrink=0.9)
    ax = right[2]
    seeds = list(range(n))
    for i in seeds:
        ax.plot([0, 1], [err_u[i], err_g[i]], color="0.6", lw=1)
    ax.scatter([0] * n, err_u, color="tab:gray", zorder=3, label="unguided")
    ax.scatter([1] * n, err_g, color="tab:red", zorder=3, label="guided")
    ax.set_xticks([0, 1], ["unguided", "guided"])
    ax.set_xlim(-0.4, 1.4)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("loudness MAE (dB)")
    ax.set_title(f"mean absolute error per seed ({n} seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.suptitle("Loudness re-measured from generated latents: target vs unguided vs guided")
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)


def _atomic_text(path: Path, text: str) -> None:
    atomic_write(path, text + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", type=Path, default=Path("demo_output"), help="where the PNG/JSON go (default ./demo_output)")
    p.add_argument("--cache-dir", type=Path, default=None, help="cache root (default $FUSION_CACHE_DIR or ~/.cache/fusion)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: these models are tiny)")
    p.add_argument("--seeds", type=int, default=DemoSettings.seeds)
    p.add_argument("--steps", type=int, default=DemoSettings.steps)
    p.add_argument("--sampler", choices=("euler", "pingpong"), default=DemoSettings.sampler)
    p.add_argument("--mu", type=float, default=DemoSettings.mu, help="mean-guidance strength")
    p.add_argument("--rho", type=float, default=DemoSettings.rho, help="variance-guidance strength")
    p.add_argument("--repeats", type=int, default=DemoSettings.repeats,
                   help=f"interleaved uncached/cached render pairs timed (default {DemoSettings.repeats})")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be >= 1")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    torch.set_num_threads(args.threads)
    s = DemoSettings(seeds=args.seeds, steps=args.steps, sampler=args.sampler, mu=args.mu, rho=args.rho,
                     repeats=args.repeats)
    try:
        run_demo(s, args.out_dir, args.cache_dir, progress=not args.no_progress)
    except KeyboardInterrupt:
        print("\ndemo: interrupted; rendered pieces and trained models already cached are kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
