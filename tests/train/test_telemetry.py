"""TelemetryWriter: JSONL records, non-finite values, TensorBoard only when available."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from fusion_train import TelemetryWriter, make_optimizer, read_telemetry
from fusion_train.training.telemetry import optimizer_telemetry

from .setups import TINY, random_head

HAVE_TB = importlib.util.find_spec("tensorboard") is not None


def test_jsonl_records(tmp_path):
    path = tmp_path / "sub" / "t.jsonl"
    with TelemetryWriter(path, tensorboard=False) as tw:
        tw.log(1, {"train/loss": torch.tensor(0.5), "val/x": float("nan")})
        tw.log(2, {"train/loss": 0.25})
    lines = path.read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # strict JSON per line
    assert read_telemetry(path) == [{"step": 1, "train/loss": 0.5, "val/x": "nan"}, {"step": 2, "train/loss": 0.25}]


def test_optimizer_telemetry_keys():
    head = random_head(TINY)
    assert set(optimizer_telemetry(make_optimizer("adamw", head))) == {"fusion/lr"}
    scalars = optimizer_telemetry(make_optimizer("sf-normuon", head))
    assert {"fusion/gamma_curr", "fusion/lr", "fusion/step", "fusion/train_mode"} <= set(scalars)
    assert all(isinstance(v, float) for v in scalars.values())


@pytest.mark.skipif(HAVE_TB, reason="tensorboard is installed here")
def test_tensorboard_required_but_missing(tmp_path):
    with pytest.raises(ImportError, match="'tensorboard' package is not installed"):
        TelemetryWriter(tmp_path / "t.jsonl", tensorboard=True)
    TelemetryWriter(tmp_path / "t.jsonl", tensorboard=None).close()  # "when installed": silently off


@pytest.mark.skipif(not HAVE_TB, reason="tensorboard is not installed")
def test_tensorboard_events_written(tmp_path):
    with TelemetryWriter(tmp_path / "t.jsonl", tensorboard=True) as tw:
        tw.log(1, {"train/loss": 1.0})
    assert any((tmp_path / "tensorboard").iterdir())
