"""Cheap detection of weight changes for caches of weight-dependent values (docs/design.md §4.3).

Two layers, both checked on every cache lookup:

1. **Fingerprint** — per watched tensor: ``id``, ``data_ptr``, ``_version``, dtype, device, shape,
   strides. Catches anything that replaces storage or bumps the autograd version counter:
   ``optimizer.step()`` (in-place ops on the parameter), ``load_state_dict`` (in-place
   ``copy_`` under ``no_grad``), Schedule-Free ``eval()``/``train()`` (``p.lerp_``), ``model.to()``
   (new storage), ``load_state_dict(assign=True)`` / replaced parameters (new ids/pointers).
   Cost: a few attribute reads per tensor, no kernels.
2. **Content tripwire** — ``samples_per_tensor`` elements at fixed strided positions of every
   watched tensor, copied at snapshot time and compared *bitwise* later. Writes through ``.data``
   (``p.data.copy_`` as in ``ema_pytorch`` / diffusers ``EMAModel.copy_to``, PEFT merges
   ``weight.data += delta``) keep ``data_ptr`` **and** ``_version`` (measured by
   ``benchmarks/cache_invalidation_probes.py``), so only content can reveal them. A dense change (EMA swap,
   LoRA merge, checkpoint load) alters essentially every element and is caught; a change confined
   to unsampled elements is not — that residue is what the bitwise probe of
   :class:`fusion_infer.cache.core.CacheCore` and explicit invalidation are for.
   Cost: one ``cat`` over strided views + one bitwise compare (one host sync on CUDA).

Example:
    >>> import torch
    >>> from fusion_infer.cache.weight_watch import WeightWatcher
    >>> lin = torch.nn.Linear(4, 4)
    >>> w = WeightWatcher(lin.parameters)
    >>> snap = w.snapshot()
    >>> w.changed(snap) is None
    True
    >>> with torch.no_grad():
    ...     _ = lin.weight.data.copy_(torch.randn(4, 4))  # keeps data_ptr and _version
    >>> w.changed(snap)
    'content'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["WeightSnapshot", "WeightWatcher"]

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass(frozen=True)
class WeightSnapshot:
    """What a :class:`WeightWatcher` recorded: the fingerprint, the sampled elements (a copy)
    and the strided views they were read from (reused by later checks: while the fingerprint
    is unchanged the views still address the same memory, so re-reading them is one ``cat``).
    """

    fingerprint: tuple
    samples: tuple[Tensor, ...]
    views: tuple[tuple[Tensor, ...], ...] = ()


def _version_of(t: Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # inference-mode tensors have no version counter
        return None


class WeightWatcher:
    """Fingerprint + content tripwire over a set of tensors (see the module docstring).

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
            module = tensors
            self._source: Callable[[], Iterable[Tensor]] = lambda: [
                *module.parameters(),
                *module.buffers(),
            ]
        elif callable(tensors):
            self._source = tensors
        else:
            fixed = list(tensors)
            self._source = lambda: fixed
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
        """``(id, data_ptr, _version, dtype, shape)`` per tensor.

        Device, strides and dtype views need new storage, hence a new ``data_ptr``; shape is
        kept for ``set_``-style resizes of the same storage.
        """
        return tuple((id(t), t.data_ptr(), _version_of(t), t.dtype, t.shape) for t in tensors)

    def _views(self, tensors: Sequence[Tensor]) -> tuple[tuple[Tensor, ...], ...]:
        """Strided views of ``samples_per_tensor`` elements per tensor, grouped by dtype/device."""
        k = self.samples_per_tensor
        if k == 0 or not tensors:
            return ()
        groups: dict[tuple, list[Tensor]] = {}
        for t in tensors:
            flat = t.detach().reshape(-1)  # a view for contiguous parameters
            n = flat.numel()
            if n == 0:
                continue
            step = max(1, n // k)
            groups.setdefault((t.dtype, t.device), []).append(flat[::step][:k])
        return tuple(tuple(v) for v in groups.values())

    @staticmethod
    def _read(views: tuple[tuple[Tensor, ...], ...]) -> tuple[Tensor, ...]:
        out = []
        for group in views:
            sample = torch.cat(group)  # one kernel per dtype/device group; a copy
            int_dtype = _INT_OF_SIZE.get(sample.element_size())
            # Compare bit patterns, not values: NaN != NaN and -0.0 == 0.0 would both mislead.
            if int_dtype is not None and sample.dtype != torch.bool and not sample.is_complex():
                sample = sample.view(int_dtype)
            out.append(sample)
        return tuple(out)

    def snapshot(self, tensors: Sequence[Tensor] | None = None) -> WeightSnapshot:
        """Record the fingerprint and the sampled elements of the watched tensors now.

        ``tensors``: the current watched tensors if the caller already has them (saves a call
        of the source); by default :meth:`tensors`.
        """
        ts = self.tensors() if tensors is None else tensors
        views = self._views(ts)
        return WeightSnapshot(self.fingerprint(ts), self._read(views), views)

    def changed(self, snapshot: WeightSnapshot, tensors: Sequence[Tensor] | None = None) -> str | None:
        """``"fingerprint"`` or ``"content"`` if the tensors differ from ``snapshot``, else None.

        ``tensors``: as in :meth:`snapshot`.
        """
        ts = self.tensors() if tensors is None else tensors
        if self.fingerprint(ts) != snapshot.fingerprint:
            return "fingerprint"
        now = self._read(snapshot.views)
        if len(now) != len(snapshot.samples) or not all(
            torch.equal(a, b) for a, b in zip(now, snapshot.samples)
        ):
            return "content"
        return None
