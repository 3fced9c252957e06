"""fusion_infer: control-head and base-DiT models, the ``mods=None`` protocol, the
TimeConditioningCache, rectified-flow samplers and selective TFG guidance."""

from .cache.core import CacheCore, bits_equal
from .cache.keys import dedupe, float_bits, make_key, row_bits, row_keys, tensor_bits, tensor_key
from .cache.offload import ResidentReport, WeightOffload, parameter_bytes
from .cache.store import BoundedStore, CacheStats
from .cache.time_conditioning import TimeConditioningCache
from .cache.weight_watch import WeightSnapshot, WeightWatcher
from .checkpoint import (
    CHECKPOINT_FORMAT_VERSION,
    CheckpointError,
    LoadedHead,
    TargetScaling,
    load_head,
    read_metadata,
)
from .guidance.closed_loop import (
    compare_errors,
    control_error,
    loudness_extractor,
    rising_pause_falling,
)
from .guidance.render_caches import RenderCaches
from .guidance.sampling import SampleResult, rf_sigmas, sample
from .guidance.tfg import HeadGuidance, SelectiveTFG, step_weight_schedule
from .models.base_dit import BaseDiT, base_dit_config
from .models.control_head import AdaLNZeroBlock, ControlHead, ControlHeadConfig, FinalLayer
from .models.cost import CostItem, HeadCost, head_cost, head_cost_items
from .models.modulators import Modulators, chunked_modulator_table, split_modulator_table
from .models.rotary import apply_rotary, rotary_tables
from .models.timestep_embedding import TimestepEmbedder, sinusoidal_features, validate_timesteps
from .noise_schedules import NOISE_SCHEDULES, NoiseSchedule, get_noise_schedule

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
    "BaseDiT",
    "BoundedStore",
    "CacheCore",
    "CacheStats",
    "ControlHead",
    "ControlHeadConfig",
    "FinalLayer",
    "CostItem",
    "HeadCost",
    "HeadGuidance",
    "Modulators",
    "RenderCaches",
    "SampleResult",
    "SelectiveTFG",
    "TimeConditioningCache",
    "TimestepEmbedder",
    "ResidentReport",
    "WeightOffload",
    "parameter_bytes",
    "WeightSnapshot",
    "WeightWatcher",
    "apply_rotary",
    "base_dit_config",
    "bits_equal",
    "chunked_modulator_table",
    "compare_errors",
    "control_error",
    "dedupe",
    "float_bits",
    "head_cost",
    "loudness_extractor",
    "head_cost_items",
    "make_key",
    "rf_sigmas",
    "rising_pause_falling",
    "rotary_tables",
    "row_bits",
    "row_keys",
    "sample",
    "sinusoidal_features",
    "split_modulator_table",
    "step_weight_schedule",
    "tensor_bits",
    "tensor_key",
    "validate_timesteps",
]
