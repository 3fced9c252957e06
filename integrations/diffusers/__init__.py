"""fusion_diffusers: a lossless adaLN modulator cache for diffusers DiT transformers and pipelines.

Supported: DiTTransformer2DModel, PixArtTransformer2DModel, SD3Transformer2DModel,
FluxTransformer2DModel, AuraFlowTransformer2DModel, SanaTransformer2DModel,
QwenImageTransformer2DModel, Flux2Transformer2DModel, ZImageTransformer2DModel,
ChromaTransformer2DModel, HiDreamImageTransformer2DModel, Lumina2Transformer2DModel,
CogView4Transformer2DModel, HunyuanDiT2DModel, Krea2Transformer2DModel and further image
classes (Qwen-Image 2.1, LongCat-Image, Ovis-Image, Bria, Bria FIBO, HunyuanImage 2.1,
CogView3-Plus, GLM-Image, ERNIE-Image, OmniGen; ``families.FAMILIES``); others are refused,
naming the class.

Quick start::

    from fusion_diffusers import enable_modulator_cache, stats
    enable_modulator_cache(pipe)          # or apply_modulator_cache(pipe.transformer)
    images = pipe(...).images             # bit-identical to the uncached pipeline
    print(stats(pipe.transformer))

See docs/diffusers_integration.md and docs/diffusers_support.md.
"""

from .blocks import patch_blocks, unpatch_blocks
from .config import ModulatorCacheConfig
from .families import UnsupportedModelError, resolve_family
from .hooks import (
    ModulatorCache,
    apply_modulator_cache,
    get_modulator_cache,
    remove_modulator_cache,
    stats,
)
from .modulators import Modulators, compute_modulators
from .offload import ResidentReport
from .pipelines import disable_modulator_cache, enable_modulator_cache
from .precompute import PrecomputeReport, precompute
from .verify import EquivalenceReport, verify_equivalence

__all__ = [
    "EquivalenceReport",
    "ModulatorCache",
    "ModulatorCacheConfig",
    "Modulators",
    "PrecomputeReport",
    "ResidentReport",
    "UnsupportedModelError",
    "apply_modulator_cache",
    "compute_modulators",
    "disable_modulator_cache",
    "enable_modulator_cache",
    "get_modulator_cache",
    "patch_blocks",
    "precompute",
    "remove_modulator_cache",
    "resolve_family",
    "stats",
    "unpatch_blocks",
    "verify_equivalence",
]
