"""**HunyuanImage 2.1** (``HunyuanImageTransformer2DModel``, diffusers ``transformer_hunyuanimage.py``):
the FLUX.1 layout (:func:`.patterns.flux_style_values`) fed by
``temb = time_guidance_embed(t, guidance, timestep_r)`` (guidance-distilled and MeanFlow
variants: both keyed), plus the text-side *token refiner* inside ``context_embedder``: its
``time_text_embed(t, masked mean of the text tokens)`` and every refiner block's
``norm_out.linear`` (``HunyuanImageAdaNorm``: ``linear(silu(temb))``, 2·D gates). Those depend on
the text tokens, so ``encoder_hidden_states`` and ``encoder_attention_mask`` are keyed (fixed for
a render; CFG rows differ).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import HunyuanImageTransformer2DModel
from diffusers.models.embeddings import CombinedTimestepTextProjEmbeddings
from diffusers.models.transformers.transformer_hunyuanimage import (
    HunyuanImageAdaNorm,
    HunyuanImageCombinedTimeGuidanceEmbedding,
    HunyuanImageIndividualTokenRefinerBlock,
    HunyuanImageSingleTransformerBlock,
    HunyuanImageTokenRefiner,
    HunyuanImageTransformerBlock,
)

from .base import CallConditioning, Family
from .patterns import (
    blocks_reason,
    flux_style_block_sites,
    flux_style_check,
    flux_style_values,
    module_reason,
)

__all__ = ["FAMILY"]

_REFINER = "context_embedder.token_refiner.refiner_blocks"


def _refiner_sites(model: nn.Module) -> tuple[str, ...]:
    n = len(model.context_embedder.token_refiner.refiner_blocks)
    return ("context_embedder.time_text_embed", *(f"{_REFINER}.{i}.norm_out.linear" for i in range(n)))


def _check(model: nn.Module) -> str | None:
    reason = (
        module_reason(model, "time_guidance_embed", HunyuanImageCombinedTimeGuidanceEmbedding)
        or flux_style_check(model, HunyuanImageTransformerBlock, HunyuanImageSingleTransformerBlock)
        or module_reason(model, "context_embedder", HunyuanImageTokenRefiner)
        or module_reason(model, "context_embedder.time_text_embed", CombinedTimestepTextProjEmbeddings)
    )
    if reason is None:
        refiner = model.context_embedder.token_refiner
        reason = blocks_reason(refiner, "refiner_blocks", HunyuanImageIndividualTokenRefinerBlock,
                               {"norm_out": HunyuanImageAdaNorm})
        if reason is not None:
            reason = f"context_embedder.token_refiner.{reason}"
    return reason


def _compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # HunyuanImageTransformer2DModel.forward step 2 and HunyuanImageTokenRefiner.forward, op for op.
    v = cond.values
    t = cond.timestep
    temb = model.time_guidance_embed(t, guidance=v["guidance"], timestep_r=v["timestep_r"])
    out: dict[str, Any] = {"time_guidance_embed": temb, **flux_style_values(model, temb, cond.hidden_dtype)}
    text = v["encoder_hidden_states"]
    mask = v["encoder_attention_mask"].bool()
    mask_float = mask.float().unsqueeze(-1)
    pooled = ((text * mask_float).sum(dim=1) / mask_float.sum(dim=1)).to(text.dtype)
    refiner = model.context_embedder
    rtemb = refiner.time_text_embed(t, pooled)
    out["context_embedder.time_text_embed"] = rtemb
    for i, blk in enumerate(refiner.token_refiner.refiner_blocks):
        out[f"{_REFINER}.{i}.norm_out.linear"] = blk.norm_out.linear(blk.norm_out.nonlinearity(rtemb))
    return out


FAMILY = Family(
    name="hunyuan_image",
    model_class=HunyuanImageTransformer2DModel,
    block_lists=("transformer_blocks", "single_transformer_blocks"),
    model_sites=("time_guidance_embed", "norm_out.linear"),
    block_sites=flux_style_block_sites(HunyuanImageTransformerBlock),
    conditioning=("encoder_hidden_states", "encoder_attention_mask", "guidance", "timestep_r"),
    lora_scale_kwarg="attention_kwargs",
    compute=_compute,
    check=_check,
    required=("encoder_hidden_states", "encoder_attention_mask"),
    dynamic_model_sites=_refiner_sites,
)

