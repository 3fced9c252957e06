"""KL-Shampoo components (fusion_train/optim/kl_shampoo.py) against dense float64 references."""

from __future__ import annotations

import pytest
import torch

from fusion_train.optim.kl_shampoo import (
    KLShampooConfig,
    KLShampooState,
    kl_shampoo_init_state,
    kl_shampoo_precondition,
    kl_shampoo_refresh_due,
    kl_shampoo_refresh_eigenbasis,
    kl_shampoo_seed,
    kl_shampoo_side_active,
    kl_shampoo_step,
    kl_shampoo_update_state,
)

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _spd(n: int, gen: torch.Generator) -> torch.Tensor:
    a = torch.randn(n, n, generator=gen, dtype=F64)
    return a @ a.T / n + 0.5 * torch.eye(n, dtype=F64)


def _eig_state(s_a: torch.Tensor, s_b: torch.Tensor) -> KLShampooState:
    """A state whose eigen-approximation is exact: Q, d = eigh(S) (descending)."""
    la, qa = torch.linalg.eigh(s_a)
    lb, qb = torch.linalg.eigh(s_b)
    return KLShampooState(s_a, s_b, qa.flip(-1), qb.flip(-1), la.flip(-1), lb.flip(-1))


def _dense_inv_sqrt(s: torch.Tensor) -> torch.Tensor:
    lam, q = torch.linalg.eigh(s)
    out = q @ torch.diag(lam.rsqrt()) @ q.T
    torch.testing.assert_close(out @ s @ out, torch.eye(len(s), dtype=s.dtype))  # sanity
    return out


# ------------------------------------------------------------ single-call formulas


def test_seed_accumulates_unwhitened_factors_and_sets_init_eigenvalues():
    cfg = KLShampooConfig(beta=0.9, init_factor=0.1, factor_dtype=F64)
    g = torch.randn(5, 3, generator=_gen(0), dtype=F64)
    state0 = kl_shampoo_init_state(g.shape, cfg)
    st = kl_shampoo_seed(g, state0, cfg)
    torch.testing.assert_close(st.s_a, 0.1 / 3 * g @ g.T)
    torch.testing.assert_close(st.s_b, 0.1 / 5 * g.T @ g)
    for s, q, d in ((st.s_a, st.q_a, st.d_a), (st.s_b, st.q_b, st.d_b)):
        torch.testing.assert_close(q.T @ q, torch.eye(len(q), dtype=F64))
        lam = torch.diagonal(q.T @ s @ q)
        assert torch.all(lam[:-1] >= lam[1:] - 1e-12)  # descending, as the authors flip eigh
        torch.testing.assert_close(q.T @ s @ q, torch.diag(lam), atol=1e-12, rtol=0)
        assert torch.equal(d, torch.full_like(d, 0.1))  # init_factor, not the eigenvalues
    # pure: the input state is untouched
    assert torch.equal(state0.s_a, torch.zeros(5, 5, dtype=F64))
    assert torch.equal(state0.q_b, torch.eye(3, dtype=F64))


def test_factor_update_equals_dense_kl_formula_with_exact_inverses():
    gen = _gen(1)
    a, b, beta = 6, 4, 0.9
    cfg = KLShampooConfig(beta=beta, factor_dtype=F64)
    s_a, s_b = _spd(a, gen), _spd(b, gen)
    g = torch.randn(a, b, generator=gen, dtype=F64)
    new = kl_shampoo_update_state(g, _eig_state(s_a, s_b), cfg, refresh=False)
    ref_a = beta * s_a + (1 - beta) / b * g @ torch.linalg.inv(s_b) @ g.T
    ref_b = beta * s_b + (1 - beta) / a * g.T @ torch.linalg.inv(s_a) @ g
    torch.testing.assert_close(new.s_a, ref_a, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(new.s_b, ref_b, rtol=1e-10, atol=1e-12)


def test_eigenvalue_ema_equals_dense_diagonal_estimate():
    gen = _gen(2)
    a, b, beta = 5, 7, 0.8
    cfg = KLShampooConfig(beta=beta, factor_dtype=F64)
    st = _eig_state(_spd(a, gen), _spd(b, gen))
    g = torch.randn(a, b, generator=gen, dtype=F64)
    new = kl_shampoo_update_state(g, st, cfg, refresh=False)
    inv_a, inv_b = torch.linalg.inv(st.s_a), torch.linalg.inv(st.s_b)
    est_a = torch.diagonal(st.q_a.T @ g @ inv_b @ g.T @ st.q_a) / b
    est_b = torch.diagonal(st.q_b.T @ g.T @ inv_a @ g @ st.q_b) / a
    torch.testing.assert_close(new.d_a, beta * st.d_a + (1 - beta) * est_a, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(new.d_b, beta * st.d_b + (1 - beta) * est_b, rtol=1e-10, atol=1e-12)
    assert new.q_a is st.q_a and new.q_b is st.q_b  # no refresh requested: bases kept


def test_precondition_equals_dense_inverse_square_roots():
    gen = _gen(3)
    a, b = 6, 5
    cfg = KLShampooConfig(eps=1e-30, factor_dtype=F64)
    s_a, s_b = _spd(a, gen), _spd(b, gen)
    m = torch.randn(a, b, generator=gen, dtype=F64)
    out = kl_shampoo_precondition(m, _eig_state(s_a, s_b), cfg)
    ref = _dense_inv_sqrt(s_a) @ m @ _dense_inv_sqrt(s_b)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


def test_precondition_damping_is_one_over_sqrt_plus_eps():
    cfg = KLShampooConfig(eps=0.5, init_factor=0.25)
    st = kl_shampoo_init_state((2, 3), cfg)  # identity bases, d = 0.25 both sides
    out = kl_shampoo_precondition(torch.ones(2, 3), st, cfg)
    # k = 0.25^{-1/2}·0.25^{-1/2} = 4; k/(1 + k·eps) = 1/(√(d_a d_b) + eps) = 1/(0.25 + 0.5)
    torch.testing.assert_close(out, torch.full((2, 3), 4 / 3))


def test_clamp_floors_eigenvalues_at_authors_bound():
    # zero gradients shrink d geometrically; the floor is 1/C², C = max(10, min(dim, cap))
    cfg = KLShampooConfig(beta=0.5, max_clamp_value=4000)
    st = kl_shampoo_seed(torch.randn(3, 40), kl_shampoo_init_state((3, 40), cfg), cfg)
    for _ in range(60):
        st = kl_shampoo_update_state(torch.zeros(3, 40), st, cfg, refresh=False)
    torch.testing.assert_close(st.d_a, torch.full((3,), 1 / 10**2))
    torch.testing.assert_close(st.d_b, torch.full((40,), 1 / 40**2))
    off = KLShampooConfig(beta=0.5, max_clamp_value=None)
    st = kl_shampoo_seed(torch.randn(3, 40), kl_shampoo_init_state((3, 40), off), off)
    for _ in range(60):
        st = kl_shampoo_update_state(torch.zeros(3, 40), st, off, refresh=False)
    assert st.d_a.max() < 1e-15  # without the clamp d keeps shrinking


def test_refresh_is_one_power_iteration_plus_qr():
    gen = _gen(4)
    cfg = KLShampooConfig(factor_dtype=F64)
    s = _spd(6, gen)
    q0, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=F64))
    st = kl_shampoo_init_state((6, 6), cfg)._replace(s_a=s, q_a=q0, s_b=s, q_b=q0)
    new = kl_shampoo_refresh_eigenbasis(st)
    ref, _ = torch.linalg.qr(s @ q0)
    torch.testing.assert_close(new.q_a, ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(new.d_a, st.d_a)  # eigenvalue estimates are kept
    # repeated refreshes are subspace iteration: Q converges to S's eigenbasis
    for _ in range(200):
        st = kl_shampoo_refresh_eigenbasis(st)
    rotated = st.q_a.T @ s @ st.q_a
    off_diag = rotated - torch.diag(torch.diagonal(rotated))
    assert off_diag.abs().max() < 1e-6


# ------------------------------------------------------------ trajectories


def _reference_run(grads, cfg: KLShampooConfig, seeded: KLShampooState, beta1: float = 0.9):
    """Dense float64 re-statement of the authors' loop after the seed: per step the direction
    from the old state, S ← βS + (1−β)/n·G Ŝ⁻¹ Gᵀ with Ŝ⁻¹ = Q diag(1/d) Qᵀ, d ← βd + (1−β)·diag
    estimate, clamp, QR refresh every `precondition_frequency` updates. Identity sides are not
    handled. The seeded bases come from `seeded`: for a×b with a ≠ b the larger factor is rank
    deficient at the seed and eigh's basis of its null space is arbitrary (any rounding change
    picks another), so the reference re-derives S and d but reuses those Q."""
    beta = cfg.beta
    g = grads[0].double()
    a, b = g.shape
    s_a = (1 - beta) / b * g @ g.T
    s_b = (1 - beta) / a * g.T @ g
    torch.testing.assert_close(seeded.s_a.double(), s_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(seeded.s_b.double(), s_b, rtol=1e-5, atol=1e-6)
    q_a, q_b = seeded.q_a.double(), seeded.q_b.double()
    d_a = torch.full((a,), cfg.init_factor, dtype=F64)
    d_b = torch.full((b,), cfg.init_factor, dtype=F64)
    floor_a = 1 / max(10, min(a, cfg.max_clamp_value)) ** 2
    floor_b = 1 / max(10, min(b, cfg.max_clamp_value)) ** 2
    m = torch.zeros_like(g)
    directions = []
    for t, g in enumerate(grads[1:], start=1):
        g = g.double()
        m = beta1 * m + (1 - beta1) * g
        inv_sqrt_a = q_a @ torch.diag(d_a.rsqrt()) @ q_a.T
        inv_sqrt_b = q_b @ torch.diag(d_b.rsqrt()) @ q_b.T
        directions.append(inv_sqrt_a @ m @ inv_sqrt_b)  # eps negligible at 1e-30
        inv_a = q_a @ torch.diag(1 / d_a) @ q_a.T
        inv_b = q_b @ torch.diag(1 / d_b) @ q_b.T
        est_a = torch.diagonal(q_a.T @ g @ inv_b @ g.T @ q_a) / b
        est_b = torch.diagonal(q_b.T @ g.T @ inv_a @ g @ q_b) / a
        s_a = beta * s_a + (1 - beta) / b * g @ inv_b @ g.T
        s_b = beta * s_b + (1 - beta) / a * g.T @ inv_a @ g
        d_a = (beta * d_a + (1 - beta) * est_a).clamp_min(floor_a)
        d_b = (beta * d_b + (1 - beta) * est_b).clamp_min(floor_b)
        if t % cfg.precondition_frequency == 0:
            q_a = torch.linalg.qr(s_a @ q_a)[0]
            q_b = torch.linalg.qr(s_b @ q_b)[0]
    return directions, (s_a, s_b, q_a, q_b, d_a, d_b)


def _run(grads, cfg: KLShampooConfig, beta1: float = 0.9, state: KLShampooState | None = None):
    """Seed on grads[0] (unless a post-seed `state` is given), then kl_shampoo_step per grad."""
    if state is None:
        state = kl_shampoo_seed(grads[0], kl_shampoo_init_state(grads[0].shape, cfg), cfg)
    m = torch.zeros_like(grads[0])
    directions = []
    for t, g in enumerate(grads[1:], start=1):
        m = beta1 * m + (1 - beta1) * g
        direction, state = kl_shampoo_step(g, m, state, cfg, refresh=kl_shampoo_refresh_due(t, cfg))
        directions.append(direction)
    return directions, state


def _drifting_grads(n: int, shape, seed: int, dtype=torch.float32):
    gen = _gen(seed)
    base = torch.randn(shape, generator=gen)
    return [(base + 0.7 * torch.randn(shape, generator=gen)).to(dtype) for _ in range(n)]


def test_trajectory_matches_dense_reference_in_float64():
    cfg = KLShampooConfig(beta=0.9, precondition_frequency=4, eps=1e-30, factor_dtype=F64)
    grads = [g.double() for g in _drifting_grads(15, (7, 5), seed=5)]
    seeded = kl_shampoo_seed(grads[0], kl_shampoo_init_state((7, 5), cfg), cfg)
    ours, st = _run(grads, cfg, state=seeded)
    ref, ref_state = _reference_run(grads, cfg, seeded)
    for k, (x, y) in enumerate(zip(ours, ref)):
        torch.testing.assert_close(x, y, rtol=1e-8, atol=1e-10, msg=f"step {k + 2}")
    for x, y in zip(st, ref_state):
        torch.testing.assert_close(x, y, rtol=1e-8, atol=1e-10)


def test_trajectory_float32_factors_track_float64_reference():
    cfg = KLShampooConfig(beta=0.9, precondition_frequency=4)
    grads = _drifting_grads(15, (7, 5), seed=6)
    seeded = kl_shampoo_seed(grads[0], kl_shampoo_init_state((7, 5), cfg), cfg)
    ours, _ = _run(grads, cfg, state=seeded)
    ref, _ = _reference_run(grads, cfg, seeded)
    for x, y in zip(ours, ref):
        assert x.dtype == torch.float32
        assert ((x.double() - y).norm() / y.norm()) < 1e-5  # measured ≈ 4e-7


def test_refresh_cadence_changes_bases_only_when_due():
    cfg = KLShampooConfig(precondition_frequency=3)
    assert [n for n in range(0, 10) if kl_shampoo_refresh_due(n, cfg)] == [3, 6, 9]
    assert [n for n in range(1, 25) if kl_shampoo_refresh_due(n, KLShampooConfig())] == [10, 20]
    grads = _drifting_grads(10, (6, 4), seed=7)
    st = kl_shampoo_seed(grads[0], kl_shampoo_init_state((6, 4), cfg), cfg)
    changed = []
    for t, g in enumerate(grads[1:], start=1):
        new = kl_shampoo_update_state(g, st, cfg, refresh=kl_shampoo_refresh_due(t, cfg))
        changed.append(not torch.equal(new.q_a, st.q_a) and not torch.equal(new.q_b, st.q_b))
        assert not torch.equal(new.s_a, st.s_a) and not torch.equal(new.d_b, st.d_b)  # every step
        st = new
    assert changed == [False, False, True, False, False, True, False, False, True]


def test_eigh_and_qr_run_in_fp32_for_bf16_inputs(monkeypatch):
    seen: list[torch.dtype] = []
    eigh, qr = torch.linalg.eigh, torch.linalg.qr

    def eigh_spy(x, *args, **kwargs):
        seen.append(x.dtype)
        return eigh(x, *args, **kwargs)

    def qr_spy(x, *args, **kwargs):
        seen.append(x.dtype)
        return qr(x, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigh", eigh_spy)
    monkeypatch.setattr(torch.linalg, "qr", qr_spy)
    grads = _drifting_grads(4, (2, 6, 4), seed=8, dtype=torch.bfloat16)
    for factor_dtype in (torch.bfloat16, torch.float32):
        cfg = KLShampooConfig(factor_dtype=factor_dtype, precondition_frequency=1)
        st = kl_shampoo_seed(grads[0], kl_shampoo_init_state((2, 6, 4), cfg), cfg)
        direction, st = kl_shampoo_step(grads[1], grads[1], st, cfg, refresh=True)
        assert direction.dtype == torch.bfloat16  # the direction keeps the momentum's dtype
        assert all(t.dtype == factor_dtype for t in st)  # state keeps the factor dtype
        assert torch.isfinite(direction.float()).all()
    assert len(seen) == 8 and set(seen) == {torch.float32}  # 2 eigh + 2 qr per config


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (5, 5)])
def test_batched_seed_equals_per_matrix_seed(shape):
    cfg = KLShampooConfig()
    g = torch.randn(3, *shape, generator=_gen(9))
    st = kl_shampoo_seed(g, kl_shampoo_init_state(g.shape, cfg), cfg)
    small = "a" if shape[0] <= shape[1] else "b"  # the full-rank (non-degenerate) side
    for i in range(3):
        st_i = kl_shampoo_seed(g[i], kl_shampoo_init_state(shape, cfg), cfg)
        for name in ("s_a", "s_b", "d_a", "d_b"):
            torch.testing.assert_close(getattr(st, name)[i], getattr(st_i, name))
        # eigenvectors are unique up to sign only where the eigenvalues are distinct
        q, q_i = getattr(st, f"q_{small}")[i], getattr(st_i, f"q_{small}")
        torch.testing.assert_close((q.T @ q_i).abs(), torch.eye(len(q)), atol=1e-4, rtol=0)


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (5, 5)])
def test_batched_steps_equal_per_matrix_loop(shape):
    cfg = KLShampooConfig(precondition_frequency=3, factor_dtype=F64)
    gen = _gen(10)
    singles = []
    for _ in range(3):
        s_a, s_b = _spd(shape[0], gen), _spd(shape[1], gen)
        singles.append(_eig_state(s_a, s_b))  # a generic post-seed state per matrix
    stacked = KLShampooState(*(torch.stack(parts) for parts in zip(*singles)))
    grads = [torch.randn(3, *shape, generator=gen, dtype=F64) for _ in range(9)]
    batched, st = _run(grads, cfg, state=stacked)
    for i in range(3):
        single, st_i = _run([g[i] for g in grads], cfg, state=singles[i])
        for x, y in zip(batched, single):
            torch.testing.assert_close(x[i], y, rtol=1e-9, atol=1e-11)
        for x, y in zip(st, st_i):
            torch.testing.assert_close(x[i], y, rtol=1e-9, atol=1e-11)


def test_identity_side_above_max_precond_dim():
    assert kl_shampoo_side_active(4, KLShampooConfig(max_precond_dim=4))
    assert not kl_shampoo_side_active(5, KLShampooConfig(max_precond_dim=4))
    beta = 0.9
    cfg = KLShampooConfig(beta=beta, max_precond_dim=4, eps=1e-30, factor_dtype=F64)
    gen = _gen(10)
    g0, g1, m = (torch.randn(3, 6, generator=gen, dtype=F64) for _ in range(3))
    st = kl_shampoo_init_state((3, 6), cfg)
    assert st.s_b is None and st.q_b is None and st.d_b is None  # no state on the long side
    st = kl_shampoo_seed(g0, st, cfg)
    assert st.s_b is None
    torch.testing.assert_close(st.s_a, (1 - beta) / 6 * g0 @ g0.T)
    exact = _eig_state(_spd(3, gen), torch.eye(6, dtype=F64))._replace(s_b=None, q_b=None, d_b=None)
    direction, new = kl_shampoo_step(g1, m, exact, cfg, refresh=True)
    torch.testing.assert_close(direction, _dense_inv_sqrt(exact.s_a) @ m, rtol=1e-10, atol=1e-12)
    # with S_b = I the left factor update is plain G Gᵀ / b, and the eigen estimate follows
    torch.testing.assert_close(new.s_a, beta * exact.s_a + (1 - beta) / 6 * g1 @ g1.T)
    est = torch.diagonal(exact.q_a.T @ g1 @ g1.T @ exact.q_a) / 6
    torch.testing.assert_close(new.d_a, beta * exact.d_a + (1 - beta) * est)
    assert new.s_b is None and new.q_b is None

    # both sides above the cap: no state and the momentum passes through unchanged
    tiny = KLShampooConfig(max_precond_dim=1)
    st = kl_shampoo_seed(g0.float(), kl_shampoo_init_state((3, 6), tiny), tiny)
    assert all(t is None for t in st)
    direction, st = kl_shampoo_step(g1.float(), m.float(), st, tiny, refresh=True)
    assert torch.equal(direction, m.float())


@pytest.mark.parametrize("kind", ["random", "low_rank", "rank_one"])
def test_direction_stays_finite_and_bounded_over_20_steps(kind):
    gen = _gen(11)
    a, b = 24, 16
    if kind == "random":
        make = lambda: torch.randn(a, b, generator=gen)  # noqa: E731
    elif kind == "low_rank":
        u, v = torch.randn(a, 2, generator=gen), torch.randn(2, b, generator=gen)
        make = lambda: u @ v + 1e-3 * torch.randn(a, b, generator=gen)  # noqa: E731
    else:
        u, v = torch.randn(a, 1, generator=gen), torch.randn(1, b, generator=gen)
        make = lambda: u @ v * (1 + 0.1 * torch.randn(1, generator=gen))  # noqa: E731
    grads = [make() for _ in range(21)]
    directions, st = _run(grads, KLShampooConfig())
    for d in directions:
        assert torch.isfinite(d).all()
        rms = d.pow(2).mean().sqrt()
        # clamp bounds the gain: |k| <= C_a·C_b = max(10, min(a, 4000))·max(10, min(b, 4000))
        assert rms <= 24 * 16 * grads[0].pow(2).mean().sqrt() * 10
    assert all(torch.isfinite(t).all() for t in st)


def test_compiles_without_graph_breaks_or_per_step_recompiles():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    cfg = KLShampooConfig(precondition_frequency=2)
    step = torch.compile(kl_shampoo_step, backend=counter, fullgraph=True)
    grads = _drifting_grads(8, (2, 6, 4), seed=12)
    st_c = st_e = kl_shampoo_seed(grads[0], kl_shampoo_init_state((2, 6, 4), cfg), cfg)
    for t, g in enumerate(grads[1:], start=1):
        refresh = kl_shampoo_refresh_due(t, cfg)
        d_c, st_c = step(g, g, st_c, cfg, refresh=refresh)
        d_e, st_e = kl_shampoo_step(g, g, st_e, cfg, refresh=refresh)
        torch.testing.assert_close(d_c, d_e)
    assert counter.frame_count <= 2  # refresh True / False
    torch._dynamo.reset()


# ------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"beta": 1.0}, ValueError, r"beta must be in \[0, 1\)"),
        ({"beta": -0.1}, ValueError, r"beta must be in \[0, 1\)"),
        ({"beta": float("nan")}, ValueError, r"beta must be in \[0, 1\)"),
        ({"beta": "0.9"}, TypeError, "beta must be a real number"),
        ({"precondition_frequency": 0}, ValueError, "precondition_frequency must be an int >= 1"),
        ({"precondition_frequency": 2.5}, TypeError, "precondition_frequency must be an int"),
        ({"precondition_frequency": True}, TypeError, "precondition_frequency must be an int"),
        ({"max_precond_dim": 0}, ValueError, "max_precond_dim must be an int >= 1"),
        ({"max_precond_dim": -3}, ValueError, "max_precond_dim must be an int >= 1"),
        ({"eps": 0.0}, ValueError, "eps must be a finite number > 0"),
        ({"eps": -1e-8}, ValueError, "eps must be a finite number > 0"),
        ({"eps": float("inf")}, ValueError, "eps must be a finite number > 0"),
        ({"init_factor": 0.0}, ValueError, "init_factor must be a finite number > 0"),
        ({"max_clamp_value": 0}, ValueError, "max_clamp_value must be an int >= 1"),
        ({"factor_dtype": torch.int32}, ValueError, "factor_dtype must be one of"),
    ],
)
def test_bad_config_raises(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        KLShampooConfig(**kwargs)


def test_bad_inputs_raise():
    cfg = KLShampooConfig()
    st = kl_shampoo_init_state((4, 3), cfg)
    with pytest.raises(ValueError, match=r"grad must have shape \(\.\.\., a, b\)"):
        kl_shampoo_seed(torch.randn(4), st, cfg)
    with pytest.raises(ValueError, match="does not match the state's factor s_a"):
        kl_shampoo_update_state(torch.randn(5, 3), st, cfg, refresh=False)
    with pytest.raises(ValueError, match="momentum of shape"):
        kl_shampoo_precondition(torch.randn(2, 4, 3), st, cfg)
    with pytest.raises(TypeError, match="grad must be a torch.Tensor"):
        kl_shampoo_seed([[1.0]], st, cfg)
    with pytest.raises(ValueError, match="shape must be"):
        kl_shampoo_init_state((4,), cfg)
