"""**FLUX.2** (``Flux2Transformer2DModel``, diffusers ``transformer_flux2.py``): one
``temb = time_guidance_embed(1000·t, 1000·g)`` and three *shared* modulation modules computed once
per forward and handed to every block — ``double_stream_modulation_img`` / ``_txt`` (2×3·D) for
all double-stream blocks, ``single_stream_modulation`` (3·D) for all single-stream blocks — plus
``norm_out.linear`` (``AdaLayerNormContinuous``, 2·D). All sites are model-level; the blocks only
split the tensors they are given.

``guidance`` is keyed (ignored, and not keyed, when the model has no guidance embedder, as the
distilled Klein models). The KV-cache *extract* call (``kv_cache_mode="extract"`` with
``num_ref_tokens > 0``) runs ``time_guidance_embed`` and two modulation modules a second time on
the reference timestep (``ref_temb``) and blends both results per token; one cached value per module
cannot serve that, so that call runs uncached (``stats.bypassed``); the ``"cached"`` calls that
follow use the plain modulators and are served.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import Flux2Transformer2DModel
from diffusers.models.normalization import AdaLayerNormContinuous
from diffusers.models.transformers.transformer_flux2 import (
    Flux2Modulation,
    Flux2SingleTransformerBlock,
    Flux2TimestepGuidanceEmbeddings,
    Flux2TransformerBlock,
)

from .base import CallConditioning, Family
from .patterns import blocks_reason, continuous_linear, module_reason, no_block_sites

__all__ = ["FAMILY"]

_SHARED = ("double_stream_modulation_img", "double_stream_modulation_txt", "single_stream_modulation")


def _flux2_check(model: nn.Module) -> str | None:
    reasons = [
        module_reason(model, "time_guidance_embed", Flux2TimestepGuidanceEmbeddings),
        *(module_reason(model, name, Flux2Modulation) for name in _SHARED),
        module_reason(model, "norm_out", AdaLayerNormContinuous),
        blocks_reason(model, "transformer_blocks", Flux2TransformerBlock),
        blocks_reason(model, "single_transformer_blocks", Flux2SingleTransformerBlock),
    ]
    return next((r for r in reasons if r is not None), None)


def _flux2_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # Flux2Transformer2DModel.forward step 1, op for op.
    hd = cond.hidden_dtype
    timestep = cond.timestep.to(hd) * 1000
    guidance = cond.values["guidance"]
    if guidance is not None:
        guidance = guidance.to(hd) * 1000
    temb = model.time_guidance_embed(timestep, guidance)
    out: dict[str, Any] = {"time_guidance_embed": temb}
    for name in _SHARED:
        out[name] = getattr(model, name)(temb)
    out["norm_out.linear"] = continuous_linear(model.norm_out, temb, hd)
    return out


def _flux2_adjust_values(model: nn.Module, values: dict[str, Any]) -> None:
    if model.time_guidance_embed.guidance_embedder is None:
        values["guidance"] = None  # ignored by the embedder: must not split the key


def _flux2_uncacheable(model: nn.Module, arguments: dict[str, Any]) -> str | None:
    if arguments.get("kv_cache_mode") == "extract" and arguments.get("num_ref_tokens", 0) > 0:
        return "kv_cache_mode='extract' runs the modulation modules twice (reference timestep)"
    return None


FAMILY = Family(
    name="flux2",
    model_class=Flux2Transformer2DModel,
    block_lists=("transformer_blocks", "single_transformer_blocks"),
    model_sites=("time_guidance_embed", *_SHARED, "norm_out.linear"),
    block_sites=no_block_sites,
    conditioning=("guidance",),
    lora_scale_kwarg="joint_attention_kwargs",
    compute=_flux2_compute,
    check=_flux2_check,
    adjust_values=_flux2_adjust_values,
    uncacheable_call=_flux2_uncacheable,
)
