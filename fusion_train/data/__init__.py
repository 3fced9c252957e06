"""Reference data for control-head training: real music from the music21 corpus, and a synthetic twin.

* :func:`build_reference_data` / :class:`ReferenceDataConfig`: music21 scores rendered by our
  additive synthesiser, 64-band log-mel "latents" ``[N, 64, 256]`` on a ≈21.5 Hz grid
  (standardised), control targets ``[N, 5, 256]`` (band RMS dB for bass/body/mid/air, spectral
  flux) from the clean audio, split by piece, cached on disk with a checksummed manifest.
* :func:`synthetic_data`: enveloped tones with analytic ground truth, same return type.

The mel scale, filterbank and band edges come from :mod:`fusion_infer.controls.mel_bands` (one definition
for both halves). See ``docs/reference_data.md``.

Example:
    >>> from fusion_train.data import synthetic_data
    >>> synthetic_data(4, frames=16).latents.shape
    torch.Size([4, 64, 16])
"""

from .cache import resolve_cache_root
from .dataset import ReferenceData
from .describe import data_from_description, describe_data
from .reference import (
    DATA_FORMAT_VERSION,
    ReferenceDataConfig,
    build_reference_data,
    reference_cache_folder,
    split_pieces,
)
from .synthetic import synthetic_data

__all__ = [
    "DATA_FORMAT_VERSION",
    "ReferenceData",
    "ReferenceDataConfig",
    "build_reference_data",
    "data_from_description",
    "describe_data",
    "reference_cache_folder",
    "resolve_cache_root",
    "split_pieces",
    "synthetic_data",
]
