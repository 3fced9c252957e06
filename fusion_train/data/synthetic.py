"""Fast synthetic data with known ground truth: enveloped sine tones, one per active band.

Every excerpt holds, for each control band, with probability ``active_prob``, one sine tone
``a_b(t)·sin(2π f_b t + φ_b)`` whose envelope ``a_b`` is a raised-cosine attack, a hold and a
raised-cosine release at a random place, with a peak level between ``level_db`` bounds. Tone
frequencies sit exactly on FFT bin centres (``f = k·sr/n_fft``) and well inside their band, both
between the band's brick-wall edges and between its first and last mel centre: with the periodic
Hann window such a tone occupies exactly three FFT bins, so nothing leaks into another band and
the only deviation from the ground truth is the envelope's change within one frame.

Ground truth (``data.extras["band_db_truth"]``, ``[N, n_bands, T]``): the band's mean-square
level as the Hann-windowed frame sees it, ``10·log10(Σ_n w[n]²·a_b(n)² / (2·Σ w²) + 10^(floor/10))``
(a sine of amplitude ``a`` has mean square ``a²/2``), computed from the envelope alone, never from
the audio. ``data.controls`` are measured from the rendered audio exactly like the reference data
(:func:`fusion_train.data.controls.audio_control_targets`), and ``data.latents`` are its
standardised log-mels, so the same code trains on both.

Example:
    >>> data = synthetic_data(4, frames=64, seed=1)
    >>> data.extras["band_db_truth"].shape
    torch.Size([4, 4, 64])
"""

from __future__ import annotations

import numpy as np
import torch

from fusion_infer.controls.features import control_feature_names, power_to_db
from fusion_infer.controls.mel_bands import (
    DEFAULT_CONTROL_BANDS,
    DEFAULT_DB_FLOOR,
    ControlBand,
    MelSpec,
    band_mel_weights,
    fft_frequencies,
    mel_center_frequencies,
)

from .controls import audio_control_targets
from .dataset import ReferenceData, split_stats
from .mel import log_mel, samples_for_frames
from .reference import split_pieces

__all__ = ["synthetic_data", "tone_bins"]


def tone_bins(spec: MelSpec, bands: tuple[ControlBand, ...] = DEFAULT_CONTROL_BANDS) -> list[range]:
    """FFT bins usable for each band's tone: 3 bins inside the band edges and 2 bins inside its mel centres.

    Raises ``ValueError`` when a band is too narrow for ``spec``.
    """
    freqs = fft_frequencies(spec)
    centres = mel_center_frequencies(spec)
    membership = band_mel_weights(spec, bands) > 0
    df = spec.sample_rate / spec.n_fft
    out = []
    for band, members in zip(bands, membership):
        lo, hi = band.edges(spec)
        inside = centres[members]
        f_lo = max(lo + 3 * df, float(inside.min()) + 2 * df)
        f_hi = min(hi - 3 * df, float(inside.max()) - 2 * df)
        ok = ((freqs >= f_lo) & (freqs <= f_hi)).nonzero().flatten()
        if ok.numel() == 0:
            raise ValueError(
                f"band {band.name!r} is too narrow for a leakage-free tone at n_fft={spec.n_fft}, "
                f"n_mels={spec.n_mels}"
            )
        out.append(range(int(ok.min()), int(ok.max()) + 1))
    return out


def _raised_cosine_envelope(n: int, start: int, attack: int, hold: int, release: int) -> np.ndarray:
    env = np.zeros(n, dtype=np.float64)
    idx = np.arange(n)
    up = (idx >= start) & (idx < start + attack)
    env[up] = 0.5 - 0.5 * np.cos(np.pi * (idx[up] - start) / attack)
    top = (idx >= start + attack) & (idx < start + attack + hold)
    env[top] = 1.0
    down_start = start + attack + hold
    down = (idx >= down_start) & (idx < down_start + release)
    env[down] = 0.5 + 0.5 * np.cos(np.pi * (idx[down] - down_start) / release)
    return env


def synthetic_data(
    n: int,
    frames: int = 256,
    *,
    spec: MelSpec | None = None,
    bands: tuple[ControlBand, ...] = DEFAULT_CONTROL_BANDS,
    db_floor: float = DEFAULT_DB_FLOOR,
    active_prob: float = 0.8,
    level_db: tuple[float, float] = (-30.0, -6.0),
    val_fraction: float = 0.25,
    seed: int = 0,
) -> ReferenceData:
    """``n`` synthetic excerpts of ``frames`` frames with analytic ground truth (see module doc).

    Each excerpt is its own "piece" (``synthetic/00000`` …), so the split is by piece as for the
    real data. Runs in well under a second for a few dozen short excerpts.

    Example:
        >>> data = synthetic_data(8, frames=32)
        >>> data.control_names[0], len(data.pieces_in("val"))
        ('rms_energy_bass', 2)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 8:
        raise ValueError(f"frames must be an int >= 8 (room for an envelope), got {frames!r}")
    if not 0.0 <= active_prob <= 1.0:
        raise ValueError(f"active_prob must lie in [0, 1], got {active_prob!r}")
    if not (level_db[0] <= level_db[1] <= 0.0):
        raise ValueError(f"level_db must satisfy low <= high <= 0 dBFS, got {level_db!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction!r}")
    spec = MelSpec() if spec is None else spec
    bins = tone_bins(spec, bands)
    rng = np.random.default_rng(seed)
    n_samples = samples_for_frames(spec, frames)
    context = spec.n_fft // 2
    window_sq = torch.hann_window(spec.n_fft, periodic=True, dtype=torch.float64).square()

    audio = np.zeros((n, n_samples), dtype=np.float32)
    envelopes = np.zeros((n, len(bands), n_samples), dtype=np.float64)
    tone_hz = np.zeros((n, len(bands)), dtype=np.float64)
    t = np.arange(n_samples) / spec.sample_rate
    for i in range(n):
        for b, usable in enumerate(bins):
            if rng.random() >= active_prob:
                continue
            k = int(rng.integers(usable.start, usable.stop))
            f = k * spec.sample_rate / spec.n_fft
            # envelope times in frames, converted to samples (frame k is centred at context + k·hop)
            attack = int(rng.integers(max(2, frames // 32), max(3, frames // 6)))
            hold = int(rng.integers(0, max(1, frames // 4)))
            release = int(rng.integers(max(2, frames // 32), max(3, frames // 4)))
            start = int(rng.integers(0, max(1, frames - attack - hold - release)))
            amp = 10.0 ** (rng.uniform(*level_db) / 20.0)
            env = amp * _raised_cosine_envelope(
                n_samples,
                context + start * spec.hop,
                attack * spec.hop,
                hold * spec.hop,
                release * spec.hop,
            )
            envelopes[i, b] = env
            tone_hz[i, b] = f
            audio[i] += (env * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))).astype(np.float32)

    wave = torch.from_numpy(audio)
    latents_db = log_mel(wave, spec)
    controls = audio_control_targets(wave, spec, bands, db_floor)
    env_sq = torch.from_numpy(envelopes).reshape(n * len(bands), 1, n_samples).square()
    frame_ms = torch.nn.functional.conv1d(env_sq, window_sq.view(1, 1, -1), stride=spec.hop)
    frame_ms = frame_ms.reshape(n, len(bands), frames) / (2.0 * window_sq.sum())
    truth = power_to_db(frame_ms, db_floor).to(torch.float32)
    centre_env = torch.from_numpy(envelopes[:, :, context :: spec.hop][:, :, :frames]).to(torch.float32)

    pieces = [f"synthetic/{i:05d}" for i in range(n)]
    _, val_pieces = split_pieces(pieces, val_fraction, seed) if n > 1 else (pieces, [])
    is_val = torch.tensor([p in set(val_pieces) for p in pieces])
    train_index, val_index = (~is_val).nonzero().flatten(), is_val.nonzero().flatten()
    latent_mean, latent_std = split_stats(latents_db, train_index)
    control_mean, control_std = split_stats(controls, train_index)
    return ReferenceData(
        latents=(latents_db - latent_mean[:, None]) / latent_std[:, None],
        controls=controls,
        control_names=control_feature_names(bands),
        piece_ids=tuple(pieces),
        train_index=train_index,
        val_index=val_index,
        latent_mean=latent_mean,
        latent_std=latent_std,
        control_mean=control_mean,
        control_std=control_std,
        spec=spec,
        bands=tuple(bands),
        db_floor=float(db_floor),
        source="synthetic",
        extras={
            "band_db_truth": truth,
            "envelope": centre_env,
            "tone_hz": torch.from_numpy(tone_hz).to(torch.float32),
        },
        info={
            "n": n,
            "frames": frames,
            "seed": seed,
            "active_prob": active_prob,
            "level_db": list(level_db),
            "val_fraction": val_fraction,
        },
    )
