"""``precompute(pipe_or_transformer, timesteps, **conditioning)``: fill a render's modulators up front.

With ``ModulatorCacheConfig(offload_weights=True)`` this is the intended start of a render: the
modulator weights are streamed to the execution device **once**, every step's modulators of the
schedule are computed with the model's own modules (one forward-shaped call per step, so the bits
equal those of the uncached forward), stored in the cache, and the weights go back to
``offload_device``. The denoising steps then hit the cache and run with no modulator weight on
the execution device. Without offload it simply warms the cache.

The timesteps must be exactly what the transformer's ``forward`` receives at each step (the key
is the exact bits): DiT/SD3 pipelines pass ``t.expand(batch)``; Flux pipelines pass
``t.expand(batch).to(dtype) / 1000``.

Example:
    >>> import torch
    >>> from diffusers import DiTTransformer2DModel
    >>> from fusion_diffusers import ModulatorCacheConfig, apply_modulator_cache
    >>> m = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
    ...                           num_layers=1, sample_size=4, num_embeds_ada_norm=10).eval()
    >>> cache = apply_modulator_cache(m, ModulatorCacheConfig(offload_weights=True))
    >>> rep = precompute(m, torch.tensor([900, 500, 100]), batch_size=2, class_labels=torch.tensor([1, 10]))
    >>> rep.computed, rep.streamings
    (3, 0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .families import unwrap_compiled
from .hooks import get_modulator_cache
from .modulators import conditioning_for
from .offload import ResidentReport, refuse_offload_hooks

__all__ = ["PrecomputeReport", "precompute"]


@dataclass(frozen=True)
class PrecomputeReport:
    """What :func:`precompute` did.

    Attributes:
        steps: timesteps in the schedule.
        computed: entries computed now (the others were already cached).
        streamings: times the offloaded weights were streamed to the device (1 with offload on a
            separate device, else 0).
        resident: :class:`~fusion_diffusers.offload.ResidentReport` after the precompute.
    """

    steps: int
    computed: int
    streamings: int
    resident: ResidentReport


def _transformer(pipe_or_transformer: Any) -> nn.Module:
    transformer = getattr(pipe_or_transformer, "transformer", None)
    if isinstance(transformer, nn.Module):
        return unwrap_compiled(transformer)
    if isinstance(pipe_or_transformer, nn.Module):
        return unwrap_compiled(pipe_or_transformer)
    raise TypeError(
        "pipe_or_transformer must be a diffusers transformer or a pipeline with a `transformer` "
        f"component, got {type(pipe_or_transformer).__name__}"
    )


def _steps(timesteps: Tensor | Sequence[Tensor], batch_size: int | None) -> list[Tensor]:
    if isinstance(timesteps, Tensor):
        if timesteps.dim() != 1:
            raise ValueError(
                f"timesteps must be a 1-D tensor of per-step values or a sequence of per-step "
                f"tensors, got a tensor of shape {tuple(timesteps.shape)}"
            )
        if batch_size is None:
            raise ValueError("batch_size is required when timesteps is a 1-D tensor of per-step values")
        # Each value as the pipelines pass it: a 0-d value expanded over the batch.
        return [t.expand(batch_size) for t in timesteps]
    steps = list(timesteps)
    for i, t in enumerate(steps):
        if not isinstance(t, Tensor):
            raise TypeError(f"timesteps[{i}] must be a torch.Tensor, got {type(t).__name__}")
    return steps


def precompute(
    pipe_or_transformer: Any,
    timesteps: Tensor | Sequence[Tensor],
    *,
    batch_size: int | None = None,
    hidden_dtype: torch.dtype | None = None,
    lora_scale: float = 1.0,
    **conditioning: Any,
) -> PrecomputeReport:
    """Compute and cache every step's modulators of a known schedule and conditioning.

    Args:
        pipe_or_transformer: a pipeline (its ``transformer`` is used) or a transformer that has
            a modulator cache (:func:`apply_modulator_cache` / :func:`enable_modulator_cache`).
        timesteps: per-step timestep tensors exactly as ``forward`` receives them, or a 1-D
            tensor of per-step values that are each expanded to ``batch_size``.
        batch_size: rows per forward call (CFG doubles it); required with a 1-D tensor.
        hidden_dtype: dtype of the hidden states (default: the transformer's dtype).
        lora_scale: the per-call ``joint_attention_kwargs["scale"]`` (SD3/Flux).
        **conditioning: as for :func:`compute_modulators` (``class_labels``,
            ``pooled_projections``, ``guidance``, ``added_cond_kwargs``; ``batch_size`` for
            PixArt/Sana is taken from ``batch_size``).

    Returns:
        :class:`PrecomputeReport` with the resident-bytes report.

    Raises:
        ValueError: no modulator cache applied; bad ``timesteps``/``batch_size``; offloading
            hooks present.
        TypeError: unknown conditioning names (the allowed ones are listed).
    """
    model = _transformer(pipe_or_transformer)
    cache = get_modulator_cache(model)
    if cache is None:
        raise ValueError(
            f"no modulator cache is applied to this {type(model).__name__}; call "
            "apply_modulator_cache(transformer, config) or enable_modulator_cache(pipe, config) first"
        )
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    steps = _steps(timesteps, batch_size)
    if not steps:
        raise ValueError("timesteps is empty; pass at least one step")
    if cache.offload is not None:
        refuse_offload_hooks(model)
    if "batch_size" in cache.family.conditioning and "batch_size" not in conditioning:
        conditioning["batch_size"] = steps[0].shape[0] if steps[0].dim() else 1
    device = steps[0].device
    before = cache.offload.streamings if cache.offload is not None else 0
    conds = [conditioning_for(model, cache.family, t, hidden_dtype, lora_scale, dict(conditioning)) for t in steps]
    lora_key = cache.prepare()  # weights checked at rest, before streaming
    computed = 0
    with cache.streaming(device):
        for cond in conds:
            computed += cache.fill(cond, lora_key)
    after = cache.offload.streamings if cache.offload is not None else 0
    return PrecomputeReport(
        steps=len(steps), computed=computed, streamings=after - before, resident=cache.resident_report()
    )
