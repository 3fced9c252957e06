"""**HunyuanVideo 1.5** (``HunyuanVideo15Transformer3DModel``; arXiv 2511.18870): dual-stream
blocks only. ``time_embed(t[, timestep_r])`` depends on the timestep alone (and, for the
MeanFlow super-resolution variant, on the reference timestep ``timestep_r``), so entries are
shared by every prompt, image condition and CFG branch. Blocks: ``norm1.linear`` +
``norm1_context.linear`` (6·D each, ``AdaLayerNormZero``); ``norm_out.linear`` (2·D).

Not sites (they run every call, exactly as without the cache): the text-token refiner
(``context_embedder``), whose adaLN gates depend on the mean of the prompt tokens.

Source: diffusers 0.42.1 ``models/transformers/transformer_hunyuan_video15.py``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import HunyuanVideo15Transformer3DModel
from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero
from diffusers.models.transformers.transformer_hunyuan_video15 import (
    HunyuanVideo15TimeEmbedding,
    HunyuanVideo15TransformerBlock,
)

from .base import CallConditioning, Family
from .patterns import continuous_linear, zero_linear

__all__ = ["FAMILY"]


def _hv15_block_sites(block: nn.Module) -> tuple[str, ...]:
    return ("norm1.linear", "norm1_context.linear")


def _hv15_check(model: nn.Module) -> str | None:
    if type(model.time_embed) is not HunyuanVideo15TimeEmbedding:
        return f"time_embed is a {type(model.time_embed).__name__}, expected HunyuanVideo15TimeEmbedding"
    for i, blk in enumerate(model.transformer_blocks):
        if type(blk) is not HunyuanVideo15TransformerBlock:
            return f"transformer_blocks.{i} is a {type(blk).__name__}, expected HunyuanVideo15TransformerBlock"
        if type(blk.norm1) is not AdaLayerNormZero or type(blk.norm1_context) is not AdaLayerNormZero:
            return f"transformer_blocks.{i} norms are not AdaLayerNormZero"
    if type(model.norm_out) is not AdaLayerNormContinuous:
        return "norm_out is not an AdaLayerNormContinuous"
    return None


def _hv15_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # HunyuanVideo15Transformer3DModel.forward: `temb = time_embed(timestep, timestep_r=timestep_r)`.
    temb = model.time_embed(cond.timestep, timestep_r=cond.values["timestep_r"])
    out: dict[str, Any] = {"time_embed": temb}
    for i, blk in enumerate(model.transformer_blocks):
        out[f"transformer_blocks.{i}.norm1.linear"] = zero_linear(blk.norm1, temb)
        out[f"transformer_blocks.{i}.norm1_context.linear"] = zero_linear(blk.norm1_context, temb)
    out["norm_out.linear"] = continuous_linear(model.norm_out, temb, cond.hidden_dtype)
    return out


FAMILY = Family(
    name="hunyuan_video15",
    model_class=HunyuanVideo15Transformer3DModel,
    block_lists=("transformer_blocks",),
    model_sites=("time_embed", "norm_out.linear"),
    block_sites=_hv15_block_sites,
    conditioning=("timestep_r",),
    lora_scale_kwarg="attention_kwargs",
    compute=_hv15_compute,
    check=_hv15_check,
)
