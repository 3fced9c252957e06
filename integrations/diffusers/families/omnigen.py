"""**OmniGen** (``OmniGenTransformer2DModel``, diffusers ``transformer_omnigen.py``; arXiv
2409.11340): a Phi-3 style stack without per-block adaLN. The timestep enters as one *time token*
(``time_token(time_proj(t))``, prepended to the sequence) and through ``temb = t_embedder(…)`` in
the output ``norm_out.linear`` (``AdaLayerNorm``, 2·D). All three are functions of ``t`` alone
(cast to the latents' dtype), so they are cached; the modulator share of this model is small.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import OmniGenTransformer2DModel
from diffusers.models.embeddings import TimestepEmbedding
from diffusers.models.normalization import AdaLayerNorm

from .base import CallConditioning, Family
from .patterns import dtype_stand_in, module_reason, no_block_sites, zero_linear

__all__ = ["FAMILY"]


def _check(model: nn.Module) -> str | None:
    reasons = [
        module_reason(model, "time_token", TimestepEmbedding),
        module_reason(model, "t_embedder", TimestepEmbedding),
        module_reason(model, "norm_out", AdaLayerNorm),
    ]
    reason = next((r for r in reasons if r is not None), None)
    if reason is None and model.norm_out.emb is not None:
        return "norm_out carries its own timestep embedder"
    return reason


def _compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # OmniGenTransformer2DModel.forward: `time_proj(t).type_as(hidden_states)`, the two embedders,
    # AdaLayerNorm: `linear(silu(temb))`.
    proj = model.time_proj(cond.timestep).type_as(dtype_stand_in(cond.hidden_dtype, cond.timestep.device))
    temb = model.t_embedder(proj)
    return {"time_token": model.time_token(proj), "t_embedder": temb, "norm_out.linear": zero_linear(model.norm_out, temb)}


FAMILY = Family(
    name="omnigen",
    model_class=OmniGenTransformer2DModel,
    block_lists=("layers",),
    model_sites=("time_token", "t_embedder", "norm_out.linear"),
    block_sites=no_block_sites,
    conditioning=(),
    lora_scale_kwarg=None,
    compute=_compute,
    check=_check,
)
