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
    row_var.lerp_(O.square().mean(dim=-1), (1.0 - beta2) * gate)
    O_hat = O / (row_var.sqrt().unsqueeze(-1) + eps)
    new_norm = torch.linalg.vector_norm(O_hat, dim=(-2, -1), keepdim=True) + eps
    if scale == "match_rms":
        return O_hat * (0.2 * math.sqrt(m * n) / new_norm)
    return O_hat * (torch.linalg.vector_norm(O, dim=(-2, -1), keepdim=True) / new_norm)
