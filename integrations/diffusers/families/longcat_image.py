"""**LongCat-Image** (``LongCatImageTransformer2DModel``, diffusers ``transformer_longcat_image.py``):
the FLUX.1 layout (:func:`.patterns.flux_style_values`) fed by ``temb = time_embed(1000·t)``
(timestep only; the ``guidance`` argument is accepted and ignored by this forward, so it is not
keyed).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import LongCatImageTransformer2DModel
from diffusers.models.transformers.transformer_longcat_image import (
    LongCatImageSingleTransformerBlock,
    LongCatImageTimestepEmbeddings,
    LongCatImageTransformerBlock,
)

from .base import CallConditioning, Family
from .patterns import flux_style_block_sites, flux_style_check, flux_style_values, module_reason

__all__ = ["FAMILY"]


def _longcat_check(model: nn.Module) -> str | None:
    return module_reason(model, "time_embed", LongCatImageTimestepEmbeddings) or flux_style_check(
        model, LongCatImageTransformerBlock, LongCatImageSingleTransformerBlock
    )


def _longcat_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # LongCatImageTransformer2DModel.forward: `time_embed(timestep.to(dtype) * 1000, dtype)`.
    hd = cond.hidden_dtype
    temb = model.time_embed(cond.timestep.to(hd) * 1000, hd)
    return {"time_embed": temb, **flux_style_values(model, temb, hd)}


FAMILY = Family(
    name="longcat_image",
    model_class=LongCatImageTransformer2DModel,
    block_lists=("transformer_blocks", "single_transformer_blocks"),
    model_sites=("time_embed", "norm_out.linear"),
    block_sites=flux_style_block_sites(LongCatImageTransformerBlock),
    conditioning=(),
    lora_scale_kwarg=None,
    compute=_longcat_compute,
    check=_longcat_check,
)
