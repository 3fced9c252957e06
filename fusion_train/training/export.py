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
  Stored as safetensors (every tensor) + strict JSON (everything else), never as a pickle, so a
  crafted file cannot run code when it is loaded.

Both writes go through :func:`fusion_infer.files.atomic_write` (temporary file in the same
folder, fsync, rename): a failure mid-write, even ``kill -9``, leaves the previous file intact.

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

import json
import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fusion_infer.bounded_json import loads_bounded
from fusion_infer.checkpoint import (
    METADATA_KEY,
    MODEL_CLASSES,
    CheckpointError,
    TargetScaling,
    check_readable_file,
    make_metadata,
)
from fusion_infer.files import atomic_write

from ..optim.distributed import full_tensor, is_dtensor
from ..optim.optimizer import FusionOpt
from ..optim.recipes import RECIPES
from .parallel import model_class
from .state_codec import decode_tree, encode_tree

__all__ = [
    "TRAINING_STATE_FORMAT",
    "TRAINING_STATE_KEY",
    "TRAINING_STATE_VERSION",
    "averaged_state_dict",
    "export_checkpoint",
    "load_training_state",
    "optimizer_recipe",
    "optimizer_step",
    "rng_state",
    "save_training_state",
    "set_rng_state",
]

TRAINING_STATE_VERSION = 2  # 2: safetensors + JSON (1 was a torch.save pickle, no longer read)


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


TRAINING_STATE_KEY = "fusion_training_state"
TRAINING_STATE_FORMAT = "fusion-training-state"
#: Deepest JSON nesting accepted in a training state's header (an optimizer state dict: ~6).
MAX_STATE_DEPTH = 64
_MT_KEYS = 624  # Mersenne Twister state words (Python ``random`` and NumPy's legacy generator)


def _rng_to_file(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Split :func:`rng_state` into JSON (Python and NumPy states) and tensors (torch states)."""
    version, internal, gauss = state["python"]
    kind, keys, pos, has_gauss, cached = state["numpy"]
    doc = {
        "python": [int(version), [int(v) for v in internal], None if gauss is None else float(gauss)],
        "numpy": {"bit_generator": str(kind), "key": [int(v) for v in np.asarray(keys).tolist()],
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "cuda_devices": len(state.get("cuda", [])),
    }
    tensors = {"rng/torch": state["torch"].clone()}
    for i, t in enumerate(state.get("cuda", [])):
        tensors[f"rng/cuda/{i}"] = t.clone()
    return doc, tensors


def _is_word(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32


def _rng_from_file(doc: Any, tensors: dict[str, torch.Tensor], path: Any) -> dict[str, Any]:
    """Validate and rebuild what :func:`_rng_to_file` wrote into :func:`rng_state`'s form."""
    if not isinstance(doc, dict) or not {"python", "numpy", "cuda_devices"} <= set(doc):
        raise _state_error(path, "rng must be an object with python, numpy and cuda_devices")
    py = doc["python"]
    if not (isinstance(py, list) and len(py) == 3 and py[0] == 3 and isinstance(py[1], list)
            and len(py[1]) == _MT_KEYS + 1 and all(_is_word(v) for v in py[1]) and py[1][-1] <= _MT_KEYS
            and (py[2] is None or (isinstance(py[2], float) and math.isfinite(py[2])))):
        raise _state_error(path, "rng.python is not a Python random state (version 3, 625 32-bit words, gauss)")
    npd = doc["numpy"]
    if not (isinstance(npd, dict) and npd.get("bit_generator") == "MT19937" and isinstance(npd.get("key"), list)
            and len(npd["key"]) == _MT_KEYS and all(_is_word(v) for v in npd["key"])
            and isinstance(npd.get("pos"), int) and 0 <= npd["pos"] <= _MT_KEYS
            and npd.get("has_gauss") in (0, 1) and isinstance(npd.get("cached_gaussian"), (int, float))
            and math.isfinite(npd["cached_gaussian"])):
        raise _state_error(path, "rng.numpy is not a NumPy MT19937 state (624 32-bit words, pos, has_gauss, gauss)")
    n_cuda = doc["cuda_devices"]
    if isinstance(n_cuda, bool) or not isinstance(n_cuda, int) or not 0 <= n_cuda <= 4096:
        raise _state_error(path, f"rng.cuda_devices must be an int in [0, 4096], got {n_cuda!r:.60}")
    names = ["rng/torch", *(f"rng/cuda/{i}" for i in range(n_cuda))]
    for name in names:
        t = tensors.get(name)
        if t is None or t.dtype != torch.uint8 or t.dim() != 1:
            raise _state_error(path, f"tensor {name!r} must be a 1-D uint8 RNG state")
    state: dict[str, Any] = {
        "torch": tensors["rng/torch"],
        "python": (3, tuple(py[1]), py[2]),
        "numpy": ("MT19937", np.asarray(npd["key"], dtype=np.uint32), npd["pos"], npd["has_gauss"],
                  float(npd["cached_gaussian"])),
    }
    if n_cuda:
        state["cuda"] = [tensors[f"rng/cuda/{i}"] for i in range(n_cuda)]
    return state


def _state_error(path: Any, message: str) -> CheckpointError:
    return CheckpointError(f"training state {os.fspath(path)}: {message}")


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
    """Everything needed to resume a run bit for bit, in one safetensors file, written atomically.

    Holds the model's *current* parameters (y in Schedule-Free train mode: resuming needs the
    gradient point, not x), the optimizer's ``state_dict`` (z, moments, clocks, Polyak EMAs, mode),
    global RNG states, the states of the loop's own ``generators``, the data-loader position and
    ``step``. ``extra`` is free-form (e.g. the best validation score so far).

    Format: every tensor (model, optimizer state, RNG states) is a safetensors tensor; the rest —
    the optimizer's hyper-parameters and clocks, the Python/NumPy RNG states, ``loader_state``,
    ``extra`` — is strict JSON in the header's metadata under ``"fusion_training_state"``,
    encoded by :func:`fusion_train.training.state_codec.encode_tree` (floats by ``repr``, so
    exactly; tuples and int-keyed dicts tagged). No pickle: loading cannot run code.
    ``loader_state``/``extra`` may hold what :mod:`~fusion_train.training.state_codec` encodes
    (JSON scalars, lists, tuples, dicts, tensors); anything else raises ``TypeError`` naming it.

    Example:
        >>> save_training_state("run/training_state.safetensors", head, opt, step=100)  # doctest: +SKIP
    """
    from safetensors.torch import save_file

    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    tensors: dict[str, torch.Tensor] = {}
    model_names = []
    for name, t in model.state_dict().items():
        model_names.append(name)
        tensors[f"model/{name}"] = t.detach().to("cpu").clone(memory_format=torch.contiguous_format)
    docs = {}
    for field, tree in (("optimizer", optimizer.state_dict()), ("loader", loader_state or {}),
                        ("extra", extra or {})):
        docs[field], part = encode_tree(tree, prefix=f"{field}/")
        tensors.update(part)
    rng_doc, rng_tensors = _rng_to_file(rng_state())
    tensors.update(rng_tensors)
    gens = generators or {}
    for name, g in gens.items():
        tensors[f"generator/{name}"] = g.get_state().clone()
    doc = {
        "format": TRAINING_STATE_FORMAT,
        "version": TRAINING_STATE_VERSION,
        "step": step,
        "optimizer_class": type(optimizer).__name__,
        "model": model_names,
        "generators": list(gens),
        "rng": rng_doc,
        **docs,
    }
    header = {TRAINING_STATE_KEY: json.dumps(doc, allow_nan=False, separators=(",", ":"))}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def _read_state_file(path: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(header document, tensors)`` of a training-state file, with clear errors for anything else."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        check_readable_file(path)
    except CheckpointError as exc:
        raise _state_error(path, str(exc).split(": ", 1)[-1]) from None
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:
        with open(path, "rb") as f:
            magic = f.read(4)
        # torch.save writes a zip archive (PK\x03\x04) or, with the legacy format, a raw pickle
        # (protocol >= 2 starts with 0x80). Never unpickle: say what the file is instead.
        if magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80":
            raise _state_error(
                path,
                "is a pickle (torch.save) file, e.g. a training_state.pt of an older fusion_train; it is not "
                "loaded because unpickling can run arbitrary code. Resume from a training_state.safetensors "
                "written by this version",
            ) from None
        raise _state_error(path, f"corrupt or truncated, or not a safetensors file ({type(exc).__name__}: {exc})") from exc
    if TRAINING_STATE_KEY not in header:
        raise _state_error(path, f"no {TRAINING_STATE_KEY!r} metadata: not written by save_training_state")
    try:
        doc = loads_bounded(header[TRAINING_STATE_KEY], max_depth=MAX_STATE_DEPTH)
    except ValueError as exc:
        raise _state_error(path, f"metadata is not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != TRAINING_STATE_FORMAT:
        raise _state_error(path, f"metadata is not a {TRAINING_STATE_FORMAT!r} document")
    if doc.get("version") != TRAINING_STATE_VERSION or isinstance(doc.get("version"), bool):
        raise _state_error(path, f"version {doc.get('version')!r:.40} is not supported; expected {TRAINING_STATE_VERSION}")
    required = ("step", "optimizer_class", "model", "generators", "rng", "optimizer", "loader", "extra")
    missing = [k for k in required if k not in doc]
    if missing:
        raise _state_error(path, f"metadata is missing {missing}")
    step = doc["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise _state_error(path, f"step must be an int >= 0, got {step!r:.40}")
    for field in ("model", "generators"):
        if not isinstance(doc[field], list) or not all(isinstance(n, str) for n in doc[field]):
            raise _state_error(path, f"{field} must be a list of names")
    if not isinstance(doc["optimizer_class"], str):
        raise _state_error(path, "optimizer_class must be a string")
    try:
        tensors = load_file(os.fspath(path), device="cpu")
    except Exception as exc:
        raise _state_error(path, f"corrupt tensor data ({type(exc).__name__}: {exc})") from exc
    return doc, tensors


def load_training_state(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    generators: dict[str, torch.Generator] | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore what :func:`save_training_state` wrote into ``model``/``optimizer``/``generators``.

    Returns ``{"step", "loader", "extra"}``. Everything is validated before anything is changed:
    the file (a readable safetensors file, never a pickle — a ``torch.save`` file is refused
    without being unpickled), the header JSON (bounded nesting, the schema), the model tensors
    (names, shapes and dtypes exactly those of ``model``), the optimizer class, the RNG states and
    the requested generators. Every failure is a :class:`~fusion_infer.CheckpointError` (a
    ``ValueError``) naming the file and the field.
    """
    doc, tensors = _read_state_file(path)
    if doc["optimizer_class"] != type(optimizer).__name__:
        raise _state_error(
            path, f"was saved with optimizer {doc['optimizer_class']}, got {type(optimizer).__name__}"
        )
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        field, _, rest = name.partition("/")
        groups.setdefault(field, {})[name if field != "model" else rest] = t
    unknown = sorted(set(groups) - {"model", "optimizer", "loader", "extra", "rng", "generator"})
    if unknown:
        raise _state_error(path, f"holds tensors of unknown kind(s) {unknown}")
    saved_model = groups.get("model", {})
    if sorted(saved_model) != sorted(doc["model"]):
        raise _state_error(path, "the model tensors do not match the names listed in its metadata")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(saved_model))
    unexpected = sorted(set(saved_model) - set(expected))
    bad = [f"{k}: file {tuple(saved_model[k].shape)} {saved_model[k].dtype} vs model {tuple(v.shape)} {v.dtype}"
           for k, v in expected.items()
           if k in saved_model and (saved_model[k].shape != v.shape or saved_model[k].dtype != v.dtype)]
    if missing or unexpected or bad:
        raise _state_error(path, f"model tensors do not match the model: missing {missing[:8]}, "
                                 f"unexpected {unexpected[:8]}, mismatched {bad[:8]}")
    decoded = {}
    for field in ("optimizer", "loader", "extra"):
        try:
            decoded[field] = decode_tree(doc[field], groups.get(field, {}))
        except ValueError as exc:
            raise _state_error(path, f"{field}: {exc}") from exc
    for field in ("loader", "extra"):
        if not isinstance(decoded[field], dict):
            raise _state_error(path, f"{field} must be an object")
    opt_state = decoded["optimizer"]
    if not (isinstance(opt_state, dict) and isinstance(opt_state.get("param_groups"), list)
            and isinstance(opt_state.get("state"), dict)):
        raise _state_error(path, "optimizer must be an optimizer state_dict (state, param_groups)")
    if len(opt_state["param_groups"]) != len(optimizer.param_groups) or any(
        not isinstance(g, dict) or not isinstance(g.get("params"), list) or len(g["params"]) != len(h["params"])
        for g, h in zip(opt_state["param_groups"], optimizer.param_groups)
    ):
        raise _state_error(path, "optimizer: its parameter groups do not match this optimizer's")
    rng = _rng_from_file(doc["rng"], groups.get("rng", {}), path)
    saved_gens = {name: groups.get("generator", {}).get(f"generator/{name}") for name in doc["generators"]}
    if any(t is None or t.dtype != torch.uint8 or t.dim() != 1 for t in saved_gens.values()):
        raise _state_error(path, "generator states must be 1-D uint8 tensors listed in its metadata")
    for name in generators or {}:
        if name not in saved_gens:
            raise _state_error(path, f"has no generator {name!r}; saved: {sorted(saved_gens)}")
    # Everything checked: apply. (A generator/RNG state of the wrong size for this torch build is
    # only detectable by torch itself; it is applied last.)
    model.load_state_dict(saved_model, strict=True)
    try:
        optimizer.load_state_dict(opt_state)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as exc:
        raise _state_error(path, f"optimizer state does not fit this optimizer ({type(exc).__name__}: {exc})") from exc
    try:
        for name, g in (generators or {}).items():
            g.set_state(saved_gens[name])
        if restore_rng:
            set_rng_state(rng)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise _state_error(path, f"RNG/generator state is invalid ({type(exc).__name__}: {exc})") from exc
    return {"step": doc["step"], "loader": decoded["loader"], "extra": decoded["extra"]}
