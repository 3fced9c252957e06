"""Closed-loop evaluation of guidance: re-measure the control on the generated latent.

LatCH (Novack et al. 2026, arXiv 2603.04366) advises to "verify a head closed-loop: generate, decode, re-extract, compare with
the target"): the head is only a differentiable stand-in for the feature extractor, so the
score must come from the extractor. Our latents are log-mels, so "decode" is the identity and
the deterministic :class:`~fusion_infer.controls.features.ControlFeatureExtractor` reads the
controls straight from the generated latent.

* :func:`loudness_extractor` — broadband level in dB: one band covering 0 Hz…Nyquist, i.e.
  ``10·log10(Σ_mel 10^(L/10) + 10^(floor/10))`` per frame (the mel triangles are a partition of
  unity, so this is the frame's total STFT power).
* :func:`rising_pause_falling` — the LatCH demo's intensity shape: rise, hold, fall.
* :func:`control_error` — per-sample mean absolute error (dB) over frames and channels.
* :func:`compare_errors` — unguided vs guided summary over seeds.

Example:
    >>> import torch
    >>> ext = loudness_extractor()
    >>> latent = torch.full((2, 64, 8), -40.0)          # dB log-mel
    >>> level = ext(latent)[:, :1]                       # [B, 1, T] broadband level
    >>> round(float(level[0, 0, 0]), 2)                  # 64 bins at -40 dB → -40 + 10·log10(64)
    -21.94
    >>> control_error(level, level[0]).tolist()
    [0.0, 0.0]
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import torch
from torch import Tensor

from ..controls.features import ControlFeatureExtractor
from ..controls.mel_bands import DEFAULT_DB_FLOOR, ControlBand, MelSpec

__all__ = [
    "LOUDNESS_BAND",
    "compare_errors",
    "control_error",
    "loudness_extractor",
    "rising_pause_falling",
]

#: The whole spectrum as one band: its RMS energy is the broadband level ("loudness").
LOUDNESS_BAND = ControlBand("loudness", 0.0, None)


def loudness_extractor(
    spec: MelSpec | None = None,
    latent_mean: Tensor | None = None,
    latent_std: Tensor | None = None,
    db_floor: float = DEFAULT_DB_FLOOR,
) -> ControlFeatureExtractor:
    """A :class:`ControlFeatureExtractor` whose channel 0 is the broadband level in dB (channel 1
    is spectral flux). Pass the data's ``latent_mean``/``latent_std`` to feed standardised latents.
    """
    return ControlFeatureExtractor(
        spec, bands=(LOUDNESS_BAND,), db_floor=db_floor, latent_mean=latent_mean, latent_std=latent_std
    )


def rising_pause_falling(
    frames: int, low: float, high: float, *, rise: float = 0.35, hold: float = 0.3
) -> Tensor:
    """Target curve ``[frames]``: linear rise ``low → high`` over ``rise`` of the frames, hold at
    ``high`` for ``hold``, linear fall back to ``low`` over the rest.

    Example:
        >>> rising_pause_falling(10, 0.0, 1.0, rise=0.3, hold=0.4).tolist()
        [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.0]
    """
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 3:
        raise ValueError(f"frames must be an int >= 3, got {frames!r}")
    if not (0 < rise and 0 <= hold and rise + hold < 1):
        raise ValueError(f"need rise > 0, hold >= 0 and rise + hold < 1, got rise={rise}, hold={hold}")
    n_rise = max(2, round(rise * frames))
    n_hold = round(hold * frames)
    n_fall = frames - n_rise - n_hold
    if n_fall < 2:
        raise ValueError(f"rise={rise}, hold={hold} leave fewer than 2 falling frames of {frames}")
    up = torch.linspace(low, high, n_rise, dtype=torch.float64)
    flat = torch.full((n_hold,), float(high), dtype=torch.float64)
    down = torch.linspace(high, low, n_fall, dtype=torch.float64)
    return torch.cat([up, flat, down]).to(torch.float32)


def control_error(features: Tensor, target: Tensor) -> Tensor:
    """Per-sample mean absolute error ``[B]`` between ``features [B, C, T]`` and ``target``
    (``[C, T]`` or ``[B, C, T]``), in the features' units.

    Example:
        >>> control_error(torch.ones(3, 1, 4), torch.zeros(1, 4)).tolist()
        [1.0, 1.0, 1.0]
    """
    if features.dim() != 3:
        raise ValueError(f"features must be [B, C, T], got shape {tuple(features.shape)}")
    if target.dim() == 2:
        target = target[None]
    if target.shape[1:] != features.shape[1:]:
        raise ValueError(f"target shape {tuple(target.shape)} does not match features {tuple(features.shape)}")
    return (features - target.to(features)).abs().flatten(1).mean(1)


def _summary(values: Sequence[float]) -> dict[str, float]:
    vals = [float(v) for v in values]
    return {
        "mean": statistics.fmean(vals),
        "median": statistics.median(vals),
        "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0,
        "min": min(vals),
        "max": max(vals),
    }


def compare_errors(unguided: Sequence[float], guided: Sequence[float]) -> dict[str, object]:
    """Summaries of per-seed errors and the paired guided/unguided ratio.

    Returns ``{"unguided": {...}, "guided": {...}, "ratio_of_means": g/u, "improved": k, "n": n}``
    with ``improved`` the number of seeds where guidance lowered the error.

    Example:
        >>> r = compare_errors([4.0, 2.0], [1.0, 3.0])
        >>> r["ratio_of_means"], r["improved"], r["n"]
        (0.6666666666666666, 1, 2)
    """
    if len(unguided) != len(guided) or not unguided:
        raise ValueError("unguided and guided must be non-empty and of equal length (paired seeds)")
    u, g = _summary(unguided), _summary(guided)
    ratio = g["mean"] / u["mean"] if u["mean"] > 0 else math.inf
    improved = sum(1 for a, b in zip(unguided, guided) if b < a)
    return {"unguided": u, "guided": g, "ratio_of_means": ratio, "improved": improved, "n": len(guided)}
