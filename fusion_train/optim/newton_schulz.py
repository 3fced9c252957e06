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
    (arXiv 2505.16932), 5 steps, safety factor 2e-2 and cushion 2, with the input divided by
    ``1.02·‖G‖_F`` (as microsoft/dion does).

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

__all__ = [
    "COEFFICIENTS",
    "soften",
    "HOT_DTYPES",
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

HOT_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp16_safe": torch.float16,
    "fp32": torch.float32,
}


def resolve_hot_dtype(hot_dtype: str) -> torch.dtype:
    """Map a ``hot_dtype`` name to the torch dtype the iteration runs in (raises on unknown names)."""
    if hot_dtype not in HOT_DTYPES:
        raise ValueError(f"hot_dtype must be one of {sorted(HOT_DTYPES)}, got {hot_dtype!r}")
    return HOT_DTYPES[hot_dtype]


def validate_softening(softening: float) -> float:
    """Return ``softening`` as a float after checking it lies in [0, 1] (NaN is rejected)."""
    s = float(softening)
    if math.isnan(s) or not 0.0 <= s <= 1.0:
        raise ValueError(f"softening must be a number in [0, 1], got {softening!r}")
    return s


def _coefficient_schedule(coefficients: str, steps: int) -> tuple[tuple[float, float, float], ...]:
    if coefficients not in COEFFICIENTS:
        raise ValueError(
            f"coefficients must be one of {sorted(COEFFICIENTS)}, got {coefficients!r}"
        )
    table = COEFFICIENTS[coefficients]
    # Past the end of a per-step table the last (most conservative) step is repeated.
    return tuple(table[min(i, len(table) - 1)] for i in range(steps))


def soften(polar: torch.Tensor, normalised: torch.Tensor, softening: float) -> torch.Tensor:
    """Soft-Muon blend ``(1 − s)·polar + s·normalised`` (``normalised`` = X/‖X‖_F)."""
    s = validate_softening(softening)
    return polar if s == 0.0 else torch.lerp(polar, normalised, s)


def orthogonalize(
    G: torch.Tensor,
    steps: int = 5,
    coefficients: str = "jordan",
    hot_dtype: str = "bf16",
    softening: float = 0.0,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Approximate the polar factor of ``G`` (shape ``(..., m, n)``) by quintic Newton–Schulz.

    Every leading index is an independent matrix, so same-shape matrices are orthogonalised in one
    batched call. Tall matrices are transposed internally so the Gram matrix is ``min(m,n)²``.
    Returns a float32 tensor of ``G``'s shape.

    Example:
        >>> G = torch.randn(4, 256, 1024)
        >>> O = orthogonalize(G, hot_dtype="fp32")
        >>> S = torch.linalg.svdvals(O)  # all singular values close to 1
        >>> bool(((S > 0.6) & (S < 1.2)).all())
        True
    """
    if G.ndim < 2:
        raise ValueError(f"G must have at least 2 dimensions (..., m, n), got shape {tuple(G.shape)}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    dtype = resolve_hot_dtype(hot_dtype)
    s = validate_softening(softening)
    schedule = _coefficient_schedule(coefficients, steps)

    X32 = G.to(torch.float32)
    tall = X32.size(-2) > X32.size(-1)
    if tall:
        X32 = X32.mT
    norm = torch.linalg.vector_norm(X32, dim=(-2, -1), keepdim=True)
    X32 = X32 / (norm * _NORM_SAFETY[coefficients] + eps)
    lead = X32.shape[:-2]
    X = X32.to(dtype).reshape(-1, *X32.shape[-2:])
    for a, b, c in schedule:
        A = torch.bmm(X, X.mT)
        # Fused multiply-adds round once per product (accumulating in fp32) instead of after every
        # scale and sum: in bf16 this halves the distance to the fp32 result (tests/optim/test_parity.py).
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        X = torch.baddbmm(X, B, X, beta=a)
    out = X.to(torch.float32).reshape(*lead, *X.shape[-2:])
    # X32 is X/(‖X‖_F·safety): for the Soft-Muon end point we want exactly X/‖X‖_F.
    out = soften(out, X32 * _NORM_SAFETY[coefficients], s)
    return out.mT if tall else out
