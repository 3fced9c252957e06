"""Quintic Newton–Schulz orthogonalisation (the "ns5" component), batched and dtype-aware.

For a matrix ``G`` with SVD ``U S Vᵀ`` the iteration approximates the polar factor ``U Vᵀ``:

    X₀ = G / ‖G‖_F                                   (norm computed in fp32, then cast)
    A  = X Xᵀ ;  B = b·A + c·A² ;  X ← a·X + B·X     (5 steps, on the smaller Gram side;
                                                      each line one fused baddbmm)

Coefficients
    ``"jordan"``: Keller Jordan's (a, b, c) = (3.4445, −4.7750, 2.0315), chosen to maximise the slope at 0;
    the result is ``U S' Vᵀ`` with ``S'`` roughly in [0.7, 1.1] rather than exactly 1
    (KellerJordan/Muon ``zeropower_via_newtonschulz5``; the same in ``torch.optim.Muon``).
    ``"polar_express"``: the per-step optimal coefficients of Amsel et al., "The Polar Express"
    (arXiv 2505.16932). For ``steps <= 5`` the 5-step set computed for exactly 5 iterations
    (safety factor 2e-2, cushion 2; input divided by ``1.02·‖G‖_F``, as microsoft/dion does).
    For ``steps > 5`` the paper's full list (Algorithm 1: eight polynomials, every one but the
    last divided by the safety factor 1.01 as ``(a/1.01, b/1.01³, c/1.01⁵)``, input divided by
    ``1.01·‖G‖_F``); past its end the last polynomial ``(15x − 10x³ + 3x⁵)/8`` repeats, whose
    fixed point is exactly 1. (Repeating the 5-step set's last polynomial instead converges to
    ≈1.037, not 1: its fixed point is not at 1.)
    An explicit tuple ``(a, b, c)`` (used at every step, like ``torch.optim.Muon``'s
    ``ns_coefficients``) or a sequence of such triples (one per step, the last repeated) is also
    accepted; the input is then divided by ``‖G‖_F``.

Backends
    ``"standard"``: the iteration above on the rectangular X.
    ``"gram"``: Gram Newton–Schulz (Chen, Amsel, Dao et al., "Gram Newton-Schulz: a fast,
    hardware-aware Newton-Schulz algorithm for Muon", tridao.me/blog/2026/gram-newton-schulz,
    2026; also DeepSpeed PR #7953 ``ns_method="gram"``). The same polynomials, iterated on the
    small symmetric Gram matrix ``R = X Xᵀ`` (n×n, n = min side) instead of X (n×m)::

        P_k = a·I + b·R_k + c·R_k² ;  Q_{k+1} = P_k Q_k ;  R_{k+1} = P_k R_k P_k ;  X = Q X₀

    (exact algebra, because P_k is a polynomial in R_k and commutes with it). The rectangular
    products happen only at the start, at a restart and at the end; the restart after iteration 2
    (``X ← Q X₀``, ``R ← X Xᵀ``, ``Q ← I``) is the authors' fix for the spurious negative
    eigenvalues and eigenvector drift of the un-restarted form in half precision. Cost per matrix
    with 5 steps: ``4·n²m + 20·n³`` multiply-adds vs ``10·n²m + 5·n³`` for the standard form, so it
    pays off for aspect ratios m/n above about 2.5; square (and nearly square, m < 2.5·n) matrices
    use the standard form.

Precision
    The Frobenius norm and the division are done in fp32 *before* casting to the hot dtype. The
    failure the earlier public FusionOpt attributed to fp16 polynomial overflow is really the norm:
    ``‖G‖_F`` computed in fp16 overflows to ``inf`` once it exceeds 65504 and ``G/inf`` is an all-zero
    (silent no-op) update. After normalisation every iterate has spectral norm ≲ 1.2, so no
    polynomial intermediate can overflow in fp16 (see ``docs/fp16_newton_schulz.md`` for the
    measurements). ``hot_dtype="fp16_safe"`` (the earlier FusionOpt's per-matmul rescaling variant)
    is accepted for compatibility and runs exactly the ``"fp16"`` arithmetic: with the norm in fp32
    the hazard it was meant to guard against cannot occur, so there is nothing left for it to add.

Soft-Muon (microsoft/dion PR #92, Pethick et al. arXiv 2606.15268)
    ``softening = s ∈ [0, 1]`` returns ``lerp(NS(X), X/‖X‖_F, s)``. For an exact polar factor the
    singular values map to ``(1 − s) + s·σᵢ/‖X‖_F`` and the singular vectors are kept.
"""

from __future__ import annotations

import math

import torch

from .hot_dtype import auto_hot_dtype

__all__ = [
    "BACKENDS",
    "COEFFICIENTS",
    "POLAR_EXPRESS_PAPER",
    "soften",
    "HOT_DTYPES",
    "HOT_DTYPE_NAMES",
    "coefficient_schedule",
    "validate_coefficients",
    "validate_hot_dtype",
    "orthogonalize",
    "resolve_hot_dtype",
    "validate_softening",
]

# (a, b, c) per step; a single tuple is reused for every step.
_JORDAN = ((3.4445, -4.7750, 2.0315),)
_POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
COEFFICIENTS: dict[str, tuple[tuple[float, float, float], ...]] = {
    "jordan": _JORDAN,
    "polar_express": _POLAR_EXPRESS,
}
# Polar Express coefficients were derived for inputs scaled slightly below unit norm.
_NORM_SAFETY = {"jordan": 1.0, "polar_express": 1.02}

# Amsel et al., arXiv 2505.16932, Algorithm 1 (degree 5): the unsafe list, then the safety factor
# 1.01 applied to every polynomial but the last, whose fixed point must stay exactly at 1.
_PE_RAW = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
_PE_SAFETY = 1.01
#: The Polar Express paper's full coefficient list with its safety factor (used for steps > 5).
POLAR_EXPRESS_PAPER: tuple[tuple[float, float, float], ...] = tuple(
    (a / _PE_SAFETY, b / _PE_SAFETY**3, c / _PE_SAFETY**5) for a, b, c in _PE_RAW[:-1]
) + (_PE_RAW[-1],)

BACKENDS = ("standard", "gram")
# Gram NS saves work only for clearly rectangular matrices (see the module docstring's cost).
_GRAM_MIN_ASPECT = 2.5
_GRAM_RESTART = 2

HOT_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp16_safe": torch.float16,
    "fp32": torch.float32,
}


HOT_DTYPE_NAMES = ("auto", *HOT_DTYPES)


def validate_hot_dtype(hot_dtype: object) -> str:
    """Check a ``hot_dtype`` name (``"auto"`` or a key of :data:`HOT_DTYPES`) and return it."""
    if hot_dtype not in HOT_DTYPE_NAMES:
        raise ValueError(f"hot_dtype must be one of {list(HOT_DTYPE_NAMES)}, got {hot_dtype!r}")
    return hot_dtype  # type: ignore[return-value]


def resolve_hot_dtype(hot_dtype: str, device: torch.device | str | None = None) -> torch.dtype:
    """Map a ``hot_dtype`` name to the torch dtype the iteration runs in (raises on unknown names).

    ``"auto"`` is resolved for ``device`` (CPU when None) by :func:`auto_hot_dtype`.
    """
    validate_hot_dtype(hot_dtype)
    if hot_dtype == "auto":
        hot_dtype = auto_hot_dtype(device if device is not None else "cpu")
    return HOT_DTYPES[hot_dtype]


def validate_softening(softening: float) -> float:
    """Return ``softening`` as a float after checking it lies in [0, 1] (NaN is rejected)."""
    s = float(softening)
    if math.isnan(s) or not 0.0 <= s <= 1.0:
        raise ValueError(f"softening must be a number in [0, 1], got {softening!r}")
    return s


Coefficients = str | tuple[float, float, float] | tuple[tuple[float, float, float], ...]


def validate_coefficients(coefficients: object) -> str | tuple[tuple[float, float, float], ...]:
    """Return a named set's name, or explicit coefficients as a tuple of finite ``(a, b, c)`` triples.

    Accepts a name in :data:`COEFFICIENTS`, one triple ``(a, b, c)`` (every step, as
    ``torch.optim.Muon``'s ``ns_coefficients``) or a non-empty sequence of triples (one per step).

    Example:
        >>> validate_coefficients((3.4445, -4.7750, 2.0315))
        ((3.4445, -4.775, 2.0315),)
    """
    if isinstance(coefficients, str):
        if coefficients not in COEFFICIENTS:
            raise ValueError(
                f"ns_coefficients must be one of {sorted(COEFFICIENTS)} or a tuple (a, b, c) or a "
                f"sequence of such tuples, got {coefficients!r}"
            )
        return coefficients
    try:
        seq = tuple(coefficients)  # type: ignore[arg-type]
        if len(seq) == 3 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in seq):
            seq = (seq,)
        triples = tuple(tuple(float(v) for v in t) for t in seq)
    except (TypeError, ValueError):
        triples = ()
    if not triples or any(len(t) != 3 or not all(math.isfinite(v) for v in t) for t in triples):
        raise ValueError(
            "ns_coefficients must be one of "
            f"{sorted(COEFFICIENTS)}, a tuple (a, b, c) of finite numbers or a non-empty sequence of "
            f"such tuples, got {coefficients!r}"
        )
    return triples


def coefficient_schedule(coefficients: Coefficients, steps: int) -> tuple[tuple[tuple[float, float, float], ...], float]:
    """The per-step ``(a, b, c)`` list for ``steps`` iterations and the input norm safety factor.

    Example:
        >>> sched, safety = coefficient_schedule("polar_express", 8)
        >>> sched[-1], safety
        ((1.875, -1.25, 0.375), 1.01)
    """
    coefficients = validate_coefficients(coefficients)
    if isinstance(coefficients, str):
        if coefficients == "polar_express" and steps > len(_POLAR_EXPRESS):
            table, safety = POLAR_EXPRESS_PAPER, _PE_SAFETY
        else:
            table, safety = COEFFICIENTS[coefficients], _NORM_SAFETY[coefficients]
    else:
        table, safety = coefficients, 1.0
    # Past the end of a per-step table the last step is repeated.
    return tuple(table[min(i, len(table) - 1)] for i in range(steps)), safety


def _coefficient_schedule(coefficients: Coefficients, steps: int) -> tuple[tuple[float, float, float], ...]:
    return coefficient_schedule(coefficients, steps)[0]


def soften(polar: torch.Tensor, normalised: torch.Tensor, softening: float) -> torch.Tensor:
    """Soft-Muon blend ``(1 − s)·polar + s·normalised`` (``normalised`` = X/‖X‖_F)."""
    s = validate_softening(softening)
    return polar if s == 0.0 else torch.lerp(polar, normalised, s)


def _gram_worthwhile(n: int, m: int) -> bool:
    return m >= _GRAM_MIN_ASPECT * n


def _gram(X: torch.Tensor, tall: bool) -> torch.Tensor:
    """The small Gram matrix: ``XᵀX`` for a tall X, ``XXᵀ`` for a wide one."""
    return torch.bmm(X.mT, X) if tall else torch.bmm(X, X.mT)


def _standard_iteration(X: torch.Tensor, schedule) -> torch.Tensor:
    # A tall X (m > n) is iterated as X ← a·X + X·B with A = XᵀX: the transpose of the wide form,
    # so no operand is ever transposed in memory (a strided copy costs as much as a matmul on a CPU).
    tall = X.shape[-2] > X.shape[-1]
    for a, b, c in schedule:
        A = _gram(X, tall)
        # Fused multiply-adds round once per product (accumulating in fp32) instead of after every
        # scale and sum: in bf16 this halves the distance to the fp32 result (tests/optim/test_parity.py).
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        X = torch.baddbmm(X, X, B, beta=a) if tall else torch.baddbmm(X, B, X, beta=a)
    return X


def _gram_iteration(X0: torch.Tensor, schedule) -> torch.Tensor:
    """Gram Newton–Schulz on ``X0`` (batch, rows, cols), restarted after iteration 2.

    Written for a wide X0 (``X = Q·X0``); a tall X0 uses the transposed algebra ``X = X0·Q``
    (P and R are symmetric), again without transposing anything in memory.
    """
    tall = X0.shape[-2] > X0.shape[-1]
    n = min(X0.shape[-2:])
    eye = torch.eye(n, dtype=X0.dtype, device=X0.device).expand(X0.shape[0], n, n)

    def apply(Q: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        return torch.bmm(X, Q) if tall else torch.bmm(Q, X)

    X, R, Q = X0, _gram(X0, tall), None
    for i, (a, b, c) in enumerate(schedule):
        if i == _GRAM_RESTART:  # form X once and start the Gram recursion afresh
            X = apply(Q, X0) if Q is not None else X
            X0, R, Q = X, _gram(X, tall), None
        # P = a·I + b·R + c·R² (symmetric, commutes with R)
        P = torch.baddbmm(torch.baddbmm(eye, R, R, beta=a, alpha=c), eye, R, beta=1.0, alpha=b)
        Q = P if Q is None else (torch.bmm(Q, P) if tall else torch.bmm(P, Q))
        R = torch.bmm(torch.bmm(P, R), P)
    return apply(Q, X0) if Q is not None else X0


def orthogonalize(
    G: torch.Tensor,
    steps: int = 5,
    coefficients: Coefficients = "jordan",
    hot_dtype: str = "auto",
    softening: float = 0.0,
    eps: float = 1e-7,
    backend: str = "standard",
) -> torch.Tensor:
    """Approximate the polar factor of ``G`` (shape ``(..., m, n)``) by quintic Newton–Schulz.

    Every leading index is an independent matrix, so same-shape matrices are orthogonalised in one
    batched call. Tall matrices iterate on ``XᵀX`` (the transposed algebra), so the Gram matrix is
    always ``min(m,n)²`` and nothing is transposed in memory.
    ``hot_dtype="auto"`` picks bf16 or fp32 for ``G``'s device (hot_dtype.py). ``backend="gram"``
    runs Gram Newton–Schulz on matrices with aspect ratio ≥ 2.5 (module docstring).
    Returns a float32 tensor of ``G``'s shape.

    Example:
        >>> G = torch.randn(4, 256, 1024)
        >>> O = orthogonalize(G, hot_dtype="fp32")
        >>> S = torch.linalg.svdvals(O)  # all singular values close to 1
        >>> bool(((S > 0.6) & (S < 1.2)).all())
        True
        >>> torch.allclose(orthogonalize(G, hot_dtype="fp32", backend="gram"), O, atol=1e-4)
        True
    """
    if G.ndim < 2:
        raise ValueError(f"G must have at least 2 dimensions (..., m, n), got shape {tuple(G.shape)}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    dtype = resolve_hot_dtype(hot_dtype, G.device)
    s = validate_softening(softening)
    schedule, safety = coefficient_schedule(coefficients, steps)

    X32 = G.to(torch.float32)
    # ‖X‖_F of a matrix whose entries are finite but large (≳1e19) overflows fp32 even when every
    # entry is representable; dividing by the largest |entry| first keeps the norm finite. The
    # result is X/(‖X‖_F·safety + eps) as before, up to rounding.
    amax = X32.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    Xs = X32 / amax
    norm = torch.linalg.vector_norm(Xs, dim=(-2, -1), keepdim=True)
    X32 = Xs / (norm * safety + eps / amax)
    lead = X32.shape[:-2]
    X = X32.to(dtype).reshape(-1, *X32.shape[-2:])
    if backend == "gram" and _gram_worthwhile(min(X.shape[-2:]), max(X.shape[-2:])):
        X = _gram_iteration(X, schedule)
    else:
        X = _standard_iteration(X, schedule)
    out = X.to(torch.float32).reshape(*lead, *X.shape[-2:])
    if s:  # X32 is X/(‖X‖_F·safety): for the Soft-Muon end point we want exactly X/‖X‖_F.
        out = soften(out, X32 * safety, s)
    return out
