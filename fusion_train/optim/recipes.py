"""Named FusionOpt recipes and validation of component sets (docs/design.md §5)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["COMPONENTS", "RECIPES", "resolve_components"]

COMPONENTS = frozenset({"ns5", "normuon", "sf", "mona", "shampoo"})

RECIPES: dict[str, frozenset[str]] = {
    "sf-normuon": frozenset({"ns5", "normuon", "sf"}),
    "muon": frozenset({"ns5"}),
    "sf-adamw": frozenset({"sf"}),
    "full": frozenset({"ns5", "normuon", "sf", "mona", "shampoo"}),
    "muon+mona": frozenset({"ns5", "mona"}),
}


def resolve_components(
    recipe: str | None = "sf-normuon",
    components: Iterable[str] | None = None,
    *,
    allow_unbounded: bool = False,
) -> frozenset[str]:
    """Return the component set for ``recipe`` or an explicit ``components`` set (which wins).

    Example:
        >>> sorted(resolve_components("muon+mona"))
        ['mona', 'ns5']
    """
    if components is not None:
        comps = frozenset(components)
        unknown = comps - COMPONENTS
        if unknown:
            raise ValueError(
                f"unknown component(s) {sorted(unknown)}; allowed components are {sorted(COMPONENTS)}"
            )
    else:
        if recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {sorted(RECIPES)}, got {recipe!r}")
        comps = RECIPES[recipe]
    if "normuon" in comps and "ns5" not in comps:
        raise ValueError("component 'normuon' normalises an orthogonalised update and needs 'ns5'")
    if "mona" in comps and not comps & {"ns5", "shampoo"}:
        raise ValueError(
            "component 'mona' transforms the gradient of the spectral path and needs 'ns5' "
            "(or 'shampoo' with allow_unbounded=True)"
        )
    if "shampoo" in comps and "ns5" not in comps and not allow_unbounded:
        raise ValueError(
            "component 'shampoo' without 'ns5' is unbounded (it diverged when run alone); "
            "add 'ns5' or pass allow_unbounded=True"
        )
    return comps
