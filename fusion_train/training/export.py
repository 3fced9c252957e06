"""Checkpoint export (averaged weights, docs/design.md §6) and full training state for resuming.

* :func:`export_checkpoint` writes the inference checkpoint read by :func:`fusion_infer.load_head`:
  the **Schedule-Free averaged iterate x** of every parameter, whatever mode the optimizer is in.
  For a :class:`~fusion_train.FusionOpt` with ``sf`` it asks ``optimizer.averaged(p)`` per
  parameter (bit-identical to the weights after ``optimizer.eval()``, and it does not toggle the
  optimizer's mode); for optimizers without Schedule-Free (AdamW, Muon) x *is* the parameter. The
  fast iterate z lives only in optimizer state and never reaches the file; the gradient point y
  (what the parameters hold in train mode) is replaced by x.
* :func:`save_training_state` / :func:`load_training_state`: model + optimizer state + RNG states
  + data-loader position + step (+ any caller state), so a resumed run continues bit for bit.

Both writes are atomic: the file is written to a temporary name in the same directory and moved
over the destination with ``os.replace``; a failure mid-write leaves the previous file intact.

Example:
    >>> from fusion_infer import ControlHead, ControlHeadConfig, load_head
    >>> from fusion_train import build_param_groups
    >>> head = ControlHead(ControlHeadConfig(in_channels=8, out_channels=2, dim=32, depth=1,
    ...                                      heads=2, freq_dim=32))
    >>> opt = FusionOpt(build_param_groups(head), lr=1e-3, hot_dtype="fp32")
    >>> path = export_checkpoint(head, opt, "head.safetensors", loss="huber")
    >>> load_head(path).metadata["weights"]
    'averaged'
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fusion_infer.checkpoint import (
    METADATA_KEY,
    MODEL_CLASSES,
    TargetScaling,
    make_metadata,
)

from ..optim.distributed import full_tensor, is_dtensor
from ..optim.optimizer import FusionOpt
from ..optim.recipes import RECIPES
from .parallel import model_class

__all__ = [
    "TRAINING_STATE_VERSION",
    "atomic_write",
    "averaged_state_dict",
    "export_checkpoint",
    "load_training_state",
    "optimizer_recipe",
    "optimizer_step",
    "rng_state",
    "save_training_state",
    "set_rng_state",
]

TRAINING_STATE_VERSION = 1


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then ``os.replace(tmp_path, path)``; on any error remove the temp.

    The temp file lives in the destination directory so the rename is atomic on POSIX.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # the data is on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _is_sf(optimizer: Any) -> bool:
    return isinstance(optimizer, FusionOpt) and optimizer.sf


def averaged_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every optimised parameter replaced by its averaged iterate x.

    Tensors are detached, contiguous CPU copies (safetensors needs contiguous storage; tied weights
    are copied per name so the file has no shared storage). FSDP2-sharded (DTensor) entries are
    gathered to full tensors, a collective: call it on every rank.
    """
    sd = model.state_dict(keep_vars=True)
    params_in_opt: set[int] = set()
    if optimizer is not None:
        params_in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
    out: dict[str, torch.Tensor] = {}
    sf = _is_sf(optimizer)
    for name, t in sd.items():
        if sf and isinstance(t, nn.Parameter) and id(t) in params_in_opt:
            value = optimizer.averaged(t)  # type: ignore[union-attr]
        else:
            value = t.detach()
        value = full_tensor(value)  # FSDP2: all-gather the shards (every rank takes part)
        out[name] = value.to("cpu").contiguous().clone()
    return out


def optimizer_recipe(optimizer: Any) -> str:
    """A recipe name for ``optimizer``: FusionOpt's recipe by component set, ``"adamw"``, or the class."""
    if isinstance(optimizer, FusionOpt):
        for name, comps in RECIPES.items():
            if comps == optimizer.components:
                return name
        return "+".join(sorted(optimizer.components))
    if isinstance(optimizer, torch.optim.AdamW):
        return "adamw"
    return type(optimizer).__name__.lower() if optimizer is not None else "none"


def optimizer_step(optimizer: Any) -> int:
    """Steps the optimizer has taken (FusionOpt's clock, or torch's per-parameter ``step``)."""
    if optimizer is None:
        return 0
    if isinstance(optimizer, FusionOpt):
        return int(optimizer.param_groups[0]["k"])
    for state in optimizer.state.values():
        if "step" in state:
            return int(torch.as_tensor(state["step"]).item())
    return 0


def export_checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    path: str | os.PathLike,
    *,
    noise_schedule: str = "rectified_flow",
    loss: str = "huber",
    recipe: str | None = None,
    step: int | None = None,
    targets: TargetScaling | dict[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """Write ``model``'s averaged weights and metadata to ``path`` (safetensors), atomically.

    Args:
        model: a model whose class is registered in :data:`fusion_infer.checkpoint.MODEL_CLASSES`
            and that has a ``config`` with ``to_dict()`` (e.g. :class:`~fusion_infer.ControlHead`).
        optimizer: the training optimizer (``None``: the model's weights as they are). Its mode is
            not changed.
        noise_schedule, loss: what the head was trained with (guidance must match both).
        recipe, step: default to what ``optimizer`` says (:func:`optimizer_recipe`, :func:`optimizer_step`).
        targets: how to de-standardise the outputs (names/mean/std).
        extra: any JSON-serialisable keyword arguments, stored under ``metadata["extra"]``.

    Returns the path. Raises ``ValueError`` on metadata the schema rejects, before touching the file.
    Under FSDP2 (DTensor parameters) call it on every rank: the full averaged weights are gathered
    and rank 0 alone writes the file.

    Example:
        >>> export_checkpoint(head, opt, "runs/best.safetensors", loss="l1", val_mae_db=2.9)  # doctest: +SKIP
    """
    from safetensors.torch import save_file

    class_name = model_class(model).__name__  # not fully_shard's generated FSDP<Class>
    if class_name not in MODEL_CLASSES:
        raise ValueError(f"model class {class_name!r} is not registered; registered: {sorted(MODEL_CLASSES)}")
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise TypeError(f"model must have a .config with to_dict(), got {class_name} without one")
    meta = make_metadata(
        class_name,
        config.to_dict(),
        noise_schedule=noise_schedule,
        loss=loss,
        recipe=recipe if recipe is not None else optimizer_recipe(optimizer),
        step=step if step is not None else optimizer_step(optimizer),
        weights="averaged" if _is_sf(optimizer) else "raw",
        targets=targets,
        extra=extra or None,
    )
    import json

    header = {METADATA_KEY: json.dumps(meta, sort_keys=True)}
    tensors = averaged_state_dict(model, optimizer)
    if any(is_dtensor(t) for t in model.parameters()) and torch.distributed.get_rank() != 0:
        return Path(path)  # FSDP2: rank 0 writes; the others only took part in the gather
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


# --------------------------------------------------------------------------- training state
def rng_state() -> dict[str, Any]:
    """Global RNG states: torch (CPU and every CUDA device), Python ``random``, NumPy."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    step: int,
    loader_state: dict[str, Any] | None = None,
    generators: dict[str, torch.Generator] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Everything needed to resume a run bit for bit, written atomically with ``torch.save``.

    Holds the model's *current* parameters (y in Schedule-Free train mode: resuming needs the
    gradient point, not x), the optimizer's ``state_dict`` (z, moments, clocks, Polyak EMAs, mode),
    global RNG states, the states of the loop's own ``generators``, the data-loader position and
    ``step``. ``extra`` is free-form (e.g. the best validation score so far).

    Example:
        >>> save_training_state("run/state.pt", head, opt, step=100)  # doctest: +SKIP
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    payload = {
        "version": TRAINING_STATE_VERSION,
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "optimizer_class": type(optimizer).__name__,
        "rng": rng_state(),
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
        "loader": loader_state or {},
        "step": step,
        "extra": extra or {},
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_training_state(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    generators: dict[str, torch.Generator] | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore what :func:`save_training_state` wrote into ``model``/``optimizer``/``generators``.

    Returns ``{"step", "loader", "extra"}``. Raises ``ValueError`` for a file of another kind or
    version, or an optimizer of another class.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"training state {os.fspath(path)} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"training state {os.fspath(path)} is corrupt ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("version") != TRAINING_STATE_VERSION:
        raise ValueError(
            f"training state {os.fspath(path)} has version {payload.get('version') if isinstance(payload, dict) else None!r}; "
            f"expected {TRAINING_STATE_VERSION}"
        )
    if payload["optimizer_class"] != type(optimizer).__name__:
        raise ValueError(
            f"training state was saved with optimizer {payload['optimizer_class']}, got {type(optimizer).__name__}"
        )
    model.load_state_dict(payload["model"], strict=True)
    optimizer.load_state_dict(payload["optimizer"])
    saved_gens = payload["generators"]
    for name, g in (generators or {}).items():
        if name not in saved_gens:
            raise ValueError(f"training state has no generator {name!r}; saved: {sorted(saved_gens)}")
        g.set_state(saved_gens[name])
    if restore_rng:
        set_rng_state(payload["rng"])
    return {"step": payload["step"], "loader": payload["loader"], "extra": payload["extra"]}
