"""**HunyuanVideo** (``HunyuanVideoTransformer3DModel``; arXiv 2412.03603 §4.1): FLUX-like dual- and
single-stream blocks. ``time_text_embed(t, pooled, guidance)`` sums the shared conditioning
``c = timestep_embedder(t) + guidance_embedder(guidance) + text_embedder(pooled)`` (the three
embedders are the sites; the sum is recomputed each call); dual blocks ``norm1.linear`` +
``norm1_context.linear`` (6·D each), single blocks ``norm.linear`` (3·D), ``norm_out.linear``
(2·D). The text-token refiner (``context_embedder``) embeds the timestep with its own MLP,
``context_embedder.time_text_embed.timestep_embedder`` (a site, cast to the prompt tokens'
dtype first). Keyed on the timestep, ``pooled_projections``, ``guidance`` and the dtype of
``encoder_hidden_states``.

Not sites (they run every call, exactly as without the cache): the rest of the refiner — its
conditioning adds ``text_embedder(mean of the prompt tokens)`` to that timestep embedding, so its
adaLN gates depend on the prompt.

Refused: ``image_condition_type="token_replace"`` (HunyuanVideo-I2V). Its blocks call the same
``norm1.linear`` twice per forward (for the timestep embedding and for a t = 0
"token-replace" embedding); one slot per module cannot replay two different outputs.

Source: diffusers 0.42.1 ``models/transformers/transformer_hunyuan_video.py``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import HunyuanVideoTransformer3DModel
from diffusers.models.embeddings import CombinedTimestepTextProjEmbeddings
from diffusers.models.normalization import (
    AdaLayerNormContinuous,
    AdaLayerNormZero,
    AdaLayerNormZeroSingle,
)
from diffusers.models.transformers.transformer_hunyuan_video import (
    HunyuanVideoConditionEmbedding,
    HunyuanVideoSingleTransformerBlock,
    HunyuanVideoTokenRefiner,
    HunyuanVideoTransformerBlock,
)

from .base import CallConditioning, Family
from .patterns import continuous_linear, refiner_timestep_embedding, zero_linear

__all__ = ["FAMILY"]


#: The token refiner's timestep MLP (the refiner itself reads the prompt tokens).
REFINER_SITE = "context_embedder.time_text_embed.timestep_embedder"


def model_sites_of(model: nn.Module) -> tuple[str, ...]:
    embedders = ("time_text_embed.timestep_embedder", "time_text_embed.text_embedder")
    if model.time_text_embed.guidance_embedder is not None:
        embedders += ("time_text_embed.guidance_embedder",)
    return (*embedders, REFINER_SITE, "norm_out.linear")


def block_sites(block: nn.Module) -> tuple[str, ...]:
    if type(block) is HunyuanVideoTransformerBlock:
        return ("norm1.linear", "norm1_context.linear")
    return ("norm.linear",)


def check_hunyuan_video(model: nn.Module) -> str | None:
    if model.config.image_condition_type == "token_replace":
        return (
            "image_condition_type='token_replace' calls each block's norm1.linear twice per forward "
            "(timestep and token-replace embeddings); a per-module slot cannot replay both"
        )
    if type(model.time_text_embed) is not HunyuanVideoConditionEmbedding:
        return f"time_text_embed is a {type(model.time_text_embed).__name__}, expected HunyuanVideoConditionEmbedding"
    if type(model.context_embedder) is not HunyuanVideoTokenRefiner or type(
        model.context_embedder.time_text_embed
    ) is not CombinedTimestepTextProjEmbeddings:
        return "context_embedder is not a HunyuanVideoTokenRefiner with CombinedTimestepTextProjEmbeddings"
    for i, blk in enumerate(model.transformer_blocks):
        if type(blk) is not HunyuanVideoTransformerBlock:
            return f"transformer_blocks.{i} is a {type(blk).__name__}, expected HunyuanVideoTransformerBlock"
        if type(blk.norm1) is not AdaLayerNormZero or type(blk.norm1_context) is not AdaLayerNormZero:
            return f"transformer_blocks.{i} norms are not AdaLayerNormZero"
    for i, blk in enumerate(model.single_transformer_blocks):
        if type(blk) is not HunyuanVideoSingleTransformerBlock or type(blk.norm) is not AdaLayerNormZeroSingle:
            return f"single_transformer_blocks.{i} is not a HunyuanVideoSingleTransformerBlock with AdaLayerNormZeroSingle"
    if type(model.norm_out) is not AdaLayerNormContinuous:
        return "norm_out is not an AdaLayerNormContinuous"
    return None


def compute_hunyuan_video(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # HunyuanVideoTransformer3DModel.forward: `temb, token_replace_emb = time_text_embed(t, pooled,
    # guidance)`; blocks call AdaLayerNormZero(-Single) with `emb=temb`; `norm_out(x, temb)`.
    # HunyuanVideoConditionEmbedding.forward (without token replace), with its three embedders as
    # the sites: its own output is a tuple holding None, which is not a replayable tensor.
    emb = model.time_text_embed
    pooled = cond.values["pooled_projections"]
    timesteps_emb = emb.timestep_embedder(emb.time_proj(cond.timestep).to(dtype=pooled.dtype))
    pooled_projections = emb.text_embedder(pooled)
    out: dict[str, Any] = {
        "time_text_embed.timestep_embedder": timesteps_emb,
        "time_text_embed.text_embedder": pooled_projections,
    }
    if emb.guidance_embedder is not None:
        guidance_emb = emb.guidance_embedder(emb.time_proj(cond.values["guidance"]).to(dtype=pooled.dtype))
        out["time_text_embed.guidance_embedder"] = guidance_emb
        temb = timesteps_emb + guidance_emb + pooled_projections
    else:
        temb = timesteps_emb + pooled_projections
    for i, blk in enumerate(model.transformer_blocks):
        out[f"transformer_blocks.{i}.norm1.linear"] = zero_linear(blk.norm1, temb)
        out[f"transformer_blocks.{i}.norm1_context.linear"] = zero_linear(blk.norm1_context, temb)
    for i, blk in enumerate(model.single_transformer_blocks):
        out[f"single_transformer_blocks.{i}.norm.linear"] = zero_linear(blk.norm, temb)
    out["norm_out.linear"] = continuous_linear(model.norm_out, temb, cond.hidden_dtype)
    # `context_embedder(encoder_hidden_states, timestep, mask)`, after time_text_embed in forward.
    out[REFINER_SITE] = refiner_timestep_embedding(
        model.context_embedder, cond.timestep, cond.values["encoder_hidden_states_dtype"])
    return out


def adjust_values(model: nn.Module, values: dict[str, Any]) -> None:
    if model.time_text_embed.guidance_embedder is None:
        values["guidance"] = None  # ignored by the model: must not split the key


FAMILY = Family(
    name="hunyuan_video",
    model_class=HunyuanVideoTransformer3DModel,
    block_lists=("transformer_blocks", "single_transformer_blocks"),
    model_sites=("time_text_embed.timestep_embedder", "time_text_embed.text_embedder", REFINER_SITE,
                 "norm_out.linear"),
    block_sites=block_sites,
    conditioning=("pooled_projections", "guidance"),
    lora_scale_kwarg="attention_kwargs",
    compute=compute_hunyuan_video,
    check=check_hunyuan_video,
    adjust_values=adjust_values,
    dtype_args=("encoder_hidden_states",),
    model_sites_of=model_sites_of,
)
