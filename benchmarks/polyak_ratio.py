"""Does the Polyak ratio float between the clamps on a real task? (docs/polyak.md)

Trains a small ControlHead (LatCH-style: read loudness controls out of rectified-flow-noised
log-mel latents, t ~ U[0,1]) on the synthetic enveloped-tone data with FusionOpt sf-normuon and
each Polyak mode, logging the unclamped ratio every step. For comparison it also logs, on the
same run, the ratio the earlier public FusionOpt used, ``loss_ema / mean|g|``.

    python benchmarks/polyak_ratio.py [--steps N]
"""

from __future__ import annotations

import argparse

import torch
from _report import OUT_DIR, atomic_write, environment, md_table, write_report

from fusion_infer import ControlHead, ControlHeadConfig
from fusion_train import FusionOpt, build_param_groups
from fusion_train.data import synthetic_data


def run(mode: str, data, steps: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    head = ControlHead(ControlHeadConfig(in_channels=64, out_channels=5, dim=128, depth=2, heads=4))
    groups = build_param_groups(head)
    for g in groups:  # different lrs per group: the multiplier must scale each group's own lr
        g["lr"] = 2e-3 if g["group_type"] == "spectral" else 1e-3
    opt = FusionOpt(groups, lr=2e-3, polyak=mode, warmup_steps=20, hot_dtype="fp32")
    kinds = [g["group_type"] for g in opt.param_groups]
    x0, y = data.split("train")
    y = data.standardize_controls(y)
    g = torch.Generator().manual_seed(seed)
    ratios, old_ratios, losses = [], [], []
    gammas: dict[str, list[float]] = {k: [] for k in kinds}
    loss_ema = None
    for _ in range(steps):
        idx = torch.randint(0, x0.shape[0], (16,), generator=g)
        t = torch.rand(16, generator=g)
        eps = torch.randn(x0[idx].shape, generator=g)
        xt = (1 - t)[:, None, None] * x0[idx] + t[:, None, None] * eps
        loss = torch.nn.functional.huber_loss(head(xt, t), y[idx])
        opt.zero_grad()
        loss.backward()
        # the earlier public FusionOpt's ratio: loss EMA over the *mean* |g| (per element)
        l1 = sum(p.grad.abs().sum() for p in head.parameters() if p.grad is not None)
        n = sum(p.numel() for p in head.parameters())
        loss_ema = loss.item() if loss_ema is None else 0.9 * loss_ema + 0.1 * loss.item()
        old_ratios.append(loss_ema / (l1.item() / n))
        opt.step(loss=loss)
        tel = opt.telemetry()
        ratios.append(tel["fusion/gamma_ratio"])
        for i, k in enumerate(kinds):
            gammas[k].append(tel[f"fusion/gamma_curr/{i}"])
        losses.append(loss.item())
    return {"mode": mode, "ratios": ratios, "old_ratios": old_ratios, "losses": losses, "gammas": gammas}


def clamp_share(values, lo=0.1, hi=10.0):
    v = torch.tensor(values)
    return ((v <= lo) | (v >= hi)).float().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    data = synthetic_data(96, frames=128, seed=0)
    runs = [run(m, data, args.steps) for m in ("relative", "sfplus")]
    warm = 20
    rows = []
    for r in runs:
        after = torch.tensor(r["ratios"][warm:])
        rows.append([r["mode"], f"{after.median():.3g}", f"{after.min():.3g} – {after.max():.3g}",
                     f"{100 * clamp_share(r['ratios'][warm:]):.0f} %", f"{r['losses'][-1]:.4f}"])
    old = torch.tensor(runs[0]["old_ratios"][warm:])
    rows.append(["earlier FusionOpt rule (loss_ema / mean abs g)", f"{old.median():.3g}",
                 f"{old.min():.3g} – {old.max():.3g}", f"{100 * clamp_share(runs[0]['old_ratios'][warm:]):.0f} %", "–"])
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 3, figsize=(16, 4))
        for r in runs:
            for k, v in r["gammas"].items():
                ax[2].plot(v, label=f"γ {k} ({r['mode']})", alpha=0.8)
        ax[2].set_yscale("log")
        ax[2].set_xlabel("step")
        ax[2].set_title("γ per group (Polyak-scaled lr)")
        ax[2].legend()
        for r in runs:
            ax[0].plot(r["ratios"], label=f"ratio ({r['mode']})")
            ax[1].plot(r["losses"], label=r["mode"], alpha=0.7)
        ax[0].plot(runs[0]["old_ratios"], label="earlier FusionOpt rule", color="grey")
        for c in (0.1, 10.0):
            ax[0].axhline(c, ls="--", color="k", lw=0.8)
        ax[0].set_yscale("log")
        ax[0].set_xlabel("step")
        ax[0].set_title("Polyak ratio (unclamped); dashed: clamps")
        ax[0].legend()
        ax[1].set_yscale("log")
        ax[1].set_xlabel("step")
        ax[1].set_title("training loss (Huber)")
        ax[1].legend()
        fig.tight_layout()
        atomic_write(OUT_DIR / "polyak_ratio.png", lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
        plot = "![ratio and loss](polyak_ratio.png)\n"
    except ImportError:
        plot = "(matplotlib not installed: no plot)\n"
    md = "\n".join([
        "# Polyak ratio on a real task", "",
        f"ControlHead dim 128, depth 2, trained to read 5 control curves from rectified-flow-noised latents "
        f"(synthetic enveloped tones, 96 excerpts × 128 frames), FusionOpt sf-normuon, lr 2e-3, warm-up 20, "
        f"{args.steps} steps, batch 16. {environment()}", "",
        f"Command: `python benchmarks/polyak_ratio.py --steps {args.steps}`", "",
        md_table(["ratio", "median after warm-up", "range", "steps at a clamp (0.1 / 10)", "final loss"], rows), "",
        "γ per group (spectral lr 2e-3, scalar lr 1e-3; the multiplier is shared, each group keeps its lr):", "",
        md_table(["mode", "group", "γ median after warm-up", "γ range"],
                 [[r["mode"], k, f"{torch.tensor(v[warm:]).median():.3g}",
                   f"{min(v[warm:]):.3g} – {max(v[warm:]):.3g}"] for r in runs for k, v in r["gammas"].items()]), "",
        plot,
    ])
    write_report("polyak_ratio", {"environment": environment(), "steps": args.steps, "runs": runs}, md)
    print(md)


if __name__ == "__main__":
    main()
