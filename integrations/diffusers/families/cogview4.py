"""**CogView4** (``CogView4Transformer2DModel``, diffusers ``transformer_cogview4.py``):
``temb = silu(time_condition_embed(t, original_size, target_size, crop_coords, latent dtype))``
(SDXL-style size conditions, keyed); every ``CogView4TransformerBlock`` runs ``norm1.linear``
(``CogView4AdaLayerNormZero``, 12·D, no activation of its own) and the output ``norm_out.linear``
(``CogView4AdaLayerNormContinuous``, 2·D, ``linear(temb.to(x.dtype))``).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn

from diffusers import CogView4Transformer2DModel
from diffusers.models.embeddings import CogView3CombinedTimestepSizeEmbeddings
from diffusers.models.transformers.transformer_cogview4 import (
    CogView4AdaLayerNormContinuous,
    CogView4AdaLayerNormZero,
    CogView4TransformerBlock,
)

from .base import CallConditioning, Family
from .patterns import blocks_reason, module_reason

__all__ = ["FAMILY"]

_CONDITIONS = ("original_size", "target_size", "crop_coords")


def _cogview4_block_sites(block: nn.Module) -> tuple[str, ...]:
    return ("norm1.linear",)


def _cogview4_check(model: nn.Module) -> str | None:
    reasons = [
        module_reason(model, "time_condition_embed", CogView3CombinedTimestepSizeEmbeddings),
        module_reason(model, "norm_out", CogView4AdaLayerNormContinuous),
        blocks_reason(model, "transformer_blocks", CogView4TransformerBlock, {"norm1": CogView4AdaLayerNormZero}),
    ]
    return next((r for r in reasons if r is not None), None)


def _cogview4_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # CogView4Transformer2DModel.forward step 2 and the two norms' `self.linear` calls.
    hd = cond.hidden_dtype
    v = cond.values
    raw = model.time_condition_embed(cond.timestep, v["original_size"], v["target_size"], v["crop_coords"], hd)
    temb = F.silu(raw)
    out: dict[str, Any] = {"time_condition_embed": raw}
    for i, blk in enumerate(model.transformer_blocks):
        out[f"transformer_blocks.{i}.norm1.linear"] = blk.norm1.linear(temb)
    out["norm_out.linear"] = model.norm_out.linear(temb.to(hd))
    return out


FAMILY = Family(
    name="cogview4",
    model_class=CogView4Transformer2DModel,
    block_lists=("transformer_blocks",),
    model_sites=("time_condition_embed", "norm_out.linear"),
    block_sites=_cogview4_block_sites,
    conditioning=_CONDITIONS,
    lora_scale_kwarg="attention_kwargs",
    compute=_cogview4_compute,
    check=_cogview4_check,
    required=_CONDITIONS,
)
