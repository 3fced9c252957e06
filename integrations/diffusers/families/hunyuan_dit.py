"""**Hunyuan-DiT** (``HunyuanDiT2DModel``, diffusers ``hunyuan_transformer_2d.py``; arXiv
2405.08748): ``temb = time_extra_emb(t, encoder_hidden_states_t5, image_meta_size, style)`` — the
text half is an attention pool over the T5 tokens, so the whole T5 sequence is keyed (it is fixed
for a render; CFG rows differ). Every ``HunyuanDiTBlock`` runs ``norm1.linear``
(``AdaLayerNormShift``: ``linear(silu(temb.float()).to(temb.dtype))``, D, a shift only) and the
output ``norm_out.linear`` (``AdaLayerNormContinuous`` on ``temb.float()``, 2·D). Models ≥ 1.2
(``use_style_cond_and_image_meta_size=False``) ignore size and style: they are not keyed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from diffusers import HunyuanDiT2DModel
from diffusers.models.embeddings import HunyuanCombinedTimestepTextSizeStyleEmbedding
from diffusers.models.normalization import AdaLayerNormContinuous
from diffusers.models.transformers.hunyuan_transformer_2d import AdaLayerNormShift, HunyuanDiTBlock

from .base import CallConditioning, Family
from .patterns import blocks_reason, continuous_linear, module_reason

__all__ = ["FAMILY"]


def _hunyuan_block_sites(block: nn.Module) -> tuple[str, ...]:
    return ("norm1.linear",)


def _hunyuan_check(model: nn.Module) -> str | None:
    reasons = [
        module_reason(model, "time_extra_emb", HunyuanCombinedTimestepTextSizeStyleEmbedding),
        module_reason(model, "norm_out", AdaLayerNormContinuous),
        blocks_reason(model, "blocks", HunyuanDiTBlock, {"norm1": AdaLayerNormShift}),
    ]
    return next((r for r in reasons if r is not None), None)


def _hunyuan_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # HunyuanDiT2DModel.forward: `time_extra_emb(..., hidden_dtype=timestep.dtype)`; blocks'
    # AdaLayerNormShift; `norm_out(hidden_states, temb.to(torch.float32))`.
    v = cond.values
    t = cond.timestep
    temb = model.time_extra_emb(t, v["encoder_hidden_states_t5"], v["image_meta_size"], v["style"], hidden_dtype=t.dtype)
    out: dict[str, Any] = {"time_extra_emb": temb}
    for i, blk in enumerate(model.blocks):
        norm = blk.norm1
        out[f"blocks.{i}.norm1.linear"] = norm.linear(norm.silu(temb.to(torch.float32)).to(temb.dtype))
    out["norm_out.linear"] = continuous_linear(model.norm_out, temb.to(torch.float32), cond.hidden_dtype)
    return out


def _hunyuan_adjust_values(model: nn.Module, values: dict[str, Any]) -> None:
    if not model.time_extra_emb.use_style_cond_and_image_meta_size:
        values["image_meta_size"] = None  # ignored by the embedder: must not split the key
        values["style"] = None


FAMILY = Family(
    name="hunyuan_dit",
    model_class=HunyuanDiT2DModel,
    block_lists=("blocks",),
    model_sites=("time_extra_emb", "norm_out.linear"),
    block_sites=_hunyuan_block_sites,
    conditioning=("encoder_hidden_states_t5", "image_meta_size", "style"),
    lora_scale_kwarg=None,
    compute=_hunyuan_compute,
    check=_hunyuan_check,
    adjust_values=_hunyuan_adjust_values,
    required=("encoder_hidden_states_t5",),
)
