"""**Sana** (``SanaTransformer2DModel``): adaLN-single like PixArt (``time_embed`` returns
``(Linear(SiLU(e)), e)``; Sana-Sprint's ``SanaCombinedTimestepGuidanceEmbeddings`` adds a
guidance embedding to ``e``); blocks and ``norm_out`` only add learned tables.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers.models.normalization import AdaLayerNormSingle
from diffusers.models.transformers.sana_transformer import (
    SanaCombinedTimestepGuidanceEmbeddings,
    SanaModulatedNorm,
    SanaTransformer2DModel,
    SanaTransformerBlock,
)

from .base import CallConditioning, Family
from .patterns import no_block_sites

__all__ = ["FAMILY"]


def _sana_check(model: nn.Module) -> str | None:
    emb = model.time_embed
    if type(emb) is AdaLayerNormSingle:
        if emb.emb.use_additional_conditions:
            return "time_embed uses additional conditions, which SanaTransformer2DModel never passes"
    elif type(emb) is not SanaCombinedTimestepGuidanceEmbeddings:
        return f"time_embed is a {type(emb).__name__}"
    for i, blk in enumerate(model.transformer_blocks):
        if type(blk) is not SanaTransformerBlock:
            return f"transformer_blocks.{i} is a {type(blk).__name__}, expected SanaTransformerBlock"
    if type(model.norm_out) is not SanaModulatedNorm:
        return "norm_out is not a SanaModulatedNorm"
    return None


def _sana_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # SanaTransformer2DModel.forward: the same two call forms of `time_embed`.
    guidance = cond.values["guidance"]
    if guidance is not None:
        out = model.time_embed(cond.timestep, guidance=guidance, hidden_dtype=cond.hidden_dtype)
    else:
        out = model.time_embed(cond.timestep, batch_size=cond.values["batch_size"], hidden_dtype=cond.hidden_dtype)
    return {"time_embed": tuple(out)}


FAMILY = Family(
    name="sana",
    model_class=SanaTransformer2DModel,
    block_lists=("transformer_blocks",),
    model_sites=("time_embed",),
    block_sites=no_block_sites,
    conditioning=("guidance", "batch_size"),
    lora_scale_kwarg="attention_kwargs",
    compute=_sana_compute,
    check=_sana_check,
)
