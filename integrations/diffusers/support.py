"""Which diffusers transformers the modulator cache supports, and their modulator parameter share.

Run as a script to regenerate ``docs/diffusers_support.md``::

    python -m fusion_diffusers.support --out docs/diffusers_support.md

Every model class that ``diffusers`` exports from ``diffusers.models.transformers`` is built with its default config on the
``meta`` device (no memory, no downloads); where the class's ``__init__`` defaults build no working
model (``in_channels=None``, …), the keys of its :attr:`fusion_diffusers.tiny.TinySpec.defaults`
complete them. A class with a registered family is *exact* (bit-exact
tests in ``tests/diffusers``; the versions it was verified on are listed). Every other class is
refused at ``apply`` time, and its reason here is derived from one traced forward of a tiny
instance (:mod:`fusion_diffusers.discover`) — "modulators depend on tokens", "no adaLN", "not yet
proven" — unless :data:`REASONS` states it by hand.

The *modulator parameter share* counts the adaLN modulation ``Linear`` layers — every
``nn.Linear`` directly inside an adaptive-norm module (``AdaLayerNorm*``, ``*NormZero*``,
``*Modulation*``, ``AdaLayerNormContinuous``, …) or named ``proj_out_1``/``img_mod``/``txt_mod``/
``adaLN_modulation``/``time_proj`` (Wan's shared adaLN-single projection) — over all parameters; conditioning embedders (timestep/label/text-pool MLPs)
are not counted.

Example:
    >>> from diffusers import DiTTransformer2DModel
    >>> m = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
    ...                           num_layers=2, sample_size=4, num_embeds_ada_norm=10)
    >>> round(modulator_parameter_share(m), 3)
    0.191
"""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path

import torch
from torch import nn

import diffusers
from fusion_infer.files import atomic_write

from .discover import Proposal, propose_family
from .families import FAMILIES, UnsupportedModelError, resolve_family, site_paths
from .tiny import SPECS

__all__ = ["REASONS", "modulator_parameter_share", "reason_counts", "site_parameters", "support_markdown",
           "support_rows"]

_ADANORM = re.compile(r"(AdaLayerNorm|LayerNormZero|RMSNormZero|AdaNorm|Modulation|LayerNormContinuous)")
_NAMED = re.compile(r"(^|\.)(proj_out_1|img_mod|txt_mod|adaLN_modulation|adaln_modulation|time_proj)(\.|$)")


def _modulator_linears(model: nn.Module) -> list[nn.Module]:
    out = []
    for name, module in model.named_modules():
        if _ADANORM.search(type(module).__name__):
            out.extend(child for child in module.children() if isinstance(child, nn.Linear))
        elif isinstance(module, nn.Linear) and _NAMED.search(name):
            out.append(module)
    # de-duplicate (a Linear can be found twice through nested adaptive norms)
    seen, unique = set(), []
    for m in out:
        if id(m) not in seen:
            seen.add(id(m))
            unique.append(m)
    return unique


def modulator_parameter_share(model: nn.Module) -> float:
    """Fraction of parameters in adaLN modulation ``Linear`` layers (see the module docstring)."""
    total = sum(p.numel() for p in model.parameters())
    mods = sum(p.numel() for m in _modulator_linears(model) for p in m.parameters())
    return mods / total if total else 0.0


def _transformer_classes() -> list[type]:
    """Every model class diffusers exports from its ``diffusers.models.transformers`` package."""
    classes = []
    for name in sorted(dir(diffusers)):
        try:
            cls = getattr(diffusers, name)
        except Exception:  # noqa: BLE001 - optional backends raise on attribute access
            continue
        if (inspect.isclass(cls) and issubclass(cls, nn.Module)
                and cls.__module__.startswith("diffusers.models.transformers.")):
            classes.append(cls)
    return classes


#: Reasons the trace cannot derive (or states less precisely), by class name (classes without a
#: family only: a registered family's row names the family).
REASONS: dict[str, str] = {
    "Transformer2DModel": "not yet proven: generic block container whose layout depends on `norm_type` "
                          "(its `ada_norm_zero` form is what `DiTTransformer2DModel` wraps)",
    "TransformerTemporalModel": "no adaLN: temporal attention layers inside UNets (no timestep input used)",
    "DreamLiteTransformer2DModel": "not yet proven: generic block container (layout depends on `norm_type`)",
}


def site_parameters(model: nn.Module, proposal: Proposal) -> int:
    """Parameters of the modules a proposed family would slot, in ``model`` (any depth).

    The proposal comes from a tiny instance; block-level sites are matched by block class, so
    the count extends to every block of a full-depth (e.g. meta-device) model.
    """
    seen: set[int] = set()
    total = 0

    def add(module: nn.Module) -> None:
        nonlocal total
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()

    for path in proposal.model_sites:
        try:
            add(model.get_submodule(path))
        except AttributeError:
            continue
    for head, by_class in proposal.block_sites.items():
        blocks = getattr(model, head, None) if "." not in head else model.get_submodule(head)
        for block in blocks or ():
            for rel in by_class.get(type(block).__name__, ()):
                try:
                    add(block.get_submodule(rel))
                except AttributeError:
                    continue
    return total


def _family_site_parameters(model: nn.Module, family) -> int:
    seen: set[int] = set()
    total = 0
    for path in site_paths(model, family):
        for p in model.get_submodule(path).parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def _refusal(proposal: Proposal) -> str:
    if proposal.error is not None:
        short = proposal.error.split("; register a TinySpec")[0].split(": ", 1)[-1][:100]
        return f"not yet proven (no tiny instance: {short})"
    block_sites = sum(len(r) for by in proposal.block_sites.values() for r in by.values())
    if proposal.token_fed and not block_sites:
        return (f"modulators depend on tokens ({len(proposal.token_fed)} modulation layers fed by "
                f"{', '.join(f'`{a}`' for a in proposal.token_args)})")
    if not proposal.sites:
        return "no adaLN (no timestep-dependent module feeds the token stream)"
    fed = ", ".join(f"`{a}`" for a in (*proposal.time_args, *proposal.conditioning))
    note = f"; {len(proposal.token_fed)} modulation layers fed by tokens" if proposal.token_fed else ""
    return f"not yet proven (trace: {len(proposal.sites)} sites fed by {fed}{note})"


def support_rows() -> list[dict]:
    """One dict per diffusers transformer class: name, status, reason, verified versions, total
    params, modulator share (``share_source``: ``"family"``, ``"trace"`` or ``"name rules"``)."""
    rows = []
    for cls in _transformer_classes():
        row = {"class": cls.__name__, "status": "refused", "reason": "", "verified": "", "params_B": None,
               "share": None, "share_source": ""}
        fam = FAMILIES.get(cls)
        spec = SPECS.get(cls.__name__)
        try:
            with torch.device("meta"):
                model = cls(**(spec.defaults if spec is not None else {}))
        except Exception as exc:  # noqa: BLE001 - report, never crash the table
            if fam is not None:  # proven on its tests' configs; no default to measure the share on
                row.update(status="exact", reason=f"family `{fam.name}` (default config not constructible)",
                           verified=", ".join(fam.verified_versions))
            else:
                row["reason"] = REASONS.get(cls.__name__, f"default config not constructible ({type(exc).__name__})")
            rows.append(row)
            continue
        total = sum(p.numel() for p in model.parameters())
        row["params_B"] = total / 1e9
        if fam is not None:
            try:
                resolve_family(model)
                row.update(status="exact", reason=f"family `{fam.name}`", verified=", ".join(fam.verified_versions),
                           share=_family_site_parameters(model, fam) / total, share_source="family")
            except UnsupportedModelError as exc:
                row["reason"] = f"default config refused by family `{fam.name}`: {exc}"
            rows.append(row)
            continue
        proposal = propose_family(cls)
        if proposal.error is None and proposal.sites:
            row.update(share=site_parameters(model, proposal) / total, share_source="trace")
        else:
            row.update(share=modulator_parameter_share(model), share_source="name rules")
        row["reason"] = REASONS.get(cls.__name__) or _refusal(proposal)
        rows.append(row)
    return rows


def reason_counts(rows: list[dict]) -> dict[str, int]:
    """Rows per status/reason kind (the text before any parenthesis or colon)."""
    counts: dict[str, int] = {}
    for r in rows:
        kind = "exact" if r["status"] == "exact" else re.split(r" \(|:", r["reason"])[0]
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def support_markdown(rows: list[dict]) -> str:
    """The support table as markdown."""
    n_sup = sum(r["status"] in ("exact", "supported") for r in rows)
    counts = reason_counts(rows)
    lines = [
        "# diffusers transformers: modulator-cache support",
        "",
        f"Generated by `python -m fusion_diffusers.support --out docs/diffusers_support.md` against "
        f"diffusers {diffusers.__version__}: {len(rows)} model classes of `diffusers.models.transformers`, "
        f"{n_sup} served exactly. "
        "*Exact* classes have a family proven bit-exact by the tests on the listed diffusers versions "
        "(other versions run a tiny self-check at `apply_modulator_cache`). *Refused* classes raise "
        "`UnsupportedModelError` naming the class; nothing is cached silently.",
        "",
        "Reasons are derived from one traced forward of a tiny instance "
        "(`python -m fusion_diffusers.discover ClassName` prints the details) unless hand-written: "
        "*modulators depend on tokens* = adaLN modulation layers run on inputs computed from a token "
        "stream; *no adaLN* = no timestep-dependent module output flows into the tokens; *not yet "
        "proven* = the trace finds sites but no family is registered, or no tiny instance could be "
        "built generically.",
        "",
        "Modulator share = parameters of the modules the family slots (and an offload moves), at the "
        "default config (completed by the class's `TinySpec.defaults` where its own defaults build no "
        "working model); for refused classes the modules the trace proposes (*trace*) or, without a "
        "trace, adaLN `Linear`s found by name (*name rules*).",
        "",
        "Counts: " + ", ".join(f"{k}: {v}" for k, v in counts.items()) + ".",
        "",
        "| model class | status | family / reason | verified on | modulator share | params (B, default config) |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["status"] not in ("exact", "supported"), r["class"])):
        share = "–" if r["share"] is None else f"{100 * r['share']:.1f} %"
        if r["share"] is not None and r.get("share_source") not in (None, "", "family"):
            share += f" ({r['share_source']})"
        params = "–" if r["params_B"] is None else f"{r['params_B']:.3f}"
        lines.append(f"| `{r['class']}` | {r['status']} | {r['reason']} | {r.get('verified', '')} | {share} | {params} |")
    lines.append("")
    return "\n".join(lines)


def _atomic_write(path: Path, text: str) -> None:
    atomic_write(path, text)


def main() -> None:
    parser = argparse.ArgumentParser(description="Generate the diffusers support table.")
    parser.add_argument("--out", default="docs/diffusers_support.md")
    args = parser.parse_args()
    text = support_markdown(support_rows())
    _atomic_write(Path(args.out), text)
    print(text)


if __name__ == "__main__":
    main()
