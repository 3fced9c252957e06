"""Per-model-class descriptions of where diffusers DiTs compute their adaLN modulators.

A *family* names, for one exact diffusers transformer class, every module whose output is a pure
function of ``(timestep, conditioning, weights)`` — the *modulator sites* — and how to compute all
of them at once from the model's forward arguments. Everything else in the integration (the slots
that replay cached tensors, the cache key, the ``mods=None`` block patcher) is driven by this
table, so supporting a new model means adding one :class:`Family` here and proving it bit-exact in
the tests.

Patterns (research/inference.md §1.1, §2; diffusers 0.42.1 source):

* **DiT** (``DiTTransformer2DModel``): every ``BasicTransformerBlock(norm_type="ada_norm_zero")``
  owns an embedder ``norm1.emb = CombinedTimestepLabelEmbeddings`` (t, class → c) and a
  ``norm1.linear`` (SiLU(c) → 6·D; ``AdaLayerNormZero``, arXiv 2212.09748 §3.2 eq. for adaLN-Zero).
  The model output recomputes ``transformer_blocks[0].norm1.emb`` and applies ``proj_out_1``.
* **PixArt-α/Σ** (``PixArtTransformer2DModel``): adaLN-single (arXiv 2310.00426 §2.3): one shared
  ``adaln_single`` returns ``(Linear(SiLU(e)), e)`` with ``e = emb(t, resolution, aspect)``;
  blocks only add their learned ``scale_shift_table`` to it, so they have no per-block site.
* **SD3 / SD3.5** (``SD3Transformer2DModel``): ``temb = time_text_embed(t, pooled)`` once; each
  ``JointTransformerBlock`` runs ``norm1.linear`` (6·D, or 9·D for SD3.5 dual-attention blocks)
  and ``norm1_context.linear`` (6·D, or 2·D ``AdaLayerNormContinuous`` in the ``context_pre_only``
  last block); ``norm_out.linear`` (2·D) at the end (arXiv 2403.03206 §4, MMDiT).
* **FLUX.1** (``FluxTransformer2DModel``): ``temb = time_text_embed(1000·t, [1000·g], pooled)``;
  double blocks ``norm1.linear`` + ``norm1_context.linear`` (6·D each), single blocks
  ``norm.linear`` (3·D), ``norm_out.linear`` (2·D).
* **Sana** (``SanaTransformer2DModel``): adaLN-single like PixArt (``time_embed`` returns
  ``(Linear(SiLU(e)), e)``; Sana-Sprint's ``SanaCombinedTimestepGuidanceEmbeddings`` adds a
  guidance embedding to ``e``); blocks and ``norm_out`` only add learned tables.
* **AuraFlow** (``AuraFlowTransformer2DModel``): ``temb = time_step_proj(time_step_embed(t))``
  (timestep only, so entries are shared by all prompts); joint blocks ``norm1.linear`` +
  ``norm1_context.linear``, single blocks ``norm1.linear`` (6·D each, no bias), and
  ``norm_out.linear`` (``AuraFlowPreFinalBlock``, 2·D).

Every model class not listed here — and every subclass of a listed class, whose ``forward`` may
differ — is refused with :class:`UnsupportedModelError` naming the class.

Example:
    >>> from diffusers import DiTTransformer2DModel
    >>> m = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
    ...                           num_layers=1, sample_size=4, num_embeds_ada_norm=10)
    >>> fam = resolve_family(m)
    >>> fam.name, site_paths(m, fam)[:2]
    ('dit', ['proj_out_1', 'transformer_blocks.0.norm1.emb'])
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusers import (
    AuraFlowTransformer2DModel,
    DiTTransformer2DModel,
    FluxTransformer2DModel,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
)
from diffusers.models.attention import BasicTransformerBlock, JointTransformerBlock
from diffusers.models.normalization import (
    AdaLayerNormContinuous,
    AdaLayerNormSingle,
    AdaLayerNormZero,
    AdaLayerNormZeroSingle,
    SD35AdaLayerNormZeroX,
)
from diffusers.models.transformers.auraflow_transformer_2d import (
    AuraFlowJointTransformerBlock,
    AuraFlowPreFinalBlock,
    AuraFlowSingleTransformerBlock,
)
from diffusers.models.transformers.sana_transformer import (
    SanaCombinedTimestepGuidanceEmbeddings,
    SanaModulatedNorm,
    SanaTransformer2DModel,
    SanaTransformerBlock,
)
from diffusers.models.transformers.transformer_flux import (
    FluxSingleTransformerBlock,
    FluxTransformerBlock,
)

__all__ = [
    "UnsupportedModelError",
    "CallConditioning",
    "Family",
    "FAMILIES",
    "resolve_family",
    "unwrap_compiled",
    "site_paths",
    "block_paths",
]


class UnsupportedModelError(TypeError):
    """Raised when a model (or one of its blocks) is not a layout the integration has proven."""


@dataclass(frozen=True)
class CallConditioning:
    """Everything the modulators of one forward call depend on, besides the weights.

    ``values`` maps names (``"class_labels"``, ``"pooled_projections"``, ``"guidance"``,
    ``"added_cond_kwargs"``, ``"batch_size"``) to what the model passes to its embedders; the cache
    key is built from the exact bits of ``timestep``, these values, ``hidden_dtype`` and
    ``lora_scale``.
    """

    timestep: Tensor
    values: dict[str, Any]
    hidden_dtype: torch.dtype
    lora_scale: float = 1.0


ComputeFn = Callable[[nn.Module, CallConditioning], dict[str, Any]]


@dataclass(frozen=True)
class Family:
    """How one diffusers transformer class computes its modulators.

    Attributes:
        name: short family name (``"dit"``, ``"pixart"``, ``"sd3"``, ``"flux"``).
        model_class: the exact class handled (subclasses are refused).
        block_lists: names of the ``nn.ModuleList`` attributes holding the blocks.
        model_sites: model-level site paths (outside blocks).
        block_sites: block → its site paths relative to the block.
        conditioning: forward-argument names (besides ``timestep``) feeding the modulators.
        lora_scale_kwarg: forward kwarg whose ``"scale"`` entry diffusers' ``apply_lora_scale``
            applies to PEFT layers for the call (None when the class has no such decorator).
        compute: computes every site's output from a :class:`CallConditioning`.
        check: returns a refusal reason for configurations the family does not cover, else None.
    """

    name: str
    model_class: type
    block_lists: tuple[str, ...]
    model_sites: tuple[str, ...]
    block_sites: Callable[[nn.Module], tuple[str, ...]]
    conditioning: tuple[str, ...]
    lora_scale_kwarg: str | None
    compute: ComputeFn
    check: Callable[[nn.Module], str | None]

    def call_conditioning(self, model: nn.Module, args: tuple, kwargs: dict) -> CallConditioning:
        """Bind a forward call's arguments and pick out what the modulators depend on."""
        bound = _forward_signature(self.model_class).bind(model, *args, **kwargs)
        arguments = bound.arguments
        hidden_states = arguments["hidden_states"]
        timestep = arguments.get("timestep")
        if not isinstance(timestep, Tensor):
            raise TypeError(
                f"{self.model_class.__name__}: the modulator cache needs `timestep` as a torch.Tensor, "
                f"got {type(timestep).__name__}"
            )
        values = {name: arguments.get(name) for name in self.conditioning}
        if "batch_size" in values:  # not a forward argument: the models take it from the latents
            values["batch_size"] = hidden_states.shape[0]
        if self.name == "pixart":
            if not model.adaln_single.emb.use_additional_conditions:
                # PixArt-Σ-style: resolution/aspect are ignored by the embedder, so they must not
                # split the key (t-only reuse across prompts and sizes).
                values["added_cond_kwargs"] = None
        lora_scale = 1.0
        if self.lora_scale_kwarg is not None:
            extra = arguments.get(self.lora_scale_kwarg)
            if extra is not None:
                lora_scale = extra.get("scale", 1.0)
        return CallConditioning(timestep, values, hidden_states.dtype, lora_scale)


_SIGNATURES: dict[type, inspect.Signature] = {}


def _forward_signature(cls: type) -> inspect.Signature:
    sig = _SIGNATURES.get(cls)
    if sig is None:
        sig = _SIGNATURES[cls] = inspect.signature(cls.forward)
    return sig


# --------------------------------------------------------------------------------------------
# DiT


def _dit_block_sites(block: nn.Module) -> tuple[str, ...]:
    return ("norm1.emb", "norm1.linear")


def _dit_check(model: nn.Module) -> str | None:
    for i, blk in enumerate(model.transformer_blocks):
        if type(blk) is not BasicTransformerBlock or blk.norm_type != "ada_norm_zero":
            return f"transformer_blocks.{i} is not a BasicTransformerBlock(norm_type='ada_norm_zero')"
        if type(blk.norm1) is not AdaLayerNormZero or blk.norm1.emb is None:
            return f"transformer_blocks.{i}.norm1 is not an AdaLayerNormZero with its own embedder"
    return None


def _dit_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # Mirrors BasicTransformerBlock.forward (ada_norm_zero) -> AdaLayerNormZero.forward and
    # DiTTransformer2DModel.forward's output stage, op for op, so the tensors are bit-identical.
    out: dict[str, Any] = {}
    labels = cond.values["class_labels"]
    for i, blk in enumerate(model.transformer_blocks):
        norm = blk.norm1
        c = norm.emb(cond.timestep, labels, hidden_dtype=cond.hidden_dtype)
        out[f"transformer_blocks.{i}.norm1.emb"] = c
        out[f"transformer_blocks.{i}.norm1.linear"] = norm.linear(norm.silu(c))
    c0 = out["transformer_blocks.0.norm1.emb"]
    out["proj_out_1"] = model.proj_out_1(F.silu(c0))
    return out


# --------------------------------------------------------------------------------------------
# PixArt-α / Σ


def _no_block_sites(block: nn.Module) -> tuple[str, ...]:
    return ()


def _pixart_check(model: nn.Module) -> str | None:
    if type(model.adaln_single) is not AdaLayerNormSingle:
        return "adaln_single is not an AdaLayerNormSingle"
    for i, blk in enumerate(model.transformer_blocks):
        if type(blk) is not BasicTransformerBlock or blk.norm_type != "ada_norm_single":
            return f"transformer_blocks.{i} is not a BasicTransformerBlock(norm_type='ada_norm_single')"
    return None


def _pixart_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # PixArtTransformer2DModel.forward: `timestep, embedded_timestep = self.adaln_single(...)`.
    out = model.adaln_single(
        cond.timestep,
        cond.values["added_cond_kwargs"],
        batch_size=cond.values["batch_size"],
        hidden_dtype=cond.hidden_dtype,
    )
    return {"adaln_single": tuple(out)}


# --------------------------------------------------------------------------------------------
# SD3 / SD3.5


def _sd3_block_sites(block: nn.Module) -> tuple[str, ...]:
    return ("norm1.linear", "norm1_context.linear")


def _sd3_check(model: nn.Module) -> str | None:
    for i, blk in enumerate(model.transformer_blocks):
        if type(blk) is not JointTransformerBlock:
            return f"transformer_blocks.{i} is a {type(blk).__name__}, expected JointTransformerBlock"
        want = SD35AdaLayerNormZeroX if blk.use_dual_attention else AdaLayerNormZero
        if type(blk.norm1) is not want:
            return f"transformer_blocks.{i}.norm1 is a {type(blk.norm1).__name__}, expected {want.__name__}"
        want_ctx = AdaLayerNormContinuous if blk.context_pre_only else AdaLayerNormZero
        if type(blk.norm1_context) is not want_ctx:
            return (
                f"transformer_blocks.{i}.norm1_context is a {type(blk.norm1_context).__name__}, "
                f"expected {want_ctx.__name__}"
            )
    if type(model.norm_out) is not AdaLayerNormContinuous:
        return "norm_out is not an AdaLayerNormContinuous"
    return None


def _zero_linear(norm: nn.Module, temb: Tensor) -> Tensor:
    # AdaLayerNormZero / SD35AdaLayerNormZeroX / AdaLayerNormZeroSingle: `linear(silu(emb))`.
    return norm.linear(norm.silu(temb))


def _continuous_linear(norm: nn.Module, temb: Tensor, x_dtype: torch.dtype) -> Tensor:
    # AdaLayerNormContinuous: `linear(silu(c).to(x.dtype))`.
    return norm.linear(norm.silu(temb).to(x_dtype))


def _sd3_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    temb = model.time_text_embed(cond.timestep, cond.values["pooled_projections"])
    out: dict[str, Any] = {"time_text_embed": temb}
    for i, blk in enumerate(model.transformer_blocks):
        out[f"transformer_blocks.{i}.norm1.linear"] = _zero_linear(blk.norm1, temb)
        ctx = blk.norm1_context
        if blk.context_pre_only:
            # x is encoder_hidden_states after context_embedder: the model's hidden dtype.
            out[f"transformer_blocks.{i}.norm1_context.linear"] = _continuous_linear(ctx, temb, cond.hidden_dtype)
        else:
            out[f"transformer_blocks.{i}.norm1_context.linear"] = _zero_linear(ctx, temb)
    out["norm_out.linear"] = _continuous_linear(model.norm_out, temb, cond.hidden_dtype)
    return out


# --------------------------------------------------------------------------------------------
# FLUX.1


def _flux_block_sites(block: nn.Module) -> tuple[str, ...]:
    if type(block) is FluxTransformerBlock:
        return ("norm1.linear", "norm1_context.linear")
    return ("norm.linear",)


def _flux_check(model: nn.Module) -> str | None:
    for i, blk in enumerate(model.transformer_blocks):
        if type(blk) is not FluxTransformerBlock:
            return f"transformer_blocks.{i} is a {type(blk).__name__}, expected FluxTransformerBlock"
        if type(blk.norm1) is not AdaLayerNormZero or type(blk.norm1_context) is not AdaLayerNormZero:
            return f"transformer_blocks.{i} norms are not AdaLayerNormZero"
    for i, blk in enumerate(model.single_transformer_blocks):
        if type(blk) is not FluxSingleTransformerBlock or type(blk.norm) is not AdaLayerNormZeroSingle:
            return f"single_transformer_blocks.{i} is not a FluxSingleTransformerBlock with AdaLayerNormZeroSingle"
    if type(model.norm_out) is not AdaLayerNormContinuous:
        return "norm_out is not an AdaLayerNormContinuous"
    return None


def _flux_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # FluxTransformer2DModel.forward: timestep/guidance are cast to the hidden dtype and scaled by
    # 1000 before the embedder; the same expressions are evaluated here.
    hd = cond.hidden_dtype
    timestep = cond.timestep.to(hd) * 1000
    guidance = cond.values["guidance"]
    pooled = cond.values["pooled_projections"]
    if guidance is None:
        temb = model.time_text_embed(timestep, pooled)
    else:
        guidance = guidance.to(hd) * 1000
        temb = model.time_text_embed(timestep, guidance, pooled)
    out: dict[str, Any] = {"time_text_embed": temb}
    for i, blk in enumerate(model.transformer_blocks):
        out[f"transformer_blocks.{i}.norm1.linear"] = _zero_linear(blk.norm1, temb)
        out[f"transformer_blocks.{i}.norm1_context.linear"] = _zero_linear(blk.norm1_context, temb)
    for i, blk in enumerate(model.single_transformer_blocks):
        out[f"single_transformer_blocks.{i}.norm.linear"] = _zero_linear(blk.norm, temb)
    out["norm_out.linear"] = _continuous_linear(model.norm_out, temb, hd)
    return out


# --------------------------------------------------------------------------------------------
# AuraFlow (MMDiT + single-stream blocks, modulators depend on t only)


def _aura_block_sites(block: nn.Module) -> tuple[str, ...]:
    if type(block) is AuraFlowJointTransformerBlock:
        return ("norm1.linear", "norm1_context.linear")
    return ("norm1.linear",)


def _aura_check(model: nn.Module) -> str | None:
    for i, blk in enumerate(model.joint_transformer_blocks):
        if type(blk) is not AuraFlowJointTransformerBlock or type(blk.norm1) is not AdaLayerNormZero:
            return f"joint_transformer_blocks.{i} is not an AuraFlowJointTransformerBlock with AdaLayerNormZero"
        if type(blk.norm1_context) is not AdaLayerNormZero:
            return f"joint_transformer_blocks.{i}.norm1_context is not an AdaLayerNormZero"
    for i, blk in enumerate(model.single_transformer_blocks):
        if type(blk) is not AuraFlowSingleTransformerBlock or type(blk.norm1) is not AdaLayerNormZero:
            return f"single_transformer_blocks.{i} is not an AuraFlowSingleTransformerBlock with AdaLayerNormZero"
    if type(model.norm_out) is not AuraFlowPreFinalBlock:
        return "norm_out is not an AuraFlowPreFinalBlock"
    return None


def _aura_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # AuraFlowTransformer2DModel.forward: `temb = time_step_proj(time_step_embed(t).to(dtype of the
    # first parameter))`; AuraFlowPreFinalBlock: `linear(silu(c).to(x.dtype))`.
    first_dtype = next(model.parameters()).dtype
    temb = model.time_step_proj(model.time_step_embed(cond.timestep).to(dtype=first_dtype))
    out: dict[str, Any] = {"time_step_proj": temb}
    for i, blk in enumerate(model.joint_transformer_blocks):
        out[f"joint_transformer_blocks.{i}.norm1.linear"] = _zero_linear(blk.norm1, temb)
        out[f"joint_transformer_blocks.{i}.norm1_context.linear"] = _zero_linear(blk.norm1_context, temb)
    for i, blk in enumerate(model.single_transformer_blocks):
        out[f"single_transformer_blocks.{i}.norm1.linear"] = _zero_linear(blk.norm1, temb)
    out["norm_out.linear"] = _continuous_linear(model.norm_out, temb, cond.hidden_dtype)
    return out


# --------------------------------------------------------------------------------------------
# Sana (adaLN-single like PixArt; Sana-Sprint adds a guidance embedding)


def _sana_check(model: nn.Module) -> str | None:
    emb = model.time_embed
    if type(emb) is AdaLayerNormSingle:
        if emb.emb.use_additional_conditions:
            return "time_embed uses additional conditions, which SanaTransformer2DModel never passes"
    elif type(emb) is not SanaCombinedTimestepGuidanceEmbeddings:
        return f"time_embed is a {type(emb).__name__}"
    for i, blk in enumerate(model.transformer_blocks):
        if type(blk) is not SanaTransformerBlock:
            return f"transformer_blocks.{i} is a {type(blk).__name__}, expected SanaTransformerBlock"
    if type(model.norm_out) is not SanaModulatedNorm:
        return "norm_out is not a SanaModulatedNorm"
    return None


def _sana_compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:
    # SanaTransformer2DModel.forward: the same two call forms of `time_embed`.
    guidance = cond.values["guidance"]
    if guidance is not None:
        out = model.time_embed(cond.timestep, guidance=guidance, hidden_dtype=cond.hidden_dtype)
    else:
        out = model.time_embed(cond.timestep, batch_size=cond.values["batch_size"], hidden_dtype=cond.hidden_dtype)
    return {"time_embed": tuple(out)}


FAMILIES: dict[type, Family] = {
    fam.model_class: fam
    for fam in (
        Family(
            name="dit",
            model_class=DiTTransformer2DModel,
            block_lists=("transformer_blocks",),
            model_sites=("proj_out_1",),
            block_sites=_dit_block_sites,
            conditioning=("class_labels",),
            lora_scale_kwarg=None,
            compute=_dit_compute,
            check=_dit_check,
        ),
        Family(
            name="pixart",
            model_class=PixArtTransformer2DModel,
            block_lists=("transformer_blocks",),
            model_sites=("adaln_single",),
            block_sites=_no_block_sites,
            conditioning=("added_cond_kwargs", "batch_size"),
            lora_scale_kwarg=None,
            compute=_pixart_compute,
            check=_pixart_check,
        ),
        Family(
            name="sd3",
            model_class=SD3Transformer2DModel,
            block_lists=("transformer_blocks",),
            model_sites=("time_text_embed", "norm_out.linear"),
            block_sites=_sd3_block_sites,
            conditioning=("pooled_projections",),
            lora_scale_kwarg="joint_attention_kwargs",
            compute=_sd3_compute,
            check=_sd3_check,
        ),
        Family(
            name="flux",
            model_class=FluxTransformer2DModel,
            block_lists=("transformer_blocks", "single_transformer_blocks"),
            model_sites=("time_text_embed", "norm_out.linear"),
            block_sites=_flux_block_sites,
            conditioning=("pooled_projections", "guidance"),
            lora_scale_kwarg="joint_attention_kwargs",
            compute=_flux_compute,
            check=_flux_check,
        ),
        Family(
            name="auraflow",
            model_class=AuraFlowTransformer2DModel,
            block_lists=("joint_transformer_blocks", "single_transformer_blocks"),
            model_sites=("time_step_proj", "norm_out.linear"),
            block_sites=_aura_block_sites,
            conditioning=(),
            lora_scale_kwarg="attention_kwargs",
            compute=_aura_compute,
            check=_aura_check,
        ),
        Family(
            name="sana",
            model_class=SanaTransformer2DModel,
            block_lists=("transformer_blocks",),
            model_sites=("time_embed",),
            block_sites=_no_block_sites,
            conditioning=("guidance", "batch_size"),
            lora_scale_kwarg="attention_kwargs",
            compute=_sana_compute,
            check=_sana_check,
        ),
    )
}


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The module inside a whole-model ``torch.compile`` wrapper (or ``model`` itself)."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else model


def resolve_family(model: nn.Module) -> Family:
    """The :class:`Family` of ``model`` or :class:`UnsupportedModelError` naming its class.

    Only exact classes are accepted: a subclass may override ``forward`` and compute its
    modulators differently, which the integration cannot prove it handles.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a diffusers transformer (torch.nn.Module), got {type(model).__name__}")
    model = unwrap_compiled(model)
    fam = FAMILIES.get(type(model))
    if fam is None:
        supported = ", ".join(sorted(c.__name__ for c in FAMILIES))
        raise UnsupportedModelError(
            f"{type(model).__name__} is not supported by the modulator cache (supported classes: {supported}); "
            "refusing rather than caching a layout that has not been proven bit-exact"
        )
    reason = fam.check(model)
    if reason is not None:
        raise UnsupportedModelError(f"{type(model).__name__} has an unsupported layout: {reason}")
    return fam


def block_paths(model: nn.Module, family: Family) -> list[str]:
    """Dotted paths of every block of ``model`` (``"transformer_blocks.0"``, …) in call order."""
    return [f"{name}.{i}" for name in family.block_lists for i in range(len(getattr(model, name)))]


def site_paths(model: nn.Module, family: Family) -> list[str]:
    """Dotted paths of every modulator site: model-level sites first, then blocks in order."""
    paths = list(family.model_sites)
    for bpath in block_paths(model, family):
        block = model.get_submodule(bpath)
        paths.extend(f"{bpath}.{rel}" for rel in family.block_sites(block))
    return paths
