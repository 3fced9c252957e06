"""Shared output helpers for benchmark scripts: JSON + markdown written atomically to docs/benchmarks/."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

# The project's one atomic writer (temp file, fsync, rename, umask mode); benchmarks use it from here.
from fusion_infer.files import atomic_write

OUT_DIR = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"


def environment() -> dict:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "device": "cpu",
        "date": time.strftime("%Y-%m-%d"),
    }


def write_report(name: str, data: dict, markdown: str) -> None:
    atomic_write(OUT_DIR / f"{name}.json", json.dumps(data, indent=2, default=str) + "\n")
    atomic_write(OUT_DIR / f"{name}.md", markdown.rstrip() + "\n")
    print(f"wrote {OUT_DIR / name}.json and .md")


def interleaved_medians(fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, A/B interleaved (round-robin) after warm-up."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def md_table(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)
