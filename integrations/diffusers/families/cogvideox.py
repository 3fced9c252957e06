"""**CogVideoX** (``CogVideoXTransformer3DModel``; arXiv 2408.06072 §2.2, expert adaLN):
``emb = time_embedding(time_proj(t).to(hidden dtype), timestep_cond)`` (+
``ofs_embedding(ofs_proj(ofs))`` for CogVideoX 1.5 I2V); every ``CogVideoXBlock`` runs
``norm1.linear`` and ``norm2.linear`` (``CogVideoXLayerNormZero``: one 6·D projection whose
halves modulate the video and the text tokens); ``norm_out.linear`` (``AdaLayerNorm``, 2·D).
Keyed on the timestep, ``timestep_cond`` and ``ofs``; the prompt is not part of any modulator.

Source: diffusers 0.42.1 ``models/transformers/cogvideox_transformer_3d.py``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import CogVideoXTransformer3DModel
from diffusers.models.embeddings import TimestepEmbedding
from diffusers.models.normalization import AdaLayerNorm, CogVideoXLayerNormZero
from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock

from .base import CallConditioning, Family
from .patterns import zero_linear

__all__ = ["FAMILY"]


def _model_sites(model: nn.Module) -> tuple[str, ...]:
    if model.ofs_embedding is not None:
        return ("time_embedding", "ofs_embedding", "norm_out.linear")
    return ("time_embedding", "norm_out.linear")


def _cog_block_sites(block: nn.Module) -> tuple[str, ...]:
    return ("norm1.linear", "norm2.linear")


def check_cogvideox_layout(model: nn.Module, block_cls: type, norm_cls: type = CogVideoXLayerNormZero) -> str | None:
    if type(model.time_embedding) is not TimestepEmbedding:
        return f"time_embedding is a {type(model.time_embedding).__name__}, expected TimestepEmbedding"
    for i, blk in enumerate(model.transformer_blocks):
        if type(blk) is not block_cls:
            return f"transformer_blocks.{i} is a {type(blk).__name__}, expected {block_cls.__name__}"
        if type(blk.norm1) is not norm_cls or type(blk.norm2) is not norm_cls:
            return f"transformer_blocks.{i} norms are not {norm_cls.__name__}"
    if type(model.norm_out) is not AdaLayerNorm or model.norm_out.emb is not None:
        return "norm_out is not an AdaLayerNorm without its own embedding"
    return None


def compute_cogvideox(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    """The sites of ``CogVideoXTransformer3DModel.forward`` (also ConsisID's, which copies it)."""
    # "1. Time embedding" of the forward, then the norms' `linear(silu(emb))`.
    hd = cond.hidden_dtype
    t_emb = model.time_proj(cond.timestep).to(dtype=hd)
    time_emb = model.time_embedding(t_emb, cond.values["timestep_cond"])
    out: dict[str, Any] = {"time_embedding": time_emb}
    emb = time_emb
    if getattr(model, "ofs_embedding", None) is not None:
        ofs_emb = model.ofs_embedding(model.ofs_proj(cond.values["ofs"]).to(dtype=hd))
        out["ofs_embedding"] = ofs_emb
        emb = emb + ofs_emb
    for i, blk in enumerate(model.transformer_blocks):
        out[f"transformer_blocks.{i}.norm1.linear"] = zero_linear(blk.norm1, emb)
        out[f"transformer_blocks.{i}.norm2.linear"] = zero_linear(blk.norm2, emb)
    out["norm_out.linear"] = zero_linear(model.norm_out, emb)
    return out


def _cog_check(model: nn.Module) -> str | None:
    return check_cogvideox_layout(model, CogVideoXBlock)


def _cog_adjust_values(model: nn.Module, values: dict[str, Any]) -> None:
    if model.ofs_embedding is None:
        values["ofs"] = None  # ignored by the model: must not split the key


FAMILY = Family(
    name="cogvideox",
    model_class=CogVideoXTransformer3DModel,
    block_lists=("transformer_blocks",),
    model_sites=("time_embedding", "norm_out.linear"),
    block_sites=_cog_block_sites,
    conditioning=("timestep_cond", "ofs"),
    lora_scale_kwarg="attention_kwargs",
    compute=compute_cogvideox,
    check=_cog_check,
    adjust_values=_cog_adjust_values,
    model_sites_of=_model_sites,
)
