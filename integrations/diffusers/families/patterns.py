"""Modulator computations shared by several families, each mirroring one diffusers module.

* ``AdaLayerNormZero`` / ``SD35AdaLayerNormZeroX`` / ``AdaLayerNormZeroSingle``
  (diffusers ``models/normalization.py``): ``linear(silu(emb))``.
* ``AdaLayerNormContinuous`` and ``AuraFlowPreFinalBlock``: ``linear(silu(c).to(x.dtype))``.
* adaLN-single models (PixArt, Sana, LTX, Sana-Video, Krea2, Chroma) have no per-block site:
  blocks only add learned tables or slice a shared tensor.
* A shared time projection plus per-block learned tables (Wan, Wan-VACE, SkyReels-V2): the
  condition embedder's ``time_embedder`` and ``time_proj`` are the sites; every block adds its own
  ``scale_shift_table`` to the shared projection inside its forward (cheap, not cached).
* The HunyuanVideo text-token refiners (``HunyuanVideoTokenRefiner``,
  ``HunyuanVideo15TokenRefiner``): only the timestep MLP of their ``time_text_embed`` is a site;
  the rest of their conditioning reads the mean of the prompt tokens.
* Shared modulation modules called once per forward and handed to every block (FLUX.2) are
  model-level sites; per-block ``nn.Sequential(SiLU, Linear)`` modulations (Qwen-Image
  ``img_mod``/``txt_mod``, HiDream/Z-Image ``adaLN_modulation``) are sites as a whole.

Helpers for the families' ``check`` (:func:`blocks_reason`, :func:`module_reason`) and for
modules that read only the *dtype* of the latents (:func:`dtype_stand_in`) are here too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from diffusers.models.normalization import (
    AdaLayerNormContinuous,
    AdaLayerNormSingle,
    AdaLayerNormZero,
    AdaLayerNormZeroSingle,
)

__all__ = [
    "adaln_single_time_embed",
    "adaln_single_time_embed_reason",
    "blocks_reason",
    "flux_style_block_sites",
    "flux_style_check",
    "flux_style_values",
    "continuous_linear",
    "dtype_stand_in",
    "module_reason",
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


def dtype_stand_in(dtype: torch.dtype, device: torch.device) -> Tensor:
    """An empty tensor standing in for the latents where a module reads only their dtype.

    Qwen-Image's ``QwenTimestepProjEmbeddings`` and Lumina2's ``time_proj(t).type_as(x)`` take the
    hidden states only to cast to their dtype; an empty tensor of that dtype gives the same bits
    without depending on (or keying on) the latent tokens.
    """
    return torch.empty(0, dtype=dtype, device=device)


def module_reason(model: nn.Module, path: str, cls: type) -> str | None:
    """``None`` when the module at ``path`` is exactly a ``cls`` (or a PEFT LoRA layer wrapping
    exactly a ``cls``), else the refusal reason."""
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return f"{path} is missing, expected a {cls.__name__}"
    if type(module) is cls:
        return None
    base = getattr(module, "base_layer", None)
    if type(module).__module__.startswith("peft.") and type(base) is cls:
        return None  # a PEFT LoRA layer around the expected module: runs it, keyed by adapter state
    got, want = type(module).__name__, cls.__name__
    if got == want:  # same short name (e.g. a wrapper's `Linear`): say which modules they are
        got, want = f"{type(module).__module__}.{got}", f"{cls.__module__}.{want}"
    return f"{path} is a {got}, expected {want}"


def blocks_reason(model: nn.Module, list_name: str, block_cls: type, parts: dict[str, type] | None = None) -> str | None:
    """``None`` when every block of ``model.<list_name>`` is exactly ``block_cls`` and each of its
    submodules named in ``parts`` (relative path → class) is exactly that class."""
    for i in range(len(getattr(model, list_name))):
        reason = module_reason(model, f"{list_name}.{i}", block_cls)
        if reason is None and parts:
            for rel, cls in parts.items():
                reason = module_reason(model, f"{list_name}.{i}.{rel}", cls)
                if reason is not None:
                    break
        if reason is not None:
            return reason
    return None


# ------------------------------------------------------------------ adaLN-single time embedding
# Sana (`sana_transformer.py`) and Sana-Video (`transformer_sana_video.py`): `time_embed` is an
# AdaLayerNormSingle, or with guidance a SanaCombinedTimestepGuidanceEmbeddings, called in one of
# two forms and returning `(Linear(SiLU(e)), e)`.


def adaln_single_time_embed_reason(model: nn.Module, guidance_cls: type) -> str | None:
    """``None`` when ``model.time_embed`` is an AdaLayerNormSingle without additional conditions
    (the model never passes them) or exactly ``guidance_cls``, else the refusal reason."""
    emb = model.time_embed
    if type(emb) is AdaLayerNormSingle:
        if emb.emb.use_additional_conditions:
            return f"time_embed uses additional conditions, which {type(model).__name__} never passes"
        return None
    if type(emb) is not guidance_cls:
        return f"time_embed is a {type(emb).__name__}"
    return None


def adaln_single_time_embed(model: nn.Module, timestep: Tensor, guidance, batch_size, hidden_dtype) -> tuple:
    """``model.time_embed`` called as the model's forward does: with ``guidance`` when given,
    else with the batch size."""
    if guidance is not None:
        return tuple(model.time_embed(timestep, guidance=guidance, hidden_dtype=hidden_dtype))
    return tuple(model.time_embed(timestep, batch_size=batch_size, hidden_dtype=hidden_dtype))


# ------------------------------------------------------------------ FLUX.1-style MMDiT stacks
# FLUX.1 (`transformer_flux.py`) and the models built on its layout (LongCat-Image, Bria, Bria
# FIBO, Ovis-Image): double-stream blocks with `norm1`/`norm1_context` = AdaLayerNormZero,
# single-stream blocks with `norm` = AdaLayerNormZeroSingle, `norm_out` = AdaLayerNormContinuous,
# all fed one `temb`.


class FluxStyleBlockSites:
    """Block → sites for a FLUX-style stack whose double-stream block class is ``double_cls``.

    A small class rather than a closure so that a cached model (whose hooks hold the family)
    can be pickled.
    """

    def __init__(self, double_cls: type) -> None:
        self.double_cls = double_cls

    def __call__(self, block: nn.Module) -> tuple[str, ...]:
        if type(block) is self.double_cls:
            return ("norm1.linear", "norm1_context.linear")
        return ("norm.linear",)


def flux_style_block_sites(double_cls: type) -> Callable[[nn.Module], tuple[str, ...]]:
    """Block → sites for a FLUX-style stack whose double-stream block class is ``double_cls``."""
    return FluxStyleBlockSites(double_cls)


def flux_style_check(model: nn.Module, double_cls: type, single_cls: type) -> str | None:
    """Refusal reason unless ``model`` has the FLUX-style block/norm layout."""
    return (
        blocks_reason(model, "transformer_blocks", double_cls,
                      {"norm1": AdaLayerNormZero, "norm1_context": AdaLayerNormZero})
        or blocks_reason(model, "single_transformer_blocks", single_cls, {"norm": AdaLayerNormZeroSingle})
        or module_reason(model, "norm_out", AdaLayerNormContinuous)
    )


def flux_style_values(model: nn.Module, temb: Tensor, x_dtype: torch.dtype) -> dict[str, Tensor]:
    """Every block's and ``norm_out``'s modulator of a FLUX-style stack from one ``temb``."""
    out: dict[str, Tensor] = {}
    for i, blk in enumerate(model.transformer_blocks):
        out[f"transformer_blocks.{i}.norm1.linear"] = zero_linear(blk.norm1, temb)
        out[f"transformer_blocks.{i}.norm1_context.linear"] = zero_linear(blk.norm1_context, temb)
    for i, blk in enumerate(model.single_transformer_blocks):
        out[f"single_transformer_blocks.{i}.norm.linear"] = zero_linear(blk.norm, temb)
    out["norm_out.linear"] = continuous_linear(model.norm_out, temb, x_dtype)
    return out
