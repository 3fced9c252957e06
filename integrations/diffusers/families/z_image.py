"""**Z-Image** (``ZImageTransformer2DModel``, diffusers ``transformer_z_image.py``; Z-Image,
arXiv 2511.22699, single-stream DiT): ``adaln_input = t_embedder(t · t_scale)`` cast to the latents'
dtype; every modulated block (``noise_refiner`` and ``layers``; the ``context_refiner`` has no
modulation) runs ``adaLN_modulation`` (``Sequential(Linear)``, 4·D) on it, and each final layer
``all_final_layer[<patch>-<f_patch>]`` runs ``adaLN_modulation`` (``Sequential(SiLU, Linear)``,
D). The timestep argument is ``t``, the latents ``x`` are a list of per-sample tensors.

The Omni mode (``x`` a nested list, with ``image_noise_mask``) embeds a second, *clean* timestep
(t = 1) for the reference tokens and runs every ``adaLN_modulation`` twice with per-token
selection; one cached value per module cannot serve that, so Omni calls run uncached
(``stats.bypassed``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import ZImageTransformer2DModel
from diffusers.models.transformers.transformer_z_image import (
    FinalLayer,
    TimestepEmbedder,
    ZImageTransformerBlock,
)

from .base import CallConditioning, Family
from .patterns import blocks_reason, dtype_stand_in, module_reason

__all__ = ["FAMILY"]

_MODULATED = ("noise_refiner", "layers")


def _z_block_sites(block: nn.Module) -> tuple[str, ...]:
    return ("adaLN_modulation",)


def _z_final_sites(model: nn.Module) -> tuple[str, ...]:
    return tuple(f"all_final_layer.{key}.adaLN_modulation" for key in model.all_final_layer)


def _z_check(model: nn.Module) -> str | None:
    reason = module_reason(model, "t_embedder", TimestepEmbedder)
    for name in _MODULATED:
        reason = reason or blocks_reason(model, name, ZImageTransformerBlock)
    if reason is not None:
        return reason
    for name in _MODULATED:
        for i, blk in enumerate(getattr(model, name)):
            if not blk.modulation:
                return f"{name}.{i} has no adaLN modulation"
    for key in model.all_final_layer:
        reason = module_reason(model, f"all_final_layer.{key}", FinalLayer)
        if reason is not None:
            return reason
    return None


def _z_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # ZImageTransformer2DModel.forward (non-Omni): `t_embedder(t * t_scale).type_as(x[0])`.
    emb = model.t_embedder(cond.timestep * model.t_scale)
    adaln_input = emb.type_as(dtype_stand_in(cond.hidden_dtype, emb.device))
    out: dict[str, Any] = {"t_embedder": emb}
    for name in _MODULATED:
        for i, blk in enumerate(getattr(model, name)):
            out[f"{name}.{i}.adaLN_modulation"] = blk.adaLN_modulation(adaln_input)
    for key, final in model.all_final_layer.items():
        out[f"all_final_layer.{key}.adaLN_modulation"] = final.adaLN_modulation(adaln_input)
    return out


def _z_uncacheable(model: nn.Module, arguments: dict[str, Any]) -> str | None:
    x = arguments.get("x")
    if isinstance(x, (list, tuple)) and x and isinstance(x[0], (list, tuple)):
        return "Omni mode runs every modulation twice (noisy t and clean t=1) with per-token selection"
    return None


FAMILY = Family(
    name="z_image",
    model_class=ZImageTransformer2DModel,
    block_lists=_MODULATED,
    model_sites=("t_embedder",),
    block_sites=_z_block_sites,
    conditioning=(),
    lora_scale_kwarg="joint_attention_kwargs",
    compute=_z_compute,
    check=_z_check,
    timestep_arg="t",
    hidden_arg="x",
    uncacheable_call=_z_uncacheable,
    dynamic_model_sites=_z_final_sites,
)
