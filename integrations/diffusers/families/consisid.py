"""**ConsisID** (``ConsisIDTransformer3DModel``; arXiv 2411.17440): CogVideoX's expert-adaLN layout
in its own module (``ConsisIDBlock`` with ``CogVideoXLayerNormZero`` norms, ``AdaLayerNorm``
output) — the sites and their computation are CogVideoX's (:mod:`.cogvideox`). The identity
inputs (``id_cond``, ``id_vit_hidden``) feed the facial extractor and perceiver cross-attention,
which act on the tokens, not on any modulator; they are not part of the key.

Source: diffusers 0.42.1 ``models/transformers/consisid_transformer_3d.py``.
"""

from __future__ import annotations

from torch import nn

from diffusers import ConsisIDTransformer3DModel
from diffusers.models.transformers.consisid_transformer_3d import ConsisIDBlock

from .base import Family
from .cogvideox import check_cogvideox_layout, compute_cogvideox

__all__ = ["FAMILY"]


def _consisid_block_sites(block: nn.Module) -> tuple[str, ...]:
    return ("norm1.linear", "norm2.linear")


def _consisid_check(model: nn.Module) -> str | None:
    return check_cogvideox_layout(model, ConsisIDBlock)


FAMILY = Family(
    name="consisid",
    model_class=ConsisIDTransformer3DModel,
    block_lists=("transformer_blocks",),
    model_sites=("time_embedding", "norm_out.linear"),
    block_sites=_consisid_block_sites,
    conditioning=("timestep_cond",),
    lora_scale_kwarg="attention_kwargs",
    compute=compute_cogvideox,
    check=_consisid_check,
)
