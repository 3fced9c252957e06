"""Schedule-Free averaging (the "sf" component), written over the single stored sequence z.

Schedule-Free (Defazio et al., "The Road Less Scheduled", arXiv 2405.15682; reference code
facebookresearch/schedule_free), with weight decay on the fast iterate z as in SF-NorMuon
(Apte et al., arXiv 2605.23061, Algorithm 1):

    y_t     = (1−β)·z_t + β·x_t                  gradients are taken at y
    z_{t+1} = z_t − γ_t·u_t − η_t·λ·z_t          u_t: the component's direction (Adam-normalised or
                                                  orthogonalised), η_t the warm-up scheduled lr,
                                                  γ_t = η_t·(Polyak multiplier, 1 when off)
    x_{t+1} = (1−c_{t+1})·x_t + c_{t+1}·z_{t+1},  c_{t+1} = w_t / Σ_{i≤t} w_i,  w_t = t^r·(max_{i≤t} η_i)^p

Only z is stored. The parameter tensor holds y in train mode and x in eval mode; x is derived from
y and z when needed. Writing Δ = z_t − z_{t+1}, the three lines fuse into

    y ← lerp(y, z, c) − (1 − β(1−c))·Δ ;  z ← z − Δ

which is the same algebra as schedulefree's ``AdamWScheduleFree`` fused step.

Low-precision (bf16/fp16) parameters: deriving x from y and z in bf16 cancels catastrophically
(``x = (y − (1−β)z)/β`` with y, z rounded to 8 bits), and a bf16 z cannot absorb updates smaller
than its ulp. For those parameters FusionOpt keeps z and x in fp32 (:func:`sf_update_precise_`)
and the parameter holds y rounded once; ``eval()`` writes x rounded once.
"""

from __future__ import annotations

import torch

__all__ = [
    "averaging_weight", "sf_update_", "sf_update_scaled_", "sf_update_precise_", "x_from_y", "y_to_x_", "x_to_y_",
]


def averaging_weight(step: int, lr_max: float, r: float = 0.0, weight_lr_power: float = 2.0) -> float:
    """The averaging weight ``w_t = t^r · lr_max^p`` (``step`` is 1-based)."""
    return (step**r) * (lr_max**weight_lr_power)


def sf_update_(
    y: torch.Tensor, z: torch.Tensor, delta: torch.Tensor, c: float | torch.Tensor, beta: float
) -> None:
    """Apply one fused Schedule-Free step in place: ``z ← z − Δ`` and y to its new interpolation."""
    y.lerp_(z, c)
    y.sub_(delta * (1.0 - beta * (1.0 - c)))
    z.sub_(delta)


def sf_update_scaled_(
    y: torch.Tensor, z: torch.Tensor, u: torch.Tensor, k: torch.Tensor, c: torch.Tensor, beta: float,
    decay: torch.Tensor | None = None,
) -> None:
    """:func:`sf_update_` with ``Δ = k·u + decay·z`` (``k``, ``decay``, ``c``: 0-d tensors),
    without materialising Δ: three scaled in-place adds instead of five passes over the tensor.

    ``y ← lerp(y, z, c) − a·Δ ;  z ← z − Δ``  with ``a = 1 − β(1−c)`` (Δ uses the old z).
    """
    a = 1.0 - beta * (1.0 - c)
    y.lerp_(z, c)
    if decay is not None:
        y.sub_(z * (decay * a))
        z.mul_(1.0 - decay)
    y.addcmul_(u, k * a, value=-1.0)
    z.addcmul_(u, k, value=-1.0)


def x_from_y(y: torch.Tensor, z: torch.Tensor, beta: float) -> torch.Tensor:
    """The averaged iterate ``x = (y − (1−β)z)/β`` (out of place; same bits as :func:`y_to_x_`)."""
    return torch.lerp(y, z, 1.0 - 1.0 / beta)


def y_to_x_(p: torch.Tensor, z: torch.Tensor, beta: float) -> None:
    """Switch a parameter holding y to x in place (``optimizer.eval()``)."""
    p.lerp_(z, 1.0 - 1.0 / beta)


def x_to_y_(p: torch.Tensor, z: torch.Tensor, beta: float) -> None:
    """Switch a parameter holding x to y in place (``optimizer.train()``)."""
    p.lerp_(z, 1.0 - beta)


def sf_update_precise_(
    p: torch.Tensor, z: torch.Tensor, x: torch.Tensor, delta: torch.Tensor, c: torch.Tensor, beta: float
) -> None:
    """Schedule-Free step with z and x in fp32 for a low-precision parameter ``p`` (holds y).

    ``z ← z − Δ ;  x ← lerp(x, z, c) ;  p ← round((1−β)·z + β·x)``.
    """
    z.sub_(delta)
    x.lerp_(z, c.to(x.dtype) if isinstance(c, torch.Tensor) else c)
    p.copy_(torch.lerp(z, x, beta))
