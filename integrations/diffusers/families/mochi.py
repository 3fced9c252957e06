"""**Mochi 1** (``MochiTransformer3DModel``; Genmo, "Mochi 1" asymmetric DiT): the conditioning
``c = timestep_embedder(t) + pooler(encoder_hidden_states, encoder_attention_mask)`` includes an
attention pool over the *prompt tokens*, so every modulator depends on the prompt: the key holds
the full ``encoder_hidden_states`` and ``encoder_attention_mask`` tensors (exact bits; the
prompt is constant over a render, so steps of a second render with the same prompt hit, but the
key costs one host copy of the prompt embeddings per call). Sites: the two embedders, each
block's ``norm1.linear`` (4·D) and ``norm1_context.linear`` (``MochiRMSNormZero``) or, in the
last, context-pre-only block, ``norm1_context.linear_1`` (``MochiLayerNormContinuous``), and
``norm_out.linear`` (2·D).

Source: diffusers 0.42.1 ``models/transformers/transformer_mochi.py`` and
``MochiCombinedTimestepCaptionEmbedding`` in ``models/embeddings.py``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import MochiTransformer3DModel
from diffusers.models.embeddings import MochiCombinedTimestepCaptionEmbedding
from diffusers.models.normalization import AdaLayerNormContinuous
from diffusers.models.transformers.transformer_mochi import (
    MochiLayerNormContinuous,
    MochiRMSNormZero,
    MochiTransformerBlock,
)

from .base import CallConditioning, Family
from .patterns import continuous_linear, zero_linear

__all__ = ["FAMILY"]


def _mochi_block_sites(block: nn.Module) -> tuple[str, ...]:
    if block.context_pre_only:
        return ("norm1.linear", "norm1_context.linear_1")
    return ("norm1.linear", "norm1_context.linear")


def _mochi_check(model: nn.Module) -> str | None:
    if type(model.time_embed) is not MochiCombinedTimestepCaptionEmbedding:
        return f"time_embed is a {type(model.time_embed).__name__}, expected MochiCombinedTimestepCaptionEmbedding"
    for i, blk in enumerate(model.transformer_blocks):
        if type(blk) is not MochiTransformerBlock or type(blk.norm1) is not MochiRMSNormZero:
            return f"transformer_blocks.{i} is not a MochiTransformerBlock with MochiRMSNormZero"
        want = MochiLayerNormContinuous if blk.context_pre_only else MochiRMSNormZero
        if type(blk.norm1_context) is not want:
            return f"transformer_blocks.{i}.norm1_context is a {type(blk.norm1_context).__name__}, expected {want.__name__}"
    if type(model.norm_out) is not AdaLayerNormContinuous:
        return "norm_out is not an AdaLayerNormContinuous"
    return None


def _mochi_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # MochiCombinedTimestepCaptionEmbedding.forward with hidden_dtype = hidden_states.dtype, then
    # the norms' `linear(silu(temb))`, MochiLayerNormContinuous's `linear_1(silu(c).to(x.dtype))`
    # (x: the prompt stream after caption_proj) and AdaLayerNormContinuous's for norm_out.
    emb = model.time_embed
    ehs, mask = cond.values["encoder_hidden_states"], cond.values["encoder_attention_mask"]
    time_emb = emb.timestep_embedder(emb.time_proj(cond.timestep).to(dtype=cond.hidden_dtype))
    pooled = emb.pooler(ehs, mask)
    temb = time_emb + pooled
    out: dict[str, Any] = {"time_embed.timestep_embedder": time_emb, "time_embed.pooler": pooled}
    text_dtype = emb.caption_proj.weight.dtype if ehs is None else ehs.dtype
    for i, blk in enumerate(model.transformer_blocks):
        out[f"transformer_blocks.{i}.norm1.linear"] = zero_linear(blk.norm1, temb)
        if blk.context_pre_only:
            ctx = blk.norm1_context
            out[f"transformer_blocks.{i}.norm1_context.linear_1"] = ctx.linear_1(ctx.silu(temb).to(text_dtype))
        else:
            out[f"transformer_blocks.{i}.norm1_context.linear"] = zero_linear(blk.norm1_context, temb)
    out["norm_out.linear"] = continuous_linear(model.norm_out, temb, cond.hidden_dtype)
    return out


FAMILY = Family(
    name="mochi",
    model_class=MochiTransformer3DModel,
    block_lists=("transformer_blocks",),
    model_sites=("time_embed.timestep_embedder", "time_embed.pooler", "norm_out.linear"),
    block_sites=_mochi_block_sites,
    conditioning=("encoder_hidden_states", "encoder_attention_mask"),
    lora_scale_kwarg="attention_kwargs",
    compute=_mochi_compute,
    check=_mochi_check,
)
