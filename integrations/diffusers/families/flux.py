"""**FLUX.1** (``FluxTransformer2DModel``): ``temb = time_text_embed(1000·t, [1000·g], pooled)``;
double blocks ``norm1.linear`` + ``norm1_context.linear`` (6·D each), single blocks
``norm.linear`` (3·D), ``norm_out.linear`` (2·D).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import FluxTransformer2DModel
from diffusers.models.normalization import (
    AdaLayerNormContinuous,
    AdaLayerNormZero,
    AdaLayerNormZeroSingle,
)
from diffusers.models.transformers.transformer_flux import (
    FluxSingleTransformerBlock,
    FluxTransformerBlock,
)

from .base import CallConditioning, Family
from .patterns import continuous_linear, zero_linear

__all__ = ["FAMILY"]


def _flux_block_sites(block: nn.Module) -> tuple[str, ...]:
    if type(block) is FluxTransformerBlock:
        return ("norm1.linear", "norm1_context.linear")
    return ("norm.linear",)


def _flux_check(model: nn.Module) -> str | None:
    for i, blk in enumerate(model.transformer_blocks):
        if type(blk) is not FluxTransformerBlock:
            return f"transformer_blocks.{i} is a {type(blk).__name__}, expected FluxTransformerBlock"
        if type(blk.norm1) is not AdaLayerNormZero or type(blk.norm1_context) is not AdaLayerNormZero:
            return f"transformer_blocks.{i} norms are not AdaLayerNormZero"
    for i, blk in enumerate(model.single_transformer_blocks):
        if type(blk) is not FluxSingleTransformerBlock or type(blk.norm) is not AdaLayerNormZeroSingle:
            return f"single_transformer_blocks.{i} is not a FluxSingleTransformerBlock with AdaLayerNormZeroSingle"
    if type(model.norm_out) is not AdaLayerNormContinuous:
        return "norm_out is not an AdaLayerNormContinuous"
    return None


def _flux_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # FluxTransformer2DModel.forward: timestep/guidance are cast to the hidden dtype and scaled by
    # 1000 before the embedder; the same expressions are evaluated here.
    hd = cond.hidden_dtype
    timestep = cond.timestep.to(hd) * 1000
    guidance = cond.values["guidance"]
    pooled = cond.values["pooled_projections"]
    if guidance is None:
        temb = model.time_text_embed(timestep, pooled)
    else:
        guidance = guidance.to(hd) * 1000
        temb = model.time_text_embed(timestep, guidance, pooled)
    out: dict[str, Any] = {"time_text_embed": temb}
    for i, blk in enumerate(model.transformer_blocks):
        out[f"transformer_blocks.{i}.norm1.linear"] = zero_linear(blk.norm1, temb)
        out[f"transformer_blocks.{i}.norm1_context.linear"] = zero_linear(blk.norm1_context, temb)
    for i, blk in enumerate(model.single_transformer_blocks):
        out[f"single_transformer_blocks.{i}.norm.linear"] = zero_linear(blk.norm, temb)
    out["norm_out.linear"] = continuous_linear(model.norm_out, temb, hd)
    return out


FAMILY = Family(
    name="flux",
    model_class=FluxTransformer2DModel,
    block_lists=("transformer_blocks", "single_transformer_blocks"),
    model_sites=("time_text_embed", "norm_out.linear"),
    block_sites=_flux_block_sites,
    conditioning=("pooled_projections", "guidance"),
    lora_scale_kwarg="joint_attention_kwargs",
    compute=_flux_compute,
    check=_flux_check,
)
