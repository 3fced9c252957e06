"""Modulator computations shared by several families, each mirroring one diffusers module.

* ``AdaLayerNormZero`` / ``SD35AdaLayerNormZeroX`` / ``AdaLayerNormZeroSingle``
  (diffusers ``models/normalization.py``): ``linear(silu(emb))``.
* ``AdaLayerNormContinuous`` and ``AuraFlowPreFinalBlock``: ``linear(silu(c).to(x.dtype))``.
* adaLN-single models (PixArt, Sana) have no per-block site: blocks only add learned tables.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["continuous_linear", "no_block_sites", "zero_linear"]


def no_block_sites(block: nn.Module) -> tuple[str, ...]:
    return ()


def zero_linear(norm: nn.Module, temb: Tensor) -> Tensor:
    # AdaLayerNormZero / SD35AdaLayerNormZeroX / AdaLayerNormZeroSingle: `linear(silu(emb))`.
    return norm.linear(norm.silu(temb))


def continuous_linear(norm: nn.Module, temb: Tensor, x_dtype: torch.dtype) -> Tensor:
    # AdaLayerNormContinuous: `linear(silu(c).to(x.dtype))`.
    return norm.linear(norm.silu(temb).to(x_dtype))
