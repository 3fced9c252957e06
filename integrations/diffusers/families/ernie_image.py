"""**ERNIE-Image** (``ErnieImageTransformer2DModel``, diffusers ``transformer_ernie_image.py``):
one shared adaLN for all blocks — ``c = time_embedding(time_proj(t))`` and
``adaLN_modulation(c)`` (``Sequential(SiLU, Linear)``, 6·D) chunked and handed to every
``ErnieImageSharedAdaLNBlock`` — plus ``final_norm.linear`` (``ErnieImageAdaLNContinuous``:
``linear(c)``, 2·D). Timestep only; all sites are model-level.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import ErnieImageTransformer2DModel
from diffusers.models.embeddings import TimestepEmbedding
from diffusers.models.transformers.transformer_ernie_image import (
    ErnieImageAdaLNContinuous,
    ErnieImageSharedAdaLNBlock,
)

from .base import CallConditioning, Family
from .patterns import blocks_reason, module_reason, no_block_sites

__all__ = ["FAMILY"]


def _check(model: nn.Module) -> str | None:
    reasons = [
        module_reason(model, "time_embedding", TimestepEmbedding),
        module_reason(model, "adaLN_modulation", nn.Sequential),
        module_reason(model, "final_norm", ErnieImageAdaLNContinuous),
        blocks_reason(model, "layers", ErnieImageSharedAdaLNBlock),
    ]
    return next((r for r in reasons if r is not None), None)


def _compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # ErnieImageTransformer2DModel.forward: `time_embedding(time_proj(t).to(dtype))`,
    # `adaLN_modulation(c)`, and ErnieImageAdaLNContinuous: `linear(c)`.
    c = model.time_embedding(model.time_proj(cond.timestep).to(dtype=cond.hidden_dtype))
    return {"time_embedding": c, "adaLN_modulation": model.adaLN_modulation(c), "final_norm.linear": model.final_norm.linear(c)}


FAMILY = Family(
    name="ernie_image",
    model_class=ErnieImageTransformer2DModel,
    block_lists=("layers",),
    model_sites=("time_embedding", "adaLN_modulation", "final_norm.linear"),
    block_sites=no_block_sites,
    conditioning=(),
    lora_scale_kwarg=None,
    compute=_compute,
    check=_check,
)
