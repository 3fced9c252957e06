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

Run ``python examples/demo.py --help`` for the knobs. Timings are single renders measured in
this process (the A/B-interleaved measurement is ``benchmarks/guided_render.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
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


# ----------------------------------------------------------------------------- pieces
def load_data(settings: DemoSettings, cache_dir: Path | None) -> ReferenceData:
    """The reference-data slice (or its synthetic twin)."""
    if settings.synthetic:
        return synthetic_data(max(8, settings.pieces), frames=settings.synthetic_frames, seed=0)
    return build_reference_data(ReferenceDataConfig(n_pieces=settings.pieces), cache_dir=cache_dir, progress=False)


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
    pool = base_model_samples(base, settings.pool, latents.shape[-1])
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


def run_demo(settings: DemoSettings, out_dir: Path, cache_dir: Path | None = None, log=print) -> dict[str, Any]:
    """The whole demo; returns the summary it also writes to ``out_dir/guided_demo.json``."""
    t_start = time.perf_counter()
    data = load_data(settings, cache_dir)
    log(f"data: {data.latents.shape[0]} excerpts of {tuple(data.latents.shape[1:])} ({data.source})")
    base, head, stats, where = trained_models(settings, data, cache_dir, log)
    log(f"models: {where}")
    frames = data.latents.shape[-1]
    target_db = rising_pause_falling(frames, stats["p10"], stats["p90"])
    noise = torch.randn(settings.seeds, data.latents.shape[1], frames, generator=torch.Generator().manual_seed(0))
    tfg = guidance_for(head, target_db, stats, settings)

    unguided, t_unguided = render(base, noise, settings)
    guided_uncached, t_uncached = render(base, noise, settings, tfg, cache=False)
    guided_cached, t_cached = render(base, noise, settings, tfg, cache=True)
    identical = torch.equal(guided_cached, guided_uncached)
    identical_unguided = torch.equal(unguided, render(base, noise, settings, cache=False)[0])

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
        "control_error_db": {"unguided": err_u, "guided": err_g, "summary": errors},
        "render_seconds": {"unguided": t_unguided, "guided_uncached": t_uncached, "guided_cached": t_cached},
        "cache_speedup": t_uncached / t_cached,
        "bit_identical": {"guided": identical, "unguided": identical_unguided},
        "threads": torch.get_num_threads(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_path = out_dir / "guided_demo.png"
    plot_curves(plot_path, target_db, curve_u, curve_g, err_u, err_g)
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
    rows = [
        "| quantity | value |",
        "|---|---|",
        f"| loudness error, unguided (dB, mean ± std over {e['n']} seeds) | {e['unguided']['mean']:.2f} ± {e['unguided']['std']:.2f} |",
        f"| loudness error, guided (dB) | {e['guided']['mean']:.2f} ± {e['guided']['std']:.2f} |",
        f"| guided / unguided error | {e['ratio_of_means']:.2f} (lower on {e['improved']}/{e['n']} seeds) |",
        f"| render time, unguided ({s['steps']} steps, batch {s['seeds']}) | {r['unguided']:.2f} s |",
        f"| render time, guided, no cache | {r['guided_uncached']:.2f} s |",
        f"| render time, guided, cache | {r['guided_cached']:.2f} s |",
        f"| cache speed-up (uncached / cached) | {summary['cache_speedup']:.2f}× |",
        f"| cached == uncached, bit for bit (guided / unguided) | {summary['bit_identical']['guided']} / {summary['bit_identical']['unguided']} |",
    ]
    return "\n".join(rows)


def plot_curves(path: Path, target, curve_u, curve_g, err_u, err_g) -> None:
    """PNG: per seed, the target loudness and the re-measured unguided and guided curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = curve_u.shape[0]
    fig, axes = plt.subplots(n, 1, figsize=(8, 2.0 * n), sharex=True, squeeze=False)
    frames = torch.arange(target.shape[-1]) / 21.533
    for i, ax in enumerate(axes[:, 0]):
        ax.plot(frames, target, "k--", lw=1.5, label="target")
        ax.plot(frames, curve_u[i, 0], color="tab:gray", lw=1, label=f"unguided ({err_u[i]:.1f} dB)")
        ax.plot(frames, curve_g[i, 0], color="tab:red", lw=1, label=f"guided ({err_g[i]:.1f} dB)")
        ax.set_ylabel(f"seed {i}\nloudness dB")
        ax.legend(loc="lower center", fontsize=7, ncol=3)
    axes[-1, 0].set_xlabel("time (s)")
    fig.suptitle("Loudness re-measured from generated latents: target vs unguided vs guided")
    fig.tight_layout()
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
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    s = DemoSettings(seeds=args.seeds, steps=args.steps, sampler=args.sampler, mu=args.mu, rho=args.rho)
    run_demo(s, args.out_dir, args.cache_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
