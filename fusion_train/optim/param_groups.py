"""Turning whatever a user passes to ``FusionOpt(...)`` / ``add_param_group`` into routed groups.

torch.optim conventions accepted (training code should not need to know FusionOpt):

* an iterable of tensors (``model.parameters()``);
* an iterable of ``(name, tensor)`` pairs (``model.named_parameters()``, torch ≥ 2.6 style);
* an iterable of group dicts whose ``params`` hold tensors or ``(name, tensor)`` pairs.

A group without ``group_type`` is routed parameter by parameter with the same name and shape
rules as :func:`fusion_train.build_param_groups` (routing.py; names help only when given, and
embedding tables cannot be recognised without the module, so pass the model to
``build_param_groups`` when you have it). One input group may therefore become two FusionOpt
groups (spectral and scalar) that share its options.

Per-group options: every key of :data:`PER_GROUP_OPTIONS` is honoured per group; FusionOpt
options that only exist optimizer-wide (:data:`OPTIMIZER_WIDE_OPTIONS`: the recipe, Polyak,
KL-Shampoo's configuration, …) are rejected with a ``ValueError`` naming the key, instead of
being accepted and ignored. Other keys (``initial_lr`` written by LR schedulers, a user's own
``name``) pass through untouched, as in torch.

Complex parameters are refused (the update rules assume real numbers; torch.optim.Muon refuses
them too).
"""

from __future__ import annotations

from typing import Any

import torch

from .routing import DEFAULT_MIN_DIM, route_parameter

__all__ = [
    "GROUP_TYPES",
    "OPTIMIZER_WIDE_OPTIONS",
    "PER_GROUP_OPTIONS",
    "normalise_param_group",
    "split_named",
]

GROUP_TYPES = ("spectral", "scalar")

#: Options a param group may set (honoured per group).
PER_GROUP_OPTIONS = frozenset({
    "lr", "betas", "eps", "weight_decay", "momentum", "nesterov", "normuon_beta2", "normuon_eps",
    "warmup_steps", "r", "weight_lr_power", "ns_split", "hot_dtype", "ns_steps", "ns_coefficients",
    "ns_backend", "softening", "lr_scale", "normuon_scale", "mona_alpha", "mona_beta",
})
#: FusionOpt constructor options that cannot differ between groups.
OPTIMIZER_WIDE_OPTIONS = frozenset({
    "recipe", "components", "polyak", "polyak_beta", "gamma_clamp", "nonfinite", "allow_unbounded",
    "mona_lite", "shampoo_beta", "precondition_frequency", "max_precond_dim", "shampoo_eps", "compile",
})


def split_named(params: list[Any], where: str) -> tuple[list[torch.Tensor], list[str] | None]:
    """Split a list of tensors or ``(name, tensor)`` pairs into tensors and names (or None)."""
    tensors, names = [], []
    for item in params:
        if isinstance(item, tuple):
            if len(item) != 2 or not isinstance(item[0], str) or not isinstance(item[1], torch.Tensor):
                raise TypeError(f"{where}: a named parameter must be a (str, Tensor) pair, got {item!r:.80}")
            names.append(item[0])
            tensors.append(item[1])
        elif isinstance(item, torch.Tensor):
            tensors.append(item)
        else:
            raise TypeError(f"{where}: expected Tensors or (name, Tensor) pairs, got {type(item).__name__}")
    if names and len(names) != len(tensors):
        raise ValueError(f"{where}: either every parameter has a name or none has")
    return tensors, (names or None)


def _check_tensor(name: str, p: torch.Tensor) -> None:
    if p.is_complex():
        raise ValueError(
            f"FusionOpt does not support complex parameters ({name}: {p.dtype}); "
            "optimize torch.view_as_real(p) in a real-valued reparametrisation instead"
        )
    if not p.is_floating_point():
        raise ValueError(f"FusionOpt can only optimize floating-point parameters ({name}: {p.dtype})")


def normalise_param_group(
    group: dict[str, Any], *, name_prefix: str, min_dim: int = DEFAULT_MIN_DIM
) -> list[dict[str, Any]]:
    """One user group → one or two FusionOpt groups with ``group_type`` and ``param_names``.

    Example:
        >>> lin = torch.nn.Linear(256, 256)
        >>> gs = normalise_param_group({"params": list(lin.named_parameters())}, name_prefix="g0")
        >>> [(g["group_type"], g["param_names"]) for g in gs]
        [('spectral', ['weight']), ('scalar', ['bias'])]
    """
    if not isinstance(group, dict):
        raise TypeError(f"a param group must be a dict, got {type(group).__name__}")
    if "params" not in group:
        raise ValueError("a param group needs a 'params' entry")
    bad = sorted(set(group) & OPTIMIZER_WIDE_OPTIONS)
    if bad:
        raise ValueError(
            f"param group option(s) {bad} cannot be set per group in FusionOpt (they are "
            f"optimizer-wide: pass them to FusionOpt(...)); per-group options are {sorted(PER_GROUP_OPTIONS)}"
        )
    g = dict(group)
    raw = g["params"]
    if isinstance(raw, torch.Tensor):
        raw = [raw]
    elif isinstance(raw, set):
        raise TypeError("param group 'params' must be an ordered collection (list), not a set")
    tensors, names = split_named(list(raw), "param group 'params'")
    given = g.get("param_names")
    if names is None and given is not None:
        names = list(given)
        if len(names) != len(tensors):
            raise ValueError(f"param_names has {len(names)} entries for {len(tensors)} parameters")
    if names is None:
        names = [f"{name_prefix}.{i}" for i in range(len(tensors))]
    for n, p in zip(names, tensors):
        _check_tensor(n, p)
    g["params"], g["param_names"] = tensors, names
    gtype = g.get("group_type")
    if gtype is not None:
        if gtype not in GROUP_TYPES:
            raise ValueError(f"param group 'group_type' must be one of {GROUP_TYPES}, got {gtype!r}")
        return [g]
    # Route like build_param_groups, by name and shape.
    routed: dict[str, dict[str, Any]] = {}
    for n, p in zip(names, tensors):
        gtype, reason, _ = route_parameter(n, p, min_dim=min_dim)
        out = routed.setdefault(gtype, {**{k: v for k, v in g.items() if k not in ("params", "param_names", "reasons")},
                                        "params": [], "param_names": [], "reasons": [], "group_type": gtype})
        out["params"].append(p)
        out["param_names"].append(n)
        out["reasons"].append(reason)
    return [routed[t] for t in GROUP_TYPES if t in routed]
