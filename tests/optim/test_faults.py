"""Optimizer faults: finite moments for any finite gradient, zero-size and complex parameters."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from fusion_train import RECIPES, FusionOpt, build_param_groups

MAGNITUDES = [1e-40, 1e-30, 1e-10, 1.0, 1e10, 1e18, 1e19, 1e20, 1e30, 1e38]


def _model(dtype):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 48), nn.GELU(), nn.Linear(48, 48), nn.Linear(48, 3)).to(dtype)


def _all_state_finite(opt) -> bool:
    for st_ in opt.state.values():
        for v in st_.values():
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
                return False
    return True


def _fuzz(recipe, dtype, scale, seed=0):
    m = _model(dtype)
    opt = FusionOpt(build_param_groups(m), lr=1e-3, recipe=recipe, hot_dtype="fp32", polyak="relative" if "sf" in RECIPES[recipe] else "off")
    g = torch.Generator().manual_seed(seed)
    for i in range(3):
        for p in m.parameters():
            p.grad = (scale * torch.randn(p.shape, generator=g, dtype=torch.float64)).to(dtype)
        opt.step(loss=torch.tensor(1.0 + i))
    return m, opt


@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scale", MAGNITUDES)
def test_any_finite_gradient_keeps_parameters_and_state_finite(recipe, dtype, scale):
    if dtype == torch.bfloat16 and scale < 1e-38:
        scale = 1e-38  # bf16 subnormals end near 9e-41; the same regime
    m, opt = _fuzz(recipe, dtype, scale)
    assert all(bool(torch.isfinite(p).all()) for p in m.parameters())
    assert _all_state_finite(opt)
    assert float(opt._polyak.gnorm_ema) < math.inf and math.isfinite(float(opt._polyak.multiplier))


@pytest.mark.parametrize("scale", [1e20, 1e30, 1e36])  # 1e38·randn overflows fp32 itself
def test_huge_finite_gradients_are_not_mistaken_for_nonfinite(scale):
    """Their 2-norm overflows fp32 (the CPU's first, cheap check); the step must still be taken."""
    m, opt = _fuzz("sf-normuon", torch.float32, scale)
    assert opt.telemetry()["fusion/nonfinite_steps"] == 0
    assert all(opt.state[p]["step"] == 3 for p in m.parameters())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(exponent=st.floats(-40, 38), recipe=st.sampled_from(sorted(RECIPES)))
def test_fuzz_gradient_magnitude_property(exponent, recipe):
    m, opt = _fuzz(recipe, torch.float32, 10.0**exponent, seed=1)
    assert all(bool(torch.isfinite(p).all()) for p in m.parameters())
    assert _all_state_finite(opt)


@pytest.mark.parametrize("scale", [1e-30, 1e-10, 1.0, 1e10, 1e18])
def test_adam_path_matches_torch_adamw_where_adamw_is_finite(scale):
    """The element-wise path (recipe "muon", scalar group) is torch's AdamW wherever g² is finite."""
    g = torch.Generator().manual_seed(2)
    ours, ref = nn.Parameter(torch.randn(32, generator=g)), None
    ref = nn.Parameter(ours.detach().clone())
    opt = FusionOpt([{"params": [ours], "group_type": "scalar"}], lr=1e-3, recipe="muon", weight_decay=0.01)
    torch_opt = torch.optim.AdamW([ref], lr=1e-3, weight_decay=0.01)
    for _ in range(3):
        grad = scale * torch.randn(32, generator=g)
        ours.grad, ref.grad = grad.clone(), grad.clone()
        opt.step()
        torch_opt.step()
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(ours.detach(), ref.detach(), rtol=1e-5, atol=1e-7)


def test_where_adamw_overflows_we_still_take_a_bounded_step():
    """|g| = 1e20: AdamW's g² = inf freezes the parameter forever; ours steps ≈ lr·sign(g)."""
    p = nn.Parameter(torch.zeros(8))
    opt = FusionOpt([{"params": [p], "group_type": "scalar"}], lr=1e-3, recipe="muon")
    p.grad = torch.full((8,), 1e20)
    opt.step()
    assert torch.isfinite(opt.state[p]["exp_avg_sq"]).all()
    assert torch.isfinite(p).all() and float(p.abs().max()) <= 1e-3 * 1.01


def test_zero_size_parameters_are_skipped():
    m = nn.Sequential(nn.Linear(4, 64), nn.Linear(64, 64))
    empty = nn.Parameter(torch.zeros(0, 64))
    empty_vec = nn.Parameter(torch.zeros(0))
    groups = build_param_groups(m)
    opt = FusionOpt(groups + [{"params": [empty, empty_vec], "group_type": "scalar"}], lr=1e-3, recipe="full")
    m(torch.randn(2, 4)).sum().backward()
    empty.grad, empty_vec.grad = torch.zeros(0, 64), torch.zeros(0)
    opt.step()
    assert empty not in opt.state and empty_vec not in opt.state

    class WithEmpty(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(0, 5))
            self.lin = nn.Linear(64, 64)

    groups = build_param_groups(WithEmpty())
    assert any(g["group_type"] == "scalar" and "w" in g["param_names"] for g in groups)


def test_complex_parameters_are_refused_at_construction():
    c = nn.Parameter(torch.zeros(4, 4, dtype=torch.complex64))
    with pytest.raises(ValueError, match="complex"):
        FusionOpt([c], lr=1e-3)
    opt = FusionOpt([nn.Parameter(torch.zeros(4))], lr=1e-3)
    with pytest.raises(ValueError, match="complex"):
        opt.add_param_group({"params": [c]})
