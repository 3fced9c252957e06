"""Closed-loop metrics: loudness extractor formula, target curves, control error, summaries."""

from __future__ import annotations

import doctest
import importlib
import math

import pytest
import torch

from fusion_infer.guidance.closed_loop import (
    compare_errors,
    control_error,
    loudness_extractor,
    rising_pause_falling,
)


def test_loudness_is_the_total_mel_power_in_db():
    latent = torch.randn(3, 64, 12, generator=torch.Generator().manual_seed(0)) * 10 - 40
    got = loudness_extractor()(latent)[:, 0]
    power = (10.0 ** (latent.double() / 10)).sum(1) + 10.0 ** (-80 / 10)
    assert torch.allclose(got.double(), 10 * torch.log10(power), atol=1e-4)


def test_loudness_accepts_standardised_latents():
    mean, std = torch.linspace(-50, -30, 64), torch.linspace(2, 8, 64)
    z = torch.randn(2, 64, 5)
    a = loudness_extractor(latent_mean=mean, latent_std=std)(z)
    b = loudness_extractor()(z * std[:, None] + mean[:, None])
    assert torch.allclose(a, b, atol=1e-5)


def test_loudness_moves_with_a_uniform_gain():
    latent = torch.full((1, 64, 4), -30.0)
    ext = loudness_extractor()
    assert (ext(latent + 6.0)[:, 0] - ext(latent)[:, 0]).sub(6.0).abs().max() < 1e-3


def test_rising_pause_falling_shape():
    c = rising_pause_falling(256, -30.0, -10.0)
    assert c.shape == (256,) and c[0] == -30.0 and c[-1] == -30.0 and c.max() == -10.0
    peak = (c == -10.0).nonzero().flatten()
    assert peak.numel() >= 0.3 * 256 - 1  # the hold
    diffs = c.diff()
    assert (diffs[: peak[0]] > 0).all() and (diffs[peak[-1]:] < 0).all()
    with pytest.raises(ValueError, match="frames"):
        rising_pause_falling(2, 0, 1)
    with pytest.raises(ValueError, match="rise"):
        rising_pause_falling(10, 0, 1, rise=0.6, hold=0.5)


def test_control_error_and_summary():
    feats = torch.tensor([[[1.0, 2.0]], [[0.0, 0.0]]])
    assert control_error(feats, torch.tensor([[1.0, 0.0]])).tolist() == [1.0, 0.5]
    with pytest.raises(ValueError, match="does not match"):
        control_error(feats, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="features must be"):
        control_error(torch.zeros(2, 2), torch.zeros(2, 2))
    r = compare_errors([2.0, 4.0, 6.0], [1.0, 1.0, 7.0])
    assert r["improved"] == 2 and math.isclose(r["ratio_of_means"], 9 / 12)
    with pytest.raises(ValueError, match="paired"):
        compare_errors([1.0], [1.0, 2.0])


@pytest.mark.parametrize(
    "name",
    [
        "fusion_infer.models.base_dit",
        "fusion_infer.guidance.tfg",
        "fusion_infer.guidance.sampling",
        "fusion_infer.guidance.render_caches",
        "fusion_infer.guidance.closed_loop",
    ],
)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
