"""Diversity training: a new head repelled from a frozen reference head (after the diversity loss of the
community LatCH re-implementation, Taikakim/stable-audio-tools-avp
``training/diversity_loss.py``).

Loss (§4.1, the community re-implementation's ``DiversityLoss``)::

    L = L_task(pred, y) − λ(step) · min(MSE(pred, ref(z_t, t)), bound)

with ``ref`` a frozen head (eval mode, ``no_grad``) on the same ``(z_t, t)`` and a linear λ warm-up
``λ(step) = λ · min(1, step / warmup_steps)``. The ``min(·, bound)`` is the hinge form of §4.3 (2):
once the heads differ by more than ``√bound`` the penalty's gradient is zero and the task loss
dominates. Following §4.3 (4) the penalty is computed on the *standardised* outputs both heads
predict, so ``bound`` is in squared standard deviations (``bound = 1`` ≈ one standard deviation of
RMS disagreement; the community's ``bound = 100 dB²`` ≈ 10 dB is about 1–2 std on our targets).

Metrics (§4.1): validation MAE, and the **derivative correlation** — Pearson correlation of the
time derivatives (frame differences) of two control curves — with the target (is the head still a
valid controller?) and with the reference (how different is its "personality"?).

Example:
    >>> import torch
    >>> div = DiversityLoss(lam=0.3, bound=1.0, warmup_steps=10)
    >>> total, parts = div(torch.zeros(1, 2, 8), torch.ones(1, 2, 8), torch.full((1, 2, 8), 0.5), step=5)
    >>> round(parts["lambda"], 3), round(parts["penalty"], 3)
    (0.15, 0.25)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["DiversityConfig", "DiversityLoss", "derivative_correlation"]


@dataclass(frozen=True)
class DiversityConfig:
    """Settings of diversity training (see the module docstring).

    Attributes:
        reference: path of the frozen reference head's checkpoint (``fusion_infer.load_head``).
        lam: the repulsion weight λ (community: 0.3; 0.1 suggested for a "personality variant").
        bound: cap on the penalty, in squared standardised units.
        warmup_steps: linear λ warm-up (0 = full λ from the first step).
        warm_start: initialise the new head from the reference's weights (and its config).
    """

    reference: str
    lam: float = 0.3
    bound: float = 1.0
    warmup_steps: int = 0
    warm_start: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.reference, str) or not self.reference:
            raise ValueError(f"DiversityConfig.reference must be a checkpoint path, got {self.reference!r}")
        DiversityLoss(self.lam, self.bound, self.warmup_steps)  # validates the numbers


class DiversityLoss:
    """``task − λ(step)·min(MSE(pred, ref_pred), bound)``; returns ``(total, parts)``.

    ``task_fn(pred, target)`` defaults to MSE; pass the head's training loss. ``parts`` holds
    floats-to-be (``task``, ``penalty``, ``lambda``) as detached tensors / floats for telemetry.
    """

    def __init__(
        self,
        lam: float = 0.3,
        bound: float = 1.0,
        warmup_steps: int = 0,
        task_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> None:
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not (lam >= 0 and math.isfinite(lam)):
            raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not (bound > 0 and math.isfinite(bound)):
            raise ValueError(f"bound must be a finite number > 0, got {bound!r}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
        self.lam, self.bound, self.warmup_steps = float(lam), float(bound), warmup_steps
        self.task_fn = task_fn or torch.nn.functional.mse_loss

    def lam_at(self, step: int) -> float:
        """λ after linear warm-up at 1-based ``step``."""
        if self.warmup_steps == 0:
            return self.lam
        return self.lam * min(1.0, step / self.warmup_steps)

    def __call__(self, pred: Tensor, target: Tensor, ref_pred: Tensor, step: int) -> tuple[Tensor, dict]:
        if ref_pred.shape != pred.shape:
            raise ValueError(f"ref_pred shape {tuple(ref_pred.shape)} != pred shape {tuple(pred.shape)}")
        task = self.task_fn(pred, target)
        # The reference is frozen: detach so no gradient can flow into it even if the caller forgot no_grad.
        penalty = torch.nn.functional.mse_loss(pred, ref_pred.detach()).clamp(max=self.bound)
        lam = self.lam_at(step)
        total = task - lam * penalty
        return total, {"task": task.detach(), "penalty": float(penalty.detach()), "lambda": lam}


def derivative_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of frame differences of ``a`` and ``b`` (``[N, C, T]``), per channel.

    Returns ``[C]``: for each channel, the correlation over all excerpts and frames of
    ``a[..., 1:] − a[..., :-1]`` with the same of ``b`` (NaN where a derivative is constant).

    Example:
        >>> x = torch.linspace(0, 6, 50).sin().view(1, 1, 50)
        >>> round(float(derivative_correlation(x, 2 * x + 1)[0]), 4)
        1.0
    """
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"a and b must both be [N, C, T] of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    da = a.diff(dim=-1).transpose(0, 1).reshape(a.shape[1], -1).double()
    db = b.diff(dim=-1).transpose(0, 1).reshape(b.shape[1], -1).double()
    da = da - da.mean(dim=1, keepdim=True)
    db = db - db.mean(dim=1, keepdim=True)
    den = (da.square().sum(dim=1) * db.square().sum(dim=1)).sqrt()
    return ((da * db).sum(dim=1) / den).to(a.dtype)
