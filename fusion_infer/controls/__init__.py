"""Audio control features: mel bands and the differentiable control-feature extractor (band
energies and spectral flux) that control heads learn to read out of latents."""

from .features import ControlFeatureExtractor, control_feature_names
from .mel_bands import DEFAULT_CONTROL_BANDS, ControlBand, MelSpec

__all__ = [
    "DEFAULT_CONTROL_BANDS",
    "ControlBand",
    "ControlFeatureExtractor",
    "MelSpec",
    "control_feature_names",
]
