"""Modulator computations shared by several families, each mirroring one diffusers module.

* ``AdaLayerNormZero`` / ``SD35AdaLayerNormZeroX`` / ``AdaLayerNormZeroSingle``
  (diffusers ``models/normalization.py``): ``linear(silu(emb))``.
* ``AdaLayerNormContinuous`` and ``AuraFlowPreFinalBlock``: ``linear(silu(c).to(x.dtype))``.
* adaLN-single models (PixArt, Sana, LTX, Sana-Video) have no per-block site: blocks only add
  learned tables.
* A shared time projection plus per-block learned tables (Wan, Wan-VACE, SkyReels-V2): the
  condition embedder's ``time_embedder`` and ``time_proj`` are the sites; every block adds its own
  ``scale_shift_table`` to the shared projection inside its forward (cheap, not cached).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["continuous_linear", "no_block_sites", "shared_time_projection", "zero_linear"]


def no_block_sites(block: nn.Module) -> tuple[str, ...]:
    return ()


def zero_linear(norm: nn.Module, temb: Tensor) -> Tensor:
    # AdaLayerNormZero / SD35AdaLayerNormZeroX / AdaLayerNormZeroSingle: `linear(silu(emb))`.
    return norm.linear(norm.silu(temb))


def continuous_linear(norm: nn.Module, temb: Tensor, x_dtype: torch.dtype) -> Tensor:
    # AdaLayerNormContinuous: `linear(silu(c).to(x.dtype))`.
    return norm.linear(norm.silu(temb).to(x_dtype))


def shared_time_projection(
    embedder: nn.Module,
    timestep: Tensor,
    text_dtype: torch.dtype,
    time_embedder_dtype: torch.dtype,
    seq_len: int | None = None,
) -> dict[str, Tensor]:
    """Outputs of ``time_embedder`` and ``time_proj`` of a Wan-style condition embedder.

    Mirrors ``WanTimeTextImageEmbedding.forward`` (and the SkyReels-V2 / Wan-VACE copies):
    ``temb = time_embedder(timesteps_proj(t) [.unflatten(0, (-1, seq_len))] [.to(dtype)])``,
    ``time_proj(act_fn(temb.type_as(encoder_hidden_states)))``. ``seq_len`` is Wan 2.2 TI2V's
    per-token timestep length; ``time_embedder_dtype`` is the dtype the model reads off the
    embedder's parameters (each model has its own way of reading it).
    """
    t = embedder.timesteps_proj(timestep)
    if seq_len is not None:
        t = t.unflatten(0, (-1, seq_len))
    if t.dtype != time_embedder_dtype and time_embedder_dtype != torch.int8:
        t = t.to(time_embedder_dtype)
    raw = embedder.time_embedder(t)
    # `type_as(encoder_hidden_states)` is `.to(encoder_hidden_states.dtype)` on the same device.
    temb = raw.to(text_dtype)
    return {"time_embedder": raw, "time_proj": embedder.time_proj(embedder.act_fn(temb))}
