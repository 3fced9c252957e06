"""**Sana-Video** (``SanaVideoTransformer3DModel``; arXiv 2509.24695): adaLN-single like Sana —
``time_embed(t.flatten())`` (``AdaLayerNormSingle``, or ``SanaCombinedTimestepGuidanceEmbeddings``
with ``guidance``) returns ``(Linear(SiLU(e)), e)``; blocks and ``norm_out`` only add learned
tables. Keyed on the timestep (whole tensor), ``guidance`` and the batch size.

Source: diffusers 0.42.1 ``models/transformers/transformer_sana_video.py``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import SanaVideoTransformer3DModel
from diffusers.models.normalization import AdaLayerNormSingle
from diffusers.models.transformers.transformer_sana_video import (
    SanaCombinedTimestepGuidanceEmbeddings,
    SanaModulatedNorm,
    SanaVideoTransformerBlock,
)

from .base import CallConditioning, Family
from .patterns import no_block_sites

__all__ = ["FAMILY"]


def _sv_check(model: nn.Module) -> str | None:
    emb = model.time_embed
    if type(emb) is AdaLayerNormSingle:
        if emb.emb.use_additional_conditions:
            return "time_embed uses additional conditions, which SanaVideoTransformer3DModel never passes"
    elif type(emb) is not SanaCombinedTimestepGuidanceEmbeddings:
        return f"time_embed is a {type(emb).__name__}"
    for i, blk in enumerate(model.transformer_blocks):
        if type(blk) is not SanaVideoTransformerBlock:
            return f"transformer_blocks.{i} is a {type(blk).__name__}, expected SanaVideoTransformerBlock"
    if type(model.norm_out) is not SanaModulatedNorm:
        return "norm_out is not a SanaModulatedNorm"
    return None


def _sv_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # SanaVideoTransformer3DModel.forward: the same two call forms of `time_embed`, on
    # `timestep.flatten()`; hidden dtype = the patch embedding's output dtype (the input's).
    guidance = cond.values["guidance"]
    t = cond.timestep.flatten()
    if guidance is not None:
        out = model.time_embed(t, guidance=guidance, hidden_dtype=cond.hidden_dtype)
    else:
        out = model.time_embed(t, batch_size=cond.values["batch_size"], hidden_dtype=cond.hidden_dtype)
    return {"time_embed": tuple(out)}


FAMILY = Family(
    name="sana_video",
    model_class=SanaVideoTransformer3DModel,
    block_lists=("transformer_blocks",),
    model_sites=("time_embed",),
    block_sites=no_block_sites,
    conditioning=("guidance", "batch_size"),
    lora_scale_kwarg="attention_kwargs",
    compute=_sv_compute,
    check=_sv_check,
)
