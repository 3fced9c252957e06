"""Plot a training run from its ``telemetry.jsonl``: loss, validation MAE and γ, one PNG.

Three panels sharing the step axis:

1. training loss (``train/loss``, log scale) with a moving median to see the trend through the
   per-batch noise;
2. validation median and mean absolute error in dB (``val/median_mae``, ``val/mean_mae``), the
   best step marked — the checkpoint ``best.safetensors`` holds;
3. the learning rate: ``fusion/lr`` (the scheduled lr, warm-up included) and, for Schedule-Free
   recipes with a Polyak step, γ = ``fusion/gamma_curr`` (the lr actually applied).

Matplotlib (the ``viz`` extra) is imported with the non-interactive Agg backend, so this works
on machines without a display.

Example:
    >>> plot_run("runs/h1")  # doctest: +SKIP
    PosixPath('runs/h1/training.png')
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from fusion_infer.files import atomic_write

from .telemetry import read_telemetry

__all__ = ["plot_run", "plot_telemetry"]


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            steps.append(int(r["step"]))
            values.append(float(v))
    return steps, values


def _moving_median(values: list[float], window: int) -> list[float]:
    """Centred moving median (a trailing one lags behind a falling loss and sits above it)."""
    half = window // 2
    out = []
    for i in range(len(values)):
        chunk = sorted(values[max(0, i - half) : i + half + 1])
        out.append(chunk[(len(chunk) - 1) // 2])  # the lower median at the (shorter) edges
    return out


def plot_telemetry(records: list[dict[str, Any]], out: str | os.PathLike, title: str = "") -> Path:
    """Draw ``records`` (as :func:`~fusion_train.read_telemetry` returns them) to the PNG ``out``.

    Raises ``ValueError`` when the records hold no training loss.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss_steps, loss = _series(records, "train/loss")
    if not loss:
        raise ValueError("telemetry has no 'train/loss' records to plot")
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True, constrained_layout=True)
    ax = axes[0]
    if len(loss) >= 20:  # enough points for a trend line through the per-batch noise
        ax.plot(loss_steps, loss, color="0.7", lw=0.8, label="per logged step")
        ax.plot(loss_steps, _moving_median(loss, max(5, len(loss) // 20) | 1), color="C0", lw=1.5,
                label="moving median")
    else:
        ax.plot(loss_steps, loss, "o-", color="C0", ms=3, lw=1.2, label="per logged step")
    if min(loss) > 0:
        ax.set_yscale("log")
    ax.set_ylabel("training loss")
    ax.legend(loc="upper right", fontsize=8)

    ax = axes[1]
    val_steps, median = _series(records, "val/median_mae")
    mean_steps, mean = _series(records, "val/mean_mae")
    if median:
        ax.plot(val_steps, median, "o-", color="C1", ms=3, label="median absolute error")
        if mean:
            ax.plot(mean_steps, mean, "s--", color="C2", ms=3, lw=1, label="mean absolute error")
        best = min(range(len(median)), key=median.__getitem__)
        ax.plot([val_steps[best]], [median[best]], "*", color="C3", ms=12,
                label=f"best: {median[best]:.2f} dB at step {val_steps[best]}")
        ax.legend(loc="upper right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no validation records", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("validation error (dB)")

    ax = axes[2]
    lr_steps, lr = _series(records, "fusion/lr")
    g_steps, gamma = _series(records, "fusion/gamma_curr")
    if gamma:
        ax.plot(g_steps, gamma, color="C4", lw=2.5, alpha=0.7, label="γ (applied lr)")
    if lr:  # dashed and on top: without a Polyak step γ equals the scheduled lr
        ax.plot(lr_steps, lr, "--", color="C0", lw=1.2, label="scheduled lr")
    if lr or gamma:
        ax.legend(loc="lower right", fontsize=8)
        # From zero and without an offset: a constant lr is a flat line at its value, not "1e-10 + 4e-3".
        ax.set_ylim(0, 1.15 * max(lr + gamma))
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2), useOffset=False)
    else:
        ax.text(0.5, 0.5, "no learning-rate records", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("learning rate")
    ax.set_xlabel("optimizer step")
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:  # a reader never sees a half-written image
        atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return out


def plot_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Plot ``run_dir/telemetry.jsonl`` to ``out`` (default ``run_dir/training.png``); returns the path.

    Raises ``FileNotFoundError`` naming the file when the run has no telemetry.
    """
    run_dir = Path(run_dir)
    path = run_dir / "telemetry.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: RUN_DIR must be a folder written by fusion-train head")
    records = read_telemetry(path)
    return plot_telemetry(records, out if out is not None else run_dir / "training.png", title=str(run_dir))
