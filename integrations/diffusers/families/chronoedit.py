"""**ChronoEdit** (``ChronoEditTransformer3DModel``; arXiv 2510.04290): a Wan 2.1 I2V transformer
in its own module with copies of Wan's ``WanTimeTextImageEmbedding`` and ``WanTransformerBlock``
(same code, distinct classes) and the same ``forward``: the sites and their computation are
Wan's (:mod:`.wan`), per-token timesteps included.

Source: diffusers 0.42.1 ``models/transformers/transformer_chronoedit.py``.
"""

from __future__ import annotations

from torch import nn

from diffusers.models.transformers.transformer_chronoedit import (
    ChronoEditTransformer3DModel,
    WanTimeTextImageEmbedding,
    WanTransformerBlock,
)

from .base import Family
from .patterns import no_block_sites
from .wan import SITES, check_wan_layout, compute_wan

__all__ = ["FAMILY"]


def _chronoedit_check(model: nn.Module) -> str | None:
    return check_wan_layout(model, WanTimeTextImageEmbedding, WanTransformerBlock)


FAMILY = Family(
    name="chronoedit",
    model_class=ChronoEditTransformer3DModel,
    block_lists=("blocks",),
    model_sites=SITES,
    block_sites=no_block_sites,
    conditioning=(),
    lora_scale_kwarg="attention_kwargs",
    compute=compute_wan,
    check=_chronoedit_check,
    dtype_args=("encoder_hidden_states",),
)
