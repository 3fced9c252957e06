"""Diversity training: the bounded repulsion, λ warm-up, derivative correlation, train_head wiring."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fusion_infer import load_head
from fusion_train import (
    DiversityConfig,
    DiversityLoss,
    HeadTrainConfig,
    derivative_correlation,
    train_head,
)

from .setups import TINY, tiny_data

BASE = HeadTrainConfig(recipe="adamw", steps=4, batch_size=4, val_every=2, progress=False, head=TINY,
                       val_seeds=(0,), val_t_buckets=2, tensorboard=False, lr=3e-3)


def test_loss_value_and_bound():
    div = DiversityLoss(lam=0.5, bound=1.0)
    pred = torch.zeros(2, 3, 4, requires_grad=True)
    target = torch.full((2, 3, 4), 0.1)
    near = torch.full((2, 3, 4), 0.5)  # MSE 0.25 < bound
    total, parts = div(pred, target, near, step=1)
    torch.testing.assert_close(total, torch.tensor(0.01 - 0.5 * 0.25))
    assert parts["penalty"] == pytest.approx(0.25)
    total.backward()
    # d/dpred of (mse(pred, target) − λ·mse(pred, ref)) = 2(pred−target)/n − λ·2(pred−ref)/n
    n = pred.numel()
    torch.testing.assert_close(pred.grad, torch.full_like(pred, (2 * -0.1 - 0.5 * 2 * -0.5) / n))
    # beyond the bound the repulsion is flat: its gradient is exactly zero
    pred.grad = None
    far = torch.full((2, 3, 4), 3.0)  # MSE 9 > bound 1
    total, parts = div(pred, target, far, step=1)
    assert parts["penalty"] == 1.0
    total.backward()
    torch.testing.assert_close(pred.grad, torch.full_like(pred, 2 * -0.1 / n))


def test_lambda_warmup_and_errors():
    div = DiversityLoss(lam=0.3, warmup_steps=10)
    assert [div.lam_at(s) for s in (0, 5, 10, 20)] == pytest.approx([0.0, 0.15, 0.3, 0.3])
    assert DiversityLoss(lam=0.3).lam_at(1) == 0.3
    with pytest.raises(ValueError, match="lam must be"):
        DiversityLoss(lam=-1)
    with pytest.raises(ValueError, match="bound must be"):
        DiversityLoss(bound=0)
    with pytest.raises(ValueError, match="warmup_steps must be"):
        DiversityLoss(warmup_steps=-2)
    with pytest.raises(ValueError, match="reference must be a checkpoint path"):
        DiversityConfig(reference="")
    with pytest.raises(ValueError, match="ref_pred shape"):
        div(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), 1)


def test_derivative_correlation_matches_numpy():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 2, 20, generator=g, dtype=torch.float64)
    b = a + 0.5 * torch.randn(3, 2, 20, generator=g, dtype=torch.float64)
    ours = derivative_correlation(a, b)
    for c in range(2):
        expected = np.corrcoef(np.diff(a[:, c].numpy(), axis=-1).ravel(), np.diff(b[:, c].numpy(), axis=-1).ravel())[0, 1]
        assert float(ours[c]) == pytest.approx(expected, rel=1e-10)
    assert torch.allclose(derivative_correlation(a, -a + 3), torch.full((2,), -1.0, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[N, C, T\]"):
        derivative_correlation(a, b[:, :1])


@pytest.fixture(scope="module")
def reference_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    result = train_head(dataclasses.replace(BASE, out_dir=str(out)), tiny_data())
    return str(result.best_path)


def test_fresh_diversity_run_reports_metrics(reference_path, tmp_path):
    cfg = dataclasses.replace(
        BASE, out_dir=str(tmp_path), recipe="sf-normuon",
        diversity=DiversityConfig(reference_path, lam=0.3, bound=1.0, warmup_steps=4),
    )
    result = train_head(cfg, tiny_data())
    logged = [r for r in result.records if "train/lambda" in r]
    assert logged and logged[0]["train/lambda"] == pytest.approx(0.3 * logged[0]["step"] / 4)
    assert {"train/task_loss", "train/diversity_penalty"} <= set(logged[0])
    for key in ("val/deriv_corr_target", "val/deriv_corr_reference", "val/mae_to_reference"):
        assert key in result.best_metrics
    # the reference checkpoint is untouched (it is read, never written)
    assert load_head(reference_path).metadata["recipe"] == "adamw"


def test_warm_start_copies_the_reference(reference_path):
    ref = load_head(reference_path).model
    cfg = dataclasses.replace(BASE, steps=0, diversity=DiversityConfig(reference_path, warm_start=True))
    result = train_head(cfg, tiny_data())
    for (name, a), (_, b) in zip(result.model.named_parameters(), ref.named_parameters()):
        assert torch.equal(a, b), name
    # and a warm-started head with λ = 0 mirrors the reference on the metric
    cfg = dataclasses.replace(BASE, steps=1, val_every=1, lr=1e-12,
                              diversity=DiversityConfig(reference_path, lam=0.0, warm_start=True))
    metrics = train_head(cfg, tiny_data()).best_metrics
    assert metrics["val/mae_to_reference"] < 1e-3 and metrics["val/deriv_corr_reference"] > 0.999


def test_schedule_mismatch_is_refused(reference_path):
    cfg = dataclasses.replace(BASE, noise_schedule="vp_cosine", diversity=DiversityConfig(reference_path))
    with pytest.raises(ValueError, match="reference head was trained with noise_schedule 'rectified_flow'"):
        train_head(cfg, tiny_data())
