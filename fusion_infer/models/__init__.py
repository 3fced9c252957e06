"""Fusion's own adaLN-zero models and what they share: the LatCH-style :class:`ControlHead`, the
small rectified-flow :class:`BaseDiT`, timestep embedding, rotary positions, the ``mods=None``
modulator protocol and cost accounting."""

from .base_dit import BaseDiT, base_dit_config
from .control_head import AdaLNZeroBlock, ControlHead, FinalLayer, modulate
from .cost import CostItem, HeadCost, head_cost, head_cost_items
from .head_config import ControlHeadConfig
from .modulators import Modulators, chunked_modulator_table, split_modulator_table
from .rotary import apply_rotary, rotary_tables
from .timestep_embedding import TimestepEmbedder, sinusoidal_features, validate_timesteps

__all__ = [
    "AdaLNZeroBlock",
    "BaseDiT",
    "ControlHead",
    "ControlHeadConfig",
    "CostItem",
    "FinalLayer",
    "HeadCost",
    "Modulators",
    "TimestepEmbedder",
    "apply_rotary",
    "base_dit_config",
    "chunked_modulator_table",
    "head_cost",
    "head_cost_items",
    "modulate",
    "rotary_tables",
    "sinusoidal_features",
    "split_modulator_table",
    "validate_timesteps",
]
