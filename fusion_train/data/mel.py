"""Audio → power spectrogram → log-mel latent, on the shared frame grid of :class:`MelSpec`.

Framing: frame ``k`` is the Hann-windowed ``n_fft`` samples centred on sample ``k·hop`` of the
excerpt. Callers pass audio that already contains the ``n_fft // 2`` samples of context on each
side (the renderer produces them), so no padding is invented: ``T`` frames need
``(T − 1)·hop + n_fft`` samples (:func:`samples_for_frames`).

Power normalisation (Parseval): ``P_k = c_k·|X_k|² / (n_fft · Σ w²)`` with ``c_k = 2`` for the
interior bins and 1 for DC and Nyquist, so ``Σ_k P_k`` is the window-weighted mean square of the
frame. A sine of amplitude ``a`` therefore has total power ``a²/2``, and band energies in dB are
true RMS levels. The log-mel latent is ``10·log10(max(F @ P, amin))`` with ``F`` the shared
filterbank (:func:`fusion_infer.controls.mel_bands.mel_filterbank`).

Example:
    >>> import torch
    >>> spec = MelSpec()
    >>> audio = torch.zeros(samples_for_frames(spec, 8))
    >>> log_mel(audio, spec).shape
    torch.Size([64, 8])
"""

from __future__ import annotations

import torch

from fusion_infer.controls.mel_bands import MelSpec, mel_filterbank

__all__ = ["log_mel", "power_spectrogram", "samples_for_frames"]


def samples_for_frames(spec: MelSpec, frames: int) -> int:
    """Audio samples (context included) that :func:`power_spectrogram` turns into ``frames`` frames."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    return (frames - 1) * spec.hop + spec.n_fft


def power_spectrogram(audio: torch.Tensor, spec: MelSpec) -> torch.Tensor:
    """Parseval-normalised one-sided power spectrogram ``[..., n_fft//2 + 1, T]`` (float32).

    ``audio`` is ``[..., L]`` with ``L >= n_fft``; ``T = (L − n_fft) // hop + 1``.
    """
    audio = torch.as_tensor(audio)
    if audio.shape[-1] < spec.n_fft:
        raise ValueError(f"audio needs at least n_fft={spec.n_fft} samples, got {audio.shape[-1]}")
    lead = audio.shape[:-1]
    flat = audio.reshape(-1, audio.shape[-1]).to(torch.float32)
    window = torch.hann_window(spec.n_fft, periodic=True, dtype=torch.float32)
    stft = torch.stft(
        flat, spec.n_fft, hop_length=spec.hop, window=window, center=False, return_complex=True
    )
    power = stft.real.square() + stft.imag.square()
    scale = torch.full((spec.n_freqs, 1), 2.0)
    scale[0] = 1.0
    if spec.n_fft % 2 == 0:
        scale[-1] = 1.0
    power = power * (scale / (spec.n_fft * window.square().sum()))
    return power.reshape(*lead, spec.n_freqs, power.shape[-1])


def log_mel(audio: torch.Tensor, spec: MelSpec, power: torch.Tensor | None = None) -> torch.Tensor:
    """Log-mel in dB ``[..., n_mels, T]``; pass ``power`` to reuse a computed spectrogram."""
    if power is None:
        power = power_spectrogram(audio, spec)
    mel = torch.einsum("mf,...ft->...mt", mel_filterbank(spec), power)
    return 10.0 * torch.log10(mel.clamp_min(spec.amin))
