"""Every tiny diffusers model configuration under test, from every case module present.

``diffusers_tiny_models.CASES`` always; ``tiny_image_models.CASES`` and
``tiny_video_models.CASES`` when those modules exist. Each module may return its outputs
differently (a tensor, a list of samples, a ``(video, audio)`` pair), so every case travels
with its module's ``forward`` helper; :func:`same` compares either form bitwise.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import diffusers_tiny_models
import torch
from torch import nn

OPTIONAL_CASE_MODULES = ("tiny_image_models", "tiny_video_models")


@dataclass(frozen=True)
class SuiteCase:
    """A :class:`diffusers_tiny_models.Case` plus the forward helper of the module that lists it."""

    case: Any
    forward: Callable[..., Any]

    @property
    def name(self) -> str:
        return self.case.name


def _module_cases(module: Any) -> list[SuiteCase]:
    fwd = getattr(module, "forward", diffusers_tiny_models.forward)
    return [SuiteCase(c, fwd) for c in getattr(module, "CASES", [])]


def all_cases() -> list[SuiteCase]:
    """Cases of ``diffusers_tiny_models`` and of every optional case module that is present."""
    out = _module_cases(diffusers_tiny_models)
    for name in OPTIONAL_CASE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        out.extend(_module_cases(module))
    return out


def build(case: Any, dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    return diffusers_tiny_models.build(case, dtype, seed)


def same(a: Any, b: Any) -> bool:
    """Bitwise equality of forward outputs (tensors, or tuples/lists of tensors)."""
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
