"""Scale check of the KL-Shampoo direction (fusion_train/optim/kl_shampoo.py) over 20 steps.

Not a timing benchmark: it measures the *size* of the preconditioned direction
``S_a^{-1/2} M S_b^{-1/2}`` on random, drifting, low-rank and rank-one gradient streams, to
check that it stays finite and well-scaled (no blow-up along near-null directions of the
factors, which the authors' eigenvalue clamp is there to prevent).

For each case it runs: seed on G_0, then 20 steps of ``M ← β1·M + (1−β1)·G``,
``direction, state = kl_shampoo_step(G, M, state)``, with the eigenbasis refresh every 10
updates (the default), and records per step

* ``rms``   = RMS of the direction (a whitened update has RMS ≈ 1; Muon's NS output for an
  a×b matrix has RMS ≈ 1/√max(a, b)),
* ``gain``  = ‖direction‖_F / ‖M‖_F (the preconditioner's amplification of the momentum),
* ``max``   = max |direction|, and whether everything is finite.

Writes docs/benchmarks/kl_shampoo_direction_scale.{json,md} (atomically).

Usage:
    .venv/bin/python benchmarks/kl_shampoo_direction_scale.py
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from fusion_infer.files import atomic_write
from fusion_train.optim.kl_shampoo import (
    KLShampooConfig,
    kl_shampoo_init_state,
    kl_shampoo_refresh_due,
    kl_shampoo_seed,
    kl_shampoo_step,
)

OUT_DIR = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
STEPS = 20
BETA1 = 0.9
SHAPES = [(64, 48), (384, 64), (256, 256)]
REPORT_STEPS = (1, 2, 5, 10, 11, 20)


def _stream(kind: str, a: int, b: int, gen: torch.Generator):
    """Infinite generator of gradients of one kind."""
    if kind == "random":  # fresh Gaussian every step: no structure to exploit
        while True:
            yield torch.randn(a, b, generator=gen)
    base = torch.randn(a, b, generator=gen)
    u2, v2 = torch.randn(a, 2, generator=gen), torch.randn(2, b, generator=gen)
    u1, v1 = torch.randn(a, 1, generator=gen), torch.randn(1, b, generator=gen)
    while True:
        if kind == "drifting":  # a persistent mean plus noise, like minibatch gradients
            yield base + 0.7 * torch.randn(a, b, generator=gen)
        elif kind == "low_rank":  # rank 2 plus 1e-3 noise: factors are nearly singular
            yield u2 @ v2 + 1e-3 * torch.randn(a, b, generator=gen)
        elif kind == "rank_one":  # exactly rank 1, jittered scale: the hardest case
            yield (u1 @ v1) * (1 + 0.1 * torch.randn(1, generator=gen))
        else:
            raise ValueError(f"kind must be one of random, drifting, low_rank, rank_one; got {kind!r}")


def run_case(kind: str, shape: tuple[int, int], cfg: KLShampooConfig, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    grads = _stream(kind, *shape, gen)
    g = next(grads)
    state = kl_shampoo_seed(g, kl_shampoo_init_state(shape, cfg), cfg)
    m = torch.zeros(shape)
    rows = []
    finite = True
    for t in range(1, STEPS + 1):
        g = next(grads)
        m = BETA1 * m + (1 - BETA1) * g
        direction, state = kl_shampoo_step(g, m, state, cfg, refresh=kl_shampoo_refresh_due(t, cfg))
        finite &= bool(torch.isfinite(direction).all()) and all(
            bool(torch.isfinite(x).all()) for x in state if x is not None
        )
        rows.append(
            {
                "step": t,
                "rms": direction.pow(2).mean().sqrt().item(),
                "gain": (direction.norm() / m.norm()).item(),
                "max": direction.abs().max().item(),
                "d_a_min": state.d_a.min().item(),
                "d_b_min": state.d_b.min().item(),
            }
        )
    return {"kind": kind, "shape": list(shape), "finite": finite, "steps": rows}


def _markdown(results: list[dict], cfg: KLShampooConfig) -> str:
    lines = [
        "# KL-Shampoo direction scale over 20 steps",
        "",
        f"`benchmarks/kl_shampoo_direction_scale.py`; torch {torch.__version__}, "
        f"{platform.machine()} CPU, float32 factors. Config: beta={cfg.beta}, "
        f"precondition_frequency={cfg.precondition_frequency}, init_factor={cfg.init_factor}, "
        f"eps={cfg.eps}, clamp cap={cfg.max_clamp_value}; momentum β1={BETA1}.",
        "",
        "RMS of the direction `S_a^{-1/2} M S_b^{-1/2}` at selected steps (step 1 = first step after "
        "the seed; the bases are refreshed after updates 10 and 20), the largest |entry| over all "
        "20 steps, and the gain ‖dir‖/‖M‖ at step 1 (= 1/init_factor by construction) and its "
        "range over steps 2–20.",
        "",
        "| gradients | shape | finite | " + " | ".join(f"rms@{s}" for s in REPORT_STEPS)
        + " | max abs | gain@1 | gain 2–20 |",
        "|---|---|---|" + "---|" * len(REPORT_STEPS) + "---|---|---|",
    ]
    for r in results:
        by_step = {row["step"]: row for row in r["steps"]}
        cells = " | ".join(f"{by_step[s]['rms']:.3g}" for s in REPORT_STEPS)
        max_abs = max(row["max"] for row in r["steps"])
        later = [row["gain"] for row in r["steps"] if row["step"] >= 2]
        lines.append(
            f"| {r['kind']} | {r['shape'][0]}×{r['shape'][1]} | {r['finite']} | {cells} | "
            f"{max_abs:.3g} | {by_step[1]['gain']:.3g} | {min(later):.3g}–{max(later):.3g} |"
        )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    torch.manual_seed(0)
    cfg = KLShampooConfig()
    results = [
        run_case(kind, shape, cfg)
        for kind in ("random", "drifting", "low_rank", "rank_one")
        for shape in SHAPES
    ]
    payload = {
        "benchmark": "kl_shampoo_direction_scale",
        "torch": torch.__version__,
        "device": "cpu",
        "config": {
            "beta": cfg.beta,
            "precondition_frequency": cfg.precondition_frequency,
            "init_factor": cfg.init_factor,
            "eps": cfg.eps,
            "max_clamp_value": cfg.max_clamp_value,
            "beta1": BETA1,
            "steps": STEPS,
        },
        "results": results,
    }
    atomic_write(OUT_DIR / "kl_shampoo_direction_scale.json", json.dumps(payload, indent=1) + "\n")
    md = _markdown(results, cfg)
    atomic_write(OUT_DIR / "kl_shampoo_direction_scale.md", md)
    print(md)


if __name__ == "__main__":
    main()
