"""**Lumina-Image 2.0** (``Lumina2Transformer2DModel``, diffusers ``transformer_lumina2.py``;
arXiv 2503.21758, Unified Next-DiT): ``time_caption_embed`` returns ``(temb, caption_embed)`` —
the caption half depends on the text tokens, so the site is its ``timestep_embedder``
(``temb = timestep_embedder(time_proj(t).type_as(latents))``, timestep only). Every modulated block
(``noise_refiner`` and ``layers``) runs ``norm1.linear`` (``LuminaRMSNormZero``, 4·D) and the output
``norm_out.linear_1`` (``LuminaLayerNormContinuous``, D); the ``context_refiner`` is unmodulated.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import Lumina2Transformer2DModel
from diffusers.models.normalization import LuminaLayerNormContinuous, LuminaRMSNormZero
from diffusers.models.transformers.transformer_lumina2 import (
    Lumina2CombinedTimestepCaptionEmbedding,
    Lumina2TransformerBlock,
)

from .base import CallConditioning, Family
from .patterns import blocks_reason, dtype_stand_in, module_reason, zero_linear

__all__ = ["FAMILY"]

_MODULATED = ("noise_refiner", "layers")
_TEMB = "time_caption_embed.timestep_embedder"


def _lumina2_block_sites(block: nn.Module) -> tuple[str, ...]:
    return ("norm1.linear",)


def _lumina2_check(model: nn.Module) -> str | None:
    reasons = [
        module_reason(model, "time_caption_embed", Lumina2CombinedTimestepCaptionEmbedding),
        module_reason(model, "norm_out", LuminaLayerNormContinuous),
        *(blocks_reason(model, name, Lumina2TransformerBlock, {"norm1": LuminaRMSNormZero}) for name in _MODULATED),
    ]
    return next((r for r in reasons if r is not None), None)


def _lumina2_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # Lumina2CombinedTimestepCaptionEmbedding.forward (time half), LuminaRMSNormZero.forward
    # (`linear(silu(emb))`) and LuminaLayerNormContinuous.forward (`linear_1(silu(c).to(x.dtype))`).
    embed = model.time_caption_embed
    t_proj = embed.time_proj(cond.timestep).type_as(dtype_stand_in(cond.hidden_dtype, cond.timestep.device))
    temb = embed.timestep_embedder(t_proj)
    out: dict[str, Any] = {_TEMB: temb}
    for name in _MODULATED:
        for i, blk in enumerate(getattr(model, name)):
            out[f"{name}.{i}.norm1.linear"] = zero_linear(blk.norm1, temb)
    norm_out = model.norm_out  # its projection is named `linear_1`, hence not `continuous_linear`
    out["norm_out.linear_1"] = norm_out.linear_1(norm_out.silu(temb).to(cond.hidden_dtype))
    return out


FAMILY = Family(
    name="lumina2",
    model_class=Lumina2Transformer2DModel,
    block_lists=_MODULATED,
    model_sites=(_TEMB, "norm_out.linear_1"),
    block_sites=_lumina2_block_sites,
    conditioning=(),
    lora_scale_kwarg="attention_kwargs",
    compute=_lumina2_compute,
    check=_lumina2_check,
)
