"""``hot_dtype="auto"``: which dtype Newton–Schulz matmuls run in, decided once per device.

Why a measurement and not a CPU-feature check: on the development machine (x86-64, AVX-512 with
``avx512_bf16`` in ``/proc/cpuinfo``, ``torch.backends.cpu.get_cpu_capability() == "AVX512"``)
a bf16 ``bmm`` is still ~17× slower than fp32 (four 1536×256 Newton–Schulz calls: 3.84 s vs
0.22 s), because the advertised instructions are not what torch's CPU bf16 GEMM path uses. So
the feature flag would pick the slow dtype. The rule:

What was measured here (2 threads, torch 2.13 CPU): at the time of the release benchmark bf16
Newton–Schulz ran ~4× *faster* than fp32 on this same machine (docs/benchmarks/optimizer_step.md),
while an earlier measurement had it 17× slower. The speed of CPU bf16 GEMM depends on the build,
the thread count and the kernel torch picks, which is one more reason to measure rather than guess.

* CUDA: ``"bf16"`` when ``torch.cuda.is_bf16_supported()`` (Ampere and later; native bf16
  tensor cores), else ``"fp32"``.
* CPU: a tiny micro-benchmark, once per process: the fastest of 7 interleaved timings of
  the real Newton–Schulz routine (``orthogonalize``, 2 steps) on two tall 512×128 matrices in bf16 and in
  fp32 (~20 ms in all on this 2-core machine). Timing the routine itself rather than one
  ``bmm`` also catches slow bf16 paths for transposed views and fused ``baddbmm``. bf16 is chosen
  only when it is at least :data:`CPU_BF16_SPEEDUP` (1.25×) faster than fp32; else ``"fp32"``.
* any other device (MPS, XPU, …): ``"fp32"`` (always correct; pass ``hot_dtype`` to choose).

The decision is cached per device type (:func:`auto_hot_dtype`), recorded by FusionOpt as
``optimizer.hot_dtype_resolved`` and in ``telemetry()["fusion/hot_dtype_bf16"]``, and printed by
``summarise_groups(groups, optimizer=opt)``.

Example:
    >>> auto_hot_dtype(torch.device("cpu")) in ("bf16", "fp32")
    True
"""

from __future__ import annotations

import time

import torch

__all__ = [
    "CPU_BF16_SPEEDUP",
    "auto_hot_dtype",
    "auto_hot_dtype_measurement",
    "clear_auto_cache",
    "set_auto_hot_dtype",
    "measure_cpu_bf16_speedup",
]

#: bf16 must be at least this much faster than fp32 on a CPU for "auto" to pick it.
CPU_BF16_SPEEDUP = 1.25

_CACHE: dict[str, str] = {}
_MEASURED: dict[str, float] = {}


def measure_cpu_bf16_speedup(repeats: int = 7) -> float:
    """fp32 time / bf16 time of a small batched matmul on this CPU (> 1 means bf16 is faster)."""
    from .newton_schulz import orthogonalize  # newton_schulz imports this module

    G = torch.randn(2, 512, 128, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for i in range(repeats + 1):  # interleaved; the first round is warm-up
        for name in times:
            t0 = time.perf_counter()
            orthogonalize(G, steps=2, hot_dtype=name)
            if i:
                times[name].append(time.perf_counter() - t0)
    # the minimum, not the median: other processes only ever add time, so the fastest run is the
    # best estimate of the kernel speed on a shared machine
    return min(times["fp32"]) / max(min(times["bf16"]), 1e-9)


def auto_hot_dtype(device: torch.device | str) -> str:
    """The ``hot_dtype`` name ``"auto"`` resolves to on ``device`` (cached per device type)."""
    kind = torch.device(device).type
    if kind not in _CACHE:
        if kind == "cuda":
            _CACHE[kind] = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        elif kind == "cpu":
            _MEASURED[kind] = measure_cpu_bf16_speedup()
            _CACHE[kind] = "bf16" if _MEASURED[kind] >= CPU_BF16_SPEEDUP else "fp32"
        else:
            _CACHE[kind] = "fp32"
    return _CACHE[kind]


def auto_hot_dtype_measurement(device: torch.device | str = "cpu") -> float | None:
    """The bf16 speed-up measured when ``"auto"`` was resolved on ``device`` (None if not measured)."""
    return _MEASURED.get(torch.device(device).type)


def clear_auto_cache() -> None:
    """Forget the cached decisions (tests; or after changing the thread count)."""
    _CACHE.clear()
    _MEASURED.clear()


def set_auto_hot_dtype(device: torch.device | str, name: str) -> None:
    """Fix what ``"auto"`` resolves to on ``device``'s type (``"bf16"`` or ``"fp32"``); distributed
    FusionOpt uses it so that every rank takes rank 0's measurement."""
    if name not in ("bf16", "fp32"):
        raise ValueError(f"name must be 'bf16' or 'fp32', got {name!r}")
    _CACHE[torch.device(device).type] = name
