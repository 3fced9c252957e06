"""Regression losses for control heads, by name (the name is recorded in the checkpoint).

LatCH's re-implementation trains with SmoothL1 (Huber) on standardised targets (``β = 1``
on standardised targets); L1 and MSE are the other two options.
Guidance must use the loss the head was trained with, so the name travels with the checkpoint.

* ``"huber"``: ``½d²/δ`` for ``|d| < δ`` else ``|d| − ½δ`` (Huber 1964; PyTorch's ``smooth_l1_loss``
  with ``beta = δ``, which is Huber divided by δ so its large-error slope is 1 like L1);
* ``"l1"``: ``|d|``; ``"mse"``: ``d²``; all averaged over every element.

Example:
    >>> import torch
    >>> task_loss("l1", torch.zeros(2, 3), torch.ones(2, 3)).item()
    1.0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fusion_infer.checkpoint import LOSSES

__all__ = ["LOSSES", "task_loss", "validate_loss_name"]


def validate_loss_name(name: str) -> str:
    """``name`` if it is a known loss, else ``ValueError`` listing the allowed names."""
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {list(LOSSES)}, got {name!r}")
    return name


def task_loss(name: str, pred: torch.Tensor, target: torch.Tensor, huber_delta: float = 1.0) -> torch.Tensor:
    """Mean loss ``name`` between ``pred`` and ``target`` (same shape)."""
    validate_loss_name(name)
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    if name == "huber":
        if not huber_delta > 0:
            raise ValueError(f"huber_delta must be > 0, got {huber_delta!r}")
        return F.smooth_l1_loss(pred, target, beta=huber_delta)
    if name == "l1":
        return F.l1_loss(pred, target)
    return F.mse_loss(pred, target)
