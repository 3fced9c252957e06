"""**LTX-Video** (``LTXVideoTransformer3DModel``; arXiv 2501.00103): adaLN-single like PixArt —
``time_embed(t.flatten())`` returns ``(Linear(SiLU(e)), e)`` once; every block adds its learned
``scale_shift_table`` to the first, the output stage adds the model's table to the second.

Per-token timesteps (the image-to-video and condition pipelines pass ``(batch, tokens)`` with
conditioning tokens at lower noise) are keyed as the whole tensor (shape and bits) and embedded
with the same ``flatten`` as the model, so they are exact too.

Source: diffusers 0.42.1 ``models/transformers/transformer_ltx.py``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import LTXVideoTransformer3DModel
from diffusers.models.normalization import AdaLayerNormSingle
from diffusers.models.transformers.transformer_ltx import LTXVideoTransformerBlock

from .base import CallConditioning, Family
from .patterns import no_block_sites

__all__ = ["FAMILY"]


def _ltx_check(model: nn.Module) -> str | None:
    if type(model.time_embed) is not AdaLayerNormSingle:
        return f"time_embed is a {type(model.time_embed).__name__}, expected AdaLayerNormSingle"
    if model.time_embed.emb.use_additional_conditions:
        return "time_embed uses additional conditions, which LTXVideoTransformer3DModel never passes"
    for i, blk in enumerate(model.transformer_blocks):
        if type(blk) is not LTXVideoTransformerBlock:
            return f"transformer_blocks.{i} is a {type(blk).__name__}, expected LTXVideoTransformerBlock"
    return None


def _ltx_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # LTXVideoTransformer3DModel.forward: `time_embed(timestep.flatten(), batch_size=...,
    # hidden_dtype=hidden_states.dtype)` (proj_in keeps the input dtype).
    out = model.time_embed(
        cond.timestep.flatten(), batch_size=cond.values["batch_size"], hidden_dtype=cond.hidden_dtype
    )
    return {"time_embed": tuple(out)}


FAMILY = Family(
    name="ltx",
    model_class=LTXVideoTransformer3DModel,
    block_lists=("transformer_blocks",),
    model_sites=("time_embed",),
    block_sites=no_block_sites,
    conditioning=("batch_size",),
    lora_scale_kwarg="attention_kwargs",
    compute=_ltx_compute,
    check=_ltx_check,
)
