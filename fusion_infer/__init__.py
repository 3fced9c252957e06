"""fusion_infer: control-head model, the ``mods=None`` protocol and the TimeConditioningCache."""

from .bounded_store import BoundedStore, CacheStats
from .cache import TimeConditioningCache
from .cache_core import CacheCore, bits_equal
from .checkpoint import (
    CHECKPOINT_FORMAT_VERSION,
    CheckpointError,
    LoadedHead,
    TargetScaling,
    load_head,
    read_metadata,
)
from .control_head import AdaLNZeroBlock, ControlHead, ControlHeadConfig, FinalLayer
from .exact_keys import dedupe, float_bits, make_key, row_bits, row_keys, tensor_bits, tensor_key
from .head_cost import CostItem, HeadCost, head_cost, head_cost_items
from .modulators import Modulators, chunked_modulator_table, split_modulator_table
from .noise_schedules import NOISE_SCHEDULES, NoiseSchedule, get_noise_schedule
from .rotary import apply_rotary, rotary_tables
from .timestep_embedding import TimestepEmbedder, sinusoidal_features, validate_timesteps
from .weight_watch import WeightSnapshot, WeightWatcher

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "NOISE_SCHEDULES",
    "CheckpointError",
    "LoadedHead",
    "NoiseSchedule",
    "TargetScaling",
    "get_noise_schedule",
    "load_head",
    "read_metadata",
    "AdaLNZeroBlock",
    "BoundedStore",
    "CacheCore",
    "CacheStats",
    "ControlHead",
    "ControlHeadConfig",
    "FinalLayer",
    "CostItem",
    "HeadCost",
    "Modulators",
    "TimeConditioningCache",
    "TimestepEmbedder",
    "WeightSnapshot",
    "WeightWatcher",
    "apply_rotary",
    "bits_equal",
    "chunked_modulator_table",
    "dedupe",
    "float_bits",
    "head_cost",
    "head_cost_items",
    "make_key",
    "row_bits",
    "rotary_tables",
    "row_keys",
    "sinusoidal_features",
    "split_modulator_table",
    "tensor_bits",
    "tensor_key",
    "validate_timesteps",
]
