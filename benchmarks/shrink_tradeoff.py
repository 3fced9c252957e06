"""Depth vs width shrink of a control head: quality, parameters, FLOPs, inference time.

On the reference head task (music21 reference data, LatCH-F head, ``train_head``):
train a depth-6 parent, derive

* depth 4 (uniform), depth 4 (importance), depth 3 (importance),
* width ½ (importance: heads and MLP units), depth 4 (importance) + width ¾ (importance),

and evaluate each **zero-shot** (shrunk, no training), **fine-tuned** (task loss only,
``distill(..., output_weight=0)``) and **distilled** (task + output KD from the parent,
``distill(...)``), all for the same number of steps with the same loop. A "parent, continued"
row trains the parent itself for those extra steps (task loss only), so the children are compared
with an equally-trained parent. Reported: validation median MAE (dB,
``val/median_mae`` at the last validation), Δ vs the parent, parameters, FLOPs per forward
(:func:`fusion_infer.shrink.count_cost`), and the inference time of one forward relative to the
parent (A/B interleaved in this process after warm-up, median of repeats, ``mods=None`` uncached).

Full design: ``python benchmarks/shrink_tradeoff.py`` (d256/depth 6, default reference data,
2000 parent steps, 500 per child). The reduced configuration (``--reduced``) shrinks width, frames,
data and steps so it finishes in about 20 minutes on a loaded 2-core CPU; the JSON records exactly
what ran. Writes ``docs/benchmarks/shrink_tradeoff.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from _report import OUT_DIR, environment, interleaved_medians, md_table, write_report

from fusion_infer import ControlHeadConfig
from fusion_infer.files import atomic_write
from fusion_infer.noise_schedules import get_noise_schedule
from fusion_infer.shrink import block_importance, count_cost, shrink_depth, shrink_width
from fusion_train.data import ReferenceDataConfig, build_reference_data
from fusion_train.training.distill import distill
from fusion_train.training.loop import (
    DEFAULT_LR,
    HeadTrainConfig,
    ValidationSet,
    t_grid,
    train_head,
    validate_head,
)

FULL = dict(
    data=dict(), dim=256, heads=8, freq_dim=256, parent_steps=2000, child_steps=500, batch=16,
    val_seeds=(0, 1), val_t_buckets=10, lr=None, timing_batch=4, timing_repeats=15,
)
REDUCED = dict(
    data=dict(n_pieces=40, excerpts_per_piece=4, frames=64), dim=64, heads=4, freq_dim=64,
    parent_steps=400, child_steps=120, batch=16, val_seeds=(0,), val_t_buckets=4, lr=None,
    timing_batch=4, timing_repeats=15,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reduced", action="store_true", help="the reduced CPU configuration")
    ap.add_argument("--parent-steps", type=int)
    ap.add_argument("--child-steps", type=int)
    ap.add_argument("--dim", type=int)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = ap.parse_args()
    cfg = dict(REDUCED if args.reduced else FULL)
    for k in ("parent_steps", "child_steps", "dim"):
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    # One intra-op thread: on the shared, oversubscribed 2-core box two threads made a training
    # step ~10x slower (0.3 s vs 3-4 s measured for the reduced head) through contention.
    torch.set_num_threads(args.threads)
    if cfg["lr"] is None:  # record the learning rate that actually runs
        cfg["lr"] = DEFAULT_LR["sf-normuon"]
    t_start = time.perf_counter()
    torch.manual_seed(0)

    data = build_reference_data(ReferenceDataConfig(**cfg["data"]), progress=False)
    frames = int(data.latents.shape[-1])
    print(f"data: {len(data)} excerpts ({data.cache_status}), {frames} frames")
    head_cfg = ControlHeadConfig(
        in_channels=data.latents.shape[1], out_channels=data.controls.shape[1], dim=cfg["dim"],
        depth=6, heads=cfg["heads"], freq_dim=cfg["freq_dim"],
    )
    common = dict(batch_size=cfg["batch"], val_seeds=tuple(cfg["val_seeds"]),
                  val_t_buckets=cfg["val_t_buckets"], progress=False, log_every=20)
    t0 = time.perf_counter()
    parent_res = train_head(
        HeadTrainConfig(recipe="sf-normuon", head=head_cfg, steps=cfg["parent_steps"],
                        val_every=cfg["parent_steps"], lr=cfg["lr"], **common),
        data,
    )
    parent = parent_res.model.eval()
    print(f"parent trained in {time.perf_counter() - t0:.0f}s")

    # Validation exactly as head training does it (same seeds and t-grid).
    schedule = get_noise_schedule("rectified_flow")
    x_val, y_val = data.split("val")
    val = ValidationSet(
        x_val, y_val, lambda o: o * data.control_std[None, :, None] + data.control_mean[None, :, None],
        tuple(cfg["val_seeds"]), t_grid(cfg["val_t_buckets"]), tuple(data.control_names),
    )

    def score(m) -> float:
        return validate_head(m, val, schedule, batch_size=32)["val/median_mae"]

    # Calibration: 16 training excerpts noised at random t, the training distribution.
    x_tr, _ = data.split("train")
    g = torch.Generator().manual_seed(123)
    idx = torch.randperm(x_tr.shape[0], generator=g)[:16]
    t_cal = torch.rand(16, generator=g)
    x_cal = schedule.add_noise(x_tr[idx], torch.randn(x_tr[idx].shape, generator=g), t_cal)
    cal = (x_cal, t_cal)
    imp = block_importance(parent, cal).tolist()
    print("block importance (output change when bypassed):", [f"{v:.4f}" for v in imp])

    def d4w34():
        return shrink_width(shrink_depth(parent, 4, strategy="importance", calibration=cal), 0.75,
                            calibration=cal)

    builders = {
        "depth 4 (uniform)": lambda: shrink_depth(parent, 4),
        "depth 4 (importance)": lambda: shrink_depth(parent, 4, strategy="importance", calibration=cal),
        "depth 3 (importance)": lambda: shrink_depth(parent, 3, strategy="importance", calibration=cal),
        "width 1/2 (importance)": lambda: shrink_width(parent, 0.5, calibration=cal),
        "depth 4 + width 3/4 (importance)": d4w34,
    }
    children = {name: b().eval() for name, b in builders.items()}
    parent_score = score(parent)
    rows: dict[str, dict] = {"parent": {"zero_shot": parent_score}}
    kd_common = dict(steps=cfg["child_steps"], val_every=cfg["child_steps"], lr=cfg["lr"], **common)

    t0 = time.perf_counter()
    cont = distill(copy.deepcopy(parent), parent, data, "sf-normuon", output_weight=0.0, **kd_common)
    rows["parent"]["fine_tuned"] = cont.history[-1]["val/median_mae"]
    print(f"parent continued: {rows['parent']['fine_tuned']:.3f} dB ({time.perf_counter() - t0:.0f}s)")
    for name, child in children.items():
        r = {"zero_shot": score(child)}
        ft = distill(copy.deepcopy(child), parent, data, "sf-normuon", output_weight=0.0, **kd_common)
        r["fine_tuned"] = ft.history[-1]["val/median_mae"]
        kd = distill(copy.deepcopy(child), parent, data, "sf-normuon", output_weight=1.0, **kd_common)
        r["distilled"] = kd.history[-1]["val/median_mae"]
        rows[name] = r
        print(name, {k: round(v, 3) for k, v in r.items()}, f"({time.perf_counter() - t_start:.0f}s total)")

    # Cost and timing (forward of `timing_batch` excerpts, uncached modulators, no grad).
    models = {"parent": parent, **children}
    x_time = x_val[: cfg["timing_batch"]].float()
    t_time = torch.rand(x_time.shape[0], generator=g)

    def fwd(m):
        def f():
            with torch.no_grad():
                m(x_time, t_time)
        return f

    medians = interleaved_medians({k: fwd(m) for k, m in models.items()}, repeats=cfg["timing_repeats"], warmup=3)
    table = []
    for name, m in models.items():
        c = count_cost(m, (x_time[:1], t_time[:1]))
        r = rows[name]
        r.update(
            params=c.total_params, flops=c.total_flops, depth=m.config.depth, heads=m.config.heads,
            mlp_hidden=m.config.mlp_hidden, time_s=medians[name],
        )
    p = rows["parent"]
    for name, r in rows.items():
        r["params_ratio"] = r["params"] / p["params"]
        r["flops_ratio"] = r["flops"] / p["flops"]
        r["time_ratio"] = r["time_s"] / p["time_s"]
        best = min(v for k, v in r.items() if k in ("fine_tuned", "distilled"))
        r["delta_best_vs_parent_pct"] = 100 * (best / p["fine_tuned"] - 1)
        table.append([
            name, f"{r['zero_shot']:.3f}", f"{r['fine_tuned']:.3f}",
            f"{r['distilled']:.3f}" if "distilled" in r else "–",
            f"{r['delta_best_vs_parent_pct']:+.1f} %", f"{r['params']:,} ({r['params_ratio']:.2f})",
            f"{r['flops'] / 1e6:.1f} M ({r['flops_ratio']:.2f})", f"{r['time_ratio']:.2f}",
        ])
    headers = ["model", "zero-shot MAE", "fine-tuned MAE", "distilled MAE", "best Δ vs parent (continued)",
               "params (ratio)", "FLOPs/forward (ratio)", "time ratio"]
    data_info = dict(n_excerpts=len(data), frames=frames, cache=data.cache_status, config=cfg["data"])
    out = dict(environment=environment(), config={**cfg, "reduced": args.reduced, "threads": args.threads}, data=data_info,
               parent_config=head_cfg.to_dict(), block_importance=imp, results=rows,
               seconds=time.perf_counter() - t_start)
    png = plot(rows, OUT_DIR / "shrink_tradeoff.png")
    md = [
        "# Shrink trade-off: depth vs width",
        "",
        f"Configuration: {'reduced' if args.reduced else 'full'} — parent ControlHead dim {cfg['dim']}, depth 6, "
        f"heads {cfg['heads']}; data {len(data)} excerpts × {frames} frames ({cfg['data'] or 'default'}); "
        f"parent {cfg['parent_steps']} steps, every child {cfg['child_steps']} steps (sf-normuon, lr {cfg['lr']}, batch "
        f"{cfg['batch']}); validation median MAE in dB over {len(cfg['val_seeds'])} noise seed(s) × "
        f"{cfg['val_t_buckets']} t-buckets. Timing: forward of {cfg['timing_batch']} × {frames} frames, "
        f"{cfg['timing_repeats']} interleaved repeats, median, on a shared 2-core CPU under heavy load. "
        f"Run time {out['seconds'] / 60:.1f} min.",
        "",
        md_table(headers, table),
        "",
        f"Parent block importance (output change when bypassed): {', '.join(f'{v:.4f}' for v in imp)}.",
        "",
        f"![quality vs cost]({png.name})",
        "",
        "What this says about depth vs width: see "
        "`docs/shrink.md`, section *Measured trade-off*.",
    ]
    write_report("shrink_tradeoff", out, "\n".join(md))


def plot(rows: dict, path):
    """Two panels: every point (zero-shot included), and a zoom on the trained children."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    kinds = (("zero_shot", "x", "C0"), ("fine_tuned", "o", "C1"), ("distilled", "s", "C2"))
    for ax, shown in ((axes[0], kinds), (axes[1], kinds[1:])):
        for kind, marker, color in shown:
            xs = [r["flops_ratio"] for r in rows.values() if kind in r]
            ys = [r[kind] for r in rows.values() if kind in r]
            ax.scatter(xs, ys, marker=marker, color=color, label=kind.replace("_", "-"))
        ax.axhline(rows["parent"]["fine_tuned"], color="grey", lw=0.8, ls="--", label="parent (continued)")
        ax.set_xlabel("FLOPs per forward / parent")
        ax.set_ylabel("validation median MAE (dB, lower is better)")
    for i, (name, r) in enumerate(rows.items()):
        y = min(v for k, v in r.items() if k in ("fine_tuned", "distilled"))
        axes[1].annotate(name, (r["flops_ratio"], y), fontsize=7, xytext=(6, -10 - 9 * (i % 3)),
                         textcoords="offset points")
    axes[0].set_title("all variants (zero-shot = shrunk, no training)")
    axes[1].set_title("after equal-step fine-tune / distillation")
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)
    return path


def replot() -> None:
    """Redraw the PNG from the committed JSON (no training)."""
    import json

    rows = json.loads((OUT_DIR / "shrink_tradeoff.json").read_text())["results"]
    print("wrote", plot(rows, OUT_DIR / "shrink_tradeoff.png"))


if __name__ == "__main__":
    import sys

    replot() if sys.argv[1:] == ["--replot"] else main()
