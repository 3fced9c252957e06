"""distill: losses against oracles, issue-6 loop/export/telemetry, errors."""

from __future__ import annotations

import functools

import pytest
import torch

from fusion_infer import ControlHead, ControlHeadConfig, load_head
from fusion_infer.noise_schedules import get_noise_schedule
from fusion_infer.shrink import shrink_depth, shrink_width
from fusion_train.data import synthetic_data
from fusion_train.training.distill import DistillConfig, default_feature_pairs, distill

from .models import randomize_

TEACHER = ControlHeadConfig(in_channels=64, out_channels=5, dim=32, depth=3, heads=2, freq_dim=64, modulator_rows=2)
FAST = dict(batch_size=4, val_seeds=(0,), val_t_buckets=2, progress=False, log_every=1)


@functools.cache
def data():
    return synthetic_data(12, frames=16, seed=0)


def teacher() -> ControlHead:
    torch.manual_seed(0)
    return randomize_(ControlHead(TEACHER), 0, 0.1).eval()


def test_default_feature_pairs():
    assert default_feature_pairs(4, 6) == [(0, 1), (1, 2), (2, 4), (3, 5)]
    assert default_feature_pairs(2, 3) == [(0, 1), (1, 2)]
    assert default_feature_pairs(1, 5) == [(0, 4)]


def test_exact_copy_has_zero_distillation_losses():
    # A ratio-1 width shrink is the teacher bit for bit: output and feature KD start at exactly 0.
    tch = teacher()
    student = shrink_width(tch, 1.0, strategy="magnitude")
    res = distill(student, tch, data(), "sf-normuon", steps=1, feature_weight=1.0, val_every=1, **FAST)
    first = res.records[0]
    assert first["step"] == 1
    assert first["train/output_kd"] == 0.0 and first["train/feature_kd"] == 0.0
    assert first["train/task"] > 0


def test_output_distillation_moves_the_student_towards_the_teacher():
    tch = teacher()
    student = shrink_depth(tch, 2)
    with torch.no_grad():  # a large, learnable gap: a wrong output projection
        student.final.linear.weight.mul_(-1.0)
    x0 = data().split("train")[0][:4]
    x_t = get_noise_schedule("rectified_flow").add_noise(x0, torch.randn(x0.shape), torch.full((4,), 0.3))

    def gap(m):
        with torch.no_grad():
            return float(((m(x_t, 0.3) - tch(x_t, 0.3)) ** 2).mean())

    before = gap(student)
    res = distill(student, tch, data(), "adamw", lr=1e-2, steps=15, task_weight=0.0, val_every=15, **FAST)
    kd = [r["train/output_kd"] for r in res.records if "train/output_kd" in r]
    assert len(kd) == 15
    after = gap(res.model)
    assert after < 0.5 * before


def test_loop_export_and_telemetry(tmp_path):
    tch = teacher()
    before = {k: v.clone() for k, v in tch.state_dict().items()}
    student = shrink_width(shrink_depth(tch, 2), 0.5, strategy="magnitude")
    res = distill(student, tch, data(), "sf-normuon", steps=4, val_every=2, feature_weight=0.5,
                  out_dir=str(tmp_path), **FAST)
    assert all(torch.equal(before[k], v) for k, v in tch.state_dict().items())  # teacher untouched
    assert res.steps == 4 and len(res.history) == 2 and 0 < res.train_seconds <= res.seconds
    assert {"val/median_mae", "val/mae_to_reference"} <= set(res.best_metrics)
    assert {"train/task", "train/output_kd", "train/feature_kd", "train/loss"} <= set(res.records[0])
    assert (tmp_path / "telemetry.jsonl").exists()
    last = load_head(res.last_path)
    assert last.model.config == student.config
    assert last.metadata["extra"]["teacher_config"] == tch.config.to_dict()
    x = torch.randn(2, 64, 16)
    assert torch.equal(last.model(x, 0.3), res.model(x, 0.3))  # the exported averaged weights
    assert load_head(res.best_path).model.config.heads == 1


def test_errors():
    tch = teacher()
    student = shrink_depth(tch, 2)
    with pytest.raises(TypeError, match="student must be a fusion_infer.ControlHead"):
        distill(torch.nn.Linear(2, 2), tch, data())
    with pytest.raises(ValueError, match="at least one of"):
        distill(student, tch, data(), task_weight=0.0, output_weight=0.0)
    with pytest.raises(ValueError, match="out of range"):
        distill(student, tch, data(), feature_weight=1.0, feature_pairs=((0, 3),), **FAST)
    with pytest.raises(ValueError, match="recipe must be one of"):
        DistillConfig(recipe="sgd")
    wide = ControlHead(ControlHeadConfig(**{**TEACHER.to_dict(), "dim": 64, "heads": 2}))
    with pytest.raises(ValueError, match="equal residual widths"):
        distill(wide, tch, data(), feature_weight=1.0, **FAST)
    other = ControlHead(ControlHeadConfig(**{**TEACHER.to_dict(), "out_channels": 3}))
    with pytest.raises(ValueError, match="channels"):
        distill(other, tch, data(), **FAST)
