"""Which modulator cache each model uses during one render, and the uncached alternative.

A sampler calls the base model at every ``t_i`` of its schedule and each control head at
``t_i`` (variance guidance) and at ``t = 0`` (mean guidance). :class:`RenderCaches` keeps one
:class:`~fusion_infer.cache.time_conditioning.TimeConditioningCache` per model, so a caller that renders many
times with the same schedule pays for the modulators once; :func:`uncached` guarantees the
opposite (no provider attached) for the ``cache=False`` comparison path.

Example:
    >>> import torch
    >>> from fusion_infer import ControlHead
    >>> head = ControlHead(dim=64, depth=1, heads=4, freq_dim=64).requires_grad_(False)
    >>> caches = RenderCaches()
    >>> with caches.scope([head], torch.tensor([1.0, 0.5, 0.0])):
    ...     _ = head(torch.randn(1, 64, 8), 0.5)
    >>> caches.cache_for(head).stats.hits, head.modulator_provider is None
    (1, True)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

from torch import Tensor, nn

from ..cache.time_conditioning import TimeConditioningCache

__all__ = ["RenderCaches", "uncached"]


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)


class RenderCaches:
    """One :class:`TimeConditioningCache` per model, reused across renders.

    Args:
        max_entries: ``max_entries`` of each cache (a 40-step schedule plus ``t = 0`` needs 41).

    A model that already has a cache attached by its owner keeps using that cache.
    """

    def __init__(self, max_entries: int = 1024) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be a positive int, got {max_entries!r}")
        self.max_entries = max_entries
        self._caches: dict[int, TimeConditioningCache] = {}

    def cache_for(self, model: nn.Module) -> TimeConditioningCache:
        """The cache this object uses for ``model`` (created on first use)."""
        model = _unwrap(model)
        provider = getattr(model, "_modulator_provider", None)
        if isinstance(provider, TimeConditioningCache):
            return provider
        cache = self._caches.get(id(model))
        if cache is None or cache.model is not model:
            cache = TimeConditioningCache(model, max_entries=self.max_entries)
            self._caches[id(model)] = cache
        return cache

    @contextmanager
    def scope(self, models: Sequence[nn.Module], t_values: Tensor) -> Iterator[dict[int, TimeConditioningCache]]:
        """Attach each model's cache, warm it with ``t_values`` and mark a render; detach after.

        Yields ``{id(model): cache}``. Caches attached by the caller before stay attached.
        """
        out: dict[int, TimeConditioningCache] = {}
        with ExitStack() as stack:
            for model in models:
                m = _unwrap(model)
                if id(m) in out:
                    continue
                cache = self.cache_for(m)
                if not cache.attached:
                    cache.attach()
                    stack.callback(cache.detach)
                cache.warm(t_values)
                stack.enter_context(cache.render())
                out[id(m)] = cache
            yield out


@contextmanager
def uncached(models: Sequence[nn.Module]) -> Iterator[None]:
    """Run with no modulator provider on ``models`` (re-attaching any that were attached)."""
    detached: list[TimeConditioningCache] = []
    try:
        for model in models:
            m = _unwrap(model)
            provider = getattr(m, "_modulator_provider", None)
            if provider is not None:
                provider.detach()
                detached.append(provider)
        yield
    finally:
        for provider in detached:
            provider.attach()
