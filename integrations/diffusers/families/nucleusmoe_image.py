"""**Nucleus-MoE-Image** (``NucleusMoEImageTransformer2DModel``, diffusers
``transformer_nucleusmoe_image.py``): Qwen-Image-like single-image-stream blocks —
``temb = time_text_embed(t)`` (timestep only; RMS-normed), every block's ``img_mod``
(``Sequential(SiLU, Linear)``, 4·D) and ``norm_out.linear`` (``AdaLayerNormContinuous``, 2·D). The
expert router concatenates ``temb`` with the tokens inside the block, which is token-side
computation on the (cached) ``temb``, not a site.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import NucleusMoEImageTransformer2DModel
from diffusers.models.normalization import AdaLayerNormContinuous
from diffusers.models.transformers.transformer_nucleusmoe_image import (
    NucleusMoEImageTransformerBlock,
    NucleusMoETimestepProjEmbeddings,
)

from .base import CallConditioning, Family
from .patterns import blocks_reason, continuous_linear, dtype_stand_in, module_reason

__all__ = ["FAMILY"]


def _block_sites(block: nn.Module) -> tuple[str, ...]:
    return ("img_mod",)


def _check(model: nn.Module) -> str | None:
    reasons = [
        module_reason(model, "time_text_embed", NucleusMoETimestepProjEmbeddings),
        module_reason(model, "norm_out", AdaLayerNormContinuous),
        blocks_reason(model, "transformer_blocks", NucleusMoEImageTransformerBlock),
    ]
    reason = next((r for r in reasons if r is not None), None)
    if reason is None and model.time_text_embed.use_additional_t_cond:
        return "time_text_embed uses additional_t_cond, which this forward never passes"
    return reason


def _compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # NucleusMoEImageTransformer2DModel.forward: `timestep.to(dtype)`, `time_text_embed(t, hidden)`
    # (reads the dtype only), each block's `img_mod(temb)`, `norm_out(hidden, temb)`.
    hd = cond.hidden_dtype
    timestep = cond.timestep.to(hd)
    temb = model.time_text_embed(timestep, dtype_stand_in(hd, timestep.device))
    out: dict[str, Any] = {"time_text_embed": temb}
    for i, blk in enumerate(model.transformer_blocks):
        out[f"transformer_blocks.{i}.img_mod"] = blk.img_mod(temb)
    out["norm_out.linear"] = continuous_linear(model.norm_out, temb, hd)
    return out


FAMILY = Family(
    name="nucleusmoe_image",
    model_class=NucleusMoEImageTransformer2DModel,
    block_lists=("transformer_blocks",),
    model_sites=("time_text_embed", "norm_out.linear"),
    block_sites=_block_sites,
    conditioning=(),
    lora_scale_kwarg="attention_kwargs",
    compute=_compute,
    check=_check,
)
