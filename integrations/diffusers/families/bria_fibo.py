"""**Bria FIBO** (``BriaFiboTransformer2DModel``, diffusers ``transformer_bria_fibo.py``): Bria's
layout and ``temb`` (see :mod:`.bria`: ``time_embed`` is not a site because the guidance embedding
is added into its output in place; ``if guidance is not None`` here), FLUX.1-style blocks fed one
``temb``; the per-layer text features it concatenates into the context stream do not reach the
modulators.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import BriaFiboTransformer2DModel
from diffusers.models.transformers.transformer_bria_fibo import (
    BriaFiboSingleTransformerBlock,
    BriaFiboTimestepProjEmbeddings,
    BriaFiboTransformerBlock,
)

from .base import CallConditioning, Family
from .bria import bria_temb
from .patterns import flux_style_block_sites, flux_style_check, flux_style_values, module_reason

__all__ = ["FAMILY"]


def _fibo_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    return flux_style_values(model, bria_temb(model, cond, truthy_guidance=False), cond.hidden_dtype)


def _fibo_check(model: nn.Module) -> str | None:
    return module_reason(model, "time_embed", BriaFiboTimestepProjEmbeddings) or flux_style_check(
        model, BriaFiboTransformerBlock, BriaFiboSingleTransformerBlock
    )


FAMILY = Family(
    name="bria_fibo",
    model_class=BriaFiboTransformer2DModel,
    block_lists=("transformer_blocks", "single_transformer_blocks"),
    model_sites=("norm_out.linear",),
    block_sites=flux_style_block_sites(BriaFiboTransformerBlock),
    conditioning=("guidance",),
    lora_scale_kwarg="joint_attention_kwargs",
    compute=_fibo_compute,
    check=_fibo_check,
)
