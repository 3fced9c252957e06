"""Depth and width shrink of adaLN-zero DiTs, with cost accounting.

* :func:`count_cost` — parameters and FLOPs per forward by category and block.
* :func:`shrink_depth` / :func:`block_importance` — drop whole blocks (uniform or by importance).
* :func:`shrink_width` / :func:`width_importance` — prune attention heads and MLP hidden units.

See ``docs/shrink.md``.
"""

from .cost import ModelCost, cost_from_items, count_cost
from .depth import (
    DEPTH_METRICS,
    DEPTH_STRATEGIES,
    block_importance,
    select_blocks,
    shrink_depth,
    uniform_keep,
)
from .families import SUPPORTED_FAMILIES, model_family
from .width import WIDTH_STRATEGIES, kept_counts, shrink_width, width_importance

__all__ = [
    "DEPTH_METRICS",
    "DEPTH_STRATEGIES",
    "SUPPORTED_FAMILIES",
    "WIDTH_STRATEGIES",
    "ModelCost",
    "block_importance",
    "cost_from_items",
    "count_cost",
    "kept_counts",
    "model_family",
    "select_blocks",
    "shrink_depth",
    "shrink_width",
    "uniform_keep",
    "width_importance",
]
