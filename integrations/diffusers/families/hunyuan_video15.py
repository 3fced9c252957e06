"""**HunyuanVideo 1.5** (``HunyuanVideo15Transformer3DModel``; arXiv 2511.18870): dual-stream
blocks only. ``time_embed(t[, timestep_r])`` depends on the timestep alone (and, for the
MeanFlow super-resolution variant, on the reference timestep ``timestep_r``), so entries are
shared by every prompt, image condition and CFG branch. Blocks: ``norm1.linear`` +
``norm1_context.linear`` (6·D each, ``AdaLayerNormZero``); ``norm_out.linear`` (2·D). The
text-token refiner (``context_embedder``) embeds the timestep with its own MLP,
``context_embedder.time_text_embed.timestep_embedder`` (a site, cast to the prompt tokens' dtype
first, so the key also holds the dtype of ``encoder_hidden_states``).

Not sites (they run every call, exactly as without the cache): the rest of the refiner — its
conditioning adds ``text_embedder(mean of the prompt tokens)`` to that timestep embedding, so its
adaLN gates depend on the prompt.

Source: diffusers 0.42.1 ``models/transformers/transformer_hunyuan_video15.py``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import HunyuanVideo15Transformer3DModel
from diffusers.models.embeddings import CombinedTimestepTextProjEmbeddings
from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero
from diffusers.models.transformers.transformer_hunyuan_video15 import (
    HunyuanVideo15TimeEmbedding,
    HunyuanVideo15TokenRefiner,
    HunyuanVideo15TransformerBlock,
)

from .base import CallConditioning, Family
from .patterns import continuous_linear, refiner_timestep_embedding, zero_linear

__all__ = ["FAMILY"]

#: The token refiner's timestep MLP (the refiner itself reads the prompt tokens).
REFINER_SITE = "context_embedder.time_text_embed.timestep_embedder"


def _hv15_block_sites(block: nn.Module) -> tuple[str, ...]:
    return ("norm1.linear", "norm1_context.linear")


def _hv15_check(model: nn.Module) -> str | None:
    if type(model.time_embed) is not HunyuanVideo15TimeEmbedding:
        return f"time_embed is a {type(model.time_embed).__name__}, expected HunyuanVideo15TimeEmbedding"
    if type(model.context_embedder) is not HunyuanVideo15TokenRefiner or type(
        model.context_embedder.time_text_embed
    ) is not CombinedTimestepTextProjEmbeddings:
        return "context_embedder is not a HunyuanVideo15TokenRefiner with CombinedTimestepTextProjEmbeddings"
    for i, blk in enumerate(model.transformer_blocks):
        if type(blk) is not HunyuanVideo15TransformerBlock:
            return f"transformer_blocks.{i} is a {type(blk).__name__}, expected HunyuanVideo15TransformerBlock"
        if type(blk.norm1) is not AdaLayerNormZero or type(blk.norm1_context) is not AdaLayerNormZero:
            return f"transformer_blocks.{i} norms are not AdaLayerNormZero"
    if type(model.norm_out) is not AdaLayerNormContinuous:
        return "norm_out is not an AdaLayerNormContinuous"
    return None


def _hv15_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # HunyuanVideo15Transformer3DModel.forward: `temb = time_embed(timestep, timestep_r=timestep_r)`.
    temb = model.time_embed(cond.timestep, timestep_r=cond.values["timestep_r"])
    out: dict[str, Any] = {"time_embed": temb}
    for i, blk in enumerate(model.transformer_blocks):
        out[f"transformer_blocks.{i}.norm1.linear"] = zero_linear(blk.norm1, temb)
        out[f"transformer_blocks.{i}.norm1_context.linear"] = zero_linear(blk.norm1_context, temb)
    out["norm_out.linear"] = continuous_linear(model.norm_out, temb, cond.hidden_dtype)
    # `context_embedder(encoder_hidden_states, timestep, mask)`, after time_embed in forward.
    out[REFINER_SITE] = refiner_timestep_embedding(
        model.context_embedder, cond.timestep, cond.values["encoder_hidden_states_dtype"])
    return out


FAMILY = Family(
    name="hunyuan_video15",
    model_class=HunyuanVideo15Transformer3DModel,
    block_lists=("transformer_blocks",),
    model_sites=("time_embed", REFINER_SITE, "norm_out.linear"),
    block_sites=_hv15_block_sites,
    conditioning=("timestep_r",),
    lora_scale_kwarg="attention_kwargs",
    compute=_hv15_compute,
    check=_hv15_check,
    dtype_args=("encoder_hidden_states",),
)
