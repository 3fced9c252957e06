"""Multi-process head training under ``torchrun``: process-group set-up, DDP or FSDP2 wrapping,
the per-rank share of each global batch, and which rank writes.

``torchrun --nproc_per_node N -m fusion_train.cli head …`` (or ``fusion-train head`` launched by
torchrun) sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``; :func:`init_from_env` then starts the
default process group (gloo on CPU, NCCL on CUDA). Training keeps the single-process data order:
every rank draws the same *global* batch (indices, noise levels and noise from the same seeded
generators) and computes on its contiguous ``1/N`` slice of it, so each rank sees a disjoint shard
of every batch as with ``torch.utils.data.DistributedSampler``, and a 1-process and an N-process
run with the same global ``batch_size`` follow the same trajectory up to floating-point rounding.
DDP averages the gradients; FSDP2 (``fully_shard``, ``--fsdp``) reduce-scatters them; FusionOpt
averages the per-rank losses for its Polyak step. Every rank validates (FSDP2's forward is
collective); rank 0 alone writes checkpoints and telemetry.

Example:
    >>> rank_slice(16, rank=1, world=4)
    slice(4, 8, None)
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "PARALLEL_MODES", "init_from_env", "is_writer", "model_class", "rank_slice", "resolve_parallel", "world_info",
    "wrap_model",
]

PARALLEL_MODES = ("auto", "none", "ddp", "fsdp")


def init_from_env(device: str | torch.device = "cpu") -> bool:
    """Start the default process group when launched by torchrun with ``WORLD_SIZE > 1``.

    Returns whether a multi-process group is active. Does nothing if one is already initialised.
    """
    if not dist.is_available():
        return False
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return dist.is_initialized() and dist.get_world_size() > 1


def world_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the default group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_writer() -> bool:
    """Whether this process writes files (rank 0, or the only process)."""
    return world_info()[0] == 0


def resolve_parallel(mode: str) -> str:
    """``"auto"`` → ``"ddp"`` when a multi-process group is active, else ``"none"``.

    ``"ddp"``/``"fsdp"`` need an initialised process group (raise ``ValueError`` otherwise).
    """
    if mode not in PARALLEL_MODES:
        raise ValueError(f"parallel must be one of {PARALLEL_MODES}, got {mode!r}")
    active = dist.is_available() and dist.is_initialized()
    if mode == "auto":
        return "ddp" if active and dist.get_world_size() > 1 else "none"
    if mode in ("ddp", "fsdp") and not active:
        raise ValueError(f"parallel={mode!r} needs torch.distributed: launch with torchrun "
                         "(or call torch.distributed.init_process_group first)")
    return mode


def rank_slice(batch_size: int, rank: int | None = None, world: int | None = None) -> slice:
    """This rank's contiguous share of a global batch (``batch_size`` must divide evenly)."""
    if rank is None or world is None:
        rank, world = world_info()
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} must be divisible by the number of processes ({world})")
    n = batch_size // world
    return slice(rank * n, (rank + 1) * n)


def wrap_model(model: nn.Module, mode: str) -> tuple[nn.Module, dict[str, Any]]:
    """Prepare ``model`` for ``mode``; returns ``(module to call in training, optimizer options)``.

    ``"fsdp"`` shards ``model`` in place with ``fully_shard`` (FusionOpt detects the DTensors);
    ``"ddp"`` wraps it in ``DistributedDataParallel`` and asks FusionOpt to split its
    Newton–Schulz work over the default group; ``"none"`` returns the model unchanged.
    """
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        fully_shard(model)
        return model, {}
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model), {"process_group": dist.group.WORLD}
    return model, {}


def model_class(model: nn.Module) -> type:
    """The model's own class: ``fully_shard`` swaps it for a generated ``FSDP<Class>`` subclass."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return type(model)
    if isinstance(model, FSDPModule):
        return next(c for c in type(model).__mro__[1:] if not issubclass(c, FSDPModule))
    return type(model)
