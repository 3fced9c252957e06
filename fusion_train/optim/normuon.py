"""NorMuon row normalisation of an orthogonalised update (the "normuon" component).

NorMuon (Li, Liu, Liang, Chen, Zhao, arXiv 2510.05491, Algorithm 1), for an orthogonalised
update ``O ∈ R^{m×n}`` (rows = output neurons):

    v  ← β₂·v + (1−β₂)·mean_cols(O ⊙ O)            (one second moment per row, v₀ = 0)
    Ô  = O / (√v + ε)                               (row broadcast)

then one of the two published rescalings (they disagree; zichongli5/NorMuon issue #6):

    ``"match_rms"`` (paper, our default):   Ô ← Ô · 0.2·√(mn) / ‖Ô‖_F
        the update has RMS 0.2, the RMS of a typical AdamW update, so an AdamW learning rate
        transfers; no further shape-dependent learning-rate factor is applied.
    ``"preserve_norm"`` (official code):    Ô ← Ô · ‖O‖_F / ‖Ô‖_F
        keeps Muon's norm; the caller applies its usual shape factor to the learning rate.

``ε`` sits outside the root as in both sources (and ``‖Ô‖_F + ε`` in the rescale, as in
pytorch_optimizer's NorMuon, our parity oracle). No bias correction on v: Algorithm 1 has none and
the rescale removes the global scale anyway.
"""

from __future__ import annotations

import math

import torch

__all__ = ["NORMUON_SCALES", "normuon_rows"]

NORMUON_SCALES = ("match_rms", "preserve_norm")


def normuon_rows(
    O: torch.Tensor,
    row_var: torch.Tensor,
    *,
    beta2: float,
    eps: float,
    scale: str = "match_rms",
    gate: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """Row-normalise ``O`` (``(..., m, n)``, fp32) and update ``row_var`` (``(..., m)``) in place.

    ``gate`` (0-d tensor of 0/1) freezes ``row_var`` when the step is being skipped, without a host
    synchronisation. Returns the rescaled update.

    Example:
        >>> O = torch.randn(64, 32); v = torch.zeros(64)
        >>> U = normuon_rows(O, v, beta2=0.95, eps=1e-8)
        >>> round(float(U.pow(2).mean().sqrt()), 3)  # RMS 0.2 in "match_rms" mode
        0.2
    """
    if scale not in NORMUON_SCALES:
        raise ValueError(f"normuon scale must be one of {NORMUON_SCALES}, got {scale!r}")
    m, n = O.shape[-2], O.shape[-1]
    # One read of O for the row sums of squares and one read/write for the result: the norms of O
    # and Ô follow from the row sums (‖Ô‖² = Σᵢ ‖Oᵢ‖² / (√vᵢ + ε)²), so neither is materialised.
    # (square().sum() rather than vector_norm(dim=-1): O is often a transposed view, and a CPU
    # vector_norm along a strided dimension is ~10× slower)
    row_sq = O.square().sum(dim=-1)  # (..., m)
    row_var.lerp_(row_sq / n, (1.0 - beta2) * gate)
    inv = (row_var.sqrt() + eps).reciprocal_()  # per-row factor of Ô = O / (√v + ε)
    new_norm = torch.linalg.vector_norm(row_sq.sqrt() * inv, dim=-1, keepdim=True) + eps  # ‖Ô‖_F
    if scale == "match_rms":
        target = 0.2 * math.sqrt(m * n)
    else:
        target = torch.linalg.vector_norm(row_sq, ord=1, dim=-1, keepdim=True).sqrt_()  # ‖O‖_F
    return O * (inv * (target / new_norm)).unsqueeze(-1)
