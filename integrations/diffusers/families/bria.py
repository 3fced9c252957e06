"""**Bria 3.x** (``BriaTransformer2DModel``, diffusers ``transformer_bria.py``): the FLUX.1 layout
(:func:`.patterns.flux_style_values`) fed by ``temb = time_embed(t)`` (+ ``guidance_embed(g)``
for guidance-distilled configs). The forward adds the guidance embedding *in place*
(``temb += …``) into ``time_embed``'s output, so ``time_embed`` is not a site (a cached tensor
would be modified by every call); it runs each call (two small Linears), and the per-block and
output modulators are cached, keyed by ``guidance``. Bria 3.x evaluates ``if guidance:`` on the
tensor; the family makes the same test (and so raises the same error on a multi-element
guidance tensor).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import BriaTransformer2DModel
from diffusers.models.transformers.transformer_bria import (
    BriaSingleTransformerBlock,
    BriaTimestepProjEmbeddings,
    BriaTransformerBlock,
)

from .base import CallConditioning, Family
from .patterns import flux_style_block_sites, flux_style_check, flux_style_values, module_reason

__all__ = ["FAMILY", "bria_temb"]


def bria_temb(model: nn.Module, cond: CallConditioning, truthy_guidance: bool) -> Any:
    """``temb`` as ``BriaTransformer2DModel.forward`` (``if guidance:``, ``truthy_guidance``) or
    ``BriaFiboTransformer2DModel.forward`` (``if guidance is not None:``) computes it."""
    hd = cond.hidden_dtype
    timestep = cond.timestep.to(hd)
    guidance = cond.values["guidance"]
    if guidance is not None:
        guidance = guidance.to(hd)
    temb = model.time_embed(timestep, dtype=hd)
    if (guidance if truthy_guidance else guidance is not None):
        temb += model.guidance_embed(guidance, dtype=hd)
    return temb


def _bria_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    return flux_style_values(model, bria_temb(model, cond, truthy_guidance=True), cond.hidden_dtype)


def _bria_check(model: nn.Module) -> str | None:
    return module_reason(model, "time_embed", BriaTimestepProjEmbeddings) or flux_style_check(
        model, BriaTransformerBlock, BriaSingleTransformerBlock
    )


FAMILY = Family(
    name="bria",
    model_class=BriaTransformer2DModel,
    block_lists=("transformer_blocks", "single_transformer_blocks"),
    model_sites=("norm_out.linear",),
    block_sites=flux_style_block_sites(BriaTransformerBlock),
    conditioning=("guidance",),
    lora_scale_kwarg="attention_kwargs",
    compute=_bria_compute,
    check=_bria_check,
)
