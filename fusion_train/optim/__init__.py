"""FusionOpt and its components, one module each: Newton–Schulz orthogonalisation, NorMuon,
Schedule-Free averaging, the Polyak step, MONA, KL-Shampoo, recipes, parameter routing and
compilation of the pure per-shape functions."""

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
