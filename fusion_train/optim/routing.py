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

``min_dim`` defaults to :data:`DEFAULT_MIN_DIM` = 32. Muon-family references orthogonalise every
hidden matrix whatever its size (KellerJordan/Muon, microsoft/dion, torch.optim.Muon); the
threshold only keeps tiny matrices (a 10-class output head, a 3-channel stem) on the element-wise
path, where Newton–Schulz on a 10×256 matrix would just be overhead. (It was 128, which routed
*every* matrix of a 64-wide model to the scalar path although the README promised "hidden matrices
→ spectral".) When fewer than 10 % of the parameters land on the spectral path,
:func:`build_param_groups` warns once per call site and names the ``min_dim`` that would change it.
Zero-size parameters are routed to the scalar group (FusionOpt skips them when stepping).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "DEFAULT_MIN_DIM",
    "IO_PATTERNS",
    "MODULATOR_PATTERN",
    "SPECTRAL_FRACTION_WARNING",
    "build_param_groups",
    "route_parameter",
    "summarise_groups",
]

#: Smallest matrix side routed to the spectral path by default.
DEFAULT_MIN_DIM = 32
#: build_param_groups warns when less than this fraction of the parameters is spectral.
SPECTRAL_FRACTION_WARNING = 0.10

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
    if p.numel() == 0:
        return "scalar", "zero-size (skipped when stepping)", 1
    if name in embeddings:
        return "scalar", "embedding table", 1
    rows, cols = p.shape[0], p.numel() // p.shape[0]
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


def route_parameter(
    name: str, p: torch.Tensor, *, min_dim: int = DEFAULT_MIN_DIM, flatten_conv: bool = True
) -> tuple[str, str, int]:
    """``(group_type, reason, ns_split)`` for one parameter from its name and shape alone.

    What FusionOpt uses for groups without ``group_type`` (no module types, so embedding tables
    are recognised only by the name patterns of input projections).

    Example:
        >>> route_parameter("blocks.0.fc1.weight", torch.zeros(512, 128))[:2]
        ('spectral', 'hidden matrix')
    """
    return _route(
        name, p, embeddings=set(), force_scalar=[], force_spectral=[],
        min_dim=min_dim, flatten_conv=flatten_conv, split_adaln=False,
    )


def _matrix_min_sides(groups: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(min side, numel) of every scalar-routed matrix that only the shape rule kept scalar."""
    out = []
    for g in groups:
        if g["group_type"] != "scalar":
            continue
        for p, why in zip(g["params"], g["reasons"]):
            if why.startswith("min(shape)"):
                out.append((min(p.shape[0], p.numel() // p.shape[0]), p.numel()))
    return out


def _warn_if_mostly_scalar(groups: list[dict[str, Any]], min_dim: int) -> None:
    total = sum(p.numel() for g in groups for p in g["params"])
    spectral = sum(p.numel() for g in groups if g["group_type"] == "spectral" for p in g["params"])
    if total == 0 or spectral >= SPECTRAL_FRACTION_WARNING * total:
        return
    small = _matrix_min_sides(groups)
    # the largest min_dim that moves enough matrices to reach the threshold, if any does
    hint = ""
    for side in sorted({s for s, _ in small}, reverse=True):
        moved = sum(n for s, n in small if s >= side)
        if spectral + moved >= SPECTRAL_FRACTION_WARNING * total:
            hint = f"; build_param_groups(model, min_dim={side}) would put {100 * (spectral + moved) / total:.0f} % there"
            break
    if not hint and small:
        side = min(s for s, _ in small)
        hint = f"; even min_dim={side} puts only {100 * (spectral + sum(n for _, n in small)) / total:.0f} % there"
    warnings.warn(
        f"build_param_groups: only {100 * spectral / total:.1f} % of the parameters are on the "
        f"spectral (Newton–Schulz) path with min_dim={min_dim}{hint}. Print summarise_groups(groups) "
        "to see why each parameter went where.",
        UserWarning,
        stacklevel=3,
    )


def build_param_groups(
    model: nn.Module,
    force_scalar: Sequence[str] | str | None = None,
    force_spectral: Sequence[str] | str | None = None,
    min_dim: int = DEFAULT_MIN_DIM,
    flatten_conv: bool = True,
    split_adaln: bool = False,
    spectral_options: dict[str, Any] | None = None,
    scalar_options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    r"""Split ``model``'s trainable parameters into FusionOpt param groups.

    Each group is a dict with ``params``, ``param_names``, ``reasons`` and ``group_type``
    (``"spectral"`` or ``"scalar"``); spectral groups also carry ``ns_split``. ``spectral_options``
    / ``scalar_options`` are merged into the groups (e.g. ``{"lr": 0.02, "weight_decay": 0.01}``).

    A plain ``nn.Sequential`` gives its input layer no name to recognise it by: with both sides
    ≥ ``min_dim`` it is routed spectral (Muon's authors keep input and output layers on AdamW);
    name it (``x_embedder``, ``proj_in``, … see :data:`IO_PATTERNS`) or pass ``force_scalar``.

    Example:
        >>> model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.Linear(256, 8))
        >>> [g["param_names"] for g in build_param_groups(model) if g["group_type"] == "spectral"]
        [['0.weight', '2.weight']]
        >>> groups = build_param_groups(model, force_scalar=[r"^0\."])  # keep the input layer element-wise
        >>> [g["param_names"] for g in groups if g["group_type"] == "spectral"]
        [['2.weight']]
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
    groups = [buckets[k] for k in order]
    _warn_if_mostly_scalar(groups, min_dim)
    return groups


def summarise_groups(model_or_groups: nn.Module | Sequence[dict[str, Any]], optimizer: Any = None) -> str:
    """A printable table (name, shape, group, why) of a model's routing or of built groups.

    With ``optimizer`` (a FusionOpt, or groups taken from ``optimizer.param_groups``) the footer
    also names the Newton–Schulz dtype actually used (``hot_dtype="auto"`` resolved) and backend.
    """
    if optimizer is None and hasattr(model_or_groups, "hot_dtype_resolved"):
        optimizer, model_or_groups = model_or_groups, model_or_groups.param_groups
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
    hot = {g.get("hot_dtype") for g in groups if g.get("group_type") == "spectral"} - {None}
    if optimizer is not None:
        out.append(f"Newton–Schulz: hot_dtype={optimizer.hot_dtype_resolved!r} "
                   f"(requested {optimizer.hot_dtype!r}), backend={optimizer.ns_backend!r}")
    elif hot:
        out.append(f"Newton–Schulz hot_dtype: {', '.join(sorted(map(str, hot)))} ('auto' is resolved per device)")
    return "\n".join(out)
