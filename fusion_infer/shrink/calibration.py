"""Running a model on a calibration batch, and private copies to run it on.

Importance scoring runs on a private copy of the model so the caller's model is untouched
(no hooks left behind, no cache lookups counted, no modulator-parameter changes seen by an
attached :class:`~fusion_infer.TimeConditioningCache`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .families import model_family

__all__ = ["run_model", "private_copy", "output_tensor"]


def output_tensor(out: Any) -> Tensor:
    """The main output tensor of a forward (diffusers ``.sample``, first tuple element, tensor)."""
    if isinstance(out, Tensor):
        return out
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(f"cannot find the output tensor in a {type(out).__name__}")


def run_model(model: nn.Module, calibration: Any) -> Tensor:
    """``model(*calibration)`` (tuple/list) or ``model(**calibration)`` (dict) under ``no_grad``.

    Example:
        >>> from fusion_infer import ControlHead
        >>> head = ControlHead(dim=64, depth=1, heads=4, freq_dim=64)
        >>> run_model(head, (torch.zeros(2, 64, 8), 0.5)).shape
        torch.Size([2, 1, 8])
    """
    with torch.no_grad():
        if isinstance(calibration, Mapping):
            return output_tensor(model(**calibration))
        if isinstance(calibration, (tuple, list)):
            return output_tensor(model(*calibration))
    raise TypeError(
        "calibration must be a tuple of positional arguments (e.g. (x, t) for a ControlHead) or a "
        f"dict of keyword arguments, got {type(calibration).__name__}"
    )


def private_copy(model: nn.Module) -> nn.Module:
    """A detached copy with the same weights, dtype, device and train/eval mode.

    A :class:`~fusion_infer.ControlHead` is rebuilt from its config and ``state_dict`` (so an
    attached cache is not copied along); other families are ``copy.deepcopy``-ed.
    """
    model = getattr(model, "_orig_mod", model)
    if model_family(model) == "control_head":
        new = type(model)(model.config)
        new.load_state_dict(model.state_dict())
        new = new.to(device=model.device, dtype=model.dtype)
        new.train(model.training)
        for p_new, p_old in zip(new.parameters(), model.parameters()):
            p_new.requires_grad_(p_old.requires_grad)
        return new
    return copy.deepcopy(model)
