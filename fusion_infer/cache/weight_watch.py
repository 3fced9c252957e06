"""Detection of weight changes for caches of weight-dependent values (docs/design.md §4.3).

Three layers over the *watched* tensors (every tensor a cached value depends on):

1. **Storage identity**, every lookup — per tensor ``id``, ``data_ptr``, storage offset,
   strides, shape, dtype, device and the autograd version counter where it exists
   (:func:`~fusion_infer.cache.fingerprint.storage_identity`). Catches everything that replaces
   storage, changes the layout (``w.data = w.data.t()``) or bumps the version:
   ``optimizer.step()``, ``load_state_dict`` (in place or ``assign=True``), Schedule-Free
   ``eval()``/``train()``, ``model.to()``, replaced parameters. No kernels.
2. **Content tripwire**, every lookup — ``samples_per_tensor`` elements of every watched
   tensor, read through 1-D ``as_strided`` views of the tensor's *own storage* (so a transposed,
   offset or otherwise non-contiguous tensor is sampled where its values really live, never a
   frozen copy), compared bitwise with the values recorded at snapshot time. Catches whole-tensor
   rewrites through ``.data`` that keep pointer and version — EMA swaps (``p.data.copy_``,
   diffusers ``EMAModel.copy_to``), PEFT merges — since such a rewrite changes the sampled
   elements. Cost: one ``cat`` per dtype/device group and one compare.
3. **Exact digest**, at render start (or on every lookup with ``verify="lookup"``) — the
   64-bit content digest of every watched tensor over all of its bytes
   (:func:`~fusion_infer.cache.fingerprint.tensor_digest`): any change at all, down to one bit
   of one element, is seen. Cost: a few integer kernels per byte (≈ 5 GB/s on two CPU cores)
   and one host sync.

Example:
    >>> import torch
    >>> from fusion_infer.cache.weight_watch import WeightWatcher
    >>> emb = torch.nn.Embedding(1000, 8)
    >>> w = WeightWatcher(emb.parameters)
    >>> snap = w.snapshot()
    >>> with torch.no_grad():
    ...     _ = emb.weight.data[7, 1:].add_(0.5)  # sparse .data write: same pointer and version
    >>> w.changed(snap) is None          # row 7 holds none of the sampled elements …
    True
    >>> w.changed(snap, full=True)       # … the exact digest sees any change
    'digest'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .fingerprint import digest_tensors, digests_to_host, storage_identity

__all__ = ["WeightSnapshot", "WeightWatcher"]

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass(frozen=True)
class WeightSnapshot:
    """What a :class:`WeightWatcher` recorded.

    Attributes:
        fingerprint: storage identity of every watched tensor (layer 1).
        samples: the sampled elements, copied (layer 2).
        views: the ``as_strided`` views the samples were read from; valid while ``fingerprint``
            is unchanged (same storage, offset and strides), so re-reading them is one ``cat``.
        digest: host tuple of the exact per-tensor digests (layer 3), or None when not taken.
    """

    fingerprint: tuple
    samples: tuple[Tensor, ...]
    views: tuple[tuple[Tensor, ...], ...] = ()
    digest: tuple | None = None


class _ModuleSource:
    """Picklable source: the parameters and buffers of a module, re-read on every call."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self) -> list[Tensor]:
        return [*self.module.parameters(), *self.module.buffers()]


class _FixedSource:
    """Picklable source: a fixed list of tensors."""

    def __init__(self, tensors: list[Tensor]) -> None:
        self.tensors = tensors

    def __call__(self) -> list[Tensor]:
        return self.tensors


def _sample_view(t: Tensor, k: int) -> Tensor | None:
    """A 1-D view of ``k`` evenly spaced elements of the storage span ``t`` occupies."""
    n = t.numel()
    if n == 0 or k == 0:
        return None
    span = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    k = min(k, span)
    step = max(1, span // k)
    return t.detach().as_strided((k,), (step,), t.storage_offset())


class WeightWatcher:
    """Storage identity + content tripwire + exact digest over a set of tensors (module docs).

    Args:
        tensors: the tensors whose values the cached results depend on — an iterable, an
            ``nn.Module`` (its parameters and buffers), or a zero-argument callable returning
            them. A callable is re-evaluated on every check, so replaced parameters/modules are
            seen (their new ids change the fingerprint).
        samples_per_tensor: elements sampled per tensor for the content tripwire (0 disables it).

    Example:
        >>> lin = torch.nn.Linear(2, 2)
        >>> watcher = WeightWatcher(lin, samples_per_tensor=4)
        >>> snap = watcher.snapshot()
        >>> _ = lin.to(torch.float64)
        >>> watcher.changed(snap)
        'fingerprint'
    """

    def __init__(
        self,
        tensors: Callable[[], Iterable[Tensor]] | Iterable[Tensor] | nn.Module,
        samples_per_tensor: int = 16,
    ) -> None:
        if isinstance(samples_per_tensor, bool) or not isinstance(samples_per_tensor, int) or samples_per_tensor < 0:
            raise ValueError(
                f"samples_per_tensor must be an int >= 0, got {samples_per_tensor!r}"
            )
        if isinstance(tensors, nn.Module):
            self._source: Callable[[], Iterable[Tensor]] = _ModuleSource(tensors)
        elif callable(tensors):
            self._source = tensors
        else:
            self._source = _FixedSource(list(tensors))
        self.samples_per_tensor = samples_per_tensor

    def tensors(self) -> list[Tensor]:
        """The watched tensors now."""
        out = list(self._source())
        for i, t in enumerate(out):
            if not isinstance(t, Tensor):
                raise TypeError(f"watched item {i} is a {type(t).__name__}, expected a Tensor")
        return out

    @staticmethod
    def fingerprint(tensors: Sequence[Tensor]) -> tuple:
        """Storage identity of every tensor (:func:`~fusion_infer.cache.fingerprint.storage_identity`)."""
        return tuple(storage_identity(t) for t in tensors)

    @staticmethod
    def digest(tensors: Sequence[Tensor]) -> tuple:
        """Exact content digests of every tensor as a host tuple (one sync per device)."""
        return digests_to_host(digest_tensors(tensors))

    def _views(self, tensors: Sequence[Tensor]) -> tuple[tuple[Tensor, ...], ...]:
        k = self.samples_per_tensor
        if k == 0 or not tensors:
            return ()
        groups: dict[tuple, list[Tensor]] = {}
        for t in tensors:
            v = _sample_view(t, k)
            if v is not None:
                groups.setdefault((t.dtype, t.device), []).append(v)
        return tuple(tuple(v) for v in groups.values())

    @staticmethod
    def _read(views: tuple[tuple[Tensor, ...], ...]) -> tuple[Tensor, ...]:
        out = []
        for group in views:
            sample = torch.cat(group)  # one kernel per dtype/device group; reads live memory
            if sample.is_complex():
                sample = torch.view_as_real(sample)
            int_dtype = _INT_OF_SIZE.get(sample.element_size())
            # Compare bit patterns, not values: NaN != NaN and -0.0 == 0.0 would both mislead.
            if int_dtype is not None and sample.dtype != torch.bool:
                sample = sample.view(int_dtype)
            out.append(sample)
        return tuple(out)

    def snapshot(self, tensors: Sequence[Tensor] | None = None, *, full: bool = True) -> WeightSnapshot:
        """Record storage identity, sampled elements and (``full=True``) the exact digests now.

        ``tensors``: the current watched tensors if the caller already has them (saves a call
        of the source); by default :meth:`tensors`.
        """
        ts = self.tensors() if tensors is None else tensors
        views = self._views(ts)
        return WeightSnapshot(self.fingerprint(ts), self._read(views), views, self.digest(ts) if full else None)

    def changed(
        self, snapshot: WeightSnapshot, tensors: Sequence[Tensor] | None = None, *, full: bool = False
    ) -> str | None:
        """Why the tensors differ from ``snapshot`` — ``"fingerprint"`` (storage identity),
        ``"content"`` (tripwire) or ``"digest"`` (exact, only with ``full=True``) — else None.

        ``tensors``: as in :meth:`snapshot`. ``full=True`` on a snapshot taken without a digest
        reports ``"digest"`` (nothing proves the contents unchanged).
        """
        ts = self.tensors() if tensors is None else tensors
        if self.fingerprint(ts) != snapshot.fingerprint:
            return "fingerprint"
        now = self._read(snapshot.views)
        if len(now) != len(snapshot.samples) or not all(
            torch.equal(a, b) for a, b in zip(now, snapshot.samples)
        ):
            return "content"
        if full and (snapshot.digest is None or self.digest(ts) != snapshot.digest):
            return "digest"
        return None
