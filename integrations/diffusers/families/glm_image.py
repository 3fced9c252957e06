"""**GLM-Image** (``GlmImageTransformer2DModel``, diffusers ``transformer_glm_image.py``): the
CogView4 layout — ``temb = time_condition_embed(t, target_size, crop_coords, latent dtype)`` (the
SiLU is inside the embedder here; size conditions keyed), every block's ``norm1.linear``
(``GlmImageAdaLayerNormZero``, 12·D, no activation of its own) and ``norm_out.linear``
(``linear(temb.to(x.dtype))``). The prior tokens and KV caches act on the token side only.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import GlmImageTransformer2DModel
from diffusers.models.transformers.transformer_glm_image import (
    GlmImageAdaLayerNormContinuous,
    GlmImageAdaLayerNormZero,
    GlmImageCombinedTimestepSizeEmbeddings,
    GlmImageTransformerBlock,
)

from .base import CallConditioning, Family
from .patterns import blocks_reason, module_reason

__all__ = ["FAMILY"]

_CONDITIONS = ("target_size", "crop_coords")


def _block_sites(block: nn.Module) -> tuple[str, ...]:
    return ("norm1.linear",)


def _check(model: nn.Module) -> str | None:
    reasons = [
        module_reason(model, "time_condition_embed", GlmImageCombinedTimestepSizeEmbeddings),
        module_reason(model, "norm_out", GlmImageAdaLayerNormContinuous),
        blocks_reason(model, "transformer_blocks", GlmImageTransformerBlock, {"norm1": GlmImageAdaLayerNormZero}),
    ]
    return next((r for r in reasons if r is not None), None)


def _compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # GlmImageTransformer2DModel.forward: `time_condition_embed(...)`, blocks' `norm1.linear(temb)`,
    # GlmImageAdaLayerNormContinuous: `linear(temb.to(x.dtype))`.
    hd = cond.hidden_dtype
    v = cond.values
    temb = model.time_condition_embed(cond.timestep, v["target_size"], v["crop_coords"], hd)
    out: dict[str, Any] = {"time_condition_embed": temb}
    for i, blk in enumerate(model.transformer_blocks):
        out[f"transformer_blocks.{i}.norm1.linear"] = blk.norm1.linear(temb)
    out["norm_out.linear"] = model.norm_out.linear(temb.to(hd))
    return out


FAMILY = Family(
    name="glm_image",
    model_class=GlmImageTransformer2DModel,
    block_lists=("transformer_blocks",),
    model_sites=("time_condition_embed", "norm_out.linear"),
    block_sites=_block_sites,
    conditioning=_CONDITIONS,
    lora_scale_kwarg=None,
    compute=_compute,
    check=_check,
    required=_CONDITIONS,
)
