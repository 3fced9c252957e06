"""``enable_modulator_cache(pipe)``: the modulator cache on a diffusers pipeline's transformer.

diffusers pipelines call ``maybe_free_model_hooks()`` at the end of every ``__call__``, which runs
``component._reset_stateful_cache()`` on each component that has it — only ``CacheMixin`` models
(Flux, …) do. For the others (DiT, PixArt, SD3) the helper gives the transformer that method, so
the end of every render reaches :meth:`ModulatorCache.reset_state` everywhere: the cross-render
table is kept and the next render starts with a bitwise probe (docs/design.md §4.3, §4.5).

Example:
    >>> from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel  # doctest: +SKIP
    >>> pipe = DiTPipeline(transformer=..., vae=..., scheduler=DDIMScheduler())  # doctest: +SKIP
    >>> cache = enable_modulator_cache(pipe)                                     # doctest: +SKIP
    >>> pipe(class_labels=[1], num_inference_steps=4); cache.stats.hits          # doctest: +SKIP
"""

from __future__ import annotations

import types
from typing import Any

from torch import nn

from diffusers.hooks import HookRegistry

from .config import ModulatorCacheConfig
from .hooks import ModulatorCache, apply_modulator_cache, remove_modulator_cache

__all__ = ["enable_modulator_cache", "disable_modulator_cache"]

_ADDED_RESET = "_fusion_added_reset_stateful_cache"


def _denoiser(pipe: Any) -> nn.Module:
    transformer = getattr(pipe, "transformer", None)
    if not isinstance(transformer, nn.Module):
        raise TypeError(
            f"{type(pipe).__name__} has no `transformer` component; enable_modulator_cache supports "
            "DiT-style pipelines (allowed: pipelines whose denoiser is `pipe.transformer`)"
        )
    return transformer


def _reset_stateful_cache(self: nn.Module, recurse: bool = True) -> None:
    HookRegistry.check_if_exists_or_initialize(self).reset_stateful_hooks(recurse=recurse)


def enable_modulator_cache(pipe: Any, config: ModulatorCacheConfig | None = None) -> ModulatorCache:
    """Apply the modulator cache to ``pipe.transformer`` and hook it into the pipeline's reset.

    Returns the :class:`ModulatorCache` (``.stats`` etc.).
    """
    transformer = _denoiser(pipe)
    cache = apply_modulator_cache(transformer, config)
    if not hasattr(transformer, "_reset_stateful_cache"):
        # Instance attribute, removed again by disable_modulator_cache.
        transformer._reset_stateful_cache = types.MethodType(_reset_stateful_cache, transformer)
        setattr(transformer, _ADDED_RESET, True)
    return cache


def disable_modulator_cache(pipe: Any) -> None:
    """Undo :func:`enable_modulator_cache` (a no-op when it was not enabled)."""
    transformer = _denoiser(pipe)
    remove_modulator_cache(transformer)
    if getattr(transformer, _ADDED_RESET, False):
        del transformer._reset_stateful_cache
        delattr(transformer, _ADDED_RESET)
