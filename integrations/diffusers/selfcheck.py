"""Family checks against the provenance trace, and the diffusers-version self-check at apply.

:func:`family_problems` compares a family with what a traced forward of its class actually does
(:mod:`fusion_diffusers.provenance`):

* every listed site that runs must be a function of the timestep and of the family's
  ``conditioning`` arguments only — a site depending on a token stream the key does not contain,
  or on any other argument the key lacks, would be replayed wrongly (a family may key on a whole
  token stream, such as a text embedding that is constant over a render);
* every modulator site the trace finds must be listed (or lie inside a listed site) — a missing
  one is computed on every step and keeps its weights on the device under offload.

:func:`ensure_verified` runs at the first :func:`~fusion_diffusers.apply_modulator_cache` of a
class when the installed diffusers is not one the family was verified on
(``Family.verified_versions``): on a tiny instance of the same class (a reduced copy of the
model's own config, :mod:`fusion_diffusers.tiny`) it runs :func:`family_problems` and compares
the cached forward (a miss, then a hit, two timesteps, two rows with different conditioning) with
the uncached one bit for bit. A failure refuses the model with the reason; the result is kept per
class and version for the life of the process.

Example:
    >>> from diffusers import DiTTransformer2DModel
    >>> from fusion_diffusers.tiny import tiny_case
    >>> from fusion_diffusers.families import resolve_family
    >>> model, inputs = tiny_case(DiTTransformer2DModel)
    >>> fam = resolve_family(model)
    >>> family_problems(model, fam, trace_for_family(model, fam, inputs))
    []
    >>> from fusion_diffusers import apply_modulator_cache, remove_modulator_cache
    >>> self_check(DiTTransformer2DModel, model.config, apply=apply_modulator_cache,
    ...            remove=remove_modulator_cache) is None
    True
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

import diffusers

from .families import Family, UnsupportedModelError, resolve_family, site_paths, unwrap_compiled
from .provenance import Trace, token_arguments, trace_forward
from .tiny import TinyInstanceError, tiny_case

__all__ = ["ensure_verified", "family_problems", "installed_version", "self_check", "trace_for_family"]

#: Forward arguments the cache key reads as the timestep (``CallConditioning.timestep``).
PRIMARY_TIMESTEP = frozenset({"timestep", "timesteps", "t"})

_RESULTS: dict[tuple[type, str], str | None] = {}
_LOCAL = threading.local()


def installed_version() -> str:
    """The installed diffusers version string."""
    return diffusers.__version__


def trace_for_family(model: nn.Module, family: Family, inputs: dict) -> Trace:
    """The trace :func:`family_problems` reads: :func:`trace_forward` with the default token
    arguments (a family that keys on a whole token stream, e.g. a text embedding constant over a
    render, still has that stream counted as tokens: its text-side activations are not sites)."""
    return trace_forward(model, inputs, token_args=token_arguments(inputs))


def family_problems(model: nn.Module, family: Family, trace: Trace, sites: list[str] | None = None) -> list[str]:
    """What is wrong with ``family`` for ``model`` according to ``trace`` (empty: nothing).

    ``sites`` replaces the family's site list (default: :func:`site_paths`).
    """
    problems = []
    sites = site_paths(model, family) if sites is None else list(sites)
    allowed = PRIMARY_TIMESTEP | set(family.conditioning)
    for path in sites:
        rec = trace.modules.get(path)
        if rec is None:
            continue  # not run in this configuration: never replayed
        extra = rec.labels - allowed
        tokens = extra & trace.token_args
        if tokens:
            problems.append(f"site {path} depends on token arguments {sorted(tokens)}")
        elif extra:
            problems.append(
                f"site {path} depends on {sorted(extra)}, which the family's key "
                f"(timestep + {list(family.conditioning)}) does not contain"
            )
    for path in sorted(trace.sites):
        if not any(path == s or path.startswith(s + ".") for s in sites):
            problems.append(f"modulator site {path} (fed by {sorted(trace.modules[path].labels)}) is not listed")
    return problems


def _outputs(model: nn.Module, inputs: dict) -> Any:
    with torch.no_grad():
        out = model(**inputs, return_dict=False)
    return out[0] if isinstance(out, (tuple, list)) else out


def _scaled_timestep(inputs: dict, factor: float) -> dict:
    out = dict(inputs)
    for name in PRIMARY_TIMESTEP & set(inputs):
        t = inputs[name]
        out[name] = (t * factor).to(t.dtype) if t.is_floating_point() else (t // 2)
    return out


def self_check(cls: type, config: Any = None, *, apply: Callable, remove: Callable) -> str | None:
    """Prove ``cls``'s family on a tiny instance built from ``config``; None or the failure reason.

    ``apply``/``remove`` are :func:`~fusion_diffusers.apply_modulator_cache` and
    :func:`~fusion_diffusers.remove_modulator_cache` (passed in: the hooks module calls this one).
    """
    try:
        model, inputs = tiny_case(cls, config)
    except TinyInstanceError as exc:
        return f"no tiny instance to check on ({exc})"
    try:
        family = resolve_family(model)
    except UnsupportedModelError as exc:
        return str(exc)
    try:
        problems = family_problems(model, family, trace_for_family(model, family, inputs))
    except Exception as exc:  # noqa: BLE001 - a forward that fails under the trace is a failed check
        return f"traced forward failed: {type(exc).__name__}: {exc}"
    if problems:
        return "; ".join(problems)
    calls = [inputs, _scaled_timestep(inputs, 0.5)]
    try:
        reference = [_outputs(model, x) for x in calls]
        _LOCAL.active = True
        try:
            cache = apply(model)
        finally:
            _LOCAL.active = False
        try:
            cached = [_outputs(model, x) for x in calls for _ in range(2)]  # miss, hit
            stats = cache.stats
            if stats.hits < len(calls):
                return f"the cache did not replay ({stats.hits} hits of {len(calls)})"
        finally:
            remove(model)
    except Exception as exc:  # noqa: BLE001
        return f"cached forward failed: {type(exc).__name__}: {exc}"
    for i, ref in enumerate(reference):
        for out in cached[2 * i: 2 * i + 2]:
            if not _tree_equal(out, ref):
                return f"cached output differs from the uncached output (call {i})"
    return None


def _tree_equal(a: Any, b: Any) -> bool:
    # Outputs may be a tensor or a list of per-sample tensors (Z-Image): compare every leaf bitwise.
    la, lb = tree_leaves(a), tree_leaves(b)
    return len(la) == len(lb) and all(
        isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape
        and x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(la, lb))


def ensure_verified(transformer: nn.Module, apply: Callable, remove: Callable) -> None:
    """Refuse ``transformer`` on a diffusers version its family was not verified on, unless the
    self-check passes (run once per class and version per process). ``apply``/``remove`` as for
    :func:`self_check`.

    Raises:
        UnsupportedModelError: naming the class, the versions and the failure.
    """
    if getattr(_LOCAL, "active", False):
        return
    model = unwrap_compiled(transformer)
    family = resolve_family(model)
    version = installed_version()
    if version in family.verified_versions:
        return
    key = (type(model), version)
    if key not in _RESULTS:
        _RESULTS[key] = self_check(type(model), model.config, apply=apply, remove=remove)
    reason = _RESULTS[key]
    if reason is not None:
        raise UnsupportedModelError(
            f"{type(model).__name__} (family {family.name!r}) was verified on diffusers "
            f"{', '.join(family.verified_versions)}; on the installed diffusers {version} its bit-exactness "
            f"self-check failed: {reason}. Refusing rather than caching a layout this version may "
            "compute differently; install a verified diffusers version"
        )
