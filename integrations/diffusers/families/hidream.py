"""**HiDream-I1** (``HiDreamImageTransformer2DModel``, diffusers ``transformer_hidream_image.py``;
arXiv 2505.22705): ``temb = t_embedder(t, latent dtype) + p_embedder(pooled_embeds)``; every
double- and single-stream block (wrapped in ``HiDreamBlock``) runs ``block.adaLN_modulation``
(``Sequential(SiLU, Linear)``, 12·D and 6·D) on it, and ``final_layer.adaLN_modulation`` (2·D).
The timestep argument is ``timesteps``; ``pooled_embeds`` is keyed.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import HiDreamImageTransformer2DModel
from diffusers.models.transformers.transformer_hidream_image import (
    HiDreamBlock,
    HiDreamImageOutEmbed,
    HiDreamImagePooledEmbed,
    HiDreamImageSingleTransformerBlock,
    HiDreamImageTimestepEmbed,
    HiDreamImageTransformerBlock,
)

from .base import CallConditioning, Family
from .patterns import blocks_reason, module_reason

__all__ = ["FAMILY"]

_LISTS = {"double_stream_blocks": HiDreamImageTransformerBlock, "single_stream_blocks": HiDreamImageSingleTransformerBlock}


def _hidream_block_sites(block: nn.Module) -> tuple[str, ...]:
    return ("block.adaLN_modulation",)


def _hidream_check(model: nn.Module) -> str | None:
    reasons = [
        module_reason(model, "t_embedder", HiDreamImageTimestepEmbed),
        module_reason(model, "p_embedder", HiDreamImagePooledEmbed),
        module_reason(model, "final_layer", HiDreamImageOutEmbed),
        *(blocks_reason(model, name, HiDreamBlock, {"block": cls}) for name, cls in _LISTS.items()),
    ]
    return next((r for r in reasons if r is not None), None)


def _hidream_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # HiDreamImageTransformer2DModel.forward "0. time": `t_embedder(timesteps, hidden_states.dtype)
    # + p_embedder(pooled_embeds)`, then each block's and the final layer's adaLN_modulation(temb).
    t_emb = model.t_embedder(cond.timestep, cond.hidden_dtype)
    p_emb = model.p_embedder(cond.values["pooled_embeds"])
    temb = t_emb + p_emb
    out: dict[str, Any] = {"t_embedder": t_emb, "p_embedder": p_emb}
    for name in _LISTS:
        for i, blk in enumerate(getattr(model, name)):
            out[f"{name}.{i}.block.adaLN_modulation"] = blk.block.adaLN_modulation(temb)
    out["final_layer.adaLN_modulation"] = model.final_layer.adaLN_modulation(temb)
    return out


FAMILY = Family(
    name="hidream",
    model_class=HiDreamImageTransformer2DModel,
    block_lists=tuple(_LISTS),
    model_sites=("t_embedder", "p_embedder", "final_layer.adaLN_modulation"),
    block_sites=_hidream_block_sites,
    conditioning=("pooled_embeds",),
    lora_scale_kwarg="attention_kwargs",
    compute=_hidream_compute,
    check=_hidream_check,
    timestep_arg="timesteps",
    required=("pooled_embeds",),
)
