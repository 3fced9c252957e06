"""**Latte** (``LatteTransformer3DModel``; arXiv 2401.03048): spatial and temporal
``BasicTransformerBlock(norm_type="ada_norm_single")`` stacks sharing one adaLN-single
``adaln_single(t)`` (PixArt-style ``(Linear(SiLU(e)), e)``, no resolution/aspect conditions);
the blocks only add learned tables, and the model repeats the result per frame / patch outside
the site. Keyed on the timestep and the batch size.

Source: diffusers 0.42.1 ``models/transformers/latte_transformer_3d.py``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import LatteTransformer3DModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.normalization import AdaLayerNormSingle

from .base import CallConditioning, Family
from .patterns import no_block_sites

__all__ = ["FAMILY"]


def _latte_check(model: nn.Module) -> str | None:
    if type(model.adaln_single) is not AdaLayerNormSingle or model.adaln_single.emb.use_additional_conditions:
        return "adaln_single is not an AdaLayerNormSingle without additional conditions"
    for name in ("transformer_blocks", "temporal_transformer_blocks"):
        for i, blk in enumerate(getattr(model, name)):
            if type(blk) is not BasicTransformerBlock or blk.norm_type != "ada_norm_single":
                return f"{name}.{i} is not a BasicTransformerBlock(norm_type='ada_norm_single')"
    return None


def _latte_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # LatteTransformer3DModel.forward: `adaln_single(timestep, added_cond_kwargs={None, None},
    # batch_size=..., hidden_dtype=...)` — the None conditions are what no conditions mean.
    out = model.adaln_single(
        cond.timestep,
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        batch_size=cond.values["batch_size"],
        hidden_dtype=cond.hidden_dtype,
    )
    return {"adaln_single": tuple(out)}


FAMILY = Family(
    name="latte",
    model_class=LatteTransformer3DModel,
    block_lists=("transformer_blocks", "temporal_transformer_blocks"),
    model_sites=("adaln_single",),
    block_sites=no_block_sites,
    conditioning=("batch_size",),
    lora_scale_kwarg=None,
    compute=_latte_compute,
    check=_latte_check,
)
