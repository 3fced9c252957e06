"""Weight offload for caches that precompute weight-dependent values (modulators).

Once a cache holds the modulators of a render, the modules that produce them are not run during
the steps, so their weights can rest on another device (``"cpu"``) and be streamed to the
execution device only when modulators must be computed (a miss, a probe, a precompute).
Used by :class:`fusion_infer.TimeConditioningCache` (``offload_weights=True``) and by
``fusion_diffusers`` (``ModulatorCacheConfig(offload_weights=True)``).

Mechanism (the same one diffusers' group offloading uses, so ``Parameter`` objects, optimizers,
``state_dict`` and ``EMAModel.copy_to`` keep working): each tensor's ``.data`` *rests* on
``offload_device``; for a computation it is pointed at a copy on the execution device and
pointed back afterwards. Pointing back restores the same storage, ``data_ptr`` and ``_version``,
so a cache's weight fingerprint and content tripwire (docs/design.md §4.3) watch the offloaded copy
itself: writes to it are still detected. Bits are unchanged: the same weights run on the same
device and dtype as without offload.

One streaming moves *all* offloaded tensors once; peak device memory during it equals the
un-offloaded model's. When ``offload_device`` is the execution device (CPU-only machines)
nothing moves and nothing is saved; :class:`ResidentReport` says so (``same_device``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["ResidentReport", "WeightOffload", "parameter_bytes"]


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def parameter_bytes(model: nn.Module, device: torch.device | str | None = None) -> int:
    """Bytes of ``model``'s parameters and buffers (on ``device`` only, when given).

    Example:
        >>> parameter_bytes(torch.nn.Linear(4, 2))   # (8 + 2) fp32 values
        40
    """
    dev = None if device is None else torch.device(device)
    total = 0
    for t in (*model.parameters(), *model.buffers()):
        if dev is None or _same_device(t.device, dev):
            total += _nbytes(t)
    return total


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    # "cuda" and "cuda:0" name the same device when the current device is 0.
    ia = a.index if a.index is not None else (torch.cuda.current_device() if a.type == "cuda" else None)
    ib = b.index if b.index is not None else (torch.cuda.current_device() if b.type == "cuda" else None)
    return ia == ib


@dataclass(frozen=True)
class ResidentReport:
    """Parameter bytes on the execution device with and without the modulator weights.

    Attributes:
        execution_device: where the transformer runs (the device of its other parameters).
        offload_device: where the modulator weights rest.
        total_bytes: all parameters and buffers of the transformer.
        modulator_bytes: the modulator modules' parameters and buffers.
        resident_before: bytes that would be on the execution device without offload.
        resident_after: bytes on the execution device now (modulator weights at rest).
        same_device: ``offload_device`` is the execution device: nothing is saved.
    """

    execution_device: str
    offload_device: str
    total_bytes: int
    modulator_bytes: int
    resident_before: int
    resident_after: int
    same_device: bool

    @property
    def modulator_share(self) -> float:
        """Modulator weights as a fraction of all weights."""
        return self.modulator_bytes / self.total_bytes if self.total_bytes else 0.0

    @property
    def saved_bytes(self) -> int:
        """``resident_before - resident_after``."""
        return self.resident_before - self.resident_after

    @property
    def saved_fraction_of_share(self) -> float:
        """Saved bytes / modulator bytes (1.0 = every modulator byte left the device)."""
        return self.saved_bytes / self.modulator_bytes if self.modulator_bytes else 0.0

    def as_dict(self) -> dict:
        """Plain dict (for JSON), derived ratios included."""
        return {
            "execution_device": self.execution_device,
            "offload_device": self.offload_device,
            "total_bytes": self.total_bytes,
            "modulator_bytes": self.modulator_bytes,
            "modulator_share": self.modulator_share,
            "resident_before": self.resident_before,
            "resident_after": self.resident_after,
            "saved_bytes": self.saved_bytes,
            "saved_fraction_of_share": self.saved_fraction_of_share,
            "same_device": self.same_device,
        }


class WeightOffload:
    """Keeps a set of tensors resting on ``offload_device`` and streams them for computations.

    Args:
        offload_device: where the tensors rest between computations.

    Example:
        >>> lin = torch.nn.Linear(2, 2)
        >>> off = WeightOffload("cpu")
        >>> off.park(lin.parameters())
        False
        >>> with off.streamed("cpu"):
        ...     y = lin(torch.ones(1, 2))
    """

    def __init__(self, offload_device: torch.device | str) -> None:
        self.offload_device = torch.device(offload_device)
        self._tensors: list[Tensor] = []
        self.streamings = 0
        self.streamed_bytes = 0

    @property
    def tensors(self) -> list[Tensor]:
        """The tensors last handed to :meth:`park`."""
        return list(self._tensors)

    @property
    def nbytes(self) -> int:
        """Bytes of the parked tensors."""
        return sum(_nbytes(t) for t in self._tensors)

    def park(self, tensors: Iterable[Tensor]) -> bool:
        """Make ``tensors`` the offloaded set and move any not yet resting; True if one moved.

        Moving gives new storage, so the cache's fingerprint drops its table (as any ``.to()``
        does). Meta tensors hold no data and are left where they are (any use raises).
        """
        self._tensors = list(tensors)
        moved = False
        with torch.no_grad():
            for t in self._tensors:
                if t.device.type == "meta" or _same_device(t.device, self.offload_device):
                    continue
                t.data = t.data.to(self.offload_device)
                moved = True
        return moved

    @contextmanager
    def streamed(self, device: torch.device | str) -> Iterator[None]:
        """Inside the block the parked tensors live on ``device``; afterwards they rest again.

        The resting storage is put back as it was (same ``data_ptr`` and ``_version``), so
        weight watchers see no change. Writes made to the device copies inside the block are
        discarded: change weights outside computations.
        """
        dev = torch.device(device)
        if _same_device(dev, self.offload_device):
            yield
            return
        rest: list[tuple[Tensor, Tensor]] = []
        try:
            with torch.no_grad():
                for t in self._tensors:
                    if t.device.type == "meta":
                        continue
                    rest.append((t, t.data))
                    t.data = t.data.to(dev, non_blocking=True)
                    self.streamed_bytes += _nbytes(t)
            self.streamings += 1
            yield
        finally:
            for t, data in rest:
                t.data = data

    def report(self, model: nn.Module, execution_device: torch.device | str) -> ResidentReport:
        """Bytes on ``execution_device`` now and as they would be without offload."""
        exec_dev = torch.device(execution_device)
        after = parameter_bytes(model, exec_dev)
        off_device = sum(_nbytes(t) for t in self._tensors if not _same_device(t.device, exec_dev))
        return ResidentReport(
            execution_device=str(exec_dev),
            offload_device=str(self.offload_device),
            total_bytes=parameter_bytes(model),
            modulator_bytes=self.nbytes,
            resident_before=after + off_device,
            resident_after=after,
            same_device=_same_device(exec_dev, self.offload_device),
        )
