"""The lossless modulator cache: :class:`TimeConditioningCache` for Fusion's models and the
model-agnostic pieces the diffusers integration reuses (exact keys, the bounded store, weight
change detection, the cache core, weight offload)."""

from .core import CacheCore, bits_equal
from .keys import dedupe, float_bits, make_key, row_bits, row_keys, tensor_bits, tensor_key
from .offload import ResidentReport, WeightOffload, parameter_bytes
from .store import BoundedStore, CacheStats
from .time_conditioning import TimeConditioningCache
from .weight_watch import WeightSnapshot, WeightWatcher

__all__ = [
    "BoundedStore",
    "CacheCore",
    "CacheStats",
    "ResidentReport",
    "TimeConditioningCache",
    "WeightOffload",
    "WeightSnapshot",
    "WeightWatcher",
    "bits_equal",
    "dedupe",
    "float_bits",
    "make_key",
    "parameter_bytes",
    "row_bits",
    "row_keys",
    "tensor_bits",
    "tensor_key",
]
