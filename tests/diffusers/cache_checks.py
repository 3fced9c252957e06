"""Checks shared by the family test files: fill-and-replay bit-equality and entry perturbation."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from fusion_diffusers import ModulatorCacheConfig, apply_modulator_cache


def assert_fill_and_replay_exact(model, steps: list, forward: Callable, same: Callable = torch.equal):
    """Uncached outputs, then one cached pass that fills the table and one that replays it: every
    output bit-equal to the uncached one. Returns the cache (still attached) for its stats."""
    reference = [forward(model, x) for x in steps]
    cache = apply_modulator_cache(model)
    first = [forward(model, x) for x in steps]  # fills the table
    second = [forward(model, x) for x in steps]  # replays it
    for ref, a, b in zip(reference, first, second):
        assert same(ref, a) and same(ref, b)
    return cache


@contextmanager
def one_cached_entry(model, x: dict, forward: Callable) -> Iterator[tuple[torch.Tensor, dict]]:
    """(uncached output for ``x``, the live site → value table of the one entry ``x`` cached)."""
    reference = forward(model, x)
    cache = apply_modulator_cache(model, ModulatorCacheConfig(probe="never"))
    forward(model, x)
    (key,) = list(cache.core.store.keys())
    yield reference, cache.core.store.peek(key)


def scaled(value, factor: float = 1.5):
    """A cached site value (a tensor or a tuple of them) scaled: a wrong entry."""
    return tuple(t * factor for t in value) if isinstance(value, tuple) else value * factor


def assert_miss_and_exact(cache, model, changed: dict, forward: Callable, what: str, same: Callable = torch.equal):
    """A forward on ``changed`` inputs computes a new entry (one more miss) and is bit-equal to the
    uncached model's output for them."""
    misses = cache.stats.misses
    with cache.disabled():
        expected = forward(model, changed)
    got = forward(model, changed)
    assert cache.stats.misses == misses + 1, what
    assert same(got, expected), what
