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

Reading is defensive: every failure — a folder or missing file, a truncated or corrupt file,
metadata that is too large, too deeply nested or off-schema, non-finite numbers, weights whose
names, shapes or dtypes do not match ``model_config``, NaN/inf weights — is a
:class:`CheckpointError` naming the file and the field, and metadata is checked against the
tensor shapes in the file's header *before* any model is built (:func:`load_head`).

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
import stat
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from .bounded_json import loads_bounded
from .models.control_head import ControlHead, ControlHeadConfig
from .noise_schedules import NOISE_SCHEDULES

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "LOSSES",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "METADATA_KEY",
    "MODEL_BOUNDS",
    "MODEL_CLASSES",
    "WEIGHT_KINDS",
    "CheckpointError",
    "LoadedHead",
    "TargetScaling",
    "TensorInfo",
    "check_readable_file",
    "load_head",
    "make_metadata",
    "read_checkpoint",
    "read_header",
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
#: Largest metadata JSON accepted (bytes); real metadata (config, metrics) is a few kilobytes.
MAX_METADATA_BYTES = 8 * 2**20
#: Deepest JSON nesting accepted in metadata; the writer produces at most ~5 levels.
MAX_METADATA_DEPTH = 32

# name -> (model class, config class with from_dict/to_dict). Other model families (the base DiT)
# register themselves so one reader serves them all.
MODEL_CLASSES: dict[str, tuple[type[nn.Module], Any]] = {"ControlHead": (ControlHead, ControlHeadConfig)}
# name -> (size fields, count fields) of model_config: a size field can be no larger than the
# largest dimension of any tensor in the file, a count field (a depth) no larger than the number
# of tensors. Checked before any model is built, so a small file cannot ask for a huge model.
MODEL_BOUNDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ControlHead": (
        ("in_channels", "out_channels", "dim", "heads", "freq_dim", "cond_dim", "attention_head_dim",
         "mlp_hidden_dim"),
        ("depth",),
    ),
}


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or its metadata/weights do not match the schema."""


def register_model_class(
    name: str,
    model_cls: type[nn.Module],
    config_cls: Any,
    *,
    size_fields: tuple[str, ...] = (),
    count_fields: tuple[str, ...] = (),
) -> None:
    """Make ``name`` loadable: ``model_cls(config_cls.from_dict(model_config))``.

    ``size_fields`` / ``count_fields`` name the ``model_config`` entries that :func:`load_head`
    bounds by the file's largest tensor dimension / tensor count before building anything
    (:data:`MODEL_BOUNDS`). ``model_cls`` must be constructible under ``torch.device("meta")``
    (no explicit device arguments, no data-dependent ``.item()`` in ``__init__``).

    Example:
        >>> register_model_class("ControlHead", ControlHead, ControlHeadConfig,
        ...                      size_fields=MODEL_BOUNDS["ControlHead"][0], count_fields=("depth",))
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    if not (isinstance(model_cls, type) and issubclass(model_cls, nn.Module)):
        raise TypeError(f"model_cls must be an nn.Module subclass, got {model_cls!r}")
    if not hasattr(config_cls, "from_dict"):
        raise TypeError(f"config_cls must have a from_dict classmethod, got {config_cls!r}")
    MODEL_CLASSES[name] = (model_cls, config_cls)
    MODEL_BOUNDS[name] = (tuple(size_fields), tuple(count_fields))


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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _nonfinite_field(value: Any, where: str, depth: int = 0) -> str | None:
    """The dotted name of the first non-finite float inside ``value`` (bounded depth), or None."""
    if depth > MAX_METADATA_DEPTH:
        return f"{where} (nested more than {MAX_METADATA_DEPTH} levels)"
    if isinstance(value, float) and not math.isfinite(value):
        return where
    if isinstance(value, dict):
        for k, v in value.items():
            found = _nonfinite_field(v, f"{where}.{k}", depth + 1)
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _nonfinite_field(v, f"{where}[{i}]", depth + 1)
            if found:
                return found
    return None


def _too_deep(value: Any, budget: int) -> bool:
    """Whether ``value`` nests dicts/lists more than ``budget`` levels (stops as soon as it does)."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return budget <= 0 or any(_too_deep(v, budget - 1) for v in value)
    return False


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


def _validate_targets(targets: Any, path: Any) -> None:
    if not isinstance(targets, dict):
        raise _fail(path, f"targets must be a JSON object with names, mean and std lists, got {type(targets).__name__}")
    missing = [k for k in ("names", "mean", "std") if k not in targets]
    if missing:
        raise _fail(path, f"targets is missing {missing}; it needs names, mean and std lists")
    unknown = sorted(set(targets) - {"names", "mean", "std", "units"})
    if unknown:
        raise _fail(path, f"targets has unknown key(s) {unknown}; allowed: ['names', 'mean', 'std', 'units']")
    names, mean, std = targets["names"], targets["mean"], targets["std"]
    for field, value in (("names", names), ("mean", mean), ("std", std)):
        if not isinstance(value, list) or not value:
            raise _fail(path, f"targets.{field} must be a non-empty list, got {value!r:.80}")
    if not all(isinstance(n, str) and n for n in names):
        raise _fail(path, "targets.names must be non-empty strings")
    if len(set(names)) != len(names):
        raise _fail(path, f"targets.names has duplicates: {names!r:.120}")
    if len(mean) != len(names) or len(std) != len(names):
        raise _fail(
            path,
            f"targets.names/mean/std must have the same length, got {len(names)}/{len(mean)}/{len(std)}",
        )
    if not all(_is_number(m) and math.isfinite(m) for m in mean):
        raise _fail(path, "targets.mean values must be finite numbers")
    if not all(_is_number(v) and math.isfinite(v) and v > 0 for v in std):
        raise _fail(path, "targets.std values must be finite and > 0")
    if "units" in targets and not isinstance(targets["units"], str):
        raise _fail(path, f"targets.units must be a string, got {targets['units']!r:.80}")


def _check_choice(meta: dict[str, Any], key: str, allowed: Any, path: Any) -> None:
    value = meta[key]
    if not isinstance(value, str) or value not in allowed:
        raise _fail(path, f"{key} must be one of {sorted(allowed)}, got {value!r:.80}")


def validate_metadata(meta: Any, path: Any = None) -> dict[str, Any]:
    """Check ``meta`` against the schema; return it. Raises :class:`CheckpointError` naming the field.

    Every field is type-checked (a list where a name belongs is refused, not hashed), numbers in
    ``model_config`` and ``targets`` must be finite (``extra`` may hold NaN metrics of a diverged
    run), and nesting is bounded by :data:`MAX_METADATA_DEPTH`.
    """
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
            f"format_version {version!r:.80} is not supported; this fusion_infer reads version "
            f"{CHECKPOINT_FORMAT_VERSION}",
        )
    _check_choice(meta, "model_class", MODEL_CLASSES, path)
    if not isinstance(meta["model_config"], dict):
        raise _fail(path, f"model_config must be a JSON object, got {type(meta['model_config']).__name__}")
    bad = _nonfinite_field(meta["model_config"], "model_config")
    if bad:
        raise _fail(path, f"{bad} must be a finite number")
    _check_choice(meta, "noise_schedule", NOISE_SCHEDULES, path)
    _check_choice(meta, "loss", LOSSES, path)
    if not isinstance(meta["recipe"], str) or not meta["recipe"]:
        raise _fail(path, f"recipe must be a non-empty string, got {meta['recipe']!r:.80}")
    step = meta["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise _fail(path, f"step must be an int >= 0, got {step!r:.80}")
    _check_choice(meta, "weights", WEIGHT_KINDS, path)
    if meta.get("targets") is not None:
        _validate_targets(meta["targets"], path)
    if "extra" in meta:
        if not isinstance(meta["extra"], dict):
            raise _fail(path, f"extra must be a JSON object, got {type(meta['extra']).__name__}")
        if _too_deep(meta["extra"], MAX_METADATA_DEPTH - 1):
            raise _fail(path, f"extra nests more than {MAX_METADATA_DEPTH} levels")
    return meta


# --------------------------------------------------------------------------- reading files
class TensorInfo(NamedTuple):
    """A tensor as the file's header declares it (read without loading any data)."""

    dtype: str  # safetensors dtype name: "F32", "BF16", "I64", "BOOL", …
    shape: tuple[int, ...]


_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ",
                 "F6_E2M3", "F6_E3M2", "F4"}
_TORCH_TO_SAFETENSORS = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


def check_readable_file(path: Any) -> None:
    """Raise :class:`CheckpointError` saying precisely why ``path`` cannot be a checkpoint file.

    Example:
        >>> check_readable_file("/")
        Traceback (most recent call last):
        ...
        fusion_infer.checkpoint.CheckpointError: checkpoint /: is a directory, not a checkpoint file
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _fail(path, "no such file") from None
    except NotADirectoryError:
        raise _fail(path, "no such file (a parent of it is not a directory)") from None
    except PermissionError:
        raise _fail(path, "permission denied (cannot look at the file)") from None
    except (OSError, ValueError) as exc:
        raise _fail(path, f"cannot be accessed ({exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise _fail(path, "is a directory, not a checkpoint file")
    if not stat.S_ISREG(st.st_mode):
        raise _fail(path, "is not a regular file (a FIFO, socket or device cannot be a checkpoint)")
    if not os.access(path, os.R_OK):
        raise _fail(path, "permission denied (the file is not readable)")


def read_header(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, TensorInfo]]:
    """``(validated metadata, {tensor name: TensorInfo})`` of a checkpoint; no tensor data is read.

    The safetensors library checks the header itself (offsets cover the file exactly, each
    tensor's byte size matches its shape and dtype), so every shape returned here is backed by
    real bytes in the file.
    """
    from safetensors import safe_open

    check_readable_file(path)
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            header = f.metadata() or {}
            layout = {}
            for name in f.keys():
                sl = f.get_slice(name)
                layout[name] = TensorInfo(str(sl.get_dtype()), tuple(int(d) for d in sl.get_shape()))
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise _fail(path, f"corrupt or truncated, or not a safetensors file ({type(exc).__name__}: {exc})") from exc
    if METADATA_KEY not in header:
        raise _fail(path, f"no {METADATA_KEY!r} metadata: it was not written by fusion_train.export_checkpoint")
    text = header[METADATA_KEY]
    if len(text) > MAX_METADATA_BYTES:
        raise _fail(path, f"metadata is {len(text)} bytes; at most {MAX_METADATA_BYTES} are allowed")
    try:
        # NaN/Infinity parse here so that validate_metadata can name the field they sit in.
        meta = loads_bounded(text, max_depth=MAX_METADATA_DEPTH, allow_nonfinite=True)
    except ValueError as exc:
        raise _fail(path, f"metadata is not valid JSON ({exc})") from exc
    return validate_metadata(meta, path), layout


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The validated metadata of the checkpoint at ``path`` (reads only the header)."""
    return read_header(path)[0]


def read_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, metadata)`` of a checkpoint, both validated for readability (not against a model)."""
    from safetensors.torch import load_file

    meta, _ = read_header(path)
    try:
        tensors = load_file(os.fspath(path), device=str(device))
    except Exception as exc:
        raise _fail(path, f"corrupt tensor data ({type(exc).__name__}: {exc})") from exc
    return tensors, meta


def _bound_config_by_layout(model_class: str, config: dict[str, Any], layout: dict[str, TensorInfo], path: Any) -> None:
    """Refuse size fields larger than anything the file's tensors could hold, before building anything."""
    size_fields, count_fields = MODEL_BOUNDS.get(model_class, ((), ()))
    max_dim = max((d for info in layout.values() if math.prod(info.shape) > 0 for d in info.shape), default=0)
    for field in size_fields:
        v = config.get(field)
        if _is_number(v) and v > max_dim:
            raise _fail(
                path,
                f"model_config.{field}={v!r} exceeds every tensor dimension in the file (largest: {max_dim}); "
                "the metadata does not describe these weights",
            )
    for field in count_fields:
        v = config.get(field)
        if _is_number(v) and v > len(layout):
            raise _fail(
                path,
                f"model_config.{field}={v!r} exceeds the number of tensors in the file ({len(layout)}); "
                "the metadata does not describe these weights",
            )


def _expected_layout(model_cls: type[nn.Module], config: Any, model_class: str, path: Any) -> dict[str, torch.Tensor]:
    """The state dict of ``model_cls(config)`` built on the meta device: shapes and dtypes, no memory."""
    try:
        with torch.device("meta"):
            skeleton = model_cls(config)
    except Exception as exc:
        raise _fail(path, f"model_config is invalid for {model_class}: {type(exc).__name__}: {exc}") from exc
    return skeleton.state_dict()


def _compare_layout(expected: dict[str, torch.Tensor], layout: dict[str, TensorInfo], path: Any) -> None:
    missing = sorted(set(expected) - set(layout))
    unexpected = sorted(set(layout) - set(expected))
    shapes, dtypes = [], []
    for k, v in expected.items():
        info = layout.get(k)
        if info is None:
            continue
        if info.shape != tuple(v.shape):
            shapes.append(f"{k}: file {info.shape} vs model {tuple(v.shape)}")
        elif v.is_floating_point() != (info.dtype in _FLOAT_DTYPES) or (
            not v.is_floating_point() and _TORCH_TO_SAFETENSORS.get(v.dtype) != info.dtype
        ):
            dtypes.append(f"{k}: file {info.dtype} vs model {str(v.dtype).removeprefix('torch.')}")
    problems = []
    if missing:
        problems.append(f"missing tensors {missing[:8]}{' …' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:8]}{' …' if len(unexpected) > 8 else ''}")
    if shapes:
        problems.append("shape mismatches " + "; ".join(shapes[:8]))
    if dtypes:
        problems.append("dtype mismatches " + "; ".join(dtypes[:8]))
    if problems:
        raise _fail(path, "weights do not match model_config: " + ", ".join(problems))


def validate_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor], path: Any = None) -> None:
    """Raise :class:`CheckpointError` listing missing/unexpected keys and shape/dtype mismatches."""
    layout = {
        k: TensorInfo(_TORCH_TO_SAFETENSORS.get(t.dtype, "F32" if t.is_floating_point() else str(t.dtype)),
                      tuple(t.shape))
        for k, t in tensors.items()
    }
    _compare_layout(model.state_dict(), layout, path)


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
    *,
    allow_nonfinite: bool = False,
) -> LoadedHead:
    """Load a checkpoint written by :func:`fusion_train.export_checkpoint`.

    Checks, in this order, each failure a :class:`CheckpointError` (a ``ValueError``) naming the
    file and the field:

    1. the path is a readable regular file (a folder is reported as a folder) and a complete
       safetensors file (truncation and corrupt headers are caught by the safetensors reader);
    2. the metadata: bounded size and nesting, the schema (format version, model class, schedule,
       loss, weights, targets), finite numbers in ``model_config`` and ``targets``;
    3. the metadata against the *header's* tensor shapes, before any model exists: size fields of
       ``model_config`` may not exceed the largest tensor dimension in the file, nor counts (depth)
       the number of tensors — so a 96 KB file declaring ``dim=16384`` fails here;
    4. the model built on the ``meta`` device (no memory) against the header: tensor names,
       shapes and dtypes (floating weights must be stored as floating point; integer and bool
       buffers in their exact dtype), after the ``targets`` count is checked against
       ``out_channels``;
    5. the tensor data: NaN/inf values are refused unless ``allow_nonfinite=True``.

    Only then is the model built for real (its size is now that of the file's tensors), loaded
    and returned in ``eval()`` mode with ``requires_grad_(False)``: a loaded head is for inference
    and guidance (gradients w.r.t. the *input* still flow), and frozen modulator weights are what
    lets :class:`~fusion_infer.TimeConditioningCache` serve it. Code that fine-tunes a loaded head
    calls ``model.train().requires_grad_(True)`` first.

    Example:
        >>> head, meta = load_head("best.safetensors")  # doctest: +SKIP
        >>> meta["noise_schedule"]                       # doctest: +SKIP
        'rectified_flow'
    """
    from safetensors.torch import load_file

    meta, layout = read_header(path)
    model_class = meta["model_class"]
    model_cls, config_cls = MODEL_CLASSES[model_class]
    _bound_config_by_layout(model_class, meta["model_config"], layout, path)
    try:
        config = config_cls.from_dict(meta["model_config"])
    except (TypeError, ValueError, OverflowError) as exc:
        raise _fail(path, f"model_config is invalid for {model_class}: {exc}") from exc
    targets = meta.get("targets")
    out_channels = getattr(config, "out_channels", None)
    if targets is not None and isinstance(out_channels, int) and len(targets["names"]) != out_channels:
        raise _fail(
            path,
            f"targets lists {len(targets['names'])} channel(s) but model_config.out_channels is {out_channels}",
        )
    _compare_layout(_expected_layout(model_cls, config, model_class, path), layout, path)
    try:
        tensors = load_file(os.fspath(path), device="cpu")
    except Exception as exc:
        raise _fail(path, f"corrupt tensor data ({type(exc).__name__}: {exc})") from exc
    if not allow_nonfinite:
        for name, t in tensors.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise _fail(
                    path,
                    f"tensor {name!r} holds NaN or inf values (a diverged run?); "
                    "pass allow_nonfinite=True to load it anyway",
                )
    model = model_cls(config)
    model.load_state_dict(tensors, strict=True)
    model.to(device=device, dtype=dtype) if dtype is not None else model.to(device=device)
    model.eval().requires_grad_(False)
    return LoadedHead(model, meta)
