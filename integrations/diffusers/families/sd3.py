"""**SD3 / SD3.5** (``SD3Transformer2DModel``): ``temb = time_text_embed(t, pooled)`` once; each
``JointTransformerBlock`` runs ``norm1.linear`` (6·D, or 9·D for SD3.5 dual-attention blocks)
and ``norm1_context.linear`` (6·D, or 2·D ``AdaLayerNormContinuous`` in the ``context_pre_only``
last block); ``norm_out.linear`` (2·D) at the end (arXiv 2403.03206 §4, MMDiT).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import SD3Transformer2DModel
from diffusers.models.attention import JointTransformerBlock
from diffusers.models.normalization import (
    AdaLayerNormContinuous,
    AdaLayerNormZero,
    SD35AdaLayerNormZeroX,
)

from .base import CallConditioning, Family
from .patterns import continuous_linear, zero_linear

__all__ = ["FAMILY"]


def _sd3_block_sites(block: nn.Module) -> tuple[str, ...]:
    return ("norm1.linear", "norm1_context.linear")


def _sd3_check(model: nn.Module) -> str | None:
    for i, blk in enumerate(model.transformer_blocks):
        if type(blk) is not JointTransformerBlock:
            return f"transformer_blocks.{i} is a {type(blk).__name__}, expected JointTransformerBlock"
        want = SD35AdaLayerNormZeroX if blk.use_dual_attention else AdaLayerNormZero
        if type(blk.norm1) is not want:
            return f"transformer_blocks.{i}.norm1 is a {type(blk.norm1).__name__}, expected {want.__name__}"
        want_ctx = AdaLayerNormContinuous if blk.context_pre_only else AdaLayerNormZero
        if type(blk.norm1_context) is not want_ctx:
            return (
                f"transformer_blocks.{i}.norm1_context is a {type(blk.norm1_context).__name__}, "
                f"expected {want_ctx.__name__}"
            )
    if type(model.norm_out) is not AdaLayerNormContinuous:
        return "norm_out is not an AdaLayerNormContinuous"
    return None


def _sd3_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    temb = model.time_text_embed(cond.timestep, cond.values["pooled_projections"])
    out: dict[str, Any] = {"time_text_embed": temb}
    for i, blk in enumerate(model.transformer_blocks):
        out[f"transformer_blocks.{i}.norm1.linear"] = zero_linear(blk.norm1, temb)
        ctx = blk.norm1_context
        if blk.context_pre_only:
            # x is encoder_hidden_states after context_embedder: the model's hidden dtype.
            out[f"transformer_blocks.{i}.norm1_context.linear"] = continuous_linear(ctx, temb, cond.hidden_dtype)
        else:
            out[f"transformer_blocks.{i}.norm1_context.linear"] = zero_linear(ctx, temb)
    out["norm_out.linear"] = continuous_linear(model.norm_out, temb, cond.hidden_dtype)
    return out


FAMILY = Family(
    name="sd3",
    model_class=SD3Transformer2DModel,
    block_lists=("transformer_blocks",),
    model_sites=("time_text_embed", "norm_out.linear"),
    block_sites=_sd3_block_sites,
    conditioning=("pooled_projections",),
    lora_scale_kwarg="joint_attention_kwargs",
    compute=_sd3_compute,
    check=_sd3_check,
)
