"""Mel scale, mel filterbank and the control bands: the one definition both halves share.

The reference data (``fusion_train.data``) turns audio into log-mel "latents" with this filterbank
and measures control targets in these bands; the control-feature extractor
(:mod:`fusion_infer.controls.features`) reads the same bands back out of a log-mel latent. Keeping
both here (``fusion_infer`` never imports ``fusion_train``) means there is exactly one definition.

Mel scales (both are standard; the choice is an option, ``"htk"`` is the default because it gives
the bass band more mel bins than Slaney's linear-below-1-kHz scale):

* ``"htk"``: ``m = 2595 · log10(1 + f / 700)`` (O'Shaughnessy 1987, as used by the HTK Book).
* ``"slaney"``: linear below 1 kHz, ``m = f / (200/3)``, logarithmic above,
  ``m = 15 + ln(f / 1000) / (ln(6.4) / 27)`` (Slaney 1998, *Auditory Toolbox* tech. report #1998-010).

Filterbank: ``n_mels`` triangles whose corners are ``n_mels + 2`` points equally spaced on the mel
axis between ``f_min`` and ``f_max`` (Davis & Mermelstein 1980). With ``norm=None`` every triangle
peaks at 1 and neighbouring triangles sum to exactly 1 between the first and last centre (a
partition of unity), so summing mel powers over a range of mel bins recovers the STFT power in
that frequency range. That property is what lets band energies be read back from the latent.
``norm="slaney"`` scales each triangle to unit area (``2 / (f_{m+1} − f_{m−1})``), as librosa's
default does; :func:`band_mel_weights` undoes that scaling.

Control bands (edges in Hz, lower edge inclusive, upper exclusive, the top band includes Nyquist):
``bass`` 20–120, ``body`` 120–600, ``mid`` 600–2500, ``air`` 2500–Nyquist (11025 Hz at the default
22.05 kHz). The names and the lower three edges follow the multiband RMS features of the community
LatCH re-implementation (``rms_energy_{bass,body,mid,air}``, there 20–120 / 120–600 / 600–2500 /
2500–22000 Hz); ``air`` is capped at our Nyquist.

Example:
    >>> spec = MelSpec()
    >>> round(spec.frame_rate, 2)
    21.53
    >>> mel_filterbank(spec).shape
    torch.Size([64, 1025])
    >>> band_mel_weights(spec).shape
    torch.Size([4, 64])
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

__all__ = [
    "DEFAULT_CONTROL_BANDS",
    "DEFAULT_DB_FLOOR",
    "MEL_SCALES",
    "MEL_NORMS",
    "ControlBand",
    "MelSpec",
    "band_fft_mask",
    "band_mel_weights",
    "fft_frequencies",
    "hz_to_mel",
    "mel_center_frequencies",
    "mel_filterbank",
    "mel_to_hz",
]

MEL_SCALES = ("htk", "slaney")
MEL_NORMS = (None, "slaney")

#: Soft floor of every dB control value: ``10·log10(energy + 10**(floor/10))``. It keeps the
#: features smooth (differentiable everywhere) and stops silence from dominating a loss.
DEFAULT_DB_FLOOR = -80.0

# Slaney scale constants: 200/3 Hz per mel below 1 kHz, log step ln(6.4)/27 above.
_SLANEY_F_SP = 200.0 / 3.0
_SLANEY_MIN_LOG_HZ = 1000.0
_SLANEY_MIN_LOG_MEL = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP  # = 15
_SLANEY_LOGSTEP = math.log(6.4) / 27.0


def _check_scale(scale: str) -> None:
    if scale not in MEL_SCALES:
        raise ValueError(f"mel_scale must be one of {MEL_SCALES}, got {scale!r}")


def hz_to_mel(freq: torch.Tensor | float, scale: str = "htk") -> torch.Tensor:
    """Convert frequencies in Hz to mels (``"htk"`` or ``"slaney"``; formulas in the module doc).

    Example:
        >>> round(float(hz_to_mel(1000.0, "slaney")), 9)
        15.0
    """
    _check_scale(scale)
    f = torch.as_tensor(freq, dtype=torch.float64)
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + f / 700.0)
    linear = f / _SLANEY_F_SP
    log = _SLANEY_MIN_LOG_MEL + torch.log(f.clamp_min(1e-12) / _SLANEY_MIN_LOG_HZ) / _SLANEY_LOGSTEP
    return torch.where(f >= _SLANEY_MIN_LOG_HZ, log, linear)


def mel_to_hz(mel: torch.Tensor | float, scale: str = "htk") -> torch.Tensor:
    """Inverse of :func:`hz_to_mel`.

    Example:
        >>> round(float(mel_to_hz(hz_to_mel(440.0))), 6)
        440.0
    """
    _check_scale(scale)
    m = torch.as_tensor(mel, dtype=torch.float64)
    if scale == "htk":
        return 700.0 * (torch.pow(10.0, m / 2595.0) - 1.0)
    linear = m * _SLANEY_F_SP
    log = _SLANEY_MIN_LOG_HZ * torch.exp(_SLANEY_LOGSTEP * (m - _SLANEY_MIN_LOG_MEL))
    return torch.where(m >= _SLANEY_MIN_LOG_MEL, log, linear)


@dataclass(frozen=True)
class MelSpec:
    """Framing and mel analysis of a log-mel latent.

    Frame ``k`` of an excerpt starting at sample ``s`` is the Hann-windowed ``n_fft`` samples
    centred on sample ``s + k·hop``; the frame rate is ``sample_rate / hop`` (≈21.53 Hz by default,
    the Stable Audio latent rate). Log-mel values are ``10·log10(max(mel_power, amin))`` where
    ``mel_power`` is in mean-square units (a full-scale sine has power 0.5, i.e. −3 dB).

    Example:
        >>> MelSpec(n_mels=32).n_freqs
        1025
    """

    sample_rate: int = 22050
    n_fft: int = 2048
    hop: int = 1024
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float | None = None
    mel_scale: str = "htk"
    norm: str | None = None
    amin: float = 1e-10

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "hop", "n_mels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.hop > self.n_fft:
            raise ValueError(f"hop ({self.hop}) must not exceed n_fft ({self.n_fft})")
        _check_scale(self.mel_scale)
        if self.norm not in MEL_NORMS:
            raise ValueError(f"norm must be one of {MEL_NORMS}, got {self.norm!r}")
        nyquist = self.sample_rate / 2
        if not (0.0 <= self.f_min < self.upper_hz <= nyquist):
            raise ValueError(
                f"need 0 <= f_min < f_max <= sample_rate/2 ({nyquist}), got f_min={self.f_min}, "
                f"f_max={self.f_max}"
            )
        if not (self.amin > 0 and math.isfinite(self.amin)):
            raise ValueError(f"amin must be a positive finite float, got {self.amin!r}")

    @property
    def upper_hz(self) -> float:
        """``f_max``, or Nyquist when ``f_max`` is None."""
        return float(self.sample_rate / 2 if self.f_max is None else self.f_max)

    @property
    def n_freqs(self) -> int:
        """Number of one-sided FFT bins, ``n_fft // 2 + 1``."""
        return self.n_fft // 2 + 1

    @property
    def frame_rate(self) -> float:
        """Frames per second, ``sample_rate / hop``."""
        return self.sample_rate / self.hop

    def to_dict(self) -> dict:
        """JSON-friendly dict (round-trips through ``MelSpec(**d)``)."""
        return asdict(self)


@dataclass(frozen=True)
class ControlBand:
    """A frequency band ``[low_hz, high_hz)`` for an RMS-energy control; ``high_hz=None`` = Nyquist."""

    name: str
    low_hz: float
    high_hz: float | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"band name must be a non-empty str, got {self.name!r}")
        if self.low_hz < 0 or (self.high_hz is not None and self.high_hz <= self.low_hz):
            raise ValueError(
                f"band {self.name!r}: need 0 <= low_hz < high_hz, got {self.low_hz}, {self.high_hz}"
            )

    def edges(self, spec: MelSpec) -> tuple[float, float]:
        """``(low, high)`` in Hz with ``None`` resolved to Nyquist."""
        nyquist = spec.sample_rate / 2
        high = nyquist if self.high_hz is None else min(float(self.high_hz), nyquist)
        return float(self.low_hz), high


DEFAULT_CONTROL_BANDS: tuple[ControlBand, ...] = (
    ControlBand("bass", 20.0, 120.0),
    ControlBand("body", 120.0, 600.0),
    ControlBand("mid", 600.0, 2500.0),
    ControlBand("air", 2500.0, None),
)


def fft_frequencies(spec: MelSpec) -> torch.Tensor:
    """Centre frequency in Hz of each one-sided FFT bin, ``k · sample_rate / n_fft`` (float64)."""
    return torch.arange(spec.n_freqs, dtype=torch.float64) * (spec.sample_rate / spec.n_fft)


def _mel_corner_frequencies(spec: MelSpec) -> torch.Tensor:
    lo = hz_to_mel(spec.f_min, spec.mel_scale)
    hi = hz_to_mel(spec.upper_hz, spec.mel_scale)
    mels = torch.linspace(float(lo), float(hi), spec.n_mels + 2, dtype=torch.float64)
    return mel_to_hz(mels, spec.mel_scale)


def mel_center_frequencies(spec: MelSpec) -> torch.Tensor:
    """Peak frequency in Hz of each mel triangle, ``[n_mels]`` (float64)."""
    return _mel_corner_frequencies(spec)[1:-1]


def mel_filterbank(spec: MelSpec, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Triangular mel filterbank ``[n_mels, n_fft//2 + 1]`` (see the module doc for the formula).

    Raises ``ValueError`` when a triangle covers no FFT bin (too many mels for ``n_fft``).

    Example:
        >>> fb = mel_filterbank(MelSpec())
        >>> bool((fb >= 0).all()) and fb.shape == (64, 1025)
        True
    """
    corners = _mel_corner_frequencies(spec)
    freqs = fft_frequencies(spec)
    left, centre, right = corners[:-2, None], corners[1:-1, None], corners[2:, None]
    rising = (freqs[None, :] - left) / (centre - left)
    falling = (right - freqs[None, :]) / (right - centre)
    weights = torch.minimum(rising, falling).clamp_min(0.0)
    empty = (weights.sum(dim=1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"mel filters {empty} cover no FFT bin: n_mels={spec.n_mels} is too many for "
            f"n_fft={spec.n_fft} between {spec.f_min} and {spec.upper_hz} Hz; lower n_mels or raise "
            "n_fft"
        )
    if spec.norm == "slaney":
        weights = weights * (2.0 / (corners[2:] - corners[:-2]))[:, None]
    return weights.to(dtype)


def _resolve_bands(bands: tuple[ControlBand, ...] | list[ControlBand]) -> tuple[ControlBand, ...]:
    bands = tuple(bands)
    if not bands or not all(isinstance(b, ControlBand) for b in bands):
        raise TypeError(f"bands must be a non-empty sequence of ControlBand, got {bands!r}")
    names = [b.name for b in bands]
    if len(set(names)) != len(names):
        raise ValueError(f"band names must be unique, got {names}")
    return bands


def band_fft_mask(
    spec: MelSpec,
    bands: tuple[ControlBand, ...] = DEFAULT_CONTROL_BANDS,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """0/1 matrix ``[n_bands, n_freqs]`` selecting the FFT bins with ``low <= f < high``.

    A band whose upper edge reaches Nyquist includes the Nyquist bin. Used for the audio-domain
    (brick-wall) band energies of the reference data.
    """
    bands = _resolve_bands(bands)
    freqs = fft_frequencies(spec)
    nyquist = spec.sample_rate / 2
    rows = []
    for band in bands:
        lo, hi = band.edges(spec)
        upper = freqs <= hi if hi >= nyquist else freqs < hi
        row = (freqs >= lo) & upper
        if not bool(row.any()):
            raise ValueError(f"band {band.name!r} ({lo}-{hi} Hz) contains no FFT bin")
        rows.append(row)
    return torch.stack(rows).to(dtype)


def band_mel_weights(
    spec: MelSpec,
    bands: tuple[ControlBand, ...] = DEFAULT_CONTROL_BANDS,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Weights ``[n_bands, n_mels]`` that turn mel powers into band powers.

    Mel bin ``m`` belongs to the band containing its centre frequency. Because the (unnormalised)
    triangles form a partition of unity, ``weights @ mel_power`` equals the STFT power between the
    band's first and last mel centre exactly, and leaks half a triangle across each edge, i.e. the
    effective band edges sit between neighbouring mel centres. With ``norm="slaney"`` each weight
    is the triangle's inverse area factor so the same holds.

    Raises ``ValueError`` when a band holds no mel centre (widen it or use more mels).
    """
    bands = _resolve_bands(bands)
    centres = mel_center_frequencies(spec)
    nyquist = spec.sample_rate / 2
    corners = _mel_corner_frequencies(spec)
    per_mel = torch.ones(spec.n_mels, dtype=torch.float64)
    if spec.norm == "slaney":
        per_mel = (corners[2:] - corners[:-2]) / 2.0
    rows = []
    for band in bands:
        lo, hi = band.edges(spec)
        upper = centres <= hi if hi >= nyquist else centres < hi
        row = (centres >= lo) & upper
        if not bool(row.any()):
            raise ValueError(
                f"band {band.name!r} ({lo}-{hi} Hz) contains no mel centre for n_mels={spec.n_mels}, "
                f"mel_scale={spec.mel_scale!r}; widen the band or use more mels"
            )
        rows.append(row.to(torch.float64) * per_mel)
    return torch.stack(rows).to(dtype)
