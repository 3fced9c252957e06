"""**SkyReels-V2** (``SkyReelsV2Transformer3DModel``; arXiv 2504.13074): Wan's layout (shared
``condition_embedder.time_embedder`` / ``.time_proj``, per-block learned tables, see
:mod:`.wan`) with two additions:

* **Diffusion forcing** (``enable_diffusion_forcing=True``): ``timestep`` is ``(batch, frames)``
  — one noise level per latent frame. The embedder runs on the whole 2-D tensor, so the sites'
  outputs are per-frame; the key is the whole timestep tensor (shape and bits), never a row of it.
  The later broadcast to tokens happens outside the sites and is recomputed each call.
* **Sample-info injection** (``inject_sample_info=True``): ``fps_embedding(fps)`` →
  ``fps_projection`` (a 6·D modulator added to ``time_proj``'s output) — both sites, keyed on
  ``fps``.

Source: diffusers 0.42.1 ``models/transformers/transformer_skyreels_v2.py``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from diffusers import SkyReelsV2Transformer3DModel
from diffusers.models.modeling_utils import get_parameter_dtype
from diffusers.models.transformers.transformer_skyreels_v2 import (
    SkyReelsV2TimeTextImageEmbedding,
    SkyReelsV2TransformerBlock,
)

from .base import CallConditioning, Family
from .patterns import no_block_sites, shared_time_projection
from .wan import SITES, check_condition_embedder

__all__ = ["FAMILY"]


def _model_sites(model: nn.Module) -> tuple[str, ...]:
    return (*SITES, "fps_embedding", "fps_projection") if model.config.inject_sample_info else SITES


def _skyreels_check(model: nn.Module) -> str | None:
    reason = check_condition_embedder(model, SkyReelsV2TimeTextImageEmbedding)
    if reason is not None:
        return reason
    for i, blk in enumerate(model.blocks):
        if type(blk) is not SkyReelsV2TransformerBlock:
            return f"blocks.{i} is a {type(blk).__name__}, expected SkyReelsV2TransformerBlock"
    return None


def _skyreels_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # SkyReelsV2Transformer3DModel.forward: `condition_embedder(timestep, ...)` on the timestep as
    # given (1-D, or 2-D per frame); `fps_embedding(torch.tensor(fps, dtype=long))` then
    # `fps_projection`.
    emb = model.condition_embedder
    ted = get_parameter_dtype(emb.time_embedder)
    out = shared_time_projection(emb, cond.timestep, cond.values["encoder_hidden_states_dtype"], ted)
    values: dict[str, Any] = {f"condition_embedder.{k}": v for k, v in out.items()}
    if model.config.inject_sample_info:
        fps = torch.tensor(cond.values["fps"], dtype=torch.long, device=cond.timestep.device)
        fps_emb = model.fps_embedding(fps)
        values["fps_embedding"] = fps_emb
        values["fps_projection"] = model.fps_projection(fps_emb)
    return values


def _skyreels_adjust_values(model: nn.Module, values: dict[str, Any]) -> None:
    if not model.config.inject_sample_info:
        values["fps"] = None  # ignored by the model: must not split the key


FAMILY = Family(
    name="skyreels_v2",
    model_class=SkyReelsV2Transformer3DModel,
    block_lists=("blocks",),
    model_sites=SITES,
    block_sites=no_block_sites,
    conditioning=("fps",),
    lora_scale_kwarg="attention_kwargs",
    compute=_skyreels_compute,
    check=_skyreels_check,
    adjust_values=_skyreels_adjust_values,
    dtype_args=("encoder_hidden_states",),
    model_sites_of=_model_sites,
)
