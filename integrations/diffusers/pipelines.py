"""``enable_modulator_cache(pipe)``: the modulator cache on a diffusers pipeline's transformer.

:func:`enable_modulator_cache`, :func:`disable_modulator_cache` and :func:`stats` take a pipeline
(whose denoiser is ``pipe.transformer``) or the transformer itself.

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
from fusion_infer import CacheStats

from .config import ModulatorCacheConfig
from .families import unwrap_compiled
from .hooks import (
    ModulatorCache,
    apply_modulator_cache,
    get_modulator_cache,
    remove_modulator_cache,
)

__all__ = ["disable_modulator_cache", "enable_modulator_cache", "resolve_transformer", "stats"]

_ADDED_RESET = "_fusion_added_reset_stateful_cache"


def resolve_transformer(pipe_or_transformer: Any, call: str = "enable_modulator_cache") -> nn.Module:
    """The denoiser of a pipeline (``pipe.transformer``), or the transformer itself.

    ``call`` names the function in the error raised for anything else.

    Example:
        >>> resolve_transformer(object(), "stats")
        Traceback (most recent call last):
        ...
        TypeError: stats(pipe_or_transformer) takes a diffusers pipeline whose denoiser is `pipe.transformer`, or that transformer; got object
    """
    if isinstance(pipe_or_transformer, nn.Module):
        return pipe_or_transformer
    transformer = getattr(pipe_or_transformer, "transformer", None)
    if isinstance(transformer, nn.Module):
        return transformer
    unet = " (a UNet pipeline: the modulator cache covers DiT transformers only)" if hasattr(
        pipe_or_transformer, "unet") else ""
    raise TypeError(
        f"{call}(pipe_or_transformer) takes a diffusers pipeline whose denoiser is `pipe.transformer`, "
        f"or that transformer; got {type(pipe_or_transformer).__name__}{unet}"
    )


def _reset_stateful_cache(self: nn.Module, recurse: bool = True) -> None:
    HookRegistry.check_if_exists_or_initialize(self).reset_stateful_hooks(recurse=recurse)


def enable_modulator_cache(pipe_or_transformer: Any, config: ModulatorCacheConfig | None = None) -> ModulatorCache:
    """Apply the modulator cache to a pipeline's transformer (or a transformer) and hook it into
    the pipeline's end-of-call reset.

    Returns the :class:`ModulatorCache` (``.stats``, ``repr`` for a one-line summary). Raises
    ``ValueError`` when a cache is already enabled (naming :func:`disable_modulator_cache`) and
    :class:`~fusion_diffusers.UnsupportedModelError` for transformer classes it does not cover.
    """
    transformer = resolve_transformer(pipe_or_transformer, "enable_modulator_cache")
    if get_modulator_cache(transformer) is not None:
        raise ValueError(
            f"a modulator cache is already enabled on this {type(transformer).__name__}; reuse it "
            "with get_modulator_cache(transformer), or call disable_modulator_cache(...) first to "
            "enable it with another config"
        )
    cache = apply_modulator_cache(transformer, config)
    if not hasattr(transformer, "_reset_stateful_cache"):
        # Instance attribute, removed again by disable_modulator_cache.
        transformer._reset_stateful_cache = types.MethodType(_reset_stateful_cache, transformer)
        setattr(transformer, _ADDED_RESET, True)
    return cache


def disable_modulator_cache(pipe_or_transformer: Any) -> None:
    """Undo :func:`enable_modulator_cache` on a pipeline or transformer (a no-op when not enabled)."""
    transformer = resolve_transformer(pipe_or_transformer, "disable_modulator_cache")
    remove_modulator_cache(transformer)
    if getattr(transformer, _ADDED_RESET, False):
        del transformer._reset_stateful_cache
        delattr(transformer, _ADDED_RESET)


def stats(pipe_or_transformer: Any) -> CacheStats:
    """The :class:`fusion_infer.CacheStats` of the cache on a pipeline's transformer (or a transformer).

    Raises ``ValueError`` naming :func:`enable_modulator_cache` when no cache is enabled.
    """
    transformer = resolve_transformer(pipe_or_transformer, "stats")
    cache = get_modulator_cache(transformer)
    if cache is None:
        what = "transformer" if isinstance(pipe_or_transformer, nn.Module) else "pipe"
        raise ValueError(
            f"no modulator cache is enabled on this {type(unwrap_compiled(transformer)).__name__}; "
            f"call fusion_diffusers.enable_modulator_cache({what}) first"
        )
    return cache.stats
