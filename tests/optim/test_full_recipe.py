"""FusionOpt with MONA and KL-Shampoo wired in: the full recipe, muon+mona, compile=True."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from fusion_train import FusionOpt, build_param_groups, lr_shape_scale, orthogonalize
from fusion_train.optim import compilation
from fusion_train.optim import optimizer as optimizer_module
from fusion_train.optim.kl_shampoo import KLShampooConfig, kl_shampoo_init_state, kl_shampoo_seed
from fusion_train.optim.mona import mona_gated_step, mona_init_buffers, mona_transform

from .conftest import TinyDiT, make_batches
from .test_fusionopt import _loss, _train
from .test_kl_shampoo import _drifting_grads, _reference_run

F64 = torch.float64


def _spectral_opt(w: torch.Tensor, **kw) -> FusionOpt:
    """A single matrix forced into the spectral group (small shapes keep references cheap)."""
    return FusionOpt([{"params": [w], "group_type": "spectral"}], **kw)


def _feed(opt: FusionOpt, w: torch.Tensor, grads):
    """Step with the given gradients; return the parameter after each step."""
    out = []
    for g in grads:
        w.grad = g.clone()
        opt.step()
        out.append(w.detach().clone())
    return out


# ---------------------------------------------------------------- KL-Shampoo inside FusionOpt


def test_kl_factors_and_update_match_dense_float64_reference():
    """ns5+shampoo on a 7×5 float64 matrix: the stored factors equal the dense re-statement of
    the authors' loop, and each parameter step is −lr·scale·NS5(S_a^{-1/2} M S_b^{-1/2})."""
    grads = [g.double() for g in _drifting_grads(12, (7, 5), seed=5)]
    w = torch.zeros(7, 5, dtype=F64, requires_grad=True)
    lr = 0.01
    opt = _spectral_opt(
        w, lr=lr, components={"ns5", "shampoo"}, momentum=0.9, nesterov=False, hot_dtype="fp32",
        shampoo_beta=0.9, precondition_frequency=4, shampoo_eps=1e-30,
    )
    params = _feed(opt, w, grads)
    cfg = KLShampooConfig(beta=0.9, precondition_frequency=4, eps=1e-30, factor_dtype=F64)
    seeded = kl_shampoo_seed(grads[0], kl_shampoo_init_state((7, 5), cfg), cfg)
    directions, ref_state = _reference_run(grads, cfg, seeded, beta1=0.9)
    st = opt.state[w]
    for name, ref in zip(("kl_s_a", "kl_s_b", "kl_q_a", "kl_q_b", "kl_d_a", "kl_d_b"), ref_state):
        assert st[name].dtype == F64
        torch.testing.assert_close(st[name], ref, rtol=1e-8, atol=1e-10, msg=name)
    assert torch.equal(params[0], torch.zeros(7, 5, dtype=F64))  # the seed step does not move w
    scale = lr * lr_shape_scale(7, 5, "match_rms")
    for t, direction in enumerate(directions, start=1):
        expected = params[t - 1] - scale * orthogonalize(direction, hot_dtype="fp32").double()
        torch.testing.assert_close(params[t], expected, rtol=1e-5, atol=1e-7, msg=f"step {t + 1}")


def test_first_step_seeds_only_spectral_params_scalar_params_step(tiny_dit):
    opt = FusionOpt(build_param_groups(tiny_dit), lr=2e-3, recipe="full", hot_dtype="fp32")
    spectral = [p for g in opt.param_groups if g["group_type"] == "spectral" for p in g["params"]]
    scalar = [p for g in opt.param_groups if g["group_type"] == "scalar" for p in g["params"]]
    before = {p: p.detach().clone() for p in tiny_dit.parameters()}
    _train(tiny_dit, opt, make_batches(1))
    for p in spectral:
        assert torch.equal(p, before[p])
        st = opt.state[p]
        assert "kl_s_a" in st and st["kl_seed_k"] == 1
        assert "momentum" not in st and "row_var" not in st  # untouched on the seed step
        assert torch.equal(st["z"], p)
        assert torch.equal(st["mona_prev"], p.grad.float())  # MONA recorded G₁
    assert all(not torch.equal(p, before[p]) for p in scalar)
    _train(tiny_dit, opt, make_batches(1, seed=1))
    assert all(not torch.equal(p, before[p]) for p in spectral)


def test_eigenbasis_refresh_cadence_inside_optimizer():
    torch.manual_seed(0)
    w = torch.zeros(6, 4, requires_grad=True)
    opt = _spectral_opt(w, lr=1e-2, recipe="muon", components={"ns5", "shampoo"}, precondition_frequency=3)
    refreshed = []
    for step, g in enumerate(_drifting_grads(11, (6, 4), seed=3), start=1):
        q_old = opt.state[w]["kl_q_a"].clone() if step > 1 else None
        s_old = opt.state[w]["kl_s_a"].clone() if step > 1 else None
        _feed(opt, w, [g])
        if step > 1:
            refreshed.append(step) if not torch.equal(q_old, opt.state[w]["kl_q_a"]) else None
            assert not torch.equal(s_old, opt.state[w]["kl_s_a"])  # factors move every step
    assert refreshed == [4, 7, 10]  # every 3 updates after the seed at step 1


def test_eigh_and_qr_run_in_fp32_with_bf16_hot_dtype_and_bf16_params(monkeypatch):
    seen: list[torch.dtype] = []
    eigh, qr = torch.linalg.eigh, torch.linalg.qr

    def eigh_spy(x, *a, **k):
        seen.append(x.dtype)
        return eigh(x, *a, **k)

    def qr_spy(x, *a, **k):
        seen.append(x.dtype)
        return qr(x, *a, **k)

    monkeypatch.setattr(torch.linalg, "eigh", eigh_spy)
    monkeypatch.setattr(torch.linalg, "qr", qr_spy)
    w = torch.zeros(8, 6, dtype=torch.bfloat16, requires_grad=True)
    opt = _spectral_opt(w, lr=1e-2, recipe="full", hot_dtype="bf16", precondition_frequency=1)
    _feed(opt, w, [g.bfloat16() for g in _drifting_grads(3, (8, 6), seed=4)])
    assert seen == [torch.float32] * 6  # seed: 2 eigh; two refreshes: 2 QR each
    assert all(opt.state[w][k].dtype == torch.float32 for k in ("kl_s_a", "kl_q_b", "kl_d_a"))
    assert torch.isfinite(w.float()).all() and not torch.equal(w, torch.zeros_like(w))


def test_sides_above_max_precond_dim_keep_no_state():
    w = torch.zeros(40, 6, requires_grad=True)
    opt = _spectral_opt(w, lr=1e-2, recipe="full", max_precond_dim=32)
    _feed(opt, w, _drifting_grads(3, (40, 6), seed=9))
    st = opt.state[w]
    assert "kl_s_a" not in st and "kl_q_a" not in st and "kl_d_a" not in st
    assert st["kl_s_b"].shape == (6, 6)
    assert torch.isfinite(w).all() and not torch.equal(w, torch.zeros_like(w))


def test_ns_split_blocks_get_their_own_factors():
    w = torch.zeros(12, 5, requires_grad=True)
    opt = FusionOpt([{"params": [w], "group_type": "spectral", "ns_split": 3}], lr=1e-2, recipe="full")
    _feed(opt, w, _drifting_grads(2, (12, 5), seed=2))
    assert opt.state[w]["kl_s_a"].shape == (3, 4, 4) and opt.state[w]["kl_s_b"].shape == (3, 5, 5)


# ---------------------------------------------------------------- MONA inside FusionOpt


def test_mona_buffers_follow_the_formula_and_feed_the_momentum():
    grads = _drifting_grads(4, (6, 4), seed=1)
    w = torch.zeros(6, 4, requires_grad=True)
    beta, alpha, mu = 0.9, -3.0, 0.8
    opt = _spectral_opt(w, lr=1e-2, recipe="muon+mona", mona_beta=beta, mona_alpha=alpha, momentum=mu, nesterov=False)
    accel, prev, m = torch.zeros(6, 4), None, torch.zeros(6, 4)
    for step, g in enumerate(grads, start=1):
        _feed(opt, w, [g])
        st = opt.state[w]
        if prev is not None:
            accel = beta * accel + (1 - beta) * (g - prev)
        g_tilde = g + alpha * accel
        m = mu * m + (1 - mu) * g_tilde
        prev = g
        torch.testing.assert_close(st["mona_accel"], accel, msg=f"A at step {step}")
        assert torch.equal(st["mona_prev"], g)
        torch.testing.assert_close(st["momentum"], m, msg=f"M at step {step}")
    assert not torch.equal(accel, torch.zeros_like(accel))


def test_mona_first_step_has_no_spike():
    """Step 1 of muon+mona is bit-identical to step 1 of plain muon: A stays zero."""
    g = _drifting_grads(1, (6, 4), seed=0)[0] * 100.0
    results = []
    for recipe in ("muon+mona", "muon"):
        w = torch.ones(6, 4, requires_grad=True)
        opt = _spectral_opt(w, lr=1e-2, recipe=recipe, mona_alpha=5.0 if recipe == "muon+mona" else None)
        results.append(_feed(opt, w, [g])[0])
        if recipe == "muon+mona":
            assert torch.equal(opt.state[w]["mona_accel"], torch.zeros(6, 4))
    assert torch.equal(results[0], results[1])


def test_mona_gated_step_equals_mona_transform():
    g1, g2, g3 = _drifting_grads(3, (5, 3), seed=6)
    one, zero = torch.ones(()), torch.zeros(())
    for lite in (False, True):
        a_ref, p_ref = mona_init_buffers(g1, lite=lite)
        a, p = mona_init_buffers(g1, lite=lite)
        seen = zero
        for i, g in enumerate((g1, g2, g3)):
            ref = mona_transform(g, a_ref, p_ref, alpha=-20.0, beta=0.975, first_step=i == 0)
            out, a, p, seen = mona_gated_step(g, a, p, seen, one, alpha=-20.0, beta=0.975)
            torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
            assert torch.equal(a, a_ref) and torch.equal(p, p_ref) and a.dtype == a_ref.dtype
        # a skipped step changes nothing
        out = mona_gated_step(g1, a, p, seen, zero, alpha=-20.0, beta=0.975)
        assert torch.equal(out[1], a) and torch.equal(out[2], p) and torch.equal(out[3], seen)


def test_mona_lite_keeps_bf16_buffers(tiny_dit):
    opt = FusionOpt(build_param_groups(tiny_dit), lr=2e-3, recipe="full", mona_lite=True)
    _train(tiny_dit, opt, make_batches(2))
    w = tiny_dit.blocks[0].qkv.weight
    assert opt.state[w]["mona_accel"].dtype == torch.bfloat16
    assert opt.state[w]["mona_prev"].dtype == torch.bfloat16


# ---------------------------------------------------------------- skipping, host sync


def test_nonfinite_first_step_leaves_initial_state_and_training_continues(tiny_dit):
    opt = FusionOpt(build_param_groups(tiny_dit), lr=2e-3, recipe="full", hot_dtype="fp32")
    before = [p.detach().clone() for p in tiny_dit.parameters()]
    loss = _loss(tiny_dit, make_batches(1)[0])
    loss.backward()
    tiny_dit.blocks[0].fc1.weight.grad[0, 0] = float("inf")
    opt.step(loss=loss)
    assert all(torch.equal(a, b) for a, b in zip(before, tiny_dit.parameters()))
    st = opt.state[tiny_dit.blocks[1].qkv.weight]
    assert torch.equal(st["kl_s_a"], torch.zeros_like(st["kl_s_a"]))  # seed was skipped
    assert torch.equal(st["kl_q_b"], torch.eye(128))
    assert torch.equal(st["mona_seen"], torch.zeros(())) and not st["mona_prev"].any()
    _train(tiny_dit, opt, make_batches(3, seed=1))
    assert all(torch.isfinite(p).all() for p in tiny_dit.parameters())
    assert not torch.equal(before[0], next(tiny_dit.parameters()))


def test_full_recipe_step_does_not_synchronise_with_the_host(monkeypatch):
    tiny_dit = _small_dit()
    opt = FusionOpt(build_param_groups(tiny_dit), lr=2e-3, recipe="full", polyak="relative",
                    precondition_frequency=1, hot_dtype="fp32")
    batches = make_batches(3)

    def forbidden(*a, **k):
        raise AssertionError("host synchronisation inside step()")

    losses = []
    for b in batches:
        loss = _loss(tiny_dit, b)
        opt.zero_grad()
        loss.backward()
        losses.append(loss)
        with monkeypatch.context() as mp:
            # on a CPU the step reads the finite flag on purpose (it is free there); an
            # accelerator never does, so take that path and check that nothing else syncs
            mp.setattr(optimizer_module, "_free_host_read", lambda t: False)
            for name in ("item", "__bool__", "__float__", "__int__", "tolist", "cpu", "numpy"):
                mp.setattr(torch.Tensor, name, forbidden)
            opt.step(loss=loss)  # seed, update, update + refresh
    assert opt.telemetry()["fusion/step"] == 3


@pytest.mark.parametrize("recipe", ["full", "sf-normuon", "muon"])
def test_cpu_fast_path_for_finite_steps_is_bit_identical(monkeypatch, recipe):
    """A CPU step reads the finite flag and skips the gating pass; the result must be the same
    bits as the branch-free path an accelerator takes, including around a skipped step."""
    def run(known: bool):
        torch.manual_seed(0)
        model = _small_dit()
        opt = FusionOpt(build_param_groups(model), lr=2e-3, recipe=recipe, hot_dtype="fp32")
        with monkeypatch.context() as mp:
            if not known:
                mp.setattr(optimizer_module, "_free_host_read", lambda t: False)
            for i, b in enumerate(make_batches(4)):
                loss = _loss(model, b)
                opt.zero_grad()
                loss.backward()
                if i == 2:  # one non-finite step in the middle
                    next(model.parameters()).grad.view(-1)[0] = float("nan")
                opt.step(loss=loss)
        return [p.detach().clone() for p in model.parameters()], opt.telemetry()["fusion/nonfinite_steps"]

    fast, n_fast = run(True)
    gated, n_gated = run(False)
    assert n_fast == n_gated == 1
    assert all(torch.equal(a, b) for a, b in zip(fast, gated))


# ---------------------------------------------------------------- training


def _regression_run(dtype: torch.dtype, steps: int) -> list[float]:
    # fp32 parameters use fp32 Newton–Schulz (bf16 matmuls are slow on CPU); bf16 parameters
    # run the default bf16 hot dtype, which is the point of that case.
    hot = "fp32" if dtype == torch.float32 else "bf16"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 4)).to(dtype)
    opt = FusionOpt(build_param_groups(model), lr=3e-3, recipe="full", warmup_steps=20, hot_dtype=hot)
    W = torch.randn(16, 4)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        x = torch.randn(32, 16, generator=gen)
        y = torch.tanh(x @ W) + 0.05 * torch.randn(32, 4, generator=gen)
        loss = (model(x.to(dtype)).float() - y).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step(loss=loss)
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("dtype,steps", [(torch.float32, 300), (torch.bfloat16, 200)], ids=["fp32", "bf16"])
def test_full_recipe_trains_with_finite_decreasing_loss(dtype, steps):
    losses = torch.tensor(_regression_run(dtype, steps))
    assert torch.isfinite(losses).all()
    first, last = losses[:20].mean(), losses[-20:].mean()
    assert last < 0.35 * first, (first, last)
    assert losses[steps // 2 : steps // 2 + 20].mean() > last  # still improving in the second half


# ---------------------------------------------------------------- compile


def _small_dit():
    torch.manual_seed(0)
    model = TinyDiT(dim=128, depth=1)
    for blk in model.blocks:
        nn.init.normal_(blk.adaLN_mod[1].weight, std=0.02)
    return model


def test_compile_has_no_recompiles_after_warmup(monkeypatch):
    """Dynamo-level check with a counting backend (fast): graphs per shape and refresh flag are
    built during warm-up (seed, update, refresh), and later steps compile nothing new."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    monkeypatch.setattr(compilation, "DEFAULT_BACKEND", counter)
    model = _small_dit()
    opt = FusionOpt(build_param_groups(model), lr=2e-3, recipe="full", compile=True, precondition_frequency=2)
    batches = make_batches(9)
    _train(model, opt, batches[:3])  # seed, update, update + refresh
    warm = counter.frame_count
    assert warm > 0
    _train(model, opt, batches[3:])
    assert counter.frame_count == warm
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_inductor_matches_eager_and_does_not_recompile():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    models = [_small_dit() for _ in range(2)]
    kw = dict(lr=2e-3, recipe="full", hot_dtype="fp32", precondition_frequency=2)
    opts = [FusionOpt(build_param_groups(m), compile=c, **kw) for m, c in zip(models, (False, True))]
    assert opts[1]._orthogonalize.is_compiled
    batches = make_batches(7)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no silent fallback to eager
        for m, o in zip(models, opts):
            _train(m, o, batches[:3])
        graphs = counters["stats"]["unique_graphs"]
        for m, o in zip(models, opts):
            _train(m, o, batches[3:])
        assert counters["stats"]["unique_graphs"] == graphs
    for (n, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=n)
    torch._dynamo.reset()


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no C++ compiler")

    torch._dynamo.reset()
    monkeypatch.setattr(compilation, "DEFAULT_BACKEND", broken_backend)
    w = torch.zeros(6, 4, requires_grad=True)
    w_ref = torch.zeros(6, 4, requires_grad=True)
    opt = _spectral_opt(w, lr=1e-2, recipe="muon", compile=True)
    ref = _spectral_opt(w_ref, lr=1e-2, recipe="muon")
    g = _drifting_grads(1, (6, 4), seed=0)
    with pytest.warns(RuntimeWarning, match="running it eagerly"):
        _feed(opt, w, g)
    _feed(ref, w_ref, g)
    assert torch.equal(w, w_ref) and not opt._orthogonalize.is_compiled
    torch._dynamo.reset()


def test_compile_unavailable_warns_at_construction(monkeypatch):
    def no_compile(*a, **k):
        raise RuntimeError("compile unsupported here")

    monkeypatch.setattr(torch, "compile", no_compile)
    with pytest.warns(RuntimeWarning, match="unavailable"):
        opt = _spectral_opt(torch.zeros(6, 4, requires_grad=True), recipe="muon", compile=True)
    assert not opt._orthogonalize.is_compiled


# ---------------------------------------------------------------- errors

BAD_ARGS = [
    (dict(components={"shampoo", "sf"}), ValueError, "allow_unbounded"),
    (dict(components={"mona", "sf"}), ValueError, "'mona'.*needs 'ns5'"),
    (dict(recipe="full", mona_beta=1.0), ValueError, "mona_beta"),
    (dict(recipe="full", mona_beta=-0.1), ValueError, "mona_beta"),
    (dict(recipe="full", mona_beta=float("nan")), ValueError, "mona_beta"),
    (dict(recipe="full", mona_beta="0.9"), TypeError, "mona_beta"),
    (dict(recipe="full", mona_alpha=-40.0), ValueError, "mona_alpha"),
    (dict(recipe="full", mona_alpha=float("inf")), ValueError, "mona_alpha"),
    (dict(recipe="full", mona_lite=1), TypeError, "mona_lite"),
    (dict(recipe="full", shampoo_beta=1.0), ValueError, "shampoo_beta"),
    (dict(recipe="full", shampoo_beta=-0.5), ValueError, "shampoo_beta"),
    (dict(recipe="full", shampoo_eps=0.0), ValueError, "shampoo_eps"),
    (dict(recipe="full", max_precond_dim=0), ValueError, "max_precond_dim"),
    (dict(recipe="full", max_precond_dim=2.5), ValueError, "max_precond_dim"),
    (dict(recipe="full", precondition_frequency=0), ValueError, "precondition_frequency"),
    (dict(recipe="full", compile="yes"), TypeError, "compile must be a bool"),
]


@pytest.mark.parametrize("kw,exc,match", BAD_ARGS, ids=[str(kw) for kw, _, _ in BAD_ARGS])
def test_bad_arguments_raise(tiny_dit, kw, exc, match):
    with pytest.raises(exc, match=match):
        FusionOpt(build_param_groups(tiny_dit), **kw)


def test_shampoo_without_ns5_with_allow_unbounded_preconditions_directly():
    grads = [g.double() for g in _drifting_grads(3, (7, 5), seed=5)]
    w = torch.zeros(7, 5, dtype=F64, requires_grad=True)
    opt = _spectral_opt(w, lr=0.1, components={"shampoo"}, allow_unbounded=True, momentum=0.9, nesterov=False,
                        shampoo_beta=0.9, shampoo_eps=1e-30, precondition_frequency=4)
    assert opt.param_groups[0]["group_type"] == "spectral"
    params = _feed(opt, w, grads)
    cfg = KLShampooConfig(beta=0.9, precondition_frequency=4, eps=1e-30, factor_dtype=F64)
    seeded = kl_shampoo_seed(grads[0], kl_shampoo_init_state((7, 5), cfg), cfg)
    directions, _ = _reference_run(grads, cfg, seeded, beta1=0.9)
    # the step size passes through the fp32 gate tensor: 0.1 is rounded to fp32 (rel. 1.5e-8)
    torch.testing.assert_close(params[1], -0.1 * directions[0], rtol=1e-6, atol=1e-10)
