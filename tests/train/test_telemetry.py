"""TelemetryWriter: JSONL records, non-finite values, TensorBoard only when available."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from fusion_train import TelemetryWriter, make_optimizer, read_telemetry
from fusion_train.training.telemetry import optimizer_telemetry

from .setups import TINY, random_head, tiny_data

HAVE_TB = importlib.util.find_spec("tensorboard") is not None


def _strict_loads(line: str):
    """json.loads that rejects the NaN/Infinity tokens Python's json accepts by default."""
    def reject(token):
        raise ValueError(f"non-standard JSON constant {token}")
    return json.loads(line, parse_constant=reject)


def test_jsonl_records(tmp_path):
    path = tmp_path / "sub" / "t.jsonl"
    with TelemetryWriter(path, tensorboard=False) as tw:
        tw.log(1, {"train/loss": torch.tensor(0.5), "val/x": float("nan")})
        tw.log(2, {"train/loss": 0.25, "fusion/g": float("inf"), "fusion/h": torch.tensor(float("-inf"))})
    lines = path.read_text().splitlines()
    records = [_strict_loads(line) for line in lines]  # strict JSON per line
    assert records == [{"step": 1, "train/loss": 0.5, "val/x": None},
                       {"step": 2, "train/loss": 0.25, "fusion/g": None, "fusion/h": None}]
    assert read_telemetry(path) == records


def test_training_telemetry_is_strict_json(tmp_path):
    """A real run whose optimizer telemetry holds NaN (Polyak EMAs before the first step) still
    writes a file every strict JSON parser reads."""
    from fusion_train import HeadTrainConfig, train_head

    data = tiny_data()
    cfg = HeadTrainConfig(recipe="sf-normuon", steps=3, batch_size=2, val_every=3, log_every=1,
                          progress=False, tensorboard=False, out_dir=str(tmp_path),
                          head=TINY)
    train_head(cfg, data)
    lines = (tmp_path / "telemetry.jsonl").read_text().splitlines()
    assert lines and all(isinstance(_strict_loads(line), dict) for line in lines)


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


def test_plot_telemetry_skips_non_finite_values_and_needs_a_loss(tmp_path):
    pytest.importorskip("matplotlib")
    from fusion_train.training.plot import _moving_median, plot_telemetry

    records = [{"step": s, "train/loss": 1.0 / s, "fusion/lr": 1e-3, "fusion/gamma_curr": None,
                "val/median_mae": (None if s == 2 else 5.0 - s)} for s in range(1, 30)]
    png = plot_telemetry(records, tmp_path / "p.png")
    assert png.read_bytes()[:4] == b"\x89PNG" and not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(ValueError, match="no 'train/loss' records"):
        plot_telemetry([{"step": 1, "val/median_mae": 1.0}], tmp_path / "q.png")
    # centred: on a falling series the trend does not lag above the data
    assert _moving_median([5.0, 4.0, 3.0, 2.0, 1.0], 3) == [4.0, 4.0, 3.0, 2.0, 1.0]
