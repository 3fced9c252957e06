"""**MiniMax-H3** (``MiniMaxH3Transformer3DModel``): one packed video+audio+text sequence. The
modulators depend on the timesteps alone: ``time_embedder(time_proj(t))`` (one row per *distinct*
noise level in ``timestep``), then per block ``adaln_proj`` (one Linear to 6·D × 3 modalities,
whose output the block indexes per row with ``timestep_indices * 3 + token_tags``) and the
output ``norm_out.linear`` (2·D). The row indices only *select* rows of the modulator tables, so
they are not part of the key; entries are shared by every prompt, layout and CFG branch.
The ``adaln_proj`` linears are about 39 % of the 33 B parameters, which is what modulator
offload (``offload_weights=True`` + ``precompute``) frees.

Source: diffusers 0.42.1 ``models/transformers/transformer_minimax_h3.py``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import MiniMaxH3Transformer3DModel
from diffusers.models.embeddings import TimestepEmbedding
from diffusers.models.modeling_utils import get_parameter_dtype
from diffusers.models.transformers.transformer_minimax_h3 import (
    MiniMaxH3AdaLayerNormModulation,
    MiniMaxH3AdaLayerNormOut,
    MiniMaxH3TransformerBlock,
)

from .base import CallConditioning, Family

__all__ = ["FAMILY"]


def _h3_block_sites(block: nn.Module) -> tuple[str, ...]:
    return ("adaln_proj",)


def _h3_check(model: nn.Module) -> str | None:
    if type(model.time_embedder) is not TimestepEmbedding:
        return f"time_embedder is a {type(model.time_embedder).__name__}, expected TimestepEmbedding"
    for i, blk in enumerate(model.transformer_blocks):
        if type(blk) is not MiniMaxH3TransformerBlock or type(blk.adaln_proj) is not MiniMaxH3AdaLayerNormModulation:
            return f"transformer_blocks.{i} is not a MiniMaxH3TransformerBlock with MiniMaxH3AdaLayerNormModulation"
    if type(model.norm_out) is not MiniMaxH3AdaLayerNormOut:
        return f"norm_out is a {type(model.norm_out).__name__}, expected MiniMaxH3AdaLayerNormOut"
    return None


def _h3_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # MiniMaxH3Transformer3DModel.forward step 2, each block's `adaln_proj(temb)` and
    # MiniMaxH3AdaLayerNormOut's `linear(silu(temb).to(dtype of linear))`.
    temb = model.time_proj(cond.timestep)
    temb = model.time_embedder(temb.to(get_parameter_dtype(model.time_embedder)))
    out: dict[str, Any] = {"time_embedder": temb}
    for i, blk in enumerate(model.transformer_blocks):
        out[f"transformer_blocks.{i}.adaln_proj"] = blk.adaln_proj(temb)
    lin = model.norm_out.linear
    out["norm_out.linear"] = lin(nn.functional.silu(temb).to(get_parameter_dtype(lin)))
    return out


FAMILY = Family(
    name="minimax_h3",
    model_class=MiniMaxH3Transformer3DModel,
    block_lists=("transformer_blocks",),
    model_sites=("time_embedder", "norm_out.linear"),
    block_sites=_h3_block_sites,
    conditioning=(),
    lora_scale_kwarg="attention_kwargs",
    compute=_h3_compute,
    check=_h3_check,
)
