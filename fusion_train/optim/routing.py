"""Parameter routing: which parameters FusionOpt orthogonalises (spectral) and which it treats
element-wise with Schedule-Free AdamW (scalar).

Muon-style updates suit hidden weight matrices only. A shape check alone mis-routes input
embedders and output heads (microsoft/dion README; DeepSpeed PR #7641 and Megatron PR #4642 are
bugs of that kind), so the rules below look at the module type and the parameter name first and
at the shape last. Every decision carries a human-readable reason; print
:func:`summarise_groups` before training.

Rules, first match wins:

1. ``force_scalar`` regex (``re.search`` on the parameter name) → scalar.
2. ``force_spectral`` regex → spectral; a parameter that is not a matrix (or a conv kernel with
   ``flatten_conv=False``) raises ``ValueError``.
3. fewer than 2 dimensions (biases, norm gains, scalars) → scalar.
4. weights of ``nn.Embedding``/``nn.EmbeddingBag`` → scalar (lookup tables, not linear maps).
5. adaLN modulator linears (``d → k·d``; names in :data:`MODULATOR_PATTERN`) → spectral when
   ``min(shape) >= min_dim``; with ``split_adaln=True`` each of the k row-chunks is
   orthogonalised separately (group key ``ns_split = k``, learning-rate shape factor per chunk).
6. input projections from the latent/patch/token space and final output projections (names in
   :data:`IO_PATTERNS`) → scalar.
7. conv kernels (≥3 dims): flattened to ``(out, in·kh·kw)`` when ``flatten_conv`` (else scalar),
   then the shape rule.
8. matrices with ``min(shape) >= min_dim`` → spectral, smaller ones → scalar.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["IO_PATTERNS", "MODULATOR_PATTERN", "build_param_groups", "summarise_groups"]

MODULATOR_PATTERN = (
    r"(^|\.)(adaLN_mod|adaLN_modulation|adaln_mod|img_mod|txt_mod|modulation)(\.|$)"
    r"|(^|\.)(norm1|norm1_context|norm|norm_out)\.linear\.weight$"
)
IO_PATTERNS = (
    # input projections from latent / patch / token space
    r"(^|\.)(x_embedder|patch_embed|patch_embedding|pos_embed|proj_in|input_proj|latent_proj"
    r"|in_proj|embed_tokens|wte|wpe|context_embedder|x_proj)(\.|$)",
    # final output projections
    r"(^|\.)(final_layer\.linear|final\.linear|proj_out|output_proj|out_proj_final|lm_head|final_proj)(\.|$)",
)


def _compile(patterns: Iterable[str] | str | None, arg: str) -> list[re.Pattern]:
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise ValueError(f"{arg}: invalid regular expression {p!r}: {e}") from e
    return out


def _embedding_param_names(model: nn.Module) -> set[str]:
    names = set()
    for mname, mod in model.named_modules():
        if isinstance(mod, (nn.Embedding, nn.EmbeddingBag)):
            names.add(f"{mname}.weight" if mname else "weight")
    return names


def _route(
    name: str,
    p: torch.Tensor,
    *,
    embeddings: set[str],
    force_scalar: list[re.Pattern],
    force_spectral: list[re.Pattern],
    min_dim: int,
    flatten_conv: bool,
    split_adaln: bool,
) -> tuple[str, str, int]:
    """Return (group_type, reason, ns_split) for one parameter."""
    if any(r.search(name) for r in force_scalar):
        return "scalar", "force_scalar", 1
    is_matrix = p.ndim == 2 or (p.ndim > 2 and flatten_conv)
    if any(r.search(name) for r in force_spectral):
        if not is_matrix:
            raise ValueError(
                f"force_spectral matched {name!r} with shape {tuple(p.shape)}, which is not a matrix "
                f"(spectral parameters must be 2-D, or conv kernels with flatten_conv=True)"
            )
        return "spectral", "force_spectral", 1
    if p.ndim < 2:
        return "scalar", "vector (bias/norm/scale)", 1
    if name in embeddings:
        return "scalar", "embedding table", 1
    rows, cols = p.shape[0], p[0].numel()
    if re.search(MODULATOR_PATTERN, name):
        if min(rows, cols) < min_dim:
            return "scalar", f"adaLN modulator smaller than min_dim={min_dim}", 1
        k = rows // cols if rows % cols == 0 and rows > cols else 1
        if split_adaln and k > 1:
            return "spectral", f"adaLN modulator, {k} chunks orthogonalised separately", k
        return "spectral", "adaLN modulator (d -> k*d)", 1
    if any(re.search(pat, name) for pat in IO_PATTERNS):
        return "scalar", "input/output projection", 1
    if p.ndim > 2 and not flatten_conv:
        return "scalar", "conv kernel (flatten_conv=False)", 1
    if min(rows, cols) < min_dim:
        return "scalar", f"min(shape) {min(rows, cols)} < min_dim={min_dim}", 1
    return "spectral", "conv kernel flattened (out, in*kh*kw)" if p.ndim > 2 else "hidden matrix", 1


def build_param_groups(
    model: nn.Module,
    force_scalar: Sequence[str] | str | None = None,
    force_spectral: Sequence[str] | str | None = None,
    min_dim: int = 128,
    flatten_conv: bool = True,
    split_adaln: bool = False,
    spectral_options: dict[str, Any] | None = None,
    scalar_options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into FusionOpt param groups.

    Each group is a dict with ``params``, ``param_names``, ``reasons`` and ``group_type``
    (``"spectral"`` or ``"scalar"``); spectral groups also carry ``ns_split``. ``spectral_options``
    / ``scalar_options`` are merged into the groups (e.g. ``{"lr": 0.02, "weight_decay": 0.01}``).

    Example:
        >>> model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.Linear(256, 8))
        >>> groups = build_param_groups(model)
        >>> [(g["group_type"], g["param_names"]) for g in groups if g["group_type"] == "spectral"]
        [('spectral', ['2.weight'])]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(min_dim, int) or min_dim < 1:
        raise ValueError(f"min_dim must be a positive int, got {min_dim!r}")
    fs = _compile(force_scalar, "force_scalar")
    fsp = _compile(force_spectral, "force_spectral")
    embeddings = _embedding_param_names(model)
    buckets: dict[tuple[str, int], dict[str, Any]] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:  # tied weights are routed once
            continue
        seen.add(id(p))
        gtype, reason, split = _route(
            name, p, embeddings=embeddings, force_scalar=fs, force_spectral=fsp,
            min_dim=min_dim, flatten_conv=flatten_conv, split_adaln=split_adaln,
        )
        key = (gtype, split)
        if key not in buckets:
            g: dict[str, Any] = {"params": [], "param_names": [], "reasons": [], "group_type": gtype}
            if gtype == "spectral":
                g["ns_split"] = split
            g.update((spectral_options if gtype == "spectral" else scalar_options) or {})
            buckets[key] = g
        buckets[key]["params"].append(p)
        buckets[key]["param_names"].append(name)
        buckets[key]["reasons"].append(reason)
    order = sorted(buckets, key=lambda k: (k[0] != "spectral", k[1]))
    return [buckets[k] for k in order]


def summarise_groups(model_or_groups: nn.Module | Sequence[dict[str, Any]]) -> str:
    """A printable table (name, shape, group, why) of a model's routing or of built groups."""
    groups = (
        build_param_groups(model_or_groups)
        if isinstance(model_or_groups, nn.Module)
        else list(model_or_groups)
    )
    rows = []
    totals: dict[str, int] = {}
    for g in groups:
        gtype = g.get("group_type", "?")
        names = g.get("param_names") or [f"param{i}" for i in range(len(g["params"]))]
        reasons = g.get("reasons") or [""] * len(names)
        for name, p, why in zip(names, g["params"], reasons):
            rows.append((name, "x".join(map(str, p.shape)) or "scalar", gtype, why))
            totals[gtype] = totals.get(gtype, 0) + p.numel()
    w = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(("name", "shape", "group", "why"))]
    line = "  ".join(f"{{:<{x}}}" for x in w)
    out = [line.format("name", "shape", "group", "why"), line.format(*("-" * x for x in w))]
    out += [line.format(*r) for r in rows]
    total = sum(totals.values()) or 1
    out.append("")
    out += [f"{k}: {v:,} parameters ({100 * v / total:.1f} %)" for k, v in sorted(totals.items())]
    return "\n".join(out)
