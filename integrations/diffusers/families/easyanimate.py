"""**EasyAnimate** (``EasyAnimateTransformer3DModel``; arXiv 2405.18991): CogVideoX-style expert
adaLN — ``temb = time_embedding(time_proj(t).to(hidden dtype), timestep_cond)``, every block's
``norm1.linear`` / ``norm2.linear`` (``EasyAnimateLayerNormZero``, 6·D halves for video and
text tokens) and ``norm_out.linear`` (``AdaLayerNorm``) — computed as in :mod:`.cogvideox`. The
inpaint / control latents are concatenated to the tokens, not to any modulator.

Source: diffusers 0.42.1 ``models/transformers/transformer_easyanimate.py``.
"""

from __future__ import annotations

from torch import nn

from diffusers import EasyAnimateTransformer3DModel
from diffusers.models.transformers.transformer_easyanimate import (
    EasyAnimateLayerNormZero,
    EasyAnimateTransformerBlock,
)

from .base import Family
from .cogvideox import check_cogvideox_layout, compute_cogvideox

__all__ = ["FAMILY"]


def _easyanimate_block_sites(block: nn.Module) -> tuple[str, ...]:
    return ("norm1.linear", "norm2.linear")


def _easyanimate_check(model: nn.Module) -> str | None:
    return check_cogvideox_layout(model, EasyAnimateTransformerBlock, EasyAnimateLayerNormZero)


FAMILY = Family(
    name="easyanimate",
    model_class=EasyAnimateTransformer3DModel,
    block_lists=("transformer_blocks",),
    model_sites=("time_embedding", "norm_out.linear"),
    block_sites=_easyanimate_block_sites,
    conditioning=("timestep_cond",),
    lora_scale_kwarg=None,
    compute=compute_cogvideox,
    check=_easyanimate_check,
)
