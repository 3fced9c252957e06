"""Selective TFG: step weights (mean 1, σ windows), gradient parity, injection forms, bit-identity."""

from __future__ import annotations

import pytest
import torch

from fusion_infer.guidance.sampling import rf_sigmas, sample
from fusion_infer.guidance.tfg import HeadGuidance, SelectiveTFG, control_loss, step_weight_schedule

from .models import CHANNELS, FRAMES, ChannelMeanHead, PointOracle, noise, small_base, small_head


# ----------------------------------------------------------------------------- step weights
@pytest.mark.parametrize("kind", ["constant", "increase"])
@pytest.mark.parametrize("steps", [10, 40, 100])
def test_step_weights_have_mean_one_inside_the_window_whatever_the_step_count(kind, steps):
    sig = rf_sigmas(steps, shift=2.0)
    w = step_weight_schedule(sig, (0.3, 0.9), kind)
    inside = (sig[:-1] >= 0.3) & (sig[:-1] <= 0.9)
    assert inside.any()
    assert torch.all(w[~inside] == 0)
    # mean 1, i.e. sum = number of guided steps (α/Σα would give sum 1: strength ÷ N)
    assert w[inside].mean().item() == pytest.approx(1.0, rel=1e-6)


def test_increase_weights_follow_the_per_step_signal_ratio():
    sig = torch.tensor([1.0, 0.6, 0.3, 0.1, 0.0])
    w = step_weight_schedule(sig, (0.0, 1.0), "increase").double()
    raw = torch.tensor([0.0 / 0.4, 0.4 / 0.7, 0.7 / 0.9, 0.9 / 1.0], dtype=torch.float64)
    assert torch.allclose(w, raw * 4 / raw.sum(), atol=1e-6)
    assert w[0] == 0  # t = 1 has no signal: TFG's ratio is 0 there


def test_windows_are_in_sigma_not_step_fractions():
    # The same σ-window selects the steps whose σ lies inside, for any step count or shift.
    for steps, shift in [(10, 1.0), (37, 3.0)]:
        sig = rf_sigmas(steps, shift=shift)
        w = step_weight_schedule(sig, (0.5, 0.8), "constant")
        chosen = sig[:-1][w > 0]
        assert chosen.numel() > 0 and bool(((chosen >= 0.5) & (chosen <= 0.8)).all())
        rest = sig[:-1][w == 0]
        assert bool(((rest < 0.5) | (rest > 0.8)).all())


# ----------------------------------------------------------------------------- gradients
def test_variance_gradient_matches_autograd_of_the_weighted_sum():
    h1, h2 = small_head(1), small_head(2, out_channels=2)
    y1, y2 = torch.randn(1, FRAMES), torch.randn(2, 2, FRAMES)
    g1 = HeadGuidance(h1, y1, rho=0.7, mu=0.0)
    g2 = HeadGuidance(h2, y2, rho=1.3, mu=0.0, loss="l1")
    tfg = SelectiveTFG([g1, g2])
    x = noise()
    got = tfg.variance_gradient(x, 0.4, [2.0, 0.5])
    xq = x.clone().requires_grad_(True)
    ref_loss = (
        0.7 * 2.0 * (h1(xq, 0.4) - y1).square().mean((1, 2)).sum()
        + 1.3 * 0.5 * (h2(xq, 0.4) - y2).abs().mean((1, 2)).sum()
    )
    (ref,) = torch.autograd.grad(ref_loss, xq)
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-7)
    assert tfg.variance_gradient(x, 0.4, [0.0, 0.0]) is None


def test_mean_correction_is_n_iter_gradient_steps_on_the_clean_estimate():
    # With the analytic channel-mean head: ∇_z mean_t (mean_c z − y)² = 2(mean_c z − y)/(C·T).
    y = torch.randn(1, FRAMES)
    tfg = SelectiveTFG([HeadGuidance(ChannelMeanHead(), y, rho=0.0, mu=3.0)], n_iter=4, gamma=0.0)
    x0 = noise()
    delta = tfg.mean_correction(x0, [0.5], None)
    z = x0.clone()
    for _ in range(4):
        z = z - 3.0 * 0.5 * 2 * (z.mean(1, keepdim=True) - y) / (CHANNELS * FRAMES)
    assert torch.allclose(delta, z - x0, atol=1e-6)
    # each step moves the control toward the target
    err = lambda v: (v.mean(1, keepdim=True) - y).abs().mean()  # noqa: E731
    assert err(x0 + delta) < err(x0)


def test_mean_correction_smoothing_draws_from_the_generator():
    tfg = SelectiveTFG([HeadGuidance(small_head(), torch.zeros(1, FRAMES), mu=1.0)], n_iter=2, gamma=0.3)
    x0 = noise()
    a = tfg.mean_correction(x0, [1.0], torch.Generator().manual_seed(0))
    b = tfg.mean_correction(x0, [1.0], torch.Generator().manual_seed(0))
    c = tfg.mean_correction(x0, [1.0], torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ----------------------------------------------------------------------------- sampling
def test_guidance_steers_toward_the_target_with_an_exact_head():
    x_data = noise(seed=11)
    target = torch.linspace(-1, 1, FRAMES)[None]
    head = ChannelMeanHead()
    err = lambda v: (v.mean(1, keepdim=True) - target).abs().mean().item()  # noqa: E731
    base = PointOracle(x_data)
    sig = rf_sigmas(20)
    plain = sample(base, noise(), sig, cache=False).latents
    tfg = SelectiveTFG([HeadGuidance(head, target, rho=20.0, mu=40.0, window=(0.0, 1.0))], gamma=0.0)
    guided = sample(base, noise(), sig, guidance=tfg, cache=False).latents
    assert err(guided) < 0.5 * err(plain)


def test_mean_injection_forms_differ_by_the_documented_factor():
    # Step 1 goes σ 0.5 → 0.25: "tfg" adds (1−σ')Δ0 = 0.75Δ0, "euler" adds (1−σ'/σ)Δ0 = 0.5Δ0.
    base, head = small_base(), small_head()
    sig = torch.tensor([1.0, 0.5, 0.25, 0.0])
    term = dict(target=torch.zeros(1, FRAMES), rho=0.0, mu=2.0, window=(0.4, 0.6))

    def after_step_1(**kw):
        seen = {}
        tfg = SelectiveTFG([HeadGuidance(head, **term)], gamma=0.0, **kw) if kw else None
        sample(base, noise(), sig, guidance=tfg, cache=False, callback=lambda i, x: seen.setdefault(i, x))
        return seen[1]

    plain, tfg_form, euler_form = after_step_1(), after_step_1(mean_injection="tfg"), after_step_1(
        mean_injection="euler"
    )
    assert not torch.equal(plain, tfg_form)
    assert torch.allclose((tfg_form - plain) * 0.5, (euler_form - plain) * 0.75, atol=1e-6)


@pytest.mark.parametrize("sampler", ["euler", "pingpong"])
def test_cached_and_uncached_guided_renders_are_bit_identical(sampler):
    base = small_base()
    h1, h2 = small_head(1), small_head(2, out_channels=2)
    tfg = SelectiveTFG(
        [
            HeadGuidance(h1, torch.randn(1, FRAMES), rho=0.5, mu=1.0, window=(0.2, 1.0)),
            HeadGuidance(h2, torch.randn(2, FRAMES), rho=0.2, mu=0.5, window=(0.0, 0.6), loss="huber"),
        ],
        n_iter=4,
        gamma=0.3,
        step_weights="increase",
    )
    sig = rf_sigmas(10, shift=2.0)
    runs = {}
    for cache in (True, False):
        runs[cache] = sample(
            base, noise(), sig, sampler=sampler, guidance=tfg, cache=cache, generator=torch.Generator().manual_seed(9)
        )
    assert torch.equal(runs[True].latents, runs[False].latents)
    unguided = sample(base, noise(), sig, sampler=sampler, cache=False, generator=torch.Generator().manual_seed(9))
    assert not torch.equal(unguided.latents, runs[True].latents)
    # every head call was served from the warmed cache
    stats = runs[True].cache_stats
    assert stats["head0"]["hits"] + stats["head1"]["hits"] == runs[True].head_calls
    assert stats["base"]["hits"] == 10
    for m in (base, h1, h2):
        assert m.modulator_provider is None and all(p.requires_grad for p in m.parameters())


def test_a_window_that_holds_no_step_leaves_the_render_unchanged():
    base, head = small_base(), small_head()
    sig = rf_sigmas(6)
    plain = sample(base, noise(), sig, cache=False)
    tfg = SelectiveTFG([HeadGuidance(head, torch.ones(1, FRAMES), window=(0.0, 0.1))])
    guided = sample(base, noise(), sig, guidance=tfg, cache=False)
    assert guided.guided_steps == 0 and guided.head_calls == 0
    assert torch.equal(plain.latents, guided.latents)


def test_per_head_windows_count_head_calls():
    base = small_base()
    sig = rf_sigmas(10)  # σ_i = 1.0, 0.9, …, 0.1
    tfg = SelectiveTFG(
        [
            HeadGuidance(small_head(1), torch.zeros(1, FRAMES), rho=1.0, mu=1.0, window=(0.75, 1.0)),  # 3 steps
            HeadGuidance(small_head(2), torch.zeros(1, FRAMES), rho=1.0, mu=0.0, window=(0.0, 0.35)),  # 3 steps
        ],
        n_iter=4,
    )
    out = sample(base, noise(), sig, guidance=tfg, cache=True)
    assert out.guided_steps == 6
    assert out.head_calls == 3 * (1 + 4) + 3 * 1


# ----------------------------------------------------------------------------- errors
def test_bad_guidance_arguments_raise():
    head = small_head()
    y = torch.zeros(1, FRAMES)
    with pytest.raises(ValueError, match="window"):
        HeadGuidance(head, y, window=(0.8, 0.2))
    with pytest.raises(TypeError, match="window"):
        HeadGuidance(head, y, window=0.5)
    with pytest.raises(ValueError, match="rho"):
        HeadGuidance(head, y, rho=-1.0)
    with pytest.raises(ValueError, match="loss must be one of"):
        HeadGuidance(head, y, loss="cosine")
    with pytest.raises(ValueError, match="target must be"):
        HeadGuidance(head, torch.zeros(FRAMES))
    with pytest.raises(TypeError, match="head must be"):
        HeadGuidance("head", y)
    with pytest.raises(ValueError, match="n_iter"):
        SelectiveTFG([], n_iter=-1)
    with pytest.raises(ValueError, match="step_weights must be one of"):
        SelectiveTFG([], step_weights="alpha_over_sum")
    with pytest.raises(ValueError, match="mean_injection must be one of"):
        SelectiveTFG([], mean_injection="ddim")
    with pytest.raises(ValueError, match="gamma"):
        SelectiveTFG([], gamma=float("nan"))
    with pytest.raises(TypeError, match="heads\\[0\\]"):
        SelectiveTFG([head])
    with pytest.raises(ValueError, match="loss must be one of"):
        control_loss(torch.zeros(1, 1, 2), torch.zeros(1, 2), "kl")
