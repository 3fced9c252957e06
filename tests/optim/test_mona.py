"""MONA gradient transform (fusion_train/optim/mona.py): formula, first step, MONA-Lite, errors."""

from __future__ import annotations

import math

import pytest
import torch

from fusion_train.optim.mona import (
    DEFAULT_MONA_BETA,
    MonaConfig,
    default_mona_alpha,
    mona_init_buffers,
    mona_transform,
    reimplementation_mona_alpha,
    validate_mona_alpha,
    validate_mona_beta,
)


def _grads(n: int, shape=(5, 7), seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    # a drifting mean plus noise, so consecutive differences are neither zero nor pure noise
    base = torch.randn(shape, generator=gen)
    return [base * (1 + 0.1 * k) + 0.5 * torch.randn(shape, generator=gen) for k in range(n)]


def _reference(grads: list[torch.Tensor], alpha: float, beta: float):
    """Float64 loop of A_k = β A_{k−1} + (1−β)(G_k − G_{k−1}), G̃_k = G_k + α A_k; step 1: G̃ = G."""
    accel = torch.zeros_like(grads[0], dtype=torch.float64)
    prev = None
    outs, accels = [], []
    for g in grads:
        g = g.double()
        if prev is None:
            out = g.clone()
        else:
            accel = beta * accel + (1 - beta) * (g - prev)
            out = g + alpha * accel
        prev = g
        outs.append(out)
        accels.append(accel.clone())
    return outs, accels


@pytest.mark.parametrize("beta", [0.975, 0.99, 0.5])
def test_buffers_and_output_follow_the_formula(beta):
    alpha = default_mona_alpha(beta)
    grads = _grads(8)
    ref_out, ref_accel = _reference(grads, alpha, beta)
    accel, prev = mona_init_buffers(grads[0])
    for k, g in enumerate(grads):
        out = mona_transform(g, accel, prev, alpha=alpha, beta=beta, first_step=(k == 0))
        torch.testing.assert_close(out.double(), ref_out[k], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(accel.double(), ref_accel[k], rtol=1e-5, atol=1e-6)
        assert torch.equal(prev, g)  # G_prev stores the raw gradient, not G̃


def test_first_step_has_no_difference_term():
    g = torch.randn(4, 6) * 1e3
    accel, prev = mona_init_buffers(g)
    out = mona_transform(g, accel, prev, alpha=-20.0, beta=0.975, first_step=True)
    assert torch.equal(out, g)  # no spike: G̃_1 = G_1 exactly
    assert out.data_ptr() != g.data_ptr()  # a new tensor; the caller's grad is not aliased
    assert torch.equal(accel, torch.zeros_like(accel))
    assert torch.equal(prev, g)
    # what a zero-initialised G_prev would have done instead: G̃_1 = G + α(1−β)G = G/2
    naive = g + (-20.0) * (0.025 * g)
    assert not torch.allclose(naive, g)


def test_constant_gradient_is_left_unchanged_bit_for_bit():
    g = torch.randn(3, 3)
    accel, prev = mona_init_buffers(g)
    for k in range(5):
        out = mona_transform(g, accel, prev, alpha=-50.0, beta=0.99, first_step=(k == 0))
        assert torch.equal(out, g)
    assert torch.equal(accel, torch.zeros_like(accel))


def test_second_step_weights_match_default_alpha():
    # With α = −1/(2(1−β)) and A_1 = 0, step 2 gives G̃ = (G_1 + G_2)/2: the newest gradient has
    # weight 1 + α(1−β) = ½ (the property the α validation bound is built on).
    g1, g2 = torch.randn(2, 5), torch.randn(2, 5)
    accel, prev = mona_init_buffers(g1)
    beta = 0.975
    mona_transform(g1, accel, prev, alpha=reimplementation_mona_alpha(beta), beta=beta, first_step=True)
    out = mona_transform(g2, accel, prev, alpha=reimplementation_mona_alpha(beta), beta=beta, first_step=False)
    torch.testing.assert_close(out, (g1 + g2) / 2, rtol=1e-5, atol=1e-6)  # c = −½: smoothing
    accel, prev = mona_init_buffers(g1)
    mona_transform(g1, accel, prev, alpha=default_mona_alpha(beta), beta=beta, first_step=True)
    out = mona_transform(g2, accel, prev, alpha=default_mona_alpha(beta), beta=beta, first_step=False)
    torch.testing.assert_close(out, 1.5 * g2 - 0.5 * g1, rtol=1e-5, atol=1e-6)  # c = +½: extrapolation


def test_lite_bf16_buffers_stay_close_to_fp32():
    grads = _grads(30, shape=(16, 24), seed=3)
    beta = 0.975
    alpha = default_mona_alpha(beta)
    full = mona_init_buffers(grads[0])
    lite = mona_init_buffers(grads[0], lite=True)
    assert lite[0].dtype == torch.bfloat16 and lite[1].dtype == torch.bfloat16
    worst = 0.0
    for k, g in enumerate(grads):
        out_full = mona_transform(g, *full, alpha=alpha, beta=beta, first_step=(k == 0))
        out_lite = mona_transform(g, *lite, alpha=alpha, beta=beta, first_step=(k == 0))
        assert out_lite.dtype == torch.float32
        rel = ((out_lite - out_full).norm() / out_full.norm()).item()
        worst = max(worst, rel)
    assert lite[0].dtype == torch.bfloat16  # storage stays bf16 after updates
    assert worst < 1e-2, worst  # measured ≈ 4e-3 over 30 steps
    assert worst > 0.0  # bf16 storage is lossy; a zero here would mean fp32 was used silently


def test_bf16_gradient_returns_bf16():
    g = torch.randn(4, 4, dtype=torch.bfloat16)
    accel, prev = mona_init_buffers(g)
    assert accel.dtype == torch.float32
    mona_transform(g, accel, prev, alpha=-20.0, beta=0.975, first_step=True)
    out = mona_transform(g * 2, accel, prev, alpha=-20.0, beta=0.975, first_step=False)
    assert out.dtype == torch.bfloat16
    expected = (2 * g.float() + (-20.0) * (0.025 * g.float())).to(torch.bfloat16)
    torch.testing.assert_close(out, expected)


def test_batched_equals_per_matrix_loop():
    grads = [torch.randn(3, 6, 4) for _ in range(4)]
    accel, prev = mona_init_buffers(grads[0])
    singles = [mona_init_buffers(grads[0][i]) for i in range(3)]
    for k, g in enumerate(grads):
        out = mona_transform(g, accel, prev, alpha=-20.0, beta=0.975, first_step=(k == 0))
        for i in range(3):
            out_i = mona_transform(g[i], *singles[i], alpha=-20.0, beta=0.975, first_step=(k == 0))
            assert torch.equal(out[i], out_i)
            assert torch.equal(accel[i], singles[i][0])


def test_compiles_without_graph_breaks_and_two_graphs_at_most():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(mona_transform, backend=counter, fullgraph=True)
    grads = _grads(6, shape=(8, 8), seed=5)
    eager_bufs = mona_init_buffers(grads[0])
    comp_bufs = mona_init_buffers(grads[0])
    for k, g in enumerate(grads):
        kw = dict(alpha=-20.0, beta=0.975, first_step=(k == 0))
        torch.testing.assert_close(compiled(g, *comp_bufs, **kw), mona_transform(g, *eager_bufs, **kw))
    torch.testing.assert_close(comp_bufs[0], eager_bufs[0])
    assert counter.frame_count <= 2  # first_step True / False; no recompiles per step
    torch._dynamo.reset()


# ---------------------------------------------------------------- validation


def test_default_alpha_values():
    assert math.isclose(default_mona_alpha(0.975), 20.0)
    assert math.isclose(default_mona_alpha(0.99), 50.0)
    assert math.isclose(reimplementation_mona_alpha(0.975), -20.0)
    assert DEFAULT_MONA_BETA == 0.975


@pytest.mark.parametrize("beta", [1.0, 1.5, -0.1, float("nan"), float("inf")])
def test_bad_beta_raises_value_error(beta):
    with pytest.raises(ValueError, match=r"mona_beta must be in \[0, 1\)"):
        validate_mona_beta(beta)
    with pytest.raises(ValueError, match="mona_beta"):
        default_mona_alpha(beta)


@pytest.mark.parametrize("beta", ["0.9", None, True])
def test_non_number_beta_raises_type_error(beta):
    with pytest.raises(TypeError, match="mona_beta must be a real number"):
        validate_mona_beta(beta)


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_alpha_raises(alpha):
    with pytest.raises(ValueError, match="mona_alpha must be finite"):
        validate_mona_alpha(alpha, 0.975)


def test_alpha_at_or_below_the_sign_flip_bound_raises():
    # bound −1/(1−β) = −40 at β = 0.975: the current gradient's weight 1 + α(1−β) reaches 0
    with pytest.raises(ValueError, match=r"mona_alpha must be > -1/\(1-mona_beta\)"):
        validate_mona_alpha(-40.0, 0.975)
    with pytest.raises(ValueError, match="mona_alpha"):
        validate_mona_alpha(-100.0, 0.975)
    assert validate_mona_alpha(-39.9, 0.975) == -39.9
    assert validate_mona_alpha(0.2, 0.975) == 0.2  # the positive sign stays available
    assert validate_mona_alpha(0, 0.5) == 0.0


@pytest.mark.parametrize("alpha", ["-20", None, False])
def test_non_number_alpha_raises_type_error(alpha):
    with pytest.raises(TypeError, match="mona_alpha must be a real number"):
        validate_mona_alpha(alpha, 0.975)


def test_shape_and_dtype_mismatch_raise():
    g = torch.randn(3, 4)
    accel, prev = mona_init_buffers(torch.randn(4, 3))
    with pytest.raises(ValueError, match="accel and prev_grad must have grad's shape"):
        mona_transform(g, accel, prev, alpha=-1.0, beta=0.9, first_step=False)
    a16 = torch.zeros(3, 4, dtype=torch.float16)
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        mona_transform(g, a16, a16.clone(), alpha=-1.0, beta=0.9, first_step=False)
    with pytest.raises(TypeError, match="like must be a torch.Tensor"):
        mona_init_buffers([1.0, 2.0])


def test_config_resolves_default_alpha_and_validates():
    assert math.isclose(MonaConfig().resolved_alpha, 20.0)
    assert MonaConfig(beta=0.9, alpha=0.2).resolved_alpha == 0.2
    with pytest.raises(ValueError, match=r"mona_beta must be in \[0, 1\)"):
        MonaConfig(beta=1.0)
    with pytest.raises(ValueError, match="mona_alpha must be >"):
        MonaConfig(beta=0.975, alpha=-40.0)
    with pytest.raises(TypeError, match="mona_lite must be a bool"):
        MonaConfig(lite="yes")
