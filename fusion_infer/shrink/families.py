"""Model families the shrink tools understand, recognised without importing diffusers.

``fusion_infer`` must not import ``diffusers`` (docs/design.md §1), so diffusers transformers are
recognised by class name and the attributes the shrink code touches (``transformer_blocks``,
``config.num_layers``, ``register_to_config``). Each family also fixes how a module path maps to
a cost category (:data:`fusion_infer.models.cost.CATEGORIES`).

Example:
    >>> from fusion_infer import ControlHead
    >>> model_family(ControlHead(dim=64, depth=1, heads=4, freq_dim=64))
    'control_head'
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from ..models.control_head import ControlHead

__all__ = ["SUPPORTED_FAMILIES", "DIFFUSERS_CLASSES", "model_family", "block_list", "block_index", "categorize"]

#: diffusers class name → family name.
DIFFUSERS_CLASSES = {"DiTTransformer2DModel": "diffusers_dit", "PixArtTransformer2DModel": "diffusers_pixart"}
SUPPORTED_FAMILIES = ("control_head", *DIFFUSERS_CLASSES.values())

_BLOCK = re.compile(r"^(?:blocks|transformer_blocks)\.(\d+)(?:\.|$)")


def model_family(model: Any) -> str:
    """Family name of ``model`` (a :data:`SUPPORTED_FAMILIES` entry), or ``TypeError``.

    A ``torch.compile`` wrapper is unwrapped first.
    """
    model = getattr(model, "_orig_mod", model)
    if isinstance(model, ControlHead):
        return "control_head"
    name = type(model).__name__
    if name in DIFFUSERS_CLASSES and isinstance(getattr(model, "transformer_blocks", None), nn.ModuleList):
        return DIFFUSERS_CLASSES[name]
    raise TypeError(
        f"model must be a fusion_infer.ControlHead or one of the diffusers classes "
        f"{sorted(DIFFUSERS_CLASSES)}, got {type(model).__name__}"
    )


def block_list(model: nn.Module) -> nn.ModuleList:
    """The model's transformer blocks (``blocks`` or ``transformer_blocks``)."""
    model = getattr(model, "_orig_mod", model)
    return model.blocks if model_family(model) == "control_head" else model.transformer_blocks


def block_index(name: str) -> int | None:
    """Block index in a parameter/module path (``transformer_blocks.3.attn1.to_q`` → 3)."""
    m = _BLOCK.match(name)
    return int(m.group(1)) if m else None


# (pattern searched in the module path, category); first match wins.
_RULES: dict[str, list[tuple[str, str]]] = {
    "control_head": [
        (r"adaLN_mod|^t_embedder|^cond_proj", "modulators"),
        (r"\.(qkv|proj)$", "attention"),
        (r"\.mlp\.", "mlp"),
        (r"^latent_proj|^final\.linear", "embeddings"),
    ],
    # DiT (Peebles & Xie): per-block AdaLayerNormZero (`norm1.emb` = timestep + class embedder,
    # `norm1.linear` = adaLN linear); `proj_out_1` maps the conditioning to the final shift/scale.
    "diffusers_dit": [
        (r"\.norm\d\.|^proj_out_1$", "modulators"),
        (r"\.attn\d\.", "attention"),
        (r"\.ff\.", "mlp"),
        (r"^pos_embed|^proj_out_2$", "embeddings"),
    ],
    # PixArt-α: one shared `adaln_single` (timestep embedder + 6·dim linear) plus per-block and
    # final `scale_shift_table`s; `caption_projection` embeds text tokens (token side).
    "diffusers_pixart": [
        (r"^adaln_single|scale_shift_table$", "modulators"),
        (r"\.attn\d\.", "attention"),
        (r"\.ff\.", "mlp"),
        (r"^pos_embed|^caption_projection|^proj_out$", "embeddings"),
    ],
}


def categorize(family: str, name: str) -> str:
    """Cost category of the module or parameter at path ``name`` in a model of ``family``.

    Raises ``ValueError`` for a path no rule covers (so new submodules are not silently
    miscounted).

    Example:
        >>> categorize("diffusers_pixart", "transformer_blocks.0.attn2.to_k")
        'attention'
    """
    if family not in _RULES:
        raise ValueError(f"family must be one of {SUPPORTED_FAMILIES}, got {family!r}")
    for pattern, category in _RULES[family]:
        if re.search(pattern, name):
            return category
    raise ValueError(f"no cost category for {name!r} in family {family!r}")
