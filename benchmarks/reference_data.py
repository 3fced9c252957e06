"""Reference data: build cost, cache speed-up, and how well latent-domain controls track the targets.

Measures, on CPU:

1. **Build time** of a slice (``--pieces``, default 16) into a fresh temporary cache (wall and
   process CPU seconds; the CPU figure is what a quiet machine would take), then the cache load,
   warmed up once and repeated (median), and the cold/warm ratio. With ``--full`` it also builds
   the default configuration (200 pieces × 4 excerpts) once.
2. **Extractor fidelity**: :class:`fusion_infer.controls.features.ControlFeatureExtractor` applied
   to the standardised latents versus (a) the synthetic data's analytic ground truth and
   (b) the clean-audio targets, per channel: Pearson r, mean and max absolute error (dB).

Writes ``docs/benchmarks/reference_data.json`` and ``docs/benchmarks/reference_data.md``.

Usage:
    python benchmarks/reference_data.py            # slice of 16 pieces (a couple of minutes)
    python benchmarks/reference_data.py --full     # + the default 200-piece build
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fusion_infer.files import atomic_write
from fusion_train.data import ReferenceDataConfig, build_reference_data, synthetic_data

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


def _timed_build(config, cache_dir, workers):
    wall, cpu = time.perf_counter(), time.process_time()
    data = build_reference_data(config, cache_dir=cache_dir, progress=False, workers=workers)
    return data, time.perf_counter() - wall, time.process_time() - cpu


def _fidelity(features, reference, names, mask=None):
    rows = {}
    for c, name in enumerate(names):
        a, b = features[:, c], reference[:, c]
        if mask is not None:
            a, b = a[mask[:, c]], b[mask[:, c]]
        a, b = a.flatten().double(), b.flatten().double()
        err = (a - b).abs()
        rows[name] = {
            "pearson_r": float(torch.corrcoef(torch.stack([a, b]))[0, 1]),
            "mae_db": float(err.mean()),
            "max_abs_db": float(err.max()),
            "frames": int(a.numel()),
        }
    return rows


def _control_stats(data):
    c = data.controls
    return {
        name: {"mean": float(c[:, i].mean()), "std": float(c[:, i].std()), "min": float(c[:, i].min()),
               "max": float(c[:, i].max())}
        for i, name in enumerate(data.control_names)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pieces", type=int, default=16, help="pieces in the timed slice")
    parser.add_argument("--repeats", type=int, default=5, help="cache-load repeats (median)")
    parser.add_argument("--full", action="store_true", help="also build the default 200-piece config")
    parser.add_argument("--workers", type=int, default=1, help="render processes for the builds")
    args = parser.parse_args()
    torch.manual_seed(0)
    result: dict = {
        "machine": {"platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "workers": args.workers,
    }

    # 1. synthetic fidelity: the extractor against analytic ground truth and the audio targets
    synth = synthetic_data(64, frames=256, seed=0)
    features = synth.control_extractor()(synth.latents)
    truth = synth.extras["band_db_truth"]
    active = truth > -60.0
    names = list(synth.control_names)
    result["synthetic"] = {
        "n": len(synth),
        "extractor_vs_truth_active": _fidelity(features[:, :4], truth, names[:4], active),
        "audio_targets_vs_truth_active": _fidelity(synth.controls[:, :4], truth, names[:4], active),
        "extractor_vs_audio_targets": _fidelity(features, synth.controls, names),
    }

    # 2. slice: cold build, warm loads (warm-up once, then median), fidelity on real music
    with tempfile.TemporaryDirectory() as tmp:
        config = ReferenceDataConfig(n_pieces=args.pieces)
        data, wall, cpu = _timed_build(config, tmp, args.workers)
        _timed_build(config, tmp, 1)  # warm-up of the load path
        loads = [_timed_build(config, tmp, 1)[1] for _ in range(args.repeats)]
        load = statistics.median(loads)
        result["slice"] = {
            "config": config.to_dict(),
            "excerpts": len(data),
            "skipped": data.info["skipped"],
            "build_wall_s": round(wall, 2),
            "build_cpu_s": round(cpu, 2),
            "load_wall_s_median": round(load, 4),
            "cold_over_warm": round(wall / load, 1),
        }
    real = data.control_extractor()(data.latents)
    result["slice"]["extractor_vs_audio_targets"] = _fidelity(real, data.controls, names)
    result["slice"]["control_stats"] = _control_stats(data)

    if args.full:
        with tempfile.TemporaryDirectory() as tmp:
            config = ReferenceDataConfig()
            full, wall, cpu = _timed_build(config, tmp, args.workers)
            result["full"] = {
                "config": config.to_dict(),
                "excerpts": len(full),
                "train_excerpts": int(full.train_index.numel()),
                "val_excerpts": int(full.val_index.numel()),
                "skipped": len(full.info["skipped"]),
                "build_wall_s": round(wall, 1),
                "build_cpu_s": round(cpu, 1),
                "extractor_vs_audio_targets": _fidelity(
                    full.control_extractor()(full.latents), full.controls, names
                ),
                "control_stats": _control_stats(full),
            }

    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write(OUT / "reference_data.json", json.dumps(result, indent=1))
    atomic_write(OUT / "reference_data.md", _markdown(result))
    print(_markdown(result))


def _fidelity_table(title, rows):
    lines = [f"**{title}**", "", "| channel | Pearson r | MAE (dB) | max abs (dB) | frames |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['pearson_r']:.5f} | {r['mae_db']:.4f} | {r['max_abs_db']:.3f} | {r['frames']} |"
        )
    return lines + [""]


def _markdown(r):
    s = r["slice"]
    lines = [
        "# Reference data: build cost and control-feature fidelity",
        "",
        f"CPU: {r['machine']['platform']}, torch {r['machine']['torch']}, "
        f"{r['machine']['cpu_threads']} threads, render workers {r['workers']}. "
        "Produced by `python benchmarks/reference_data.py" + (" --full" if "full" in r else "") + "`.",
        "Wall times depend on machine load (the development box is shared); CPU seconds are the "
        "process's own CPU time.",
        "",
        "## Build and cache",
        "",
        "| build | excerpts | wall (s) | CPU (s) | cached load, median (s) | cold / warm |",
        "|---|---|---|---|---|---|",
        f"| slice, {s['config']['n_pieces']} pieces × {s['config']['excerpts_per_piece']} | "
        f"{s['excerpts']} | {s['build_wall_s']} | {s['build_cpu_s']} | {s['load_wall_s_median']} | "
        f"{s['cold_over_warm']}× |",
    ]
    if "full" in r:
        f = r["full"]
        lines.append(
            f"| default, {f['config']['n_pieces']} pieces × {f['config']['excerpts_per_piece']} | "
            f"{f['excerpts']} ({f['train_excerpts']} train / {f['val_excerpts']} val) | "
            f"{f['build_wall_s']} | {f['build_cpu_s']} | – | – |"
        )
    lines += ["", "## Latent-domain extractor vs targets", ""]
    syn = r["synthetic"]
    lines += _fidelity_table(
        f"Synthetic tones ({syn['n']} excerpts), extractor vs analytic truth, active frames (> −60 dB)",
        syn["extractor_vs_truth_active"],
    )
    lines += _fidelity_table(
        "Synthetic tones, clean-audio targets vs analytic truth, active frames",
        syn["audio_targets_vs_truth_active"],
    )
    lines += _fidelity_table(
        f"Real music, slice ({s['excerpts']} excerpts), extractor vs clean-audio targets, all frames",
        s["extractor_vs_audio_targets"],
    )
    if "full" in r:
        lines += _fidelity_table(
            f"Real music, default build ({r['full']['excerpts']} excerpts), extractor vs clean-audio targets",
            r["full"]["extractor_vs_audio_targets"],
        )
    stats = r["full"]["control_stats"] if "full" in r else s["control_stats"]
    lines += ["## Control targets on real music (spread)", "", "| channel | mean | std | min | max |",
              "|---|---|---|---|---|"]
    for name, st in stats.items():
        lines.append(f"| {name} | {st['mean']:.1f} | {st['std']:.1f} | {st['min']:.1f} | {st['max']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
