"""**Qwen-Image 2.1** (``QwenImage21Transformer2DModel``, diffusers ``transformer_qwenimage21.py``):
single-stream blocks with *no* per-block modulation — one shared
``modulation = Sequential(SiLU, Linear)(temb)`` (4·D) handed to every block, with
``temb = time_text_embed(t)`` (timestep only) — and ``norm_out.linear`` (scale only, D). With
``causal_condition`` the timestep batch gets an extra t = 0 row (text and condition-image tokens
read it); the rows are still a function of ``t``, so they are cached as computed. KV-cache
``"extract"``/``"cached"`` calls use the same modulators (only token-side slicing differs).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from diffusers.models.transformers.transformer_qwenimage21 import (
    QwenImage21AdaLayerNormContinuous,
    QwenImage21TimestepProjEmbeddings,
    QwenImage21Transformer2DModel,
    QwenImage21TransformerBlock,
)

from .base import CallConditioning, Family
from .patterns import blocks_reason, dtype_stand_in, module_reason, no_block_sites

__all__ = ["FAMILY"]


def _qwen21_check(model: nn.Module) -> str | None:
    reasons = [
        module_reason(model, "time_text_embed", QwenImage21TimestepProjEmbeddings),
        module_reason(model, "modulation", nn.Sequential),
        module_reason(model, "norm_out", QwenImage21AdaLayerNormContinuous),
        blocks_reason(model, "transformer_blocks", QwenImage21TransformerBlock),
    ]
    return next((r for r in reasons if r is not None), None)


def _qwen21_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # QwenImage21Transformer2DModel.forward: `timestep.to(dtype)`, the causal t = 0 row,
    # `time_text_embed(timestep, hidden_states)` (dtype only), `modulation(temb)`, and
    # QwenImage21AdaLayerNormContinuous: `linear(silu(temb).to(x.dtype))`.
    hd = cond.hidden_dtype
    timestep = cond.timestep.to(hd)
    if model.config.causal_condition:
        timestep = torch.cat([timestep, timestep.new_zeros(1)], dim=0)
    temb = model.time_text_embed(timestep, dtype_stand_in(hd, timestep.device))
    norm_out = model.norm_out
    return {
        "time_text_embed": temb,
        "modulation": model.modulation(temb),
        "norm_out.linear": norm_out.linear(norm_out.silu(temb).to(hd)),
    }


FAMILY = Family(
    name="qwen_image21",
    model_class=QwenImage21Transformer2DModel,
    block_lists=("transformer_blocks",),
    model_sites=("time_text_embed", "modulation", "norm_out.linear"),
    block_sites=no_block_sites,
    conditioning=(),
    lora_scale_kwarg="attention_kwargs",
    compute=_qwen21_compute,
    check=_qwen21_check,
)
