"""Control targets measured on the clean audio, on the latent's frame grid.

Channels (names from :func:`fusion_infer.controls.features.control_feature_names`):

* ``rms_energy_<band>`` for the bands of :data:`fusion_infer.controls.mel_bands.DEFAULT_CONTROL_BANDS`
  (bass 20–120 Hz, body 120–600 Hz, mid 600–2500 Hz, air 2500 Hz–Nyquist): the band's mean-square
  level in dB, ``10·log10(Σ_{k in band} P_k + 10^(floor/10))``, where ``P`` is the
  Parseval-normalised power spectrum of :func:`fusion_train.data.mel.power_spectrogram` and the
  band is a brick-wall selection of FFT bins. By Parseval this is the RMS level (in dB re. full
  scale amplitude 1) of the band-limited, Hann-windowed frame.
* ``spectral_flux``: :func:`fusion_infer.controls.features.spectral_flux` of the clean audio's
  log-mel (one definition shared with the latent-domain extractor).

Example:
    >>> import torch
    >>> from fusion_infer.controls.mel_bands import MelSpec
    >>> from fusion_train.data.mel import samples_for_frames
    >>> spec = MelSpec()
    >>> audio = torch.zeros(samples_for_frames(spec, 4))
    >>> audio_control_targets(audio, spec).shape
    torch.Size([5, 4])
"""

from __future__ import annotations

import torch

from fusion_infer.controls.features import power_to_db, spectral_flux
from fusion_infer.controls.mel_bands import (
    DEFAULT_CONTROL_BANDS,
    DEFAULT_DB_FLOOR,
    ControlBand,
    MelSpec,
    band_fft_mask,
)

from .mel import log_mel, power_spectrogram

__all__ = ["audio_band_energy_db", "audio_control_targets"]


def audio_band_energy_db(
    power: torch.Tensor,
    spec: MelSpec,
    bands: tuple[ControlBand, ...] = DEFAULT_CONTROL_BANDS,
    db_floor: float = DEFAULT_DB_FLOOR,
) -> torch.Tensor:
    """Brick-wall band energies in dB ``[..., n_bands, T]`` from a power spectrogram ``[..., F, T]``."""
    mask = band_fft_mask(spec, bands)
    return power_to_db(torch.einsum("bf,...ft->...bt", mask, power), db_floor)


def audio_control_targets(
    audio: torch.Tensor,
    spec: MelSpec,
    bands: tuple[ControlBand, ...] = DEFAULT_CONTROL_BANDS,
    db_floor: float = DEFAULT_DB_FLOOR,
) -> torch.Tensor:
    """All control channels ``[..., n_bands + 1, T]`` from audio with framing context."""
    power = power_spectrogram(audio, spec)
    energies = audio_band_energy_db(power, spec, bands, db_floor)
    flux = spectral_flux(log_mel(audio, spec, power=power))
    return torch.cat([energies, flux], dim=-2)
