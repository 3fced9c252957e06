"""FusionOpt follows torch.optim conventions: named parameters, add_param_group routing,
per-parameter bias correction, per-group options, train_mode in param_groups, Polyak without a
loss, explicit ns_coefficients, bf16 averaging precision, skipped steps and hot_dtype="auto"."""

import warnings

import pytest
import torch
from torch import nn

from fusion_train import FusionOpt, build_param_groups, orthogonalize, summarise_groups
from fusion_train.optim import hot_dtype as hot_dtype_mod
from fusion_train.optim.newton_schulz import POLAR_EXPRESS_PAPER, coefficient_schedule


def _mlp(width=64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, width), nn.GELU(), nn.Linear(width, width), nn.GELU(), nn.Linear(width, 4))


def _steps(model, opt, n, seed=1, loss_kw=True):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        loss = model(torch.randn(8, 16, generator=g)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step(loss=loss) if loss_kw else opt.step()


def test_named_parameters_are_accepted_and_routed_like_build_param_groups():
    m = _mlp()
    opt = FusionOpt(m.named_parameters(), lr=1e-3)
    routed = {n: g["group_type"] for g in opt.param_groups for n in g["param_names"]}
    expected = {n: g["group_type"] for g in build_param_groups(m) for n in g["param_names"]}
    assert routed == expected and routed["2.weight"] == "spectral"


def test_list_of_named_groups_keeps_group_options():
    m = _mlp()
    named = list(m.named_parameters())
    opt = FusionOpt([{"params": named[:2], "lr": 0.5}, {"params": named[2:]}], lr=1e-3)
    lrs = {n: g["lr"] for g in opt.param_groups for n in g["param_names"]}
    assert lrs["0.weight"] == 0.5 and lrs["0.bias"] == 0.5 and lrs["2.weight"] == 1e-3


def test_add_param_group_without_group_type_routes_like_init():
    m = _mlp()
    frozen = nn.Linear(64, 64)
    opt = FusionOpt(build_param_groups(m), lr=1e-3)
    opt.add_param_group({"params": list(frozen.parameters())})
    added = opt.param_groups[-2:]
    assert [g["group_type"] for g in added] == ["spectral", "scalar"]
    assert added[0]["params"][0] is frozen.weight and added[1]["params"][0] is frozen.bias
    assert all(len(g["param_names"]) == len(g["params"]) for g in opt.param_groups)
    opt.add_param_group({"params": [("late.weight", nn.Parameter(torch.zeros(64, 64)))]})
    assert opt.param_groups[-1]["param_names"] == ["late.weight"]


@pytest.mark.parametrize("recipe", ["sf-normuon", "sf-adamw", "muon"])
def test_late_parameter_does_not_take_an_oversized_first_step(recipe):
    """A parameter that first gets a gradient after 300 steps must step like a fresh one."""
    m = _mlp()
    late = nn.Parameter(torch.zeros(32))
    opt = FusionOpt(list(build_param_groups(m)) + [{"params": [late], "group_type": "scalar", "param_names": ["late"]}],
                    lr=1e-2, recipe=recipe)
    _steps(m, opt, 300)
    late.grad = torch.randn(32, generator=torch.Generator().manual_seed(3))
    before = late.detach().clone()
    opt.step()
    step = (late.detach() - before).abs()
    if recipe == "muon":  # AdamW path: the same first step as torch's AdamW
        ref = nn.Parameter(torch.zeros(32))
        ref.grad = late.grad.clone()
        torch.optim.AdamW([ref], lr=1e-2, weight_decay=0.0).step()
        torch.testing.assert_close(late.detach(), ref.detach(), rtol=1e-5, atol=1e-8)
    else:  # Schedule-Free: the first z step is lr·g/|g| = lr per element, y moves less
        z_step = (opt.state[late]["z"] - before).abs()
        assert float(z_step.max()) <= 1.0001e-2
        assert float(step.max()) <= 1.0001e-2


def test_per_group_options_are_honoured():
    torch.manual_seed(0)
    w = torch.randn(96, 32)
    a, b = nn.Parameter(w.clone()), nn.Parameter(w.clone())
    grad = torch.randn(96, 32)
    per_group = FusionOpt([{"params": [a], "group_type": "spectral", "ns_steps": 7, "hot_dtype": "fp32",
                            "ns_coefficients": "polar_express", "lr_scale": "original", "momentum": 0.5}],
                          lr=1e-2, recipe="muon")
    defaults = FusionOpt([{"params": [b], "group_type": "spectral"}], lr=1e-2, recipe="muon", ns_steps=7,
                         hot_dtype="fp32", ns_coefficients="polar_express", lr_scale="original", momentum=0.5)
    for p, o in ((a, per_group), (b, defaults)):
        p.grad = grad.clone()
        o.step()
    assert torch.equal(a, b)


@pytest.mark.parametrize("key,value", [("polyak", "relative"), ("shampoo_beta", 0.9), ("recipe", "muon")])
def test_optimizer_wide_options_in_a_group_are_rejected(key, value):
    with pytest.raises(ValueError, match=key):
        FusionOpt([{"params": [nn.Parameter(torch.zeros(4))], key: value}], lr=1e-3)


def test_bad_per_group_option_value_names_the_group():
    with pytest.raises(ValueError, match="param group 0: ns_backend"):
        FusionOpt([{"params": [nn.Parameter(torch.zeros(4))], "ns_backend": "fast"}], lr=1e-3)


def test_train_mode_is_visible_in_param_groups():
    m = _mlp()
    opt = FusionOpt(build_param_groups(m), lr=1e-3)
    assert all(g["train_mode"] for g in opt.param_groups)
    opt.eval()
    assert not any(g["train_mode"] for g in opt.param_groups)
    opt.train()
    assert all(g["train_mode"] for g in opt.param_groups)


def test_step_without_loss_under_polyak_uses_lr_and_warns_once():
    ma, mb = _mlp(), _mlp()
    pa = FusionOpt(build_param_groups(ma), lr=1e-3, polyak="relative")
    pb = FusionOpt(build_param_groups(mb), lr=1e-3, polyak="off")
    with pytest.warns(UserWarning, match="no loss") as rec:
        _steps(ma, pa, 3, loss_kw=False)
    assert sum("no loss" in str(w.message) for w in rec) == 1
    _steps(mb, pb, 3, loss_kw=False)
    assert all(torch.equal(x, y) for x, y in zip(ma.parameters(), mb.parameters()))


def test_ns_coefficients_accepts_a_tuple_like_torch_muon():
    G = torch.randn(3, 64, 160)
    assert torch.equal(orthogonalize(G, hot_dtype="fp32", coefficients=(3.4445, -4.7750, 2.0315)),
                       orthogonalize(G, hot_dtype="fp32", coefficients="jordan"))
    m = _mlp()
    FusionOpt(build_param_groups(m), lr=1e-3, ns_coefficients=((3.4, -4.7, 2.0), (3.0, -3.0, 1.0)))
    with pytest.raises(ValueError, match="ns_coefficients"):
        FusionOpt(build_param_groups(m), lr=1e-3, ns_coefficients=(1.0, 2.0))


def test_polar_express_more_than_five_steps_uses_the_papers_list_and_converges_to_one():
    sched, safety = coefficient_schedule("polar_express", 10)
    assert sched[:8] == POLAR_EXPRESS_PAPER and sched[8:] == (POLAR_EXPRESS_PAPER[-1],) * 2 and safety == 1.01
    G = torch.randn(128, 384, dtype=torch.float64)
    S = torch.linalg.svdvals(orthogonalize(G, steps=10, coefficients="polar_express", hot_dtype="fp32"))
    assert float((S - 1).abs().max()) < 1e-3
    # five steps keep the 5-step optimised set (unchanged behaviour)
    assert coefficient_schedule("polar_express", 5)[1] == 1.02


def test_gram_backend_matches_standard_and_square_is_unchanged():
    G = torch.randn(2, 96, 384)
    torch.testing.assert_close(orthogonalize(G, hot_dtype="fp32", backend="gram"),
                               orthogonalize(G, hot_dtype="fp32"), atol=2e-5, rtol=1e-4)
    Q = torch.randn(2, 64, 64)
    assert torch.equal(orthogonalize(Q, hot_dtype="fp32", backend="gram"), orthogonalize(Q, hot_dtype="fp32"))


def test_bf16_parameters_average_like_fp32():
    """x of a bf16 run tracks an fp32 run's (z and x are kept in fp32 for bf16 parameters)."""
    runs = {}
    for dt in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        w = nn.Parameter(torch.randn(64, 64).to(dt))
        w0 = w.detach().float().clone()
        opt = FusionOpt([{"params": [w], "group_type": "scalar"}], lr=1e-4, recipe="sf-adamw")
        g = torch.Generator().manual_seed(5)
        for _ in range(300):
            w.grad = (torch.randn(64, 64, generator=g) + 0.5).to(dt)
            opt.step()
        x = opt.state[w]["x"] if dt == torch.bfloat16 else opt.averaged(w)  # bf16: the fp32 master x
        assert x.dtype == torch.float32
        if dt == torch.bfloat16:  # what eval() writes is that x rounded once
            assert torch.equal(opt.averaged(w), x.to(torch.bfloat16))
        runs[dt] = (x - w0).norm()
    ratio = float(runs[torch.bfloat16] / runs[torch.float32])
    assert 0.98 < ratio < 1.02, ratio  # it was 0.67 when z lived in bf16 and x was derived from y


def test_skipped_step_adds_no_averaging_weight():
    m = _mlp()
    opt = FusionOpt(build_param_groups(m), lr=1e-3)
    _steps(m, opt, 3)
    ws = [g["weight_sum"].clone() for g in opt.param_groups]
    xs = [opt.averaged(p) for p in m.parameters()]
    for p in m.parameters():
        p.grad = torch.full_like(p, float("nan"))
    opt.step()
    assert all(torch.equal(a, g["weight_sum"]) for a, g in zip(ws, opt.param_groups))
    assert all(torch.equal(a, opt.averaged(p)) for a, p in zip(xs, m.parameters()))
    assert opt.telemetry()["fusion/nonfinite_steps"] == 1.0


def test_hot_dtype_auto_follows_the_measurement(monkeypatch):
    hot_dtype_mod.clear_auto_cache()
    monkeypatch.setattr(hot_dtype_mod, "measure_cpu_bf16_speedup", lambda: 0.1)
    assert hot_dtype_mod.auto_hot_dtype("cpu") == "fp32"
    hot_dtype_mod.clear_auto_cache()
    monkeypatch.setattr(hot_dtype_mod, "measure_cpu_bf16_speedup", lambda: 3.0)
    opt = FusionOpt(build_param_groups(_mlp()), lr=1e-3)
    assert opt.hot_dtype == "auto" and opt.hot_dtype_resolved == "bf16"
    assert opt.telemetry()["fusion/hot_dtype_bf16"] == 1.0
    assert "hot_dtype='bf16' (requested 'auto')" in summarise_groups(opt)
    hot_dtype_mod.clear_auto_cache()


def test_routing_warns_when_almost_nothing_is_spectral_and_names_min_dim():
    torch.manual_seed(0)
    small = nn.Sequential(nn.Linear(16, 24), nn.GELU(), nn.Linear(24, 24), nn.GELU(), nn.Linear(24, 24), nn.Linear(24, 4))
    with pytest.warns(UserWarning, match=r"min_dim=24\) would put"):
        build_param_groups(small)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        groups = build_param_groups(small, min_dim=24)
    assert sum(g["group_type"] == "spectral" for g in groups) == 1


def test_readme_example_routes_a_small_models_hidden_matrices_to_spectral():
    m = _mlp(width=64)  # "hidden matrices → spectral", as the README's comment says
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        groups = build_param_groups(m)
    spectral = [n for g in groups if g["group_type"] == "spectral" for n in g["param_names"]]
    assert spectral == ["2.weight"]


def test_polyak_gamma_is_per_group():
    m = _mlp(width=64)
    groups = build_param_groups(m)
    groups[0]["lr"] = 4e-3  # spectral group gets its own lr
    opt = FusionOpt(groups, lr=1e-3, polyak="relative")
    _steps(m, opt, 6)
    t = opt.telemetry()
    assert t["fusion/gamma_curr/0"] == pytest.approx(4 * t["fusion/gamma_curr/1"])
    assert t["fusion/gamma_multiplier"] != 1.0
