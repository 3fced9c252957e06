"""fusion_diffusers: a lossless adaLN modulator cache for diffusers DiT transformers and pipelines.

Supported: DiTTransformer2DModel, PixArtTransformer2DModel, SD3Transformer2DModel,
FluxTransformer2DModel, AuraFlowTransformer2DModel, SanaTransformer2DModel,
QwenImageTransformer2DModel, Flux2Transformer2DModel, ZImageTransformer2DModel,
ChromaTransformer2DModel, HiDreamImageTransformer2DModel, Lumina2Transformer2DModel,
CogView4Transformer2DModel, HunyuanDiT2DModel, Krea2Transformer2DModel and further image
classes (Qwen-Image 2.1, LongCat-Image, Ovis-Image, Bria, Bria FIBO, HunyuanImage 2.1,
CogView3-Plus, GLM-Image, ERNIE-Image, OmniGen); video and audio-video:
WanTransformer3DModel, WanVACETransformer3DModel, SkyReelsV2Transformer3DModel,
HunyuanVideoTransformer3DModel, HunyuanVideo15Transformer3DModel, LTXVideoTransformer3DModel,
LTX2VideoTransformer3DModel, MiniMaxH3Transformer3DModel, CogVideoXTransformer3DModel,
SanaVideoTransformer3DModel, MochiTransformer3DModel and more (``families.FAMILIES``); others
are refused, naming the class.

Quick start::

    from fusion_diffusers import enable_modulator_cache, stats
    cache = enable_modulator_cache(pipe)  # a pipeline or its transformer
    images = pipe(...).images             # bit-identical to the uncached pipeline
    print(stats(pipe))                    # or print(cache): a one-line summary

See docs/diffusers_integration.md and docs/diffusers_support.md.
"""

try:
    import diffusers as _diffusers  # noqa: F401 - checked first for a clear message
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "fusion_diffusers needs diffusers>=0.42, which is not installed: pip install fusion-dit[diffusers]"
    ) from _exc

from .blocks import patch_blocks, unpatch_blocks
from .config import ModulatorCacheConfig
from .families import UnsupportedModelError, resolve_family
from .hooks import (
    ModulatorCache,
    apply_modulator_cache,
    get_modulator_cache,
    remove_modulator_cache,
)
from .modulators import Modulators, compute_modulators
from .offload import ResidentReport
from .pipelines import disable_modulator_cache, enable_modulator_cache, stats
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
