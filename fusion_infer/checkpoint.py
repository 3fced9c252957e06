"""The checkpoint format that ties the halves together (docs/design.md §6): schema, reader, validation.

A checkpoint is one ``safetensors`` file: the model's weights (for Schedule-Free training the
*averaged* iterate x, written by :func:`fusion_train.export_checkpoint`) and, in the safetensors
header's string metadata under the key ``"fusion"``, a JSON object:

===================  ==========================================================================
``format_version``   int, :data:`CHECKPOINT_FORMAT_VERSION`
``model_class``      a name in :data:`MODEL_CLASSES` (``"ControlHead"``)
``model_config``     the model's config as a dict (``ControlHeadConfig.to_dict()``)
``noise_schedule``   a name in :data:`fusion_infer.noise_schedules.NOISE_SCHEDULES`
``loss``             the training loss (``"huber"``, ``"l1"``, ``"mse"``; guidance must use it)
``recipe``           the optimizer recipe name (``"sf-normuon"``, ``"adamw"``, …)
``step``             int ≥ 0, optimizer steps taken
``weights``          ``"averaged"`` (Schedule-Free x) or ``"raw"`` (no Schedule-Free averaging)
``targets``          optional: ``{"names": [...], "mean": [...], "std": [...], "units": "dB"}``,
                     how to turn the head's standardised outputs back into target units
``extra``            optional: any JSON object (training config, metrics, …); heads written by
                     ``fusion_train.train_head`` record ``data`` (how to rebuild the training data),
                     ``validation`` (seeds, t-buckets, excerpt cap) and ``effective_lr`` (the
                     learning rate actually used), which ``fusion-train eval`` reuses by default
===================  ==========================================================================

The reader lives here (``fusion_infer`` must not import ``fusion_train``); the writer
(:func:`fusion_train.export_checkpoint`) builds the metadata with :func:`make_metadata` so both
sides use one schema.

Example:
    >>> meta = make_metadata("ControlHead", {"dim": 32}, noise_schedule="rectified_flow",
    ...                      loss="huber", recipe="adamw", step=0, weights="raw")
    >>> validate_metadata(meta)["format_version"] == CHECKPOINT_FORMAT_VERSION
    True
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from .models.control_head import ControlHead, ControlHeadConfig
from .noise_schedules import NOISE_SCHEDULES

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "LOSSES",
    "METADATA_KEY",
    "MODEL_CLASSES",
    "WEIGHT_KINDS",
    "CheckpointError",
    "LoadedHead",
    "TargetScaling",
    "load_head",
    "make_metadata",
    "read_checkpoint",
    "read_metadata",
    "register_model_class",
    "validate_metadata",
    "validate_state_dict",
]

CHECKPOINT_FORMAT_VERSION = 1
METADATA_KEY = "fusion"
LOSSES = ("huber", "l1", "mse")
WEIGHT_KINDS = ("averaged", "raw")
REQUIRED_KEYS = (
    "format_version", "model_class", "model_config", "noise_schedule", "loss", "recipe", "step",
    "weights",
)
OPTIONAL_KEYS = ("targets", "extra")

# name -> (model class, config class with from_dict/to_dict). Other model families (the base DiT)
# register themselves so one reader serves them all.
MODEL_CLASSES: dict[str, tuple[type[nn.Module], Any]] = {"ControlHead": (ControlHead, ControlHeadConfig)}


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or its metadata/weights do not match the schema."""


def register_model_class(name: str, model_cls: type[nn.Module], config_cls: Any) -> None:
    """Make ``name`` loadable: ``model_cls(config_cls.from_dict(model_config))``.

    Example:
        >>> register_model_class("ControlHead", ControlHead, ControlHeadConfig)  # already there
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    if not (isinstance(model_cls, type) and issubclass(model_cls, nn.Module)):
        raise TypeError(f"model_cls must be an nn.Module subclass, got {model_cls!r}")
    if not hasattr(config_cls, "from_dict"):
        raise TypeError(f"config_cls must have a from_dict classmethod, got {config_cls!r}")
    MODEL_CLASSES[name] = (model_cls, config_cls)


@dataclass(frozen=True)
class TargetScaling:
    """How a head's standardised outputs map to target units: ``y = out·std + mean`` per channel."""

    names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    units: str = "dB"

    def destandardize(self, out: torch.Tensor) -> torch.Tensor:
        """``[..., C, T]`` standardised outputs → target units."""
        mean = torch.tensor(self.mean, dtype=out.dtype, device=out.device)[:, None]
        std = torch.tensor(self.std, dtype=out.dtype, device=out.device)[:, None]
        return out * std + mean

    def standardize(self, y: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`destandardize`."""
        mean = torch.tensor(self.mean, dtype=y.dtype, device=y.device)[:, None]
        std = torch.tensor(self.std, dtype=y.dtype, device=y.device)[:, None]
        return (y - mean) / std

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "mean": list(self.mean), "std": list(self.std), "units": self.units}


def _fail(path: Any, message: str) -> CheckpointError:
    where = f"checkpoint {os.fspath(path)!s}: " if path is not None else ""
    return CheckpointError(where + message)


def make_metadata(
    model_class: str,
    model_config: dict[str, Any],
    *,
    noise_schedule: str,
    loss: str,
    recipe: str,
    step: int,
    weights: str,
    targets: dict[str, Any] | TargetScaling | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build (and validate) the metadata object the writer stores."""
    meta: dict[str, Any] = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model_class": model_class,
        "model_config": dict(model_config),
        "noise_schedule": noise_schedule,
        "loss": loss,
        "recipe": recipe,
        "step": step,
        "weights": weights,
    }
    if targets is not None:
        meta["targets"] = targets.to_dict() if isinstance(targets, TargetScaling) else dict(targets)
    if extra:
        meta["extra"] = dict(extra)
    validate_metadata(meta)
    json.dumps(meta)  # must be JSON-serialisable; raises TypeError naming the bad value's type
    return meta


def validate_metadata(meta: Any, path: Any = None) -> dict[str, Any]:
    """Check ``meta`` against the schema; return it. Raises :class:`CheckpointError` naming the field."""
    if not isinstance(meta, dict):
        raise _fail(path, f"metadata must be a JSON object, got {type(meta).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise _fail(path, f"metadata is missing required key(s) {missing}; required: {list(REQUIRED_KEYS)}")
    unknown = sorted(set(meta) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise _fail(path, f"metadata has unknown key(s) {unknown}; allowed: {list(REQUIRED_KEYS + OPTIONAL_KEYS)}")
    version = meta["format_version"]
    if version != CHECKPOINT_FORMAT_VERSION or isinstance(version, bool):
        raise _fail(
            path,
            f"format_version {version!r} is not supported; this fusion_infer reads version "
            f"{CHECKPOINT_FORMAT_VERSION}",
        )
    if meta["model_class"] not in MODEL_CLASSES:
        raise _fail(path, f"model_class must be one of {sorted(MODEL_CLASSES)}, got {meta['model_class']!r}")
    if not isinstance(meta["model_config"], dict):
        raise _fail(path, "model_config must be a JSON object")
    if meta["noise_schedule"] not in NOISE_SCHEDULES:
        raise _fail(path, f"noise_schedule must be one of {sorted(NOISE_SCHEDULES)}, got {meta['noise_schedule']!r}")
    if meta["loss"] not in LOSSES:
        raise _fail(path, f"loss must be one of {list(LOSSES)}, got {meta['loss']!r}")
    if not isinstance(meta["recipe"], str) or not meta["recipe"]:
        raise _fail(path, f"recipe must be a non-empty string, got {meta['recipe']!r}")
    step = meta["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise _fail(path, f"step must be an int >= 0, got {step!r}")
    if meta["weights"] not in WEIGHT_KINDS:
        raise _fail(path, f"weights must be one of {list(WEIGHT_KINDS)}, got {meta['weights']!r}")
    targets = meta.get("targets")
    if targets is not None:
        if not isinstance(targets, dict) or not {"names", "mean", "std"} <= set(targets):
            raise _fail(path, "targets must be an object with names, mean and std lists")
        n = len(targets["names"])
        if len(targets["mean"]) != n or len(targets["std"]) != n:
            raise _fail(path, "targets names/mean/std must have the same length")
        if not all(isinstance(s, (int, float)) and math.isfinite(s) and s > 0 for s in targets["std"]):
            raise _fail(path, "targets std values must be finite and > 0")
    if "extra" in meta and not isinstance(meta["extra"], dict):
        raise _fail(path, "extra must be a JSON object")
    return meta


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The validated metadata of the checkpoint at ``path`` (reads only the header)."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise _fail(path, "no such file")
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise _fail(path, f"corrupt or not a safetensors file ({type(exc).__name__}: {exc})") from exc
    if METADATA_KEY not in header:
        raise _fail(path, f"no {METADATA_KEY!r} metadata: it was not written by fusion_train.export_checkpoint")
    try:
        meta = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise _fail(path, f"metadata is not valid JSON ({exc})") from exc
    return validate_metadata(meta, path)


def read_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, metadata)`` of a checkpoint, both validated for readability (not against a model)."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    try:
        tensors = load_file(os.fspath(path), device=str(device))
    except Exception as exc:
        raise _fail(path, f"corrupt tensor data ({type(exc).__name__}: {exc})") from exc
    return tensors, meta


def validate_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor], path: Any = None) -> None:
    """Raise :class:`CheckpointError` listing missing/unexpected keys and shape mismatches."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = [
        f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    if shapes:
        problems.append("shape mismatches " + "; ".join(shapes))
    if problems:
        raise _fail(path, "weights do not match model_config: " + ", ".join(problems))


class LoadedHead(NamedTuple):
    """What :func:`load_head` returns: the model (eval mode, frozen) and its validated metadata."""

    model: nn.Module
    metadata: dict[str, Any]

    @property
    def noise_schedule(self) -> str:
        return self.metadata["noise_schedule"]

    @property
    def loss(self) -> str:
        return self.metadata["loss"]

    @property
    def targets(self) -> TargetScaling | None:
        t = self.metadata.get("targets")
        if t is None:
            return None
        return TargetScaling(tuple(t["names"]), tuple(float(m) for m in t["mean"]),
                             tuple(float(s) for s in t["std"]), t.get("units", "dB"))


def load_head(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> LoadedHead:
    """Load a checkpoint written by :func:`fusion_train.export_checkpoint`.

    Validates the metadata (format version, model class, schedule, loss, …) and the weights against
    the model built from ``model_config`` (missing/unexpected tensors, shapes), raising
    :class:`CheckpointError` (a ``ValueError``) that names the problem. The model is returned in
    ``eval()`` mode with ``requires_grad_(False)``: a loaded head is for inference and guidance
    (gradients w.r.t. the *input* still flow), and frozen modulator weights are what lets
    :class:`~fusion_infer.TimeConditioningCache` serve it. Code that fine-tunes a loaded head calls
    ``model.train().requires_grad_(True)`` first.

    Example:
        >>> head, meta = load_head("best.safetensors")  # doctest: +SKIP
        >>> meta["noise_schedule"]                       # doctest: +SKIP
        'rectified_flow'
    """
    tensors, meta = read_checkpoint(path)
    model_cls, config_cls = MODEL_CLASSES[meta["model_class"]]
    try:
        config = config_cls.from_dict(meta["model_config"])
    except (TypeError, ValueError) as exc:
        raise _fail(path, f"model_config is invalid for {meta['model_class']}: {exc}") from exc
    model = model_cls(config)
    validate_state_dict(model, tensors, path)
    model.load_state_dict(tensors, strict=True)
    model.to(device=device, dtype=dtype) if dtype is not None else model.to(device=device)
    model.eval().requires_grad_(False)
    return LoadedHead(model, meta)
