"""``verify_equivalence``: run with and without the modulator cache and compare bit for bit.

Works on a transformer (forward keyword arguments) or a pipeline (call keyword arguments, with a
fresh seeded generator per run). The cached side runs twice — the first run fills the table, the
second replays it — and both are compared with the uncached reference.

Example:
    >>> import torch
    >>> from diffusers import DiTTransformer2DModel
    >>> m = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
    ...                           num_layers=1, sample_size=4, num_embeds_ada_norm=10).eval()
    >>> r = verify_equivalence(m, hidden_states=torch.randn(2, 4, 4, 4),
    ...                        timestep=torch.tensor([3, 3]), class_labels=torch.tensor([0, 10]))
    >>> r.bit_equal, r.max_abs_diff, r.hits >= 1
    (True, 0.0, True)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .config import ModulatorCacheConfig
from .hooks import apply_modulator_cache, get_modulator_cache, remove_modulator_cache
from .pipelines import resolve_transformer

__all__ = ["EquivalenceReport", "verify_equivalence"]


@dataclass(frozen=True)
class EquivalenceReport:
    """Result of :func:`verify_equivalence`.

    Attributes:
        bit_equal: every cached output equals the uncached one bit for bit.
        max_abs_diff: largest ``|cached - uncached|`` over all outputs (0.0 when bit-equal).
        hits: cache hits during the cached runs.
        misses: cache misses during the cached runs.
        runs: number of cached runs compared (2: fill, then replay).
    """

    bit_equal: bool
    max_abs_diff: float
    hits: int
    misses: int
    runs: int


def _as_tensor(out: Any) -> Tensor:
    if hasattr(out, "sample"):
        out = out.sample
    elif hasattr(out, "images"):
        out = out.images
    elif isinstance(out, (tuple, list)) and out and not hasattr(out[0], "size"):
        out = out[0]
    if isinstance(out, Tensor):
        return out.detach()
    if isinstance(out, np.ndarray):
        return torch.from_numpy(out)
    if isinstance(out, list):  # PIL images
        return torch.from_numpy(np.stack([np.asarray(img) for img in out]))
    raise TypeError(f"cannot compare outputs of type {type(out).__name__}")


def _bits_equal(a: Tensor, b: Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def verify_equivalence(
    pipe_or_transformer: Any,
    *,
    config: ModulatorCacheConfig | None = None,
    seed: int = 0,
    progress: bool | None = None,
    **inputs: Any,
) -> EquivalenceReport:
    """Run uncached once and cached twice; report bit-equality and the largest difference.

    Args:
        pipe_or_transformer: a supported transformer, or a pipeline with a ``transformer``.
        config: config used if the cache has to be applied for the check (it is removed again);
            an already applied cache is used as is (disabled for the reference run).
        seed: pipelines get ``generator=torch.Generator(device).manual_seed(seed)`` per run.
        progress: one progress bar over the three runs (the pipeline's own per-run bars are
            silenced meanwhile and restored afterwards). ``None`` (default): on for pipelines,
            off for a bare transformer (one forward each, instant).
        **inputs: forward kwargs (transformer) or call kwargs (pipeline; ``output_type``
            defaults to ``"pt"``).
    """
    is_pipe = not isinstance(pipe_or_transformer, nn.Module)
    transformer = resolve_transformer(pipe_or_transformer, "verify_equivalence")
    if is_pipe:
        inputs.setdefault("output_type", "pt")
    show = is_pipe if progress is None else bool(progress)

    def run() -> Tensor:
        kwargs = dict(inputs)
        if is_pipe:
            device = getattr(pipe_or_transformer, "_execution_device", torch.device("cpu"))
            kwargs["generator"] = torch.Generator(device=device).manual_seed(seed)
        with torch.no_grad():
            return _as_tensor(pipe_or_transformer(**kwargs))

    cache = get_modulator_cache(transformer)
    applied_here = cache is None
    if applied_here:
        cache = apply_modulator_cache(transformer, config)
    with _one_progress_bar(pipe_or_transformer if is_pipe else None, show) as bar:
        try:
            bar.set_postfix_str("uncached reference")
            with cache.disabled():
                reference = run()
            bar.update(1)
            hits0, misses0 = cache.stats.hits, cache.stats.misses
            outs = []
            for label in ("cached: fill", "cached: replay"):
                bar.set_postfix_str(label)
                outs.append(run())
                bar.update(1)
            hits, misses = cache.stats.hits - hits0, cache.stats.misses - misses0
        finally:
            if applied_here:
                remove_modulator_cache(transformer)
    equal = all(_bits_equal(o, reference) for o in outs)
    diff = max(float((o.double() - reference.double()).abs().max()) if o.numel() else 0.0 for o in outs)
    return EquivalenceReport(bit_equal=equal, max_abs_diff=diff, hits=hits, misses=misses, runs=len(outs))


@contextmanager
def _one_progress_bar(pipe: Any, show: bool) -> Iterator[Any]:
    """A tqdm bar over the three runs; a pipeline's own bars are off inside and restored after."""
    from tqdm.auto import tqdm

    saved = getattr(pipe, "_progress_bar_config", None) if pipe is not None else None
    had = pipe is not None and hasattr(pipe, "_progress_bar_config")
    if pipe is not None and hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(**{**(saved or {}), "disable": True})
    bar = tqdm(total=3, desc="verify_equivalence", unit="run", disable=not show)
    try:
        yield bar
    finally:
        bar.close()
        if pipe is not None and hasattr(pipe, "set_progress_bar_config"):
            if had:
                pipe._progress_bar_config = saved
            else:
                del pipe._progress_bar_config
