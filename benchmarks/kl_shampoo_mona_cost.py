"""Cost of the KL-Shampoo and MONA components on control-head shapes, relative to one NS5 call.

Not the full-recipe profile (that is ``benchmarks/component_profile.py``, built with FusionOpt);
this measures only the pure functions of ``fusion_train/optim/kl_shampoo.py`` and
``fusion_train/optim/mona.py`` so their overhead can be judged against the ≤ 1.6× target for
``recipe="full"`` vs ``"sf-normuon"``.

Shapes: the spectral matrices of a d=256, depth-4 LatCH-style control head, batched per shape
as FusionOpt does (4 blocks each): qkv 768×256, attn-out 256×256, mlp-up 1024×256,
mlp-down 256×1024, adaLN 1536×256.

Yardstick: a plain batched quintic Newton–Schulz, 5 iterations with Keller Jordan's
coefficients on the smaller Gram side, fp32 (written here only as a time reference; it is not
FusionOpt's implementation). Timed per shape batch, eager, float32:

* ``kl_precondition``: ``S_a^{-1/2} M S_b^{-1/2}`` through the eigenbases (every step);
* ``kl_update``: KL factor update + eigenvalue EMA (every step);
* ``kl_refresh/10``: one power iteration + QR of both factors, divided by the default
  ``precondition_frequency`` 10 (amortised);
* ``kl_seed``: the one-off seed (fp32 eigh), one timed call, not amortised, for information;
* ``mona`` and ``mona_lite``: the MONA transform with fp32 / bf16 buffers.

Method: warm-up first, then ``REPEATS`` rounds in which every function runs ``INNER`` times in
turn (A/B interleaved in one process); the median per-call time over rounds is reported with
its ratio to NS5. Writes docs/benchmarks/kl_shampoo_mona_cost.{json,md} atomically.

Usage:
    .venv/bin/python benchmarks/kl_shampoo_mona_cost.py
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from fusion_infer.files import atomic_write
from fusion_train.optim.kl_shampoo import (
    KLShampooConfig,
    kl_shampoo_init_state,
    kl_shampoo_precondition,
    kl_shampoo_refresh_eigenbasis,
    kl_shampoo_seed,
    kl_shampoo_update_state,
)
from fusion_train.optim.mona import default_mona_alpha, mona_init_buffers, mona_transform

OUT_DIR = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
SHAPES = {
    "qkv": (768, 256),
    "attn_out": (256, 256),
    "mlp_up": (1024, 256),
    "mlp_down": (256, 1024),
    "adaln": (1536, 256),
}
BLOCKS = 4
REPEATS = 5
INNER = 1
WARMUP = 1


def ns5_reference(x: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Time yardstick: batched quintic NS on the smaller Gram side (Keller Jordan coefficients)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        poly = b * gram + c * gram @ gram
        x = a * x + poly @ x
    return x.mT if tall else x


def _time_calls(fn, inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


def measure_shape(name: str, shape: tuple[int, int], gen: torch.Generator) -> dict:
    full = (BLOCKS, *shape)
    cfg = KLShampooConfig()
    g = torch.randn(full, generator=gen)
    m = torch.randn(full, generator=gen)
    seeded = kl_shampoo_seed(g, kl_shampoo_init_state(full, cfg), cfg)
    state = kl_shampoo_update_state(g, seeded, cfg, refresh=False)  # a generic post-seed state
    beta = 0.975
    alpha = default_mona_alpha(beta)
    bufs = mona_init_buffers(g)
    lite = mona_init_buffers(g, lite=True)
    mona_transform(g, *bufs, alpha=alpha, beta=beta, first_step=True)
    mona_transform(g, *lite, alpha=alpha, beta=beta, first_step=True)
    fns = {
        "ns5": lambda: ns5_reference(m),
        "kl_precondition": lambda: kl_shampoo_precondition(m, state, cfg),
        "kl_update": lambda: kl_shampoo_update_state(g, state, cfg, refresh=False),
        "kl_refresh": lambda: kl_shampoo_refresh_eigenbasis(state),
        "mona": lambda: mona_transform(g, *bufs, alpha=alpha, beta=beta, first_step=False),
        "mona_lite": lambda: mona_transform(g, *lite, alpha=alpha, beta=beta, first_step=False),
    }
    for _ in range(WARMUP):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(REPEATS):
        for key, fn in fns.items():  # interleaved: every function once per round
            samples[key].append(_time_calls(fn, INNER))
    med = {k: statistics.median(v) for k, v in samples.items()}
    # the seed runs once per parameter in a whole training run: one timed call (after the
    # warm-up above has initialised LAPACK), not part of the interleaved rounds
    med["kl_seed"] = _time_calls(lambda: kl_shampoo_seed(g, kl_shampoo_init_state(full, cfg), cfg), 1)
    med["kl_refresh/10"] = med.pop("kl_refresh") / cfg.precondition_frequency
    med["kl_per_step"] = med["kl_precondition"] + med["kl_update"] + med["kl_refresh/10"]
    return {
        "name": name,
        "shape": [BLOCKS, *shape],
        "median_s": med,
        "ratio_to_ns5": {k: v / med["ns5"] for k, v in med.items()},
    }


def main() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    load_before = os.getloadavg()[0]
    results = [measure_shape(name, shape, gen) for name, shape in SHAPES.items()]
    load_after = os.getloadavg()[0]
    keys = ["ns5", "kl_precondition", "kl_update", "kl_refresh/10", "kl_per_step", "kl_seed",
            "mona", "mona_lite"]
    totals = {k: sum(r["median_s"][k] for r in results) for k in keys}
    payload = {
        "benchmark": "kl_shampoo_mona_cost",
        "torch": torch.__version__,
        "device": f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
        "dtype": "float32",
        "blocks_per_shape": BLOCKS,
        "repeats": REPEATS,
        # the development machine is shared: a load average above the core count means other
        # jobs competed for the CPU and absolute times (and one-off kl_seed) are inflated
        "load_average_1min": [load_before, load_after],
        "inner": INNER,
        "results": results,
        "totals_s": totals,
        "totals_ratio_to_ns5": {k: v / totals["ns5"] for k, v in totals.items()},
    }
    atomic_write(OUT_DIR / "kl_shampoo_mona_cost.json", json.dumps(payload, indent=1) + "\n")
    lines = [
        "# KL-Shampoo and MONA component cost vs one NS5 call",
        "",
        f"`benchmarks/kl_shampoo_mona_cost.py`; torch {torch.__version__}, {payload['device']}, "
        f"eager float32; {BLOCKS} same-shape matrices per batch; median of {REPEATS} interleaved "
        f"rounds × {INNER} calls. Entries: ms per batched call (ratio to the NS5 yardstick on the "
        "same batch). `kl_per_step` = precondition + update + refresh/10; `kl_seed` is one-off. "
        f"1-min load average {load_before:.1f} → {load_after:.1f} on a shared machine: absolute "
        "times are inflated by other jobs, interleaved ratios less so; `kl_seed` (single call) is "
        "the least reliable number.",
        "",
        "| batch | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for r in results:
        cells = " | ".join(
            f"{r['median_s'][k] * 1e3:.2f} ({r['ratio_to_ns5'][k]:.2f}×)" for k in keys
        )
        lines.append(f"| {r['name']} {r['shape'][1]}×{r['shape'][2]} ×{BLOCKS} | {cells} |")
    cells = " | ".join(
        f"{totals[k] * 1e3:.2f} ({payload['totals_ratio_to_ns5'][k]:.2f}×)" for k in keys
    )
    lines += [f"| **all** | {cells} |", ""]
    md = "\n".join(lines)
    atomic_write(OUT_DIR / "kl_shampoo_mona_cost.md", md)
    print(md)


if __name__ == "__main__":
    main()
