"""**Wan-VACE** (``WanVACETransformer3DModel``; arXiv 2503.07598): Wan's shared time MLP and
projection (``condition_embedder.time_embedder`` / ``.time_proj``, see :mod:`.wan`) feed both the
main ``blocks`` and the control ``vace_blocks``, each of which only adds its own learned
``scale_shift_table``. The control video and ``control_hidden_states_scale`` never reach a
modulator. Only ``(batch,)`` timesteps exist for this class (its embedder is called without
``timestep_seq_len``).

Source: diffusers 0.42.1 ``models/transformers/transformer_wan_vace.py``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import WanVACETransformer3DModel
from diffusers.models.transformers.transformer_wan import (
    WanTimeTextImageEmbedding,
    WanTransformerBlock,
)
from diffusers.models.transformers.transformer_wan_vace import WanVACETransformerBlock

from .base import CallConditioning, Family
from .patterns import no_block_sites, shared_time_projection
from .wan import SITES, check_condition_embedder

__all__ = ["FAMILY"]


def _vace_check(model: nn.Module) -> str | None:
    reason = check_condition_embedder(model, WanTimeTextImageEmbedding)
    if reason is not None:
        return reason
    for name, cls in (("blocks", WanTransformerBlock), ("vace_blocks", WanVACETransformerBlock)):
        for i, blk in enumerate(getattr(model, name)):
            if type(blk) is not cls:
                return f"{name}.{i} is a {type(blk).__name__}, expected {cls.__name__}"
    return None


def _vace_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # WanVACETransformer3DModel.forward: `condition_embedder(timestep, encoder_hidden_states, ...)`
    # with no per-token form.
    emb = model.condition_embedder
    ted = next(iter(emb.time_embedder.parameters())).dtype
    out = shared_time_projection(emb, cond.timestep, cond.values["encoder_hidden_states_dtype"], ted)
    return {f"condition_embedder.{k}": v for k, v in out.items()}


FAMILY = Family(
    name="wan_vace",
    model_class=WanVACETransformer3DModel,
    block_lists=("blocks", "vace_blocks"),
    model_sites=SITES,
    block_sites=no_block_sites,
    conditioning=(),
    lora_scale_kwarg="attention_kwargs",
    compute=_vace_compute,
    check=_vace_check,
    dtype_args=("encoder_hidden_states",),
)
