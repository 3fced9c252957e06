"""Rectified-flow Euler and ping-pong samplers: oracle parity, caching bit-identity, input errors."""

from __future__ import annotations

import pytest
import torch

from fusion_infer.guidance.render_caches import RenderCaches
from fusion_infer.guidance.sampling import euler_step, pingpong_step, rf_sigmas, sample
from fusion_infer.models.base_dit import BaseDiT, base_dit_config

from .models import CHANNELS, FRAMES, GaussianOracle, PointOracle, noise, small_base


def test_rf_sigmas_endpoints_shift_and_errors():
    s = rf_sigmas(10, shift=3.0)
    assert s[0].item() == 1.0 and s[-1].item() == 0.0 and bool((s[1:] < s[:-1]).all())
    assert torch.allclose(rf_sigmas(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    # shift > 1 spends more steps at high noise
    assert (rf_sigmas(10, shift=3.0)[1:-1] > rf_sigmas(10)[1:-1]).all()
    with pytest.raises(ValueError, match="steps"):
        rf_sigmas(0)
    with pytest.raises(ValueError, match="shift"):
        rf_sigmas(4, shift=0.0)


def test_step_formulas():
    x, x0 = torch.tensor([2.0]), torch.tensor([1.0])
    assert euler_step(x, x0, 0.5, 0.25).item() == pytest.approx(1.5)  # (σ'/σ)x + (1−σ'/σ)x0
    assert pingpong_step(x0, 0.25, torch.tensor([3.0])).item() == pytest.approx(0.75 + 0.75)
    with pytest.raises(ValueError, match="sigma"):
        euler_step(x, x0, 0.0, 0.0)


@pytest.mark.parametrize("sampler", ["euler", "pingpong"])
def test_point_oracle_lands_on_the_data_point(sampler):
    x0 = torch.randn(2, CHANNELS, FRAMES, generator=torch.Generator().manual_seed(7))
    out = sample(PointOracle(x0), noise(), rf_sigmas(6), sampler=sampler, cache=False).latents
    assert torch.allclose(out, x0, atol=1e-5)


def test_euler_matches_the_gaussian_probability_flow():
    # For data N(m, s²) the exact flow maps ε to m + s·ε; Euler converges to it at first order.
    m, s = 0.7, 0.4
    eps = noise(batch=3)
    exact = m + s * eps
    err = {n: (sample(GaussianOracle(m, s), eps, rf_sigmas(n), cache=False).latents - exact).abs().max().item()
           for n in (50, 200)}
    assert err[200] < 0.015
    assert 3.0 < err[50] / err[200] < 5.0  # first order: 4× the steps, ≈ 4× less error


def test_pingpong_matches_its_analytic_variance_recursion_on_gaussian_data():
    # With the MMSE oracle x̂0 = m + k_i(x − (1−σ_i)m), k_i = (1−σ_i)s²/((1−σ_i)²s² + σ_i²),
    # ping-pong keeps the mean at (1−σ)m and its variance follows
    # V_{i+1} = (1−σ_{i+1})²k_i²V_i + σ_{i+1}² (it under-disperses: x̂0 is a mean, not a sample).
    m, s = -0.3, 0.5
    sig = rf_sigmas(8)
    eps = torch.randn(256, CHANNELS, FRAMES, generator=torch.Generator().manual_seed(0))
    out = sample(GaussianOracle(m, s), eps, sig, sampler="pingpong", cache=False).latents
    v = 1.0
    for i in range(len(sig) - 1):
        t, t_next = float(sig[i]), float(sig[i + 1])
        k = (1 - t) * s * s / ((1 - t) ** 2 * s * s + t * t)
        v = (1 - t_next) ** 2 * k * k * v + t_next**2
    assert abs(out.mean().item() - m) < 0.01
    assert abs(out.std().item() - v**0.5) < 0.01


@pytest.mark.parametrize("sampler", ["euler", "pingpong"])
def test_cached_and_uncached_renders_are_bit_identical(sampler):
    model = small_base()
    sig = rf_sigmas(8, shift=2.0)
    a = sample(model, noise(), sig, sampler=sampler, cache=True, generator=torch.Generator().manual_seed(5))
    b = sample(model, noise(), sig, sampler=sampler, cache=False, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.latents, b.latents)
    assert a.cache_stats["base"]["hits"] == 8 and b.cache_stats == {}
    assert model.modulator_provider is None  # detached after the render
    assert all(p.requires_grad for p in model.parameters())  # freezing is undone


def test_render_caches_are_reused_across_renders():
    model = small_base()
    caches = RenderCaches()
    sig = rf_sigmas(5)
    first = sample(model, noise(), sig, cache=caches)
    second = sample(model, noise(), sig, cache=caches)
    assert torch.equal(first.latents, second.latents)
    stats = caches.cache_for(model).stats
    assert stats.hits == 10 and stats.entries == 6  # 5 steps + t=0, computed once


def test_an_attached_cache_is_kept_and_cache_false_detaches_it_temporarily():
    from fusion_infer import TimeConditioningCache

    model = small_base()
    own = TimeConditioningCache(model).attach()
    sample(model, noise(), rf_sigmas(3), cache=True)
    assert own.stats.hits == 3 and model.modulator_provider is own
    sample(model, noise(), rf_sigmas(3), cache=False)
    assert own.stats.hits == 3 and model.modulator_provider is own
    own.detach()


def test_base_dit_shape_contract():
    model = BaseDiT(base_dit_config(in_channels=CHANNELS, dim=32, depth=1, heads=4, freq_dim=32))
    assert model(noise(), 0.3).shape == (2, CHANNELS, FRAMES)
    with pytest.raises(ValueError, match="out_channels must equal"):
        BaseDiT(base_dit_config(in_channels=CHANNELS, out_channels=1, dim=32, depth=1, heads=4, freq_dim=32))
    x = noise()
    t = torch.tensor([0.2, 0.9])
    assert torch.equal(model.clean_estimate(x, t), x - t[:, None, None] * model(x, t))


def test_bad_inputs_raise_clear_errors():
    model = small_base()
    with pytest.raises(ValueError, match="sampler must be one of"):
        sample(model, noise(), rf_sigmas(3), sampler="heun")
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample(model, noise(), torch.tensor([0.5, 1.0, 0.0]))
    with pytest.raises(ValueError, match="within"):
        sample(model, noise(), torch.tensor([1.5, 0.0]))
    with pytest.raises(ValueError, match="noise must be"):
        sample(model, torch.randn(CHANNELS, FRAMES), rf_sigmas(3))
    with pytest.raises(TypeError, match="cache must be"):
        sample(model, noise(), rf_sigmas(3), cache="yes")
    with pytest.raises(TypeError, match="guidance must be"):
        sample(model, noise(), rf_sigmas(3), guidance=object())
