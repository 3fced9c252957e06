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
from diffusers.models.transformers.transformer_sana_video import (
    SanaCombinedTimestepGuidanceEmbeddings,
    SanaModulatedNorm,
    SanaVideoTransformerBlock,
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


def _sv_check(model: nn.Module) -> str | None:
    return (
        adaln_single_time_embed_reason(model, SanaCombinedTimestepGuidanceEmbeddings)
        or blocks_reason(model, "transformer_blocks", SanaVideoTransformerBlock)
        or module_reason(model, "norm_out", SanaModulatedNorm)
    )


def _sv_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # SanaVideoTransformer3DModel.forward: the same two call forms of `time_embed`, on
    # `timestep.flatten()`; hidden dtype = the patch embedding's output dtype (the input's).
    v = cond.values
    t = cond.timestep.flatten()
    return {"time_embed": adaln_single_time_embed(model, t, v["guidance"], v["batch_size"], cond.hidden_dtype)}


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
