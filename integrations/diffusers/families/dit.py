"""**DiT** (``DiTTransformer2DModel``): every ``BasicTransformerBlock(norm_type="ada_norm_zero")``
owns an embedder ``norm1.emb = CombinedTimestepLabelEmbeddings`` (t, class → c) and a
``norm1.linear`` (SiLU(c) → 6·D; ``AdaLayerNormZero``, arXiv 2212.09748 §3.2 eq. for adaLN-Zero).
The model output recomputes ``transformer_blocks[0].norm1.emb`` and applies ``proj_out_1``.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn

from diffusers import DiTTransformer2DModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.normalization import AdaLayerNormZero

from .base import CallConditioning, Family

__all__ = ["FAMILY"]


def _dit_block_sites(block: nn.Module) -> tuple[str, ...]:
    return ("norm1.emb", "norm1.linear")


def _dit_check(model: nn.Module) -> str | None:
    for i, blk in enumerate(model.transformer_blocks):
        if type(blk) is not BasicTransformerBlock or blk.norm_type != "ada_norm_zero":
            return f"transformer_blocks.{i} is not a BasicTransformerBlock(norm_type='ada_norm_zero')"
        if type(blk.norm1) is not AdaLayerNormZero or blk.norm1.emb is None:
            return f"transformer_blocks.{i}.norm1 is not an AdaLayerNormZero with its own embedder"
    return None


def _dit_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # Mirrors BasicTransformerBlock.forward (ada_norm_zero) -> AdaLayerNormZero.forward and
    # DiTTransformer2DModel.forward's output stage, op for op, so the tensors are bit-identical.
    out: dict[str, Any] = {}
    labels = cond.values["class_labels"]
    for i, blk in enumerate(model.transformer_blocks):
        norm = blk.norm1
        c = norm.emb(cond.timestep, labels, hidden_dtype=cond.hidden_dtype)
        out[f"transformer_blocks.{i}.norm1.emb"] = c
        out[f"transformer_blocks.{i}.norm1.linear"] = norm.linear(norm.silu(c))
    c0 = out["transformer_blocks.0.norm1.emb"]
    out["proj_out_1"] = model.proj_out_1(F.silu(c0))
    return out


FAMILY = Family(
    name="dit",
    model_class=DiTTransformer2DModel,
    block_lists=("transformer_blocks",),
    model_sites=("proj_out_1",),
    block_sites=_dit_block_sites,
    conditioning=("class_labels",),
    lora_scale_kwarg=None,
    compute=_dit_compute,
    check=_dit_check,
)
