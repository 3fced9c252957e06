"""Tiny instances of diffusers transformers: a reduced copy of a config, random weights, inputs.

Used where a whole model class must be exercised in well under a second without downloads —
the diffusers-version self-check (:mod:`fusion_diffusers.selfcheck`), site discovery
(``python -m fusion_diffusers.discover``) and the support table. Two layers:

* :func:`reduced_config` shrinks a config (the model's own ``model.config`` or the class's
  defaults) by key-name rules: layer counts to 2 (layer-index lists filtered to match), heads to
  2, head dims to 16 (rotary axis splits scaled with them), hidden/text/FFN widths to small
  values; structural switches (guidance embedding, dual attention, qk-norm, …) are kept.
* :data:`SPECS` holds, per class name, config overrides for constraints the rules cannot know
  (PixArt's size embedding needs a width divisible by 3) and an input builder; classes without a
  spec get inputs synthesised from the forward signature (:func:`synth_inputs`), which covers the
  common argument names and refuses the rest with :class:`TinyInstanceError`.

Every parameter is re-drawn from N(0, 0.2²) (:func:`randomize`): diffusers' zero-initialised
adaLN layers would make modulators vanish, and a check that cannot tell a stale modulator from a
fresh one proves nothing.

Example:
    >>> from diffusers import FluxTransformer2DModel
    >>> model, inputs = tiny_case(FluxTransformer2DModel)
    >>> model.config.num_layers, model.config.attention_head_dim, model.config.axes_dims_rope
    (2, 16, (2, 8, 6))
    >>> sorted(inputs)[:4]
    ['encoder_hidden_states', 'hidden_states', 'img_ids', 'pooled_projections']
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "SPECS",
    "depth_config",
    "TinyInstanceError",
    "TinySpec",
    "randomize",
    "reduced_config",
    "synth_inputs",
    "tiny_case",
    "tiny_model",
]


class TinyInstanceError(RuntimeError):
    """A tiny instance (or its inputs) of a class could not be built."""


InputsFn = Callable[[nn.Module, int, torch.dtype, int], dict]


@dataclass(frozen=True)
class TinySpec:
    """Per-class help for :func:`tiny_case`.

    Attributes:
        config: keys set after the generic reduction.
        inputs: ``(model, batch, dtype, seed) -> forward kwargs``; None: :func:`synth_inputs`.
    """

    config: dict = field(default_factory=dict)
    inputs: InputsFn | None = None


_LAYERS = re.compile(r"(layers|blocks|depth)$")
_LAYER_LISTS = re.compile(r"layers$|layer_ids$")
_HEADS = re.compile(r"(^|_)(num_attention_heads|n_heads|num_heads|num_cross_attention_heads)$")
_KV_HEADS = re.compile(r"kv_heads$|key_value_heads$")
_HEAD_DIM = re.compile(r"(^|_)(head_dim|attention_head_dim|dim_head)$")
_HIDDEN = re.compile(r"^(hidden_size|dim|model_dim|inner_dim)$")
_ROPE = re.compile(r"axes_dim|rope_axes|axes_dims|rope_dim|mrope_section|rope_dim_list")
_WIDTH = re.compile(
    r"^(joint_attention_dim|text_dim|caption_channels|text_embed_dim|cross_attention_dim|cap_feat_dim|"
    r"context_in_dim|text_hidden_dim|pooled_projection_dim|caption_projection_dim|text_emb_dim|"
    r"text_embed_2_dim|image_embed_dim|in_text_dim2?|text_in_dim|condition_dim|time_embed_dim|"
    r"llm_features_dim|text_encoder_dim|approximator_hidden_dim|adaln_dim|time_dim|image_dim|"
    r"audio_cross_attention_dim|time_embed_hidden_dim|encoder_hidden_size|siglip_feat_dim)$"
)
_FFN = re.compile(r"(ffn_dim|ff_dim|intermediate_size|ffn_hidden_size|ff_inner_dim|moe_intermediate_dim)$")
_SMALL_SPATIAL = {"sample_size": 8, "pos_embed_max_size": 16, "sample_height": 8, "sample_width": 8,
                  "sample_frames": 5, "max_text_seq_length": 5}

HEAD_DIM = 16
HEADS = 2
WIDTH = 32
FFN = 48


def _class_defaults(cls: type) -> dict:
    sig = inspect.signature(cls.__init__)
    return {k: p.default for k, p in sig.parameters.items()
            if k != "self" and p.default is not inspect.Parameter.empty
            and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _scale_axes(axes: Any, factor: float) -> Any:
    vals = [int(a) for a in axes]
    target = max(2 * len(vals), int(round(sum(vals) * factor / 2)) * 2)
    out = [max(2, int(round(a * factor / 2)) * 2) for a in vals]
    out[-1] += target - sum(out)
    if out[-1] < 2:
        return axes
    return type(axes)(out) if isinstance(axes, (tuple, list)) else out


def reduced_config(cls: type, config: dict | None = None) -> dict:
    """A reduced copy of ``config`` (default: the class's ``__init__`` defaults), see module docs.

    Example:
        >>> from diffusers import WanTransformer3DModel
        >>> c = reduced_config(WanTransformer3DModel)
        >>> c["num_layers"], c["num_attention_heads"], c["attention_head_dim"], c["ffn_dim"]
        (2, 2, 16, 48)
    """
    base = _class_defaults(cls)
    if config is not None:
        base.update({k: v for k, v in dict(config).items() if not k.startswith("_") and k in base})
    cfg = dict(base)
    old_head = None
    for k, v in base.items():
        if _HEAD_DIM.search(k) and isinstance(v, int) and not _ROPE.search(k):
            old_head = old_head or v
    heads_key = next((k for k in base if _HEADS.search(k) and isinstance(base[k], int)), None)
    if old_head is None and heads_key is not None:
        hidden = next((base[k] for k in base if _HIDDEN.match(k) and isinstance(base[k], int)), None)
        if hidden:
            old_head = hidden // base[heads_key]
    factor = HEAD_DIM / old_head if old_head else None
    n_layers = 2
    for k, v in base.items():
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, int):
            if _LAYERS.search(k) and "every" not in k and v > 2:
                cfg[k] = n_layers
            elif _HEADS.search(k):
                cfg[k] = HEADS
            elif _KV_HEADS.search(k):
                cfg[k] = HEADS if heads_key is None or v >= base[heads_key] else 1
            elif _HEAD_DIM.search(k):
                cfg[k] = HEAD_DIM
            elif _HIDDEN.match(k):
                cfg[k] = HEADS * HEAD_DIM
            elif _WIDTH.match(k) and v > WIDTH:
                cfg[k] = WIDTH
            elif _FFN.search(k) and v > FFN:
                cfg[k] = FFN
            elif k in _SMALL_SPATIAL and v > _SMALL_SPATIAL[k]:
                cfg[k] = _SMALL_SPATIAL[k]
            elif k in ("num_experts", "num_routed_experts") and v > 2:
                cfg[k] = 2
            elif k in ("num_activated_experts",) and v > 1:
                cfg[k] = 1
        elif isinstance(v, (tuple, list)) and v and all(isinstance(a, int) and not isinstance(a, bool) for a in v):
            if _ROPE.search(k) and factor is not None:
                cfg[k] = _scale_axes(v, factor)
            elif _LAYER_LISTS.search(k):
                kept = [i for i in v if i < n_layers]
                cfg[k] = type(v)(kept or [0])
    return cfg


def depth_config(cls: type, config: dict | None = None, *, layers: int = 2, grid: int = 16) -> dict:
    """``config`` (default: the class defaults) at full width with every layer count cut to
    ``layers`` and ``sample_size`` set to ``grid`` patches per side (benchmarks at reduced depth).

    Example:
        >>> from diffusers import SD3Transformer2DModel
        >>> c = depth_config(SD3Transformer2DModel)
        >>> c["num_layers"], c["attention_head_dim"], c["num_attention_heads"], c["sample_size"]
        (2, 64, 18, 32)
    """
    cfg = _class_defaults(cls)
    if config is not None:
        cfg.update({k: v for k, v in dict(config).items() if not k.startswith("_") and k in cfg})
    for k, v in list(cfg.items()):
        if isinstance(v, int) and not isinstance(v, bool) and _LAYERS.search(k) and "every" not in k and v > layers:
            cfg[k] = layers
        elif isinstance(v, (tuple, list)) and v and _LAYER_LISTS.search(k) and all(isinstance(i, int) for i in v):
            cfg[k] = type(v)([i for i in v if i < layers] or [0])
    if isinstance(cfg.get("sample_size"), int):
        p = cfg.get("patch_size")
        p = p[-1] if isinstance(p, (tuple, list)) else (p or 1)
        cfg["sample_size"] = min(cfg["sample_size"], grid * int(p))
    return cfg


def randomize(model: nn.Module, seed: int = 0, std: float = 0.2) -> nn.Module:
    """Re-draw every floating parameter from N(0, std²) (deterministic for ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.copy_((torch.randn(p.shape, generator=g) * std).to(p.dtype))
    return model


def tiny_model(cls: type, config: dict | None = None, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Build ``cls`` from :func:`reduced_config` (plus its :data:`SPECS` overrides), random, eval.

    Raises:
        TinyInstanceError: the reduced config does not construct.
    """
    cfg = reduced_config(cls, config)
    spec = SPECS.get(cls.__name__)
    if spec is not None:
        cfg.update(spec.config)
    torch.manual_seed(seed)
    try:
        model = cls(**cfg)
    except Exception as exc:  # noqa: BLE001 - any constructor error means "cannot build"
        raise TinyInstanceError(f"{cls.__name__}: reduced config does not construct: {type(exc).__name__}: {exc}") from exc
    return randomize(model, seed).to(dtype).eval()


def tiny_case(
    cls: type,
    config: dict | None = None,
    *,
    batch: int = 2,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> tuple[nn.Module, dict]:
    """A tiny random instance of ``cls`` and forward inputs for it (``batch`` rows, conditioning
    differing per row).

    Raises:
        TinyInstanceError: with the reason, when either cannot be built.
    """
    model = tiny_model(cls, config, seed=seed, dtype=dtype)
    spec = SPECS.get(cls.__name__)
    make = spec.inputs if spec is not None and spec.inputs is not None else synth_inputs
    return model, make(model, batch, dtype, seed)


# ---------------------------------------------------------------------------------------------
# inputs


def _cfg(model: nn.Module, *keys: str, default: Any = None) -> Any:
    for k in keys:
        v = model.config.get(k)
        if v is not None:
            return v
    return default


def _patch(model: nn.Module) -> tuple[int, int]:
    p = _cfg(model, "patch_size", "all_patch_size", default=1)
    pt = _cfg(model, "patch_size_t", "all_f_patch_size", default=1)
    if isinstance(p, (tuple, list)):
        if len(p) == 3:
            return int(p[0]), int(p[-1])
        p = p[0]
    if isinstance(pt, (tuple, list)):
        pt = pt[0]
    return int(pt or 1), int(p or 1)


def _timesteps(batch: int, dtype: torch.dtype, scale: float = 1000.0) -> torch.Tensor:
    vals = torch.tensor([0.71, 0.33, 0.52, 0.9][:batch]) * scale
    return vals.to(dtype)


_TEXT_KEYS = ("joint_attention_dim", "text_dim", "caption_channels", "text_embed_dim", "cross_attention_dim",
              "cap_feat_dim", "context_in_dim", "text_hidden_dim", "text_in_dim", "in_text_dim")


def synth_inputs(model: nn.Module, batch: int = 2, dtype: torch.dtype = torch.float32, seed: int = 0,
                 grid: int = 4) -> dict:
    """Forward inputs built from the forward signature and the config (common names only);
    image latents of ``grid`` x ``grid`` patches (video: 2 frames of that).

    Raises:
        TinyInstanceError: a required argument has a name this builder does not know.
    """
    g = torch.Generator().manual_seed(seed)
    sig = inspect.signature(type(model).forward)
    c_in = _cfg(model, "in_channels", "in_visual_dim", "in_dim", default=4)
    pt, p = _patch(model)
    video = "3D" in type(model).__name__
    n_txt = 5
    text_dim = _cfg(model, *_TEXT_KEYS)
    axes = _cfg(model, "axes_dims_rope", "axes_dims", "rope_axes_dim", "axes_dim_rope")
    packed = "img_ids" in sig.parameters
    out: dict[str, Any] = {}
    for name, param in sig.parameters.items():
        if name == "self" or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        required = param.default is inspect.Parameter.empty
        if name == "hidden_states":
            if packed:
                out[name] = torch.randn(batch, grid * grid, c_in, generator=g)
            elif video:
                out[name] = torch.randn(batch, c_in, 2 * pt, grid * p, grid * p, generator=g)
            else:
                out[name] = torch.randn(batch, c_in, grid * p, grid * p, generator=g)
        elif name == "encoder_hidden_states" and text_dim:
            out[name] = torch.randn(batch, n_txt, int(text_dim), generator=g)
        elif name in ("timestep", "timesteps", "t"):
            out[name] = _timesteps(batch, torch.float32)
        elif name == "pooled_projections" and _cfg(model, "pooled_projection_dim"):
            out[name] = torch.randn(batch, int(model.config.pooled_projection_dim), generator=g)
        elif name == "guidance" and _cfg(model, "guidance_embeds"):
            out[name] = torch.tensor([3.5, 5.0, 4.0, 6.0][:batch])
        elif name == "class_labels" and required:
            out[name] = torch.tensor([1, 2, 3, 4][:batch])
        elif name in ("img_ids", "txt_ids") and axes:
            n = grid * grid if name == "img_ids" else n_txt
            out[name] = torch.randint(0, 4, (n, len(axes)), generator=g).float()
        elif name in ("encoder_attention_mask", "encoder_hidden_states_mask") and required:
            out[name] = torch.ones(batch, n_txt, dtype=torch.bool)
        elif required:
            raise TinyInstanceError(
                f"{type(model).__name__}: cannot synthesise the required forward argument {name!r}; "
                "register a TinySpec in fusion_diffusers.tiny.SPECS"
            )
    for k, v in out.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and k not in ("img_ids", "txt_ids"):
            out[k] = v.to(dtype)
    return out


# ---------------------------------------------------------------------------------------------
# per-class specs (the families' classes; other classes fall back to synth_inputs)


def _dit_inputs(model, batch, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    c, s = model.config.in_channels, model.config.sample_size
    return {"hidden_states": torch.randn(batch, c, s, s, generator=g).to(dtype),
            "timestep": torch.tensor([999, 500, 250, 20][:batch]),
            "class_labels": torch.tensor([3, 1000, 7, 1000][:batch]) % (model.config.num_embeds_ada_norm + 1)}


def _pixart_inputs(model, batch, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    c, s = model.config.in_channels, model.config.sample_size
    return {"hidden_states": torch.randn(batch, c, s, s, generator=g).to(dtype),
            "encoder_hidden_states": torch.randn(
                batch, 5, model.config.caption_channels or model.config.cross_attention_dim, generator=g).to(dtype),
            "timestep": torch.tensor([999, 500, 250, 20][:batch]),
            "added_cond_kwargs": {
                "resolution": torch.tensor([[64.0, 64.0], [64.0, 96.0]] * 2)[:batch].to(dtype),
                "aspect_ratio": torch.tensor([[1.0], [1.5]] * 2)[:batch].to(dtype)}}


def _sd3_inputs(model, batch, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    c, s = model.config.in_channels, model.config.sample_size
    return {"hidden_states": torch.randn(batch, c, s, s, generator=g).to(dtype),
            "encoder_hidden_states": torch.randn(batch, 5, model.config.joint_attention_dim, generator=g).to(dtype),
            "pooled_projections": torch.randn(batch, model.config.pooled_projection_dim, generator=g).to(dtype),
            "timestep": _timesteps(batch, dtype)}


def _auraflow_inputs(model, batch, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    c, s = model.config.in_channels, model.config.sample_size
    return {"hidden_states": torch.randn(batch, c, s, s, generator=g).to(dtype),
            "encoder_hidden_states": torch.randn(batch, 5, model.config.joint_attention_dim, generator=g).to(dtype),
            "timestep": _timesteps(batch, dtype, 1.0)}


def _sana_inputs(model, batch, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    c, s = model.config.in_channels, model.config.sample_size
    out = {"hidden_states": torch.randn(batch, c, s, s, generator=g).to(dtype),
           "encoder_hidden_states": torch.randn(batch, 5, model.config.caption_channels, generator=g).to(dtype),
           "timestep": torch.tensor([999, 500, 250, 20][:batch])}
    if model.config.guidance_embeds:
        out["guidance"] = torch.tensor([4.5, 3.0, 2.0, 1.0][:batch]).to(dtype)
    return out


def _qwen_image_inputs(model, batch, dtype, seed):
    # Packed 2x2 patches: (B, frames*h*w, in_channels) with the per-sample grid in `img_shapes`.
    g = torch.Generator().manual_seed(seed)
    shapes = [(1, 4, 4)]
    return {"hidden_states": torch.randn(batch, 16, model.config.in_channels, generator=g).to(dtype),
            "encoder_hidden_states": torch.randn(batch, 5, model.config.joint_attention_dim, generator=g).to(dtype),
            "encoder_hidden_states_mask": torch.ones(batch, 5, dtype=torch.long),
            "timestep": _timesteps(batch, dtype, 1.0),
            "img_shapes": [shapes] * batch}


def _z_image_inputs(model, batch, dtype, seed):
    # Lists of per-sample latents (C, F, H, W) and caption features (S_i, cap_feat_dim).
    g = torch.Generator().manual_seed(seed)
    p = model.config.all_patch_size[0]
    return {"x": [torch.randn(model.config.in_channels, 1, 4 * p, 4 * p, generator=g).to(dtype) for _ in range(batch)],
            "t": _timesteps(batch, dtype, 1.0),
            "cap_feats": [torch.randn(5 + i, model.config.cap_feat_dim, generator=g).to(dtype) for i in range(batch)]}


#: class name → :class:`TinySpec`. Add an entry when a class needs more than the generic rules.
SPECS: dict[str, TinySpec] = {
    "DiTTransformer2DModel": TinySpec({"sample_size": 8, "out_channels": None}, _dit_inputs),
    # adaLN-single's size embedding splits the width in three: 2 heads x 12.
    "PixArtTransformer2DModel": TinySpec({"attention_head_dim": 12, "cross_attention_dim": 24, "caption_channels": 12,
                                          "sample_size": 8}, _pixart_inputs),
    "SD3Transformer2DModel": TinySpec({"sample_size": 8, "pos_embed_max_size": 8, "caption_projection_dim": 32},
                                      _sd3_inputs),
    "AuraFlowTransformer2DModel": TinySpec({"sample_size": 8, "pos_embed_max_size": 16, "caption_projection_dim": 32},
                                           _auraflow_inputs),
    # Sana: the cross-attention width must equal heads x head dim of the cross attention.
    "SanaTransformer2DModel": TinySpec({"cross_attention_head_dim": 16, "cross_attention_dim": 32,
                                        "caption_channels": 12, "sample_size": 8}, _sana_inputs),
    "QwenImageTransformer2DModel": TinySpec({"in_channels": 8, "out_channels": 4}, _qwen_image_inputs),
    # Z-Image: 2 refiner layers of each kind, axis lengths cut to the tiny grid.
    "ZImageTransformer2DModel": TinySpec({"axes_lens": [64, 32, 32]}, _z_image_inputs),
}
