"""Training telemetry: one JSON object per line (always) and TensorBoard scalars (when installed).

Each record is ``{"step": int, "<name>": float | None, …}`` (``None``/``null``: the value was NaN or
±inf, which JSON cannot hold): losses (``train/…``), validation metrics
(``val/…``) and the optimizer's own scalars (``fusion/…`` from :meth:`FusionOpt.telemetry`, or
``fusion/lr`` for torch optimizers). JSONL is appended and flushed per record so a crashed run keeps
what it logged; TensorBoard is used when ``torch.utils.tensorboard`` (the ``tensorboard`` package)
imports, unless disabled.

Example:
    >>> with TelemetryWriter("run/telemetry.jsonl", tensorboard=False) as tw:  # doctest: +SKIP
    ...     tw.log(1, {"train/loss": 0.5})
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from ..optim.optimizer import FusionOpt

__all__ = ["TelemetryWriter", "optimizer_telemetry", "read_telemetry"]


def optimizer_telemetry(optimizer: Any) -> dict[str, float]:
    """``fusion/*`` scalars of ``optimizer`` (FusionOpt's telemetry, or the lr of a torch optimizer)."""
    if isinstance(optimizer, FusionOpt):
        return {k: float(v) for k, v in optimizer.telemetry().items()}
    return {"fusion/lr": float(optimizer.param_groups[0]["lr"])}


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        # JSON has no NaN/inf (json.dumps would write the invalid tokens NaN/Infinity, which strict
        # parsers such as jq or JavaScript reject): a non-finite value is recorded as null.
        return None
    return v


class TelemetryWriter:
    """Append scalar records to ``jsonl_path`` and, optionally, a TensorBoard log directory.

    Args:
        jsonl_path: the JSONL file (parent directories are created); ``None`` writes no file.
        tensorboard: ``True`` require TensorBoard, ``False`` never, ``None`` use it when installed.
        tensorboard_dir: defaults to ``<jsonl dir>/tensorboard``.
    """

    def __init__(
        self,
        jsonl_path: str | os.PathLike | None,
        tensorboard: bool | None = None,
        tensorboard_dir: str | os.PathLike | None = None,
    ) -> None:
        self.path = Path(jsonl_path) if jsonl_path is not None else None
        self._file = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard is not False and (self.path is not None or tensorboard_dir is not None):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                if tensorboard:
                    raise ImportError("tensorboard=True but the 'tensorboard' package is not installed") from None
            else:
                log_dir = tensorboard_dir or (self.path.parent / "tensorboard")  # type: ignore[union-attr]
                self._tb = SummaryWriter(log_dir=str(log_dir))
        self.records: list[dict[str, Any]] = []

    def log(self, step: int, scalars: dict[str, Any]) -> dict[str, Any]:
        """Write one record; returns it (with plain Python values)."""
        record = {"step": int(step), **{k: _plain(v) for k, v in scalars.items()}}
        self.records.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record, allow_nan=False) + "\n")
            self._file.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, global_step=int(step))
        return record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> TelemetryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_telemetry(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a telemetry JSONL file (a non-finite value was written as ``null``: ``None``)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
