"""Noise schedules: closed forms, round trips, endpoints, errors."""

from __future__ import annotations

import math

import pytest
import torch

from fusion_infer.noise_schedules import (
    NOISE_SCHEDULES,
    RectifiedFlow,
    VPCosine,
    get_noise_schedule,
)

NAMES = sorted(NOISE_SCHEDULES)


def _xs():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 3, 7, generator=g, dtype=torch.float64)
    eps = torch.randn(5, 3, 7, generator=g, dtype=torch.float64)
    t = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0], dtype=torch.float64)
    return x0, eps, t


def test_rectified_flow_closed_form():
    x0, eps, t = _xs()
    xt = RectifiedFlow().add_noise(x0, eps, t)
    assert torch.equal(xt, (1 - t)[:, None, None] * x0 + t[:, None, None] * eps)
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[-1], eps[-1])


def test_vp_cosine_closed_form_and_variance_preserving():
    x0, eps, t = _xs()
    xt = VPCosine().add_noise(x0, eps, t)
    a, s = torch.cos(t * math.pi / 2), torch.sin(t * math.pi / 2)
    torch.testing.assert_close(xt, a[:, None, None] * x0 + s[:, None, None] * eps)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(t))
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[-1], eps[-1])


@pytest.mark.parametrize("name", NAMES)
def test_velocity_round_trips(name):
    sched = get_noise_schedule(name)
    x0, eps, t = _xs()
    xt = sched.add_noise(x0, eps, t)
    v = sched.velocity(x0, eps, t)
    torch.testing.assert_close(sched.x0_from_velocity(xt, v, t), x0)
    torch.testing.assert_close(sched.eps_from_velocity(xt, v, t), eps)


@pytest.mark.parametrize("name", NAMES)
def test_eps_x0_round_trips_where_defined(name):
    sched = get_noise_schedule(name)
    x0, eps, t = _xs()
    inner = slice(1, 4)  # α > 0 and σ > 0
    xt = sched.add_noise(x0, eps, t)
    torch.testing.assert_close(sched.x0_from_eps(xt[inner], eps[inner], t[inner]), x0[inner])
    torch.testing.assert_close(sched.eps_from_x0(xt[inner], x0[inner], t[inner]), eps[inner])


def test_rf_velocity_is_time_derivative():
    x0, eps, _ = _xs()
    sched = RectifiedFlow()
    h = 1e-6
    t = torch.tensor(0.3, dtype=torch.float64)
    fd = (sched.add_noise(x0, eps, t + h) - sched.add_noise(x0, eps, t - h)) / (2 * h)
    torch.testing.assert_close(fd, sched.velocity(x0, eps, t))


def test_vp_velocity_is_scaled_time_derivative():
    x0, eps, _ = _xs()
    sched = VPCosine()
    h = 1e-6
    t = torch.tensor(0.3, dtype=torch.float64)
    fd = (sched.add_noise(x0, eps, t + h) - sched.add_noise(x0, eps, t - h)) / (2 * h)
    torch.testing.assert_close(fd, (math.pi / 2) * sched.velocity(x0, eps, t))


def test_scalar_t_broadcasts():
    x0, eps, _ = _xs()
    assert torch.equal(RectifiedFlow().add_noise(x0, eps, 0.25), 0.75 * x0 + 0.25 * eps)


def test_errors():
    x0, eps, _ = _xs()
    with pytest.raises(ValueError, match="noise_schedule must be one of"):
        get_noise_schedule("ddpm")
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        RectifiedFlow().add_noise(x0, eps, torch.full((5,), 1.5))
    with pytest.raises(ValueError, match="entries but the batch has"):
        RectifiedFlow().add_noise(x0, eps, torch.rand(3))
    with pytest.raises(ValueError, match="noise shape"):
        VPCosine().add_noise(x0, eps[:, :2], 0.5)
