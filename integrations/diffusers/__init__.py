"""fusion_diffusers: a lossless adaLN modulator cache for diffusers DiT transformers and pipelines."""

from .blocks import patch_blocks, unpatch_blocks
from .families import UnsupportedModelError, resolve_family
from .modulators import Modulators, compute_modulators

__all__ = [
    "Modulators",
    "UnsupportedModelError",
    "compute_modulators",
    "patch_blocks",
    "resolve_family",
    "unpatch_blocks",
]
