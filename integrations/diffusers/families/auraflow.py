"""**AuraFlow** (``AuraFlowTransformer2DModel``): ``temb = time_step_proj(time_step_embed(t))``
(timestep only, so entries are shared by all prompts); joint blocks ``norm1.linear`` +
``norm1_context.linear``, single blocks ``norm1.linear`` (6·D each, no bias), and
``norm_out.linear`` (``AuraFlowPreFinalBlock``, 2·D).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import AuraFlowTransformer2DModel
from diffusers.models.normalization import AdaLayerNormZero
from diffusers.models.transformers.auraflow_transformer_2d import (
    AuraFlowJointTransformerBlock,
    AuraFlowPreFinalBlock,
    AuraFlowSingleTransformerBlock,
)

from .base import CallConditioning, Family
from .patterns import continuous_linear, zero_linear

__all__ = ["FAMILY"]


def _aura_block_sites(block: nn.Module) -> tuple[str, ...]:
    if type(block) is AuraFlowJointTransformerBlock:
        return ("norm1.linear", "norm1_context.linear")
    return ("norm1.linear",)


def _aura_check(model: nn.Module) -> str | None:
    for i, blk in enumerate(model.joint_transformer_blocks):
        if type(blk) is not AuraFlowJointTransformerBlock or type(blk.norm1) is not AdaLayerNormZero:
            return f"joint_transformer_blocks.{i} is not an AuraFlowJointTransformerBlock with AdaLayerNormZero"
        if type(blk.norm1_context) is not AdaLayerNormZero:
            return f"joint_transformer_blocks.{i}.norm1_context is not an AdaLayerNormZero"
    for i, blk in enumerate(model.single_transformer_blocks):
        if type(blk) is not AuraFlowSingleTransformerBlock or type(blk.norm1) is not AdaLayerNormZero:
            return f"single_transformer_blocks.{i} is not an AuraFlowSingleTransformerBlock with AdaLayerNormZero"
    if type(model.norm_out) is not AuraFlowPreFinalBlock:
        return "norm_out is not an AuraFlowPreFinalBlock"
    return None


def _aura_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # AuraFlowTransformer2DModel.forward: `temb = time_step_proj(time_step_embed(t).to(dtype of the
    # first parameter))`; AuraFlowPreFinalBlock: `linear(silu(c).to(x.dtype))`.
    first_dtype = next(model.parameters()).dtype
    temb = model.time_step_proj(model.time_step_embed(cond.timestep).to(dtype=first_dtype))
    out: dict[str, Any] = {"time_step_proj": temb}
    for i, blk in enumerate(model.joint_transformer_blocks):
        out[f"joint_transformer_blocks.{i}.norm1.linear"] = zero_linear(blk.norm1, temb)
        out[f"joint_transformer_blocks.{i}.norm1_context.linear"] = zero_linear(blk.norm1_context, temb)
    for i, blk in enumerate(model.single_transformer_blocks):
        out[f"single_transformer_blocks.{i}.norm1.linear"] = zero_linear(blk.norm1, temb)
    out["norm_out.linear"] = continuous_linear(model.norm_out, temb, cond.hidden_dtype)
    return out


FAMILY = Family(
    name="auraflow",
    model_class=AuraFlowTransformer2DModel,
    block_lists=("joint_transformer_blocks", "single_transformer_blocks"),
    model_sites=("time_step_proj", "norm_out.linear"),
    block_sites=_aura_block_sites,
    conditioning=(),
    lora_scale_kwarg="attention_kwargs",
    compute=_aura_compute,
    check=_aura_check,
)
