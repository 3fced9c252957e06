"""KL-Shampoo as pure functions over batched matrices ``(..., a, b)``.

Reference: Wu Lin, Scott C. Lowe, Felix Dangel, Runa Eschenhagen, Zikun Xu, Roger B. Grosse,
"Understanding and Improving Shampoo and SOAP via Kullback–Leibler Minimization",
arXiv:2509.03378 (ICLR 2026); the authors' code ``yorkerlin/KL-Methods``, ``optim/kl_opt.py``
(class ``KLOpt(using_klsoap=False)``, snapshot a02e622), which this module follows where the
paper's idealised estimator leaves choices open. Nothing here is copied from that code.

The estimator (paper, KL-Shampoo's two-sided Kronecker factors for G ∈ ℝ^{a×b})::

    S_a ← β·S_a + (1−β)/b · G S_b⁻¹ Gᵀ        # left factor, whitened by the RIGHT factor
    S_b ← β·S_b + (1−β)/a · Gᵀ S_a⁻¹ G        # right factor, whitened by the LEFT factor
    direction = S_a^{-1/2} · M · S_b^{-1/2}    # inverse *square* roots; M = the momentum

Plain Shampoo would use ``GGᵀ``/``GᵀG`` and ``^{-1/4}``; the whitening by the opposite factor
is what makes it KL-Shampoo.

What exactly is implemented (the practical algorithm of ``kl_opt.py``)
----------------------------------------------------------------------
State per parameter (plain tensors, batched over leading dims when parameters of the same
shape are stacked): factors ``S_a`` (a×a), ``S_b`` (b×b); eigenbases ``Q_a``, ``Q_b``;
eigenvalue estimates ``d_a`` (a), ``d_b`` (b). A side whose dimension exceeds
``max_precond_dim`` keeps no state at all (its fields are ``None``) and uses the identity:
``S = I``, so ``S⁻¹ = S^{-1/2} = I`` wherever that side appears (the authors' code has no such
cap; HeavyBall's ``max_precond_dim`` does the same thing).

1. **Seed (first step only)**: ``S_a ← β·S_a + (1−β)/b · G Gᵀ`` (and the mirror for ``S_b``),
   starting from zero factors, i.e. the unwhitened estimate because no inverse exists yet;
   ``Q ← eigh(S)`` (fp32, columns flipped to descending eigenvalue order); ``d ← init_factor``
   (0.1), *not* the eigh eigenvalues. The parameter is not updated on this step (the authors'
   ``continue``; they also leave the momentum untouched): :func:`kl_shampoo_seed`.
2. **Every later step, in this order** (:func:`kl_shampoo_step`):

   a. the direction from the *previous* state (the authors never precondition with a factor
      that has seen the current gradient): ``Q_a [(Q_aᵀ M Q_b) ⊙ K] Q_bᵀ`` with
      ``K_ij = k_ij/(1 + k_ij·eps)``, ``k_ij = d_a,i^{-1/2}·d_b,j^{-1/2}``, i.e.
      ``1/(√(d_a,i·d_b,j) + eps)`` — the authors' damping (:func:`kl_shampoo_precondition`);
   b. the KL factor update above, where **the inverse is taken through the current
      eigen-approximation** ``S⁻¹ ≈ Q diag(1/d) Qᵀ`` (with the clamped d of step d below), not
      through an exact inverse of ``S``: ``G S_b⁻¹ Gᵀ = X Xᵀ`` with ``X = G Q_b diag(d_b^{-1/2})``;
   c. the eigenvalue EMA ``d ← β·d + (1−β)·diag_est`` with
      ``diag_est_a,i = mean_j((Q_aᵀ G Q_b)_ij² / d_b,j)`` = ``diag(Q_aᵀ G S_b⁻¹ Gᵀ Q_a)/b``
      and the mirror for ``d_b`` (b and c both use the eigen-approximation from *before* this
      step's update);
   d. clamping: the authors clamp ``d^{-1/2} ≤ C`` with ``C = max(10, min(dim, 4000))`` per side;
      we store ``d`` itself floored at ``1/C²``, which is the same thing
      (``max_clamp_value=None`` turns it off);
   e. every ``precondition_frequency`` (default 10) updates, one power iteration plus QR:
      ``Q ← qr(S·Q).Q`` (fp32). ``d`` is kept across refreshes, as the authors do.

All ``eigh`` and ``qr`` calls run in float32 whatever the input or factor dtype (they are not
implemented for bf16/fp16 and lose accuracy there; float64 factors stay float64), and the
result is cast back to ``factor_dtype``. The factors and the matmuls use ``factor_dtype``
(float32 by default; the authors run everything but QR/eigh in bf16, available here as
``factor_dtype=torch.bfloat16``).

Defaults where sources differ: ``beta=0.95`` (the authors' docstring and HeavyBall; their code's
default falls back to ``betas[1]=0.98``), ``precondition_frequency=10`` (authors; HeavyBall
uses 2), ``max_precond_dim=2048`` (HeavyBall; the authors have no cap), ``eps=1e-8`` and
``init_factor=0.1`` (both). Trace damping in the curvature learning (the authors'
``using_damping``, off by default) is not implemented.

Compile-friendliness: no ``.item()``, no branching on tensor values; which sides are
preconditioned is fixed by the state's structure (tensor or ``None``), and the refresh cadence
is a Python ``bool`` the caller derives from its step counter (:func:`kl_shampoo_refresh_due`).

Scale check (``benchmarks/kl_shampoo_direction_scale.py``, recorded in ``docs/kl_shampoo.md``):
on random, drifting, low-rank and rank-1 gradients (64×48, 384×64, 256×256) over 20 steps the
direction stays finite. Its gain ‖direction‖/‖M‖ is exactly ``1/init_factor`` on the first step
after the seed; for white-noise gradients it then sits at 1.05–1.7 (the KL fixed point is
``d_a·d_b = 1``, direction ≈ momentum); for low-rank and rank-1 gradients the direction is small
(RMS 0.001–0.1, the first eigenvalue EMA overshoots after the seed) and relaxes at rate β
(rank-1 256×256 reaches the fixed-point RMS ``1/√256`` within ~100 steps). Largest entry seen:
11.5; no blow-up along near-null directions.

Example:
    >>> import torch
    >>> cfg = KLShampooConfig()
    >>> g = torch.randn(3, 8, 4)                  # three same-shape 8×4 gradients, stacked
    >>> state = kl_shampoo_seed(g, kl_shampoo_init_state(g.shape, cfg), cfg)
    >>> direction, state = kl_shampoo_step(g, g, state, cfg, refresh=False)
    >>> direction.shape, state.s_a.shape, state.d_b.shape
    (torch.Size([3, 8, 4]), torch.Size([3, 8, 8]), torch.Size([3, 4]))
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import NamedTuple

import torch

__all__ = [
    "KLShampooConfig",
    "kl_shampoo_gated_seed",
    "kl_shampoo_gated_step",
    "KLShampooState",
    "kl_shampoo_init_state",
    "kl_shampoo_precondition",
    "kl_shampoo_refresh_due",
    "kl_shampoo_refresh_eigenbasis",
    "kl_shampoo_seed",
    "kl_shampoo_side_active",
    "kl_shampoo_step",
    "kl_shampoo_update_state",
]

_FACTOR_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_real(value: object, name: str, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number {allowed}, got {type(value).__name__}")
    return float(value)


@dataclass(frozen=True)
class KLShampooConfig:
    """Hyperparameters of the KL-Shampoo preconditioner, validated on construction.

    Args:
        beta: EMA decay of the factors and of the eigenvalue estimates, in [0, 1).
        precondition_frequency: refresh the eigenbases every this many factor updates (>= 1).
        max_precond_dim: a side longer than this uses the identity and keeps no state (>= 1).
        eps: damping in ``1/(√(d_a·d_b) + eps)``, > 0.
        init_factor: eigenvalue estimate right after seeding, > 0.
        max_clamp_value: cap of the clamp ``d^{-1/2} <= max(10, min(dim, max_clamp_value))``;
            ``None`` disables clamping.
        factor_dtype: dtype of the factors, eigenbases, eigenvalues and their matmuls
            (eigh/QR always run in at least float32).

    Example:
        >>> KLShampooConfig(beta=0.98, precondition_frequency=5).max_precond_dim
        2048
        >>> KLShampooConfig(beta=1.0)
        Traceback (most recent call last):
        ...
        ValueError: beta must be in [0, 1), got 1.0
    """

    beta: float = 0.95
    precondition_frequency: int = 10
    max_precond_dim: int = 2048
    eps: float = 1e-8
    init_factor: float = 0.1
    max_clamp_value: int | None = 4000
    factor_dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        beta = _check_real(self.beta, "beta", "in [0, 1)")
        if not (0.0 <= beta < 1.0):
            raise ValueError(f"beta must be in [0, 1), got {self.beta!r}")
        _check_int(self.precondition_frequency, "precondition_frequency", 1)
        _check_int(self.max_precond_dim, "max_precond_dim", 1)
        eps = _check_real(self.eps, "eps", "> 0")
        if not (eps > 0.0 and math.isfinite(eps)):
            raise ValueError(f"eps must be a finite number > 0, got {self.eps!r}")
        init = _check_real(self.init_factor, "init_factor", "> 0")
        if not (init > 0.0 and math.isfinite(init)):
            raise ValueError(f"init_factor must be a finite number > 0, got {self.init_factor!r}")
        if self.max_clamp_value is not None:
            _check_int(self.max_clamp_value, "max_clamp_value", 1)
        if self.factor_dtype not in _FACTOR_DTYPES:
            allowed = ", ".join(str(d) for d in _FACTOR_DTYPES)
            raise ValueError(f"factor_dtype must be one of {allowed}; got {self.factor_dtype!r}")


class KLShampooState(NamedTuple):
    """Per-parameter (or per stacked same-shape batch) KL-Shampoo state; ``None`` = identity side.

    Shapes for gradients ``(..., a, b)``: ``s_a (..., a, a)``, ``s_b (..., b, b)``,
    ``q_a (..., a, a)``, ``q_b (..., b, b)``, ``d_a (..., a)``, ``d_b (..., b)``.
    ``state._asdict()`` gives the plain-tensor mapping to keep in an optimizer's state.
    """

    s_a: torch.Tensor | None
    s_b: torch.Tensor | None
    q_a: torch.Tensor | None
    q_b: torch.Tensor | None
    d_a: torch.Tensor | None
    d_b: torch.Tensor | None


def kl_shampoo_side_active(dim: int, config: KLShampooConfig) -> bool:
    """Whether a side of length ``dim`` gets a factor (``dim <= max_precond_dim``).

    Example:
        >>> kl_shampoo_side_active(4096, KLShampooConfig(max_precond_dim=2048))
        False
    """
    return dim <= config.max_precond_dim


def kl_shampoo_refresh_due(update_count: int, config: KLShampooConfig) -> bool:
    """Whether the eigenbases are refreshed after the ``update_count``-th factor update.

    ``update_count`` counts factor updates after the seed, this one included (1 on the
    optimizer's second step). As in the authors' code the refresh happens when it is a positive
    multiple of ``precondition_frequency``: optimizer steps 11, 21, ... with the default 10.

    Example:
        >>> [n for n in range(1, 25) if kl_shampoo_refresh_due(n, KLShampooConfig())]
        [10, 20]
    """
    return update_count > 0 and update_count % config.precondition_frequency == 0


def kl_shampoo_init_state(
    shape: torch.Size | tuple[int, ...],
    config: KLShampooConfig,
    *,
    device: torch.device | str | None = None,
) -> KLShampooState:
    """Empty state for gradients of ``shape = (..., a, b)``: zero factors, identity bases,
    ``d = init_factor``; sides longer than ``max_precond_dim`` get ``None``.

    Example:
        >>> st = kl_shampoo_init_state((5, 3000), KLShampooConfig())
        >>> st.s_a.shape, st.s_b
        (torch.Size([5, 5]), None)
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ValueError(f"shape must be (..., a, b) with positive sizes, got {shape}")
    *batch, a, b = shape
    dtype = config.factor_dtype

    def side(n: int) -> tuple[torch.Tensor | None, ...]:
        if not kl_shampoo_side_active(n, config):
            return None, None, None
        s = torch.zeros(*batch, n, n, dtype=dtype, device=device)
        q = torch.eye(n, dtype=dtype, device=device).expand(*batch, n, n).clone()
        d = torch.full((*batch, n), config.init_factor, dtype=dtype, device=device)
        return s, q, d

    s_a, q_a, d_a = side(a)
    s_b, q_b, d_b = side(b)
    return KLShampooState(s_a=s_a, s_b=s_b, q_a=q_a, q_b=q_b, d_a=d_a, d_b=d_b)


def _check_grad(grad: torch.Tensor, state: KLShampooState, name: str = "grad") -> None:
    if not isinstance(grad, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(grad).__name__}")
    if grad.ndim < 2:
        raise ValueError(f"{name} must have shape (..., a, b), got {tuple(grad.shape)}")
    a, b = grad.shape[-2], grad.shape[-1]
    for s, n, side in ((state.s_a, a, "a"), (state.s_b, b, "b")):
        if s is not None and tuple(s.shape) != (*grad.shape[:-2], n, n):
            raise ValueError(
                f"{name} of shape {tuple(grad.shape)} does not match the state's factor "
                f"s_{side} of shape {tuple(s.shape)}"
            )


def _linalg_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for bf16/fp16/fp32 factors, float64 for float64 ones: never below fp32."""
    return torch.promote_types(dtype, torch.float32)


def _eigh_fp32_descending(s: torch.Tensor) -> torch.Tensor:
    """Eigenvectors of symmetric ``s`` in (at least) float32, descending eigenvalue order."""
    _, vecs = torch.linalg.eigh(s.to(_linalg_dtype(s.dtype)))
    return vecs.flip(-1).to(s.dtype)


def _clamp_floor(dim: int, config: KLShampooConfig) -> float:
    """Smallest allowed eigenvalue: the authors clamp ``d^{-1/2}`` at max(10, min(dim, cap))."""
    if config.max_clamp_value is None:
        return 0.0
    cap = max(10, min(dim, config.max_clamp_value))
    return 1.0 / (cap * cap)


def _inv_sqrt(d: torch.Tensor) -> torch.Tensor:
    # d = 0 can only happen with clamping off and beta = 0; the authors map the resulting
    # inf to 0 (nan_to_num), i.e. that direction is not moved. Same here, without a branch.
    return torch.where(d > 0, d.clamp_min(torch.finfo(d.dtype).tiny).rsqrt(), 0.0)


def kl_shampoo_seed(
    grad: torch.Tensor, state: KLShampooState, config: KLShampooConfig
) -> KLShampooState:
    """First step: accumulate ``S_a += (1−β)/b·GGᵀ``, ``S_b += (1−β)/a·GᵀG`` onto the (zero)
    factors, take the eigenbases by fp32 ``eigh`` and set ``d = init_factor``.

    The caller must not update the parameter on this step (authors' code).

    Example:
        >>> cfg = KLShampooConfig(beta=0.5)
        >>> st = kl_shampoo_seed(torch.ones(2, 2), kl_shampoo_init_state((2, 2), cfg), cfg)
        >>> st.s_a
        tensor([[0.5000, 0.5000],
                [0.5000, 0.5000]])
    """
    _check_grad(grad, state)
    beta = config.beta
    g = grad.to(config.factor_dtype)
    a, b = g.shape[-2], g.shape[-1]
    s_a = q_a = d_a = s_b = q_b = d_b = None
    if state.s_a is not None:
        s_a = torch.add(state.s_a * beta, g @ g.mT, alpha=(1.0 - beta) / b)
        q_a = _eigh_fp32_descending(s_a)
        d_a = torch.full_like(state.d_a, config.init_factor)
    if state.s_b is not None:
        s_b = torch.add(state.s_b * beta, g.mT @ g, alpha=(1.0 - beta) / a)
        q_b = _eigh_fp32_descending(s_b)
        d_b = torch.full_like(state.d_b, config.init_factor)
    return KLShampooState(s_a=s_a, s_b=s_b, q_a=q_a, q_b=q_b, d_a=d_a, d_b=d_b)


def kl_shampoo_update_state(
    grad: torch.Tensor,
    state: KLShampooState,
    config: KLShampooConfig,
    *,
    refresh: bool,
) -> KLShampooState:
    """One post-seed state update: KL factor update, eigenvalue EMA (+ clamp) and, when
    ``refresh`` is True, the eigenbasis refresh. Steps b–e of the module docstring.

    Both the factor update and the eigenvalue estimate use the eigen-approximation
    ``S⁻¹ ≈ Q diag(1/d) Qᵀ`` from *before* this call.

    Example:
        >>> cfg = KLShampooConfig()
        >>> g = torch.randn(6, 4)
        >>> st = kl_shampoo_seed(g, kl_shampoo_init_state(g.shape, cfg), cfg)
        >>> kl_shampoo_update_state(g, st, cfg, refresh=True).q_a.shape
        torch.Size([6, 6])
    """
    _check_grad(grad, state)
    beta = config.beta
    g = grad.to(config.factor_dtype)
    a, b = g.shape[-2], g.shape[-1]
    left, right = state.s_a is not None, state.s_b is not None

    # Shared intermediates. r_x = d_x^{-1/2}; an identity side has r = 1 and Q = I.
    r_a = _inv_sqrt(state.d_a) if left else None
    r_b = _inv_sqrt(state.d_b) if right else None
    g_qb = g @ state.q_b if right else g  # G Q_b                      (a×b)
    qa_g = state.q_a.mT @ g if left else g  # Q_aᵀ G                   (a×b)
    # Q_aᵀ G Q_b (eigenbasis coordinates): multiply on the short side (ab² instead of a²b for a
    # tall G), reusing whichever one-sided product is already there.
    if left and right:
        p = qa_g @ state.q_b if a >= b else state.q_a.mT @ g_qb
    else:
        p = qa_g if left else g_qb

    s_a = s_b = d_a = d_b = None
    p2 = p.square()
    if left:
        x = g_qb * r_b.unsqueeze(-2) if right else g  # G Q_b diag(d_b^{-1/2})
        s_a = torch.add(state.s_a * beta, x @ x.mT, alpha=(1.0 - beta) / b)  # G S_b⁻¹ Gᵀ / b
        diag_a = (p2 * r_b.square().unsqueeze(-2) if right else p2).mean(dim=-1)
        d_a = torch.lerp(state.d_a, diag_a, 1.0 - beta).clamp_min(_clamp_floor(a, config))
    if right:
        y = qa_g * r_a.unsqueeze(-1) if left else g  # diag(d_a^{-1/2}) Q_aᵀ G
        s_b = torch.add(state.s_b * beta, y.mT @ y, alpha=(1.0 - beta) / a)  # Gᵀ S_a⁻¹ G / a
        diag_b = (p2 * r_a.square().unsqueeze(-1) if left else p2).mean(dim=-2)
        d_b = torch.lerp(state.d_b, diag_b, 1.0 - beta).clamp_min(_clamp_floor(b, config))

    new = KLShampooState(s_a=s_a, s_b=s_b, q_a=state.q_a, q_b=state.q_b, d_a=d_a, d_b=d_b)
    return kl_shampoo_refresh_eigenbasis(new) if refresh else new


def kl_shampoo_refresh_eigenbasis(state: KLShampooState) -> KLShampooState:
    """One power iteration plus QR per factor, in float32: ``Q ← qr(S·Q).Q``.

    The eigenvalue estimates are kept (authors' code).

    Example:
        >>> cfg = KLShampooConfig()
        >>> st = kl_shampoo_init_state((3, 3), cfg)._replace(s_a=torch.diag(torch.tensor([3., 2., 1.])))
        >>> kl_shampoo_refresh_eigenbasis(st).q_a.abs()
        tensor([[1., 0., 0.],
                [0., 1., 0.],
                [0., 0., 1.]])
    """

    def refresh(s: torch.Tensor | None, q: torch.Tensor | None) -> torch.Tensor | None:
        if s is None:
            return None
        work = _linalg_dtype(s.dtype)
        basis, _ = torch.linalg.qr(s.to(work) @ q.to(work))
        return basis.to(q.dtype)

    return state._replace(q_a=refresh(state.s_a, state.q_a), q_b=refresh(state.s_b, state.q_b))


def kl_shampoo_precondition(
    momentum: torch.Tensor, state: KLShampooState, config: KLShampooConfig
) -> torch.Tensor:
    """The direction ``S_a^{-1/2} M S_b^{-1/2}`` through the eigen-approximation, with the
    authors' damping: ``Q_a [(Q_aᵀ M Q_b) ⊙ 1/(√(d_a d_b) + eps)] Q_bᵀ``.

    Returns a tensor of ``momentum``'s shape and dtype.

    Example:
        >>> cfg = KLShampooConfig(init_factor=0.25)
        >>> st = kl_shampoo_init_state((2, 3), cfg)  # identity bases, d = 0.25 on both sides
        >>> kl_shampoo_precondition(torch.ones(2, 3), st, cfg)  # 1/(√(0.25·0.25)) = 4
        tensor([[4., 4., 4.],
                [4., 4., 4.]])
    """
    _check_grad(momentum, state, name="momentum")
    m = momentum.to(config.factor_dtype)
    left, right = state.s_a is not None, state.s_b is not None
    if left:
        m = state.q_a.mT @ m
    if right:
        m = m @ state.q_b
    # k = d_a^{-1/2} d_b^{-1/2} (1 on an identity side); k/(1 + k·eps) as in kl_opt.py.
    k = None
    if left:
        k = _inv_sqrt(state.d_a).unsqueeze(-1)
    if right:
        r_b = _inv_sqrt(state.d_b).unsqueeze(-2)
        k = r_b if k is None else k * r_b
    if k is not None:
        m = m * (k / (1.0 + k * config.eps))
    if left:
        m = state.q_a @ m
    if right:
        m = m @ state.q_b.mT
    return m.to(momentum.dtype)


def kl_shampoo_step(
    grad: torch.Tensor,
    momentum: torch.Tensor,
    state: KLShampooState,
    config: KLShampooConfig,
    *,
    refresh: bool,
) -> tuple[torch.Tensor, KLShampooState]:
    """A post-seed step in the authors' order: precondition ``momentum`` with the current
    state, then update the state with ``grad`` (and refresh the bases if ``refresh``).

    Returns ``(direction, new_state)``. In FusionOpt the direction then goes to Newton–Schulz.

    Example:
        >>> cfg = KLShampooConfig()
        >>> g = torch.randn(4, 6)
        >>> st = kl_shampoo_seed(g, kl_shampoo_init_state(g.shape, cfg), cfg)
        >>> direction, st = kl_shampoo_step(g, g, st, cfg, refresh=kl_shampoo_refresh_due(1, cfg))
        >>> bool(direction.isfinite().all())
        True
    """
    direction = kl_shampoo_precondition(momentum, state, config)
    return direction, kl_shampoo_update_state(grad, state, config, refresh=refresh)


def _keep_where_skipped(gate: torch.Tensor, new: KLShampooState, old: KLShampooState) -> KLShampooState:
    keep = gate <= 0
    return KLShampooState(
        *(None if n is None else torch.where(keep, o, n) for n, o in zip(new, old))
    )


def kl_shampoo_gated_seed(
    grad: torch.Tensor, state: KLShampooState, config: KLShampooConfig, gate: torch.Tensor
) -> KLShampooState:
    """:func:`kl_shampoo_seed`, returning the old ``state`` where the 0-d ``gate`` is 0.

    For optimizers that skip non-finite steps without a host synchronisation: a skipped seed
    leaves the initial state (zero factors, identity bases, ``d = init_factor``), from which the
    next :func:`kl_shampoo_gated_step` starts like an identity-seeded KL-Shampoo.

    Example:
        >>> cfg = KLShampooConfig()
        >>> st0 = kl_shampoo_init_state((3, 2), cfg)
        >>> kl_shampoo_gated_seed(torch.ones(3, 2), st0, cfg, torch.zeros(())).s_a.abs().sum()
        tensor(0.)
    """
    return _keep_where_skipped(gate, kl_shampoo_seed(grad, state, config), state)


def kl_shampoo_gated_step(
    grad: torch.Tensor,
    momentum: torch.Tensor,
    state: KLShampooState,
    config: KLShampooConfig,
    gate: torch.Tensor,
    *,
    refresh: bool,
) -> tuple[torch.Tensor, KLShampooState]:
    """:func:`kl_shampoo_step` whose state update is undone where the 0-d ``gate`` is 0.

    The direction is always computed (the caller multiplies the parameter update by the gate).

    Example:
        >>> cfg = KLShampooConfig()
        >>> g = torch.randn(4, 6)
        >>> st = kl_shampoo_seed(g, kl_shampoo_init_state(g.shape, cfg), cfg)
        >>> _, new = kl_shampoo_gated_step(g, g, st, cfg, torch.zeros(()), refresh=True)
        >>> all(torch.equal(x, y) for x, y in zip(new, st))
        True
    """
    direction, new = kl_shampoo_step(grad, momentum, state, config, refresh=refresh)
    return direction, _keep_where_skipped(gate, new, state)
