"""Our own additive synthesiser: note events → mono audio (numpy only, no music21 needed here).

Each note is a sum of harmonics ``k = 1..K`` of its fundamental ``f0 = 440·2^((p − 69)/12)``
(additive / Fourier synthesis, Roads, *The Computer Music Tutorial*, 1996, ch. 4), played from
wavetables (one period of the harmonic sum, looked up with linear interpolation; Roads ch. 2),
with a two-table crossfade for the brightness decay of plucked sounds:

    x(t) = A · env(t) · [ W_dull(f0·t) + e^{−d·t} · (W_bright(f0·t) − W_dull(f0·t)) ]
    W(u) = Σ_k h_k · sin(2π·k·u + φ_k)

* bright weights ``h_k ∝ k^(−tilt)`` (× ``odd_gain`` for odd k > 1), dull weights use
  ``tilt + 2``; each set is normalised so ``Σ h_k² = 1``: a steady note has mean square
  ``A²/2`` whatever the timbre, so dynamics set loudness and the timbre only moves energy between
  bands. ``d = partial_decay`` (1/s) is how fast a plucked note's upper partials fade; ``d = 0``
  keeps the bright spectrum (organ-like).
* ``env`` is a linear ADSR envelope: attack, decay to the sustain level, and a release that
  starts at the note's end (so notes ring past their written duration).
* Partials at or above 0.95·Nyquist are dropped (no aliasing). Tables have 4096 points, so the
  interpolation error is below 1e-4 of full scale.

Rendering takes a window ``[start_s, start_s + n/sr)`` and only synthesises the parts of notes
that overlap it, so excerpts of long pieces are cheap.

Example:
    >>> import numpy as np
    >>> note = NoteEvent(onset=0.0, duration=1.0, pitch=69.0, amplitude=0.5, voice=0)
    >>> audio = render_notes([note], {0: Timbre(n_harmonics=1)}, 0.0, 22050, 22050)
    >>> audio.shape, audio.dtype
    ((22050,), dtype('float32'))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["NoteEvent", "Timbre", "midi_to_hz", "random_timbre", "render_notes"]


@dataclass(frozen=True)
class NoteEvent:
    """One note: onset and written duration in seconds, MIDI pitch (float), linear amplitude."""

    onset: float
    duration: float
    pitch: float
    amplitude: float
    voice: int = 0


@dataclass(frozen=True)
class Timbre:
    """Additive timbre and ADSR envelope of one voice (times in seconds)."""

    n_harmonics: int = 8
    tilt: float = 1.0
    odd_gain: float = 1.0
    partial_decay: float = 0.0
    attack: float = 0.02
    decay: float = 0.1
    sustain: float = 0.7
    release: float = 0.15

    def __post_init__(self) -> None:
        if self.n_harmonics < 1:
            raise ValueError(f"n_harmonics must be >= 1, got {self.n_harmonics}")
        if min(self.attack, self.decay, self.release) <= 0:
            raise ValueError("attack, decay and release must be > 0 seconds")
        if not 0.0 <= self.sustain <= 1.0:
            raise ValueError(f"sustain must lie in [0, 1], got {self.sustain}")

    def harmonic_weights(self, n: int, extra_tilt: float = 0.0) -> np.ndarray:
        """``h_1..h_n`` with ``Σ h_k² = 1`` (``extra_tilt=2`` gives the dull table's weights)."""
        k = np.arange(1, n + 1, dtype=np.float64)
        h = k ** (-(self.tilt + extra_tilt))
        h[(k % 2 == 1) & (k > 1)] *= self.odd_gain
        return h / np.sqrt(np.sum(h**2))


def random_timbre(rng: np.random.Generator) -> Timbre:
    """Draw a plausible voice: 3–16 partials, tilt 0.6–2, odd/even balance, pluck or organ envelope."""
    plucked = bool(rng.random() < 0.4)
    return Timbre(
        n_harmonics=int(rng.integers(3, 17)),
        tilt=float(rng.uniform(0.6, 2.0)),
        odd_gain=float(rng.choice([1.0, 1.0, 1.8, 0.5])),
        partial_decay=float(rng.uniform(0.5, 3.0)) if plucked else 0.0,
        attack=float(rng.uniform(0.003, 0.01) if plucked else rng.uniform(0.02, 0.08)),
        decay=float(rng.uniform(0.1, 0.4)),
        sustain=float(rng.uniform(0.1, 0.4) if plucked else rng.uniform(0.6, 0.95)),
        release=float(rng.uniform(0.05, 0.4)),
    )


def midi_to_hz(pitch: float | np.ndarray) -> float | np.ndarray:
    """Equal temperament, A4 = MIDI 69 = 440 Hz."""
    return 440.0 * 2.0 ** ((np.asarray(pitch, dtype=np.float64) - 69.0) / 12.0)


def _adsr(t: np.ndarray, duration: float, timbre: Timbre) -> np.ndarray:
    """Linear ADSR at times ``t`` (seconds from onset); release starts at ``max(duration, attack)``."""
    a, d, s, r = timbre.attack, timbre.decay, timbre.sustain, timbre.release
    off = max(duration, a)
    if off >= a + d:
        times, levels = [0.0, a, a + d, off, off + r], [0.0, 1.0, s, s, 0.0]
    else:  # released during the decay: start the release from the level reached
        level = 1.0 - (1.0 - s) * (off - a) / d
        times, levels = [0.0, a, off, off + r], [0.0, 1.0, level, 0.0]
    return np.interp(t, times, levels, left=0.0, right=0.0)


_TABLE_SIZE = 4096


def _wavetable(weights: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """One period of ``Σ_k w_k sin(2πku + φ_k)`` on ``_TABLE_SIZE`` points, plus a wrap-around point."""
    spectrum = np.zeros(_TABLE_SIZE // 2 + 1, dtype=np.complex128)
    k = np.arange(1, len(weights) + 1)
    # irfft(S)[j] = Σ_k (2/N)·|S_k|·cos(2πkj/N + arg S_k); sin(x + φ) = cos(x + φ − π/2)
    spectrum[k] = (_TABLE_SIZE / 2) * weights * np.exp(1j * (phases - np.pi / 2))
    table = np.fft.irfft(spectrum, _TABLE_SIZE).astype(np.float32)
    return np.append(table, table[0])


def _lookup(table: np.ndarray, cell: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """Linear interpolation in a wrapped wavetable."""
    left = table[cell]
    return left + frac * (table[cell + 1] - left)


def render_notes(
    notes: Sequence[NoteEvent],
    timbres: Mapping[int, Timbre],
    start_s: float,
    n_samples: int,
    sample_rate: int,
    phase_seed: int = 0,
) -> np.ndarray:
    """Mix ``notes`` into ``n_samples`` of float32 audio starting at ``start_s`` seconds.

    ``timbres`` maps each note's ``voice`` to its :class:`Timbre`. Initial partial phases are
    drawn from ``phase_seed`` and the note's index, so rendering is deterministic and a note
    sounds the same in overlapping windows.
    """
    if n_samples < 0 or sample_rate <= 0:
        raise ValueError(f"need n_samples >= 0 and sample_rate > 0, got {n_samples}, {sample_rate}")
    out = np.zeros(n_samples, dtype=np.float64)
    nyquist = sample_rate / 2
    end_s = start_s + n_samples / sample_rate
    for index, note in enumerate(notes):
        timbre = timbres[note.voice]
        note_end = note.onset + max(note.duration, timbre.attack) + timbre.release
        if note_end <= start_s or note.onset >= end_s or note.amplitude <= 0:
            continue
        f0 = float(midi_to_hz(note.pitch))
        n_partials = min(timbre.n_harmonics, int(0.95 * nyquist // f0))
        if n_partials < 1:
            continue
        first = max(0, math.ceil((note.onset - start_s) * sample_rate))
        last = min(n_samples, math.ceil((note_end - start_s) * sample_rate))
        if last <= first:
            continue
        t = (start_s + np.arange(first, last) / sample_rate) - note.onset
        phases = np.random.default_rng([phase_seed, index]).uniform(0, 2 * np.pi, n_partials)
        position = np.mod(f0 * t, 1.0) * _TABLE_SIZE
        cell = position.astype(np.int64)
        frac = (position - cell).astype(np.float32)
        bright = _wavetable(timbre.harmonic_weights(n_partials), phases)
        wave = _lookup(bright, cell, frac)
        if timbre.partial_decay > 0:
            dull = _wavetable(timbre.harmonic_weights(n_partials, extra_tilt=2.0), phases)
            dull_wave = _lookup(dull, cell, frac)
            wave = dull_wave + np.exp(-timbre.partial_decay * t).astype(np.float32) * (wave - dull_wave)
        out[first:last] += note.amplitude * _adsr(t, note.duration, timbre) * wave
    return out.astype(np.float32)
