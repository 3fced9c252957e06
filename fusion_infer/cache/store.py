"""A bounded LRU table of tensors with hit/miss/byte statistics (docs/design.md §4.6).

Entries are tensors (or tuples/lists/dicts of tensors). The store is bounded by an entry count
and/or a byte budget and evicts least-recently-used entries first. It knows nothing about models
or weights: staleness is the job of :mod:`fusion_infer.cache.weight_watch` and
:class:`fusion_infer.cache.core.CacheCore`.

Example:
    >>> import torch
    >>> from fusion_infer.cache.store import BoundedStore
    >>> s = BoundedStore(max_entries=2)
    >>> s.put("a", torch.zeros(4)); s.put("b", torch.ones(4)); s.put("c", torch.ones(4))
    True
    True
    True
    >>> s.get("a") is None, len(s), s.stats.evictions
    (True, 2, 1)
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["CacheStats", "BoundedStore", "value_nbytes"]


@dataclass
class CacheStats:
    """Counters of a cache. ``entries`` and ``bytes`` describe the table now; the rest accumulate.

    ``hits``/``misses`` count distinct keys looked up; ``bypassed`` counts calls answered without
    the table (e.g. training with grad-requiring modulator weights); ``invalidations_by_reason``
    says which mechanism dropped the table ("fingerprint", "content", "digest", "probe", "explicit",
…); ``verifications`` counts comparisons of the exact digests.
    """

    hits: int = 0
    misses: int = 0
    entries: int = 0
    bytes: int = 0
    evictions: int = 0
    invalidations: int = 0
    invalidations_by_reason: Counter = field(default_factory=Counter)
    probes: int = 0
    probe_failures: int = 0
    bypassed: int = 0
    verifications: int = 0

    @property
    def hit_rate(self) -> float:
        """``hits / (hits + misses)``; 0.0 before any lookup."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict view (JSON-serialisable) including ``hit_rate``."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "entries": self.entries,
            "bytes": self.bytes,
            "evictions": self.evictions,
            "invalidations": self.invalidations,
            "invalidations_by_reason": dict(self.invalidations_by_reason),
            "probes": self.probes,
            "probe_failures": self.probe_failures,
            "bypassed": self.bypassed,
            "verifications": self.verifications,
            "hit_rate": self.hit_rate,
        }


def value_nbytes(value: Any) -> int:
    """Bytes held by a tensor or a (nested) tuple/list/dict of tensors; other leaves count 0."""
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(value_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(value_nbytes(v) for v in value.values())
    return 0


def _check_limit(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")


class BoundedStore:
    """LRU mapping ``key -> tensor value`` bounded by ``max_entries`` and/or ``max_bytes``.

    Args:
        max_entries: most entries kept (``None``: unbounded count).
        max_bytes: most bytes kept, summed over all entries (``None``: unbounded size).
        stats: a :class:`CacheStats` to update (a new one by default); share one between a store
            and its owner so that invalidations and hits land in the same place.

    A value larger than ``max_bytes`` on its own is not stored (``put`` returns False).
    Values are stored as given: pass tensors that nobody mutates afterwards (clone if unsure).
    """

    def __init__(
        self,
        max_entries: int | None = 1024,
        max_bytes: int | None = None,
        stats: CacheStats | None = None,
    ) -> None:
        _check_limit("max_entries", max_entries)
        _check_limit("max_bytes", max_bytes)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.stats = stats if stats is not None else CacheStats()
        self._table: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._table

    def keys(self) -> Iterator[Hashable]:
        """Keys from least to most recently used."""
        return iter(list(self._table.keys()))

    def get(self, key: Hashable) -> Any | None:
        """The value for ``key`` (marking it most recently used) or None; counts a hit or a miss."""
        item = self._table.get(key)
        if item is None:
            self.stats.misses += 1
            return None
        self._table.move_to_end(key)
        self.stats.hits += 1
        return item[0]

    def peek(self, key: Hashable) -> Any | None:
        """The value for ``key`` without touching LRU order or statistics."""
        item = self._table.get(key)
        return None if item is None else item[0]

    def put(self, key: Hashable, value: Any) -> bool:
        """Store ``value`` under ``key`` and evict LRU entries beyond the bounds.

        Returns False (and stores nothing) when the value alone exceeds ``max_bytes``.
        """
        nbytes = value_nbytes(value)
        if self.max_bytes is not None and nbytes > self.max_bytes:
            return False
        old = self._table.pop(key, None)
        if old is not None:
            self.stats.bytes -= old[1]
        self._table[key] = (value, nbytes)
        self.stats.bytes += nbytes
        self._evict()
        self.stats.entries = len(self._table)
        return True

    def _evict(self) -> None:
        while (self.max_entries is not None and len(self._table) > self.max_entries) or (
            self.max_bytes is not None and self.stats.bytes > self.max_bytes
        ):
            _, (_, nbytes) = self._table.popitem(last=False)
            self.stats.bytes -= nbytes
            self.stats.evictions += 1

    def clear(self) -> None:
        """Drop every entry (statistics other than entries/bytes are kept)."""
        self._table.clear()
        self.stats.entries = 0
        self.stats.bytes = 0
