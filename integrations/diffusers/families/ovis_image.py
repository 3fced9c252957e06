"""**Ovis-Image** (``OvisImageTransformer2DModel``, diffusers ``transformer_ovis_image.py``): the
FLUX.1 layout (:func:`.patterns.flux_style_values`) fed by
``temb = timestep_embedder(time_proj(1000·t))`` (timestep only; ``time_proj`` has no weights, the
site is ``timestep_embedder``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import OvisImageTransformer2DModel
from diffusers.models.embeddings import TimestepEmbedding
from diffusers.models.transformers.transformer_ovis_image import (
    OvisImageSingleTransformerBlock,
    OvisImageTransformerBlock,
)

from .base import CallConditioning, Family
from .patterns import flux_style_block_sites, flux_style_check, flux_style_values, module_reason

__all__ = ["FAMILY"]


def _ovis_check(model: nn.Module) -> str | None:
    return module_reason(model, "timestep_embedder", TimestepEmbedding) or flux_style_check(
        model, OvisImageTransformerBlock, OvisImageSingleTransformerBlock
    )


def _ovis_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # OvisImageTransformer2DModel.forward: `timestep_embedder(time_proj(t.to(dtype) * 1000).to(dtype))`.
    hd = cond.hidden_dtype
    temb = model.timestep_embedder(model.time_proj(cond.timestep.to(hd) * 1000).to(dtype=hd))
    return {"timestep_embedder": temb, **flux_style_values(model, temb, hd)}


FAMILY = Family(
    name="ovis_image",
    model_class=OvisImageTransformer2DModel,
    block_lists=("transformer_blocks", "single_transformer_blocks"),
    model_sites=("timestep_embedder", "norm_out.linear"),
    block_sites=flux_style_block_sites(OvisImageTransformerBlock),
    conditioning=(),
    lora_scale_kwarg="joint_attention_kwargs",
    compute=_ovis_compute,
    check=_ovis_check,
)
