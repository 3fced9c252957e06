"""**Qwen-Image** (``QwenImageTransformer2DModel``, diffusers ``transformer_qwenimage.py``; Qwen-Image
technical report, arXiv 2508.02324 §2, MMDiT with per-stream adaLN): ``temb = time_text_embed(t)``
(timestep only, plus the Layered variant's ``additional_t_cond`` table); every
``QwenImageTransformerBlock`` runs ``img_mod`` and ``txt_mod`` (``Sequential(SiLU, Linear)``,
6·D each) on it; ``norm_out.linear`` (``AdaLayerNormContinuous``, 2·D) at the end.

``zero_cond_t`` (Qwen-Image-Edit-2511): the timestep batch is ``cat([t, 0·t])``; ``img_mod`` sees
both halves (the block picks per token between them by ``modulate_index``), ``txt_mod`` and
``norm_out`` only the first — all still a function of ``t`` alone, so they are cached as the model
computes them. ``guidance`` is keyed; the 0.42.1 embedder does not accept it (the uncached model
raises ``TypeError``), and the family raises the same error by making the same call.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from diffusers import QwenImageTransformer2DModel
from diffusers.models.normalization import AdaLayerNormContinuous
from diffusers.models.transformers.transformer_qwenimage import (
    QwenImageTransformerBlock,
    QwenTimestepProjEmbeddings,
)

from .base import CallConditioning, Family
from .patterns import blocks_reason, continuous_linear, dtype_stand_in, module_reason

__all__ = ["FAMILY"]


def _qwen_block_sites(block: nn.Module) -> tuple[str, ...]:
    return ("img_mod", "txt_mod")


def _qwen_check(model: nn.Module) -> str | None:
    reason = (
        module_reason(model, "time_text_embed", QwenTimestepProjEmbeddings)
        or module_reason(model, "norm_out", AdaLayerNormContinuous)
        or blocks_reason(model, "transformer_blocks", QwenImageTransformerBlock)
    )
    if reason is not None:
        return reason
    for i, blk in enumerate(model.transformer_blocks):
        if bool(blk.zero_cond_t) != bool(model.zero_cond_t):
            return f"transformer_blocks.{i}.zero_cond_t differs from the model's zero_cond_t"
    return None


def _qwen_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # QwenImageTransformer2DModel.forward, op for op: `timestep.to(hidden dtype)`, the zero_cond_t
    # doubling, `guidance.to(dtype) * 1000`, then the blocks' img_mod/txt_mod and norm_out.
    hd = cond.hidden_dtype
    timestep = cond.timestep.to(hd)
    if model.zero_cond_t:
        timestep = torch.cat([timestep, timestep * 0], dim=0)
    stand_in = dtype_stand_in(hd, timestep.device)  # the embedder reads only hidden_states.dtype
    guidance = cond.values["guidance"]
    extra = cond.values["additional_t_cond"]
    if guidance is None:
        temb = model.time_text_embed(timestep, stand_in, extra)
    else:
        temb = model.time_text_embed(timestep, guidance.to(hd) * 1000, stand_in, extra)
    first = torch.chunk(temb, 2, dim=0)[0] if model.zero_cond_t else temb
    out: dict[str, Any] = {"time_text_embed": temb}
    for i, blk in enumerate(model.transformer_blocks):
        out[f"transformer_blocks.{i}.img_mod"] = blk.img_mod(temb)
        out[f"transformer_blocks.{i}.txt_mod"] = blk.txt_mod(first)
    out["norm_out.linear"] = continuous_linear(model.norm_out, first, hd)
    return out


FAMILY = Family(
    name="qwen_image",
    model_class=QwenImageTransformer2DModel,
    block_lists=("transformer_blocks",),
    model_sites=("time_text_embed", "norm_out.linear"),
    block_sites=_qwen_block_sites,
    conditioning=("guidance", "additional_t_cond"),
    lora_scale_kwarg="attention_kwargs",
    compute=_qwen_compute,
    check=_qwen_check,
)
