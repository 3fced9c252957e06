"""**CogView3-Plus** (``CogView3PlusTransformer2DModel``, diffusers ``transformer_cogview3plus.py``;
arXiv 2403.05121): ``emb = time_condition_embed(t, original_size, target_size, crop_coords, latent
dtype)`` (SDXL-style size conditions, keyed); every block runs ``norm1.linear``
(``CogView3PlusAdaLayerNormZeroTextImage``: ``linear(silu(emb))``, 12·D) and the output
``norm_out.linear`` (``AdaLayerNormContinuous``, 2·D).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import CogView3PlusTransformer2DModel
from diffusers.models.embeddings import CogView3CombinedTimestepSizeEmbeddings
from diffusers.models.normalization import (
    AdaLayerNormContinuous,
    CogView3PlusAdaLayerNormZeroTextImage,
)
from diffusers.models.transformers.transformer_cogview3plus import CogView3PlusTransformerBlock

from .base import CallConditioning, Family
from .patterns import blocks_reason, continuous_linear, module_reason, zero_linear

__all__ = ["FAMILY"]

_CONDITIONS = ("original_size", "target_size", "crop_coords")


def _block_sites(block: nn.Module) -> tuple[str, ...]:
    return ("norm1.linear",)


def _check(model: nn.Module) -> str | None:
    reasons = [
        module_reason(model, "time_condition_embed", CogView3CombinedTimestepSizeEmbeddings),
        module_reason(model, "norm_out", AdaLayerNormContinuous),
        blocks_reason(model, "transformer_blocks", CogView3PlusTransformerBlock,
                      {"norm1": CogView3PlusAdaLayerNormZeroTextImage}),
    ]
    return next((r for r in reasons if r is not None), None)


def _compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # CogView3PlusTransformer2DModel.forward: one `emb` for every block and norm_out.
    hd = cond.hidden_dtype
    v = cond.values
    emb = model.time_condition_embed(cond.timestep, v["original_size"], v["target_size"], v["crop_coords"], hd)
    out: dict[str, Any] = {"time_condition_embed": emb}
    for i, blk in enumerate(model.transformer_blocks):
        out[f"transformer_blocks.{i}.norm1.linear"] = zero_linear(blk.norm1, emb)
    out["norm_out.linear"] = continuous_linear(model.norm_out, emb, hd)
    return out


FAMILY = Family(
    name="cogview3plus",
    model_class=CogView3PlusTransformer2DModel,
    block_lists=("transformer_blocks",),
    model_sites=("time_condition_embed", "norm_out.linear"),
    block_sites=_block_sites,
    conditioning=_CONDITIONS,
    lora_scale_kwarg=None,
    compute=_compute,
    check=_check,
    required=_CONDITIONS,
)
