"""Model-agnostic core of Fusion's lossless caches: exact keys, bounded store, never-stale checks.

This is the machinery shared by :class:`fusion_infer.TimeConditioningCache` (control heads) and
the diffusers integration (``fusion_diffusers``); model-specific glue decides *what* to key and
*how* to compute a value, the core decides *whether a stored value may still be used*.

Stable API (other packages build on it; names here do not change):

* keys — :func:`make_key`, :func:`row_keys`, :func:`tensor_key`, :func:`tensor_bits`,
  :func:`row_bits`, :func:`float_bits`, :func:`dedupe` (from :mod:`fusion_infer.cache.keys`);
* storage — :class:`BoundedStore`, :class:`CacheStats` (from :mod:`fusion_infer.cache.store`);
* weight changes — :class:`WeightWatcher`, :class:`WeightSnapshot`
  (from :mod:`fusion_infer.cache.weight_watch`);
* :func:`bits_equal` and :class:`CacheCore`, defined here.

Never stale (docs/design.md §4.3, ``docs/cache_invalidation.md``):

===================  ============================================  ==============================
check                when                                          catches
===================  ============================================  ==============================
storage identity     every :meth:`validate` (attribute reads)      anything that replaces
                                                                   storage, changes the layout or
                                                                   bumps a version counter
content tripwire     every :meth:`validate` (one ``cat`` + one     whole-tensor rewrites through
                     compare per dtype/device group)               ``.data`` (EMA swaps, merges)
exact digest         first :meth:`validate` after                  **any** change, down to one
                     :meth:`new_render` / :meth:`request_probe`,   bit of one element
                     :meth:`render` entry, every ``probe_every``
                     lookups; every lookup with ``verify="lookup"``
bitwise probe        same events as the digest (and piggy-backed   state outside the watched
                     on miss computations by the glue)             tensors that changes a
                                                                   recorded value
explicit             :meth:`invalidate`, :meth:`weights_swapped`   everything else
===================  ============================================  ==============================

Thread safety: every method takes :attr:`CacheCore.lock` (re-entrant); glue holds it around a
whole validate → get → compute → put sequence so concurrent callers see one consistent table.
Copies (``copy.deepcopy``, pickle) get a fresh lock and an empty table (statistics are kept).

Example:
    >>> import torch
    >>> from fusion_infer.cache.core import CacheCore, make_key
    >>> lin = torch.nn.Linear(4, 8)
    >>> core = CacheCore(lin.parameters, max_entries=16,
    ...                  recompute_probe=lambda x: lin(x).detach())
    >>> def cached(x):
    ...     core.validate()                      # once per call, before any get
    ...     key = make_key(x)
    ...     y = core.get(key)
    ...     if y is None:
    ...         y = lin(x).detach()
    ...         core.put(key, y)
    ...         if not core.has_probe:
    ...             core.expect_probe(x, y)      # what the bitwise probe recomputes
    ...     return y
    >>> x = torch.ones(1, 4)
    >>> _ = cached(x); _ = cached(x)
    >>> core.stats.hits, core.stats.misses
    (1, 1)
    >>> with torch.no_grad():
    ...     _ = lin.weight.data.mul_(2)        # .data write: no _version bump, same data_ptr
    >>> torch.equal(cached(x), lin(x).detach())
    True
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .keys import dedupe, float_bits, make_key, row_bits, row_keys, tensor_bits, tensor_key
from .store import BoundedStore, CacheStats, value_nbytes
from .weight_watch import WeightSnapshot, WeightWatcher

__all__ = [
    "VERIFY_POLICIES",
    "BoundedStore",
    "CacheCore",
    "CacheStats",
    "WeightSnapshot",
    "WeightWatcher",
    "bits_equal",
    "dedupe",
    "float_bits",
    "make_key",
    "row_bits",
    "row_keys",
    "tensor_bits",
    "tensor_key",
    "value_nbytes",
]

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}

#: When the exact digest of every watched tensor is compared: at the start of each render (and
#: every ``probe_every`` lookups), or on every lookup.
VERIFY_POLICIES = ("render", "lookup")


def bits_equal(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` are bit-identical tensors (or equal nested tuples/lists of them).

    Unlike ``torch.equal`` this treats two identical NaN payloads as equal and ``-0.0`` as
    different from ``0.0``: it compares bit patterns, which is what "lossless" means.

    Example:
        >>> nan = torch.tensor([float("nan")])
        >>> bits_equal(nan, nan.clone()), torch.equal(nan, nan.clone())
        (True, False)
        >>> bits_equal(torch.tensor([0.0]), torch.tensor([-0.0]))
        False
    """
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.dtype != b.dtype or a.shape != b.shape or a.device != b.device:
            return False
        int_dtype = _INT_OF_SIZE.get(a.element_size())
        if int_dtype is None or a.dtype == torch.bool or a.is_complex():
            return torch.equal(a, b)
        return torch.equal(a.contiguous().view(int_dtype), b.contiguous().view(int_dtype))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(bits_equal(x, y) for x, y in zip(a, b))
    return False


def _check_probe_every(value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"probe_every must be a positive int or None, got {value!r}")


class CacheCore:
    """Bounded exact-key store whose entries are dropped as soon as the watched weights change.

    Args:
        watched: tensors the cached values depend on (iterable, ``nn.Module`` or a zero-argument
            callable re-evaluated per check — prefer the callable, it sees replaced parameters).
        max_entries: most entries kept (LRU eviction), ``None`` for no count bound.
        max_bytes: most bytes kept, ``None`` for no byte bound.
        samples_per_tensor: content-tripwire elements per watched tensor (0 disables the tripwire).
        probe_every: compare the exact digests and run the bitwise probe every this many
            :meth:`validate` calls (``None``: only at render starts — :meth:`render` entry, the
            first lookup after :meth:`new_render` / :meth:`request_probe` — or when the glue
            piggy-backs the probe).
        recompute_probe: ``inputs -> value`` recomputing a value from the inputs recorded with
            :meth:`expect_probe` using the *current* weights; without it only piggy-backed probes
            (:meth:`confirm_probe`) run.
        verify: ``"render"`` (default): exact digests at render starts and every
            ``probe_every`` lookups; ``"lookup"``: exact digests on every :meth:`validate`.

    Protocol for glue code, per model call: :meth:`validate` once; then :meth:`get` per key;
    compute the misses (with the current weights) and :meth:`put` them; record one computed
    value with :meth:`expect_probe` when :attr:`has_probe` is False. If a miss batch also
    recomputes the recorded probe inputs, hand that result to :meth:`confirm_probe` *before*
    storing the new values (a mismatch clears the table, the new values are still fresh).

    Cost: see the module docstring; measured numbers in ``docs/benchmarks/head_cache.md``.
    """

    def __init__(
        self,
        watched: Callable[[], Iterable[Tensor]] | Iterable[Tensor] | nn.Module,
        *,
        max_entries: int | None = 1024,
        max_bytes: int | None = None,
        samples_per_tensor: int = 16,
        probe_every: int | None = 200,
        recompute_probe: Callable[[Any], Any] | None = None,
        verify: str = "render",
    ) -> None:
        _check_probe_every(probe_every)
        if verify not in VERIFY_POLICIES:
            raise ValueError(f"verify must be one of {VERIFY_POLICIES}, got {verify!r}")
        if recompute_probe is not None and not callable(recompute_probe):
            raise TypeError(f"recompute_probe must be callable or None, got {type(recompute_probe).__name__}")
        self.stats = CacheStats()
        self.store = BoundedStore(max_entries=max_entries, max_bytes=max_bytes, stats=self.stats)
        self.watcher = WeightWatcher(watched, samples_per_tensor=samples_per_tensor)
        self.probe_every = probe_every
        self.recompute_probe = recompute_probe
        self.verify = verify
        #: Re-entrant lock serialising table access (see the module docstring).
        self.lock = threading.RLock()
        #: Bumped by every invalidation; glue can remember it to detect that its table was dropped.
        self.generation = 0
        self._snapshot: WeightSnapshot | None = None
        self._probe: tuple[Any, Any] | None = None
        self._probe_pending = False
        self._verify_pending = False
        self._since_probe = 0

    # ------------------------------------------------------------------------- copies
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["lock"]
        state["store"] = BoundedStore(self.store.max_entries, self.store.max_bytes, stats=self.stats)
        state["_snapshot"] = None
        state["_probe"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.lock = threading.RLock()
        self.store.stats = self.stats
        self.stats.entries = 0
        self.stats.bytes = 0

    # ----------------------------------------------------------------------------- validity
    def validate(self, tensors: Sequence[Tensor] | None = None) -> None:
        """Check the watched weights (identity, tripwire; exact digests when due) and run a due probe.

        Call once per cached model call, before :meth:`get`. Drops the table on any change.
        ``tensors``: the watched tensors if the caller already fetched them (else the source
        given at construction is called).
        """
        with self.lock:
            self._since_probe += 1
            count_due = self.probe_every is not None and self._since_probe >= self.probe_every
            due = self._verify_pending or count_due
            if tensors is None:
                tensors = self.watcher.tensors()
            if len(self.store) == 0:
                # Nothing cached can be stale: only make sure the snapshot describes the weights
                # now, taken here (at rest — glue may stream weights elsewhere to compute).
                if self._snapshot is None or self.watcher.changed(self._snapshot, tensors) is not None:
                    self._snapshot = self.watcher.snapshot(tensors)
                self._verify_pending = False
                self._probe_pending = False
                return
            if self._snapshot is None:
                self._snapshot = self.watcher.snapshot(tensors)
            else:
                full = due or self.verify == "lookup"
                reason = self.watcher.changed(self._snapshot, tensors, full=full)
                if full:
                    self._verify_pending = False
                    self.stats.verifications += 1
                if reason is not None:
                    self.invalidate(reason)
                    return
            if self._probe_pending or count_due:
                self.run_probe()

    @property
    def has_probe(self) -> bool:
        """Whether a probe value is recorded for the current generation."""
        return self._probe is not None

    @property
    def probe_inputs(self) -> Any:
        """Inputs recorded with :meth:`expect_probe` (None when no probe is recorded)."""
        return None if self._probe is None else self._probe[0]

    def expect_probe(self, inputs: Any, expected: Any) -> None:
        """Record ``expected`` = value computed from ``inputs`` with the weights of this generation."""
        self._probe = (inputs, expected)

    def confirm_probe(self, actual: Any) -> bool:
        """Compare a fresh recomputation of the probe inputs with the recorded value, bitwise.

        On mismatch the table is invalidated (reason ``"probe"``) and False returned.
        """
        if self._probe is None:
            return True
        self.stats.probes += 1
        self._since_probe = 0
        self._probe_pending = False
        if bits_equal(actual, self._probe[1]):
            return True
        self.stats.probe_failures += 1
        self.invalidate("probe")
        return False

    def request_probe(self) -> None:
        """Make the next :meth:`validate` compare the exact digests and run the bitwise probe
        (e.g. first lookup after attach)."""
        self._probe_pending = True
        self._verify_pending = True

    def request_verify(self) -> None:
        """Make the next :meth:`validate` compare the exact digests (without the bitwise probe)."""
        self._verify_pending = True

    def new_render(self) -> None:
        """Mark the start of a render: the next :meth:`validate` compares the exact digests of
        every watched tensor (any change down to one bit drops the table) and runs the probe."""
        self.request_probe()

    def run_probe(self) -> bool | None:
        """Recompute the recorded probe value now and compare bitwise; None if nothing to check."""
        self._probe_pending = False
        self._since_probe = 0
        if self._probe is None or self.recompute_probe is None or len(self.store) == 0:
            return None
        return self.confirm_probe(self.recompute_probe(self._probe[0]))

    def invalidate(self, reason: str = "explicit") -> None:
        """Drop every entry and the probe record; the next lookups recompute with current weights."""
        with self.lock:
            self.store.clear()
            self._snapshot = None
            self._probe = None
            self._probe_pending = False
            self._verify_pending = False
            self.generation += 1
            self.stats.invalidations += 1
            self.stats.invalidations_by_reason[reason] += 1

    @contextmanager
    def weights_swapped(self) -> Iterator[None]:
        """Wrap code that changes weights (EMA swap, LoRA fuse…): the table is dropped on exit.

        Example:
            >>> core = CacheCore(torch.nn.Linear(2, 2))
            >>> with core.weights_swapped():
            ...     pass  # ema.copy_to(model.parameters())
            >>> core.stats.invalidations_by_reason["weights_swapped"]
            2
        """
        self.invalidate("weights_swapped")
        try:
            yield
        finally:
            self.invalidate("weights_swapped")

    @contextmanager
    def render(self) -> Iterator[None]:
        """Mark a render (sampling loop): weights are checked and the bitwise probe runs on entry.

        Example:
            >>> core = CacheCore(torch.nn.Linear(2, 2))
            >>> with core.render():
            ...     pass  # the sampler's steps
        """
        with self.lock:
            self.new_render()
            self.validate()
        yield

    # ----------------------------------------------------------------------------- storage
    def get(self, key: Hashable) -> Any | None:
        """Stored value for ``key`` or None (counts a hit or a miss)."""
        with self.lock:
            return self.store.get(key)

    def put(self, key: Hashable, value: Any) -> bool:
        """Store a value computed with the current weights; False if it exceeds ``max_bytes``.

        The first value of a table generation snapshots the weights it was computed with
        (identity, samples and exact digests).
        """
        with self.lock:
            if self._snapshot is None:
                self._snapshot = self.watcher.snapshot()
            return self.store.put(key, value)

    def __len__(self) -> int:
        return len(self.store)
