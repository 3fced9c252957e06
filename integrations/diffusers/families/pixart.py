"""**PixArt-α/Σ** (``PixArtTransformer2DModel``): adaLN-single (arXiv 2310.00426 §2.3): one shared
``adaln_single`` returns ``(Linear(SiLU(e)), e)`` with ``e = emb(t, resolution, aspect)``;
blocks only add their learned ``scale_shift_table`` to it, so they have no per-block site.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import PixArtTransformer2DModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.normalization import AdaLayerNormSingle

from .base import CallConditioning, Family
from .patterns import no_block_sites

__all__ = ["FAMILY"]


def _pixart_check(model: nn.Module) -> str | None:
    if type(model.adaln_single) is not AdaLayerNormSingle:
        return "adaln_single is not an AdaLayerNormSingle"
    for i, blk in enumerate(model.transformer_blocks):
        if type(blk) is not BasicTransformerBlock or blk.norm_type != "ada_norm_single":
            return f"transformer_blocks.{i} is not a BasicTransformerBlock(norm_type='ada_norm_single')"
    return None


def _pixart_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # PixArtTransformer2DModel.forward: `timestep, embedded_timestep = self.adaln_single(...)`.
    out = model.adaln_single(
        cond.timestep,
        cond.values["added_cond_kwargs"],
        batch_size=cond.values["batch_size"],
        hidden_dtype=cond.hidden_dtype,
    )
    return {"adaln_single": tuple(out)}


def _pixart_adjust_values(model: nn.Module, values: dict[str, Any]) -> None:
    if not model.adaln_single.emb.use_additional_conditions:
        # PixArt-Σ-style: resolution/aspect are ignored by the embedder, so they must not
        # split the key (t-only reuse across prompts and sizes).
        values["added_cond_kwargs"] = None


FAMILY = Family(
    name="pixart",
    model_class=PixArtTransformer2DModel,
    block_lists=("transformer_blocks",),
    model_sites=("adaln_single",),
    block_sites=no_block_sites,
    conditioning=("added_cond_kwargs", "batch_size"),
    lora_scale_kwarg=None,
    compute=_pixart_compute,
    check=_pixart_check,
    adjust_values=_pixart_adjust_values,
)
