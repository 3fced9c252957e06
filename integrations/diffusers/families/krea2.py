"""**Krea 2** (``Krea2Transformer2DModel``, diffusers ``transformer_krea2.py``): adaLN-single
style — ``temb = time_embed(t)`` (sinusoidal + MLP) and one shared ``time_mod_proj(gelu(temb))``
(6·D) for every block; blocks and the final layer only add their learned ``scale_shift_table``.
Both modules are model-level sites; the entries depend on ``t`` alone.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn

from diffusers.models.transformers.transformer_krea2 import (
    Krea2FinalLayer,
    Krea2TimestepEmbedding,
    Krea2Transformer2DModel,
    Krea2TransformerBlock,
)

from .base import CallConditioning, Family
from .patterns import blocks_reason, module_reason, no_block_sites

__all__ = ["FAMILY"]


def _krea2_check(model: nn.Module) -> str | None:
    reasons = [
        module_reason(model, "time_embed", Krea2TimestepEmbedding),
        module_reason(model, "time_mod_proj", nn.Linear),
        module_reason(model, "final_layer", Krea2FinalLayer),
        blocks_reason(model, "transformer_blocks", Krea2TransformerBlock),
    ]
    return next((r for r in reasons if r is not None), None)


def _krea2_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # Krea2Transformer2DModel.forward: `time_embed(t, dtype=hidden dtype)`, `time_mod_proj(gelu_tanh(.))`.
    temb = model.time_embed(cond.timestep, dtype=cond.hidden_dtype)
    return {"time_embed": temb, "time_mod_proj": model.time_mod_proj(F.gelu(temb, approximate="tanh"))}


FAMILY = Family(
    name="krea2",
    model_class=Krea2Transformer2DModel,
    block_lists=("transformer_blocks",),
    model_sites=("time_embed", "time_mod_proj"),
    block_sites=no_block_sites,
    conditioning=(),
    lora_scale_kwarg="attention_kwargs",
    compute=_krea2_compute,
    check=_krea2_check,
)
