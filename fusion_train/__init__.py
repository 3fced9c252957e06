"""fusion_train: the FusionOpt optimizer and parameter routing for adaLN-zero DiTs.

Example:
    >>> from fusion_train import FusionOpt, build_param_groups, summarise_groups
    >>> groups = build_param_groups(model)            # doctest: +SKIP
    >>> print(summarise_groups(groups))               # doctest: +SKIP
    >>> opt = FusionOpt(groups, lr=1e-3, recipe="sf-normuon")  # doctest: +SKIP
"""

from .newton_schulz import orthogonalize
from .optimizer import FusionOpt, lr_shape_scale
from .recipes import COMPONENTS, RECIPES, resolve_components
from .routing import build_param_groups, summarise_groups

__all__ = [
    "COMPONENTS",
    "RECIPES",
    "FusionOpt",
    "build_param_groups",
    "lr_shape_scale",
    "orthogonalize",
    "resolve_components",
    "summarise_groups",
]
