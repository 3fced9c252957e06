"""**Sana** (``SanaTransformer2DModel``): adaLN-single like PixArt (``time_embed`` returns
``(Linear(SiLU(e)), e)``; Sana-Sprint's ``SanaCombinedTimestepGuidanceEmbeddings`` adds a
guidance embedding to ``e``); blocks and ``norm_out`` only add learned tables.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers.models.transformers.sana_transformer import (
    SanaCombinedTimestepGuidanceEmbeddings,
    SanaModulatedNorm,
    SanaTransformer2DModel,
    SanaTransformerBlock,
)

from .base import CallConditioning, Family
from .patterns import (
    adaln_single_time_embed,
    adaln_single_time_embed_reason,
    blocks_reason,
    module_reason,
    no_block_sites,
)

__all__ = ["FAMILY"]


def _sana_check(model: nn.Module) -> str | None:
    return (
        adaln_single_time_embed_reason(model, SanaCombinedTimestepGuidanceEmbeddings)
        or blocks_reason(model, "transformer_blocks", SanaTransformerBlock)
        or module_reason(model, "norm_out", SanaModulatedNorm)
    )


def _sana_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # SanaTransformer2DModel.forward: the two call forms of `time_embed`.
    v = cond.values
    return {"time_embed": adaln_single_time_embed(model, cond.timestep, v["guidance"], v["batch_size"], cond.hidden_dtype)}


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
