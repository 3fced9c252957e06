"""Control features read straight from a log-mel latent, differentiably.

The reference data's control targets are measured on the *clean audio* (``fusion_train.data``):
band RMS energy in dB from the full-resolution power spectrum, and spectral flux. This module
computes the same five features from a log-mel latent ``[B, n_mels, T]`` (in dB, i.e.
de-standardised; pass the standardisation stats to :class:`ControlFeatureExtractor` to feed it
standardised latents), so guided sampling can compare against or backpropagate through them.

How the outputs relate to the audio-domain targets:

* **Band energies** (``rms_energy_<band>``, dB): ``10·log10(W @ 10^(L/10) + 10^(floor/10))`` with
  ``W = band_mel_weights(spec, bands)``. The mel triangles form a partition of unity, so
  ``W @ mel_power`` is the STFT power of the band exactly *inside* it and leaks half a triangle
  across each edge. The audio-domain target uses brick-wall FFT bins instead. For tones inside a
  band both agree to a small fraction of a dB; for real music the difference comes from
  partials within half a triangle of a band edge (measured numbers: ``docs/reference_data.md``).
* **Spectral flux** (``spectral_flux``, dB per frame): the mean over mel bins of the half-wave
  rectified frame-to-frame increase of the log-mel, ``flux_t = mean_m max(0, L[m,t] − L[m,t−1])``,
  ``flux_0 = 0`` (Dixon 2006, "Onset detection revisited", half-wave rectified spectral flux,
  computed on a log-compressed mel spectrogram as in Böck, Krebs & Schedl 2012 and librosa's
  ``onset_strength``). The reference data *defines* its flux target with this very function on
  the clean audio's log-mel, so on a clean latent the extractor reproduces it exactly.

Example:
    >>> import torch
    >>> extractor = ControlFeatureExtractor()
    >>> latent_db = torch.full((2, 64, 8), -30.0, requires_grad=True)
    >>> features = extractor(latent_db)
    >>> features.shape, extractor.names[-1]
    (torch.Size([2, 5, 8]), 'spectral_flux')
    >>> features[:, :4].sum().backward()  # differentiable
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .mel_bands import (
    DEFAULT_CONTROL_BANDS,
    DEFAULT_DB_FLOOR,
    ControlBand,
    MelSpec,
    band_mel_weights,
)

__all__ = [
    "ControlFeatureExtractor",
    "band_energy_db",
    "control_feature_names",
    "power_to_db",
    "spectral_flux",
]

_DB_PER_NEPER = 10.0 / math.log(10.0)


def control_feature_names(bands: tuple[ControlBand, ...] = DEFAULT_CONTROL_BANDS) -> tuple[str, ...]:
    """Names of the control channels, in order: ``rms_energy_<band>`` for each band, then flux.

    Example:
        >>> control_feature_names()
        ('rms_energy_bass', 'rms_energy_body', 'rms_energy_mid', 'rms_energy_air', 'spectral_flux')
    """
    return tuple(f"rms_energy_{b.name}" for b in bands) + ("spectral_flux",)


def power_to_db(power: torch.Tensor, db_floor: float = DEFAULT_DB_FLOOR) -> torch.Tensor:
    """Soft-floored decibels, ``10·log10(power + 10**(db_floor/10))`` (smooth, never below floor).

    Example:
        >>> round(float(power_to_db(torch.tensor(0.5))), 3)
        -3.01
    """
    return _DB_PER_NEPER * torch.log(power + 10.0 ** (db_floor / 10.0))


def band_energy_db(
    logmel_db: torch.Tensor, weights: torch.Tensor, db_floor: float = DEFAULT_DB_FLOOR
) -> torch.Tensor:
    """Band energies ``[B, n_bands, T]`` in dB from a log-mel ``[B, n_mels, T]`` in dB.

    ``weights`` is ``band_mel_weights(spec, bands)`` (``[n_bands, n_mels]``).
    """
    mel_power = torch.exp(logmel_db / _DB_PER_NEPER)
    band_power = torch.einsum("bm,nmt->nbt", weights.to(mel_power), mel_power)
    return power_to_db(band_power, db_floor)


def spectral_flux(logmel_db: torch.Tensor) -> torch.Tensor:
    """Half-wave rectified log-mel flux ``[B, 1, T]``: ``mean_m relu(L[m,t] − L[m,t−1])``, 0 at t=0.

    Example:
        >>> L = torch.tensor([[[0.0, 3.0, 1.0]], [[0.0, 0.0, 0.0]]])
        >>> spectral_flux(L).flatten().tolist()
        [0.0, 3.0, 0.0, 0.0, 0.0, 0.0]
    """
    diff = torch.relu(logmel_db[..., 1:] - logmel_db[..., :-1]).mean(dim=-2, keepdim=True)
    return torch.nn.functional.pad(diff, (1, 0))


class ControlFeatureExtractor(nn.Module):
    """Deterministic, differentiable control features from a log-mel latent.

    Args:
        spec: the latent's mel analysis (must match the data it was built with).
        bands: the energy bands (default bass/body/mid/air, edges in :mod:`fusion_infer.controls.mel_bands`).
        db_floor: soft floor of the band energies in dB.
        latent_mean, latent_std: optional per-mel-bin standardisation stats ``[n_mels]``; when
            given, inputs are standardised latents and are de-standardised as ``z·std + mean``.

    ``forward(latent)`` takes ``[B, n_mels, T]`` and returns ``[B, n_bands + 1, T]`` in the order
    of :attr:`names`. Computation runs in float32 (or the input's dtype if wider).

    Example:
        >>> ext = ControlFeatureExtractor(latent_mean=torch.zeros(64), latent_std=torch.ones(64))
        >>> ext(torch.zeros(1, 64, 4)).shape
        torch.Size([1, 5, 4])
    """

    def __init__(
        self,
        spec: MelSpec | None = None,
        bands: tuple[ControlBand, ...] = DEFAULT_CONTROL_BANDS,
        db_floor: float = DEFAULT_DB_FLOOR,
        latent_mean: torch.Tensor | None = None,
        latent_std: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.spec = MelSpec() if spec is None else spec
        if not isinstance(self.spec, MelSpec):
            raise TypeError(f"spec must be a MelSpec, got {type(self.spec).__name__}")
        if not math.isfinite(db_floor):
            raise ValueError(f"db_floor must be finite, got {db_floor!r}")
        self.bands = tuple(bands)
        self.db_floor = float(db_floor)
        self.names = control_feature_names(self.bands)
        self.register_buffer("weights", band_mel_weights(self.spec, self.bands))
        if (latent_mean is None) != (latent_std is None):
            raise ValueError("latent_mean and latent_std must be given together (or neither)")
        if latent_mean is not None:
            mean = torch.as_tensor(latent_mean, dtype=torch.float32).flatten()
            std = torch.as_tensor(latent_std, dtype=torch.float32).flatten()
            if mean.numel() != self.spec.n_mels or std.numel() != self.spec.n_mels:
                raise ValueError(
                    f"latent_mean/latent_std must have n_mels={self.spec.n_mels} entries, got "
                    f"{mean.numel()} and {std.numel()}"
                )
            self.register_buffer("latent_mean", mean)
            self.register_buffer("latent_std", std)
        else:
            self.latent_mean = None
            self.latent_std = None

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        if not isinstance(latent, torch.Tensor):
            raise TypeError(f"latent must be a torch.Tensor, got {type(latent).__name__}")
        if latent.dim() != 3 or latent.shape[1] != self.spec.n_mels:
            raise ValueError(
                f"latent must have shape [B, n_mels={self.spec.n_mels}, T], got {tuple(latent.shape)}"
            )
        dtype = torch.promote_types(latent.dtype, torch.float32)
        x = latent.to(dtype)
        if self.latent_mean is not None:
            x = x * self.latent_std.to(dtype)[:, None] + self.latent_mean.to(dtype)[:, None]
        energies = band_energy_db(x, self.weights.to(dtype), self.db_floor)
        return torch.cat([energies, spectral_flux(x)], dim=1)
