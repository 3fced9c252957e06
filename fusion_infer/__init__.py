"""fusion_infer: control-head model, the ``mods=None`` protocol and the TimeConditioningCache."""

from .bounded_store import BoundedStore, CacheStats
from .cache_core import CacheCore, bits_equal
from .exact_keys import dedupe, float_bits, make_key, row_bits, row_keys, tensor_bits, tensor_key
from .weight_watch import WeightSnapshot, WeightWatcher

__all__ = [
    "BoundedStore",
    "CacheCore",
    "CacheStats",
    "WeightSnapshot",
    "WeightWatcher",
    "bits_equal",
    "dedupe",
    "float_bits",
    "make_key",
    "row_bits",
    "row_keys",
    "tensor_bits",
    "tensor_key",
]
