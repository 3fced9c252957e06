"""**Allegro** (``AllegroTransformer3DModel``; arXiv 2410.15458): adaLN-single like PixArt —
``adaln_single(t)`` returns ``(Linear(SiLU(e)), e)`` once; every ``AllegroTransformerBlock`` adds
its learned ``scale_shift_table`` and the output stage the model's. Keyed on the timestep and
the batch size.

Source: diffusers 0.42.1 ``models/transformers/transformer_allegro.py``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import AllegroTransformer3DModel
from diffusers.models.normalization import AdaLayerNormSingle
from diffusers.models.transformers.transformer_allegro import AllegroTransformerBlock

from .base import CallConditioning, Family
from .patterns import no_block_sites

__all__ = ["FAMILY"]


def _allegro_check(model: nn.Module) -> str | None:
    if type(model.adaln_single) is not AdaLayerNormSingle or model.adaln_single.emb.use_additional_conditions:
        return "adaln_single is not an AdaLayerNormSingle without additional conditions"
    for i, blk in enumerate(model.transformer_blocks):
        if type(blk) is not AllegroTransformerBlock:
            return f"transformer_blocks.{i} is a {type(blk).__name__}, expected AllegroTransformerBlock"
    return None


def _allegro_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # AllegroTransformer3DModel.forward: `adaln_single(timestep, batch_size=..., hidden_dtype=...)`.
    out = model.adaln_single(cond.timestep, batch_size=cond.values["batch_size"], hidden_dtype=cond.hidden_dtype)
    return {"adaln_single": tuple(out)}


FAMILY = Family(
    name="allegro",
    model_class=AllegroTransformer3DModel,
    block_lists=("transformer_blocks",),
    model_sites=("adaln_single",),
    block_sites=no_block_sites,
    conditioning=("batch_size",),
    lora_scale_kwarg=None,
    compute=_allegro_compute,
    check=_allegro_check,
)
