"""Propose a family for a diffusers transformer class from one traced forward of a tiny instance.

Usage::

    python -m fusion_diffusers.discover WanTransformer3DModel
    python -m fusion_diffusers.discover FluxTransformer2DModel --set guidance_embeds=true --json

The class is built from a reduced copy of its default config (:mod:`fusion_diffusers.tiny`; use
``--set key=value`` to pick a variant), one forward runs under the provenance trace
(:mod:`fusion_diffusers.provenance`), and the modules whose outputs depend on a timestep but on
no token stream, and flow into the token computation, are printed as the proposed sites: model-
level ones and, per block list, the relative paths per block class; with the forward arguments
that feed them (the cache key must contain them) and a skeleton family module. The ``compute``
function of the skeleton is left to be written: it must mirror the class's ``forward`` op for op,
and the tests (exactness with ``torch.equal``, ``tests/diffusers/test_diffusers_discovery.py``)
decide whether the family is right.

Example:
    >>> from diffusers import SD3Transformer2DModel
    >>> p = propose_family(SD3Transformer2DModel)
    >>> p.model_sites, p.conditioning
    (('norm_out.linear',), ('pooled_projections',))
    >>> p.block_sites["transformer_blocks"]
    {'JointTransformerBlock': ('norm1.linear', 'norm1_context.linear')}
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

import diffusers

from .families import FAMILIES
from .provenance import Trace, trace_forward
from .tiny import TinyInstanceError, tiny_case

__all__ = ["Proposal", "propose_family", "skeleton"]


@dataclass
class Proposal:
    """What the trace found for one class.

    Attributes:
        class_name: the diffusers class.
        supported: name of the registered family, if any.
        sites: every proposed site path (tiny instance).
        model_sites: sites outside block lists.
        block_sites: block-list attribute → block class name → site paths relative to the block.
        conditioning: forward arguments (besides timesteps) feeding the sites.
        time_args / token_args: how the forward arguments were classified.
        token_fed: weighted modules that depend on a timestep *and* a token stream and hold
            adaLN-style modulation layers (the modulators depend on tokens).
        mixed: modules that both feed tokens with pure values and run on token data.
        error: why no trace could be taken (then everything else is empty).
    """

    class_name: str
    supported: str | None = None
    sites: tuple[str, ...] = ()
    model_sites: tuple[str, ...] = ()
    block_sites: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    conditioning: tuple[str, ...] = ()
    time_args: tuple[str, ...] = ()
    token_args: tuple[str, ...] = ()
    token_fed: tuple[str, ...] = ()
    mixed: tuple[str, ...] = ()
    error: str | None = None


def _split(model: nn.Module, path: str) -> tuple[str, str, str] | None:
    """(block list, index, path relative to the block) when ``path`` lies inside a ModuleList."""
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        if parts[i].isdigit():
            head = ".".join(parts[:i])
            if isinstance(model.get_submodule(head), nn.ModuleList) and i + 1 < len(parts):
                return head, parts[i], ".".join(parts[i + 1:])
    return None


_ADAPTIVE = ("AdaLayerNorm", "NormZero", "Modulation", "AdaNorm")


def _token_fed(model: nn.Module, trace: Trace) -> tuple[str, ...]:
    # Adaptive-norm style modules whose modulation Linear ran on token-dependent input.
    out = []
    for path, rec in trace.modules.items():
        mod = model.get_submodule(path)
        if not isinstance(mod, nn.Linear) or not rec.impure_calls or not rec.labels & trace.time_args:
            continue
        parent = path.rpartition(".")[0]
        pname = type(model.get_submodule(parent)).__name__ if parent else ""
        if any(a in pname for a in _ADAPTIVE) or path.endswith(("_mod", "adaLN_modulation.1", "norm1.linear")):
            out.append(path)
    return tuple(sorted(out))


def propose_from_trace(model: nn.Module, trace: Trace) -> Proposal:
    """Group a trace's sites into model-level and per-block sites."""
    sites = sorted(trace.sites)
    model_sites: list[str] = []
    blocks: dict[str, dict[str, list[str]]] = {}
    for path in sites:
        where = _split(model, path)
        if where is None:
            model_sites.append(path)
            continue
        head, idx, rel = where
        cls_name = type(model.get_submodule(f"{head}.{idx}")).__name__
        rels = blocks.setdefault(head, {}).setdefault(cls_name, [])
        if rel not in rels:
            rels.append(rel)
    fam = FAMILIES.get(type(model))
    return Proposal(
        class_name=type(model).__name__,
        supported=None if fam is None else fam.name,
        sites=tuple(sites),
        model_sites=tuple(model_sites),
        block_sites={h: {c: tuple(sorted(r)) for c, r in by.items()} for h, by in blocks.items()},
        conditioning=tuple(sorted(trace.conditioning_of(sites))),
        time_args=tuple(sorted(trace.time_args)),
        token_args=tuple(sorted(trace.token_args)),
        token_fed=_token_fed(model, trace),
        mixed=tuple(sorted(trace.mixed)),
    )


def propose_family(cls: type, config: dict | None = None) -> Proposal:
    """Build a tiny ``cls`` (``config`` keys override the defaults), trace one forward, propose."""
    try:
        model, inputs = tiny_case(cls, config)
        trace = trace_forward(model, inputs)
    except TinyInstanceError as exc:
        return Proposal(class_name=cls.__name__, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - the synthesised inputs may not fit the class
        return Proposal(class_name=cls.__name__, error=f"traced forward failed: {type(exc).__name__}: {exc}")
    return propose_from_trace(model, trace)


def skeleton(p: Proposal) -> str:
    """A family module skeleton for a proposal (``compute`` left to write)."""
    block_lists = tuple(p.block_sites)
    lines = [
        f'"""**{p.class_name}** (proposed by ``python -m fusion_diffusers.discover``): sites fed by',
        f"{', '.join(p.time_args)}{' + ' + ', '.join(p.conditioning) if p.conditioning else ''}.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import Any",
        "",
        "from torch import nn",
        "",
        f"from diffusers import {p.class_name}",
        "",
        "from .base import CallConditioning, Family",
        "",
        '__all__ = ["FAMILY"]',
        "",
        "_BLOCK_SITES = {",
    ]
    for head, by in p.block_sites.items():
        for cls_name, rels in by.items():
            lines.append(f"    {cls_name!r}: {rels!r},  # in {head}")
    lines += [
        "}",
        "",
        "",
        "def _block_sites(block: nn.Module) -> tuple[str, ...]:",
        "    return _BLOCK_SITES[type(block).__name__]",
        "",
        "",
        "def _check(model: nn.Module) -> str | None:",
        "    return None  # TODO: refuse layouts (block/norm classes) the compute below does not mirror",
        "",
        "",
        "def _compute(model: nn.Module, cond: CallConditioning) -> dict[str, Any]:",
        f"    # TODO: mirror {p.class_name}.forward op for op; return every site's output:",
    ]
    for s in p.sites[:6]:
        lines.append(f"    #   {s!r}")
    if len(p.sites) > 6:
        lines.append(f"    #   … {len(p.sites) - 6} more")
    lines += [
        "    raise NotImplementedError",
        "",
        "",
        "FAMILY = Family(",
        f"    name={p.class_name.replace('Transformer', '').replace('Model', '').lower()!r},",
        f"    model_class={p.class_name},",
        f"    block_lists={block_lists!r},",
        f"    model_sites={p.model_sites!r},",
        "    block_sites=_block_sites,",
        f"    conditioning={p.conditioning!r},",
        "    lora_scale_kwarg=None,  # TODO: the kwarg diffusers' apply_lora_scale reads, if any",
        "    compute=_compute,",
        "    check=_check,",
        ")",
        "",
    ]
    return "\n".join(lines)


def _report(p: Proposal) -> str:
    out = [f"{p.class_name} (diffusers {diffusers.__version__})"]
    if p.error:
        out.append(f"  no trace: {p.error}")
        return "\n".join(out)
    out.append(f"  registered family: {p.supported or 'none'}")
    out.append(f"  timestep arguments: {list(p.time_args)}; token streams: {list(p.token_args)}")
    out.append(f"  sites feed on: {list(p.time_args) + list(p.conditioning)} (the cache key must hold all of them)")
    out.append(f"  model-level sites: {list(p.model_sites)}")
    for head, by in p.block_sites.items():
        for cls_name, rels in by.items():
            out.append(f"  {head}[*] ({cls_name}): {list(rels)}")
    if p.token_fed:
        out.append(f"  modulation layers fed by tokens (not cacheable): {list(p.token_fed)[:6]}")
    if p.mixed:
        out.append(f"  modules on both paths (cannot be slotted): {list(p.mixed)}")
    if not p.sites:
        out.append("  no modulator site found (no adaLN-style conditioning, or it depends on tokens)")
    return "\n".join(out)


def _parse_set(items: list[str]) -> dict:
    cfg = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        low = raw.strip().lower()
        if low in ("true", "false", "none"):
            cfg[key] = {"true": True, "false": False, "none": None}[low]
            continue
        try:
            cfg[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            cfg[key] = raw
    return cfg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Propose a modulator-cache family for a diffusers transformer class.")
    ap.add_argument("class_name", help="a diffusers transformer class, e.g. WanTransformer3DModel")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for the tiny instance (repeatable)")
    ap.add_argument("--json", action="store_true", help="print the proposal as JSON")
    ap.add_argument("--no-skeleton", action="store_true", help="omit the skeleton module")
    args = ap.parse_args(argv)
    cls = getattr(diffusers, args.class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        print(f"error: class_name: {args.class_name!r} is not a diffusers model class", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    p = propose_family(cls, _parse_set(args.set))
    if args.json:
        print(json.dumps(asdict(p), indent=2))
        return 0 if p.error is None else 1
    print(_report(p))
    if p.error is None and p.sites and not args.no_skeleton:
        print("\n# ---- proposed family module (families/<name>.py) ----\n")
        print(skeleton(p))
    return 0 if p.error is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
