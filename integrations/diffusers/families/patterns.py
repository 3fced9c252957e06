"""Modulator computations shared by several families, each mirroring one diffusers module.

* ``AdaLayerNormZero`` / ``SD35AdaLayerNormZeroX`` / ``AdaLayerNormZeroSingle``
  (diffusers ``models/normalization.py``): ``linear(silu(emb))``.
* ``AdaLayerNormContinuous`` and ``AuraFlowPreFinalBlock``: ``linear(silu(c).to(x.dtype))``.
* adaLN-single models (PixArt, Sana, LTX, Sana-Video) have no per-block site: blocks only add
  learned tables.
* A shared time projection plus per-block learned tables (Wan, Wan-VACE, SkyReels-V2): the
  condition embedder's ``time_embedder`` and ``time_proj`` are the sites; every block adds its own
  ``scale_shift_table`` to the shared projection inside its forward (cheap, not cached).
* The HunyuanVideo text-token refiners (``HunyuanVideoTokenRefiner``,
  ``HunyuanVideo15TokenRefiner``): only the timestep MLP of their ``time_text_embed`` is a site;
  the rest of their conditioning reads the mean of the prompt tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "continuous_linear",
    "no_block_sites",
    "refiner_timestep_embedding",
    "shared_time_projection",
    "zero_linear",
]


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


def refiner_timestep_embedding(refiner: nn.Module, timestep: Tensor, text_dtype: torch.dtype) -> Tensor:
    """Output of a HunyuanVideo token refiner's ``time_text_embed.timestep_embedder``.

    Mirrors ``HunyuanVideoTokenRefiner.forward`` / ``HunyuanVideo15TokenRefiner.forward`` calling
    ``CombinedTimestepTextProjEmbeddings.forward(timestep, pooled)`` (diffusers
    ``models/embeddings.py``): ``timestep_embedder(time_proj(t).to(pooled.dtype))``, where ``pooled``
    is the (masked) mean of the prompt tokens cast back to their dtype, so the embedding depends
    on the timestep and on ``encoder_hidden_states.dtype`` only. Its sum with
    ``text_embedder(pooled)`` and the refiner blocks' adaLN read the prompt tokens: not sites.
    """
    emb = refiner.time_text_embed
    return emb.timestep_embedder(emb.time_proj(timestep).to(dtype=text_dtype))
