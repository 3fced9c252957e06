"""**LTX-2** (``LTX2VideoTransformer3DModel``; arXiv 2601.03233): joint audio-video adaLN-single.
Every modulator is a model-level ``LTX2AdaLayerNormSingle`` (``(Linear(SiLU(e)), e)`` of a
timestep embedding) computed once per call; the blocks add learned per-block tables:

* ``time_embed`` (video timestep) and ``audio_time_embed`` (audio timestep, default = video);
* the audio↔video cross-attention modulators ``av_cross_attn_video_scale_shift``,
  ``av_cross_attn_video_a2v_gate``, ``av_cross_attn_audio_scale_shift``,
  ``av_cross_attn_audio_v2a_gate`` (on the own modality's timestep, or with
  ``use_cross_timestep`` on the other modality's ``sigma``; gates scaled by
  ``cross_attn_timestep_scale_multiplier / timestep_scale_multiplier``);
* LTX-2.3 prompt modulation (``cross_attn_mod`` / ``audio_cross_attn_mod`` with
  ``use_prompt_adaln_single``): ``prompt_adaln(sigma)`` and ``audio_prompt_adaln(audio_sigma)``.

The key holds the whole video and audio timestep tensors (per-token timesteps included: shape
and bits), ``sigma``/``audio_sigma`` where the configuration reads them, ``use_cross_timestep``,
the batch size and the audio stream's dtype.

Source: diffusers 0.42.1 ``models/transformers/transformer_ltx2.py``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusers import LTX2VideoTransformer3DModel
from diffusers.models.transformers.transformer_ltx2 import (
    LTX2AdaLayerNormSingle,
    LTX2VideoTransformerBlock,
)

from .base import CallConditioning, Family
from .patterns import no_block_sites

__all__ = ["FAMILY"]

_BASE_SITES = (
    "time_embed",
    "audio_time_embed",
    "av_cross_attn_video_scale_shift",
    "av_cross_attn_video_a2v_gate",
    "av_cross_attn_audio_scale_shift",
    "av_cross_attn_audio_v2a_gate",
)
_PROMPT_SITES = ("prompt_adaln", "audio_prompt_adaln")


def _prompt_adaln(model: nn.Module) -> bool:
    return bool(model.prompt_modulation and model.config.use_prompt_adaln_single)


def _model_sites(model: nn.Module) -> tuple[str, ...]:
    return _BASE_SITES + _PROMPT_SITES if _prompt_adaln(model) else _BASE_SITES


def _ltx2_check(model: nn.Module) -> str | None:
    for path in _model_sites(model):
        mod = model.get_submodule(path)
        if type(mod) is not LTX2AdaLayerNormSingle:
            return f"{path} is a {type(mod).__name__}, expected LTX2AdaLayerNormSingle"
        if mod.emb.use_additional_conditions:
            return f"{path} uses additional conditions, which LTX2VideoTransformer3DModel never passes"
    for i, blk in enumerate(model.transformer_blocks):
        if type(blk) is not LTX2VideoTransformerBlock:
            return f"transformer_blocks.{i} is a {type(blk).__name__}, expected LTX2VideoTransformerBlock"
    return None


def _ltx2_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # LTX2VideoTransformer3DModel.forward, section 3, expression for expression.
    v = cond.values
    timestep = cond.timestep
    audio_timestep = v["audio_timestep"] if v["audio_timestep"] is not None else timestep
    sigma = v["sigma"]
    audio_sigma = v["audio_sigma"] if v["audio_sigma"] is not None else sigma
    bs, hd, ad = v["batch_size"], cond.hidden_dtype, v["audio_hidden_states_dtype"]
    out: dict[str, Any] = {
        "time_embed": model.time_embed(timestep.flatten(), batch_size=bs, hidden_dtype=hd),
        "audio_time_embed": model.audio_time_embed(audio_timestep.flatten(), batch_size=bs, hidden_dtype=ad),
    }
    if _prompt_adaln(model):
        out["prompt_adaln"] = model.prompt_adaln(sigma.flatten(), batch_size=bs, hidden_dtype=hd)
        out["audio_prompt_adaln"] = model.audio_prompt_adaln(audio_sigma.flatten(), batch_size=bs, hidden_dtype=ad)
    factor = model.config.cross_attn_timestep_scale_multiplier / model.config.timestep_scale_multiplier
    cross = v["use_cross_timestep"]
    video_ca = audio_sigma.flatten() if cross else timestep.flatten()
    out["av_cross_attn_video_scale_shift"] = model.av_cross_attn_video_scale_shift(
        video_ca, batch_size=bs, hidden_dtype=hd
    )
    out["av_cross_attn_video_a2v_gate"] = model.av_cross_attn_video_a2v_gate(
        video_ca * factor, batch_size=bs, hidden_dtype=hd
    )
    audio_ca = sigma.flatten() if cross else audio_timestep.flatten()
    out["av_cross_attn_audio_scale_shift"] = model.av_cross_attn_audio_scale_shift(
        audio_ca, batch_size=bs, hidden_dtype=ad
    )
    out["av_cross_attn_audio_v2a_gate"] = model.av_cross_attn_audio_v2a_gate(
        audio_ca * factor, batch_size=bs, hidden_dtype=ad
    )
    return {k: tuple(o) for k, o in out.items()}


def _ltx2_adjust_values(model: nn.Module, values: dict[str, Any]) -> None:
    values["use_cross_timestep"] = bool(values["use_cross_timestep"])
    if not values["use_cross_timestep"] and not _prompt_adaln(model):
        # sigma / audio_sigma are read only by the cross timestep and the prompt modulation.
        values["sigma"] = values["audio_sigma"] = None


FAMILY = Family(
    name="ltx2",
    model_class=LTX2VideoTransformer3DModel,
    block_lists=("transformer_blocks",),
    model_sites=_BASE_SITES,
    block_sites=no_block_sites,
    conditioning=("audio_timestep", "sigma", "audio_sigma", "use_cross_timestep", "batch_size"),
    lora_scale_kwarg="attention_kwargs",
    compute=_ltx2_compute,
    check=_ltx2_check,
    adjust_values=_ltx2_adjust_values,
    dtype_args=("audio_hidden_states",),
    model_sites_of=_model_sites,
)
