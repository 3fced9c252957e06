"""STFT power normalisation, log-mel framing, audio-domain control targets and the synthesiser."""

import math

import numpy as np
import pytest
import torch

from fusion_infer.controls.mel_bands import MelSpec
from fusion_train.data.controls import audio_control_targets
from fusion_train.data.mel import log_mel, power_spectrogram, samples_for_frames
from fusion_train.data.synth import NoteEvent, Timbre, _adsr, random_timbre, render_notes

SPEC = MelSpec()


def _sine(freq, amp, frames, spec=SPEC):
    n = samples_for_frames(spec, frames)
    t = torch.arange(n, dtype=torch.float64) / spec.sample_rate
    return (amp * torch.sin(2 * math.pi * freq * t + 0.3)).to(torch.float32)


def test_frame_grid():
    assert samples_for_frames(SPEC, 256) == 255 * 1024 + 2048
    assert log_mel(torch.zeros(samples_for_frames(SPEC, 10)), SPEC).shape == (64, 10)
    with pytest.raises(ValueError, match="frames must be >= 1"):
        samples_for_frames(SPEC, 0)
    with pytest.raises(ValueError, match="at least n_fft"):
        power_spectrogram(torch.zeros(100), SPEC)


@pytest.mark.parametrize("freq", [440.0, 1000.0, 93.0])
def test_power_is_mean_square(freq):
    # Parseval: a sine of amplitude a has total power a^2/2 in every frame, on or off a bin centre
    power = power_spectrogram(_sine(freq, 0.5, 12), SPEC)
    assert torch.allclose(power.sum(0), torch.full((12,), 0.125), rtol=2e-4)


def test_log_mel_of_silence_is_the_floor():
    assert torch.equal(
        log_mel(torch.zeros(samples_for_frames(SPEC, 3)), SPEC), torch.full((64, 3), -100.0)
    )


def test_band_targets_put_a_sine_in_its_band():
    targets = audio_control_targets(_sine(300.0, 0.5, 16), SPEC)  # body band: 120-600 Hz
    assert targets.shape == (5, 16)
    assert torch.allclose(targets[1], torch.full((16,), 10 * math.log10(0.125)), atol=1e-3)
    assert bool((targets[[0, 2, 3]] < -70).all())  # other bands near the -80 dB floor
    assert torch.equal(targets[4, 0], torch.tensor(0.0))  # flux of the first frame


def test_adsr_shape():
    timbre = Timbre(attack=0.1, decay=0.1, sustain=0.5, release=0.2)
    t = np.array([0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 1.1, 1.2, 2.0])
    assert np.allclose(_adsr(t, 1.0, timbre), [0, 0.5, 1, 0.5, 0.5, 0.5, 0.25, 0, 0])
    # released during the decay: the release starts from the level reached (0.75 at 0.15 s)
    assert np.allclose(_adsr(np.array([0.15, 0.25, 0.35]), 0.15, timbre), [0.75, 0.375, 0.0])


@pytest.mark.parametrize("decay", [0.0, 2.0])
def test_render_matches_the_additive_formula(decay):
    timbre = Timbre(n_harmonics=10, tilt=1.3, odd_gain=1.8, partial_decay=decay)
    note = NoteEvent(onset=0.05, duration=0.4, pitch=57.0, amplitude=0.8, voice=0)
    audio = render_notes([note], {0: timbre}, 0.0, 16000, 22050, phase_seed=7)
    t = np.arange(16000) / 22050 - 0.05
    live = t >= 0
    tt = t[live]
    f0 = 440.0 * 2 ** (-1)
    phases = np.random.default_rng([7, 0]).uniform(0, 2 * np.pi, 10)

    def harmonic_sum(weights):
        return sum(weights[k] * np.sin(2 * np.pi * (k + 1) * f0 * tt + phases[k]) for k in range(10))

    bright, dull = harmonic_sum(timbre.harmonic_weights(10)), harmonic_sum(timbre.harmonic_weights(10, 2.0))
    wave = dull + np.exp(-decay * tt) * (bright - dull) if decay else bright
    expected = np.zeros(16000)
    expected[live] = 0.8 * _adsr(tt, 0.4, timbre) * wave
    assert np.abs(audio - expected).max() < 1e-4  # wavetable interpolation error only
    assert np.allclose(np.sum(timbre.harmonic_weights(10) ** 2), 1.0)


def test_render_window_is_consistent_and_drops_aliasing_partials():
    timbre = Timbre(n_harmonics=16)
    notes = [NoteEvent(0.1 * i, 0.3, 60.0 + i, 0.5, 0) for i in range(6)]
    whole = render_notes(notes, {0: timbre}, 0.0, 22050, 22050)
    part = render_notes(notes, {0: timbre}, 0.5, 5000, 22050)  # 0.5 s = sample 11025 exactly
    start = 11025
    assert np.abs(whole[start : start + 5000] - part).max() < 1e-6
    # a note whose fundamental is above 0.95·Nyquist renders nothing
    assert not render_notes([NoteEvent(0, 0.2, 130.0, 1.0, 0)], {0: timbre}, 0, 1000, 22050).any()


def test_random_timbre_is_valid_and_seeded():
    a = [random_timbre(np.random.default_rng(3)) for _ in range(2)]
    assert a[0] == a[1]
    with pytest.raises(ValueError, match="sustain"):
        Timbre(sustain=1.5)
    with pytest.raises(ValueError, match="n_harmonics"):
        Timbre(n_harmonics=0)
