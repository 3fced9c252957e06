"""``ModulatorCacheConfig``: the settings of the diffusers modulator cache.

Mirrors diffusers' own cache configs (``FirstBlockCacheConfig``, ``TaylorSeerCacheConfig`` …): a
dataclass validated at construction, handed to :func:`fusion_diffusers.apply_modulator_cache`.

Example:
    >>> ModulatorCacheConfig(max_entries=256).probe
    'render'
    >>> ModulatorCacheConfig(probe="sometimes")
    Traceback (most recent call last):
    ...
    ValueError: probe must be one of ('render', 'always', 'never'), got 'sometimes'
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ModulatorCacheConfig", "PROBE_POLICIES", "VERIFY_POLICIES"]

PROBE_POLICIES = ("render", "always", "never")
VERIFY_POLICIES = ("render", "lookup")


def _positive_or_none(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")


@dataclass(frozen=True)
class ModulatorCacheConfig:
    """Settings of the lossless modulator cache (docs/design.md §4).

    Attributes:
        max_entries: most cached calls kept (LRU); one entry holds every modulator of one
            forward call (all blocks, whole batch). ``None``: no count bound.
        max_bytes: most bytes kept over all entries (default 1 GiB). ``None``: no byte bound.
        samples_per_tensor: elements per watched weight compared bitwise on every call (the
            content tripwire that catches whole-tensor ``.data`` writes such as
            ``EMAModel.copy_to`` at the next call); 0 disables it.
        verify: when the exact 64-bit digests of every watched tensor (all bytes; any change
            down to one bit) are compared — ``"render"`` (default): at the start of each render
            (the pipeline's end-of-call reset, :meth:`ModulatorCache.new_render`, a timestep that
            does not decrease for the same conditioning) and every ``probe_every`` calls;
            ``"lookup"``: on every call.
        probe: when a replayed entry is re-verified bitwise against a fresh recomputation —
            ``"render"`` (default): at the start of each render (the pipeline's end-of-call
            reset, :meth:`ModulatorCache.new_render`, or a timestep that does not decrease for the
            same conditioning); ``"always"``: on every call (no speed-up, for debugging);
            ``"never"``: rely on the fingerprint, the tripwire and explicit invalidation.
        probe_every: additionally probe every this many calls (``None``: never by count).
        offload_weights: keep the modulator modules' weights on ``offload_device`` and stream them
            to the execution device only to compute modulators (a cache miss, a probe,
            :func:`fusion_diffusers.precompute`); steps that hit the cache run with no modulator
            weight on the execution device (:mod:`fusion_diffusers.offload`).
        offload_device: where offloaded modulator weights rest (default ``"cpu"``; not ``"meta"``).
    """

    max_entries: int | None = 1024
    max_bytes: int | None = 1 << 30
    samples_per_tensor: int = 16
    verify: str = "render"
    probe: str = "render"
    probe_every: int | None = None
    offload_weights: bool = False
    offload_device: str | torch.device = "cpu"

    def __post_init__(self) -> None:
        _positive_or_none("max_entries", self.max_entries)
        _positive_or_none("max_bytes", self.max_bytes)
        _positive_or_none("probe_every", self.probe_every)
        if (
            isinstance(self.samples_per_tensor, bool)
            or not isinstance(self.samples_per_tensor, int)
            or self.samples_per_tensor < 0
        ):
            raise ValueError(f"samples_per_tensor must be an int >= 0, got {self.samples_per_tensor!r}")
        if self.verify not in VERIFY_POLICIES:
            raise ValueError(f"verify must be one of {VERIFY_POLICIES}, got {self.verify!r}")
        if self.probe not in PROBE_POLICIES:
            raise ValueError(f"probe must be one of {PROBE_POLICIES}, got {self.probe!r}")
        if not isinstance(self.offload_weights, bool):
            raise TypeError(f"offload_weights must be a bool, got {type(self.offload_weights).__name__}")
        try:
            device = torch.device(self.offload_device)
        except (RuntimeError, TypeError):
            raise ValueError(
                f"offload_device must be a torch.device or device string such as 'cpu', got {self.offload_device!r}"
            ) from None
        if device.type == "meta":
            raise ValueError("offload_device must hold real data ('cpu', 'cuda:1', ...), got 'meta'")
