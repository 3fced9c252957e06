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
        config: keys set after the generic reduction (sizes the rules cannot derive).
        inputs: ``(model, batch, dtype, seed) -> forward kwargs``; None: :func:`synth_inputs`.
        defaults: keys used in place of the class's ``__init__`` defaults where those do not build
            a working model (``in_channels=None``, a norm type the released checkpoints do not
            use); reduced like any config value, and a model's own config wins over them.
        unreduced: keys the generic rules would wrongly shrink (CogView4's ``rope_axes_dim`` is a
            position-table size, not a rotary split): kept as in the given config.
    """

    config: dict = field(default_factory=dict)
    inputs: InputsFn | None = None
    defaults: dict = field(default_factory=dict)
    unreduced: tuple[str, ...] = ()


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
    spec = SPECS.get(cls.__name__)
    if spec is not None:  # released values where the class's own defaults build no model
        cfg.update({k: v for k, v in spec.defaults.items() if k in cfg})
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
    spec = SPECS.get(cls.__name__)
    if spec is not None and spec.defaults:
        config = {**spec.defaults, **({} if config is None else dict(config))}
    cfg = reduced_config(cls, config)
    if spec is not None:
        given = _class_defaults(cls) | ({} if config is None else dict(config))
        cfg.update({k: given[k] for k in spec.unreduced if k in given})
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


def _randn(g: torch.Generator, dtype: torch.dtype, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g).to(dtype)


def _wan_vace_inputs(model, batch, dtype, seed):
    # VACE control video: `vace_in_channels` channels on the latent grid.
    out = synth_inputs(model, batch, dtype, seed)
    shape = out["hidden_states"].shape[2:]
    out["control_hidden_states"] = _randn(torch.Generator().manual_seed(seed + 1), dtype, batch,
                                          model.config.vace_in_channels, *shape)
    return out


def _hunyuan_video15_inputs(model, batch, dtype, seed):
    # Qwen prompt tokens (second row masked short), ByT5 glyph tokens, SigLIP image embeddings
    # (all zero, as the pipeline passes them for text-to-video).
    g = torch.Generator().manual_seed(seed)
    c = model.config
    mask = torch.ones(batch, 5, dtype=torch.long)
    mask[1:, 3:] = 0
    out = {"hidden_states": _randn(g, dtype, batch, c.in_channels, 2 * c.patch_size_t, 4 * c.patch_size, 4 * c.patch_size),
           "encoder_hidden_states": _randn(g, dtype, batch, 5, c.text_embed_dim),
           "encoder_attention_mask": mask,
           "encoder_hidden_states_2": _randn(g, dtype, batch, 3, c.text_embed_2_dim),
           "encoder_attention_mask_2": torch.ones(batch, 3, dtype=torch.long),
           "image_embeds": torch.zeros(batch, 2, c.image_embed_dim, dtype=dtype),
           "timestep": _timesteps(batch, dtype)}
    if c.use_meanflow:
        out["timestep_r"] = _timesteps(batch, dtype) * 0.5
    return out


def _hunyuan_video_framepack_inputs(model, batch, dtype, seed):
    # FramePack: 2 new frames at latent indices 3..4 after one clean frame and 2x/4x-compressed
    # history (token side only), plus the SigLIP image embedding.
    g = torch.Generator().manual_seed(seed)
    c = model.config
    ch, h, w = c.in_channels, 2 * c.patch_size, 2 * c.patch_size
    out = {"hidden_states": _randn(g, dtype, batch, ch, 2 * c.patch_size_t, h, w),
           "encoder_hidden_states": _randn(g, dtype, batch, 5, c.text_embed_dim),
           "encoder_attention_mask": torch.ones(batch, 5, dtype=torch.long),
           "pooled_projections": _randn(g, dtype, batch, c.pooled_projection_dim),
           "timestep": _timesteps(batch, dtype),
           "image_embeds": _randn(g, dtype, batch, 3, c.image_proj_dim),
           "indices_latents": torch.arange(3, 5)}
    if c.guidance_embeds:
        out["guidance"] = torch.tensor([6.0, 3.5, 5.0, 4.0][:batch]).to(dtype)
    if c.has_clean_x_embedder:
        out.update(latents_clean=_randn(g, dtype, batch, ch, 1, h, w), indices_latents_clean=torch.tensor([2]),
                   latents_history_2x=_randn(g, dtype, batch, ch, 2, h, w),
                   indices_latents_history_2x=torch.tensor([0, 1]),
                   latents_history_4x=_randn(g, dtype, batch, ch, 4, h, w),
                   indices_latents_history_4x=torch.arange(4))
    return out


def _ltx_inputs(model, batch, dtype, seed):
    # Packed tokens (B, frames*h*w, in_channels) with the latent grid passed as integers.
    g = torch.Generator().manual_seed(seed)
    c = model.config
    f, h, w = 2 * c.patch_size_t, 4 * c.patch_size, 4 * c.patch_size
    tokens = (f // c.patch_size_t) * (h // c.patch_size) * (w // c.patch_size)
    return {"hidden_states": _randn(g, dtype, batch, tokens, c.in_channels),
            "encoder_hidden_states": _randn(g, dtype, batch, 5, c.caption_channels),
            "encoder_attention_mask": torch.ones(batch, 5, dtype=torch.long),
            "timestep": _timesteps(batch, dtype),
            "num_frames": f, "height": h, "width": w}


def _ltx2_inputs(model, batch, dtype, seed):
    # LTX inputs plus the audio stream: its latents, prompt, mask and own timestep.
    out = _ltx_inputs(model, batch, dtype, seed)
    g = torch.Generator().manual_seed(seed + 1)
    c = model.config
    out.update(audio_hidden_states=_randn(g, dtype, batch, 5, c.audio_in_channels),
               audio_encoder_hidden_states=_randn(g, dtype, batch, 5, c.caption_channels),
               audio_encoder_attention_mask=torch.ones(batch, 5, dtype=torch.long),
               audio_timestep=_timesteps(batch, dtype) * 0.9, audio_num_frames=5, fps=24.0)
    return out


def _minimax_h3_inputs(model, batch, dtype, seed):
    # One packed sequence per row: 3 text, 4 audio, 8 video tokens (video already patchified);
    # two timesteps, the audio rows following the second.
    g = torch.Generator().manual_seed(seed)
    c = model.config
    n_text, n_audio, n_video = 3, 4, 8
    seq = n_text + n_audio + n_video
    text, audio = torch.arange(n_text), torch.arange(n_text, n_text + n_audio)
    video = torch.arange(n_text + n_audio, seq)
    tags = torch.zeros(seq, dtype=torch.long)
    tags[text], tags[audio] = 1, 2
    t_idx = torch.zeros(seq, dtype=torch.long)
    t_idx[audio] = 1
    pos = torch.zeros(seq, 3)
    pos[:, 0] = torch.arange(seq, dtype=torch.float32)
    pos[video, 1] = torch.arange(n_video, dtype=torch.float32) % 4
    patch = 1
    for p in c.patch_size:
        patch *= p
    return {"hidden_states": _randn(g, dtype, batch, n_video, c.in_channels * patch),
            "audio_hidden_states": _randn(g, dtype, batch, n_audio, c.audio_in_channels),
            "encoder_hidden_states": _randn(g, dtype, batch, n_text, c.text_dim),
            "timestep": _timesteps(2, torch.float32, 1.0),
            "timestep_indices": t_idx, "token_tags": tags, "position_ids": pos,
            "video_indices": video, "audio_indices": audio, "text_indices": text}


def _cogvideox_inputs(model, batch, dtype, seed):
    # (B, frames, C, H, W) at the configured sample size; the prompt fills max_text_seq_length.
    g = torch.Generator().manual_seed(seed)
    c = model.config
    frames = (c.sample_frames - 1) // c.temporal_compression_ratio + 1
    pt = c.get("patch_size_t") or 1
    frames = -(-frames // pt) * pt
    out = {"hidden_states": _randn(g, dtype, batch, frames, c.in_channels, c.sample_height, c.sample_width),
           "encoder_hidden_states": _randn(g, dtype, batch, c.max_text_seq_length, c.text_embed_dim),
           "timestep": torch.tensor([999, 500, 250, 20][:batch])}
    if c.get("ofs_embed_dim"):
        out["ofs"] = torch.tensor([2.0, 3.0, 2.5, 1.0][:batch]).to(dtype)
    return out


def _hidream_inputs(model, batch, dtype, seed):
    # T5 tokens, the Llama-3 hidden states of every layer up to the last one `llama_layers` reads
    # (layer-major), and the pooled CLIP embedding.
    g = torch.Generator().manual_seed(seed)
    c = model.config
    t5_dim, llama_dim = c.caption_channels
    layers = max(c.llama_layers) + 1
    return {"hidden_states": _randn(g, dtype, batch, c.in_channels, 4 * c.patch_size, 4 * c.patch_size),
            "timesteps": _timesteps(batch, dtype),
            "encoder_hidden_states_t5": _randn(g, dtype, batch, 5, t5_dim),
            "encoder_hidden_states_llama3": _randn(g, dtype, layers, batch, 4, llama_dim),
            "pooled_embeds": _randn(g, dtype, batch, c.text_emb_dim)}


def _cogview4_inputs(model, batch, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    sizes = torch.tensor([[64.0, 64.0], [64.0, 96.0], [32.0, 64.0], [64.0, 32.0]][:batch])
    return {"hidden_states": _randn(g, dtype, batch, c.in_channels, 4 * c.patch_size, 4 * c.patch_size),
            "encoder_hidden_states": _randn(g, dtype, batch, 5, c.text_embed_dim),
            "timestep": _timesteps(batch, dtype),
            "original_size": sizes.to(dtype), "target_size": sizes.flip(-1).to(dtype),
            "crop_coords": torch.zeros(batch, 2, dtype=dtype)}


def _hunyuan_dit_inputs(model, batch, dtype, seed):
    # CLIP and T5 prompts with masks, image-meta sizes, style, and the 2D rotary table the
    # pipeline computes (diffusers `get_2d_rotary_pos_embed`).
    from diffusers.models.embeddings import get_2d_rotary_pos_embed

    g = torch.Generator().manual_seed(seed)
    c = model.config
    grid = c.sample_size // c.patch_size
    head_dim = c.hidden_size // c.num_attention_heads
    return {"hidden_states": _randn(g, dtype, batch, c.in_channels, c.sample_size, c.sample_size),
            "timestep": _timesteps(batch, dtype),
            "encoder_hidden_states": _randn(g, dtype, batch, c.text_len, c.cross_attention_dim),
            "text_embedding_mask": torch.ones(batch, c.text_len, dtype=torch.long),
            "encoder_hidden_states_t5": _randn(g, dtype, batch, c.text_len_t5, c.cross_attention_dim_t5),
            "text_embedding_mask_t5": torch.ones(batch, c.text_len_t5, dtype=torch.long),
            "image_meta_size": torch.tensor([[64, 64, 64, 64, 0, 0], [64, 96, 64, 96, 0, 0]] * 2)[:batch].to(dtype),
            "style": torch.zeros(batch, dtype=torch.long),
            "image_rotary_emb": get_2d_rotary_pos_embed(head_dim, ((0, 0), (grid, grid)), (grid, grid),
                                                        output_type="pt")}


def _krea2_inputs(model, batch, dtype, seed):
    # Packed 4x4 image tokens; the prompt as the text encoder's last `num_text_layers` hidden
    # states per token; position ids (text at 0, image tokens at their grid cell).
    g = torch.Generator().manual_seed(seed)
    c = model.config
    cells = torch.arange(16)
    ids = torch.zeros(5 + 16, 3)
    ids[5:, 1], ids[5:, 2] = (cells // 4).float(), (cells % 4).float()
    return {"hidden_states": _randn(g, dtype, batch, 16, c.in_channels),
            "encoder_hidden_states": _randn(g, dtype, batch, 5, c.num_text_layers, c.text_hidden_dim),
            "timestep": _timesteps(batch, dtype, 1.0),
            "position_ids": ids}


def _glm_image_inputs(model, batch, dtype, seed):
    # CogView4's inputs without `original_size`, plus the AR stage's prior tokens (one per latent
    # patch) and the per-row flag that drops them (CFG's unconditional row).
    out = _cogview4_inputs(model, batch, dtype, seed)
    del out["original_size"]
    tokens = (out["hidden_states"].shape[-1] // model.config.patch_size) ** 2
    g = torch.Generator().manual_seed(seed + 1)
    out["prior_token_id"] = torch.randint(0, model.config.prior_vq_quantizer_codebook_size, (batch, tokens), generator=g)
    out["prior_token_drop"] = torch.tensor([False, True, False, True][:batch])
    return out


def _bria_fibo_inputs(model, batch, dtype, seed):
    # FLUX-style packed inputs, plus one text-encoder hidden state per block (dual, then single).
    out = synth_inputs(model, batch, dtype, seed)
    c = model.config
    g = torch.Generator().manual_seed(seed + 1)
    out["text_encoder_layers"] = [_randn(g, dtype, batch, 5, c.text_encoder_dim)
                                  for _ in range(c.num_layers + c.num_single_layers)]
    if c.guidance_embeds:
        out["guidance"] = torch.tensor([3.0, 5.0, 4.0, 6.0][:batch]).to(dtype)
    return out


def _ernie_image_inputs(model, batch, dtype, seed):
    # Prompt tokens (B, T, text_in_dim) with per-row valid lengths.
    g = torch.Generator().manual_seed(seed)
    c = model.config
    return {"hidden_states": _randn(g, dtype, batch, c.in_channels, 4 * c.patch_size, 4 * c.patch_size),
            "timestep": _timesteps(batch, dtype),
            "text_bth": _randn(g, dtype, batch, 5, c.text_in_dim),
            "text_lens": torch.tensor([5, 3, 4, 2][:batch])}


def _nucleus_inputs(model, batch, dtype, seed):
    # Qwen-Image's packed inputs; `img_shapes` is one grid list shared by the batch.
    out = _qwen_image_inputs(model, batch, dtype, seed)
    out["img_shapes"] = out["img_shapes"][0]
    return out


def _omnigen_inputs(model, batch, dtype, seed):
    # Text-to-image: 5 prompt token ids, the time token, 16 latent tokens, a full attention mask.
    g = torch.Generator().manual_seed(seed)
    c = model.config
    text, image = 5, 16
    seq = text + 1 + image
    return {"hidden_states": _randn(g, dtype, batch, c.in_channels, 4 * c.patch_size, 4 * c.patch_size),
            "timestep": _timesteps(batch, dtype, 1.0),
            "input_ids": torch.randint(1, c.vocab_size, (batch, text), generator=g),
            "input_img_latents": [], "input_image_sizes": {},
            "attention_mask": torch.ones(batch, seq, seq, dtype=dtype),
            "position_ids": torch.arange(seq).repeat(batch, 1)}


def _qwen_image21_inputs(model, batch, dtype, seed):
    # Packed 4x4 latent tokens; `img_mask` marks the 4 image slots (2x2 tokens each) after the text.
    g = torch.Generator().manual_seed(seed)
    c = model.config
    text = 5
    img_mask = torch.zeros(batch, text + 4, dtype=torch.bool)
    img_mask[:, text:] = True
    return {"hidden_states": _randn(g, dtype, batch, 16, c.in_channels),
            "encoder_hidden_states": _randn(g, dtype, batch, text, c.context_in_dim),
            "timestep": _timesteps(batch, dtype, 1.0),
            "img_shapes": [[(1, 4, 4)]] * batch,
            "img_mask": img_mask}


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
    # ----- video
    "WanVACETransformer3DModel": TinySpec({"vace_in_channels": 8}, _wan_vace_inputs),
    "HunyuanVideo15Transformer3DModel": TinySpec({"in_channels": 8, "out_channels": 4}, _hunyuan_video15_inputs),
    # FramePack's forward always projects `image_embeds`: the released model has the projection.
    "HunyuanVideoFramepackTransformer3DModel": TinySpec(
        {"image_proj_dim": 16}, _hunyuan_video_framepack_inputs,
        defaults={"has_image_proj": True, "has_clean_x_embedder": True}),
    "LTXVideoTransformer3DModel": TinySpec({"in_channels": 8, "out_channels": 8}, _ltx_inputs),
    "LTX2VideoTransformer3DModel": TinySpec({"in_channels": 8, "out_channels": 8, "audio_in_channels": 8,
                                             "audio_out_channels": 8}, _ltx2_inputs),
    "MiniMaxH3Transformer3DModel": TinySpec({"in_channels": 4, "audio_in_channels": 6, "rope_freq_dim": 2},
                                            _minimax_h3_inputs),
    "CogVideoXTransformer3DModel": TinySpec({"in_channels": 4, "out_channels": 4}, _cogvideox_inputs),
    "ConsisIDTransformer3DModel": TinySpec({"in_channels": 4, "out_channels": 4}, _cogvideox_inputs),
    # The class defaults leave channels and patch size unset (None); EasyAnimate V5.1's values.
    "EasyAnimateTransformer3DModel": TinySpec(
        {}, None, defaults={"in_channels": 16, "out_channels": 16, "patch_size": 2}),
    # Latte-1's config: the class defaults (layer norm, no channels) build no working model.
    "LatteTransformer3DModel": TinySpec(
        {"video_length": 2}, None,
        defaults={"num_layers": 28, "attention_head_dim": 72, "in_channels": 4, "out_channels": 8, "patch_size": 2,
                  "norm_type": "ada_norm_single",
                  "num_embeds_ada_norm": 1000, "caption_channels": 4096, "cross_attention_dim": 1152,
                  "activation_fn": "gelu-approximate", "attention_bias": True,
                  "norm_elementwise_affine": False, "norm_eps": 1e-6}),
    # ----- image
    # HiDream-I1's layout (the class defaults leave patch size and channels unset); every block
    # (2 dual + 2 single) reads one Llama layer.
    "HiDreamImageTransformer2DModel": TinySpec(
        {"caption_channels": [16, 8], "llama_layers": [0, 1, 2, 3]}, _hidream_inputs,
        defaults={"patch_size": 2, "in_channels": 16, "out_channels": 16, "axes_dims_rope": (64, 32, 32),
                  "caption_channels": [4096, 4096], "llama_layers": list(range(48))}),
    "CogView4Transformer2DModel": TinySpec({}, _cogview4_inputs, unreduced=("rope_axes_dim",)),
    # Hunyuan-DiT v1.x's layout; 4 tiny layers: the second half of the stack takes long skips
    # from the first.
    "HunyuanDiT2DModel": TinySpec(
        {"num_layers": 4, "cross_attention_dim_t5": 16, "text_len": 4, "text_len_t5": 6}, _hunyuan_dit_inputs,
        defaults={"in_channels": 4, "patch_size": 2, "hidden_size": 1408, "num_layers": 40, "sample_size": 128}),
    "Krea2Transformer2DModel": TinySpec({"in_channels": 8}, _krea2_inputs),
    "BriaFiboTransformer2DModel": TinySpec({"in_channels": 8}, _bria_fibo_inputs),
    "CogView3PlusTransformer2DModel": TinySpec({}, _cogview4_inputs),
    "GlmImageTransformer2DModel": TinySpec({"prior_vq_quantizer_codebook_size": 32}, _glm_image_inputs),
    "ErnieImageTransformer2DModel": TinySpec({"in_channels": 8, "out_channels": 8}, _ernie_image_inputs),
    # 5 layers: the default dense strategy keeps blocks 0-2 and the last dense, so block 3 routes;
    # expert-choice capacity (factor x tokens / experts) must not exceed the tiny sequence.
    "NucleusMoEImageTransformer2DModel": TinySpec(
        {"in_channels": 8, "num_layers": 5, "num_experts": 4, "capacity_factors": 1.0}, _nucleus_inputs),
    # Phi-3 long-rope factors: one per rotary frequency of the tiny head (16 / 2). The defaults only
    # size the lists for the default head (3072 / 32 / 2); their values (1.0: no scaling) are
    # placeholders, not the released checkpoint's factors.
    "OmniGenTransformer2DModel": TinySpec(
        {"vocab_size": 64, "pad_token_id": 0,
         "rope_scaling": {"long_factor": [1.0 + 0.25 * i for i in range(8)], "short_factor": [1.0] * 8}},
        _omnigen_inputs,
        defaults={"rope_scaling": {"long_factor": [1.0] * 48, "short_factor": [1.0] * 48}}),
    "QwenImage21Transformer2DModel": TinySpec({"in_channels": 8, "out_channels": 8}, _qwen_image21_inputs),
}
